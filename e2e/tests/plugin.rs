//! `kubectl kubeci` against the real API server (issue 18): the built plugin binary reads runs
//! the tests lay out as kubeci writes them (`get`, `graph WORKFLOW`, the hostile cases), and on
//! the real node `logs -f` streams a running step, then the next ones, to the end of the run.
//!
//! The plugin is the workspace's own `kubectl-kubeci`, built by `cargo test --workspace`
//! (`make test`) next to this test binary. The node test needs root and the node's packages, as
//! `tests/node.rs` does.

use std::process::{Output, Stdio};
use std::time::Duration;

use e2e::kubelet::{NODE, pod_namespace};
use e2e::{Component, LocalNode, TestEnv, TestNamespace, node_namespace, workspace_binary};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use pretty_assertions::assert_eq;
use serde_json::{Value, json};
use shared_types::render::{RenderConfig, task_pod};
use shared_types::{RequestState, TriggerEvent, Workflow, Workplan, planner};
use tokio::io::{AsyncBufReadExt, BufReader};

const TIMEOUT: Duration = Duration::from_secs(120);
const MANAGER: &str = "kubeci-e2e";

/// The plugin pointed at the test control plane and `ns`.
fn plugin(ns: &str) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(workspace_binary("kubectl-kubeci"));
    command.arg("--kubeconfig").arg(TestEnv::get().kubeconfig()).args(["-n", ns]);
    command.stdin(Stdio::null()).kill_on_drop(true);
    command
}

async fn kubeci(ns: &str, args: &[&str]) -> Output {
    tokio::time::timeout(TIMEOUT, plugin(ns).args(args).output())
        .await
        .unwrap_or_else(|_| panic!("kubectl kubeci {args:?} did not end in {TIMEOUT:?}"))
        .expect("the plugin runs")
}

