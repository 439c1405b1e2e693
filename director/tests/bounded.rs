//! Issue 13 against the real API server: nothing lost through refused creates and restarts
//! (failure 1), and bounded by default (failure 5): caps, retention, no self-feeding triggers.

mod support;

use std::collections::BTreeSet;

use e2e::TestEnv;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use shared_types::{EventKind, Workflow, Workplan};
use support::{
    TIMEOUT, allow_workplans, baselined, config_map, events, eventually, finish, now_plus, record_where,
    recorded_versions, refuse_workplans, seed_with_config_map, set_value, start_director, workflow,
    workflow_where, workplans, workplans_of,
};

/// Failure 1: a quota refuses Workplans while the seed's ConfigMap changes 3 times; once it is
/// deleted, exactly one Workplan per version, and one Warning Event for the whole streak.
#[tokio::test]
async fn refused_creates_lose_no_event() {
    let (ns, cms, director) = seed_with_config_map("bounded-refused-creates").await;
    let (_, baseline) = record_where(&ns, "my-workflow", "the baseline", |_, r| !r.is_empty()).await;
    let baseline = recorded_versions(&baseline);
    refuse_workplans(&ns).await;

    let mut versions = Vec::new();
    for i in 1..=3 {
        versions.push(set_value(&cms, "my-config", &i.to_string()).await);
        // Each version is decided (and pending) before the next change.
        eventually("the change to be pending", TIMEOUT, || async {
            (director.metric("kubeci_director_workplans_pending").await >= i as f64).then_some(())
        })
        .await;
    }
    // Visible while refused, and the record has not advanced past the baseline.
    let (refused, record) = record_where(&ns, "my-workflow", "pendingRuns to show the refusal", |wf, _| {
        wf.status.as_ref().and_then(|s| s.pending_runs.as_ref()).is_some_and(|p| {
            p.count == 3 && p.reason.as_deref() == Some("CreateFailed") && p.oldest_since.is_some()
        })
    })
    .await;
    assert_eq!(recorded_versions(&record), baseline, "the record waits for the Workplans");
    let message = refused.status.unwrap().pending_runs.unwrap().message.unwrap();
    assert!(message.contains("exceeded quota") || message.contains("quota"), "{message}");
    eventually("the WorkplanFailed Warning", TIMEOUT, || async {
        (!events(&ns, "WorkplanFailed").await.is_empty()).then_some(())
    })
    .await;

    allow_workplans(&ns).await;
    let last = versions[2].clone();
    record_where(&ns, "my-workflow", "the last version recorded, nothing pending", |wf, record| {
        recorded_versions(record) == [last.clone()]
            && wf.status.as_ref().is_some_and(|s| s.pending_runs.is_none())
    })
    .await;
    let wp_api: Api<Workplan> = Api::namespaced(ns.client.clone(), &ns.name);
    let found = workplans(&wp_api).await;
    let fired: BTreeSet<String> =
        found.iter().filter_map(|wp| wp.spec.trigger.resource_version.clone()).collect();
    assert_eq!(found.len(), 3, "one Workplan per version");
    assert_eq!(fired, versions.iter().cloned().collect(), "exactly the three versions");
    assert!(found.iter().all(|wp| wp.spec.trigger.event == EventKind::Updated));
    let warnings = events(&ns, "WorkplanFailed").await;
    assert_eq!(warnings.len(), 1, "one Warning per failure streak: {warnings:?}");
    assert!(warnings[0].series.is_none(), "published once, not repeated: {:?}", warnings[0].series);
    assert_eq!(director.metric("kubeci_director_workplans_pending").await, 0.0);
}

/// Failure 1, without triggers: the Workplan of the first generation appears once the quota goes,
/// and `observedGeneration` advances only then.
#[tokio::test]
async fn a_refused_run_without_triggers_waits_and_observed_generation_with_it() {
    let ns = TestEnv::get().namespace("bounded-refused-own-run").await;
    let _director = start_director(&ns.name, false);
    refuse_workplans(&ns).await;
    let workflows: Api<Workflow> = Api::namespaced(ns.client.clone(), &ns.name);
    let spec = "  steps:\n  - {name: only, image: alpine}\n";
    workflows.create(&PostParams::default(), &workflow(&ns.name, "plain", spec)).await.unwrap();

    let refused = workflow_where(&ns, "plain", "the controller's status and the refusal", |wf| {
        wf.status.as_ref().is_some_and(|s| {
            !s.conditions.is_empty() && s.pending_runs.as_ref().is_some_and(|p| p.count == 1)
        })
    })
    .await;
    assert_eq!(refused.status.unwrap().observed_generation, None, "not observed before its run exists");

    allow_workplans(&ns).await;
    workflow_where(&ns, "plain", "observedGeneration 1", |wf| {
        wf.status.as_ref().is_some_and(|s| s.observed_generation == Some(1) && s.pending_runs.is_none())
    })
    .await;
    let found = workplans_of(&ns, 1).await;
    assert_eq!(found.len(), 1);
    assert_eq!(
        (found[0].spec.trigger.event, found[0].spec.trigger.generation),
        (EventKind::Created, Some(1))
    );
}

