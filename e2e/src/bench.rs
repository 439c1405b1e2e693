//! The pure parts of `kubeci-bench` (DESIGN.md §9.4): summaries of samples, the API server's
//! write counters, `/proc` readings and the Markdown report. The I/O lives in
//! `src/bin/kubeci-bench.rs`; what is here is unit-tested, so the numbers the benchmark prints
//! are computed by code that is checked.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

/// Median, p99 and friends of a set of samples, in milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub samples: usize,
    pub median_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
}

impl Summary {
    /// `None` for no samples.
    pub fn of(samples: &[Duration]) -> Option<Summary> {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        Summary::of_ms(&mut ms)
    }

    /// Sorts `ms` in place.
    pub fn of_ms(ms: &mut [f64]) -> Option<Summary> {
        if ms.is_empty() {
            return None;
        }
        ms.sort_by(f64::total_cmp);
        Some(Summary {
            samples: ms.len(),
            median_ms: percentile(ms, 50.0),
            p99_ms: percentile(ms, 99.0),
            mean_ms: ms.iter().sum::<f64>() / ms.len() as f64,
            min_ms: ms[0],
            max_ms: ms[ms.len() - 1],
        })
    }
}

/// The `p`th percentile of sorted values, interpolating linearly between the two nearest ranks
/// (the definition of numpy's default and of R's type 7).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    assert!(!sorted.is_empty(), "a percentile of no samples");
    let rank = (p / 100.0).clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (low, high) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[low] + (sorted[high] - sorted[low]) * (rank - low as f64)
}

/// One series of `apiserver_request_total`, summed over the labels that do not matter here
/// (code, component, scope, version, dry_run).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct RequestKey {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: String,
}

impl RequestKey {
    /// `resource[/subresource]` with the group when it has one, as kubectl spells it.
    pub fn resource_name(&self) -> String {
        let mut name = self.resource.clone();
        if !self.group.is_empty() {
            name = format!("{name}.{}", self.group);
        }
        if !self.subresource.is_empty() {
            name = format!("{name}/{}", self.subresource);
        }
        name
    }

    /// Whether the request changes state (APPLY is a server-side apply PATCH).
    pub fn is_write(&self) -> bool {
        matches!(self.verb.as_str(), "POST" | "PUT" | "PATCH" | "APPLY" | "DELETE" | "DELETECOLLECTION")
    }

    /// Who makes this kind of write in the benchmark. The API server's counters carry no client
    /// label, so writes are attributed by what they touch: kubeci's objects and pods are
    /// kubeci's; pod binding and pod status are the simulated scheduler and kubelet's;
    /// ConfigMaps are the benchmark's own trigger writes; Leases are renewed on a timer (the
    /// controller manager's leader election and the workers' liveness), not per run.
    pub fn owner(&self) -> Owner {
        match (self.group.as_str(), self.resource.as_str(), self.subresource.as_str()) {
            ("", "pods", "binding" | "status") => Owner::Kubelet,
            ("", "configmaps", _) => Owner::Bench,
            ("coordination.k8s.io", "leases", _) => Owner::Timer,
            _ => Owner::Kubeci,
        }
    }
}

/// Who a write is attributed to (see [`RequestKey::owner`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Owner {
    Kubeci,
    Kubelet,
    Bench,
    Timer,
}

impl Owner {
    pub fn label(self) -> &'static str {
        match self {
            Owner::Kubeci => "kubeci",
            Owner::Kubelet => "simulated kubelet/scheduler",
            Owner::Bench => "benchmark (the trigger)",
            Owner::Timer => "timer-driven (leases), not per run",
        }
    }
}

/// The `apiserver_request_total` counters of a Prometheus text exposition.
pub fn parse_request_totals(text: &str) -> BTreeMap<RequestKey, f64> {
    let mut totals = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else { continue };
        let Some((labels, value)) = rest.rsplit_once("} ") else { continue };
        let Ok(value) = value.trim().parse::<f64>() else { continue };
        let labels = parse_labels(labels);
        let get = |name: &str| labels.get(name).cloned().unwrap_or_default();
        let key = RequestKey {
            verb: get("verb"),
            group: get("group"),
            resource: get("resource"),
            subresource: get("subresource"),
        };
        *totals.entry(key).or_insert(0.0) += value;
    }
    totals
}

