//! The director: kubeci's workflow operator (DESIGN.md §1, §6). It validates every Workflow,
//! keeps `Workflow.status`, and creates one Workplan per distinct trigger event, replay-safe
//! across restarts, re-lists and duplicate deliveries. One replica acts at a time (leader
//! election); the others wait.

pub mod metrics;
pub mod triggers;
pub mod workflow;

use std::sync::Arc;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{Controller, watcher};
use plumbing::admin::{self, Readiness};
use plumbing::{CommonArgs, Shutdown, leader};
use shared_types::{Workflow, Workplan};

use crate::metrics::Metrics;
use crate::triggers::Engine;
use crate::workflow::{Context, error_policy, reconcile};

/// `director` flags.
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "director", version, about = "kubeci's workflow operator: trigger events into Workplans")]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Run without leader election (only for a single replica).
    #[arg(long, env = "KUBECI_NO_LEADER_ELECTION")]
    pub no_leader_election: bool,

    /// Namespace of the leader election Lease.
    #[arg(long, env = "KUBECI_LEASE_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,

    /// Name of the leader election Lease.
    #[arg(long, env = "KUBECI_LEASE_NAME", default_value = "kubeci-director")]
    pub lease_name: String,

    /// This replica's identity in the Lease. Default: the host name with a random suffix.
    #[arg(long, env = "KUBECI_IDENTITY")]
    pub identity: Option<String>,
}

/// Runs the director until SIGTERM/SIGINT, or until it loses the lease (an error: the process
/// exits and is restarted as a candidate).
pub async fn run(args: Args) -> anyhow::Result<()> {
    plumbing::init_logging(args.common.log_format);
    run_until(args, Shutdown::on_signals()).await
}

/// [`run`] with the shutdown signal given (tests stop a director without signals).
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
            None => return Ok(admin.await??), // shut down while waiting
        }
        readiness.set_ready(false);
    }

    let reporter = Reporter { controller: "kubeci-director".into(), instance: Some(identity.clone()) };
    let recorder = Recorder::new(client.clone(), reporter);
    let (workflows, workplans): (Api<Workflow>, Api<Workplan>) = match &args.common.namespace {
        Some(ns) => (Api::namespaced(client.clone(), ns), Api::namespaced(client.clone(), ns)),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let controller = Controller::new(workflows, watcher::Config::default().any_semantic())
        .owns(workplans, watcher::Config::default().any_semantic());
    let store = controller.store();
    let (engine, engine_task) =
        Engine::start(client.clone(), recorder.clone(), metrics.clone(), store.clone(), shutdown.clone());
    let context = Arc::new(Context {
        client: client.clone(),
        served_kinds: Default::default(),
        recorder,
        metrics: metrics.clone(),
        engine,
    });
    let ready = readiness.clone();
    tokio::spawn(async move {
        if store.wait_until_ready().await.is_ok() {
            ready.set_ready(true);
            tracing::info!("Workflow cache synced; ready");
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
    let _ = engine_task.await;
    if let Some(held) = leadership
        && outcome.is_ok()
        && let Err(e) = held.release().await
    {
        tracing::warn!(error = %e, "could not release the leader lease; it expires on its own");
    }
    outcome?;
    Ok(admin.await??)
}
