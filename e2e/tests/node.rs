//! The end-to-end tier (issue 7): kubeci on a real node. The real director, workplan-operator and
//! worker binaries on the real control plane, and a real kubelet, kube-scheduler, containerd and
//! runc (`e2e::LocalNode`, `hack/node.sh`) running every step as a container. Nothing plays the
//! kubelet here: logs, exit codes and files are the containers' own.
//!
//! Needs root and the packages `hack/node.sh deps` installs; the node installs them itself. It
//! fails, never skips, when the node cannot start.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use e2e::{Component, LocalNode, TestNamespace, eventually, node_namespace, workspace_binary};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, ResourceQuota, ResourceQuotaSpec, Secret};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::wait::await_condition;
use pretty_assertions::assert_eq;
use shared_types::planner;
use shared_types::{Phase, TriggerEvent, Workflow, Workplan};
use tokio::io::{AsyncBufReadExt, BufReader};

const TIMEOUT: Duration = Duration::from_secs(120);

/// A workspace root of the test's own on the host, removed when dropped.
struct WorkspaceRoot(PathBuf);

impl WorkspaceRoot {
    fn new(ns: &str) -> WorkspaceRoot {
        WorkspaceRoot(std::env::temp_dir().join(format!("kubeci-e2e-workspaces-{ns}")))
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }

    /// `<root>/<namespace>/<workflow>/<workplan>`, as the worker renders it.
    fn workspace(&self, ns: &str, workflow: &str, workplan: &str) -> PathBuf {
        self.0.join(ns).join(workflow).join(workplan)
    }
}

impl Drop for WorkspaceRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The operator and a worker for `ns`, the worker's workspaces under `root`.
fn kubeci(ns: &str, root: &WorkspaceRoot) -> (Component, Component) {
    kubeci_with(ns, root, &[])
}

/// [`kubeci`] with more flags for the worker.
fn kubeci_with(ns: &str, root: &WorkspaceRoot, worker_args: &[&str]) -> (Component, Component) {
    let operator = Component::start(
        workspace_binary("workplan-operator"),
        ns,
        &["--no-leader-election", "--worker-lease-namespace", ns],
    );
    let mut args = vec!["--identity", "worker-1", "--lease-namespace", ns, "--workspace-root", root.path()];
    args.extend_from_slice(worker_args);
    let worker = Component::start(workspace_binary("worker"), ns, &args);
    (operator, worker)
}

fn workflow(ns: &str, yaml: &str) -> Workflow {
    let mut wf: Workflow = serde_yaml::from_str(yaml).unwrap();
    wf.metadata.namespace = Some(ns.to_string());
    wf.status = None;
    wf
}

/// Creates the Workplan of a manual run of `wf` (no director needed).
async fn run(ns: &TestNamespace, wf: &Workflow) -> String {
    let wp = planner::plan(wf, TriggerEvent::manual(Some("1".into()))).unwrap();
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
        .unwrap_or_else(|_| panic!("Workplan {name} not finished after {TIMEOUT:?}; node logs in {}", logs()))
        .unwrap()
        .unwrap()
}

fn logs() -> String {
    LocalNode::logs().display().to_string()
}

