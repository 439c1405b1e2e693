//! The install tier (issue 16): `helm install charts/kubeci` on the local node, kubeci running as
//! pods from the images `hack/images.sh` builds on this machine (imported into the node's
//! containerd, never pulled). The pods reach the API server through the `kubernetes` Service and
//! the API server reaches the webhook through its Service (kube-proxy on the node, `hack/node.sh`).
//!
//! Needs root, like the node tier; the node is one per machine (`hack/node.sh` takes a lock), so
//! test binaries that use it run one after another. It fails, never skips.

use std::io::Write;
use std::process::{Output, Stdio};
use std::time::Duration;

use e2e::install::{REGISTRY, Release};
use e2e::testenv::{FIELD_MANAGER, read_crds};
use e2e::{LocalNode, TestEnv, eventually, node_namespace};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::wait::await_condition;
use shared_types::{JobState, Phase, RequestState, Workflow, Workplan};

const TIMEOUT: Duration = Duration::from_secs(180);
const COMPONENTS: [&str; 3] = ["director", "workplan-operator", "worker"];

/// `kubectl apply --server-side -f -` of `yaml`; the output, failed or not.
fn kubectl_apply(yaml: &str) -> Output {
    let mut child = TestEnv::get()
        .kubectl()
        .args(["apply", "--server-side", "--field-manager", FIELD_MANAGER, "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    child.stdin.take().unwrap().write_all(yaml.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn kubectl(args: &[&str]) -> Output {
    TestEnv::get().kubectl().args(args).output().expect("kubectl runs")
}

/// Helm takes over the CRDs the harness installed, as on an upgrade from a manual install.
async fn adopt_crds(client: &kube::Client, release: &Release) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let patch = serde_json::json!({"metadata": {
        "labels": {"app.kubernetes.io/managed-by": "Helm"},
        "annotations": {
            "meta.helm.sh/release-name": release.name,
            "meta.helm.sh/release-namespace": release.namespace,
        },
    }});
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
    for crd in read_crds(&TestEnv::repo_root().join("crds")).unwrap() {
        let name = crd.metadata.name.unwrap();
        api.patch(&name, &params, &Patch::Merge(&patch)).await.unwrap();
    }
}

/// Every replica available and up to date.
fn available(deployment: Option<&Deployment>) -> bool {
    let Some(deployment) = deployment else { return false };
    let want = deployment.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let Some(status) = deployment.status.as_ref() else { return false };
    let condition = status.conditions.iter().flatten().any(|c| c.type_ == "Available" && c.status == "True");
    condition && status.available_replicas == Some(want) && status.updated_replicas == Some(want)
}

/// `count` Workflows `<prefix>-<i>` without triggers (each runs once when created): one task whose
/// step sleeps `seconds`.
fn create_workflows(ns: &str, prefix: &str, count: usize, seconds: u32) {
    let yaml: String = (0..count)
        .map(|i| {
            format!(
                "---\napiVersion: kube.ci/v1alpha1\nkind: Workflow\nmetadata: {{name: {prefix}-{i}, namespace: {ns}}}\n\
                 spec:\n  steps:\n  - {{name: work, image: alpine, commands: [sh, -c, 'sleep {seconds}']}}\n"
            )
        })
        .collect();
    let out = kubectl_apply(&yaml);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The Workplans of the Workflows `<prefix>-*`, once there are `count` and all are finished.
async fn finished_runs(client: &kube::Client, ns: &str, prefix: &str, count: usize) -> Vec<Workplan> {
    let api: Api<Workplan> = Api::namespaced(client.clone(), ns);
    let what = format!("the {count} runs of {prefix}-* finish");
    eventually(&what, TIMEOUT, || {
        let api = api.clone();
        async move {
            let mine: Vec<Workplan> = api
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .filter(|wp| wp.spec.workflow.starts_with(&format!("{prefix}-")))
                .collect();
            let done = mine
                .iter()
                .all(|wp| wp.status.as_ref().and_then(|s| s.phase).is_some_and(Phase::is_finished));
            (mine.len() >= count && done).then_some(mine)
        }
    })
    .await
}

/// Per run: how often each job was claimed (STARTED) and COMPLETED, and by which workers.
async fn claims(client: &kube::Client, ns: &str, runs: &[Workplan]) -> (Vec<String>, Vec<String>) {
    let api: Api<RequestState> = Api::namespaced(client.clone(), ns);
    let (mut problems, mut workers) = (Vec::new(), Vec::new());
    for wp in runs {
        let name = wp.metadata.name.clone().unwrap();
        let status = wp.status.as_ref().unwrap();
        if status.phase != Some(Phase::Completed) {
            problems.push(format!("{name} is {:?}: {:?}", status.phase, status.reason));
        }
        let history = api.get(&name).await.unwrap().status.unwrap_or_default().history;
        for job in ["task-0", "cleanup"] {
            let count = |state| history.iter().filter(|e| e.job == job && e.state == state).count();
            if (count(JobState::Started), count(JobState::Completed)) != (1, 1) {
                let trail: Vec<String> =
                    history.iter().map(|e| format!("{} {:?} {:?}", e.job, e.state, e.worker)).collect();
                problems.push(format!("{name}: {job} not claimed and completed exactly once: {trail:?}"));
            }
        }
        workers
            .extend(history.iter().filter(|e| e.state == JobState::Started).filter_map(|e| e.worker.clone()));
    }
    workers.sort();
    workers.dedup();
    (problems, workers)
}

/// The pod that holds Lease `name` in `ns`.
async fn leader(client: &kube::Client, ns: &str, name: &str) -> String {
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    let lease = leases.get(name).await.unwrap_or_else(|e| panic!("Lease {name}: {e}"));
    lease.spec.and_then(|s| s.holder_identity).unwrap_or_else(|| panic!("Lease {name} has no holder"))
}

/// The user ids (real, effective) of the host processes started as `/usr/local/bin/<binary>`:
/// the containers' own processes, seen from the node.
fn container_process_uids(binary: &str) -> Vec<String> {
    let mut uids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        if cmdline.split(|b| *b == 0).next() != Some(format!("/usr/local/bin/{binary}").as_bytes()) {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else { continue };
        if let Some(line) = status.lines().find(|l| l.starts_with("Uid:")) {
            uids.push(line.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
        }
    }
    uids
}

#[tokio::test]
async fn helm_install_runs_kubeci_as_pods_on_the_node() {
    let system = node_namespace("kubeci-system").await;
    let workloads = node_namespace("install-workloads").await;
    let client = system.client.clone();
    let workspaces = std::env::temp_dir().join(format!("kubeci-install-workspaces-{}", std::process::id()));
    let release = Release::new(
        "kubeci",
        &system.name,
        &format!("worker:\n  workspaceRoot: {}\n", workspaces.display()),
    );
    adopt_crds(&client, &release).await;
    release.helm("install", &[]);
    let logs = LocalNode::logs();

    // Every Deployment becomes Available: the probes pass under the chart's securityContext.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &system.name);
    for component in COMPONENTS {
        let name = release.object(component);
        tokio::time::timeout(TIMEOUT, await_condition(deployments.clone(), &name, available))
            .await
            .unwrap_or_else(|_| {
                let pods = kubectl(&["get", "pods", "-n", &system.name, "-o", "wide"]);
                panic!(
                    "Deployment {name} not Available after {TIMEOUT:?}:\n{}\nnode logs in {}",
                    String::from_utf8_lossy(&pods.stdout),
                    logs.display()
                )
            })
            .unwrap();
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &system.name);
    let running = pods.list(&ListParams::default().labels(&release.selector())).await.unwrap().items;
    assert_eq!(running.len(), 6, "two pods of each component");
    let tag = &e2e::install::Images::get().tag;
    for pod in &running {
        let name = pod.metadata.name.as_deref().unwrap();
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some(LocalNode::get().name()), "{name}");
        let container = &spec.containers[0];
        assert!(container.image.as_deref().unwrap().starts_with(&format!("{REGISTRY}/kubeci-")), "{name}");
        assert!(container.image.as_deref().unwrap().ends_with(&format!(":{tag}")), "{name}");
        let security = container.security_context.as_ref().unwrap();
        assert_eq!(security.read_only_root_filesystem, Some(true), "{name}");
        let status = pod.status.as_ref().unwrap().container_statuses.as_ref().unwrap();
        assert!(status[0].ready, "{name}");
        assert!(status[0].container_id.as_deref().unwrap().starts_with("containerd://"), "{name}");
    }
    // The processes really run as 65532, and the images carry no shell to exec into.
    for component in COMPONENTS {
        let uids = container_process_uids(component);
        assert_eq!(uids, vec!["Uid: 65532 65532"; 2], "the two {component} containers' processes");
    }
    let director = running
        .iter()
        .find(|p| p.metadata.name.as_deref().unwrap().starts_with(&release.object("director")))
        .unwrap();
    let exec = kubectl(&[
        "exec",
        "-n",
        &system.name,
        director.metadata.name.as_deref().unwrap(),
        "--",
        "sh",
        "-c",
        "true",
    ]);
    let stderr = String::from_utf8_lossy(&exec.stderr);
    assert!(!exec.status.success() && stderr.contains("executable file not found"), "exec sh: {stderr}");

    // The webhook, reached by the API server through its Service, denies a cycle.
    let cycle = format!(
        "apiVersion: kube.ci/v1alpha1\nkind: Workflow\nmetadata: {{name: cycle, namespace: {ns}}}\n\
         spec:\n  steps:\n\
         \x20 - {{name: a, image: alpine, commands: [sh], args: [-c, 'true'], dependency: [b]}}\n\
         \x20 - {{name: b, image: alpine, commands: [sh], args: [-c, 'true'], dependency: [a]}}\n",
        ns = workloads.name
    );
    // kube-proxy programs a new Service's endpoints moments after they appear: until then the
    // API server's call fails ("failed calling webhook"), which is not the answer under test.
    let denied = eventually("the API server reaches the webhook through its Service", TIMEOUT, || {
        let out = kubectl_apply(&cycle);
        let reached = !String::from_utf8_lossy(&out.stderr).contains("failed calling webhook");
        async move { reached.then_some(out) }
    })
    .await;
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(!denied.status.success(), "a Workflow with a cycle is refused");
    assert!(stderr.contains("admission webhook \"workflows.kube.ci\" denied the request"), "{stderr}");

    // The seed, as a user applies it: its ConfigMap, then its Workflow; a change fires a run.
    let cm = kubectl_apply(&format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: my-config, namespace: {}}}\ndata: {{greeting: hello}}\n",
        workloads.name
    ));
    assert!(cm.status.success(), "{}", String::from_utf8_lossy(&cm.stderr));
    let seed = shared_types::repo::SEED_WORKFLOW
        .replace("namespace: default", &format!("namespace: {}", workloads.name));
    let applied = kubectl_apply(&seed);
    assert!(
        applied.status.success(),
        "the webhook admits the seed: {}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let workflows: Api<Workflow> = Api::namespaced(client.clone(), &workloads.name);
    let baselined = |wf: Option<&Workflow>| {
        wf.and_then(|w| w.status.as_ref()).is_some_and(|s| !s.baselined_triggers.is_empty())
    };
    tokio::time::timeout(TIMEOUT, await_condition(workflows, "my-workflow", baselined))
        .await
        .expect("the director's leader takes the trigger baseline")
        .unwrap();
    let patched = kubectl(&[
        "patch",
        "configmap",
        "my-config",
        "-n",
        &workloads.name,
        "--type",
        "merge",
        "-p",
        r#"{"data":{"greeting":"hello again"}}"#,
    ]);
    assert!(patched.status.success(), "{}", String::from_utf8_lossy(&patched.stderr));
    let workplans: Api<Workplan> = Api::namespaced(client.clone(), &workloads.name);
    let run = eventually("the ConfigMap change creates a Workplan", TIMEOUT, || {
        let workplans = workplans.clone();
        async move { workplans.list(&ListParams::default()).await.ok()?.items.pop()?.metadata.name }
    })
    .await;
    let finished = |wp: Option<&Workplan>| {
        wp.and_then(|w| w.status.as_ref()).and_then(|s| s.phase).is_some_and(Phase::is_finished)
    };
    let done = tokio::time::timeout(TIMEOUT, await_condition(workplans, &run, finished))
        .await
        .unwrap_or_else(|_| panic!("Workplan {run} not finished after {TIMEOUT:?}"))
        .unwrap()
        .unwrap();
    let status = done.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Completed), "{:?}", status.reason);
    let log = kubectl(&["logs", "-n", &workloads.name, &format!("{run}-task-1"), "-c", "step-5"]);
    let log = String::from_utf8_lossy(&log.stdout);
    assert_eq!(log.lines().collect::<Vec<_>>(), ["step-5", "file-1", "file-2", "file-3", "file-4"]);

    // Four workers share 20 runs: each job claimed once, by at least three of them.
    let scaled =
        kubectl(&["scale", "-n", &system.name, "deployment", &release.object("worker"), "--replicas=4"]);
    assert!(scaled.status.success(), "{}", String::from_utf8_lossy(&scaled.stderr));
    let worker = release.object("worker");
    let four = |d: Option<&Deployment>| {
        available(d) && d.and_then(|d| d.status.as_ref()?.available_replicas) == Some(4)
    };
    tokio::time::timeout(TIMEOUT, await_condition(deployments.clone(), &worker, four))
        .await
        .expect("four workers Available")
        .unwrap();
    create_workflows(&workloads.name, "spread", 20, 2);
    let runs = finished_runs(&client, &workloads.name, "spread", 20).await;
    assert_eq!(runs.len(), 20, "one run per Workflow");
    let (problems, workers) = claims(&client, &workloads.name, &runs).await;
    assert_eq!(problems, Vec::<String>::new());
    assert!(workers.len() >= 3, "the runs spread over at least three workers: {workers:?}");

    // Mid-run, the leading director and operator pods are deleted and the release is upgraded to
    // a new image tag: the standbys take over, the new pods roll out, every run completes once.
    create_workflows(&workloads.name, "failover", 6, 8);
    let workplans: Api<Workplan> = Api::namespaced(client.clone(), &workloads.name);
    eventually("the failover runs are in flight", TIMEOUT, || {
        let workplans = workplans.clone();
        async move {
            let running = workplans.list(&ListParams::default()).await.ok()?.items.into_iter().filter(|wp| {
                wp.spec.workflow.starts_with("failover-")
                    && wp.status.as_ref().and_then(|s| s.phase) == Some(Phase::Running)
            });
            (running.count() == 6).then_some(())
        }
    })
    .await;
    let mut leaders = Vec::new();
    for component in ["director", "workplan-operator"] {
        let pod = leader(&client, &system.name, &release.object(component)).await;
        pods.delete(&pod, &DeleteParams::default()).await.unwrap();
        leaders.push((component, pod));
    }
    let upgraded = format!("{tag}-upgrade");
    e2e::install::Images::get().retag(&upgraded);
    release.helm("upgrade", &["--set", &format!("image.tag={upgraded}")]);
    let runs = finished_runs(&client, &workloads.name, "failover", 6).await;
    assert_eq!(runs.len(), 6, "one run per Workflow, none duplicated by the new leaders");
    let (problems, _) = claims(&client, &workloads.name, &runs).await;
    assert_eq!(problems, Vec::<String>::new());
    for (component, old) in &leaders {
        let lease = release.object(component);
        let now = eventually(&format!("a new {component} leads"), TIMEOUT, || {
            let client = client.clone();
            let (ns, lease) = (system.name.clone(), lease.clone());
            async move {
                let holder = leader(&client, &ns, &lease).await;
                (&holder != old).then_some(holder)
            }
        })
        .await;
        assert!(now.starts_with(&release.object(component)), "{now}");
    }
    for component in COMPONENTS {
        let name = release.object(component);
        let rolled = |d: Option<&Deployment>| {
            available(d)
                && d.and_then(|d| d.spec.as_ref()?.template.spec.as_ref()?.containers[0].image.clone())
                    .is_some_and(|image| image.ends_with(&format!(":{upgraded}")))
        };
        tokio::time::timeout(TIMEOUT, await_condition(deployments.clone(), &name, rolled))
            .await
            .unwrap_or_else(|_| panic!("{name} rolled out to {upgraded}"))
            .unwrap();
    }

    // The metrics Service answers through the API server's service proxy.
    let path = format!(
        "/api/v1/namespaces/{}/services/{}:metrics/proxy/metrics",
        system.name,
        release.object("metrics")
    );
    let request = http::Request::get(&path).body(Vec::new()).unwrap();
    let metrics = client.request_text(request).await.unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert!(metrics.lines().any(|l| l.starts_with("kubeci_")), "{path} serves kubeci's metrics:\n{metrics}");

    // helm uninstall leaves no kubeci pod, and the CRDs (crds.keep defaults to true).
    release.uninstall();
    eventually("no kubeci pod is left", TIMEOUT, || {
        let pods = pods.clone();
        let selector = release.selector();
        async move {
            pods.list(&ListParams::default().labels(&selector)).await.ok()?.items.is_empty().then_some(())
        }
    })
    .await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in ["workflows.kube.ci", "workplans.kube.ci", "requeststates.kube.ci"] {
        let crd = crds.get(name).await.unwrap_or_else(|e| panic!("CRD {name} is kept: {e}"));
        let keep = crd.metadata.annotations.unwrap_or_default().get("helm.sh/resource-policy").cloned();
        assert_eq!(keep.as_deref(), Some("keep"), "{name}");
    }

    // With crds.keep off, helm uninstall deletes the CRDs (and every Workflow with them).
    let unkept = Release::new("kubeci", &system.name, "crds:\n  keep: false\n");
    // (Helm decides from the release's manifest, not the live CRDs: adopting them on install
    // leaves the old release's keep annotation on them.)
    unkept.helm("install", &[]);
    unkept.uninstall();
    for name in ["workflows.kube.ci", "workplans.kube.ci", "requeststates.kube.ci"] {
        let gone = |crd: Option<&CustomResourceDefinition>| crd.is_none();
        tokio::time::timeout(TIMEOUT, await_condition(crds.clone(), name, gone))
            .await
            .unwrap_or_else(|_| panic!("CRD {name} is deleted with the release"))
            .unwrap();
    }
    let _ = std::fs::remove_dir_all(&workspaces);
}
