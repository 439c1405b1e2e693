//! Runs decided but whose Workplan does not exist yet: one queue per Workflow, in the order the
//! events were decided (DESIGN.md §6, issue 13).
//!
//! A fired event stays in its Workflow's queue until its Workplan exists (created, or found
//! existing). Until then the trigger record saved for the event's object is what it was before
//! the event ([`committed_shard`]), so a director that dies with events pending decides them again from
//! the record and the objects as they are then. The pure parts live here: what the saved record
//! is, what the status shows ([`summary`]), and whether the Workflow's caps let the next run
//! start ([`gate`]); the engine in [`super`] does the I/O.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use prometheus::IntCounter;
use shared_types::trigger_record::shard_of;
use shared_types::workflow::PendingRuns;
use shared_types::{EventKind, Workflow, Workplan};

use super::decide::{Recorded, Shard, TriggerRecord};

/// Where a pending run comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// A trigger object's event; `previous` is what the record held for `uid` before it.
    Trigger { uid: Arc<str>, previous: Option<Recorded> },
    /// The Workflow's own run (its generation without triggers, or a manual run): the
    /// controller re-derives it from the Workflow's status, so nothing is recorded for it here.
    Own,
}

/// Counts one handled trigger watch event (`trigger_events_total`) when the last run it started
/// exists: each of its pending runs holds a clone of the `Arc`.
pub struct Handled(pub IntCounter);

impl Drop for Handled {
    fn drop(&mut self) {
        self.0.inc();
    }
}

/// One run waiting for its Workplan.
pub struct Pending {
    pub workplan: Workplan,
    pub event: EventKind,
    /// When the run was decided.
    pub since: Timestamp,
    pub source: Source,
    pub handled: Option<std::sync::Arc<Handled>>,
}

impl Pending {
    pub fn name(&self) -> String {
        self.workplan.name_any()
    }
}

/// Why the oldest pending run waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The API server refused the create; it is retried with back-off.
    CreateFailed,
    /// `spec.limits.runsPerMinute` runs started in the last 60 seconds.
    RateLimited,
    /// `spec.limits.concurrentRuns` Workplans are unfinished.
    ConcurrencyLimited,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::CreateFailed => "CreateFailed",
            Reason::RateLimited => "RateLimited",
            Reason::ConcurrencyLimited => "ConcurrencyLimited",
        }
    }
}

/// Shard `index` of the record to save while `pending` runs wait: the shard of `record` (the
/// engine's, which already holds every decided event) with each object that has a pending run
/// put back to what it was before its oldest pending run. Reads that one shard and the queue.
pub fn committed_shard<'a>(
    record: &TriggerRecord,
    index: u32,
    pending: impl IntoIterator<Item = &'a Pending>,
) -> Shard {
    let mut committed = record.shard(index).cloned().unwrap_or_default();
    let mut seen = BTreeSet::new();
    for run in pending {
        let Source::Trigger { uid, previous } = &run.source else { continue };
        if shard_of(uid) != index || !seen.insert(uid.clone()) {
            continue; // another shard's, or its oldest pending run decides
        }
        match previous {
            Some(previous) => committed.insert(uid.clone(), previous.clone()),
            None => committed.remove(uid),
        };
    }
    committed
}

/// What `status.pendingRuns` shows: nothing while the runs are only on their way (the happy
/// path writes no status for them), else the count and why the oldest waits.
pub fn summary<'a>(
    pending: impl ExactSizeIterator<Item = &'a Pending>,
    waiting: Option<&(Reason, String)>,
) -> Option<PendingRuns> {
    let count = pending.len();
    let (reason, message) = waiting?;
    let mut pending = pending;
    let oldest = pending.next()?;
    Some(PendingRuns {
        count: count as i32,
        oldest_since: Some(Time(oldest.since)),
        reason: Some(reason.as_str().to_string()),
        message: Some(message.clone()),
    })
}

/// A Workflow's caps: its `spec.limits`, else the director's defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    pub runs_per_minute: u32,
    pub concurrent_runs: u32,
}

impl Caps {
    pub fn of(workflow: &Workflow, defaults: Caps) -> Caps {
        let limits = workflow.spec.limits.clone().unwrap_or_default();
        let positive = |v: Option<i32>, default: u32| v.map_or(default, |v| v.max(1) as u32);
        Caps {
            runs_per_minute: positive(limits.runs_per_minute, defaults.runs_per_minute),
            concurrent_runs: positive(limits.concurrent_runs, defaults.concurrent_runs),
        }
    }
}

/// The window of `runsPerMinute`.
pub const RATE_WINDOW: Duration = Duration::from_secs(60);

/// Whether the next run may start now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gate {
    Open,
    /// Try again after this long.
    Rate(Duration),
    /// Try again when one of the Workflow's Workplans finishes.
    Concurrency,
}

