//! Issue 13's chaos test: random SIGKILLs of the director, the workplan-operator and the workers
//! while trigger objects are created and deleted and while a ResourceQuota refuses every Workplan
//! create for 9 to 13 seconds. Afterwards: exactly one Workplan per created and per deleted object,
//! no other Workplan, every Workplan Completed, every job COMPLETED once in its RequestState's
//! history (cleanup last), no pod without its Workplan.
//!
//! The integration tier: the workspace's own binaries on the real API server, the test playing
//! scheduler and kubelet (`e2e::kubelet`). The run is bounded: [`CHAOS`] of kills (each component
//! every few seconds, started again at once or after up to 1.5 s down) while [`MATCHING`] matching
//! ConfigMaps are created and [`DELETED`] of them deleted under one selector trigger with
//! `onAddOrUpdate` and `onDelete`, then a settle phase that waits (never sleeps blindly) for every
//! expected Workplan to exist and finish. The schedule comes from a seeded RNG: the seed is
//! printed, and `KUBECI_CHAOS_SEED=<seed>` replays the schedule (the timing of the processes
//! themselves is not replayable). The components' logs are appended, one file per component, to
//! the directory the test prints.
//!
//! ## What "created" and "deleted" promise
//!
//! The director promises Workplans for the events it could observe: a fired event is pending
//! until its Workplan exists, and only then is the trigger record saved, so a director that dies
//! decides the event again from the record and the objects as they are when it is back. For an
//! object that still exists when a director lists, that always gives its Added Workplan. An object
//! deleted before the next director listed after a kill is different: if its Workplans did not
//! exist when the director died (the create was refused by the quota, or had not been made yet),
//! or it came and went while no director was up, nobody can still observe it, and the record
//! holds nothing that would fire. For those objects (the test calls them *unobservable*) the test
//! accepts Added and Deleted Workplans at most once each, and a Deleted one only with its Added
//! one (the record advances only after a Workplan exists, so a Deleted run without the Added run
//! would be a record saved too early). Every other object (never deleted, or deleted while a
//! director that had its Workplans was up, or whose Workplans existed when the director was
//! killed) must have exactly one Added and, when deleted, exactly one Deleted Workplan.
//!
//! How the test tells them apart, conservatively (a doubtful object is counted unobservable, never
//! the other way round): just before each director kill it reads the Workflow's saved trigger
//! record and lists the Workplans (the snapshot); each director life's *listed* time is when its
//! `kubeci_director_trigger_events_total` is first seen at 1 or more, which is after its trigger
//! watch's first listing was handled and the Workplans that listing started exist. A deleted
//! object is unobservable when, for the first director kill whose next listed time comes after the
//! delete was sent, the record before that kill does not hold it (a recorded object had its Added
//! Workplan, and its deletion fires once from the record) and the snapshot lacks its Added or its
//! Deleted Workplan.
//!
//! The binaries are the workspace's own, built by `cargo test --workspace` (`make test`) next to
//! this test binary.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e::kubelet::{Act, Kubelet, pod_namespace};
use e2e::{Component, TestNamespace, admin_metric, workspace_binary as binary};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, ResourceQuota};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::runtime::wait::await_condition;
use kube::{Resource, ResourceExt};
use shared_types::workflow::RunLimits;
use shared_types::{EventKind, JobState, Phase, RequestState, TriggerRecord, Workflow, Workplan};
use tokio::time::Instant;

/// How long components are killed and objects created and deleted.
const CHAOS: Duration = Duration::from_secs(60);
/// How long the settle phase may take before the test fails with what is missing.
const SETTLE: Duration = Duration::from_secs(300);
/// ConfigMaps the trigger matches, created during the chaos.
const MATCHING: usize = 40;
/// Matching ConfigMaps deleted during the chaos.
const DELETED: usize = 15;
/// ConfigMaps the trigger does not match (two of them deleted): they must start nothing.
const OTHERS: usize = 5;
/// Matching ConfigMaps created while the quota is in place.
const IN_QUOTA: usize = 3;
/// How long the director is not killed once the quota is in place: longer than the director
/// retried one refused create inline before issue 13 (5 attempts, about 6 s).
const QUIET: Duration = Duration::from_millis(7_500);
/// Workers, each killed and restarted under its own identity.
const WORKERS: usize = 2;
/// The test's own field manager.
const MANAGER: &str = "chaos-test";
/// The trigger's label.
const LABEL: (&str, &str) = ("chaos", "yes");
const WORKFLOW: &str = "chaos";
const QUOTA: &str = "no-workplans";

