//! `kubeci-bench`: how close kubeci gets to the API server's own limit (DESIGN.md §9.4).
//!
//! ```sh
//! cargo run -p e2e --release --bin kubeci-bench [-- --quick]
//! ```
//!
//! It starts the control plane of `hack/testenv`, runs the release builds of the director, the
//! workplan-operator and the workers against it (building them first), plays scheduler and
//! kubelet itself (pods are bound and succeed at once, so pod start-up does not hide kubeci's own
//! costs), and measures, each phase in its own namespace:
//!
//! 1. the baseline: a ConfigMap create → its watch event, the API server's own round trip;
//! 2. trigger → Workplan: a ConfigMap update → the Workplan's creation event (director only);
//! 3. the hand-off REQUESTED → STARTED and a whole one-task Workplan, creation → `Completed`,
//!    with every component running, driven by ConfigMap updates; the API server's write
//!    counters over these runs give
//! 5. the API writes per run, by resource and verb;
//! 4. throughput with 1, 2 and 4 workers, with the CPU share of each process;
//! 6. resident memory of the director (Workflows watching ConfigMaps) and of a worker (jobs in
//!    flight: pods that are never bound, so they stay Pending); and the trigger record at scale:
//!    one Workflow whose selector matches 100,000 ConfigMaps (the director's memory, how long its
//!    baseline took, how big the Workflow and its TriggerRecord shards are);
//! 7. the planner on 10,000 steps, read from the criterion bench's results (`make bench` runs
//!    it first).
//!
//! It prints Markdown tables and writes `bench-results/latest.json` (and `latest.md`). Numbers
//! are only comparable between runs on the same machine; the load average is recorded with them.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use e2e::bench::{
    LatencyRow, MemoryRow, RecordsRow, Report, RequestKey, Summary, ThroughputRow, cpu_ticks,
    criterion_samples, parse_request_totals, status_kib, write_delta, write_rows,
};
use e2e::kubelet::{Act, bind, finish, pod_namespace};
use e2e::{Component, TestEnv, TestNamespace};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Client, ResourceExt};
use shared_types::planner;
use shared_types::{
    JobState, Phase, RequestState, Step, Trigger, TriggerEvent, TriggerRecord, Workflow, WorkflowSpec,
    Workplan,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// The longest any single wait may take before the benchmark gives up on it.
const TIMEOUT: Duration = Duration::from_secs(120);
/// Runs before each latency phase whose samples are thrown away (connections, caches).
const WARM_UP: usize = 5;

#[derive(Parser, Debug)]
#[command(name = "kubeci-bench", about = "kubeci against the API server's own round trip")]
struct Args {
    /// Fewer samples and a smaller memory load: a smoke run of a couple of minutes.
    #[arg(long)]
    quick: bool,

    /// Where to write the JSON results (a Markdown copy goes beside it).
    #[arg(long, default_value = "bench-results/latest.json")]
    out: PathBuf,

    /// Use the release binaries in target/release as they are, without `cargo build --release`.
    #[arg(long)]
    no_build: bool,

    /// Phases to leave out.
    #[arg(long, value_enum, value_delimiter = ',')]
    skip: Vec<Phase_>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
#[value(rename_all = "lower")]
enum Phase_ {
    Trigger,
    Handoff,
    Throughput,
    Memory,
    /// Phase 6's trigger record at scale (100,000 ConfigMaps; 10,000 with `--quick`).
    Records,
}

/// How many samples, and how big the loads.
struct Sizes {
    /// The target of 64 MiB is for the full load only.
    quick: bool,
    baseline: usize,
    trigger: usize,
    handoff: usize,
    throughput: usize,
    configmaps: usize,
    workflows: usize,
    jobs: usize,
    /// ConfigMaps one Workflow's trigger matches, for the trigger record at scale.
    records: usize,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                quick,
                baseline: 100,
                trigger: 100,
                handoff: 30,
                throughput: 60,
                configmaps: 1_000,
                workflows: 100,
                jobs: 100,
                records: 10_000,
            }
        } else {
            Sizes {
                quick,
                baseline: 500,
                trigger: 500,
                handoff: 200,
                throughput: 300,
                configmaps: 10_000,
                workflows: 1_000,
                jobs: 1_000,
                records: 100_000,
            }
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let binaries = release_binaries(args.no_build)?;
    eprintln!("starting the control plane (hack/testenv)…");
    let env = TestEnv::get();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(args, binaries, env))
}

/// The release builds of the three components: built (a no-op when they are fresh) unless
/// `--no-build`, so the numbers are never those of stale binaries.
fn release_binaries(no_build: bool) -> anyhow::Result<PathBuf> {
    let root = TestEnv::repo_root();
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let dir = target.join("release");
    let build = "cargo build --release --locked -p director -p workplan-operator -p worker";
    if !no_build {
        eprintln!("building the controllers in release mode ({build})…");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "--release",
                "--locked",
                "-p",
                "director",
                "-p",
                "workplan-operator",
                "-p",
                "worker",
            ])
            .current_dir(&root)
            .status()
            .with_context(|| format!("cannot run `{build}`"))?;
        if !status.success() {
            bail!("`{build}` failed ({status}); run it by hand to see why");
        }
    }
    for name in ["director", "workplan-operator", "worker"] {
        if !dir.join(name).exists() {
            bail!("{} is missing: run `{build}`", dir.join(name).display());
        }
    }
    Ok(dir)
}

