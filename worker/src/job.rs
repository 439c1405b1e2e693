//! One job, from claim to report (DESIGN.md §4, §5): claim the RequestState with the
//! resourceVersion it was seen at, run the job as its pod (creating it, or adopting the pod of
//! the same deterministic name), follow that one pod on the process's shared pod watch
//! ([`crate::pods`]) until it ends, and write COMPLETED or FAILED while the job is still this
//! worker's.
//!
//! Every step before the report is idempotent (the pod's name is fixed, a create that finds it
//! adopts it), so the job can be abandoned at any point and taken up again by this or another
//! worker. Transient API errors are retried with a capped back-off; the decisions are in
//! [`crate::decide`].

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, ResourceExt};
use plumbing::kit::Backoff;
use shared_types::protocol::{self, Job};
use shared_types::render::{RenderConfig, cleanup_pod, task_pod_attempt};
use shared_types::{RequestState, Workplan, labels};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::decide::{self, Key, Outcome, PendingClock, PodTracker, SeenPod, Tracked, Verdict, Work};
use crate::metrics::{InFlight, Metrics};
use crate::pods::{PodWatch, Subscription};
use crate::{Error, FIELD_MANAGER};

/// Everything a job needs, shared by all jobs of the process.
pub struct Context {
    pub client: Client,
    pub identity: String,
    pub render: RenderConfig,
    /// How long a pod may stay Pending with a problem, or fail to be created, before the job
    /// fails.
    pub pending_timeout: Duration,
    pub metrics: Arc<Metrics>,
    /// The process's one watch of kubeci's pods, which every job follows its pod on.
    pub pods: PodWatch,
    /// Cancelled when shutdown has waited long enough for jobs: they stop where they are, without
    /// reporting, and their pods are adopted by whichever worker gets the job next.
    pub abandon: CancellationToken,
}

/// How many conflicts in a row a report retries at once before backing off.
const QUICK_CONFLICT_RETRIES: u32 = 5;

/// Back-off between retries of a failed API request.
fn backoff() -> Backoff {
    Backoff::new(Duration::from_millis(200), Duration::from_secs(10))
}

/// The parameters of every write: attributed to the worker.
fn post_params() -> PostParams {
    PostParams { field_manager: Some(FIELD_MANAGER.into()), ..PostParams::default() }
}

/// Takes up one candidate: claims it (or checks it is still this worker's, for a resumption),
/// runs it, reports it. Returns the resourceVersions of the RequestState this job has moved
/// past, so the claim loop can drop them from its view instead of acting on them again.
///
/// `moved_on` is cancelled by the claim loop when another job of the RequestState was requested
/// meanwhile ([`decide::moved_on`]: the cleanup of a Workplan deleted mid-run): the job stops
/// following its pod, whose result could not be reported, and leaves the pod to the garbage
/// collector.
///
/// A job spends most of its life waiting for its pod, and a task is as large as its largest
/// state: the steps with API requests in them (claim, start, read, report) are boxed, so that a
/// waiting job does not carry their request futures (a debug build measured the task's future
/// at 16.7 KB unboxed, 3.6 KB boxed).
pub async fn take_up(
    ctx: Arc<Context>,
    work: Work,
    rqs: RequestState,
    moved_on: CancellationToken,
) -> Vec<String> {
    let Some(key) = Key::of(&rqs) else { return Vec::new() };
    let span = tracing::info_span!("job", rqs = %key, job = %rqs.spec.job);
    async move {
        let api: Api<RequestState> = Api::namespaced(ctx.client.clone(), &key.namespace);
        let taken = match work {
            Work::Claim => Box::pin(claim(&ctx, &api, &key, &rqs)).await,
            Work::Resume => Box::pin(resume(&ctx, &api, &key, &rqs)).await,
        };
        let mut superseded = vec![rqs.resource_version().unwrap_or_default()];
        // The version seen is of no use past the claim; the claim loop keeps its own copy.
        drop(rqs);
        let mut started = match taken {
            Taken::Started(started) => *started,
            Taken::MovedOn => return superseded,
            // The version seen is still current as far as this worker knows: try again later.
            Taken::Failed => return Vec::new(),
        };
        superseded.push(started.resource_version().unwrap_or_default());
        // Held for the whole job; the report reads the RequestState afresh.
        started.metadata.managed_fields = None;
        let job = started.spec.job;
        let begun = Instant::now();
        let in_flight = InFlight::start(&ctx.metrics.jobs_in_flight);
        let finish = async {
            let outcome = run(&ctx, &key, &started).await;
            Box::pin(report(&ctx, &api, &key, job, outcome)).await
        };
        let finished = tokio::select! {
            // A report that is done counts, whatever came meanwhile.
            biased;
            reported = finish => Some(reported),
            _ = ctx.abandon.cancelled() => None,
            _ = moved_on.cancelled() => Some(None),
        };
        drop(in_flight);
        match finished {
            Some(Some((outcome, rv))) => {
                ctx.metrics.jobs.with_label_values(&[outcome.label()]).inc();
                ctx.metrics.job_duration.observe(begun.elapsed().as_secs_f64());
                superseded.push(rv);
            }
            Some(None) if moved_on.is_cancelled() => {
                ctx.metrics.results_dropped.inc();
                tracing::warn!(
                    "another job was requested (the Workplan was deleted); stopped following the pod"
                );
            }
            Some(None) => ctx.metrics.results_dropped.inc(),
            None => {
                ctx.metrics.jobs_abandoned.inc();
                tracing::warn!("left the job running at shutdown; the next worker adopts its pod");
            }
        }
        superseded
    }
    .instrument(span)
    .await
}

