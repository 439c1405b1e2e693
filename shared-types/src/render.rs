//! Rendering one task of a Workplan as a pod (DESIGN.md §4), and the names derived from it.
//!
//! Serial steps become init containers (the kubelet runs them in order, each only after the
//! previous one succeeded), parallel steps become the pod's containers. Every container mounts
//! the Workplan's workspace, a hostPath directory `<root>/<namespace>/<workflow>/<workplan>`, at
//! `/kubeci`. The pod name is deterministic so a worker that restarts adopts its pod instead of
//! creating a second one.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, HostPathVolumeSource, Pod, PodSpec, ResourceRequirements, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use sha2::{Digest, Sha256};

use crate::labels;
use crate::pod::{PodTemplate, PodVolume};
use crate::workflow::Step;
use crate::workplan::{TriggerEvent, Workplan};

/// Where workspaces live on the node when nothing else is configured.
pub const DEFAULT_WORKSPACE_ROOT: &str = "/var/lib/kubeci";
/// Where every container sees the workspace.
pub const WORKSPACE_MOUNT_PATH: &str = "/kubeci";
/// Name of the workspace volume in the pod.
pub const WORKSPACE_VOLUME: &str = "kubeci-workspace";

/// The image of the cleanup pod when nothing else is configured: it needs `sh`, `rm` and
/// `rmdir`.
pub const DEFAULT_CLEANUP_IMAGE: &str = "busybox:1.37";

/// The cleanup pod's CPU request when nothing else is configured. A namespace with a compute
/// ResourceQuota and no LimitRange admits only pods that state requests and limits.
pub const DEFAULT_CLEANUP_CPU_REQUEST: &str = "10m";
/// The cleanup pod's CPU limit when nothing else is configured: room for `rm` of a large tree.
pub const DEFAULT_CLEANUP_CPU_LIMIT: &str = "100m";
/// The cleanup pod's memory request when nothing else is configured.
pub const DEFAULT_CLEANUP_MEMORY_REQUEST: &str = "16Mi";
/// The cleanup pod's memory limit when nothing else is configured.
pub const DEFAULT_CLEANUP_MEMORY_LIMIT: &str = "64Mi";

/// Settings of the rendering that are the operator's, not the user's.
#[derive(Clone, Debug, PartialEq)]
pub struct RenderConfig {
    /// Directory on the node under which workspaces are created.
    pub workspace_root: String,
    /// Image of the cleanup pod.
    pub cleanup_image: String,
    /// Requests and limits of the cleanup pod's container.
    pub cleanup_resources: ResourceRequirements,
}

impl Default for RenderConfig {
    fn default() -> Self {
        Self {
            workspace_root: DEFAULT_WORKSPACE_ROOT.to_string(),
            cleanup_image: DEFAULT_CLEANUP_IMAGE.to_string(),
            cleanup_resources: cleanup_resources(
                [DEFAULT_CLEANUP_CPU_REQUEST, DEFAULT_CLEANUP_MEMORY_REQUEST],
                [DEFAULT_CLEANUP_CPU_LIMIT, DEFAULT_CLEANUP_MEMORY_LIMIT],
            ),
        }
    }
}

/// The cleanup container's resources from `[cpu, memory]` requests and limits.
pub fn cleanup_resources(requests: [&str; 2], limits: [&str; 2]) -> ResourceRequirements {
    let quantities = |[cpu, memory]: [&str; 2]| {
        Some(BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.to_string())),
            ("memory".to_string(), Quantity(memory.to_string())),
        ]))
    };
    ResourceRequirements { requests: quantities(requests), limits: quantities(limits), ..Default::default() }
}

/// What the cleanup container runs, with the workspace's namespace, Workflow and Workplan as
/// `$1 $2 $3` (never spliced into the script). Only the `rm` decides the outcome: the parents
/// go only when empty, and an `rmdir` that finds another run's directory (or races a new run's
/// `mkdir`, which the kubelet retries) is no failure.
const CLEANUP_SCRIPT: &str =
    r#"cd /workspaces && rm -rf -- "$1/$2/$3" && { rmdir -- "$1/$2" "$1" 2>/dev/null; true; }"#;

