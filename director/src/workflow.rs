//! The Workflow controller: validates each Workflow with the planner, keeps its status, starts
//! the runs that do not come from triggers (one per generation for Workflows without triggers,
//! one per new `kube.ci/run` value), trims old Workplans, and hands valid triggers to the engine.
//!
//! The decisions are pure functions ([`runs_to_start`], [`conditions`], [`history_to_delete`],
//! [`counts`]); `reconcile` is the I/O around them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{Scope, pinned_kind};
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Recorder};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource, ResourceExt};
use shared_types::planner::validate_workflow;
use shared_types::{
    EventKind, Phase, TriggerEvent, Workflow, WorkflowStatus, Workplan, WorkplanCounts, labels,
};

use crate::metrics::Metrics;
use crate::triggers::decide::Rule;
use crate::triggers::{Command, Engine, create_workplan, publish};

/// The field manager of the controller's status writes.
pub const FIELD_MANAGER: &str = "kubeci-director";

/// Errors of one reconciliation; `metric_label` is a fixed, low-cardinality name.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("listing Workplans of {workflow}: {source}")]
    ListWorkplans { workflow: String, source: kube::Error },
    #[error("writing the status of {workflow}: {source}")]
    Status { workflow: String, source: kube::Error },
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::ListWorkplans { .. } => "list_workplans",
            Error::Status { .. } => "status",
        }
    }
}

/// Shared by every reconciliation.
pub struct Context {
    pub client: Client,
    /// Trigger kinds discovery found, with their resource and scope (kinds not found are looked
    /// up again).
    pub served_kinds: std::sync::Mutex<HashMap<GroupVersionKind, (ApiResource, Scope)>>,
    /// When the director last found it may list and watch a trigger resource (in a namespace,
    /// or everywhere): asked again after [`ACCESS_TTL`], and at once while it may not.
    pub allowed_watches: std::sync::Mutex<HashMap<(GroupVersionKind, Option<String>), Instant>>,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub engine: Engine,
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

/// Workplans by phase (a Workplan without status is Pending).
pub fn counts(workplans: &[Workplan]) -> WorkplanCounts {
    let mut counts = WorkplanCounts::default();
    for wp in workplans {
        match wp.status.as_ref().and_then(|s| s.phase).unwrap_or_default() {
            Phase::Pending => counts.pending += 1,
            Phase::Running => counts.running += 1,
            Phase::Completed => counts.completed += 1,
            Phase::Failed => counts.failed += 1,
        }
    }
    counts
}

/// One reconciliation of one Workflow.
pub async fn reconcile(workflow: Arc<Workflow>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let result = reconcile_inner(&workflow, &ctx).await;
    ctx.metrics.reconcile_duration.observe(started.elapsed().as_secs_f64());
    result
}

async fn reconcile_inner(workflow: &Arc<Workflow>, ctx: &Context) -> Result<Action, Error> {
    let name = workflow.name_any();
    let namespace = workflow.namespace().unwrap_or_default();
    let previous = workflow.status.clone().unwrap_or_default();

    if workflow.metadata.deletion_timestamp.is_some() {
        ctx.engine.send(Command::Unregister(ObjectRef::from_obj(workflow.as_ref())));
        return Ok(Action::await_change());
    }

    // Validate: the planner, the label selectors the trigger watches need, and the trigger kinds.
    let rules: Result<Vec<Rule>, String> = workflow
        .spec
        .triggers
        .iter()
        .enumerate()
        .map(|(i, t)| Rule::new(t, &namespace).map_err(|e| format!("spec.triggers[{i}].selector: {e}")))
        .collect();
    let (health, rules) = match (validate_workflow(workflow), rules) {
        (Err(invalid), _) => (Health::Invalid(invalid.to_string()), None),
        (Ok(()), Err(e)) => (Health::Invalid(e), None),
        (Ok(()), Ok(rules)) => match unwatchable_triggers(ctx, workflow, &rules).await {
            Some((reason, message)) => (Health::Unresolved { reason, message }, Some(rules)),
            None => (Health::Valid, Some(rules)),
        },
    };

    let mut status = WorkflowStatus {
        observed_generation: workflow.metadata.generation,
        conditions: conditions(&previous.conditions, &health, workflow.metadata.generation, Timestamp::now()),
        steps: Some(workflow.spec.steps.len() as i32),
        triggers: Some(workflow.spec.triggers.len() as i32),
        last_manual_run: previous.last_manual_run.clone(),
        ..WorkflowStatus::default()
    };
    let mut created = None;

    match rules {
        None => {
            ctx.engine.send(Command::Unregister(ObjectRef::from_obj(workflow.as_ref())));
        }
        Some(rules) => {
            ctx.engine.send(Command::Register { workflow: workflow.clone(), rules });
            for run in runs_to_start(workflow) {
                let (event, value) = (run.event, run.run.clone());
                if let Some(name) =
                    create_workplan(&ctx.client, &ctx.recorder, &ctx.metrics, workflow, run).await
                {
                    created = Some(name);
                    if event == EventKind::Manual {
                        status.last_manual_run = value;
                    }
                }
            }
            if workflow.spec.suspend && workflow.spec.triggers.is_empty() {
                // Suspended: this generation's run is skipped, not postponed.
                status.observed_generation = workflow.metadata.generation;
            }
        }
    }
    let (reason, message) = match &health {
        Health::Valid => ("", ""),
        Health::Invalid(message) => ("Invalid", message.as_str()),
        Health::Unresolved { reason, message } => (*reason, message.as_str()),
    };
    let reported =
        previous.conditions.iter().any(|c| c.status == "False" && c.type_ == "Ready" && c.reason == reason)
            && previous.conditions.iter().any(|c| c.message == message);
    if health != Health::Valid && !reported {
        tracing::info!(workflow = %name, reason, message, "Workflow is not ready");
        publish(&ctx.recorder, workflow, EventType::Warning, reason, message.to_string()).await;
    }

    // Workplans of this Workflow: trim the history, count by phase, newest name.
    let workplans: Api<Workplan> = Api::namespaced(ctx.client.clone(), &namespace);
    let selector = format!("{}={}", labels::WORKFLOW, name);
    let mut list = workplans
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|source| Error::ListWorkplans { workflow: name.clone(), source })?
        .items;
    list.retain(|wp| wp.owner_references().iter().any(|o| Some(&o.uid) == workflow.metadata.uid.as_ref()));
    for old in history_to_delete(&list, workflow.spec.workplan_history_limit) {
        match workplans.delete(&old, &DeleteParams::background()).await {
            Ok(_) => {
                tracing::info!(workflow = %name, workplan = %old, "deleted a finished Workplan beyond workplanHistoryLimit")
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => tracing::warn!(workplan = %old, error = %e, "could not delete an old Workplan"),
        }
        list.retain(|wp| wp.name_any() != old);
    }
    status.workplans = Some(counts(&list));
    let newest =
        list.iter().max_by_key(|wp| (wp.metadata.creation_timestamp.clone().map(|t| t.0), wp.name_any()));
    // Creation times have one-second resolution: what this reconcile created is the newest.
    status.last_workplan =
        created.or_else(|| newest.map(ResourceExt::name_any)).or(previous.last_workplan.clone());

    if let Some(patch) = status_patch(&previous, &status) {
        match Api::<Workflow>::namespaced(ctx.client.clone(), &namespace)
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => {}
            // Deleted while this reconcile ran: nothing left to report on.
            Err(kube::Error::Api(e)) if e.code == 404 => {
                ctx.engine.send(Command::Unregister(ObjectRef::from_obj(workflow.as_ref())));
                return Ok(Action::await_change());
            }
            Err(source) => return Err(Error::Status { workflow: name.clone(), source }),
        }
    }
    Ok(match health {
        // The kind may be installed later (a CRD); look again.
        Health::Unresolved { .. } => Action::requeue(std::time::Duration::from_secs(30)),
        _ => Action::await_change(),
    })
}

