//! Properties of the hand-off protocol (DESIGN.md §5) with retries, over random interleavings of
//! the workplan-operator and three workers on one RequestState kept as the API server keeps it:
//! every write is guarded by the resourceVersion it was read at, readers act on stale copies,
//! workers die (their Lease expires) and dead workers still try to report.
//!
//! Whatever the interleaving: a transition and its history entry are one write; each request of
//! a job is claimed by one worker at most; only the claimant reports; a lost worker's job is
//! requested again; a task is tried at most `limit + 1` times and retried only while it has
//! attempts left; and a fair continuation always finishes the run with the phase the outcomes
//! call for.

use std::collections::BTreeMap;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;
use shared_types::pod::TaskRetries;
use shared_types::protocol::{self, Job, Next, Policy};
use shared_types::{JobState, Phase, RequestState, RequestStateSpec};

/// The RequestState as stored, with its resourceVersion.
struct Store {
    object: Option<RequestState>,
    version: u64,
    /// Length of the history at the last write, to check each write adds one entry.
    entries: usize,
}

impl Store {
    fn read(&self) -> Option<(RequestState, u64)> {
        self.object.clone().map(|o| (o, self.version))
    }

    /// An update guarded by the version it was read at: false (409) when someone wrote since.
    fn write(&mut self, next: RequestState, read_at: u64) -> bool {
        if self.object.is_some() && read_at != self.version {
            return false;
        }
        let entries = next.status.as_ref().map_or(0, |s| s.history.len());
        assert_eq!(entries, self.entries + 1, "each write adds exactly one history entry");
        let last = next.status.as_ref().unwrap().history.last().unwrap();
        assert_eq!(
            (last.job, last.state, last.worker.as_ref()),
            (next.spec.job, next.spec.state, next.spec.worker.as_ref()),
            "the history entry is the transition written with it"
        );
        self.entries = entries;
        self.object = Some(next);
        self.version += 1;
        true
    }
}

#[derive(Clone, Debug)]
struct Scenario {
    /// Per task: its retry limit.
    limits: Vec<u32>,
    /// Whether attempt `a` (0-based) of task `t` fails: `fails[t][a]`.
    fails: Vec<Vec<bool>>,
    /// The interleaving: (actor, action) pairs.
    ops: Vec<(usize, u8)>,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (1usize..4)
        .prop_flat_map(|tasks| {
            (
                proptest::collection::vec(0u32..3, tasks),
                proptest::collection::vec(proptest::collection::vec(any::<bool>(), 4), tasks),
                proptest::collection::vec((0usize..4, 0u8..5), 0..250),
            )
        })
        .prop_map(|(limits, fails, ops)| Scenario { limits, fails, ops })
}

fn at(second: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap().checked_add(SignedDuration::from_secs(second)).unwrap()
}

/// A new RequestState requesting task-0, as the operator creates it.
fn requested(now: Timestamp) -> RequestState {
    let spec = RequestStateSpec {
        request_uid: "uid".into(),
        job: Job::Task(0),
        state: JobState::Requested,
        worker: None,
    };
    protocol::request(&RequestState::new("wp", spec), Job::Task(0), None, now)
}

/// A worker's view: the copy it last read, and whether its Lease expired.
#[derive(Default, Clone)]
struct Worker {
    seen: Option<(RequestState, u64)>,
    dead: bool,
}

struct World {
    policy: Policy,
    fails: Vec<Vec<bool>>,
    store: Store,
    workers: Vec<Worker>,
    clock: i64,
    finished: Option<(Phase, String)>,
}

impl World {
    fn new(s: &Scenario) -> World {
        let policy = Policy {
            retries: s.limits.iter().map(|&limit| TaskRetries { limit, backoff_seconds: 5 }).collect(),
        };
        World {
            policy,
            fails: s.fails.clone(),
            store: Store { object: None, version: 0, entries: 0 },
            workers: vec![Worker::default(); 4],
            clock: 0,
            finished: None,
        }
    }

    fn names(w: usize) -> String {
        format!("w{w}")
    }