/// The running benchmark: where the binaries and logs are, and the processes to measure.
struct Bench {
    binaries: PathBuf,
    env: &'static TestEnv,
    client: Client,
    sizes: Sizes,
    /// Clock ticks per second of `/proc/<pid>/stat`.
    hz: f64,
    /// The control plane's processes.
    control_plane: Vec<(String, u32)>,
    /// Where the components' logs go (the control plane's own are removed when it stops).
    logs: PathBuf,
}

impl Bench {
    /// Starts a component with its log in the control plane's directory.
    fn start(&self, binary: &str, ns: &str, label: &str, args: &[&str]) -> Component {
        let log = self.logs.join(format!("{label}.log"));
        Component::start_logging_to(self.binaries.join(binary), ns, args, &log)
    }

    /// The director with its per-Workflow caps lifted: the phases measure how fast kubeci goes,
    /// and one Workflow starts hundreds of runs that nothing finishes (the defaults would hold
    /// all but ten). Retention keeps its defaults, so its deletes are counted like any write.
    fn director(&self, ns: &str, label: &str) -> Component {
        let unlimited = ["--runs-per-minute", "1000000", "--concurrent-runs", "1000000"];
        self.start("director", ns, label, &[&["--no-leader-election"][..], &unlimited].concat())
    }

    fn operator(&self, ns: &str, label: &str) -> Component {
        self.start("workplan-operator", ns, label, &["--no-leader-election", "--worker-lease-namespace", ns])
    }

    fn worker(&self, ns: &str, label: &str, extra: &[&str]) -> Component {
        let mut args = vec!["--identity", label, "--lease-namespace", ns];
        args.extend_from_slice(extra);
        self.start("worker", ns, label, &args)
    }

    /// The API server's request counters.
    async fn request_totals(&self) -> anyhow::Result<BTreeMap<RequestKey, f64>> {
        let request = http::Request::get("/metrics").body(Vec::new())?;
        let text = self.client.request_text(request).await.context("scraping the API server's /metrics")?;
        Ok(parse_request_totals(&text))
    }

    fn cpu(&self, processes: &[(String, u32)]) -> BTreeMap<String, u64> {
        processes
            .iter()
            .filter_map(|(name, pid)| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                Some((name.clone(), cpu_ticks(&stat)?))
            })
            .collect()
    }
}

