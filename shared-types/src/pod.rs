//! What a run asks of its pods beyond the steps' containers: the Workflow's pod template (node
//! selection, tolerations, pull secrets, priority, volumes), carried unchanged into each Workplan
//! so a run keeps the settings it started with, and the retry policy of a step.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, ConfigMapVolumeSource, EmptyDirVolumeSource, LocalObjectReference,
    PersistentVolumeClaimVolumeSource, SecretVolumeSource, Toleration, Volume,
};
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Most volumes a pod template may declare.
pub const MAX_VOLUMES: usize = 64;

/// Most retries a step may ask for.
pub const MAX_RETRIES: i32 = 10;

/// The longest wait between two attempts of a task, however the backoff grows.
pub const MAX_BACKOFF_SECONDS: i64 = 600;

/// The backoff before the first retry when a step sets `retries.limit` and no backoff.
pub const DEFAULT_BACKOFF_SECONDS: i64 = 10;

/// Settings applied to every task pod of a run. The workspace cleanup pod gets the tolerations,
/// the priority class and the image pull secrets (so it runs where the tasks ran and as they
/// did); it is pinned to the run's node, so node selector and affinity do not apply to it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplate {
    /// Labels a node must have for the run's first pod to be scheduled there (every later pod of
    /// the run goes to the same node).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Taints of nodes the run's pods tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,

    /// Node and pod affinity of the run's pods, as in a pod's `spec.affinity`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// Secrets (in the Workflow's namespace) holding credentials for pulling the steps' images
    /// from private registries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,

    /// The PriorityClass of the run's pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,

    /// Volumes the steps can mount with `volumeMounts`: each a ConfigMap, a Secret, a
    /// PersistentVolumeClaim or an emptyDir. A task's pod holds the volumes its steps mount. The
    /// name `kubeci-workspace` is kubeci's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_VOLUMES))]
    pub volumes: Vec<PodVolume>,
}

/// A volume the steps of a run can mount: exactly one of `configMap`, `secret`,
/// `persistentVolumeClaim` and `emptyDir`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodVolume {
    /// The volume's name, which steps' `volumeMounts` refer to: a DNS-1123 label.
    pub name: String,

    /// A ConfigMap's keys as files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapVolumeSource>,

    /// A Secret's keys as files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretVolumeSource>,

    /// A PersistentVolumeClaim in the Workflow's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<PersistentVolumeClaimVolumeSource>,

    /// A directory that lives as long as the task's pod (not shared between tasks: use the
    /// workspace for that).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_dir: Option<EmptyDirVolumeSource>,
}

impl PodVolume {
    /// How many sources are set: exactly one is valid.
    pub fn sources(&self) -> usize {
        [
            self.config_map.is_some(),
            self.secret.is_some(),
            self.persistent_volume_claim.is_some(),
            self.empty_dir.is_some(),
        ]
        .into_iter()
        .filter(|set| *set)
        .count()
    }

    /// The pod's volume.
    pub fn to_volume(&self) -> Volume {
        Volume {
            name: self.name.clone(),
            config_map: self.config_map.clone(),
            secret: self.secret.clone(),
            persistent_volume_claim: self.persistent_volume_claim.clone(),
            empty_dir: self.empty_dir.clone(),
            ..Volume::default()
        }
    }
}

/// How often a failed task is tried again because of this step, and how long to wait between
/// attempts.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Retries {
    /// Most retries (attempts after the first). A task is one pod and is retried whole: its limit
    /// is the largest `retries.limit` among its steps, so every step of a task with a retried step
    /// may run more than once.
    #[schemars(range(min = 0, max = MAX_RETRIES))]
    pub limit: i32,

    /// Seconds to wait before the first retry; each further retry waits twice as long as the one
    /// before, at most 600 seconds. Default 10. A task waits the largest backoff among the steps
    /// that set the task's limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = MAX_BACKOFF_SECONDS))]
    pub backoff_seconds: Option<i64>,
}

/// A task's retry policy. A task is one pod, so it is retried whole: its limit is the largest
/// `retries.limit` among its steps, and its backoff the largest `retries.backoffSeconds` among the
/// steps with that limit (10 seconds where they set none). Retry `n` (1-based) waits
/// `backoff × 2^(n-1)`, at most [`MAX_BACKOFF_SECONDS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TaskRetries {
    /// Attempts after the first.
    pub limit: u32,
    /// The wait before the first retry, in seconds.
    pub backoff_seconds: i64,
}

impl TaskRetries {
    /// The policy of a task with `steps`. Values out of range (which only a Workplan written past
    /// the planner can hold) are brought into it.
    pub fn of<'a>(steps: impl IntoIterator<Item = &'a crate::Step>) -> TaskRetries {
        let policies: Vec<(u32, i64)> = steps
            .into_iter()
            .filter_map(|step| step.retries.as_ref())
            .map(|r| {
                let limit = r.limit.clamp(0, MAX_RETRIES) as u32;
                let backoff =
                    r.backoff_seconds.unwrap_or(DEFAULT_BACKOFF_SECONDS).clamp(0, MAX_BACKOFF_SECONDS);
                (limit, backoff)
            })
            .collect();
        let limit = policies.iter().map(|(limit, _)| *limit).max().unwrap_or(0);
        let backoff_seconds = policies
            .iter()
            .filter(|(l, _)| *l == limit)
            .map(|(_, backoff)| *backoff)
            .max()
            .unwrap_or(DEFAULT_BACKOFF_SECONDS);
        TaskRetries { limit, backoff_seconds }
    }

    /// Seconds to wait before retry `retry` (1-based).
    pub fn delay_seconds(&self, retry: u32) -> i64 {
        let doublings = retry.saturating_sub(1).min(30);
        self.backoff_seconds.saturating_mul(1 << doublings).min(MAX_BACKOFF_SECONDS)
    }
}
