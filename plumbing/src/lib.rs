//! The process plumbing every kubeci binary shares (DESIGN.md §8), so that each binary's
//! `main` is `Args::parse()` and a call into its own `run`:
//!
//! - [`CommonArgs`]: `--kubeconfig`, `--namespace`, `--metrics-addr`, `--log-format`, each with an
//!   environment fallback;
//! - [`init_logging`]: tracing with `RUST_LOG` and a plain or JSON format;
//! - [`Shutdown`]: one SIGTERM/SIGINT fan-out that every component listens to;
//! - [`admin`]: the axum admin server with `/livez`, `/readyz` and `/metrics`;
//! - [`leader`]: leader election through a `coordination.k8s.io` Lease (kube-lease-manager);
//! - [`Process`]: the life of a process around them (start, lead, run, release, drain);
//! - [`kit`]: the controller kit (metrics, Events, back-off, namespaced-or-all `Api`, discovery);
//! - [`malformed`]: explaining and marking objects that do not deserialize.

pub mod admin;
pub mod kit;
pub mod leader;
pub mod malformed;
pub mod process;

pub use process::{LeaderArgs, Process};

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::ValueEnum;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tokio_util::sync::CancellationToken;

/// Flags every kubeci binary takes.
#[derive(clap::Args, Clone, Debug)]
pub struct CommonArgs {
    /// Path to a kubeconfig. Default: in-cluster configuration, else `$KUBECONFIG` or
    /// `~/.kube/config`.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Watch only this namespace. Default: all namespaces.
    #[arg(long, env = "KUBECI_NAMESPACE")]
    pub namespace: Option<String>,

    /// Address of the admin server (`/livez`, `/readyz`, `/metrics`).
    #[arg(long, env = "KUBECI_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,

    /// Log format.
    #[arg(long, env = "KUBECI_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,
}

/// How logs are written to stderr.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Errors of the plumbing itself.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading kubeconfig {path}: {source}")]
    Kubeconfig { path: PathBuf, source: kube::config::KubeconfigError },
    #[error("no Kubernetes configuration (no --kubeconfig, not in a cluster, no ~/.kube/config): {0}")]
    Infer(#[source] kube::config::InferConfigError),
    #[error("Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error("admin server on {addr}: {source}")]
    Admin { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("leader election: {0}")]
    Leader(#[from] kube_lease_manager::LeaseManagerError),
    #[error("lost the leader lease {0}; exiting so that a new leader takes over")]
    LostLeadership(String),
    #[error("admin server: {0}")]
    Serve(#[source] std::io::Error),
    #[error("admin server task: {0}")]
    Join(String),
}

impl CommonArgs {
    /// A client from `--kubeconfig`, or the environment's configuration.
    pub async fn client(&self) -> Result<Client, Error> {
        let config = match &self.kubeconfig {
            Some(path) => {
                let kubeconfig = Kubeconfig::read_from(path)
                    .map_err(|source| Error::Kubeconfig { path: path.clone(), source })?;
                Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                    .await
                    .map_err(|source| Error::Kubeconfig { path: path.clone(), source })?
            }
            None => Config::infer().await.map_err(Error::Infer)?,
        };
        Client::try_from(config).map_err(Error::Client)
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: in a pod (`kubectl logs`) or a file they are escape codes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    // A second call (tests starting several components in one process) keeps the first.
    let _ = match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// The process's one shutdown signal: cancelled on SIGTERM or SIGINT, or by [`Shutdown::trigger`]
/// when any component ends. Everything long-running selects on [`Shutdown::requested`].
#[derive(Clone, Debug, Default)]
pub struct Shutdown(CancellationToken);

impl Shutdown {
    /// A signal that only [`Shutdown::trigger`] fires (for tests).
    pub fn new() -> Self {
        Self::default()
    }

    /// A signal that SIGTERM and SIGINT also fire.
    pub fn on_signals() -> Self {
        let shutdown = Self::new();
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("SIGTERM handler can be installed");
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
            }
            trigger.trigger();
        });
        shutdown
    }

    /// Starts the shutdown.
    pub fn trigger(&self) {
        self.0.cancel();
    }

    /// Completes once shutdown has started.
    pub async fn requested(&self) {
        self.0.cancelled().await
    }

    /// Whether shutdown has started.
    pub fn is_requested(&self) -> bool {
        self.0.is_cancelled()
    }
}
