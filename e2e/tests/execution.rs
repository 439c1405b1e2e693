//! Issue acceptance for execution: the real workplan-operator and workers on the real API server,
//! the test playing scheduler and kubelet (`e2e::kubelet`). Workplans are created directly.
//!
//! The binaries are the workspace's own, built by `cargo test --workspace` (`make test`) next to
//! this test binary.

use std::collections::BTreeMap;
use std::time::Duration;

use e2e::kubelet::{Act, Kubelet, NODE, pod_namespace};
use e2e::{Component, TestNamespace, eventually, workspace_binary as binary};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::wait::await_condition;
use pretty_assertions::assert_eq;
use shared_types::planner;
use shared_types::{JobState, Phase, RequestState, TriggerEvent, Workflow, Workplan, WorkplanStatus};

const TIMEOUT: Duration = Duration::from_secs(120);

fn operator(ns: &str) -> Component {
    Component::start(
        binary("workplan-operator"),
        ns,
        &["--no-leader-election", "--worker-lease-namespace", ns],
    )
}

fn worker(ns: &str, identity: &str) -> Component {
    Component::start(binary("worker"), ns, &["--identity", identity, "--lease-namespace", ns])
}

fn workflow(ns: &str, yaml: &str) -> Workflow {
    let mut wf: Workflow = serde_yaml::from_str(yaml).unwrap();
    wf.metadata.namespace = Some(ns.to_string());
    wf
}

fn seed(ns: &str) -> Workflow {
    workflow(ns, shared_types::repo::SEED_WORKFLOW)
}

fn one_task(ns: &str) -> Workflow {
    workflow(
        ns,
        "apiVersion: kube.ci/v1alpha1\nkind: Workflow\nmetadata: {name: quick}\nspec:\n  steps:\n  - {name: only, image: alpine}\n",
    )
}

async fn create(ns: &TestNamespace, wf: &Workflow, run: &str) -> String {
    let wp = planner::plan(wf, TriggerEvent::manual(Some(run.into()))).unwrap();
    let api: Api<Workplan> = Api::namespaced(ns.client.clone(), &ns.name);
    api.create(&PostParams::default(), &wp).await.unwrap().metadata.name.unwrap()
}

async fn finished(ns: &TestNamespace, name: &str) -> Workplan {
    let api: Api<Workplan> = Api::namespaced(ns.client.clone(), &ns.name);
    let cond = |wp: Option<&Workplan>| {
        wp.and_then(|w| w.status.as_ref()).and_then(|s| s.phase).is_some_and(Phase::is_finished)
    };
    tokio::time::timeout(TIMEOUT, await_condition(api, name, cond))
        .await
        .expect("the Workplan finishes")
        .unwrap()
        .unwrap()
}

async fn request_state(ns: &TestNamespace, name: &str) -> RequestState {
    Api::<RequestState>::namespaced(ns.client.clone(), &ns.name).get(name).await.unwrap()
}

/// (job, state, worker) of every history entry.
fn trail(rqs: &RequestState) -> Vec<(String, JobState, Option<String>)> {
    rqs.status
        .as_ref()
        .unwrap()
        .history
        .iter()
        .map(|e| (e.job.to_string(), e.state, e.worker.clone()))
        .collect()
}

/// Every (job, state) exactly once: no transition duplicated or lost.
fn assert_each_transition_once(rqs: &RequestState, jobs: &[&str]) {
    let mut seen: BTreeMap<(String, JobState), usize> = BTreeMap::new();
    for (job, state, _) in trail(rqs) {
        *seen.entry((job, state)).or_default() += 1;
    }
    let expected: BTreeMap<(String, JobState), usize> = jobs
        .iter()
        .flat_map(|j| {
            [JobState::Requested, JobState::Started, JobState::Completed].map(|s| ((j.to_string(), s), 1))
        })
        .collect();
    assert_eq!(seen, expected, "{:?}", trail(rqs));
}

