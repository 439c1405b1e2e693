//! Trigger watches (DESIGN.md §6): one metadata-only watch per distinct (kind, namespace) across
//! all Workflows, and one engine task that matches what the watches report to the Workflows'
//! triggers with the pure rules of [`decide`], creates the Workplans and keeps each Workflow's
//! trigger record in its status.
//!
//! Everything runs through the engine task one message at a time, so the trigger records never
//! race. A fire creates its Workplan (deterministic name: a replay gets AlreadyExists) before the
//! record is saved, so a crash in between fires again into the same name instead of losing the
//! event. That also lets saves wait: while more messages are queued, the Workflows whose record
//! changed are only marked, and each is saved with one server-side apply once the queue is empty,
//! so a burst of trigger events costs one write per Workflow instead of one per event, and the
//! next event's Workplan is not held up behind the previous event's save.
//!
//! The engine learns that a Workflow is gone from the director's one Workflow watch only
//! ([`crate::stream`]): its Delete event, or its absence from a re-list.

pub mod decide;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::discovery::Scope;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::{self, watcher};
use kube::{Client, Resource, ResourceExt};
use plumbing::kit::{Backoff, Events, Kinds};
use shared_types::{EventKind, TriggerEvent, Workflow, Workplan};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::Error;
use crate::metrics::Metrics;
use decide::{Outcome, Rule, TriggerRecord, WatchKey, WatchedObject};

/// The field manager of the engine's server-side apply of the trigger record
/// (`lastObservedResourceGeneration`, `baselinedTriggers`).
pub const FIELD_MANAGER: &str = "kubeci-director-triggers";

/// What the engine is told: by the Workflow controller (`Register`, `Unregister`) and by the
/// Workflow watch (`Deleted`, `Listed`).
#[derive(Debug)]
pub enum Command {
    /// Serve this (valid) Workflow's triggers; sent on every reconcile.
    Register { workflow: Arc<Workflow>, rules: Vec<Rule> },
    /// Stop serving it: the controller found it invalid (not a deletion).
    Unregister(ObjectRef<Workflow>),
    /// The Workflow watch's Delete event: stop serving it if it is still the same object (a
    /// Workflow re-created under the same name has another uid).
    Deleted { workflow: ObjectRef<Workflow>, uid: Option<String> },
    /// The Workflow watch listed every Workflow (its first list, or a re-list): these exist, by
    /// uid; any other served Workflow was deleted while the watch was away.
    Listed(HashMap<ObjectRef<Workflow>, Option<String>>),
}

/// A handle to the engine task.
#[derive(Clone)]
pub struct Engine {
    commands: mpsc::UnboundedSender<Command>,
}

/// What the engine and the controller share to create Workplans and report on them.
#[derive(Clone)]
pub struct Shared {
    pub client: Client,
    pub events: Events,
    pub metrics: Arc<Metrics>,
    /// Trigger kinds resolved by discovery.
    pub kinds: Arc<Kinds>,
}

impl Engine {
    /// Starts the engine; it stops when every handle is dropped or `shutdown` fires.
    /// `workflows` is the Workflow watch's cache (see [`Command::Register`] in `command`).
    pub fn start(
        shared: Shared,
        workflows: Store<Workflow>,
        shutdown: plumbing::Shutdown,
    ) -> (Engine, JoinHandle<()>) {
        let (commands, receiver) = mpsc::unbounded_channel();
        let (watch_tx, watch_events) = mpsc::unbounded_channel();
        let state = EngineState {
            shared,
            workflows: HashMap::new(),
            watches: HashMap::new(),
            watch_tx,
            cache: workflows,
            unsaved: HashSet::new(),
        };
        let task = tokio::spawn(state.run(receiver, watch_events, shutdown));
        (Engine { commands }, task)
    }

    /// Sends a command; a stopped engine (shutdown) ignores it.
    pub fn send(&self, command: Command) {
        let _ = self.commands.send(command);
    }
}

/// What a trigger watch task reports.
#[derive(Debug)]
enum WatchEvent {
    Listed(WatchKey, Vec<WatchedObject>),
    Applied(WatchKey, WatchedObject),
    Deleted(WatchKey, WatchedObject),
}

struct Served {
    workflow: Arc<Workflow>,
    rules: Vec<Rule>,
    record: TriggerRecord,
}

struct WatchState {
    task: JoinHandle<()>,
    /// The watch's objects by uid, once its first listing arrived.
    objects: Option<BTreeMap<String, WatchedObject>>,
}

