//! The worker's decisions as pure functions: which RequestStates are work for this worker and in
//! which order, how long a claim waited, what a pod's state means for the job, whether an
//! existing pod may be adopted and whether a result may still be reported. The I/O in
//! [`crate::job`] and [`crate`]'s claim loop only carries these out.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use shared_types::labels;
use shared_types::outcome::{PodOutcome, pod_outcome};
use shared_types::protocol::Job;
use shared_types::{JobState, RequestState, Workplan};
use tokio::time::Instant;

/// A namespaced object's place (a RequestState's, or a pod's): namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub namespace: String,
    pub name: String,
}

impl Key {
    /// The key of an object the API server returned (it always has both).
    pub fn of(rqs: &RequestState) -> Option<Key> {
        Some(Key { namespace: rqs.metadata.namespace.clone()?, name: rqs.metadata.name.clone()? })
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What this worker has to do with a RequestState.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    /// The job is REQUESTED: try to claim it.
    Claim,
    /// The job is STARTED by this worker but not running in this process: a previous process
    /// with the same identity claimed it, so pick it up where it was (adopt its pod).
    Resume,
}

/// A RequestState that is work for this worker, as last seen by the watch.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub work: Work,
    pub rqs: RequestState,
}

/// Whether `rqs` is work for the worker `identity`. RequestStates being deleted (their Workplan
/// is gone) are not.
pub fn work_for(rqs: &RequestState, identity: &str) -> Option<Work> {
    if rqs.metadata.deletion_timestamp.is_some() {
        return None;
    }
    match rqs.spec.state {
        JobState::Requested => Some(Work::Claim),
        JobState::Started if rqs.spec.worker.as_deref() == Some(identity) => Some(Work::Resume),
        _ => None,
    }
}

/// The next candidate to take up, among those not already running here: resumptions first
/// (they are this worker's already), then the job requested longest ago. Ties (history times
/// have one-second resolution) are broken by a hash of the worker's identity and the name, so
/// that workers seeing the same burst of requests start at different ones instead of all
/// racing for the same job.
pub fn pick(candidates: &HashMap<Key, Candidate>, running: &HashSet<Key>, identity: &str) -> Option<Key> {
    candidates
        .iter()
        .filter(|(key, _)| !running.contains(*key))
        .min_by_key(|(key, c)| {
            let requested = requested_at(&c.rqs);
            (c.work != Work::Resume, requested.is_none(), requested, spread(identity, key))
        })
        .map(|(key, _)| key.clone())
}

fn spread(identity: &str, key: &Key) -> u64 {
    let mut hasher = DefaultHasher::new();
    (identity, key).hash(&mut hasher);
    hasher.finish()
}

/// When the current job was requested: the time of the last REQUESTED history entry for it.
pub fn requested_at(rqs: &RequestState) -> Option<Timestamp> {
    rqs.status
        .as_ref()?
        .history
        .iter()
        .rev()
        .find(|e| e.state == JobState::Requested && e.job == rqs.spec.job)
        .map(|e| e.timestamp.0)
}

/// Seconds from the job's request to `now` (its claim); never negative, whatever the clocks say.
pub fn claim_latency(rqs: &RequestState, now: Timestamp) -> Option<f64> {
    requested_at(rqs).map(|at| now.duration_since(at).as_secs_f64().max(0.0))
}

/// Whether the worker `identity` may still report on `job`: the job is the RequestState's
/// current one, STARTED, and claimed by this worker. When the workplan-operator re-requested it
/// (this worker's lease had expired), another worker owns it now and the result is dropped.
pub fn owns(rqs: &RequestState, identity: &str, job: Job) -> bool {
    rqs.spec.job == job && rqs.spec.state == JobState::Started && rqs.spec.worker.as_deref() == Some(identity)
}

/// Whether the job this process runs (`running`) was taken from it by the request of another
/// job: the workplan-operator requested the cleanup of a Workplan deleted mid-run. Its result
/// could not be reported any more, and following its pod would hold the RequestState's one slot
/// in this process, so that the cleanup would wait for the task's pod to end. (After this
/// worker's own report the next job is requested too; the report is done by then.)
pub fn moved_on(rqs: &RequestState, running: Job) -> bool {
    rqs.spec.job != running && rqs.spec.state == JobState::Requested
}

