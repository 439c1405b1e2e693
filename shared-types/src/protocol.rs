//! The hand-off protocol of DESIGN.md §5 as pure functions over a `RequestState`.
//!
//! The workplan-operator asks [`next`] what to do for a Workplan; workers move a job with
//! [`claim`] and [`report`]. Every transition returns the whole new RequestState: the state change
//! (spec) and its history entry (status) are one object, written in one update guarded by the
//! resourceVersion it was read at, so two writers can never both succeed and no entry is lost.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::pod::TaskRetries;
pub use crate::request_state::{CLEANUP, Job};
use crate::request_state::{HistoryEntry, JobState, RequestState, RequestStateSpec, RequestStateStatus};
use crate::workplan::Phase;
use crate::workplan::Workplan;

/// What the protocol needs to know of a Workplan: its tasks' retry policies, one per task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The retry policy of each task, in order.
    pub retries: Vec<TaskRetries>,
}

impl Policy {
    /// The policy of `workplan`'s tasks.
    pub fn of(workplan: &Workplan) -> Policy {
        let retries = workplan
            .spec
            .tasks
            .iter()
            .map(|t| TaskRetries::of(t.serial_steps.iter().chain(&t.parallel_steps)));
        Policy { retries: retries.collect() }
    }

    /// `tasks` tasks that are never retried.
    pub fn without_retries(tasks: usize) -> Policy {
        Policy { retries: vec![TaskRetries::default(); tasks] }
    }

    /// How many tasks.
    pub fn tasks(&self) -> usize {
        self.retries.len()
    }
}

/// What the workplan-operator does next for a Workplan of `tasks` tasks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Create the RequestState requesting `task-0` ([`first_request`]).
    Create,
    /// Request `job` (with a history message, such as why a job is requested again).
    Request { job: Job, message: Option<String> },
    /// The job is with a worker, or waiting for one: nothing to do until the RequestState changes
    /// (or, for a started job, until its worker's lease would expire).
    Wait,
    /// The cleanup was attempted: the Workplan's final phase and reason.
    Finish { phase: Phase, reason: String },
    /// A failed task's backoff is over: request it again (`message` names the attempt).
    Retry { job: Job, message: String },
    /// A task failed and will be tried again at `until` (its backoff): nothing to do before.
    Backoff { job: Job, until: Timestamp, reason: String },
}

/// Why a RequestState cannot be acted on: it was written by something that does not follow the
/// protocol. The operator reports it on the Workplan instead of guessing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("RequestState job {job} is past the Workplan's last task (it has {tasks})")]
    NoSuchTask { job: Job, tasks: usize },
}

/// The operator's decision. `worker_alive` tells whether a worker's Lease is still held; `now`
/// decides whether a failed task's backoff is over.
pub fn next(
    policy: &Policy,
    request: Option<&RequestState>,
    worker_alive: impl Fn(&str) -> bool,
    now: Timestamp,
) -> Result<Next, ProtocolError> {
    let tasks = policy.tasks();
    let Some(request) = request else { return Ok(Next::Create) };
    let job = request.spec.job;
    if let Job::Task(i) = job
        && i >= tasks
    {
        return Err(ProtocolError::NoSuchTask { job, tasks });
    }
    Ok(match (job, request.spec.state) {
        (_, JobState::Requested) => Next::Wait,
        (_, JobState::Started) => match &request.spec.worker {
            Some(worker) if worker_alive(worker) => Next::Wait,
            worker => Next::Request {
                job,
                message: Some(format!(
                    "worker {} lost: its lease expired",
                    worker.as_deref().unwrap_or("<none>")
                )),
            },
        },
        (Job::Task(i), JobState::Completed) if i + 1 < tasks => {
            Next::Request { job: Job::Task(i + 1), message: None }
        }
        (Job::Task(i), JobState::Failed) if retry_left(policy, request, i) => {
            let retries = policy.retries[i];
            let failed = attempt(request);
            let failed_at = history(request).last().map_or(now, |e| e.timestamp.0);
            let until = failed_at
                .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(retries.delay_seconds(failed)))
                .unwrap_or(failed_at);
            let why = last_message(request, job).unwrap_or_else(|| "no reason given".into());
            let next_attempt = failed + 1;
            let of = retries.limit + 1;
            if now >= until {
                Next::Retry {
                    job,
                    message: format!("attempt {next_attempt} of {of}, after attempt {failed} failed: {why}"),
                }
            } else {
                Next::Backoff {
                    job,
                    until,
                    reason: format!(
                        "{job} attempt {failed} of {of} failed: {why}; attempt {next_attempt} at {until}"
                    ),
                }
            }
        }
        (Job::Task(_), JobState::Completed) | (Job::Task(_), JobState::Failed) => {
            Next::Request { job: Job::Cleanup, message: None }
        }
        (Job::Cleanup, state) => {
            let (phase, mut reason) = match failure(request) {
                Some(failed) => (Phase::Failed, failed),
                None => (Phase::Completed, format!("all {tasks} tasks succeeded")),
            };
            if state == JobState::Failed {
                let why = last_message(request, Job::Cleanup).unwrap_or_else(|| "no reason given".into());
                reason.push_str(&format!("; cleanup failed, the workspace may remain on the node: {why}"));
            }
            Next::Finish { phase, reason }
        }
    })
}

