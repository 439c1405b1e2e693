//! The pure middle of a reconciliation: from a Workplan, its RequestState and the expiry of the
//! claimant's Lease to the RequestState write, the Event, the Workplan status to make and whether
//! the cleanup finalizer goes. No I/O and no clock (the caller passes `now`), so that every case
//! is a unit test over the YAML fixtures in `tests/fixtures/`.
//!
//! The cleanup finalizer ([`labels::CLEANUP_FINALIZER`], set by the planner at creation) goes
//! once the final phase is written (the cleanup was attempted), or at once when the Workplan is
//! deleted before any task started (nothing to clean). A Workplan deleted while a task was
//! requested or ran gets its cleanup requested instead of its next task; the task's result, if
//! its worker reports one later, is dropped (the job moved on), and its pod may run on until the
//! garbage collector removes it with the Workplan. Such a run ends `Failed` with the reason
//! `deleted while running task-<i>; workspace cleaned up` (or `...; cleanup failed, the workspace
//! may remain on the node: <why>`). Deleted during the cleanup of a run whose tasks were done, it
//! ends as that run would have.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::runtime::events::EventType;
use shared_types::protocol::{self, Job, Next, Policy};
use shared_types::{HistoryEntry, JobState, Phase, RequestState, Workplan, WorkplanStatus, labels};

use crate::status;

/// How soon to look again while an earlier Workplan's RequestState of the same name waits for
/// garbage collection. Its deletion triggers the new Workplan too (owner references are matched
/// by name); this is the safety net.
pub const EARLIER_REQUEST_RECHECK: Duration = Duration::from_secs(2);

/// The history message of a cleanup requested because the Workplan was deleted.
pub const DELETED_MESSAGE: &str = "the Workplan was deleted";

/// The reason, and the start of the history message, of a run stopped at its deadline
/// (`spec.activeDeadlineSeconds`).
pub const DEADLINE_EXCEEDED: &str = "DeadlineExceeded";

/// The reason, and the start of the history message, of a run cancelled with the
/// [`labels::CANCEL_ANNOTATION`].
pub const CANCELLED: &str = "Cancelled";

/// The longest part of the cancel annotation's value kept in the reason.
const MAX_CANCELLER: usize = 256;

/// The finalizer the garbage collector holds while it deletes a Workplan's dependents first
/// (foreground propagation).
const FOREGROUND_DELETION: &str = "foregroundDeletion";

/// What one reconciliation of a Workplan does.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The RequestState to write.
    pub write: Option<Write>,
    /// The Workplan status to apply; `None` when the current one is already right.
    pub status: Option<WorkplanStatus>,
    /// What to tell (an Event, the metrics) once the write or status it reports is stored.
    pub notice: Option<Notice>,
    /// Look again after this long even without a change; `None` waits for one.
    pub requeue: Option<Duration>,
    /// Remove the cleanup finalizer, after the write and the status: the cleanup was attempted,
    /// or nothing ever ran.
    pub finalize: bool,
}

impl Plan {
    /// Nothing to do until something changes.
    pub fn wait() -> Plan {
        Plan { write: None, status: None, notice: None, requeue: None, finalize: false }
    }

    /// Nothing to do but let the Workplan go, if it still holds the cleanup finalizer.
    fn release(workplan: &Workplan) -> Plan {
        Plan { finalize: holds_finalizer(workplan), ..Plan::wait() }
    }
}

/// A RequestState write.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// Create the first RequestState. If it exists already (409), the cache is behind: the watch
    /// brings it and with it the next reconciliation.
    Create(RequestState),
    /// Replace the RequestState, guarded by the resourceVersion it was read at: a conflict (409)
    /// means someone wrote in between, or the cache was behind, and nothing is written.
    Replace(RequestState),
}

impl Write {
    /// The RequestState as it will be stored.
    pub fn request(&self) -> &RequestState {
        match self {
            Write::Create(request) | Write::Replace(request) => request,
        }
    }
}

/// What a reconciliation tells people (an Event) and the metrics.
#[derive(Clone, Debug, PartialEq)]
pub enum Notice {
    /// task-0 was requested: Normal `Started`.
    Started,
    /// A started job was requested again because its worker is gone: Warning `WorkerLost`.
    WorkerLost { job: Job, message: String },
    /// A failed task was requested again, its retry policy allowing: Warning `Retrying`.
    Retrying { job: Job, message: String },
    /// The run passed its deadline, or was cancelled, while `job` was requested or ran, and its
    /// cleanup was requested: Warning `DeadlineExceeded` or `Cancelled`.
    Stopped { job: Option<Job>, message: String },
    /// The Workplan was deleted while `job` was requested or ran (`None`: its RequestState is
    /// gone too), and its cleanup was requested: Normal `Deleted`.
    Deleted { job: Option<Job> },
    /// The cleanup was attempted: Normal `Completed`, Warning `Failed`, or Normal `Cancelled`.
    Finished { phase: Phase, reason: String },
    /// The RequestState cannot be followed, and the Workplan failed: Warning `ProtocolError`.
    ProtocolError { reason: String },
}

impl Notice {
    /// Whether it reports the RequestState write (told once the write is stored) rather than
    /// the final status (told once the status is stored). A failed step is retried and told then,
    /// so nothing is told twice and nothing is told that did not happen.
    pub fn reports_write(&self) -> bool {
        matches!(
            self,
            Notice::Started
                | Notice::WorkerLost { .. }
                | Notice::Retrying { .. }
                | Notice::Stopped { .. }
                | Notice::Deleted { .. }
        )
    }

    /// The Event: its type, reason and note.
    pub fn event(&self) -> (EventType, &'static str, String) {
        match self {
            Notice::Started => (EventType::Normal, "Started", "requested task-0".into()),
            Notice::WorkerLost { job, message } => {
                (EventType::Warning, "WorkerLost", format!("{message}; {job} requested again"))
            }
            Notice::Retrying { job, message } => {
                (EventType::Warning, "Retrying", format!("{job} requested again: {message}"))
            }
            Notice::Stopped { job, message } => {
                let cut = Cut { cause: message.clone(), job: *job };
                let reason = if message.starts_with(CANCELLED) { CANCELLED } else { DEADLINE_EXCEEDED };
                (EventType::Warning, reason, format!("{}; requested the cleanup", cut_while(&cut)))
            }
            Notice::Deleted { job } => {
                (EventType::Normal, "Deleted", format!("{}; requested the cleanup", deleted_while(*job)))
            }
            Notice::Finished { phase: Phase::Failed, reason } => {
                (EventType::Warning, "Failed", reason.clone())
            }
            // Someone asked for it, and the Warning `Cancelled` told them when it was requested.
            Notice::Finished { phase: Phase::Cancelled, reason } => {
                (EventType::Normal, CANCELLED, reason.clone())
            }
            Notice::Finished { reason, .. } => (EventType::Normal, "Completed", reason.clone()),
            Notice::ProtocolError { reason } => (EventType::Warning, "ProtocolError", reason.clone()),
        }
    }
}

