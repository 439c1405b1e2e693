//! Properties of the planner (DESIGN.md §3) over random DAGs: every step planned exactly once,
//! every dependency finished before its dependant starts, deterministic output, the §3 rule itself
//! (against a small independent reimplementation), and complete problem reports for cycles and
//! unknown dependencies.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use proptest::prelude::*;
use proptest::sample::{Index, subsequence};
use shared_types::planner::{Limits, Problem, plan_steps};
use shared_types::{Step, Task, Workflow};

const SEED: &str = shared_types::repo::SEED_WORKFLOW;

/// A random graph of `n` steps: step `i` is named `s{i}` and depends on the steps `deps[i]`.
#[derive(Clone, Debug)]
struct Graph {
    deps: Vec<Vec<usize>>,
    /// Topological order the edges were drawn along: `topo[r]` is the step of rank `r`, and a
    /// step only depends on steps of lower rank (until back edges are added).
    topo: Vec<usize>,
    /// Declaration order: `order[k]` is the step declared `k`-th.
    order: Vec<usize>,
}

impl Graph {
    fn n(&self) -> usize {
        self.deps.len()
    }

    /// For each chain of ranks `c0 < c1 < … < ck`: makes each step of the chain depend on the one
    /// before it (where it does not yet) and the first depend on the last, closing a cycle.
    fn with_cycles(mut self, chains: &[Vec<usize>]) -> Self {
        for chain in chains {
            for pair in chain.windows(2) {
                let (dep, step) = (self.topo[pair[0]], self.topo[pair[1]]);
                if !self.deps[step].contains(&dep) {
                    self.deps[step].push(dep);
                }
            }
            let (first, last) = (self.topo[chain[0]], self.topo[chain[chain.len() - 1]]);
            self.deps[first].push(last);
        }
        self
    }

    /// The steps in declaration order.
    fn steps(&self) -> Vec<Step> {
        self.order
            .iter()
            .map(|&i| Step {
                name: format!("s{i}"),
                image: "alpine:3.20".into(),
                commands: vec!["sh".into()],
                args: vec!["-c".into(), format!("echo s{i}")],
                dependency: self.deps[i].iter().map(|d| format!("s{d}")).collect(),
                ..Step::default()
            })
            .collect()
    }
}

prop_compose! {
    /// A random DAG of `min..=max` steps: an edge for each pair of ranks with a probability of
    /// `density` percent (anything from no edges to a total order), dependency lists in random
    /// order, random declaration order.
    fn dag(min: usize, max: usize)(n in min..=max)(
        topo in Just((0..n).collect::<Vec<_>>()).prop_shuffle(),
        order in Just((0..n).collect::<Vec<_>>()).prop_shuffle(),
        density in prop_oneof![Just(0u32), 1u32..=10, 10u32..=40, 40u32..=100],
        rolls in prop::collection::vec(0u32..100, n * (n - 1) / 2),
        keys in prop::collection::vec(any::<u32>(), n),
    ) -> Graph {
        let n = topo.len();
        let mut deps = vec![Vec::new(); n];
        let mut roll = rolls.iter();
        for b in 0..n {
            for a in 0..b {
                if *roll.next().expect("one roll per pair") < density {
                    deps[topo[b]].push(topo[a]);
                }
            }
        }
        for list in &mut deps {
            list.sort_by_key(|&d| keys[d]);
        }
        Graph { deps, topo, order }
    }
}

