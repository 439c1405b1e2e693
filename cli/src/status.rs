//! `get`: where a run stands, step by step, and the runs of a Workflow.
//!
//! Derived only from what kubeci already writes: the Workplan's status, its RequestState's
//! history (one entry per transition of each job) and the task pods' container statuses (serial
//! steps are init containers, parallel steps containers). [`run_tree`] and [`runs`] are pure;
//! the command reads the objects and renders what they return.

use std::fmt::Write;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde::Serialize;
use shared_types::protocol::Policy;
use shared_types::request_state::{HistoryEntry, Job};
use shared_types::{EventKind, JobState, Phase, RequestState, Workplan, labels};

use crate::graph::Mode;

/// Where a step (or a task) stands.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Not started yet.
    Waiting,
    Running,
    Succeeded,
    Failed,
    /// Will not run: an earlier step or task failed, or the run ended.
    Skipped,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Waiting => "Waiting",
            State::Running => "Running",
            State::Succeeded => "Succeeded",
            State::Failed => "Failed",
            State::Skipped => "Skipped",
        }
    }
}

/// One run as a tree of tasks and steps.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunTree {
    pub name: String,
    pub namespace: String,
    pub workflow: String,
    pub phase: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    pub tasks: Vec<TaskNode>,
    /// The workspace cleanup job, once requested.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cleanup: Option<State>,
}

/// One task: one pod per attempt, of which the latest is shown.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TaskNode {
    pub name: String,
    pub state: State,
    /// The attempt shown (1-based): its pod's, or the history's when it has no pod yet.
    pub attempt: u32,
    /// How many attempts the task may take: 1 + its retry limit.
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub steps: Vec<StepNode>,
}

/// One step: one container of its task's pod.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StepNode {
    pub name: String,
    /// `serial` (an init container) or `parallel` (a container).
    pub mode: &'static str,
    pub state: State,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finish: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    pub container: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What the history says about one job: when it was requested and claimed, and how it ended.
#[derive(Default)]
struct JobTrail<'a> {
    requested: Option<&'a Time>,
    started: Option<&'a Time>,
    last: Option<&'a HistoryEntry>,
    /// The attempt the history is at (1-based): one more than the failed attempts, or the one
    /// that failed last.
    attempt: u32,
}

fn trail(request: Option<&RequestState>, job: Job) -> JobTrail<'_> {
    let mut trail = JobTrail { attempt: 1, ..JobTrail::default() };
    let entries = request.and_then(|r| r.status.as_ref()).map(|s| s.history.as_slice()).unwrap_or_default();
    for entry in entries.iter().filter(|e| e.job == job) {
        if trail.last.is_some_and(|e| e.state == JobState::Failed) {
            // A failed task requested again is its next attempt.
            trail.attempt += 1;
        }
        match entry.state {
            // A job requested again (its worker was lost) starts over.
            JobState::Requested => {
                trail.requested.get_or_insert(&entry.timestamp);
            }
            JobState::Started => {
                trail.started.get_or_insert(&entry.timestamp);
            }
            _ => {}
        }
        trail.last = Some(entry);
    }
    trail
}

impl JobTrail<'_> {
    fn state(&self) -> Option<State> {
        self.last.map(|e| match e.state {
            JobState::Requested => State::Waiting,
            JobState::Started => State::Running,
            JobState::Completed => State::Succeeded,
            JobState::Failed => State::Failed,
        })
    }

    fn finished(&self) -> Option<&Time> {
        self.last.filter(|e| matches!(e.state, JobState::Completed | JobState::Failed)).map(|e| &e.timestamp)
    }
}

