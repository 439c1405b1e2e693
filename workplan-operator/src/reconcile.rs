//! The Workplan reconciler, as a pipeline: fetch the RequestState and the claimant's Lease from
//! the caches → [`plan`](crate::plan::plan) (pure: decide, build the write, the Event and the
//! status) → apply the RequestState write → apply the Workplan status, only when it changed →
//! remove the cleanup finalizer once the final status is stored (or nothing ever ran).
//!
//! A Workplan being deleted reads its RequestState from the API server instead: whether any
//! task ever started decides whether it may go at once, and a cache behind a worker's claim
//! would say no.
//!
//! Reading from caches instead of the API server is safe because every write is guarded:
//! a RequestState replaced from a cached copy older than the stored one (someone wrote since,
//! or the operator's own last write has not come back through the watch yet) fails on its
//! resourceVersion precondition (409) and nothing is written; a create that finds the object
//! (409 AlreadyExists) means the cache is behind, and the watch brings the RequestState and with
//! it the next reconciliation. A Lease renewal the cache has not seen yet can only make a live
//! worker look lost if the watch lags by more than the time between a renewal and the expiry
//! (workers renew a third of the lease duration before it ends), and its Event triggers a look
//! of its own.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use plumbing::kit::{ErrorBackoff, Events, MetricLabel, Synced};
use shared_types::{JobState, Phase, RequestState, Workplan, labels};

use crate::metrics::Metrics;
use crate::plan::{self, Notice, Plan, Write};

/// The field manager of every write the operator makes: RequestState creates and requests, and
/// `Workplan.status`.
pub const MANAGER: &str = "kubeci-workplan-operator";

/// How soon to decide again after a RequestState write lost to another writer (or to the
/// cache being behind). The watch normally brings the newer RequestState sooner.
const CONFLICT_RETRY: Duration = Duration::from_secs(1);

/// The errors of the workplan-operator, each with its fixed `errors_total{error}` label.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing RequestState {name}: {source}")]
    Write { name: String, source: kube::Error },
    #[error("applying the status of Workplan {name}: {source}")]
    Status { name: String, source: kube::Error },
    #[error("reading RequestState {name}: {source}")]
    Read { name: String, source: kube::Error },
    #[error("removing the cleanup finalizer of Workplan {name}: {source}")]
    Finalizer { name: String, source: kube::Error },
    #[error("the RequestState and Lease caches stopped before they synced")]
    NotSynced,
}

impl MetricLabel for Error {
    fn metric_label(&self) -> &'static str {
        match self {
            Error::Write { .. } => "write_request_state",
            Error::Status { .. } => "status",
            Error::Read { .. } => "read_request_state",
            Error::Finalizer { .. } => "finalizer",
            Error::NotSynced => "not_synced",
        }
    }
}

/// Shared by every reconciliation.
pub struct Context {
    pub client: Client,
    pub events: Events,
    pub metrics: Arc<Metrics>,
    /// Every RequestState in the operator's namespace(s), from the one RequestState watch.
    pub requests: Store<RequestState>,
    /// Every Lease in the workers' namespace, from the one Lease watch.
    pub leases: Store<Lease>,
    /// Where workers keep their Leases.
    pub worker_lease_namespace: String,
    /// True once `requests` and `leases` have their first complete listing: before that a
    /// missing RequestState would be created again and a missing Lease would make its worker
    /// look lost.
    pub synced: [Synced; 2],
    /// Per-Workplan back-off of failed reconciliations.
    pub backoff: ErrorBackoff<ObjectRef<Workplan>>,
}

/// Whether every cache in `caches` has its first listing (false: one stopped before).
pub async fn caches_synced(caches: &[Synced]) -> bool {
    for cache in caches {
        if !cache.wait().await {
            return false;
        }
    }
    true
}

impl Context {
    async fn caches_synced(&self) -> Result<(), Error> {
        if caches_synced(&self.synced).await { Ok(()) } else { Err(Error::NotSynced) }
    }
}

