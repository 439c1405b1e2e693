//! `kubectl kubeci`: the user's front door to kubeci.
//!
//! `kubectl kubeci plan -f workflow.yaml` prints the Workplan the director would create for a
//! Workflow, without a cluster: the same planner, the same validation messages. Invalid input
//! exits with status 1 and every problem on stderr, each naming the field and the step.

use std::io::Read;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand, ValueEnum};
use serde::Deserialize;
use shared_types::planner;
use shared_types::{Invalid, TriggerEvent, Workflow, Workplan};

/// kubectl kubeci: plan and inspect kubeci Workflows.
#[derive(Parser, Debug)]
#[command(name = "kubectl-kubeci", bin_name = "kubectl kubeci", version)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the Workplan the director would create for a Workflow (a manual run).
    ///
    /// Reads one or more Workflows (YAML or JSON, `---`-separated) and prints one Workplan for
    /// each. The Workplan's name is the one a manual run would get; in the cluster it also
    /// depends on the Workflow's uid.
    Plan(PlanArgs),
}

#[derive(clap::Args, Debug)]
pub struct PlanArgs {
    /// The Workflow file, or `-` for standard input.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: PathBuf,

    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Yaml)]
    pub output: Output,

    /// Namespace of Workflows that do not name one.
    #[arg(short = 'n', long = "namespace", default_value = "default")]
    pub namespace: String,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Yaml,
    Json,
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
}

/// Runs a command; returns what goes to stdout.
pub fn run(args: &Args, stdin: &mut dyn Read) -> Result<String, Error> {
    match &args.command {
        Command::Plan(plan) => run_plan(plan, stdin),
    }
}

fn run_plan(args: &PlanArgs, stdin: &mut dyn Read) -> Result<String, Error> {
    let path = match args.file.to_str() {
        Some("-") => "<stdin>".to_string(),
        _ => args.file.display().to_string(),
    };
    let text = read_input(&args.file, stdin).map_err(|source| Error::Read { path: path.clone(), source })?;
    let workflows = parse_workflows(&path, &text)?;

    let mut workplans = Vec::new();
    let mut errors = Vec::new();
    for mut workflow in workflows {
        workflow.metadata.namespace.get_or_insert_with(|| args.namespace.clone());
        let name = workflow.metadata.name.clone().unwrap_or_default();
        match planner::plan(&workflow, manual_run()) {
            Ok(workplan) => workplans.push(workplan),
            Err(invalid) => errors.push(Error::Invalid { path: path.clone(), name, invalid }),
        }
    }
    match errors.len() {
        0 => Ok(render(&workplans, args.output)),
        1 => Err(errors.remove(0)),
        _ => Err(Error::Several(errors)),
    }
}

fn manual_run() -> TriggerEvent {
    TriggerEvent::manual(None)
}

fn read_input(file: &Path, stdin: &mut dyn Read) -> std::io::Result<String> {
    if file == Path::new("-") {
        let mut text = String::new();
        stdin.read_to_string(&mut text)?;
        Ok(text)
    } else {
        std::fs::read_to_string(file)
    }
}

/// Every document of the input, each checked to be a kube.ci/v1alpha1 Workflow. JSON is YAML,
/// so one parser reads both. Other kinds are skipped; problems of all documents are reported
/// together.
fn parse_workflows(path: &str, text: &str) -> Result<Vec<Workflow>, Error> {
    let mut workflows = Vec::new();
    let mut errors = Vec::new();
    let mut skipped = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let parse = |message: String| Error::Parse { path: path.to_string(), message };
        let value = match serde_yaml::Value::deserialize(document) {
            Ok(serde_yaml::Value::Null) => continue, // an empty document, e.g. a trailing `---`
            Ok(value) => value,
            Err(e) => {
                errors.push(parse(format!("document {index}: not valid YAML: {e}")));
                break; // the parser cannot resynchronise after a syntax error
            }
        };
        let field =
            |name: &str| value.get(name).and_then(serde_yaml::Value::as_str).unwrap_or("").to_string();
        let (api_version, kind) = (field("apiVersion"), field("kind"));
        if kind != "Workflow" || !api_version.starts_with("kube.ci/") {
            skipped.push(format!(
                "{kind} {}",
                value
                    .get("metadata")
                    .and_then(|m| m.get("name"))
                    .and_then(serde_yaml::Value::as_str)
                    .unwrap_or("")
            ));
            continue; // other objects of a mixed file, as kubectl apply would take them
        }
        if api_version != "kube.ci/v1alpha1" {
            errors.push(parse(format!(
                "document {index}: apiVersion {api_version:?} is not served; use kube.ci/v1alpha1"
            )));
            continue;
        }
        match serde_path_to_error::deserialize::<_, Workflow>(value) {
            Ok(workflow) => workflows.push(workflow),
            Err(e) => errors.push(parse(format!(
                "document {index}: not a valid Workflow: {}: {}",
                e.path(),
                e.inner()
            ))),
        }
    }
    match (errors.len(), workflows.is_empty()) {
        (0, true) => Err(Error::Empty { path: path.to_string(), skipped: skipped.join(", ") }),
        (0, false) => Ok(workflows),
        (1, _) => Err(errors.remove(0)),
        _ => Err(Error::Several(errors)),
    }
}

fn render(workplans: &[Workplan], output: Output) -> String {
    match (output, workplans) {
        (Output::Yaml, _) => workplans
            .iter()
            .map(|wp| serde_yaml::to_string(wp).expect("a Workplan serializes"))
            .collect::<Vec<_>>()
            .join("---\n"),
        (Output::Json, [one]) => json(one),
        (Output::Json, many) => json(&serde_json::json!({"apiVersion": "v1", "kind": "List", "items": many})),
    }
}

fn json(value: &impl serde::Serialize) -> String {
    let mut out = serde_json::to_string_pretty(value).expect("a Workplan serializes");
    out.push('\n');
    out
}