/// The tree of `workplan`, from its RequestState (none before the first request) and the pods
/// labelled with it. `now` dates what still runs.
pub fn run_tree(
    workplan: &Workplan,
    request: Option<&RequestState>,
    pods: &[Pod],
    now: Timestamp,
) -> RunTree {
    let name = workplan.metadata.name.clone().unwrap_or_default();
    let status = workplan.status.clone().unwrap_or_default();
    let phase = status.phase.unwrap_or_default();
    let mut failed_before = false;
    let mut tasks = Vec::new();
    let policy = Policy::of(workplan);
    for (index, task) in workplan.spec.tasks.iter().enumerate() {
        let job = trail(request, Job::Task(index));
        let latest = latest_attempt(pods, index);
        let attempt = latest.map_or(1, attempt_of).max(job.attempt);
        // An earlier attempt's pod is not the current attempt's, whose pod is not made yet.
        let pod = latest.filter(|p| attempt_of(p) == attempt);
        let state = match job.state() {
            Some(state) => state,
            None if failed_before || phase.is_finished() => State::Skipped,
            None => State::Waiting,
        };
        let start = job.started.or(job.requested);
        let message = job.last.and_then(|e| e.message.clone());
        let steps = task
            .serial_steps
            .iter()
            .map(|s| (s, Mode::Serial))
            .chain(task.parallel_steps.iter().map(|s| (s, Mode::Parallel)))
            .map(|(step, mode)| step_node(&step.name, mode, pod, state, message.as_deref(), now))
            .collect();
        tasks.push(TaskNode {
            name: Job::Task(index).to_string(),
            state,
            attempt,
            attempts: (policy.retries.get(index).map_or(0, |r| r.limit) + 1).max(attempt),
            pod: pod.and_then(|p| p.metadata.name.clone()),
            start: start.map(stamp),
            duration: start.map(|s| duration(s.0, job.finished().map_or(now, |f| f.0))),
            message,
            steps,
        });
        failed_before |= state == State::Failed;
    }
    let cleanup = trail(request, Job::Cleanup).state();
    RunTree {
        namespace: workplan.metadata.namespace.clone().unwrap_or_default(),
        workflow: workplan.spec.workflow.clone(),
        phase: phase_str(phase).to_string(),
        reason: status.reason.clone(),
        progress: status.progress.clone(),
        node: status.node_name.clone(),
        start: status.start_time.as_ref().map(stamp),
        duration: status.duration.clone().or_else(|| status.start_time.as_ref().map(|s| duration(s.0, now))),
        tasks,
        cleanup,
        name,
    }
}

fn task_label(pod: &Pod) -> Option<&str> {
    pod.metadata.labels.as_ref()?.get(labels::TASK).map(String::as_str)
}

/// The attempt of a task pod: its `kube.ci/attempt` label, 1 without one (the first attempt's
/// pod has none) or with one that is not a number.
pub fn attempt_of(pod: &Pod) -> u32 {
    let label = pod.metadata.labels.as_ref().and_then(|l| l.get(labels::ATTEMPT));
    label.and_then(|a| a.parse().ok()).unwrap_or(1)
}

/// The pod of task `index`'s latest attempt among `pods`: the highest `kube.ci/attempt` (then the
/// last name, so that the choice does not depend on the list's order). Earlier attempts' pods
/// stay, with their logs, after a retry.
pub fn latest_attempt<'a>(pods: impl IntoIterator<Item = &'a Pod>, index: usize) -> Option<&'a Pod> {
    let task = index.to_string();
    pods.into_iter()
        .filter(|p| task_label(p) == Some(task.as_str()))
        .max_by_key(|p| (attempt_of(p), p.metadata.name.as_deref()))
}

