//! Issue 13, failure 4 against the real API server: trigger records that scale. A selector
//! trigger over 12,000 ConfigMaps (the old record in the Workflow's status passed the API
//! server's object limit at about 11,000), replay safety at that scale, and the migration from
//! the old status form.

mod support;

use std::collections::BTreeMap;

use e2e::{TestEnv, TestNamespace};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::wait::await_condition;
use kube::{Resource, ResourceExt};
use shared_types::trigger_record::{SHARDS, shard_name, shard_of};
use shared_types::{EventKind, RecordedObject, TriggerRecord, TriggerRecordSpec, Workflow, Workplan};
use support::{
    Director, TIMEOUT, baselined, config_map, eventually, listing_handled, record_where, saved_record,
    set_value, start_director, workflow, workplans, workplans_of,
};

/// The old record's manager: the migration test writes the status the way directors before the
/// TriggerRecord kind did.
const TRIGGERS_MANAGER: &str = "kubeci-director-triggers";

/// Creates `count` ConfigMaps `cm-<i>` labelled `group=<group>`, many at once.
async fn many_config_maps(ns: &TestNamespace, group: &str, count: usize) {
    let api: Api<ConfigMap> = Api::namespaced(ns.client.clone(), &ns.name);
    futures::stream::iter(0..count)
        .map(|i| {
            let api = api.clone();
            async move {
                let cm = config_map(&format!("cm-{i}"), &[("group", group)], "0");
                api.create(&PostParams::default(), &cm).await.map(|_| ())
            }
        })
        .buffer_unordered(64)
        .try_collect::<()>()
        .await
        .expect("creating the ConfigMaps");
}

/// A Workflow with one selector trigger on the ConfigMaps of `group`, on every event, with caps
/// above what the tests start.
fn selector_workflow(ns: &str, name: &str, group: &str) -> Workflow {
    workflow(
        ns,
        name,
        &format!(
            "  steps:\n  - {{name: only, image: alpine}}\n  limits: {{runsPerMinute: 1000, concurrentRuns: 1000}}\n  triggers:\n  - {{apiVersion: v1, kind: ConfigMap, selector: {{matchLabels: {{group: {group}}}}}, onAddOrUpdate: true, onDelete: true}}\n"
        ),
    )
}

/// The Workflow as the API server stores it, in bytes of JSON.
async fn stored_size(ns: &TestNamespace, name: &str) -> usize {
    let api: Api<Workflow> = Api::namespaced(ns.client.clone(), &ns.name);
    let raw: serde_json::Value = api.get(name).await.map(|wf| serde_json::to_value(wf).unwrap()).unwrap();
    serde_json::to_vec(&raw).unwrap().len()
}

/// Waits until the status counts `objects` recorded objects, in every shard saved.
async fn recorded_objects(ns: &TestNamespace, name: &str, objects: i64) -> Workflow {
    let api: Api<Workflow> = Api::namespaced(ns.client.clone(), &ns.name);
    let cond = move |wf: Option<&Workflow>| {
        wf.and_then(|w| w.status.as_ref())
            .and_then(|s| s.trigger_record.as_ref())
            .is_some_and(|r| r.objects == objects)
    };
    tokio::time::timeout(TIMEOUT, await_condition(api, name, cond))
        .await
        .unwrap_or_else(|_| panic!("the record to count {objects} objects"))
        .unwrap()
        .unwrap()
}

async fn save_errors(director: &Director) -> f64 {
    director.metric("kubeci_director_errors_total{error=\"save_record\"}").await
}