/// Whether a Workflow with `unfinished` Workplans, which started runs at `starts` (oldest first),
/// may start another at `now`.
pub fn gate(caps: Caps, unfinished: usize, starts: &VecDeque<Instant>, now: Instant) -> Gate {
    if unfinished >= caps.concurrent_runs as usize {
        return Gate::Concurrency;
    }
    let recent: Vec<&Instant> = starts.iter().filter(|at| now.duration_since(**at) < RATE_WINDOW).collect();
    if recent.len() >= caps.runs_per_minute as usize {
        // The oldest start in the window leaves it first.
        let oldest = recent[recent.len() - caps.runs_per_minute as usize];
        return Gate::Rate(RATE_WINDOW.saturating_sub(now.duration_since(*oldest)));
    }
    Gate::Open
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;
    use shared_types::WorkplanSpec;

    fn object(rv: &str) -> Recorded {
        Recorded {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: Some("ns".into()),
            name: "cfg".into(),
            generation: None,
            resource_version: Some(rv.into()),
        }
    }

    fn pending(uid: &str, previous: Option<&str>) -> Pending {
        Pending {
            workplan: Workplan::new(
                &format!("wp-{uid}-{previous:?}"),
                WorkplanSpec {
                    workflow: "wf".into(),
                    trigger: serde_json::from_value(serde_json::json!({"event": "Updated"})).unwrap(),
                    tasks: Vec::new(),
                    run: Default::default(),
                },
            ),
            event: EventKind::Updated,
            since: Timestamp::from_second(100).unwrap(),
            source: Source::Trigger { uid: uid.into(), previous: previous.map(object) },
            handled: None,
        }
    }

    /// The whole record as saved: every shard's committed form.
    fn committed(record: &TriggerRecord, pending: &[Pending]) -> Shard {
        crate::triggers::decide::all_shards().flat_map(|i| committed_shard(record, i, pending)).collect()
    }

    fn record(objects: &[(&str, &str)]) -> TriggerRecord {
        let mut record = TriggerRecord::default();
        for (uid, rv) in objects {
            record.insert((*uid).into(), object(rv));
        }
        record
    }

    #[test]
    fn the_saved_record_holds_each_object_before_its_oldest_pending_run() {
        // a decided: 1 → 2 → 3, 2 and 3 pending; b added, pending; c: nothing pending.
        let record = record(&[("a", "3"), ("b", "9"), ("c", "5")]);
        let queue = [pending("a", Some("1")), pending("b", None), pending("a", Some("2"))];
        let saved = committed(&record, &queue);
        assert_eq!(saved.get("a"), Some(&object("1")));
        assert_eq!(saved.get("b"), None, "an added object is not recorded before its run exists");
        assert_eq!(saved.get("c"), Some(&object("5")));
        // Its first run exists: the record advances to the version that run was for.
        assert_eq!(committed(&record, &queue[1..]).get("a"), Some(&object("2")));
        let all: Shard = record.iter().map(|(uid, o)| (uid.clone(), o.clone())).collect();
        assert_eq!(committed(&record, &[]), all);
        // A shard's saved form reads only its own pending runs.
        let a = shard_of("a");
        assert_eq!(committed_shard(&record, a, &queue).get("a"), Some(&object("1")));
        if shard_of("c") != a {
            assert_eq!(committed_shard(&record, a, &queue).get("c"), None);
        }
    }

    #[test]
    fn a_deletion_keeps_the_object_recorded_until_its_run_exists() {
        let record = TriggerRecord::default(); // the deletion removed it
        let mut run = pending("a", Some("4"));
        run.event = EventKind::Deleted;
        assert_eq!(committed(&record, &[run]).get("a"), Some(&object("4")));
    }

    #[test]
    fn the_status_shows_pending_runs_only_when_something_holds_them() {
        let queue = [pending("a", None), pending("b", None)];
        assert_eq!(summary(queue.iter(), None), None, "on their way: nothing to show");
        let waiting = (Reason::CreateFailed, "exceeded quota".to_string());
        assert_eq!(
            summary(queue.iter(), Some(&waiting)),
            Some(PendingRuns {
                count: 2,
                oldest_since: Some(Time(Timestamp::from_second(100).unwrap())),
                reason: Some("CreateFailed".into()),
                message: Some("exceeded quota".into()),
            })
        );
        assert_eq!(summary([].iter(), Some(&waiting)), None);
    }

    #[test]
    fn caps_hold_runs_until_the_window_or_a_finish_allows() {
        let caps = Caps { runs_per_minute: 2, concurrent_runs: 3 };
        let now = Instant::now() + Duration::from_secs(120);
        let at = |ago: u64| now - Duration::from_secs(ago);
        assert_eq!(gate(caps, 0, &VecDeque::new(), now), Gate::Open);
        assert_eq!(gate(caps, 3, &VecDeque::new(), now), Gate::Concurrency);
        assert_eq!(
            gate(caps, 0, &VecDeque::from([at(50), at(10)]), now),
            Gate::Rate(Duration::from_secs(10))
        );
        assert_eq!(gate(caps, 0, &VecDeque::from([at(70), at(10)]), now), Gate::Open, "one left the window");
    }

    #[test]
    fn caps_come_from_the_workflow_else_the_defaults() {
        let defaults = Caps { runs_per_minute: 60, concurrent_runs: 10 };
        let mut wf: Workflow = serde_yaml::from_str(shared_types::repo::SEED_WORKFLOW).unwrap();
        assert_eq!(Caps::of(&wf, defaults), defaults);
        wf.spec.limits =
            Some(shared_types::workflow::RunLimits { runs_per_minute: None, concurrent_runs: Some(2) });
        assert_eq!(Caps::of(&wf, defaults), Caps { runs_per_minute: 60, concurrent_runs: 2 });
    }
}
