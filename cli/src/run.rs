//! `run WORKFLOW`: a manual run, started the way the director already accepts one.
//!
//! The director starts one run per new value of a Workflow's `kube.ci/run` annotation and records
//! the value in the Workplan's `spec.trigger.run`. So the plugin creates nothing itself (the
//! Workplan stays the director's, with its name, labels, caps and history): it writes a value no
//! earlier run had, then finds the Workplan carrying it through a watch of the Workflow's
//! Workplans. A run beyond the Workflow's caps waits in `status.pendingRuns`; the timeout message
//! says so instead of leaving the user with a bare "timed out".

use std::io::Write;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use serde_json::json;
use shared_types::{Phase, Workflow, Workplan, labels};

use crate::cluster::MANAGER;
use crate::{Cluster, Error, logs};

/// How far `run` follows the run it started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Follow {
    /// Print the Workplan's name once the director created it.
    Created,
    /// Also wait for its final phase.
    Finished,
    /// Also stream every step's log on the way there.
    Logs,
}

/// A value for `kube.ci/run` that no earlier run of this Workflow had: the time to the
/// nanosecond, which also tells a reader of the Workflow when the run was asked for.
pub fn run_value(now: Timestamp) -> String {
    now.to_string()
}

/// The run value a Workplan was started for, read from plain data so that a malformed Workplan of
/// the same Workflow cannot stop the search.
pub fn run_of(workplan: &DynamicObject) -> Option<&str> {
    let trigger = workplan.data.get("spec")?.get("trigger")?;
    (trigger.get("event")?.as_str()? == "Manual").then_some(())?;
    trigger.get("run")?.as_str()
}

/// Why no Workplan appeared in time, from the Workflow as it is now.
pub fn not_started_reason(workflow: &Workflow) -> String {
    let status = workflow.status.as_ref();
    if workflow.spec.suspend {
        return "the Workflow is suspended (spec.suspend)".into();
    }
    let not_ready = status
        .into_iter()
        .flat_map(|s| s.conditions.iter())
        .find(|c| c.type_ == "Ready" && c.status != "True");
    if let Some(c) = not_ready {
        return format!("the Workflow is not Ready ({}: {})", c.reason, c.message);
    }
    if let Some(pending) = status.and_then(|s| s.pending_runs.as_ref()) {
        let why = [pending.reason.as_deref(), pending.message.as_deref()];
        let why = why.into_iter().flatten().collect::<Vec<_>>().join(": ");
        return format!(
            "{} run(s) of this Workflow wait for their Workplan (status.pendingRuns: {why})",
            pending.count
        );
    }
    "the director has not created it yet: is the director running?".into()
}