/// Whether the RequestState belongs to this Workplan (its `request-uid` is the Workplan's uid).
pub fn belongs_to(rqs: &RequestState, workplan: &Workplan) -> bool {
    workplan.metadata.uid.as_deref() == Some(rqs.spec.request_uid.as_str())
}

/// Whether an existing pod of the job's name may be adopted: it must be the pod of the same
/// Workplan, task and attempt, as labelled by the renderer (a first attempt's pod has no attempt
/// label). Anything else is someone else's pod.
pub fn adoptable(pod: &Pod, workplan: &str, job: Job, attempt: u32) -> Result<(), String> {
    let task = match job {
        Job::Task(i) => i.to_string(),
        Job::Cleanup => "cleanup".to_string(),
    };
    let labels = pod.labels();
    let has = |key: &str, value: &str| labels.get(key).map(String::as_str) == Some(value);
    let pod_attempt = labels.get(labels::ATTEMPT).map_or("1", String::as_str);
    let wanted_attempt = if matches!(job, Job::Task(_)) { attempt.max(1) } else { 1 }.to_string();
    if has(labels::WORKPLAN, workplan) && has(labels::TASK, &task) && pod_attempt == wanted_attempt {
        Ok(())
    } else {
        Err(format!(
            "pod {} exists but is not this job's (labels {}={:?}, {}={:?}, {}={:?}; expected {workplan}, {task}, attempt {wanted_attempt})",
            pod.name_any(),
            labels::WORKPLAN,
            labels.get(labels::WORKPLAN),
            labels::TASK,
            labels.get(labels::TASK),
            labels::ATTEMPT,
            labels.get(labels::ATTEMPT),
        ))
    }
}

/// Seconds a task pod stopped before its run's cleanup gets to end (its deletion's grace
/// period): a run stopped at its deadline or deleted stops within seconds.
pub const STOP_GRACE_SECONDS: u32 = 5;

/// The task pods (not the cleanup's) among `pods` that have not finished and are not being
/// deleted: what the cleanup stops first.
pub fn pods_to_stop(pods: &[Pod]) -> Vec<&Pod> {
    pods.iter()
        .filter(|pod| pod.labels().get(labels::TASK).is_some_and(|task| task != "cleanup"))
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .filter(|pod| {
            !matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
        })
        .collect()
}

/// How a job ended, as the worker reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// COMPLETED or FAILED.
    pub state: JobState,
    /// The node the pod ran on, if it got one.
    pub node: Option<String>,
    /// Why it failed.
    pub message: Option<String>,
}

impl Outcome {
    pub fn completed(node: Option<String>) -> Outcome {
        Outcome { state: JobState::Completed, node, message: None }
    }

    pub fn failed(node: Option<String>, message: impl Into<String>) -> Outcome {
        Outcome { state: JobState::Failed, node, message: Some(message.into()) }
    }

    /// The `outcome` label of `jobs_total`.
    pub fn label(&self) -> &'static str {
        match self.state {
            JobState::Completed => "completed",
            _ => "failed",
        }
    }
}

/// What to do after looking at the pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Keep watching; with `fail_at`, the pod is stuck and the job fails then unless it changes.
    Wait { fail_at: Option<Instant> },
    /// The job is over.
    Report(Outcome),
}

/// Judges a job's pod over time. A pod that is Pending with a problem (unschedulable, image
/// cannot be pulled) may still recover, so the job fails only once the problem has lasted the
/// pending timeout without a break; the time counts from when this worker first saw it.
#[derive(Clone, Debug)]
pub struct PendingClock {
    timeout: Duration,
    problem_since: Option<Instant>,
}

impl PendingClock {
    pub fn new(timeout: Duration) -> PendingClock {
        PendingClock { timeout, problem_since: None }
    }

    /// The verdict on the pod's latest `outcome`, seen at `now`.
    pub fn judge(&mut self, outcome: &PodOutcome, now: Instant) -> Verdict {
        match outcome {
            PodOutcome::Succeeded { node } => Verdict::Report(Outcome::completed(node.clone())),
            PodOutcome::Failed { node, message } => Verdict::Report(Outcome::failed(node.clone(), message)),
            PodOutcome::Pending { problem: None, .. } => {
                self.problem_since = None;
                Verdict::Wait { fail_at: None }
            }
            PodOutcome::Pending { node, problem: Some(problem) } => {
                let since = *self.problem_since.get_or_insert(now);
                let fail_at = since + self.timeout;
                if now >= fail_at {
                    Verdict::Report(Outcome::failed(
                        node.clone(),
                        format!("{problem} (still pending after {}s)", self.timeout.as_secs()),
                    ))
                } else {
                    Verdict::Wait { fail_at: Some(fail_at) }
                }
            }
        }
    }
}

