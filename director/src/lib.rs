//! The director: kubeci's workflow operator (DESIGN.md §1, §6). It validates every Workflow,
//! keeps `Workflow.status`, and creates one Workplan per distinct trigger event, replay-safe
//! across restarts, re-lists and duplicate deliveries. One replica acts at a time (leader
//! election); the others wait.
//!
//! One Workflow watch ([`stream`]) feeds the Workflow controller ([`workflow`]) and the trigger
//! engine ([`triggers`]); one Workplan watch ([`workplans`]) feeds the controller's `owns` and the
//! Workplan cache both read. Field ownership of `Workflow.status` is explicit, by server-side
//! apply: the controller's fields with the manager [`FIELD_MANAGER`]; the trigger record's
//! summary and `pendingRuns` with [`triggers::FIELD_MANAGER`], which also writes the record
//! itself, in TriggerRecord objects ([`records`]).

pub mod error;
pub mod malformed;
pub mod metrics;
pub mod records;
pub mod stream;
pub mod triggers;
pub mod webhook;
pub mod workflow;
pub mod workplans;

use std::sync::Arc;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::Controller;
use plumbing::kit::{self, Events, Kinds};
use plumbing::{CommonArgs, LeaderArgs, Process, Shutdown};
use shared_types::Workflow;

pub use crate::error::Error;
use crate::metrics::Metrics;
use crate::records::Records;
use crate::triggers::pending::Caps;
use crate::triggers::{Engine, Shared};
use crate::workflow::{Context, History, error_policy, reconcile};
use crate::workplans::Guarded;

/// The field manager of the Workflow controller: its status fields and the Workplans it and
/// the engine create.
pub const FIELD_MANAGER: &str = "kubeci-director";

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

    #[command(flatten)]
    pub runs: RunArgs,
}

/// The defaults that bound each Workflow's runs and history; a Workflow's spec overrides them.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Finished Workplans kept per Workflow that sets no `spec.workplanHistoryLimit`.
    #[arg(long, env = "KUBECI_WORKPLAN_HISTORY_LIMIT", default_value_t = 10)]
    pub workplan_history_limit: u32,

    /// Seconds a finished Workplan is kept after its completion, for Workflows that set no
    /// `spec.workplanHistoryTTLSeconds` (default 7 days).
    #[arg(long, env = "KUBECI_WORKPLAN_HISTORY_TTL_SECONDS", default_value_t = 604_800)]
    pub workplan_history_ttl_seconds: u64,

    /// Most Workplans a Workflow starts in any 60 seconds, unless it sets
    /// `spec.limits.runsPerMinute`. More wait, in order, in `status.pendingRuns`.
    #[arg(long, env = "KUBECI_RUNS_PER_MINUTE", default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs_per_minute: u32,

    /// Most unfinished (Pending or Running) Workplans of one Workflow, unless it sets
    /// `spec.limits.concurrentRuns`. More wait, in order, in `status.pendingRuns`.
    #[arg(long, env = "KUBECI_CONCURRENT_RUNS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrent_runs: u32,
}

impl RunArgs {
    fn caps(&self) -> Caps {
        Caps { runs_per_minute: self.runs_per_minute, concurrent_runs: self.concurrent_runs }
    }

    fn history(&self) -> History {
        History {
            limit: self.workplan_history_limit.min(i32::MAX as u32) as i32,
            ttl_seconds: self.workplan_history_ttl_seconds.min(i64::MAX as u64) as i64,
        }
    }
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
        Process::start("director", &args.common, Some(&args.leader), metrics.registry(), shutdown).await?
    else {
        drain(webhook).await; // shut down while waiting to lead
        return Ok(());
    };
    let client = process.client.clone();
    let namespace = args.common.namespace.as_deref();
    let events = Events::new(client.clone(), FIELD_MANAGER, &process.identity);
    let shared = Shared {
        client: client.clone(),
        events: events.clone(),
        metrics: metrics.clone(),
        kinds: Arc::new(Kinds::default()),
        caps: args.runs.caps(),
        records: Records::new(client.clone()),
    };
    let workflows: Api<Workflow> = kit::api(&client, namespace);
    let workplans: Api<Guarded> = kit::api(&client, namespace);

    let (store, applied, watch) = stream::workflows(workflows);
    let (workplan_cache, synced, workplan_changes) = workplans::watch(workplans, events);
    let (engine, engine_task) = Engine::start(
        shared.clone(),
        store.clone(),
        workplan_cache.clone(),
        synced.clone(),
        process.shutdown.clone(),
    );
    let watch = tokio::spawn(watch.run(engine.clone(), metrics.clone()));
    let controller = Controller::for_shared_stream(applied, store.clone()).owns_stream(workplan_changes);
    let context = Arc::new(Context::new(shared, engine, (workplan_cache, synced), args.runs.history()));
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
            watch.abort();
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