#[tokio::test]
async fn the_seed_runs_task_0_task_1_and_cleanup_in_order() {
    let ns = pod_namespace("exec-seed").await;
    let _kubelet = Kubelet::start(&ns, |_| Act::Succeed);
    let (_operator, _worker) = (operator(&ns.name), worker(&ns.name, "worker-1"));
    let name = create(&ns, &seed(&ns.name), "1").await;

    let status = finished(&ns, &name).await.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Completed), "{:?}", status.reason);
    assert_eq!((status.task_index, status.node_name.as_deref()), (Some(1), Some(NODE)));

    let rqs = request_state(&ns, &name).await;
    let w = Some("worker-1".to_string());
    assert_eq!(
        trail(&rqs),
        ["task-0", "task-1", "cleanup"]
            .iter()
            .flat_map(|job| [
                (job.to_string(), JobState::Requested, None),
                (job.to_string(), JobState::Started, w.clone()),
                (job.to_string(), JobState::Completed, w.clone())
            ])
            .collect::<Vec<_>>()
    );
    let history = &rqs.status.as_ref().unwrap().history;
    assert!(history.windows(2).all(|p| p[0].timestamp.0 <= p[1].timestamp.0), "timestamps in order");

    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    let task_1 = pods.get(&format!("{name}-task-1")).await.unwrap();
    let task_0 = pods.get(&format!("{name}-task-0")).await.unwrap();
    assert_eq!(
        task_1.spec.unwrap().node_name,
        task_0.spec.unwrap().node_name,
        "task-1 runs on task-0's node"
    );
    assert!(pods.get_opt(&format!("{name}-cleanup")).await.unwrap().is_some(), "cleanup ran as a pod");
}

#[tokio::test]
async fn a_failing_step_fails_the_workplan_and_cleanup_still_runs() {
    let ns = pod_namespace("exec-failure").await;
    let _kubelet = Kubelet::start(&ns, |pod: &Pod| {
        if pod.metadata.name.as_deref().is_some_and(|n| n.ends_with("-task-0")) {
            Act::Fail { step: "step-3".into(), code: 3, message: "no space left on device".into() }
        } else {
            Act::Succeed
        }
    });
    let (_operator, _worker) = (operator(&ns.name), worker(&ns.name, "worker-1"));
    let name = create(&ns, &seed(&ns.name), "1").await;

    let status = finished(&ns, &name).await.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Failed));
    assert_eq!(
        status.reason.as_deref(),
        Some("task-0 failed: step \"step-3\" exited with code 3: no space left on device")
    );
    let jobs: Vec<String> =
        trail(&request_state(&ns, &name).await).into_iter().map(|(job, _, _)| job).collect();
    assert!(!jobs.contains(&"task-1".to_string()), "task-1 never starts: {jobs:?}");
    assert!(jobs.contains(&"cleanup".to_string()), "cleanup still runs: {jobs:?}");
}

#[tokio::test]
async fn three_workers_claim_every_job_of_50_workplans_exactly_once() {
    let ns = pod_namespace("exec-three-workers").await;
    let _kubelet = Kubelet::start(&ns, |_| Act::Succeed);
    let _operator = operator(&ns.name);
    let workers: Vec<Component> = (1..=3).map(|i| worker(&ns.name, &format!("worker-{i}"))).collect();
    let wf = one_task(&ns.name);
    let mut names = Vec::new();
    for i in 0..50 {
        names.push(create(&ns, &wf, &i.to_string()).await);
    }
    let api: Api<Workplan> = Api::namespaced(ns.client.clone(), &ns.name);
    eventually("all 50 Workplans Completed", TIMEOUT, || {
        let api = api.clone();
        async move {
            let list = api.list(&ListParams::default()).await.unwrap().items;
            (list.len() == 50
                && list.iter().all(|w| w.status.as_ref().and_then(|s| s.phase) == Some(Phase::Completed)))
            .then_some(())
        }
    })
    .await;
    let mut claims_by_worker: BTreeMap<String, usize> = BTreeMap::new();
    for name in &names {
        let rqs = request_state(&ns, name).await;
        assert_each_transition_once(&rqs, &["task-0", "cleanup"]);
        for (_, state, worker) in trail(&rqs) {
            if state == JobState::Started {
                *claims_by_worker.entry(worker.unwrap()).or_default() += 1;
            }
        }
    }
    let mut lost = 0.0;
    for w in &workers {
        lost += w.metric("kubeci_worker_claims_lost_total").await;
    }
    println!("100 jobs claimed as {claims_by_worker:?}; {lost} claims lost to another worker");
    assert_eq!(claims_by_worker.values().sum::<usize>(), 100);
}