/// The message of a job whose pod disappeared before it finished.
pub const POD_DELETED: &str = "pod was deleted";

/// What to do when the pod's watch says it is gone: a pod deleted after it finished still tells
/// the outcome; one deleted before fails the job.
pub fn on_pod_deleted(last: Option<&PodOutcome>) -> Outcome {
    match last {
        Some(PodOutcome::Succeeded { node }) => Outcome::completed(node.clone()),
        Some(PodOutcome::Failed { node, message }) => Outcome::failed(node.clone(), message),
        Some(PodOutcome::Pending { node, .. }) => Outcome::failed(node.clone(), POD_DELETED),
        None => Outcome::failed(None, POD_DELETED),
    }
}

/// A pod as the shared pod watch saw it: what a job needs to follow its own pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenPod {
    pub uid: String,
    pub outcome: PodOutcome,
}

impl SeenPod {
    pub fn of(pod: &Pod) -> SeenPod {
        SeenPod { uid: pod.uid().unwrap_or_default(), outcome: pod_outcome(pod) }
    }
}

/// A change under a job's pod name, from the shared pod watch ([`crate::pods`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodChange {
    /// A pod of the name was added or changed (or was in the cache when the job subscribed).
    Applied(SeenPod),
    /// A pod of the name was deleted; its last state.
    Deleted(SeenPod),
    /// The watch listed every pod again (it started, or restarted after losing track): the pod
    /// the listing has under the name, if any. The deletions in between were never seen.
    Relisted(Option<SeenPod>),
}

/// What a change means for the job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tracked {
    /// Keep following the pod (and judge [`PodTracker::last`]).
    Wait,
    /// The pod is gone (deleted, or replaced by another pod of the name): the job's outcome.
    Gone(Outcome),
    /// A listing did not show the pod: read it to be sure ([`PodTracker::confirmed`]). The
    /// listing may have been made before the pod was created, so its absence proves nothing.
    Confirm,
}

/// Follows a job's one pod (by uid) through the changes the shared pod watch reports under its
/// name. The watch is shared and may lag: a change of an earlier pod of the same name (deleted
/// just before this one was created) may still come after the job created its own. So another
/// pod under the name means the job's pod was replaced only once the job's pod has been seen
/// on the watch: the watch reports changes in order, so the job's pod shows there before any
/// pod that replaces it.
#[derive(Clone, Debug)]
pub struct PodTracker {
    uid: String,
    seen: bool,
    last: PodOutcome,
}

impl PodTracker {
    /// Follows the pod with `uid`, whose latest state (as created or read) is `outcome`.
    pub fn new(uid: String, outcome: PodOutcome) -> PodTracker {
        PodTracker { uid, seen: false, last: outcome }
    }

    /// The pod's latest state.
    pub fn last(&self) -> &PodOutcome {
        &self.last
    }

    /// Takes in one change under the pod's name.
    pub fn observe(&mut self, change: PodChange) -> Tracked {
        match change {
            PodChange::Applied(pod) | PodChange::Relisted(Some(pod)) if pod.uid == self.uid => {
                self.seen = true;
                self.last = pod.outcome;
                Tracked::Wait
            }
            PodChange::Deleted(pod) if pod.uid == self.uid => {
                self.last = pod.outcome;
                Tracked::Gone(on_pod_deleted(Some(&self.last)))
            }
            PodChange::Relisted(_) => Tracked::Confirm,
            // An earlier pod of the name, from the watch's past.
            PodChange::Applied(_) | PodChange::Deleted(_) if !self.seen => Tracked::Wait,
            // Another pod under the name after ours: ours was deleted and someone made a new one.
            PodChange::Applied(_) | PodChange::Deleted(_) => Tracked::Gone(on_pod_deleted(Some(&self.last))),
        }
    }

    /// What a fresh read of the name (after [`Tracked::Confirm`]) found.
    pub fn confirmed(&mut self, current: Option<SeenPod>) -> Tracked {
        match current {
            Some(pod) if pod.uid == self.uid => self.observe(PodChange::Applied(pod)),
            _ => Tracked::Gone(on_pod_deleted(Some(&self.last))),
        }
    }
}

