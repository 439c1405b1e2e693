//! Planning: a Workflow's steps compiled into a Workplan's tasks (DESIGN.md §3).
//!
//! [`validate`] reports every problem of a spec in one pass, each naming the field and the step.
//! [`plan`] then assigns each step a level (0 without dependencies, else one more than its
//! deepest dependency) and walks the levels in order: a lone step on a level that is not the last
//! joins the pending serial list; any other level closes a task of the pending serial steps
//! followed by the level's steps in parallel.
//!
//! Under the execution model (tasks in order; within a task the serial steps in order, then the
//! parallel steps together) every dependency finishes before its dependant starts: a dependency
//! always sits on a lower level, so it is either in an earlier task or earlier in the same task's
//! serial list.

use std::collections::HashMap;
use std::fmt;

use petgraph::Direction;
use petgraph::algo::{tarjan_scc, toposort};
use petgraph::graph::{DiGraph, NodeIndex};

use kube::Resource;

use crate::limits::{MAX_NAME_LENGTH, MAX_STEPS, MAX_WORKPLAN_BYTES};
use crate::workflow::{Step, Trigger, Workflow, WorkflowSpec};
use crate::workplan::{Task, TriggerEvent, Workplan, WorkplanSpec};
use crate::{labels, render};

/// Bounds the planner enforces. [`Limits::default`] holds the limits of the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most steps a Workflow may have.
    pub max_steps: usize,
    /// Largest Workplan (JSON bytes of its steps) the planner may produce.
    pub max_workplan_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_steps: MAX_STEPS, max_workplan_bytes: MAX_WORKPLAN_BYTES }
    }
}

impl Limits {
    /// No limits: for tools and benchmarks that plan DAGs larger than the API accepts.
    pub fn unlimited() -> Self {
        Self { max_steps: usize::MAX, max_workplan_bytes: usize::MAX }
    }
}

