//! The API types against the seed's YAML and their CEL rules, evaluated offline with kube's
//! client-side CEL (the same rules the API server runs; the integration tests run them there).

use kube::core::cel::validate_cel;
use shared_types::{JobState, RequestState, Workflow};

const SEED: &str = shared_types::repo::SEED_WORKFLOW;

fn seed() -> Workflow {
    serde_yaml::from_str(SEED).expect("the seed's Workflow deserializes")
}

fn cel_errors(wf: &Workflow) -> String {
    match validate_cel(wf) {
        Ok(()) => String::new(),
        Err(errors) => format!("{errors:?}"),
    }
}

#[test]
fn seed_workflow_deserializes_unchanged() {
    let wf = seed();
    assert_eq!(wf.metadata.name.as_deref(), Some("my-workflow"));
    assert_eq!(wf.spec.steps.len(), 5);
    assert_eq!(wf.spec.steps[4].name, "step-5");
    assert_eq!(wf.spec.steps[4].commands, ["sh"]);
    assert_eq!(wf.spec.steps[4].args, ["-c", "echo step-5; ls /kubeci"]);
    assert_eq!(wf.spec.steps[4].dependency, ["step-1", "step-4"]);
    let trigger = &wf.spec.triggers[0];
    assert_eq!((trigger.api_version.as_str(), trigger.kind.as_str()), ("v1", "ConfigMap"));
    assert_eq!(trigger.resource.as_deref(), Some("configmaps"));
    assert_eq!(trigger.name.as_deref(), Some("my-config"));
    assert!(trigger.on_add_or_update && trigger.on_delete);
    let status = wf.status.expect("the seed has a status block");
    assert_eq!(status.observed_generation, None);
    assert!(status.last_observed_resource_generation.is_empty());
}

#[test]
fn seed_status_alias_is_read() {
    let yaml =
        SEED.replace("lastObservedGeneration:         # workplan generation", "lastObservedGeneration: 7");
    let wf: Workflow = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(wf.status.unwrap().observed_generation, Some(7));
}

#[test]
fn seed_passes_the_cel_rules() {
    assert_eq!(cel_errors(&seed()), "");
}

#[test]
fn cel_rejects_duplicate_step_names() {
    let mut wf = seed();
    wf.spec.steps[1].name = "step-1".into();
    assert!(cel_errors(&wf).contains("step names must be unique"), "{}", cel_errors(&wf));
}

#[test]
fn cel_rejects_unknown_dependencies() {
    let mut wf = seed();
    wf.spec.steps[3].dependency.push("nope".into());
    assert!(cel_errors(&wf).contains("every dependency must name a step"), "{}", cel_errors(&wf));
}

#[test]
fn cel_rejects_bad_step_names() {
    let mut wf = seed();
    wf.spec.steps[0].name = "Step_1".into();
    assert!(cel_errors(&wf).contains("DNS-1123 label"), "{}", cel_errors(&wf));
}

#[test]
fn cel_rejects_long_workflow_names() {
    let mut wf = seed();
    wf.metadata.name = Some("w".repeat(64));
    assert!(cel_errors(&wf).contains("at most 63 characters"), "{}", cel_errors(&wf));
}

#[test]
fn request_state_keeps_the_seed_field_names() {
    let yaml = r#"
apiVersion: kube.ci/v1alpha1
kind: RequestState
metadata: {name: example, namespace: default}
spec: {request-uid: aaa-bbb-ccc, job: task-1, state: COMPLETED, worker: worker-0}
status:
  history:
  - {job: task-0, state: STARTED, timestamp: "2026-11-21T10:00:00Z", worker: worker-0}
  - {job: task-0, state: COMPLETED, timestamp: "2026-11-21T10:00:01Z", worker: worker-0}
"#;
    let rqs: RequestState = serde_yaml::from_str(yaml).unwrap();
    assert_eq!(rqs.spec.request_uid, "aaa-bbb-ccc");
    assert_eq!(rqs.spec.state, JobState::Completed);
    assert_eq!(rqs.status.as_ref().unwrap().history.len(), 2);
    let json = serde_json::to_value(&rqs).unwrap();
    assert_eq!(json["spec"]["request-uid"], "aaa-bbb-ccc");
    assert_eq!(json["status"]["history"][1]["state"], "COMPLETED");
    assert_eq!(cel_errors_rqs(&rqs), "");
    // A bad job name never deserializes; for other clients the CRD's CEL rule refuses it (the
    // integration tier sends one raw to the API server).
    let bad = yaml.replace("job: task-1,", "job: task-01,");
    let error = serde_yaml::from_str::<RequestState>(&bad).unwrap_err().to_string();
    assert!(error.contains(r#"job "task-01" is neither task-<i> nor cleanup"#), "{error}");
}

fn cel_errors_rqs(rqs: &RequestState) -> String {
    validate_cel(rqs).err().map(|e| format!("{e:?}")).unwrap_or_default()
}