/// Whether `request` is this Workplan's, not an earlier Workplan's of the same name.
pub fn belongs_to(request: &RequestState, workplan: &Workplan) -> bool {
    Some(&request.spec.request_uid) == workplan.metadata.uid.as_ref()
}

/// Whether `workplan` still holds the cleanup finalizer.
pub fn holds_finalizer(workplan: &Workplan) -> bool {
    has_finalizer(workplan, labels::CLEANUP_FINALIZER)
}

fn has_finalizer(workplan: &Workplan, finalizer: &str) -> bool {
    workplan.metadata.finalizers.iter().flatten().any(|f| f == finalizer)
}

/// Where a run stands against its deadline (`spec.activeDeadlineSeconds`, counted from the
/// request of its first task, `status.startTime`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Deadline {
    /// No deadline, or the run has not started.
    None,
    /// Look again at this time.
    At(Timestamp),
    /// Past it: the history message of the cleanup that stops the run.
    Exceeded(String),
}

/// [`Deadline`] of `workplan` at `now`: a pure function of the Workplan, so that a restarted
/// operator decides the same.
pub fn deadline(workplan: &Workplan, now: Timestamp) -> Deadline {
    let (Some(seconds), Some(start)) = (
        workplan.spec.run.active_deadline_seconds,
        workplan.status.as_ref().and_then(|s| s.start_time.as_ref()),
    ) else {
        return Deadline::None;
    };
    let at = start.0.checked_add(SignedDuration::from_secs(seconds)).unwrap_or(start.0);
    if now >= at {
        Deadline::Exceeded(format!(
            "{DEADLINE_EXCEEDED}: the run passed its activeDeadlineSeconds ({seconds}s)"
        ))
    } else {
        Deadline::At(at)
    }
}

/// The history message of the cleanup that cancels `workplan`, when its
/// [`labels::CANCEL_ANNOTATION`] is set: `Cancelled by <value>` (`Cancelled` for an empty value).
pub fn cancellation(workplan: &Workplan) -> Option<String> {
    let value = workplan.metadata.annotations.as_ref()?.get(labels::CANCEL_ANNOTATION)?.trim();
    Some(match value {
        "" => CANCELLED.to_string(),
        who => {
            let cut: String = who.chars().take(MAX_CANCELLER).collect();
            let more = if cut.len() < who.len() { "…" } else { "" };
            format!("{CANCELLED} by {cut}{more}")
        }
    })
}

/// Whether `workplan` is being deleted.
pub fn deleting(workplan: &Workplan) -> bool {
    workplan.metadata.deletion_timestamp.is_some()
}

/// The plan for `workplan` given its RequestState (if any) and, for a started job, when its
/// worker's Lease expires (`None`: no Lease, or not held by that worker). For a Workplan being
/// deleted, `request` must be read from the API server, not from a cache: "no task ever started"
/// lets the Workplan go.
pub fn plan(
    workplan: &Workplan,
    request: Option<&RequestState>,
    lease_expiry: Option<Timestamp>,
    now: Timestamp,
) -> Plan {
    if workplan.status.as_ref().and_then(|s| s.phase).is_some_and(Phase::is_finished) {
        return Plan::release(workplan);
    }
    if let Some(request) = request
        && !belongs_to(request, workplan)
    {
        if deleting(workplan) {
            // This Workplan's RequestState was never created: nothing of it ran.
            return Plan::release(workplan);
        }
        return Plan { requeue: Some(EARLIER_REQUEST_RECHECK), ..Plan::wait() };
    }
    if deleting(workplan)
        && let Some(plan) = plan_deleted(workplan, request, now)
    {
        return plan;
    }
    let stopping = request.is_none_or(|r| !history(r).iter().any(|e| e.job == Job::Cleanup));
    if stopping && let Some(message) = cancellation(workplan) {
        return match request {
            Some(request) => plan_stopped(workplan, request, message, now),
            // Nothing ran (read from the API server, as for a deletion, and workers refuse to
            // start a task of a cancelled Workplan): final at once.
            None => {
                let reason = format!("{message} before it started");
                let status = status::derive(workplan, None, Some((Phase::Cancelled, reason.clone())), now);
                Plan {
                    status: (workplan.status.as_ref() != Some(&status)).then_some(status),
                    notice: Some(Notice::Finished { phase: Phase::Cancelled, reason }),
                    finalize: holds_finalizer(workplan),
                    ..Plan::wait()
                }
            }
        };
    }
    let mut deadline_at = None;
    if let Some(request) = request
        && !history(request).iter().any(|e| e.job == Job::Cleanup)
    {
        match deadline(workplan, now) {
            Deadline::Exceeded(message) => return plan_stopped(workplan, request, message, now),
            Deadline::At(at) => {
                deadline_at = Some(Duration::try_from(at.duration_since(now)).unwrap_or_default())
            }
            Deadline::None => {}
        }
    }

    let alive = |_: &str| lease_expiry.is_some_and(|expiry| expiry > now);
    let mut write = None;
    let mut notice = None;
    let mut finish = None;
    let mut requeue = None;
    let mut reason = None;
    match protocol::next(&Policy::of(workplan), request, alive, now) {
        Err(problem) => {
            let reason = format!("the RequestState cannot be followed: {problem}");
            notice = Some(Notice::ProtocolError { reason: reason.clone() });
            finish = Some((Phase::Failed, reason));
        }
        Ok(Next::Create) => {
            write = Some(Write::Create(protocol::first_request(workplan, now)));
            notice = Some(Notice::Started);
        }
        Ok(Next::Request { job, message }) => {
            let current = request.expect("the protocol requests a job only of an existing RequestState");
            notice = message.clone().map(|message| Notice::WorkerLost { job, message });
            write = Some(Write::Replace(protocol::request(current, job, message, now)));
        }
        Ok(Next::Retry { job, message }) => {
            let current = request.expect("the protocol retries a job only of an existing RequestState");
            notice = Some(Notice::Retrying { job, message: message.clone() });
            write = Some(Write::Replace(protocol::request(current, job, Some(message), now)));
        }
        Ok(Next::Backoff { until, reason: why, .. }) => {
            let left = Duration::try_from(until.duration_since(now)).unwrap_or_default();
            requeue = Some(left);
            reason = Some(why);
        }
        Ok(Next::Wait) => {
            // A started job: look again when its worker's Lease would expire.
            if request.is_some_and(|r| r.spec.state == JobState::Started)
                && let Some(expiry) = lease_expiry
            {
                let left = Duration::try_from(expiry.duration_since(now)).unwrap_or_default();
                requeue = Some(left + Duration::from_secs(1));
            }
        }
        Ok(Next::Finish { phase, reason }) => {
            let (phase, reason) = match request.and_then(interrupted) {
                Some(cut) => (cut.phase(), cut_outcome(&cut, request)),
                None => (phase, reason),
            };
            notice = Some(Notice::Finished { phase, reason: reason.clone() });
            finish = Some((phase, reason));
        }
    }

    let requeue = match (requeue, deadline_at) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let finalize = finish.is_some() && holds_finalizer(workplan);
    let latest = write.as_ref().map(Write::request).or(request);
    let mut status = status::derive(workplan, latest, finish, now);
    if let Some(reason) = reason {
        status.reason = Some(reason);
    }
    Plan { status: changed(workplan, status, latest), write, notice, requeue, finalize }
}

