//! The CRDs in a real kube-apiserver: installation, the seed's Workflow, the CEL rules with
//! their messages, printer columns and `kubectl explain`.

use std::process::Output;

use e2e::{TestEnv, TestNamespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use pretty_assertions::assert_eq;
use shared_types::planner;
use shared_types::{
    Job, JobState, Phase, RequestState, RequestStateSpec, TriggerEvent, Workflow, Workplan, WorkplanStatus,
};

const SEED: &str = shared_types::repo::SEED_WORKFLOW;

async fn namespace(test: &str) -> TestNamespace {
    TestEnv::get().namespace(test).await
}

fn seed_in(ns: &str) -> Workflow {
    let mut wf: Workflow = serde_yaml::from_str(SEED).unwrap();
    wf.metadata.namespace = Some(ns.to_string());
    wf.status = None;
    wf
}

/// Creating `wf` fails with 422 and a message containing `expected`.
async fn assert_rejected(ns: &TestNamespace, wf: &Workflow, expected: &str) {
    let api: Api<Workflow> = Api::namespaced(ns.client.clone(), &ns.name);
    match api.create(&PostParams::default(), wf).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{status:?}");
            assert!(status.message.contains(expected), "expected {expected:?} in: {}", status.message);
        }
        other => panic!("expected the API server to reject the Workflow with {expected:?}, got {other:?}"),
    }
}

fn kubectl(args: &[&str]) -> Output {
    let out = TestEnv::get().kubectl().args(args).output().expect("kubectl runs");
    assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

#[tokio::test]
async fn the_four_crds_are_established() {
    let env = TestEnv::get();
    let api: Api<CustomResourceDefinition> = Api::all(env.client().await);
    for name in ["workflows.kube.ci", "workplans.kube.ci", "requeststates.kube.ci", "triggerrecords.kube.ci"]
    {
        let crd = api.get(name).await.unwrap();
        let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
        for wanted in ["Established", "NamesAccepted"] {
            assert!(
                conditions.iter().any(|c| c.type_ == wanted && c.status == "True"),
                "{name}: {wanted} is not True: {conditions:?}"
            );
        }
    }
}

#[tokio::test]
async fn the_seed_workflow_is_accepted_as_written() {
    let env = TestEnv::get();
    let client = env.client().await;
    // `kubectl create` sends the file as it is: namespace default, the seed's null status fields.
    let file = TestEnv::repo_root().join("examples/seed-workflow.yaml");
    kubectl(&["create", "-f", file.to_str().unwrap()]);
    let stored = Api::<Workflow>::namespaced(client, "default").get("my-workflow").await.unwrap();
    let written: Workflow = serde_yaml::from_str(SEED).unwrap();
    assert_eq!(stored.spec, written.spec);
}

#[tokio::test]
async fn duplicate_step_names_are_rejected() {
    let ns = namespace("duplicate-step-names").await;
    let mut wf = seed_in(&ns.name);
    wf.spec.steps[2].name = "step-2".into();
    assert_rejected(&ns, &wf, "spec.steps: step names must be unique").await;
}

#[tokio::test]
async fn unknown_dependencies_are_rejected() {
    let ns = namespace("unknown-dependency").await;
    let mut wf = seed_in(&ns.name);
    wf.spec.steps[4].dependency.push("step-9".into());
    assert_rejected(&ns, &wf, "spec.steps: every dependency must name a step of this workflow").await;
}

#[tokio::test]
async fn invalid_step_names_are_rejected() {
    let ns = namespace("invalid-step-name").await;
    let mut wf = seed_in(&ns.name);
    wf.spec.steps[0].name = "Step_1".into();
    wf.spec.steps[1].dependency = vec!["Step_1".into()];
    wf.spec.steps[2].dependency = vec!["Step_1".into()];
    wf.spec.steps[4].dependency = vec!["Step_1".into(), "step-4".into()];
    assert_rejected(&ns, &wf, "step name must be a DNS-1123 label").await;
}

#[tokio::test]
async fn long_workflow_names_are_rejected() {
    let ns = namespace("long-workflow-name").await;
    let mut wf = seed_in(&ns.name);
    wf.metadata.name = Some("w".repeat(64));
    assert_rejected(&ns, &wf, "a Workflow's name is used as a label value and must be at most 63 characters")
        .await;
}

#[tokio::test]
async fn invalid_pull_policies_are_rejected() {
    let ns = namespace("invalid-pull-policy").await;
    let mut wf = seed_in(&ns.name);
    wf.spec.steps[0].image_pull_policy = Some("Sometimes".into());
    assert_rejected(&ns, &wf, "imagePullPolicy must be one of Always, IfNotPresent, Never").await;
}

#[tokio::test]
async fn too_many_steps_are_rejected() {
    let ns = namespace("too-many-steps").await;
    let mut wf = seed_in(&ns.name);
    let step = wf.spec.steps[0].clone();
    wf.spec.steps = (0..=shared_types::limits::MAX_STEPS)
        .map(|i| shared_types::Step { name: format!("s{i}"), ..step.clone() })
        .collect();
    assert_rejected(&ns, &wf, "spec.steps: Too many: 201: must have at most 200 items").await;
}

fn seed_workplan(ns: &str) -> Workplan {
    let mut workflow = seed_in(ns);
    workflow.metadata.uid = Some("00000000-0000-0000-0000-000000000001".into());
    let trigger = TriggerEvent::manual(Some("1".into()));
    let mut workplan = planner::plan(&workflow, trigger).unwrap();
    workplan.metadata.owner_references = None; // the Workflow is not stored in this test
    workplan
}

#[tokio::test]
async fn workplan_specs_are_immutable() {
    let ns = namespace("workplan-immutable").await;
    let api: Api<Workplan> = Api::namespaced(ns.client.clone(), &ns.name);
    let created = api.create(&PostParams::default(), &seed_workplan(&ns.name)).await.unwrap();
    let mut changed = created.clone();
    changed.spec.tasks.pop();
    match api.replace(created.metadata.name.as_deref().unwrap(), &PostParams::default(), &changed).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422);
            assert!(status.message.contains("spec is immutable"), "{}", status.message);
        }
        other => panic!("changing a Workplan's spec must be rejected, got {other:?}"),
    }
}