/// Whether task `i`, FAILED now, has attempts left under its retry policy.
fn retry_left(policy: &Policy, request: &RequestState, i: usize) -> bool {
    attempt(request) <= policy.retries[i].limit
}

/// The attempt (1-based) of the RequestState's current job: one more than the FAILED attempts of
/// its task before it; for a FAILED job, the attempt that failed. A job requested again because
/// its worker was lost stays the same attempt (its pod is adopted, not made anew).
pub fn attempt(request: &RequestState) -> u32 {
    let job = request.spec.job;
    if job == Job::Cleanup {
        return 1;
    }
    let failed =
        history(request).iter().filter(|e| e.job == job && e.state == JobState::Failed).count() as u32;
    if request.spec.state == JobState::Failed { failed.max(1) } else { failed + 1 }
}

/// The failure that ended the run, from the history: the task whose last attempt failed, with
/// the worker's message (the step, its exit code and termination message) for each attempt.
pub fn failure(request: &RequestState) -> Option<String> {
    let entries = history(request);
    let last = entries.iter().rposition(|e| e.state == JobState::Failed && e.job != Job::Cleanup)?;
    let job = entries[last].job;
    if entries[last + 1..].iter().any(|e| e.job == job) {
        return None; // tried again after it
    }
    let messages: Vec<&str> = entries
        .iter()
        .filter(|e| e.job == job && e.state == JobState::Failed)
        .map(|e| e.message.as_deref().unwrap_or("no reason given"))
        .collect();
    Some(match messages.as_slice() {
        [only] => format!("{job} failed: {only}"),
        all => {
            let attempts: Vec<String> =
                all.iter().enumerate().map(|(n, message)| format!("attempt {}: {message}", n + 1)).collect();
            format!("{job} failed after {} attempts: {}", all.len(), attempts.join("; "))
        }
    })
}

/// The node the Workplan's pods run on: the first node a worker reported.
pub fn node(request: &RequestState) -> Option<String> {
    history(request).iter().find_map(|e| e.node_name.clone())
}

/// The RequestState of a new Workplan, requesting `task-0`: same name and namespace, owned by
/// the Workplan (garbage collection), `request-uid` its uid. The owner reference blocks the
/// Workplan's deletion (`blockOwnerDeletion`): with foreground propagation the collector then
/// deletes the RequestState before it lets the Workplan go, so the operator never requests a
/// deleted run's cleanup on a RequestState the collector is about to delete.
pub fn first_request(workplan: &Workplan, now: Timestamp) -> RequestState {
    use kube::{Resource, ResourceExt};
    let mut fresh = RequestState::new(
        &workplan.name_any(),
        RequestStateSpec {
            request_uid: workplan.metadata.uid.clone().unwrap_or_default(),
            job: Job::Task(0),
            state: JobState::Requested,
            worker: None,
        },
    );
    fresh.metadata.namespace = workplan.namespace();
    fresh.metadata.owner_references = workplan.controller_owner_ref(&()).map(|mut owner| {
        owner.block_owner_deletion = Some(true);
        vec![owner]
    });
    request(&fresh, Job::Task(0), None, now)
}

/// The operator's request of `job`: a new RequestState to write with the resourceVersion of
/// `request`.
pub fn request(request: &RequestState, job: Job, message: Option<String>, now: Timestamp) -> RequestState {
    transition(request, job, JobState::Requested, None, None, message, now)
}

/// Why a worker cannot make a transition.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("job {job} is {state:?}, not REQUESTED: another worker claimed it, or it moved on")]
    NotRequested { job: Job, state: JobState },
    #[error("job {job} is claimed by {owner:?}, not by {worker}")]
    NotOwner { job: Job, owner: Option<String>, worker: String },
}

