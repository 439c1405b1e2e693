//! `plan -f FILE`: the Workplan the director would create, without a cluster.

use std::io::Read;
use std::path::{Path, PathBuf};

use clap::ValueEnum;
use serde::Deserialize;
use shared_types::planner;
use shared_types::{TriggerEvent, Workflow, Workplan};

use crate::Error;

#[derive(clap::Args, Debug)]
pub struct PlanArgs {
    /// The Workflow file, or `-` for standard input.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: PathBuf,

    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Yaml)]
    pub output: Output,
}

/// Output formats of commands that print objects.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Yaml,
    Json,
}

/// `plan -f FILE`: the Workplan of a manual run of every Workflow in the file; Workflows that do
/// not name a namespace get `namespace`.
pub fn run_plan(args: &PlanArgs, namespace: &str, stdin: &mut dyn Read) -> Result<String, Error> {
    let (path, workflows) = read_workflows(&args.file, stdin)?;

    let mut workplans = Vec::new();
    let mut errors = Vec::new();
    for mut workflow in workflows {
        workflow.metadata.namespace.get_or_insert_with(|| namespace.to_string());
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

pub(crate) fn manual_run() -> TriggerEvent {
    TriggerEvent::manual(None)
}

/// The Workflows of `file` (`-` for standard input), with the name the user reads in messages.
pub(crate) fn read_workflows(file: &Path, stdin: &mut dyn Read) -> Result<(String, Vec<Workflow>), Error> {
    let path = match file.to_str() {
        Some("-") => "<stdin>".to_string(),
        _ => file.display().to_string(),
    };
    let text = read_input(file, stdin).map_err(|source| Error::Read { path: path.clone(), source })?;
    let workflows = parse_workflows(&path, &text)?;
    Ok((path, workflows))
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

pub(crate) fn json(value: &impl serde::Serialize) -> String {
    let mut out = serde_json::to_string_pretty(value).expect("plain data serializes");
    out.push('\n');
    out
}
