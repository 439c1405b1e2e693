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
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::wait::await_condition;
use shared_types::{Phase, Workflow, Workplan};

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
    let denied = kubectl_apply(&cycle);
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
    let _ = std::fs::remove_dir_all(&workspaces);
}