/// The plan for a run past its deadline or cancelled: the cleanup is requested instead of
/// whatever came next (the worker that claims it stops the task's pod first), and the run ends
/// Failed with reason `DeadlineExceeded: …`, or Cancelled with reason `Cancelled by …`, once the
/// cleanup was attempted.
fn plan_stopped(workplan: &Workplan, request: &RequestState, message: String, now: Timestamp) -> Plan {
    let write = Write::Replace(protocol::request(request, Job::Cleanup, Some(message.clone()), now));
    let status = status_of(workplan, Some(write.request()), None, now);
    let job = history(request).last().map(|e| e.job);
    Plan { write: Some(write), status, notice: Some(Notice::Stopped { job, message }), ..Plan::wait() }
}

/// The plan for a Workplan being deleted, unless the protocol goes on as usual (its cleanup was
/// requested already).
fn plan_deleted(workplan: &Workplan, request: Option<&RequestState>, now: Timestamp) -> Option<Plan> {
    if has_finalizer(workplan, FOREGROUND_DELETION) {
        // The garbage collector deletes the RequestState and waits for the pods first; a
        // RequestState written now would be deleted under the cleanup. Its finalizer's removal
        // is an update of the Workplan, which brings it back here.
        return Some(Plan::wait());
    }
    let job = match request {
        // The cleanup was requested already, or is what the protocol requests next anyway (the
        // tasks are done): the run ends as it would have.
        Some(request)
            if request.spec.job == Job::Cleanup
                || matches!(
                    protocol::next(&Policy::of(workplan), Some(request), |_| true, now),
                    Ok(Next::Request { job: Job::Cleanup, .. })
                ) =>
        {
            return None;
        }
        Some(request) if !history(request).iter().any(|e| e.state == JobState::Started) => {
            // No worker ever claimed a task, so no pod ever made a workspace; a claim that wins
            // from now on finds the Workplan being deleted and starts nothing.
            return Some(Plan::release(workplan));
        }
        Some(request) => Some(request.spec.job),
        None if !ran(workplan) => return Some(Plan::release(workplan)),
        None => None,
    };
    let write = match request {
        Some(request) => {
            Write::Replace(protocol::request(request, Job::Cleanup, Some(DELETED_MESSAGE.into()), now))
        }
        None => Write::Create(cleanup_request(workplan, now)),
    };
    let status = status_of(workplan, Some(write.request()), None, now);
    Some(Plan { write: Some(write), status, notice: Some(Notice::Deleted { job }), ..Plan::wait() })
}

/// Whether a task of `workplan` was ever requested: the operator writes `Running` with the
/// first RequestState. For a Workplan whose RequestState is gone (deleted with foreground
/// propagation, which deletes dependents first).
fn ran(workplan: &Workplan) -> bool {
    workplan.status.as_ref().is_some_and(|s| s.phase == Some(Phase::Running) || s.start_time.is_some())
}

/// A RequestState that requests only the cleanup, for a Workplan deleted after its tasks ran
/// whose RequestState is gone: on the node its status names, where the workspace is.
fn cleanup_request(workplan: &Workplan, now: Timestamp) -> RequestState {
    let mut fresh = protocol::first_request(workplan, now);
    fresh.status = None;
    let mut cleanup = protocol::request(&fresh, Job::Cleanup, Some(DELETED_MESSAGE.into()), now);
    let node = workplan.status.as_ref().and_then(|s| s.node_name.clone());
    if let Some(entry) = cleanup.status.as_mut().and_then(|s| s.history.first_mut()) {
        entry.node_name = node;
    }
    cleanup
}

/// The status to apply, `None` when the current one is right. A run cut short by its deletion
/// says so while its cleanup runs.
fn status_of(
    workplan: &Workplan,
    request: Option<&RequestState>,
    finish: Option<(Phase, String)>,
    now: Timestamp,
) -> Option<WorkplanStatus> {
    changed(workplan, status::derive(workplan, request, finish, now), request)
}

/// `desired`, with the reason of a run cut short by its deletion, unless the Workplan has it.
fn changed(
    workplan: &Workplan,
    mut desired: WorkplanStatus,
    request: Option<&RequestState>,
) -> Option<WorkplanStatus> {
    if let Some(cut) = request.and_then(interrupted) {
        if desired.phase == Some(Phase::Running) {
            desired.reason = Some(format!("{}; cleaning up", cut_while(&cut)));
        }
        stopped_condition(&mut desired, &cut.cause);
    }
    (workplan.status.as_ref() != Some(&desired)).then_some(desired)
}

/// Why a run was cut short, and the task that was requested or running then (`None`: the
/// RequestState was made for the cleanup alone).
struct Cut {
    /// The history message of the cleanup request: [`DELETED_MESSAGE`] or a deadline's.
    cause: String,
    job: Option<Job>,
}

impl Cut {
    /// The final phase of the run cut short: Cancelled when someone cancelled it (even if its
    /// cleanup failed: the reason says so), Failed at its deadline or its deletion.
    fn phase(&self) -> Phase {
        if self.cause.starts_with(CANCELLED) { Phase::Cancelled } else { Phase::Failed }
    }
}

/// A run stopped at its deadline or cancelled says so in its `Finished` condition's reason
/// (`DeadlineExceeded`, as a pod's; `Cancelled`), once final.
fn stopped_condition(status: &mut WorkplanStatus, cause: &str) {
    let reason = [DEADLINE_EXCEEDED, CANCELLED].into_iter().find(|r| cause.starts_with(r));
    if let Some(reason) = reason
        && let Some(finished) = status.conditions.iter_mut().find(|c| c.type_ == "Finished")
        && finished.status == "True"
    {
        finished.reason = reason.into();
    }
}

