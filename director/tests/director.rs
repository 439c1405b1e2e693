//! The director against the real API server (issue acceptance list): trigger firing and matching,
//! replay safety across restarts, dedupe under rapid updates, invalid Workflows, leader election.

mod support;

use std::collections::BTreeSet;

use e2e::TestEnv;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::await_condition;
use shared_types::planner::plan;
use shared_types::workflow::RunLimits;
use shared_types::{EventKind, Workflow, Workplan};
use support::{
    TIMEOUT, baselined, config_map, eventually, finish, listing_handled, record_where, recorded_versions,
    seed, seed_with_config_map, seed_with_config_map_and, set_value, start_director, workflow, workplans,
    workplans_of,
};

fn task_names(wp: &Workplan) -> Vec<(Vec<String>, Vec<String>)> {
    wp.spec
        .tasks
        .iter()
        .map(|t| {
            (
                t.serial_steps.iter().map(|s| s.name.clone()).collect(),
                t.parallel_steps.iter().map(|s| s.name.clone()).collect(),
            )
        })
        .collect()
}

#[tokio::test]
async fn configmap_trigger_fires_once_per_change_of_a_matching_configmap() {
    let ns = TestEnv::get().namespace("director-configmap-trigger").await;
    let cms: Api<ConfigMap> = Api::namespaced(ns.client.clone(), &ns.name);
    let other_ns = TestEnv::get().namespace("director-other-namespace").await;
    let other_cms: Api<ConfigMap> = Api::namespaced(other_ns.client.clone(), &other_ns.name);
    for (api, name, labels) in [
        (&cms, "my-config", vec![("app", "web")]),
        (&cms, "other-name", vec![("app", "web")]),
        (&cms, "my-config-db", vec![("app", "db")]),
        (&other_cms, "my-config", vec![("app", "web")]),
    ] {
        api.create(&PostParams::default(), &config_map(name, &labels, "0")).await.unwrap();
    }
    let director = start_director(&ns.name, false);
    let mut wf = seed(&ns.name);
    wf.spec.triggers[0].selector =
        Some(serde_json::from_value(serde_json::json!({"matchLabels": {"app": "web"}})).unwrap());
    let workflows: Api<Workflow> = Api::namespaced(ns.client.clone(), &ns.name);
    workflows.create(&PostParams::default(), &wf).await.unwrap();
    baselined(&ns, "my-workflow").await;
    let wp_api: Api<Workplan> = Api::namespaced(ns.client.clone(), &ns.name);
    assert!(workplans(&wp_api).await.is_empty(), "existing ConfigMaps must not fire");

    // Non-matching changes first; the matching one last: the watch delivers in order.
    set_value(&cms, "other-name", "1").await;
    set_value(&cms, "my-config-db", "1").await;
    set_value(&other_cms, "my-config", "1").await;
    let rv = set_value(&cms, "my-config", "1").await;

    let found = workplans_of(&ns, 1).await;
    assert_eq!(
        found.len(),
        1,
        "exactly one Workplan: {:?}",
        found.iter().map(|w| w.metadata.name.clone()).collect::<Vec<_>>()
    );
    let wp = &found[0];
    assert_eq!(wp.spec.trigger.event, EventKind::Updated);
    assert_eq!(wp.spec.trigger.name.as_deref(), Some("my-config"));
    assert_eq!(wp.spec.trigger.resource_version.as_deref(), Some(rv.as_str()));
    assert_eq!(wp.spec.tasks, plan(&wf, wp.spec.trigger.clone()).unwrap().spec.tasks, "the planner's tasks");
    assert_eq!(
        task_names(wp),
        vec![
            (vec!["step-1".to_string()], vec!["step-2".to_string(), "step-3".to_string()]),
            (vec!["step-4".to_string()], vec!["step-5".to_string()]),
        ]
    );
    assert_eq!(wp.metadata.owner_references.as_ref().unwrap()[0].kind, "Workflow");

    // A second update: a second Workplan.
    set_value(&cms, "my-config", "2").await;
    assert_eq!(workplans_of(&ns, 2).await.len(), 2);

    // Deleting the Workflow stops its trigger watch, and later changes fire nothing.
    workflows.delete("my-workflow", &DeleteParams::default()).await.unwrap();
    eventually("the trigger watch to stop", TIMEOUT, || async {
        (director.metric("kubeci_director_trigger_watches").await == 0.0).then_some(())
    })
    .await;
    set_value(&cms, "my-config", "3").await;
    assert_eq!(director.metric("kubeci_director_trigger_fired_total").await, 2.0);
}