/// `kubectl logs` of one container, through the API server and the kubelet.
fn kubectl_logs(ns: &str, pod: &str, container: &str) -> String {
    let out = e2e::TestEnv::get()
        .kubectl()
        .args(["logs", "-n", ns, pod, "-c", container])
        .output()
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "kubectl logs {pod} -c {container}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn the_seed_workflow_runs_for_real_from_its_configmap_trigger() {
    let ns = node_namespace("node-seed").await;
    let root = WorkspaceRoot::new(&ns.name);
    let node = LocalNode::get().name().to_string();

    // The seed as a user applies it: its ConfigMap, its Workflow, the director watching both.
    let config_maps: Api<ConfigMap> = Api::namespaced(ns.client.clone(), &ns.name);
    let cm = ConfigMap {
        metadata: ObjectMeta { name: Some("my-config".into()), ..ObjectMeta::default() },
        data: Some([("greeting".to_string(), "hello".to_string())].into()),
        ..ConfigMap::default()
    };
    config_maps.create(&PostParams::default(), &cm).await.unwrap();
    let mut seed = workflow(&ns.name, shared_types::repo::SEED_WORKFLOW);
    seed.spec.triggers[0].namespace = Some(ns.name.clone());
    let workflows: Api<Workflow> = Api::namespaced(ns.client.clone(), &ns.name);
    workflows.create(&PostParams::default(), &seed).await.unwrap();
    let _director = Component::start(
        workspace_binary("director"),
        &ns.name,
        &["--no-leader-election", "--lease-namespace", &ns.name],
    );
    let (_operator, _worker) = kubeci(&ns.name, &root);
    let baselined = |wf: Option<&Workflow>| {
        wf.and_then(|w| w.status.as_ref()).is_some_and(|s| !s.baselined_triggers.is_empty())
    };
    tokio::time::timeout(TIMEOUT, await_condition(workflows, "my-workflow", baselined))
        .await
        .expect("the director takes the trigger baseline")
        .unwrap();

    // Changing the ConfigMap fires one Workplan.
    let patch = serde_json::json!({"data": {"greeting": "hello again"}});
    config_maps.patch("my-config", &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
    let workplans: Api<Workplan> = Api::namespaced(ns.client.clone(), &ns.name);
    let name = eventually("the ConfigMap change creates a Workplan", TIMEOUT, || {
        let workplans = workplans.clone();
        async move { workplans.list(&ListParams::default()).await.unwrap().items.pop()?.metadata.name }
    })
    .await;

    // The workspace is a real directory on this host while the run goes on.
    let workspace = root.workspace(&ns.name, "my-workflow", &name);
    eventually(&format!("{} exists during the run", workspace.display()), TIMEOUT, || {
        let exists = workspace.is_dir();
        async move { exists.then_some(()) }
    })
    .await;
    // Another run's workspace beside it.
    let other = workspace.parent().unwrap().join("my-workflow-other-run");
    std::fs::create_dir(&other).unwrap();

    let status = finished(&ns, &name).await.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Completed), "{:?}", status.reason);
    assert_eq!(status.node_name.as_deref(), Some(node.as_str()));

    // step-5 ran after steps 1-4 in the same workspace: its own output says so.
    let log = kubectl_logs(&ns.name, &format!("{name}-task-1"), "step-5");
    assert_eq!(log.lines().collect::<Vec<_>>(), ["step-5", "file-1", "file-2", "file-3", "file-4"]);

    // Real containers ran them, on the node the first pod was scheduled to.
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    for pod in [format!("{name}-task-0"), format!("{name}-task-1"), format!("{name}-cleanup")] {
        let pod = pods.get(&pod).await.unwrap();
        assert_eq!(pod.spec.as_ref().unwrap().node_name.as_deref(), Some(node.as_str()));
        let status = pod.status.unwrap();
        assert_eq!(status.phase.as_deref(), Some("Succeeded"));
        for c in
            status.init_container_statuses.iter().flatten().chain(status.container_statuses.iter().flatten())
        {
            let id = c.container_id.as_deref().unwrap_or_default();
            assert!(id.starts_with("containerd://"), "{} ran in containerd: {id:?}", c.name);
        }
    }

    // The cleanup pod removed the workspace from the host.
    assert!(!workspace.exists(), "{} is removed by the cleanup pod", workspace.display());
    assert!(other.is_dir(), "only the Workplan's own directory is removed, not another run's");
}