/// Why a task could not be rendered: the Workplan is not one the API server returned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// Name, namespace or uid is missing from the Workplan's metadata.
    #[error("Workplan {name:?} has no metadata.{field}")]
    MissingMetadata { name: String, field: &'static str },
    /// The task index is past the last task.
    #[error("Workplan {name:?} has {count} tasks, there is no task {index}")]
    NoSuchTask { name: String, index: usize, count: usize },
}

/// The pod that runs task `index` of `workplan`; `node` pins it to the node of earlier tasks.
pub fn task_pod(
    workplan: &Workplan,
    index: usize,
    node: Option<&str>,
    config: &RenderConfig,
) -> Result<Pod, RenderError> {
    task_pod_attempt(workplan, index, 1, node, config)
}

/// The pod of attempt `attempt` (1-based) of task `index`: a retry is a new pod, named and
/// labelled after its attempt ([`attempt_pod_name`], [`labels::ATTEMPT`]), so the failed
/// attempts' pods and logs stay.
pub fn task_pod_attempt(
    workplan: &Workplan,
    index: usize,
    attempt: u32,
    node: Option<&str>,
    config: &RenderConfig,
) -> Result<Pod, RenderError> {
    let meta = WorkplanMeta::of(workplan)?;
    let task = workplan.spec.tasks.get(index).ok_or_else(|| RenderError::NoSuchTask {
        name: meta.name.to_string(),
        index,
        count: workplan.spec.tasks.len(),
    })?;

    let container = |step: &Step| step_container(step);
    let init_containers: Vec<Container> = task.serial_steps.iter().map(container).collect();
    let containers: Vec<Container> = task.parallel_steps.iter().map(container).collect();
    let template = workplan.spec.run.pod_template.clone().unwrap_or_default();
    let mut volumes = vec![workspace_volume(&meta, &workplan.spec.workflow, config)];
    volumes.extend(mounted_volumes(&template, task.serial_steps.iter().chain(&task.parallel_steps)));

    Ok(Pod {
        metadata: ObjectMeta {
            name: Some(attempt_pod_name(meta.name, index, attempt)),
            namespace: Some(meta.namespace.to_string()),
            labels: Some(
                [
                    (labels::WORKFLOW.to_string(), workplan.spec.workflow.clone()),
                    (labels::WORKPLAN.to_string(), meta.name.to_string()),
                    (labels::TASK.to_string(), index.to_string()),
                ]
                .into_iter()
                .chain((attempt > 1).then(|| (labels::ATTEMPT.to_string(), attempt.to_string())))
                .collect(),
            ),
            owner_references: Some(vec![meta.owner_reference()]),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            init_containers: (!init_containers.is_empty()).then_some(init_containers),
            containers,
            restart_policy: Some("Never".to_string()),
            node_name: node.map(str::to_string),
            active_deadline_seconds: task_deadline(&task.serial_steps, &task.parallel_steps),
            volumes: Some(volumes),
            node_selector: (!template.node_selector.is_empty()).then_some(template.node_selector),
            affinity: template.affinity,
            ..shared_pod_settings(workplan.spec.run.pod_template.as_ref())
        }),
        status: None,
    })
}

/// The template's settings that every pod of the run gets, the cleanup pod included: it runs
/// where the tasks ran, so it must tolerate the same taints, and at the same priority.
fn shared_pod_settings(template: Option<&PodTemplate>) -> PodSpec {
    let Some(template) = template else { return PodSpec::default() };
    PodSpec {
        tolerations: non_empty(&template.tolerations),
        image_pull_secrets: non_empty(&template.image_pull_secrets),
        priority_class_name: template.priority_class_name.clone(),
        ..PodSpec::default()
    }
}

/// The template's volumes that `steps` mount, in the template's order: a pod holds only what its
/// steps use, so that a task does not wait for a Secret or claim another task needs.
fn mounted_volumes<'a>(template: &PodTemplate, steps: impl Iterator<Item = &'a Step>) -> Vec<Volume> {
    let mounted: std::collections::BTreeSet<&str> =
        steps.flat_map(|s| s.volume_mounts.iter().map(|m| m.name.as_str())).collect();
    template.volumes.iter().filter(|v| mounted.contains(v.name.as_str())).map(PodVolume::to_volume).collect()
}