/// A worker's claim: REQUESTED → STARTED with itself as the worker. Written with the
/// resourceVersion it read, a claim that loses the race gets a conflict.
pub fn claim(request: &RequestState, worker: &str, now: Timestamp) -> Result<RequestState, TransitionError> {
    if request.spec.state != JobState::Requested {
        return Err(TransitionError::NotRequested { job: request.spec.job, state: request.spec.state });
    }
    Ok(transition(request, request.spec.job, JobState::Started, Some(worker), None, None, now))
}

/// A worker's report of how its job ended: STARTED → COMPLETED or FAILED, with the node the
/// pod ran on and the message.
pub fn report(
    request: &RequestState,
    worker: &str,
    state: JobState,
    node: Option<&str>,
    message: Option<String>,
    now: Timestamp,
) -> Result<RequestState, TransitionError> {
    if request.spec.state != JobState::Started || request.spec.worker.as_deref() != Some(worker) {
        return Err(TransitionError::NotOwner {
            job: request.spec.job,
            owner: request.spec.worker.clone(),
            worker: worker.to_string(),
        });
    }
    Ok(transition(request, request.spec.job, state, Some(worker), node, message, now))
}

fn transition(
    request: &RequestState,
    job: Job,
    state: JobState,
    worker: Option<&str>,
    node: Option<&str>,
    message: Option<String>,
    now: Timestamp,
) -> RequestState {
    let mut next = request.clone();
    next.spec.job = job;
    next.spec.state = state;
    next.spec.worker = worker.map(str::to_string);
    let status = next.status.get_or_insert_with(RequestStateStatus::default);
    status.history.push(HistoryEntry {
        job,
        state,
        timestamp: Time(now),
        worker: worker.map(str::to_string),
        node_name: node.map(str::to_string),
        message,
    });
    next
}

fn history(request: &RequestState) -> &[HistoryEntry] {
    request.status.as_ref().map(|s| s.history.as_slice()).unwrap_or_default()
}