#[tokio::test]
async fn a_failing_steps_real_exit_code_and_message_reach_the_workplan() {
    let ns = node_namespace("node-failure").await;
    let root = WorkspaceRoot::new(&ns.name);
    let (_operator, _worker) = kubeci(&ns.name, &root);
    let wf = workflow(
        &ns.name,
        r#"
apiVersion: kube.ci/v1alpha1
kind: Workflow
metadata: {name: breaks}
spec:
  steps:
  - name: prepare
    image: alpine
    commands: [sh, -c, "echo ready > /kubeci/state"]
  - name: fails
    image: alpine
    commands: [sh, -c, "printf 'cannot deploy: %s' \"$(cat /kubeci/state)\" > /dev/termination-log; exit 3"]
    dependency: [prepare]
  - name: succeeds
    image: alpine
    commands: [sh, -c, "touch /kubeci/succeeded"]
    dependency: [prepare]
  - name: never
    image: alpine
    commands: [sh, -c, "touch /kubeci/never"]
    dependency: [fails, succeeds]
"#,
    );
    let name = run(&ns, &wf).await;

    let status = finished(&ns, &name).await.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Failed));
    assert_eq!(
        status.reason.as_deref(),
        Some("task-0 failed: step \"fails\" exited with code 3: cannot deploy: ready")
    );
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    assert!(pods.get_opt(&format!("{name}-task-1")).await.unwrap().is_none(), "the next task never starts");
    let cleanup = pods.get(&format!("{name}-cleanup")).await.unwrap();
    assert_eq!(cleanup.status.unwrap().phase.as_deref(), Some("Succeeded"), "cleanup still ran");
    assert!(!root.workspace(&ns.name, "breaks", &name).exists(), "and removed the workspace");
}

#[tokio::test]
async fn a_running_step_can_be_followed_with_kubectl_logs() {
    let ns = node_namespace("node-logs").await;
    let root = WorkspaceRoot::new(&ns.name);
    let (_operator, _worker) = kubeci(&ns.name, &root);
    // Ticks once a second until a file appears in its workspace (the test puts it there).
    let wf = workflow(
        &ns.name,
        r#"
apiVersion: kube.ci/v1alpha1
kind: Workflow
metadata: {name: ticks}
spec:
  steps:
  - name: tick
    image: alpine
    commands: [sh, -c, "i=0; until [ -e /kubeci/stop ]; do i=$((i+1)); echo tick $i; sleep 1; done; echo stopped"]
"#,
    );
    let name = run(&ns, &wf).await;
    let pod = format!("{name}-task-0");
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    let running = |p: Option<&Pod>| {
        p.and_then(|p| p.status.as_ref()).and_then(|s| s.phase.as_deref()) == Some("Running")
    };
    tokio::time::timeout(TIMEOUT, await_condition(pods.clone(), &pod, running))
        .await
        .unwrap_or_else(|_| panic!("pod {pod} not Running after {TIMEOUT:?}; node logs in {}", logs()))
        .unwrap();

    // `kubectl logs -f` streams the step's output while it runs.
    let mut follow = tokio::process::Command::from(e2e::TestEnv::get().kubectl())
        .args(["logs", "-f", "-n", &ns.name, &pod, "-c", "tick"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("a line within 30 s")
            .unwrap()
            .expect("the stream stays open while the step runs");
        seen.push(line);
    }
    assert_eq!(seen, ["tick 1", "tick 2", "tick 3"]);
    let phase = pods.get(&pod).await.unwrap().status.unwrap().phase;
    assert_eq!(phase.as_deref(), Some("Running"), "the step is still running while its log streams");

    // The workspace on the host is the one the step sees: a file put there ends it.
    let workspace = root.workspace(&ns.name, "ticks", &name);
    std::fs::write(workspace.join("stop"), b"").unwrap();
    let rest = tokio::time::timeout(Duration::from_secs(30), async {
        let mut rest = Vec::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            rest.push(line);
        }
        rest
    })
    .await
    .expect("the log stream ends when the step ends");
    assert_eq!(rest.last().map(String::as_str), Some("stopped"), "{rest:?}");
    let _ = follow.wait().await;

    let status = finished(&ns, &name).await.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Completed), "{:?}", status.reason);
}