struct EngineState {
    shared: Shared,
    workflows: HashMap<ObjectRef<Workflow>, Served>,
    watches: HashMap<WatchKey, WatchState>,
    watch_tx: mpsc::UnboundedSender<WatchEvent>,
    /// The Workflow watch's cache.
    cache: Store<Workflow>,
    /// Workflows whose trigger record changed since it was last saved (see the module docs).
    unsaved: HashSet<ObjectRef<Workflow>>,
}

impl EngineState {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut watch_events: mpsc::UnboundedReceiver<WatchEvent>,
        shutdown: plumbing::Shutdown,
    ) {
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.command(command).await,
                    None => break,
                },
                Some(event) = watch_events.recv() => self.event(event).await,
                _ = shutdown.requested() => break,
            }
            if commands.is_empty() && watch_events.is_empty() {
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
            Command::Register { workflow, rules } => self.register(workflow, rules).await,
            Command::Unregister(key) => {
                self.forget(&key);
            }
            Command::Deleted { workflow, uid } => {
                if self.workflows.get(&workflow).is_some_and(|served| served.workflow.uid() == uid) {
                    tracing::info!(%workflow, "Workflow deleted: its triggers are no longer served");
                    self.forget(&workflow);
                }
            }
            Command::Listed(existing) => {
                let gone: Vec<ObjectRef<Workflow>> = self
                    .workflows
                    .iter()
                    .filter(|(key, served)| {
                        existing.get(*key).is_none_or(|uid| *uid != served.workflow.uid())
                    })
                    .map(|(key, _)| key.clone())
                    .collect();
                for workflow in gone {
                    tracing::info!(%workflow, "Workflow deleted while the watch was away: its triggers are no longer served");
                    self.forget(&workflow);
                }
            }
        }
        self.stop_unused_watches();
    }

    fn forget(&mut self, workflow: &ObjectRef<Workflow>) {
        self.workflows.remove(workflow);
        self.unsaved.remove(workflow);
    }

    async fn register(&mut self, workflow: Arc<Workflow>, rules: Vec<Rule>) {
        let key = ObjectRef::from_obj(workflow.as_ref());
        // The controller reconciles a copy from the Workflow watch's cache; by the time it
        // arrives here the watch may have reported the Workflow deleted (this queue then holds
        // the Delete before this Register) and dropped it from the cache. Such a Register is
        // stale: serving it would outlive the one Delete the engine gets.
        if self.cache.get(&key).is_none_or(|cached| cached.uid() != workflow.uid()) {
            tracing::debug!(workflow = %key, "ignoring the registration of a Workflow the watch no longer holds");
            return;
        }
        let identities = |rules: &[Rule]| rules.iter().map(|r| r.identity.clone()).collect::<Vec<_>>();
        let same_triggers = match self.workflows.get_mut(&key) {
            // The same Workflow (not one re-created under its name) with the same triggers:
            // only the object changes (suspend, the steps to plan).
            Some(served) if served.workflow.uid() == workflow.uid() => {
                let same = identities(&served.rules) == identities(&rules);
                served.workflow = workflow.clone();
                served.rules = rules.clone();
                same
            }
            _ => {
                // First sight (or a restart): the status holds the trigger record. Later the
                // engine's record is newer than any status the controller caches.
                let record = TriggerRecord::from_status(workflow.status.as_ref());
                self.unsaved.remove(&key);
                self.workflows
                    .insert(key.clone(), Served { workflow: workflow.clone(), rules: rules.clone(), record });
                false
            }
        };
        if same_triggers {
            return;
        }
        let served = self.workflows.get_mut(&key).expect("registered above");
        let outcome = decide::retain(&served.rules, &mut served.record);
        self.act(&key, outcome).await;
        let keys: BTreeSet<WatchKey> = rules.iter().map(|r| r.key.clone()).collect();
        for watch_key in keys {
            self.ensure_watch(&watch_key);
            if let Some(objects) = self.watches[&watch_key].objects.as_ref() {
                let listed: Vec<WatchedObject> = objects.values().cloned().collect();
                let served = self.workflows.get_mut(&key).expect("registered above");
                let outcome = decide::on_listed(&served.rules, &watch_key, &mut served.record, &listed);
                self.act(&key, outcome).await;
            }
        }
    }

    async fn event(&mut self, event: WatchEvent) {
        self.handle(event).await;
        // Counted once handled (its Workplans created): a test that sees the count advance knows
        // what the event started exists.
        self.shared.metrics.trigger_events.inc();
    }

    async fn handle(&mut self, event: WatchEvent) {
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
        let interested: Vec<ObjectRef<Workflow>> = self
            .workflows
            .iter()
            .filter(|(_, s)| s.rules.iter().any(|r| r.key == key))
            .map(|(k, _)| k.clone())
            .collect();
        for workflow in interested {
            let served = self.workflows.get_mut(&workflow).expect("collected above");
            let (rules, record) = (&served.rules, &mut served.record);
            let outcome = match &event {
                WatchEvent::Listed(_, listed) => decide::on_listed(rules, &key, record, listed),
                WatchEvent::Applied(_, object) => decide::on_applied(rules, &key, record, object),
                WatchEvent::Deleted(_, object) => decide::on_deleted(rules, &key, record, object),
            };
            self.act(&workflow, outcome).await;
        }
    }

    /// Carries out a decision: create the Workplans, then mark the record for saving.
    async fn act(&mut self, key: &ObjectRef<Workflow>, outcome: Outcome) {
        let metrics = &self.shared.metrics;
        metrics.trigger_deduplicated.inc_by(outcome.deduplicated);
        let Some(served) = self.workflows.get(key) else { return };
        let workflow = served.workflow.clone();
        for fire in &outcome.fires {
            metrics.trigger_fired.inc();
            if workflow.spec.suspend {
                metrics.trigger_suspended.inc();
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
            match shared_types::planner::plan(&workflow, trigger) {
                Ok(workplan) => {
                    create_workplan(&self.shared, &workflow, &workplan, fire.event).await;
                }
                // The controller validated it; a Workflow changed since then is re-validated there.
                Err(invalid) => {
                    tracing::warn!(workflow = %key, %invalid, "not creating a Workplan for an invalid Workflow")
                }
            }
        }
        if outcome.changed() {
            self.unsaved.insert(key.clone());
        }
    }

    /// Saves the trigger records changed since the last save, one apply per Workflow.
    async fn save_unsaved(&mut self) {
        for key in std::mem::take(&mut self.unsaved) {
            let Some(served) = self.workflows.get(&key) else { continue };
            match save_record(&self.shared.client, &served.workflow, &served.record).await {
                Ok(()) => {}
                // Deleted: the Workflow watch's Delete event is on its way.
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    tracing::debug!(workflow = %key, "Workflow gone before its trigger record was saved");
                }
                Err(source) => {
                    let error = Error::SaveRecord { workflow: key.to_string(), source };
                    tracing::warn!(%error, "could not save the trigger record; it is saved with the next change");
                    self.shared.metrics.error(&error);
                }
            }
        }
    }

    fn ensure_watch(&mut self, key: &WatchKey) {
        if self.watches.contains_key(key) {
            return;
        }
        tracing::info!(?key, "starting trigger watch");
        let task = tokio::spawn(run_watch(self.shared.clone(), key.clone(), self.watch_tx.clone()));
        self.watches.insert(key.clone(), WatchState { task, objects: None });
        self.shared.metrics.trigger_watches.set(self.watches.len() as i64);
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
        self.shared.metrics.trigger_watches.set(self.watches.len() as i64);
    }
}

