//! Running the real `worker` binary against the test control plane, and playing the parts that
//! control plane lacks: the scheduler (binding pods to a Node the test creates) and the kubelet
//! (setting pod status).

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use e2e::{TestEnv, TestNamespace};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod, ServiceAccount};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::wait::await_condition;
use kube::runtime::watcher::{self, Event};
use shared_types::planner::workplan_for;
use shared_types::protocol::{self, Job};
use shared_types::{JobState, RequestState, RequestStateSpec, TriggerEvent, Workflow, Workplan};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

pub const TIMEOUT: Duration = Duration::from_secs(60);
/// The Node the test's "scheduler" binds pods to.
pub const NODE: &str = "node-a";

/// A test namespace ready for pods: its `default` ServiceAccount exists (the ServiceAccount
/// admission plugin rejects pods before the controller manager has created it) and so does
/// the Node `node-a`.
pub async fn namespace(test: &str) -> TestNamespace {
    let ns = TestEnv::get().namespace(test).await;
    let nodes: Api<Node> = Api::all(ns.client.clone());
    let node =
        Node { metadata: ObjectMeta { name: Some(NODE.into()), ..ObjectMeta::default() }, ..Node::default() };
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.is_already_exists() => {}
        Err(e) => panic!("creating node {NODE}: {e}"),
    }
    let accounts: Api<ServiceAccount> = Api::namespaced(ns.client.clone(), &ns.name);
    tokio::time::timeout(
        TIMEOUT,
        await_condition(accounts, "default", |sa: Option<&ServiceAccount>| sa.is_some()),
    )
    .await
    .expect("the default ServiceAccount is created")
    .unwrap();
    ns
}

/// The seed Workflow of `examples/`, in `ns`.
pub fn seed_workflow(ns: &str) -> Workflow {
    let mut wf: Workflow =
        serde_yaml::from_str(include_str!("../../../../examples/seed-workflow.yaml")).unwrap();
    wf.metadata.namespace = Some(ns.to_string());
    wf.metadata.uid = Some(format!("uid-of-my-workflow-in-{ns}"));
    wf.status = None;
    wf
}

/// Creates the seed Workflow's Workplan for the manual run `run` (through the API, so it has a
/// uid). Two tasks: `[step-1] + [step-2, step-3]`, `[step-4] + [step-5]`.
pub async fn create_workplan(ns: &TestNamespace, run: &str) -> Workplan {
    let mut wp = workplan_for(&seed_workflow(&ns.name), TriggerEvent::manual(Some(run.into()))).unwrap();
    wp.metadata.owner_references = None;
    let api: Api<Workplan> = Api::namespaced(ns.client.clone(), &ns.name);
    api.create(&PostParams::default(), &wp).await.unwrap()
}

/// Creates the Workplan's RequestState requesting `task-0`, as the workplan-operator would.
pub async fn request_task_0(ns: &TestNamespace, wp: &Workplan) -> RequestState {
    request_fresh(ns, wp, Job::Task(0)).await
}

/// Creates the Workplan's RequestState requesting `job` (with the Workplan's uid as request-uid).
pub async fn request_fresh(ns: &TestNamespace, wp: &Workplan, job: Job) -> RequestState {
    let mut fresh = RequestState::new(
        &wp.name_any(),
        RequestStateSpec {
            request_uid: wp.uid().unwrap(),
            job: job.to_string(),
            state: JobState::Requested,
            worker: None,
        },
    );
    fresh.metadata.namespace = Some(ns.name.clone());
    let rqs = protocol::request(&fresh, job, None, Timestamp::now());
    rqs_api(ns).create(&PostParams::default(), &rqs).await.unwrap()
}

/// Requests `job` on the existing RequestState `name`, as the workplan-operator would.
pub async fn request(ns: &TestNamespace, name: &str, job: Job) -> RequestState {
    let api = rqs_api(ns);
    let current = api.get(name).await.unwrap();
    let next = protocol::request(&current, job, None, Timestamp::now());
    api.replace(name, &PostParams::default(), &next).await.unwrap()
}