/// stdout of a run that must succeed.
async fn ok(ns: &str, args: &[&str]) -> String {
    let out = kubeci(ns, args).await;
    assert!(out.status.success(), "kubectl kubeci {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// stderr of a run that must fail with status 1.
async fn fails(ns: &str, args: &[&str]) -> String {
    let out = kubeci(ns, args).await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "kubectl kubeci {args:?}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

fn seed(ns: &str) -> Workflow {
    let mut wf: Workflow = serde_yaml::from_str(shared_types::repo::SEED_WORKFLOW).unwrap();
    wf.metadata.namespace = Some(ns.to_string());
    wf.spec.triggers[0].namespace = Some(ns.to_string());
    wf.status = None;
    wf
}

/// Creates `wf` and the Workplan of its manual run `1`, as the director would.
async fn workflow_and_run(ns: &TestNamespace, wf: &Workflow) -> Workplan {
    let workflows: Api<Workflow> = Api::namespaced(ns.client.clone(), &ns.name);
    let created = workflows.create(&PostParams::default(), wf).await.unwrap();
    let workplan = planner::plan(&created, TriggerEvent::manual(Some("1".into()))).unwrap();
    let workplans: Api<Workplan> = Api::namespaced(ns.client.clone(), &ns.name);
    workplans.create(&PostParams::default(), &workplan).await.unwrap()
}

/// A task pod as the worker renders it, bound to the test's Node that no kubelet serves, with
/// `status` as a kubelet would have set it.
async fn task_pod_with(ns: &TestNamespace, workplan: &Workplan, task: usize, status: Value) -> Pod {
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    let pod = task_pod(workplan, task, Some(NODE), &RenderConfig::default()).unwrap();
    let name = pod.metadata.name.clone().unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    if status.is_null() {
        return pods.get(&name).await.unwrap();
    }
    let params = PatchParams { field_manager: Some(MANAGER.into()), ..PatchParams::default() };
    pods.patch_status(&name, &params, &Patch::Merge(json!({"status": status})))
        .await
        .unwrap_or_else(|e| panic!("status of pod {name}: {e}"))
}

fn container(name: &str, state: Value) -> Value {
    json!({"name": name, "image": "alpine", "imageID": "", "ready": false, "restartCount": 0, "state": state})
}

fn terminated(code: i32, from: &str, to: &str) -> Value {
    json!({"terminated": {"exitCode": code, "reason": if code == 0 { "Completed" } else { "Error" }, "startedAt": from, "finishedAt": to}})
}

/// The seed's run half-way: task-0 done, task-1's serial step-4 running, step-5 waiting. What
/// the operator, the worker and the kubelet would have written, written by the test.
async fn seed_run_half_way(ns: &TestNamespace) -> Workplan {
    let workplan = workflow_and_run(ns, &seed(&ns.name)).await;
    let name = workplan.metadata.name.clone().unwrap();
    let workplans: Api<Workplan> = Api::namespaced(ns.client.clone(), &ns.name);
    let status = json!({"apiVersion": "kube.ci/v1alpha1", "kind": "Workplan", "status": {
        "phase": "Running", "taskIndex": 1, "progress": "2/2", "nodeName": NODE, "startTime": "2026-01-01T10:00:00Z"
    }});
    workplans.patch_status(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(status)).await.unwrap();
    let request = json!({
        "apiVersion": "kube.ci/v1alpha1", "kind": "RequestState",
        "metadata": {"name": name},
        "spec": {"request-uid": workplan.metadata.uid, "job": "task-1", "state": "STARTED", "worker": "w1"},
        "status": {"history": [
            {"job": "task-0", "state": "REQUESTED", "timestamp": "2026-01-01T10:00:00Z"},
            {"job": "task-0", "state": "STARTED", "worker": "w1", "timestamp": "2026-01-01T10:00:00Z"},
            {"job": "task-0", "state": "COMPLETED", "worker": "w1", "nodeName": NODE, "timestamp": "2026-01-01T10:00:04Z"},
            {"job": "task-1", "state": "REQUESTED", "timestamp": "2026-01-01T10:00:05Z"},
            {"job": "task-1", "state": "STARTED", "worker": "w1", "timestamp": "2026-01-01T10:00:06Z"},
        ]},
    });
    let request: RequestState = serde_json::from_value(request).unwrap();
    Api::<RequestState>::namespaced(ns.client.clone(), &ns.name)
        .create(&PostParams::default(), &request)
        .await
        .unwrap();
    let done = terminated(0, "2026-01-01T10:00:01Z", "2026-01-01T10:00:03Z");
    task_pod_with(
        ns,
        &workplan,
        0,
        json!({
            "phase": "Succeeded",
            "initContainerStatuses": [container("step-1", done.clone())],
            "containerStatuses": [container("step-2", done.clone()), container("step-3", done)],
        }),
    )
    .await;
    task_pod_with(ns, &workplan, 1, json!({
        "phase": "Pending",
        "initContainerStatuses": [container("step-4", json!({"running": {"startedAt": "2026-01-01T10:00:07Z"}}))],
        "containerStatuses": [container("step-5", json!({"waiting": {"reason": "PodInitializing"}}))],
    }))
    .await;
    workplan
}

#[tokio::test]
async fn get_shows_a_run_step_by_step_and_a_workflows_runs() {
    let ns = pod_namespace("plugin-get").await;
    let workplan = seed_run_half_way(&ns).await;
    let name = workplan.metadata.name.clone().unwrap();

    let text = ok(&ns.name, &["get", &format!("wp/{name}")]).await;
    eprintln!("kubectl kubeci get wp/{name}:\n{text}");
    assert!(
        text.starts_with(&format!(
            "Workplan {}/{name} (Workflow my-workflow): Running, task 2/2, node {NODE}, ",
            ns.name
        )),
        "{text}"
    );
    let rows: Vec<Vec<&str>> = text.lines().skip(2).map(|l| l.split_whitespace().collect()).collect();
    let states: Vec<(&str, &str)> =
        rows.iter().map(|r| if r[0].starts_with('t') { (r[0], r[1]) } else { (r[1], r[3]) }).collect();
    assert_eq!(
        states,
        [
            ("task-0", "Succeeded"),
            ("step-1", "Succeeded"),
            ("step-2", "Succeeded"),
            ("step-3", "Succeeded"),
            ("task-1", "Running"),
            ("step-4", "Running"),
            ("step-5", "Waiting"),
        ],
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "├─ step-1  serial    Succeeded  0     2026-01-01T10:00:01Z  2s        {name}-task-0/step-1\n"
        )),
        "{text}"
    );

    // The same tree as data.
    let tree: Value =
        serde_json::from_str(&ok(&ns.name, &["get", "workplan", &name, "-o", "json"]).await).unwrap();
    assert_eq!(tree["phase"], "Running");
    assert_eq!(
        tree["tasks"][0]["steps"][0],
        json!({
            "name": "step-1", "mode": "serial", "state": "Succeeded", "exitCode": 0,
            "start": "2026-01-01T10:00:01Z", "finish": "2026-01-01T10:00:03Z", "duration": "2s",
            "pod": format!("{name}-task-0"), "container": "step-1",
        })
    );
    assert_eq!(tree["tasks"][1]["steps"][0]["state"], "Running");
    assert_eq!(tree["tasks"][1]["steps"][1]["state"], "Waiting");
    let yaml: Value =
        serde_yaml::from_str(&ok(&ns.name, &["get", &format!("wp/{name}"), "-o", "yaml"]).await).unwrap();
    assert_eq!(yaml, tree);

    // The Workflow's runs; a bare name finds the Workflow.
    let runs = ok(&ns.name, &["get", "workflow/my-workflow"]).await;
    eprintln!("kubectl kubeci get workflow/my-workflow:\n{runs}");
    assert_eq!(runs, ok(&ns.name, &["get", "my-workflow"]).await);
    let lines: Vec<&str> = runs.lines().collect();
    assert_eq!(lines[0], format!("Workflow {}/my-workflow: 1 run", ns.name));
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        ["WORKPLAN", "PHASE", "TRIGGER", "AGE", "DURATION"]
    );
    assert_eq!(
        lines[2].split_whitespace().take(4).collect::<Vec<_>>(),
        [name.as_str(), "Running", "Manual", "(run=1)"]
    );

    // The graph of the Workflow in the cluster is the graph of its file.
    let seed_file = shared_types::repo::root().join("examples/seed-workflow.yaml");
    let from_file = ok(&ns.name, &["graph", "-f", seed_file.to_str().unwrap()]).await;
    assert_eq!(ok(&ns.name, &["graph", "workflow/my-workflow"]).await, from_file);
    assert_eq!(ok(&ns.name, &["graph", "my-workflow"]).await, from_file);
    assert!(from_file.contains("task-1\n  serial:   step-4  ← step-2, step-3\n"), "{from_file}");
    let svg = ok(&ns.name, &["graph", "my-workflow", "-o", "svg"]).await;
    assert!(svg.starts_with("<svg ") && svg.contains(">step-5</text>"), "{svg}");
}