/// Pending work survives a restart: killed while two versions wait, the director comes back to
/// exactly one Workplan for the version the re-list shows, and none again for the version created
/// before. The version in between is not observable any more.
#[tokio::test]
async fn a_restart_with_runs_pending_runs_the_latest_version_once() {
    let (ns, cms, director) = seed_with_config_map("bounded-restart-pending").await;
    let first = set_value(&cms, "my-config", "1").await;
    workplans_of(&ns, 1).await;
    record_where(&ns, "my-workflow", "the first version recorded", |_, record| {
        recorded_versions(record) == [first.clone()]
    })
    .await;

    refuse_workplans(&ns).await;
    let between = set_value(&cms, "my-config", "2").await;
    eventually("version 2 pending", TIMEOUT, || async {
        (director.metric("kubeci_director_workplans_pending").await >= 1.0).then_some(())
    })
    .await;
    let latest = set_value(&cms, "my-config", "3").await;
    let (_, pending) = record_where(&ns, "my-workflow", "two runs pending", |wf, _| {
        wf.status.as_ref().and_then(|s| s.pending_runs.as_ref()).is_some_and(|p| p.count == 2)
    })
    .await;
    assert_eq!(recorded_versions(&pending), vec![first.clone()], "saved as far as Workplans exist");
    director.kill();

    allow_workplans(&ns).await;
    let director = start_director(&ns.name, false);
    record_where(&ns, "my-workflow", "the latest version recorded, nothing pending", |wf, record| {
        recorded_versions(record) == [latest.clone()]
            && wf.status.as_ref().is_some_and(|s| s.pending_runs.is_none())
    })
    .await;
    let wp_api: Api<Workplan> = Api::namespaced(ns.client.clone(), &ns.name);
    let found: BTreeSet<String> =
        workplans(&wp_api).await.iter().filter_map(|wp| wp.spec.trigger.resource_version.clone()).collect();
    assert_eq!(found, BTreeSet::from([first, latest]), "version {between} came and went while down");
    assert_eq!(director.metric("kubeci_director_trigger_fired_total").await, 1.0);
}

/// Failure 5: a trigger on kubeci's own kinds is refused, naming the field.
#[tokio::test]
async fn a_trigger_on_workplans_is_refused() {
    let ns = TestEnv::get().namespace("bounded-self-feeding").await;
    let director = start_director(&ns.name, false);
    let workflows: Api<Workflow> = Api::namespaced(ns.client.clone(), &ns.name);
    let spec = "  triggers:\n  - {apiVersion: kube.ci/v1alpha1, kind: Workplan, onAddOrUpdate: true}\n  steps:\n  - {name: only, image: alpine}\n";
    workflows.create(&PostParams::default(), &workflow(&ns.name, "loop", spec)).await.unwrap();
    let invalid = workflow_where(&ns, "loop", "the Invalid condition", |wf| {
        wf.status
            .as_ref()
            .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Invalid" && c.status == "True"))
    })
    .await;
    let conditions = invalid.status.unwrap().conditions;
    let message = &conditions.iter().find(|c| c.type_ == "Invalid").unwrap().message;
    assert_eq!(
        message,
        "spec.triggers[0].kind: Workplan is kubeci's own kind: a trigger on it would fire on kubeci's own writes"
    );
    assert_eq!(director.metric("kubeci_director_trigger_watches").await, 0.0);
    let wp_api: Api<Workplan> = Api::namespaced(ns.client.clone(), &ns.name);
    assert!(workplans(&wp_api).await.is_empty());
}