/// Whether a failed pod creation can succeed when tried again: a pod the API server rejects as
/// invalid never will, nor one in a namespace being deleted (so that the cleanup of a Workplan
/// deleted with its namespace fails at once and its finalizer goes); anything else (quota
/// exhausted, the namespace's ServiceAccount not yet created, admission webhooks or the API
/// server unavailable) may, until the pending timeout.
pub fn create_retryable(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => {
            let terminating =
                status.details.iter().flat_map(|d| &d.causes).any(|c| c.reason == NAMESPACE_TERMINATING);
            !(status.is_invalid() || status.code == 400 || terminating)
        }
        _ => true,
    }
}

/// The cause the API server gives when it refuses a create in a namespace being deleted.
const NAMESPACE_TERMINATING: &str = "NamespaceTerminating";

/// Why task `job` of `workplan` must not start: its Workplan is being deleted or was cancelled
/// (the operator requests the cleanup instead). Checked right before the pod is created, it
/// closes the window in which the operator, finding that no task ever started, lets the Workplan
/// go while a claim wins.
pub fn refuse_task(workplan: &Workplan, job: Job) -> Option<String> {
    if !matches!(job, Job::Task(_)) {
        return None;
    }
    if workplan.metadata.deletion_timestamp.is_some() {
        return Some(format!("the Workplan is being deleted; {job} was not started"));
    }
    workplan
        .annotations()
        .contains_key(labels::CANCEL_ANNOTATION)
        .then(|| format!("the Workplan was cancelled; {job} was not started"))
}

/// Why `value` is not a Kubernetes resource quantity (`10m`, `0.5`, `64Mi`, `1e3`), if it is not:
/// a flag checked at start instead of every cleanup pod being refused.
pub fn quantity_problem(value: &str) -> Option<String> {
    let number_end = value.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(value.len());
    let (number, suffix) = value.split_at(number_end);
    let digits = number.chars().filter(char::is_ascii_digit).count();
    let number_ok = digits > 0 && number.matches('.').count() <= 1;
    let exponent_ok = |e: &str| {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        !e.is_empty() && e.chars().all(|c| c.is_ascii_digit())
    };
    let suffix_ok = matches!(suffix, "" | "m" | "k" | "M" | "G" | "T" | "P" | "E")
        || matches!(suffix, "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei")
        || suffix.strip_prefix(['e', 'E']).is_some_and(exponent_ok);
    (!(number_ok && suffix_ok))
        .then(|| format!("{value:?} is not a resource quantity (such as 10m, 0.5, 64Mi or 1e3)"))
}

/// Why `identity` cannot name the worker's Lease (a DNS-1123 subdomain), if it cannot.
pub fn identity_problem(identity: &str) -> Option<String> {
    let valid_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let ok = !identity.is_empty()
        && identity.len() <= 253
        && identity.chars().all(valid_char)
        && alnum(identity.chars().next())
        && alnum(identity.chars().last());
    (!ok).then(|| {
        format!(
            "identity {identity:?} cannot name a Lease: use at most 253 lower-case letters, digits, '-' and '.', starting and ending with a letter or digit"
        )
    })
}

