//! The director's errors: one enum, each variant with the context to act on it and a fixed
//! metric label (`kubeci_director_errors_total{error}`).

use std::net::SocketAddr;
use std::path::PathBuf;

use plumbing::kit::MetricLabel;

/// Everything that can go wrong in the director.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("applying the status of {workflow}: {source}")]
    Status { workflow: String, source: kube::Error },
    #[error("creating Workplan {workplan}: {source}")]
    CreateWorkplan { workplan: String, source: kube::Error },
    #[error("saving the trigger record of {workflow}: {source}")]
    SaveRecord { workflow: String, source: kube::Error },
    #[error("loading the trigger record of {workflow}: {source}")]
    LoadRecord { workflow: String, source: kube::Error },
    #[error("resolving kind {kind} in {api_version} by discovery: {source}")]
    Discovery { api_version: String, kind: String, source: kube::Error },
    #[error("trigger watch of {watch}: {source}")]
    TriggerWatch { watch: String, source: kube::runtime::watcher::Error },
    #[error("Workflow watch: {0}")]
    WorkflowWatch(#[source] kube::runtime::watcher::Error),
    #[error("webhook certificate {cert} / key {key}: {source}")]
    Certificate { cert: PathBuf, key: PathBuf, source: std::io::Error },
    #[error("webhook server on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

impl MetricLabel for Error {
    fn metric_label(&self) -> &'static str {
        match self {
            Error::Status { .. } => "status",
            Error::CreateWorkplan { .. } => "create_workplan",
            Error::SaveRecord { .. } => "save_record",
            Error::LoadRecord { .. } => "load_record",
            Error::Discovery { .. } => "discovery",
            Error::TriggerWatch { .. } => "watch",
            Error::WorkflowWatch(_) => "workflow_watch",
            Error::Certificate { .. } => "webhook_certificate",
            Error::Bind { .. } => "webhook_bind",
        }
    }
}
