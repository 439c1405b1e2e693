//! The director: kubeci's workflow operator (DESIGN.md §1, §6). It validates every Workflow,
//! keeps `Workflow.status`, and creates one Workplan per distinct trigger event, replay-safe
//! across restarts, re-lists and duplicate deliveries. One replica acts at a time (leader
//! election); the others wait.

pub mod metrics;
pub mod triggers;
pub mod webhook;
pub mod workflow;

use std::sync::Arc;

use futures::StreamExt;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, reflector};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::{Controller, WatchStreamExt};
use plumbing::{CommonArgs, LeaderArgs, Process, Shutdown};
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

    #[command(flatten)]
    pub leader: LeaderArgs,

    #[command(flatten)]
    pub webhook: webhook::WebhookArgs,
}

/// Runs the director until SIGTERM/SIGINT, or until it loses the lease (an error: the process
/// exits and is restarted as a candidate).
pub async fn run(args: Args) -> anyhow::Result<()> {
    plumbing::init_logging(args.common.log_format);
    run_until(args, Shutdown::on_signals()).await
}

/// [`run`] with the shutdown signal given (tests stop a director without signals).
pub async fn run_until(args: Args, shutdown: Shutdown) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    // Every replica serves admission, the standbys too: it needs no cache and no lease.
    let webhook = match &args.webhook.webhook_cert_dir {
        Some(dir) => Some(webhook::serve(&args.webhook, dir, metrics.clone(), shutdown.clone()).await?.1),
        None => None,
    };
    let Some(process) =
        Process::start("director", &args.common, Some(&args.leader), metrics.registry.clone(), shutdown)
            .await?
    else {
        drain(webhook).await; // shut down while waiting to lead
        return Ok(());
    };
    let client = process.client.clone();
    let reporter =
        Reporter { controller: "kubeci-director".into(), instance: Some(process.identity.clone()) };
    let recorder = Recorder::new(client.clone(), reporter);
    let (workflows, workplans): (Api<Workflow>, Api<Workplan>) = match &args.common.namespace {
        Some(ns) => (Api::namespaced(client.clone(), ns), Api::namespaced(client.clone(), ns)),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    // Every Workflow is cached; their managedFields (one entry per writer, naming each recorded
    // trigger object) are never read, so they are dropped before they are stored
    // (kubeci-bench, phase 6).
    let (store, writer) = reflector::store();
    let cached = watcher(workflows, watcher::Config::default().any_semantic()).modify(|workflow| {
        workflow.managed_fields_mut().clear();
    });
    let controller = Controller::for_stream(reflector(writer, cached).applied_objects(), store)
        .owns(workplans, watcher::Config::default().any_semantic());
    let store = controller.store();
    let (engine, engine_task) = Engine::start(
        client.clone(),
        recorder.clone(),
        metrics.clone(),
        store.clone(),
        process.shutdown.clone(),
    );
    let deletions = engine.watch_deletions(match &args.common.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    });
    let context = Arc::new(Context {
        client: client.clone(),
        served_kinds: Default::default(),
        allowed_watches: Default::default(),
        recorder,
        metrics: metrics.clone(),
        engine,
    });
    let ready = process.readiness.clone();
    tokio::spawn(async move {
        if ready.set_ready_when_synced(&store).await {
            tracing::info!("Workflow cache synced; ready");
        }
    });

    let stop = process.shutdown.clone();
    let controller = controller
        .graceful_shutdown_on(async move { stop.requested().await })
        .run(reconcile, error_policy, context)
        .for_each(|_| async {});
    let shutdown = process.shutdown.clone();
    process
        .run(async move {
            controller.await;
            shutdown.trigger();
            deletions.abort();
            let _ = engine_task.await;
        })
        .await?;
    drain(webhook).await;
    Ok(())
}

/// Waits for the webhook server to finish its in-flight reviews after shutdown.
async fn drain(webhook: Option<tokio::task::JoinHandle<()>>) {
    if let Some(task) = webhook {
        let _ = task.await;
    }
}