async fn run(args: Args, binaries: PathBuf, env: &'static TestEnv) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut report = Report {
        started_at: k8s_openapi::jiff::Timestamp::now().to_string(),
        git_commit: git_commit(),
        quick: args.quick,
        cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        load_before: load_average(),
        ..Report::default()
    };
    let bench = Bench {
        binaries,
        env,
        client: env.client().await,
        sizes: Sizes::new(args.quick),
        hz: clock_ticks(),
        control_plane: control_plane_pids(env.dir())?,
        logs: TestEnv::repo_root().join("bench-results/logs"),
    };
    std::fs::create_dir_all(&bench.logs)?;
    eprintln!("control plane in {} ({:?})", env.dir().display(), bench.control_plane);
    eprintln!("component logs in {}", bench.logs.display());

    eprintln!("1. baseline: ConfigMap create → watch event ({} samples)", bench.sizes.baseline);
    report.baseline = Summary::of(&baseline(&bench).await?);

    eprintln!("1. the same for a Workplan: create → watch event ({} samples)", bench.sizes.baseline);
    report.latencies.push(LatencyRow {
        id: "1".into(),
        what: "for comparison: Workplan create → its watch event (our CRD's own round trip)".into(),
        summary: Summary::of(&workplan_round_trip(&bench).await?),
        target_ratio: None,
    });

    if !args.skip.contains(&Phase_::Trigger) {
        eprintln!("2. trigger → Workplan ({} samples)", bench.sizes.trigger);
        let samples = trigger_to_workplan(&bench).await?;
        report.latencies.push(LatencyRow {
            id: "2".into(),
            what: "trigger → Workplan: ConfigMap update → the Workplan's creation event".into(),
            summary: Summary::of(&samples),
            target_ratio: Some(2.0),
        });
    }

    if !args.skip.contains(&Phase_::Handoff) {
        eprintln!("3. hand-off and whole runs, all components ({} runs)", bench.sizes.handoff);
        let runs = handoff(&bench).await?;
        let rows = [
            ("3", "hand-off: RequestState REQUESTED → STARTED (events seen)", &runs.handoff, Some(2.0)),
            ("3", "one-task Workplan: creation → `Completed` (events seen)", &runs.run, None),
            ("3", "trigger → Workplan, with every component running", &runs.trigger, None),
            ("3", "whole: ConfigMap update → Workplan `Completed`", &runs.whole, None),
        ];
        for (id, what, samples, target_ratio) in rows {
            report.latencies.push(LatencyRow {
                id: id.into(),
                what: what.into(),
                summary: Summary::of(samples),
                target_ratio,
            });
        }
        report.write_runs = runs.count;
        report.writes = write_rows(&runs.writes, runs.count);
    }

    if !args.skip.contains(&Phase_::Throughput) {
        for workers in [1, 2, 4] {
            eprintln!("4. throughput: {} one-task Workplans, {workers} worker(s)", bench.sizes.throughput);
            match throughput(&bench, workers).await {
                Ok(row) => report.throughput.push(row),
                Err(e) => report.notes.push(format!("throughput with {workers} worker(s) failed: {e:#}")),
            }
        }
    }

    if !args.skip.contains(&Phase_::Memory) {
        eprintln!(
            "6. memory: director with {} Workflows over {} ConfigMaps; a worker with {} jobs in flight",
            bench.sizes.workflows, bench.sizes.configmaps, bench.sizes.jobs
        );
        match director_memory(&bench).await {
            Ok(rows) => report.memory.extend(rows),
            Err(e) => report.notes.push(format!("director memory failed: {e:#}")),
        }
        match worker_memory(&bench).await {
            Ok(rows) => report.memory.extend(rows),
            Err(e) => report.notes.push(format!("worker memory failed: {e:#}")),
        }
    }

    if !args.skip.contains(&Phase_::Records) {
        eprintln!("6. trigger record: one Workflow matching {} ConfigMaps", bench.sizes.records);
        match record_scale(&bench).await {
            Ok((memory, records)) => {
                report.memory.push(memory);
                report.records = Some(records);
            }
            Err(e) => report.notes.push(format!("the trigger record at scale failed: {e:#}")),
        }
    }

    let (planner, baseline, note) = planner_results();
    report.planner = planner;
    report.planner_baseline = baseline;
    report.notes.extend(note);
    report.load_after = load_average();
    report.notes.push(format!(
        "took {:.0} s; load average {:?} before, {:?} after",
        started.elapsed().as_secs_f64(),
        report.load_before,
        report.load_after
    ));

    let markdown = report.markdown();
    println!("{markdown}");
    for note in &report.notes {
        println!("- {note}");
    }
    let out = if args.out.is_absolute() { args.out.clone() } else { TestEnv::repo_root().join(&args.out) };
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", out.display()))?;
    let md = out.with_extension("md");
    let command = if args.quick { "kubeci-bench --quick" } else { "kubeci-bench" };
    let header = format!(
        "<!-- `{command}` at {} ({}), load {:?} → {:?} -->\n",
        report.git_commit, report.started_at, report.load_before, report.load_after
    );
    std::fs::write(&md, header + &markdown).with_context(|| format!("writing {}", md.display()))?;
    eprintln!("wrote {} and {}", out.display(), md.display());
    Ok(())
}

/// The objects a watch reports as they change (not those of its first listing), each with the
/// instant it arrived.
struct Observer<K> {
    events: mpsc::UnboundedReceiver<(Instant, K)>,
    task: JoinHandle<()>,
}

impl<K> Observer<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    /// Watches `api`; returns once the first listing is done, so that later writes are seen.
    async fn start(api: Api<K>) -> anyhow::Result<Observer<K>> {
        let (tx, events) = mpsc::unbounded_channel();
        let (listed_tx, listed) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut listed_tx = Some(listed_tx);
            let mut stream = pin!(watcher(api, watcher::Config::default()).default_backoff());
            while let Some(event) = stream.next().await {
                let object = match event {
                    Ok(Event::Apply(object)) => object,
                    Ok(Event::InitDone) => {
                        if let Some(listed) = listed_tx.take() {
                            let _ = listed.send(());
                        }
                        continue;
                    }
                    _ => continue,
                };
                if tx.send((Instant::now(), object)).is_err() {
                    return;
                }
            }
        });
        tokio::time::timeout(TIMEOUT, listed).await.context("a watch did not list in time")??;
        Ok(Observer { events, task })
    }

    /// The next object for which `wanted` holds, dropping the others.
    async fn next(&mut self, what: &str, wanted: impl Fn(&K) -> bool) -> anyhow::Result<(Instant, K)> {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some((at, object))) if wanted(&object) => return Ok((at, object)),
                Ok(Some(_)) => {}
                Ok(None) => bail!("the watch ended while waiting for {what}"),
                Err(_) => bail!("timed out after {TIMEOUT:?} waiting for {what}"),
            }
        }
    }
}

impl<K> Drop for Observer<K> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The scheduler and kubelet of the benchmark: binds each new pod to the node and, once bound,
/// marks it Succeeded, each pod in its own task so that no pod waits for another's writes.
struct FastKubelet(JoinHandle<()>);