/// Whether the run was cut short: its cleanup was first requested because the Workplan was
/// deleted ([`DELETED_MESSAGE`]) or its deadline passed ([`DEADLINE_EXCEEDED`]), not after its
/// tasks were done.
fn interrupted(request: &RequestState) -> Option<Cut> {
    let history = history(request);
    let cleanup = history.iter().position(|e| e.job == Job::Cleanup)?;
    let cause = history[cleanup].message.as_deref()?;
    (cause == DELETED_MESSAGE || cause.starts_with(DEADLINE_EXCEEDED) || cause.starts_with(CANCELLED))
        .then(|| Cut { cause: cause.to_string(), job: history[..cleanup].last().map(|e| e.job) })
}

/// `deleted while running task-<i>`, or without the task when it is not known.
fn deleted_while(job: Option<Job>) -> String {
    match job {
        Some(job) => format!("deleted while running {job}"),
        None => "deleted while running".to_string(),
    }
}

/// What cut the run short and when: `deleted while running task-<i>`, or `DeadlineExceeded: the
/// run passed its activeDeadlineSeconds (<n>s) while running task-<i>`.
fn cut_while(cut: &Cut) -> String {
    match (&cut.cause, cut.job) {
        (cause, job) if cause == DELETED_MESSAGE => deleted_while(job),
        (cause, Some(job)) => format!("{cause} while running {job}"),
        (cause, None) => cause.clone(),
    }
}

/// The final reason of a run cut short, once its cleanup was attempted.
fn cut_outcome(cut: &Cut, request: Option<&RequestState>) -> String {
    let failed = request
        .filter(|r| r.spec.state == JobState::Failed)
        .map(|r| history(r).iter().rev().find(|e| e.job == Job::Cleanup).and_then(|e| e.message.clone()));
    match failed {
        Some(why) => format!(
            "{}; cleanup failed, the workspace may remain on the node: {}",
            cut_while(cut),
            why.as_deref().unwrap_or("no reason given")
        ),
        None => format!("{}; workspace cleaned up", cut_while(cut)),
    }
}

fn history(request: &RequestState) -> &[HistoryEntry] {
    request.status.as_ref().map(|s| s.history.as_slice()).unwrap_or_default()
}

