//! Trigger watches (DESIGN.md §6): one metadata-only watch per distinct (kind, namespace) across
//! all Workflows, and one engine task that matches what the watches see to the Workflows' triggers
//! with the pure rules of [`decide`], creates the Workplans and records what it saw in each
//! Workflow's status.
//!
//! Everything runs through the engine task one message at a time, so the per-Workflow records
//! never race. A fire creates its Workplan (deterministic name: a replay gets AlreadyExists)
//! before the record is saved, so a crash in between fires again into the same name instead of
//! losing the event. That also lets saves wait: while more messages are queued, the changes to
//! each Workflow's record accumulate and are saved in one status patch once the queue is empty,
//! so a burst of trigger events costs one write per Workflow instead of one per event, and the
//! next event's Workplan is not held up behind the previous event's save.

pub mod decide;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{GroupVersionKind, PartialObjectMeta};
use kube::discovery::{Scope, pinned_kind};
use kube::runtime::WatchStreamExt;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::{self, watcher};
use kube::{Client, Resource, ResourceExt};
use shared_types::planner;
use shared_types::{TriggerEvent, Workflow, Workplan};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::metrics::Metrics;
use decide::{Memory, Outcome, Rule, Seen, WatchKey};

/// What the Workflow controller tells the engine.
#[derive(Debug)]
pub enum Command {
    /// Serve this (valid) Workflow's triggers; sent on every reconcile.
    Register { workflow: Arc<Workflow>, rules: Vec<Rule> },
    /// Stop serving it (invalid).
    Unregister(ObjectRef<Workflow>),
    /// It was deleted: stop serving it if it is still the same object (a Workflow re-created
    /// under the same name has another uid).
    Deleted { workflow: ObjectRef<Workflow>, uid: Option<String> },
}

/// A handle to the engine task.
#[derive(Clone)]
pub struct Engine {
    commands: mpsc::UnboundedSender<Command>,
}

impl Engine {
    /// Starts the engine; it stops when every handle is dropped or `shutdown` fires.
    pub fn start(
        client: Client,
        recorder: Recorder,
        metrics: Arc<Metrics>,
        cache: Store<Workflow>,
        shutdown: plumbing::Shutdown,
    ) -> (Engine, JoinHandle<()>) {
        let (commands, receiver) = mpsc::unbounded_channel();
        let (events_tx, events) = mpsc::unbounded_channel();
        let state = EngineState {
            client,
            recorder,
            metrics,
            workflows: HashMap::new(),
            watches: HashMap::new(),
            events_tx,
            cache,
            unsaved: HashMap::new(),
        };
        let task = tokio::spawn(state.run(receiver, events, shutdown));
        (Engine { commands }, task)
    }

    /// Tells the engine about deleted Workflows as soon as the API server reports them: the
    /// controller never reconciles a deleted Workflow (it has no finalizer).
    pub fn watch_deletions(&self, workflows: Api<PartialObjectMeta<Workflow>>) -> JoinHandle<()> {
        let commands = self.commands.clone();
        tokio::spawn(async move {
            let mut stream = watcher(workflows, watcher::Config::default()).default_backoff().boxed();
            while let Some(event) = stream.next().await {
                if let Ok(watcher::Event::Delete(object)) = event {
                    let workflow =
                        ObjectRef::new(&object.name_any()).within(&object.namespace().unwrap_or_default());
                    if commands.send(Command::Deleted { workflow, uid: object.uid() }).is_err() {
                        return; // the engine stopped
                    }
                }
            }
        })
    }

    /// Sends a command; a stopped engine (shutdown) ignores it.
    pub fn send(&self, command: Command) {
        let _ = self.commands.send(command);
    }
}

/// What a watch task reports.
#[derive(Debug)]
enum WatchEvent {
    Listed(WatchKey, Vec<Seen>),
    Applied(WatchKey, Seen),
    Deleted(WatchKey, Seen),
}

