//! `graph`: a Workflow's DAG and how the planner grouped it into tasks, as text, DOT or SVG.
//!
//! Everything here is pure: a [`Graph`] is built from a Workflow and the Workplan the planner
//! made of it, and each renderer turns it into a string. The SVG is drawn by a small layered
//! layout of our own (columns by dependency depth), so no graphviz is needed.

use std::collections::HashMap;
use std::fmt::Write;

use clap::ValueEnum;
use shared_types::{Workflow, Workplan};

/// Output formats of `graph`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum GraphOutput {
    Text,
    Dot,
    Svg,
}

/// Whether a step runs alone before the task's others (an init container) or together with the
/// task's other parallel steps (a container).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Serial,
    Parallel,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Serial => "serial",
            Mode::Parallel => "parallel",
        }
    }
}

/// One step: its task, its mode, its dependencies and its depth in the DAG.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub task: usize,
    pub mode: Mode,
    pub dependencies: Vec<String>,
    /// 0 without dependencies, else one more than its deepest dependency (the planner's level).
    pub level: usize,
}

/// A planned Workflow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Graph {
    pub workflow: String,
    /// Steps in task order: each task's serial steps, then its parallel steps.
    pub nodes: Vec<Node>,
    pub tasks: usize,
}

impl Graph {
    /// The graph of `workflow` as planned into `workplan` (the planner has validated it: every
    /// dependency names a step and there is no cycle).
    pub fn new(workflow: &Workflow, workplan: &Workplan) -> Graph {
        // The Workplan holds full copies of the Workflow's steps, dependencies included.
        Graph { workflow: workflow.metadata.name.clone().unwrap_or_default(), ..Graph::of_workplan(workplan) }
    }

    /// The graph of a Workplan alone (its Workflow may have changed or be gone since): the
    /// steps carry their dependencies. A Workplan the API server accepted but whose dependencies
    /// name no step or loop is still drawn: unknown dependencies are ignored, a loop is cut.
    pub fn of_workplan(workplan: &Workplan) -> Graph {
        let steps = workplan.spec.tasks.iter().flat_map(|t| t.serial_steps.iter().chain(&t.parallel_steps));
        let dependencies: HashMap<&str, &[String]> =
            steps.map(|s| (s.name.as_str(), s.dependency.as_slice())).collect();
        let levels = levels(&dependencies);
        let mut nodes = Vec::new();
        for (task, t) in workplan.spec.tasks.iter().enumerate() {
            let steps = t
                .serial_steps
                .iter()
                .map(|s| (s, Mode::Serial))
                .chain(t.parallel_steps.iter().map(|s| (s, Mode::Parallel)));
            for (step, mode) in steps {
                nodes.push(Node {
                    name: step.name.clone(),
                    task,
                    mode,
                    dependencies: step.dependency.clone(),
                    level: levels.get(step.name.as_str()).copied().unwrap_or(0),
                });
            }
        }
        Graph { workflow: workplan.spec.workflow.clone(), nodes, tasks: workplan.spec.tasks.len() }
    }

