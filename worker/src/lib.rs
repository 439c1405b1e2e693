//! The worker (DESIGN.md §1, §4, §5): claims REQUESTED jobs of RequestStates, runs each as a pod
//! on the Workplan's node and reports COMPLETED or FAILED. Any number of workers run side by
//! side; each claim is one optimistic write, so exactly one worker wins a job. Each worker holds
//! a liveness Lease named after its identity ([`liveness`]); when it stops renewing it, the
//! workplan-operator requests its jobs again and the next worker adopts their pods.
//!
//! The claim loop watches RequestStates and keeps, per object, only what is work for this
//! worker (REQUESTED jobs, and jobs STARTED by its identity that this process is not running);
//! whenever a slot of `--max-in-flight` is free it takes up the next one ([`decide::pick`]) as a
//! task ([`job::take_up`]). Jobs follow their pods on one shared, label-selected pod watch
//! ([`pods`]). The worker is ready once the RequestStates are listed and the pods cached.
//!
//! Shutdown (SIGTERM): stop claiming at once (`/readyz` turns 503), give running jobs
//! `--drain-seconds` to finish and report, then leave the rest where they are: their pods keep
//! running, and the Lease is released and deleted, so the workplan-operator requests those jobs
//! again right away instead of after the lease duration, and another worker adopts the pods. A
//! job can take hours, longer than any pod's termination grace period, so waiting for all of
//! them is not an option; leaving them costs nothing but a re-claim, because every step before
//! the report is idempotent.

pub mod decide;
pub mod job;
pub mod liveness;
pub mod metrics;
pub mod pods;

use std::collections::{HashMap, HashSet};
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::Api;
use kube::core::DeserializeGuard;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use plumbing::admin::{self, Readiness};
use plumbing::kit::{self, MetricLabel};
use plumbing::{CommonArgs, Shutdown, leader};
use shared_types::RequestState;
use shared_types::protocol::Job;
use shared_types::render::{
    DEFAULT_CLEANUP_CPU_LIMIT, DEFAULT_CLEANUP_CPU_REQUEST, DEFAULT_CLEANUP_IMAGE,
    DEFAULT_CLEANUP_MEMORY_LIMIT, DEFAULT_CLEANUP_MEMORY_REQUEST, DEFAULT_WORKSPACE_ROOT, RenderConfig,
    cleanup_resources,
};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::decide::{Candidate, Key};
use crate::job::Context;
use crate::liveness::Liveness;
use crate::metrics::Metrics;
use crate::pods::PodWatch;

/// The field manager of every write of the worker: RequestState claims and reports, pods, and
/// its liveness Lease.
pub const FIELD_MANAGER: &str = "kubeci-worker";

/// `worker` flags.
#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "worker",
    version,
    about = "kubeci's worker: claims jobs of RequestStates and runs them as pods"
)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    /// This worker's identity: the name of its liveness Lease and the `worker` of the jobs it
    /// claims. Default: the host name with a random suffix. A fixed identity lets a restarted
    /// worker resume the jobs it had started.
    #[arg(long, env = "KUBECI_IDENTITY")]
    pub identity: Option<String>,

    /// Namespace of the worker's liveness Lease.
    #[arg(long, env = "KUBECI_LEASE_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,

    /// Most jobs this worker runs at once.
    #[arg(long, env = "KUBECI_MAX_IN_FLIGHT", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight: u32,

    /// Directory on the nodes under which workspaces are created.
    #[arg(long, env = "KUBECI_WORKSPACE_ROOT", default_value = DEFAULT_WORKSPACE_ROOT)]
    pub workspace_root: String,

    /// Image of the workspace cleanup pod.
    #[arg(long, env = "KUBECI_CLEANUP_IMAGE", default_value = DEFAULT_CLEANUP_IMAGE)]
    pub cleanup_image: String,

    /// CPU request of the workspace cleanup pod. Requests and limits are always set, so that a
    /// namespace with a compute ResourceQuota and no LimitRange admits the pod.
    #[arg(long, env = "KUBECI_CLEANUP_CPU_REQUEST", default_value = DEFAULT_CLEANUP_CPU_REQUEST, value_parser = quantity)]
    pub cleanup_cpu_request: String,

    /// CPU limit of the workspace cleanup pod.
    #[arg(long, env = "KUBECI_CLEANUP_CPU_LIMIT", default_value = DEFAULT_CLEANUP_CPU_LIMIT, value_parser = quantity)]
    pub cleanup_cpu_limit: String,

    /// Memory request of the workspace cleanup pod.
    #[arg(long, env = "KUBECI_CLEANUP_MEMORY_REQUEST", default_value = DEFAULT_CLEANUP_MEMORY_REQUEST, value_parser = quantity)]
    pub cleanup_memory_request: String,

    /// Memory limit of the workspace cleanup pod.
    #[arg(long, env = "KUBECI_CLEANUP_MEMORY_LIMIT", default_value = DEFAULT_CLEANUP_MEMORY_LIMIT, value_parser = quantity)]
    pub cleanup_memory_limit: String,

    /// How long a pod may stay Pending with a problem (unschedulable, image cannot be pulled), or
    /// fail to be created, before its job is reported FAILED with the problem.
    #[arg(long, env = "KUBECI_PENDING_TIMEOUT_SECONDS", default_value_t = 300)]
    pub pending_timeout_seconds: u64,

    /// On shutdown, how long running jobs may take to finish and report before they are left to
    /// the next worker. Keep it below the pod's termination grace period.
    #[arg(long, env = "KUBECI_DRAIN_SECONDS", default_value_t = 20)]
    pub drain_seconds: u64,
}

