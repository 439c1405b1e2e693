//! The director's one Workflow watch, shared by the Workflow controller and the trigger engine.
//!
//! One watcher feeds one cache (a reflector's store, without managedFields: one entry per
//! writer, naming each recorded trigger object, never read; kubeci-bench, phase 6) with the
//! Workflows that deserialize; the others go to [`crate::malformed`]. Its events
//! fan out from here: every applied Workflow to the controller (a shared stream of the cached
//! objects, `Controller::for_shared_stream`), and to the engine the only news of Workflows being
//! gone, a Delete event or a re-list ([`Command::Deleted`], [`Command::Listed`]).
//!
//! kube-runtime's `Writer::subscribe` shares the objects too, but its subscribers see no Delete
//! events, so the engine would need a second path to learn of deletions; and a subscriber whose
//! object is deleted before it is read returns `Pending` without a waker, stalling the controller
//! until some other event wakes it. Fanning out from the one consumer of the watch has neither
//! problem.

use std::collections::HashMap;
use std::sync::Arc;

use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};
use kube::api::Api;
use kube::core::DeserializeGuard;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Resource, ResourceExt};
use shared_types::Workflow;

use crate::error::Error;
use crate::malformed::{self, Notice, Reporter};
use crate::metrics::Metrics;
use crate::triggers::{Command, Engine};

/// How many applied Workflows may wait for the controller before the watch waits.
const BUFFER: usize = 1024;

/// The Workflow cache and the stream of applied Workflows for the controller; [`Watch::run`]
/// drives the one watch that fills both.
pub struct Watch {
    api: Api<Workflow>,
    writer: reflector::store::Writer<Workflow>,
    applied: mpsc::Sender<Arc<Workflow>>,
}

/// Creates the watch of `api`: the cache, the controller's stream of applied Workflows, and the
/// watch itself to [`Watch::run`].
pub fn workflows(api: Api<Workflow>) -> (Store<Workflow>, mpsc::Receiver<Arc<Workflow>>, Watch) {
    let (store, writer) = reflector::store();
    let (applied, receiver) = mpsc::channel(BUFFER);
    (store, receiver, Watch { api, writer, applied })
}

impl Watch {
    /// Runs the watch (restarting with back-off on errors) until the controller's stream is
    /// dropped.
    ///
    /// Objects are read through [`DeserializeGuard`]: one Workflow that does not deserialize
    /// must not fail the list of all the others (which would keep the cache from ever syncing).
    /// The cache, the controller and the engine see the good ones only; a bad one is handed to
    /// the [`Reporter`], and one that turns bad leaves the cache and the engine as if it were
    /// invalid, until it is repaired.
    pub async fn run(self, engine: Engine, metrics: Arc<Metrics>) {
        let Watch { api, mut writer, mut applied } = self;
        let store = writer.as_reader();
        let client = api.clone().into_client();
        let guarded: Api<DeserializeGuard<Workflow>> = match api.namespace() {
            Some(namespace) => Api::namespaced(client.clone(), namespace),
            None => Api::all(client.clone()),
        };
        let (notices, reports) = tokio::sync::mpsc::unbounded_channel();
        // Ends when `notices` is dropped with this watch.
        tokio::spawn(Reporter::new(client, metrics.clone()).run(reports));
        let notify = |notice| {
            let _ = notices.send(notice);
        };
        let mut events = watcher(guarded, watcher::Config::default().any_semantic())
            .default_backoff()
            .modify(|workflow| workflow.meta_mut().managed_fields = None)
            .boxed();
        let mut listing = HashMap::new();
        'watch: while let Some(event) = events.next().await {
            let to_controller = match event {
                Ok(Event::Apply(DeserializeGuard(Ok(workflow)))) => {
                    let key = ObjectRef::from_obj(&workflow);
                    writer.apply_watcher_event(&Event::Apply(workflow));
                    notify(Notice::Cleared(key.clone()));
                    store.get(&key).into_iter().collect()
                }
                Ok(Event::Apply(DeserializeGuard(Err(invalid)))) => {
                    let bad = DeserializeGuard(Err(invalid));
                    let key = malformed::key(&bad);
                    if let Some(good) = store.get(&key) {
                        writer.apply_watcher_event(&Event::Delete((*good).clone()));
                        engine.send(Command::Unregister(key));
                    }
                    notify(Notice::Bad(Box::new(bad)));
                    Vec::new()
                }
                Ok(Event::Delete(workflow)) => {
                    let key = malformed::key(&workflow);
                    if let Some(good) = store.get(&key) {
                        writer.apply_watcher_event(&Event::Delete((*good).clone()));
                    }
                    engine.send(Command::Deleted { workflow: key.clone(), uid: workflow.uid() });
                    notify(Notice::Cleared(key));
                    Vec::new()
                }
                Ok(Event::Init) => {
                    writer.apply_watcher_event(&Event::Init);
                    listing.clear();
                    Vec::new()
                }
                Ok(Event::InitApply(DeserializeGuard(Ok(workflow)))) => {
                    listing.insert(ObjectRef::from_obj(&workflow), workflow.uid());
                    writer.apply_watcher_event(&Event::InitApply(workflow));
                    Vec::new()
                }
                Ok(Event::InitApply(bad)) => {
                    notify(Notice::Bad(Box::new(bad)));
                    Vec::new()
                }
                Ok(Event::InitDone) => {
                    writer.apply_watcher_event(&Event::InitDone);
                    engine.send(Command::Listed(std::mem::take(&mut listing)));
                    store.state()
                }
                Err(source) => {
                    let error = Error::WorkflowWatch(source);
                    tracing::warn!(%error, "Workflow watch error; the watcher retries");
                    metrics.error(&error);
                    Vec::new()
                }
            };
            for workflow in to_controller {
                if applied.send(workflow).await.is_err() {
                    break 'watch; // the controller stopped
                }
            }
        }
    }
}