/// Creates one Workplan (field manager `kubeci-director`). AlreadyExists is success: the event
/// was handled before (a replay). Other failures are retried a few times, then reported as an
/// Event on the Workflow. Returns the Workplan's name when it exists.
pub async fn create_workplan(
    shared: &Shared,
    workflow: &Workflow,
    workplan: &Workplan,
    event: EventKind,
) -> Option<String> {
    let name = workplan.name_any();
    let api: Api<Workplan> =
        Api::namespaced(shared.client.clone(), &workflow.namespace().unwrap_or_default());
    let params = PostParams { field_manager: Some(crate::FIELD_MANAGER.into()), ..PostParams::default() };
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    for attempt in 1..=5 {
        match api.create(&params, workplan).await {
            Ok(_) => {
                shared.metrics.workplans_created.inc();
                tracing::info!(workflow = %workflow.name_any(), workplan = %name, event = event.as_str(), "created Workplan");
                // The Event is for people: publish it beside the next event's work instead of
                // holding the engine's one-at-a-time loop for another round trip.
                let note = format!("Created Workplan {name} ({})", event.as_str());
                let (events, workflow) = (shared.events.clone(), workflow.clone());
                tokio::spawn(async move { events.normal(&workflow, "WorkplanCreated", &note).await });
                return Some(name);
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                shared.metrics.workplans_existing.inc();
                return Some(name);
            }
            Err(source) => {
                let error = Error::CreateWorkplan { workplan: name.clone(), source };
                tracing::warn!(attempt, %error, "creating Workplan failed");
                shared.metrics.error(&error);
                backoff.wait().await;
            }
        }
    }
    let note = format!("Could not create Workplan {name} for a {} event", event.as_str());
    shared.events.warning(workflow, "WorkplanFailed", &note).await;
    None
}