/// Errors of the worker, each with the object it concerns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("claiming RequestState {key}: {source}")]
    Claim { key: String, source: kube::Error },
    #[error("reading RequestState {key}: {source}")]
    GetRequestState { key: String, source: kube::Error },
    #[error("reporting on RequestState {key}: {source}")]
    Report { key: String, source: kube::Error },
    #[error("reading Workplan {key}: {source}")]
    GetWorkplan { key: String, source: kube::Error },
    #[error("creating pod {name}: {source}")]
    CreatePod { name: String, source: kube::Error },
    #[error("reading pod {name}: {source}")]
    GetPod { name: String, source: kube::Error },
    #[error("stopping the task pods of {name} before its cleanup: {source}")]
    StopPod { name: String, source: kube::Error },
    #[error("watching kubeci's pods: {0}")]
    WatchPods(#[source] watcher::Error),
    #[error("watching RequestStates: {0}")]
    WatchRequestStates(#[source] watcher::Error),
    #[error("RequestState {key} cannot be read, skipping it: {message}")]
    InvalidRequestState { key: String, message: String },
    #[error("worker lease {name}: {source}")]
    Lease { name: String, source: kube_lease_manager::LeaseManagerError },
    #[error("deleting worker lease {name}: {source}")]
    DeleteLease { name: String, source: kube::Error },
}

impl MetricLabel for Error {
    /// The `error` label of `errors_total`: one fixed string per kind.
    fn metric_label(&self) -> &'static str {
        match self {
            Error::Claim { .. } => "claim",
            Error::GetRequestState { .. } => "get_request_state",
            Error::Report { .. } => "report",
            Error::GetWorkplan { .. } => "get_workplan",
            Error::CreatePod { .. } => "create_pod",
            Error::GetPod { .. } => "get_pod",
            Error::StopPod { .. } => "stop_pod",
            Error::WatchPods(_) => "watch_pod",
            Error::WatchRequestStates(_) => "watch_request_states",
            Error::InvalidRequestState { .. } => "invalid_request_state",
            Error::Lease { .. } => "lease",
            Error::DeleteLease { .. } => "delete_lease",
        }
    }
}

/// Runs the worker until SIGTERM/SIGINT.
pub async fn run(args: Args) -> anyhow::Result<()> {
    plumbing::init_logging(args.common.log_format);
    run_until(args, Shutdown::on_signals()).await
}

