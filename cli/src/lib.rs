//! `kubectl kubeci`: the user's front door to kubeci.
//!
//! `plan -f workflow.yaml` prints the Workplan the director would create for a Workflow, without
//! a cluster: the same planner, the same validation messages. The other commands read the
//! cluster of the kubeconfig, with kubectl's flags (`--kubeconfig`, `--context`, `-n`). Failures
//! exit with status 1 and say on stderr which object and which field is wrong.

pub mod cancel;
pub mod cluster;
pub mod graph;
pub mod logs;
pub mod plan;
pub mod run;
pub mod status;
pub mod ui;

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

    /// Show a run (Workplan) as a tree of tasks and steps, or the runs of a Workflow.
    ///
    /// `get wp/NAME` (also `workplan/NAME`, or `get wp NAME`): every task and step with its
    /// state (Waiting, Running, Succeeded, Failed, Skipped), exit code, start, duration, pod and
    /// container. `get workflow/NAME` (also `kwf/NAME`): its Workplans with phase, trigger, age
    /// and duration. A bare `NAME` is looked up as a Workplan, then as a Workflow.
    Get(GetArgs),

    /// Print the log of every step of a run (Workplan) in execution order, each line prefixed
    /// with `[step]`.
    ///
    /// Serial steps one after the other, then the task's parallel steps with their lines
    /// interleaved as they come; finished pods included. With `-f`, follows live from the first
    /// step to the last, waiting for pods that do not exist yet, and ends when the Workplan
    /// ends (its final phase goes to stderr).
    Logs(LogsArgs),

    /// Start a manual run of a Workflow and print its Workplan.
    ///
    /// Sets the Workflow's `kube.ci/run` annotation to a new value; the director creates the
    /// Workplan (within the Workflow's caps) and the plugin prints its name. `--wait` waits for
    /// the run to end, `--follow` streams every step's log on the way; both exit with status 1
    /// when the run ends Failed or Cancelled.
    Run(RunArgs),

    /// Serve a live web view of the namespace's Workflows and runs on loopback, and print its
    /// URL.
    ///
    /// The page lists the Workflows and their runs, draws a run's DAG with each step's state as
    /// it changes (watches, no polling) and streams a step's log when it is clicked. It reads the
    /// cluster with your kubeconfig, so it shows exactly what you may read; it answers only
    /// requests for its own address (`Host` and `Origin` are checked). JSON under `/api/`
    /// (each takes `?namespace=`): `namespaces`, `workflows`, `workplans/NAME`, the event streams
    /// `workplans/NAME/events` and `workplans/NAME/logs?step=S`, and `stats` (runs watched now).
    Ui(ui::UiArgs),

    /// Cancel a run (Workplan): its pod is stopped, its workspace cleaned up, and it ends in phase
    /// Cancelled with `Cancelled by <who>` in its reason.
    ///
    /// Sets the Workplan's `kube.ci/cancel` annotation to `--reason`, or to your user name as
    /// the API server knows it. `--wait` waits for the run's final phase.
    Cancel(CancelArgs),

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

#[derive(clap::Args, Debug)]
pub struct GetArgs {
    /// `TYPE/NAME`, `TYPE NAME` or `NAME`; TYPE is `wp` (`workplan`) or `workflow` (`kwf`).
    #[arg(value_name = "TYPE/NAME", num_args = 1..=2, required = true)]
    pub object: Vec<String>,

    /// Output format: the tree as text, or the same tree as data.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = GetOutput::Text)]
    pub output: GetOutput,
}

#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    /// The Workplan: `NAME` or `wp/NAME`.
    #[arg(value_name = "WORKPLAN")]
    pub workplan: String,

    /// Only this step's log.
    #[arg(long, value_name = "STEP")]
    pub step: Option<String>,

    /// Follow the run live until it ends.
    #[arg(short = 'f', long)]
    pub follow: bool,
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The Workflow: `NAME` or `workflow/NAME`.
    #[arg(value_name = "WORKFLOW")]
    pub workflow: String,

    /// Wait for the run's final phase; exit 1 if it failed or was cancelled.
    #[arg(long)]
    pub wait: bool,

    /// Stream every step's log until the run ends (implies --wait).
    #[arg(short = 'f', long)]
    pub follow: bool,

    /// Give up after this long (`30s`, `5m`, `1h`): for the Workplan to appear, and with
    /// `--wait` or `--follow` for the run to end.
    #[arg(long, default_value = "10m", value_name = "DURATION")]
    pub timeout: k8s_openapi::jiff::SignedDuration,
}