/// Failure 4: a selector trigger over 12,000 ConfigMaps. The old director kept the record in the
/// Workflow's status, about 1.6 MB here: over the API server's limit, so the baseline was never
/// saved and every later save failed. Now the Workflow stays small, a change fires exactly one
/// Workplan and rewrites one shard, every save succeeds; then, at that scale, a restart fires
/// nothing and a deletion while the director is down fires `onDelete` once, with the name.
#[tokio::test]
async fn failure_4_a_selector_over_12000_config_maps() {
    const COUNT: usize = 12_000;
    let ns = TestEnv::get().namespace("records-twelve-thousand").await;
    many_config_maps(&ns, "big", COUNT).await;
    let director = start_director(&ns.name, false);
    let workflows: Api<Workflow> = Api::namespaced(ns.client.clone(), &ns.name);
    workflows.create(&PostParams::default(), &selector_workflow(&ns.name, "big", "big")).await.unwrap();

    // The old director never got past the baseline here: its save was refused.
    baselined(&ns, "big").await;
    let wf = recorded_objects(&ns, "big", COUNT as i64).await;
    let summary = wf.status.as_ref().and_then(|s| s.trigger_record.clone()).unwrap();
    assert!(summary.shards > 1 && summary.shards <= SHARDS as i32, "{summary:?}");
    let size = stored_size(&ns, "big").await;
    assert!(size < 8 * 1024, "the Workflow stays small whatever its triggers match: {size} bytes");
    let record = saved_record(&ns, &wf).await;
    assert_eq!(record.len(), COUNT, "every matched object is recorded once");
    let shards: Api<TriggerRecord> = Api::namespaced(ns.client.clone(), &ns.name);
    let largest = shards
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|shard| serde_json::to_vec(shard).unwrap().len())
        .max()
        .unwrap();
    assert!(largest < 64 * 1024, "each shard stays far below the object limit: {largest} bytes");
    assert_eq!(director.metric("kubeci_director_trigger_fired_total").await, 0.0, "a baseline fires nothing");

    // One change: exactly one Workplan, and one shard rewritten.
    let writes = director.metric("kubeci_director_trigger_record_writes_total").await;
    let cms: Api<ConfigMap> = Api::namespaced(ns.client.clone(), &ns.name);
    let rv = set_value(&cms, "cm-4711", "1").await;
    let fired = workplans_of(&ns, 1).await;
    assert_eq!(fired.len(), 1);
    assert_eq!(
        (fired[0].spec.trigger.event, fired[0].spec.trigger.name.as_deref()),
        (EventKind::Updated, Some("cm-4711"))
    );
    let uid = cms.get("cm-4711").await.unwrap().uid().unwrap();
    record_where(&ns, "big", "the change recorded", |_, record| {
        record.get(&uid).and_then(|o| o.resource_version.as_deref()) == Some(rv.as_str())
    })
    .await;
    eventually("the change's shard to be written", TIMEOUT, || async {
        (director.metric("kubeci_director_trigger_record_writes_total").await > writes).then_some(())
    })
    .await;
    assert_eq!(
        director.metric("kubeci_director_trigger_record_writes_total").await,
        writes + 1.0,
        "an event rewrites the one shard its object is in"
    );
    assert_eq!(save_errors(&director).await, 0.0, "every save succeeded");

    // A restart: the re-list of 12,000 objects fires nothing.
    director.kill();
    let director = start_director(&ns.name, false);
    listing_handled(&director).await;
    let wp_api: Api<Workplan> = Api::namespaced(ns.client.clone(), &ns.name);
    assert_eq!(workplans(&wp_api).await.len(), 1, "a restart must not fire");
    assert_eq!(director.metric("kubeci_director_trigger_fired_total").await, 0.0);
    assert!(director.metric("kubeci_director_trigger_deduplicated_total").await >= COUNT as f64);
    director.kill();

    // Deleted while the director is down: onDelete once, with the object's name.
    cms.delete("cm-99", &DeleteParams::default()).await.unwrap();
    let director = start_director(&ns.name, false);
    let found = workplans_of(&ns, 2).await;
    let deleted: Vec<&Workplan> =
        found.iter().filter(|wp| wp.spec.trigger.event == EventKind::Deleted).collect();
    assert_eq!(deleted.len(), 1, "{found:?}");
    assert_eq!(deleted[0].spec.trigger.name.as_deref(), Some("cm-99"));
    recorded_objects(&ns, "big", COUNT as i64 - 1).await;
    assert_eq!(director.metric("kubeci_director_trigger_fired_total").await, 1.0);
    assert_eq!(save_errors(&director).await, 0.0, "every save succeeded");
    assert_eq!(workplans(&wp_api).await.len(), 2);
}