/// [`run`] with the shutdown signal given (tests stop a worker without signals).
pub async fn run_until(args: Args, shutdown: Shutdown) -> anyhow::Result<()> {
    let identity = match &args.identity {
        Some(identity) => identity.clone(),
        None => decide::lease_safe(&leader::default_identity()),
    };
    if let Some(problem) = decide::identity_problem(&identity) {
        anyhow::bail!(problem);
    }
    let client = args.common.client().await?;
    let metrics = Arc::new(Metrics::new());
    let readiness = Readiness::default();
    let (admin_addr, admin) =
        admin::serve(args.common.metrics_addr, metrics.registry.clone(), readiness.clone(), shutdown.clone())
            .await?;
    tracing::info!(%admin_addr, "admin server listening");

    tracing::info!(%identity, lease_namespace = %args.lease_namespace, "starting");
    // Claim nothing before the Lease is held: the workplan-operator would take a job STARTED by
    // a worker without a Lease for lost and request it again.
    let mut liveness = Liveness::start(client.clone(), &args.lease_namespace, &identity, metrics.clone());
    if !liveness.wait_held(&shutdown).await {
        liveness.release().await?;
        return Ok(admin.await??);
    }

    let namespace = args.common.namespace.as_deref();
    let pods = PodWatch::start(kit::api(&client, namespace), metrics.clone());
    let ctx = Arc::new(Context {
        client: client.clone(),
        identity,
        render: RenderConfig {
            workspace_root: args.workspace_root.clone(),
            cleanup_image: args.cleanup_image.clone(),
            cleanup_resources: cleanup_resources(
                [&args.cleanup_cpu_request, &args.cleanup_memory_request],
                [&args.cleanup_cpu_limit, &args.cleanup_memory_limit],
            ),
        },
        pending_timeout: Duration::from_secs(args.pending_timeout_seconds),
        metrics: metrics.clone(),
        pods,
        abandon: CancellationToken::new(),
    });
    let api: Api<DeserializeGuard<RequestState>> = kit::api(&client, namespace);
    let (listed, mut listed_rx) = watch::channel(false);
    let ready = {
        let ctx = ctx.clone();
        async move {
            ctx.pods.synced().await;
            if listed_rx.wait_for(|listed| *listed).await.is_ok() {
                tracing::info!("RequestStates listed and pods cached; ready");
                readiness.set_ready(true);
            }
        }
    };
    let ready = tokio::spawn(ready);
    let jobs = TaskTracker::new();
    let claims = ClaimLoop {
        ctx: ctx.clone(),
        slots: Arc::new(Semaphore::new(args.max_in_flight as usize)),
        jobs: jobs.clone(),
        listed,
    };
    claims.run(api, liveness.held(), &shutdown).await;
    shutdown.trigger();
    ready.abort();

    drain(&jobs, &ctx, Duration::from_secs(args.drain_seconds)).await;
    if let Err(e) = liveness.release().await {
        metrics.error(&e);
        tracing::warn!(error = %e, "could not delete the worker lease; it expires on its own");
    }
    Ok(admin.await??)
}

/// Gives the running jobs `timeout` to finish, then abandons the rest.
async fn drain(jobs: &TaskTracker, ctx: &Context, timeout: Duration) {
    jobs.close();
    if jobs.is_empty() {
        return;
    }
    tracing::info!(jobs = jobs.len(), ?timeout, "waiting for running jobs to finish");
    if tokio::time::timeout(timeout, jobs.wait()).await.is_err() {
        tracing::warn!(
            jobs = jobs.len(),
            "jobs still running after the drain timeout; leaving them to the next worker"
        );
        ctx.abandon.cancel();
        jobs.wait().await;
    }
}

/// A job task's end, for the claim loop's bookkeeping.
struct Finished {
    key: Key,
    /// Versions of the RequestState the job has moved past (see [`job::take_up`]).
    superseded: Vec<String>,
}

struct ClaimLoop {
    ctx: Arc<Context>,
    slots: Arc<Semaphore>,
    jobs: TaskTracker,
    /// Set once the RequestStates are listed (readiness waits for it and for the pod cache).
    listed: watch::Sender<bool>,
}