#[derive(clap::Args, Debug)]
pub struct CancelArgs {
    /// The Workplan: `NAME` or `wp/NAME`.
    #[arg(value_name = "WORKPLAN")]
    pub workplan: String,

    /// Who or why, kept in the run's reason (default: your user name).
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,

    /// Wait for the run's final phase.
    #[arg(long)]
    pub wait: bool,

    /// With `--wait`, give up after this long (`30s`, `5m`).
    #[arg(long, default_value = "5m", value_name = "DURATION")]
    pub timeout: k8s_openapi::jiff::SignedDuration,
}

/// Output formats of `get`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum GetOutput {
    Text,
    Yaml,
    Json,
}

const WORKPLAN_TYPES: &[&str] = &["wp", "wps", "workplan", "workplans", "workplans.kube.ci"];
const WORKFLOW_TYPES: &[&str] = &["kwf", "workflow", "workflows", "workflows.kube.ci"];

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
    #[error("error: unknown type {0:?}: use wp/NAME (a Workplan) or workflow/NAME (a Workflow)")]
    UnknownType(String),
    #[error("error: {0:?} is both a Workplan and a Workflow: say wp/{0} or workflow/{0}")]
    Ambiguous(String),
    #[error("error: no Workplan or Workflow {name:?} in namespace {namespace:?}")]
    NeitherFound { name: String, namespace: String },
    #[error("error: Workplan {workplan} has no step {step:?} (its steps: {steps})")]
    NoSuchStep { workplan: String, step: String, steps: String },
    #[error("error: Workplan {workplan} was deleted while following step {step}")]
    WorkplanDeleted { workplan: String, step: String },
    #[error("error: pod {pod} of Workplan {workplan} was deleted while following step {step}")]
    PodDeleted { pod: String, workplan: String, step: String },
    #[error("error: no run of Workflow {workflow} started: {reason}")]
    NotStarted { workflow: String, reason: String },
    #[error("error: Workplan {workplan} did not finish within {timeout:?}")]
    Timeout { workplan: String, timeout: std::time::Duration },
    /// The run ended Failed or Cancelled.
    #[error("error: Workplan {workplan} {phase}: {reason}")]
    RunFailed { workplan: String, phase: String, reason: String },
    #[error("error: Workplan {workplan} has already finished ({phase}: {reason})")]
    AlreadyFinished { workplan: String, phase: String, reason: String },
    #[error("error: the watch of Workplan {0} ended")]
    WatchEnded(String),
    #[error(transparent)]
    Ui(#[from] ui::UiError),
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
        Command::Get(get) => run_get(args, get, out).await?,
        Command::Logs(logs) => {
            let name = object_name(&logs.workplan, WORKPLAN_TYPES, "Workplan", "wp")?;
            let cluster = args.cluster.connect().await?;
            logs::logs(&cluster, name, logs.step.as_deref(), logs.follow, out, &mut std::io::stderr())
                .await?;
        }
        Command::Run(run) => {
            let name = object_name(&run.workflow, WORKFLOW_TYPES, "Workflow", "workflow")?;
            let follow = match (run.follow, run.wait) {
                (true, _) => run::Follow::Logs,
                (false, true) => run::Follow::Finished,
                (false, false) => run::Follow::Created,
            };
            let cluster = args.cluster.connect().await?;
            run::run(&cluster, name, follow, run.timeout, out, &mut std::io::stderr()).await?;
        }
        Command::Ui(ui) => {
            ui::check_address(ui)?;
            let cluster = args.cluster.connect().await?;
            ui::serve(cluster, ui, out).await?;
        }
        Command::Cancel(cancel) => {
            let name = object_name(&cancel.workplan, WORKPLAN_TYPES, "Workplan", "wp")?;
            let cluster = args.cluster.connect().await?;
            let timeout = std::time::Duration::try_from(cancel.timeout).unwrap_or_default();
            cancel::cancel(&cluster, name, cancel.reason.as_deref(), cancel.wait, timeout, out).await?;
        }
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

/// What `get` was asked for.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    Workplan(String),
    Workflow(String),
    Either(String),
}

