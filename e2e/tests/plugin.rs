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

/// A stand-in kubelet for the Node the plugin tests bind pods to: it serves
/// `/containerLogs/NS/POD/CONTAINER` over TLS (the API server checks no kubelet certificate here)
/// with two lines naming the container and the pod, so that logs can be read without containers.
/// One per test binary, on a thread of its own (each test has its own runtime); `node-a`'s
/// status points the API server at it.
struct FakeKubelet;

impl FakeKubelet {
    /// The log the stand-in serves for `container` of `pod`.
    fn log(pod: &str, container: &str) -> String {
        format!("{container} says hello from {pod}\n{container} done\n")
    }

    /// Starts the stand-in (once) and points `node-a` at it.
    async fn serve_node_a(ns: &TestNamespace) {
        static PORT: std::sync::OnceLock<u16> = std::sync::OnceLock::new();
        let port = *PORT.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let certified =
                        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
                    let config = axum_server::tls_rustls::RustlsConfig::from_pem(
                        certified.cert.pem().into_bytes(),
                        certified.signing_key.serialize_pem().into_bytes(),
                    )
                    .await
                    .unwrap();
                    let app = axum::Router::new().route(
                        "/containerLogs/{ns}/{pod}/{container}",
                        axum::routing::get(
                            |axum::extract::Path((_, pod, container)): axum::extract::Path<(
                                String,
                                String,
                                String,
                            )>| async move { FakeKubelet::log(&pod, &container) },
                        ),
                    );
                    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                    listener.set_nonblocking(true).unwrap();
                    tx.send(listener.local_addr().unwrap().port()).unwrap();
                    axum_server::from_tcp_rustls(listener, config)
                        .unwrap()
                        .serve(app.into_make_service())
                        .await
                        .unwrap();
                });
            });
            rx.recv().expect("the stand-in kubelet listens")
        });
        let status = json!({"status": {
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
        }});
        Api::<k8s_openapi::api::core::v1::Node>::all(ns.client.clone())
            .patch_status(
                NODE,
                &PatchParams { field_manager: Some(MANAGER.into()), ..PatchParams::default() },
                &Patch::Merge(status),
            )
            .await
            .unwrap();
    }
}

/// `kubectl kubeci ui` on a free loopback port, killed when dropped.
struct UiServer {
    _child: tokio::process::Child,
    /// `127.0.0.1:PORT`
    host: String,
    url: String,
}

impl UiServer {
    async fn start(ns: &str) -> UiServer {
        let mut child = plugin(ns).args(["ui", "--port", "0"]).stdout(Stdio::piped()).spawn().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let url = tokio::time::timeout(TIMEOUT, stdout.next_line())
            .await
            .expect("kubectl kubeci ui prints its URL")
            .unwrap()
            .expect("a line");
        let host =
            url.strip_prefix("http://").and_then(|u| u.strip_suffix('/')).unwrap_or_else(|| panic!("{url}"));
        UiServer { host: host.to_string(), url: url.clone(), _child: child }
    }

    /// Sends `GET path` (HTTP/1.0, so the body ends with the connection) with `Host: host` and
    /// extra headers; returns the connection for streams.
    async fn open(&self, path: &str, headers: &[(&str, &str)]) -> BufReader<tokio::net::TcpStream> {
        use tokio::io::AsyncWriteExt;
        let mut stream = tokio::net::TcpStream::connect(&self.host).await.unwrap();
        let mut request = format!("GET {path} HTTP/1.0\r\n");
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            request.push_str(&format!("Host: {}\r\n", self.host));
        }
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        BufReader::new(stream)
    }

    /// Status, headers (lower-case names) and body of `GET path`.
    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> (u16, Vec<(String, String)>, String) {
        use tokio::io::AsyncReadExt;
        let mut response = String::new();
        tokio::time::timeout(TIMEOUT, self.open(path, headers).await.read_to_string(&mut response))
            .await
            .unwrap_or_else(|_| panic!("GET {path} answered within {TIMEOUT:?}"))
            .unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or_else(|| panic!("{response}"));
        let mut lines = head.lines();
        let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        (status, headers, body.to_string())
    }

    /// The JSON of `GET path`, which must answer `status`.
    async fn json(&self, path: &str, status: u16) -> Value {
        let (code, headers, body) = self.get(path, &[]).await;
        assert_eq!(code, status, "GET {path}: {body}");
        assert!(headers.contains(&("content-type".into(), "application/json".into())), "{headers:?}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    async fn watching(&self) -> u64 {
        self.json("/api/stats", 200).await["watching"].as_u64().unwrap()
    }
}