/// SplitMix64: a few lines instead of a dependency, and the same sequence for a seed everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A duration in `[lo, hi)` milliseconds.
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo))
    }
}

fn chaos_seed() -> u64 {
    match std::env::var("KUBECI_CHAOS_SEED") {
        Ok(seed) => seed.trim().parse().unwrap_or_else(|e| panic!("KUBECI_CHAOS_SEED={seed}: {e}")),
        Err(_) => {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
            now.as_nanos() as u64 ^ u64::from(std::process::id())
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Who {
    Director,
    Operator,
    Worker(usize),
}

impl Who {
    fn all() -> Vec<Who> {
        [Who::Director, Who::Operator].into_iter().chain((1..=WORKERS).map(Who::Worker)).collect()
    }

    fn name(self) -> String {
        match self {
            Who::Director => "director".into(),
            Who::Operator => "operator".into(),
            Who::Worker(i) => format!("worker-{i}"),
        }
    }
}

#[derive(Clone, Debug)]
enum Action {
    Kill(Who),
    Start(Who),
    Create { name: String, matching: bool },
    Delete(String),
    QuotaOn,
    QuotaOff,
}

/// The whole run, from the seed: when each ConfigMap is created and deleted, when the quota is in
/// place, when each component is killed and started again.
fn schedule(rng: &mut Rng) -> Vec<(Duration, Action)> {
    let last = CHAOS.as_millis() as u64 - 1_000;
    let mut plan = Vec::new();
    // Longer than QUIET, so that restarts happen while it refuses too.
    let quota_on = rng.millis(18_000, 30_000);
    let quota_for = rng.millis(9_000, 13_000);
    plan.push((quota_on, Action::QuotaOn));
    plan.push((quota_on + quota_for, Action::QuotaOff));
    // IN_QUOTA of them while the quota refuses every create, so that it surely refuses some; the
    // first early, so that it is refused for longer than QUIET.
    let in_quota = |rng: &mut Rng, i: usize| {
        let until = if i == 0 { 1_000 } else { quota_for.as_millis() as u64 - 500 };
        quota_on + rng.millis(100, until)
    };
    let creates: Vec<(Duration, String, bool)> = (0..MATCHING)
        .map(|i| (format!("cm-{i:02}"), true))
        .chain((0..OTHERS).map(|i| (format!("other-{i}"), false)))
        .enumerate()
        .map(|(i, (name, matching))| {
            let at = if i < IN_QUOTA { in_quota(rng, i) } else { rng.millis(0, last - 2_000) };
            (at, name, matching)
        })
        .collect();
    // Deleted: DELETED matching and two others, picked at random, some at once, some much later.
    let mut matching: Vec<usize> = (0..MATCHING).collect();
    let mut picked = Vec::new();
    for _ in 0..DELETED {
        picked.push(matching.remove(rng.next() as usize % matching.len()));
    }
    picked.extend([MATCHING, MATCHING + 1]);
    for i in picked {
        let (created, name, _) = &creates[i];
        let at = (*created + rng.millis(50, 15_000)).min(Duration::from_millis(last));
        plan.push((at, Action::Delete(name.clone())));
    }
    for (at, name, matching) in creates {
        plan.push((at, Action::Create { name, matching }));
    }
    // One director lives through the first QUIET of the refusal: the refused creates must wait
    // for the quota however long it takes, not only across restarts.
    let quiet = (quota_on.saturating_sub(Duration::from_millis(1_500)), quota_on + QUIET);
    for who in Who::all() {
        let mut at = rng.millis(1_000, 6_000);
        while at < CHAOS {
            if who == Who::Director && (quiet.0..quiet.1).contains(&at) {
                at = quiet.1 + rng.millis(0, 2_000);
            }
            let down = rng.millis(0, 1_500);
            plan.push((at, Action::Kill(who)));
            plan.push((at + down, Action::Start(who)));
            at += down + rng.millis(3_000, 8_000);
        }
    }
    // A delete is at least 50 ms after its create, so no tie involves one object twice.
    plan.sort_by_key(|(at, _)| *at);
    plan
}

/// One director process, from start to kill.
#[derive(Default)]
struct Life {
    started: Option<Instant>,
    /// When its trigger watch's first listing was seen handled.
    listed: Option<Instant>,
    /// When it was killed; then `snapshot` holds the (uid, event) of every Workplan and
    /// `recorded` the uids in the Workflow's saved trigger record, both read just before the kill.
    killed: Option<Instant>,
    snapshot: BTreeSet<(String, EventKind)>,
    recorded: BTreeSet<String>,
}

/// The running components, started and killed on the schedule.
struct Kubeci {
    ns: TestNamespace,
    logs: PathBuf,
    t0: Instant,
    running: BTreeMap<Who, Component>,
    lives: Arc<Mutex<Vec<Life>>>,
    /// Set when the current director is killed: stops its listing probe.
    director_killed: Arc<AtomicBool>,
    kills: BTreeMap<Who, usize>,
}

impl Kubeci {
    fn start(&mut self, who: Who) {
        let ns = self.ns.name.clone();
        let args: Vec<String> = match who {
            Who::Director => vec!["--no-leader-election".into()],
            Who::Operator => {
                vec!["--no-leader-election".into(), "--worker-lease-namespace".into(), ns.clone()]
            }
            Who::Worker(i) => {
                vec!["--identity".into(), format!("worker-{i}"), "--lease-namespace".into(), ns.clone()]
            }
        };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let program = match who {
            Who::Director => "director",
            Who::Operator => "workplan-operator",
            Who::Worker(_) => "worker",
        };
        let log = self.logs.join(format!("{}.log", who.name()));
        let header = format!("started at +{:.1}s", self.t0.elapsed().as_secs_f64());
        let component = Component::start_appending_to(binary(program), &ns, &args, &log, &header);
        if who == Who::Director {
            self.probe_listing(component.admin_port);
        }
        assert!(self.running.insert(who, component).is_none(), "{who:?} started twice");
    }

    /// Records when the director on `port` has handled its trigger watch's first listing.
    fn probe_listing(&mut self, port: u16) {
        let killed = Arc::new(AtomicBool::new(false));
        self.director_killed = killed.clone();
        let lives = self.lives.clone();
        let life = {
            let mut lives = lives.lock().unwrap();
            lives.push(Life { started: Some(Instant::now()), ..Life::default() });
            lives.len() - 1
        };
        tokio::spawn(async move {
            while !killed.load(Ordering::SeqCst) {
                if admin_metric(port, "kubeci_director_trigger_events_total").await >= 1.0 {
                    lives.lock().unwrap()[life].listed = Some(Instant::now());
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }

    async fn kill(&mut self, who: Who) {
        if who == Who::Director {
            // The record first: an object it holds keeps its Workplans (the record is saved only
            // once they exist) and stays recorded until its Deleted Workplan exists.
            let recorded = recorded_uids(&self.ns).await;
            let snapshot = workplans(&self.ns).await.iter().map(identity).collect();
            let mut lives = self.lives.lock().unwrap();
            let life = lives.last_mut().expect("a director runs");
            (life.snapshot, life.recorded, life.killed) = (snapshot, recorded, Some(Instant::now()));
        }
        let component = self.running.remove(&who).unwrap_or_else(|| panic!("{who:?} is not running"));
        component.kill();
        if who == Who::Director {
            self.director_killed.store(true, Ordering::SeqCst);
        }
        *self.kills.entry(who).or_default() += 1;
    }

    /// Waits until every component's `/readyz` answers 200.
    async fn ready(&self) {
        e2e::eventually("every component is ready", Duration::from_secs(120), || async {
            for component in self.running.values() {
                if !component.is_ready().await {
                    return None;
                }
            }
            Some(())
        })
        .await;
    }
}

/// A ConfigMap the test created.
struct Object {
    uid: String,
    matching: bool,
    created: Instant,
    /// When its delete was sent.
    deleted: Option<Instant>,
}

fn identity(wp: &Workplan) -> (String, EventKind) {
    (wp.spec.trigger.uid.clone().unwrap_or_default(), wp.spec.trigger.event)
}

async fn workplans(ns: &TestNamespace) -> Vec<Workplan> {
    let api: Api<Workplan> = Api::namespaced(ns.client.clone(), &ns.name);
    api.list(&ListParams::default()).await.expect("listing Workplans").items
}

fn post() -> PostParams {
    PostParams { field_manager: Some(MANAGER.into()), ..PostParams::default() }
}

fn config_map(name: &str, matching: bool) -> ConfigMap {
    let label = if matching { LABEL.1 } else { "no" };
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([(LABEL.0.to_string(), label.to_string())])),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([("value".to_string(), name.to_string())])),
        ..ConfigMap::default()
    }
}

fn quota() -> ResourceQuota {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": QUOTA},
        "spec": {"hard": {"count/workplans.kube.ci": "0"}},
    }))
    .unwrap()
}

/// The seed's two tasks under one selector trigger on `LABEL`, with caps and history far above
/// what the run makes: this is about losing and duplicating, not about the caps.
fn workflow(ns: &str) -> Workflow {
    let mut wf: Workflow = serde_yaml::from_str(shared_types::repo::SEED_WORKFLOW).unwrap();
    wf.metadata =
        ObjectMeta { name: Some(WORKFLOW.into()), namespace: Some(ns.into()), ..ObjectMeta::default() };
    wf.status = None;
    wf.spec.triggers = vec![
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "selector": {"matchLabels": {LABEL.0: LABEL.1}},
            "onAddOrUpdate": true,
            "onDelete": true,
        }))
        .unwrap(),
    ];
    wf.spec.workplan_history_limit = Some(10_000);
    wf.spec.workplan_history_ttl_seconds = Some(86_400);
    wf.spec.limits = Some(RunLimits { runs_per_minute: Some(10_000), concurrent_runs: Some(10_000) });
    wf
}

