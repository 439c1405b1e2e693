//! Pod rendering of one task, against hand-written expected pods.

use k8s_openapi::api::core::v1::Pod;
use pretty_assertions::assert_eq;
use shared_types::planner;
use shared_types::render::{RenderConfig, RenderError, cleanup_pod, task_pod, workplan_name};
use shared_types::{EventKind, Step, TriggerEvent, Workflow, Workplan};

const SEED: &str = shared_types::repo::SEED_WORKFLOW;

fn manual() -> TriggerEvent {
    TriggerEvent::manual(Some("1".into()))
}

/// The seed's Workplan as the API server would return it.
fn seed_workplan() -> Workplan {
    let mut workflow: Workflow = serde_yaml::from_str(SEED).unwrap();
    workflow.metadata.uid = Some("workflow-uid".into());
    let mut workplan = planner::plan(&workflow, manual()).unwrap();
    workplan.metadata.name = Some("my-workflow-0a1b2c3d4e".into());
    workplan.metadata.uid = Some("6f1e0d2c-workplan-uid".into());
    workplan
}

fn expected(yaml: &str) -> Pod {
    serde_yaml::from_str(yaml).unwrap()
}

#[test]
fn task_0_serial_steps_are_init_containers() {
    let pod = task_pod(&seed_workplan(), 0, None, &RenderConfig::default()).unwrap();
    assert_eq!(pod, expected(include_str!("fixtures/seed-task-0-pod.yaml")));
}

#[test]
fn later_tasks_are_pinned_to_the_node() {
    let config = RenderConfig { workspace_root: "/srv/ci/".into(), ..RenderConfig::default() };
    let pod = task_pod(&seed_workplan(), 1, Some("node-a"), &config).unwrap();
    assert_eq!(pod, expected(include_str!("fixtures/seed-task-1-pod.yaml")));
}

#[test]
fn step_settings_reach_the_container() {
    let mut workplan = seed_workplan();
    let step: &mut Step = &mut workplan.spec.tasks[1].parallel_steps[0];
    step.image_pull_policy = Some("Always".into());
    step.working_dir = Some("/kubeci".into());
    step.env = vec![k8s_openapi::api::core::v1::EnvVar {
        name: "A".into(),
        value: Some("1".into()),
        value_from: None,
    }];
    step.commands.clear();
    let pod = task_pod(&workplan, 1, None, &RenderConfig::default()).unwrap();
    let container = &pod.spec.unwrap().containers[0];
    assert_eq!(container.image_pull_policy.as_deref(), Some("Always"));
    assert_eq!(container.working_dir.as_deref(), Some("/kubeci"));
    assert_eq!(container.env.as_ref().unwrap()[0].name, "A");
    assert_eq!(container.command, None, "no commands: the image's entrypoint");
}

#[test]
fn deadline_is_the_task_budget_when_every_step_has_one() {
    let mut workplan = seed_workplan();
    let deadline = |wp: &Workplan| {
        task_pod(wp, 0, None, &RenderConfig::default()).unwrap().spec.unwrap().active_deadline_seconds
    };
    assert_eq!(deadline(&workplan), None);
    let task = &mut workplan.spec.tasks[0];
    task.serial_steps[0].timeout_seconds = Some(10);
    task.parallel_steps[0].timeout_seconds = Some(30);
    assert_eq!(deadline(&workplan), None, "step-3 has no budget, so the task has none");
    workplan.spec.tasks[0].parallel_steps[1].timeout_seconds = Some(20);
    assert_eq!(deadline(&workplan), Some(10 + 30));
}

#[test]
fn missing_metadata_and_tasks_are_errors() {
    let mut workplan = seed_workplan();
    assert_eq!(
        task_pod(&workplan, 2, None, &RenderConfig::default()).unwrap_err(),
        RenderError::NoSuchTask { name: "my-workflow-0a1b2c3d4e".into(), index: 2, count: 2 }
    );
    workplan.metadata.uid = None;
    assert_eq!(
        task_pod(&workplan, 0, None, &RenderConfig::default()).unwrap_err().to_string(),
        "Workplan \"my-workflow-0a1b2c3d4e\" has no metadata.uid"
    );
}

#[test]
fn workplan_names_are_deterministic_and_distinct_per_event() {
    let mut a = manual();
    a.uid = Some("cm-uid".into());
    a.resource_version = Some("100".into());
    a.event = EventKind::Updated;
    let name = workplan_name("my-workflow", "wf-uid", &a);
    assert_eq!(name, workplan_name("my-workflow", "wf-uid", &a), "a replayed event gets the same name");
    assert!(name.starts_with("my-workflow-") && name.len() == "my-workflow-".len() + 10, "{name}");
    let mut b = a.clone();
    b.resource_version = Some("101".into());
    assert_ne!(name, workplan_name("my-workflow", "wf-uid", &b));
    let mut c = a.clone();
    c.event = EventKind::Deleted;
    assert_ne!(name, workplan_name("my-workflow", "wf-uid", &c));
    assert_ne!(name, workplan_name("my-workflow", "other-uid", &a));
    let long = workplan_name(&"w".repeat(63), "wf-uid", &a);
    assert_eq!(long.len(), 63, "cut to a label value: {long}");
}