/// The merge patch of the controller's status fields, or `None` when they are what the cached
/// object already holds. Every Workplan change reconciles its Workflow, and most of them (a task
/// starting, a cleanup) change none of these fields: writing anyway cost the API server a PATCH
/// per change (`kubeci-bench` counted five per one-task run). A cache older than the last write
/// is safe: that write's own watch event reconciles again and patches what still differs.
///
/// The controller's fields only: the engine owns `lastObservedResourceGeneration` and
/// `baselinedTriggers`, and a merge patch leaves them alone.
pub fn status_patch(previous: &WorkflowStatus, status: &WorkflowStatus) -> Option<serde_json::Value> {
    let unchanged = previous.observed_generation == status.observed_generation
        && previous.conditions == status.conditions
        && previous.steps == status.steps
        && previous.triggers == status.triggers
        && previous.last_workplan == status.last_workplan
        && previous.last_manual_run == status.last_manual_run
        && previous.workplans == status.workplans;
    (!unchanged).then(|| {
        serde_json::json!({ "status": {
            "observedGeneration": status.observed_generation,
            "conditions": status.conditions,
            "steps": status.steps,
            "triggers": status.triggers,
            "lastWorkplan": status.last_workplan,
            "lastManualRun": status.last_manual_run,
            "workplans": status.workplans,
        }})
    })
}

/// How long a granted list/watch of a trigger resource is trusted before it is asked again.
const ACCESS_TTL: std::time::Duration = std::time::Duration::from_secs(300);