/// A default identity made fit to name a Lease (a host name may have upper-case letters).
pub fn lease_safe(identity: &str) -> String {
    let mapped: String = identity
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '-' })
        .take(253)
        .collect();
    let trimmed = mapped.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if trimmed.is_empty() { "kubeci-worker".to_string() } else { trimmed.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use pretty_assertions::assert_eq;
    use shared_types::RequestStateSpec;
    use shared_types::protocol;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + second).unwrap()
    }

    fn requested(name: &str, second: i64) -> RequestState {
        let mut fresh = RequestState::new(
            name,
            RequestStateSpec {
                request_uid: "uid".into(),
                job: Job::Task(0),
                state: JobState::Requested,
                worker: None,
            },
        );
        fresh.metadata.namespace = Some("ns".into());
        protocol::request(&fresh, Job::Task(0), None, at(second))
    }

    fn key(name: &str) -> Key {
        Key { namespace: "ns".into(), name: name.into() }
    }

    fn candidates(list: &[(&str, RequestState, Work)]) -> HashMap<Key, Candidate> {
        list.iter().map(|(n, rqs, work)| (key(n), Candidate { work: *work, rqs: rqs.clone() })).collect()
    }

    #[test]
    fn requested_jobs_are_claimable_and_own_started_ones_resumable() {
        let rqs = requested("a", 0);
        assert_eq!(work_for(&rqs, "w1"), Some(Work::Claim));
        let started = protocol::claim(&rqs, "w1", at(1)).unwrap();
        assert_eq!(work_for(&started, "w1"), Some(Work::Resume));
        assert_eq!(work_for(&started, "w2"), None);
        let done = protocol::report(&started, "w1", JobState::Completed, None, None, at(2)).unwrap();
        assert_eq!(work_for(&done, "w1"), None);
        let mut deleting = rqs.clone();
        deleting.metadata.deletion_timestamp = Some(Time(at(3)));
        assert_eq!(work_for(&deleting, "w1"), None);
    }

    #[test]
    fn pick_prefers_resumptions_then_the_oldest_request_and_skips_running_ones() {
        let old = requested("old", 0);
        let new = requested("new", 10);
        let mine = protocol::claim(&requested("mine", 20), "w1", at(21)).unwrap();
        let mut all = candidates(&[("old", old, Work::Claim), ("new", new, Work::Claim)]);
        assert_eq!(pick(&all, &HashSet::new(), "w1"), Some(key("old")));
        assert_eq!(pick(&all, &HashSet::from([key("old")]), "w1"), Some(key("new")));
        assert_eq!(pick(&all, &HashSet::from([key("old"), key("new")]), "w1"), None);
        all.insert(key("mine"), Candidate { work: Work::Resume, rqs: mine });
        assert_eq!(pick(&all, &HashSet::new(), "w1"), Some(key("mine")));
        assert_eq!(pick(&HashMap::new(), &HashSet::new(), "w1"), None);
    }

    #[test]
    fn ties_are_spread_across_workers() {
        let names: Vec<String> = (0..20).map(|i| format!("wp-{i}")).collect();
        let all: HashMap<Key, Candidate> =
            names.iter().map(|n| (key(n), Candidate { work: Work::Claim, rqs: requested(n, 0) })).collect();
        let firsts: HashSet<Key> =
            (0..8).filter_map(|w| pick(&all, &HashSet::new(), &format!("worker-{w}"))).collect();
        assert!(firsts.len() > 1, "every worker starts with the same job: {firsts:?}");
        // Deterministic per worker.
        assert_eq!(pick(&all, &HashSet::new(), "worker-0"), pick(&all, &HashSet::new(), "worker-0"));
    }

    #[test]
    fn claim_latency_counts_from_the_current_jobs_request() {
        let rqs = requested("a", 0);
        assert_eq!(claim_latency(&rqs, at(3)), Some(3.0));
        // Clock skew never gives a negative latency.
        assert_eq!(claim_latency(&rqs, at(-5)), Some(0.0));
        // task-1 requested at 100 after task-0's history: counts from 100.
        let done = protocol::report(
            &protocol::claim(&rqs, "w", at(1)).unwrap(),
            "w",
            JobState::Completed,
            Some("n"),
            None,
            at(2),
        )
        .unwrap();
        let next = protocol::request(&done, Job::Task(1), None, at(100));
        assert_eq!(requested_at(&next), Some(at(100)));
        assert_eq!(claim_latency(&next, at(102)), Some(2.0));
        let mut bare = next.clone();
        bare.status = None;
        assert_eq!(claim_latency(&bare, at(102)), None);
    }

    #[test]
    fn only_the_current_owner_of_the_same_job_reports() {
        let started = protocol::claim(&requested("a", 0), "w1", at(1)).unwrap();
        assert!(owns(&started, "w1", Job::Task(0)));
        assert!(!owns(&started, "w2", Job::Task(0)));
        assert!(!owns(&started, "w1", Job::Task(1)));
        // Re-requested because w1's lease expired, then claimed by w2.
        let again = protocol::request(&started, Job::Task(0), Some("worker w1 lost".into()), at(30));
        assert!(!owns(&again, "w1", Job::Task(0)));
        let theirs = protocol::claim(&again, "w2", at(31)).unwrap();
        assert!(!owns(&theirs, "w1", Job::Task(0)));
    }

    #[test]
    fn a_workplan_owns_the_request_state_with_its_uid() {
        let rqs = requested("a", 0);
        let mut wp: Workplan = serde_yaml::from_str(
            "apiVersion: kube.ci/v1alpha1\nkind: Workplan\nmetadata: {name: a, uid: uid}\nspec: {workflow: wf, trigger: {event: Manual}, tasks: []}",
        )
        .unwrap();
        assert!(belongs_to(&rqs, &wp));
        wp.metadata.uid = Some("other".into());
        assert!(!belongs_to(&rqs, &wp));
    }

    fn pod(labels: &str) -> Pod {
        serde_yaml::from_str(&format!("metadata: {{name: wp-task-0, labels: {labels}}}")).unwrap()
    }

    #[test]
    fn the_cleanup_stops_only_the_unfinished_task_pods() {
        let pods: Vec<Pod> = [
            "{metadata: {name: running, labels: {kube.ci/task: '0'}}, status: {phase: Running}}",
            "{metadata: {name: pending, labels: {kube.ci/task: '1'}}}",
            "{metadata: {name: done, labels: {kube.ci/task: '0'}}, status: {phase: Succeeded}}",
            "{metadata: {name: failed, labels: {kube.ci/task: '0', kube.ci/attempt: '2'}}, status: {phase: Failed}}",
            "{metadata: {name: cleanup, labels: {kube.ci/task: cleanup}}, status: {phase: Running}}",
            "{metadata: {name: going, labels: {kube.ci/task: '2'}, deletionTimestamp: '2027-01-15T10:00:00Z'}}",
        ]
        .iter()
        .map(|yaml| serde_yaml::from_str(yaml).unwrap())
        .collect();
        let names: Vec<String> = pods_to_stop(&pods).into_iter().map(|p| p.name_any()).collect();
        assert_eq!(names, ["running", "pending"]);
    }

    #[test]
    fn only_the_jobs_own_pod_is_adopted() {
        assert_eq!(
            adoptable(&pod("{kube.ci/workplan: wp, kube.ci/task: '0'}"), "wp", Job::Task(0), 1),
            Ok(())
        );
        assert!(
            adoptable(&pod("{kube.ci/workplan: other, kube.ci/task: '0'}"), "wp", Job::Task(0), 1).is_err()
        );
        assert!(adoptable(&pod("{kube.ci/workplan: wp, kube.ci/task: '1'}"), "wp", Job::Task(0), 1).is_err());
        let err = adoptable(&pod("{}"), "wp", Job::Task(0), 1).unwrap_err();
        assert!(err.contains("pod wp-task-0 exists but is not this job's"), "{err}");
        assert_eq!(
            adoptable(&pod("{kube.ci/workplan: wp, kube.ci/task: cleanup}"), "wp", Job::Cleanup, 1),
            Ok(())
        );
        // A retry adopts only its own attempt's pod.
        let second = pod("{kube.ci/workplan: wp, kube.ci/task: '0', kube.ci/attempt: '2'}");
        assert_eq!(adoptable(&second, "wp", Job::Task(0), 2), Ok(()));
        assert!(adoptable(&second, "wp", Job::Task(0), 3).is_err());
        assert!(adoptable(&pod("{kube.ci/workplan: wp, kube.ci/task: '0'}"), "wp", Job::Task(0), 2).is_err());
    }

    #[test]
    fn finished_pods_are_reported_at_once() {
        let mut clock = PendingClock::new(Duration::from_secs(300));
        let now = Instant::now();
        assert_eq!(
            clock.judge(&PodOutcome::Succeeded { node: Some("n".into()) }, now),
            Verdict::Report(Outcome::completed(Some("n".into())))
        );
        assert_eq!(
            clock.judge(&PodOutcome::Failed { node: None, message: "boom".into() }, now),
            Verdict::Report(Outcome::failed(None, "boom"))
        );
    }

    #[test]
    fn a_pending_problem_fails_the_job_only_after_the_timeout_without_a_break() {
        let timeout = Duration::from_secs(300);
        let mut clock = PendingClock::new(timeout);
        let t0 = Instant::now();
        let stuck = PodOutcome::Pending { node: None, problem: Some("pod cannot be scheduled: no".into()) };
        let fine = PodOutcome::Pending { node: None, problem: None };
        assert_eq!(clock.judge(&fine, t0), Verdict::Wait { fail_at: None });
        assert_eq!(clock.judge(&stuck, t0), Verdict::Wait { fail_at: Some(t0 + timeout) });
        // Still stuck later: the deadline stays where the problem began.
        let later = t0 + Duration::from_secs(100);
        assert_eq!(clock.judge(&stuck, later), Verdict::Wait { fail_at: Some(t0 + timeout) });
        // It recovered for a while: the clock starts again.
        assert_eq!(clock.judge(&fine, later), Verdict::Wait { fail_at: None });
        let t1 = t0 + Duration::from_secs(200);
        assert_eq!(clock.judge(&stuck, t1), Verdict::Wait { fail_at: Some(t1 + timeout) });
        assert_eq!(
            clock.judge(&stuck, t1 + timeout),
            Verdict::Report(Outcome::failed(None, "pod cannot be scheduled: no (still pending after 300s)"))
        );
    }

    #[test]
    fn a_deleted_pod_fails_the_job_unless_it_had_finished() {
        assert_eq!(on_pod_deleted(None), Outcome::failed(None, POD_DELETED));
        assert_eq!(
            on_pod_deleted(Some(&PodOutcome::Pending { node: Some("n".into()), problem: None })),
            Outcome::failed(Some("n".into()), POD_DELETED)
        );
        assert_eq!(
            on_pod_deleted(Some(&PodOutcome::Succeeded { node: Some("n".into()) })),
            Outcome::completed(Some("n".into()))
        );
    }

    fn seen(uid: &str, outcome: PodOutcome) -> SeenPod {
        SeenPod { uid: uid.into(), outcome }
    }

    const RUNNING: PodOutcome = PodOutcome::Pending { node: None, problem: None };

    fn done() -> PodOutcome {
        PodOutcome::Succeeded { node: Some("n".into()) }
    }

    fn gone_pending() -> Tracked {
        Tracked::Gone(Outcome::failed(None, POD_DELETED))
    }

    #[test]
    fn the_tracker_follows_its_own_pod_to_its_deletion() {
        let mut t = PodTracker::new("ours".into(), RUNNING);
        assert_eq!(t.observe(PodChange::Applied(seen("ours", done()))), Tracked::Wait);
        assert_eq!(t.last(), &done());
        // Deleted after it finished: the outcome stands.
        assert_eq!(
            t.observe(PodChange::Deleted(seen("ours", done()))),
            Tracked::Gone(Outcome::completed(Some("n".into())))
        );
        // Deleted before: the job fails, with the state the deletion carried.
        let mut t = PodTracker::new("ours".into(), RUNNING);
        let failed = PodOutcome::Failed { node: None, message: "boom".into() };
        assert_eq!(
            t.observe(PodChange::Deleted(seen("ours", failed))),
            Tracked::Gone(Outcome::failed(None, "boom"))
        );
        let mut t = PodTracker::new("ours".into(), RUNNING);
        assert_eq!(t.observe(PodChange::Deleted(seen("ours", RUNNING))), gone_pending());
    }

    #[test]
    fn an_earlier_pod_of_the_name_is_ignored_until_ours_shows() {
        let mut t = PodTracker::new("ours".into(), RUNNING);
        // The cache still had the pod deleted just before ours was created.
        assert_eq!(t.observe(PodChange::Applied(seen("before", done()))), Tracked::Wait);
        assert_eq!(t.observe(PodChange::Deleted(seen("before", done()))), Tracked::Wait);
        assert_eq!(t.last(), &RUNNING);
        assert_eq!(t.observe(PodChange::Applied(seen("ours", RUNNING))), Tracked::Wait);
        // Another pod after ours: ours was replaced.
        assert_eq!(t.observe(PodChange::Applied(seen("after", done()))), gone_pending());
    }

    #[test]
    fn a_listing_without_the_pod_is_confirmed_by_a_read() {
        let mut t = PodTracker::new("ours".into(), RUNNING);
        assert_eq!(t.observe(PodChange::Relisted(Some(seen("ours", done())))), Tracked::Wait);
        assert_eq!(t.last(), &done());
        for listed in [None, Some(seen("other", RUNNING))] {
            let mut t = PodTracker::new("ours".into(), RUNNING);
            assert_eq!(t.observe(PodChange::Relisted(listed)), Tracked::Confirm);
            assert_eq!(t.clone().confirmed(None), gone_pending());
            assert_eq!(t.clone().confirmed(Some(seen("other", RUNNING))), gone_pending());
            assert_eq!(t.confirmed(Some(seen("ours", done()))), Tracked::Wait);
            assert_eq!(t.last(), &done());
        }
    }

    #[test]
    fn invalid_pods_are_not_retried_other_create_errors_are() {
        let status = |code: u16, reason: &str| {
            kube::Error::Api(Box::new(kube::core::Status::failure("x", reason).with_code(code)))
        };
        assert!(!create_retryable(&status(422, "Invalid")));
        assert!(!create_retryable(&status(400, "BadRequest")));
        assert!(create_retryable(&status(403, "Forbidden")));
        assert!(create_retryable(&status(500, "InternalError")));
        assert!(create_retryable(&status(429, "TooManyRequests")));
        // As the API server answers a create in a namespace being deleted.
        let terminating: kube::core::Status = serde_json::from_value(serde_json::json!({
            "status": "Failure",
            "message": "pods \"wp-cleanup\" is forbidden: unable to create new content in namespace ci because it is being terminated",
            "reason": "Forbidden",
            "details": {"name": "wp-cleanup", "kind": "pods", "causes": [{
                "reason": "NamespaceTerminating",
                "message": "namespace ci is being terminated",
                "field": "metadata.namespace",
            }]},
            "code": 403,
        }))
        .unwrap();
        assert!(
            !create_retryable(&kube::Error::Api(Box::new(terminating))),
            "never in a namespace being deleted"
        );
    }

    #[test]
    fn a_job_moved_on_when_another_is_requested() {
        let rqs = requested("wp", 0);
        let cleanup = protocol::request(&rqs, Job::Cleanup, Some("the Workplan was deleted".into()), at(1));
        assert!(moved_on(&cleanup, Job::Task(0)), "the cleanup requested in place of the running task");
        assert!(!moved_on(&rqs, Job::Task(0)), "the same job requested again (a lost worker): not this");
        let started = protocol::claim(&cleanup, "w2", at(2)).unwrap();
        assert!(!moved_on(&started, Job::Task(0)), "only a request moves it on");
    }

    #[test]
    fn tasks_of_a_deleted_workplan_are_refused_its_cleanup_is_not() {
        let mut workplan = Workplan::new(
            "wp",
            serde_json::from_value(serde_json::json!({
                "workflow": "wf",
                "trigger": {"event": "Manual"},
                "tasks": [{"parallelSteps": [{"name": "a", "image": "alpine"}]}],
            }))
            .unwrap(),
        );
        assert_eq!(refuse_task(&workplan, Job::Task(0)), None);
        workplan.metadata.deletion_timestamp = Some(Time("2027-01-15T10:00:00Z".parse().unwrap()));
        assert_eq!(
            refuse_task(&workplan, Job::Task(0)).as_deref(),
            Some("the Workplan is being deleted; task-0 was not started")
        );
        assert_eq!(refuse_task(&workplan, Job::Cleanup), None);
        workplan.metadata.deletion_timestamp = None;
        workplan.metadata.annotations = Some([("kube.ci/cancel".to_string(), "alice".to_string())].into());
        assert_eq!(
            refuse_task(&workplan, Job::Task(0)).as_deref(),
            Some("the Workplan was cancelled; task-0 was not started")
        );
        assert_eq!(refuse_task(&workplan, Job::Cleanup), None, "its cleanup still runs");
    }

    #[test]
    fn resource_quantities_are_checked() {
        for good in ["10m", "0.5", "1", "64Mi", "1Gi", ".5", "2.", "1e3", "1E-2", "100k"] {
            assert_eq!(quantity_problem(good), None, "{good}");
        }
        for bad in ["", "m", "ten", "10 m", "1.2.3", "64MB", "1e", "-1", "1Mi1"] {
            assert!(quantity_problem(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn outcome_labels_are_fixed() {
        assert_eq!(Outcome::completed(None).label(), "completed");
        assert_eq!(Outcome::failed(None, "x").label(), "failed");
    }

    #[test]
    fn identities_must_name_a_lease() {
        assert_eq!(identity_problem("worker-a"), None);
        assert_eq!(identity_problem("kubeci-worker-7d9f.x-1a2b"), None);
        for bad in ["", "Worker", "-a", "a-", "a_b", "a/b", &"a".repeat(254)] {
            assert!(identity_problem(bad).is_some(), "{bad:?}");
        }
        assert_eq!(lease_safe("My_Laptop-1f2e"), "my-laptop-1f2e");
        assert_eq!(lease_safe("__"), "kubeci-worker");
        assert_eq!(identity_problem(&lease_safe("-X.local_")), None);
    }
}