#[test]
fn the_plan_names_labels_and_owns_its_workplan() {
    let mut workflow: Workflow = serde_yaml::from_str(SEED).unwrap();
    workflow.metadata.uid = Some("workflow-uid".into());
    let workplan = planner::plan(&workflow, manual()).unwrap();
    assert_eq!(workplan.metadata.namespace.as_deref(), Some("default"));
    assert_eq!(workplan.metadata.labels.unwrap()["kube.ci/workflow"], "my-workflow");
    let owner = &workplan.metadata.owner_references.unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        ("Workflow", "workflow-uid", Some(true))
    );
    assert_eq!(workplan.spec.workflow, "my-workflow");
    assert_eq!(workplan.spec.tasks.len(), 2);
    assert_eq!(
        workplan.metadata.finalizers,
        Some(vec!["kube.ci/cleanup".to_string()]),
        "created with its cleanup finalizer: no write of its own"
    );
}

#[test]
fn cleanup_removes_the_workplans_workspace_on_its_node() {
    let pod = cleanup_pod(&seed_workplan(), Some("node-a"), &RenderConfig::default()).unwrap();
    assert_eq!(pod, expected(include_str!("fixtures/seed-cleanup-pod.yaml")));
    // The directory it removes is the one every task mounted.
    let task = task_pod(&seed_workplan(), 0, Some("node-a"), &RenderConfig::default()).unwrap();
    let task_dir = task.spec.unwrap().volumes.unwrap()[0].host_path.clone().unwrap().path;
    let spec = pod.spec.unwrap();
    let parent = spec.volumes.unwrap()[0].host_path.clone().unwrap().path;
    let command = spec.containers[0].command.clone().unwrap();
    let removed = format!("{parent}/{}/{}/{}", command[4], command[5], command[6]);
    assert_eq!(removed, task_dir);
}

#[test]
fn cleanup_removes_empty_parents_but_never_fails_on_them() {
    let root = std::env::temp_dir().join(format!("kubeci-render-cleanup-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let config = RenderConfig { workspace_root: root.display().to_string(), ..RenderConfig::default() };
    let pod = cleanup_pod(&seed_workplan(), None, &config).unwrap();
    let spec = pod.spec.unwrap();
    assert_eq!(spec.volumes.unwrap()[0].host_path.clone().unwrap().path, root.display().to_string());
    let mut command = spec.containers[0].command.clone().unwrap();
    // The script as the container runs it, with the root where the pod mounts it.
    command[2] = command[2].replace("/workspaces", &root.display().to_string());
    let cleanup = || {
        let status = std::process::Command::new(&command[0]).args(&command[1..]).status().unwrap();
        assert!(status.success(), "{command:?}: {status}");
    };
    let workspace = |wp: &str| root.join("default/my-workflow").join(wp);

    // Another run's workspace stays, and so do its parents.
    std::fs::create_dir_all(workspace("my-workflow-0a1b2c3d4e/out")).unwrap();
    std::fs::write(workspace("my-workflow-0a1b2c3d4e/out/file"), b"x").unwrap();
    std::fs::create_dir_all(workspace("other-run")).unwrap();
    cleanup();
    assert!(!workspace("my-workflow-0a1b2c3d4e").exists());
    assert!(workspace("other-run").is_dir());

    // The last one out takes the emptied parents along; the root stays.
    std::fs::remove_dir(workspace("other-run")).unwrap();
    std::fs::create_dir_all(workspace("my-workflow-0a1b2c3d4e")).unwrap();
    cleanup();
    assert!(!root.join("default").exists());
    assert!(root.is_dir());

    // Nothing there at all (deleted before its pod ran): still a success.
    cleanup();
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn cleanup_requests_and_limits_are_configurable() {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    let resources = shared_types::render::cleanup_resources(["5m", "8Mi"], ["50m", "32Mi"]);
    let config = RenderConfig { cleanup_resources: resources.clone(), ..RenderConfig::default() };
    let pod = cleanup_pod(&seed_workplan(), None, &config).unwrap();
    assert_eq!(pod.spec.unwrap().containers[0].resources, Some(resources.clone()));
    let limits = resources.limits.unwrap();
    assert_eq!((&limits["cpu"], &limits["memory"]), (&Quantity("50m".into()), &Quantity("32Mi".into())));
}

#[test]
fn a_retry_is_a_pod_of_its_own_named_and_labelled_after_its_attempt() {
    use shared_types::render::task_pod_attempt;
    let workplan = seed_workplan();
    let first = task_pod_attempt(&workplan, 1, 1, Some("node-a"), &RenderConfig::default()).unwrap();
    assert_eq!(first, task_pod(&workplan, 1, Some("node-a"), &RenderConfig::default()).unwrap());
    let third = task_pod_attempt(&workplan, 1, 3, Some("node-a"), &RenderConfig::default()).unwrap();
    assert_eq!(third.metadata.name.as_deref(), Some("my-workflow-0a1b2c3d4e-task-1-attempt-3"));
    assert_eq!(third.metadata.labels.as_ref().unwrap().get("kube.ci/attempt").map(String::as_str), Some("3"));
    assert_eq!(third.spec, first.spec, "the same pod otherwise");
}
