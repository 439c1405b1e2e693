//! The workplan-operator (DESIGN.md §1, §5): walks each Workplan task by task through its
//! RequestState (task-0 … task-<n-1>, then cleanup), re-requests the job of a worker whose Lease
//! expired, and owns `Workplan.status`. One replica acts at a time (leader election).

pub mod metrics;
pub mod reconcile;
pub mod status;

use std::sync::Arc;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{Controller, watcher};
use plumbing::{CommonArgs, LeaderArgs, Process, Shutdown};
use shared_types::{RequestState, Workplan};

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
    let controller = Controller::new(workplans, watcher::Config::default().any_semantic())
        .owns(requests, watcher::Config::default().any_semantic());
    let store = controller.store();
    let ready = process.readiness.clone();
    tokio::spawn(async move {
        if store.wait_until_ready().await.is_ok() {
            ready.set_ready(true);
        }
    });
    let stop = process.shutdown.clone();
    let controller = controller
        .graceful_shutdown_on(async move { stop.requested().await })
        .run(reconcile, error_policy, context)
        .for_each(|_| async {});
    process.run(controller).await?;
    Ok(())
}