fn step_node(
    name: &str,
    mode: Mode,
    pod: Option<&Pod>,
    task: State,
    task_message: Option<&str>,
    now: Timestamp,
) -> StepNode {
    let status = pod.and_then(|p| p.status.as_ref());
    let containers = match mode {
        Mode::Serial => status.and_then(|s| s.init_container_statuses.as_ref()),
        Mode::Parallel => status.and_then(|s| s.container_statuses.as_ref()),
    };
    let container: Option<&ContainerStatus> = containers.and_then(|c| c.iter().find(|c| c.name == name));
    let state = container.and_then(|c| c.state.as_ref());
    let mut node = StepNode {
        name: name.to_string(),
        mode: if mode == Mode::Serial { "serial" } else { "parallel" },
        state: State::Waiting,
        exit_code: None,
        start: None,
        finish: None,
        duration: None,
        pod: pod.and_then(|p| p.metadata.name.clone()),
        container: name.to_string(),
        message: None,
    };
    if let Some(terminated) = state.and_then(|s| s.terminated.as_ref()) {
        node.state = if terminated.exit_code == 0 { State::Succeeded } else { State::Failed };
        node.exit_code = Some(terminated.exit_code);
        node.start = terminated.started_at.as_ref().map(stamp);
        node.finish = terminated.finished_at.as_ref().map(stamp);
        if let (Some(s), Some(f)) = (&terminated.started_at, &terminated.finished_at) {
            node.duration = Some(duration(s.0, f.0));
        }
        if terminated.exit_code != 0 {
            node.message = terminated
                .message
                .as_deref()
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .or(terminated.reason.as_deref())
                .map(str::to_string);
        }
    } else if let Some(running) = state.and_then(|s| s.running.as_ref()) {
        node.state = State::Running;
        node.start = running.started_at.as_ref().map(stamp);
        node.duration = running.started_at.as_ref().map(|s| duration(s.0, now));
    } else {
        let waiting = state.and_then(|s| s.waiting.as_ref());
        node.message = waiting.and_then(|w| w.reason.clone()).filter(|r| r != "PodInitializing");
        node.state = match task {
            // The pod finished without running it: an earlier step failed.
            State::Failed | State::Skipped => State::Skipped,
            // The pod is gone but the history says the task succeeded.
            State::Succeeded => State::Succeeded,
            State::Waiting | State::Running => State::Waiting,
        };
        // No pod to say which step failed: the worker's message names it.
        if container.is_none()
            && task == State::Failed
            && task_message.is_some_and(|m| m.starts_with(&format!("step {name:?} ")))
        {
            node.state = State::Failed;
            node.message = task_message.map(str::to_string);
        }
    }
    node
}

/// A Workflow's run, one line of `get workflow/NAME`.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunRow {
    pub name: String,
    pub phase: String,
    pub trigger: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    pub age: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The runs of a Workflow.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Runs {
    pub workflow: String,
    pub namespace: String,
    pub runs: Vec<RunRow>,
    /// Workplans of the Workflow that do not deserialize: name and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub malformed: Vec<String>,
}

/// The Workflow's Workplans, oldest first.
pub fn runs(
    workflow: &str,
    namespace: &str,
    workplans: &[Workplan],
    malformed: Vec<String>,
    now: Timestamp,
) -> Runs {
    let mut rows: Vec<(Option<Timestamp>, RunRow)> = workplans
        .iter()
        .map(|wp| {
            let status = wp.status.clone().unwrap_or_default();
            let created = wp.metadata.creation_timestamp.as_ref();
            let row = RunRow {
                name: wp.metadata.name.clone().unwrap_or_default(),
                phase: phase_str(status.phase.unwrap_or_default()).to_string(),
                trigger: trigger(wp),
                created: created.map(stamp),
                age: created.map_or_else(|| "-".to_string(), |c| age(c.0, now)),
                duration: status
                    .duration
                    .clone()
                    .or_else(|| status.start_time.as_ref().map(|s| duration(s.0, now))),
                reason: status.reason.clone(),
            };
            (created.map(|c| c.0), row)
        })
        .collect();
    rows.sort_by(|a, b| (a.0, &a.1.name).cmp(&(b.0, &b.1.name)));
    Runs {
        workflow: workflow.to_string(),
        namespace: namespace.to_string(),
        runs: rows.into_iter().map(|(_, row)| row).collect(),
        malformed,
    }
}

/// What fired a run, in a few words: `Updated ConfigMap default/my-config`, `Manual (run=3)`.
pub fn trigger(workplan: &Workplan) -> String {
    let t = &workplan.spec.trigger;
    match t.event {
        EventKind::Manual => match &t.run {
            Some(run) => format!("Manual (run={run})"),
            None => "Manual".to_string(),
        },
        EventKind::Created => match t.generation {
            Some(generation) => format!("Created (generation {generation})"),
            None => "Created".to_string(),
        },
        event => {
            let object = match (&t.namespace, &t.name) {
                (Some(ns), Some(name)) => format!("{ns}/{name}"),
                (None, Some(name)) => name.clone(),
                _ => String::new(),
            };
            let kind = t.kind.clone().unwrap_or_default();
            format!("{} {kind} {object}", event.as_str()).trim_end().to_string()
        }
    }
}

fn phase_str(phase: Phase) -> &'static str {
    match phase {
        Phase::Pending => "Pending",
        Phase::Running => "Running",
        Phase::Completed => "Completed",
        Phase::Failed => "Failed",
        Phase::Cancelled => "Cancelled",
    }
}