pub fn rqs_api(ns: &TestNamespace) -> Api<RequestState> {
    Api::namespaced(ns.client.clone(), &ns.name)
}

pub fn pods_api(ns: &TestNamespace) -> Api<Pod> {
    Api::namespaced(ns.client.clone(), &ns.name)
}

/// Waits until the RequestState `name` satisfies `cond`, and returns it.
pub async fn rqs_until(
    ns: &TestNamespace,
    name: &str,
    what: &str,
    cond: impl Fn(&RequestState) -> bool + Send + 'static,
) -> RequestState {
    tokio::time::timeout(
        TIMEOUT,
        await_condition(rqs_api(ns), name, move |r: Option<&RequestState>| r.is_some_and(&cond)),
    )
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for RequestState {name}: {what}"))
    .unwrap()
    .unwrap()
}

/// Waits until `name`'s job `job` is in `state`.
pub async fn job_in(ns: &TestNamespace, name: &str, job: &str, state: JobState) -> RequestState {
    let j = job.to_string();
    rqs_until(ns, name, &format!("{job} {state:?}"), move |r| r.spec.job == j && r.spec.state == state).await
}

/// Polls `check` until it returns Some, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The worker process.

/// A worker process; killed when dropped. Logs JSON lines to a file (printed if the test fails).
pub struct Worker {
    child: Child,
    pub identity: String,
    pub admin_port: u16,
    log: PathBuf,
}

impl Worker {
    /// Starts a worker for RequestStates of `ns`, with its Lease there too.
    pub fn start(ns: &str, identity: &str, extra: &[&str]) -> Worker {
        let admin_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = std::env::temp_dir().join(format!("kubeci-worker-{ns}-{identity}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_worker"))
            .arg("--kubeconfig")
            .arg(TestEnv::get().kubeconfig())
            .args(["--namespace", ns, "--lease-namespace", ns, "--identity", identity])
            .args(["--metrics-addr", &format!("127.0.0.1:{admin_port}"), "--log-format", "json"])
            .args(extra)
            .env("RUST_LOG", "info,kube=warn")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("the worker starts");
        Worker { child, identity: identity.to_string(), admin_port, log }
    }

    /// Waits until `/readyz` answers 200 (the Lease is held and RequestStates are listed).
    pub async fn ready(&self) {
        let port = self.admin_port;
        eventually(&format!("worker {} ready", self.identity), TIMEOUT, || async move {
            let response = http_get(port, "/readyz").await?;
            response.lines().next()?.contains(" 200 ").then_some(())
        })
        .await;
    }

    /// The whole `/metrics` text ("" when the server is not up).
    pub async fn metrics(&self) -> String {
        let response = http_get(self.admin_port, "/metrics").await.unwrap_or_default();
        response.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default()
    }

    /// A metric's value, with its labels as exposed (`name{label="value"}`); 0 when absent.
    pub async fn metric(&self, name: &str) -> f64 {
        metric_value(&self.metrics().await, name)
    }

    /// Waits until the metric `name` has `value` (the worker counts a report only after the API
    /// server answered, which may be after the test saw the change).
    pub async fn metric_is(&self, name: &str, value: f64) {
        let mut last = 0.0;
        let found = tokio::time::timeout(TIMEOUT, async {
            loop {
                last = self.metric(name).await;
                if last == value {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        assert!(found.is_ok(), "metric {name} of worker {} is {last}, not {value}", self.identity);
    }

    /// The log lines (JSON objects) whose message is `message`.
    pub fn log_count(&self, message: &str) -> usize {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["fields"]["message"] == message)
            .count()
    }

    /// SIGTERM and wait: a graceful stop. Returns whether the process exited successfully.
    pub fn stop(mut self) -> bool {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        self.child.wait().map(|s| s.success()).unwrap_or(false)
    }

    /// SIGKILL: a crash, nothing released.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("---- log of worker {} ({}) ----\n{text}", self.identity, self.log.display());
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// Sums a metric over all lines starting with `name` followed by a space or `{`, or reads the
/// line `name value` when `name` carries its labels.
pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let rest = if name.contains('{') {
                rest.strip_prefix(' ')?
            } else if let Some(r) = rest.strip_prefix(' ') {
                r
            } else {
                rest.strip_prefix('{')?.split_once("} ")?.1
            };
            rest.trim().parse::<f64>().ok()
        })
        .sum()
}

async fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes()).await.ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await.ok()?;
    Some(body)
}