    /// The operator's reconciliation on a fresh read (its cache may lag, but a stale write fails
    /// its precondition the same way).
    fn operator(&mut self) {
        if self.finished.is_some() {
            return;
        }
        let now = at(self.clock);
        let current = self.store.read();
        let dead: Vec<String> =
            self.workers.iter().enumerate().filter(|(_, w)| w.dead).map(|(i, _)| Self::names(i)).collect();
        let alive = |w: &str| !dead.iter().any(|d| d == w);
        let next = protocol::next(&self.policy, current.as_ref().map(|(r, _)| r), alive, now).unwrap();
        match (next, current) {
            (Next::Create, None) => {
                assert!(self.store.write(requested(now), 0));
            }
            (Next::Request { job, message }, Some((rqs, version))) => {
                if let Some(message) = &message {
                    // Only a started job whose claimant is dead is requested again.
                    assert!(message.contains("lost"), "{message}");
                    assert_eq!(rqs.spec.state, JobState::Started);
                    assert!(!alive(rqs.spec.worker.as_deref().unwrap()));
                }
                self.store.write(protocol::request(&rqs, job, message, now), version);
            }
            (Next::Retry { job, message }, Some((rqs, version))) => {
                let Job::Task(i) = job else { panic!("only tasks are retried") };
                assert_eq!((rqs.spec.job, rqs.spec.state), (job, JobState::Failed));
                assert!(
                    protocol::attempt(&rqs) <= self.policy.retries[i].limit,
                    "a retry only with attempts left"
                );
                self.store.write(protocol::request(&rqs, job, Some(message), now), version);
            }
            (Next::Backoff { until, .. }, _) => assert!(until > now),
            (Next::Wait, _) => {}
            (Next::Finish { phase, reason }, _) => self.finished = Some((phase, reason)),
            (next, current) => panic!("{next:?} on {:?}", current.map(|c| c.0.spec)),
        }
    }

    fn observe(&mut self, w: usize) {
        self.workers[w].seen = self.store.read();
    }

    /// A claim from the worker's (possibly stale) copy.
    fn claim(&mut self, w: usize) {
        let Some((seen, version)) = self.workers[w].seen.clone() else { return };
        if self.workers[w].dead {
            return; // a dead worker claims nothing (it has no Lease)
        }
        if let Ok(claimed) = protocol::claim(&seen, &Self::names(w), at(self.clock))
            && self.store.write(claimed, version)
        {
            self.workers[w].seen = self.store.read();
        }
    }

    /// A report on a fresh read, as the worker makes it; dead workers report too.
    fn report(&mut self, w: usize) {
        let Some((current, version)) = self.store.read() else { return };
        let job = current.spec.job;
        let failed = match job {
            Job::Task(i) => self.fails[i][(protocol::attempt(&current) as usize - 1).min(3)],
            Job::Cleanup => false,
        };
        let state = if failed { JobState::Failed } else { JobState::Completed };
        let message = failed.then(|| format!("{job} attempt {} failed", protocol::attempt(&current)));
        match protocol::report(&current, &Self::names(w), state, Some("node-a"), message, at(self.clock)) {
            Ok(next) => {
                assert_eq!(
                    current.spec.worker.as_deref(),
                    Some(Self::names(w).as_str()),
                    "only the claimant reports"
                );
                self.store.write(next, version);
            }
            Err(_) => assert!(
                current.spec.state != JobState::Started || current.spec.worker != Some(Self::names(w)),
                "the claimant may report"
            ),
        }
    }

    fn step(&mut self, actor: usize, action: u8) {
        match (actor, action) {
            (0, _) => self.operator(),
            (w, 0) => self.observe(w),
            (w, 1) => self.claim(w),
            (w, 2) => self.report(w),
            (w, 3) if self.workers.iter().filter(|w| !w.dead).count() > 1 => self.workers[w].dead = true,
            (_, _) => self.clock += 3,
        }
    }
}

