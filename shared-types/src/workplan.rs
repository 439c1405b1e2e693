//! The `Workplan` custom resource: one run of a Workflow, its DAG compiled into tasks.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::limits::MAX_STEPS;
use crate::workflow::{RunSettings, Step};

/// A Workplan is one run of a Workflow: the DAG compiled into an ordered list of tasks.
///
/// The director creates it for one trigger event; its spec never changes afterwards, so a later
/// edit of the Workflow does not alter a running plan. The workplan-operator walks the tasks in
/// order and owns the status.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "kube.ci",
    version = "v1alpha1",
    kind = "Workplan",
    namespaced,
    status = "WorkplanStatus",
    derive = "PartialEq",
    shortname = "wp",
    category = "kubeci",
    doc = "A Workplan is one run of a Workflow: its steps compiled into an ordered list of tasks, each task one pod (serial steps as init containers, parallel steps as containers). Created by the director; its spec is immutable.",
    printcolumn(
        name = "Workflow",
        type_ = "string",
        json_path = ".spec.workflow",
        description = "The Workflow this run belongs to"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Pending, Running, Completed, Failed or Cancelled"
    ),
    printcolumn(
        name = "Task",
        type_ = "string",
        json_path = ".status.progress",
        description = "The task being run, as i/n"
    ),
    printcolumn(
        name = "Node",
        type_ = "string",
        json_path = ".status.nodeName",
        description = "The node every task runs on"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(
        name = "Duration",
        type_ = "string",
        json_path = ".status.duration",
        description = "From start to completion, once finished"
    )
)]
#[x_kube(validation = Rule::new("self == oldSelf").message("spec is immutable: a Workplan is one fixed run of its Workflow"))]
#[serde(rename_all = "camelCase")]
pub struct WorkplanSpec {
    /// Name of the Workflow (in the same namespace) this Workplan runs.
    pub workflow: String,

    /// The event that caused this run.
    pub trigger: TriggerEvent,

    /// The tasks, run one after the other. Each holds full copies of its steps, so the Workplan
    /// is self-contained.
    #[schemars(length(min = 1, max = MAX_STEPS))]
    pub tasks: Vec<Task>,

    /// The Workflow's pod template and deadline as they were when the run was planned.
    #[serde(flatten)]
    pub run: RunSettings,
}

/// One pod's worth of steps: serial steps run in order as init containers, then the parallel
/// steps run together as the pod's containers.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    /// Steps run one after the other, before the parallel steps (init containers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_STEPS))]
    pub serial_steps: Vec<Step>,

    /// Steps run together once every serial step has succeeded (containers). Never empty.
    #[schemars(length(min = 1, max = MAX_STEPS))]
    pub parallel_steps: Vec<Step>,
}

/// What caused a run: a matching object was Added, Updated or Deleted; the Workflow's
/// `kube.ci/run` annotation got a new value (Manual); or a Workflow without triggers was created or
/// changed (Created).
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
pub enum EventKind {
    // A matching object appeared.
    Added,
    // A matching object changed.
    Updated,
    // A matching object was deleted.
    Deleted,
    // The `kube.ci/run` annotation of the Workflow got a new value.
    Manual,
    // A Workflow without triggers was created or its spec changed.
    Created,
}

impl EventKind {
    /// The name used in Workplan names' hash input and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Added => "Added",
            EventKind::Updated => "Updated",
            EventKind::Deleted => "Deleted",
            EventKind::Manual => "Manual",
            EventKind::Created => "Created",
        }
    }
}

/// The trigger event behind a Workplan.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TriggerEvent {
    /// What happened: Added, Updated, Deleted, Manual or Created.
    pub event: EventKind,

    /// API version of the object that fired (the Workflow itself for Manual and Created runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,

    /// Kind of the object that fired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,

    /// Namespace of the object that fired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,

    /// Name of the object that fired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,

    /// UID of the object that fired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,

    /// The object's generation that fired, for kinds that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,

    /// The object's resourceVersion that fired, for kinds without a generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,

    /// For Manual runs: the value of the `kube.ci/run` annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
}

impl TriggerEvent {
    /// A manual run (the `kube.ci/run` annotation's `value`), with no trigger object.
    pub fn manual(value: Option<String>) -> Self {
        TriggerEvent {
            event: EventKind::Manual,
            api_version: None,
            kind: None,
            namespace: None,
            name: None,
            uid: None,
            generation: None,
            resource_version: None,
            run: value,
        }
    }
}

/// Where a Workplan stands: Pending (not started), Running, Completed (every task succeeded),
/// Failed or Cancelled; Completed, Failed and Cancelled are final and set only after the
/// workspace cleanup was attempted (or at once for a run stopped before it started).
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Phase {
    // Not started yet.
    #[default]
    Pending,
    // A task (or the final cleanup) is running.
    Running,
    // Every task succeeded and cleanup was attempted.
    Completed,
    // A task failed (or could not be run), or the run passed its deadline or was deleted while
    // running, and cleanup was attempted.
    Failed,
    // Stopped on request: the Workplan was annotated `kube.ci/cancel`; the task's pod was stopped
    // and cleanup attempted (at once if nothing ran). A deadline or a deletion is not a cancel.
    Cancelled,
}

impl Phase {
    /// Completed, Failed and Cancelled are final.
    pub fn is_finished(self) -> bool {
        matches!(self, Phase::Completed | Phase::Failed | Phase::Cancelled)
    }
}

/// The workplan-operator's view of a run. Per-step detail lives in the RequestState's history.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct WorkplanStatus {
    /// Pending (not started), Running, Completed (every task succeeded), Failed (a task failed,
    /// the run passed `activeDeadlineSeconds`, or it was deleted while running) or Cancelled (the
    /// Workplan was annotated `kube.ci/cancel`: its pod stopped, workspace cleaned up, the reason
    /// names who cancelled it). Completed, Failed and Cancelled are final.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// Why the Workplan is in its phase; for a failure, the step, its exit code and message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,

    /// Index of the task being run (0-based).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_index: Option<i32>,

    /// The task being run as `i/n` (1-based), for display.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,

    /// The node every pod of this Workplan runs on, known once the first task's pod is scheduled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,

    /// When the first task was requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,

    /// When the Workplan reached Completed, Failed or Cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,

    /// Time from start to completion (for example `1m20s`), once finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,

    /// The generation of the spec last processed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Standard conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