/// When `worker`'s Lease expires; `None` if another holds it or it was released.
pub fn lease_expiry(lease: &Lease, worker: &str) -> Option<Timestamp> {
    let spec = lease.spec.as_ref()?;
    if spec.holder_identity.as_deref() != Some(worker) {
        return None;
    }
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref())?.0;
    renewed.checked_add(SignedDuration::from_secs(i64::from(spec.lease_duration_seconds?))).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use pretty_assertions::assert_eq;
    use shared_types::HistoryEntry;

    fn fixture(name: &str) -> String {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn workplan() -> Workplan {
        serde_yaml::from_str(&fixture("workplan.yaml")).unwrap()
    }

    fn request(name: &str) -> RequestState {
        serde_yaml::from_str(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    fn now() -> Timestamp {
        "2027-01-15T10:00:00Z".parse().unwrap()
    }

    fn seconds(s: i64) -> Timestamp {
        now().checked_add(SignedDuration::from_secs(s)).unwrap()
    }

    fn last(request: &RequestState) -> HistoryEntry {
        request.status.as_ref().unwrap().history.last().unwrap().clone()
    }

    fn requested_entry(job: Job, message: Option<&str>) -> HistoryEntry {
        HistoryEntry {
            job,
            state: JobState::Requested,
            timestamp: Time(now()),
            worker: None,
            node_name: None,
            message: message.map(Into::into),
        }
    }

    /// The replaced RequestState: same object and resourceVersion (the precondition), `job`
    /// requested, one history entry more.
    fn assert_requests(write: &Write, from: &RequestState, job: Job, message: Option<&str>) {
        let Write::Replace(next) = write else { panic!("a replace, not {write:?}") };
        assert_eq!(next.metadata, from.metadata, "written at the resourceVersion it was read at");
        assert_eq!(
            (next.spec.job, next.spec.state, next.spec.worker.as_deref()),
            (job, JobState::Requested, None)
        );
        let history = &next.status.as_ref().unwrap().history;
        assert_eq!(history.len(), from.status.as_ref().unwrap().history.len() + 1);
        assert_eq!(last(next), requested_entry(job, message));
    }

    #[test]
    fn a_new_workplan_gets_its_request_state() {
        let wp = workplan();
        let plan = plan(&wp, None, None, now());
        let Some(Write::Create(created)) = &plan.write else { panic!("a create, not {:?}", plan.write) };
        assert_eq!(
            (created.metadata.name.as_deref(), created.metadata.namespace.as_deref()),
            (Some("build-7f3a"), Some("ci"))
        );
        assert_eq!(created.spec.request_uid, wp.metadata.uid.clone().unwrap());
        assert_eq!((created.spec.job, created.spec.state), (Job::Task(0), JobState::Requested));
        let owner = &created.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller, owner.block_owner_deletion),
            ("Workplan", Some(true), Some(true)),
            "a foreground deletion of the Workplan waits until the collector deleted it"
        );
        assert_eq!(created.status.as_ref().unwrap().history, [requested_entry(Job::Task(0), None)]);
        assert_eq!(plan.notice, Some(Notice::Started));
        assert_eq!(plan.notice.unwrap().event(), (EventType::Normal, "Started", "requested task-0".into()));
        let status = plan.status.unwrap();
        assert_eq!((status.phase, status.progress.as_deref()), (Some(Phase::Running), Some("1/2")));
        assert_eq!(plan.requeue, None);
    }

    #[test]
    fn a_requested_job_waits_and_a_current_status_is_left_alone() {
        let mut wp = workplan();
        let rqs = request("requested-task-0.yaml");
        let first = plan(&wp, Some(&rqs), None, now());
        assert_eq!((&first.write, &first.notice, first.requeue), (&None, &None, None));
        let status = first.status.expect("the first status");
        assert_eq!((status.phase, status.task_index), (Some(Phase::Running), Some(0)));
        assert_eq!(status.start_time, Some(Time("2027-01-15T09:58:00Z".parse().unwrap())));

        wp.status = Some(status);
        assert_eq!(plan(&wp, Some(&rqs), None, seconds(30)), Plan::wait(), "the status is current: no write");
    }

    #[test]
    fn a_started_job_of_a_live_worker_waits_for_its_lease() {
        let rqs = request("started-task-0.yaml");
        let plan = plan(&workplan(), Some(&rqs), Some(seconds(10)), now());
        assert_eq!((&plan.write, &plan.notice), (&None, &None));
        assert_eq!(plan.requeue, Some(Duration::from_secs(11)), "a second after the lease would expire");
    }

    #[test]
    fn a_completed_task_requests_the_next() {
        let rqs = request("completed-task-0.yaml");
        let plan = plan(&workplan(), Some(&rqs), None, now());
        assert_requests(plan.write.as_ref().unwrap(), &rqs, Job::Task(1), None);
        assert_eq!((&plan.notice, plan.requeue), (&None, None));
        let status = plan.status.unwrap();
        assert_eq!(
            (status.phase, status.task_index, status.progress.as_deref(), status.node_name.as_deref()),
            (Some(Phase::Running), Some(1), Some("2/2"), Some("node-a"))
        );
    }

    #[test]
    fn a_failed_task_skips_the_rest_and_requests_the_cleanup() {
        let rqs = request("failed-task-0.yaml");
        let plan = plan(&workplan(), Some(&rqs), None, now());
        assert_requests(plan.write.as_ref().unwrap(), &rqs, Job::Cleanup, None);
        assert_eq!(plan.notice, None);
        let status = plan.status.unwrap();
        assert_eq!(status.phase, Some(Phase::Running));
        assert_eq!(
            status.reason.as_deref(),
            Some("task-0 failed: step \"compile\" exited with code 2: no rule to make target; cleaning up")
        );
        assert_eq!(status.task_index, Some(0), "the task that ran last, not the cleanup");
    }

    /// The fixture's Workplan with `retries` on task-0's first step (task-0 failed at 09:59:00).
    fn retried(limit: i32, backoff_seconds: i64) -> Workplan {
        let mut wp = workplan();
        let task = &mut wp.spec.tasks[0];
        let step = task.serial_steps.first_mut().unwrap_or_else(|| &mut task.parallel_steps[0]);
        step.retries = Some(shared_types::Retries { limit, backoff_seconds: Some(backoff_seconds) });
        wp
    }

    #[test]
    fn a_failed_task_with_retries_left_waits_its_backoff_then_is_requested_again() {
        let rqs = request("failed-task-0.yaml");
        let failed_at: Timestamp = "2027-01-15T09:59:00Z".parse().unwrap();
        let early = failed_at.checked_add(SignedDuration::from_secs(10)).unwrap();
        let wp = retried(2, 30);
        let waiting = plan(&wp, Some(&rqs), None, early);
        assert_eq!(waiting.write, None, "nothing before the backoff is over");
        assert_eq!(waiting.requeue, Some(Duration::from_secs(20)), "looked at again when it is");
        let status = waiting.status.unwrap();
        assert_eq!(status.phase, Some(Phase::Running));
        assert_eq!(
            status.reason.as_deref(),
            Some(
                "task-0 attempt 1 of 3 failed: step \"compile\" exited with code 2: no rule to make target; attempt 2 at 2027-01-15T09:59:30Z"
            )
        );

        let plan = plan(&wp, Some(&rqs), None, now());
        let message = "attempt 2 of 3, after attempt 1 failed: step \"compile\" exited with code 2: no rule to make target";
        assert_requests(plan.write.as_ref().unwrap(), &rqs, Job::Task(0), Some(message));
        let notice = plan.notice.unwrap();
        assert!(notice.reports_write());
        assert_eq!(
            notice.event(),
            (EventType::Warning, "Retrying", format!("task-0 requested again: {message}"))
        );
        let reason = plan.status.or(wp.status.clone()).and_then(|s| s.reason);
        assert_eq!(reason, None, "running again, nothing failed for good");
    }

    #[test]
    fn a_task_out_of_retries_requests_the_cleanup() {
        let rqs = request("failed-task-0.yaml");
        let plan = plan(&retried(0, 5), Some(&rqs), None, now());
        assert_requests(plan.write.as_ref().unwrap(), &rqs, Job::Cleanup, None);
    }

    /// The fixture's Workplan with a deadline of `seconds`, started at 09:58:00 (two minutes
    /// before `now()`).
    fn with_deadline(seconds: i64) -> Workplan {
        let mut wp = workplan();
        wp.spec.run.active_deadline_seconds = Some(seconds);
        let start = "2027-01-15T09:58:00Z".parse().unwrap();
        wp.status = Some(WorkplanStatus { start_time: Some(Time(start)), ..WorkplanStatus::default() });
        wp
    }

    #[test]
    fn the_deadline_is_a_function_of_the_workplan_and_the_time() {
        assert_eq!(deadline(&workplan(), now()), Deadline::None, "no deadline");
        let mut unstarted = with_deadline(60);
        unstarted.status = None;
        assert_eq!(deadline(&unstarted, now()), Deadline::None, "not started");
        assert_eq!(deadline(&with_deadline(300), now()), Deadline::At(seconds(180)));
        assert_eq!(
            deadline(&with_deadline(120), now()),
            Deadline::Exceeded("DeadlineExceeded: the run passed its activeDeadlineSeconds (120s)".into())
        );
    }

    #[test]
    fn a_running_task_is_looked_at_again_at_the_deadline() {
        let rqs = request("started-task-0.yaml");
        let plan = plan(&with_deadline(300), Some(&rqs), Some(seconds(600)), now());
        assert_eq!((plan.write, plan.requeue), (None, Some(Duration::from_secs(180))));
        let plan = super::plan(&with_deadline(300), Some(&rqs), Some(seconds(30)), now());
        assert_eq!(plan.requeue, Some(Duration::from_secs(31)), "the lease expires first");
    }

    #[test]
    fn a_run_past_its_deadline_is_stopped_cleaned_up_and_failed_with_deadline_exceeded() {
        let rqs = request("started-task-0.yaml");
        let wp = with_deadline(120);
        let stopped = plan(&wp, Some(&rqs), Some(seconds(600)), now());
        let message = "DeadlineExceeded: the run passed its activeDeadlineSeconds (120s)";
        assert_requests(stopped.write.as_ref().unwrap(), &rqs, Job::Cleanup, Some(message));
        let notice = stopped.notice.clone().unwrap();
        assert!(notice.reports_write());
        assert_eq!(
            notice.event(),
            (
                EventType::Warning,
                "DeadlineExceeded",
                format!("{message} while running task-0; requested the cleanup")
            )
        );
        assert_eq!(
            stopped.status.as_ref().unwrap().reason.as_deref(),
            Some(
                "DeadlineExceeded: the run passed its activeDeadlineSeconds (120s) while running task-0; cleaning up"
            )
        );

        // The cleanup is claimed and done: Failed, DeadlineExceeded.
        let Some(Write::Replace(cleanup)) = stopped.write else { unreachable!() };
        let claimed = protocol::claim(&cleanup, "worker-b", seconds(1)).unwrap();
        let mut wp = wp;
        wp.status = stopped.status;
        let during = plan(&wp, Some(&claimed), Some(seconds(600)), seconds(1));
        assert_eq!(during.write, None, "the deadline does not request the cleanup twice");
        let done =
            protocol::report(&claimed, "worker-b", JobState::Completed, None, None, seconds(2)).unwrap();
        let finished = plan(&wp, Some(&done), None, seconds(2));
        let status = finished.status.unwrap();
        assert_eq!(status.phase, Some(Phase::Failed));
        assert_eq!(
            status.reason.as_deref(),
            Some(
                "DeadlineExceeded: the run passed its activeDeadlineSeconds (120s) while running task-0; workspace cleaned up"
            )
        );
        assert_eq!(
            (status.conditions[0].status.as_str(), status.conditions[0].reason.as_str()),
            ("True", "DeadlineExceeded")
        );
        assert!(matches!(finished.notice, Some(Notice::Finished { phase: Phase::Failed, .. })));
    }

    fn cancelled_by(value: &str) -> Workplan {
        let mut wp = workplan();
        wp.metadata.annotations = Some([(labels::CANCEL_ANNOTATION.to_string(), value.to_string())].into());
        wp
    }

    #[test]
    fn a_cancelled_run_is_stopped_cleaned_up_and_says_who_cancelled_it() {
        let rqs = request("started-task-0.yaml");
        let wp = cancelled_by("alice: wrong branch");
        let stopped = plan(&wp, Some(&rqs), Some(seconds(600)), now());
        let message = "Cancelled by alice: wrong branch";
        assert_requests(stopped.write.as_ref().unwrap(), &rqs, Job::Cleanup, Some(message));
        assert_eq!(
            stopped.notice.clone().unwrap().event(),
            (
                EventType::Warning,
                "Cancelled",
                format!("{message} while running task-0; requested the cleanup")
            )
        );
        let Some(Write::Replace(cleanup)) = stopped.write else { unreachable!() };
        let claimed = protocol::claim(&cleanup, "worker-b", seconds(1)).unwrap();
        let done =
            protocol::report(&claimed, "worker-b", JobState::Completed, None, None, seconds(2)).unwrap();
        let finished = plan(&wp, Some(&done), None, seconds(2));
        let status = finished.status.unwrap();
        assert_eq!(status.phase, Some(Phase::Cancelled));
        let reason = "Cancelled by alice: wrong branch while running task-0; workspace cleaned up";
        assert_eq!(status.reason.as_deref(), Some(reason));
        assert_eq!(
            (status.conditions[0].status.as_str(), status.conditions[0].reason.as_str()),
            ("True", "Cancelled")
        );
        assert!(status.completion_time.is_some(), "Cancelled is final");
        assert_eq!(finished.notice.unwrap().event(), (EventType::Normal, "Cancelled", reason.to_string()));
    }

    #[test]
    fn a_cancelled_run_whose_cleanup_failed_is_cancelled_and_says_the_workspace_may_remain() {
        let rqs = request("started-task-0.yaml");
        let wp = cancelled_by("alice");
        let Some(Write::Replace(cleanup)) = plan(&wp, Some(&rqs), None, now()).write else { unreachable!() };
        let claimed = protocol::claim(&cleanup, "worker-b", seconds(1)).unwrap();
        let failed = protocol::report(
            &claimed,
            "worker-b",
            JobState::Failed,
            None,
            Some("rm: busy".into()),
            seconds(2),
        )
        .unwrap();
        let status = plan(&wp, Some(&failed), None, seconds(2)).status.unwrap();
        assert_eq!(
            (status.phase, status.reason.as_deref()),
            (
                Some(Phase::Cancelled),
                Some(
                    "Cancelled by alice while running task-0; cleanup failed, the workspace may remain on the node: rm: busy"
                )
            )
        );
    }

    #[test]
    fn a_cancel_after_the_deadline_stopped_the_run_leaves_it_failed_at_its_deadline() {
        let rqs = request("started-task-0.yaml");
        let mut wp = with_deadline(120);
        let Some(Write::Replace(cleanup)) = plan(&wp, Some(&rqs), None, now()).write else { unreachable!() };
        wp.metadata.annotations = Some([(labels::CANCEL_ANNOTATION.to_string(), "alice".to_string())].into());
        let again = plan(&wp, Some(&cleanup), None, now());
        assert_eq!(again.write, None, "the cleanup is not requested again");
        let claimed = protocol::claim(&cleanup, "worker-b", seconds(1)).unwrap();
        let done =
            protocol::report(&claimed, "worker-b", JobState::Completed, None, None, seconds(2)).unwrap();
        let status = plan(&wp, Some(&done), None, seconds(2)).status.unwrap();
        assert_eq!(
            (status.phase, status.conditions[0].reason.as_str()),
            (Some(Phase::Failed), "DeadlineExceeded")
        );
    }

    #[test]
    fn a_run_cancelled_before_it_started_is_final_at_once() {
        let mut wp = cancelled_by("");
        wp.metadata.finalizers = Some(vec![labels::CLEANUP_FINALIZER.into()]);
        let plan = plan(&wp, None, None, now());
        assert_eq!(plan.write, None, "no RequestState, no pod, nothing to clean");
        assert!(plan.finalize);
        let status = plan.status.unwrap();
        assert_eq!(
            (status.phase, status.reason.as_deref(), status.conditions[0].reason.as_str()),
            (Some(Phase::Cancelled), Some("Cancelled before it started"), "Cancelled")
        );
        assert_eq!(
            plan.notice,
            Some(Notice::Finished { phase: Phase::Cancelled, reason: "Cancelled before it started".into() })
        );
    }

    #[test]
    fn the_canceller_is_kept_short() {
        let long = "x".repeat(1000);
        let message = cancellation(&cancelled_by(&long)).unwrap();
        assert_eq!(message, format!("Cancelled by {}…", "x".repeat(256)));
        assert_eq!(cancellation(&workplan()), None);
        // A finished run stays as it ended.
        let mut done = cancelled_by("bob");
        done.status = Some(WorkplanStatus { phase: Some(Phase::Completed), ..WorkplanStatus::default() });
        let plan = plan(&done, Some(&request("completed-cleanup.yaml")), None, now());
        assert_eq!((plan.write, plan.status, plan.notice), (None, None, None));
    }

    #[test]
    fn an_attempted_cleanup_finishes_the_workplan() {
        let rqs = request("completed-cleanup.yaml");
        let plan = plan(&workplan(), Some(&rqs), None, now());
        assert_eq!(plan.write, None);
        let reason = "all 2 tasks succeeded".to_string();
        assert_eq!(plan.notice, Some(Notice::Finished { phase: Phase::Completed, reason: reason.clone() }));
        assert!(!plan.notice.as_ref().unwrap().reports_write(), "told once the status is stored");
        assert_eq!(plan.notice.unwrap().event(), (EventType::Normal, "Completed", reason.clone()));
        let status = plan.status.unwrap();
        assert_eq!((status.phase, status.reason), (Some(Phase::Completed), Some(reason)));
        assert_eq!((status.progress.as_deref(), status.duration.as_deref()), (Some("2/2"), Some("2m0s")));
        assert_eq!(status.completion_time, Some(Time(now())));
        assert_eq!(
            (status.conditions[0].status.as_str(), status.conditions[0].reason.as_str()),
            ("True", "Completed")
        );
    }

    #[test]
    fn a_finished_workplan_is_left_alone() {
        let mut wp = workplan();
        let rqs = request("completed-cleanup.yaml");
        wp.status = plan(&wp, Some(&rqs), None, now()).status;
        assert_eq!(plan(&wp, Some(&rqs), None, seconds(60)), Plan::wait());
    }

    #[test]
    fn a_lost_workers_job_is_requested_again() {
        let rqs = request("started-task-0.yaml");
        let message = "worker worker-a lost: its lease expired";
        // Expired, or gone (deleted on exit, or never there): the same.
        for expiry in [Some(seconds(-1)), None] {
            let plan = plan(&workplan(), Some(&rqs), expiry, now());
            assert_requests(plan.write.as_ref().unwrap(), &rqs, Job::Task(0), Some(message));
            let notice = plan.notice.unwrap();
            assert!(notice.reports_write());
            assert_eq!(
                notice.event(),
                (EventType::Warning, "WorkerLost", format!("{message}; task-0 requested again"))
            );
            assert_eq!(plan.requeue, None);
        }
    }

    #[test]
    fn an_earlier_workplans_request_state_is_waited_out() {
        let rqs = request("earlier-workplan.yaml");
        assert_eq!(
            plan(&workplan(), Some(&rqs), None, now()),
            Plan { requeue: Some(EARLIER_REQUEST_RECHECK), ..Plan::wait() },
            "neither written nor reported: it is not this Workplan's"
        );
    }

    #[test]
    fn a_protocol_error_fails_the_workplan() {
        let rqs = request("past-last-task.yaml");
        let plan = plan(&workplan(), Some(&rqs), None, now());
        let reason = "the RequestState cannot be followed: RequestState job task-5 is past the Workplan's last task (it has 2)";
        assert_eq!(plan.write, None);
        assert_eq!(plan.notice, Some(Notice::ProtocolError { reason: reason.into() }));
        assert_eq!(plan.notice.unwrap().event(), (EventType::Warning, "ProtocolError", reason.into()));
        let status = plan.status.unwrap();
        assert_eq!((status.phase, status.reason.as_deref()), (Some(Phase::Failed), Some(reason)));
        assert_eq!(plan.requeue, None);
    }

    #[test]
    fn a_failed_run_is_a_warning() {
        let notice = Notice::Finished { phase: Phase::Failed, reason: "task-0 failed: boom".into() };
        assert_eq!(notice.event(), (EventType::Warning, "Failed", "task-0 failed: boom".into()));
    }

    /// The Workplan deleted while task-0 ran.
    fn deleted() -> Workplan {
        serde_yaml::from_str(&fixture("deleted-workplan.yaml")).unwrap()
    }

    /// As the director creates it now: with its cleanup finalizer.
    fn held(mut wp: Workplan) -> Workplan {
        wp.metadata.finalizers = Some(vec![labels::CLEANUP_FINALIZER.into()]);
        wp
    }

    #[test]
    fn the_finalizer_goes_with_the_final_status_and_only_then() {
        let wp = held(workplan());
        let running = plan(&wp, Some(&request("started-task-0.yaml")), Some(seconds(10)), now());
        assert!(!running.finalize, "held while a task runs");

        let done = plan(&wp, Some(&request("completed-cleanup.yaml")), None, now());
        assert_eq!(done.status.as_ref().unwrap().phase, Some(Phase::Completed));
        assert!(done.finalize, "the cleanup was attempted: removed after the status is stored");

        let failed = plan(&wp, Some(&request("past-last-task.yaml")), None, now());
        assert_eq!(failed.status.as_ref().unwrap().phase, Some(Phase::Failed));
        assert!(failed.finalize, "a run the operator gives up on holds nothing either");

        // Finished earlier (the finalizer's removal failed, or an operator stopped in between).
        let mut finished = wp.clone();
        finished.status = done.status;
        let plan_ = plan(&finished, Some(&request("completed-cleanup.yaml")), None, seconds(60));
        assert_eq!(plan_, Plan { finalize: true, ..Plan::wait() });
        // Created before the finalizer existed: nothing to remove.
        let mut old = workplan();
        old.status = finished.status;
        assert_eq!(plan(&old, Some(&request("completed-cleanup.yaml")), None, seconds(60)), Plan::wait());
    }

    #[test]
    fn deleted_while_a_task_runs_requests_the_cleanup_instead() {
        let wp = deleted();
        let rqs = request("started-task-0.yaml");
        // The worker's Lease is live: it is not lost, the run is cut short all the same.
        let plan = plan(&wp, Some(&rqs), Some(seconds(10)), now());
        let Some(Write::Replace(next)) = &plan.write else { panic!("a replace, not {:?}", plan.write) };
        assert_eq!(next.metadata, rqs.metadata, "guarded by the resourceVersion it was read at");
        assert_eq!(
            (next.spec.job, next.spec.state, next.spec.worker.as_deref()),
            (Job::Cleanup, JobState::Requested, None)
        );
        assert_eq!(last(next).message.as_deref(), Some(DELETED_MESSAGE));
        assert_eq!(plan.notice, Some(Notice::Deleted { job: Some(Job::Task(0)) }));
        assert!(plan.notice.as_ref().unwrap().reports_write());
        assert_eq!(
            plan.notice.unwrap().event(),
            (EventType::Normal, "Deleted", "deleted while running task-0; requested the cleanup".into())
        );
        let status = plan.status.unwrap();
        assert_eq!(
            (status.phase, status.reason.as_deref()),
            (Some(Phase::Running), Some("deleted while running task-0; cleaning up"))
        );
        assert!(!plan.finalize, "held until the cleanup was attempted");
        assert_eq!(plan.requeue, None);
    }

    #[test]
    fn deleted_before_any_task_started_lets_go_at_once() {
        // task-0 requested but never claimed (a claim from now on finds the Workplan being
        // deleted and starts nothing), or no RequestState at all.
        let mut wp = deleted();
        let rqs = request("requested-task-0.yaml");
        assert_eq!(plan(&wp, Some(&rqs), None, now()), Plan { finalize: true, ..Plan::wait() });
        wp.status = None;
        assert_eq!(plan(&wp, None, None, now()), Plan { finalize: true, ..Plan::wait() });
        // An earlier Workplan's RequestState of the same name: this one's was never made.
        let earlier = request("earlier-workplan.yaml");
        assert_eq!(plan(&wp, Some(&earlier), None, now()), Plan { finalize: true, ..Plan::wait() });
    }

    #[test]
    fn deleted_after_its_request_state_went_first_cleans_up_on_its_node() {
        // Foreground propagation: the garbage collector deletes the RequestState and waits for
        // the pods before it removes its own finalizer. Meanwhile nothing is written.
        let mut wp = deleted();
        wp.metadata.finalizers = Some(vec!["foregroundDeletion".into(), labels::CLEANUP_FINALIZER.into()]);
        assert_eq!(plan(&wp, None, None, now()), Plan::wait());
        assert_eq!(plan(&wp, Some(&request("started-task-0.yaml")), None, now()), Plan::wait());

        // Then: the status says a task ran, on node-a; a RequestState for the cleanup alone.
        let plan = plan(&deleted(), None, None, now());
        let Some(Write::Create(created)) = &plan.write else { panic!("a create, not {:?}", plan.write) };
        assert_eq!((created.spec.job, created.spec.state), (Job::Cleanup, JobState::Requested));
        assert_eq!(created.spec.request_uid, deleted().metadata.uid.unwrap());
        let owner = &created.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.kind, "Workplan");
        assert_eq!(owner.block_owner_deletion, Some(true), "a later foreground deletion waits for it");
        let history = &created.status.as_ref().unwrap().history;
        assert_eq!(history.len(), 1);
        assert_eq!((history[0].job, history[0].message.as_deref()), (Job::Cleanup, Some(DELETED_MESSAGE)));
        assert_eq!(
            protocol::node(created).as_deref(),
            Some("node-a"),
            "the cleanup pod goes where the workspace is"
        );
        assert_eq!(plan.notice, Some(Notice::Deleted { job: None }));
        assert_eq!(plan.status.unwrap().reason.as_deref(), Some("deleted while running; cleaning up"));
        assert!(!plan.finalize);
    }

    #[test]
    fn a_deleted_runs_cleanup_ends_it_failed_and_lets_it_go() {
        let plan_ = plan(&deleted(), Some(&request("deleted-cleanup-completed.yaml")), None, now());
        let reason = "deleted while running task-0; workspace cleaned up".to_string();
        assert_eq!(plan_.write, None);
        assert_eq!(plan_.notice, Some(Notice::Finished { phase: Phase::Failed, reason: reason.clone() }));
        let status = plan_.status.unwrap();
        assert_eq!((status.phase, status.reason), (Some(Phase::Failed), Some(reason)));
        assert!(plan_.finalize);

        // A failed cleanup lets it go too, and says so.
        let plan_ = plan(&deleted(), Some(&request("deleted-cleanup-failed.yaml")), None, now());
        let reason = "deleted while running task-0; cleanup failed, the workspace may remain on the node: \
                      pod build-7f3a-cleanup cannot be created: exceeded quota";
        assert_eq!(plan_.status.unwrap().reason.as_deref(), Some(reason));
        assert_eq!(plan_.notice.unwrap().event(), (EventType::Warning, "Failed", reason.into()));
        assert!(plan_.finalize);

        // The cleanup's worker lost meanwhile: requested again, as for any run.
        let mut started = request("deleted-cleanup-completed.yaml");
        started.spec.state = JobState::Started;
        started.status.as_mut().unwrap().history.pop();
        let plan_ = plan(&deleted(), Some(&started), None, now());
        assert_requests(
            plan_.write.as_ref().unwrap(),
            &started,
            Job::Cleanup,
            Some("worker worker-b lost: its lease expired"),
        );
        assert!(!plan_.finalize);
    }

    #[test]
    fn deleted_once_its_tasks_were_done_ends_as_it_would_have() {
        // The last task completed: the cleanup it gets is the usual one.
        let rqs = request("completed-task-1.yaml");
        let plan_ = plan(&deleted(), Some(&rqs), None, now());
        assert_requests(plan_.write.as_ref().unwrap(), &rqs, Job::Cleanup, None);
        assert_eq!(plan_.notice, None);
        // A failed task: the same.
        let rqs = request("failed-task-0.yaml");
        assert_requests(
            plan(&deleted(), Some(&rqs), None, now()).write.as_ref().unwrap(),
            &rqs,
            Job::Cleanup,
            None,
        );
        // Deleted during the cleanup of a complete run: Completed.
        let plan_ = plan(&deleted(), Some(&request("completed-cleanup.yaml")), None, now());
        assert_eq!(plan_.status.unwrap().phase, Some(Phase::Completed));
        assert!(plan_.finalize);
    }

    #[test]
    fn a_lease_expires_renew_time_plus_duration_if_the_worker_holds_it() {
        let lease: Lease = serde_yaml::from_str(
            "
            metadata: {name: worker-a}
            spec:
              holderIdentity: worker-a
              leaseDurationSeconds: 15
              acquireTime: '2027-01-15T09:00:00.000000Z'
              renewTime: '2027-01-15T09:59:50.000000Z'
            ",
        )
        .unwrap();
        assert_eq!(lease_expiry(&lease, "worker-a"), Some(seconds(5)));
        assert_eq!(lease_expiry(&lease, "worker-b"), None, "held by another");
        let mut released = lease.clone();
        released.spec.as_mut().unwrap().holder_identity = None;
        assert_eq!(lease_expiry(&released, "worker-a"), None, "released on exit");
        let mut never_renewed = lease;
        never_renewed.spec.as_mut().unwrap().renew_time = None;
        assert_eq!(
            lease_expiry(&never_renewed, "worker-a"),
            Some(seconds(-3600 + 15)),
            "from the acquire time"
        );
    }
}