/// Which Workplans each object must have: `Some(n)` exactly n, `None` at most one.
#[derive(Debug)]
struct Expected {
    added: Option<usize>,
    deleted: Option<usize>,
}

/// What the run promises for each object (see the module docs), from the director lives.
fn expectations(objects: &BTreeMap<String, Object>, lives: &[Life]) -> BTreeMap<String, Expected> {
    let listed_after = |i: usize| lives[i + 1..].iter().find_map(|l| l.listed);
    objects
        .iter()
        .map(|(name, object)| {
            let expected = match (object.matching, object.deleted) {
                (false, _) => Expected { added: Some(0), deleted: Some(0) },
                (true, None) => Expected { added: Some(1), deleted: Some(0) },
                (true, Some(deleted)) => {
                    let first_kill = (0..lives.len())
                        .filter(|&i| lives[i].killed.is_some())
                        .find(|&i| listed_after(i).is_none_or(|listed| deleted < listed));
                    let observable = first_kill.is_none_or(|i| {
                        let snapshot = &lives[i].snapshot;
                        lives[i].recorded.contains(&object.uid)
                            || (snapshot.contains(&(object.uid.clone(), EventKind::Added))
                                && snapshot.contains(&(object.uid.clone(), EventKind::Deleted)))
                    });
                    if observable {
                        Expected { added: Some(1), deleted: Some(1) }
                    } else {
                        Expected { added: None, deleted: None }
                    }
                }
            };
            (name.clone(), expected)
        })
        .collect()
}

