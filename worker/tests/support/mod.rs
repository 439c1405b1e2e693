//! Running the real `worker` binary against the test control plane, and playing the parts that
//! control plane lacks: the scheduler (binding pods to a Node the test creates) and the kubelet
//! (setting pod status).

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use e2e::{TestEnv, TestNamespace};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use kube::runtime::wait::await_condition;
use shared_types::planner;
use shared_types::protocol::{self, Job};
use shared_types::{JobState, RequestState, RequestStateSpec, TriggerEvent, Workflow, Workplan};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const TIMEOUT: Duration = Duration::from_secs(60);
pub use e2e::eventually;
pub use e2e::kubelet::{Act, Kubelet, NODE, finish, pod_namespace as namespace};

/// The seed Workflow of `examples/`, in `ns`.
pub fn seed_workflow(ns: &str) -> Workflow {
    let mut wf: Workflow = serde_yaml::from_str(shared_types::repo::SEED_WORKFLOW).unwrap();
    wf.metadata.namespace = Some(ns.to_string());
    wf.metadata.uid = Some(format!("uid-of-my-workflow-in-{ns}"));
    wf.status = None;
    wf
}

/// Creates the seed Workflow's Workplan for the manual run `run` (through the API, so it has a
/// uid). Two tasks: `[step-1] + [step-2, step-3]`, `[step-4] + [step-5]`.
pub async fn create_workplan(ns: &TestNamespace, run: &str) -> Workplan {
    let mut wp = planner::plan(&seed_workflow(&ns.name), TriggerEvent::manual(Some(run.into()))).unwrap();
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
        RequestStateSpec { request_uid: wp.uid().unwrap(), job, state: JobState::Requested, worker: None },
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
    rqs_until(ns, name, &format!("{job} {state:?}"), move |r| {
        r.spec.job.to_string() == j && r.spec.state == state
    })
    .await
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
