//! Objects that do not deserialize: reported, never a stop.
//!
//! The API server stores objects that its schema accepts and our types refuse: an integer
//! beyond `int32` in an `int32` field (`Workplan.status.taskIndex`: the schema's format is not
//! enforced), a RequestState `job` of `task-<i>` whose index overflows (the CRD's pattern lets
//! it through), a history entry whose `job` is neither `task-<i>` nor `cleanup` (no pattern
//! there). Every watch of the operator reads through [`DeserializeGuard`] ([`guarded`]): the good
//! objects feed the caches and the controller; each bad one is reported once per
//! resourceVersion by the [`Tracker`]'s task:
//!
//! - a Warning Event `Malformed` on it, with the error and the path of the field;
//! - `kubeci_workplan_operator_errors_total{error="malformed_<kind>"}`;
//! - a malformed Workplan gets its `Finished` condition `False`, reason `Malformed`, applied with
//!   the operator's field manager from the object's JSON (every status field the manager owns,
//!   as stored, `Finished` replaced: an apply removes the fields its manager owned and leaves
//!   out, and the bad field is not the operator's to rewrite); it is not reconciled;
//! - a malformed RequestState also gets a Warning Event on its Workplan, and that Workplan waits
//!   ([`Tracker::waits`]) rather than act on a RequestState it cannot read.
//!
//! A repaired object comes back through its watch as a good one and is processed again.

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt, future};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::serde::de::DeserializeOwned;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::core::{DeserializeGuard, NamespaceResourceScope, PartialObjectMetaExt};
use kube::runtime::reflector::{ObjectRef, store::Writer};
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource};
use plumbing::kit::{Events, MetricLabel};
use serde_json::Value;
use shared_types::{RequestState, Workplan};
use tokio::sync::mpsc;

use crate::metrics::Metrics;
use crate::reconcile::{Error, MANAGER};

/// The reason of the Warning Events and of the `Finished` condition.
pub const REASON: &str = "Malformed";

/// The kinds the operator watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Workplan,
    RequestState,
    Lease,
}

/// A kind read through [`DeserializeGuard`].
pub trait Guarded:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + DeserializeOwned
    + Clone
    + Debug
    + Send
    + Sync
    + 'static
{
    const KIND: Kind;
}

impl Guarded for Workplan {
    const KIND: Kind = Kind::Workplan;
}

impl Guarded for RequestState {
    const KIND: Kind = Kind::RequestState;
}

impl Guarded for Lease {
    const KIND: Kind = Kind::Lease;
}

/// An object that does not deserialize, counted as `errors_total{error="malformed_<kind>"}`.
#[derive(Debug, thiserror::Error)]
#[error("{kind:?} {key} cannot be read: {message}")]
pub struct Malformed {
    pub kind: Kind,
    pub key: String,
    pub message: String,
}

impl MetricLabel for Malformed {
    fn metric_label(&self) -> &'static str {
        match self.kind {
            Kind::Workplan => "malformed_workplan",
            Kind::RequestState => "malformed_requeststate",
            Kind::Lease => "malformed_lease",
        }
    }
}

/// What a watch tells the reporting task.
enum Notice {
    /// This version of an object does not deserialize.
    Bad(Kind, Box<ObjectMeta>),
    /// The object is good again, or gone: a later break is news.
    Cleared(Kind, String, String),
}

/// Keeps what the watches found malformed, and reports it on a task of its own.
#[derive(Clone)]
pub struct Tracker {
    notices: mpsc::UnboundedSender<Notice>,
    /// Workplans whose RequestState does not deserialize (by the RequestState's key, which is
    /// its Workplan's).
    waiting: Arc<Mutex<HashSet<ObjectRef<Workplan>>>>,
}