/// How taking up a job went.
enum Taken {
    /// The job is STARTED by this worker: this version.
    Started(Box<RequestState>),
    /// The job moved on from the version seen (another worker claimed it, it was re-requested,
    /// completed or deleted).
    MovedOn,
    /// The API request failed; the job may still be there for the taking.
    Failed,
}

/// REQUESTED → STARTED, written with the resourceVersion the job was seen at: a conflict means
/// another worker won (or the job moved on first).
async fn claim(ctx: &Context, api: &Api<RequestState>, key: &Key, rqs: &RequestState) -> Taken {
    let now = Timestamp::now();
    let Ok(claimed) = protocol::claim(rqs, &ctx.identity, now) else { return Taken::MovedOn };
    match api.replace(&key.name, &post_params(), &claimed).await {
        Ok(started) => {
            ctx.metrics.claims_won.inc();
            if let Some(latency) = decide::claim_latency(rqs, now) {
                ctx.metrics.claim_latency.observe(latency);
            }
            tracing::info!("claim won");
            Taken::Started(Box::new(started))
        }
        Err(kube::Error::Api(s)) if s.is_conflict() => {
            ctx.metrics.claims_lost.inc();
            tracing::info!("claim lost");
            Taken::MovedOn
        }
        Err(kube::Error::Api(s)) if s.is_not_found() => Taken::MovedOn,
        Err(source) => retry_later(ctx, Error::Claim { key: key.to_string(), source }, "claim failed").await,
    }
}

/// Counts and logs a request that failed, then slows the job's next attempt down (it is still
/// REQUESTED, or STARTED by this identity, in the claim loop's view).
async fn retry_later(ctx: &Context, error: Error, what: &str) -> Taken {
    ctx.metrics.error(&error);
    tracing::warn!(%error, "{what}");
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        _ = ctx.abandon.cancelled() => {}
    }
    Taken::Failed
}

/// A job STARTED by this identity before this process: still ours if a fresh read says so.
async fn resume(ctx: &Context, api: &Api<RequestState>, key: &Key, rqs: &RequestState) -> Taken {
    match api.get_opt(&key.name).await {
        Ok(Some(current)) if decide::owns(&current, &ctx.identity, rqs.spec.job) => {
            tracing::info!("resuming a job this worker's identity had started");
            Taken::Started(Box::new(current))
        }
        Ok(_) => Taken::MovedOn,
        Err(source) => {
            let error = Error::GetRequestState { key: key.to_string(), source };
            retry_later(ctx, error, "cannot resume the job yet").await
        }
    }
}

/// Runs the job of `rqs` to its outcome.
async fn run(ctx: &Context, key: &Key, rqs: &RequestState) -> Outcome {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &key.namespace);
    // Only the pod's name, uid and subscription outlive starting it: a job in flight holds no
    // Workplan and no pod.
    match Box::pin(start(ctx, &pods, key, rqs)).await {
        Ok((name, tracker, changes)) => follow(ctx, &pods, &name, tracker, changes).await,
        Err(outcome) => outcome,
    }
}

