//! Workflows that do not deserialize: reported, never a stop.
//!
//! The API server stores objects that its schema accepts and our types refuse: the seed's
//! `lastObservedGeneration` next to `observedGeneration` (one field under a serde alias, so a
//! duplicate), or an integer beyond `int32` in an `int32` field (`status.steps`,
//! `spec.workplanHistoryLimit`; the schema's format is not enforced). The Workflow watch reads
//! every object through [`DeserializeGuard`]: the good ones feed the cache and the controller,
//! each bad one comes here ([`Reporter::run`]), once per resourceVersion:
//!
//! - a Warning Event `Malformed` on it, with the serde error and its path
//!   (`status: duplicate field observedGeneration`);
//! - `kubeci_director_errors_total{error="malformed_workflow"}`;
//! - its `Ready` condition `False`, reason `Malformed`, applied with the controller's field
//!   manager. The object cannot be typed, so the apply is written from its JSON: every status
//!   field the manager owns, as stored, with `Ready` replaced. An apply removes the fields its
//!   manager owned and leaves out, and the user's bad field is not ours: it is left as it is.
//!
//! Repairing the object brings it back through the watch as a good one, and the controller
//! writes its conditions again.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource};
use plumbing::kit::{Events, MetricLabel};
use plumbing::malformed::FalseCondition;
use serde_json::Value;
use shared_types::Workflow;
use tokio::sync::mpsc;

use crate::FIELD_MANAGER;
use crate::error::Error;
use crate::metrics::Metrics;

/// The reason of the Warning Event and of the `Ready` condition.
pub const REASON: &str = "Malformed";

/// A Workflow that does not deserialize, counted as `errors_total{error="malformed_workflow"}`.
#[derive(Debug, thiserror::Error)]
#[error("Workflow {key} cannot be read: {message}")]
pub struct Malformed {
    pub key: String,
    pub message: String,
}

impl MetricLabel for Malformed {
    fn metric_label(&self) -> &'static str {
        "malformed_workflow"
    }
}

/// What the Workflow watch tells the [`Reporter`].
#[derive(Debug)]
pub enum Notice {
    /// This version does not deserialize (always an `Err`).
    Bad(Box<DeserializeGuard<Workflow>>),
    /// The object is good again, or gone: a later break is news.
    Cleared(ObjectRef<Workflow>),
}

/// Reports malformed Workflows one at a time, off the watch's path.
pub struct Reporter {
    client: Client,
    events: Events,
    metrics: Arc<Metrics>,
    /// The version of each malformed Workflow last reported, or written by the report itself.
    reported: HashMap<ObjectRef<Workflow>, String>,
}

impl Reporter {
    pub fn new(client: Client, metrics: Arc<Metrics>) -> Reporter {
        // The Events' reporting instance: this pod (the watch has no other identity to hand).
        let instance = std::env::var("HOSTNAME").unwrap_or_else(|_| FIELD_MANAGER.to_string());
        let events = Events::new(client.clone(), FIELD_MANAGER, &instance);
        Reporter { client, events, metrics, reported: HashMap::new() }
    }

    /// Handles notices until the watch stops.
    pub async fn run(mut self, mut notices: mpsc::UnboundedReceiver<Notice>) {
        while let Some(notice) = notices.recv().await {
            match notice {
                Notice::Bad(guard) => self.report(*guard).await,
                Notice::Cleared(key) => {
                    self.reported.remove(&key);
                }
            }
        }
    }

    async fn report(&mut self, guard: DeserializeGuard<Workflow>) {
        let key = key(&guard);
        let version = guard.meta().resource_version.clone().unwrap_or_default();
        if self.reported.get(&key) == Some(&version) {
            return;
        }
        self.reported.insert(key.clone(), version);
        let namespace = key.namespace.clone().unwrap_or_default();
        let raw: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &namespace, &ApiResource::erase::<Workflow>(&()));
        // The stored JSON, for the error's path and the fields to apply again.
        let object = match raw.get_opt(&key.name).await {
            Ok(Some(object)) => serde_json::to_value(object).unwrap_or_default(),
            Ok(None) => return, // deleted: the watch says so next
            // Reported again with its next version, or the next re-list.
            Err(source) => {
                self.reported.remove(&key);
                return self.failed(Error::Status { workflow: key.to_string(), source });
            }
        };
        let Some(message) = explain(&object) else { return }; // repaired since: the watch brings it
        let malformed = Malformed { key: key.to_string(), message: message.clone() };
        tracing::warn!(error = %malformed, "skipping a malformed Workflow");
        self.metrics.error(&malformed);
        self.events.warning(&guard, REASON, &message).await;

        let apply = ready_false(&object, &message, Timestamp::now());
        let api: Api<DeserializeGuard<Workflow>> = Api::namespaced(self.client.clone(), &namespace);
        match api
            .patch_status(&key.name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(apply))
            .await
        {
            // Its own write is no news: the watch brings it as the next version.
            Ok(written) => {
                if let Some(version) = written.meta().resource_version.clone() {
                    self.reported.insert(key, version);
                }
            }
            // Changed (or deleted) since it was read: the watch brings the newer version.
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {}
            Err(source) => self.failed(Error::Status { workflow: key.to_string(), source }),
        }
    }

    fn failed(&self, error: Error) {
        tracing::warn!(%error, "could not report a malformed Workflow");
        self.metrics.error(&error);
    }
}