/// The pod that removes the Workplan's workspace directory on `node` (DESIGN.md §4): it mounts the
/// workspace root, deletes `<namespace>/<workflow>/<workplan>` in it, then `<namespace>/<workflow>`
/// and `<namespace>` if they are left empty ([`CLEANUP_SCRIPT`]). Requests and limits are always
/// set, so that a namespace with a compute ResourceQuota admits it.
pub fn cleanup_pod(
    workplan: &Workplan,
    node: Option<&str>,
    config: &RenderConfig,
) -> Result<Pod, RenderError> {
    let meta = WorkplanMeta::of(workplan)?;
    let workflow = &workplan.spec.workflow;
    Ok(Pod {
        metadata: ObjectMeta {
            name: Some(cleanup_pod_name(meta.name)),
            namespace: Some(meta.namespace.to_string()),
            labels: Some(BTreeMap::from([
                (labels::WORKFLOW.to_string(), workflow.clone()),
                (labels::WORKPLAN.to_string(), meta.name.to_string()),
                (labels::TASK.to_string(), "cleanup".to_string()),
            ])),
            owner_references: Some(vec![meta.owner_reference()]),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "cleanup".to_string(),
                image: Some(config.cleanup_image.clone()),
                image_pull_policy: Some("IfNotPresent".to_string()),
                // Namespace, Workflow and Workplan names are DNS-1123 names: no '/' or '..' can
                // leave the root.
                command: Some(vec![
                    "sh".into(),
                    "-c".into(),
                    CLEANUP_SCRIPT.into(),
                    "cleanup".into(),
                    meta.namespace.to_string(),
                    workflow.clone(),
                    meta.name.to_string(),
                ]),
                resources: Some(config.cleanup_resources.clone()),
                volume_mounts: Some(vec![VolumeMount {
                    name: WORKSPACE_VOLUME.to_string(),
                    mount_path: "/workspaces".to_string(),
                    ..VolumeMount::default()
                }]),
                ..Container::default()
            }],
            restart_policy: Some("Never".to_string()),
            node_name: node.map(str::to_string),
            volumes: Some(vec![Volume {
                name: WORKSPACE_VOLUME.to_string(),
                host_path: Some(HostPathVolumeSource {
                    path: root_dir(&config.workspace_root),
                    type_: Some("DirectoryOrCreate".to_string()),
                }),
                ..Volume::default()
            }]),
            ..shared_pod_settings(workplan.spec.run.pod_template.as_ref())
        }),
        status: None,
    })
}

/// The workspace root as a hostPath: without a trailing `/`, except for `/` itself.
fn root_dir(root: &str) -> String {
    match root.trim_end_matches('/') {
        "" => "/".to_string(),
        trimmed => trimmed.to_string(),
    }
}

/// `<workplan>-cleanup`.
pub fn cleanup_pod_name(workplan: &str) -> String {
    format!("{workplan}-cleanup")
}

/// `<workplan>-task-<i>`.
pub fn task_pod_name(workplan: &str, index: usize) -> String {
    format!("{workplan}-task-{index}")
}

/// `<workplan>-task-<i>` for the first attempt, `<workplan>-task-<i>-attempt-<n>` for a retry.
pub fn attempt_pod_name(workplan: &str, index: usize, attempt: u32) -> String {
    match attempt {
        0 | 1 => task_pod_name(workplan, index),
        n => format!("{workplan}-task-{index}-attempt-{n}"),
    }
}

/// `<root>/<namespace>/<workflow>/<workplan>`: the namespace keeps two namespaces' Workflows of
/// the same name apart.
pub fn workspace_path(root: &str, namespace: &str, workflow: &str, workplan: &str) -> String {
    format!("{}/{namespace}/{workflow}/{workplan}", root.trim_end_matches('/'))
}

