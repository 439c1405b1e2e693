//! The director binary on the test control plane.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use e2e::{TestEnv, TestNamespace};
use k8s_openapi::api::core::v1::{ConfigMap, ResourceQuota, ResourceQuotaSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::wait::await_condition;
use shared_types::{EventKind, RecordedObject, TriggerEvent, TriggerRecord, Workflow, Workplan};

pub use e2e::eventually;

pub use e2e::Component as Director;

/// Starts the real `director` for Workflows of `namespace`, with its lease there too. The binary
/// is this build's, or the one `KUBECI_DIRECTOR_UNDER_TEST` names: how a test is run against an
/// older director, to show that it fails there.
pub fn start_director(namespace: &str, leader_election: bool) -> Director {
    let mut args = vec!["--lease-namespace", namespace];
    if !leader_election {
        args.push("--no-leader-election");
    }
    let binary = std::env::var("KUBECI_DIRECTOR_UNDER_TEST");
    Director::start(binary.as_deref().unwrap_or(env!("CARGO_BIN_EXE_director")), namespace, &args)
}

pub async fn workplans(api: &Api<Workplan>) -> Vec<Workplan> {
    api.list(&ListParams::default()).await.unwrap().items
}

/// Plays the workplan-operator: marks a Workplan finished at `completed` (RFC 3339), and
/// releases its cleanup finalizer as the operator does once the final phase is written.
pub async fn finish(api: &Api<Workplan>, name: &str, completed: &str) {
    let patch = serde_json::json!({"status": {"phase": "Completed", "completionTime": completed}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
    let release = serde_json::json!({"metadata": {"finalizers": null}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(release)).await.unwrap();
}

pub const TIMEOUT: Duration = Duration::from_secs(60);

pub fn workflow(ns: &str, name: &str, yaml_spec: &str) -> Workflow {
    let mut wf: Workflow = serde_yaml::from_str(&format!(
        "apiVersion: kube.ci/v1alpha1\nkind: Workflow\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{yaml_spec}"
    ))
    .unwrap();
    wf.metadata.namespace = Some(ns.to_string());
    wf
}

pub fn seed(ns: &str) -> Workflow {
    let mut wf: Workflow = serde_yaml::from_str(shared_types::repo::SEED_WORKFLOW).unwrap();
    wf.metadata.namespace = Some(ns.to_string());
    wf.spec.triggers[0].namespace = Some(ns.to_string());
    wf.status = None;
    wf
}

pub fn config_map(name: &str, labels: &[(&str, &str)], value: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([("value".to_string(), value.to_string())])),
        ..ConfigMap::default()
    }
}

pub async fn set_value(api: &Api<ConfigMap>, name: &str, value: &str) -> String {
    let patch = serde_json::json!({"data": {"value": value}});
    let cm = api.patch(name, &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
    cm.metadata.resource_version.unwrap()
}

/// Waits until the director has taken the trigger baseline of `name`.
pub async fn baselined(ns: &TestNamespace, name: &str) {
    let api: Api<Workflow> = Api::namespaced(ns.client.clone(), &ns.name);
    let cond = |wf: Option<&Workflow>| {
        wf.and_then(|w| w.status.as_ref()).is_some_and(|s| !s.baselined_triggers.is_empty())
    };
    tokio::time::timeout(TIMEOUT, await_condition(api, name, cond))
        .await
        .expect("the baseline is taken")
        .unwrap();
}

/// Waits until the director has handled its trigger watch's first listing: the count of handled
/// trigger events advances only once the Workplans an event starts exist.
pub async fn listing_handled(director: &Director) {
    eventually("the director to handle its trigger watch's listing", TIMEOUT, || async {
        (director.metric("kubeci_director_trigger_events_total").await >= 1.0).then_some(())
    })
    .await;
}

pub async fn workplans_of(ns: &TestNamespace, count: usize) -> Vec<Workplan> {
    let api: Api<Workplan> = Api::namespaced(ns.client.clone(), &ns.name);
    eventually(&format!("{count} Workplans"), TIMEOUT, || {
        let api = api.clone();
        async move {
            let list = workplans(&api).await;
            (list.len() >= count).then_some(list)
        }
    })
    .await
}

/// A namespace with the seed's ConfigMap `my-config`, a director, and the seed's Workflow with its
/// baseline taken.
pub async fn seed_with_config_map(test: &str) -> (TestNamespace, Api<ConfigMap>, Director) {
    seed_with_config_map_and(test, |_| {}).await
}

/// [`seed_with_config_map`] with the seed's Workflow changed by `change` first.
pub async fn seed_with_config_map_and(
    test: &str,
    change: impl FnOnce(&mut Workflow),
) -> (TestNamespace, Api<ConfigMap>, Director) {
    let ns = TestEnv::get().namespace(test).await;
    let cms: Api<ConfigMap> = Api::namespaced(ns.client.clone(), &ns.name);
    cms.create(&PostParams::default(), &config_map("my-config", &[], "0")).await.unwrap();
    let director = start_director(&ns.name, false);
    let mut wf = seed(&ns.name);
    change(&mut wf);
    Api::<Workflow>::namespaced(ns.client.clone(), &ns.name)
        .create(&PostParams::default(), &wf)
        .await
        .unwrap();
    baselined(&ns, "my-workflow").await;
    (ns, cms, director)
}

/// Waits until Workflow `name` satisfies `condition`, and returns it.
pub async fn workflow_where(
    ns: &TestNamespace,
    name: &str,
    what: &str,
    condition: impl Fn(&Workflow) -> bool,
) -> Workflow {
    let api: Api<Workflow> = Api::namespaced(ns.client.clone(), &ns.name);
    let cond = move |wf: Option<&Workflow>| wf.is_some_and(&condition);
    tokio::time::timeout(TIMEOUT, await_condition(api, name, cond))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap()
        .unwrap()
}

/// A Workflow's saved trigger record: the objects its TriggerRecord objects hold, by uid.
pub type Record = BTreeMap<String, RecordedObject>;

/// The trigger record saved for `wf`: the objects of the TriggerRecord objects it owns.
pub async fn saved_record(ns: &TestNamespace, wf: &Workflow) -> Record {
    let api: Api<TriggerRecord> = Api::namespaced(ns.client.clone(), &ns.name);
    let params = ListParams::default().labels(&format!("kube.ci/workflow={}", wf.name_any()));
    let uid = wf.uid().unwrap_or_default();
    api.list(&params)
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|shard| shard.owner_references().iter().any(|owner| owner.uid == uid))
        .flat_map(|shard| shard.spec.objects)
        .collect()
}

/// Waits until Workflow `name` and its saved trigger record satisfy `condition`, and returns
/// both. The record's shards are saved before the status that counts them.
pub async fn record_where(
    ns: &TestNamespace,
    name: &str,
    what: &str,
    condition: impl Fn(&Workflow, &Record) -> bool,
) -> (Workflow, Record) {
    let api: Api<Workflow> = Api::namespaced(ns.client.clone(), &ns.name);
    eventually(what, TIMEOUT, || async {
        let wf = api.get(name).await.ok()?;
        let record = saved_record(ns, &wf).await;
        condition(&wf, &record).then_some((wf, record))
    })
    .await
}

/// The resourceVersions of the trigger objects a saved record holds.
pub fn recorded_versions(record: &Record) -> Vec<String> {
    record.values().filter_map(|o| o.resource_version.clone()).collect()
}

const QUOTA: &str = "no-workplans";

/// A ResourceQuota `count/workplans.kube.ci=0` in the namespace, in force once this returns: a
/// dry-run create of a Workplan is refused.
pub async fn refuse_workplans(ns: &TestNamespace) {
    let quotas: Api<ResourceQuota> = Api::namespaced(ns.client.clone(), &ns.name);
    let quota = ResourceQuota {
        metadata: ObjectMeta { name: Some(QUOTA.into()), ..ObjectMeta::default() },
        spec: Some(ResourceQuotaSpec {
            hard: Some(BTreeMap::from([("count/workplans.kube.ci".to_string(), Quantity("0".into()))])),
            ..ResourceQuotaSpec::default()
        }),
        ..ResourceQuota::default()
    };
    quotas.create(&PostParams::default(), &quota).await.unwrap();
    let probe = probe_workplan(&ns.name);
    let workplans: Api<Workplan> = Api::namespaced(ns.client.clone(), &ns.name);
    eventually("the quota to refuse Workplans", TIMEOUT, || {
        let (workplans, probe) = (workplans.clone(), probe.clone());
        async move {
            let dry_run = PostParams { dry_run: true, ..PostParams::default() };
            match workplans.create(&dry_run, &probe).await {
                Err(kube::Error::Api(e)) if e.code == 403 => Some(()),
                _ => None,
            }
        }
    })
    .await;
}

/// Deletes the quota of [`refuse_workplans`].
pub async fn allow_workplans(ns: &TestNamespace) {
    let quotas: Api<ResourceQuota> = Api::namespaced(ns.client.clone(), &ns.name);
    quotas.delete(QUOTA, &DeleteParams::default()).await.unwrap();
}

fn probe_workplan(ns: &str) -> Workplan {
    let wf = workflow(ns, "probe", "  steps:\n  - {name: only, image: alpine}\n");
    let trigger: TriggerEvent =
        serde_json::from_value(serde_json::json!({"event": EventKind::Manual, "run": "probe"})).unwrap();
    shared_types::planner::plan(&wf, trigger).unwrap()
}

/// The Events of the namespace with `reason`.
pub async fn events(ns: &TestNamespace, reason: &str) -> Vec<k8s_openapi::api::events::v1::Event> {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(ns.client.clone(), &ns.name);
    let items = api.list(&ListParams::default()).await.unwrap().items;
    items.into_iter().filter(|e| e.reason.as_deref() == Some(reason)).collect()
}

/// Whether a Workplan still runs (no final phase).
pub fn unfinished(wp: &Workplan) -> bool {
    !wp.status.as_ref().and_then(|s| s.phase).is_some_and(shared_types::Phase::is_finished)
}

/// Now, as the API server writes times (seconds), `offset` seconds away.
pub fn now_plus(offset: i64) -> String {
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    k8s_openapi::jiff::Timestamp::from_second(now + offset).unwrap().to_string()
}
