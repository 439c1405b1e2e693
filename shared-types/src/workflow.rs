//! The `Workflow` custom resource: a DAG of container steps plus the triggers that run it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvFromSource, EnvVar, ResourceRequirements, VolumeMount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Deserializer, Serialize};

use crate::limits::{MAX_DEPENDENCIES, MAX_NAME_LENGTH, MAX_STEPS};
use crate::pod::{MAX_VOLUMES, PodTemplate, Retries};

/// A Workflow is a DAG of container steps and the Kubernetes resources whose changes run it.
///
/// For every trigger event the director compiles the steps into a Workplan: an ordered list of
/// tasks, each one pod whose serial steps run as init containers and whose parallel steps run as
/// containers. All pods of a Workplan run on one node and share a workspace mounted at `/kubeci`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "kube.ci",
    version = "v1alpha1",
    kind = "Workflow",
    namespaced,
    status = "WorkflowStatus",
    derive = "PartialEq",
    shortname = "kwf",
    category = "kubeci",
    doc = "A Workflow is a DAG of container steps plus triggers on Kubernetes resources. Each trigger event (or manual run) compiles the DAG into a Workplan that kubeci runs as pods sharing a workspace mounted at /kubeci.",
    printcolumn(name = "Steps", type_ = "integer", json_path = ".status.steps", description = "Number of steps"),
    printcolumn(name = "Triggers", type_ = "integer", json_path = ".status.triggers", description = "Number of triggers"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status", description = "Whether the Workflow is valid and being served"),
    printcolumn(name = "Last Workplan", type_ = "string", json_path = ".status.lastWorkplan", description = "The most recently created Workplan"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 63").message("metadata.name: a Workflow's name is used as a label value and must be at most 63 characters"),
)]
#[x_kube(
    validation = Rule::new("self.steps.all(s, self.steps.exists_one(o, o.name == s.name))").message("spec.steps: step names must be unique").field_path(".steps"),
    // sets.contains keeps the API server's cost estimate within budget at MAX_STEPS x
    // MAX_DEPENDENCIES; a nested `exists` (steps x dependencies x steps) was 6.6x over it.
    validation = Rule::new("self.steps.all(s, !has(s.dependency) || sets.contains(self.steps.map(o, o.name), s.dependency))").message("spec.steps: every dependency must name a step of this workflow").field_path(".steps"),
)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowSpec {
    /// The steps of the workflow: containers that run in the order their `dependency` lists
    /// require. Steps without a path of dependencies between them may run at the same time.
    #[schemars(length(min = 1, max = MAX_STEPS))]
    pub steps: Vec<Step>,

    /// Kubernetes resources whose changes start a run. Without triggers, the Workflow runs once
    /// per change of its spec (its generation). Setting the annotation `kube.ci/run` to a new
    /// value starts a manual run either way.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub triggers: Vec<Trigger>,

    /// While true, no new Workplans are created; running Workplans finish.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,

    /// How many finished (Completed or Failed) Workplans to keep; those that finished first are
    /// deleted. Unset: the director's default (`--workplan-history-limit`, Helm value
    /// `director.workplanHistory.limit`; 10 unless changed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub workplan_history_limit: Option<i32>,

    /// How long a finished (Completed or Failed) Workplan is kept after its completion, in
    /// seconds; it is deleted when that time is up. Unset: the director's default
    /// (`--workplan-history-ttl-seconds`, Helm value `director.workplanHistory.ttlSeconds`;
    /// 604800, 7 days, unless changed). 0 deletes finished Workplans right away.
    #[serde(
        default,
        rename = "workplanHistoryTTLSeconds",
        alias = "workplanHistoryTtlSeconds",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 0))]
    pub workplan_history_ttl_seconds: Option<i64>,

    /// Caps on the Workplans this Workflow starts. Events beyond a cap are never dropped: they
    /// wait, in order, in `status.pendingRuns` and start as soon as the cap allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<RunLimits>,

    /// What every run of this Workflow keeps from it when it starts (a later edit of the
    /// Workflow does not change a run that started): the pod template and the run's deadline.
    #[serde(flatten)]
    pub run: RunSettings,
}