/// Reads Server-Sent Events: the next `(event, data)`, skipping the response head and comments.
async fn next_event(stream: &mut BufReader<tokio::net::TcpStream>) -> (String, String) {
    let (mut event, mut data) = (String::new(), Vec::new());
    loop {
        let mut line = String::new();
        let read =
            tokio::time::timeout(TIMEOUT, stream.read_line(&mut line)).await.expect("an event").unwrap();
        assert!(read > 0, "the stream ended before an event");
        let line = line.trim_end_matches(['\r', '\n']);
        if let Some(e) = line.strip_prefix("event: ") {
            event = e.to_string();
        } else if let Some(d) = line.strip_prefix("data:") {
            data.push(d.strip_prefix(' ').unwrap_or(d).to_string());
        } else if line.is_empty() && !event.is_empty() {
            return (event, data.join("\n"));
        }
    }
}

/// The seed's run half-way goes on: the kubelet reports task-1's step-4 done and step-5 running.
async fn step_4_ends_and_step_5_starts(ns: &TestNamespace, workplan: &str) {
    let params = PatchParams { field_manager: Some(MANAGER.into()), ..PatchParams::default() };
    let status = json!({"status": {
        "phase": "Running",
        "initContainerStatuses": [container("step-4", terminated(0, "2026-01-01T10:00:07Z", "2026-01-01T10:00:09Z"))],
        "containerStatuses": [container("step-5", json!({"running": {"startedAt": "2026-01-01T10:00:10Z"}}))],
    }});
    Api::<Pod>::namespaced(ns.client.clone(), &ns.name)
        .patch_status(&format!("{workplan}-task-1"), &params, &Patch::Merge(status))
        .await
        .unwrap();
}