fn stamp(time: &Time) -> String {
    time.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// `1h2m`, `3m20s`, `4s`: the two largest units, as kubectl prints durations.
pub fn duration(from: Timestamp, to: Timestamp) -> String {
    let seconds = to.duration_since(from).max(SignedDuration::ZERO).as_secs();
    let (d, h, m, s) = (seconds / 86400, seconds / 3600 % 24, seconds / 60 % 60, seconds % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) if s == 0 => format!("{m}m"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, _) if m == 0 => format!("{h}h"),
        (0, _, _) => format!("{h}h{m}m"),
        _ if h == 0 => format!("{d}d"),
        _ => format!("{d}d{h}h"),
    }
}

/// kubectl's AGE: the largest unit only past a minute or so.
fn age(created: Timestamp, now: Timestamp) -> String {
    let seconds = now.duration_since(created).max(SignedDuration::ZERO).as_secs();
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// Left-aligned columns two spaces apart, trailing blanks cut.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            let pad = widths[c].saturating_sub(cell.chars().count());
            let _ = write!(line, "{cell}{}  ", " ".repeat(pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

impl RunTree {
    /// A header, then one line per task and one per step below it.
    pub fn text(&self) -> String {
        let mut out =
            format!("Workplan {}/{} (Workflow {}): {}", self.namespace, self.name, self.workflow, self.phase);
        if let Some(progress) = &self.progress {
            let _ = write!(out, ", task {progress}");
        }
        if let Some(node) = &self.node {
            let _ = write!(out, ", node {node}");
        }
        if let Some(duration) = &self.duration {
            let _ = write!(out, ", {duration}");
        }
        out.push('\n');
        if let Some(reason) = &self.reason {
            let _ = writeln!(out, "Reason: {reason}");
        }
        let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_string());
        let mut rows = vec![
            ["STEP", "MODE", "STATE", "EXIT", "START", "DURATION", "POD/CONTAINER"]
                .map(String::from)
                .to_vec(),
        ];
        for task in &self.tasks {
            rows.push(vec![
                match task.attempts {
                    1 => task.name.clone(),
                    of => format!("{} (attempt {}/{of})", task.name, task.attempt),
                },
                String::new(),
                task.state.as_str().to_string(),
                String::new(),
                dash(&task.start),
                dash(&task.duration),
                dash(&task.pod),
            ]);
            let count = task.steps.len();
            for (i, step) in task.steps.iter().enumerate() {
                let branch = if i + 1 == count { "└─" } else { "├─" };
                rows.push(vec![
                    format!("{branch} {}", step.name),
                    step.mode.to_string(),
                    step.state.as_str().to_string(),
                    step.exit_code.map_or_else(|| "-".to_string(), |c| c.to_string()),
                    dash(&step.start),
                    dash(&step.duration),
                    match &step.pod {
                        Some(pod) => format!("{pod}/{}", step.container),
                        None => format!("-/{}", step.container),
                    },
                ]);
            }
        }
        if let Some(cleanup) = self.cleanup {
            rows.push(vec!["cleanup".into(), String::new(), cleanup.as_str().into()]);
        }
        out.push_str(&table(&rows));
        for step in self.tasks.iter().flat_map(|t| &t.steps) {
            if let (State::Failed | State::Waiting, Some(message)) = (step.state, &step.message) {
                let _ = writeln!(out, "{}: {message}", step.name);
            }
        }
        out
    }
}

impl Runs {
    /// One line per run, oldest first.
    pub fn text(&self) -> String {
        let mut out = format!(
            "Workflow {}/{}: {} {}\n",
            self.namespace,
            self.workflow,
            self.runs.len(),
            if self.runs.len() == 1 { "run" } else { "runs" }
        );
        if !self.runs.is_empty() {
            let mut rows =
                vec![["WORKPLAN", "PHASE", "TRIGGER", "AGE", "DURATION"].map(String::from).to_vec()];
            for run in &self.runs {
                rows.push(vec![
                    run.name.clone(),
                    run.phase.clone(),
                    run.trigger.clone(),
                    run.age.clone(),
                    run.duration.clone().unwrap_or_else(|| "-".to_string()),
                ]);
            }
            out.push_str(&table(&rows));
        }
        for malformed in &self.malformed {
            let _ = writeln!(out, "malformed: {malformed}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;
    use shared_types::{TriggerEvent, Workflow, planner};

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    /// The seed's Workplan as the director creates it, with a status.
    fn seed_workplan(status: &str) -> Workplan {
        let workflow: Workflow = serde_yaml::from_str(shared_types::repo::SEED_WORKFLOW).unwrap();
        let mut wp = planner::plan(&workflow, TriggerEvent::manual(Some("1".into()))).unwrap();
        wp.metadata.name = Some("wp".into());
        wp.status = Some(serde_yaml::from_str(status).unwrap());
        wp
    }

    fn request(history: &str) -> RequestState {
        serde_yaml::from_str(&format!(
            "apiVersion: kube.ci/v1alpha1\nkind: RequestState\nmetadata: {{name: wp}}\nspec: {{request-uid: u, job: task-0, state: STARTED}}\nstatus:\n  history:\n{history}"
        ))
        .unwrap()
    }

    fn pod(yaml: &str) -> Pod {
        serde_yaml::from_str(yaml).unwrap()
    }

    const TERMINATED_0: &str = "{terminated: {exitCode: 0, reason: Completed, startedAt: '2026-01-01T10:00:01Z', finishedAt: '2026-01-01T10:00:03Z'}}";

    fn task_0_done() -> Pod {
        pod(&format!(
            r#"
metadata: {{name: wp-task-0, labels: {{kube.ci/task: "0"}}}}
status:
  phase: Succeeded
  initContainerStatuses:
  - {{name: step-1, image: a, imageID: "", ready: false, restartCount: 0, state: {TERMINATED_0}}}
  containerStatuses:
  - {{name: step-2, image: a, imageID: "", ready: false, restartCount: 0, state: {TERMINATED_0}}}
  - {{name: step-3, image: a, imageID: "", ready: false, restartCount: 0, state: {TERMINATED_0}}}
"#
        ))
    }

    type Summary = Vec<(String, State, Option<i32>, Option<String>)>;

    fn summary(tree: &RunTree) -> Summary {
        tree.tasks
            .iter()
            .flat_map(|t| {
                std::iter::once((t.name.clone(), t.state, None, t.duration.clone()))
                    .chain(t.steps.iter().map(|s| (s.name.clone(), s.state, s.exit_code, s.duration.clone())))
            })
            .collect()
    }

    fn row(
        name: &str,
        state: State,
        exit: Option<i32>,
        duration: Option<&str>,
    ) -> (String, State, Option<i32>, Option<String>) {
        (name.to_string(), state, exit, duration.map(str::to_string))
    }

    #[test]
    fn a_running_second_task_shows_the_running_step_and_the_waiting_one() {
        let wp = seed_workplan(
            "{phase: Running, taskIndex: 1, progress: 2/2, nodeName: n1, startTime: '2026-01-01T10:00:00Z'}",
        );
        let rqs = request(
            "  - {job: task-0, state: REQUESTED, timestamp: '2026-01-01T10:00:00Z'}
  - {job: task-0, state: STARTED, worker: w1, timestamp: '2026-01-01T10:00:00Z'}
  - {job: task-0, state: COMPLETED, worker: w1, nodeName: n1, timestamp: '2026-01-01T10:00:04Z'}
  - {job: task-1, state: REQUESTED, timestamp: '2026-01-01T10:00:05Z'}
  - {job: task-1, state: STARTED, worker: w1, timestamp: '2026-01-01T10:00:06Z'}
",
        );
        let task_1 = pod(r#"
metadata: {name: wp-task-1, labels: {kube.ci/task: "1"}}
status:
  phase: Pending
  initContainerStatuses:
  - {name: step-4, image: a, imageID: "", ready: false, restartCount: 0, state: {running: {startedAt: '2026-01-01T10:00:07Z'}}}
  containerStatuses:
  - {name: step-5, image: a, imageID: "", ready: false, restartCount: 0, state: {waiting: {reason: PodInitializing}}}
"#);
        let tree = run_tree(&wp, Some(&rqs), &[task_1, task_0_done()], at("2026-01-01T10:00:17Z"));
        assert_eq!(
            summary(&tree),
            [
                row("task-0", State::Succeeded, None, Some("4s")),
                row("step-1", State::Succeeded, Some(0), Some("2s")),
                row("step-2", State::Succeeded, Some(0), Some("2s")),
                row("step-3", State::Succeeded, Some(0), Some("2s")),
                row("task-1", State::Running, None, Some("11s")),
                row("step-4", State::Running, None, Some("10s")),
                row("step-5", State::Waiting, None, None),
            ]
        );
        assert_eq!(tree.tasks[1].steps[0].pod.as_deref(), Some("wp-task-1"));
        assert_eq!(tree.tasks[1].steps[0].container, "step-4");
        assert_eq!(tree.tasks[1].steps[0].start.as_deref(), Some("2026-01-01T10:00:07Z"));
        assert_eq!(tree.duration.as_deref(), Some("17s"));
        assert_eq!(tree.cleanup, None);
        assert_eq!(
            tree.text(),
            "Workplan default/wp (Workflow my-workflow): Running, task 2/2, node n1, 17s
STEP       MODE      STATE      EXIT  START                 DURATION  POD/CONTAINER
task-0               Succeeded        2026-01-01T10:00:00Z  4s        wp-task-0
├─ step-1  serial    Succeeded  0     2026-01-01T10:00:01Z  2s        wp-task-0/step-1
├─ step-2  parallel  Succeeded  0     2026-01-01T10:00:01Z  2s        wp-task-0/step-2
└─ step-3  parallel  Succeeded  0     2026-01-01T10:00:01Z  2s        wp-task-0/step-3
task-1               Running          2026-01-01T10:00:06Z  11s       wp-task-1
├─ step-4  serial    Running    -     2026-01-01T10:00:07Z  10s       wp-task-1/step-4
└─ step-5  parallel  Waiting    -     -                     -         wp-task-1/step-5
"
        );
    }

    #[test]
    fn a_failed_serial_step_skips_the_rest_and_the_later_tasks() {
        let wp = seed_workplan(
            "{phase: Failed, reason: 'task-0 failed: step \"step-1\" exited with code 3: disk full', duration: 9s, startTime: '2026-01-01T10:00:00Z'}",
        );
        let rqs = request(
            "  - {job: task-0, state: REQUESTED, timestamp: '2026-01-01T10:00:00Z'}
  - {job: task-0, state: STARTED, worker: w1, timestamp: '2026-01-01T10:00:00Z'}
  - {job: task-0, state: FAILED, worker: w1, timestamp: '2026-01-01T10:00:04Z', message: 'step \"step-1\" exited with code 3: disk full'}
  - {job: cleanup, state: REQUESTED, timestamp: '2026-01-01T10:00:05Z'}
  - {job: cleanup, state: COMPLETED, worker: w1, timestamp: '2026-01-01T10:00:09Z'}
",
        );
        let task_0 = pod(r#"
metadata: {name: wp-task-0, labels: {kube.ci/task: "0"}}
status:
  phase: Failed
  initContainerStatuses:
  - {name: step-1, image: a, imageID: "", ready: false, restartCount: 0, state: {terminated: {exitCode: 3, reason: Error, message: "disk full\n", startedAt: '2026-01-01T10:00:01Z', finishedAt: '2026-01-01T10:00:02Z'}}}
  containerStatuses:
  - {name: step-2, image: a, imageID: "", ready: false, restartCount: 0, state: {waiting: {reason: PodInitializing}}}
  - {name: step-3, image: a, imageID: "", ready: false, restartCount: 0, state: {waiting: {reason: PodInitializing}}}
"#);
        let tree = run_tree(&wp, Some(&rqs), &[task_0], at("2026-01-01T11:00:00Z"));
        assert_eq!(
            summary(&tree),
            [
                row("task-0", State::Failed, None, Some("4s")),
                row("step-1", State::Failed, Some(3), Some("1s")),
                row("step-2", State::Skipped, None, None),
                row("step-3", State::Skipped, None, None),
                row("task-1", State::Skipped, None, None),
                row("step-4", State::Skipped, None, None),
                row("step-5", State::Skipped, None, None),
            ]
        );
        assert_eq!(tree.tasks[0].steps[0].message.as_deref(), Some("disk full"));
        assert_eq!(tree.duration.as_deref(), Some("9s"));
        assert_eq!(tree.cleanup, Some(State::Succeeded));
        let text = tree.text();
        assert!(
            text.contains("\nReason: task-0 failed: step \"step-1\" exited with code 3: disk full\n"),
            "{text}"
        );
        assert!(text.ends_with("cleanup              Succeeded\nstep-1: disk full\n"), "{text}");
    }

    /// The seed's run retrying task-0 (step-1 allows 2 retries): attempt 1 failed, attempt 2 runs.
    fn retrying() -> (Workplan, RequestState, Vec<Pod>) {
        let mut wp =
            seed_workplan("{phase: Running, taskIndex: 0, progress: 1/2, startTime: '2026-01-01T10:00:00Z'}");
        wp.spec.tasks[0].serial_steps[0].retries =
            Some(shared_types::Retries { limit: 2, backoff_seconds: None });
        let rqs = request(
            "  - {job: task-0, state: REQUESTED, timestamp: '2026-01-01T10:00:00Z'}
  - {job: task-0, state: STARTED, worker: w1, timestamp: '2026-01-01T10:00:00Z'}
  - {job: task-0, state: FAILED, worker: w1, timestamp: '2026-01-01T10:00:04Z', message: 'step \"step-1\" exited with code 1'}
  - {job: task-0, state: REQUESTED, timestamp: '2026-01-01T10:00:14Z', message: 'attempt 2 of 3'}
  - {job: task-0, state: STARTED, worker: w1, timestamp: '2026-01-01T10:00:15Z'}
",
        );
        let second = pod(r#"
metadata: {name: wp-task-0-attempt-2, labels: {kube.ci/task: "0", kube.ci/attempt: "2"}}
status:
  phase: Pending
  initContainerStatuses:
  - {name: step-1, image: a, imageID: "", ready: false, restartCount: 0, state: {running: {startedAt: '2026-01-01T10:00:16Z'}}}
"#);
        let first = pod(r#"
metadata: {name: wp-task-0, labels: {kube.ci/task: "0"}}
status:
  phase: Failed
  initContainerStatuses:
  - {name: step-1, image: a, imageID: "", ready: false, restartCount: 0, state: {terminated: {exitCode: 1, reason: Error, startedAt: '2026-01-01T10:00:01Z', finishedAt: '2026-01-01T10:00:03Z'}}}
"#);
        // The first attempt's pod listed last and first: the latest attempt wins either way.
        (wp, rqs, vec![second, first])
    }

    #[test]
    fn a_retried_task_shows_its_latest_attempt() {
        let (wp, rqs, mut pods) = retrying();
        for _ in 0..2 {
            let tree = run_tree(&wp, Some(&rqs), &pods, at("2026-01-01T10:00:20Z"));
            let task = &tree.tasks[0];
            assert_eq!((task.state, task.attempt, task.attempts), (State::Running, 2, 3));
            assert_eq!(task.pod.as_deref(), Some("wp-task-0-attempt-2"));
            assert_eq!((task.steps[0].state, task.steps[0].exit_code), (State::Running, None));
            let text = tree.text();
            assert!(
                text.contains("\ntask-0 (attempt 2/3)  ")
                    && text.contains("wp-task-0-attempt-2/step-1\n")
                    && text.contains("\ntask-1  "),
                "{text}"
            );
            pods.reverse();
        }
        // Attempt 2 requested, its pod not made yet: attempt 1's pod is not shown as attempt 2's.
        let mut history = rqs.clone();
        history.status.as_mut().unwrap().history.truncate(4);
        let first: Vec<Pod> = pods.iter().filter(|p| attempt_of(p) == 1).cloned().collect();
        let tree = run_tree(&wp, Some(&history), &first, at("2026-01-01T10:00:14Z"));
        let task = &tree.tasks[0];
        assert_eq!((task.state, task.attempt, task.pod.as_deref()), (State::Waiting, 2, None));
        assert!(task.steps.iter().all(|s| s.state == State::Waiting && s.pod.is_none()));
    }

    #[test]
    fn a_malformed_attempt_label_is_the_first_attempt() {
        let (_, _, pods) = retrying();
        let mut forged = pods[1].clone();
        forged.metadata.name = Some("wp-task-0-forged".into());
        forged.metadata.labels.as_mut().unwrap().insert(labels::ATTEMPT.into(), "-1".into());
        assert_eq!(attempt_of(&forged), 1);
        let all = [forged, pods[0].clone(), pods[1].clone()];
        assert_eq!(
            latest_attempt(&all, 0).and_then(|p| p.metadata.name.as_deref()),
            Some("wp-task-0-attempt-2")
        );
        assert!(latest_attempt(&all, 1).is_none());
    }

    #[test]
    fn a_cancelled_run_says_so() {
        let mut wp =
            seed_workplan("{phase: Cancelled, reason: 'Cancelled by alice before it started', duration: 0s}");
        wp.metadata.creation_timestamp = Some(Time(at("2026-01-01T10:00:00Z")));
        let tree = run_tree(&wp, None, &[], at("2026-01-01T10:00:01Z"));
        assert_eq!(tree.phase, "Cancelled");
        assert!(
            tree.tasks.iter().all(|t| t.state == State::Skipped),
            "a final run's unstarted tasks are skipped"
        );
        let runs = runs("wf", "default", &[wp], vec![], at("2026-01-01T10:00:01Z"));
        assert_eq!(runs.runs[0].phase, "Cancelled");
    }

    #[test]
    fn without_a_pod_the_history_tells() {
        // A pod that could not be created: the worker's message names the step.
        let wp = seed_workplan("{phase: Failed, startTime: '2026-01-01T10:00:00Z'}");
        let rqs = request(
            "  - {job: task-0, state: REQUESTED, timestamp: '2026-01-01T10:00:00Z'}
  - {job: task-0, state: FAILED, worker: w1, timestamp: '2026-01-01T10:05:00Z', message: 'step \"step-2\" cannot start: ImagePullBackOff: nope'}
",
        );
        let tree = run_tree(&wp, Some(&rqs), &[], at("2026-01-01T11:00:00Z"));
        let states: Vec<State> = tree.tasks[0].steps.iter().map(|s| s.state).collect();
        assert_eq!(states, [State::Skipped, State::Failed, State::Skipped]);
        assert_eq!(tree.tasks[0].duration.as_deref(), Some("5m"));

        // Not started: every task waits.
        let fresh = seed_workplan("{}");
        let tree = run_tree(&fresh, None, &[], at("2026-01-01T11:00:00Z"));
        assert_eq!(tree.phase, "Pending");
        assert!(
            tree.tasks.iter().flat_map(|t| &t.steps).all(|s| s.state == State::Waiting && s.pod.is_none())
        );
    }

    #[test]
    fn runs_oldest_first_with_trigger_age_and_duration() {
        let mut done =
            seed_workplan("{phase: Completed, duration: 1m20s, startTime: '2026-01-01T10:00:00Z'}");
        done.metadata.name = Some("wf-a".into());
        done.metadata.creation_timestamp = Some(Time(at("2026-01-01T10:00:00Z")));
        done.spec.trigger = serde_yaml::from_str("{event: Updated, apiVersion: v1, kind: ConfigMap, namespace: default, name: my-config, uid: u, resourceVersion: '7'}").unwrap();
        let mut running = seed_workplan("{phase: Running, startTime: '2026-01-01T11:58:00Z'}");
        running.metadata.name = Some("wf-b".into());
        running.metadata.creation_timestamp = Some(Time(at("2026-01-01T11:58:00Z")));
        let runs = runs(
            "wf",
            "default",
            &[running, done],
            vec!["wf-c: spec.tasks: invalid type".into()],
            at("2026-01-01T12:00:00Z"),
        );
        assert_eq!(
            runs.text(),
            "Workflow default/wf: 2 runs
WORKPLAN  PHASE      TRIGGER                              AGE   DURATION
wf-a      Completed  Updated ConfigMap default/my-config  120m  1m20s
wf-b      Running    Manual (run=1)                       2m    2m
malformed: wf-c: spec.tasks: invalid type
"
        );
    }

    #[test]
    fn durations_read_like_kubectls() {
        let t0 = at("2026-01-01T00:00:00Z");
        let after = |s: i64| duration(t0, t0 + SignedDuration::from_secs(s));
        assert_eq!(
            [after(0), after(59), after(60), after(80), after(3600), after(3720), after(90000)],
            ["0s", "59s", "1m", "1m20s", "1h", "1h2m", "1d1h"]
        );
    }
}