/// What is still missing or unfinished (empty once settled), and what is wrong for good.
fn verdict(
    objects: &BTreeMap<String, Object>,
    expected: &BTreeMap<String, Expected>,
    found: &[Workplan],
) -> (Vec<String>, Vec<String>) {
    let (mut waiting, mut wrong) = (Vec::new(), Vec::new());
    let mut by_identity: BTreeMap<(String, EventKind), Vec<&Workplan>> = BTreeMap::new();
    for wp in found {
        by_identity.entry(identity(wp)).or_default().push(wp);
    }
    let uids: BTreeMap<&str, &str> =
        objects.iter().map(|(name, o)| (o.uid.as_str(), name.as_str())).collect();
    for (name, object) in objects {
        let e = &expected[name];
        for (event, want) in [(EventKind::Added, e.added), (EventKind::Deleted, e.deleted)] {
            let have = by_identity.get(&(object.uid.clone(), event)).map_or(0, Vec::len);
            match want {
                Some(want) if have < want => waiting.push(format!("missing: {event:?} Workplan of {name}")),
                Some(want) if have > want => {
                    wrong.push(format!("{have} {event:?} Workplans of {name}, want {want}"))
                }
                None if have > 1 => {
                    wrong.push(format!("{have} {event:?} Workplans of {name}, want at most 1"))
                }
                _ => {}
            }
        }
        if e.added.is_none() {
            let has = |event| by_identity.contains_key(&(object.uid.clone(), event));
            if has(EventKind::Deleted) && !has(EventKind::Added) {
                wrong.push(format!("{name} (unobservable) has a Deleted Workplan without its Added one"));
            }
        }
    }
    for wp in found {
        let (uid, event) = identity(wp);
        let known = uids.contains_key(uid.as_str()) && matches!(event, EventKind::Added | EventKind::Deleted);
        if !known {
            wrong.push(format!("extra Workplan {} for {:?}", wp.name_any(), wp.spec.trigger));
        }
        let phase = wp.status.as_ref().and_then(|s| s.phase);
        if !phase.is_some_and(Phase::is_finished) {
            waiting.push(format!(
                "unfinished: {} ({event:?} of {}) is {phase:?}",
                wp.name_any(),
                uids.get(uid.as_str()).unwrap_or(&"?")
            ));
        }
    }
    (waiting, wrong)
}

