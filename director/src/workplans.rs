//! The director's one Workplan watch: a cache of every Workplan, slimmed to what the Workflow
//! controller and the trigger engine read (phase, completion time, labels, owners), feeding the
//! controller's `owns` trigger too. The controller counts, trims and expires a Workflow's
//! Workplans from this cache and the engine checks its caps against it: no LIST per reconcile
//! (issue 13: those LISTs fell back to etcd under load).
//!
//! The watch reads through `DeserializeGuard`: a Workplan that does not deserialize stays in the
//! cache as what it is (its metadata and the error), is reported once per version with a Warning
//! Event on it, and stops nothing else.

use std::collections::HashSet;

use futures::{Stream, TryStreamExt};
use kube::ResourceExt;
use kube::api::Api;
use kube::core::DeserializeGuard;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, watcher};
use plumbing::kit::{Events, Synced};
use shared_types::{Phase, Workflow, Workplan, labels};

/// A cached Workplan, or one that does not deserialize.
pub type Guarded = DeserializeGuard<Workplan>;

/// Starts the one Workplan watch of `api`: the cache, when it has synced, and the stream of
/// changed Workplans for the controller's `owns_stream` (consuming it is what fills the cache).
pub fn watch(
    api: Api<Guarded>,
    events: Events,
) -> (Store<Guarded>, Synced, impl Stream<Item = Result<Guarded, watcher::Error>> + Send + 'static) {
    let (store, writer) = reflector::store();
    let synced = Synced::of(store.clone());
    let mut reported = HashSet::new();
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default().any_semantic()).default_backoff().modify(slim),
    )
    .touched_objects()
    .inspect_ok(move |object: &Guarded| {
        let Err(invalid) = &object.0 else { return };
        // Once per version: the watch re-lists, and every re-list would publish it again.
        let version = (invalid.metadata.uid.clone(), invalid.metadata.resource_version.clone());
        if !reported.insert(version) {
            return;
        }
        let name = object.name_any();
        tracing::warn!(workplan = %name, error = %invalid.error, "a Workplan does not deserialize; it is left alone");
        let (events, object) = (events.clone(), object.clone());
        let note = format!("kubeci cannot read this Workplan: {}", invalid.error);
        tokio::spawn(async move { events.warning(&object, "Malformed", &note).await });
    });
    (store, synced, stream)
}

/// Keeps what counts, history, TTL and caps need: no managedFields, no tasks (the largest part).
fn slim(object: &mut Guarded) {
    match &mut object.0 {
        Ok(workplan) => {
            workplan.metadata.managed_fields = None;
            workplan.spec.tasks = Vec::new();
        }
        Err(invalid) => invalid.metadata.managed_fields = None,
    }
}

/// The cached Workplans of `workflow`: its label, in its namespace, owned by this very Workflow
/// (not one deleted and re-created under its name).
pub fn of_workflow(store: &Store<Guarded>, workflow: &Workflow) -> Vec<Workplan> {
    let (name, namespace, uid) = (workflow.name_any(), workflow.namespace(), workflow.uid());
    store
        .state()
        .iter()
        .filter_map(|object| object.0.as_ref().ok())
        .filter(|wp| {
            wp.namespace() == namespace
                && wp.labels().get(labels::WORKFLOW) == Some(&name)
                && wp.owner_references().iter().any(|o| Some(&o.uid) == uid.as_ref())
        })
        .cloned()
        .collect()
}

/// Whether a Workplan still runs (Pending or Running; one without a status is Pending).
pub fn unfinished(workplan: &Workplan) -> bool {
    !workplan.status.as_ref().and_then(|s| s.phase).is_some_and(Phase::is_finished)
}
