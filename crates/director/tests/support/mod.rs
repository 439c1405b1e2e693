//! Running the real `director` binary against the test control plane.

#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use e2e::TestEnv;
use kube::api::{Api, ListParams};
use shared_types::Workplan;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A director process; killed when dropped.
pub struct Director {
    child: Child,
    pub admin_port: u16,
}

impl Director {
    /// Starts the director for Workflows of `namespace`, with its lease there too.
    pub fn start(namespace: &str, leader_election: bool) -> Director {
        let admin_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_director"));
        command
            .arg("--kubeconfig")
            .arg(TestEnv::get().kubeconfig())
            .args(["--namespace", namespace, "--lease-namespace", namespace])
            .args(["--metrics-addr", &format!("127.0.0.1:{admin_port}")])
            .env("RUST_LOG", "info,kube=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if !leader_election {
            command.arg("--no-leader-election");
        }
        Director { child: command.spawn().expect("the director starts"), admin_port }
    }

    /// SIGKILL: a crash, nothing released.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait: a graceful stop.
    pub fn stop(mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }

    /// A metric's value (0 when absent or the server is not up yet).
    pub async fn metric(&self, name: &str) -> f64 {
        let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", self.admin_port)).await else {
            return 0.0;
        };
        let _ = stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").await;
        let mut body = String::new();
        let _ = stream.read_to_string(&mut body).await;
        body.lines()
            .find_map(|line| {
                line.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix(' '))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0.0)
    }
}

impl Drop for Director {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

pub async fn workplans(api: &Api<Workplan>) -> Vec<Workplan> {
    api.list(&ListParams::default()).await.unwrap().items
}
