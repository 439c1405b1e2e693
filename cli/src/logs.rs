//! `logs`: every step's log in execution order, each line prefixed by its step.
//!
//! A run is a sequence of stages: for each task, its serial steps one by one (init containers),
//! then its parallel steps together (containers, their lines interleaved as they come). Which
//! container can be read, must be waited for or will never run is decided by [`readiness`] from a
//! [`Snapshot`] of the Workplan and its pods; with `-f` the snapshot is kept current by watches
//! (no polling) and the command waits for pods that do not exist yet, up to the end of the run.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, LogParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use shared_types::{RequestState, Workplan, labels};
use tokio::sync::{mpsc, watch};

use crate::graph::Mode;
use crate::{Cluster, Error, status};

/// What is known of a run at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// `None` once the Workplan was deleted.
    pub workplan: Option<Workplan>,
    /// The run's pods by name.
    pub pods: BTreeMap<String, Pod>,
    /// Pods seen and then deleted.
    pub deleted: BTreeSet<String>,
    /// The run's RequestState, when watched (`None` before the operator created it).
    pub request: Option<RequestState>,
}

/// One line of a run's log, or a word on what the reader waits for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line {
    Log { step: String, text: String },
    Progress(String),
}

/// How far [`stream`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Until {
    /// What the steps have logged so far; steps not started are passed over.
    Now,
    /// Live, up to the end of the last step read.
    StepsEnd,
    /// Live, up to the Workplan's final phase (after its cleanup), which ends with a
    /// [`Line::Progress`] naming it.
    RunEnd,
}

/// Aborts a spawned task when dropped, so that a reader dropped half-way (a client gone) ends
/// its watches too.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One step to read: its task, name and whether it is an init container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepRef {
    pub task: usize,
    pub name: String,
    pub mode: Mode,
}

/// Whether a step's log can be read now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ready {
    /// Not yet: `why` says what it waits for.
    Wait { why: String },
    /// The container has started: read `pod`.
    Read { pod: String },
    /// It will never run: an earlier step failed or the run ended without it.
    Skip,
}

/// The stages of `workplan` in execution order, or only `step`'s. An unknown step is an error
/// naming the Workplan and its steps.
pub fn stages(workplan: &Workplan, step: Option<&str>) -> Result<Vec<Vec<StepRef>>, Error> {
    let mut stages = Vec::new();
    for (task, t) in workplan.spec.tasks.iter().enumerate() {
        let step_ref = |name: &str, mode| StepRef { task, name: name.to_string(), mode };
        for s in &t.serial_steps {
            stages.push(vec![step_ref(&s.name, Mode::Serial)]);
        }
        stages.push(t.parallel_steps.iter().map(|s| step_ref(&s.name, Mode::Parallel)).collect());
    }
    let Some(wanted) = step else { return Ok(stages) };
    let all: Vec<StepRef> = stages.into_iter().flatten().collect();
    match all.iter().find(|s| s.name == wanted) {
        Some(found) => Ok(vec![vec![found.clone()]]),
        None => Err(Error::NoSuchStep {
            workplan: name_of(workplan),
            step: wanted.to_string(),
            steps: all.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", "),
        }),
    }
}

fn name_of(workplan: &Workplan) -> String {
    format!(
        "{}/{}",
        workplan.metadata.namespace.as_deref().unwrap_or_default(),
        workplan.metadata.name.as_deref().unwrap_or_default()
    )
}

/// The pod of the task's latest attempt: a retry's log is the one to follow.
fn task_pod(snapshot: &Snapshot, task: usize) -> Option<&Pod> {
    status::latest_attempt(snapshot.pods.values(), task)
}

/// The name of the task's latest pod: the latest attempt's among the pods there are and those
/// seen deleted, so that the deletion of a retry's pod is not hidden by an earlier attempt's.
fn pod_name(snapshot: &Snapshot, workplan: &str, task: usize) -> String {
    let attempt_of_name = |name: &str| -> Option<u32> {
        let rest = name.strip_prefix(&shared_types::render::task_pod_name(workplan, task))?;
        match rest {
            "" => Some(1),
            rest => rest.strip_prefix("-attempt-")?.parse().ok(),
        }
    };
    let present = task_pod(snapshot, task)
        .map(|p| (status::attempt_of(p), p.metadata.name.clone().unwrap_or_default()));
    let deleted = snapshot.deleted.iter().filter_map(|d| attempt_of_name(d).map(|n| (n, d.clone())));
    present
        .into_iter()
        .chain(deleted)
        .max()
        .map_or_else(|| shared_types::render::task_pod_name(workplan, task), |(_, name)| name)
}