/// Each REQUESTED entry is claimed (STARTED) at most once before the next request, and every
/// report is by the worker that claimed.
fn check_history(rqs: &RequestState, limits: &[u32]) {
    let history = &rqs.status.as_ref().unwrap().history;
    let mut claimant: Option<Option<String>> = None; // None: not requested; Some(None): requested
    let mut failures: BTreeMap<Job, u32> = BTreeMap::new();
    for entry in history {
        match entry.state {
            JobState::Requested => claimant = Some(None),
            JobState::Started => {
                assert_eq!(claimant, Some(None), "one claim per request: {history:#?}");
                claimant = Some(entry.worker.clone());
            }
            JobState::Completed | JobState::Failed => {
                assert_eq!(claimant, Some(entry.worker.clone()), "the claimant reports: {history:#?}");
                claimant = None;
                if entry.state == JobState::Failed
                    && let Job::Task(i) = entry.job
                {
                    let n = failures.entry(entry.job).or_default();
                    *n += 1;
                    assert!(*n <= limits[i] + 1, "task-{i} tried more than limit + 1 times: {history:#?}");
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_interleaving_keeps_the_protocol(s in scenario()) {
        let mut world = World::new(&s);
        for &(actor, action) in &s.ops {
            world.step(actor, action);
            if let Some(rqs) = &world.store.object {
                check_history(rqs, &s.limits);
            }
        }
        // A fair continuation: the workers finish what they hold (the dead ones' jobs are
        // requested again), a fresh worker takes the rest, the operator and the clock go on.
        world.workers.push(Worker::default());
        let fresh = world.workers.len() - 1;
        for _ in 0..400 {
            if world.finished.is_some() {
                break;
            }
            world.operator();
            for w in 0..world.workers.len() {
                world.report(w);
            }
            world.observe(fresh);
            world.claim(fresh);
            world.clock += 30;
        }
        let (phase, reason) = world.finished.clone().expect("a fair continuation finishes the run");
        let rqs = world.store.object.clone().unwrap();
        check_history(&rqs, &s.limits);

        // The outcome the attempts call for: the first task whose every allowed attempt failed
        // fails the run, naming each attempt; otherwise every task completed.
        let failing = (0..s.limits.len()).find(|&t| (0..=s.limits[t] as usize).all(|a| s.fails[t][a.min(3)]));
        let history = &rqs.status.as_ref().unwrap().history;
        match failing {
            Some(t) => {
                prop_assert_eq!(phase, Phase::Failed);
                let attempts = s.limits[t] + 1;
                if attempts == 1 {
                    prop_assert_eq!(reason, format!("task-{t} failed: task-{t} attempt 1 failed"));
                } else {
                    let expected = (1..=attempts).map(|a| format!("attempt {a}: task-{t} attempt {a} failed")).collect::<Vec<_>>().join("; ");
                    prop_assert_eq!(reason, format!("task-{t} failed after {attempts} attempts: {expected}"));
                }
                prop_assert!(!history.iter().any(|e| e.job == Job::Task(t + 1)), "no later task starts");
            }
            None => {
                prop_assert_eq!(phase, Phase::Completed);
                for t in 0..s.limits.len() {
                    let completed = history.iter().filter(|e| e.job == Job::Task(t) && e.state == JobState::Completed).count();
                    prop_assert_eq!(completed, 1, "task-{} completed once", t);
                }
            }
        }
        prop_assert!(history.iter().any(|e| e.job == Job::Cleanup && e.state == JobState::Completed), "cleanup ran");
    }
}

#[test]
fn a_lost_workers_job_is_requested_again_and_stays_the_same_attempt() {
    let policy = Policy { retries: vec![TaskRetries { limit: 1, backoff_seconds: 10 }] };
    let rqs = requested(at(0));
    let started = protocol::claim(&rqs, "w1", at(1)).unwrap();
    let failed =
        protocol::report(&started, "w1", JobState::Failed, None, Some("boom".into()), at(2)).unwrap();
    assert_eq!(protocol::attempt(&failed), 1);
    match protocol::next(&policy, Some(&failed), |_| true, at(5)).unwrap() {
        Next::Backoff { until, reason, .. } => {
            assert_eq!(until, at(12));
            assert_eq!(reason, format!("task-0 attempt 1 of 2 failed: boom; attempt 2 at {}", at(12)));
        }
        other => panic!("{other:?}"),
    }
    let Next::Retry { message, .. } = protocol::next(&policy, Some(&failed), |_| true, at(12)).unwrap()
    else {
        panic!("the backoff is over")
    };
    assert_eq!(message, "attempt 2 of 2, after attempt 1 failed: boom");
    let retried = protocol::request(&failed, Job::Task(0), Some(message), at(12));
    assert_eq!(protocol::attempt(&retried), 2);
    assert_eq!(protocol::failure(&retried), None, "a retried failure is not the run's");
    let claimed = protocol::claim(&retried, "w2", at(13)).unwrap();
    let Next::Request { message: Some(lost), .. } =
        protocol::next(&policy, Some(&claimed), |_| false, at(50)).unwrap()
    else {
        panic!("w2 is lost")
    };
    let again = protocol::request(&claimed, Job::Task(0), Some(lost), at(50));
    assert_eq!(protocol::attempt(&again), 2, "the same attempt: its pod is adopted");
}

#[test]
fn a_tasks_budget_is_its_largest_step_limit_with_that_steps_backoff() {
    let step = |limit: Option<i32>, backoff: Option<i64>| shared_types::Step {
        name: "s".into(),
        image: "alpine".into(),
        retries: limit.map(|limit| shared_types::Retries { limit, backoff_seconds: backoff }),
        ..Default::default()
    };
    let none = TaskRetries::of(&[step(None, None)]);
    assert_eq!(none.limit, 0);
    let task = [step(Some(1), Some(60)), step(Some(3), Some(2)), step(Some(3), None), step(None, None)];
    let retries = TaskRetries::of(&task);
    assert_eq!(retries, TaskRetries { limit: 3, backoff_seconds: 10 }, "the limit-3 steps' largest backoff");
    assert_eq!((1..=4).map(|n| retries.delay_seconds(n)).collect::<Vec<_>>(), [10, 20, 40, 80]);
    assert_eq!(TaskRetries { limit: 10, backoff_seconds: 500 }.delay_seconds(3), 600, "capped at 600 s");
    // A Workplan written past the planner cannot ask for more.
    let forged = TaskRetries::of(&[step(Some(1000), Some(-5))]);
    assert_eq!(forged, TaskRetries { limit: 10, backoff_seconds: 0 });
}