/// One thing wrong with a Workflow. `Display` names the field, and the step where there is one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// `spec.steps` is empty.
    NoSteps,
    /// More steps than [`Limits::max_steps`].
    TooManySteps { count: usize, max: usize },
    /// A step name that is not a DNS-1123 label.
    InvalidName { index: usize, name: String, why: &'static str },
    /// A step name used before by the step at `first`.
    DuplicateName { index: usize, name: String, first: usize },
    /// A step without an image.
    MissingImage { index: usize, step: String },
    /// A dependency that names no step.
    UnknownDependency { index: usize, step: String, dependency: String },
    /// A step that depends on itself.
    SelfDependency { index: usize, step: String },
    /// Steps that depend on each other in a circle: `path[0]` depends on `path[1]`, … and the
    /// last on `path[0]`.
    Cycle { path: Vec<String> },
    /// The Workplan would be too large for the API server.
    TooLarge { bytes: usize, max: usize },
    /// A trigger field that is missing or wrong.
    InvalidTrigger { index: usize, field: &'static str, why: String },
    /// The Workflow's own name cannot be used (it is a label value on everything it creates).
    WorkflowName { name: String, why: &'static str },
    /// A volume of `spec.podTemplate.volumes` that is wrong.
    InvalidVolume { index: usize, field: &'static str, why: String },
    /// A step's volume mount that is wrong: it names no volume, or mounts onto the workspace.
    InvalidMount { index: usize, step: String, mount: usize, field: &'static str, why: String },
    /// A step's retry policy out of range.
    InvalidRetries { index: usize, step: String, field: &'static str, why: String },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::NoSteps => write!(f, "spec.steps: a workflow needs at least one step"),
            Problem::TooManySteps { count, max } => {
                write!(f, "spec.steps: {count} steps, more than the limit of {max}")
            }
            Problem::InvalidName { index, name, why } => {
                write!(f, "spec.steps[{index}].name: {name:?} is not a valid step name: {why}")
            }
            Problem::DuplicateName { index, name, first } => write!(
                f,
                "spec.steps[{index}].name: step name {name:?} is already used by spec.steps[{first}]"
            ),
            Problem::MissingImage { index, step } => {
                write!(f, "spec.steps[{index}].image: step {step:?} has no image")
            }
            Problem::UnknownDependency { index, step, dependency } => write!(
                f,
                "spec.steps[{index}].dependency: step {step:?} depends on {dependency:?}, which is not a step of this workflow"
            ),
            Problem::SelfDependency { index, step } => {
                write!(f, "spec.steps[{index}].dependency: step {step:?} depends on itself")
            }
            Problem::Cycle { path } => {
                write!(f, "spec.steps: dependency cycle ")?;
                for name in path {
                    write!(f, "{name} → ")?;
                }
                write!(f, "{} (each step depends on the next)", path[0])
            }
            Problem::TooLarge { bytes, max } => write!(
                f,
                "spec.steps: the Workplan would hold {bytes} bytes of steps, more than the limit of {max} (the API server refuses objects over 1.5 MiB)"
            ),
            Problem::InvalidTrigger { index, field, why } => {
                write!(f, "spec.triggers[{index}].{field}: {why}")
            }
            Problem::WorkflowName { name, why } => write!(f, "metadata.name: {name:?} {why}"),
            Problem::InvalidVolume { index, field, why } => {
                write!(f, "spec.podTemplate.volumes[{index}].{field}: {why}")
            }
            Problem::InvalidMount { index, step, mount, field, why } => {
                write!(f, "spec.steps[{index}].volumeMounts[{mount}].{field}: step {step:?} {why}")
            }
            Problem::InvalidRetries { index, step, field, why } => {
                write!(f, "spec.steps[{index}].retries.{field}: step {step:?} {why}")
            }
        }
    }
}

/// Every problem found in a Workflow, in the order of the fields they concern.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct Invalid {
    /// Never empty.
    pub problems: Vec<Problem>,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// Checks a whole Workflow: its name (a label value on everything it creates) and its spec.
pub fn validate_workflow(workflow: &Workflow) -> Result<(), Invalid> {
    check_workflow(workflow).map(|_| ())
}

fn check_workflow(workflow: &Workflow) -> Result<StepGraph, Invalid> {
    let name = workflow.metadata.name.as_deref().unwrap_or_default();
    let name_problem = match name.len() {
        0 => Some("is empty: a Workflow needs a name"),
        len if len > MAX_NAME_LENGTH => Some("is longer than 63 characters"),
        _ => None,
    };
    match (check(&workflow.spec, &Limits::default()), name_problem) {
        (Ok(graph), None) => Ok(graph),
        (result, name_problem) => {
            let mut problems: Vec<Problem> = name_problem
                .map(|why| Problem::WorkflowName { name: name.to_string(), why })
                .into_iter()
                .collect();
            problems.extend(result.err().into_iter().flat_map(|invalid| invalid.problems));
            Err(Invalid { problems })
        }
    }
}

/// Validates steps alone and compiles them into tasks. Reports every problem of the steps at once.
pub fn plan_steps(steps: &[Step], limits: &Limits) -> Result<Vec<Task>, Invalid> {
    let mut problems = Vec::new();
    match analyse(steps, limits, &mut problems) {
        Some(graph) if problems.is_empty() => Ok(tasks(&graph, steps)),
        _ => Err(Invalid { problems }),
    }
}

fn check(spec: &WorkflowSpec, limits: &Limits) -> Result<StepGraph, Invalid> {
    let mut problems = Vec::new();
    let graph = analyse(&spec.steps, limits, &mut problems);
    for (index, trigger) in spec.triggers.iter().enumerate() {
        check_trigger(index, trigger, &mut problems);
    }
    check_pod_settings(spec, &mut problems);
    match graph {
        Some(graph) if problems.is_empty() => Ok(graph),
        _ => Err(Invalid { problems }),
    }
}

/// The Workplan the director creates for `workflow` on `trigger`: deterministic name, the
/// Workflow's label, an owner reference to it (when it has a uid, as every stored object does),
/// the full task list and the cleanup finalizer ([`labels::CLEANUP_FINALIZER`]): set at creation,
/// it costs no write of its own, and a Workplan deleted mid-run waits for its workspace cleanup.
pub fn plan(workflow: &Workflow, trigger: TriggerEvent) -> Result<Workplan, Invalid> {
    let graph = check_workflow(workflow)?;
    let tasks = tasks(&graph, &workflow.spec.steps);
    let name = workflow.metadata.name.clone().unwrap_or_default();
    let uid = workflow.metadata.uid.clone().unwrap_or_default();
    let mut workplan = Workplan::new(
        &render::workplan_name(&name, &uid, &trigger),
        WorkplanSpec { workflow: name.clone(), trigger, tasks, run: workflow.spec.run.clone() },
    );
    workplan.metadata.namespace = workflow.metadata.namespace.clone();
    workplan.metadata.labels = Some([(labels::WORKFLOW.to_string(), name)].into());
    workplan.metadata.owner_references = workflow.controller_owner_ref(&()).map(|owner| vec![owner]);
    workplan.metadata.finalizers = Some(vec![labels::CLEANUP_FINALIZER.to_string()]);
    Ok(workplan)
}

/// The dependency graph of the steps (edges from a dependency to its dependant) in a topological
/// order: what task building needs.
struct StepGraph {
    graph: DiGraph<(), ()>,
    order: Vec<NodeIndex>,
}

/// Adds every problem of `steps` to `problems`; returns the graph when it has no cycle.
fn analyse(steps: &[Step], limits: &Limits, problems: &mut Vec<Problem>) -> Option<StepGraph> {
    if steps.is_empty() {
        problems.push(Problem::NoSteps);
    }
    if steps.len() > limits.max_steps {
        problems.push(Problem::TooManySteps { count: steps.len(), max: limits.max_steps });
    }

    // Name → index of its first step; later duplicates are reported and left out of the graph.
    let mut by_name: HashMap<&str, usize> = HashMap::with_capacity(steps.len());
    for (index, step) in steps.iter().enumerate() {
        if let Err(why) = check_dns1123_label(&step.name) {
            problems.push(Problem::InvalidName { index, name: step.name.clone(), why });
        }
        if let Some(&first) = by_name.get(step.name.as_str()) {
            problems.push(Problem::DuplicateName { index, name: step.name.clone(), first });
        } else {
            by_name.insert(&step.name, index);
        }
        if step.image.trim().is_empty() {
            problems.push(Problem::MissingImage { index, step: step.name.clone() });
        }
    }

    // Edges point from a dependency to its dependant.
    let mut graph: DiGraph<(), ()> = DiGraph::with_capacity(steps.len(), steps.len());
    for _ in steps {
        graph.add_node(());
    }
    for (index, step) in steps.iter().enumerate() {
        if by_name.get(step.name.as_str()) != Some(&index) {
            continue; // a duplicate: its edges would be ambiguous
        }
        for dependency in &step.dependency {
            match by_name.get(dependency.as_str()) {
                None => problems.push(Problem::UnknownDependency {
                    index,
                    step: step.name.clone(),
                    dependency: dependency.clone(),
                }),
                Some(&dep) if dep == index => {
                    problems.push(Problem::SelfDependency { index, step: step.name.clone() })
                }
                Some(&dep) => {
                    graph.update_edge(NodeIndex::new(dep), NodeIndex::new(index), ());
                }
            }
        }
    }

    let order = match toposort(&graph, None) {
        Ok(order) => Some(order),
        Err(_) => {
            problems.extend(cycles(&graph, steps));
            None
        }
    };

    let bytes = json_size(steps);
    if bytes > limits.max_workplan_bytes {
        problems.push(Problem::TooLarge { bytes, max: limits.max_workplan_bytes });
    }

    order.map(|order| StepGraph { graph, order })
}

/// Levels from a topological order, then tasks by the rule of DESIGN.md §3.
fn tasks(StepGraph { graph, order }: &StepGraph, steps: &[Step]) -> Vec<Task> {
    let mut level = vec![0usize; steps.len()];
    for &node in order {
        level[node.index()] = graph
            .neighbors_directed(node, Direction::Incoming)
            .map(|dep| level[dep.index()] + 1)
            .max()
            .unwrap_or(0);
    }
    let depth = level.iter().copied().max().map_or(0, |max| max + 1);
    let mut levels: Vec<Vec<usize>> = vec![Vec::new(); depth];
    for (index, &l) in level.iter().enumerate() {
        levels[l].push(index); // declaration order within a level
    }

    let mut tasks = Vec::new();
    let mut serial = Vec::new();
    for (l, members) in levels.iter().enumerate() {
        let last = l + 1 == levels.len();
        if members.len() == 1 && !last {
            serial.push(steps[members[0]].clone());
        } else {
            tasks.push(Task {
                serial_steps: std::mem::take(&mut serial),
                parallel_steps: members.iter().map(|&i| steps[i].clone()).collect(),
            });
        }
    }
    tasks
}

/// One named cycle per strongly connected component of more than one step, starting at the
/// component's first declared step, shortest way round.
fn cycles(graph: &DiGraph<(), ()>, steps: &[Step]) -> Vec<Problem> {
    let mut found: Vec<(usize, Vec<String>)> = tarjan_scc(graph)
        .into_iter()
        .filter(|component| component.len() > 1)
        .map(|component| {
            let start = *component.iter().min().expect("component is not empty");
            let path = shortest_cycle(graph, start, &component);
            (start.index(), path.into_iter().map(|n| steps[n.index()].name.clone()).collect())
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, path)| Problem::Cycle { path }).collect()
}

/// Breadth-first search along "depends on" (incoming) edges inside one component, from `start`
/// back to `start`. Returns the steps of the cycle, `start` first.
fn shortest_cycle(graph: &DiGraph<(), ()>, start: NodeIndex, component: &[NodeIndex]) -> Vec<NodeIndex> {
    let members: std::collections::HashSet<NodeIndex> = component.iter().copied().collect();
    let mut parent: HashMap<NodeIndex, NodeIndex> = HashMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(node) = queue.pop_front() {
        // Sorted so the cycle named is the same on every run.
        let mut next: Vec<NodeIndex> =
            graph.neighbors_directed(node, Direction::Incoming).filter(|n| members.contains(n)).collect();
        next.sort();
        for dep in next {
            if dep == start {
                let mut path = vec![node];
                while let Some(&p) = parent.get(path.last().expect("path is not empty")) {
                    path.push(p);
                }
                path.reverse();
                return path;
            }
            if dep != start && !parent.contains_key(&dep) {
                parent.insert(dep, node);
                queue.push_back(dep);
            }
        }
    }
    unreachable!("a strongly connected component of several nodes has a cycle through each node")
}

/// DNS-1123 label: what Kubernetes accepts as a container name.
pub fn check_dns1123_label(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("must not be empty");
    }
    if name.len() > MAX_NAME_LENGTH {
        return Err("must be at most 63 characters");
    }
    let bytes = name.as_bytes();
    if !bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-') {
        return Err("must consist of lower-case letters, digits and '-'");
    }
    if bytes[0] == b'-' || bytes[bytes.len() - 1] == b'-' {
        return Err("must start and end with a letter or digit");
    }
    Ok(())
}

fn check_trigger(index: usize, trigger: &Trigger, problems: &mut Vec<Problem>) {
    let mut problem = |field, why: String| problems.push(Problem::InvalidTrigger { index, field, why });
    if trigger.api_version.trim().is_empty() {
        problem("apiVersion", "must name the API version, for example v1".into());
    }
    if trigger.kind.trim().is_empty() {
        problem("kind", "must name the kind, for example ConfigMap".into());
    }
    if !trigger.on_add_or_update && !trigger.on_delete {
        problem("onAddOrUpdate", "the trigger fires on nothing: set onAddOrUpdate or onDelete".into());
    }
    if let Some(why) = self_feeding(&trigger.api_version, &trigger.kind) {
        problem("kind", format!("{} {why}: a trigger on it would fire on kubeci's own writes", trigger.kind));
    }
    if let Some(selector) = &trigger.selector {
        for (i, requirement) in selector.match_expressions.iter().flatten().enumerate() {
            let values = requirement.values.as_ref().map_or(0, Vec::len);
            let why = match requirement.operator.as_str() {
                "In" | "NotIn" if values == 0 => Some("In and NotIn need at least one value"),
                "Exists" | "DoesNotExist" if values > 0 => Some("Exists and DoesNotExist take no values"),
                "In" | "NotIn" | "Exists" | "DoesNotExist" => None,
                _ => Some("operator must be In, NotIn, Exists or DoesNotExist"),
            };
            if let Some(why) = why {
                problems.push(Problem::InvalidTrigger {
                    index,
                    field: "selector.matchExpressions",
                    why: format!("[{i}] ({}): {why}", requirement.key),
                });
            }
        }
    }
}

/// The pod template's volumes, the steps' mounts of them and the steps' retry policies. What
/// the API server would refuse in a pod is refused here, naming the field, so that it shows on
/// the Workflow instead of failing a run.
fn check_pod_settings(spec: &WorkflowSpec, problems: &mut Vec<Problem>) {
    let volumes = spec.run.pod_template.as_ref().map(|t| t.volumes.as_slice()).unwrap_or_default();
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (index, volume) in volumes.iter().enumerate() {
        let mut problem = |field, why: String| problems.push(Problem::InvalidVolume { index, field, why });
        if volume.name == render::WORKSPACE_VOLUME {
            problem(
                "name",
                format!(
                    "{:?} is kubeci's own volume: the workspace, mounted at {}",
                    volume.name,
                    render::WORKSPACE_MOUNT_PATH
                ),
            );
        } else if let Err(why) = check_dns1123_label(&volume.name) {
            problem("name", format!("{:?} is not a valid volume name: {why}", volume.name));
        } else if let Some(first) = names.insert(&volume.name, index) {
            problem(
                "name",
                format!("volume name {:?} is already used by spec.podTemplate.volumes[{first}]", volume.name),
            );
        }
        let sources = volume.sources();
        if sources != 1 {
            problem(
                "name",
                format!(
                    "volume {:?} has {sources} sources; it needs exactly one of configMap, secret, persistentVolumeClaim and emptyDir",
                    volume.name
                ),
            );
        }
    }
    for (index, step) in spec.steps.iter().enumerate() {
        let mut paths: HashMap<String, usize> = HashMap::new();
        for (mount, volume_mount) in step.volume_mounts.iter().enumerate() {
            let mut problem = |field, why: String| {
                problems.push(Problem::InvalidMount { index, step: step.name.clone(), mount, field, why })
            };
            if volume_mount.name == render::WORKSPACE_VOLUME {
                problem(
                    "name",
                    format!(
                        "mounts {:?}, kubeci's own volume: the workspace is mounted at {} in every step already",
                        volume_mount.name,
                        render::WORKSPACE_MOUNT_PATH
                    ),
                );
            } else if !names.contains_key(volume_mount.name.as_str()) {
                problem(
                    "name",
                    format!(
                        "mounts {:?}, which is not a volume of spec.podTemplate.volumes",
                        volume_mount.name
                    ),
                );
            }
            if let Some(why) = mount_path_problem(&volume_mount.mount_path) {
                problem(
                    "mountPath",
                    format!("mounts {:?} at {:?}: {why}", volume_mount.name, volume_mount.mount_path),
                );
            } else if let Some(first) = paths.insert(normalized(&volume_mount.mount_path), mount) {
                problem(
                    "mountPath",
                    format!(
                        "mounts {:?} at {:?}, where volumeMounts[{first}] is mounted already",
                        volume_mount.name, volume_mount.mount_path
                    ),
                );
            }
        }
        if let Some(retries) = &step.retries {
            let mut problem = |field, why: String| {
                problems.push(Problem::InvalidRetries { index, step: step.name.clone(), field, why })
            };
            if !(0..=crate::pod::MAX_RETRIES).contains(&retries.limit) {
                problem(
                    "limit",
                    format!(
                        "asks for {} retries; the limit is 0 to {}",
                        retries.limit,
                        crate::pod::MAX_RETRIES
                    ),
                );
            }
            if let Some(backoff) = retries.backoff_seconds
                && !(0..=crate::pod::MAX_BACKOFF_SECONDS).contains(&backoff)
            {
                problem(
                    "backoffSeconds",
                    format!(
                        "waits {backoff}s between attempts; the backoff is 0 to {}s",
                        crate::pod::MAX_BACKOFF_SECONDS
                    ),
                );
            }
        }
    }
}

/// Why a step may not mount a volume at `path`: relative, with `..`, or at or under the
/// workspace.
fn mount_path_problem(path: &str) -> Option<String> {
    if !path.starts_with('/') {
        return Some("a mount path must be absolute".into());
    }
    if path.split('/').any(|segment| segment == "..") {
        return Some("a mount path must not contain '..'".into());
    }
    let path = normalized(path);
    let workspace = render::WORKSPACE_MOUNT_PATH;
    (path == workspace || path.strip_prefix(workspace).is_some_and(|rest| rest.starts_with('/')))
        .then(|| format!("the workspace is mounted at {workspace}; nothing may be mounted at or under it"))
}

/// An absolute `path` without empty or `.` segments: `/a//b/./` is `/a/b`.
fn normalized(path: &str) -> String {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty() && *s != ".").collect();
    format!("/{}", segments.join("/"))
}

