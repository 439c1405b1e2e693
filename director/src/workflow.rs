//! The Workflow controller: validates each Workflow with the planner, keeps its status, asks for
//! the runs that do not come from triggers (one per generation for Workflows without triggers,
//! one per new `kube.ci/run` value), trims and expires finished Workplans, and hands valid
//! triggers to the engine.
//!
//! A reconciliation is a pipeline: [`fetch`] (I/O: discovery, access reviews; the Workflow's
//! Workplans from the Workplan cache, never a LIST) → [`validate`] (pure: the planner, the
//! selectors, the resolved triggers) → [`build`] (pure: the own runs still to create, the history
//! to delete, the status) → `apply` (tells the engine, which creates the runs with the trigger
//! runs, in order and under the Workflow's caps; deletes Workplans) → `status` (one server-side
//! apply of the controller's status fields, only when they changed).
//!
//! An own run counts as done once its Workplan is in the cache: only then do `observedGeneration`
//! and `lastManualRun` advance, so a run whose create is refused is asked for again by every
//! reconcile, also after a restart, until it exists.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DeleteParams, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::Scope;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use plumbing::kit::{ErrorBackoff, group_version_kind};
use serde::{Deserialize, Serialize};
use shared_types::planner::{plan, validate_workflow};
use shared_types::{
    EventKind, Phase, TriggerEvent, Workflow, WorkflowStatus, Workplan, WorkplanCounts, labels,
};

use crate::FIELD_MANAGER;
use crate::error::Error;
use crate::triggers::decide::Rule;
use crate::triggers::{Command, Engine, Shared};
use crate::workplans::{self, Guarded};
use plumbing::kit::Synced;

/// Shared by every reconciliation.
pub struct Context {
    /// The client, Events, metrics and trigger kinds, shared with the engine.
    pub shared: Shared,
    /// When the director last found it may list and watch a trigger resource (in a namespace,
    /// or everywhere): asked again after [`ACCESS_TTL`], and at once while it may not.
    pub allowed_watches: Mutex<HashMap<(GroupVersionKind, Option<String>), Instant>>,
    pub engine: Engine,
    /// Per-Workflow back-off of failed reconciliations.
    pub backoff: ErrorBackoff<ObjectRef<Workflow>>,
    /// The Workplan watch's cache, and when it has synced.
    pub workplans: Store<Guarded>,
    pub synced: Synced,
    /// The retention of Workflows that set none.
    pub history: History,
}

impl Context {
    pub fn new(
        shared: Shared,
        engine: Engine,
        (workplans, synced): (Store<Guarded>, Synced),
        history: History,
    ) -> Context {
        Context {
            shared,
            allowed_watches: Mutex::default(),
            engine,
            backoff: ErrorBackoff::new(Duration::from_secs(5), Duration::from_secs(300)),
            workplans,
            synced,
            history,
        }
    }
}

/// How many finished Workplans a Workflow keeps, and for how long after they finished: the
/// director's defaults, overridden by `spec.workplanHistoryLimit` and
/// `spec.workplanHistoryTTLSeconds`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct History {
    pub limit: i32,
    pub ttl_seconds: i64,
}

impl History {
    pub fn of(workflow: &Workflow, defaults: History) -> History {
        History {
            limit: workflow.spec.workplan_history_limit.unwrap_or(defaults.limit),
            ttl_seconds: workflow.spec.workplan_history_ttl_seconds.unwrap_or(defaults.ttl_seconds),
        }
    }
}

/// Runs a Workflow's own events would start: one per generation without triggers, one per new
/// manual value. Nothing while suspended (a manual request waits for the resume).
pub fn runs_to_start(workflow: &Workflow) -> Vec<TriggerEvent> {
    if workflow.spec.suspend {
        return Vec::new();
    }
    let status = workflow.status.clone().unwrap_or_default();
    let itself = |event, run: Option<String>, generation| TriggerEvent {
        event,
        api_version: Some(Workflow::api_version(&()).into_owned()),
        kind: Some(Workflow::kind(&()).into_owned()),
        namespace: workflow.namespace(),
        name: Some(workflow.name_any()),
        uid: workflow.uid(),
        generation,
        resource_version: None,
        run,
    };
    let mut runs = Vec::new();
    let generation = workflow.metadata.generation;
    if workflow.spec.triggers.is_empty() && generation.is_some() && status.observed_generation != generation {
        runs.push(itself(EventKind::Created, None, generation));
    }
    if let Some(value) = workflow.annotations().get(labels::RUN_ANNOTATION)
        && status.last_manual_run.as_ref() != Some(value)
    {
        runs.push(itself(EventKind::Manual, Some(value.clone()), None));
    }
    runs
}

