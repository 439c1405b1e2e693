//! The workplan-operator (DESIGN.md §1, §5): walks each Workplan task by task through its
//! RequestState (task-0 … task-<n-1>, then cleanup), re-requests the job of a worker whose Lease
//! expired, and owns `Workplan.status`. One replica acts at a time (leader election).

pub mod malformed;
pub mod metrics;
pub mod plan;
pub mod reconcile;
pub mod status;

use std::sync::Arc;

use futures::{StreamExt, future};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use plumbing::kit::{self, Events, Synced};
use plumbing::{CommonArgs, LeaderArgs, Process, Shutdown};
use shared_types::{JobState, RequestState, Workplan};

use crate::malformed::Tracker;
use crate::metrics::Metrics;
use crate::reconcile::{Context, MANAGER, caches_synced, error_backoff, error_policy, reconcile};

/// `workplan-operator` flags.
#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "workplan-operator",
    version,
    about = "kubeci's Workplan walker: tasks through RequestStates"
)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    #[command(flatten)]
    pub leader: LeaderArgs,

    /// Namespace where workers keep their Leases (a worker is lost when its Lease expires).
    #[arg(long, env = "KUBECI_WORKER_LEASE_NAMESPACE", default_value = "default")]
    pub worker_lease_namespace: String,
}

/// Runs the operator until SIGTERM or SIGINT.
pub async fn run(args: Args) -> anyhow::Result<()> {
    plumbing::init_logging(args.common.log_format);
    run_until(args, Shutdown::on_signals()).await
}

/// [`run`] with the shutdown signal given.
pub async fn run_until(args: Args, shutdown: Shutdown) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let Some(process) =
        Process::start("workplan-operator", &args.common, Some(&args.leader), metrics.registry(), shutdown)
            .await?
    else {
        return Ok(());
    };
    let client = process.client.clone();
    let namespace = args.common.namespace.as_deref();

    // One watch per kind, each feeding its cache and the controller's triggers from the same
    // stream. Not kube's shared streams: they drop deletions, and a deleted Lease (a worker that
    // stopped) or RequestState must trigger its Workplan at once. managedFields are dropped before
    // caching: nothing reads them, and a replace without them keeps the stored ones. Every watch
    // reads through `DeserializeGuard`: an object that does not deserialize is reported and left
    // out of the cache instead of failing the whole list (see `malformed`).
    let events = Events::new(client.clone(), MANAGER, &process.identity);
    let tracker = Tracker::start(client.clone(), events.clone(), metrics.clone());
    let (requests, requests_writer) = reflector::store::<RequestState>();
    let request_events = malformed::guarded(
        watcher(kit::api::<DeserializeGuard<RequestState>>(&client, namespace), any_semantic())
            .modify(|r| r.meta_mut().managed_fields = None)
            .default_backoff(),
        requests_writer,
        tracker.clone(),
    );
    let (leases, leases_writer) = reflector::store::<Lease>();
    let lease_events = malformed::guarded(
        watcher(
            Api::<DeserializeGuard<Lease>>::namespaced(client.clone(), &args.worker_lease_namespace),
            watcher::Config::default(),
        )
        .modify(|l| l.meta_mut().managed_fields = None)
        .default_backoff(),
        leases_writer,
        tracker.clone(),
    );
    let (workplans, workplans_writer) = reflector::store::<Workplan>();
    let workplan_events = malformed::guarded(
        watcher(kit::api::<DeserializeGuard<Workplan>>(&client, namespace), any_semantic()).default_backoff(),
        workplans_writer,
        tracker.clone(),
    )
    // A malformed Workplan is not reconciled: it is not in the cache.
    .filter_map(|touched| future::ready(touched.map(|w| w.0.ok()).transpose()));

    let started_jobs = requests.clone();
    let controller = Controller::for_stream(workplan_events, workplans.clone())
        .owns_stream(request_events)
        // A Lease that changes or disappears re-examines the jobs its worker started at once,
        // instead of when the lease would have expired.
        .watches_stream(lease_events, move |lease| jobs_of(&started_jobs, &lease.name_any()));

    let synced = [Synced::of(requests.clone()), Synced::of(leases.clone())];
    let (caches, ready) = (synced.clone(), process.readiness.clone());
    tokio::spawn(async move {
        if caches_synced(&caches).await && ready.set_ready_when_synced(&workplans).await {
            tracing::info!("Workplan, RequestState and Lease caches synced; ready");
        }
    });

    let context = Arc::new(Context {
        client: client.clone(),
        events,
        metrics,
        requests,
        leases,
        worker_lease_namespace: args.worker_lease_namespace.clone(),
        synced,
        backoff: error_backoff(),
    });
    let stop = process.shutdown.clone();
    let controller = controller
        .graceful_shutdown_on(async move { stop.requested().await })
        .run(
            move |workplan, ctx: Arc<Context>| {
                let tracker = tracker.clone();
                async move {
                    // Whether its RequestState is malformed is known once they are listed.
                    caches_synced(&ctx.synced).await;
                    if tracker.waits(&workplan) {
                        // Its RequestState cannot be read: nothing to decide on until it is
                        // repaired, which triggers this Workplan again.
                        return Ok(Action::await_change());
                    }
                    reconcile(workplan, ctx).await
                }
            },
            error_policy,
            context,
        )
        .for_each(|_| async {});
    process.run(controller).await?;
    Ok(())
}

fn any_semantic() -> watcher::Config {
    watcher::Config::default().any_semantic()
}

/// The Workplans whose current job `worker` has started.
fn jobs_of(requests: &Store<RequestState>, worker: &str) -> Vec<ObjectRef<Workplan>> {
    requests
        .state()
        .iter()
        .filter(|r| r.spec.state == JobState::Started && r.spec.worker.as_deref() == Some(worker))
        .map(|r| ObjectRef::new(&r.name_any()).within(&r.namespace().unwrap_or_default()))
        .collect()
}