/// The settings a run takes from its Workflow when it starts and keeps in its Workplan.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RunSettings {
    /// Settings of every pod of a run: node selector, tolerations, affinity, image pull secrets,
    /// priority class and the volumes steps mount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<PodTemplate>,

    /// The run's time budget in seconds, counted from the request of its first task; besides any
    /// step's `timeoutSeconds`. A run past it has its pod stopped, its workspace cleaned up, and
    /// ends Failed with reason `DeadlineExceeded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub active_deadline_seconds: Option<i64>,
}

/// Caps on the Workplans a Workflow starts. Each unset field takes the director's default.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RunLimits {
    /// Most Workplans started in any 60 seconds. Unset: the director's default
    /// (`--runs-per-minute`, Helm value `director.limits.runsPerMinute`; 60 unless changed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub runs_per_minute: Option<i32>,

    /// Most unfinished (Pending or Running) Workplans at once. Unset: the director's default
    /// (`--concurrent-runs`, Helm value `director.limits.concurrentRuns`; 10 unless changed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub concurrent_runs: Option<i32>,
}

/// One container of the workflow.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    /// The step's name: a DNS-1123 label (lower-case letters, digits and `-`, at most 63
    /// characters), unique within the workflow. It is also the container's name.
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("step name must be a DNS-1123 label: lower-case letters, digits and '-', starting and ending with a letter or digit"))]
    #[schemars(length(min = 1, max = MAX_NAME_LENGTH))]
    pub name: String,

    /// The container image, for example `alpine:3.20`.
    #[schemars(length(min = 1))]
    pub image: String,

    /// The container's entrypoint (its `command`). Unset uses the image's entrypoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<String>,

    /// Arguments to the entrypoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,

    /// Environment variables of the container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,

    /// The container's working directory. Unset uses the image's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,

    /// Compute resources (requests and limits) of the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Names of the steps that must finish successfully before this one starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_DEPENDENCIES), inner(length(max = MAX_NAME_LENGTH)))]
    pub dependency: Vec<String>,

    /// The step's time budget in seconds. A task's pod gets an `activeDeadlineSeconds` of the
    /// sum of its serial steps' budgets plus the largest of its parallel steps' budgets, when
    /// every step of the task has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub timeout_seconds: Option<i64>,

    /// When to pull the image: `Always`, `IfNotPresent` or `Never`. Default `IfNotPresent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self in ['Always', 'IfNotPresent', 'Never']").message("imagePullPolicy must be one of Always, IfNotPresent, Never"))]
    pub image_pull_policy: Option<String>,

    /// Volumes of `spec.podTemplate.volumes` mounted into this step's container. The workspace
    /// is always mounted at `/kubeci`; nothing may be mounted at or under it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_VOLUMES))]
    pub volume_mounts: Vec<VolumeMount>,

    /// Environment variables of the container taken from every key of a ConfigMap or Secret.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_from: Vec<EnvFromSource>,

    /// Retry the step's task when it fails: how often and after how long. Unset: a failure
    /// fails the run (unless another step of the same task asks for retries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
}

/// A Kubernetes resource whose changes start a run of the workflow.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Trigger {
    /// API version of the watched resource, for example `v1` or `apps/v1`.
    #[schemars(length(min = 1))]
    pub api_version: String,

    /// Kind of the watched resource, for example `ConfigMap`.
    #[schemars(length(min = 1))]
    pub kind: String,

    /// Plural resource name, for example `configmaps`. Optional and informational: the director
    /// resolves `apiVersion` and `kind` to the resource by discovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,

    /// Namespace to watch. Default: the Workflow's own namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,

    /// Only the object with this name fires. Unset: any object that matches the selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,

    /// Only objects whose labels match fire. Empty or unset matches every object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,

    /// Run when a matching object is added or changes (its generation, or its resourceVersion
    /// for kinds without a generation such as ConfigMaps).
    #[serde(default)]
    pub on_add_or_update: bool,

    /// Run when a matching object is deleted.
    #[serde(default)]
    pub on_delete: bool,
}

