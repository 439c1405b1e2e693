//! Pod settings (issue 17): the Workflow's pod template and the steps' mounts and `envFrom`,
//! validated by the planner, carried into the Workplan and rendered into every pod of the run.

use k8s_openapi::api::core::v1::Pod;
use pretty_assertions::assert_eq;
use shared_types::planner::{self, validate_workflow};
use shared_types::render::{RenderConfig, cleanup_pod, task_pod};
use shared_types::{TriggerEvent, Workflow, Workplan};

/// The Workflow of `examples/pod-settings.yaml` (the file also holds its Secret and ConfigMap).
fn example() -> Workflow {
    let path = shared_types::repo::root().join("examples/pod-settings.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let doc = text
        .split("\n---\n")
        .find(|doc| doc.contains("kind: Workflow"))
        .expect("the example holds a Workflow");
    let mut workflow: Workflow = serde_yaml::from_str(doc).unwrap();
    workflow.metadata.namespace = Some("ci".into());
    workflow.metadata.uid = Some("workflow-uid".into());
    workflow
}

fn workplan(workflow: &Workflow) -> Workplan {
    let mut workplan = planner::plan(workflow, TriggerEvent::manual(Some("1".into()))).unwrap();
    workplan.metadata.name = Some("pod-settings-0a1b2c3d4e".into());
    workplan.metadata.uid = Some("workplan-uid".into());
    workplan
}

fn problems(workflow: &Workflow) -> Vec<String> {
    match validate_workflow(workflow) {
        Ok(()) => Vec::new(),
        Err(invalid) => invalid.problems.iter().map(ToString::to_string).collect(),
    }
}

fn with(yaml: &str) -> Workflow {
    let mut workflow = example();
    let extra: serde_json::Value = serde_yaml::from_str(yaml).unwrap();
    let mut value = serde_json::to_value(&workflow).unwrap();
    merge(&mut value["spec"], extra);
    workflow = serde_json::from_value(value).unwrap();
    workflow
}

/// A JSON merge patch (RFC 7386) of `patch` onto `target`.
fn merge(target: &mut serde_json::Value, patch: serde_json::Value) {
    match patch {
        serde_json::Value::Object(fields) => {
            if !target.is_object() {
                *target = serde_json::json!({});
            }
            for (key, value) in fields {
                merge(&mut target[&key], value);
            }
        }
        value => *target = value,
    }
}

#[test]
fn the_example_is_valid_and_its_run_keeps_the_settings() {
    let mut workflow = example();
    assert_eq!(problems(&workflow), Vec::<String>::new());
    let workplan = workplan(&workflow);
    assert_eq!(workplan.spec.run, workflow.spec.run, "the Workplan holds the pod template it started with");
    workflow.spec.run.pod_template = None;
    assert!(workplan.spec.run.pod_template.is_some(), "a later edit of the Workflow is not the run's");
}

#[test]
fn the_task_pod_gets_the_template_the_mounts_and_env_from() {
    let pod = task_pod(&workplan(&example()), 0, None, &RenderConfig::default()).unwrap();
    let expected: Pod = serde_yaml::from_str(include_str!("fixtures/pod-settings-task-0-pod.yaml")).unwrap();
    assert_eq!(pod, expected);
}

#[test]
fn a_pod_holds_only_the_volumes_its_steps_mount() {
    let mut workflow = example();
    workflow.spec.steps[1].volume_mounts.truncate(1);
    let pod = task_pod(&workplan(&workflow), 0, None, &RenderConfig::default()).unwrap();
    let volumes: Vec<String> = pod.spec.unwrap().volumes.unwrap().into_iter().map(|v| v.name).collect();
    assert_eq!(volumes, ["kubeci-workspace", "credentials"]);
}

#[test]
fn the_cleanup_pod_tolerates_what_the_tasks_tolerate_but_is_pinned_not_selected() {
    let mut workflow = example();
    let template = workflow.spec.run.pod_template.as_mut().unwrap();
    template.priority_class_name = Some("ci-low".into());
    template.image_pull_secrets =
        vec![k8s_openapi::api::core::v1::LocalObjectReference { name: "registry".into() }];
    let template = template.clone();
    let spec =
        cleanup_pod(&workplan(&workflow), Some("node-a"), &RenderConfig::default()).unwrap().spec.unwrap();
    assert_eq!(spec.tolerations, Some(template.tolerations.clone()));
    assert_eq!(spec.priority_class_name.as_deref(), Some("ci-low"));
    assert_eq!(spec.image_pull_secrets, Some(template.image_pull_secrets.clone()));
    assert_eq!(
        (spec.node_selector, spec.affinity),
        (None, None),
        "pinned by nodeName to where the tasks ran"
    );
    assert_eq!(spec.volumes.unwrap().len(), 1, "only the workspace root");
}

#[test]
fn without_a_template_pods_are_as_before() {
    let mut workflow = example();
    workflow.spec.run.pod_template = None;
    for step in &mut workflow.spec.steps {
        step.volume_mounts.clear();
    }
    let spec = task_pod(&workplan(&workflow), 0, None, &RenderConfig::default()).unwrap().spec.unwrap();
    assert_eq!(
        (
            spec.node_selector,
            spec.tolerations,
            spec.affinity,
            spec.image_pull_secrets,
            spec.priority_class_name
        ),
        (None, None, None, None, None)
    );
    assert_eq!(spec.volumes.unwrap().len(), 1);
}

#[test]
fn a_mount_naming_no_volume_is_refused_naming_the_field() {
    let mut workflow = example();
    workflow.spec.steps[1].volume_mounts[0].name = "creds".into();
    assert_eq!(
        problems(&workflow),
        [
            r#"spec.steps[1].volumeMounts[0].name: step "deploy" mounts "creds", which is not a volume of spec.podTemplate.volumes"#
        ]
    );
}

#[test]
fn the_workspace_volume_and_path_are_kubecis_own() {
    let mut workflow = example();
    workflow.spec.run.pod_template.as_mut().unwrap().volumes[1].name = "kubeci-workspace".into();
    workflow.spec.steps[1].volume_mounts[1].name = "kubeci-workspace".into();
    workflow.spec.steps[1].volume_mounts[0].mount_path = "/kubeci/".into();
    workflow.spec.steps[0].volume_mounts = vec![k8s_openapi::api::core::v1::VolumeMount {
        name: "credentials".into(),
        mount_path: "/kubeci//secrets".into(),
        ..Default::default()
    }];
    assert_eq!(
        problems(&workflow),
        [
            r#"spec.podTemplate.volumes[1].name: "kubeci-workspace" is kubeci's own volume: the workspace, mounted at /kubeci"#,
            r#"spec.steps[0].volumeMounts[0].mountPath: step "build" mounts "credentials" at "/kubeci//secrets": the workspace is mounted at /kubeci; nothing may be mounted at or under it"#,
            r#"spec.steps[1].volumeMounts[0].mountPath: step "deploy" mounts "credentials" at "/kubeci/": the workspace is mounted at /kubeci; nothing may be mounted at or under it"#,
            r#"spec.steps[1].volumeMounts[1].name: step "deploy" mounts "kubeci-workspace", kubeci's own volume: the workspace is mounted at /kubeci in every step already"#,
        ]
    );
}

#[test]
fn volumes_need_one_source_a_unique_name_and_mounts_a_place_of_their_own() {
    let workflow = with(
        r#"
podTemplate:
  volumes:
  - {name: credentials, secret: {secretName: a}, configMap: {name: b}}
  - {name: credentials, emptyDir: {}}
  - {name: Bad_Name}
"#,
    );
    let mut workflow = workflow;
    workflow.spec.steps[1].volume_mounts[1] = k8s_openapi::api::core::v1::VolumeMount {
        name: "credentials".into(),
        mount_path: "/etc/credentials/".into(),
        ..Default::default()
    };
    workflow.spec.steps[0].volume_mounts = vec![k8s_openapi::api::core::v1::VolumeMount {
        name: "credentials".into(),
        mount_path: "etc".into(),
        ..Default::default()
    }];
    assert_eq!(
        problems(&workflow),
        [
            r#"spec.podTemplate.volumes[0].name: volume "credentials" has 2 sources; it needs exactly one of configMap, secret, persistentVolumeClaim and emptyDir"#,
            r#"spec.podTemplate.volumes[1].name: volume name "credentials" is already used by spec.podTemplate.volumes[0]"#,
            r#"spec.podTemplate.volumes[2].name: "Bad_Name" is not a valid volume name: must consist of lower-case letters, digits and '-'"#,
            r#"spec.podTemplate.volumes[2].name: volume "Bad_Name" has 0 sources; it needs exactly one of configMap, secret, persistentVolumeClaim and emptyDir"#,
            r#"spec.steps[0].volumeMounts[0].mountPath: step "build" mounts "credentials" at "etc": a mount path must be absolute"#,
            r#"spec.steps[1].volumeMounts[1].mountPath: step "deploy" mounts "credentials" at "/etc/credentials/", where volumeMounts[0] is mounted already"#,
        ]
    );
}

#[test]
fn retries_out_of_range_are_refused_naming_the_field() {
    let mut workflow = example();
    workflow.spec.steps[0].retries = Some(shared_types::Retries { limit: 11, backoff_seconds: Some(-1) });
    assert_eq!(
        problems(&workflow),
        [
            r#"spec.steps[0].retries.limit: step "build" asks for 11 retries; the limit is 0 to 10"#,
            r#"spec.steps[0].retries.backoffSeconds: step "build" waits -1s between attempts; the backoff is 0 to 600s"#,
        ]
    );
}
