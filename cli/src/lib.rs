//! `kubectl kubeci`: the user's front door to kubeci.
//!
//! `plan -f workflow.yaml` prints the Workplan the director would create for a Workflow, without
//! a cluster: the same planner, the same validation messages. The other commands read the
//! cluster of the kubeconfig, with kubectl's flags (`--kubeconfig`, `--context`, `-n`). Failures
//! exit with status 1 and say on stderr which object and which field is wrong.

pub mod cluster;
pub mod plan;

use std::io::{Read, Write};

use clap::{CommandFactory, Parser, Subcommand};
use shared_types::Invalid;

pub use cluster::{Cluster, ClusterArgs};
pub use plan::{Output, PlanArgs};

/// kubectl kubeci: plan and inspect kubeci Workflows.
#[derive(Parser, Debug)]
#[command(name = "kubectl-kubeci", bin_name = "kubectl kubeci", version)]
pub struct Args {
    #[command(flatten)]
    pub cluster: ClusterArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the Workplan the director would create for a Workflow (a manual run).
    ///
    /// Reads one or more Workflows (YAML or JSON, `---`-separated) and prints one Workplan for
    /// each. The Workplan's name is the one a manual run would get; in the cluster it also
    /// depends on the Workflow's uid. Needs no cluster.
    Plan(PlanArgs),

    /// Print a shell completion script (bash, zsh or fish) for `kubectl-kubeci`.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Why a command failed; `Display` is what the user reads on stderr.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("error: cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("error: {path}: {message}")]
    Parse { path: String, message: String },
    #[error("error: {path}: no kube.ci/v1alpha1 Workflow found (other objects: [{skipped}])")]
    Empty { path: String, skipped: String },
    #[error("error: {path}: Workflow {name:?} is invalid:\n{invalid}")]
    Invalid { path: String, name: String, invalid: Invalid },
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Several(Vec<Error>),
    #[error("error: no cluster to talk to: {0}")]
    Kubeconfig(String),
    #[error("error: {what}: {source}")]
    Kube { what: String, source: kube::Error },
    #[error("error: {kind} {name:?} not found in namespace {namespace:?}")]
    NotFound { kind: String, name: String, namespace: String },
    #[error("error: {kind} {name} is malformed: {message}")]
    Malformed { kind: String, name: String, message: String },
    #[error("error: writing the output: {0}")]
    Write(#[from] std::io::Error),
}

/// Runs a command, writing what goes to stdout to `out`.
pub async fn run(args: &Args, stdin: &mut dyn Read, out: &mut dyn Write) -> Result<(), Error> {
    match &args.command {
        Command::Plan(plan) => {
            let text = plan::run_plan(plan, &args.cluster.offline_namespace(), stdin)?;
            out.write_all(text.as_bytes())?;
        }
        Command::Completion { shell } => {
            clap_complete::generate(*shell, &mut Args::command(), "kubectl-kubeci", out);
        }
    }
    Ok(())
}
