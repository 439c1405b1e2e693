//! The Workplan reconciler: fetch the RequestState and the claimant's Lease (I/O), ask the
//! protocol what to do (pure), write the RequestState and the Workplan's status (I/O).

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use shared_types::protocol::{self, Next};
use shared_types::{JobState, Phase, RequestState, Workplan};

use crate::metrics::Metrics;
use crate::status;

/// Errors of one reconciliation; `metric_label` is a fixed, low-cardinality name.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading RequestState {name}: {source}")]
    Read { name: String, source: kube::Error },
    #[error("writing RequestState {name}: {source}")]
    Write { name: String, source: kube::Error },
    #[error("reading the Lease of worker {worker}: {source}")]
    Lease { worker: String, source: kube::Error },
    #[error("writing the status of Workplan {name}: {source}")]
    Status { name: String, source: kube::Error },
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Read { .. } => "read_request_state",
            Error::Write { .. } => "write_request_state",
            Error::Lease { .. } => "read_lease",
            Error::Status { .. } => "status",
        }
    }
}

/// Shared by every reconciliation.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Where workers keep their Leases.
    pub worker_lease_namespace: String,
}

pub async fn reconcile(workplan: Arc<Workplan>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let result = reconcile_inner(&workplan, &ctx).await;
    ctx.metrics.reconcile_duration.observe(started.elapsed().as_secs_f64());
    result
}

async fn reconcile_inner(workplan: &Workplan, ctx: &Context) -> Result<Action, Error> {
    if workplan.status.as_ref().and_then(|s| s.phase).is_some_and(Phase::is_finished) {
        return Ok(Action::await_change());
    }
    let name = workplan.name_any();
    let namespace = workplan.namespace().unwrap_or_default();
    let requests: Api<RequestState> = Api::namespaced(ctx.client.clone(), &namespace);
    let request =
        requests.get_opt(&name).await.map_err(|source| Error::Read { name: name.clone(), source })?;
    if let Some(request) = &request
        && Some(&request.spec.request_uid) != workplan.metadata.uid.as_ref()
    {
        // The RequestState of an earlier Workplan of the same name; garbage collection removes it.
        tracing::info!(workplan = %name, "waiting for the previous Workplan's RequestState to be collected");
        return Ok(Action::requeue(Duration::from_secs(2)));
    }

    let now = Timestamp::now();
    let lease_expiry = match request
        .as_ref()
        .filter(|r| r.spec.state == JobState::Started)
        .and_then(|r| r.spec.worker.clone())
    {
        Some(worker) => lease_expiry(ctx, &worker).await?,
        None => None,
    };
    let alive = |_: &str| lease_expiry.is_some_and(|expiry| expiry > now);

    let mut finish = None;
    let mut written = None;
    let action = match protocol::next(workplan.spec.tasks.len(), request.as_ref(), alive) {
        Err(problem) => {
            let reason = format!("the RequestState cannot be followed: {problem}");
            publish(ctx, workplan, EventType::Warning, "ProtocolError", &reason).await;
            finish = Some((Phase::Failed, reason));
            Action::await_change()
        }
        Ok(Next::Create) => {
            let fresh = protocol::first_request(workplan, now);
            match requests.create(&PostParams::default(), &fresh).await {
                Ok(created) => {
                    ctx.metrics.requests.inc();
                    publish(ctx, workplan, EventType::Normal, "Started", "requested task-0").await;
                    written = Some(created);
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {} // created before; the watch brings it
                Err(source) => return Err(Error::Write { name, source }),
            }
            Action::await_change()
        }
        Ok(Next::Request { job, message }) => {
            let current = request.as_ref().expect("a request follows an existing RequestState");
            let next = protocol::request(current, job, message.clone(), now);
            match requests.replace(&name, &PostParams::default(), &next).await {
                Ok(stored) => {
                    ctx.metrics.requests.inc();
                    if let Some(message) = &message {
                        ctx.metrics.workers_lost.inc();
                        publish(
                            ctx,
                            workplan,
                            EventType::Warning,
                            "WorkerLost",
                            &format!("{message}; {job} requested again"),
                        )
                        .await;
                    }
                    written = Some(stored);
                }
                // Someone wrote in between (a worker's report): decide again on the new state.
                Err(kube::Error::Api(e)) if e.code == 409 => return Ok(Action::requeue(Duration::ZERO)),
                Err(source) => return Err(Error::Write { name, source }),
            }
            Action::await_change()
        }
        Ok(Next::Wait) => match lease_expiry {
            // A started job: look again when its worker's lease would expire.
            Some(expiry) => Action::requeue(
                Duration::try_from(expiry.duration_since(now)).unwrap_or_default() + Duration::from_secs(1),
            ),
            None => Action::await_change(),
        },
        Ok(Next::Finish { phase, reason }) => {
            let (type_, reason_name) = match phase {
                Phase::Failed => (EventType::Warning, "Failed"),
                _ => (EventType::Normal, "Completed"),
            };
            publish(ctx, workplan, type_, reason_name, &reason).await;
            ctx.metrics.finished.with_label_values(&[reason_name]).inc();
            finish = Some((phase, reason));
            Action::await_change()
        }
    };

    let latest = written.as_ref().or(request.as_ref());
    let status = status::derive(workplan, latest, finish, now);
    if workplan.status.as_ref() != Some(&status) {
        let patch = serde_json::json!({ "status": status });
        Api::<Workplan>::namespaced(ctx.client.clone(), &namespace)
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map_err(|source| Error::Status { name: name.clone(), source })?;
    }
    Ok(action)
}

/// When the worker's Lease expires; `None` if it has none (never had, or deleted it on exit).
async fn lease_expiry(ctx: &Context, worker: &str) -> Result<Option<Timestamp>, Error> {
    let leases: Api<Lease> = Api::namespaced(ctx.client.clone(), &ctx.worker_lease_namespace);
    let lease =
        leases.get_opt(worker).await.map_err(|source| Error::Lease { worker: worker.to_string(), source })?;
    Ok(lease.and_then(|l| l.spec).and_then(|spec| {
        if spec.holder_identity.as_deref() != Some(worker) {
            return None;
        }
        let renewed = spec.renew_time.or(spec.acquire_time)?.0;
        renewed
            .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(i64::from(
                spec.lease_duration_seconds?,
            )))
            .ok()
    }))
}

async fn publish(ctx: &Context, workplan: &Workplan, type_: EventType, reason: &str, note: &str) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.into()),
        action: reason.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &workplan.object_ref(&())).await {
        tracing::debug!(error = %e, "could not publish an Event");
    }
}

/// Failed reconciliations are retried with a short delay; the error is counted by kind.
pub fn error_policy(workplan: Arc<Workplan>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(workplan = %workplan.name_any(), %error, "reconcile failed");
    ctx.metrics.errors.with_label_values(&[error.metric_label()]).inc();
    Action::requeue(Duration::from_secs(2))
}