#[tokio::test]
async fn a_killed_workers_job_is_adopted_by_another_worker() {
    let ns = pod_namespace("exec-killed-worker").await;
    let _operator = operator(&ns.name);
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    let name = create(&ns, &one_task(&ns.name), "1").await;
    let pod_name = format!("{name}-task-0");

    // Worker A claims task-0 and creates its pod, which the kubelet leaves running; then A dies.
    let leave = Kubelet::start(&ns, |_| Act::Leave);
    let first = worker(&ns.name, "worker-a");
    let cond =
        |p: Option<&Pod>| p.is_some_and(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some());
    let pod = tokio::time::timeout(TIMEOUT, await_condition(pods.clone(), &pod_name, cond))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    first.kill();
    drop(leave);

    // Worker B takes over once A's lease expires, adopts A's pod, and the kubelet finishes it.
    let _kubelet = Kubelet::start(&ns, |_| Act::Succeed);
    let _second = worker(&ns.name, "worker-b");
    let status = finished(&ns, &name).await.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Completed), "{:?}", status.reason);

    let task_pods: Vec<Pod> = pods
        .list(&ListParams::default().labels(&format!("kube.ci/workplan={name},kube.ci/task=0")))
        .await
        .unwrap()
        .items;
    assert_eq!(task_pods.len(), 1, "no second pod");
    assert_eq!(task_pods[0].metadata.uid, pod.metadata.uid, "the same pod, adopted");
    let rqs = request_state(&ns, &name).await;
    let history = &rqs.status.as_ref().unwrap().history;
    let task_0: Vec<(JobState, Option<&str>, Option<&str>)> = history
        .iter()
        .filter(|e| e.job == "task-0")
        .map(|e| (e.state, e.worker.as_deref(), e.message.as_deref()))
        .collect();
    assert_eq!(
        task_0,
        vec![
            (JobState::Requested, None, None),
            (JobState::Started, Some("worker-a"), None),
            (JobState::Requested, None, Some("worker worker-a lost: its lease expired")),
            (JobState::Started, Some("worker-b"), None),
            (JobState::Completed, Some("worker-b"), None),
        ]
    );
}

#[tokio::test]
async fn an_operator_restart_mid_run_loses_and_duplicates_nothing() {
    let ns = pod_namespace("exec-operator-restart").await;
    let _kubelet = Kubelet::start(&ns, |_| Act::Succeed);
    let _workers: Vec<Component> = (1..=2).map(|i| worker(&ns.name, &format!("worker-{i}"))).collect();
    let first = operator(&ns.name);
    let wf = seed(&ns.name);
    let mut names = Vec::new();
    for i in 0..10 {
        names.push(create(&ns, &wf, &i.to_string()).await);
    }
    // Restart while the runs are in flight.
    let requests: Api<RequestState> = Api::namespaced(ns.client.clone(), &ns.name);
    eventually("some runs in flight", TIMEOUT, || {
        let requests = requests.clone();
        async move { (requests.list(&ListParams::default()).await.unwrap().items.len() >= 3).then_some(()) }
    })
    .await;
    first.kill();
    let _second = operator(&ns.name);
    for name in &names {
        assert_eq!(finished(&ns, name).await.status.unwrap().phase, Some(Phase::Completed));
        assert_each_transition_once(&request_state(&ns, name).await, &["task-0", "task-1", "cleanup"]);
    }
}

/// The Workflow of `examples/pod-settings.yaml` in `ns` (the file also holds its Secret and
/// ConfigMap, which the API server does not need for a pod to be created).
fn pod_settings(ns: &str) -> Workflow {
    let text = std::fs::read_to_string(e2e::TestEnv::repo_root().join("examples/pod-settings.yaml")).unwrap();
    let doc = text.split("\n---\n").find(|doc| doc.contains("kind: Workflow")).unwrap();
    workflow(ns, doc)
}