impl Tracker {
    /// Starts the reporting task; it ends when every clone of the tracker is dropped.
    pub fn start(client: Client, events: Events, metrics: Arc<Metrics>) -> Tracker {
        let (notices, receiver) = mpsc::unbounded_channel();
        let reporter = Reporter { client, events, metrics, reported: HashMap::new() };
        tokio::spawn(reporter.run(receiver));
        Tracker { notices, waiting: Arc::default() }
    }

    /// Whether `workplan` must wait for its RequestState to be repaired.
    pub fn waits(&self, workplan: &Workplan) -> bool {
        self.waiting.lock().expect("never poisoned").contains(&ObjectRef::from_obj(workplan))
    }

    /// Takes note of one object the watch of `K` brought: good, bad, or `gone`.
    fn observe<K: Guarded>(&self, object: &DeserializeGuard<K>, gone: bool) {
        let meta = object.meta();
        let (namespace, name) =
            (meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default());
        let bad = object.0.is_err() && !gone;
        if K::KIND == Kind::RequestState {
            let key = ObjectRef::new(&name).within(&namespace);
            let mut waiting = self.waiting.lock().expect("never poisoned");
            if bad {
                waiting.insert(key)
            } else {
                waiting.remove(&key)
            };
        }
        let notice = if bad {
            let mut meta = meta.clone();
            meta.managed_fields = None;
            Notice::Bad(K::KIND, Box::new(meta))
        } else {
            Notice::Cleared(K::KIND, namespace, name)
        };
        let _ = self.notices.send(notice);
    }
}

/// The watch `events` of `K` read through the guard: the objects that deserialize go into
/// `writer` (one that turns bad leaves it); every object touched, good or bad, comes out (for
/// the controller's triggers) after `tracker` took note of it.
pub fn guarded<K: Guarded>(
    events: impl Stream<Item = Result<Event<DeserializeGuard<K>>, watcher::Error>> + Send + 'static,
    mut writer: Writer<K>,
    tracker: Tracker,
) -> impl Stream<Item = Result<DeserializeGuard<K>, watcher::Error>> + Send + 'static {
    let store = writer.as_reader();
    events.filter_map(move |event| {
        let key = |object: &DeserializeGuard<K>| {
            let meta = object.meta();
            ObjectRef::<K>::new(meta.name.as_deref().unwrap_or_default())
                .within(meta.namespace.as_deref().unwrap_or_default())
        };
        let mut forget = |object: &DeserializeGuard<K>| {
            if let Some(good) = store.get(&key(object)) {
                writer.apply_watcher_event(&Event::Delete((*good).clone()));
            }
        };
        let touched = match event {
            Err(error) => return future::ready(Some(Err(error))),
            Ok(Event::Init) => {
                writer.apply_watcher_event(&Event::Init);
                None
            }
            Ok(Event::InitDone) => {
                writer.apply_watcher_event(&Event::InitDone);
                None
            }
            Ok(Event::InitApply(object)) => {
                if let Ok(good) = &object.0 {
                    writer.apply_watcher_event(&Event::InitApply(good.clone()));
                }
                tracker.observe(&object, false);
                Some(object)
            }
            Ok(Event::Apply(object)) => {
                match &object.0 {
                    Ok(good) => writer.apply_watcher_event(&Event::Apply(good.clone())),
                    Err(_) => forget(&object),
                }
                tracker.observe(&object, false);
                Some(object)
            }
            Ok(Event::Delete(object)) => {
                forget(&object);
                tracker.observe(&object, true);
                Some(object)
            }
        };
        future::ready(touched.map(Ok))
    })
}

/// Reports malformed objects one at a time, off the watches' path.
struct Reporter {
    client: Client,
    events: Events,
    metrics: Arc<Metrics>,
    /// The version of each malformed object last reported, or written by the report itself.
    reported: HashMap<(Kind, String, String), String>,
}