fn last_message(request: &RequestState, job: Job) -> Option<String> {
    history(request).iter().rev().find(|e| e.job == job).and_then(|e| e.message.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request_state::RequestStateSpec;
    use pretty_assertions::assert_eq;

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    fn new_request() -> RequestState {
        let fresh = RequestState::new(
            "wp",
            RequestStateSpec {
                request_uid: "wp-uid".into(),
                job: Job::Task(0),
                state: JobState::Requested,
                worker: None,
            },
        );
        request(&fresh, Job::Task(0), None, now())
    }

    fn alive(_: &str) -> bool {
        true
    }

    fn run(rqs: &RequestState, worker: &str, state: JobState, message: Option<&str>) -> RequestState {
        let started = claim(rqs, worker, now()).unwrap();
        report(&started, worker, state, Some("node-a"), message.map(Into::into), now()).unwrap()
    }

    fn trail(rqs: &RequestState) -> Vec<(String, JobState, Option<String>)> {
        history(rqs).iter().map(|e| (e.job.to_string(), e.state, e.worker.clone())).collect()
    }

    #[test]
    fn jobs_parse_like_the_crd_pattern() {
        assert_eq!(Job::parse("task-0"), Some(Job::Task(0)));
        assert_eq!(Job::parse("task-12"), Some(Job::Task(12)));
        assert_eq!(Job::parse("cleanup"), Some(Job::Cleanup));
        for bad in ["task-", "task-01", "task--1", "task-x", "Cleanup", "task-1 "] {
            assert_eq!(Job::parse(bad), None, "{bad}");
        }
        assert_eq!(Job::Task(3).to_string(), "task-3");
    }

    #[test]
    fn a_two_task_run_walks_task_0_task_1_cleanup() {
        assert_eq!(next(&Policy::without_retries(2), None, alive, now()), Ok(Next::Create));
        let rqs = new_request();
        assert_eq!(next(&Policy::without_retries(2), Some(&rqs), alive, now()), Ok(Next::Wait));
        let rqs = run(&rqs, "w1", JobState::Completed, None);
        assert_eq!(
            next(&Policy::without_retries(2), Some(&rqs), alive, now()),
            Ok(Next::Request { job: Job::Task(1), message: None })
        );
        let rqs = request(&rqs, Job::Task(1), None, now());
        let rqs = run(&rqs, "w2", JobState::Completed, None);
        assert_eq!(
            next(&Policy::without_retries(2), Some(&rqs), alive, now()),
            Ok(Next::Request { job: Job::Cleanup, message: None })
        );
        let rqs = request(&rqs, Job::Cleanup, None, now());
        let rqs = run(&rqs, "w1", JobState::Completed, None);
        assert_eq!(
            next(&Policy::without_retries(2), Some(&rqs), alive, now()),
            Ok(Next::Finish { phase: Phase::Completed, reason: "all 2 tasks succeeded".into() })
        );
        let w = |w: &str| Some(w.to_string());
        assert_eq!(
            trail(&rqs),
            vec![
                ("task-0".into(), JobState::Requested, None),
                ("task-0".into(), JobState::Started, w("w1")),
                ("task-0".into(), JobState::Completed, w("w1")),
                ("task-1".into(), JobState::Requested, None),
                ("task-1".into(), JobState::Started, w("w2")),
                ("task-1".into(), JobState::Completed, w("w2")),
                ("cleanup".into(), JobState::Requested, None),
                ("cleanup".into(), JobState::Started, w("w1")),
                ("cleanup".into(), JobState::Completed, w("w1")),
            ]
        );
        assert_eq!(node(&rqs).as_deref(), Some("node-a"));
    }

    #[test]
    fn a_failure_skips_later_tasks_and_still_cleans_up() {
        let rqs = run(
            &new_request(),
            "w1",
            JobState::Failed,
            Some("step \"build\" exited with code 2: make: *** no rule"),
        );
        assert_eq!(
            next(&Policy::without_retries(3), Some(&rqs), alive, now()),
            Ok(Next::Request { job: Job::Cleanup, message: None })
        );
        let rqs = run(&request(&rqs, Job::Cleanup, None, now()), "w1", JobState::Completed, None);
        assert_eq!(
            next(&Policy::without_retries(3), Some(&rqs), alive, now()),
            Ok(Next::Finish {
                phase: Phase::Failed,
                reason: "task-0 failed: step \"build\" exited with code 2: make: *** no rule".into()
            })
        );
    }

    #[test]
    fn a_failed_cleanup_is_reported_not_hidden() {
        let rqs = run(&new_request(), "w1", JobState::Completed, None);
        let rqs = run(
            &request(&rqs, Job::Cleanup, None, now()),
            "w1",
            JobState::Failed,
            Some("pod could not be scheduled"),
        );
        assert_eq!(
            next(&Policy::without_retries(1), Some(&rqs), alive, now()),
            Ok(Next::Finish {
                phase: Phase::Completed,
                reason: "all 1 tasks succeeded; cleanup failed, the workspace may remain on the node: pod could not be scheduled".into()
            })
        );
    }

    #[test]
    fn a_lost_worker_gets_its_job_requested_again() {
        let started = claim(&new_request(), "w1", now()).unwrap();
        assert_eq!(
            next(&Policy::without_retries(1), Some(&started), |w| w != "w1", now()),
            Ok(Next::Request {
                job: Job::Task(0),
                message: Some("worker w1 lost: its lease expired".into())
            })
        );
        assert_eq!(next(&Policy::without_retries(1), Some(&started), alive, now()), Ok(Next::Wait));
        // Another worker then claims it; the history tells the whole story.
        let again = request(&started, Job::Task(0), Some("worker w1 lost: its lease expired".into()), now());
        let done = run(&again, "w2", JobState::Completed, None);
        assert_eq!(history(&done).iter().filter(|e| e.state == JobState::Started).count(), 2);
        assert_eq!(history(&done)[2].message.as_deref(), Some("worker w1 lost: its lease expired"));
    }

    #[test]
    fn only_one_claim_and_only_the_owner_reports() {
        let rqs = new_request();
        let started = claim(&rqs, "w1", now()).unwrap();
        assert!(matches!(claim(&started, "w2", now()), Err(TransitionError::NotRequested { .. })));
        assert!(matches!(
            report(&started, "w2", JobState::Completed, None, None, now()),
            Err(TransitionError::NotOwner { .. })
        ));
        assert!(matches!(
            report(&rqs, "w1", JobState::Completed, None, None, now()),
            Err(TransitionError::NotOwner { .. })
        ));
    }

    #[test]
    fn malformed_request_states_are_errors_not_guesses() {
        let mut rqs = new_request();
        rqs.spec.job = Job::Task(5);
        assert_eq!(
            next(&Policy::without_retries(2), Some(&rqs), alive, now()),
            Err(ProtocolError::NoSuchTask { job: Job::Task(5), tasks: 2 })
        );
        // A job that is neither never reaches the protocol: it fails at deserialization.
        let json = serde_json::json!({"request-uid": "u", "job": "deploy", "state": "REQUESTED"});
        let error = serde_json::from_value::<RequestStateSpec>(json).unwrap_err();
        assert_eq!(error.to_string(), "job \"deploy\" is neither task-<i> nor cleanup");
    }
}