#[tokio::test]
async fn missing_and_malformed_objects_and_unknown_steps_are_named() {
    let ns = pod_namespace("plugin-hostile").await;
    let n = ns.name.as_str();
    assert_eq!(
        fails(n, &["get", "wp/nope"]).await,
        format!("error: Workplan \"nope\" not found in namespace \"{n}\"\n")
    );
    assert_eq!(
        fails(n, &["logs", "nope", "-f"]).await,
        format!("error: Workplan \"nope\" not found in namespace \"{n}\"\n")
    );
    assert_eq!(
        fails(n, &["get", "workflow/nope"]).await,
        format!("error: Workflow \"nope\" not found in namespace \"{n}\"\n")
    );
    assert_eq!(
        fails(n, &["graph", "nope"]).await,
        format!("error: Workflow \"nope\" not found in namespace \"{n}\"\n")
    );
    assert_eq!(
        fails(n, &["get", "nope"]).await,
        format!("error: no Workplan or Workflow \"nope\" in namespace \"{n}\"\n")
    );

    // A Workflow the API server stores and kubeci's types refuse (an int32 field beyond int32).
    let too_big: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "kube.ci/v1alpha1", "kind": "Workflow", "metadata": {"name": "too-big"},
        "spec": {"steps": [{"name": "only", "image": "alpine"}], "workplanHistoryLimit": 1_u64 << 40},
    }))
    .unwrap();
    Api::<DynamicObject>::namespaced_with(ns.client.clone(), n, &ApiResource::erase::<Workflow>(&()))
        .create(&PostParams::default(), &too_big)
        .await
        .unwrap();
    let malformed = format!(
        "error: Workflow {n}/too-big is malformed: spec.workplanHistoryLimit: invalid value: integer `1099511627776`, expected i32\n"
    );
    assert_eq!(fails(n, &["get", "workflow/too-big"]).await, malformed);
    assert_eq!(fails(n, &["graph", "workflow/too-big"]).await, malformed);

    let workplan = seed_run_half_way(&ns).await;
    let name = workplan.metadata.name.clone().unwrap();
    assert_eq!(
        fails(n, &["logs", &name, "--step", "step-9"]).await,
        format!(
            "error: Workplan {n}/{name} has no step \"step-9\" (its steps: step-1, step-2, step-3, step-4, step-5)\n"
        )
    );
    // A Workplan of the Workflow that does not deserialize shows as such among its runs.
    let workplans: Api<Workplan> = Api::namespaced(ns.client.clone(), n);
    let mut broken = planner::plan(&seed(n), TriggerEvent::manual(Some("2".into()))).unwrap();
    broken = workplans.create(&PostParams::default(), &broken).await.unwrap();
    let status =
        json!({"apiVersion": "kube.ci/v1alpha1", "kind": "Workplan", "status": {"taskIndex": 1_u64 << 40}});
    // Read back raw: the typed Api could not read the answer.
    Api::<DynamicObject>::namespaced_with(ns.client.clone(), n, &ApiResource::erase::<Workplan>(&()))
        .patch_status(
            broken.metadata.name.as_deref().unwrap(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(status),
        )
        .await
        .unwrap();
    let runs = ok(n, &["get", "workflow/my-workflow"]).await;
    assert!(runs.starts_with(&format!("Workflow {n}/my-workflow: 1 run\n")), "{runs}");
    assert!(
        runs.ends_with(&format!(
            "malformed: Workplan {n}/{}: status.taskIndex: invalid value: integer `1099511627776`, expected i32\n",
            broken.metadata.name.unwrap()
        )),
        "{runs}"
    );
}