    fn task_nodes(&self, task: usize) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(move |n| n.task == task)
    }

    /// Renders in `output`.
    pub fn render(&self, output: GraphOutput) -> String {
        match output {
            GraphOutput::Text => self.text(),
            GraphOutput::Dot => self.dot(),
            GraphOutput::Svg => self.svg(),
        }
    }

    /// Tasks in order, each with its serial steps and its parallel steps, every step with what it
    /// waits for.
    pub fn text(&self) -> String {
        let mut out = format!(
            "Workflow {}: {} steps in {} {} (one pod each)\n",
            self.workflow,
            self.nodes.len(),
            self.tasks,
            if self.tasks == 1 { "task" } else { "tasks" }
        );
        let width = self.nodes.iter().map(|n| n.name.len()).max().unwrap_or(0);
        for task in 0..self.tasks {
            let _ = writeln!(out, "task-{task}");
            for mode in [Mode::Serial, Mode::Parallel] {
                let label = format!("{}:", mode.as_str());
                for (i, node) in self.task_nodes(task).filter(|n| n.mode == mode).enumerate() {
                    let label = if i == 0 { label.as_str() } else { "" };
                    let after = if node.dependencies.is_empty() {
                        String::new()
                    } else {
                        format!("  ← {}", node.dependencies.join(", "))
                    };
                    let line = format!("  {label:<10}{:<width$}{after}", node.name);
                    let _ = writeln!(out, "{}", line.trim_end());
                }
            }
        }
        out
    }

    /// Graphviz: one cluster per task, an edge from each dependency to its dependant.
    pub fn dot(&self) -> String {
        let mut out = format!("digraph {} {{\n", quote(&self.workflow));
        out.push_str("  rankdir=LR;\n  node [shape=box, style=rounded];\n");
        for task in 0..self.tasks {
            let _ = writeln!(out, "  subgraph \"cluster_task_{task}\" {{");
            let _ = writeln!(out, "    label=\"task-{task}\";");
            for node in self.task_nodes(task) {
                let _ = writeln!(
                    out,
                    "    {} [label={}];",
                    quote(&node.name),
                    quote(&format!("{}\n{}", node.name, node.mode.as_str()))
                );
            }
            out.push_str("  }\n");
        }
        for node in &self.nodes {
            for dependency in &node.dependencies {
                let _ = writeln!(out, "  {} -> {};", quote(dependency), quote(&node.name));
            }
        }
        out.push_str("}\n");
        out
    }

    /// A standalone SVG: one column per level, the steps of a level stacked in task order, each
    /// task a shaded band behind its columns (a task's levels are consecutive), and an arrow
    /// from each dependency to its dependant.
    pub fn svg(&self) -> String {
        self.draw(None)
    }

    /// [`Graph::svg`] with each step's state (`Running`, `Failed`, ...): a colour, the state
    /// under the name, and `data-step` / `data-state` attributes a page can read. Steps missing
    /// from `states` are drawn without one.
    pub fn svg_with_states(&self, states: &HashMap<String, String>) -> String {
        self.draw(Some(states))
    }

    fn draw(&self, states: Option<&HashMap<String, String>>) -> String {
        const BOX_W: usize = 150;
        const BOX_H: usize = 44;
        const COL_GAP: usize = 70;
        const ROW_GAP: usize = 24;
        const MARGIN: usize = 30;
        const BAND_TOP: usize = 40; // room for the title and the task labels

        let depth = self.nodes.iter().map(|n| n.level + 1).max().unwrap_or(0);
        let mut rows: Vec<Vec<&Node>> = vec![Vec::new(); depth];
        for node in &self.nodes {
            rows[node.level].push(node);
        }
        let tallest = rows.iter().map(Vec::len).max().unwrap_or(0);
        let height_of = |n: usize| n * BOX_H + n.saturating_sub(1) * ROW_GAP;
        let inner = height_of(tallest);
        let width = 2 * MARGIN + depth * BOX_W + depth.saturating_sub(1) * COL_GAP;
        let height = BAND_TOP + 2 * MARGIN + inner;

        let column_x = |level: usize| MARGIN + level * (BOX_W + COL_GAP);
        let mut position: HashMap<&str, (usize, usize)> = HashMap::new();
        for (level, column) in rows.iter().enumerate() {
            let top = BAND_TOP + MARGIN + (inner - height_of(column.len())) / 2;
            for (row, node) in column.iter().enumerate() {
                position.insert(node.name.as_str(), (column_x(level), top + row * (BOX_H + ROW_GAP)));
            }
        }

        let mut out = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" font-family=\"sans-serif\" font-size=\"13\">\n"
        );
        let _ = writeln!(out, "  <title>Workflow {}</title>", escape(&self.workflow));
        out.push_str(concat!(
            "  <defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"8\" markerHeight=\"8\" orient=\"auto-start-reverse\">",
            "<path d=\"M 0 0 L 10 5 L 0 10 z\" fill=\"#555\"/></marker></defs>\n"
        ));
        let _ = writeln!(out, "  <rect width=\"{width}\" height=\"{height}\" fill=\"white\"/>");
        let _ = writeln!(
            out,
            "  <text x=\"{MARGIN}\" y=\"22\" font-weight=\"bold\">Workflow {}: {} steps in {} tasks</text>",
            escape(&self.workflow),
            self.nodes.len(),
            self.tasks
        );
        for task in 0..self.tasks {
            let levels: Vec<usize> = self.task_nodes(task).map(|n| n.level).collect();
            let (Some(&first), Some(&last)) = (levels.iter().min(), levels.iter().max()) else { continue };
            let x = column_x(first) - MARGIN / 2;
            let w = column_x(last) + BOX_W + MARGIN / 2 - x;
            let fill = if task % 2 == 0 { "#eef3fb" } else { "#f4f0fa" };
            let _ = writeln!(
                out,
                "  <g class=\"task\"><rect x=\"{x}\" y=\"{BAND_TOP}\" width=\"{w}\" height=\"{}\" rx=\"10\" fill=\"{fill}\" stroke=\"#b8c4d8\"/><text x=\"{}\" y=\"{}\" fill=\"#445\">task-{task}</text></g>",
                inner + 2 * MARGIN - 10,
                x + 8,
                BAND_TOP + 16
            );
        }
        for node in &self.nodes {
            let (x2, y2) = position[node.name.as_str()];
            for dependency in &node.dependencies {
                let Some(&(x1, y1)) = position.get(dependency.as_str()) else { continue };
                let (sx, sy, ex, ey) = (x1 + BOX_W, y1 + BOX_H / 2, x2, y2 + BOX_H / 2);
                // Signed: in a malformed Workplan an edge can point back to an earlier column.
                let bend = (ex as i64 - sx as i64) / 2;
                let _ = writeln!(
                    out,
                    "  <path class=\"edge\" d=\"M {sx} {sy} C {} {sy}, {} {ey}, {ex} {ey}\" fill=\"none\" stroke=\"#555\" marker-end=\"url(#arrow)\"/>",
                    sx as i64 + bend,
                    ex as i64 - bend
                );
            }
        }
        for node in &self.nodes {
            let (x, y) = position[node.name.as_str()];
            let dash = if node.mode == Mode::Serial { " stroke-dasharray=\"5 3\"" } else { "" };
            if let Some(states) = states {
                let state = states.get(&node.name).map(String::as_str).unwrap_or("Unknown");
                let (fill, stroke) = state_colours(state);
                let _ = writeln!(
                    out,
                    "  <g class=\"step\" id=\"step-{name}\" data-step=\"{name}\" data-state=\"{state}\"><rect x=\"{x}\" y=\"{y}\" width=\"{BOX_W}\" height=\"{BOX_H}\" rx=\"6\" fill=\"{fill}\" stroke=\"{stroke}\" stroke-width=\"2\"{dash}/><text x=\"{tx}\" y=\"{ty}\" text-anchor=\"middle\">{name}</text><text class=\"state\" x=\"{tx}\" y=\"{my}\" text-anchor=\"middle\" font-size=\"10\" fill=\"#333\">{mode} · {state}</text></g>",
                    name = escape(&node.name),
                    state = escape(state),
                    tx = x + BOX_W / 2,
                    ty = y + 19,
                    my = y + 34,
                    mode = node.mode.as_str(),
                );
                continue;
            }
            let _ = writeln!(
                out,
                "  <g class=\"step\" id=\"step-{name}\"><rect x=\"{x}\" y=\"{y}\" width=\"{BOX_W}\" height=\"{BOX_H}\" rx=\"6\" fill=\"white\" stroke=\"#333\"{dash}/><text x=\"{tx}\" y=\"{ty}\" text-anchor=\"middle\">{name}</text><text x=\"{tx}\" y=\"{my}\" text-anchor=\"middle\" font-size=\"10\" fill=\"#777\">{mode}</text></g>",
                name = escape(&node.name),
                tx = x + BOX_W / 2,
                ty = y + 19,
                my = y + 34,
                mode = node.mode.as_str(),
            );
        }
        out.push_str("</svg>\n");
        out
    }
}