/// Renders the job's pod and creates (or adopts) it, subscribed to its name first.
async fn start(
    ctx: &Context,
    pods: &Api<Pod>,
    key: &Key,
    rqs: &RequestState,
) -> Result<(String, PodTracker, Subscription), Outcome> {
    let job = rqs.spec.job;
    let workplans: Api<Workplan> = Api::namespaced(ctx.client.clone(), &key.namespace);
    let mut backoff = backoff();
    let workplan = loop {
        match workplans.get_opt(&key.name).await {
            Ok(Some(workplan)) => break workplan,
            Ok(None) => return Err(Outcome::failed(None, format!("Workplan {} not found", key.name))),
            Err(source) => {
                let error = Error::GetWorkplan { key: key.to_string(), source };
                ctx.metrics.error(&error);
                tracing::warn!(%error, "retrying");
                backoff.wait().await;
            }
        }
    };
    if !decide::belongs_to(rqs, &workplan) {
        return Err(Outcome::failed(
            None,
            format!(
                "RequestState belongs to another Workplan (request-uid {}, Workplan {} has uid {})",
                rqs.spec.request_uid,
                key.name,
                workplan.metadata.uid.as_deref().unwrap_or("<none>")
            ),
        ));
    }
    let node = protocol::node(rqs);
    if let Some(refused) = decide::refuse_task(&workplan, job) {
        return Err(Outcome::failed(node, refused));
    }
    // A retry is a pod of its own; a job requested again because its worker was lost is the same
    // attempt, whose pod is adopted.
    let attempt = protocol::attempt(rqs);
    let rendered = match job {
        Job::Task(i) => task_pod_attempt(&workplan, i, attempt, node.as_deref(), &ctx.render),
        Job::Cleanup => cleanup_pod(&workplan, node.as_deref(), &ctx.render),
    };
    let pod = rendered.map_err(|e| Outcome::failed(node, e.to_string()))?;
    if job == Job::Cleanup {
        Box::pin(stop_task_pods(ctx, pods, &key.name)).await;
    }
    let name = pod.name_any();
    let changes = ctx.pods.subscribe(Key { namespace: key.namespace.clone(), name: name.clone() });
    let pod = ensure_pod(ctx, pods, pod, &key.name, job, attempt).await?;
    let seen = SeenPod::of(&pod);
    Ok((name, PodTracker::new(seen.uid, seen.outcome), changes))
}

/// Stops the Workplan's task pods that are still running before its workspace is removed: the
/// run was cut short (its deadline passed, it was deleted) and its result will not be read. Each
/// gets [`decide::STOP_GRACE_SECONDS`] to end, and the cleanup waits until they are gone (at most
/// that and 5 seconds), so no step writes into the workspace while it is removed. A pod that
/// cannot be stopped (no permission) is reported and left to the garbage collector; the cleanup
/// goes on.
async fn stop_task_pods(ctx: &Context, pods: &Api<Pod>, workplan: &str) {
    let listed =
        match pods.list(&ListParams::default().labels(&format!("{}={workplan}", labels::WORKPLAN))).await {
            Ok(list) => list.items,
            Err(source) => {
                let error = Error::StopPod { name: workplan.to_string(), source };
                ctx.metrics.error(&error);
                tracing::warn!(%error, "cannot list the task pods to stop; cleaning up anyway");
                return;
            }
        };
    let grace =
        DeleteParams { grace_period_seconds: Some(decide::STOP_GRACE_SECONDS), ..DeleteParams::default() };
    let wait = Duration::from_secs(u64::from(decide::STOP_GRACE_SECONDS) + 5);
    for pod in decide::pods_to_stop(&listed) {
        let name = pod.name_any();
        match pods.delete(&name, &grace).await {
            Ok(_) => {
                tracing::info!(pod = %name, "stopped the task pod before the cleanup");
                let uid = pod.uid().unwrap_or_default();
                let gone = await_condition(pods.clone(), &name, conditions::is_deleted(&uid));
                if tokio::time::timeout(wait, gone).await.is_err() {
                    tracing::warn!(pod = %name, ?wait, "the task pod is still terminating; cleaning up anyway");
                }
            }
            Err(kube::Error::Api(s)) if s.is_not_found() => {}
            Err(source) => {
                let error = Error::StopPod { name, source };
                ctx.metrics.error(&error);
                tracing::warn!(%error, "cleaning up anyway");
            }
        }
    }
}

/// Creates the job's pod, or adopts the one already there under its name (a previous claimant
/// of the job created it). Never creates a second pod.
async fn ensure_pod(
    ctx: &Context,
    pods: &Api<Pod>,
    pod: Pod,
    workplan: &str,
    job: Job,
    attempt: u32,
) -> Result<Pod, Outcome> {
    let name = pod.name_any();
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    let give_up = Instant::now() + ctx.pending_timeout;
    let mut backoff = backoff();
    loop {
        let failure = match pods.create(&post_params(), &pod).await {
            Ok(created) => {
                tracing::info!(pod = %name, "created the pod");
                return Ok(created);
            }
            Err(kube::Error::Api(s)) if s.is_already_exists() => match pods.get_opt(&name).await {
                Ok(Some(existing)) => {
                    return match decide::adoptable(&existing, workplan, job, attempt) {
                        Ok(()) => {
                            tracing::info!(pod = %name, "adopted the existing pod");
                            Ok(existing)
                        }
                        Err(message) => Err(Outcome::failed(node, message)),
                    };
                }
                Ok(None) => continue, // deleted in between: create it again
                Err(source) => Error::GetPod { name: name.clone(), source },
            },
            Err(source) if !decide::create_retryable(&source) => {
                return Err(Outcome::failed(node, format!("pod {name} cannot be created: {source}")));
            }
            Err(source) => Error::CreatePod { name: name.clone(), source },
        };
        ctx.metrics.error(&failure);
        if Instant::now() >= give_up {
            return Err(Outcome::failed(
                node,
                format!("{failure} (still failing after {}s)", ctx.pending_timeout.as_secs()),
            ));
        }
        tracing::warn!(error = %failure, "retrying");
        backoff.wait().await;
    }
}

