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
use serde_json::{Map, Value, json};
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
    let error = serde_path_to_error::deserialize::<_, Workflow>(object).err()?;
    Some(format!("{}: {}", error.path(), error.inner()).replace('`', ""))
}

/// The server-side apply of the `Ready=False` condition (reason [`REASON`]) on the malformed
/// `object`: every status field that [`FIELD_MANAGER`] owns, as stored, `Ready` replaced (its
/// transition time kept if it was already False), with the object's resourceVersion as a
/// precondition.
pub fn ready_false(object: &Value, message: &str, now: Timestamp) -> Value {
    let status = object.get("status").cloned().unwrap_or(Value::Null);
    let mut owned = match status_fields(object, FIELD_MANAGER) {
        Some(fields) => owned(&status, fields),
        None => Value::Object(Map::new()),
    };
    let previous = status
        .get("conditions")
        .and_then(Value::as_array)
        .and_then(|conditions| conditions.iter().find(|c| c["type"] == "Ready" && c["status"] == "False"));
    let since = previous.map_or_else(|| json!(now.to_string()), |c| c["lastTransitionTime"].clone());
    let mut ready = json!({
        "type": "Ready",
        "status": "False",
        "reason": REASON,
        "message": message,
        "lastTransitionTime": since,
    });
    if let Some(generation) = object.pointer("/metadata/generation") {
        ready["observedGeneration"] = generation.clone();
    }
    let fields = owned.as_object_mut().expect("the status is an object");
    let conditions = fields.entry("conditions").or_insert_with(|| json!([]));
    if let Some(list) = conditions.as_array_mut() {
        list.retain(|c| c["type"] != "Ready");
        list.push(ready);
    }
    json!({
        "apiVersion": Workflow::api_version(&()),
        "kind": Workflow::kind(&()),
        "metadata": {
            "name": object.pointer("/metadata/name"),
            "resourceVersion": object.pointer("/metadata/resourceVersion"),
        },
        "status": owned,
    })
}

/// The status fields `manager` owns by apply (`f:status` of its `managedFields` entry on the
/// status subresource).
fn status_fields<'a>(object: &'a Value, manager: &str) -> Option<&'a Map<String, Value>> {
    object.pointer("/metadata/managedFields")?.as_array()?.iter().find_map(|entry| {
        let ours =
            entry["manager"] == manager && entry["operation"] == "Apply" && entry["subresource"] == "status";
        ours.then(|| entry.pointer("/fieldsV1/f:status")?.as_object()).flatten()
    })
}

/// The parts of `value` named by the field set `fields` (the `fieldsV1` format: `f:<name>` for
/// a field, `k:<key json>` for a list item by its keys, `v:<value json>` for a set item,
/// `i:<index>` for a list item by position; `.` for the object itself).
pub fn owned(value: &Value, fields: &Map<String, Value>) -> Value {
    let children = || fields.iter().filter(|(name, _)| *name != ".");
    if children().next().is_none() && !value.is_object() {
        return value.clone();
    }
    let empty = Map::new();
    let below = |set: &Value| set.as_object().unwrap_or(&empty).clone();
    match value {
        Value::Object(map) => Value::Object(
            children()
                .filter_map(|(name, set)| {
                    let name = name.strip_prefix("f:")?;
                    Some((name.to_string(), owned(map.get(name)?, &below(set))))
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .filter_map(|(index, item)| {
                    let (_, set) = children().find(|(name, _)| names(name, index, item))?;
                    Some(owned(item, &below(set)))
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Whether the list item `item` at `index` is the one `name` (a `k:`, `v:` or `i:` key) means.
fn names(name: &str, index: usize, item: &Value) -> bool {
    if let Some(keys) = name.strip_prefix("k:") {
        let Ok(Value::Object(keys)) = serde_json::from_str::<Value>(keys) else { return false };
        keys.iter().all(|(key, value)| item.get(key) == Some(value))
    } else if let Some(value) = name.strip_prefix("v:") {
        serde_json::from_str::<Value>(value).is_ok_and(|value| value == *item)
    } else {
        name.strip_prefix("i:").and_then(|i| i.parse::<usize>().ok()) == Some(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn set_and_index_items() {
        let fields: Map<String, Value> =
            serde_json::from_value(json!({"f:a": {"v:\"x\"": {}, "i:2": {}}, "f:b": {".": {}}})).unwrap();
        let value = json!({"a": ["x", "y", "z", "x"], "b": {"c": 1}, "d": 2});
        assert_eq!(owned(&value, &fields), json!({"a": ["x", "z", "x"], "b": {}}));
    }
}