/// A random DAG of at least two steps with 1 to 3 back edges, each closing a cycle through a
/// random chain of steps (of 2 up to all of them).
fn cyclic() -> impl Strategy<Value = Graph> {
    dag(2, 60).prop_flat_map(|graph| {
        let ranks: Vec<usize> = (0..graph.n()).collect();
        let chains = prop::collection::vec(subsequence(ranks, 2..=graph.n()), 1..=3);
        (Just(graph), chains).prop_map(|(graph, chains)| graph.with_cycles(&chains))
    })
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

/// Every step of the output, task by task, serial steps before parallel ones.
fn flattened(tasks: &[Task]) -> impl Iterator<Item = &Step> {
    tasks.iter().flat_map(|t| t.serial_steps.iter().chain(&t.parallel_steps))
}

/// Levels by repeated relaxation (independent of the planner's topological-order pass):
/// 0 without dependencies, else 1 + the highest level among the dependencies. `None` when the
/// relaxation does not settle, that is when the steps have a cycle.
fn levels(steps: &[Step]) -> Option<Vec<usize>> {
    let index: BTreeMap<&str, usize> = steps.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();
    let mut level = vec![0; steps.len()];
    for _ in 0..=steps.len() {
        let mut changed = false;
        for (i, step) in steps.iter().enumerate() {
            let new = step.dependency.iter().map(|d| level[index[d.as_str()]] + 1).max().unwrap_or(0);
            if new != level[i] {
                level[i] = new;
                changed = true;
            }
        }
        if !changed {
            return Some(level);
        }
    }
    None
}

/// DESIGN.md §3 written out plainly: walk the levels in order; a lone step on a level that is not
/// the last joins the pending serial list, any other level closes a task.
fn reference_plan(steps: &[Step]) -> Vec<Task> {
    let level = levels(steps).expect("a DAG");
    let depth = level.iter().max().map_or(0, |m| m + 1);
    let mut tasks = Vec::new();
    let mut serial = Vec::new();
    for l in 0..depth {
        let members: Vec<Step> =
            steps.iter().zip(&level).filter(|&(_, &sl)| sl == l).map(|(s, _)| s.clone()).collect();
        if members.len() == 1 && l + 1 < depth {
            serial.extend(members);
        } else {
            tasks.push(Task { serial_steps: std::mem::take(&mut serial), parallel_steps: members });
        }
    }
    tasks
}

#[derive(Clone, Copy, Debug)]
enum Slot {
    Serial(usize),
    Parallel,
}

/// Whether, under the execution model (tasks in order; within a task the serial steps in order,
/// then all parallel steps together), a step placed at `d` has finished before one at `s` starts.
fn finishes_before(d: (usize, Slot), s: (usize, Slot)) -> bool {
    match (d, s) {
        ((td, _), (ts, _)) if td != ts => td < ts,
        ((_, Slot::Serial(_)), (_, Slot::Parallel)) => true,
        ((_, Slot::Serial(a)), (_, Slot::Serial(b))) => a < b,
        ((_, Slot::Parallel), _) => false,
    }
}

fn placement(tasks: &[Task]) -> HashMap<&str, (usize, Slot)> {
    let mut at = HashMap::new();
    for (t, task) in tasks.iter().enumerate() {
        for (i, step) in task.serial_steps.iter().enumerate() {
            at.insert(step.name.as_str(), (t, Slot::Serial(i)));
        }
        for step in &task.parallel_steps {
            at.insert(step.name.as_str(), (t, Slot::Parallel));
        }
    }
    at
}

/// `reach[a]` holds every step `a` depends on, directly or not (names resolved; unknown names
/// ignored).
fn reachability(steps: &[Step]) -> Vec<BTreeSet<usize>> {
    let index: HashMap<&str, usize> = steps.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();
    let direct: Vec<Vec<usize>> = steps
        .iter()
        .map(|s| s.dependency.iter().filter_map(|d| index.get(d.as_str()).copied()).collect())
        .collect();
    (0..steps.len())
        .map(|start| {
            let mut seen = BTreeSet::new();
            let mut stack = direct[start].clone();
            while let Some(n) = stack.pop() {
                if seen.insert(n) {
                    stack.extend(&direct[n]);
                }
            }
            seen
        })
        .collect()
}

/// Number of strongly connected components of more than one step.
fn knots(steps: &[Step]) -> usize {
    let reach = reachability(steps);
    let components: BTreeSet<BTreeSet<usize>> = (0..steps.len())
        .filter(|&a| reach[a].contains(&a))
        .map(|a| reach[a].iter().copied().filter(|&b| reach[b].contains(&a)).collect())
        .collect();
    components.len()
}

/// Checks every `Problem::Cycle`: a real cycle of the input without a repeated step; the
/// cycles are disjoint and there is one per strongly connected component. Returns how many.
fn check_cycles(steps: &[Step], problems: &[Problem]) -> Result<usize, TestCaseError> {
    let depends_on: BTreeSet<(&str, &str)> =
        steps.iter().flat_map(|s| s.dependency.iter().map(|d| (s.name.as_str(), d.as_str()))).collect();
    let mut on_cycles = BTreeSet::new();
    let mut count = 0;
    for problem in problems {
        let Problem::Cycle { path } = problem else {
            continue;
        };
        count += 1;
        prop_assert!(path.len() >= 2, "cycle {path:?} is too short");
        let distinct: BTreeSet<&str> = path.iter().map(String::as_str).collect();
        prop_assert_eq!(distinct.len(), path.len(), "repeated step in {:?}", path);
        for (i, step) in path.iter().enumerate() {
            let next = &path[(i + 1) % path.len()];
            prop_assert!(
                depends_on.contains(&(step.as_str(), next.as_str())),
                "in cycle {:?}, {} does not depend on {}",
                path,
                step,
                next
            );
            prop_assert!(on_cycles.insert(step.clone()), "{} is on two reported cycles", step);
        }
    }
    prop_assert_eq!(count, knots(steps), "one cycle per knot of steps");
    Ok(count)
}

proptest! {
    #[test]
    fn every_step_appears_exactly_once(graph in dag(1, 60)) {
        let steps = graph.steps();
        let tasks = plan_steps(&steps, &Limits::default()).expect("a DAG plans");
        let mut planned: Vec<&str> = flattened(&tasks).map(|s| s.name.as_str()).collect();
        let mut declared: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
        planned.sort_unstable();
        declared.sort_unstable();
        prop_assert_eq!(planned, declared);
        // Full copies of the step specs, unchanged.
        let by_name: HashMap<&str, &Step> = steps.iter().map(|s| (s.name.as_str(), s)).collect();
        for step in flattened(&tasks) {
            prop_assert_eq!(step, by_name[step.name.as_str()]);
        }
    }

    #[test]
    fn every_task_has_a_parallel_step(graph in dag(1, 60)) {
        let tasks = plan_steps(&graph.steps(), &Limits::default()).expect("a DAG plans");
        prop_assert!(!tasks.is_empty());
        for (t, task) in tasks.iter().enumerate() {
            prop_assert!(!task.parallel_steps.is_empty(), "task {} has no parallel step", t);
        }
    }

    #[test]
    fn dependencies_finish_before_their_dependants_start(graph in dag(1, 60)) {
        let steps = graph.steps();
        let tasks = plan_steps(&steps, &Limits::default()).expect("a DAG plans");
        let at = placement(&tasks);
        for step in &steps {
            for dep in &step.dependency {
                let (d, s) = (at[dep.as_str()], at[step.name.as_str()]);
                prop_assert!(
                    finishes_before(d, s),
                    "{} (at {:?}) depends on {} (at {:?}) in {:?}",
                    step.name, s, dep, d, names(&tasks)
                );
            }
        }
    }

    #[test]
    fn output_is_deterministic(graph in dag(1, 60)) {
        let steps = graph.steps();
        // Each call builds its own HashMap with its own random hasher state.
        let first = plan_steps(&steps, &Limits::default()).expect("a DAG plans");
        let second = plan_steps(&steps.clone(), &Limits::default()).expect("a DAG plans");
        prop_assert_eq!(&first, &second);
        // The order within a step's dependency list does not matter either.
        let mut reversed = steps.clone();
        for step in &mut reversed {
            step.dependency.reverse();
        }
        let third = plan_steps(&reversed, &Limits::default()).expect("a DAG plans");
        prop_assert_eq!(names(&first), names(&third));
    }

    #[test]
    fn steps_keep_level_order_then_declaration_order(graph in dag(1, 60)) {
        let steps = graph.steps();
        let tasks = plan_steps(&steps, &Limits::default()).expect("a DAG plans");
        let level = levels(&steps).expect("a DAG");
        let declared: HashMap<&str, usize> =
            steps.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();
        let keys: Vec<(usize, usize)> = flattened(&tasks)
            .map(|s| {
                let i = declared[s.name.as_str()];
                (level[i], i)
            })
            .collect();
        prop_assert!(
            keys.windows(2).all(|w| w[0] < w[1]),
            "not in (level, declaration) order: {:?}",
            keys
        );
        // So each task's parallel steps (one level) are in declaration order.
        for task in &tasks {
            let at: Vec<usize> =
                task.parallel_steps.iter().map(|s| declared[s.name.as_str()]).collect();
            prop_assert!(at.windows(2).all(|w| w[0] < w[1]), "{:?}", at);
        }
    }

    #[test]
    fn plan_follows_the_design_rule(graph in dag(1, 60)) {
        let steps = graph.steps();
        let tasks = plan_steps(&steps, &Limits::default()).expect("a DAG plans");
        let expected = reference_plan(&steps);
        prop_assert_eq!(names(&tasks), names(&expected));
        prop_assert_eq!(tasks, expected);
    }

    #[test]
    fn cycles_are_reported_as_real_cycles(graph in cyclic()) {
        let steps = graph.steps();
        let invalid = plan_steps(&steps, &Limits::default()).expect_err("a cycle is refused");
        for problem in &invalid.problems {
            prop_assert!(matches!(problem, Problem::Cycle { .. }), "unexpected {:?}", problem);
        }
        let count = check_cycles(&steps, &invalid.problems)?;
        prop_assert!(count >= 1);
    }

    #[test]
    fn unknown_dependencies_are_all_reported(
        (graph, chains, unknowns) in dag(2, 60).prop_flat_map(|graph| {
            let ranks: Vec<usize> = (0..graph.n()).collect();
            (
                Just(graph),
                prop::collection::vec(subsequence(ranks, 2..=2), 0..=1),
                // (step, position in its dependency list, which of three missing names)
                prop::collection::vec((any::<Index>(), any::<Index>(), 0usize..3), 1..=8),
            )
        })
    ) {
        let graph = graph.with_cycles(&chains);
        let mut steps = graph.steps();
        for &(step, position, name) in &unknowns {
            let list = &mut steps[step.index(graph.n())].dependency;
            list.insert(position.index(list.len() + 1), format!("missing-{name}"));
        }
        let invalid = plan_steps(&steps, &Limits::default()).expect_err("unknown dependencies");

        // In the order of the fields: step by step, dependency by dependency.
        let expected: Vec<Problem> = steps
            .iter()
            .enumerate()
            .flat_map(|(index, step)| {
                step.dependency
                    .iter()
                    .filter(|d| d.starts_with("missing-"))
                    .map(move |d| Problem::UnknownDependency {
                        index,
                        step: step.name.clone(),
                        dependency: d.clone(),
                    })
            })
            .collect();
        prop_assert_eq!(expected.len(), unknowns.len());
        let reported: Vec<Problem> = invalid
            .problems
            .iter()
            .filter(|p| matches!(p, Problem::UnknownDependency { .. }))
            .cloned()
            .collect();
        prop_assert_eq!(reported, expected);

        // The cycle, when there is one, is reported in the same run; nothing else is.
        let cycles = check_cycles(&steps, &invalid.problems)?;
        prop_assert_eq!(cycles, chains.len());
        prop_assert_eq!(invalid.problems.len(), unknowns.len() + cycles);
    }
}

fn step(name: &str, deps: &[&str]) -> Step {
    Step {
        name: name.into(),
        image: "alpine".into(),
        dependency: deps.iter().map(|d| d.to_string()).collect(),
        ..Step::default()
    }
}

/// The reference implementation itself gives DESIGN.md §3's examples.
#[test]
fn reference_plan_gives_the_design_examples() {
    let seed: Workflow = serde_yaml::from_str(SEED).expect("the seed deserializes");
    assert_eq!(
        names(&reference_plan(&seed.spec.steps)),
        vec![(vec!["step-1"], vec!["step-2", "step-3"]), (vec!["step-4"], vec!["step-5"]),]
    );
    let chain = [step("a", &[]), step("b", &["a"]), step("c", &["b"])];
    assert_eq!(names(&reference_plan(&chain)), vec![(vec!["a", "b"], vec!["c"])]);
    let plan = plan_steps(&seed.spec.steps, &Limits::default()).expect("the seed plans");
    assert_eq!(plan, reference_plan(&seed.spec.steps));
}

/// A lone step on a middle level waits in the serial list while the level after it has several
/// steps; a lone last level is a task of its own.
#[test]
fn serial_steps_carry_over_to_the_next_wide_level() {
    let steps = [
        step("fetch", &[]),
        step("build", &["fetch"]),
        step("test-a", &["build"]),
        step("test-b", &["build"]),
        step("lint", &["fetch"]),
        step("publish", &["test-a", "test-b", "lint"]),
    ];
    let tasks = plan_steps(&steps, &Limits::default()).expect("a DAG plans");
    assert_eq!(
        names(&tasks),
        vec![
            (vec!["fetch"], vec!["build", "lint"]),
            (vec![], vec!["test-a", "test-b"]),
            (vec![], vec!["publish"]),
        ]
    );
    assert_eq!(tasks, reference_plan(&steps));
}

/// A cycle declared out of order is still named step by step, each depending on the next.
#[test]
fn cycle_declared_out_of_order() {
    let steps = [step("c", &["a"]), step("ok", &[]), step("a", &["b", "ok"]), step("b", &["c"])];
    let invalid = plan_steps(&steps, &Limits::default()).expect_err("a cycle");
    assert_eq!(invalid.problems, vec![Problem::Cycle { path: vec!["c".into(), "a".into(), "b".into()] }]);
}

/// Unknown dependencies and a cycle together: all in one report.
#[test]
fn every_problem_in_one_report() {
    let steps = [step("a", &["b", "ghost"]), step("b", &["a"]), step("c", &["phantom", "a"])];
    let invalid = plan_steps(&steps, &Limits::default()).expect_err("invalid");
    assert_eq!(
        invalid.problems,
        vec![
            Problem::UnknownDependency { index: 0, step: "a".into(), dependency: "ghost".into() },
            Problem::UnknownDependency { index: 2, step: "c".into(), dependency: "phantom".into() },
            Problem::Cycle { path: vec!["a".into(), "b".into()] },
        ]
    );
}
