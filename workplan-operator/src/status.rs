//! The Workplan status the operator derives from the RequestState: pure, so that a restarted
//! operator computes the same status from the same objects.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use shared_types::protocol;
use shared_types::{Phase, RequestState, Workplan, WorkplanStatus};

/// The status of `workplan` given its RequestState and, once cleanup was attempted, the final
/// phase and reason.
pub fn derive(
    workplan: &Workplan,
    request: Option<&RequestState>,
    finish: Option<(Phase, String)>,
    now: Timestamp,
) -> WorkplanStatus {
    let previous = workplan.status.clone().unwrap_or_default();
    let tasks = workplan.spec.tasks.len();
    let history = request.and_then(|r| r.status.as_ref()).map(|s| s.history.as_slice()).unwrap_or_default();

    // The task being run: the current job, or for the cleanup the last task that ran.
    let task_index = history.iter().rev().find_map(|e| e.job.task());
    let (phase, reason) = match (&finish, request) {
        (Some((phase, reason)), _) => (*phase, Some(reason.clone())),
        (None, None) => (Phase::Pending, None),
        (None, Some(request)) => {
            (Phase::Running, protocol::failure(request).map(|f| format!("{f}; cleaning up")))
        }
    };
    let start_time = previous.start_time.clone().or_else(|| history.first().map(|e| e.timestamp.clone()));
    let completion_time = phase.is_finished().then(|| previous.completion_time.clone().unwrap_or(Time(now)));
    let duration = match (&start_time, &completion_time) {
        (Some(start), Some(end)) => Some(human(end.0.duration_since(start.0))),
        _ => None,
    };
    let progress = match (phase, task_index) {
        (Phase::Completed, _) => format!("{tasks}/{tasks}"),
        (_, Some(i)) => format!("{}/{tasks}", i + 1),
        (_, None) => format!("0/{tasks}"),
    };
    WorkplanStatus {
        phase: Some(phase),
        reason,
        task_index: task_index.map(|i| i as i32),
        progress: Some(progress),
        node_name: request.and_then(protocol::node).or(previous.node_name.clone()),
        start_time,
        completion_time: completion_time.clone(),
        duration,
        observed_generation: workplan.metadata.generation,
        conditions: vec![finished_condition(&previous.conditions, phase, completion_time, now)],
    }
}

/// `Finished`: False while the Workplan runs, True (reason Completed, Failed or Cancelled) once it
/// is final.
fn finished_condition(
    previous: &[Condition],
    phase: Phase,
    completed: Option<Time>,
    now: Timestamp,
) -> Condition {
    let (status, reason) = match phase {
        Phase::Pending => ("False", "Pending"),
        Phase::Running => ("False", "Running"),
        Phase::Completed => ("True", "Completed"),
        Phase::Failed => ("True", "Failed"),
        Phase::Cancelled => ("True", "Cancelled"),
    };
    let since = previous
        .iter()
        .find(|c| c.type_ == "Finished" && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .or(completed)
        .unwrap_or(Time(now));
    Condition {
        type_: "Finished".into(),
        status: status.into(),
        reason: reason.into(),
        message: String::new(),
        last_transition_time: since,
        observed_generation: None,
    }
}

/// `1h2m3s`, `4m5s`, `6s`.
pub fn human(duration: SignedDuration) -> String {
    let total = duration.as_secs().max(0);
    let (h, m, s) = (total / 3600, total % 3600 / 60, total % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;
    use shared_types::planner;
    use shared_types::protocol::{claim, report, request};
    use shared_types::{Job, JobState, RequestStateSpec, TriggerEvent, Workflow};

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + second).unwrap()
    }

    fn seed_workplan() -> Workplan {
        let wf: Workflow = serde_yaml::from_str(shared_types::repo::SEED_WORKFLOW).unwrap();
        planner::plan(&wf, TriggerEvent::manual(None)).unwrap()
    }

    fn requested() -> RequestState {
        let fresh = RequestState::new(
            "wp",
            RequestStateSpec {
                request_uid: "u".into(),
                job: Job::Task(0),
                state: JobState::Requested,
                worker: None,
            },
        );
        request(&fresh, Job::Task(0), None, at(0))
    }

    #[test]
    fn pending_running_completed() {
        let wp = seed_workplan();
        let pending = derive(&wp, None, None, at(0));
        assert_eq!((pending.phase, pending.progress.as_deref()), (Some(Phase::Pending), Some("0/2")));

        let rqs = claim(&requested(), "w1", at(1)).unwrap();
        let running = derive(&wp, Some(&rqs), None, at(1));
        assert_eq!(
            (running.phase, running.task_index, running.progress.as_deref()),
            (Some(Phase::Running), Some(0), Some("1/2"))
        );
        assert_eq!(running.start_time, Some(Time(at(0))));

        let rqs = report(&rqs, "w1", JobState::Completed, Some("node-a"), None, at(2)).unwrap();
        let rqs = request(&rqs, Job::Task(1), None, at(3));
        let mut wp = wp;
        wp.status = Some(derive(&wp, Some(&rqs), None, at(3)));
        let status = wp.status.clone().unwrap();
        assert_eq!(
            (status.task_index, status.progress.as_deref(), status.node_name.as_deref()),
            (Some(1), Some("2/2"), Some("node-a"))
        );

        let done = derive(&wp, Some(&rqs), Some((Phase::Completed, "all 2 tasks succeeded".into())), at(83));
        assert_eq!(done.phase, Some(Phase::Completed));
        assert_eq!(done.completion_time, Some(Time(at(83))));
        assert_eq!(done.duration.as_deref(), Some("1m23s"));
        assert_eq!(
            (done.conditions[0].status.as_str(), done.conditions[0].reason.as_str()),
            ("True", "Completed")
        );
    }

    #[test]
    fn durations_read_like_kubectl() {
        assert_eq!(human(SignedDuration::from_secs(5)), "5s");
        assert_eq!(human(SignedDuration::from_secs(65)), "1m5s");
        assert_eq!(human(SignedDuration::from_secs(3723)), "1h2m3s");
    }
}