/// Why a trigger on `kind` in `api_version` would feed itself, if it would: kubeci writes these
/// objects itself for every run (its own kinds; Leases of leader election; Events), so each run
/// would start the next.
fn self_feeding(api_version: &str, kind: &str) -> Option<&'static str> {
    let group = api_version.split_once('/').map_or("", |(group, _)| group);
    match (group, kind) {
        ("kube.ci", _) => Some("is kubeci's own kind"),
        ("coordination.k8s.io", "Lease") => Some("is written by kubeci's leader election"),
        ("" | "events.k8s.io", "Event") => Some("is written by kubeci for every run"),
        _ => None,
    }
}

/// Bytes of the steps' JSON, counted without building it.
fn json_size(steps: &[Step]) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, steps).expect("steps serialize to JSON");
    count.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::Workflow;

    const SEED: &str = crate::repo::SEED_WORKFLOW;

    fn step(name: &str, deps: &[&str]) -> Step {
        Step {
            name: name.into(),
            image: "alpine".into(),
            dependency: deps.iter().map(|d| d.to_string()).collect(),
            ..Step::default()
        }
    }

    fn names(tasks: &[Task]) -> Vec<(Vec<&str>, Vec<&str>)> {
        tasks
            .iter()
            .map(|t| {
                (
                    t.serial_steps.iter().map(|s| s.name.as_str()).collect(),
                    t.parallel_steps.iter().map(|s| s.name.as_str()).collect(),
                )
            })
            .collect()
    }

    fn problems(steps: &[Step]) -> Vec<String> {
        plan_steps(steps, &Limits::default())
            .expect_err("invalid")
            .problems
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn seed_workflow_gives_the_seed_workplan() {
        let wf: Workflow = serde_yaml::from_str(SEED).unwrap();
        let tasks = plan(&wf, TriggerEvent::manual(None)).unwrap().spec.tasks;
        assert_eq!(
            names(&tasks),
            vec![(vec!["step-1"], vec!["step-2", "step-3"]), (vec!["step-4"], vec!["step-5"]),]
        );
        // Full copies of the step specs.
        assert_eq!(tasks[1].parallel_steps[0], wf.spec.steps[4]);
    }

    #[test]
    fn chain_is_one_task() {
        let tasks =
            plan_steps(&[step("a", &[]), step("b", &["a"]), step("c", &["b"])], &Limits::default()).unwrap();
        assert_eq!(names(&tasks), vec![(vec!["a", "b"], vec!["c"])]);
    }

    #[test]
    fn single_step_is_one_parallel_step() {
        let tasks = plan_steps(&[step("only", &[])], &Limits::default()).unwrap();
        assert_eq!(names(&tasks), vec![(vec![], vec!["only"])]);
    }

    #[test]
    fn independent_steps_run_together() {
        let tasks =
            plan_steps(&[step("a", &[]), step("b", &[]), step("c", &[])], &Limits::default()).unwrap();
        assert_eq!(names(&tasks), vec![(vec![], vec!["a", "b", "c"])]);
    }

    #[test]
    fn diamond() {
        let steps = [
            step("top", &[]),
            step("left", &["top"]),
            step("right", &["top"]),
            step("bottom", &["left", "right"]),
        ];
        let tasks = plan_steps(&steps, &Limits::default()).unwrap();
        assert_eq!(names(&tasks), vec![(vec!["top"], vec!["left", "right"]), (vec![], vec!["bottom"])]);
    }

    #[test]
    fn levels_keep_declaration_order() {
        let steps = [step("z", &[]), step("y", &["z"]), step("a", &["z"])];
        let tasks = plan_steps(&steps, &Limits::default()).unwrap();
        assert_eq!(names(&tasks), vec![(vec!["z"], vec!["y", "a"])]);
    }

    #[test]
    fn cycle_is_named_step_by_step() {
        let steps = [step("a", &["c"]), step("b", &["a"]), step("c", &["b"]), step("d", &[])];
        assert_eq!(
            problems(&steps),
            vec!["spec.steps: dependency cycle a → c → b → a (each step depends on the next)"]
        );
    }

    #[test]
    fn two_cycles_are_both_named() {
        let steps = [step("a", &["b"]), step("b", &["a"]), step("c", &["d"]), step("d", &["c"])];
        assert_eq!(
            problems(&steps),
            vec![
                "spec.steps: dependency cycle a → b → a (each step depends on the next)",
                "spec.steps: dependency cycle c → d → c (each step depends on the next)",
            ]
        );
    }

    #[test]
    fn every_problem_in_one_run() {
        let mut bad = step("Bad_Name", &["nope"]);
        bad.image = String::new();
        let steps = [step("a", &["a"]), step("a", &[]), bad, step("x", &["y"]), step("y", &["x"])];
        assert_eq!(
            problems(&steps),
            vec![
                "spec.steps[1].name: step name \"a\" is already used by spec.steps[0]",
                "spec.steps[2].name: \"Bad_Name\" is not a valid step name: must consist of lower-case letters, digits and '-'",
                "spec.steps[2].image: step \"Bad_Name\" has no image",
                "spec.steps[0].dependency: step \"a\" depends on itself",
                "spec.steps[2].dependency: step \"Bad_Name\" depends on \"nope\", which is not a step of this workflow",
                "spec.steps: dependency cycle x → y → x (each step depends on the next)",
            ]
        );
    }

    #[test]
    fn empty_and_too_many() {
        assert_eq!(problems(&[]), vec!["spec.steps: a workflow needs at least one step"]);
        let many: Vec<Step> = (0..=MAX_STEPS).map(|i| step(&format!("s{i}"), &[])).collect();
        assert_eq!(problems(&many), vec!["spec.steps: 201 steps, more than the limit of 200"]);
        assert!(plan_steps(&many, &Limits::unlimited()).is_ok());
    }

    #[test]
    fn too_large() {
        let mut big = step("big", &[]);
        big.args = vec!["x".repeat(MAX_WORKPLAN_BYTES)];
        let found = problems(&[big]);
        assert_eq!(found.len(), 1);
        assert!(found[0].starts_with("spec.steps: the Workplan would hold 14000"), "{}", found[0]);
    }

    #[test]
    fn dns1123_labels() {
        assert!(check_dns1123_label("step-1").is_ok());
        assert!(check_dns1123_label("1").is_ok());
        assert!(check_dns1123_label("-a").is_err());
        assert!(check_dns1123_label("a-").is_err());
        assert!(check_dns1123_label("A").is_err());
        assert!(check_dns1123_label(&"a".repeat(64)).is_err());
        assert!(check_dns1123_label(&"a".repeat(63)).is_ok());
    }

    #[test]
    fn triggers_are_checked() {
        let mut wf: Workflow = serde_yaml::from_str(SEED).unwrap();
        wf.spec.triggers[0].kind.clear();
        wf.spec.triggers[0].on_add_or_update = false;
        wf.spec.triggers[0].on_delete = false;
        let invalid = check(&wf.spec, &Limits::default()).err().unwrap();
        assert_eq!(
            invalid.to_string(),
            "spec.triggers[0].kind: must name the kind, for example ConfigMap\n\
             spec.triggers[0].onAddOrUpdate: the trigger fires on nothing: set onAddOrUpdate or onDelete"
        );
    }

    #[test]
    fn self_feeding_triggers_are_refused() {
        let mut wf: Workflow = serde_yaml::from_str(SEED).unwrap();
        let refused = [
            ("kube.ci/v1alpha1", "Workplan", "Workplan is kubeci's own kind"),
            ("kube.ci/v1alpha1", "Workflow", "Workflow is kubeci's own kind"),
            ("kube.ci/v1alpha1", "RequestState", "RequestState is kubeci's own kind"),
            ("coordination.k8s.io/v1", "Lease", "Lease is written by kubeci's leader election"),
            ("v1", "Event", "Event is written by kubeci for every run"),
            ("events.k8s.io/v1", "Event", "Event is written by kubeci for every run"),
        ];
        for (api_version, kind, why) in refused {
            wf.spec.triggers[0].api_version = api_version.into();
            wf.spec.triggers[0].kind = kind.into();
            let invalid = check(&wf.spec, &Limits::default()).err().expect(kind);
            assert_eq!(
                invalid.to_string(),
                format!("spec.triggers[0].kind: {why}: a trigger on it would fire on kubeci's own writes")
            );
        }
        for (api_version, kind) in
            [("v1", "ConfigMap"), ("apps/v1", "Deployment"), ("example.com/v1", "Lease")]
        {
            wf.spec.triggers[0].api_version = api_version.into();
            wf.spec.triggers[0].kind = kind.into();
            assert!(check(&wf.spec, &Limits::default()).is_ok(), "{api_version} {kind}");
        }
    }
}