/// The cache's key of a Workflow read through the guard, good or bad.
pub fn key(workflow: &DeserializeGuard<Workflow>) -> ObjectRef<Workflow> {
    let meta = workflow.meta();
    let key = ObjectRef::new(meta.name.as_deref().unwrap_or_default());
    match &meta.namespace {
        Some(namespace) => key.within(namespace),
        None => key,
    }
}

/// Why `object` does not deserialize as a Workflow, with the path of the field
/// (`status: duplicate field observedGeneration`); `None` if it does.
pub fn explain(object: &Value) -> Option<String> {
    plumbing::malformed::explain::<Workflow>(object)
}

/// The server-side apply of the `Ready=False` condition (reason [`REASON`]) on the malformed
/// `object`: every status field that [`FIELD_MANAGER`] owns, as stored, `Ready` replaced (its
/// transition time kept if it was already False), with the object's resourceVersion as a
/// precondition.
pub fn ready_false(object: &Value, message: &str, now: Timestamp) -> Value {
    let condition = FalseCondition {
        api_version: &Workflow::api_version(&()),
        kind: &Workflow::kind(&()),
        manager: FIELD_MANAGER,
        type_: "Ready",
        reason: REASON,
        message,
    };
    plumbing::malformed::condition_false(object, &condition, now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The seed's alias written next to the field, as `kubectl patch --subresource=status` does,
    /// on a Workflow whose status the controller and the trigger engine applied before.
    const DUPLICATE: &str = r#"
apiVersion: kube.ci/v1alpha1
kind: Workflow
metadata:
  name: build
  namespace: ci
  generation: 3
  resourceVersion: "812"
  managedFields:
  - manager: kubeci-director
    operation: Apply
    subresource: status
    fieldsV1:
      f:status:
        f:conditions:
          k:{"type":"Invalid"}: {".": {}, f:type: {}, f:status: {}, f:reason: {}, f:message: {}, f:lastTransitionTime: {}}
          k:{"type":"Ready"}: {".": {}, f:type: {}, f:status: {}, f:reason: {}, f:message: {}, f:lastTransitionTime: {}}
        f:observedGeneration: {}
        f:steps: {}
        f:workplans:
          f:completed: {}
  - manager: kubeci-director-triggers
    operation: Apply
    subresource: status
    fieldsV1:
      f:status:
        f:lastManualRun: {}
  - manager: kubectl-patch
    operation: Update
    subresource: status
    fieldsV1:
      f:status:
        f:lastObservedGeneration: {}
spec:
  steps: [{name: a, image: alpine}]
status:
  observedGeneration: 3
  lastObservedGeneration: 2
  steps: 1
  lastManualRun: "x"
  workplans: {completed: 4, pending: 0, running: 0, failed: 0}
  conditions:
  - {type: Ready, status: "True", reason: Valid, message: ok, lastTransitionTime: "2026-01-01T00:00:00Z"}
  - {type: Invalid, status: "False", reason: Valid, message: "", lastTransitionTime: "2026-01-01T00:00:00Z"}
"#;

    fn fixture() -> Value {
        serde_yaml::from_str(DUPLICATE).unwrap()
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_767_312_000).unwrap() // 2026-01-02T00:00:00Z
    }

    #[test]
    fn the_error_names_its_path() {
        assert_eq!(explain(&fixture()).as_deref(), Some("status: duplicate field observedGeneration"));
        let mut too_big = fixture();
        too_big["status"].as_object_mut().unwrap().remove("lastObservedGeneration");
        too_big["spec"]["workplanHistoryLimit"] = json!(1u64 << 40);
        assert_eq!(
            explain(&too_big).as_deref(),
            Some("spec.workplanHistoryLimit: invalid value: integer 1099511627776, expected i32")
        );
        too_big["spec"].as_object_mut().unwrap().remove("workplanHistoryLimit");
        assert_eq!(explain(&too_big), None, "a good Workflow has nothing to explain");
    }

    #[test]
    fn ready_false_keeps_every_field_the_controller_owns_and_nothing_else() {
        let apply = ready_false(&fixture(), "status: duplicate field observedGeneration", now());
        let expected: Value = serde_yaml::from_str(
            r#"
apiVersion: kube.ci/v1alpha1
kind: Workflow
metadata: {name: build, resourceVersion: "812"}
status:
  observedGeneration: 3
  steps: 1
  workplans: {completed: 4}
  conditions:
  - {type: Invalid, status: "False", reason: Valid, message: "", lastTransitionTime: "2026-01-01T00:00:00Z"}
  - {type: Ready, status: "False", reason: Malformed, message: "status: duplicate field observedGeneration",
     lastTransitionTime: "2026-01-02T00:00:00Z", observedGeneration: 3}
"#,
        )
        .unwrap();
        pretty_assertions::assert_eq!(apply, expected);
    }

    #[test]
    fn ready_false_again_keeps_its_transition_time() {
        let mut object = fixture();
        let first = ready_false(&object, "m", now());
        object["status"]["conditions"] = first["status"]["conditions"].clone();
        let later = now().checked_add(k8s_openapi::jiff::SignedDuration::from_secs(60)).unwrap();
        assert_eq!(ready_false(&object, "m", later), first, "the same apply: no new version");
    }

    #[test]
    fn a_workflow_never_applied_gets_just_the_condition() {
        let mut object = fixture();
        object["metadata"].as_object_mut().unwrap().remove("managedFields");
        let apply = ready_false(&object, "m", now());
        let conditions = apply["status"]["conditions"].as_array().unwrap();
        assert_eq!(apply["status"].as_object().unwrap().len(), 1);
        assert_eq!((conditions.len(), &conditions[0]["reason"]), (1, &json!("Malformed")));
    }
}