/// The server-side apply of a Workflow's whole trigger record: the fields the engine's manager
/// owns. Whole, because an apply removes the fields its manager owned before and leaves out.
pub fn record_apply(workflow: &Workflow, record: &TriggerRecord) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": Workflow::api_version(&()),
        "kind": Workflow::kind(&()),
        "metadata": { "name": workflow.name_any() },
        "status": {
            "lastObservedResourceGeneration": record.objects,
            "baselinedTriggers": record.baselined,
        },
    })
}

async fn save_record(client: &Client, workflow: &Workflow, record: &TriggerRecord) -> kube::Result<()> {
    let api: Api<Workflow> = Api::namespaced(client.clone(), &workflow.namespace().unwrap_or_default());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch_status(&workflow.name_any(), &params, &Patch::Apply(record_apply(workflow, record)))
        .await
        .map(|_| ())
}

/// One trigger watch: resolves the kind by discovery (retrying with back-off: a CRD may be
/// installed after the Workflow), then reports complete listings (first list and every re-list)
/// and single changes to the engine; the watcher restarts with back-off on errors.
async fn run_watch(shared: Shared, key: WatchKey, events: mpsc::UnboundedSender<WatchEvent>) {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    let (resource, scope) = loop {
        match shared.kinds.resolve(&shared.client, &key.api_version, &key.kind).await {
            Ok(found) => break found,
            Err(source) => {
                let error =
                    Error::Discovery { api_version: key.api_version.clone(), kind: key.kind.clone(), source };
                tracing::warn!(?key, %error, "cannot resolve the trigger's kind; retrying");
                shared.metrics.error(&error);
                backoff.wait().await;
            }
        }
    };
    let client = shared.client.clone();
    let api: Api<PartialObjectMeta<DynamicObject>> = match (&scope, &key.namespace) {
        (Scope::Namespaced, Some(namespace)) => Api::namespaced_with(client, namespace, &resource),
        _ => Api::all_with(client, &resource),
    };
    watch_objects(api, key, events, shared.metrics).await;
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
                listing.push(watched(&object));
                continue;
            }
            Ok(watcher::Event::InitDone) => WatchEvent::Listed(key.clone(), std::mem::take(&mut listing)),
            Ok(watcher::Event::Apply(object)) => WatchEvent::Applied(key.clone(), watched(&object)),
            Ok(watcher::Event::Delete(object)) => WatchEvent::Deleted(key.clone(), watched(&object)),
            Err(source) => {
                let error = Error::TriggerWatch { watch: format!("{key:?}"), source };
                tracing::warn!(%error, "trigger watch error; the watcher retries");
                metrics.error(&error);
                continue;
            }
        };
        if events.send(message).is_err() {
            return; // the engine stopped
        }
    }
}

fn watched(object: &PartialObjectMeta<DynamicObject>) -> WatchedObject {
    let meta = object.meta();
    WatchedObject {
        uid: meta.uid.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        namespace: meta.namespace.clone(),
        labels: meta.labels.clone().unwrap_or_default(),
        generation: meta.generation,
        resource_version: meta.resource_version.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_is_applied_whole() {
        let mut workflow: Workflow = serde_yaml::from_str(shared_types::repo::SEED_WORKFLOW).unwrap();
        workflow.status = None;
        let mut record = TriggerRecord::default();
        record.baselined.insert("v1 ConfigMap ns/my-config {}".into());
        record.objects.insert(
            "u1".into(),
            shared_types::RecordedObject {
                api_version: "v1".into(),
                kind: "ConfigMap".into(),
                namespace: Some("ns".into()),
                name: "my-config".into(),
                generation: None,
                resource_version: Some("7".into()),
            },
        );
        let apply = record_apply(&workflow, &record);
        assert_eq!(
            apply,
            serde_json::json!({
                "apiVersion": "kube.ci/v1alpha1",
                "kind": "Workflow",
                "metadata": {"name": "my-workflow"},
                "status": {
                    "lastObservedResourceGeneration": {
                        "u1": {"apiVersion": "v1", "kind": "ConfigMap", "namespace": "ns", "name": "my-config", "resourceVersion": "7"}
                    },
                    "baselinedTriggers": ["v1 ConfigMap ns/my-config {}"],
                },
            })
        );
        // An empty record is applied too: it releases (and so removes) what the manager owned.
        let empty = record_apply(&workflow, &TriggerRecord::default());
        assert_eq!(
            empty["status"],
            serde_json::json!({"lastObservedResourceGeneration": {}, "baselinedTriggers": []})
        );
    }
}
