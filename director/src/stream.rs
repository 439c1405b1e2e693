//! The director's one Workflow watch, shared by the Workflow controller and the trigger engine.
//!
//! One watcher feeds one cache (the reflector's store, without managedFields: one entry per
//! writer, naming each recorded trigger object, never read; kubeci-bench, phase 6). Its events
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
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, watcher};
use shared_types::Workflow;

use crate::error::Error;
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
    pub async fn run(self, engine: Engine, metrics: Arc<Metrics>) {
        let Watch { api, writer, mut applied } = self;
        let store = writer.as_reader();
        let watch = watcher(api, watcher::Config::default().any_semantic())
            .default_backoff()
            .modify(|workflow| workflow.managed_fields_mut().clear());
        let mut events = reflector::reflector(writer, watch).boxed();
        let mut listing = HashMap::new();
        while let Some(event) = events.next().await {
            let to_controller = match event {
                Ok(watcher::Event::Apply(workflow)) => {
                    store.get(&ObjectRef::from_obj(&workflow)).into_iter().collect()
                }
                Ok(watcher::Event::Delete(workflow)) => {
                    engine.send(Command::Deleted {
                        workflow: ObjectRef::from_obj(&workflow),
                        uid: workflow.uid(),
                    });
                    Vec::new()
                }
                Ok(watcher::Event::Init) => {
                    listing.clear();
                    Vec::new()
                }
                Ok(watcher::Event::InitApply(workflow)) => {
                    listing.insert(ObjectRef::from_obj(&workflow), workflow.uid());
                    Vec::new()
                }
                Ok(watcher::Event::InitDone) => {
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
                    return; // the controller stopped
                }
            }
        }
    }
}