/// The history checks of one finished Workplan: Completed, each job COMPLETED exactly once, the
/// cleanup's COMPLETED last.
fn check_run(wp: &Workplan, rqs: Option<&RequestState>) -> Vec<String> {
    let name = wp.name_any();
    let mut problems = Vec::new();
    let status = wp.status.as_ref();
    if status.and_then(|s| s.phase) != Some(Phase::Completed) {
        problems.push(format!(
            "Workplan {name} is {:?}: {:?}",
            status.and_then(|s| s.phase),
            status.and_then(|s| s.reason.clone())
        ));
    }
    let Some(history) = rqs.and_then(|r| r.status.as_ref()).map(|s| &s.history) else {
        problems.push(format!("RequestState {name} is missing or has no status"));
        return problems;
    };
    let jobs: Vec<String> =
        (0..wp.spec.tasks.len()).map(|i| format!("task-{i}")).chain(["cleanup".into()]).collect();
    let mut completed: BTreeMap<String, usize> = BTreeMap::new();
    for entry in history.iter().filter(|e| e.state == JobState::Completed) {
        *completed.entry(entry.job.to_string()).or_default() += 1;
    }
    let want: BTreeMap<String, usize> = jobs.iter().map(|j| (j.clone(), 1)).collect();
    let trail = || history.iter().map(|e| format!("{} {:?}", e.job, e.state)).collect::<Vec<_>>();
    if completed != want {
        problems.push(format!(
            "RequestState {name}: COMPLETED {completed:?}, want each of {jobs:?} once: {:?}",
            trail()
        ));
    }
    let last = history.last().map(|e| (e.job.to_string(), e.state));
    if last != Some(("cleanup".into(), JobState::Completed)) {
        problems.push(format!("RequestState {name} does not end with cleanup COMPLETED: {:?}", trail()));
    }
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kills_under_a_refusing_quota_lose_and_duplicate_nothing() {
    let seed = chaos_seed();
    let ns = pod_namespace("chaos").await;
    let logs = std::env::temp_dir().join(format!("kubeci-chaos-{}", ns.name));
    std::fs::create_dir_all(&logs).unwrap();
    println!(
        "chaos seed {seed} (replay the schedule with KUBECI_CHAOS_SEED={seed}); logs in {}",
        logs.display()
    );
    let plan = schedule(&mut Rng(seed));
    let _kubelet = Kubelet::start(&ns, |_| Act::Succeed);
    let client = ns.client.clone();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), &ns.name);
    let workflows: Api<Workflow> = Api::namespaced(client.clone(), &ns.name);

    let mut kubeci = Kubeci {
        ns,
        logs: logs.clone(),
        t0: Instant::now(),
        running: BTreeMap::new(),
        lives: Arc::new(Mutex::new(Vec::new())),
        director_killed: Arc::new(AtomicBool::new(false)),
        kills: BTreeMap::new(),
    };
    for who in Who::all() {
        kubeci.start(who);
    }
    kubeci.ready().await;
    workflows.create(&post(), &workflow(&kubeci.ns.name)).await.unwrap();
    let baselined = |wf: Option<&Workflow>| {
        wf.and_then(|w| w.status.as_ref()).is_some_and(|s| !s.baselined_triggers.is_empty())
    };
    tokio::time::timeout(Duration::from_secs(60), await_condition(workflows.clone(), WORKFLOW, baselined))
        .await
        .expect("the director takes the trigger's baseline")
        .unwrap();

    // The chaos.
    let t0 = Instant::now();
    kubeci.t0 = t0;
    let mut objects: BTreeMap<String, Object> = BTreeMap::new();
    for (at, action) in &plan {
        tokio::time::sleep_until(t0 + *at).await;
        match action {
            Action::Kill(who) => kubeci.kill(*who).await,
            Action::Start(who) => kubeci.start(*who),
            Action::Create { name, matching } => {
                let cm = cms.create(&post(), &config_map(name, *matching)).await.unwrap();
                let uid = cm.uid().unwrap();
                let created = Instant::now();
                objects.insert(name.clone(), Object { uid, matching: *matching, created, deleted: None });
            }
            Action::Delete(name) => {
                objects.get_mut(name).expect("created before").deleted = Some(Instant::now());
                cms.delete(name, &DeleteParams::default()).await.unwrap();
            }
            Action::QuotaOn => {
                quotas.create(&post(), &quota()).await.unwrap();
            }
            Action::QuotaOff => {
                quotas.delete(QUOTA, &DeleteParams::default()).await.unwrap();
            }
        }
    }
    let chaos = t0.elapsed();
    println!(
        "chaos: {:.1}s, kills {:?}, {} ConfigMaps created, {} deleted",
        chaos.as_secs_f64(),
        kubeci.kills,
        objects.len(),
        objects.values().filter(|o| o.deleted.is_some()).count()
    );

    // Settle: the last director has listed and has nothing pending, every Workplan promised
    // exists, every Workplan is finished, and the director told of the quota's refusal.
    let settle = Instant::now();
    let deadline = settle + SETTLE;
    let events: Api<Event> = Api::namespaced(client.clone(), &kubeci.ns.name);
    let (expected, found) = loop {
        let listed = kubeci.lives.lock().unwrap().last().is_some_and(|l| l.listed.is_some());
        let mut waiting = Vec::new();
        if !listed {
            waiting.push("the last director to handle its trigger listing".to_string());
        }
        let refused = events.list(&ListParams::default()).await.unwrap().items.iter().any(|e| {
            e.reason.as_deref() == Some("WorkplanFailed")
                && e.note.as_deref().is_some_and(|n| n.contains(QUOTA))
        });
        if !refused {
            waiting.push(format!("a Warning Event WorkplanFailed telling of quota {QUOTA}"));
        }
        let pending = kubeci.running[&Who::Director].metric("kubeci_director_workplans_pending").await;
        if pending > 0.0 {
            waiting.push(format!("the director's {pending} pending runs"));
        }
        let expected = expectations(&objects, &kubeci.lives.lock().unwrap());
        let found = workplans(&kubeci.ns).await;
        let (missing, wrong) = verdict(&objects, &expected, &found);
        waiting.extend(missing);
        if waiting.is_empty() {
            break (expected, found);
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: not settled {SETTLE:?} after the chaos (logs in {}):\n  {}\nwrong already:\n  {}",
            logs.display(),
            waiting.join("\n  "),
            wrong.join("\n  ")
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let settled = settle.elapsed();

    // Assert: the Workplans per object, every run's history, every pod's owner.
    let (_, mut problems) = verdict(&objects, &expected, &found);
    let requests: Api<RequestState> = Api::namespaced(client.clone(), &kubeci.ns.name);
    for wp in &found {
        let rqs = requests.get_opt(&wp.name_any()).await.unwrap();
        problems.extend(check_run(wp, rqs.as_ref()));
    }
    let owners: BTreeSet<(String, String)> =
        found.iter().map(|wp| (wp.name_any(), wp.uid().unwrap_or_default())).collect();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &kubeci.ns.name);
    let pod_list = pods.list(&ListParams::default()).await.unwrap().items;
    for pod in &pod_list {
        let owner = pod
            .owner_references()
            .iter()
            .find(|o| o.kind == Workplan::kind(&()))
            .map(|o| (o.name.clone(), o.uid.clone()));
        if !owner.as_ref().is_some_and(|o| owners.contains(o)) {
            problems.push(format!("pod {} has no Workplan: owner {owner:?}", pod.name_any()));
        }
    }
    let at = |t: Option<Instant>| t.map_or("-".to_string(), |t| format!("+{:.1}s", (t - t0).as_secs_f64()));
    let unobservable: Vec<String> = expected
        .iter()
        .filter(|(_, e)| e.added.is_none())
        .map(|(name, _)| {
            let o = &objects[name];
            let count = |event| found.iter().filter(|wp| identity(wp) == (o.uid.clone(), event)).count();
            format!(
                "{name} (created {}, deleted {}: {} Added, {} Deleted)",
                at(Some(o.created)),
                at(o.deleted),
                count(EventKind::Added),
                count(EventKind::Deleted)
            )
        })
        .collect();
    let lives: Vec<String> = kubeci
        .lives
        .lock()
        .unwrap()
        .iter()
        .map(|l| format!("[{} {} {}]", at(l.started), at(l.listed), at(l.killed)))
        .collect();
    println!(
        "settled in {:.1}s: {} Workplans, {} pods\ndirector lives [started listed killed]: {}\n\
         unobservable (deleted before a director that had not made their Workplans listed again): {unobservable:?}",
        settled.as_secs_f64(),
        found.len(),
        pod_list.len(),
        lives.join(" ")
    );
    assert!(problems.is_empty(), "seed {seed} (logs in {}):\n  {}", logs.display(), problems.join("\n  "));
    for component in std::mem::take(&mut kubeci.running).into_values() {
        component.stop();
    }
}

/// The uids the Workflow's saved trigger record holds: the keys of every TriggerRecord shard the
/// Workflow owns (a shard is saved whole, before the status that counts it).
async fn recorded_uids(ns: &TestNamespace) -> BTreeSet<String> {
    let workflows: Api<Workflow> = Api::namespaced(ns.client.clone(), &ns.name);
    let uid = workflows.get(WORKFLOW).await.expect("reading the Workflow").uid().unwrap_or_default();
    let shards: Api<TriggerRecord> = Api::namespaced(ns.client.clone(), &ns.name);
    let params = ListParams::default().labels(&format!("{}={WORKFLOW}", shared_types::labels::WORKFLOW));
    shards
        .list(&params)
        .await
        .expect("listing the trigger record")
        .items
        .into_iter()
        .filter(|shard| shard.owner_references().iter().any(|owner| owner.uid == uid))
        .flat_map(|shard| shard.spec.objects.into_keys())
        .collect()
}