struct Served {
    workflow: Arc<Workflow>,
    rules: Vec<Rule>,
    memory: Memory,
}

struct WatchState {
    task: JoinHandle<()>,
    /// The watch's objects by uid, once its first listing arrived.
    objects: Option<BTreeMap<String, Seen>>,
}

struct EngineState {
    client: Client,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    workflows: HashMap<ObjectRef<Workflow>, Served>,
    watches: HashMap<WatchKey, WatchState>,
    events_tx: mpsc::UnboundedSender<WatchEvent>,
    /// The Workflow controller's cache: which Workflows still exist.
    cache: Store<Workflow>,
    /// Record changes not saved yet, by Workflow (see the module docs).
    unsaved: HashMap<ObjectRef<Workflow>, Outcome>,
}

impl EngineState {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut events: mpsc::UnboundedReceiver<WatchEvent>,
        shutdown: plumbing::Shutdown,
    ) {
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.command(command).await,
                    None => break,
                },
                Some(event) = events.recv() => self.event(event).await,
                _ = shutdown.requested() => break,
            }
            if commands.is_empty() && events.is_empty() {
                self.save_unsaved().await;
            }
        }
        self.save_unsaved().await;
        for (_, watch) in self.watches.drain() {
            watch.task.abort();
        }
    }

    async fn command(&mut self, command: Command) {
        match command {
            Command::Register { workflow, rules } => {
                let key = ObjectRef::from_obj(workflow.as_ref());
                let identities =
                    |rules: &[Rule]| rules.iter().map(|r| r.identity.clone()).collect::<Vec<_>>();
                let same_triggers = match self.workflows.get_mut(&key) {
                    // The same Workflow (not one re-created under its name) with the same
                    // triggers: only the object changes (suspend, the steps to plan).
                    Some(served) if served.workflow.uid() == workflow.uid() => {
                        let same = identities(&served.rules) == identities(&rules);
                        served.workflow = workflow.clone();
                        served.rules = rules.clone();
                        same
                    }
                    _ => {
                        // First sight (or a restart): the status holds what was recorded. Later
                        // the engine's memory is newer than any status the controller caches.
                        let memory = memory_from_status(&workflow);
                        self.workflows.insert(
                            key.clone(),
                            Served { workflow: workflow.clone(), rules: rules.clone(), memory },
                        );
                        false
                    }
                };
                if !same_triggers {
                    let served = self.workflows.get_mut(&key).expect("registered above");
                    let outcome = decide::retain(&served.rules, &mut served.memory);
                    self.act(&key, outcome).await;
                    let keys: BTreeSet<WatchKey> = rules.iter().map(|r| r.key.clone()).collect();
                    for watch_key in keys {
                        self.ensure_watch(&watch_key);
                        if let Some(objects) = self.watches[&watch_key].objects.as_ref() {
                            let listed: Vec<Seen> = objects.values().cloned().collect();
                            let served = self.workflows.get_mut(&key).expect("registered above");
                            let outcome =
                                decide::on_listed(&served.rules, &watch_key, &mut served.memory, &listed);
                            self.act(&key, outcome).await;
                        }
                    }
                }
            }
            Command::Unregister(key) => {
                self.workflows.remove(&key);
            }
            Command::Deleted { workflow, uid } => {
                if self.workflows.get(&workflow).is_some_and(|served| served.workflow.uid() == uid) {
                    tracing::info!(%workflow, "Workflow deleted: its triggers are no longer served");
                    self.workflows.remove(&workflow);
                }
            }
        }
        self.stop_unused_watches();
    }

    async fn event(&mut self, event: WatchEvent) {
        self.metrics.trigger_events.inc();
        let key = match &event {
            WatchEvent::Listed(key, _) | WatchEvent::Applied(key, _) | WatchEvent::Deleted(key, _) => {
                key.clone()
            }
        };
        let Some(watch) = self.watches.get_mut(&key) else { return };
        match &event {
            WatchEvent::Listed(_, listed) => {
                watch.objects = Some(listed.iter().map(|o| (o.uid.clone(), o.clone())).collect());
            }
            WatchEvent::Applied(_, object) => {
                watch.objects.get_or_insert_with(BTreeMap::new).insert(object.uid.clone(), object.clone());
            }
            WatchEvent::Deleted(_, object) => {
                watch.objects.get_or_insert_with(BTreeMap::new).remove(&object.uid);
            }
        }
        // A deleted Workflow is not reconciled again (it has no finalizer): the controller's cache
        // tells the engine it is gone (or re-created: another uid under the same name).
        let cache = &self.cache;
        let gone: Vec<ObjectRef<Workflow>> = self
            .workflows
            .iter()
            .filter(|(k, s)| cache.get(k).is_none_or(|cached| cached.uid() != s.workflow.uid()))
            .map(|(k, _)| k.clone())
            .collect();
        if !gone.is_empty() {
            for workflow in gone {
                tracing::info!(%workflow, "Workflow deleted: its triggers are no longer served");
                self.workflows.remove(&workflow);
            }
            self.stop_unused_watches();
        }
        let interested: Vec<ObjectRef<Workflow>> = self
            .workflows
            .iter()
            .filter(|(_, s)| s.rules.iter().any(|r| r.key == key))
            .map(|(k, _)| k.clone())
            .collect();
        for workflow in interested {
            let served = self.workflows.get_mut(&workflow).expect("collected above");
            let outcome = match &event {
                WatchEvent::Listed(_, listed) => {
                    decide::on_listed(&served.rules, &key, &mut served.memory, listed)
                }
                WatchEvent::Applied(_, object) => {
                    decide::on_applied(&served.rules, &key, &mut served.memory, object)
                }
                WatchEvent::Deleted(_, object) => {
                    decide::on_deleted(&served.rules, &key, &mut served.memory, object)
                }
            };
            self.act(&workflow, outcome).await;
        }
    }

    /// Carries out a decision: create the Workplans, then save the record.
    async fn act(&mut self, key: &ObjectRef<Workflow>, outcome: Outcome) {
        self.metrics.trigger_deduplicated.inc_by(outcome.deduplicated);
        let Some(served) = self.workflows.get(key) else { return };
        let workflow = served.workflow.clone();
        for fire in &outcome.fires {
            self.metrics.trigger_fired.inc();
            if workflow.spec.suspend {
                self.metrics.trigger_suspended.inc();
                continue;
            }
            let trigger = TriggerEvent {
                event: fire.event,
                api_version: Some(fire.object.api_version.clone()),
                kind: Some(fire.object.kind.clone()),
                namespace: fire.object.namespace.clone(),
                name: Some(fire.object.name.clone()),
                uid: Some(fire.uid.clone()),
                generation: fire.object.generation,
                resource_version: fire.object.resource_version.clone(),
                run: None,
            };
            create_workplan(&self.client, &self.recorder, &self.metrics, &workflow, trigger).await;
        }
        if outcome.changed() {
            let unsaved = self.unsaved.entry(key.clone()).or_default();
            unsaved.recorded.extend(outcome.recorded);
            unsaved.removed.extend(outcome.removed);
            unsaved.baselined |= outcome.baselined;
        }
    }

    /// Saves the record changes accumulated since the last save, one patch per Workflow.
    async fn save_unsaved(&mut self) {
        for (key, outcome) in std::mem::take(&mut self.unsaved) {
            let Some(served) = self.workflows.get(&key) else { continue };
            match save_memory(&self.client, &served.workflow, &served.memory, &outcome).await {
                Ok(()) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    tracing::debug!(workflow = %key, "Workflow deleted: no longer served");
                    self.workflows.remove(&key);
                    self.stop_unused_watches();
                }
                Err(e) => {
                    tracing::warn!(workflow = %key, error = %e, "could not save the trigger record; it is saved with the next change");
                    self.metrics.errors.with_label_values(&["save_record"]).inc();
                }
            }
        }
    }

    fn ensure_watch(&mut self, key: &WatchKey) {
        if self.watches.contains_key(key) {
            return;
        }
        tracing::info!(?key, "starting trigger watch");
        let task = tokio::spawn(run_watch(
            self.client.clone(),
            key.clone(),
            self.events_tx.clone(),
            self.metrics.clone(),
        ));
        self.watches.insert(key.clone(), WatchState { task, objects: None });
        self.metrics.trigger_watches.set(self.watches.len() as i64);
    }

    fn stop_unused_watches(&mut self) {
        let used: BTreeSet<&WatchKey> =
            self.workflows.values().flat_map(|s| s.rules.iter().map(|r| &r.key)).collect();
        let unused: Vec<WatchKey> = self.watches.keys().filter(|k| !used.contains(k)).cloned().collect();
        for key in unused {
            tracing::info!(?key, "stopping trigger watch: no Workflow needs it");
            if let Some(watch) = self.watches.remove(&key) {
                watch.task.abort();
            }
        }
        self.metrics.trigger_watches.set(self.watches.len() as i64);
    }
}

