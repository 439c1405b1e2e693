//! The planner on random DAGs of 1,000 and 10,000 steps, against parsing the same Workflow from
//! YAML. Target: 10,000 steps planned in under 20 ms, and never slower than the parse.
//!
//! `cargo bench -p shared-types --bench planner`

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use shared_types::planner::{Limits, plan_steps};
use shared_types::{Step, Workflow, WorkflowSpec};

const SIZES: [usize; 2] = [1_000, 10_000];

/// xorshift64: a fixed seed gives the same DAG on every run, without a dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }
}

/// `n` steps, each depending on 0–3 distinct earlier steps, half of the time a recent one (the
/// shape of a pipeline: fetch, build, test, package…) and otherwise any earlier step.
fn workflow(n: usize) -> Workflow {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let steps = (0..n)
        .map(|i| {
            let mut dependency = Vec::new();
            if i > 0 {
                for _ in 0..rng.below(4) {
                    let dep = if rng.next().is_multiple_of(2) {
                        i - 1 - rng.below(i.min(16))
                    } else {
                        rng.below(i)
                    };
                    let dep = format!("step-{dep}");
                    if !dependency.contains(&dep) {
                        dependency.push(dep);
                    }
                }
            }
            Step {
                name: format!("step-{i}"),
                image: "alpine:3.20".into(),
                commands: vec!["sh".into()],
                args: vec!["-c".into(), format!("echo step-{i}; ls -la /kubeci > /kubeci/step-{i}.log")],
                dependency,
                ..Step::default()
            }
        })
        .collect();
    Workflow::new("bench", WorkflowSpec { steps, ..WorkflowSpec::default() })
}

fn planner(c: &mut Criterion) {
    let cases: Vec<(usize, Workflow, String)> = SIZES
        .iter()
        .map(|&n| {
            let wf = workflow(n);
            let yaml = serde_yaml::to_string(&wf).expect("a Workflow serializes");
            let parsed: Workflow = serde_yaml::from_str(&yaml).expect("its YAML parses");
            assert_eq!(parsed, wf, "the YAML holds the same Workflow");
            let tasks = plan_steps(&wf.spec.steps, &Limits::unlimited()).expect("a DAG plans");
            let serial: usize = tasks.iter().map(|t| t.serial_steps.len()).sum();
            eprintln!(
                "{n} steps: {} tasks, {serial} serial steps, {} bytes of YAML",
                tasks.len(),
                yaml.len()
            );
            (n, wf, yaml)
        })
        .collect();

    let mut group = c.benchmark_group("plan");
    for (n, wf, _) in &cases {
        group.throughput(Throughput::Elements(*n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &wf.spec.steps, |b, steps| {
            b.iter(|| plan_steps(black_box(steps), &Limits::unlimited()))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("parse_yaml");
    for (n, _, yaml) in &cases {
        group.throughput(Throughput::Elements(*n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), yaml, |b, yaml| {
            b.iter(|| serde_yaml::from_str::<Workflow>(black_box(yaml)))
        });
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(5))
}

criterion_group! {
    name = benches;
    config = config();
    targets = planner
}
criterion_main!(benches);