/// The status fields each field manager owns, from `metadata.managedFields` entries on the status
/// subresource: `(manager, operation, top-level status fields)`.
fn status_owners(wf: &Workflow) -> Vec<(String, String, BTreeSet<String>)> {
    let entries = wf.metadata.managed_fields.clone().unwrap_or_default();
    let mut owners: Vec<_> = entries
        .into_iter()
        .filter_map(|entry| {
            let fields = entry.fields_v1.as_ref()?.0.get("f:status")?.as_object()?.clone();
            Some((
                format!("{}/{}", entry.manager.unwrap_or_default(), entry.subresource.unwrap_or_default()),
                entry.operation.unwrap_or_default(),
                fields.keys().filter_map(|k| k.strip_prefix("f:")).map(str::to_string).collect(),
            ))
        })
        .collect();
    owners.sort();
    owners
}

#[tokio::test]
async fn status_fields_are_applied_by_the_directors_two_managers() {
    let (ns, cms, _director) = seed_with_config_map("director-field-managers").await;
    let rv = set_value(&cms, "my-config", "1").await;
    let fired = workplans_of(&ns, 1).await;
    let workplan_managers: Vec<String> =
        fired[0].metadata.managed_fields.iter().flatten().filter_map(|entry| entry.manager.clone()).collect();
    assert_eq!(workplan_managers, ["kubeci-director"], "the Workplan's create is attributed");

    // Both writers are done once the record holds the fired version and the status names the
    // Workplan.
    let wp_name = fired[0].metadata.name.clone();
    let (wf, _) = record_where(&ns, "my-workflow", "the status to settle", |wf, record| {
        wf.status.as_ref().is_some_and(|s| s.last_workplan == wp_name && s.trigger_record.is_some())
            && recorded_versions(record) == [rv.clone()]
    })
    .await;
    let fields = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<BTreeSet<String>>();
    assert_eq!(
        status_owners(&wf),
        vec![
            (
                "kubeci-director-triggers/status".to_string(),
                "Apply".to_string(),
                fields(&["baselinedTriggers", "triggerRecord"])
            ),
            (
                "kubeci-director/status".to_string(),
                "Apply".to_string(),
                fields(&[
                    "conditions",
                    "lastWorkplan",
                    "observedGeneration",
                    "steps",
                    "triggers",
                    "workplans"
                ])
            ),
        ],
        "no other manager owns a status field"
    );
}

#[tokio::test]
async fn restarts_fire_nothing_and_deletions_while_down_fire_once() {
    let (ns, cms, director) = seed_with_config_map("director-restart").await;
    director.kill();

    // Restart with nothing changed: the re-list is deduplicated, nothing fires.
    let director = start_director(&ns.name, false);
    listing_handled(&director).await;
    assert!(director.metric("kubeci_director_trigger_deduplicated_total").await >= 1.0);
    let wp_api: Api<Workplan> = Api::namespaced(ns.client.clone(), &ns.name);
    assert!(workplans(&wp_api).await.is_empty(), "a restart must not fire");
    assert_eq!(director.metric("kubeci_director_trigger_fired_total").await, 0.0);
    director.kill();

    // Deleted while the director is down: exactly one onDelete Workplan after it comes back.
    cms.delete("my-config", &DeleteParams::default()).await.unwrap();
    let director = start_director(&ns.name, false);
    let found = workplans_of(&ns, 1).await;
    assert_eq!(found[0].spec.trigger.event, EventKind::Deleted);
    assert_eq!(found[0].spec.trigger.name.as_deref(), Some("my-config"));
    // Restarting again does not fire the deletion a second time.
    director.kill();
    let director = start_director(&ns.name, false);
    listing_handled(&director).await;
    // (A kill between the create and the record's save fires again, into the same name.)
    assert_eq!(workplans(&wp_api).await.len(), 1);
}

