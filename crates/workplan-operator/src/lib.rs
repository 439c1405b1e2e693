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
use plumbing::admin::{self, Readiness};
use plumbing::{CommonArgs, Shutdown, leader};
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

    /// Namespace where workers keep their Leases (a worker is lost when its Lease expires).
    #[arg(long, env = "KUBECI_WORKER_LEASE_NAMESPACE", default_value = "default")]
    pub worker_lease_namespace: String,

    /// Run without leader election (only for a single replica).
    #[arg(long, env = "KUBECI_NO_LEADER_ELECTION")]
    pub no_leader_election: bool,

    /// Namespace of the leader election Lease.
    #[arg(long, env = "KUBECI_LEASE_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,

    /// Name of the leader election Lease.
    #[arg(long, env = "KUBECI_LEASE_NAME", default_value = "kubeci-workplan-operator")]
    pub lease_name: String,

    /// This replica's identity in the Lease. Default: the host name with a random suffix.
    #[arg(long, env = "KUBECI_IDENTITY")]
    pub identity: Option<String>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    plumbing::init_logging(args.common.log_format);
    run_until(args, Shutdown::on_signals()).await
}

/// [`run`] with the shutdown signal given.
pub async fn run_until(args: Args, shutdown: Shutdown) -> anyhow::Result<()> {
    let client = args.common.client().await?;
    let metrics = Arc::new(Metrics::new());
    let readiness = Readiness::default();
    let (admin_addr, admin) =
        admin::serve(args.common.metrics_addr, metrics.registry.clone(), readiness.clone(), shutdown.clone())
            .await?;
    tracing::info!(%admin_addr, "admin server listening");

    let identity = args.identity.clone().unwrap_or_else(leader::default_identity);
    let mut leadership = None;
    if !args.no_leader_election {
        readiness.set_ready(true); // a healthy standby is ready
        match leader::acquire(client.clone(), &args.lease_namespace, &args.lease_name, &identity, &shutdown)
            .await?
        {
            Some(held) => leadership = Some(held),
            None => return Ok(admin.await??),
        }
        readiness.set_ready(false);
    }

    let reporter =
        Reporter { controller: "kubeci-workplan-operator".into(), instance: Some(identity.clone()) };
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
    let ready = readiness.clone();
    tokio::spawn(async move {
        if store.wait_until_ready().await.is_ok() {
            ready.set_ready(true);
        }
    });
    let stop = shutdown.clone();
    let controller = controller
        .graceful_shutdown_on(async move { stop.requested().await })
        .run(reconcile, error_policy, context)
        .for_each(|_| async {});

    let outcome = match leadership.as_mut() {
        Some(held) => tokio::select! {
            _ = controller => Ok(()),
            _ = held.lost() => Err(anyhow::anyhow!("lost the leader lease {}; exiting so that a new leader takes over", args.lease_name)),
        },
        None => {
            controller.await;
            Ok(())
        }
    };
    shutdown.trigger();
    if let Some(held) = leadership
        && outcome.is_ok()
        && let Err(e) = held.release().await
    {
        tracing::warn!(error = %e, "could not release the leader lease; it expires on its own");
    }
    outcome?;
    Ok(admin.await??)
}
