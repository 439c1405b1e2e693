//! Trigger watches (DESIGN.md §6): one metadata-only watch per distinct (kind, namespace) across
//! all Workflows, and one engine task that matches what the watches report to the Workflows'
//! triggers with the pure rules of [`decide`], keeps each Workflow's trigger record, and keeps its
//! runs that wait for their Workplan ([`pending`]).
//!
//! Everything that decides runs through the engine task one message at a time, so the trigger
//! records never race. A fired event joins its Workflow's queue of pending runs; the engine never
//! waits on a create: each Workflow with pending runs has at most one task of its own working on
//! the oldest one (a create, after the back-off of the failures before it, or a timer while a cap
//! holds it), which reports back. A run leaves the queue only once its Workplan exists (created,
//! or AlreadyExists: the deterministic name makes a replay find it). Until then the record saved
//! for the event's object is what it was before the event ([`pending::committed`]), so a director
//! that dies with runs pending decides them again from the saved record against the objects as
//! they are after the restart: one run for each object's latest version (the versions in
//! between are not observable), none for versions whose Workplan was created.
//!
//! Saves wait: while more messages are queued, the Workflows whose record (or pending runs)
//! changed are only marked, with the shards of the record that changed, and each is saved once
//! the queues are empty: the changed shards, then its status if what it shows changed
//! ([`crate::records`]). A burst of trigger events costs one write per changed shard instead of
//! one per event, and an event one small shard, whatever the number of matched objects.
//!
//! A Workflow's record is loaded by a task of its own when the engine first serves it (a list of
//! its TriggerRecord objects); until it is loaded the Workflow is not served, and a load that
//! fails is retried with back-off, so one Workflow's record never holds up another's events.
//!
//! The engine learns that a Workflow is gone from the director's one Workflow watch only
//! ([`crate::stream`]): its Delete event, or its absence from a re-list.

pub mod decide;
pub mod pending;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::PartialObjectMeta;
use kube::discovery::Scope;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::{self, watcher};
use kube::{Client, ResourceExt};
use plumbing::kit::{Backoff, Events, Kinds};
use shared_types::{TriggerEvent, Workflow, Workplan};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::Error;
use crate::metrics::Metrics;
use crate::records::{Loaded, RecordStatus, Records, shard_of};
use crate::workflow::Run;
use crate::workplans::{self, Guarded};
use decide::{Outcome, Rule, TriggerRecord, WatchKey, WatchedObject};
use pending::{Caps, Gate, Handled, Pending, Reason, Source};
use plumbing::kit::Synced;

pub use crate::records::FIELD_MANAGER;

/// How long a created Workplan not yet in the Workplan cache still counts as unfinished for
/// `concurrentRuns` (it shows up within a watch event's delay; this bounds one deleted before).
const UNSEEN_FOR: Duration = Duration::from_secs(30);

/// What the engine is told: by the Workflow controller (`Register`, `Unregister`) and by the
/// Workflow watch (`Deleted`, `Listed`).
#[derive(Debug)]
pub enum Command {
    /// Serve this (valid) Workflow's triggers, and start `own`: the Workflow's own runs whose
    /// Workplan the controller did not find (it sends them again until it finds them). Sent on
    /// every reconcile: also what wakes runs held by `concurrentRuns` once a Workplan finishes.
    Register { workflow: Arc<Workflow>, rules: Vec<Rule>, own: Vec<Run> },
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
    /// The caps of Workflows that set no `spec.limits`.
    pub caps: Caps,
    /// Where the trigger records are kept.
    pub records: Records,
}