/// The `(step, state)` of every step of a run view (`/api/workplans/NAME` or a `run` event).
fn step_states(view: &Value) -> Vec<(String, String)> {
    view["tree"]["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["steps"].as_array().unwrap())
        .map(|s| (s["name"].as_str().unwrap().to_string(), s["state"].as_str().unwrap().to_string()))
        .collect()
}

fn states(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

/// The web view's API on a run half-way: the Workflows and runs, a run's steps and DAG, its
/// live updates when a pod changes, a finished step's log; and the hostile cases: names that
/// could not be objects, a missing Workplan or step, a malformed Workplan, a foreign Host or
/// Origin, a client that goes away mid-stream (the watches end).
#[tokio::test]
async fn ui_serves_runs_and_logs_live_and_refuses_what_is_not_its_own() {
    let ns = pod_namespace("plugin-ui-api").await;
    let n = ns.name.as_str();
    FakeKubelet::serve_node_a(&ns).await;
    let workplan = seed_run_half_way(&ns).await;
    let name = workplan.metadata.name.clone().unwrap();
    let ui = UiServer::start(n).await;

    let page = ui.get("/", &[]).await;
    assert_eq!(page.0, 200);
    assert!(page.2.contains("<script src=\"/ui.js\"></script>"), "{}", page.2);
    let csp = page.1.iter().find(|(k, _)| k == "content-security-policy").expect("a CSP").1.clone();
    assert!(csp.starts_with("default-src 'none'; script-src 'self';"), "{csp}");

    let listed = ui.json("/api/workflows", 200).await;
    assert_eq!(listed["namespace"], n);
    assert_eq!(listed["workflows"][0]["workflow"], "my-workflow");
    assert_eq!(listed["workflows"][0]["runs"][0]["name"], name.as_str());
    assert_eq!(listed["workflows"][0]["runs"][0]["phase"], "Running");

    let half_way = states(&[
        ("step-1", "Succeeded"),
        ("step-2", "Succeeded"),
        ("step-3", "Succeeded"),
        ("step-4", "Running"),
        ("step-5", "Waiting"),
    ]);
    let view = ui.json(&format!("/api/workplans/{name}"), 200).await;
    assert_eq!(step_states(&view), half_way);
    let svg = view["svg"].as_str().unwrap();
    assert!(svg.contains("data-step=\"step-4\" data-state=\"Running\""), "{svg}");

    // Live: the kubelet reports step-4 done and step-5 running; the open stream says so.
    let mut events = ui.open(&format!("/api/workplans/{name}/events?namespace={n}"), &[]).await;
    let (event, data) = next_event(&mut events).await;
    assert_eq!(event, "run");
    assert_eq!(step_states(&serde_json::from_str(&data).unwrap()), half_way);
    e2e::eventually("the run's watches", TIMEOUT, || async { (ui.watching().await == 1).then_some(()) })
        .await;
    step_4_ends_and_step_5_starts(&ns, &name).await;
    let (event, data) = next_event(&mut events).await;
    assert_eq!(event, "run");
    assert_eq!(
        step_states(&serde_json::from_str(&data).unwrap()),
        states(&[
            ("step-1", "Succeeded"),
            ("step-2", "Succeeded"),
            ("step-3", "Succeeded"),
            ("step-4", "Succeeded"),
            ("step-5", "Running"),
        ])
    );
    // The client goes away: its watches end.
    drop(events);
    e2e::eventually("the watches of a closed stream to end", TIMEOUT, || async {
        (ui.watching().await == 0).then_some(())
    })
    .await;

    // A finished step's log, read through the API server (from the stand-in kubelet), then the end.
    let mut log = ui.open(&format!("/api/workplans/{name}/logs?step=step-2"), &[]).await;
    let mut got = Vec::new();
    loop {
        let (event, data) = next_event(&mut log).await;
        match event.as_str() {
            "line" => {
                got.push(serde_json::from_str::<Value>(&data).unwrap()["text"].as_str().unwrap().to_string())
            }
            "end" => break,
            // Before its watch has listed the pods it may say it waits for the pod.
            "wait" => {}
            other => panic!("unexpected {other}: {data}"),
        }
    }
    let task_0 = format!("{name}-task-0");
    assert_eq!(got.join("\n") + "\n", FakeKubelet::log(&task_0, "step-2"));
    e2e::eventually("the log's watches to end", TIMEOUT, || async {
        (ui.watching().await == 0).then_some(())
    })
    .await;

    // Hostile: names that could not be objects, missing objects, a step that does not exist.
    for (path, status, error) in [
        ("/api/workplans/nope".to_string(), 404, format!("Workplan \"nope\" not found in namespace \"{n}\"")),
        (
            "/api/workplans/nope/events".to_string(),
            404,
            format!("Workplan \"nope\" not found in namespace \"{n}\""),
        ),
        (
            "/api/workplans/..%2F..%2Fsecrets/logs".to_string(),
            400,
            "\"../../secrets\" is not a valid Workplan name (lower-case letters, digits, '-' and '.')"
                .to_string(),
        ),
        (
            "/api/workplans/%3Cimg%20src%3Dx%3E".to_string(),
            400,
            "\"<img src=x>\" is not a valid Workplan name (lower-case letters, digits, '-' and '.')"
                .to_string(),
        ),
        (
            "/api/workflows?namespace=..%2Fkube-system".to_string(),
            400,
            "\"../kube-system\" is not a valid namespace name (lower-case letters, digits, '-' and '.')"
                .to_string(),
        ),
        (
            format!("/api/workplans/{name}/logs?step=step-9"),
            404,
            format!(
                "Workplan {n}/{name} has no step \"step-9\" (its steps: step-1, step-2, step-3, step-4, step-5)"
            ),
        ),
    ] {
        assert_eq!(ui.json(&path, status).await, json!({"error": error}), "GET {path}");
    }

    // A Workplan the API server stores and kubeci's types refuse: named with its field, and
    // listed as malformed.
    let workplans: Api<Workplan> = Api::namespaced(ns.client.clone(), n);
    let broken = planner::plan(&seed(n), TriggerEvent::manual(Some("2".into()))).unwrap();
    let broken = workplans.create(&PostParams::default(), &broken).await.unwrap().metadata.name.unwrap();
    let status =
        json!({"apiVersion": "kube.ci/v1alpha1", "kind": "Workplan", "status": {"taskIndex": 1_u64 << 40}});
    Api::<DynamicObject>::namespaced_with(ns.client.clone(), n, &ApiResource::erase::<Workplan>(&()))
        .patch_status(&broken, &PatchParams::apply(MANAGER).force(), &Patch::Apply(status))
        .await
        .unwrap();
    let malformed = format!(
        "Workplan {n}/{broken} is malformed: status.taskIndex: invalid value: integer `1099511627776`, expected i32"
    );
    assert_eq!(ui.json(&format!("/api/workplans/{broken}"), 422).await, json!({"error": malformed}));
    let listed = ui.json("/api/workflows", 200).await;
    assert_eq!(
        listed["malformed"],
        json!([format!(
            "Workplan {n}/{broken}: status.taskIndex: invalid value: integer `1099511627776`, expected i32"
        )])
    );

    // DNS rebinding and foreign pages: refused, whatever the path.
    let port = ui.host.rsplit(':').next().unwrap();
    let evil_host = format!("evil.example:{port}");
    for headers in [vec![("Host", evil_host.as_str())], vec![("Origin", "http://evil.example")]] {
        for path in ["/", "/api/workflows", &format!("/api/workplans/{name}/events")] {
            let (status, _, body) = ui.get(path, &headers).await;
            assert_eq!(status, 403, "{path} {headers:?}: {body}");
            assert!(body.contains("DNS rebinding protection"), "{body}");
        }
    }
    let (status, _, _) = ui.get("/api/workflows", &[("Host", &format!("localhost:{port}"))]).await;
    assert_eq!(status, 200);

    // No credentials anywhere in what the page gets.
    let token = std::fs::read_to_string(TestEnv::get().kubeconfig()).unwrap();
    let token =
        token.lines().find_map(|l| l.trim().strip_prefix("token: ")).expect("the test kubeconfig's token");
    for path in ["/", "/ui.js", "/api/namespaces", "/api/workflows", &format!("/api/workplans/{name}")] {
        assert!(!ui.get(path, &[]).await.2.contains(token), "{path} shows the token");
    }
    assert_eq!(ui.url, format!("http://{}/", ui.host));
}

/// Debian's Chromium, from `hack/chromium.sh` (which installs it when missing and it can).
/// Never skips: no browser fails the test with the script's words.
fn chromium() -> std::path::PathBuf {
    let script = shared_types::repo::root().join("hack/chromium.sh");
    let out = std::process::Command::new("bash").arg(&script).output().expect("bash runs");
    assert!(
        out.status.success(),
        "no headless Chromium for the web view's test ({} failed): {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    std::path::PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Where the tests keep what a person may want to look at after a run: `target/e2e-artifacts/`.
fn artifacts() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(3).expect("target/<profile>/deps/<test>");
    let dir = target.join("e2e-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Headless Chromium driven over the DevTools protocol, so that a live page (its event streams
/// stay open, which keeps `--virtual-time-budget` from ever running out and `--dump-dom` dumps
/// at the load event, before any data came) can be read once it shows what the test waits for.
/// A fresh profile in a temporary directory; killed when dropped.
struct Browser {
    process: tokio::process::Child,
    socket: BufReader<tokio::net::TcpStream>,
    next_id: u64,
    profile: std::path::PathBuf,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Gone first, so that it writes nothing more into the profile being removed.
        let _ = self.process.start_kill();
        for _ in 0..50 {
            if !matches!(self.process.try_wait(), Ok(None)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

impl Browser {
    async fn start(chromium: &std::path::Path) -> Browser {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let profile = std::env::temp_dir().join(format!("kubeci-chromium-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&profile);
        let mut process = tokio::process::Command::new(chromium)
            // As root Chromium needs --no-sandbox.
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
            ])
            .args(["--disable-background-networking", "--disable-component-update", "--disable-sync"])
            .args(["--no-proxy-server", "--window-size=1400,1100", "--remote-debugging-port=0"])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", chromium.display()));
        let mut stderr = BufReader::new(process.stderr.take().unwrap()).lines();
        let mut said = Vec::new();
        let endpoint = tokio::time::timeout(TIMEOUT, async {
            while let Some(line) = stderr.next_line().await.unwrap() {
                if let Some(url) = line.strip_prefix("DevTools listening on ws://") {
                    return url.to_string();
                }
                said.push(line);
            }
            panic!("chromium ended without a DevTools endpoint: {said:#?}")
        })
        .await
        .expect("chromium starts");
        // Keep reading its stderr so that it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });
        let (host, path) = endpoint.split_once('/').unwrap();
        let mut socket = tokio::net::TcpStream::connect(host).await.unwrap();
        let handshake = format!(
            "GET /{path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        socket.write_all(handshake.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(socket.read_u8().await.unwrap());
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101"), "the DevTools WebSocket: {head}");
        Browser { process, socket: BufReader::new(socket), next_id: 0, profile }
    }

    /// Sends one WebSocket text frame (masked, as a client must).
    async fn send(&mut self, text: &str) {
        use tokio::io::AsyncWriteExt;
        let payload = text.as_bytes();
        let mut frame = vec![0x81];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= 0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = [0x6b, 0x75, 0x62, 0x65];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.socket.get_mut().write_all(&frame).await.unwrap();
    }

    /// Reads one message (joining continuation frames).
    async fn receive(&mut self) -> Value {
        use tokio::io::AsyncReadExt;
        let mut message = Vec::new();
        loop {
            let first = self.socket.read_u8().await.unwrap();
            let len = match self.socket.read_u8().await.unwrap() & 0x7f {
                126 => u64::from(self.socket.read_u16().await.unwrap()),
                127 => self.socket.read_u64().await.unwrap(),
                n => u64::from(n),
            };
            let mut payload = vec![0; usize::try_from(len).unwrap()];
            self.socket.read_exact(&mut payload).await.unwrap();
            if first & 0x0f == 0x8 {
                panic!("chromium closed the DevTools connection");
            }
            message.extend_from_slice(&payload);
            if first & 0x80 != 0 {
                return serde_json::from_slice(&message).unwrap();
            }
        }
    }

    /// Calls a DevTools method (in `session`, if any) and returns its result.
    async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut request = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            request["sessionId"] = json!(session);
        }
        self.send(&request.to_string()).await;
        let answer = tokio::time::timeout(TIMEOUT, async {
            loop {
                let message = self.receive().await;
                if message["id"] == json!(id) {
                    return message;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("chromium answers {method}"));
        assert!(answer.get("error").is_none(), "{method}: {answer}");
        answer["result"].clone()
    }

    /// Opens `url` in a new page; returns the page's session.
    async fn open(&mut self, url: &str) -> String {
        let target = self.call(None, "Target.createTarget", json!({"url": url})).await;
        let attached = self
            .call(None, "Target.attachToTarget", json!({"targetId": target["targetId"], "flatten": true}))
            .await;
        attached["sessionId"].as_str().unwrap().to_string()
    }

    /// The page's DOM as HTML, now.
    async fn dom(&mut self, session: &str) -> String {
        let expression = "document.documentElement.outerHTML";
        let value = self
            .call(Some(session), "Runtime.evaluate", json!({"expression": expression, "returnByValue": true}))
            .await;
        value["result"]["value"].as_str().unwrap_or_default().to_string()
    }

    /// The DOM once `ready` holds of it; panics with the last DOM after [`TIMEOUT`].
    async fn dom_when(&mut self, session: &str, what: &str, ready: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let dom = self.dom(session).await;
            if ready(&dom) {
                return dom;
            }
            assert!(tokio::time::Instant::now() < deadline, "the page never showed {what}: {dom}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn screenshot(&mut self, session: &str) -> Vec<u8> {
        let shot = self.call(Some(session), "Page.captureScreenshot", json!({"format": "png"})).await;
        base64_decode(shot["data"].as_str().unwrap())
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let digits: Vec<u8> = text.bytes().filter(|c| *c != b'=').map(value).collect();
    digits
        .chunks(4)
        .flat_map(|chunk| {
            let bits =
                chunk.iter().enumerate().fold(0u32, |acc, (i, d)| acc | (u32::from(*d) << (18 - 6 * i)));
            let bytes = bits.to_be_bytes();
            bytes[1..chunk.len()].to_vec()
        })
        .collect()
}

/// The state the page draws for `step`, if it draws it.
fn drawn_state(dom: &str, step: &str) -> Option<String> {
    let marker = format!("data-step=\"{step}\" data-state=\"");
    let rest = &dom[dom.find(&marker)? + marker.len()..];
    Some(rest[..rest.find('"')?].to_string())
}

fn drawn_states(dom: &str) -> Vec<(String, String)> {
    ["step-1", "step-2", "step-3", "step-4", "step-5"]
        .iter()
        .map(|s| (s.to_string(), drawn_state(dom, s).unwrap_or_default()))
        .collect()
}

/// The web view in a real browser: headless Chromium opens the page of the seed's run half-way
/// with step-1 chosen; the DAG shows the five steps with their states, step-1's log (read
/// through the API server) appears, and when a pod changes the page follows without a reload.
/// The screenshot stays in `target/e2e-artifacts/`.
#[tokio::test]
async fn ui_in_headless_chromium_shows_the_seeds_five_steps_live_and_a_steps_log() {
    let chromium = chromium();
    let ns = pod_namespace("plugin-ui-chromium").await;
    let n = ns.name.as_str();
    FakeKubelet::serve_node_a(&ns).await;
    let workplan = seed_run_half_way(&ns).await;
    let name = workplan.metadata.name.clone().unwrap();
    let ui = UiServer::start(n).await;
    let url = format!("{}?namespace={n}&workplan={name}&step=step-1", ui.url);

    let mut browser = Browser::start(&chromium).await;
    let page = browser.open(&url).await;
    let log = FakeKubelet::log(&format!("{name}-task-0"), "step-1");
    let log_shown = format!("<pre id=\"log\">{log}</pre>");
    let dom = browser
        .dom_when(&page, "the run's five steps and step-1's log", |dom| {
            drawn_states(dom).iter().all(|(_, state)| !state.is_empty()) && dom.contains(&log_shown)
        })
        .await;
    assert_eq!(
        drawn_states(&dom),
        states(&[
            ("step-1", "Succeeded"),
            ("step-2", "Succeeded"),
            ("step-3", "Succeeded"),
            ("step-4", "Running"),
            ("step-5", "Waiting"),
        ]),
        "{dom}"
    );
    assert_eq!(dom.matches("<g class=\"step").count(), 5, "{dom}");
    assert!(dom.contains(&format!("Workplan {n}/{name} (Workflow my-workflow)")), "{dom}");
    // The Workflow and its run are listed.
    assert!(dom.contains(&format!("data-workplan=\"{name}\"")), "{dom}");

    let screenshot = artifacts().join("ui-seed-run.png");
    let png = browser.screenshot(&page).await;
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000, "a screenshot: {} bytes", png.len());
    std::fs::write(&screenshot, &png).unwrap();
    eprintln!("screenshot of the web view: {}", screenshot.display());

    // Live: step-4 ends and step-5 starts; the open page follows.
    step_4_ends_and_step_5_starts(&ns, &name).await;
    let dom = browser
        .dom_when(&page, "step-5 running", |dom| drawn_state(dom, "step-5").as_deref() == Some("Running"))
        .await;
    assert_eq!(drawn_state(&dom, "step-4").as_deref(), Some("Succeeded"), "{dom}");
    let token = std::fs::read_to_string(TestEnv::get().kubeconfig()).unwrap();
    let token = token.lines().find_map(|l| l.trim().strip_prefix("token: ")).unwrap();
    assert!(!dom.contains(token), "the page holds no credentials");
}

/// `cancel` sets `kube.ci/cancel` on the Workplan (the reason, or the caller's user name from a
/// SelfSubjectReview) and the workplan-operator ends the run with it in its reason; `--wait`
/// prints that end. The runs are cancelled before the operator starts them, so they end without
/// a worker (a started run's cancellation, its pod stopped on the real node, is in
/// `tests/node.rs`). A finished or missing Workplan is refused, naming it.
#[tokio::test]
async fn cancel_ends_a_run_with_who_cancelled_it() {
    let ns = TestEnv::get().namespace("plugin-cancel").await;
    let n = ns.name.as_str();
    let workplans: Api<Workplan> = Api::namespaced(ns.client.clone(), n);
    let first = workflow_and_run(&ns, &seed(n)).await.name_any();
    let mut other = seed(n);
    other.metadata.name = Some("other".into());
    let second = workflow_and_run(&ns, &other).await.name_any();

    let waiting = plugin(n)
        .args(["cancel", &format!("wp/{first}"), "--reason", "superseded by #42", "--wait"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Without --reason, the caller's name (the test control plane's admin) is the canceller.
    let out = ok(n, &["cancel", &second]).await;
    assert_eq!(out, format!("workplan.kube.ci/{second} cancel requested (admin)\n"));
    e2e::eventually("the first cancellation is written", TIMEOUT, || async {
        let annotations = workplans.get(&first).await.ok()?.metadata.annotations?;
        (annotations.get(shared_types::labels::CANCEL_ANNOTATION)? == "superseded by #42").then_some(())
    })
    .await;

    let _operator = Component::start(
        workspace_binary("workplan-operator"),
        n,
        &["--no-leader-election", "--worker-lease-namespace", n],
    );
    let out = tokio::time::timeout(TIMEOUT, waiting.wait_with_output()).await.unwrap().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(
        stdout,
        format!(
            "workplan.kube.ci/{first} cancel requested (superseded by #42)\n\
             workplan.kube.ci/{first} Cancelled: Cancelled by superseded by #42 before it started\n"
        )
    );
    let (phase, reason) = e2e::eventually("the second run ends", TIMEOUT, || async {
        let status = workplans.get(&second).await.ok()?.status?;
        status.phase.filter(|p| p.is_finished()).map(|p| (p, status.reason.unwrap_or_default()))
    })
    .await;
    assert_eq!(
        (phase, reason.as_str()),
        (shared_types::Phase::Cancelled, "Cancelled by admin before it started")
    );

    // Hostile: a finished run, a missing one, a Workflow given where a Workplan is expected.
    let finished = fails(n, &["cancel", &first]).await;
    assert!(
        finished.contains(&format!("Workplan {n}/{first} has already finished (Cancelled: Cancelled by")),
        "{finished}"
    );
    let missing = fails(n, &["cancel", "wp/nope"]).await;
    assert!(missing.contains(&format!("Workplan \"nope\" not found in namespace \"{n}\"")), "{missing}");
    assert!(fails(n, &["cancel", "workflow/x"]).await.contains("is not a Workplan"));
}