#[tokio::test]
async fn pod_settings_reach_every_pod_of_the_run() {
    let ns = pod_namespace("exec-pod-settings").await;
    let _kubelet = Kubelet::start(&ns, |_| Act::Succeed);
    let (_operator, _worker) = (operator(&ns.name), worker(&ns.name, "worker-1"));
    // As a user applies it: the CRD's schema keeps every field of the template (nothing pruned).
    let wf = pod_settings(&ns.name);
    let workflows: Api<Workflow> = Api::namespaced(ns.client.clone(), &ns.name);
    let stored = workflows.create(&PostParams::default(), &wf).await.unwrap();
    assert_eq!(stored.spec, wf.spec, "the API server stores the pod settings as given");
    let name = create(&ns, &stored, "1").await;

    let status = finished(&ns, &name).await.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Completed), "{:?}", status.reason);
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    let task = pods.get(&format!("{name}-task-0")).await.unwrap().spec.unwrap();
    let template = wf.spec.run.pod_template.as_ref().unwrap();
    assert_eq!(task.node_selector.as_ref(), Some(&template.node_selector));
    // The DefaultTolerationSeconds admission plugin adds its own beside them.
    let tolerates = |spec: &k8s_openapi::api::core::v1::PodSpec| {
        template.tolerations.iter().all(|t| spec.tolerations.iter().flatten().any(|have| have == t))
    };
    assert!(tolerates(&task), "{:?}", task.tolerations);
    // The ServiceAccount admission plugin adds its token volume and mounts.
    let ours = |name: &&str| !name.starts_with("kube-api-access-");
    let volumes: Vec<&str> = task.volumes.iter().flatten().map(|v| v.name.as_str()).filter(ours).collect();
    assert_eq!(volumes, ["kubeci-workspace", "credentials", "scratch"]);
    let build = &task.init_containers.as_ref().unwrap()[0];
    assert_eq!(build.env_from.as_ref(), Some(&wf.spec.steps[0].env_from));
    let mounts: Vec<(&str, &str)> = task.containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.name.as_str(), m.mount_path.as_str()))
        .filter(|(name, _)| ours(name))
        .collect();
    assert_eq!(
        mounts,
        [("kubeci-workspace", "/kubeci"), ("credentials", "/etc/credentials"), ("scratch", "/scratch")]
    );
    let cleanup = pods.get(&format!("{name}-cleanup")).await.unwrap().spec.unwrap();
    assert!(tolerates(&cleanup), "the cleanup pod tolerates them too: {:?}", cleanup.tolerations);
    assert_eq!(cleanup.node_selector, None, "and is pinned to the run's node instead of selecting one");
}

#[tokio::test]
async fn a_forged_workplan_whose_volume_takes_the_workspace_name_fails_naming_it() {
    let ns = pod_namespace("exec-forged-volume").await;
    let _kubelet = Kubelet::start(&ns, |_| Act::Succeed);
    let (_operator, _worker) = (operator(&ns.name), worker(&ns.name, "worker-1"));
    // Past the planner, as a Workplan written by hand: the API server refuses the pod, and the run
    // fails with its answer instead of retrying or hanging.
    let mut wf = pod_settings(&ns.name);
    wf.spec.run.pod_template.as_mut().unwrap().volumes[0].name = "kubeci-workspace".into();
    wf.spec.steps[1].volume_mounts[0].name = "kubeci-workspace".into();
    assert!(planner::validate_workflow(&wf).is_err(), "the planner refuses it");
    let mut wp = planner::plan(&pod_settings(&ns.name), TriggerEvent::manual(Some("1".into()))).unwrap();
    wp.spec.run = wf.spec.run.clone();
    wp.spec.tasks[0].parallel_steps[0].volume_mounts = wf.spec.steps[1].volume_mounts.clone();
    let api: Api<Workplan> = Api::namespaced(ns.client.clone(), &ns.name);
    let name = api.create(&PostParams::default(), &wp).await.unwrap().metadata.name.unwrap();

    let status = finished(&ns, &name).await.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Failed));
    let reason = status.reason.unwrap();
    assert!(
        reason.starts_with(&format!("task-0 failed: pod {name}-task-0 cannot be created"))
            && reason.contains("Duplicate value: \"kubeci-workspace\""),
        "{reason}"
    );
}