#[tokio::test]
async fn rapid_updates_give_one_workplan_per_observed_version() {
    // Caps above the burst: this is about deduplication, not the default caps (which would hold
    // the runs beyond 10 unfinished, as nothing finishes them here).
    let (ns, cms, director) = seed_with_config_map_and("director-rapid-updates", |wf| {
        wf.spec.limits = Some(RunLimits { runs_per_minute: Some(1000), concurrent_runs: Some(1000) })
    })
    .await;

    let mut last = String::new();
    for i in 1..=100 {
        last = set_value(&cms, "my-config", &i.to_string()).await;
    }
    // Settled once the last version is recorded.
    record_where(&ns, "my-workflow", "the last version recorded", |_, record| {
        recorded_versions(record) == [last.clone()]
    })
    .await;

    let fired = director.metric("kubeci_director_trigger_fired_total").await as usize;
    let wp_api: Api<Workplan> = Api::namespaced(ns.client.clone(), &ns.name);
    let found = workplans(&wp_api).await;
    let versions: BTreeSet<String> =
        found.iter().filter_map(|wp| wp.spec.trigger.resource_version.clone()).collect();
    println!("100 updates: {fired} watched versions fired, {} Workplans", found.len());
    assert!((1..=100).contains(&fired), "fired {fired}");
    assert_eq!(found.len(), fired, "one Workplan per watched version that fired");
    assert_eq!(versions.len(), found.len(), "no two Workplans for one version");
    assert!(versions.contains(&last));
}

#[tokio::test]
async fn invalid_workflows_are_reported_and_others_still_served() {
    let ns = TestEnv::get().namespace("director-invalid").await;
    let _director = start_director(&ns.name, false);
    let workflows: Api<Workflow> = Api::namespaced(ns.client.clone(), &ns.name);
    let cycle = "  steps:\n  - {name: a, image: alpine, dependency: [b]}\n  - {name: b, image: alpine, dependency: [a]}\n";
    workflows.create(&PostParams::default(), &workflow(&ns.name, "broken", cycle)).await.unwrap();
    workflows
        .create(
            &PostParams::default(),
            &workflow(&ns.name, "fine", "  steps:\n  - {name: only, image: alpine}\n"),
        )
        .await
        .unwrap();

    let invalid = |wf: Option<&Workflow>| {
        wf.and_then(|w| w.status.as_ref())
            .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Invalid" && c.status == "True"))
    };
    let broken = tokio::time::timeout(TIMEOUT, await_condition(workflows.clone(), "broken", invalid))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let conditions = broken.status.unwrap().conditions;
    let message = &conditions.iter().find(|c| c.type_ == "Invalid").unwrap().message;
    assert_eq!(message, "spec.steps: dependency cycle a → b → a (each step depends on the next)");
    assert!(conditions.iter().any(|c| c.type_ == "Ready" && c.status == "False"));

    // A trigger on a kind the API server does not serve: not Ready, the field named.
    let typo = "  triggers:\n  - {apiVersion: v1, kind: ConfigMapp, onAddOrUpdate: true}\n  steps:\n  - {name: a, image: alpine}\n";
    workflows.create(&PostParams::default(), &workflow(&ns.name, "typo", typo)).await.unwrap();
    let not_ready = |wf: Option<&Workflow>| {
        wf.and_then(|w| w.status.as_ref()).is_some_and(|s| {
            s.conditions.iter().any(|c| c.type_ == "Ready" && c.reason == "TriggerKindNotFound")
        })
    };
    let typo = tokio::time::timeout(TIMEOUT, await_condition(workflows.clone(), "typo", not_ready))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let ready = typo.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Ready").unwrap();
    assert!(
        ready.message.starts_with("spec.triggers[0]: the API server does not serve kind ConfigMapp in v1"),
        "{}",
        ready.message
    );

    // The user is told with a Warning Event on the Workflow.
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(ns.client.clone(), &ns.name);
    let invalid_event = eventually("the Invalid Event", TIMEOUT, || {
        let events = events.clone();
        async move {
            events.list(&Default::default()).await.unwrap().items.into_iter().find(|e| {
                e.reason.as_deref() == Some("Invalid")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("broken")
            })
        }
    })
    .await;
    assert_eq!(invalid_event.type_.as_deref(), Some("Warning"));
    assert_eq!(
        invalid_event.note.as_deref(),
        Some("spec.steps: dependency cycle a → b → a (each step depends on the next)")
    );

    // The valid Workflow (no triggers) runs once for its generation; the broken one never.
    let found = workplans_of(&ns, 1).await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].spec.workflow, "fine");
    assert_eq!(found[0].spec.trigger.event, EventKind::Created);
}