/// A Workflow whose one step writes its output to the workspace, then runs for an hour.
const LONG_STEP: &str = r#"
apiVersion: kube.ci/v1alpha1
kind: Workflow
metadata: {name: long}
spec:
  steps:
  - name: long
    image: alpine
    commands: [sh, -c, "echo output > /kubeci/output; sleep 3600"]
"#;

/// Waits until the run's step has written its output on the host.
async fn output_written(root: &WorkspaceRoot, ns: &str, workplan: &str) -> PathBuf {
    let workspace = root.workspace(ns, "long", workplan);
    let output = workspace.join("output");
    eventually(&format!("{} written; node logs in {}", output.display(), logs()), TIMEOUT, || {
        let written = std::fs::read_to_string(&output).is_ok_and(|s| s == "output\n");
        async move { written.then_some(()) }
    })
    .await;
    workspace
}

/// Waits until the Workplan is gone from the API server (its cleanup was attempted).
async fn gone(ns: &TestNamespace, name: &str) {
    let api: Api<Workplan> = Api::namespaced(ns.client.clone(), &ns.name);
    tokio::time::timeout(TIMEOUT, await_condition(api, name, |wp: Option<&Workplan>| wp.is_none()))
        .await
        .unwrap_or_else(|_| panic!("Workplan {name} still there after {TIMEOUT:?}; node logs in {}", logs()))
        .unwrap();
}

/// Nothing of the run is left under the root: its workspace, and the namespace's and the
/// Workflow's directories it emptied.
fn nothing_left(root: &WorkspaceRoot, ns: &str, workspace: &std::path::Path) {
    assert!(!workspace.exists(), "{} is removed from the host", workspace.display());
    let workflow_dir = root.0.join(ns).join("long");
    assert!(!workflow_dir.exists(), "the emptied {} too", workflow_dir.display());
    assert!(!root.0.join(ns).exists(), "and the emptied namespace directory");
    assert!(root.0.is_dir(), "the root stays");
}

#[tokio::test]
async fn a_workplan_deleted_mid_run_leaves_nothing_on_the_node() {
    let ns = node_namespace("node-deleted-mid-run").await;
    let root = WorkspaceRoot::new(&ns.name);
    let (_operator, _worker) = kubeci(&ns.name, &root);
    let name = run(&ns, &workflow(&ns.name, LONG_STEP)).await;
    let workspace = output_written(&root, &ns.name, &name).await;

    Api::<Workplan>::namespaced(ns.client.clone(), &ns.name)
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    gone(&ns, &name).await;
    nothing_left(&root, &ns.name, &workspace);
}

#[tokio::test]
async fn a_workflow_deleted_mid_run_leaves_nothing_on_the_node() {
    let ns = node_namespace("node-workflow-deleted").await;
    let root = WorkspaceRoot::new(&ns.name);
    let (_operator, _worker) = kubeci(&ns.name, &root);
    // The Workplan as the director makes it: owned by the stored Workflow.
    let workflows: Api<Workflow> = Api::namespaced(ns.client.clone(), &ns.name);
    let stored = workflows.create(&PostParams::default(), &workflow(&ns.name, LONG_STEP)).await.unwrap();
    let name = run(&ns, &stored).await;
    let workspace = output_written(&root, &ns.name, &name).await;

    // Garbage collection deletes the Workplan after the Workflow.
    workflows.delete("long", &DeleteParams::default()).await.unwrap();
    gone(&ns, &name).await;
    nothing_left(&root, &ns.name, &workspace);
}