fn container_state(pod: &Pod, step: &StepRef) -> Option<k8s_openapi::api::core::v1::ContainerState> {
    let status = pod.status.as_ref()?;
    let containers = match step.mode {
        Mode::Serial => status.init_container_statuses.as_ref(),
        Mode::Parallel => status.container_statuses.as_ref(),
    }?;
    containers.iter().find(|c| c.name == step.name)?.state.clone()
}

fn pod_finished(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

fn check_deleted(snapshot: &Snapshot, name: &str, step: &StepRef) -> Result<(), Error> {
    let Some(workplan) = &snapshot.workplan else {
        return Err(Error::WorkplanDeleted { workplan: name.to_string(), step: step.name.clone() });
    };
    let pod = pod_name(snapshot, workplan.metadata.name.as_deref().unwrap_or_default(), step.task);
    let deleting = task_pod(snapshot, step.task).is_some_and(|p| p.metadata.deletion_timestamp.is_some());
    if deleting || snapshot.deleted.contains(&pod) {
        return Err(Error::PodDeleted { pod, workplan: name.to_string(), step: step.name.clone() });
    }
    Ok(())
}

/// Whether `step`'s log can be read in `snapshot`; an error when the Workplan or the step's pod
/// was deleted.
pub fn readiness(snapshot: &Snapshot, name: &str, step: &StepRef) -> Result<Ready, Error> {
    check_deleted(snapshot, name, step)?;
    let workplan = snapshot.workplan.as_ref().expect("checked above");
    let finished = workplan.status.as_ref().and_then(|s| s.phase).is_some_and(|p| p.is_finished());
    let pod_name = pod_name(snapshot, workplan.metadata.name.as_deref().unwrap_or_default(), step.task);
    let Some(pod) = task_pod(snapshot, step.task) else {
        return Ok(if finished {
            Ready::Skip
        } else {
            Ready::Wait { why: format!("waiting for pod {pod_name} (task-{})", step.task) }
        });
    };
    let state = container_state(pod, step);
    let started = state.as_ref().is_some_and(|s| s.running.is_some() || s.terminated.is_some());
    Ok(match started {
        true => Ready::Read { pod: pod.metadata.name.clone().unwrap_or(pod_name) },
        false if pod_finished(pod) || finished => Ready::Skip,
        false => {
            let reason = state.and_then(|s| s.waiting).and_then(|w| w.reason);
            Ready::Wait {
                why: match reason {
                    Some(reason) => {
                        format!("waiting for step {} to start in pod {pod_name} ({reason})", step.name)
                    }
                    None => format!("waiting for step {} to start in pod {pod_name}", step.name),
                },
            }
        }
    })
}

/// Whether `step` has ended in `snapshot` (its log is complete); an error when its pod or the
/// Workplan was deleted.
pub fn ended(snapshot: &Snapshot, name: &str, step: &StepRef) -> Result<bool, Error> {
    check_deleted(snapshot, name, step)?;
    Ok(task_pod(snapshot, step.task).is_none_or(|pod| {
        pod_finished(pod) || container_state(pod, step).is_some_and(|s| s.terminated.is_some())
    }))
}

/// Prints the logs of `name` (or of its step `step`) to `out`; with `follow`, live until the
/// run ends.
pub async fn logs(
    cluster: &Cluster,
    name: &str,
    step: Option<&str>,
    follow: bool,
    out: &mut dyn Write,
    progress: &mut dyn Write,
) -> Result<(), Error> {
    let (lines, mut incoming) = mpsc::unbounded_channel::<Line>();
    let until = if follow { Until::RunEnd } else { Until::Now };
    let read = async move { stream(cluster, name, step, until, &lines).await };
    let print = async {
        while let Some(line) = incoming.recv().await {
            match line {
                Line::Log { step, text } => writeln!(out, "[{step}] {text}")?,
                Line::Progress(text) => writeln!(progress, "{text}")?,
            }
            out.flush()?;
        }
        Ok::<_, Error>(())
    };
    let (read, printed) = futures::join!(read, print);
    read?;
    printed
}

/// Sends the log lines of `name` (or of its step `step`) to `lines` in execution order, reading
/// as far as `until` says.
pub async fn stream(
    cluster: &Cluster,
    name: &str,
    step: Option<&str>,
    until: Until,
    lines: &mpsc::UnboundedSender<Line>,
) -> Result<(), Error> {
    let workplan: Workplan = cluster.get(name).await?;
    let stages = stages(&workplan, step)?;
    let full_name = name_of(&workplan);
    let follow = until != Until::Now;
    let (tx, rx) = watch::channel(Snapshot { workplan: Some(workplan), ..Snapshot::default() });
    let _watches = if follow {
        Some(AbortOnDrop(tokio::spawn(keep_current(cluster.clone(), name.to_string(), tx, false))))
    } else {
        let pods = cluster
            .api::<Pod>()
            .list(&ListParams::default().labels(&format!("{}={name}", labels::WORKPLAN)))
            .await
            .map_err(|source| Error::Kube {
                what: format!("listing the pods of Workplan {full_name}"),
                source,
            })?;
        tx.send_modify(|s| {
            s.pods =
                pods.items.into_iter().map(|p| (p.metadata.name.clone().unwrap_or_default(), p)).collect()
        });
        None
    };
    let reader = Reader { pods: cluster.api::<Pod>(), name: full_name.clone(), follow };
    for stage in &stages {
        reader.stage(stage, rx.clone(), lines).await?;
    }
    if until == Until::RunEnd {
        // The run ends when the Workplan reaches its final phase, after the cleanup.
        let mut rx = rx.clone();
        let last = rx
            .wait_for(|s| crate::cluster::run_over(s.workplan.as_ref()))
            .await
            .map_err(|_| Error::WatchEnded(full_name.clone()))?
            .clone();
        match last.workplan.and_then(|w| w.status) {
            Some(status) => {
                let phase = format!("{:?}", status.phase.unwrap_or_default());
                let reason = status.reason.map(|r| format!(": {r}")).unwrap_or_default();
                let _ = lines.send(Line::Progress(format!("Workplan {full_name} {phase}{reason}")));
            }
            None => {
                return Err(Error::WorkplanDeleted {
                    workplan: full_name.clone(),
                    step: "(the end of the run)".into(),
                });
            }
        }
    }
    Ok(())
}

struct Reader {
    pods: Api<Pod>,
    name: String,
    follow: bool,
}

impl Reader {
    /// Reads every step of a stage. Followed, the steps of a stage run together and their lines
    /// interleave as they come; read afterwards, each step's log is sent whole, in declaration
    /// order.
    async fn stage(
        &self,
        stage: &[StepRef],
        rx: watch::Receiver<Snapshot>,
        lines: &mpsc::UnboundedSender<Line>,
    ) -> Result<(), Error> {
        if self.follow {
            futures::future::try_join_all(stage.iter().map(|step| self.step(step, rx.clone(), lines)))
                .await?;
        } else {
            for step in stage {
                self.step(step, rx.clone(), lines).await?;
            }
        }
        Ok(())
    }

    async fn step(
        &self,
        step: &StepRef,
        mut rx: watch::Receiver<Snapshot>,
        lines: &mpsc::UnboundedSender<Line>,
    ) -> Result<(), Error> {
        let mut said = None;
        let pod = loop {
            let ready = readiness(&rx.borrow_and_update(), &self.name, step)?;
            match ready {
                Ready::Read { pod } => break pod,
                Ready::Skip => return Ok(()),
                Ready::Wait { .. } if !self.follow => return Ok(()),
                Ready::Wait { why } => {
                    if said.as_ref() != Some(&why) {
                        let _ = lines.send(Line::Progress(why.clone()));
                        said = Some(why);
                    }
                    rx.changed().await.map_err(|_| Error::WatchEnded(self.name.clone()))?;
                }
            }
        };
        let params =
            LogParams { container: Some(step.name.clone()), follow: self.follow, ..LogParams::default() };
        let what = || format!("reading the log of step {} (pod {pod}) of Workplan {}", step.name, self.name);
        let stream = self.pods.log_stream(&pod, &params).await;
        let stream = match stream {
            Ok(stream) => stream,
            // Deleted between the snapshot and the request: say so rather than 404.
            Err(_) if check_deleted(&rx.borrow(), &self.name, step).is_err() => {
                return check_deleted(&rx.borrow(), &self.name, step);
            }
            Err(source) => return Err(Error::Kube { what: what(), source }),
        };
        let mut stream_lines = stream.lines();
        loop {
            match stream_lines.try_next().await {
                Ok(Some(line)) => {
                    let _ = lines.send(Line::Log { step: step.name.clone(), text: line });
                }
                Ok(None) => break,
                Err(e) => {
                    check_deleted(&rx.borrow(), &self.name, step)?;
                    return Err(Error::Kube { what: what(), source: kube::Error::ReadEvents(e) });
                }
            }
        }
        if self.follow {
            // The stream ends with the container (or the connection): wait until the pod says the
            // step ended, so that a deleted pod is reported instead of passed over.
            loop {
                if ended(&rx.borrow_and_update(), &self.name, step)? {
                    break;
                }
                rx.changed().await.map_err(|_| Error::WatchEnded(self.name.clone()))?;
            }
        }
        Ok(())
    }
}

/// Keeps `tx` current from a watch of the Workplan and one of its pods, and with `request` one
/// of its RequestState.
pub async fn keep_current(cluster: Cluster, name: String, tx: watch::Sender<Snapshot>, request: bool) {
    let _counted = Watching::start();
    let by_name = || watcher::Config::default().fields(&format!("metadata.name={name}"));
    let workplans = watcher::watcher(cluster.api::<Workplan>(), by_name()).default_backoff();
    let pods = watcher::watcher(
        cluster.api::<Pod>(),
        watcher::Config::default().labels(&format!("{}={name}", labels::WORKPLAN)),
    )
    .default_backoff();
    // Lazy: no request to the API server unless polled.
    let requests = watcher::watcher(cluster.api::<RequestState>(), by_name()).default_backoff();
    let (mut workplans, mut pods, mut requests) =
        (std::pin::pin!(workplans), std::pin::pin!(pods), std::pin::pin!(requests));
    let mut relisting: Option<BTreeMap<String, Pod>> = None;
    let (mut workplan_seen, mut request_seen) = (false, false);
    loop {
        tokio::select! {
            Some(event) = workplans.next() => on_workplan(event, &tx, &mut workplan_seen),
            Some(event) = pods.next() => on_pod(event, &tx, &mut relisting),
            Some(event) = requests.next(), if request => on_request(event, &tx, &mut request_seen),
            else => break,
        }
    }
}

/// How many [`keep_current`]s run in this process: each holds its watches open until it ends
/// (`kubectl kubeci ui` reports it, so that a test can see a stream's watches end).
static WATCHING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The number of runs being watched now.
pub fn watching() -> usize {
    WATCHING.load(std::sync::atomic::Ordering::SeqCst)
}

/// Counts one run watched for as long as it lives (an aborted task drops it too).
struct Watching;

impl Watching {
    fn start() -> Watching {
        WATCHING.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Watching
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        WATCHING.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

fn on_request(
    event: Result<Event<RequestState>, watcher::Error>,
    tx: &watch::Sender<Snapshot>,
    seen: &mut bool,
) {
    on_one(event, tx, seen, |s, r| s.request = r);
}

fn on_workplan(
    event: Result<Event<Workplan>, watcher::Error>,
    tx: &watch::Sender<Snapshot>,
    seen: &mut bool,
) {
    on_one(event, tx, seen, |s, wp| s.workplan = wp);
}

/// An event of the watch of one object by name: `set` it, or `None` once it is gone (deleted,
/// or not in a re-list).
fn on_one<K>(
    event: Result<Event<K>, watcher::Error>,
    tx: &watch::Sender<Snapshot>,
    seen: &mut bool,
    set: impl Fn(&mut Snapshot, Option<K>),
) {
    match event {
        Ok(Event::Apply(object) | Event::InitApply(object)) => {
            *seen = true;
            tx.send_modify(|s| set(s, Some(object)));
        }
        Ok(Event::Delete(_)) => tx.send_modify(|s| set(s, None)),
        Ok(Event::Init) => *seen = false,
        Ok(Event::InitDone) if !*seen => tx.send_modify(|s| set(s, None)),
        // The watcher retries with back-off; nothing to show meanwhile.
        _ => {}
    }
}

fn on_pod(
    event: Result<Event<Pod>, watcher::Error>,
    tx: &watch::Sender<Snapshot>,
    relisting: &mut Option<BTreeMap<String, Pod>>,
) {
    let name = |pod: &Pod| pod.metadata.name.clone().unwrap_or_default();
    match event {
        Ok(Event::Apply(pod)) => tx.send_modify(|s| {
            s.pods.insert(name(&pod), pod);
        }),
        Ok(Event::Delete(pod)) => tx.send_modify(|s| {
            s.pods.remove(&name(&pod));
            s.deleted.insert(name(&pod));
        }),
        Ok(Event::Init) => *relisting = Some(BTreeMap::new()),
        Ok(Event::InitApply(pod)) => {
            relisting.get_or_insert_default().insert(name(&pod), pod);
        }
        Ok(Event::InitDone) => {
            let fresh = relisting.take().unwrap_or_default();
            tx.send_modify(|s| {
                // Pods a re-list no longer has were deleted while the watch was down.
                let gone: Vec<String> = s.pods.keys().filter(|k| !fresh.contains_key(*k)).cloned().collect();
                s.deleted.extend(gone);
                s.pods = fresh;
            });
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;
    use shared_types::{TriggerEvent, Workflow, planner};

    fn seed() -> Workplan {
        let workflow: Workflow = serde_yaml::from_str(shared_types::repo::SEED_WORKFLOW).unwrap();
        let mut wp = planner::plan(&workflow, TriggerEvent::manual(None)).unwrap();
        wp.metadata.name = Some("wp".into());
        wp
    }

    fn pod(task: usize, status: &str) -> Pod {
        serde_yaml::from_str(&format!(
            "metadata: {{name: wp-task-{task}, labels: {{kube.ci/task: '{task}'}}}}\nstatus: {status}"
        ))
        .unwrap()
    }

    fn snapshot(wp: Workplan, pods: Vec<Pod>) -> Snapshot {
        Snapshot {
            workplan: Some(wp),
            pods: pods.into_iter().map(|p| (p.metadata.name.clone().unwrap(), p)).collect(),
            deleted: BTreeSet::new(),
            request: None,
        }
    }

    fn step(task: usize, name: &str, mode: Mode) -> StepRef {
        StepRef { task, name: name.into(), mode }
    }

    #[test]
    fn stages_follow_execution_order_and_a_step_can_be_chosen() {
        let names: Vec<Vec<String>> = stages(&seed(), None)
            .unwrap()
            .iter()
            .map(|s| s.iter().map(|r| r.name.clone()).collect())
            .collect();
        assert_eq!(names, [vec!["step-1"], vec!["step-2", "step-3"], vec!["step-4"], vec!["step-5"]]);
        assert_eq!(stages(&seed(), Some("step-4")).unwrap(), [vec![step(1, "step-4", Mode::Serial)]]);
        assert_eq!(
            stages(&seed(), Some("step-9")).unwrap_err().to_string(),
            "error: Workplan default/wp has no step \"step-9\" (its steps: step-1, step-2, step-3, step-4, step-5)"
        );
    }

    #[test]
    fn a_step_is_read_once_started_waited_for_before_and_skipped_when_it_cannot_run() {
        let s1 = step(0, "step-1", Mode::Serial);
        let s2 = step(0, "step-2", Mode::Parallel);
        let none = snapshot(seed(), vec![]);
        assert_eq!(
            readiness(&none, "ns/wp", &s1).unwrap(),
            Ready::Wait { why: "waiting for pod wp-task-0 (task-0)".into() }
        );

        let running = snapshot(
            seed(),
            vec![pod(
                0,
                "{phase: Pending, initContainerStatuses: [{name: step-1, image: a, imageID: '', ready: false, restartCount: 0, state: {running: {}}}], containerStatuses: [{name: step-2, image: a, imageID: '', ready: false, restartCount: 0, state: {waiting: {reason: PodInitializing}}}]}",
            )],
        );
        assert_eq!(readiness(&running, "ns/wp", &s1).unwrap(), Ready::Read { pod: "wp-task-0".into() });
        assert_eq!(
            readiness(&running, "ns/wp", &s2).unwrap(),
            Ready::Wait { why: "waiting for step step-2 to start in pod wp-task-0 (PodInitializing)".into() }
        );
        assert!(!ended(&running, "ns/wp", &s1).unwrap());

        let failed = snapshot(
            seed(),
            vec![pod(
                0,
                "{phase: Failed, initContainerStatuses: [{name: step-1, image: a, imageID: '', ready: false, restartCount: 0, state: {terminated: {exitCode: 1}}}]}",
            )],
        );
        assert_eq!(readiness(&failed, "ns/wp", &s1).unwrap(), Ready::Read { pod: "wp-task-0".into() });
        assert!(ended(&failed, "ns/wp", &s1).unwrap());
        assert_eq!(readiness(&failed, "ns/wp", &s2).unwrap(), Ready::Skip);

        // The run ended without task-1: its steps are skipped, not waited for.
        let mut done = seed();
        done.status = Some(serde_yaml::from_str("{phase: Failed}").unwrap());
        assert_eq!(
            readiness(&snapshot(done, vec![]), "ns/wp", &step(1, "step-4", Mode::Serial)).unwrap(),
            Ready::Skip
        );
    }

    fn attempt(task: usize, n: u32, status: &str) -> Pod {
        serde_yaml::from_str(&format!(
            "metadata: {{name: wp-task-{task}-attempt-{n}, labels: {{kube.ci/task: '{task}', kube.ci/attempt: '{n}'}}}}\nstatus: {status}"
        ))
        .unwrap()
    }

    #[test]
    fn a_retried_task_is_read_from_its_latest_attempt() {
        let s1 = step(0, "step-1", Mode::Serial);
        let failed = "{phase: Failed, initContainerStatuses: [{name: step-1, image: a, imageID: '', ready: false, restartCount: 0, state: {terminated: {exitCode: 1}}}]}";
        let running = "{phase: Pending, initContainerStatuses: [{name: step-1, image: a, imageID: '', ready: false, restartCount: 0, state: {running: {}}}]}";
        // attempt-10 sorts before attempt-2 by name: the label decides.
        let pods = vec![pod(0, failed), attempt(0, 2, failed), attempt(0, 10, running)];
        let retried = snapshot(seed(), pods.clone());
        assert_eq!(
            readiness(&retried, "ns/wp", &s1).unwrap(),
            Ready::Read { pod: "wp-task-0-attempt-10".into() }
        );
        assert!(!ended(&retried, "ns/wp", &s1).unwrap(), "the latest attempt still runs");

        // The latest attempt's pod deleted: named, not hidden by an earlier attempt's pod.
        let mut gone = snapshot(seed(), pods[..2].to_vec());
        gone.deleted.insert("wp-task-0-attempt-10".into());
        assert_eq!(
            readiness(&gone, "ns/wp", &s1).unwrap_err().to_string(),
            "error: pod wp-task-0-attempt-10 of Workplan ns/wp was deleted while following step step-1"
        );
        // An earlier attempt's pod deleted: the latest is read.
        let mut earlier = snapshot(seed(), pods[1..].to_vec());
        earlier.deleted.insert("wp-task-0".into());
        earlier.deleted.insert("wp-task-1".into());
        assert_eq!(
            readiness(&earlier, "ns/wp", &s1).unwrap(),
            Ready::Read { pod: "wp-task-0-attempt-10".into() }
        );
    }

    #[test]
    fn a_deleted_pod_or_workplan_is_an_error_naming_it() {
        let s1 = step(0, "step-1", Mode::Serial);
        let mut gone = snapshot(seed(), vec![]);
        gone.deleted.insert("wp-task-0".into());
        assert_eq!(
            readiness(&gone, "ns/wp", &s1).unwrap_err().to_string(),
            "error: pod wp-task-0 of Workplan ns/wp was deleted while following step step-1"
        );
        let mut deleting = pod(0, "{phase: Running}");
        deleting.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ));
        assert!(ended(&snapshot(seed(), vec![deleting]), "ns/wp", &s1).is_err());
        let no_workplan = Snapshot::default();
        assert_eq!(
            readiness(&no_workplan, "ns/wp", &s1).unwrap_err().to_string(),
            "error: Workplan ns/wp was deleted while following step step-1"
        );
    }
}