/// Whether a Workflow can be served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// Valid, every trigger's kind served by the API server.
    Valid,
    /// The planner (or a selector) found problems: nothing runs.
    Invalid(String),
    /// Valid, but a trigger cannot be watched: its kind is not served (yet), reason
    /// `TriggerKindNotFound`, or the director may not list and watch it, reason
    /// `TriggerForbidden` (its RBAC, the chart's `director.triggers`). The Workflow is not Ready
    /// and the trigger is looked at again.
    Unresolved { reason: &'static str, message: String },
}

/// `Ready` and `Invalid` for a Workflow's health, keeping the transition time of conditions
/// whose status did not change.
pub fn conditions(
    previous: &[Condition],
    health: &Health,
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    let condition = |type_: &str, status: bool, reason: &str, message: &str| {
        let status = if status { "True" } else { "False" }.to_string();
        let since = previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now));
        Condition {
            type_: type_.into(),
            status,
            reason: reason.into(),
            message: message.into(),
            last_transition_time: since,
            observed_generation: generation,
        }
    };
    match health {
        Health::Valid => vec![
            condition("Ready", true, "Valid", "the Workflow is valid and its triggers are served"),
            condition("Invalid", false, "Valid", ""),
        ],
        Health::Invalid(message) => vec![
            condition("Ready", false, "Invalid", "the Workflow is invalid; see the Invalid condition"),
            condition("Invalid", true, "ValidationFailed", message),
        ],
        Health::Unresolved { reason, message } => {
            vec![condition("Ready", false, reason, message), condition("Invalid", false, "Valid", "")]
        }
    }
}

/// The finished Workplans beyond `limit`, those that finished first: by completion time, then
/// creation time (both have one-second resolution), then name.
pub fn history_to_delete(workplans: &[Workplan], limit: Option<i32>) -> Vec<String> {
    let Some(limit) = limit else { return Vec::new() };
    let mut finished: Vec<&Workplan> = workplans
        .iter()
        .filter(|wp| wp.status.as_ref().and_then(|s| s.phase).is_some_and(Phase::is_finished))
        .collect();
    finished.sort_by_key(|wp| {
        let completed = wp.status.as_ref().and_then(|s| s.completion_time.clone()).map(|t| t.0);
        (completed, wp.metadata.creation_timestamp.clone().map(|t| t.0), wp.name_any())
    });
    let excess = finished.len().saturating_sub(limit.max(0) as usize);
    finished.into_iter().take(excess).map(ResourceExt::name_any).collect()
}

/// The finished Workplans whose time after completion (their creation, for one without a
/// completion time) is up at `now`, and how long until the next one's is.
pub fn expired(workplans: &[Workplan], ttl_seconds: i64, now: Timestamp) -> (Vec<String>, Option<Duration>) {
    let mut expired = Vec::new();
    let mut next: Option<Duration> = None;
    for wp in workplans {
        let status = wp.status.as_ref();
        if !status.and_then(|s| s.phase).is_some_and(Phase::is_finished) {
            continue;
        }
        let finished = status
            .and_then(|s| s.completion_time.clone())
            .or(wp.metadata.creation_timestamp.clone())
            .map_or(now, |t| t.0);
        let left = finished.as_second().saturating_add(ttl_seconds.max(0)).saturating_sub(now.as_second());
        if left <= 0 {
            expired.push(wp.name_any());
        } else {
            let left = Duration::from_secs(left as u64);
            next = Some(next.map_or(left, |n| n.min(left)));
        }
    }
    expired.sort();
    (expired, next)
}

/// Workplans by phase (a Workplan without status is Pending).
pub fn counts(workplans: &[Workplan]) -> WorkplanCounts {
    let mut counts = WorkplanCounts::default();
    for wp in workplans {
        match wp.status.as_ref().and_then(|s| s.phase).unwrap_or_default() {
            Phase::Pending => counts.pending += 1,
            Phase::Running => counts.running += 1,
            Phase::Completed => counts.completed += 1,
            Phase::Failed => counts.failed += 1,
            Phase::Cancelled => counts.cancelled += 1,
        }
    }
    counts
}