/// Creates Workflow `name` (with `extra` spec lines) triggered by ConfigMaps labelled
/// `app: <name>`, and waits for its baseline.
async fn on_labelled_config_maps(ns: &e2e::TestNamespace, name: &str, extra: &str) -> Api<ConfigMap> {
    let spec = format!(
        "{extra}  triggers:\n  - {{apiVersion: v1, kind: ConfigMap, selector: {{matchLabels: {{app: {name}}}}}, onAddOrUpdate: true}}\n  steps:\n  - {{name: only, image: alpine}}\n"
    );
    let workflows: Api<Workflow> = Api::namespaced(ns.client.clone(), &ns.name);
    workflows.create(&PostParams::default(), &workflow(&ns.name, name, &spec)).await.unwrap();
    baselined(ns, name).await;
    Api::namespaced(ns.client.clone(), &ns.name)
}

/// Failure 5: a burst of 20 events with `concurrentRuns: 2` never has more than 2 unfinished
/// Workplans, shows the excess as pending, and ends with 20. The test plays the operator.
#[tokio::test]
async fn a_burst_waits_for_the_concurrency_cap_and_is_never_dropped() {
    let ns = TestEnv::get().namespace("bounded-concurrency").await;
    let _director = start_director(&ns.name, false);
    let extra = "  limits: {concurrentRuns: 2}\n  workplanHistoryLimit: 50\n";
    let cms = on_labelled_config_maps(&ns, "burst", extra).await;
    for i in 0..20 {
        cms.create(&PostParams::default(), &config_map(&format!("burst-{i}"), &[("app", "burst")], "0"))
            .await
            .unwrap();
    }
    let held = workflow_where(&ns, "burst", "the excess to wait as ConcurrencyLimited", |wf| {
        wf.status
            .as_ref()
            .and_then(|s| s.pending_runs.as_ref())
            .is_some_and(|p| p.reason.as_deref() == Some("ConcurrencyLimited") && p.count >= 1)
    })
    .await;
    println!("pending while capped: {:?}", held.status.unwrap().pending_runs);

    let wp_api: Api<Workplan> = Api::namespaced(ns.client.clone(), &ns.name);
    let mut seen = BTreeSet::new();
    let mut most = 0;
    let deadline = tokio::time::Instant::now() + 2 * TIMEOUT;
    loop {
        let found = workplans(&wp_api).await;
        let running: Vec<&Workplan> = found.iter().filter(|wp| support::unfinished(wp)).collect();
        most = most.max(running.len());
        assert!(running.len() <= 2, "{} unfinished Workplans", running.len());
        seen.extend(found.iter().filter_map(|wp| wp.metadata.name.clone()));
        if seen.len() == 20 && running.is_empty() {
            break;
        }
        for wp in running {
            finish(&wp_api, wp.metadata.name.as_deref().unwrap(), &now_plus(0)).await;
        }
        assert!(tokio::time::Instant::now() < deadline, "{} Workplans after the deadline", seen.len());
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(most, 2, "the cap was reached, never passed");
    let objects: BTreeSet<String> =
        workplans(&wp_api).await.iter().filter_map(|wp| wp.spec.trigger.name.clone()).collect();
    assert_eq!(objects.len(), 20, "one Workplan per ConfigMap");
    workflow_where(&ns, "burst", "nothing pending", |wf| {
        wf.status.as_ref().is_some_and(|s| s.pending_runs.is_none())
    })
    .await;
}

/// Failure 5: finished Workplans beyond the default count of 10 go, those that finished first;
/// and a Workplan past its TTL goes when its time is up.
#[tokio::test]
async fn retention_keeps_the_default_count_and_expires_the_ttl() {
    let ns = TestEnv::get().namespace("bounded-retention").await;
    let _director = start_director(&ns.name, false);
    let cms = on_labelled_config_maps(&ns, "many", "").await;
    let workflows: Api<Workflow> = Api::namespaced(ns.client.clone(), &ns.name);
    let wp_api: Api<Workplan> = Api::namespaced(ns.client.clone(), &ns.name);
    // One at a time, each finished before the next: completion order is creation order.
    let mut order = Vec::new();
    for i in 0..12 {
        cms.create(&PostParams::default(), &config_map(&format!("many-{i}"), &[("app", "many")], "0"))
            .await
            .unwrap();
        let wp = eventually("the next Workplan", TIMEOUT, || {
            let wp_api = wp_api.clone();
            let name = format!("many-{i}");
            async move {
                workplans(&wp_api).await.into_iter().find(|wp| wp.spec.trigger.name.as_deref() == Some(&name))
            }
        })
        .await;
        let name = wp.metadata.name.clone().unwrap();
        finish(&wp_api, &name, &now_plus(i - 100)).await;
        order.push(name);
    }
    let kept: BTreeSet<String> = order[2..].iter().cloned().collect();
    eventually("the two that finished first to go", TIMEOUT, || async {
        let left: BTreeSet<String> =
            workplans(&wp_api).await.into_iter().filter_map(|wp| wp.metadata.name).collect();
        (left == kept).then_some(())
    })
    .await;

    // TTL: a Workplan finished now is deleted 3 s later, with nothing else happening.
    let spec = "  workplanHistoryTTLSeconds: 3\n  steps:\n  - {name: only, image: alpine}\n";
    workflows.create(&PostParams::default(), &workflow(&ns.name, "short", spec)).await.unwrap();
    let short = eventually("the short-lived Workplan", TIMEOUT, || {
        let wp_api = wp_api.clone();
        async move { workplans(&wp_api).await.into_iter().find(|wp| wp.spec.workflow == "short") }
    })
    .await;
    let name = short.metadata.name.unwrap();
    finish(&wp_api, &name, &now_plus(0)).await;
    let started = std::time::Instant::now();
    eventually("the expired Workplan to go", TIMEOUT, || async {
        wp_api.get_opt(&name).await.unwrap().is_none().then_some(())
    })
    .await;
    let waited = started.elapsed();
    println!("expired after {waited:?}");
    assert!(waited >= std::time::Duration::from_secs(1), "not before its time: {waited:?}");
}

/// Hostile: a Workplan that does not deserialize (status.taskIndex beyond int32) is reported with
/// a Warning Event on it and stops nothing: another Workflow still runs, also after a restart.
#[tokio::test]
async fn a_malformed_workplan_is_reported_and_stops_nothing() {
    let ns = TestEnv::get().namespace("bounded-malformed-workplan").await;
    let wp_api: Api<Workplan> = Api::namespaced(ns.client.clone(), &ns.name);
    let bad = workflow(&ns.name, "bad", "  steps:\n  - {name: only, image: alpine}\n");
    let trigger = serde_json::from_value(serde_json::json!({"event": "Manual", "run": "bad"})).unwrap();
    let mut malformed = shared_types::planner::plan(&bad, trigger).unwrap();
    malformed.metadata.finalizers = None;
    let name = wp_api.create(&PostParams::default(), &malformed).await.unwrap().metadata.name.unwrap();
    let patch = serde_json::json!({"status": {"phase": "Running", "taskIndex": 3_000_000_000_i64}});
    // Read back through a guard: the typed client cannot read what the API server took.
    let guarded: Api<kube::core::DeserializeGuard<Workplan>> = Api::namespaced(ns.client.clone(), &ns.name);
    let stored = guarded
        .patch_status(&name, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(patch))
        .await
        .unwrap();
    assert!(stored.0.is_err(), "the Workplan does not deserialize");

    for restart in [false, true] {
        let director = start_director(&ns.name, false);
        eventually("the director to be ready", TIMEOUT, || async { director.is_ready().await.then_some(()) })
            .await;
        let run = if restart { "after-restart" } else { "first" };
        let workflows: Api<Workflow> = Api::namespaced(ns.client.clone(), &ns.name);
        let mut fine = workflow(&ns.name, "fine", "  steps:\n  - {name: only, image: alpine}\n");
        fine.metadata.annotations = Some([("kube.ci/run".to_string(), run.to_string())].into());
        if restart {
            let patch = serde_json::json!({"metadata": {"annotations": {"kube.ci/run": run}}});
            workflows
                .patch("fine", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(patch))
                .await
                .unwrap();
        } else {
            workflows.create(&PostParams::default(), &fine).await.unwrap();
        }
        workflow_where(&ns, "fine", "the manual run to exist", |wf| {
            wf.status.as_ref().is_some_and(|s| s.last_manual_run.as_deref() == Some(run))
        })
        .await;
        director.kill();
    }
    let warning = eventually("the Malformed Warning on the Workplan", TIMEOUT, || async {
        events(&ns, "Malformed")
            .await
            .into_iter()
            .find(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name.as_str()))
    })
    .await;
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    assert_eq!(warning.regarding.unwrap().kind.as_deref(), Some("Workplan"));
}