/// One reconciliation of `workplan`, counted and timed; a success resets its error back-off.
pub async fn reconcile(workplan: Arc<Workplan>, ctx: Arc<Context>) -> Result<Action, Error> {
    let result = ctx.metrics.reconcile.measure(reconcile_inner(&workplan, &ctx)).await;
    if result.is_ok() {
        ctx.backoff.reset(&ObjectRef::from_obj(&*workplan));
    }
    result
}

async fn reconcile_inner(workplan: &Workplan, ctx: &Context) -> Result<Action, Error> {
    let (request, lease_expiry) = fetch(workplan, ctx).await?;
    if let Some(request) = &request
        && !plan::belongs_to(request, workplan)
    {
        tracing::info!(workplan = %workplan.name_any(), "waiting for the previous Workplan's RequestState to be collected");
    }
    let plan = plan::plan(workplan, request.as_deref(), lease_expiry, Timestamp::now());
    apply(workplan, plan, ctx).await
}

/// This Workplan's RequestState and, for a started job, when its worker's Lease expires.
async fn fetch(
    workplan: &Workplan,
    ctx: &Context,
) -> Result<(Option<Arc<RequestState>>, Option<Timestamp>), Error> {
    ctx.caches_synced().await?;
    let (name, namespace) = (workplan.name_any(), workplan.namespace().unwrap_or_default());
    // "Nothing ran" lets a deleted or cancelled Workplan go at once: only the API server can say.
    let stopping = plan::deleting(workplan) || plan::cancellation(workplan).is_some();
    let request = if stopping && plan::holds_finalizer(workplan) {
        let requests: Api<RequestState> = Api::namespaced(ctx.client.clone(), &namespace);
        let fresh =
            requests.get_opt(&name).await.map_err(|source| Error::Read { name: name.clone(), source })?;
        fresh.map(Arc::new)
    } else {
        ctx.requests.get(&ObjectRef::new(&name).within(&namespace))
    };
    let lease_expiry = request
        .as_ref()
        .filter(|r| r.spec.state == JobState::Started)
        .and_then(|r| r.spec.worker.as_deref())
        .and_then(|worker| {
            let lease = ctx.leases.get(&ObjectRef::new(worker).within(&ctx.worker_lease_namespace))?;
            plan::lease_expiry(&lease, worker)
        });
    Ok((request, lease_expiry))
}

/// Makes the plan's writes in order (RequestState, then status), telling each notice once the
/// write it reports is stored.
async fn apply(workplan: &Workplan, plan: Plan, ctx: &Context) -> Result<Action, Error> {
    let name = workplan.name_any();
    let namespace = workplan.namespace().unwrap_or_default();
    let (write_notice, status_notice) = match plan.notice {
        Some(notice) if notice.reports_write() => (Some(notice), None),
        notice => (None, notice),
    };

    if let Some(write) = &plan.write {
        let requests: Api<RequestState> = Api::namespaced(ctx.client.clone(), &namespace);
        let params = PostParams { field_manager: Some(MANAGER.into()), ..PostParams::default() };
        let stored = match write {
            Write::Create(fresh) => requests.create(&params, fresh).await,
            Write::Replace(next) => requests.replace(&name, &params, next).await,
        };
        match stored {
            Ok(_) => {
                ctx.metrics.requests.inc();
                if let Some(notice) = &write_notice {
                    tell(ctx, workplan, notice).await;
                }
            }
            // Created before; the watch brings it.
            Err(kube::Error::Api(e)) if e.code == 409 && matches!(write, Write::Create(_)) => {
                return Ok(Action::await_change());
            }
            // The cleanup of a deleted Workplan cannot be requested (its namespace is being
            // deleted, which refuses every create): holding the Workplan would hold the namespace
            // forever, and the cleanup pod could not be created there either.
            Err(kube::Error::Api(e)) if e.code == 403 && plan::deleting(workplan) => {
                tracing::warn!(workplan = %name, reason = %e.message, "the cleanup cannot be requested; letting the Workplan go, its workspace may remain on the node");
                return Ok(if release(workplan, &workplan.metadata, ctx).await? {
                    Action::await_change()
                } else {
                    Action::requeue(CONFLICT_RETRY)
                });
            }
            // Someone wrote in between (a worker's report), or the cache is behind: decide again
            // on the newer RequestState.
            Err(kube::Error::Api(e)) if e.code == 409 => return Ok(Action::requeue(CONFLICT_RETRY)),
            Err(source) => return Err(Error::Write { name, source }),
        }
    }

    let mut stored = None;
    if let Some(status) = &plan.status {
        let patch = serde_json::json!({
            "apiVersion": Workplan::api_version(&()),
            "kind": Workplan::kind(&()),
            "status": status,
        });
        let patched = Api::<Workplan>::namespaced(ctx.client.clone(), &namespace)
            .patch_status(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch))
            .await
            .map_err(|source| Error::Status { name: name.clone(), source })?;
        stored = Some(patched.metadata);
    }
    if let Some(notice) = &status_notice {
        tell(ctx, workplan, notice).await;
    }
    if plan.finalize && !release(workplan, stored.as_ref().unwrap_or(&workplan.metadata), ctx).await? {
        return Ok(Action::requeue(CONFLICT_RETRY));
    }

    Ok(plan.requeue.map_or_else(Action::await_change, Action::requeue))
}