#[tokio::test]
async fn request_state_rules() {
    let ns = namespace("request-state-rules").await;
    let api: Api<RequestState> = Api::namespaced(ns.client.clone(), &ns.name);
    let spec = || RequestStateSpec {
        request_uid: "uid-1".into(),
        job: Job::Task(0),
        state: JobState::Requested,
        worker: None,
    };
    // The typed Job cannot hold a bad name: send the raw object, as another client could.
    let bad = serde_json::json!({
        "apiVersion": "kube.ci/v1alpha1", "kind": "RequestState", "metadata": {"name": "bad-job"},
        "spec": {"request-uid": "uid-1", "job": "task-x", "state": "REQUESTED"},
    });
    let raw: Api<kube::api::DynamicObject> = Api::namespaced_with(
        ns.client.clone(),
        &ns.name,
        &kube::api::ApiResource::erase::<RequestState>(&()),
    );
    match raw.create(&PostParams::default(), &serde_json::from_value(bad).unwrap()).await {
        Err(kube::Error::Api(status)) => {
            assert!(status.message.contains("job must be task-<i> or cleanup"), "{}", status.message)
        }
        other => panic!("a bad job name must be rejected, got {other:?}"),
    }
    let created = api.create(&PostParams::default(), &RequestState::new("ok", spec())).await.unwrap();
    let mut moved = created.clone();
    moved.spec.request_uid = "uid-2".into();
    match api.replace("ok", &PostParams::default(), &moved).await {
        Err(kube::Error::Api(status)) => {
            assert!(status.message.contains("request-uid is immutable"), "{}", status.message)
        }
        other => panic!("changing request-uid must be rejected, got {other:?}"),
    }
    // No status subresource: one update writes the state and its history entry together.
    let mut started = created.clone();
    started.spec.state = JobState::Started;
    started.spec.worker = Some("worker-a".into());
    started.status = Some(shared_types::RequestStateStatus {
        history: vec![shared_types::HistoryEntry {
            job: Job::Task(0),
            state: JobState::Started,
            timestamp: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ),
            worker: Some("worker-a".into()),
            node_name: None,
            message: None,
        }],
    });
    let stored = api.replace("ok", &PostParams::default(), &started).await.unwrap();
    assert_eq!(stored.spec.state, JobState::Started);
    assert_eq!(stored.status.unwrap().history.len(), 1, "the history entry landed in the same write");
}

