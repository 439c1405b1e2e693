//! A real node for the end-to-end tier: `hack/node.sh run` (Debian's containerd and runc, the
//! upstream kubelet and kube-scheduler built with the control plane) joined to this test binary's
//! control plane, so pods really run.
//!
//! One node per machine (the kubelet's ports, containerd, cgroups and sysctls are machine-wide):
//! `node.sh` takes a lock and waits for a node that is still stopping. It runs with
//! `--exit-on-stdin-eof` and the harness holds its stdin, so when the test binary exits, however
//! it ends, the node stops its containers, unmounts and removes its state. It never skips: a node
//! that cannot start fails the test with `node.sh`'s output.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::Api;
use kube::runtime::wait::await_condition;

use crate::supervised::Supervised;
use crate::{TestEnv, TestNamespace};

/// Installing the packages and building the images on a fresh machine included.
const START_TIMEOUT: Duration = Duration::from_secs(600);

/// The running node of this test binary.
pub struct LocalNode {
    name: String,
    startup: Duration,
    _process: Supervised,
}

impl LocalNode {
    /// The node of this test binary, joined to [`TestEnv::get`]'s control plane on first use.
    /// Panics, with `node.sh`'s output, when it cannot be started.
    pub fn get() -> &'static LocalNode {
        static NODE: OnceLock<LocalNode> = OnceLock::new();
        NODE.get_or_init(|| LocalNode::start().unwrap_or_else(|e| panic!("local node: {e}")))
    }

    /// The Node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How long the node took from `node.sh run` to a Ready Node.
    pub fn startup(&self) -> Duration {
        self.startup
    }

    /// Where `node.sh` keeps the logs of containerd, the kubelet and the scheduler.
    pub fn logs() -> PathBuf {
        Self::dir().join("logs")
    }

    /// The socket of the node's containerd (for `ctr -a`).
    pub fn containerd_socket() -> PathBuf {
        Self::dir().join("run/containerd.sock")
    }

    /// `node.sh`'s directory: `$KUBECI_CACHE/node`.
    fn dir() -> PathBuf {
        let cache = std::env::var_os("KUBECI_CACHE").map(PathBuf::from).unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/kubeci")
        });
        cache.join("node")
    }

    fn start() -> Result<LocalNode, String> {
        let script = TestEnv::repo_root().join("hack/node.sh");
        let started = Instant::now();
        let mut command = Command::new("bash");
        command
            .arg(&script)
            .args(["run", "--exit-on-stdin-eof", "--kubeconfig"])
            .arg(TestEnv::get().kubeconfig())
            // A node of an earlier test binary may still be stopping; another user's node may be
            // running for longer (KUBECI_NODE_LOCK_WAIT raises the wait).
            .env(
                "KUBECI_NODE_LOCK_WAIT",
                std::env::var("KUBECI_NODE_LOCK_WAIT").unwrap_or_else(|_| "300".into()),
            );
        let (name, process) = Supervised::start(command, START_TIMEOUT)
            .map_err(|e| format!("`{} run` {e}\nLogs: {}", script.display(), Self::logs().display()))?;
        let startup = started.elapsed();
        eprintln!("local node {name} Ready after {startup:.1?} (logs in {})", Self::logs().display());
        Ok(LocalNode { name, startup, _process: process })
    }
}

/// A fresh namespace whose pods the local node can run: the node is up and the namespace's
/// `default` ServiceAccount exists (the admission plugin rejects pods until the controller
/// manager has created it).
pub async fn node_namespace(test: &str) -> TestNamespace {
    tokio::task::spawn_blocking(LocalNode::get).await.expect("the local node starts");
    let ns = TestEnv::get().namespace(test).await;
    let accounts: Api<ServiceAccount> = Api::namespaced(ns.client.clone(), &ns.name);
    tokio::time::timeout(
        Duration::from_secs(60),
        await_condition(accounts, "default", |sa: Option<&ServiceAccount>| sa.is_some()),
    )
    .await
    .expect("the default ServiceAccount is created")
    .unwrap();
    ns
}