/// `<workflow>-<hash>`: the hash covers the Workflow's uid and the event's identity (object uid,
/// generation or resourceVersion, event kind, manual run value), so a replayed event yields the
/// same name and creating the Workplan twice fails with AlreadyExists instead of running twice.
/// The Workflow part is cut so the name stays a valid label value (63 characters).
pub fn workplan_name(workflow: &str, workflow_uid: &str, trigger: &TriggerEvent) -> String {
    let mut hasher = Sha256::new();
    for part in [
        workflow_uid,
        trigger.uid.as_deref().unwrap_or(""),
        &trigger.generation.map(|g| g.to_string()).unwrap_or_default(),
        trigger.resource_version.as_deref().unwrap_or(""),
        trigger.event.as_str(),
        trigger.run.as_deref().unwrap_or(""),
    ] {
        hasher.update(part.as_bytes());
        hasher.update([0u8]); // separator: ("ab", "c") and ("a", "bc") differ
    }
    let hash: String = hasher.finalize().iter().take(5).map(|b| format!("{b:02x}")).collect();
    let prefix: String = workflow.chars().take(63 - 1 - hash.len()).collect();
    format!("{}-{hash}", prefix.trim_end_matches(['-', '.']))
}

struct WorkplanMeta<'a> {
    name: &'a str,
    namespace: &'a str,
    uid: &'a str,
}

impl<'a> WorkplanMeta<'a> {
    fn of(workplan: &'a Workplan) -> Result<Self, RenderError> {
        let name = workplan.metadata.name.as_deref().unwrap_or_default();
        let missing = |field| RenderError::MissingMetadata { name: name.to_string(), field };
        Ok(Self {
            name: workplan.metadata.name.as_deref().ok_or_else(|| missing("name"))?,
            namespace: workplan.metadata.namespace.as_deref().ok_or_else(|| missing("namespace"))?,
            uid: workplan.metadata.uid.as_deref().ok_or_else(|| missing("uid"))?,
        })
    }

    fn owner_reference(&self) -> OwnerReference {
        OwnerReference {
            api_version: Workplan::api_version(&()).into_owned(),
            kind: Workplan::kind(&()).into_owned(),
            name: self.name.to_string(),
            uid: self.uid.to_string(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }
}

fn workspace_volume(meta: &WorkplanMeta<'_>, workflow: &str, config: &RenderConfig) -> Volume {
    Volume {
        name: WORKSPACE_VOLUME.to_string(),
        host_path: Some(HostPathVolumeSource {
            path: workspace_path(&config.workspace_root, meta.namespace, workflow, meta.name),
            type_: Some("DirectoryOrCreate".to_string()),
        }),
        ..Volume::default()
    }
}

fn non_empty<T: Clone>(v: &[T]) -> Option<Vec<T>> {
    (!v.is_empty()).then(|| v.to_vec())
}

fn step_container(step: &Step) -> Container {
    Container {
        name: step.name.clone(),
        image: Some(step.image.clone()),
        command: non_empty(&step.commands),
        args: non_empty(&step.args),
        env: non_empty(&step.env),
        working_dir: step.working_dir.clone(),
        resources: step.resources.clone(),
        image_pull_policy: Some(step.image_pull_policy.clone().unwrap_or_else(|| "IfNotPresent".to_string())),
        env_from: non_empty(&step.env_from),
        volume_mounts: Some(
            std::iter::once(VolumeMount {
                name: WORKSPACE_VOLUME.to_string(),
                mount_path: WORKSPACE_MOUNT_PATH.to_string(),
                ..VolumeMount::default()
            })
            .chain(step.volume_mounts.iter().cloned())
            .collect(),
        ),
        ..Container::default()
    }
}

/// The task's time budget: the serial steps run one after the other, the parallel ones together.
/// Only when every step has a budget; one unbounded step makes the task unbounded.
fn task_deadline(serial: &[Step], parallel: &[Step]) -> Option<i64> {
    let serial_total: i64 = serial.iter().map(|s| s.timeout_seconds).sum::<Option<i64>>()?;
    let parallel_max = parallel.iter().map(|s| s.timeout_seconds).collect::<Option<Vec<i64>>>()?;
    Some(serial_total + parallel_max.into_iter().max().unwrap_or(0))
}