impl Reporter {
    async fn run(mut self, mut notices: mpsc::UnboundedReceiver<Notice>) {
        while let Some(notice) = notices.recv().await {
            match notice {
                Notice::Bad(Kind::Workplan, meta) => self.report::<Workplan>(*meta).await,
                Notice::Bad(Kind::RequestState, meta) => self.report::<RequestState>(*meta).await,
                Notice::Bad(Kind::Lease, meta) => self.report::<Lease>(*meta).await,
                Notice::Cleared(kind, namespace, name) => {
                    self.reported.remove(&(kind, namespace, name));
                }
            }
        }
    }

    async fn report<K: Guarded>(&mut self, meta: ObjectMeta) {
        let (namespace, name) =
            (meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default());
        let id = (K::KIND, namespace.clone(), name.clone());
        let version = meta.resource_version.clone().unwrap_or_default();
        if self.reported.get(&id) == Some(&version) {
            return;
        }
        self.reported.insert(id.clone(), version);
        let raw: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &namespace, &ApiResource::erase::<K>(&()));
        // The stored JSON, for the error's path and the fields to apply again.
        let object = match raw.get_opt(&name).await {
            Ok(Some(object)) => serde_json::to_value(object).unwrap_or_default(),
            Ok(None) => return, // deleted: the watch says so next
            // Counted as what it is; the next version, or the next re-list, reports it again.
            Err(source) => {
                let message = format!("could not be read again to report it: {source}");
                let malformed = Malformed { kind: K::KIND, key: format!("{namespace}/{name}"), message };
                tracing::warn!(error = %malformed);
                self.reported.remove(&id);
                return self.metrics.reconcile.error(&malformed);
            }
        };
        let Some(message) = explain::<K>(&object) else { return }; // repaired since
        let malformed =
            Malformed { kind: K::KIND, key: format!("{namespace}/{name}"), message: message.clone() };
        tracing::warn!(error = %malformed, "skipping a malformed object");
        self.metrics.reconcile.error(&malformed);
        let target = meta.clone().into_response_partial::<K>();
        self.events.warning(&target, REASON, &message).await;
        match K::KIND {
            Kind::Workplan => self.finished_false(&id, &object, &message).await,
            Kind::RequestState => {
                let note = format!(
                    "RequestState {name} cannot be read ({message}); this Workplan waits until it is repaired"
                );
                for owner in meta.owner_references.iter().flatten().filter(|o| o.kind == Workplan::kind(&()))
                {
                    let workplan = ObjectMeta {
                        name: Some(owner.name.clone()),
                        namespace: Some(namespace.clone()),
                        uid: Some(owner.uid.clone()),
                        ..ObjectMeta::default()
                    };
                    self.events.warning(&workplan.into_response_partial::<Workplan>(), REASON, &note).await;
                }
            }
            Kind::Lease => {}
        }
    }

    async fn finished_false(&mut self, id: &(Kind, String, String), object: &Value, message: &str) {
        let apply = condition_false(object, "Finished", message, Timestamp::now());
        let api: Api<DeserializeGuard<Workplan>> = Api::namespaced(self.client.clone(), &id.1);
        match api.patch_status(&id.2, &PatchParams::apply(MANAGER).force(), &Patch::Apply(apply)).await {
            // Its own write is no news: the watch brings it as the next version.
            Ok(written) => {
                if let Some(version) = written.meta().resource_version.clone() {
                    self.reported.insert(id.clone(), version);
                }
            }
            // Changed (or deleted) since it was read: the watch brings the newer version.
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {}
            Err(source) => {
                let error = Error::Status { name: id.2.clone(), source };
                tracing::warn!(%error, "could not report a malformed Workplan");
                self.metrics.reconcile.error(&error);
            }
        }
    }
}

/// Why `object` does not deserialize as a `K`, with the path of the field at fault
/// (`status.taskIndex: invalid value: integer 1099511627776, expected i32`); `None` if it
/// deserializes.
pub fn explain<K: DeserializeOwned>(object: &Value) -> Option<String> {
    plumbing::malformed::explain::<K>(object)
}