impl ClaimLoop {
    /// Watches RequestStates and takes up work until shutdown.
    async fn run(
        self,
        api: Api<DeserializeGuard<RequestState>>,
        mut held: watch::Receiver<bool>,
        shutdown: &Shutdown,
    ) {
        let identity = self.ctx.identity.clone();
        // Every job in flight stays a candidate (STARTED by this worker) until it is reported:
        // hold no managedFields for them. A claim's PUT without managedFields keeps them as they
        // are on the server.
        let events = watcher::watcher(api, watcher::Config::default()).default_backoff().modify(
            |object: &mut DeserializeGuard<RequestState>| {
                if let Ok(rqs) = &mut object.0 {
                    rqs.metadata.managed_fields = None;
                }
            },
        );
        let mut events = pin!(events);
        // What is work for this worker, by object, as of the latest event.
        let mut candidates: HashMap<Key, Candidate> = HashMap::new();
        // The listing in progress after a (re)start of the watch.
        let mut listing: Option<HashMap<Key, Candidate>> = None;
        // Objects a job task of this process is working on.
        let mut running: HashSet<Key> = HashSet::new();
        // The job each of them runs, and how to stop it when another job is requested.
        let mut moved_on: HashMap<Key, (Job, CancellationToken)> = HashMap::new();
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Finished>();
        let mut lease_open = true;
        loop {
            let can_take = *held.borrow() && decide::pick(&candidates, &running, &identity).is_some();
            tokio::select! {
                biased;
                _ = shutdown.requested() => break,
                Some(finished) = done_rx.recv() => {
                    running.remove(&finished.key);
                    moved_on.remove(&finished.key);
                    let stale = candidates.get(&finished.key).and_then(|c| c.rqs.metadata.resource_version.as_ref())
                        .is_some_and(|rv| finished.superseded.contains(rv));
                    if stale {
                        candidates.remove(&finished.key);
                    }
                }
                event = events.next() => match event {
                    Some(Ok(Event::Init)) => listing = Some(HashMap::new()),
                    Some(Ok(Event::InitApply(object))) => {
                        let target = listing.get_or_insert_with(HashMap::new);
                        self.observe(target, object, &identity);
                    }
                    Some(Ok(Event::InitDone)) => {
                        candidates = listing.take().unwrap_or_default();
                        if !self.listed.send_replace(true) {
                            tracing::info!(candidates = candidates.len(), "RequestStates listed");
                        }
                    }
                    Some(Ok(Event::Apply(object))) => {
                        if let (Ok(rqs), Some(key)) = (&object.0, guard_key(&object))
                            && let Some((job, stop)) = moved_on.get(&key)
                            && decide::moved_on(rqs, *job)
                        {
                            stop.cancel();
                        }
                        self.observe(&mut candidates, object, &identity)
                    }
                    Some(Ok(Event::Delete(object))) => {
                        if let Some(key) = guard_key(&object) {
                            candidates.remove(&key);
                        }
                    }
                    Some(Err(source)) => {
                        let error = Error::WatchRequestStates(source);
                        self.ctx.metrics.error(&error);
                        tracing::warn!(%error, "the RequestState watch restarts");
                    }
                    None => break,
                },
                changed = held.changed(), if lease_open => {
                    if changed.is_err() {
                        lease_open = false;
                    }
                }
                permit = self.slots.clone().acquire_owned(), if can_take => {
                    let permit = permit.expect("the semaphore is never closed");
                    let Some(key) = decide::pick(&candidates, &running, &identity) else { continue };
                    let Some(candidate) = candidates.get(&key).cloned() else { continue };
                    running.insert(key.clone());
                    let stop = CancellationToken::new();
                    moved_on.insert(key.clone(), (candidate.rqs.spec.job, stop.clone()));
                    let (ctx, done) = (self.ctx.clone(), done_tx.clone());
                    self.jobs.spawn(async move {
                        let superseded = job::take_up(ctx, candidate.work, candidate.rqs, stop).await;
                        let _ = done.send(Finished { key, superseded });
                        drop(permit);
                    });
                }
            }
        }
        tracing::info!("stopped claiming");
    }

    /// Records what an object is for this worker; a malformed object is reported and skipped.
    fn observe(
        &self,
        candidates: &mut HashMap<Key, Candidate>,
        object: DeserializeGuard<RequestState>,
        identity: &str,
    ) {
        let Some(key) = guard_key(&object) else { return };
        match object.0 {
            Ok(rqs) => match decide::work_for(&rqs, identity) {
                Some(work) => {
                    candidates.insert(key, Candidate { work, rqs });
                }
                None => {
                    candidates.remove(&key);
                }
            },
            Err(invalid) => {
                candidates.remove(&key);
                let error = Error::InvalidRequestState { key: key.to_string(), message: invalid.error };
                self.ctx.metrics.error(&error);
                tracing::warn!(%error);
            }
        }
    }
}

/// The value parser of the cleanup pod's requests and limits.
fn quantity(value: &str) -> Result<String, String> {
    decide::quantity_problem(value).map_or_else(|| Ok(value.to_string()), Err)
}

fn guard_key(object: &DeserializeGuard<RequestState>) -> Option<Key> {
    let meta = match &object.0 {
        Ok(rqs) => &rqs.metadata,
        Err(invalid) => &invalid.metadata,
    };
    Some(Key { namespace: meta.namespace.clone()?, name: meta.name.clone()? })
}