/// Fill and outline of a step in `state`.
fn state_colours(state: &str) -> (&'static str, &'static str) {
    match state {
        "Succeeded" => ("#dff3e4", "#2e7d32"),
        "Running" => ("#e3f0ff", "#1565c0"),
        "Failed" => ("#fde2e1", "#c62828"),
        "Skipped" => ("#f1f1f1", "#9e9e9e"),
        _ => ("#ffffff", "#555555"),
    }
}

/// Each step's level: 0 without dependencies, else one more than its deepest dependency.
/// `dependencies` is acyclic and closed (the planner checked it).
pub fn levels<'a>(dependencies: &HashMap<&'a str, &'a [String]>) -> HashMap<&'a str, usize> {
    fn level<'a>(
        step: &'a str,
        dependencies: &HashMap<&'a str, &'a [String]>,
        memo: &mut HashMap<&'a str, usize>,
    ) -> usize {
        if let Some(&l) = memo.get(step) {
            return l;
        }
        // Provisional: a step met again while its own level is computed closes a loop, which
        // only a malformed Workplan can hold; cut it there instead of recursing forever.
        memo.insert(step, 0);
        let l = dependencies
            .get(step)
            .into_iter()
            .flat_map(|deps| deps.iter())
            .filter_map(|d| dependencies.get_key_value(d.as_str()).map(|(k, _)| *k))
            .map(|d| level(d, dependencies, memo) + 1)
            .max()
            .unwrap_or(0);
        memo.insert(step, l);
        l
    }
    let mut memo = HashMap::new();
    for step in dependencies.keys() {
        level(step, dependencies, &mut memo);
    }
    memo
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n"))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;
    use shared_types::{TriggerEvent, planner};

    fn seed() -> Graph {
        let workflow: Workflow = serde_yaml::from_str(shared_types::repo::SEED_WORKFLOW).unwrap();
        let workplan = planner::plan(&workflow, TriggerEvent::manual(None)).unwrap();
        Graph::new(&workflow, &workplan)
    }

    #[test]
    fn the_seed_is_five_steps_in_two_tasks() {
        let graph = seed();
        let summary: Vec<(&str, usize, Mode, usize)> =
            graph.nodes.iter().map(|n| (n.name.as_str(), n.task, n.mode, n.level)).collect();
        assert_eq!(
            summary,
            [
                ("step-1", 0, Mode::Serial, 0),
                ("step-2", 0, Mode::Parallel, 1),
                ("step-3", 0, Mode::Parallel, 1),
                ("step-4", 1, Mode::Serial, 2),
                ("step-5", 1, Mode::Parallel, 3),
            ]
        );
    }

    #[test]
    fn text_shows_tasks_modes_and_dependencies() {
        assert_eq!(
            seed().text(),
            "Workflow my-workflow: 5 steps in 2 tasks (one pod each)\n\
             task-0\n\
             \x20 serial:   step-1\n\
             \x20 parallel: step-2  ← step-1\n\
             \x20           step-3  ← step-1\n\
             task-1\n\
             \x20 serial:   step-4  ← step-2, step-3\n\
             \x20 parallel: step-5  ← step-1, step-4\n"
        );
    }

    #[test]
    fn dot_has_a_cluster_per_task_and_every_edge() {
        let dot = seed().dot();
        assert!(dot.starts_with("digraph \"my-workflow\" {\n"), "{dot}");
        assert!(dot.contains("subgraph \"cluster_task_0\" {\n    label=\"task-0\";\n    \"step-1\" [label=\"step-1\\nserial\"];"), "{dot}");
        assert!(dot.contains("subgraph \"cluster_task_1\""), "{dot}");
        let edges: Vec<&str> = dot.lines().filter(|l| l.contains("->")).map(str::trim).collect();
        assert_eq!(
            edges,
            [
                "\"step-1\" -> \"step-2\";",
                "\"step-1\" -> \"step-3\";",
                "\"step-2\" -> \"step-4\";",
                "\"step-3\" -> \"step-4\";",
                "\"step-1\" -> \"step-5\";",
                "\"step-4\" -> \"step-5\";",
            ]
        );
    }

    #[test]
    fn svg_is_well_formed_and_draws_every_step_task_and_edge() {
        let svg = seed().svg();
        let doc = roxmltree::Document::parse(&svg).expect("the SVG is well-formed XML");
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "svg");
        assert_eq!(root.tag_name().namespace(), Some("http://www.w3.org/2000/svg"));
        let texts: Vec<&str> =
            doc.descendants().filter(|n| n.has_tag_name("text")).filter_map(|n| n.text()).collect();
        for step in ["step-1", "step-2", "step-3", "step-4", "step-5", "task-0", "task-1"] {
            assert!(texts.contains(&step), "{step} is drawn: {texts:?}");
        }
        let class = |c: &str| doc.descendants().filter(|n| n.attribute("class") == Some(c)).count();
        assert_eq!((class("step"), class("task"), class("edge")), (5, 2, 6));
        // Columns by level: step-2 and step-3 share one, to the right of step-1's.
        let x = |step: &str| -> f64 {
            let group =
                doc.descendants().find(|n| n.attribute("id") == Some(&format!("step-{step}"))).unwrap();
            group.first_element_child().unwrap().attribute("x").unwrap().parse().unwrap()
        };
        assert_eq!(x("step-2"), x("step-3"));
        assert!(x("step-1") < x("step-2") && x("step-4") < x("step-5"));
    }

    #[test]
    fn a_run_is_drawn_with_each_steps_state_from_the_workplan_alone() {
        let workflow: Workflow = serde_yaml::from_str(shared_types::repo::SEED_WORKFLOW).unwrap();
        let workplan = planner::plan(&workflow, TriggerEvent::manual(None)).unwrap();
        let graph = Graph::of_workplan(&workplan);
        assert_eq!(graph, seed());
        let states: HashMap<String, String> =
            [("step-1", "Succeeded"), ("step-4", "Running")].map(|(a, b)| (a.into(), b.into())).into();
        let svg = graph.svg_with_states(&states);
        let doc = roxmltree::Document::parse(&svg).expect("well-formed");
        let drawn: Vec<(&str, &str)> = doc
            .descendants()
            .filter(|n| n.attribute("class") == Some("step"))
            .map(|n| (n.attribute("data-step").unwrap(), n.attribute("data-state").unwrap()))
            .collect();
        assert_eq!(
            drawn,
            [
                ("step-1", "Succeeded"),
                ("step-2", "Unknown"),
                ("step-3", "Unknown"),
                ("step-4", "Running"),
                ("step-5", "Unknown")
            ]
        );
        assert!(svg.contains(">serial · Running</text>"), "{svg}");
        // Without states, the plain drawing.
        assert!(!graph.svg().contains("data-state"));
    }

    #[test]
    fn a_dependency_loop_in_a_malformed_workplan_is_cut_not_followed_forever() {
        let workflow: Workflow = serde_yaml::from_str(shared_types::repo::SEED_WORKFLOW).unwrap();
        let mut workplan = planner::plan(&workflow, TriggerEvent::manual(None)).unwrap();
        workplan.spec.tasks[0].serial_steps[0].dependency = vec!["step-5".into(), "nowhere".into()];
        let graph = Graph::of_workplan(&workplan);
        assert_eq!(graph.nodes.len(), 5);
        assert!(roxmltree::Document::parse(&graph.svg()).is_ok());
    }

    #[test]
    fn names_are_escaped() {
        let mut graph = seed();
        graph.workflow = "a<b>&\"c\"".into();
        assert!(roxmltree::Document::parse(&graph.svg()).is_ok());
        assert!(graph.dot().starts_with("digraph \"a<b>&\\\"c\\\"\" {"));
    }
}