/// One task whose step asks for `limit` retries without backoff; the fake kubelet fails the
/// first two attempts' pods (`-task-0`, `-task-0-attempt-2`) and lets the third succeed.
async fn fails_twice(ns: &TestNamespace, limit: i32) -> (String, WorkplanStatus, RequestState) {
    let _kubelet = Kubelet::start(ns, |pod: &Pod| {
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        if name.ends_with("-task-0") || name.ends_with("-task-0-attempt-2") {
            Act::Fail { step: "flaky".into(), code: 1, message: format!("{name} failed") }
        } else {
            Act::Succeed
        }
    });
    let (_operator, _worker) = (operator(&ns.name), worker(&ns.name, "worker-1"));
    let wf = workflow(
        &ns.name,
        &format!(
            "apiVersion: kube.ci/v1alpha1\nkind: Workflow\nmetadata: {{name: flaky}}\nspec:\n  steps:\n  - {{name: flaky, image: alpine, retries: {{limit: {limit}, backoffSeconds: 0}}}}\n"
        ),
    );
    let name = create(ns, &wf, "1").await;
    let status = finished(ns, &name).await.status.unwrap();
    (name.clone(), status, request_state(ns, &name).await)
}

#[tokio::test]
async fn a_task_failing_twice_completes_on_its_third_attempt_with_two_retries() {
    let ns = pod_namespace("exec-retries-2").await;
    let (name, status, rqs) = fails_twice(&ns, 2).await;
    assert_eq!(status.phase, Some(Phase::Completed), "{:?}", status.reason);
    // Every attempt is in the history: requested (the retries say which attempt and why), claimed,
    // reported.
    let task_0: Vec<(JobState, Option<String>)> = rqs
        .status
        .as_ref()
        .unwrap()
        .history
        .iter()
        .filter(|e| e.job == "task-0")
        .map(|e| (e.state, e.message.clone()))
        .collect();
    let failed = |attempt: &str| format!("step \"flaky\" exited with code 1: {name}-task-0{attempt} failed");
    assert_eq!(
        task_0,
        [
            (JobState::Requested, None),
            (JobState::Started, None),
            (JobState::Failed, Some(failed(""))),
            (JobState::Requested, Some(format!("attempt 2 of 3, after attempt 1 failed: {}", failed("")))),
            (JobState::Started, None),
            (JobState::Failed, Some(failed("-attempt-2"))),
            (
                JobState::Requested,
                Some(format!("attempt 3 of 3, after attempt 2 failed: {}", failed("-attempt-2")))
            ),
            (JobState::Started, None),
            (JobState::Completed, None),
        ]
    );
    // Each attempt a pod of its own, the failed ones kept.
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    let mut names: Vec<String> = pods
        .list(&ListParams::default().labels(&format!("kube.ci/workplan={name},kube.ci/task=0")))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|p| p.metadata.name.unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [format!("{name}-task-0"), format!("{name}-task-0-attempt-2"), format!("{name}-task-0-attempt-3")]
    );
}

#[tokio::test]
async fn a_task_failing_twice_fails_with_one_retry_naming_both_attempts() {
    let ns = pod_namespace("exec-retries-1").await;
    let (name, status, rqs) = fails_twice(&ns, 1).await;
    assert_eq!(status.phase, Some(Phase::Failed));
    assert_eq!(
        status.reason.unwrap(),
        format!(
            "task-0 failed after 2 attempts: attempt 1: step \"flaky\" exited with code 1: {name}-task-0 failed; \
             attempt 2: step \"flaky\" exited with code 1: {name}-task-0-attempt-2 failed"
        )
    );
    let jobs: Vec<(String, JobState)> = trail(&rqs).into_iter().map(|(job, state, _)| (job, state)).collect();
    assert_eq!(jobs.iter().filter(|(job, state)| job == "task-0" && *state == JobState::Started).count(), 2);
    assert!(jobs.ends_with(&[
        ("cleanup".into(), JobState::Requested),
        ("cleanup".into(), JobState::Started),
        ("cleanup".into(), JobState::Completed)
    ]));
}