#[tokio::test]
async fn the_cleanup_pod_fits_a_namespace_with_a_compute_quota_and_no_limit_range() {
    let ns = node_namespace("node-quota").await;
    let quota = ResourceQuota {
        metadata: ObjectMeta { name: Some("compute".into()), ..ObjectMeta::default() },
        spec: Some(ResourceQuotaSpec {
            hard: Some(
                [
                    ("requests.cpu", "1"),
                    ("requests.memory", "1Gi"),
                    ("limits.cpu", "2"),
                    ("limits.memory", "2Gi"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), Quantity(v.into())))
                .collect(),
            ),
            ..ResourceQuotaSpec::default()
        }),
        ..ResourceQuota::default()
    };
    let quotas: Api<ResourceQuota> = Api::namespaced(ns.client.clone(), &ns.name);
    quotas.create(&PostParams::default(), &quota).await.unwrap();
    // The quota admits pods only once its controller has counted the namespace.
    eventually("the quota is counted", TIMEOUT, || async {
        quotas.get("compute").await.ok()?.status?.used.map(|_| ())
    })
    .await;

    let root = WorkspaceRoot::new(&ns.name);
    let (_operator, _worker) = kubeci(&ns.name, &root);
    // The user's step states its own requests and limits, as the quota requires.
    let wf = workflow(
        &ns.name,
        r#"
apiVersion: kube.ci/v1alpha1
kind: Workflow
metadata: {name: quota}
spec:
  steps:
  - name: writes
    image: alpine
    commands: [sh, -c, "echo done > /kubeci/output"]
    resources:
      requests: {cpu: 10m, memory: 16Mi}
      limits: {cpu: 100m, memory: 64Mi}
"#,
    );
    let name = run(&ns, &wf).await;
    let status = finished(&ns, &name).await.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Completed), "{:?}", status.reason);
    assert_eq!(status.reason.as_deref(), Some("all 1 tasks succeeded"), "the cleanup did not fail");
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    let cleanup = pods.get(&format!("{name}-cleanup")).await.unwrap();
    assert_eq!(cleanup.status.unwrap().phase.as_deref(), Some("Succeeded"), "admitted, and it ran");
    assert!(!root.workspace(&ns.name, "quota", &name).exists());
}

#[tokio::test]
async fn a_step_reads_a_mounted_secret_and_variables_from_a_config_map() {
    let ns = node_namespace("node-pod-settings").await;
    let root = WorkspaceRoot::new(&ns.name);
    let secret = Secret {
        metadata: ObjectMeta { name: Some("deploy-credentials".into()), ..ObjectMeta::default() },
        string_data: Some([("token".to_string(), "s3cr3t-from-the-secret".to_string())].into()),
        ..Secret::default()
    };
    Api::<Secret>::namespaced(ns.client.clone(), &ns.name)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let settings = ConfigMap {
        metadata: ObjectMeta { name: Some("build-settings".into()), ..ObjectMeta::default() },
        data: Some([("TARGET".to_string(), "release".to_string())].into()),
        ..ConfigMap::default()
    };
    Api::<ConfigMap>::namespaced(ns.client.clone(), &ns.name)
        .create(&PostParams::default(), &settings)
        .await
        .unwrap();
    let (_operator, _worker) = kubeci(&ns.name, &root);
    let wf = workflow(
        &ns.name,
        r#"
apiVersion: kube.ci/v1alpha1
kind: Workflow
metadata: {name: mounts}
spec:
  podTemplate:
    nodeSelector: {kubernetes.io/os: linux}
    volumes:
    - {name: credentials, secret: {secretName: deploy-credentials}}
  steps:
  - name: deploy
    image: alpine
    envFrom:
    - configMapRef: {name: build-settings}
    volumeMounts:
    - {name: credentials, mountPath: /etc/credentials, readOnly: true}
    commands: [sh, -c, "echo \"$TARGET $(cat /etc/credentials/token)\""]
"#,
    );
    let name = run(&ns, &wf).await;

    let status = finished(&ns, &name).await.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Completed), "{:?}", status.reason);
    assert_eq!(
        kubectl_logs(&ns.name, &format!("{name}-task-0"), "deploy"),
        "release s3cr3t-from-the-secret\n"
    );
}