/// Starts a manual run of `name` and follows it as far as `follow` says, within `timeout`.
pub async fn run(
    cluster: &Cluster,
    name: &str,
    follow: Follow,
    timeout: SignedDuration,
    out: &mut dyn Write,
    progress: &mut dyn Write,
) -> Result<(), Error> {
    let workflow: Workflow = cluster.workflow(name).await?;
    let full_name = format!("{}/{name}", cluster.namespace);
    if workflow.spec.suspend {
        return Err(Error::NotStarted { workflow: full_name, reason: not_started_reason(&workflow) });
    }
    let timeout = Duration::try_from(timeout).unwrap_or_default();
    let deadline = tokio::time::Instant::now() + timeout;
    let value = run_value(Timestamp::now());

    // Watch first, then write: the Workplan cannot be created between the two unseen.
    let workplans: Api<DynamicObject> = Api::namespaced_with(
        cluster.client.clone(),
        &cluster.namespace,
        &ApiResource::erase::<Workplan>(&()),
    );
    let selector = format!("{}={name}", labels::WORKFLOW);
    // The watcher retries failed requests with back-off; the timeout below bounds the wait.
    let mut created = watcher(workplans, watcher::Config::default().labels(&selector))
        .default_backoff()
        .applied_objects()
        .filter_map(|w| std::future::ready(w.ok().filter(|w| run_of(w) == Some(value.as_str()))))
        .boxed();

    let patch = json!({"metadata": {"annotations": {labels::RUN_ANNOTATION: value}}});
    cluster
        .api::<Workflow>()
        .patch(
            name,
            &PatchParams { field_manager: Some(MANAGER.into()), ..PatchParams::default() },
            &Patch::Merge(&patch),
        )
        .await
        .map_err(|source| Error::Kube {
            what: format!("setting {} on Workflow {full_name}", labels::RUN_ANNOTATION),
            source,
        })?;
    let _ = writeln!(progress, "Workflow {full_name}: manual run {value} requested");

    let workplan = match tokio::time::timeout_at(deadline, created.next()).await {
        Ok(Some(workplan)) => workplan.name_any(),
        Ok(None) => return Err(Error::WatchEnded(format!("of Workflow {full_name}"))),
        Err(_) => {
            let reason = match cluster.workflow(name).await {
                Ok(now) => not_started_reason(&now),
                Err(e) => e.to_string(),
            };
            return Err(Error::NotStarted {
                workflow: full_name,
                reason: format!("no Workplan within {timeout:?}: {reason}"),
            });
        }
    };
    drop(created);
    writeln!(out, "workplan.kube.ci/{workplan} created")?;
    out.flush()?;
    if follow == Follow::Created {
        return Ok(());
    }

    if follow == Follow::Logs {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        tokio::time::timeout(remaining, logs::logs(cluster, &workplan, None, true, out, progress))
            .await
            .map_err(|_| Error::Timeout { workplan: format!("{}/{workplan}", cluster.namespace), timeout })??;
    }
    let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
    let last = cluster.run_end(&workplan, remaining).await.map_err(|e| match e {
        // The timeout the user gave, not what was left of it.
        Error::Timeout { workplan, .. } => Error::Timeout { workplan, timeout },
        other => other,
    })?;
    let full_workplan = format!("{}/{workplan}", cluster.namespace);
    let Some(status) = last.and_then(|w| w.status) else {
        return Err(Error::WorkplanDeleted { workplan: full_workplan, step: "(the end of the run)".into() });
    };
    let phase = status.phase.unwrap_or_default();
    outcome(full_workplan, phase, status.reason.unwrap_or_default())?;
    if follow == Follow::Finished {
        writeln!(out, "workplan.kube.ci/{workplan} {phase:?}")?;
    }
    Ok(())
}

/// A run that ended Failed or Cancelled is an error (exit status 1) that says which and why.
fn outcome(workplan: String, phase: Phase, reason: String) -> Result<(), Error> {
    match phase {
        Phase::Failed | Phase::Cancelled => {
            Err(Error::RunFailed { workplan, phase: format!("{phase:?}"), reason })
        }
        Phase::Pending | Phase::Running | Phase::Completed => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_or_cancelled_run_is_an_error_naming_its_phase() {
        let err = outcome("ns/wp".into(), Phase::Cancelled, "Cancelled by alice before it started".into());
        assert_eq!(
            err.unwrap_err().to_string(),
            "error: Workplan ns/wp Cancelled: Cancelled by alice before it started"
        );
        let err = outcome("ns/wp".into(), Phase::Failed, "task-0 failed".into());
        assert_eq!(err.unwrap_err().to_string(), "error: Workplan ns/wp Failed: task-0 failed");
        assert!(outcome("ns/wp".into(), Phase::Completed, String::new()).is_ok());
    }

    fn workplan(trigger: serde_json::Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "kube.ci/v1alpha1", "kind": "Workplan",
            "metadata": {"name": "w"},
            "spec": {"workflow": "wf", "trigger": trigger, "tasks": []}
        }))
        .unwrap()
    }

    #[test]
    fn a_run_is_found_by_its_manual_value_only() {
        let manual = workplan(json!({"event": "Manual", "run": "2026-12-01T00:00:00.1Z"}));
        assert_eq!(run_of(&manual), Some("2026-12-01T00:00:00.1Z"));
        // A trigger event that happens to carry the field is not a manual run.
        assert_eq!(run_of(&workplan(json!({"event": "Updated", "run": "x"}))), None);
        // Malformed data is no run, not an error.
        assert_eq!(run_of(&workplan(json!("nonsense"))), None);
        assert_eq!(run_of(&workplan(json!({"event": "Manual"}))), None);
    }

    #[test]
    fn run_values_differ_between_two_calls() {
        let a = run_value(Timestamp::from_nanosecond(1).unwrap());
        let b = run_value(Timestamp::from_nanosecond(2).unwrap());
        assert_ne!(a, b);
    }

    #[test]
    fn a_run_that_did_not_start_says_why() {
        let mut workflow: Workflow = serde_yaml::from_str(shared_types::repo::SEED_WORKFLOW).unwrap();
        assert!(not_started_reason(&workflow).contains("director"));
        workflow.spec.suspend = true;
        assert!(not_started_reason(&workflow).contains("spec.suspend"));
    }
}