#[tokio::test]
async fn kubectl_shows_printer_columns_and_field_docs() {
    let ns = namespace("printer-columns").await;
    let workflows: Api<Workflow> = Api::namespaced(ns.client.clone(), &ns.name);
    workflows.create(&PostParams::default(), &seed_in(&ns.name)).await.unwrap();
    let workplans: Api<Workplan> = Api::namespaced(ns.client.clone(), &ns.name);
    let workplan = workplans.create(&PostParams::default(), &seed_workplan(&ns.name)).await.unwrap();
    let name = workplan.metadata.name.clone().unwrap();
    let status = WorkplanStatus {
        phase: Some(Phase::Running),
        task_index: Some(1),
        progress: Some("2/2".into()),
        node_name: Some("node-a".into()),
        ..WorkplanStatus::default()
    };
    workplans
        .patch_status(
            &name,
            &PatchParams::apply("e2e"),
            &Patch::Apply(serde_json::json!({
                "apiVersion": "kube.ci/v1alpha1", "kind": "Workplan", "status": status,
            })),
        )
        .await
        .unwrap();
    let requests: Api<RequestState> = Api::namespaced(ns.client.clone(), &ns.name);
    let spec = RequestStateSpec {
        request_uid: workplan.metadata.uid.clone().unwrap(),
        job: Job::Task(1),
        state: JobState::Started,
        worker: Some("worker-7".into()),
    };
    requests.create(&PostParams::default(), &RequestState::new(&name, spec)).await.unwrap();

    let out = kubectl(&["get", "kwf,wp,rqs", "-n", &ns.name]);
    let text = String::from_utf8_lossy(&out.stdout);
    let headers: Vec<Vec<&str>> = text
        .lines()
        .filter(|l| l.starts_with("NAME"))
        .map(|l| l.split("  ").map(str::trim).filter(|c| !c.is_empty()).collect())
        .collect();
    assert_eq!(
        headers,
        vec![
            vec!["NAME", "STEPS", "TRIGGERS", "READY", "LAST WORKPLAN", "AGE"],
            vec!["NAME", "WORKFLOW", "PHASE", "TASK", "NODE", "AGE", "DURATION"],
            vec!["NAME", "JOB", "STATE", "WORKER", "AGE"],
        ],
        "{text}"
    );
    let row = |prefix: &str| {
        text.lines().find(|l| l.starts_with(prefix)).map(|l| l.split_whitespace().collect::<Vec<_>>())
    };
    let wp_row =
        row(&format!("workplan.kube.ci/{name}")).unwrap_or_else(|| panic!("no Workplan row in {text}"));
    assert_eq!(&wp_row[1..5], ["my-workflow", "Running", "2/2", "node-a"], "{text}");
    let rqs_row = row(&format!("requeststate.kube.ci/{name}"))
        .unwrap_or_else(|| panic!("no RequestState row in {text}"));
    assert_eq!(&rqs_row[1..4], ["task-1", "STARTED", "worker-7"], "{text}");

    let out = kubectl(&["explain", "workflow.spec.steps"]);
    // kubectl wraps to its own width: compare with runs of white space folded.
    let fold = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
    let text = fold(&String::from_utf8_lossy(&out.stdout));
    for expected in [
        "FIELD: steps <[]Object>",
        "The steps of the workflow: containers that run in the order their `dependency` lists require.",
        "dependency <[]string> Names of the steps that must finish successfully before this one starts.",
        "name <string> -required- The step's name: a DNS-1123 label",
        "timeoutSeconds <integer>",
    ] {
        assert!(text.contains(expected), "`kubectl explain workflow.spec.steps` lacks {expected:?}:\n{text}");
    }
}