#[tokio::test]
async fn a_node_selector_matching_no_node_fails_the_run_with_the_schedulers_reason() {
    let ns = node_namespace("node-unschedulable").await;
    let root = WorkspaceRoot::new(&ns.name);
    let (_operator, _worker) = kubeci_with(&ns.name, &root, &["--pending-timeout-seconds", "5"]);
    let wf = workflow(
        &ns.name,
        r#"
apiVersion: kube.ci/v1alpha1
kind: Workflow
metadata: {name: nowhere}
spec:
  podTemplate:
    nodeSelector: {kube.ci/no-such-node: "true"}
  steps:
  - {name: never, image: alpine, commands: [sh, -c, "touch /kubeci/ran"]}
"#,
    );
    let name = run(&ns, &wf).await;

    let status = finished(&ns, &name).await.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Failed));
    let reason = status.reason.unwrap();
    assert!(
        reason.starts_with("task-0 failed: pod cannot be scheduled: 0/1 nodes are available")
            && reason.contains("node affinity/selector")
            && reason.ends_with("(still pending after 5s)"),
        "the scheduler's own reason, after the worker's pending timeout: {reason}"
    );
    // The worker that took the cleanup stopped the unfinished task pod first (it never left
    // Pending, so it goes at once): nothing of the run is left waiting for a node.
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    let task_pod = format!("{name}-task-0");
    eventually("the never-scheduled task pod is stopped", TIMEOUT, || async {
        pods.get_opt(&task_pod).await.ok()?.is_none().then_some(())
    })
    .await;
    let cleanup = pods.get(&format!("{name}-cleanup")).await.unwrap();
    assert_eq!(
        cleanup.status.unwrap().phase.as_deref(),
        Some("Succeeded"),
        "the cleanup pod selects no node"
    );
}

/// A step that fails until its third run, counting runs in the workspace (which every attempt of
/// the run shares), with `retries.limit` `limit` and no backoff.
fn third_time_lucky(ns: &str, limit: i32) -> Workflow {
    workflow(
        ns,
        &format!(
            r#"
apiVersion: kube.ci/v1alpha1
kind: Workflow
metadata: {{name: flaky}}
spec:
  steps:
  - name: flaky
    image: alpine
    retries: {{limit: {limit}, backoffSeconds: 0}}
    commands:
    - sh
    - -c
    - n=$(cat /kubeci/count 2>/dev/null || echo 0); n=$((n+1)); echo $n > /kubeci/count; echo attempt $n; [ $n -ge 3 ] || {{ echo "attempt $n failed" > /dev/termination-log; exit 1; }}
"#
        ),
    )
}

#[tokio::test]
async fn a_step_failing_twice_completes_with_two_retries() {
    let ns = node_namespace("node-retries-2").await;
    let root = WorkspaceRoot::new(&ns.name);
    let (_operator, _worker) = kubeci(&ns.name, &root);
    let name = run(&ns, &third_time_lucky(&ns.name, 2)).await;

    let status = finished(&ns, &name).await.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Completed), "{:?}", status.reason);
    assert_eq!(kubectl_logs(&ns.name, &format!("{name}-task-0-attempt-3"), "flaky"), "attempt 3\n");
    assert_eq!(
        kubectl_logs(&ns.name, &format!("{name}-task-0"), "flaky"),
        "attempt 1\n",
        "failed attempts' pods stay"
    );
}

#[tokio::test]
async fn a_step_failing_twice_fails_with_one_retry_naming_both_attempts() {
    let ns = node_namespace("node-retries-1").await;
    let root = WorkspaceRoot::new(&ns.name);
    let (_operator, _worker) = kubeci(&ns.name, &root);
    let name = run(&ns, &third_time_lucky(&ns.name, 1)).await;

    let status = finished(&ns, &name).await.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Failed));
    assert_eq!(
        status.reason.as_deref(),
        Some(
            "task-0 failed after 2 attempts: attempt 1: step \"flaky\" exited with code 1: attempt 1 failed; \
             attempt 2: step \"flaky\" exited with code 1: attempt 2 failed"
        )
    );
    assert!(!root.workspace(&ns.name, "flaky", &name).exists(), "cleaned up after the last attempt");
}