/// Whether the director can watch one trigger's objects, as [`fetch`] found out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Access {
    /// The kind is served and the director may list and watch it (or the review itself failed:
    /// the watch then reports its own errors).
    Allowed,
    /// The kind is served; access was not reviewed (another trigger's kind is not served).
    Served,
    /// Discovery does not find the kind.
    Unserved { error: String },
    /// The director may not `verbs` the `resource` (`plural.group`) in `namespace` (or
    /// cluster-wide).
    Forbidden { verbs: Vec<String>, resource: String, namespace: Option<String> },
}

/// What a reconciliation reads from the API server.
#[derive(Clone, Debug, Default)]
pub struct Fetched {
    /// Per trigger, in order.
    pub access: Vec<Access>,
    /// The Workflow's Workplans (its label and its uid as owner).
    pub workplans: Vec<Workplan>,
}

/// The outcome of [`validate`].
#[derive(Clone, Debug)]
pub struct Validated {
    pub health: Health,
    /// The resolved triggers, for the engine; `None` when the Workflow is invalid.
    pub rules: Option<Vec<Rule>>,
}

/// One Workplan of the Workflow's own runs to create.
#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    pub event: EventKind,
    /// The `kube.ci/run` value of a manual run.
    pub manual: Option<String>,
    pub workplan: Workplan,
}

/// What [`build`] decides.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    /// The Workflow's own runs whose Workplan does not exist yet: for the engine to create.
    pub runs: Vec<Run>,
    /// Finished Workplans beyond the history limit or past their TTL.
    pub delete: Vec<String>,
    /// A Warning Event to publish: the Workflow is not ready, for a reason not reported yet.
    pub warning: Option<(String, String)>,
    /// The controller's status fields.
    pub status: WorkflowStatus,
    /// When the next finished Workplan's TTL is up: reconcile then.
    pub requeue: Option<Duration>,
}

/// One reconciliation of one Workflow: counted, timed, and its error back-off reset on success.
pub async fn reconcile(workflow: Arc<Workflow>, ctx: Arc<Context>) -> Result<Action, Error> {
    let result = ctx.shared.metrics.reconcile.measure(reconcile_inner(&workflow, &ctx)).await;
    if result.is_ok() {
        ctx.backoff.reset(&ObjectRef::from_obj(workflow.as_ref()));
    }
    result
}

async fn reconcile_inner(workflow: &Arc<Workflow>, ctx: &Context) -> Result<Action, Error> {
    // Being deleted (other controllers' finalizers): the Workflow watch's Delete event tells the
    // engine once it is gone; nothing to do until then.
    if workflow.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let fetched = fetch(ctx, workflow).await?;
    let validated = validate(workflow, &fetched.access);
    let desired = build(workflow, &validated, &fetched.workplans, Timestamp::now(), ctx.history);
    apply(ctx, workflow, &validated, &desired).await;
    status(ctx, workflow, &desired.status).await?;
    let unresolved = match validated.health {
        // The kind may be installed later (a CRD), the access granted; look again.
        Health::Unresolved { .. } => Some(Duration::from_secs(30)),
        _ => None,
    };
    Ok(match unresolved.into_iter().chain(desired.requeue).min() {
        Some(after) => Action::requeue(after),
        None => Action::await_change(),
    })
}

/// Reads what the decisions need: whether each trigger's kind is served and may be watched,
/// and the Workflow's Workplans (from the Workplan cache, once it has synced).
pub async fn fetch(ctx: &Context, workflow: &Workflow) -> Result<Fetched, Error> {
    let namespace = workflow.namespace().unwrap_or_default();
    let access = trigger_access(ctx, workflow, &namespace).await;
    // Counting, trimming or asking for runs from a cache still filling would be wrong; this
    // waits only until the first listing is in.
    ctx.synced.wait().await;
    Ok(Fetched { access, workplans: workplans::of_workflow(&ctx.workplans, workflow) })
}

/// The planner's verdict, the label selectors the trigger watches need, and whether every
/// trigger can be watched.
pub fn validate(workflow: &Workflow, access: &[Access]) -> Validated {
    let namespace = workflow.namespace().unwrap_or_default();
    let rules: Result<Vec<Rule>, String> = workflow
        .spec
        .triggers
        .iter()
        .enumerate()
        .map(|(i, t)| Rule::new(t, &namespace).map_err(|e| format!("spec.triggers[{i}].selector: {e}")))
        .collect();
    match (validate_workflow(workflow), rules) {
        (Err(invalid), _) => Validated { health: Health::Invalid(invalid.to_string()), rules: None },
        (Ok(()), Err(e)) => Validated { health: Health::Invalid(e), rules: None },
        (Ok(()), Ok(rules)) => Validated { health: trigger_health(workflow, access), rules: Some(rules) },
    }
}