/// The server-side apply of condition `type_` `False`, reason [`REASON`], on the malformed
/// Workplan `object`: every status field that [`MANAGER`] owns, as stored, the condition
/// replaced (its transition time kept if it was already False), with the object's
/// resourceVersion as a precondition.
pub fn condition_false(object: &Value, type_: &str, message: &str, now: Timestamp) -> Value {
    let condition = plumbing::malformed::FalseCondition {
        api_version: &Workplan::api_version(&()),
        kind: &Workplan::kind(&()),
        manager: MANAGER,
        type_,
        reason: REASON,
        message,
    };
    plumbing::malformed::condition_false(object, &condition, now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A running Workplan whose `taskIndex` was patched past int32 by someone else.
    const TOO_BIG: &str = r#"
apiVersion: kube.ci/v1alpha1
kind: Workplan
metadata:
  name: build-1
  namespace: ci
  generation: 1
  resourceVersion: "90"
  managedFields:
  - manager: kubeci-workplan-operator
    operation: Apply
    subresource: status
    fieldsV1:
      f:status:
        f:phase: {}
        f:progress: {}
        f:startTime: {}
        f:conditions:
          k:{"type":"Finished"}: {".": {}, f:type: {}, f:status: {}, f:reason: {}, f:message: {}, f:lastTransitionTime: {}}
  - manager: kubectl-patch
    operation: Update
    subresource: status
    fieldsV1:
      f:status:
        f:taskIndex: {}
spec:
  workflow: build
  trigger: {event: Manual}
  tasks: [{parallelSteps: [{name: a, image: alpine}]}]
status:
  phase: Running
  progress: 1/1
  taskIndex: 1099511627776
  startTime: "2026-01-01T00:00:00Z"
  conditions:
  - {type: Finished, status: "False", reason: Running, message: task 1/1, lastTransitionTime: "2026-01-01T00:00:00Z"}
"#;

    fn fixture() -> Value {
        serde_yaml::from_str(TOO_BIG).unwrap()
    }

    #[test]
    fn the_error_names_its_path() {
        assert_eq!(
            explain::<Workplan>(&fixture()).as_deref(),
            Some("status.taskIndex: invalid value: integer 1099511627776, expected i32")
        );
        let request: Value = serde_yaml::from_str(
            r#"
apiVersion: kube.ci/v1alpha1
kind: RequestState
metadata: {name: build-1, namespace: ci}
spec: {request-uid: u, job: task-0, state: COMPLETED}
status:
  history:
  - {job: task-0, state: REQUESTED, timestamp: "2026-01-01T00:00:00Z"}
  - {job: bogus, state: STARTED, timestamp: "2026-01-01T00:00:01Z"}
"#,
        )
        .unwrap();
        assert_eq!(
            explain::<RequestState>(&request).as_deref(),
            Some("status.history[1].job: job \"bogus\" is neither task-<i> nor cleanup")
        );
        let mut good = fixture();
        good["status"]["taskIndex"] = json!(0);
        assert_eq!(explain::<Workplan>(&good), None);
    }

    #[test]
    fn finished_false_keeps_the_operators_fields_and_leaves_the_bad_one_alone() {
        let now = Timestamp::from_second(1_767_312_000).unwrap(); // 2026-01-02T00:00:00Z
        let apply = condition_false(&fixture(), "Finished", "status.taskIndex: too big", now);
        let expected: Value = serde_yaml::from_str(
            r#"
apiVersion: kube.ci/v1alpha1
kind: Workplan
metadata: {name: build-1, resourceVersion: "90"}
status:
  phase: Running
  progress: 1/1
  startTime: "2026-01-01T00:00:00Z"
  conditions:
  - {type: Finished, status: "False", reason: Malformed, message: "status.taskIndex: too big",
     lastTransitionTime: "2026-01-01T00:00:00Z", observedGeneration: 1}
"#,
        )
        .unwrap();
        pretty_assertions::assert_eq!(apply, expected);
    }
}