#[tokio::test]
async fn a_pod_deleted_mid_follow_ends_logs_with_an_error_naming_it() {
    let ns = pod_namespace("plugin-pod-deleted").await;
    let n = ns.name.as_str();
    let workplan = workflow_and_run(&ns, &seed(n)).await;
    let name = workplan.metadata.name.clone().unwrap();
    let pod = task_pod_with(&ns, &workplan, 0, Value::Null).await;
    let pod = pod.metadata.name.unwrap();

    let mut follow =
        plugin(n).args(["logs", "-f", &name]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stderr = BufReader::new(follow.stderr.take().unwrap()).lines();
    // It waits for step-1 in the pod that exists: then the pod goes.
    let waiting = format!("waiting for step step-1 to start in pod {pod}");
    // (Before its watch has listed the pods it may say it waits for the pod.)
    let said = tokio::time::timeout(TIMEOUT, async {
        let mut said = Vec::new();
        while let Some(line) = stderr.next_line().await.unwrap() {
            let done = line == waiting;
            said.push(line);
            if done {
                break;
            }
        }
        said
    })
    .await
    .expect("logs -f says what it waits for");
    assert_eq!(said.last(), Some(&waiting), "{said:?}");
    Api::<Pod>::namespaced(ns.client.clone(), n).delete(&pod, &DeleteParams::default()).await.unwrap();
    let status = tokio::time::timeout(TIMEOUT, follow.wait()).await.expect("logs -f ends").unwrap();
    assert_eq!(status.code(), Some(1));
    let rest = stderr.next_line().await.unwrap();
    assert_eq!(
        rest,
        Some(format!("error: pod {pod} of Workplan {n}/{name} was deleted while following step step-1"))
    );
}

/// A workspace root of the test's own on the host, removed when dropped.
struct WorkspaceRoot(std::path::PathBuf);

impl Drop for WorkspaceRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn logs_follow_streams_a_running_step_then_the_next_ones_on_the_real_node() {
    let ns = node_namespace("plugin-node-logs").await;
    let n = ns.name.as_str();
    let root = WorkspaceRoot(std::env::temp_dir().join(format!("kubeci-e2e-workspaces-{n}")));
    let _operator = Component::start(
        workspace_binary("workplan-operator"),
        n,
        &["--no-leader-election", "--worker-lease-namespace", n],
    );
    let _worker = Component::start(
        workspace_binary("worker"),
        n,
        &["--identity", "worker-1", "--lease-namespace", n, "--workspace-root", root.0.to_str().unwrap()],
    );
    // `first` runs until the test lets it go: its first line must arrive while it runs.
    let mut wf: Workflow = serde_yaml::from_str(
        r#"
apiVersion: kube.ci/v1alpha1
kind: Workflow
metadata: {name: live}
spec:
  steps:
  - {name: first, image: alpine, commands: [sh, -c], args: ["echo first waiting; while [ ! -f /kubeci/go ]; do sleep 0.2; done; echo first done"]}
  - {name: second, image: alpine, commands: [sh, -c], args: ["echo second ran"], dependency: [first]}
  - {name: third, image: alpine, commands: [sh, -c], args: ["echo third ran"], dependency: [first]}
  - {name: fourth, image: alpine, commands: [sh, -c], args: ["echo fourth ran; ls /kubeci"], dependency: [second, third]}
"#,
    )
    .unwrap();
    wf.metadata.namespace = Some(n.to_string());
    let workflows: Api<Workflow> = Api::namespaced(ns.client.clone(), n);
    let created = workflows.create(&PostParams::default(), &wf).await.unwrap();
    let workplan = planner::plan(&created, TriggerEvent::manual(Some("1".into()))).unwrap();
    let name = workplan.metadata.name.clone().unwrap();

    // Following starts before the Workplan has a pod.
    let workplans: Api<Workplan> = Api::namespaced(ns.client.clone(), n);
    workplans.create(&PostParams::default(), &workplan).await.unwrap();
    let mut follow = plugin(n)
        .args(["logs", "-f", &format!("wp/{name}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(follow.stdout.take().unwrap()).lines();
    let logs = LocalNode::logs();
    let first = tokio::time::timeout(TIMEOUT, stdout.next_line())
        .await
        .unwrap_or_else(|_| panic!("no log line after {TIMEOUT:?}; node logs in {}", logs.display()))
        .unwrap();
    assert_eq!(first.as_deref(), Some("[first] first waiting"));

    // Still running: it cannot end before the go file exists.
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), n);
    let task_0 = pods.get(&format!("{name}-task-0")).await.unwrap();
    let state = &task_0.status.unwrap().init_container_statuses.unwrap()[0];
    assert!(state.state.as_ref().unwrap().running.is_some(), "first runs: {state:?}");
    let workspace = root.0.join(n).join("live").join(&name);
    std::fs::write(workspace.join("go"), "").unwrap();

    let mut rest = Vec::new();
    while let Some(line) =
        tokio::time::timeout(TIMEOUT, stdout.next_line()).await.expect("the run goes on").unwrap()
    {
        rest.push(line);
    }
    let status =
        tokio::time::timeout(TIMEOUT, follow.wait()).await.expect("logs -f ends with the run").unwrap();
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut follow.stderr.take().unwrap(), &mut stderr).await.unwrap();
    assert!(status.success(), "{stderr}");
    assert!(stderr.ends_with(&format!("Workplan {n}/{name} Completed: all 2 tasks succeeded\n")), "{stderr}");
    // first's end, then second and third (together, in either order), then the next pod's step.
    assert_eq!(rest[0], "[first] first done");
    let mut parallel = rest[1..3].to_vec();
    parallel.sort();
    assert_eq!(parallel, ["[second] second ran", "[third] third ran"]);
    assert_eq!(rest[3..], ["[fourth] fourth ran", "[fourth] go"]);

    // Read again once finished, each step whole and in order; and the tree of the run.
    let again = ok(n, &["logs", &name]).await;
    assert_eq!(
        again,
        "[first] first waiting\n[first] first done\n[second] second ran\n[third] third ran\n[fourth] fourth ran\n[fourth] go\n"
    );
    assert_eq!(ok(n, &["logs", &name, "--step", "third"]).await, "[third] third ran\n");
    let tree = ok(n, &["get", &format!("wp/{name}")]).await;
    eprintln!("kubectl kubeci get wp/{name}:\n{tree}\nkubectl kubeci logs {name}:\n{again}");
    let data: Value =
        serde_json::from_str(&ok(n, &["get", &format!("wp/{name}"), "-o", "json"]).await).unwrap();
    assert_eq!(data["phase"], "Completed");
    for task in data["tasks"].as_array().unwrap() {
        for step in task["steps"].as_array().unwrap() {
            assert_eq!(
                (step["state"].as_str(), step["exitCode"].as_i64()),
                (Some("Succeeded"), Some(0)),
                "{tree}"
            );
        }
    }
    let runs = ok(n, &["get", "workflow/live"]).await;
    eprintln!("kubectl kubeci get workflow/live:\n{runs}");
    assert!(runs.lines().nth(2).unwrap().contains(" Completed  Manual (run=1) "), "{runs}");
}

/// `run` asks the director for a manual run through the `kube.ci/run` annotation, prints the
/// Workplan the director created for it, and with `--wait` ends with the run: status 0 when it
/// completed, 1 naming the reason when it failed. The operator's part (the phase) is written by
/// the test; a suspended or missing Workflow is refused, naming it.
#[tokio::test]
async fn run_starts_a_manual_run_and_waits_for_its_end() {
    let ns = TestEnv::get().namespace("plugin-run").await;
    let n = ns.name.as_str();
    let _director =
        Component::start(workspace_binary("director"), n, &["--no-leader-election", "--lease-namespace", n]);
    let workflows: Api<Workflow> = Api::namespaced(ns.client.clone(), n);
    let workplans: Api<Workplan> = Api::namespaced(ns.client.clone(), n);
    workflows.create(&PostParams::default(), &seed(n)).await.unwrap();

    let created = ok(n, &["run", "workflow/my-workflow", "--timeout", "60s"]).await;
    let name = created
        .strip_prefix("workplan.kube.ci/")
        .and_then(|s| s.strip_suffix(" created\n"))
        .unwrap_or_else(|| panic!("run prints the Workplan: {created:?}"));
    let first = workplans.get(name).await.unwrap();
    assert_eq!(first.spec.trigger.event, shared_types::EventKind::Manual);
    let value = first.spec.trigger.run.clone().expect("a manual run carries its value");
    let annotated = workflows.get("my-workflow").await.unwrap();
    assert_eq!(annotated.annotations().get(shared_types::labels::RUN_ANNOTATION), Some(&value));

    // --wait: the run's end decides the exit status.
    for (phase, reason, code) in
        [("Failed", "step \"step-4\" exited with 3", 1), ("Completed", "all 2 tasks succeeded", 0)]
    {
        let before: Vec<String> =
            workplans.list(&Default::default()).await.unwrap().items.iter().map(|w| w.name_any()).collect();
        let waiting = plugin(n)
            .args(["run", "my-workflow", "--wait", "--timeout", "90s"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let new = e2e::eventually("the Workplan of the manual run", TIMEOUT, || async {
            let now = workplans.list(&Default::default()).await.ok()?;
            now.items.into_iter().map(|w| w.name_any()).find(|w| !before.contains(w))
        })
        .await;
        let status = json!({"apiVersion": "kube.ci/v1alpha1", "kind": "Workplan",
            "status": {"phase": phase, "reason": reason}});
        workplans
            .patch_status(&new, &PatchParams::apply(MANAGER).force(), &Patch::Apply(status))
            .await
            .unwrap();
        let out = tokio::time::timeout(TIMEOUT, waiting.wait_with_output()).await.unwrap().unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(code), "{stdout}\n{stderr}");
        assert!(stdout.starts_with(&format!("workplan.kube.ci/{new} created\n")), "{stdout}");
        if code == 1 {
            assert!(stderr.contains(&format!("Workplan {n}/{new} Failed: {reason}")), "{stderr}");
        } else {
            assert!(stdout.ends_with(&format!("workplan.kube.ci/{new} Completed\n")), "{stdout}");
        }
    }

    // Hostile: no such Workflow; a suspended one; one whose run never starts (timeout, with why).
    let missing = fails(n, &["run", "nope"]).await;
    assert!(missing.contains(&format!("Workflow \"nope\" not found in namespace \"{n}\"")), "{missing}");
    workflows
        .patch("my-workflow", &PatchParams::default(), &Patch::Merge(json!({"spec": {"suspend": true}})))
        .await
        .unwrap();
    let suspended = fails(n, &["run", "my-workflow"]).await;
    assert!(suspended.contains(&format!("no run of Workflow {n}/my-workflow started")), "{suspended}");
    assert!(suspended.contains("spec.suspend"), "{suspended}");
    assert!(fails(n, &["run", "wp/my-workflow"]).await.contains("is not a Workflow"));
}