impl Engine {
    /// Starts the engine; it stops when every handle is dropped or `shutdown` fires.
    /// `workflows` is the Workflow watch's cache (see [`Command::Register`] in `command`),
    /// `workplans` the Workplan watch's (for the caps; nothing starts before it has synced).
    pub fn start(
        shared: Shared,
        workflows: Store<Workflow>,
        workplans: Store<Guarded>,
        synced: Synced,
        shutdown: plumbing::Shutdown,
    ) -> (Engine, JoinHandle<()>) {
        let (commands, receiver) = mpsc::unbounded_channel();
        let (watch_tx, watch_events) = mpsc::unbounded_channel();
        let (progress, progress_rx) = mpsc::unbounded_channel();
        let synced = {
            let progress = progress.clone();
            tokio::spawn(async move {
                synced.wait().await;
                let _ = progress.send(Progress::WorkplansSynced);
            })
        };
        let state = EngineState {
            shared,
            workflows: HashMap::new(),
            loading: HashMap::new(),
            watches: HashMap::new(),
            watch_tx,
            progress,
            cache: workflows,
            workplans,
            workplans_synced: false,
            epochs: 0,
            unsaved: HashSet::new(),
        };
        let task = tokio::spawn(async move {
            state.run(receiver, watch_events, progress_rx, shutdown).await;
            synced.abort();
        });
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

/// What a Workflow's own task reports, and that the Workplan cache has synced.
enum Progress {
    /// A create of the oldest pending run of `workflow` (served as `epoch`) ended.
    Attempted {
        workflow: ObjectRef<Workflow>,
        epoch: u64,
        name: String,
        result: kube::Result<Created>,
    },
    /// The record of `workflow` (with this uid) was loaded, or could not be.
    Loaded {
        workflow: ObjectRef<Workflow>,
        uid: Option<String>,
        result: kube::Result<Loaded>,
    },
    /// A cap's wait is over.
    Wake {
        workflow: ObjectRef<Workflow>,
        epoch: u64,
    },
    WorkplansSynced,
}

/// How a Workplan came to exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Created {
    New,
    /// AlreadyExists: the event was handled before (a replay).
    Existing,
}

struct Served {
    workflow: Arc<Workflow>,
    rules: Vec<Rule>,
    /// Every decided event, pending runs included ([`pending::committed`] is what is saved).
    record: TriggerRecord,
    /// Tells this serving apart from an earlier one of the same name: a late report of a task
    /// of a forgotten Workflow is ignored.
    epoch: u64,
    /// Runs waiting for their Workplan, oldest first.
    queue: VecDeque<Pending>,
    /// The one task working on the queue's oldest run (a create, or a cap's timer).
    task: Option<JoinHandle<()>>,
    /// Why the oldest run waits, once something holds it.
    waiting: Option<(Reason, String)>,
    /// In a streak of failed creates (one Warning Event per streak).
    failing: bool,
    backoff: Backoff,
    /// When the runs of the last minute started (for `runsPerMinute`).
    starts: VecDeque<Instant>,
    /// Workplans created but not yet seen in the Workplan cache (for `concurrentRuns`).
    unseen: Vec<(String, Instant)>,
    /// Shards of the record whose saved form is behind.
    dirty_shards: BTreeSet<u32>,
    /// Objects per shard as last saved.
    counts: BTreeMap<u32, usize>,
    /// What the status showed when last saved; `None` until the first save of this serving,
    /// which clears what an earlier director left in `pendingRuns`.
    saved: Option<RecordStatus>,
}

impl Served {
    fn new(workflow: Arc<Workflow>, rules: Vec<Rule>, loaded: Loaded, epoch: u64) -> Served {
        let Loaded { record, counts, migrated } = loaded;
        // Migrated from the status: every shard is written before the status drops the old map.
        let dirty_shards = if migrated { record.shard_indices().collect() } else { BTreeSet::new() };
        Served {
            workflow,
            rules,
            record,
            epoch,
            queue: VecDeque::new(),
            task: None,
            waiting: None,
            failing: false,
            backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(30)),
            starts: VecDeque::new(),
            unseen: Vec::new(),
            dirty_shards,
            counts,
            saved: None,
        }
    }
}

