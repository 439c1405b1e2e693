//! `kubectl kubeci`: the user's front door to kubeci.
//!
//! `plan -f workflow.yaml` prints the Workplan the director would create for a Workflow, without
//! a cluster: the same planner, the same validation messages. The other commands read the
//! cluster of the kubeconfig, with kubectl's flags (`--kubeconfig`, `--context`, `-n`). Failures
//! exit with status 1 and say on stderr which object and which field is wrong.

pub mod cluster;
pub mod graph;
pub mod plan;

use std::io::{Read, Write};
use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};
use shared_types::{Invalid, Workflow, planner};

pub use cluster::{Cluster, ClusterArgs};
pub use graph::{Graph, GraphOutput};
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

    /// Show a Workflow's steps and how the planner groups them into tasks (pods).
    ///
    /// From a file (`-f`, no cluster needed) or from the cluster (`WORKFLOW` or
    /// `workflow/WORKFLOW`). `-o svg` draws the DAG with one band per task.
    Graph(GraphArgs),

    /// Print a shell completion script (bash, zsh or fish) for `kubectl-kubeci`.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(clap::Args, Debug)]
pub struct GraphArgs {
    /// The Workflow in the cluster: `NAME` or `workflow/NAME`.
    #[arg(value_name = "WORKFLOW", conflicts_with = "file", required_unless_present = "file")]
    pub workflow: Option<String>,

    /// A Workflow file instead, or `-` for standard input.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: Option<PathBuf>,

    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = GraphOutput::Text)]
    pub output: GraphOutput,
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
    #[error("error: {0:?} is not a {1}: use NAME or {2}/NAME")]
    WrongType(String, &'static str, &'static str),
    #[error("error: -o svg draws one Workflow; {path} has {count}")]
    OneSvg { path: String, count: usize },
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
        Command::Graph(graph) => run_graph(args, graph, stdin, out).await?,
        Command::Completion { shell } => {
            clap_complete::generate(*shell, &mut Args::command(), "kubectl-kubeci", out);
        }
    }
    Ok(())
}

async fn run_graph(
    args: &Args,
    graph: &GraphArgs,
    stdin: &mut dyn Read,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let (path, workflows) = match (&graph.file, &graph.workflow) {
        (Some(file), _) => plan::read_workflows(file, stdin)?,
        (None, Some(name)) => {
            let name = object_name(name, &["workflow", "workflows", "kwf"], "Workflow", "workflow")?;
            let cluster = args.cluster.connect().await?;
            let workflow: Workflow = cluster.workflow(name).await?;
            (format!("Workflow {}/{name}", cluster.namespace), vec![workflow])
        }
        (None, None) => unreachable!("clap requires a WORKFLOW or -f"),
    };
    if graph.output == GraphOutput::Svg && workflows.len() > 1 {
        return Err(Error::OneSvg { path, count: workflows.len() });
    }
    let mut errors = Vec::new();
    for workflow in &workflows {
        let name = workflow.metadata.name.clone().unwrap_or_default();
        match planner::plan(workflow, plan::manual_run()) {
            Ok(workplan) => out.write_all(Graph::new(workflow, &workplan).render(graph.output).as_bytes())?,
            Err(invalid) => errors.push(Error::Invalid { path: path.clone(), name, invalid }),
        }
    }
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => Err(Error::Several(errors)),
    }
}

/// `NAME`, or `TYPE/NAME` with TYPE one of `types` (kubectl's spelling of a resource).
fn object_name<'a>(
    arg: &'a str,
    types: &[&str],
    kind: &'static str,
    canonical: &'static str,
) -> Result<&'a str, Error> {
    match arg.split_once('/') {
        None if !arg.is_empty() => Ok(arg),
        Some((t, name)) if types.contains(&t.to_lowercase().as_str()) && !name.is_empty() => Ok(name),
        _ => Err(Error::WrongType(arg.to_string(), kind, canonical)),
    }
}