impl FastKubelet {
    fn start(ns: &TestNamespace) -> FastKubelet {
        let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
        FastKubelet(tokio::spawn(async move {
            let (mut bound, mut finished) = (HashSet::new(), HashSet::new());
            let mut events = pin!(watcher(pods.clone(), watcher::Config::default()).default_backoff());
            while let Some(event) = events.next().await {
                let pod = match event {
                    Ok(Event::Apply(pod) | Event::InitApply(pod)) => pod,
                    _ => continue,
                };
                let uid = pod.uid().unwrap_or_default();
                let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or_default();
                if phase == "Succeeded" || phase == "Failed" || finished.contains(&uid) {
                    continue;
                }
                let pods = pods.clone();
                if pod.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none() {
                    if bound.insert(uid) {
                        tokio::spawn(async move { bind(&pods, &pod.name_any()).await });
                    }
                } else {
                    finished.insert(uid);
                    tokio::spawn(async move { finish(&pods, &pod, &Act::Succeed).await });
                }
            }
        }))
    }
}

impl Drop for FastKubelet {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// 1. A ConfigMap create → its watch event.
async fn baseline(bench: &Bench) -> anyhow::Result<Vec<Duration>> {
    let ns = bench.env.namespace("bench-baseline").await;
    let configmaps: Api<ConfigMap> = Api::namespaced(ns.client.clone(), &ns.name);
    let mut seen = Observer::start(configmaps.clone()).await?;
    let mut samples = Vec::new();
    for i in 0..WARM_UP + bench.sizes.baseline {
        let name = format!("baseline-{i}");
        let configmap = ConfigMap {
            metadata: ObjectMeta { name: Some(name.clone()), ..ObjectMeta::default() },
            data: Some(BTreeMap::from([("i".to_string(), i.to_string())])),
            ..ConfigMap::default()
        };
        let sent = Instant::now();
        configmaps.create(&PostParams::default(), &configmap).await?;
        let (at, _) = seen.next(&format!("ConfigMap {name}"), |cm| cm.name_any() == name).await?;
        if i >= WARM_UP {
            samples.push(at - sent);
        }
    }
    Ok(samples)
}

/// The baseline's round trip for kubeci's own kind: a Workplan create (schema and CEL validation,
/// a bigger object) → its watch event. Nothing of kubeci runs; this is the API server's share of
/// the trigger → Workplan figure.
async fn workplan_round_trip(bench: &Bench) -> anyhow::Result<Vec<Duration>> {
    let ns = bench.env.namespace("bench-workplan-baseline").await;
    let api: Api<Workplan> = Api::namespaced(ns.client.clone(), &ns.name);
    let mut seen = Observer::start(api.clone()).await?;
    let workflow = one_task_workflow(&ns.name, "baseline", None);
    let mut samples = Vec::new();
    for i in 0..WARM_UP + bench.sizes.baseline {
        let workplan = planner::plan(&workflow, TriggerEvent::manual(Some(i.to_string())))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let name = workplan.name_any();
        let sent = Instant::now();
        api.create(&PostParams::default(), &workplan).await?;
        let (at, _) = seen.next(&format!("Workplan {name}"), |wp| wp.name_any() == name).await?;
        if i >= WARM_UP {
            samples.push(at - sent);
        }
    }
    Ok(samples)
}

/// A Workflow of one step (one task: one pod), fired by `trigger` if given.
fn one_task_workflow(ns: &str, name: &str, trigger: Option<Trigger>) -> Workflow {
    let step = Step { name: "only".into(), image: "alpine".into(), ..Step::default() };
    let spec = WorkflowSpec {
        steps: vec![step],
        triggers: trigger.into_iter().collect(),
        suspend: false,
        ..WorkflowSpec::default()
    };
    let mut workflow = Workflow::new(name, spec);
    workflow.metadata.namespace = Some(ns.into());
    workflow
}

/// A trigger on ConfigMaps of the Workflow's namespace, by name or by one label.
fn configmap_trigger(name: Option<&str>, label: Option<(&str, &str)>) -> Trigger {
    Trigger {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        resource: Some("configmaps".into()),
        name: name.map(str::to_string),
        selector: label.map(|(k, v)| LabelSelector {
            match_labels: Some(BTreeMap::from([(k.to_string(), v.to_string())])),
            ..LabelSelector::default()
        }),
        on_add_or_update: true,
        ..Trigger::default()
    }
}

/// Creates a ConfigMap `name` and a Workflow fired by its updates, and waits until the director
/// has taken the ConfigMap as its baseline (from then on, an update fires).
async fn triggered_workflow(ns: &TestNamespace, name: &str) -> anyhow::Result<()> {
    let configmaps: Api<ConfigMap> = Api::namespaced(ns.client.clone(), &ns.name);
    let configmap = ConfigMap {
        metadata: ObjectMeta { name: Some(name.into()), ..ObjectMeta::default() },
        ..ConfigMap::default()
    };
    configmaps.create(&PostParams::default(), &configmap).await?;
    let workflows: Api<Workflow> = Api::namespaced(ns.client.clone(), &ns.name);
    let workflow = one_task_workflow(&ns.name, name, Some(configmap_trigger(Some(name), None)));
    workflows.create(&PostParams::default(), &workflow).await?;
    e2e::eventually("the director to baseline the trigger", TIMEOUT, || {
        let workflows = workflows.clone();
        async move {
            let wf = workflows.get(name).await.ok()?;
            (!wf.status?.baselined_triggers.is_empty()).then_some(())
        }
    })
    .await;
    Ok(())
}

/// Updates the ConfigMap and returns when it was sent and its new resourceVersion.
async fn touch(configmaps: &Api<ConfigMap>, name: &str, i: usize) -> anyhow::Result<(Instant, String)> {
    let patch = serde_json::json!({ "data": { "i": i.to_string() } });
    let sent = Instant::now();
    let updated = configmaps.patch(name, &PatchParams::default(), &Patch::Merge(patch)).await?;
    Ok((sent, updated.resource_version().unwrap_or_default()))
}

/// 2. A ConfigMap update → the Workplan's creation event, with only the director running.
async fn trigger_to_workplan(bench: &Bench) -> anyhow::Result<Vec<Duration>> {
    let ns = bench.env.namespace("bench-trigger").await;
    let _director = bench.director(&ns.name, "director-trigger");
    triggered_workflow(&ns, "trigger").await?;
    let configmaps: Api<ConfigMap> = Api::namespaced(ns.client.clone(), &ns.name);
    let mut workplans = Observer::start(Api::<Workplan>::namespaced(ns.client.clone(), &ns.name)).await?;
    let mut samples = Vec::new();
    for i in 0..WARM_UP + bench.sizes.trigger {
        let (sent, version) = touch(&configmaps, "trigger", i).await?;
        let fired = |wp: &Workplan| wp.spec.trigger.resource_version.as_ref() == Some(&version);
        let (at, _) = workplans.next(&format!("the Workplan of update {i}"), fired).await?;
        if i >= WARM_UP {
            samples.push(at - sent);
        }
    }
    Ok(samples)
}

/// What phase 3 measured.
struct Runs {
    count: usize,
    trigger: Vec<Duration>,
    handoff: Vec<Duration>,
    run: Vec<Duration>,
    whole: Vec<Duration>,
    writes: BTreeMap<RequestKey, f64>,
}

/// 3 and 5. One ConfigMap update at a time through every component, each run waited for until
/// its Workplan is `Completed`; the API server's write counters before and after.
async fn handoff(bench: &Bench) -> anyhow::Result<Runs> {
    let ns = pod_namespace("bench-handoff").await;
    let _kubelet = FastKubelet::start(&ns);
    let _director = bench.director(&ns.name, "director-handoff");
    let operator = bench.operator(&ns.name, "operator-handoff");
    let worker = bench.worker(&ns.name, "worker-handoff", &[]);
    wait_started(&operator, "workplan-operator").await?;
    wait_lease_held(&[&worker]).await;
    triggered_workflow(&ns, "handoff").await?;

    let configmaps: Api<ConfigMap> = Api::namespaced(ns.client.clone(), &ns.name);
    let mut workplans = Observer::start(Api::<Workplan>::namespaced(ns.client.clone(), &ns.name)).await?;
    let mut requests = Observer::start(Api::<RequestState>::namespaced(ns.client.clone(), &ns.name)).await?;
    let mut runs = Runs {
        count: bench.sizes.handoff,
        trigger: Vec::new(),
        handoff: Vec::new(),
        run: Vec::new(),
        whole: Vec::new(),
        writes: BTreeMap::new(),
    };
    let mut before = None;
    for i in 0..WARM_UP + bench.sizes.handoff {
        if i == WARM_UP {
            // The previous run's last writes (the director's status of the Workflow) land after
            // its Workplan is Completed: let them, so they are not counted in the next runs.
            tokio::time::sleep(Duration::from_secs(1)).await;
            before = Some(bench.request_totals().await?);
        }
        let (sent, version) = touch(&configmaps, "handoff", i).await?;
        let fired = |wp: &Workplan| wp.spec.trigger.resource_version.as_ref() == Some(&version);
        let (created, workplan) = workplans.next(&format!("the Workplan of update {i}"), fired).await?;
        let name = workplan.name_any();
        let job = |state: JobState| {
            let name = name.clone();
            move |r: &RequestState| r.name_any() == name && r.spec.job == "task-0" && r.spec.state == state
        };
        let (requested, _) = requests.next("task-0 REQUESTED", job(JobState::Requested)).await?;
        let (claimed, _) = requests.next("task-0 STARTED", job(JobState::Started)).await?;
        let finished = |wp: &Workplan| {
            wp.name_any() == name && wp.status.as_ref().and_then(|s| s.phase).is_some_and(Phase::is_finished)
        };
        let (done, workplan) = workplans.next("the Workplan to finish", finished).await?;
        let status = workplan.status.unwrap_or_default();
        if status.phase != Some(Phase::Completed) {
            bail!("Workplan {name} ended {:?}: {:?}", status.phase, status.reason);
        }
        if i >= WARM_UP {
            runs.trigger.push(created - sent);
            runs.handoff.push(claimed - requested);
            runs.run.push(done - created);
            runs.whole.push(done - sent);
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = bench.request_totals().await?;
    runs.writes = write_delta(&before.expect("warm-up runs come first"), &after);
    Ok(runs)
}

/// Polls `check` until it returns `Some`; an error naming `what` after `timeout`, so that a
/// phase that fails is reported and the others still run.
async fn until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until a controller's admin server answers, then gives its watches a second to list.
/// Not `/readyz`: in this benchmark the director's and the workplan-operator's sometimes stay
/// 503 ("caches not synced") for minutes while they work, seen in namespaces with none of their
/// objects yet; not understood yet, so it is only reported.
async fn wait_started(component: &Component, name: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + TIMEOUT;
    while component.get("/livez").await.is_none() {
        if Instant::now() > deadline {
            bail!("the {name} (pid {}) does not answer after {TIMEOUT:?}", component.pid());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    if !component.is_ready().await {
        eprintln!("   note: the {name}'s /readyz is not 200 one second after it started");
    }
    Ok(())
}

async fn wait_lease_held(workers: &[&Component]) {
    for worker in workers {
        e2e::eventually("a worker to hold its Lease", TIMEOUT, || async {
            (worker.metric("kubeci_worker_lease_held").await >= 1.0).then_some(())
        })
        .await;
    }
}

/// Creates `count` one-task Workplans directly (as the director would), 16 at a time.
fn create_workplans(ns: &TestNamespace, count: usize) -> JoinHandle<anyhow::Result<()>> {
    let api: Api<Workplan> = Api::namespaced(ns.client.clone(), &ns.name);
    let workflow = one_task_workflow(&ns.name, "load", None);
    tokio::spawn(async move {
        futures::stream::iter(0..count)
            .map(|i| {
                let (api, workflow) = (api.clone(), workflow.clone());
                async move {
                    let workplan = planner::plan(&workflow, TriggerEvent::manual(Some(i.to_string())))
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    api.create(&PostParams::default(), &workplan).await?;
                    anyhow::Ok(())
                }
            })
            .buffer_unordered(16)
            .try_collect::<()>()
            .await
    })
}

/// 4. One-task Workplans completed per minute with `workers` workers.
async fn throughput(bench: &Bench, workers: usize) -> anyhow::Result<ThroughputRow> {
    let ns = pod_namespace(&format!("bench-throughput-{workers}")).await;
    let _kubelet = FastKubelet::start(&ns);
    let operator = bench.operator(&ns.name, &format!("operator-throughput-{workers}"));
    let pool: Vec<Component> =
        (1..=workers).map(|i| bench.worker(&ns.name, &format!("worker-{i}-of-{workers}"), &[])).collect();
    wait_started(&operator, "workplan-operator").await?;
    wait_lease_held(&pool.iter().collect::<Vec<_>>()).await;
    let mut workplans = Observer::start(Api::<Workplan>::namespaced(ns.client.clone(), &ns.name)).await?;

    let mut processes = bench.control_plane.clone();
    processes.push(("workplan-operator".into(), operator.pid()));
    processes.extend(pool.iter().enumerate().map(|(i, w)| (format!("worker-{}", i + 1), w.pid())));
    processes.push(("bench".into(), std::process::id()));
    let cpu_before = bench.cpu(&processes);
    let start = Instant::now();

    let count = bench.sizes.throughput;
    let creating = create_workplans(&ns, count);
    let mut finished = HashSet::new();
    let mut last = start;
    while finished.len() < count {
        let (at, workplan) = workplans
            .next("Workplans to finish", |wp| {
                wp.status.as_ref().and_then(|s| s.phase).is_some_and(Phase::is_finished)
            })
            .await?;
        let status = workplan.status.as_ref().expect("finished");
        if status.phase != Some(Phase::Completed) {
            bail!("Workplan {} ended {:?}: {:?}", workplan.name_any(), status.phase, status.reason);
        }
        if finished.insert(workplan.name_any()) {
            last = at;
        }
    }
    creating.await??;
    let cpu_after = bench.cpu(&processes);
    let seconds = (last - start).as_secs_f64();
    let cpu = cpu_after
        .iter()
        .map(|(name, after)| {
            let used = (after - cpu_before.get(name).copied().unwrap_or(*after)) as f64 / bench.hz;
            (name.clone(), used / seconds)
        })
        .collect();
    Ok(ThroughputRow { workers, workplans: count, seconds, per_minute: count as f64 / seconds * 60.0, cpu })
}

/// VmRSS and VmHWM of a process, in KiB.
fn memory(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name| status_kib(&status, name).with_context(|| format!("no {name} for pid {pid}"));
    Ok((field("VmRSS")?, field("VmHWM")?))
}

/// Creates `count` ConfigMaps, `concurrency` at a time; `named(i)` gives the i-th one's name
/// and the value of its label `group`.
async fn create_config_maps(
    api: &Api<ConfigMap>,
    count: usize,
    concurrency: usize,
    named: impl Fn(usize) -> (String, String),
) -> anyhow::Result<()> {
    futures::stream::iter(0..count)
        .map(|i| {
            let (name, group) = named(i);
            let configmap = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(name),
                    labels: Some(BTreeMap::from([("group".to_string(), group)])),
                    ..ObjectMeta::default()
                },
                data: Some(BTreeMap::from([("i".to_string(), i.to_string())])),
                ..ConfigMap::default()
            };
            async move { api.create(&PostParams::default(), &configmap).await.map(|_| ()) }
        })
        .buffer_unordered(concurrency)
        .try_collect::<()>()
        .await?;
    Ok(())
}

/// 6. The director with Workflows, each watching the ConfigMaps of its own label value.
async fn director_memory(bench: &Bench) -> anyhow::Result<Vec<MemoryRow>> {
    let (configmaps, workflows) = (bench.sizes.configmaps, bench.sizes.workflows);
    let ns = bench.env.namespace("bench-director-memory").await;
    let director = bench.director(&ns.name, "director-memory");
    wait_started(&director, "director").await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (idle_rss, idle_hwm) = memory(director.pid())?;

    let api: Api<ConfigMap> = Api::namespaced(ns.client.clone(), &ns.name);
    create_config_maps(&api, configmaps, 32, |i| (format!("cm-{i}"), format!("g{}", i % workflows))).await?;
    let api: Api<Workflow> = Api::namespaced(ns.client.clone(), &ns.name);
    futures::stream::iter(0..workflows)
        .map(|i| {
            let api = api.clone();
            let group = format!("g{i}");
            let workflow = one_task_workflow(
                &ns.name,
                &format!("wf-{i}"),
                Some(configmap_trigger(None, Some(("group", &group)))),
            );
            async move { api.create(&PostParams::default(), &workflow).await.map(|_| ()) }
        })
        .buffer_unordered(16)
        .try_collect::<()>()
        .await?;
    let started = Instant::now();
    until("the director to baseline every Workflow", Duration::from_secs(600), || {
        let api = api.clone();
        async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let list = api.list(&ListParams::default()).await.ok()?.items;
            let done = list
                .iter()
                .filter(|wf| wf.status.as_ref().is_some_and(|s| !s.baselined_triggers.is_empty()))
                .count();
            (done == workflows).then_some(())
        }
    })
    .await?;
    eprintln!(
        "   every Workflow baselined {:.1} s after the last was created",
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss, hwm) = memory(director.pid())?;
    Ok(vec![
        MemoryRow {
            process: "director".into(),
            load: "idle: no Workflows".into(),
            rss_kib: idle_rss,
            hwm_kib: idle_hwm,
            target_mib: None,
        },
        MemoryRow {
            process: "director".into(),
            load: format!("{workflows} Workflows watching {configmaps} ConfigMaps"),
            rss_kib: rss,
            hwm_kib: hwm,
            target_mib: (!bench.sizes.quick).then_some(64.0),
        },
    ])
}

/// Phase 6, the trigger record at scale: one Workflow whose selector trigger matches
/// `sizes.records` ConfigMaps, created before the director starts (so its memory is what the
/// listing, the baseline and the record cost). The director's VmRSS is read once the record is
/// saved and one change has fired; the target is 128 MiB at 100,000 objects.
async fn record_scale(bench: &Bench) -> anyhow::Result<(MemoryRow, RecordsRow)> {
    let count = bench.sizes.records;
    let ns = bench.env.namespace("bench-trigger-records").await;
    let configmaps: Api<ConfigMap> = Api::namespaced(ns.client.clone(), &ns.name);
    let created = Instant::now();
    create_config_maps(&configmaps, count, 64, |i| (format!("rec-{i}"), "records".to_string())).await?;
    eprintln!("   {count} ConfigMaps created in {:.1} s", created.elapsed().as_secs_f64());

    let director = bench.director(&ns.name, "director-records");
    wait_started(&director, "director").await?;
    let workflows: Api<Workflow> = Api::namespaced(ns.client.clone(), &ns.name);
    let trigger = configmap_trigger(None, Some(("group", "records")));
    workflows.create(&PostParams::default(), &one_task_workflow(&ns.name, "records", Some(trigger))).await?;
    let started = Instant::now();
    let workflow = until("the record to hold every object", Duration::from_secs(900), || {
        let workflows = workflows.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let wf = workflows.get("records").await.ok()?;
            let objects = wf.status.as_ref()?.trigger_record.as_ref()?.objects;
            (objects == count as i64).then_some(wf)
        }
    })
    .await?;
    let baseline_seconds = started.elapsed().as_secs_f64();
    eprintln!("   the record of {count} objects saved {baseline_seconds:.1} s after the Workflow's create");

    let (sent, _) = touch(&configmaps, "rec-4711", 1).await?;
    let workplans: Api<Workplan> = Api::namespaced(ns.client.clone(), &ns.name);
    until("the change's Workplan", TIMEOUT, || {
        let workplans = workplans.clone();
        async move { (!workplans.list(&ListParams::default()).await.ok()?.items.is_empty()).then_some(()) }
    })
    .await?;
    let change_to_workplan_ms = sent.elapsed().as_secs_f64() * 1e3;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss, hwm) = memory(director.pid())?;

