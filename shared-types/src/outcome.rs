//! How a job ended, read from its pod (DESIGN.md §4): the worker reports COMPLETED when the pod
//! succeeded, and FAILED with a message naming the first failing step, its exit code and its
//! termination message.

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

/// Longest termination message kept in a history entry (the kubelet allows 4 KiB per container).
pub const MAX_MESSAGE: usize = 1024;

/// What a pod says about its job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodOutcome {
    /// Not finished. `problem` says why it may never start (unschedulable, image cannot be
    /// pulled): the worker decides how long to wait before failing the job.
    Pending { node: Option<String>, problem: Option<String> },
    /// Every step succeeded.
    Succeeded { node: Option<String> },
    /// A step failed, or the pod did.
    Failed { node: Option<String>, message: String },
}

/// Reads a pod's status.
pub fn pod_outcome(pod: &Pod) -> PodOutcome {
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    let Some(status) = pod.status.as_ref() else { return PodOutcome::Pending { node, problem: None } };
    // Init containers run first and in order, so the first failing init container is the first
    // failing step; regular containers follow in declaration order.
    let steps: Vec<&ContainerStatus> = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .collect();
    match status.phase.as_deref() {
        Some("Succeeded") => PodOutcome::Succeeded { node },
        Some("Failed") => {
            let message = steps.iter().find_map(|s| failed_step(s)).unwrap_or_else(|| {
                let reason = status.reason.as_deref().unwrap_or("Failed");
                match status.message.as_deref() {
                    Some(message) => format!("pod failed: {reason}: {message}"),
                    None => format!("pod failed: {reason}"),
                }
            });
            PodOutcome::Failed { node, message }
        }
        _ => {
            // With restartPolicy Never a failed step fails the pod; report it as soon as it shows.
            if let Some(message) = steps.iter().find_map(|s| failed_step(s)) {
                return PodOutcome::Failed { node, message };
            }
            let unschedulable = status.conditions.iter().flatten().find(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
            });
            let problem = unschedulable
                .map(|c| {
                    format!("pod cannot be scheduled: {}", c.message.as_deref().unwrap_or("no reason given"))
                })
                .or_else(|| steps.iter().find_map(|s| stuck_step(s)));
            PodOutcome::Pending { node, problem }
        }
    }
}

fn failed_step(status: &ContainerStatus) -> Option<String> {
    let terminated = status.state.as_ref().and_then(|s| s.terminated.as_ref())?;
    if terminated.exit_code == 0 {
        return None;
    }
    let detail = terminated
        .message
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .or(terminated.reason.as_deref())
        .unwrap_or("no termination message");
    Some(format!("step {:?} exited with code {}: {}", status.name, terminated.exit_code, cut(detail)))
}

/// Waiting reasons that do not resolve by themselves.
fn stuck_step(status: &ContainerStatus) -> Option<String> {
    let waiting = status.state.as_ref().and_then(|s| s.waiting.as_ref())?;
    let reason = waiting.reason.as_deref()?;
    matches!(
        reason,
        "ErrImagePull"
            | "ImagePullBackOff"
            | "InvalidImageName"
            | "CreateContainerConfigError"
            | "CreateContainerError"
    )
    .then(|| {
        format!(
            "step {:?} cannot start: {reason}: {}",
            status.name,
            cut(waiting.message.as_deref().unwrap_or(""))
        )
    })
}