// ---------------------------------------------------------------------------------------------
// Scheduler and kubelet.

/// What the fake kubelet does with a pod once it is on a node.
#[derive(Clone, Debug)]
pub enum Act {
    /// Leave it Pending (bound).
    Leave,
    /// Every step succeeds.
    Succeed,
    /// `step` exits with `code` and termination message `message`; the others succeed.
    Fail { step: String, code: i32, message: String },
}

/// Watches the namespace's pods: binds unscheduled ones to `node-a` and then does what `act`
/// says with each (once). Stops when dropped.
pub struct Kubelet {
    task: JoinHandle<()>,
}

impl Kubelet {
    pub fn start(ns: &TestNamespace, act: impl Fn(&Pod) -> Act + Send + Sync + 'static) -> Kubelet {
        let pods = pods_api(ns);
        let act = Arc::new(act);
        let task = tokio::spawn(async move {
            let mut done = std::collections::HashSet::new();
            let mut events =
                std::pin::pin!(watcher::watcher(pods.clone(), watcher::Config::default()).default_backoff());
            while let Some(event) = events.next().await {
                let pod = match event {
                    Ok(Event::Apply(pod) | Event::InitApply(pod)) => pod,
                    _ => continue,
                };
                let name = pod.name_any();
                let phase = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
                if phase == "Succeeded" || phase == "Failed" || done.contains(&pod.uid().unwrap_or_default())
                {
                    continue;
                }
                if pod.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none() {
                    bind(&pods, &name).await; // the bound pod comes back as the next event
                    continue;
                }
                let outcome = act(&pod);
                if !matches!(outcome, Act::Leave) {
                    done.insert(pod.uid().unwrap_or_default());
                    finish(&pods, &pod, &outcome).await;
                }
            }
        });
        Kubelet { task }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds the pod to `node-a`, as the scheduler would (through the pods/binding subresource).
pub async fn bind(pods: &Api<Pod>, name: &str) {
    let binding = Binding {
        metadata: ObjectMeta { name: Some(name.into()), ..ObjectMeta::default() },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(NODE.into()),
            ..ObjectReference::default()
        },
    };
    match pods
        .create_subresource::<_, serde_json::Value>("binding", name, &PostParams::default(), &binding)
        .await
    {
        Ok(_) => {}
        // Already bound (an event seen twice): fine.
        Err(kube::Error::Api(s)) if s.is_conflict() => {}
        Err(e) => panic!("binding pod {name}: {e}"),
    }
}

/// Sets the pod's final status, as the kubelet would: every container terminated, exit code 0
/// except `step` under [`Act::Fail`].
pub async fn finish(pods: &Api<Pod>, pod: &Pod, act: &Act) {
    let spec = pod.spec.as_ref().unwrap();
    let status = |c: &k8s_openapi::api::core::v1::Container| {
        let (code, message, reason) = match act {
            Act::Fail { step, code, message } if *step == c.name => (*code, message.clone(), "Error"),
            _ => (0, String::new(), "Completed"),
        };
        serde_json::json!({
            "name": c.name, "image": c.image, "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": code, "reason": reason, "message": message,
                                     "startedAt": "2026-01-01T00:00:00Z", "finishedAt": "2026-01-01T00:00:01Z"}}
        })
    };
    let phase = if matches!(act, Act::Fail { .. }) { "Failed" } else { "Succeeded" };
    let patch = serde_json::json!({"status": {
        "phase": phase,
        "initContainerStatuses": spec.init_containers.iter().flatten().map(status).collect::<Vec<_>>(),
        "containerStatuses": spec.containers.iter().map(status).collect::<Vec<_>>(),
    }});
    pods.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap_or_else(|e| panic!("setting the status of pod {}: {e}", pod.name_any()));
}
