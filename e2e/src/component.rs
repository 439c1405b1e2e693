//! Running one of kubeci's binaries as a process against the test control plane, and waiting
//! for what it does.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::TestEnv;

/// A kubeci process; killed when dropped.
pub struct Component {
    child: Child,
    /// Port of its admin server (`/metrics`, `/readyz`).
    pub admin_port: u16,
}

impl Component {
    /// Starts `binary` for objects of `namespace`, with the test control plane's kubeconfig,
    /// an admin server on a free loopback port and `args` after that.
    pub fn start(binary: impl AsRef<Path>, namespace: &str, args: &[&str]) -> Component {
        Self::start_as(binary, TestEnv::get().kubeconfig(), namespace, args)
    }

    /// [`Component::start`] with another kubeconfig (another identity, as a ServiceAccount).
    pub fn start_as(
        binary: impl AsRef<Path>,
        kubeconfig: &Path,
        namespace: &str,
        args: &[&str],
    ) -> Component {
        Component::start_with(binary, kubeconfig, namespace, args, Stdio::inherit())
    }

    /// [`Component::start`] with its logs (stderr) going to `log` instead of the test's output:
    /// the benchmark keeps its own output to the numbers.
    pub fn start_logging_to(
        binary: impl AsRef<Path>,
        namespace: &str,
        args: &[&str],
        log: &Path,
    ) -> Component {
        let file = std::fs::File::create(log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
        Component::start_with(binary, TestEnv::get().kubeconfig(), namespace, args, Stdio::from(file))
    }

    /// [`Component::start`] with its logs (stderr) appended to `log` after a line `header`: a
    /// component restarted many times (the chaos test) keeps one log across its lives.
    pub fn start_appending_to(
        binary: impl AsRef<Path>,
        namespace: &str,
        args: &[&str],
        log: &Path,
        header: &str,
    ) -> Component {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("opening {}: {e}", log.display()));
        writeln!(file, "===== {header}").unwrap_or_else(|e| panic!("writing {}: {e}", log.display()));
        Component::start_with(binary, TestEnv::get().kubeconfig(), namespace, args, Stdio::from(file))
    }

    fn start_with(
        binary: impl AsRef<Path>,
        kubeconfig: &Path,
        namespace: &str,
        args: &[&str],
        stderr: Stdio,
    ) -> Component {
        let admin_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(binary.as_ref())
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--namespace", namespace])
            .args(["--metrics-addr", &format!("127.0.0.1:{admin_port}")])
            .args(args)
            .env("RUST_LOG", "info,kube=warn")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.as_ref().display()));
        Component { child, admin_port }
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

    /// The process id, for its `/proc` entries.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether its `/readyz` answers 200 (caches synced).
    pub async fn is_ready(&self) -> bool {
        self.get("/readyz")
            .await
            .is_some_and(|r| r.starts_with("HTTP/1.0 200") || r.starts_with("HTTP/1.1 200"))
    }

    /// The response to a GET of `path` on the admin server, headers included; `None` when the
    /// server is not up yet.
    pub async fn get(&self, path: &str) -> Option<String> {
        admin_get(self.admin_port, path).await
    }

    /// The sum of a metric's samples whose line starts with `name` (0 when absent or the
    /// server is not up yet).
    pub async fn metric(&self, name: &str) -> f64 {
        admin_metric(self.admin_port, name).await
    }
}

/// [`Component::get`] by admin port, for a task that must not own the component (it may be
/// killed meanwhile).
pub async fn admin_get(port: u16, path: &str) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    Some(response)
}

/// [`Component::metric`] by admin port.
pub async fn admin_metric(port: u16, name: &str) -> f64 {
    let Some(body) = admin_get(port, "/metrics").await else { return 0.0 };
    body.lines()
        .filter(|line| line.strip_prefix(name).is_some_and(|rest| rest.starts_with([' ', '{'])))
        .filter_map(|line| line.rsplit(' ').next().and_then(|v| v.trim().parse::<f64>().ok()))
        .sum()
}

impl Drop for Component {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A binary of this workspace, next to the running test's own directory (`target/<profile>/`),
/// where `cargo test --workspace` (`make test`) builds it.
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary has a path");
    let path = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>").join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (`cargo test --workspace` does)",
        path.display()
    );
    path
}

/// Polls `check` every 100 ms until it returns `Some`, or panics naming `what` after `timeout`.
/// For conditions over lists and metrics; a single object is better awaited with
/// `kube::runtime::wait::await_condition`.
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