fn memory_from_status(workflow: &Workflow) -> Memory {
    let status = workflow.status.clone().unwrap_or_default();
    Memory {
        observed: status.last_observed_resource_generation,
        baselined: status.baselined_triggers.into_iter().collect(),
    }
}

/// Creates one Workplan. AlreadyExists is success: the event was handled before (a replay).
/// Other failures are retried a few times, then reported as an Event on the Workflow.
pub async fn create_workplan(
    client: &Client,
    recorder: &Recorder,
    metrics: &Metrics,
    workflow: &Workflow,
    trigger: TriggerEvent,
) -> Option<String> {
    let event = trigger.event;
    let workplan = match planner::plan(workflow, trigger) {
        Ok(workplan) => workplan,
        Err(invalid) => {
            // The controller validated it; a Workflow changed since then is re-validated there.
            tracing::warn!(workflow = %workflow.name_any(), %invalid, "not creating a Workplan for an invalid Workflow");
            return None;
        }
    };
    let name = workplan.name_any();
    let api: Api<Workplan> = Api::namespaced(client.clone(), &workflow.namespace().unwrap_or_default());
    let mut delay = Duration::from_millis(200);
    for attempt in 1..=5 {
        match api.create(&PostParams::default(), &workplan).await {
            Ok(_) => {
                metrics.workplans_created.inc();
                tracing::info!(workflow = %workflow.name_any(), workplan = %name, event = event.as_str(), "created Workplan");
                // The Event is for people: publish it beside the next event's work instead of
                // holding the engine's one-at-a-time loop for another round trip.
                let note = format!("Created Workplan {name} ({})", event.as_str());
                let (recorder, workflow) = (recorder.clone(), workflow.clone());
                tokio::spawn(async move {
                    publish(&recorder, &workflow, EventType::Normal, "WorkplanCreated", note).await
                });
                return Some(name);
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                metrics.workplans_existing.inc();
                return Some(name);
            }
            Err(e) => {
                tracing::warn!(workplan = %name, attempt, error = %e, "creating Workplan failed");
                metrics.errors.with_label_values(&["create_workplan"]).inc();
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
    let note = format!("Could not create Workplan {name} for a {} event", event.as_str());
    publish(recorder, workflow, EventType::Warning, "WorkplanFailed", note).await;
    None
}

/// Publishes a Kubernetes Event about `workflow`; failures are logged, never fatal.
pub async fn publish(recorder: &Recorder, workflow: &Workflow, type_: EventType, reason: &str, note: String) {
    let event =
        Event { type_, reason: reason.into(), note: Some(note), action: reason.into(), secondary: None };
    if let Err(e) = recorder.publish(&event, &workflow.object_ref(&())).await {
        tracing::debug!(error = %e, "could not publish an Event");
    }
}

/// Saves the changed part of the record with a JSON merge patch of the status.
async fn save_memory(
    client: &Client,
    workflow: &Workflow,
    memory: &Memory,
    outcome: &Outcome,
) -> kube::Result<()> {
    let mut observed = serde_json::Map::new();
    for uid in &outcome.recorded {
        if let Some(object) = memory.observed.get(uid) {
            observed.insert(uid.clone(), serde_json::to_value(object).expect("serializes"));
        }
    }
    for uid in &outcome.removed {
        if !memory.observed.contains_key(uid) {
            observed.insert(uid.clone(), serde_json::Value::Null);
        }
    }
    let mut status = serde_json::json!({ "lastObservedResourceGeneration": observed });
    if outcome.baselined {
        status["baselinedTriggers"] = serde_json::json!(memory.baselined);
    }
    let api: Api<Workflow> = Api::namespaced(client.clone(), &workflow.namespace().unwrap_or_default());
    api.patch_status(
        &workflow.name_any(),
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({ "status": status })),
    )
    .await
    .map(|_| ())
}

/// One watch: resolves the kind by discovery, then reports complete listings (first list and
/// every re-list) and single changes to the engine, restarting with back-off on errors.
async fn run_watch(
    client: Client,
    key: WatchKey,
    events: mpsc::UnboundedSender<WatchEvent>,
    metrics: Arc<Metrics>,
) {
    let (group, version) = match key.api_version.split_once('/') {
        Some((group, version)) => (group.to_string(), version.to_string()),
        None => (String::new(), key.api_version.clone()),
    };
    let gvk = GroupVersionKind::gvk(&group, &version, &key.kind);
    let mut delay = Duration::from_secs(1);
    let (resource, scope) = loop {
        match pinned_kind(&client, &gvk).await {
            Ok((resource, capabilities)) => break (resource, capabilities.scope),
            Err(e) => {
                // The kind may appear later (a CRD installed after the Workflow).
                tracing::warn!(?key, error = %e, "cannot resolve the trigger's kind; retrying");
                metrics.errors.with_label_values(&["discovery"]).inc();
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(60));
            }
        }
    };
    let api: Api<PartialObjectMeta<DynamicObject>> = match (&scope, &key.namespace) {
        (Scope::Namespaced, Some(namespace)) => Api::namespaced_with(client, namespace, &resource),
        _ => Api::all_with(client, &resource),
    };
    watch_objects(api, key, events, metrics).await;
}

async fn watch_objects(
    api: Api<PartialObjectMeta<DynamicObject>>,
    key: WatchKey,
    events: mpsc::UnboundedSender<WatchEvent>,
    metrics: Arc<Metrics>,
) {
    let mut stream = watcher(api, watcher::Config::default()).default_backoff().boxed();
    let mut listing = Vec::new();
    while let Some(event) = stream.next().await {
        let message = match event {
            Ok(watcher::Event::Init) => {
                listing.clear();
                continue;
            }
            Ok(watcher::Event::InitApply(object)) => {
                listing.push(seen(&object));
                continue;
            }
            Ok(watcher::Event::InitDone) => WatchEvent::Listed(key.clone(), std::mem::take(&mut listing)),
            Ok(watcher::Event::Apply(object)) => WatchEvent::Applied(key.clone(), seen(&object)),
            Ok(watcher::Event::Delete(object)) => WatchEvent::Deleted(key.clone(), seen(&object)),
            Err(e) => {
                tracing::warn!(?key, error = %e, "trigger watch error; the watcher retries");
                metrics.errors.with_label_values(&["watch"]).inc();
                continue;
            }
        };
        if events.send(message).is_err() {
            return; // the engine stopped
        }
    }
}

fn seen(object: &PartialObjectMeta<DynamicObject>) -> Seen {
    let meta = object.meta();
    Seen {
        uid: meta.uid.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        namespace: meta.namespace.clone(),
        labels: meta.labels.clone().unwrap_or_default(),
        generation: meta.generation,
        resource_version: meta.resource_version.clone(),
    }
}