/// `a="x",b="y"` into a map; values may hold escaped quotes and commas.
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((name, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(if escaped == 'n' { '\n' } else { escaped });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(name.trim_start_matches(',').trim().to_string(), value);
        rest = &after[end..];
    }
    labels
}

/// The writes between two scrapes, per key (keys that did not change are left out).
pub fn write_delta(
    before: &BTreeMap<RequestKey, f64>,
    after: &BTreeMap<RequestKey, f64>,
) -> BTreeMap<RequestKey, f64> {
    after
        .iter()
        .filter(|(key, _)| key.is_write())
        .map(|(key, value)| (key.clone(), value - before.get(key).copied().unwrap_or(0.0)))
        .filter(|(_, delta)| *delta > 0.0)
        .collect()
}

/// CPU time (user + system) in clock ticks from the text of `/proc/<pid>/stat`.
pub fn cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces: count from its end.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A `Vm*` line of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in KiB.
pub fn status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Median and max per iteration of a criterion `sample.json` (`iters` and `times` in ns), in
/// milliseconds.
pub fn criterion_samples(sample_json: &serde_json::Value) -> Option<Summary> {
    let iters = sample_json.get("iters")?.as_array()?;
    let times = sample_json.get("times")?.as_array()?;
    let mut per_iteration: Vec<f64> =
        iters.iter().zip(times).filter_map(|(n, t)| Some(t.as_f64()? / n.as_f64()? / 1e6)).collect();
    Summary::of_ms(&mut per_iteration)
}

/// A latency compared with the baseline of the same run.
#[derive(Clone, Debug, Serialize)]
pub struct LatencyRow {
    pub id: String,
    pub what: String,
    pub summary: Option<Summary>,
    /// How many baseline round trips the target allows for the median, if there is a target.
    pub target_ratio: Option<f64>,
}

/// Throughput with a number of workers.
#[derive(Clone, Debug, Serialize)]
pub struct ThroughputRow {
    pub workers: usize,
    pub workplans: usize,
    pub seconds: f64,
    pub per_minute: f64,
    /// CPU seconds per wall second (1.0 = one core) of each process over the run.
    pub cpu: BTreeMap<String, f64>,
}

/// Resident memory of a process at a load.
#[derive(Clone, Debug, Serialize)]
pub struct MemoryRow {
    pub process: String,
    pub load: String,
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub target_mib: Option<f64>,
}

/// One Workflow whose trigger matches many objects: what its trigger record costs.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RecordsRow {
    /// Objects the trigger matches.
    pub objects: usize,
    /// From the Workflow's create until its record is saved with every object.
    pub baseline_seconds: f64,
    /// The Workflow as stored (JSON, managedFields included).
    pub workflow_bytes: usize,
    /// TriggerRecord objects holding the record, and the largest of them (JSON).
    pub shards: usize,
    pub largest_shard_bytes: usize,
    /// One matched object updated → its Workplan exists.
    pub change_to_workplan_ms: f64,
}

/// The writes per run, by key.
#[derive(Clone, Debug, Serialize)]
pub struct WriteRow {
    pub verb: String,
    pub resource: String,
    pub owner: Owner,
    pub total: f64,
    pub per_run: f64,
}

/// Rows of the writes table from a delta over `runs` runs, kubeci's first.
pub fn write_rows(delta: &BTreeMap<RequestKey, f64>, runs: usize) -> Vec<WriteRow> {
    let mut rows: Vec<WriteRow> = delta
        .iter()
        .map(|(key, total)| WriteRow {
            verb: key.verb.clone(),
            resource: key.resource_name(),
            owner: key.owner(),
            total: *total,
            per_run: total / runs.max(1) as f64,
        })
        .collect();
    rows.sort_by(|a, b| (a.owner, &a.resource, &a.verb).cmp(&(b.owner, &b.resource, &b.verb)));
    rows
}