/// Removes the cleanup finalizer from the Workplan as `current` describes it, guarded by its
/// resourceVersion: a merge patch replaces the whole list, so it must be the list as stored.
/// `false` when the Workplan changed in between (try again on the newer one).
async fn release(workplan: &Workplan, current: &ObjectMeta, ctx: &Context) -> Result<bool, Error> {
    let name = workplan.name_any();
    let finalizers = current.finalizers.clone().unwrap_or_default();
    if !finalizers.iter().any(|f| f == labels::CLEANUP_FINALIZER) {
        return Ok(true);
    }
    let rest: Vec<String> = finalizers.into_iter().filter(|f| f != labels::CLEANUP_FINALIZER).collect();
    let patch = serde_json::json!({
        "metadata": { "finalizers": rest, "resourceVersion": current.resource_version },
    });
    let params = PatchParams { field_manager: Some(MANAGER.into()), ..PatchParams::default() };
    match Api::<Workplan>::namespaced(ctx.client.clone(), &workplan.namespace().unwrap_or_default())
        .patch(&name, &params, &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        // Gone already: nothing left to hold.
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(true),
        Err(source) => Err(Error::Finalizer { name, source }),
    }
}

/// Publishes the notice's Event and counts it.
async fn tell(ctx: &Context, workplan: &Workplan, notice: &Notice) {
    match notice {
        Notice::WorkerLost { .. } => ctx.metrics.workers_lost.inc(),
        Notice::Retrying { .. } => ctx.metrics.retries.inc(),
        Notice::Stopped { message, .. } if message.starts_with(plan::CANCELLED) => {
            ctx.metrics.cancelled.inc()
        }
        Notice::Stopped { .. } => ctx.metrics.deadlines_exceeded.inc(),
        Notice::Finished { phase, .. } => {
            let label = match phase {
                Phase::Failed => "Failed",
                Phase::Cancelled => "Cancelled",
                _ => "Completed",
            };
            ctx.metrics.finished.with_label_values(&[label]).inc();
        }
        Notice::Started | Notice::Deleted { .. } | Notice::ProtocolError { .. } => {}
    }
    let (type_, reason, note) = notice.event();
    ctx.events.publish(workplan, type_, reason, &note).await;
}

/// A failed reconciliation is counted by kind and retried after a back-off of its own
/// Workplan, doubling from 2 s to a minute while it keeps failing.
pub fn error_policy(workplan: Arc<Workplan>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(workplan = %workplan.name_any(), %error, "reconcile failed");
    ctx.metrics.reconcile.error(error);
    Action::requeue(ctx.backoff.next(&ObjectRef::from_obj(&*workplan)))
}

/// The back-off of [`error_policy`].
pub fn error_backoff() -> ErrorBackoff<ObjectRef<Workplan>> {
    ErrorBackoff::new(Duration::from_secs(2), Duration::from_secs(60))
}