/// What the director observed of a Workflow.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = accept_seed_alias)]
pub struct WorkflowStatus {
    /// The generation of the spec the director last processed. The seed name
    /// `lastObservedGeneration` is accepted as an alias when reading.
    #[serde(default, alias = "lastObservedGeneration", skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Deprecated: where directors before the `TriggerRecord` kind kept the trigger record (the
    /// trigger objects recorded, by uid). A director that finds it copies it into the Workflow's
    /// TriggerRecord objects, without firing anything, and then removes it. Never written.
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("x-kubernetes-map-type" = "granular"))]
    pub last_observed_resource_generation: BTreeMap<String, RecordedObject>,

    /// Triggers whose already existing objects were recorded as a baseline, so that they never
    /// fire: `<apiVersion> <kind> <namespace>/<name or *> <selector>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub baselined_triggers: Vec<String>,

    /// The summary of the trigger record, which the director keeps in the Workflow's
    /// TriggerRecord objects (`kubectl get triggerrecords -l kube.ci/workflow=NAME`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_record: Option<TriggerRecordSummary>,

    /// The last value of the `kube.ci/run` annotation that started a manual run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_manual_run: Option<String>,

    /// `Ready` (the Workflow is valid and served) and `Invalid` (with the validation message).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// Name of the most recently created Workplan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_workplan: Option<String>,

    /// Number of steps in the spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<i32>,

    /// Number of triggers in the spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub triggers: Option<i32>,

    /// Workplans of this Workflow by phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workplans: Option<WorkplanCounts>,

    /// Runs decided but whose Workplan does not exist yet: the create was refused (a quota, an
    /// admission webhook, the API server unavailable) and is retried with back-off, or a cap of
    /// `spec.limits` holds it back. Unset when nothing is pending. The trigger record (and
    /// `observedGeneration`, `lastManualRun`) advance only once a run's Workplan exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_runs: Option<PendingRuns>,
}

/// What a Workflow's trigger record holds, kept in its TriggerRecord objects.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TriggerRecordSummary {
    /// Trigger objects recorded: those the triggers match, and any deleted whose `onDelete`
    /// Workplan does not exist yet.
    pub objects: i64,
    /// TriggerRecord objects holding them (one per non-empty shard).
    pub shards: i32,
}

/// The runs of a Workflow waiting for their Workplan.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PendingRuns {
    /// How many runs are waiting.
    pub count: i32,
    /// When the oldest waiting run was decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_since: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// Why the oldest waits: `CreateFailed` (the API server refused the create; retried with
    /// back-off), `RateLimited` (`spec.limits.runsPerMinute`) or `ConcurrencyLimited`
    /// (`spec.limits.concurrentRuns`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Details of the reason: the API server's answer to the last create, or the cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One object of a Workflow's trigger record: a trigger object as the director last recorded it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RecordedObject {
    /// API version of the object.
    pub api_version: String,
    /// Kind of the object.
    pub kind: String,
    /// Namespace of the object (unset for cluster-scoped kinds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name of the object.
    pub name: String,
    /// The object's generation when recorded, for kinds that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// The object's resourceVersion when recorded, for kinds without a generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
}

/// Workplans of a Workflow counted by phase.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct WorkplanCounts {
    /// Workplans not yet started.
    #[serde(default)]
    pub pending: i32,
    /// Workplans running a task.
    #[serde(default)]
    pub running: i32,
    /// Workplans whose every task succeeded.
    #[serde(default)]
    pub completed: i32,
    /// Workplans that stopped on a failed task, their deadline or their deletion.
    #[serde(default)]
    pub failed: i32,
    /// Workplans stopped with the `kube.ci/cancel` annotation.
    #[serde(default)]
    pub cancelled: i32,
}

/// Declares the seed's `lastObservedGeneration` in the schema so that `kubectl apply` of the seed's
/// YAML passes strict field validation. Reading maps it onto `observedGeneration` (a serde alias);
/// kubeci never writes it.
fn accept_seed_alias(schema: &mut schemars::Schema) {
    if let Some(properties) = schema.get_mut("properties").and_then(|p| p.as_object_mut()) {
        properties.insert(
            "lastObservedGeneration".to_string(),
            serde_json::json!({
                "description": "The seed's name for observedGeneration: accepted when reading, never written.",
                "type": "integer",
                "format": "int64",
                "nullable": true,
            }),
        );
    }
}

/// Reads an explicit `null` (the seed writes `lastObservedResourceGeneration:` with no value)
/// as the empty default.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}