/// Writes per run of one owner.
pub fn writes_per_run(rows: &[WriteRow], owner: Owner) -> f64 {
    rows.iter().filter(|r| r.owner == owner).map(|r| r.per_run).sum()
}

/// Everything one benchmark run measured; serialized as `bench-results/latest.json`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub started_at: String,
    pub git_commit: String,
    pub quick: bool,
    pub cpus: usize,
    /// `/proc/loadavg` (1, 5, 15 minutes) when the run started and ended.
    pub load_before: Vec<f64>,
    pub load_after: Vec<f64>,
    pub baseline: Option<Summary>,
    pub latencies: Vec<LatencyRow>,
    pub throughput: Vec<ThroughputRow>,
    pub write_runs: usize,
    pub writes: Vec<WriteRow>,
    pub memory: Vec<MemoryRow>,
    /// Phase 6's trigger record at scale (its memory is a row of `memory`).
    pub records: Option<RecordsRow>,
    /// The planner on 10,000 steps and, as its baseline, parsing the same Workflow from YAML.
    pub planner: Option<Summary>,
    pub planner_baseline: Option<Summary>,
    pub notes: Vec<String>,
}

fn ms(value: f64) -> String {
    if value >= 100.0 { format!("{value:.0} ms") } else { format!("{value:.2} ms") }
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**missed**" }
}

