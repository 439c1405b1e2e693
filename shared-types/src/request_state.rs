//! The `RequestState` custom resource: the hand-off of a Workplan's jobs to the workers.
//!
//! The shape follows the crd-watcher seed (`request-uid`, `job`, `state`, `history`). Unlike the
//! seed, the CRD has no status subresource (see [`crate::crds`]): a transition (`spec.state`) and
//! its history entry (`status.history`) must land in one atomic write, and with a status
//! subresource they would need two writes, one of which can be lost.

use std::fmt;
use std::str::FromStr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// The hand-off of one Workplan's jobs (`task-0` … `task-<n-1>`, then `cleanup`) to the workers.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "kube.ci",
    version = "v1alpha1",
    kind = "RequestState",
    namespaced,
    status = "RequestStateStatus",
    derive = "PartialEq",
    shortname = "rqs",
    category = "kubeci",
    doc = "A RequestState hands a Workplan's jobs to the workers one at a time. The workplan-operator requests a job (state REQUESTED); one worker claims it (STARTED), runs it as a pod and reports COMPLETED or FAILED. status.history records every transition.",
    printcolumn(
        name = "Job",
        type_ = "string",
        json_path = ".spec.job",
        description = "task-<i> or cleanup"
    ),
    printcolumn(
        name = "State",
        type_ = "string",
        json_path = ".spec.state",
        description = "REQUESTED, STARTED, COMPLETED or FAILED"
    ),
    printcolumn(
        name = "Worker",
        type_ = "string",
        json_path = ".spec.worker",
        description = "The worker that claimed the job"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct RequestStateSpec {
    /// UID of the Workplan this RequestState belongs to.
    #[serde(rename = "request-uid")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("request-uid is immutable: a RequestState belongs to one Workplan"))]
    pub request_uid: String,

    /// The job requested: `task-<i>` for the i-th task (0-based), or `cleanup`.
    #[x_kube(validation = Rule::new("self == 'cleanup' || self.matches('^task-(0|[1-9][0-9]*)$')").message("job must be task-<i> or cleanup"))]
    #[schemars(with = "String")]
    pub job: Job,

    /// Where the job stands: REQUESTED, STARTED, COMPLETED or FAILED.
    pub state: JobState,

    /// Identity of the worker that claimed the job (set with STARTED).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
}

/// The state of the current job: REQUESTED (waiting for a worker), STARTED (claimed, running),
/// COMPLETED (succeeded) or FAILED (the history entry says why).
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobState {
    // Waiting for a worker to claim it.
    Requested,
    // Claimed by a worker, which is running it.
    Started,
    // Finished successfully.
    Completed,
    // Finished unsuccessfully; the history entry's message says why.
    Failed,
}

/// The audit trail of a RequestState.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RequestStateStatus {
    /// Every transition, oldest first: who moved which job to which state, when and why.
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
}

/// One transition of a RequestState.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    /// The job the transition is about.
    #[schemars(with = "String")]
    pub job: Job,

    /// The state it entered.
    pub state: JobState,

    /// When.
    pub timestamp: Time,

    /// The worker that made the transition (empty for the workplan-operator's requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,

    /// The node the job's pod ran on, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,

    /// Details: the failing step with its exit code and message, or why a job was re-requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The job name of the workspace cleanup, requested after the last task or after a failure.
pub const CLEANUP: &str = "cleanup";

/// A job of a Workplan: one of its tasks, or the cleanup. On the wire it is `task-<i>` or
/// `cleanup` (the CRD's pattern); anything else fails at deserialization, so code never sees a
/// job it would have to guess about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Job {
    /// Task `i` (0-based).
    Task(usize),
    /// Removing the workspace directory.
    Cleanup,
}

impl Job {
    /// Reads `task-<i>` or `cleanup`, exactly as the CRD's pattern allows (no sign, no leading
    /// zeros).
    pub fn parse(job: &str) -> Option<Job> {
        if job == CLEANUP {
            return Some(Job::Cleanup);
        }
        let index = job.strip_prefix("task-")?;
        if index.is_empty()
            || (index.len() > 1 && index.starts_with('0'))
            || !index.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        index.parse().ok().map(Job::Task)
    }

    /// The task's index, `None` for the cleanup.
    pub fn task(self) -> Option<usize> {
        match self {
            Job::Task(i) => Some(i),
            Job::Cleanup => None,
        }
    }
}

impl fmt::Display for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Job::Task(i) => write!(f, "task-{i}"),
            Job::Cleanup => f.write_str(CLEANUP),
        }
    }
}

/// Why a job name was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("job {0:?} is neither task-<i> nor cleanup")]
pub struct BadJob(pub String);

impl FromStr for Job {
    type Err = BadJob;

    fn from_str(job: &str) -> Result<Job, BadJob> {
        Job::parse(job).ok_or_else(|| BadJob(job.to_string()))
    }
}

impl TryFrom<String> for Job {
    type Error = BadJob;

    fn try_from(job: String) -> Result<Job, BadJob> {
        job.parse()
    }
}

impl From<Job> for String {
    fn from(job: Job) -> String {
        job.to_string()
    }
}

impl PartialEq<&str> for Job {
    fn eq(&self, other: &&str) -> bool {
        Job::parse(other) == Some(*self)
    }
}
