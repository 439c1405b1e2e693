//! `cancel WORKPLAN`: stops a run the way the workplan-operator already accepts it.
//!
//! The operator cancels a Workplan whose `kube.ci/cancel` annotation is set: the running task's
//! pod is stopped, the workspace cleaned, and the run ends with the annotation's value in its
//! reason (`Cancelled by <value> …`). The plugin writes that value (the caller's user name from
//! a SelfSubjectReview, or `--reason`), and with `--wait` waits for the final phase.

use std::io::Write;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use shared_types::{Workplan, labels};

use crate::cluster::MANAGER;
use crate::{Cluster, Error};

/// What the annotation says: the reason if given, else who asked, else the plugin.
pub fn canceller(reason: Option<&str>, user: Option<&str>) -> String {
    match (reason.map(str::trim).filter(|r| !r.is_empty()), user.filter(|u| !u.is_empty())) {
        (Some(reason), _) => reason.to_string(),
        (None, Some(user)) => user.to_string(),
        (None, None) => "kubectl kubeci".to_string(),
    }
}

/// The caller's user name as the API server authenticated it, if it says.
async fn whoami(cluster: &Cluster) -> Option<String> {
    let api: Api<SelfSubjectReview> = Api::all(cluster.client.clone());
    let review = api.create(&PostParams::default(), &SelfSubjectReview::default()).await.ok()?;
    review.status?.user_info?.username
}

/// Cancels `name`; with `wait`, waits (within `timeout`) for its final phase and prints it.
pub async fn cancel(
    cluster: &Cluster,
    name: &str,
    reason: Option<&str>,
    wait: bool,
    timeout: Duration,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let full_name = format!("{}/{name}", cluster.namespace);
    let workplan: Workplan = cluster.get(name).await?;
    let status = workplan.status.unwrap_or_default();
    if let Some(phase) = status.phase.filter(|p| p.is_finished()) {
        return Err(Error::AlreadyFinished {
            workplan: full_name,
            phase: format!("{phase:?}"),
            reason: status.reason.unwrap_or_default(),
        });
    }
    let value = canceller(reason, whoami(cluster).await.as_deref());
    let patch = json!({"metadata": {"annotations": {labels::CANCEL_ANNOTATION: value}}});
    let params = PatchParams { field_manager: Some(MANAGER.into()), ..PatchParams::default() };
    cluster.api::<Workplan>().patch(name, &params, &Patch::Merge(&patch)).await.map_err(|source| {
        Error::Kube { what: format!("setting {} on Workplan {full_name}", labels::CANCEL_ANNOTATION), source }
    })?;
    writeln!(out, "workplan.kube.ci/{name} cancel requested ({value})")?;
    if !wait {
        return Ok(());
    }
    out.flush()?;
    let last = cluster.run_end(name, timeout).await?;
    match last.and_then(|w| w.status) {
        Some(status) => {
            let phase = status.phase.unwrap_or_default();
            writeln!(out, "workplan.kube.ci/{name} {phase:?}: {}", status.reason.unwrap_or_default())?;
        }
        // Deleted once finished (retention 0, or the user): the cancellation went through.
        None => writeln!(out, "workplan.kube.ci/{name} deleted")?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_annotation_names_the_reason_then_the_user() {
        assert_eq!(canceller(Some("superseded by #42"), Some("alice")), "superseded by #42");
        assert_eq!(canceller(Some("  "), Some("alice")), "alice");
        assert_eq!(canceller(None, Some("")), "kubectl kubeci");
        assert_eq!(canceller(None, None), "kubectl kubeci");
    }
}