fn target(object: &[String]) -> Result<Target, Error> {
    let (kind, name) = match object {
        [one] => match one.split_once('/') {
            Some((kind, name)) => (Some(kind), name),
            None => (None, one.as_str()),
        },
        [kind, name] => (Some(kind.as_str()), name.as_str()),
        _ => unreachable!("clap takes one or two"),
    };
    let name = name.to_string();
    match kind.map(str::to_lowercase) {
        None => Ok(Target::Either(name)),
        Some(k) if WORKPLAN_TYPES.contains(&k.as_str()) => Ok(Target::Workplan(name)),
        Some(k) if WORKFLOW_TYPES.contains(&k.as_str()) => Ok(Target::Workflow(name)),
        Some(k) => Err(Error::UnknownType(k)),
    }
}

async fn run_get(args: &Args, get: &GetArgs, out: &mut dyn Write) -> Result<(), Error> {
    let target = target(&get.object)?;
    let cluster = args.cluster.connect().await?;
    let now = k8s_openapi::jiff::Timestamp::now();
    let target = match target {
        Target::Either(name) => {
            let workplan = cluster.get_opt::<shared_types::Workplan>(&name).await?.is_some();
            let workflow = cluster.get_opt::<Workflow>(&name).await?.is_some();
            match (workplan, workflow) {
                (true, true) => return Err(Error::Ambiguous(name)),
                (true, false) => Target::Workplan(name),
                (false, true) => Target::Workflow(name),
                (false, false) => {
                    return Err(Error::NeitherFound { name, namespace: cluster.namespace.clone() });
                }
            }
        }
        known => known,
    };
    let text = match target {
        Target::Workplan(name) => {
            let (workplan, request, pods) = cluster.run(&name).await?;
            let tree = status::run_tree(&workplan, request.as_ref(), &pods, now);
            render_data(&tree, get.output, RunTreeText)
        }
        Target::Workflow(name) => {
            // The Workflow must exist and be readable; its runs are found by label.
            let _: Workflow = cluster.workflow(&name).await?;
            let selector = format!("{}={name}", shared_types::labels::WORKFLOW);
            let (workplans, malformed) = cluster.list::<shared_types::Workplan>(&selector).await?;
            let malformed = malformed
                .iter()
                .map(|e| match e {
                    Error::Malformed { kind, name, message } => format!("{kind} {name}: {message}"),
                    other => other.to_string(),
                })
                .collect();
            let runs = status::runs(&name, &cluster.namespace, &workplans, malformed, now);
            render_data(&runs, get.output, RunsText)
        }
        Target::Either(_) => unreachable!("resolved above"),
    };
    out.write_all(text.as_bytes())?;
    Ok(())
}

/// How a `get` result reads as text.
trait AsText<T> {
    fn text(&self, value: &T) -> String;
}

struct RunTreeText;
impl AsText<status::RunTree> for RunTreeText {
    fn text(&self, value: &status::RunTree) -> String {
        value.text()
    }
}

struct RunsText;
impl AsText<status::Runs> for RunsText {
    fn text(&self, value: &status::Runs) -> String {
        value.text()
    }
}

fn render_data<T: serde::Serialize>(value: &T, output: GetOutput, text: impl AsText<T>) -> String {
    match output {
        GetOutput::Text => text.text(value),
        GetOutput::Yaml => serde_yaml::to_string(value).expect("plain data serializes"),
        GetOutput::Json => plan::json(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(args: &[&str]) -> Result<Target, Error> {
        target(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn get_tells_workplans_and_workflows_apart_by_kubectls_types() {
        assert_eq!(t(&["wp/a"]).unwrap(), Target::Workplan("a".into()));
        assert_eq!(t(&["Workplan", "a"]).unwrap(), Target::Workplan("a".into()));
        assert_eq!(t(&["workflow/b"]).unwrap(), Target::Workflow("b".into()));
        assert_eq!(t(&["kwf", "b"]).unwrap(), Target::Workflow("b".into()));
        assert_eq!(t(&["c"]).unwrap(), Target::Either("c".into()));
        assert_eq!(
            t(&["pod/c"]).unwrap_err().to_string(),
            "error: unknown type \"pod\": use wp/NAME (a Workplan) or workflow/NAME (a Workflow)"
        );
    }

    #[test]
    fn graph_takes_name_or_workflow_slash_name() {
        let types = &["workflow", "kwf"];
        assert_eq!(object_name("x", types, "Workflow", "workflow").unwrap(), "x");
        assert_eq!(object_name("kwf/x", types, "Workflow", "workflow").unwrap(), "x");
        assert!(object_name("wp/x", types, "Workflow", "workflow").is_err());
    }
}