fn cut(text: &str) -> String {
    match text.char_indices().nth(MAX_MESSAGE) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    fn pod(yaml: &str) -> Pod {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn succeeded() {
        let p = pod("metadata: {name: p}\nspec: {nodeName: n1, containers: []}\nstatus: {phase: Succeeded}");
        assert_eq!(pod_outcome(&p), PodOutcome::Succeeded { node: Some("n1".into()) });
    }

    #[test]
    fn the_first_failing_step_is_named_with_exit_code_and_message() {
        let p = pod(r#"
metadata: {name: p}
spec: {nodeName: n1, containers: []}
status:
  phase: Failed
  initContainerStatuses:
  - {name: step-1, image: a, imageID: "", ready: false, restartCount: 0, state: {terminated: {exitCode: 0, reason: Completed}}}
  - {name: step-4, image: a, imageID: "", ready: false, restartCount: 0, state: {terminated: {exitCode: 3, reason: Error, message: "disk full\n"}}}
  containerStatuses:
  - {name: step-5, image: a, imageID: "", ready: false, restartCount: 0, state: {terminated: {exitCode: 1, reason: Error}}}
"#);
        assert_eq!(
            pod_outcome(&p),
            PodOutcome::Failed {
                node: Some("n1".into()),
                message: "step \"step-4\" exited with code 3: disk full".into()
            }
        );
    }

    #[test]
    fn a_failed_step_shows_before_the_pod_phase_does() {
        let p = pod(r#"
metadata: {name: p}
spec: {containers: []}
status:
  phase: Running
  containerStatuses:
  - {name: lint, image: a, imageID: "", ready: false, restartCount: 0, state: {terminated: {exitCode: 137, reason: OOMKilled}}}
"#);
        assert_eq!(
            pod_outcome(&p),
            PodOutcome::Failed {
                node: None,
                message: "step \"lint\" exited with code 137: OOMKilled".into()
            }
        );
    }

    #[test]
    fn pod_level_failures_say_why() {
        let p = pod(
            "metadata: {name: p}\nspec: {containers: []}\nstatus: {phase: Failed, reason: DeadlineExceeded, message: Pod was active on the node longer than the specified deadline}",
        );
        assert_eq!(
            pod_outcome(&p),
            PodOutcome::Failed {
                node: None,
                message: "pod failed: DeadlineExceeded: Pod was active on the node longer than the specified deadline".into()
            }
        );
    }

    #[test]
    fn pending_pods_report_what_blocks_them() {
        let unschedulable = pod(r#"
metadata: {name: p}
spec: {containers: []}
status:
  phase: Pending
  conditions:
  - {type: PodScheduled, status: "False", reason: Unschedulable, message: "0/1 nodes are available: 1 Insufficient cpu."}
"#);
        assert_eq!(
            pod_outcome(&unschedulable),
            PodOutcome::Pending {
                node: None,
                problem: Some("pod cannot be scheduled: 0/1 nodes are available: 1 Insufficient cpu.".into())
            }
        );
        let image = pod(r#"
metadata: {name: p}
spec: {nodeName: n1, containers: []}
status:
  phase: Pending
  containerStatuses:
  - {name: build, image: nope, imageID: "", ready: false, restartCount: 0, state: {waiting: {reason: ImagePullBackOff, message: "Back-off pulling image \"nope\""}}}
"#);
        assert_eq!(
            pod_outcome(&image),
            PodOutcome::Pending {
                node: Some("n1".into()),
                problem: Some(
                    "step \"build\" cannot start: ImagePullBackOff: Back-off pulling image \"nope\"".into()
                )
            }
        );
        let fresh = pod("metadata: {name: p}\nspec: {containers: []}");
        assert_eq!(pod_outcome(&fresh), PodOutcome::Pending { node: None, problem: None });
    }

    #[test]
    fn long_messages_are_cut() {
        let long = "x".repeat(5000);
        let p = pod(&format!(
            "metadata: {{name: p}}\nspec: {{containers: []}}\nstatus:\n  phase: Failed\n  containerStatuses:\n  - {{name: s, image: a, imageID: '', ready: false, restartCount: 0, state: {{terminated: {{exitCode: 1, message: {long}}}}}}}\n"
        ));
        let PodOutcome::Failed { message, .. } = pod_outcome(&p) else { panic!("failed") };
        assert_eq!(message.chars().count(), "step \"s\" exited with code 1: ".len() + MAX_MESSAGE + 1);
    }
}