/// `None` when every trigger can be watched, else the reason and a message naming the triggers
/// that cannot: kinds the API server does not serve (`TriggerKindNotFound`), then resources
/// the director may not list and watch (`TriggerForbidden`, asked with SelfSubjectAccessReviews:
/// a forbidden watch would otherwise only retry in the director's log).
async fn unwatchable_triggers(
    ctx: &Context,
    workflow: &Workflow,
    rules: &[Rule],
) -> Option<(&'static str, String)> {
    let mut unserved = Vec::new();
    let mut resolved = Vec::new();
    for (i, trigger) in workflow.spec.triggers.iter().enumerate() {
        let (group, version) = match trigger.api_version.split_once('/') {
            Some((group, version)) => (group, version),
            None => ("", trigger.api_version.as_str()),
        };
        let gvk = GroupVersionKind::gvk(group, version, &trigger.kind);
        let cached = ctx.served_kinds.lock().expect("not poisoned").get(&gvk).cloned();
        let found = match cached {
            Some(found) => found,
            None => match pinned_kind(&ctx.client, &gvk).await {
                Ok((resource, capabilities)) => {
                    let found = (resource, capabilities.scope);
                    ctx.served_kinds.lock().expect("not poisoned").insert(gvk.clone(), found.clone());
                    found
                }
                Err(e) => {
                    unserved.push(format!(
                        "spec.triggers[{i}]: the API server does not serve kind {} in {} ({e})",
                        trigger.kind, trigger.api_version
                    ));
                    continue;
                }
            },
        };
        let namespace = match found.1 {
            Scope::Namespaced => rules.get(i).and_then(|rule| rule.key.namespace.clone()),
            Scope::Cluster => None,
        };
        resolved.push((i, gvk, found.0, namespace));
    }
    if !unserved.is_empty() {
        return Some(("TriggerKindNotFound", unserved.join("; ")));
    }
    let mut forbidden = Vec::new();
    for (i, gvk, resource, namespace) in resolved {
        let key = (gvk, namespace.clone());
        let fresh = |at: &Instant| at.elapsed() < ACCESS_TTL;
        if ctx.allowed_watches.lock().expect("not poisoned").get(&key).is_some_and(fresh) {
            continue;
        }
        let mut denied = Vec::new();
        for verb in ["list", "watch"] {
            match may(&ctx.client, verb, &resource, namespace.as_deref()).await {
                Ok(true) => {}
                Ok(false) => denied.push(verb),
                // The check itself failed: trust the watch, which reports its own errors.
                Err(e) => tracing::warn!(error = %e, "could not review access to a trigger resource"),
            }
        }
        if denied.is_empty() {
            ctx.allowed_watches.lock().expect("not poisoned").insert(key, Instant::now());
        } else {
            let group =
                if resource.group.is_empty() { String::new() } else { format!(".{}", resource.group) };
            let place = namespace.map_or("cluster-wide".to_string(), |ns| format!("in namespace {ns}"));
            forbidden.push(format!(
                "spec.triggers[{i}]: the director may not {} {}{group} {place}; grant it (Helm value director.triggers.resources)",
                denied.join(" or "),
                resource.plural
            ));
        }
    }
    (!forbidden.is_empty()).then(|| ("TriggerForbidden", forbidden.join("; ")))
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
    let answer =
        Api::<SelfSubjectAccessReview>::all(client.clone()).create(&PostParams::default(), &review).await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

/// Failed reconciliations are retried with a short delay; the error is counted by kind.
pub fn error_policy(workflow: Arc<Workflow>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(workflow = %workflow.name_any(), %error, "reconcile failed");
    ctx.metrics.errors.with_label_values(&[error.metric_label()]).inc();
    Action::requeue(std::time::Duration::from_secs(5))
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
        let previous = WorkflowStatus {
            observed_generation: Some(2),
            steps: Some(5),
            triggers: Some(1),
            last_workplan: Some("wf-abc".into()),
            workplans: Some(WorkplanCounts { running: 1, ..WorkplanCounts::default() }),
            // The engine's fields are not the controller's to compare or write.
            baselined_triggers: vec!["t".into()],
            ..WorkflowStatus::default()
        };
        let mut status = WorkflowStatus { baselined_triggers: Vec::new(), ..previous.clone() };
        assert_eq!(status_patch(&previous, &status), None);

        status.workplans = Some(WorkplanCounts { completed: 1, ..WorkplanCounts::default() });
        let patch = status_patch(&previous, &status).expect("the counts changed");
        assert_eq!(patch["status"]["workplans"]["completed"], 1);
        assert_eq!(patch["status"]["lastWorkplan"], "wf-abc");
        assert!(patch["status"].get("baselinedTriggers").is_none(), "{patch}");
        assert!(patch["status"].get("lastObservedResourceGeneration").is_none(), "{patch}");
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
            workplan("new-done", 4, Some(Phase::Completed)),
            workplan("pending", 5, None),
        ];
        assert_eq!(history_to_delete(&list, Some(1)), ["old-done", "old-failed"]);
        assert_eq!(history_to_delete(&list, Some(0)), ["old-done", "old-failed", "new-done"]);
        assert_eq!(history_to_delete(&list, None), Vec::<String>::new());
        assert_eq!(counts(&list), WorkplanCounts { pending: 1, running: 1, completed: 2, failed: 1 });
    }
}