    let shards: Api<TriggerRecord> = Api::namespaced(ns.client.clone(), &ns.name);
    let sizes: Vec<usize> = shards
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|shard| serde_json::to_vec(shard).map(|json| json.len()))
        .collect::<Result<_, _>>()?;
    let records = RecordsRow {
        objects: count,
        baseline_seconds,
        workflow_bytes: serde_json::to_vec(&workflow)?.len(),
        shards: sizes.len(),
        largest_shard_bytes: sizes.iter().copied().max().unwrap_or(0),
        change_to_workplan_ms,
    };
    let memory = MemoryRow {
        process: "director".into(),
        load: format!("1 Workflow whose trigger matches {count} ConfigMaps"),
        rss_kib: rss,
        hwm_kib: hwm,
        target_mib: (!bench.sizes.quick).then_some(128.0),
    };
    Ok((memory, records))
}

/// 6. A worker with jobs in flight: pods that nothing binds, so they stay Pending.
async fn worker_memory(bench: &Bench) -> anyhow::Result<Vec<MemoryRow>> {
    let jobs = bench.sizes.jobs;
    let ns = pod_namespace("bench-worker-memory").await;
    let operator = bench.operator(&ns.name, "operator-memory");
    let max = jobs.to_string();
    let worker = bench.worker(
        &ns.name,
        "worker-memory",
        &["--max-in-flight", &max, "--pending-timeout-seconds", "3600"],
    );
    wait_started(&operator, "workplan-operator").await?;
    wait_lease_held(&[&worker]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (idle_rss, idle_hwm) = memory(worker.pid())?;
    create_workplans(&ns, jobs).await??;
    until("the worker to have every job in flight", Duration::from_secs(600), || async {
        (worker.metric("kubeci_worker_jobs_in_flight").await >= jobs as f64).then_some(())
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss, hwm) = memory(worker.pid())?;
    let (op_rss, op_hwm) = memory(operator.pid())?;
    Ok(vec![
        MemoryRow {
            process: "worker".into(),
            load: "idle: no jobs".into(),
            rss_kib: idle_rss,
            hwm_kib: idle_hwm,
            target_mib: None,
        },
        MemoryRow {
            process: "worker".into(),
            load: format!("{jobs} jobs in flight (pods Pending)"),
            rss_kib: rss,
            hwm_kib: hwm,
            target_mib: None,
        },
        MemoryRow {
            process: "workplan-operator".into(),
            load: format!("{jobs} Workplans Running"),
            rss_kib: op_rss,
            hwm_kib: op_hwm,
            target_mib: None,
        },
    ])
}

/// The criterion bench's last results for 10,000 steps (figure 7): the planner and, as its
/// baseline, parsing the same Workflow's YAML.
fn planner_results() -> (Option<Summary>, Option<Summary>, Option<String>) {
    let root = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| TestEnv::repo_root().join("target"))
        .join("criterion");
    let read = |group: &str| -> Option<(Summary, std::time::SystemTime)> {
        let path = root.join(group).join("10000/new/sample.json");
        let text = std::fs::read_to_string(&path).ok()?;
        let modified = std::fs::metadata(&path).ok()?.modified().ok()?;
        Some((criterion_samples(&serde_json::from_str(&text).ok()?)?, modified))
    };
    let plan = read("plan");
    let parse = read("parse_yaml");
    let note = plan.as_ref().map(|(_, modified)| {
        let age = modified.elapsed().unwrap_or_default().as_secs();
        format!("planner figures from the criterion bench run {age} s before this report (`make bench` runs it first)")
    });
    (plan.map(|(s, _)| s), parse.map(|(s, _)| s), note)
}

/// The pids of the control plane's processes, from `testenv.json`.
fn control_plane_pids(dir: &Path) -> anyhow::Result<Vec<(String, u32)>> {
    let path = dir.join("testenv.json");
    let info: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
    )?;
    let pid = |key: &str| info.get(key).and_then(|v| v.as_u64()).map(|p| p as u32);
    Ok([
        ("kube-apiserver", "apiserverPid"),
        ("etcd", "etcdPid"),
        ("kube-controller-manager", "controllerManagerPid"),
    ]
    .into_iter()
    .filter_map(|(name, key)| Some((name.to_string(), pid(key)?)))
    .collect())
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn load_average() -> Vec<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .filter_map(|v| v.parse().ok())
        .collect()
}

fn git_commit() -> String {
    let run = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(TestEnv::repo_root())
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let commit = run(&["rev-parse", "--short", "HEAD"]);
    let dirty = !run(&["status", "--porcelain", "--untracked-files=no"]).is_empty();
    if dirty { format!("{commit}+dirty") } else { commit }
}
