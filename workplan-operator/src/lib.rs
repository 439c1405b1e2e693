//! The workplan-operator (DESIGN.md §1, §5): walks each Workplan task by task through its
//! RequestState (task-0 … task-<n-1>, then cleanup), re-requests the job of a worker whose Lease
//! expired, and owns `Workplan.status`. One replica acts at a time (leader election).

pub mod metrics;
pub mod reconcile;
pub mod status;

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store, reflector};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use plumbing::{CommonArgs, LeaderArgs, Process, Shutdown};
use shared_types::{JobState, RequestState, Workplan};

use crate::metrics::Metrics;
use crate::reconcile::{Context, error_policy, reconcile};

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

pub async fn run(args: Args) -> anyhow::Result<()> {
    plumbing::init_logging(args.common.log_format);
    run_until(args, Shutdown::on_signals()).await
}

/// [`run`] with the shutdown signal given.
pub async fn run_until(args: Args, shutdown: Shutdown) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let Some(process) = Process::start(
        "workplan-operator",
        &args.common,
        Some(&args.leader),
        metrics.registry.clone(),
        shutdown,
    )
    .await?
    else {
        return Ok(());
    };
    let client = process.client.clone();
    let reporter =
        Reporter { controller: "kubeci-workplan-operator".into(), instance: Some(process.identity.clone()) };
    let context = Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        metrics: metrics.clone(),
        worker_lease_namespace: args.worker_lease_namespace.clone(),
    });
    let (workplans, requests): (Api<Workplan>, Api<RequestState>) = match &args.common.namespace {
        Some(ns) => (Api::namespaced(client.clone(), ns), Api::namespaced(client.clone(), ns)),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    // Worker Leases: a Lease that changes or disappears re-examines the jobs its worker started
    // at once, instead of when the lease would have expired.
    let (started_jobs, writer) = reflector::store::<RequestState>();
    let requests_cache =
        reflector(writer, watcher(requests.clone(), watcher::Config::default().any_semantic()))
            .default_backoff()
            .for_each(|_| std::future::ready(()));
    let leases: Api<Lease> = Api::namespaced(client.clone(), &args.worker_lease_namespace);
    let controller = Controller::new(workplans, watcher::Config::default().any_semantic())
        .owns(requests, watcher::Config::default().any_semantic())
        .watches(leases, watcher::Config::default(), move |lease: Lease| {
            jobs_of(&started_jobs, &lease.name_any())
        });
    let store = controller.store();
    let ready = process.readiness.clone();
    tokio::spawn(async move {
        if ready.set_ready_when_synced(&store).await {
            tracing::info!("Workplan cache synced; ready");
        }
    });
    let stop = process.shutdown.clone();
    let controller = controller
        .graceful_shutdown_on(async move { stop.requested().await })
        .run(reconcile, error_policy, context)
        .for_each(|_| async {});
    process
        .run(async move {
            tokio::select! {
                _ = controller => {}
                _ = requests_cache => {}
            }
        })
        .await?;
    Ok(())
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