impl Report {
    /// The Markdown tables printed at the end and shown in the README.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let base = self.baseline.as_ref();
        let _ = writeln!(out, "| # | latency | samples | median | p99 | median ÷ baseline | target |");
        let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---|");
        if let Some(b) = base {
            let _ = writeln!(
                out,
                "| 1 | baseline: ConfigMap create → its watch event | {} | {} | {} | 1.00 | |",
                b.samples,
                ms(b.median_ms),
                ms(b.p99_ms)
            );
        }
        for row in &self.latencies {
            let Some(s) = &row.summary else {
                let _ = writeln!(out, "| {} | {} | 0 | – | – | – | not measured |", row.id, row.what);
                continue;
            };
            let ratio = base.map(|b| s.median_ms / b.median_ms);
            let target = match (row.target_ratio, ratio) {
                (Some(t), Some(r)) => format!("≤ {t}× baseline: {}", verdict(r <= t)),
                _ => String::new(),
            };
            let ratio = ratio.map(|r| format!("{r:.2}")).unwrap_or_else(|| "–".into());
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {ratio} | {target} |",
                row.id,
                row.what,
                s.samples,
                ms(s.median_ms),
                ms(s.p99_ms)
            );
        }

        if !self.throughput.is_empty() {
            let one = self.throughput.iter().find(|r| r.workers == 1).map(|r| r.per_minute);
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "| 4 | workers | Workplans | seconds | Workplans/min | × 1 worker | kube-apiserver CPU | etcd CPU | kubeci CPU | bench + kubelet CPU |"
            );
            let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
            for row in &self.throughput {
                let cpu = |name: &str| {
                    row.cpu.get(name).map(|c| format!("{:.0}%", c * 100.0)).unwrap_or_else(|| "–".into())
                };
                let kubeci: f64 = row
                    .cpu
                    .iter()
                    .filter(|(k, _)| k.starts_with("workplan-operator") || k.starts_with("worker"))
                    .map(|(_, v)| v)
                    .sum();
                let scale = one.map(|o| format!("{:.2}", row.per_minute / o)).unwrap_or_else(|| "–".into());
                let _ = writeln!(
                    out,
                    "| | {} | {} | {:.1} | {:.0} | {scale} | {} | {} | {:.0}% | {} |",
                    row.workers,
                    row.workplans,
                    row.seconds,
                    row.per_minute,
                    cpu("kube-apiserver"),
                    cpu("etcd"),
                    kubeci * 100.0,
                    cpu("bench"),
                );
            }
            let _ = writeln!(
                out,
                "\nCPU is CPU-seconds per second of the run (100% = one core; this machine has {} cores).",
                self.cpus
            );
        }

        if !self.writes.is_empty() {
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "| 5 | API writes per one-task run ({} runs) | verb | per run | by |",
                self.write_runs
            );
            let _ = writeln!(out, "|---|---|---|---:|---|");
            for row in &self.writes {
                let _ = writeln!(
                    out,
                    "| | {} | {} | {:.2} | {} |",
                    row.resource,
                    row.verb,
                    row.per_run,
                    row.owner.label()
                );
            }
            let kubeci = writes_per_run(&self.writes, Owner::Kubeci);
            let kubelet = writes_per_run(&self.writes, Owner::Kubelet);
            let trigger = writes_per_run(&self.writes, Owner::Bench);
            let _ = writeln!(
                out,
                "| | **kubeci** | | **{kubeci:.2}** | target ≤ 10: {}; {:.2} with the kubelet's |",
                verdict(kubeci <= 10.0),
                kubeci + kubelet
            );
            let _ = writeln!(out, "| | simulated kubelet/scheduler | | {kubelet:.2} | |");
            let _ = writeln!(out, "| | the trigger (the user's write) | | {trigger:.2} | |");
        }

        if !self.memory.is_empty() {
            let _ = writeln!(out);
            let _ = writeln!(out, "| 6 | process | load | VmRSS | VmHWM (peak) | target |");
            let _ = writeln!(out, "|---|---|---|---:|---:|---|");
            for row in &self.memory {
                let target = row
                    .target_mib
                    .map(|t| format!("≤ {t} MiB: {}", verdict(row.rss_kib as f64 / 1024.0 <= t)))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "| | {} | {} | {:.1} MiB | {:.1} MiB | {target} |",
                    row.process,
                    row.load,
                    row.rss_kib as f64 / 1024.0,
                    row.hwm_kib as f64 / 1024.0
                );
            }
        }

        if let Some(r) = &self.records {
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "| 6 | trigger record: matched objects | baseline | Workflow | shards | largest shard | change → Workplan |"
            );
            let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
            let _ = writeln!(
                out,
                "| | {} | {:.1} s | {:.1} KiB | {} | {:.1} KiB | {} |",
                r.objects,
                r.baseline_seconds,
                r.workflow_bytes as f64 / 1024.0,
                r.shards,
                r.largest_shard_bytes as f64 / 1024.0,
                ms(r.change_to_workplan_ms)
            );
        }

        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "| 7 | planner, 10,000 steps (criterion) | samples | median | max | baseline: parse its YAML |"
        );
        let _ = writeln!(out, "|---|---|---:|---:|---:|---:|");
        match (&self.planner, &self.planner_baseline) {
            (Some(p), baseline) => {
                let baseline = baseline.as_ref().map(|b| ms(b.median_ms)).unwrap_or_else(|| "–".into());
                let _ = writeln!(
                    out,
                    "| | plan_steps | {} | {} | {} | {baseline} |",
                    p.samples,
                    ms(p.median_ms),
                    ms(p.max_ms)
                );
            }
            (None, _) => {
                let _ = writeln!(
                    out,
                    "| | not found: run `make bench` (the criterion bench runs first) | | | | |"
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    #[test]
    fn percentiles_interpolate_between_ranks() {
        let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 50.0), 50.5);
        assert_eq!(percentile(&sorted, 99.0), 99.01);
        assert_eq!(percentile(&sorted, 100.0), 100.0);
        assert_eq!(percentile(&sorted, 0.0), 1.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
    }

    #[test]
    fn a_summary_sorts_its_samples() {
        let samples = [3, 1, 2, 5, 4].map(Duration::from_millis);
        let summary = Summary::of(&samples).unwrap();
        assert_eq!((summary.samples, summary.median_ms, summary.min_ms, summary.max_ms), (5, 3.0, 1.0, 5.0));
        assert_eq!(summary.mean_ms, 3.0);
        assert!((summary.p99_ms - 4.96).abs() < 1e-9);
        assert_eq!(Summary::of(&[]), None);
    }

    const METRICS: &str = r#"# HELP apiserver_request_total [STABLE] Counter of apiserver requests
# TYPE apiserver_request_total counter
apiserver_request_total{code="201",component="apiserver",dry_run="",group="",resource="pods",scope="resource",subresource="binding",verb="POST",version="v1"} 4
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="pods",scope="resource",subresource="status",verb="PATCH",version="v1"} 4
apiserver_request_total{code="201",component="apiserver",dry_run="",group="kube.ci",resource="requeststates",scope="resource",subresource="",verb="POST",version="v1alpha1"} 2
apiserver_request_total{code="200",component="apiserver",dry_run="",group="kube.ci",resource="requeststates",scope="resource",subresource="",verb="PUT",version="v1alpha1"} 9
apiserver_request_total{code="409",component="apiserver",dry_run="",group="kube.ci",resource="requeststates",scope="resource",subresource="",verb="PUT",version="v1alpha1"} 1
apiserver_request_total{code="200",component="apiserver",dry_run="",group="kube.ci",resource="workplans",scope="namespace",subresource="",verb="LIST",version="v1alpha1"} 30
apiserver_request_total{code="200",component="apiserver",dry_run="",group="coordination.k8s.io",resource="leases",scope="resource",subresource="",verb="PUT",version="v1"} 17
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="a\"b,c",scope="resource",subresource="",verb="PUT",version="v1"} 1
apiserver_request_duration_seconds_bucket{verb="PUT",le="0.1"} 3
"#;

    fn key(verb: &str, group: &str, resource: &str, subresource: &str) -> RequestKey {
        RequestKey {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: subresource.into(),
        }
    }

    #[test]
    fn request_totals_are_summed_over_codes_and_keyed_by_verb_and_resource() {
        let totals = parse_request_totals(METRICS);
        assert_eq!(totals.len(), 7);
        assert_eq!(totals[&key("PUT", "kube.ci", "requeststates", "")], 10.0);
        assert_eq!(totals[&key("POST", "", "pods", "binding")], 4.0);
        assert_eq!(totals[&key("PUT", "", "a\"b,c", "")], 1.0, "escaped label values");
    }

    #[test]
    fn the_delta_keeps_writes_that_changed_and_attributes_them() {
        let before = parse_request_totals(METRICS);
        let after = parse_request_totals(
            &METRICS
                .replace("verb=\"PUT\",version=\"v1alpha1\"} 9", "verb=\"PUT\",version=\"v1alpha1\"} 17")
                .replace("verb=\"LIST\",version=\"v1alpha1\"} 30", "verb=\"LIST\",version=\"v1alpha1\"} 90")
                .replace(
                    "subresource=\"binding\",verb=\"POST\",version=\"v1\"} 4",
                    "subresource=\"binding\",verb=\"POST\",version=\"v1\"} 8",
                ),
        );
        let delta = write_delta(&before, &after);
        assert_eq!(
            delta.into_iter().collect::<Vec<_>>(),
            vec![
                (key("POST", "", "pods", "binding"), 4.0),
                (key("PUT", "kube.ci", "requeststates", ""), 8.0)
            ],
            "reads (LIST) and unchanged writes are left out"
        );
        let rows = write_rows(&write_delta(&before, &after), 2);
        assert_eq!(
            rows.iter().map(|r| (r.resource.as_str(), r.owner, r.per_run)).collect::<Vec<_>>(),
            vec![("requeststates.kube.ci", Owner::Kubeci, 4.0), ("pods/binding", Owner::Kubelet, 2.0)]
        );
        assert_eq!(writes_per_run(&rows, Owner::Kubeci), 4.0);
        assert_eq!(key("PUT", "coordination.k8s.io", "leases", "").owner(), Owner::Timer);
    }

    #[test]
    fn proc_readings() {
        let stat =
            "4242 (kube apiserver) S 1 4242 4242 0 -1 4194560 9 0 0 0 150 25 0 0 20 0 12 0 100 1000 200";
        assert_eq!(cpu_ticks(stat), Some(175));
        assert_eq!(cpu_ticks("garbage"), None);
        let status = "Name:\tdirector\nVmHWM:\t   40960 kB\nVmRSS:\t   30720 kB\n";
        assert_eq!(status_kib(status, "VmRSS"), Some(30720));
        assert_eq!(status_kib(status, "VmHWM"), Some(40960));
        assert_eq!(status_kib(status, "VmSwap"), None);
    }

    #[test]
    fn criterion_samples_are_per_iteration() {
        let sample = serde_json::json!({"iters": [1.0, 2.0, 4.0], "times": [2e6, 2e6, 12e6]});
        let summary = criterion_samples(&sample).unwrap();
        assert_eq!((summary.median_ms, summary.max_ms, summary.min_ms), (2.0, 3.0, 1.0));
    }

    #[test]
    fn the_report_renders_targets_against_the_baseline() {
        let summary = |median_ms: f64| Summary {
            samples: 10,
            median_ms,
            p99_ms: median_ms * 2.0,
            mean_ms: median_ms,
            min_ms: median_ms,
            max_ms: median_ms * 2.0,
        };
        let report = Report {
            cpus: 2,
            baseline: Some(summary(2.0)),
            latencies: vec![
                LatencyRow {
                    id: "2".into(),
                    what: "trigger".into(),
                    summary: Some(summary(3.0)),
                    target_ratio: Some(2.0),
                },
                LatencyRow {
                    id: "3".into(),
                    what: "hand-off".into(),
                    summary: Some(summary(5.0)),
                    target_ratio: Some(2.0),
                },
                LatencyRow { id: "3b".into(), what: "run".into(), summary: None, target_ratio: None },
            ],
            throughput: vec![
                ThroughputRow {
                    workers: 1,
                    workplans: 10,
                    seconds: 6.0,
                    per_minute: 100.0,
                    cpu: BTreeMap::from([("kube-apiserver".into(), 0.5), ("worker-1".into(), 0.1)]),
                },
                ThroughputRow {
                    workers: 4,
                    workplans: 10,
                    seconds: 2.0,
                    per_minute: 300.0,
                    cpu: BTreeMap::new(),
                },
            ],
            write_runs: 2,
            writes: write_rows(
                &BTreeMap::from([
                    (key("PUT", "kube.ci", "requeststates", ""), 10.0),
                    (key("POST", "", "pods", "binding"), 4.0),
                ]),
                2,
            ),
            memory: vec![MemoryRow {
                process: "director".into(),
                load: "x".into(),
                rss_kib: 70 * 1024,
                hwm_kib: 80 * 1024,
                target_mib: Some(64.0),
            }],
            ..Report::default()
        };
        let table = report.markdown();
        assert!(
            table.contains(
                "| 1 | baseline: ConfigMap create → its watch event | 10 | 2.00 ms | 4.00 ms | 1.00 | |"
            ),
            "{table}"
        );
        assert!(
            table.contains("| 2 | trigger | 10 | 3.00 ms | 6.00 ms | 1.50 | ≤ 2× baseline: met |"),
            "{table}"
        );
        assert!(
            table.contains("| 3 | hand-off | 10 | 5.00 ms | 10.00 ms | 2.50 | ≤ 2× baseline: **missed** |"),
            "{table}"
        );
        assert!(table.contains("| 3b | run | 0 | – | – | – | not measured |"), "{table}");
        assert!(table.contains("| | 1 | 10 | 6.0 | 100 | 1.00 | 50% | – | 10% | – |"), "{table}");
        assert!(table.contains("| | 4 | 10 | 2.0 | 300 | 3.00 |"), "{table}");
        assert!(table.contains("| | requeststates.kube.ci | PUT | 5.00 | kubeci |"), "{table}");
        assert!(
            table.contains("| | **kubeci** | | **5.00** | target ≤ 10: met; 7.00 with the kubelet's |"),
            "{table}"
        );
        assert!(table.contains("| | director | x | 70.0 MiB | 80.0 MiB | ≤ 64 MiB: **missed** |"), "{table}");
        assert!(table.contains("not found: run `make bench`"), "{table}");
    }
}