/// `Valid`, or `Unresolved` naming the triggers that cannot be watched: kinds not served first
/// (`TriggerKindNotFound`), then resources the director may not list and watch
/// (`TriggerForbidden`).
fn trigger_health(workflow: &Workflow, access: &[Access]) -> Health {
    let triggers = &workflow.spec.triggers;
    let unserved: Vec<String> = access
        .iter()
        .zip(triggers)
        .enumerate()
        .filter_map(|(i, (access, trigger))| match access {
            Access::Unserved { error } => Some(format!(
                "spec.triggers[{i}]: the API server does not serve kind {} in {} ({error})",
                trigger.kind, trigger.api_version
            )),
            _ => None,
        })
        .collect();
    if !unserved.is_empty() {
        return Health::Unresolved { reason: "TriggerKindNotFound", message: unserved.join("; ") };
    }
    let forbidden: Vec<String> = access
        .iter()
        .enumerate()
        .filter_map(|(i, access)| match access {
            Access::Forbidden { verbs, resource, namespace } => {
                let place = namespace.as_ref().map_or("cluster-wide".to_string(), |ns| format!("in namespace {ns}"));
                Some(format!(
                    "spec.triggers[{i}]: the director may not {} {resource} {place}; grant it (Helm value director.triggers.resources)",
                    verbs.join(" or ")
                ))
            }
            _ => None,
        })
        .collect();
    if !forbidden.is_empty() {
        return Health::Unresolved { reason: "TriggerForbidden", message: forbidden.join("; ") };
    }
    Health::Valid
}

/// The own runs still to create, the history to delete, a Warning to publish, and the
/// controller's status fields. `workplans` are the Workflow's Workplans as cached.
pub fn build(
    workflow: &Workflow,
    validated: &Validated,
    workplans: &[Workplan],
    now: Timestamp,
    defaults: History,
) -> Desired {
    let previous = workflow.status.clone().unwrap_or_default();
    let health = &validated.health;
    let generation = workflow.metadata.generation;
    let existing: BTreeSet<String> = workplans.iter().map(ResourceExt::name_any).collect();
    let wanted: Vec<Run> = match validated.rules {
        None => Vec::new(),
        Some(_) => runs_to_start(workflow)
            .into_iter()
            .filter_map(|trigger| {
                let (event, manual) = (trigger.event, trigger.run.clone());
                plan(workflow, trigger).ok().map(|workplan| Run { event, manual, workplan })
            })
            .collect(),
    };
    let (done, runs): (Vec<Run>, Vec<Run>) =
        wanted.into_iter().partition(|run| existing.contains(&run.workplan.name_any()));
    let (reason, message) = match health {
        Health::Valid => ("", ""),
        Health::Invalid(message) => ("Invalid", message.as_str()),
        Health::Unresolved { reason, message } => (*reason, message.as_str()),
    };
    let reported =
        previous.conditions.iter().any(|c| c.status == "False" && c.type_ == "Ready" && c.reason == reason)
            && previous.conditions.iter().any(|c| c.message == message);
    let warning = (*health != Health::Valid && !reported).then(|| (reason.to_string(), message.to_string()));

    let history = History::of(workflow, defaults);
    let (expired, requeue) = expired(workplans, history.ttl_seconds, now);
    let mut delete = history_to_delete(workplans, Some(history.limit));
    for name in expired {
        if !delete.contains(&name) {
            delete.push(name);
        }
    }
    let kept: Vec<Workplan> =
        workplans.iter().filter(|wp| !delete.contains(&wp.name_any())).cloned().collect();
    let newest =
        kept.iter().max_by_key(|wp| (wp.metadata.creation_timestamp.clone().map(|t| t.0), wp.name_any()));
    let status = WorkflowStatus {
        // Once every own run of this generation exists (also when suspended: that generation's
        // run is skipped, not postponed).
        observed_generation: if runs.is_empty() { generation } else { previous.observed_generation },
        conditions: conditions(&previous.conditions, health, generation, now),
        steps: Some(workflow.spec.steps.len() as i32),
        triggers: Some(workflow.spec.triggers.len() as i32),
        // A manual run's value is recorded once its Workplan exists.
        last_manual_run: done.iter().find_map(|run| run.manual.clone()).or(previous.last_manual_run.clone()),
        last_workplan: newest.map(|wp| wp.name_any()).or(previous.last_workplan.clone()),
        workplans: Some(counts(&kept)),
        ..WorkflowStatus::default()
    };
    Desired { runs, delete, warning, status, requeue }
}