#[tokio::test]
async fn only_the_lease_holder_acts() {
    let ns = TestEnv::get().namespace("director-leader").await;
    let first = start_director(&ns.name, true);
    let second = start_director(&ns.name, true);
    let workflows: Api<Workflow> = Api::namespaced(ns.client.clone(), &ns.name);
    workflows
        .create(
            &PostParams::default(),
            &workflow(&ns.name, "once", "  steps:\n  - {name: only, image: alpine}\n"),
        )
        .await
        .unwrap();
    workplans_of(&ns, 1).await;
    let reconciles = [
        first.metric("kubeci_director_reconcile_total").await,
        second.metric("kubeci_director_reconcile_total").await,
    ];
    assert!(
        (reconciles[0] > 0.0) != (reconciles[1] > 0.0),
        "exactly one director reconciles; reconcile counts {reconciles:?}"
    );
    let (leader, standby) = if reconciles[0] > 0.0 { (first, second) } else { (second, first) };

    // The leader stops gracefully: the standby takes over and serves a manual run.
    leader.stop();
    let patch = serde_json::json!({"metadata": {"annotations": {"kube.ci/run": "after-failover"}}});
    workflows.patch("once", &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
    let found = workplans_of(&ns, 2).await;
    assert!(found.iter().any(|wp| wp.spec.trigger.run.as_deref() == Some("after-failover")));
    assert!(standby.metric("kubeci_director_reconcile_total").await > 0.0);
}

fn by_event(found: &[Workplan], event: EventKind) -> Vec<&Workplan> {
    found.iter().filter(|wp| wp.spec.trigger.event == event).collect()
}

#[tokio::test]
async fn own_runs_suspend_and_history_limit() {
    let ns = TestEnv::get().namespace("director-own-runs").await;
    let _director = start_director(&ns.name, false);
    let workflows: Api<Workflow> = Api::namespaced(ns.client.clone(), &ns.name);
    let wp_api: Api<Workplan> = Api::namespaced(ns.client.clone(), &ns.name);
    let spec = "  workplanHistoryLimit: 1\n  steps:\n  - {name: only, image: alpine}\n";
    workflows.create(&PostParams::default(), &workflow(&ns.name, "plain", spec)).await.unwrap();

    // Created for generation 1.
    let first = workplans_of(&ns, 1).await.remove(0);
    assert_eq!((first.spec.trigger.event, first.spec.trigger.generation), (EventKind::Created, Some(1)));

    // A spec change: generation 2 runs once.
    let patch =
        serde_json::json!({"spec": {"steps": [{"name": "only", "image": "alpine", "args": ["changed"]}]}});
    workflows.patch("plain", &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
    let found = workplans_of(&ns, 2).await;
    assert_eq!(
        by_event(&found, EventKind::Created)
            .iter()
            .filter_map(|wp| wp.spec.trigger.generation)
            .collect::<BTreeSet<_>>(),
        BTreeSet::from([1, 2])
    );

    // History: with both finished and a limit of 1, the older one goes. (Recent completion
    // times: the default TTL of 7 days would delete both otherwise.)
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    for wp in &found {
        let completed = if wp.spec.trigger.generation == Some(1) { now - 60 } else { now };
        let completed = k8s_openapi::jiff::Timestamp::from_second(completed).unwrap().to_string();
        finish(&wp_api, wp.metadata.name.as_deref().unwrap(), &completed).await;
    }
    eventually("the older finished Workplan to be deleted", TIMEOUT, || async {
        let left = workplans(&wp_api).await;
        (left.len() == 1 && left[0].spec.trigger.generation == Some(2)).then_some(())
    })
    .await;

    // A manual run per new value; the same value again starts nothing.
    let annotate = |value: &str| serde_json::json!({"metadata": {"annotations": {"kube.ci/run": value}}});
    workflows.patch("plain", &PatchParams::default(), &Patch::Merge(annotate("x"))).await.unwrap();
    let found = workplans_of(&ns, 2).await;
    assert_eq!(by_event(&found, EventKind::Manual)[0].spec.trigger.run.as_deref(), Some("x"));
    let touch = serde_json::json!({"metadata": {"labels": {"touched": "yes"}}});
    workflows.patch("plain", &PatchParams::default(), &Patch::Merge(touch)).await.unwrap();

    // Suspended: no run for a new value (nor for the suspend's own generation).
    workflows
        .patch(
            "plain",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"suspend": true}})),
        )
        .await
        .unwrap();
    workflows.patch("plain", &PatchParams::default(), &Patch::Merge(annotate("y"))).await.unwrap();
    // A spec change after the new value: the reconcile that observes its generation has read the
    // value too, and creates any run before it writes the status.
    let later = workflows
        .patch(
            "plain",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"workplanHistoryLimit": 2}})),
        )
        .await
        .unwrap()
        .metadata
        .generation;
    observed(&workflows, "plain", later).await;
    assert_eq!(
        by_event(&workplans(&wp_api).await, EventKind::Manual).len(),
        1,
        "nothing starts while suspended"
    );

    // Resumed: the pending manual value runs, and the resume (a spec change) runs once.
    let resumed = workflows
        .patch(
            "plain",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"suspend": false}})),
        )
        .await
        .unwrap()
        .metadata
        .generation;
    observed(&workflows, "plain", resumed).await;
    let found = workplans(&wp_api).await;
    assert!(by_event(&found, EventKind::Manual).iter().any(|wp| wp.spec.trigger.run.as_deref() == Some("y")));
    assert_eq!(
        found.len(),
        4,
        "{:?}",
        found.iter().map(|w| (&w.spec.trigger.event, &w.spec.trigger.run)).collect::<Vec<_>>()
    );

    // The user sees what happened as Events on the Workflow.
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(ns.client.clone(), &ns.name);
    eventually("a WorkplanCreated Event", TIMEOUT, || {
        let events = events.clone();
        async move {
            let items = events.list(&Default::default()).await.unwrap().items;
            items.into_iter().any(|e| e.reason.as_deref() == Some("WorkplanCreated")).then_some(())
        }
    })
    .await;

    // The status counts the Workplans and names the last one (written after the creates: the
    // observed generation above proves only that the runs exist).
    let total = |w: &Workflow| {
        w.status
            .as_ref()
            .and_then(|s| s.workplans.clone())
            .map(|c| c.pending + c.running + c.completed + c.failed)
    };
    let counted = |wf: Option<&Workflow>| wf.is_some_and(|w| total(w) == Some(4));
    let status = tokio::time::timeout(TIMEOUT, await_condition(workflows.clone(), "plain", counted))
        .await
        .expect("the status counts the four Workplans")
        .unwrap()
        .unwrap()
        .status
        .unwrap();
    assert_eq!(status.steps, Some(1));
    assert!(status.last_workplan.is_some());
}

/// Waits until the director has written the status of `generation` of Workflow `name`.
async fn observed(workflows: &Api<Workflow>, name: &str, generation: Option<i64>) {
    let done = move |wf: Option<&Workflow>| {
        wf.is_some_and(|w| w.status.as_ref().and_then(|s| s.observed_generation) >= generation)
    };
    tokio::time::timeout(TIMEOUT, await_condition(workflows.clone(), name, done))
        .await
        .expect("the director observes the generation")
        .unwrap();
}

/// `/readyz` turns 200 once the Workflow cache has synced, with nothing to list too (a Deployment
/// waits for it). It used to stay 503: the readiness task's wait was never woken.
#[tokio::test]
async fn ready_once_synced_in_an_empty_namespace() {
    let ns = TestEnv::get().namespace("director-ready").await;
    for leader_election in [false, true] {
        let director = start_director(&ns.name, leader_election);
        eventually("the director reports ready", TIMEOUT, || async {
            director.is_ready().await.then_some(())
        })
        .await;
        director.stop();
    }
}