/// Follows the one pod until it ends, is deleted or replaced, or stays stuck past the pending
/// timeout.
async fn follow(
    ctx: &Context,
    pods: &Api<Pod>,
    name: &str,
    mut tracker: PodTracker,
    mut changes: Subscription,
) -> Outcome {
    let mut clock = PendingClock::new(ctx.pending_timeout);
    loop {
        let fail_at = match clock.judge(tracker.last(), Instant::now()) {
            Verdict::Report(outcome) => return outcome,
            Verdict::Wait { fail_at } => fail_at,
        };
        let tracked = tokio::select! {
            _ = sleep_until(fail_at) => continue,
            change = changes.next() => match change {
                Some(change) => tracker.observe(change),
                None => return Outcome::failed(None, format!("the watch of pod {name} ended")),
            },
        };
        let tracked = match tracked {
            Tracked::Confirm => tracker.confirmed(Box::pin(read_pod(ctx, pods, name)).await),
            tracked => tracked,
        };
        if let Tracked::Gone(outcome) = tracked {
            return outcome;
        }
    }
}

/// Reads the pod `name` afresh, retrying until the API server answers.
async fn read_pod(ctx: &Context, pods: &Api<Pod>, name: &str) -> Option<SeenPod> {
    let mut backoff = backoff();
    loop {
        match pods.get_opt(name).await {
            Ok(pod) => return pod.as_ref().map(SeenPod::of),
            Err(source) => {
                let error = Error::GetPod { name: name.to_string(), source };
                ctx.metrics.error(&error);
                tracing::warn!(%error, "retrying");
                backoff.wait().await;
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// STARTED → COMPLETED or FAILED, re-read before each attempt, for as long as the job is still
/// this worker's. Returns the outcome and the resourceVersion written, or `None` when the job is
/// no longer this worker's and the result was dropped.
async fn report(
    ctx: &Context,
    api: &Api<RequestState>,
    key: &Key,
    job: Job,
    outcome: Outcome,
) -> Option<(Outcome, String)> {
    let mut backoff = backoff();
    let mut conflicts = 0;
    loop {
        let current = match api.get_opt(&key.name).await {
            Ok(Some(current)) => current,
            Ok(None) => {
                tracing::warn!(?outcome, "the RequestState is gone; dropping the result");
                return None;
            }
            Err(source) => {
                let error = Error::Report { key: key.to_string(), source };
                ctx.metrics.error(&error);
                tracing::warn!(%error, "retrying");
                backoff.wait().await;
                continue;
            }
        };
        if !decide::owns(&current, &ctx.identity, job) {
            tracing::warn!(
                ?outcome,
                now_job = %current.spec.job,
                now_state = ?current.spec.state,
                now_worker = current.spec.worker.as_deref().unwrap_or(""),
                "the job is no longer this worker's (it was requested again); dropping the result"
            );
            return None;
        }
        let next = protocol::report(
            &current,
            &ctx.identity,
            outcome.state,
            outcome.node.as_deref(),
            outcome.message.clone(),
            Timestamp::now(),
        )
        .ok()?;
        match api.replace(&key.name, &post_params(), &next).await {
            Ok(written) => {
                tracing::info!(state = ?outcome.state, node = outcome.node.as_deref().unwrap_or(""), message = outcome.message.as_deref().unwrap_or(""), "reported");
                return Some((outcome, written.resource_version().unwrap_or_default()));
            }
            Err(kube::Error::Api(s)) if s.is_conflict() => {
                conflicts += 1;
                tracing::debug!(conflicts, "the RequestState changed under the report; reading it again");
                if conflicts > QUICK_CONFLICT_RETRIES {
                    backoff.wait().await;
                }
            }
            Err(kube::Error::Api(s)) if s.is_not_found() => {
                tracing::warn!(?outcome, "the RequestState is gone; dropping the result");
                return None;
            }
            Err(source) => {
                let error = Error::Report { key: key.to_string(), source };
                ctx.metrics.error(&error);
                tracing::warn!(%error, "retrying");
                backoff.wait().await;
            }
        }
    }
}