/// Tells the engine (the triggers, and the own runs to create), publishes the Warning and
/// deletes the history.
async fn apply(ctx: &Context, workflow: &Arc<Workflow>, validated: &Validated, desired: &Desired) {
    let name = workflow.name_any();
    match &validated.rules {
        Some(rules) => ctx.engine.send(Command::Register {
            workflow: workflow.clone(),
            rules: rules.clone(),
            own: desired.runs.clone(),
        }),
        None => ctx.engine.send(Command::Unregister(ObjectRef::from_obj(workflow.as_ref()))),
    }
    if let Some((reason, message)) = &desired.warning {
        tracing::info!(workflow = %name, reason, message, "Workflow is not ready");
        ctx.shared.events.warning(workflow.as_ref(), reason, message).await;
    }
    let workplans: Api<Workplan> =
        Api::namespaced(ctx.shared.client.clone(), &workflow.namespace().unwrap_or_default());
    for old in &desired.delete {
        match workplans.delete(old, &DeleteParams::background()).await {
            Ok(_) => {
                tracing::info!(workflow = %name, workplan = %old, "deleted a finished Workplan beyond the history limit or its TTL")
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => tracing::warn!(workplan = %old, error = %e, "could not delete an old Workplan"),
        }
    }
}

/// Applies the controller's status fields when they differ from what the cached object holds.
/// Every Workplan change reconciles its Workflow, and most of them (a task starting, a cleanup)
/// change none of these fields: writing anyway cost the API server a write per change
/// (`kubeci-bench` counted five per one-task run). A cache older than the last write is safe:
/// that write's own watch event reconciles again and applies what still differs.
async fn status(ctx: &Context, workflow: &Workflow, status: &WorkflowStatus) -> Result<(), Error> {
    let Some(apply) = status_apply(workflow, status) else { return Ok(()) };
    let name = workflow.name_any();
    let api: Api<Workflow> =
        Api::namespaced(ctx.shared.client.clone(), &workflow.namespace().unwrap_or_default());
    match api.patch_status(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(apply)).await {
        Ok(_) => Ok(()),
        // Deleted while this reconcile ran: nothing left to report on (the Workflow watch tells
        // the engine).
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(source) => Err(Error::Status { workflow: name, source }),
    }
}

/// The controller's status fields: the engine's manager owns the others.
pub fn controller_fields(status: &WorkflowStatus) -> WorkflowStatus {
    WorkflowStatus {
        observed_generation: status.observed_generation,
        conditions: status.conditions.clone(),
        steps: status.steps,
        triggers: status.triggers,
        last_workplan: status.last_workplan.clone(),
        last_manual_run: status.last_manual_run.clone(),
        workplans: status.workplans.clone(),
        ..WorkflowStatus::default()
    }
}

/// The server-side apply of the controller's status fields, or `None` when they are what the
/// cached `workflow` holds. Every field the manager owns is sent each time: an apply removes
/// the fields its manager owned before and leaves out.
pub fn status_apply(workflow: &Workflow, status: &WorkflowStatus) -> Option<serde_json::Value> {
    let desired = controller_fields(status);
    let cached = controller_fields(&workflow.status.clone().unwrap_or_default());
    (desired != cached).then(|| {
        serde_json::json!({
            "apiVersion": Workflow::api_version(&()),
            "kind": Workflow::kind(&()),
            "metadata": { "name": workflow.name_any() },
            "status": desired,
        })
    })
}

/// How long a granted list/watch of a trigger resource is trusted before it is asked again.
const ACCESS_TTL: Duration = Duration::from_secs(300);

/// Whether each trigger can be watched: its kind resolved by discovery, then (when every kind
/// is served) SelfSubjectAccessReviews for list and watch, as a forbidden watch would otherwise
/// only retry in the director's log.
async fn trigger_access(ctx: &Context, workflow: &Workflow, namespace: &str) -> Vec<Access> {
    let client = &ctx.shared.client;
    let mut resolved = Vec::new();
    for trigger in &workflow.spec.triggers {
        resolved.push(match ctx.shared.kinds.resolve(client, &trigger.api_version, &trigger.kind).await {
            Ok((resource, scope)) => {
                let watched = match scope {
                    Scope::Namespaced => {
                        Some(trigger.namespace.clone().unwrap_or_else(|| namespace.to_string()))
                    }
                    Scope::Cluster => None,
                };
                Ok((group_version_kind(&trigger.api_version, &trigger.kind), resource, watched))
            }
            Err(e) => Err(e.to_string()),
        });
    }
    let all_served = resolved.iter().all(Result::is_ok);
    let mut access = Vec::new();
    for found in resolved {
        access.push(match found {
            Err(error) => Access::Unserved { error },
            Ok(_) if !all_served => Access::Served,
            Ok((gvk, resource, namespace)) => review_access(ctx, gvk, &resource, namespace).await,
        });
    }
    access
}

async fn review_access(
    ctx: &Context,
    gvk: GroupVersionKind,
    resource: &ApiResource,
    namespace: Option<String>,
) -> Access {
    let key = (gvk, namespace.clone());
    let fresh = |at: &Instant| at.elapsed() < ACCESS_TTL;
    if ctx.allowed_watches.lock().expect("not poisoned").get(&key).is_some_and(fresh) {
        return Access::Allowed;
    }
    let mut denied = Vec::new();
    for verb in ["list", "watch"] {
        match may(&ctx.shared.client, verb, resource, namespace.as_deref()).await {
            Ok(true) => {}
            Ok(false) => denied.push(verb.to_string()),
            // The check itself failed: trust the watch, which reports its own errors.
            Err(e) => tracing::warn!(error = %e, "could not review access to a trigger resource"),
        }
    }
    if denied.is_empty() {
        ctx.allowed_watches.lock().expect("not poisoned").insert(key, Instant::now());
        return Access::Allowed;
    }
    let group = if resource.group.is_empty() { String::new() } else { format!(".{}", resource.group) };
    Access::Forbidden { verbs: denied, resource: format!("{}{group}", resource.plural), namespace }
}

/// Whether this process may `verb` the resource (in `namespace`, or in all namespaces).
async fn may(
    client: &Client,
    verb: &str,
    resource: &ApiResource,
    namespace: Option<&str>,
) -> Result<bool, kube::Error> {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                group: Some(resource.group.clone()),
                resource: Some(resource.plural.clone()),
                verb: Some(verb.to_string()),
                namespace: namespace.map(str::to_string),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..PostParams::default() };
    let answer = Api::<SelfSubjectAccessReview>::all(client.clone()).create(&params, &review).await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

/// Failed reconciliations are retried with a per-Workflow exponential back-off (reset by the
/// next success); the error is counted by kind.
pub fn error_policy(workflow: Arc<Workflow>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(workflow = %workflow.name_any(), %error, "reconcile failed");
    ctx.shared.metrics.error(error);
    Action::requeue(ctx.backoff.next(&ObjectRef::from_obj(workflow.as_ref())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use pretty_assertions::assert_eq;
    use shared_types::WorkplanStatus;

    fn workflow(triggers: bool, generation: i64, observed: Option<i64>) -> Workflow {
        let yaml = if triggers {
            shared_types::repo::SEED_WORKFLOW.to_string()
        } else {
            shared_types::repo::CHAIN_WORKFLOW.to_string()
        };
        let mut wf: Workflow = serde_yaml::from_str(&yaml).unwrap();
        wf.metadata.uid = Some("wf-uid".into());
        wf.metadata.namespace = Some("ns".into());
        wf.metadata.generation = Some(generation);
        wf.status = Some(WorkflowStatus { observed_generation: observed, ..WorkflowStatus::default() });
        wf
    }

    fn events(runs: &[TriggerEvent]) -> Vec<(EventKind, Option<i64>, Option<String>)> {
        runs.iter().map(|r| (r.event, r.generation, r.run.clone())).collect()
    }

    #[test]
    fn an_unchanged_status_is_not_written_again() {
        let mut cached = workflow(true, 2, Some(2));
        cached.status = Some(WorkflowStatus {
            observed_generation: Some(2),
            steps: Some(5),
            triggers: Some(1),
            last_workplan: Some("wf-abc".into()),
            workplans: Some(WorkplanCounts { running: 1, ..WorkplanCounts::default() }),
            // The engine's fields are not the controller's to compare or write.
            baselined_triggers: vec!["t".into()],
            ..WorkflowStatus::default()
        });
        let mut status = WorkflowStatus { baselined_triggers: Vec::new(), ..cached.status.clone().unwrap() };
        assert_eq!(status_apply(&cached, &status), None);

        status.workplans = Some(WorkplanCounts { completed: 1, ..WorkplanCounts::default() });
        let apply = status_apply(&cached, &status).expect("the counts changed");
        assert_eq!(apply["status"]["workplans"]["completed"], 1);
        assert_eq!(apply["status"]["lastWorkplan"], "wf-abc", "every owned field is applied");
        assert_eq!(apply["kind"], "Workflow");
        assert_eq!(apply["metadata"]["name"], "my-workflow");
        assert!(apply["status"].get("baselinedTriggers").is_none(), "{apply}");
        assert!(apply["status"].get("lastObservedResourceGeneration").is_none(), "{apply}");
    }

    const DEFAULTS: History = History { limit: 10, ttl_seconds: 7 * 24 * 3600 };

    /// Each `tests/fixtures/reconcile/*.yaml` is a Workflow, its Workplans and what `fetch` found
    /// of its triggers' access, in; the pure steps' decisions and status, out (`expect`; with
    /// `KUBECI_BLESS=1` the test prints what it got instead).
    #[test]
    fn reconcile_fixtures() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reconcile");
        let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        assert!(files.len() >= 5, "{files:?}");
        let now = Timestamp::from_second(1_767_225_600).unwrap(); // 2026-01-01T00:00:00Z
        for file in files {
            let case: serde_json::Value =
                serde_yaml::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
            let workflow: Workflow = serde_json::from_value(case["workflow"].clone()).unwrap();
            let workplans: Vec<Workplan> = serde_json::from_value(case["workplans"].clone()).unwrap();
            let access: Vec<Access> = serde_json::from_value(case["access"].clone()).unwrap();

            let validated = validate(&workflow, &access);
            let desired = build(&workflow, &validated, &workplans, now, DEFAULTS);
            let got = serde_json::json!({
                "register": validated.rules.is_some(),
                "runs": desired.runs.iter().map(|run| serde_json::json!({
                    "event": run.event,
                    "manual": run.manual,
                    "workplan": run.workplan.name_any(),
                })).collect::<Vec<_>>(),
                "delete": desired.delete,
                "warning": desired.warning.as_ref().map(|(reason, message)| serde_json::json!({
                    "reason": reason,
                    "message": message,
                })),
                "requeue": desired.requeue.map(|after| after.as_secs()),
                "status": desired.status,
            });
            if std::env::var_os("KUBECI_BLESS").is_some() {
                println!("# {}\nexpect:\n{}", file.display(), serde_yaml::to_string(&got).unwrap());
                continue;
            }
            assert_eq!(got, case["expect"], "{}", file.display());
        }
    }

    #[test]
    fn without_triggers_each_generation_runs_once() {
        assert_eq!(
            events(&runs_to_start(&workflow(false, 1, None))),
            vec![(EventKind::Created, Some(1), None)]
        );
        assert_eq!(
            events(&runs_to_start(&workflow(false, 2, Some(1)))),
            vec![(EventKind::Created, Some(2), None)]
        );
        assert_eq!(events(&runs_to_start(&workflow(false, 2, Some(2)))), vec![]);
        assert_eq!(
            events(&runs_to_start(&workflow(true, 1, None))),
            vec![],
            "triggered Workflows wait for events"
        );
    }

    #[test]
    fn each_new_manual_value_runs_once() {
        let mut wf = workflow(true, 1, Some(1));
        wf.metadata.annotations = Some([("kube.ci/run".to_string(), "a".to_string())].into());
        assert_eq!(events(&runs_to_start(&wf)), vec![(EventKind::Manual, None, Some("a".into()))]);
        wf.status.as_mut().unwrap().last_manual_run = Some("a".into());
        assert_eq!(events(&runs_to_start(&wf)), vec![]);
    }

    #[test]
    fn suspended_workflows_start_nothing() {
        let mut wf = workflow(false, 1, None);
        wf.spec.suspend = true;
        wf.metadata.annotations = Some([("kube.ci/run".to_string(), "a".to_string())].into());
        assert_eq!(events(&runs_to_start(&wf)), vec![]);
    }

    #[test]
    fn conditions_keep_their_transition_time() {
        let t0 = Timestamp::from_second(1_000).unwrap();
        let t1 = Timestamp::from_second(2_000).unwrap();
        let valid = conditions(&[], &Health::Valid, Some(1), t0);
        assert_eq!(
            valid.iter().map(|c| (c.type_.as_str(), c.status.as_str())).collect::<Vec<_>>(),
            [("Ready", "True"), ("Invalid", "False")]
        );
        let still_valid = conditions(&valid, &Health::Valid, Some(2), t1);
        assert_eq!(still_valid[0].last_transition_time, Time(t0));
        let invalid = conditions(
            &still_valid,
            &Health::Invalid("spec.steps: dependency cycle a → b → a".into()),
            Some(3),
            t1,
        );
        assert_eq!(
            (invalid[0].status.as_str(), invalid[0].last_transition_time.clone()),
            ("False", Time(t1))
        );
        assert_eq!(invalid[1].message, "spec.steps: dependency cycle a → b → a");
        let unresolved = conditions(
            &invalid,
            &Health::Unresolved { reason: "TriggerKindNotFound", message: "spec.triggers[0]: ...".into() },
            Some(4),
            t1,
        );
        assert_eq!(
            unresolved
                .iter()
                .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
                .collect::<Vec<_>>(),
            [("Ready", "False", "TriggerKindNotFound"), ("Invalid", "False", "Valid")]
        );
    }

    fn workplan(name: &str, second: i64, phase: Option<Phase>) -> Workplan {
        let mut wp = Workplan::new(
            name,
            shared_types::planner::plan(
                &workflow(false, 1, None),
                runs_to_start(&workflow(false, 1, None)).remove(0),
            )
            .unwrap()
            .spec,
        );
        wp.metadata = ObjectMeta {
            name: Some(name.into()),
            creation_timestamp: Some(Time(Timestamp::from_second(second).unwrap())),
            ..ObjectMeta::default()
        };
        wp.status = phase.map(|phase| WorkplanStatus { phase: Some(phase), ..WorkplanStatus::default() });
        wp
    }

    #[test]
    fn the_default_history_applies_unless_the_workflow_sets_its_own() {
        let mut wf = workflow(false, 1, Some(1));
        assert_eq!(History::of(&wf, DEFAULTS), DEFAULTS);
        wf.spec.workplan_history_limit = Some(1);
        wf.spec.workplan_history_ttl_seconds = Some(0);
        assert_eq!(History::of(&wf, DEFAULTS), History { limit: 1, ttl_seconds: 0 });
        // TTL 0: finished now, gone now.
        let mut done = workplan("done", 5, Some(Phase::Completed));
        done.status.as_mut().unwrap().completion_time = Some(Time(Timestamp::from_second(10).unwrap()));
        let now = Timestamp::from_second(10).unwrap();
        assert_eq!(expired(&[done.clone()], 0, now), (vec!["done".to_string()], None));
        assert_eq!(expired(&[done], 60, now), (vec![], Some(Duration::from_secs(60))));
    }

    #[test]
    fn history_orders_by_completion_first() {
        let mut early = workplan("created-late-finished-early", 9, Some(Phase::Completed));
        early.status.as_mut().unwrap().completion_time = Some(Time(Timestamp::from_second(10).unwrap()));
        let mut late = workplan("created-early-finished-late", 1, Some(Phase::Completed));
        late.status.as_mut().unwrap().completion_time = Some(Time(Timestamp::from_second(20).unwrap()));
        assert_eq!(history_to_delete(&[late, early], Some(1)), ["created-late-finished-early"]);
    }

    #[test]
    fn history_keeps_the_newest_finished_and_every_unfinished() {
        let list = [
            workplan("old-done", 1, Some(Phase::Completed)),
            workplan("running", 2, Some(Phase::Running)),
            workplan("old-failed", 3, Some(Phase::Failed)),
            workplan("old-cancelled", 4, Some(Phase::Cancelled)),
            workplan("new-done", 5, Some(Phase::Completed)),
            workplan("pending", 6, None),
        ];
        assert_eq!(history_to_delete(&list, Some(1)), ["old-done", "old-failed", "old-cancelled"]);
        assert_eq!(
            history_to_delete(&list, Some(0)),
            ["old-done", "old-failed", "old-cancelled", "new-done"]
        );
        assert_eq!(history_to_delete(&list, None), Vec::<String>::new());
        assert_eq!(
            counts(&list),
            WorkplanCounts { pending: 1, running: 1, completed: 2, failed: 1, cancelled: 1 }
        );
    }
}