/// A Workflow whose status still holds the old record (`lastObservedResourceGeneration`, as
/// directors before the TriggerRecord kind wrote it) is migrated on first sight, firing nothing
/// for the objects it recorded: only for what changed while no director ran (one update, one
/// deletion). The old map is removed. A forged TriggerRecord (labelled for the Workflow but not
/// owned by it) is ignored.
#[tokio::test]
async fn the_old_status_form_is_migrated_without_firing() {
    const COUNT: usize = 300;
    let ns = TestEnv::get().namespace("records-migration").await;
    many_config_maps(&ns, "old", COUNT).await;
    let workflows: Api<Workflow> = Api::namespaced(ns.client.clone(), &ns.name);
    let wf =
        workflows.create(&PostParams::default(), &selector_workflow(&ns.name, "old", "old")).await.unwrap();

    // The status an old director saved: every ConfigMap recorded, the trigger baselined.
    let cms: Api<ConfigMap> = Api::namespaced(ns.client.clone(), &ns.name);
    let old: BTreeMap<String, RecordedObject> = cms
        .list(&ListParams::default().labels("group=old"))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|cm| {
            let saved = RecordedObject {
                api_version: "v1".into(),
                kind: "ConfigMap".into(),
                namespace: Some(ns.name.clone()),
                name: cm.name_any(),
                generation: None,
                resource_version: cm.resource_version(),
            };
            (cm.uid().unwrap(), saved)
        })
        .collect();
    assert_eq!(old.len(), COUNT);
    let status = serde_json::json!({
        "apiVersion": "kube.ci/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": "old"},
        "status": {
            "lastObservedResourceGeneration": old,
            "baselinedTriggers": [format!("v1 ConfigMap {}/* {{group=old}}", ns.name)],
        },
    });
    workflows
        .patch_status("old", &PatchParams::apply(TRIGGERS_MANAGER).force(), &Patch::Apply(status))
        .await
        .unwrap();
    // A forged shard: labelled for the Workflow, not owned by it, recording an object that does
    // not exist (which would fire onDelete if it were believed).
    let forged = TriggerRecord::new(
        &shard_name("old", "forged00", shard_of("forged-uid")),
        TriggerRecordSpec {
            workflow: "old".into(),
            shard: shard_of("forged-uid") as i32,
            count: 1,
            objects: BTreeMap::from([(
                "forged-uid".to_string(),
                RecordedObject { name: "ghost".into(), ..old.values().next().unwrap().clone() },
            )]),
        },
    );
    let forged = TriggerRecord {
        metadata: ObjectMeta {
            labels: Some(BTreeMap::from([("kube.ci/workflow".to_string(), "old".to_string())])),
            ..forged.metadata
        },
        ..forged
    };
    let shards: Api<TriggerRecord> = Api::namespaced(ns.client.clone(), &ns.name);
    shards.create(&PostParams::default(), &forged).await.unwrap();

    // While no director runs: one update, one deletion.
    let updated_rv = set_value(&cms, "cm-7", "1").await;
    cms.delete("cm-8", &DeleteParams::default()).await.unwrap();

    let director = start_director(&ns.name, false);
    let found = workplans_of(&ns, 2).await;
    let events: BTreeMap<EventKind, (Option<String>, Option<String>)> = found
        .iter()
        .map(|wp| {
            let t = &wp.spec.trigger;
            (t.event, (t.name.clone(), t.resource_version.clone()))
        })
        .collect();
    assert_eq!(
        events,
        BTreeMap::from([
            (EventKind::Updated, (Some("cm-7".to_string()), Some(updated_rv.clone()))),
            (
                EventKind::Deleted,
                (
                    Some("cm-8".to_string()),
                    old.values().find(|o| o.name == "cm-8").unwrap().resource_version.clone()
                )
            ),
        ]),
        "only what changed while no director ran fires"
    );

    // Migrated: the record is in the shards, the old map is gone from the status.
    let migrated = recorded_objects(&ns, "old", COUNT as i64 - 1).await;
    let status = migrated.status.clone().unwrap();
    assert!(status.last_observed_resource_generation.is_empty(), "the old map is removed");
    let (_, record) = record_where(&ns, "old", "the update recorded", |_, record| {
        record.values().any(|o| o.resource_version.as_deref() == Some(updated_rv.as_str()))
    })
    .await;
    assert_eq!(record.len(), COUNT - 1);
    assert!(!record.contains_key("forged-uid"), "the forged shard is not the Workflow's");
    assert!(
        shards.list(&ListParams::default()).await.unwrap().items.iter().all(|shard| {
            shard.name_any() == forged.name_any()
                || shard.owner_references().iter().any(|o| Some(&o.uid) == wf.meta().uid.as_ref())
        }),
        "every shard the director wrote is owned by the Workflow"
    );
    assert_eq!(director.metric("kubeci_director_trigger_fired_total").await, 2.0);

    // A restart after the migration fires nothing more.
    director.kill();
    let director = start_director(&ns.name, false);
    listing_handled(&director).await;
    let wp_api: Api<Workplan> = Api::namespaced(ns.client.clone(), &ns.name);
    assert_eq!(workplans(&wp_api).await.len(), 2, "a restart must not fire");
    assert_eq!(director.metric("kubeci_director_trigger_fired_total").await, 0.0);
}