#[tokio::test]
async fn a_run_past_its_deadline_is_stopped_cleaned_up_and_failed_with_deadline_exceeded() {
    let ns = node_namespace("node-deadline").await;
    let root = WorkspaceRoot::new(&ns.name);
    let (_operator, _worker) = kubeci(&ns.name, &root);
    // The step would run for ten minutes and ignores SIGTERM (sh as PID 1): only the deletion of
    // its pod, with its short grace period, stops it.
    let wf = workflow(
        &ns.name,
        r#"
apiVersion: kube.ci/v1alpha1
kind: Workflow
metadata: {name: slow}
spec:
  activeDeadlineSeconds: 5
  steps:
  - {name: slow, image: alpine, commands: [sh, -c, "touch /kubeci/started; sleep 600"]}
"#,
    );
    let name = run(&ns, &wf).await;
    let pod = format!("{name}-task-0");
    let workspace = root.workspace(&ns.name, "slow", &name);
    eventually("the step runs", TIMEOUT, || {
        let started = workspace.join("started").exists();
        async move { started.then_some(()) }
    })
    .await;

    let status = finished(&ns, &name).await.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Failed));
    assert_eq!(
        status.reason.as_deref(),
        Some(
            "DeadlineExceeded: the run passed its activeDeadlineSeconds (5s) while running task-0; workspace cleaned up"
        )
    );
    let finished_condition = status.conditions.iter().find(|c| c.type_ == "Finished").unwrap();
    assert_eq!(finished_condition.reason, "DeadlineExceeded");
    let elapsed = status.completion_time.unwrap().0.duration_since(status.start_time.unwrap().0);
    assert!(
        elapsed.as_secs() < 5 + 20,
        "stopped within seconds of the deadline, not after the step's 600 s: {elapsed:?}"
    );
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    assert!(pods.get_opt(&pod).await.unwrap().is_none(), "the task pod was deleted before the cleanup");
    assert!(!workspace.exists(), "and its workspace removed");
}

#[tokio::test]
async fn a_cancelled_run_stops_its_pod_within_seconds_and_says_who_cancelled_it() {
    let ns = node_namespace("node-cancel").await;
    let root = WorkspaceRoot::new(&ns.name);
    let (_operator, _worker) = kubeci(&ns.name, &root);
    let name = run(&ns, &workflow(&ns.name, LONG_STEP)).await;
    let workspace = output_written(&root, &ns.name, &name).await;

    let workplans: Api<Workplan> = Api::namespaced(ns.client.clone(), &ns.name);
    let cancel = serde_json::json!({"metadata": {"annotations": {"kube.ci/cancel": "alice"}}});
    workplans.patch(&name, &PatchParams::default(), &Patch::Merge(cancel)).await.unwrap();
    let cancelled_at = std::time::Instant::now();
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    let pod = format!("{name}-task-0");
    tokio::time::timeout(TIMEOUT, await_condition(pods.clone(), &pod, |p: Option<&Pod>| p.is_none()))
        .await
        .expect("the task pod is stopped")
        .unwrap();
    let stopped_after = cancelled_at.elapsed();
    assert!(
        stopped_after < Duration::from_secs(20),
        "stopped within seconds, not after the step's hour: {stopped_after:?}"
    );

    let status = finished(&ns, &name).await.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Cancelled));
    assert_eq!(
        status.reason.as_deref(),
        Some("Cancelled by alice while running task-0; workspace cleaned up")
    );
    assert_eq!(status.conditions.iter().find(|c| c.type_ == "Finished").unwrap().reason, "Cancelled");
    assert!(!workspace.exists(), "the workspace is removed");
}