/// A Workflow waiting for its record to load: the latest registration, kept until then.
struct Loading {
    uid: Option<String>,
    workflow: Arc<Workflow>,
    rules: Vec<Rule>,
    own: Vec<Run>,
    task: JoinHandle<()>,
    backoff: Backoff,
}

impl Drop for Loading {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

struct WatchState {
    task: JoinHandle<()>,
    /// The watch's objects by uid, once its first listing arrived.
    objects: Option<BTreeMap<Arc<str>, WatchedObject>>,
}

struct EngineState {
    shared: Shared,
    workflows: HashMap<ObjectRef<Workflow>, Served>,
    /// Workflows whose record is being loaded, before they are served.
    loading: HashMap<ObjectRef<Workflow>, Loading>,
    watches: HashMap<WatchKey, WatchState>,
    watch_tx: mpsc::UnboundedSender<WatchEvent>,
    progress: mpsc::UnboundedSender<Progress>,
    /// The Workflow watch's cache.
    cache: Store<Workflow>,
    /// The Workplan watch's cache.
    workplans: Store<Guarded>,
    workplans_synced: bool,
    epochs: u64,
    /// Workflows whose trigger record or pending runs changed since they were last saved (see
    /// the module docs).
    unsaved: HashSet<ObjectRef<Workflow>>,
}

impl EngineState {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut watch_events: mpsc::UnboundedReceiver<WatchEvent>,
        mut progress: mpsc::UnboundedReceiver<Progress>,
        shutdown: plumbing::Shutdown,
    ) {
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.command(command),
                    None => break,
                },
                Some(event) = watch_events.recv() => self.event(event),
                Some(report) = progress.recv() => self.progress(report),
                _ = shutdown.requested() => break,
            }
            if commands.is_empty() && watch_events.is_empty() && progress.is_empty() {
                self.save_unsaved().await;
            }
        }
        self.save_unsaved().await;
        for (_, watch) in self.watches.drain() {
            watch.task.abort();
        }
        self.workflows.clear(); // aborts their tasks
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Register { workflow, rules, own } => self.register(workflow, rules, own),
            Command::Unregister(key) => {
                self.forget(&key);
            }
            Command::Deleted { workflow, uid } => {
                if self.workflows.get(&workflow).is_some_and(|served| served.workflow.uid() == uid)
                    || self.loading.get(&workflow).is_some_and(|loading| loading.uid == uid)
                {
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
                    .chain(
                        self.loading
                            .iter()
                            .filter(|(key, loading)| existing.get(*key).is_none_or(|uid| *uid != loading.uid))
                            .map(|(key, _)| key.clone()),
                    )
                    .collect();
                for workflow in gone {
                    tracing::info!(%workflow, "Workflow deleted while the watch was away: its triggers are no longer served");
                    self.forget(&workflow);
                }
            }
        }
        self.stop_unused_watches();
    }

    /// Stops serving a Workflow: its pending runs go with it (a deleted Workflow's Workplans
    /// would be garbage-collected anyway; an invalid one's are decided again from its saved
    /// record once it is valid).
    fn forget(&mut self, workflow: &ObjectRef<Workflow>) {
        self.workflows.remove(workflow);
        self.loading.remove(workflow); // aborts its load
        self.unsaved.remove(workflow);
        self.count_pending();
    }

    fn register(&mut self, workflow: Arc<Workflow>, rules: Vec<Rule>, own: Vec<Run>) {
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
                // First sight (or a restart, or a Workflow re-created under its name): serve it
                // once its saved record is loaded. Later the engine's record is newer than any
                // saved one.
                self.workflows.remove(&key);
                self.unsaved.remove(&key);
                match self.loading.get_mut(&key) {
                    Some(loading) if loading.uid == workflow.uid() => {
                        (loading.workflow, loading.rules, loading.own) = (workflow, rules, own);
                    }
                    _ => {
                        let task = self.load(&key, &workflow, Duration::ZERO);
                        let backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
                        let uid = workflow.uid();
                        self.loading.insert(key, Loading { uid, workflow, rules, own, task, backoff });
                    }
                }
                return;
            }
        };
        self.serve(&key, rules, own, same_triggers);
    }

    /// Starts the task that loads the record of `workflow` after `delay`.
    fn load(&self, key: &ObjectRef<Workflow>, workflow: &Arc<Workflow>, delay: Duration) -> JoinHandle<()> {
        let (records, progress) = (self.shared.records.clone(), self.progress.clone());
        let (key, workflow) = (key.clone(), workflow.clone());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let result = records.load(&workflow).await;
            let _ = progress.send(Progress::Loaded { workflow: key, uid: workflow.uid(), result });
        })
    }

    /// The record of a Workflow waiting in `loading` was loaded (or not: tried again later).
    fn loaded(&mut self, key: ObjectRef<Workflow>, uid: Option<String>, result: kube::Result<Loaded>) {
        if self.loading.get(&key).is_none_or(|loading| loading.uid != uid) {
            return; // forgotten, or another Workflow of the name
        }
        let loaded = match result {
            Ok(loaded) => loaded,
            Err(source) => {
                let loading = self.loading.get_mut(&key).expect("checked above");
                let delay = loading.backoff.next_delay();
                let error = Error::LoadRecord { workflow: key.to_string(), source };
                tracing::warn!(%error, ?delay, "could not load the trigger record; its triggers wait until it loads");
                self.shared.metrics.error(&error);
                let workflow = loading.workflow.clone();
                let task = self.load(&key, &workflow, delay);
                self.loading.get_mut(&key).expect("checked above").task = task;
                return;
            }
        };
        let loading = self.loading.remove(&key).expect("checked above");
        let (workflow, rules, own) = (loading.workflow.clone(), loading.rules.clone(), loading.own.clone());
        if loaded.migrated {
            tracing::info!(workflow = %key, objects = loaded.record.len(), "moving the trigger record out of the Workflow's status");
        }
        self.epochs += 1;
        self.workflows.insert(key.clone(), Served::new(workflow, rules.clone(), loaded, self.epochs));
        // The first save writes the status: it clears what an earlier director left in
        // pendingRuns, and the old form of the record.
        self.unsaved.insert(key.clone());
        self.serve(&key, rules, own, false);
        self.stop_unused_watches();
    }

    /// Serves a registered Workflow whose record is loaded: its own runs, and, unless its
    /// triggers are the ones it is served with already, the watches they need and what those
    /// have listed.
    fn serve(&mut self, key: &ObjectRef<Workflow>, rules: Vec<Rule>, own: Vec<Run>, same_triggers: bool) {
        let key = key.clone();
        self.own_runs(&key, own);
        if !same_triggers {
            let served = self.workflows.get_mut(&key).expect("registered above");
            let outcome = decide::retain(&served.rules, &mut served.record);
            self.act(&key, outcome, None);
            let keys: BTreeSet<WatchKey> = rules.iter().map(|r| r.key.clone()).collect();
            for watch_key in keys {
                self.ensure_watch(&watch_key);
                if let Some(objects) = self.watches[&watch_key].objects.as_ref() {
                    let listed: Vec<WatchedObject> = objects.values().cloned().collect();
                    let served = self.workflows.get_mut(&key).expect("registered above");
                    let outcome = decide::on_listed(&served.rules, &watch_key, &mut served.record, &listed);
                    self.act(&key, outcome, None);
                }
            }
        }
        self.dispatch(&key);
    }

    /// The Workflow's own runs are what the controller last asked for: one it no longer asks
    /// for (a newer generation superseded it, or its Workplan was found) leaves the queue unless
    /// its create is under way.
    fn own_runs(&mut self, key: &ObjectRef<Workflow>, own: Vec<Run>) {
        let Some(served) = self.workflows.get_mut(key) else { return };
        let wanted: HashSet<String> = own.iter().map(|run| run.workplan.name_any()).collect();
        let busy = served.task.as_ref().and_then(|_| served.queue.front().map(Pending::name));
        served
            .queue
            .retain(|p| p.source != Source::Own || wanted.contains(&p.name()) || busy == Some(p.name()));
        let queued: HashSet<String> = served.queue.iter().map(Pending::name).collect();
        for run in own {
            if !queued.contains(&run.workplan.name_any()) {
                served.queue.push_back(Pending {
                    workplan: run.workplan,
                    event: run.event,
                    since: Timestamp::now(),
                    source: Source::Own,
                    handled: None,
                });
            }
        }
        self.count_pending();
    }

    fn event(&mut self, event: WatchEvent) {
        // Counted once handled and its Workplans exist: a test that sees the count advance knows
        // that what the event started exists. Each pending run it started holds a clone.
        let handled = Arc::new(Handled(self.shared.metrics.trigger_events.clone()));
        self.handle(event, &handled);
    }

    fn handle(&mut self, event: WatchEvent, handled: &Arc<Handled>) {
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
            self.act(&workflow, outcome, Some(handled));
        }
    }

    /// Carries out a decision: each fire joins the Workflow's pending runs; the rest of the
    /// record's changes are marked for saving.
    fn act(&mut self, key: &ObjectRef<Workflow>, outcome: Outcome, handled: Option<&Arc<Handled>>) {
        let metrics = &self.shared.metrics;
        metrics.trigger_deduplicated.inc_by(outcome.deduplicated);
        let Some(served) = self.workflows.get_mut(key) else { return };
        let workflow = served.workflow.clone();
        let mut queued = HashSet::new();
        for fire in outcome.fires.iter().cloned() {
            metrics.trigger_fired.inc();
            if workflow.spec.suspend {
                metrics.trigger_suspended.inc();
                continue;
            }
            let trigger = TriggerEvent {
                event: fire.event,
                api_version: Some(fire.object.api_version.to_string()),
                kind: Some(fire.object.kind.to_string()),
                namespace: fire.object.namespace.as_deref().map(str::to_string),
                name: Some(fire.object.name.to_string()),
                uid: Some(fire.uid.to_string()),
                generation: fire.object.generation,
                resource_version: fire.object.resource_version.as_deref().map(str::to_string),
                run: None,
            };
            match shared_types::planner::plan(&workflow, trigger) {
                Ok(workplan) => {
                    queued.insert(fire.uid.clone());
                    served.queue.push_back(Pending {
                        workplan,
                        event: fire.event,
                        since: Timestamp::now(),
                        source: Source::Trigger { uid: fire.uid, previous: fire.previous },
                        handled: handled.cloned(),
                    });
                }
                // The controller validated it; a Workflow changed since then is re-validated there.
                Err(invalid) => {
                    tracing::warn!(workflow = %key, %invalid, "not creating a Workplan for an invalid Workflow")
                }
            }
        }
        // A fired object's record advances only with its run; anything else changes it now.
        let changed = outcome.recorded.iter().chain(&outcome.removed).filter(|uid| !queued.contains(*uid));
        served.dirty_shards.extend(changed.map(|uid| shard_of(uid)));
        if outcome.changed() {
            self.unsaved.insert(key.clone());
        }
        self.count_pending();
        self.dispatch(key);
    }

    /// Starts the Workflow's task on its oldest pending run, unless one is at work already, the
    /// Workplan cache has not synced (the caps count from it), or a cap holds the run.
    fn dispatch(&mut self, key: &ObjectRef<Workflow>) {
        let Some(served) = self.workflows.get_mut(key) else { return };
        if served.task.is_some() || !self.workplans_synced {
            return;
        }
        if served.queue.is_empty() {
            served.waiting = None;
            return;
        }
        if served.workflow.spec.suspend {
            // Suspended: nothing new starts; what was pending is dropped like every fire while
            // suspended, and the record advances past it.
            for run in served.queue.drain(..) {
                if let Source::Trigger { uid, .. } = &run.source {
                    self.shared.metrics.trigger_suspended.inc();
                    served.dirty_shards.insert(shard_of(uid));
                }
            }
            served.waiting = None;
            self.unsaved.insert(key.clone());
            self.count_pending();
            return;
        }
        let caps = Caps::of(&served.workflow, self.shared.caps);
        let cached = workplans::of_workflow(&self.workplans, &served.workflow);
        let seen: HashSet<String> = cached.iter().map(|wp| wp.name_any()).collect();
        served.unseen.retain(|(name, at)| !seen.contains(name) && at.elapsed() < UNSEEN_FOR);
        let unfinished = cached.iter().filter(|wp| workplans::unfinished(wp)).count() + served.unseen.len();
        let now = Instant::now();
        served.starts.retain(|at| now.duration_since(*at) < pending::RATE_WINDOW);
        let (epoch, workflow) = (served.epoch, key.clone());
        let progress = self.progress.clone();
        let held = match pending::gate(caps, unfinished, &served.starts, now) {
            Gate::Concurrency => Some((
                Reason::ConcurrencyLimited,
                format!(
                    "{unfinished} Workplans unfinished, at most {} at once (spec.limits.concurrentRuns)",
                    caps.concurrent_runs
                ),
            )),
            Gate::Rate(after) => {
                served.task = Some(tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    let _ = progress.send(Progress::Wake { workflow, epoch });
                }));
                Some((
                    Reason::RateLimited,
                    format!(
                        "{} runs started in the last minute, at most {} (spec.limits.runsPerMinute)",
                        served.starts.len(),
                        caps.runs_per_minute
                    ),
                ))
            }
            Gate::Open => {
                let delay = if served.failing { served.backoff.next_delay() } else { Duration::ZERO };
                let head = served.queue.front().expect("not empty");
                let (workplan, name) = (head.workplan.clone(), head.name());
                let client = self.shared.client.clone();
                served.task = Some(tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let result = create(&client, &workplan).await;
                    let _ = progress.send(Progress::Attempted { workflow, epoch, name, result });
                }));
                None
            }
        };
        if let Some(held) = held {
            // A cap replaces a create failure as the reason: the create is not being tried.
            served.waiting = Some(held);
            self.unsaved.insert(key.clone());
        }
    }

    fn progress(&mut self, report: Progress) {
        match report {
            Progress::WorkplansSynced => {
                self.workplans_synced = true;
                let keys: Vec<ObjectRef<Workflow>> = self.workflows.keys().cloned().collect();
                for key in keys {
                    self.dispatch(&key);
                }
            }
            Progress::Loaded { workflow, uid, result } => self.loaded(workflow, uid, result),
            Progress::Wake { workflow, epoch } => {
                let Some(served) = self.workflows.get_mut(&workflow).filter(|s| s.epoch == epoch) else {
                    return;
                };
                served.task = None;
                self.dispatch(&workflow);
            }
            Progress::Attempted { workflow, epoch, name, result } => {
                let Some(served) = self.workflows.get_mut(&workflow).filter(|s| s.epoch == epoch) else {
                    return;
                };
                served.task = None;
                match result {
                    Ok(created) => self.created(&workflow, &name, created),
                    Err(source) => self.failed(&workflow, &name, source),
                }
                self.unsaved.insert(workflow.clone());
                self.count_pending();
                self.dispatch(&workflow);
            }
        }
    }

    /// The oldest pending run's Workplan exists: it leaves the queue, and its object's record
    /// advances.
    fn created(&mut self, key: &ObjectRef<Workflow>, name: &str, created: Created) {
        let Some(served) = self.workflows.get_mut(key) else { return };
        let Some(index) = served.queue.iter().position(|p| p.name() == name) else { return };
        let run = served.queue.remove(index).expect("found above");
        let metrics = &self.shared.metrics;
        match created {
            Created::New => {
                metrics.workplans_created.inc();
                served.starts.push_back(Instant::now());
                served.unseen.push((name.to_string(), Instant::now()));
                tracing::info!(workflow = %key, workplan = %name, event = run.event.as_str(), "created Workplan");
                // The Event is for people: publish it beside the next run's work.
                let note = format!("Created Workplan {name} ({})", run.event.as_str());
                let (events, workflow) = (self.shared.events.clone(), served.workflow.clone());
                tokio::spawn(async move { events.normal(workflow.as_ref(), "WorkplanCreated", &note).await });
            }
            Created::Existing => metrics.workplans_existing.inc(),
        }
        if let Source::Trigger { uid, .. } = &run.source {
            served.dirty_shards.insert(shard_of(uid));
        }
        served.failing = false;
        served.waiting = None;
        served.backoff.reset();
    }

    /// The create of the oldest pending run failed: it stays, and is tried again after the
    /// back-off; the first failure of a streak is told with a Warning Event.
    fn failed(&mut self, key: &ObjectRef<Workflow>, name: &str, source: kube::Error) {
        let Some(served) = self.workflows.get_mut(key) else { return };
        let reason = match &source {
            kube::Error::Api(status) => status.message.clone(),
            other => other.to_string(),
        };
        let error = Error::CreateWorkplan { workplan: name.to_string(), source };
        tracing::warn!(%error, pending = served.queue.len(), "creating a Workplan failed; retrying with back-off");
        self.shared.metrics.error(&error);
        served.waiting = Some((Reason::CreateFailed, reason.clone()));
        if !served.failing {
            served.failing = true;
            let event = served.queue.front().map_or("", |run| run.event.as_str());
            let note = format!(
                "Could not create Workplan {name} for a {event} event: {reason}. Retrying with back-off until it exists; {} runs pending",
                served.queue.len()
            );
            let (events, workflow) = (self.shared.events.clone(), served.workflow.clone());
            tokio::spawn(async move { events.warning(workflow.as_ref(), "WorkplanFailed", &note).await });
        }
    }

    fn count_pending(&self) {
        let count: usize = self.workflows.values().map(|s| s.queue.len()).sum();
        self.shared.metrics.workplans_pending.set(count as i64);
    }

    /// Saves what changed since the last save: per Workflow, the shards of its record that
    /// changed (as far as their runs exist), then its status if what that shows changed.
    async fn save_unsaved(&mut self) {
        for key in std::mem::take(&mut self.unsaved) {
            let Some(served) = self.workflows.get_mut(&key) else { continue };
            let shards: Vec<(u32, decide::Shard)> = served
                .dirty_shards
                .iter()
                .map(|&index| (index, pending::committed_shard(&served.record, index, &served.queue)))
                .collect();
            let mut counts = served.counts.clone();
            for (index, objects) in &shards {
                match objects.len() {
                    0 => counts.remove(index),
                    n => counts.insert(*index, n),
                };
            }
            let status = RecordStatus {
                baselined: served.record.baselined.iter().cloned().collect(),
                summary: crate::records::summary(&counts),
                pending: pending::summary(served.queue.iter(), served.waiting.as_ref()),
            };
            let status_changed = served.saved.as_ref() != Some(&status);
            if shards.is_empty() && !status_changed {
                continue;
            }
            let written = shards.len();
            let result =
                self.shared.records.save(&served.workflow, shards, status_changed.then_some(&status)).await;
            match result {
                Ok(()) => {
                    served.dirty_shards.clear();
                    served.counts = counts;
                    served.saved = Some(status);
                    self.shared.metrics.trigger_record_writes.inc_by(written as u64);
                    let objects: usize = self.workflows.values().flat_map(|s| s.counts.values()).sum();
                    self.shared.metrics.trigger_record_objects.set(objects as i64);
                }
                // Deleted: the Workflow watch's Delete event is on its way.
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    tracing::debug!(workflow = %key, "Workflow gone before its trigger record was saved");
                }
                Err(source) => {
                    // The shards stay marked: saved again with the next change (any change
                    // of any Workflow, or its next registration, brings it here).
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

/// One create of a Workplan (field manager `kubeci-director`); AlreadyExists is success.
pub async fn create(client: &Client, workplan: &Workplan) -> kube::Result<Created> {
    let api: Api<Workplan> = Api::namespaced(client.clone(), &workplan.namespace().unwrap_or_default());
    let params = PostParams { field_manager: Some(crate::FIELD_MANAGER.into()), ..PostParams::default() };
    match api.create(&params, workplan).await {
        Ok(_) => Ok(Created::New),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(Created::Existing),
        Err(e) => Err(e),
    }
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
                let error = Error::Discovery {
                    api_version: key.api_version.to_string(),
                    kind: key.kind.to_string(),
                    source,
                };
                tracing::warn!(?key, %error, "cannot resolve the trigger's kind; retrying");
                shared.metrics.error(&error);
                backoff.wait().await;
            }
        }
    };
    let client = shared.client.clone();
    let api: Api<PartialObjectMeta<DynamicObject>> = match (&scope, key.namespace.as_deref()) {
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
    let mut labels = Labels::default();
    while let Some(event) = stream.next().await {
        let message = match event {
            Ok(watcher::Event::Init) => {
                listing.clear();
                labels.0.clear();
                continue;
            }
            Ok(watcher::Event::InitApply(object)) => {
                listing.push(watched(object, &key, &mut labels));
                continue;
            }
            Ok(watcher::Event::InitDone) => {
                listing.shrink_to_fit();
                WatchEvent::Listed(key.clone(), std::mem::take(&mut listing))
            }
            Ok(watcher::Event::Apply(object)) => {
                WatchEvent::Applied(key.clone(), watched(object, &key, &mut labels))
            }
            Ok(watcher::Event::Delete(object)) => {
                WatchEvent::Deleted(key.clone(), watched(object, &key, &mut labels))
            }
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

/// The label sets of a watch's objects, each kept once: the objects a selector matches mostly
/// share theirs. Emptied with each listing, and when it grows past [`Labels::MAX`] (objects
/// whose labels are all different gain nothing from it).
#[derive(Default)]
struct Labels(HashSet<Arc<BTreeMap<String, String>>>);

impl Labels {
    const MAX: usize = 4096;

    fn get(&mut self, labels: BTreeMap<String, String>) -> Arc<BTreeMap<String, String>> {
        if let Some(found) = self.0.get(&labels) {
            return found.clone();
        }
        if self.0.len() >= Labels::MAX {
            self.0.clear();
        }
        let labels = Arc::new(labels);
        self.0.insert(labels.clone());
        labels
    }
}

/// An object as the engine keeps it: its strings allocated once here, and shared from here on
/// (see [`decide`]'s module docs).
fn watched(object: PartialObjectMeta<DynamicObject>, key: &WatchKey, labels: &mut Labels) -> WatchedObject {
    let meta = object.metadata;
    let namespace = match (meta.namespace, &key.namespace) {
        (Some(ns), Some(watched)) if *ns == **watched => Some(watched.clone()),
        (ns, _) => ns.map(Into::into),
    };
    WatchedObject {
        uid: meta.uid.unwrap_or_default().into(),
        name: meta.name.unwrap_or_default().into(),
        namespace,
        labels: labels.get(meta.labels.unwrap_or_default()),
        generation: meta.generation,
        resource_version: meta.resource_version.map(Into::into),
    }
}
