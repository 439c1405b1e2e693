//! The workplan-operator against the real API server, with the test playing the workers: it
//! claims and reports jobs through the same protocol functions the worker uses.

use std::time::Duration;

use e2e::{Component, TestEnv, TestNamespace, eventually};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::wait::await_condition;
use pretty_assertions::assert_eq;
use shared_types::planner;
use shared_types::protocol::{claim, report};
use shared_types::{JobState, Phase, RequestState, TriggerEvent, Workflow, Workplan};

const TIMEOUT: Duration = Duration::from_secs(60);

fn operator(ns: &str) -> Component {
    Component::start(
        env!("CARGO_BIN_EXE_workplan-operator"),
        ns,
        &["--no-leader-election", "--worker-lease-namespace", ns],
    )
}

/// The seed's Workplan (two tasks), created in `ns`.
async fn seed_workplan(ns: &TestNamespace) -> Workplan {
    let mut wf: Workflow = serde_yaml::from_str(shared_types::repo::SEED_WORKFLOW).unwrap();
    wf.metadata.namespace = Some(ns.name.clone());
    let workplan = planner::plan(&wf, TriggerEvent::manual(Some("1".into()))).unwrap();
    Api::<Workplan>::namespaced(ns.client.clone(), &ns.name)
        .create(&PostParams::default(), &workplan)
        .await
        .unwrap()
}

/// Waits until the RequestState requests `job`, and returns it.
async fn requested(ns: &TestNamespace, name: &str, job: &str) -> RequestState {
    let api: Api<RequestState> = Api::namespaced(ns.client.clone(), &ns.name);
    let wanted = job.to_string();
    let cond = move |r: Option<&RequestState>| {
        r.is_some_and(|r| r.spec.job.to_string() == wanted && r.spec.state == JobState::Requested)
    };
    tokio::time::timeout(TIMEOUT, await_condition(api, name, cond))
        .await
        .unwrap_or_else(|_| panic!("{job} was not requested"))
        .unwrap()
        .unwrap()
}

/// A worker's Lease renewed now for `seconds`: the operator treats the worker as alive.
async fn lease(ns: &TestNamespace, worker: &str, seconds: i32) {
    let lease = Lease {
        metadata: ObjectMeta { name: Some(worker.into()), ..ObjectMeta::default() },
        spec: Some(LeaseSpec {
            holder_identity: Some(worker.into()),
            lease_duration_seconds: Some(seconds),
            renew_time: Some(MicroTime(Timestamp::now())),
            ..LeaseSpec::default()
        }),
    };
    let leases: Api<Lease> = Api::namespaced(ns.client.clone(), &ns.name);
    leases.patch(worker, &PatchParams::apply("e2e").force(), &Patch::Apply(&lease)).await.unwrap();
}

/// Plays a live worker: holds a Lease, claims `job` and reports `state`.
async fn work(
    ns: &TestNamespace,
    name: &str,
    job: &str,
    worker: &str,
    state: JobState,
    message: Option<&str>,
) {
    lease(ns, worker, 300).await;
    let api: Api<RequestState> = Api::namespaced(ns.client.clone(), &ns.name);
    let rqs = requested(ns, name, job).await;
    let started = api
        .replace(name, &PostParams::default(), &claim(&rqs, worker, Timestamp::now()).unwrap())
        .await
        .unwrap();
    let done =
        report(&started, worker, state, Some("node-a"), message.map(Into::into), Timestamp::now()).unwrap();
    api.replace(name, &PostParams::default(), &done).await.unwrap();
}

async fn finished(ns: &TestNamespace, name: &str) -> Workplan {
    let api: Api<Workplan> = Api::namespaced(ns.client.clone(), &ns.name);
    let cond = |wp: Option<&Workplan>| {
        wp.and_then(|w| w.status.as_ref()).and_then(|s| s.phase).is_some_and(Phase::is_finished)
    };
    tokio::time::timeout(TIMEOUT, await_condition(api, name, cond)).await.expect("finishes").unwrap().unwrap()
}

/// Waits until the Workplan is gone from the API server.
async fn gone(ns: &TestNamespace, name: &str) {
    let api: Api<Workplan> = Api::namespaced(ns.client.clone(), &ns.name);
    tokio::time::timeout(TIMEOUT, await_condition(api, name, |wp: Option<&Workplan>| wp.is_none()))
        .await
        .unwrap_or_else(|_| panic!("Workplan {name} still there after {TIMEOUT:?}"))
        .unwrap();
}

/// The note of the operator's Event of `reason` on the Workplan, once it is there.
async fn event_note(ns: &TestNamespace, name: &str, reason: &str) -> String {
    let events: Api<Event> = Api::namespaced(ns.client.clone(), &ns.name);
    eventually(&format!("a {reason} Event on {name}"), TIMEOUT, || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .into_iter()
            .find(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
            })
            .and_then(|e| e.note)
    })
    .await
}

/// Plays a live worker that claimed `job` and is still running it; returns the claimed version.
async fn start(ns: &TestNamespace, name: &str, job: &str, worker: &str) -> RequestState {
    lease(ns, worker, 300).await;
    let rqs = requested(ns, name, job).await;
    let api: Api<RequestState> = Api::namespaced(ns.client.clone(), &ns.name);
    api.replace(name, &PostParams::default(), &claim(&rqs, worker, Timestamp::now()).unwrap()).await.unwrap()
}

fn trail(rqs: &RequestState) -> Vec<(String, JobState)> {
    rqs.status.as_ref().unwrap().history.iter().map(|e| (e.job.to_string(), e.state)).collect()
}

fn full_run() -> Vec<(String, JobState)> {
    ["task-0", "task-1", "cleanup"]
        .iter()
        .flat_map(|job| {
            [JobState::Requested, JobState::Started, JobState::Completed].map(|s| (job.to_string(), s))
        })
        .collect()
}

#[tokio::test]
async fn walks_every_task_then_cleanup() {
    let ns = TestEnv::get().namespace("operator-walk").await;
    let _operator = operator(&ns.name);
    let wp = seed_workplan(&ns).await;
    let name = wp.metadata.name.clone().unwrap();

    work(&ns, &name, "task-0", "worker-a", JobState::Completed, None).await;
    // task-1 is requested, and the Workplan knows the node task-0 ran on.
    requested(&ns, &name, "task-1").await;
    let api: Api<Workplan> = Api::namespaced(ns.client.clone(), &ns.name);
    let on_node = |w: Option<&Workplan>| {
        w.and_then(|w| w.status.as_ref())
            .is_some_and(|s| s.node_name.as_deref() == Some("node-a") && s.task_index == Some(1))
    };
    tokio::time::timeout(TIMEOUT, await_condition(api, &name, on_node)).await.unwrap().unwrap();
    work(&ns, &name, "task-1", "worker-b", JobState::Completed, None).await;
    work(&ns, &name, "cleanup", "worker-a", JobState::Completed, None).await;

    let status = finished(&ns, &name).await.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Completed));
    assert_eq!(status.reason.as_deref(), Some("all 2 tasks succeeded"));
    assert_eq!((status.progress.as_deref(), status.node_name.as_deref()), (Some("2/2"), Some("node-a")));
    assert!(status.start_time.is_some() && status.completion_time.is_some() && status.duration.is_some());
    let rqs = Api::<RequestState>::namespaced(ns.client.clone(), &ns.name).get(&name).await.unwrap();
    assert_eq!(trail(&rqs), full_run());
    assert_eq!(rqs.spec.request_uid, wp.metadata.uid.unwrap());
    assert_eq!(rqs.metadata.owner_references.as_ref().unwrap()[0].kind, "Workplan");

    // Every write is attributed: the status is applied server-side, the RequestState written
    // with the operator's field manager.
    let workplan = Api::<Workplan>::namespaced(ns.client.clone(), &ns.name).get(&name).await.unwrap();
    let managers = |meta: &ObjectMeta| -> Vec<(String, String, String)> {
        meta.managed_fields
            .iter()
            .flatten()
            .map(|f| {
                let field = |v: &Option<String>| v.clone().unwrap_or_default();
                (field(&f.manager), field(&f.operation), field(&f.subresource))
            })
            .collect()
    };
    let status_manager = ("kubeci-workplan-operator".into(), "Apply".into(), "status".into());
    assert!(
        managers(&workplan.metadata).contains(&status_manager),
        "the Workplan status is applied by kubeci-workplan-operator: {:?}",
        managers(&workplan.metadata)
    );
    assert!(
        managers(&rqs.metadata).iter().any(|(manager, _, _)| manager == "kubeci-workplan-operator"),
        "the RequestState names kubeci-workplan-operator: {:?}",
        managers(&rqs.metadata)
    );
}

#[tokio::test]
async fn a_failed_task_skips_the_rest_and_still_cleans_up() {
    let ns = TestEnv::get().namespace("operator-failure").await;
    let _operator = operator(&ns.name);
    let name = seed_workplan(&ns).await.metadata.name.unwrap();
    work(
        &ns,
        &name,
        "task-0",
        "worker-a",
        JobState::Failed,
        Some("step \"step-2\" exited with code 3: boom"),
    )
    .await;
    work(&ns, &name, "cleanup", "worker-a", JobState::Completed, None).await;
    let status = finished(&ns, &name).await.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Failed));
    assert_eq!(status.reason.as_deref(), Some("task-0 failed: step \"step-2\" exited with code 3: boom"));
    let rqs = Api::<RequestState>::namespaced(ns.client.clone(), &ns.name).get(&name).await.unwrap();
    assert!(trail(&rqs).iter().all(|(job, _)| job != "task-1"), "task-1 never starts: {:?}", trail(&rqs));
}

#[tokio::test]
async fn a_lost_workers_job_is_requested_again() {
    let ns = TestEnv::get().namespace("operator-lost-worker").await;
    let _operator = operator(&ns.name);
    let name = seed_workplan(&ns).await.metadata.name.unwrap();
    let api: Api<RequestState> = Api::namespaced(ns.client.clone(), &ns.name);

    // A live worker (fresh Lease) keeps its job. Its claim names the node of its pod: the
    // Workplan shows that node only once the operator has reconciled the claimed RequestState,
    // and a wrong re-request would have been written in that same reconciliation, before the
    // status.
    lease(&ns, "worker-live", 30).await;
    let leases: Api<Lease> = Api::namespaced(ns.client.clone(), &ns.name);
    let rqs = requested(&ns, &name, "task-0").await;
    let mut claimed = claim(&rqs, "worker-live", Timestamp::now()).unwrap();
    claimed.status.as_mut().unwrap().history.last_mut().unwrap().node_name = Some("node-a".into());
    api.replace(&name, &PostParams::default(), &claimed).await.unwrap();
    let workplans: Api<Workplan> = Api::namespaced(ns.client.clone(), &ns.name);
    let on_node = |w: Option<&Workplan>| {
        w.and_then(|w| w.status.as_ref()).is_some_and(|s| s.node_name.as_deref() == Some("node-a"))
    };
    tokio::time::timeout(TIMEOUT, await_condition(workplans, &name, on_node))
        .await
        .expect("the operator reconciles the claim")
        .unwrap();
    assert_eq!(api.get(&name).await.unwrap().spec.state, JobState::Started, "a live worker keeps its job");

    // A worker whose Lease is gone (it stopped and released it) loses its job.
    // Its Lease is still valid for ~28 s: the deletion itself must trigger the re-request.
    leases.delete("worker-live", &Default::default()).await.unwrap();
    let again = tokio::time::timeout(Duration::from_secs(10), requested(&ns, &name, "task-0"))
        .await
        .expect("re-requested as soon as the Lease is gone, not at its expiry");
    let last = again.status.unwrap().history.pop().unwrap();
    assert_eq!(last.message.as_deref(), Some("worker worker-live lost: its lease expired"));
}

#[tokio::test]
async fn a_restart_mid_run_duplicates_nothing() {
    let ns = TestEnv::get().namespace("operator-restart").await;
    let operator_process = operator(&ns.name);
    let name = seed_workplan(&ns).await.metadata.name.unwrap();
    requested(&ns, &name, "task-0").await;
    operator_process.kill();

    // task-0 finishes while the operator is down.
    work(&ns, &name, "task-0", "worker-a", JobState::Completed, None).await;
    let _operator = operator(&ns.name);
    work(&ns, &name, "task-1", "worker-a", JobState::Completed, None).await;
    work(&ns, &name, "cleanup", "worker-a", JobState::Completed, None).await;
    assert_eq!(finished(&ns, &name).await.status.unwrap().phase, Some(Phase::Completed));
    let rqs = Api::<RequestState>::namespaced(ns.client.clone(), &ns.name).get(&name).await.unwrap();
    assert_eq!(trail(&rqs), full_run(), "every transition exactly once");
}

#[tokio::test]
async fn many_workplans_all_complete() {
    let ns = TestEnv::get().namespace("operator-many").await;
    let _operator = operator(&ns.name);
    let mut names = Vec::new();
    for i in 0..10 {
        let mut wf: Workflow = serde_yaml::from_str(shared_types::repo::SEED_WORKFLOW).unwrap();
        wf.metadata.namespace = Some(ns.name.clone());
        let wp = planner::plan(&wf, TriggerEvent::manual(Some(i.to_string()))).unwrap();
        let created = Api::<Workplan>::namespaced(ns.client.clone(), &ns.name)
            .create(&PostParams::default(), &wp)
            .await
            .unwrap();
        names.push(created.metadata.name.unwrap());
    }
    for job in ["task-0", "task-1", "cleanup"] {
        for name in &names {
            work(&ns, name, job, "worker-a", JobState::Completed, None).await;
        }
    }
    let api: Api<Workplan> = Api::namespaced(ns.client.clone(), &ns.name);
    eventually("every Workplan Completed", TIMEOUT, || {
        let api = api.clone();
        async move {
            let list = api.list(&Default::default()).await.unwrap().items;
            list.iter()
                .all(|w| w.status.as_ref().and_then(|s| s.phase) == Some(Phase::Completed))
                .then_some(())
        }
    })
    .await;
}

/// `/readyz` turns 200 once the Workplan cache has synced, with nothing to list too.
#[tokio::test]
async fn ready_once_synced_in_an_empty_namespace() {
    let ns = e2e::TestEnv::get().namespace("operator-ready").await;
    let operator = operator(&ns.name);
    e2e::eventually("the operator reports ready", std::time::Duration::from_secs(60), || async {
        operator.is_ready().await.then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_finished_workplan_lets_go_of_its_cleanup_finalizer() {
    let ns = TestEnv::get().namespace("operator-finalizer").await;
    let _operator = operator(&ns.name);
    let created = seed_workplan(&ns).await;
    let name = created.metadata.name.clone().unwrap();
    assert_eq!(created.metadata.finalizers, Some(vec!["kube.ci/cleanup".to_string()]), "from the planner");
    work(&ns, &name, "task-0", "worker-a", JobState::Completed, None).await;
    work(&ns, &name, "task-1", "worker-a", JobState::Completed, None).await;

    // Kept while the cleanup is pending.
    let api: Api<Workplan> = Api::namespaced(ns.client.clone(), &ns.name);
    let rqs = requested(&ns, &name, "cleanup").await;
    let on_cleanup = |w: Option<&Workplan>| {
        w.and_then(|w| w.status.as_ref()).is_some_and(|s| s.progress.as_deref() == Some("2/2"))
    };
    tokio::time::timeout(TIMEOUT, await_condition(api.clone(), &name, on_cleanup)).await.unwrap().unwrap();
    assert_eq!(api.get(&name).await.unwrap().metadata.finalizers, Some(vec!["kube.ci/cleanup".to_string()]));
    assert_eq!(rqs.spec.state, JobState::Requested);

    // Removed once the cleanup was attempted, by the operator's field manager.
    work(&ns, &name, "cleanup", "worker-a", JobState::Completed, None).await;
    let released = |w: Option<&Workplan>| {
        w.is_some_and(|w| w.metadata.finalizers.as_deref().unwrap_or_default().is_empty())
    };
    let workplan = tokio::time::timeout(TIMEOUT, await_condition(api.clone(), &name, released))
        .await
        .expect("the finalizer goes once the cleanup was attempted")
        .unwrap()
        .unwrap();
    assert_eq!(workplan.status.unwrap().phase, Some(Phase::Completed), "after the final status");

    // So a finished Workplan is deleted at once, with or without the operator.
    drop(_operator);
    api.delete(&name, &DeleteParams::default()).await.unwrap();
    gone(&ns, &name).await;
}

#[tokio::test]
async fn a_workplan_deleted_before_any_task_started_goes_at_once() {
    let ns = TestEnv::get().namespace("operator-deleted-early").await;
    let _operator = operator(&ns.name);
    let name = seed_workplan(&ns).await.metadata.name.unwrap();
    requested(&ns, &name, "task-0").await;
    let api: Api<Workplan> = Api::namespaced(ns.client.clone(), &ns.name);
    api.delete(&name, &DeleteParams::default()).await.unwrap();
    gone(&ns, &name).await;
}

#[tokio::test]
async fn a_workplan_deleted_mid_run_is_held_until_its_cleanup_was_attempted() {
    let ns = TestEnv::get().namespace("operator-deleted-mid-run").await;
    let _operator = operator(&ns.name);
    let name = seed_workplan(&ns).await.metadata.name.unwrap();
    let running = start(&ns, &name, "task-0", "worker-a").await;

    let api: Api<Workplan> = Api::namespaced(ns.client.clone(), &ns.name);
    api.delete(&name, &DeleteParams::default()).await.unwrap();
    // The cleanup is requested in place of the task; the Workplan stays and says why.
    let cleanup = requested(&ns, &name, "cleanup").await;
    assert_eq!(
        cleanup.status.unwrap().history.last().unwrap().message.as_deref(),
        Some("the Workplan was deleted")
    );
    let cleaning = |w: Option<&Workplan>| {
        w.and_then(|w| w.status.as_ref())
            .is_some_and(|s| s.reason.as_deref() == Some("deleted while running task-0; cleaning up"))
    };
    let held = tokio::time::timeout(TIMEOUT, await_condition(api.clone(), &name, cleaning))
        .await
        .expect("the Workplan says it is cleaning up")
        .unwrap()
        .unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    assert_eq!(
        held.metadata.finalizers,
        Some(vec!["kube.ci/cleanup".to_string()]),
        "kept while the cleanup is pending"
    );

    // The task's worker cannot report it any more: the job moved on.
    let late =
        report(&running, "worker-a", JobState::Completed, Some("node-a"), None, Timestamp::now()).unwrap();
    let requests: Api<RequestState> = Api::namespaced(ns.client.clone(), &ns.name);
    let refused = requests.replace(&name, &PostParams::default(), &late).await.unwrap_err();
    assert!(matches!(refused, kube::Error::Api(ref e) if e.code == 409), "{refused}");

    work(&ns, &name, "cleanup", "worker-b", JobState::Completed, None).await;
    gone(&ns, &name).await;
    let note = event_note(&ns, &name, "Failed").await;
    assert_eq!(note, "deleted while running task-0; workspace cleaned up");
    assert_eq!(
        event_note(&ns, &name, "Deleted").await,
        "deleted while running task-0; requested the cleanup"
    );
}

#[tokio::test]
async fn a_deleted_workplan_whose_cleanup_failed_still_goes_and_says_so() {
    let ns = TestEnv::get().namespace("operator-deleted-cleanup-failed").await;
    let _operator = operator(&ns.name);
    let name = seed_workplan(&ns).await.metadata.name.unwrap();
    start(&ns, &name, "task-0", "worker-a").await;
    Api::<Workplan>::namespaced(ns.client.clone(), &ns.name)
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    work(&ns, &name, "cleanup", "worker-b", JobState::Failed, Some("exceeded quota")).await;
    gone(&ns, &name).await;
    assert_eq!(
        event_note(&ns, &name, "Failed").await,
        "deleted while running task-0; cleanup failed, the workspace may remain on the node: exceeded quota"
    );
}

#[tokio::test]
async fn a_workplan_deleted_in_the_foreground_still_gets_its_cleanup() {
    // Foreground propagation deletes the RequestState first: the cleanup gets a RequestState of
    // its own, on the node the status names.
    let ns = TestEnv::get().namespace("operator-deleted-foreground").await;
    let _operator = operator(&ns.name);
    let name = seed_workplan(&ns).await.metadata.name.unwrap();
    let rqs = requested(&ns, &name, "task-0").await;
    let requests: Api<RequestState> = Api::namespaced(ns.client.clone(), &ns.name);
    let mut claimed = claim(&rqs, "worker-a", Timestamp::now()).unwrap();
    claimed.status.as_mut().unwrap().history.last_mut().unwrap().node_name = Some("node-a".into());
    lease(&ns, "worker-a", 300).await;
    requests.replace(&name, &PostParams::default(), &claimed).await.unwrap();
    let api: Api<Workplan> = Api::namespaced(ns.client.clone(), &ns.name);
    let on_node = |w: Option<&Workplan>| {
        w.and_then(|w| w.status.as_ref()).is_some_and(|s| s.node_name.as_deref() == Some("node-a"))
    };
    tokio::time::timeout(TIMEOUT, await_condition(api.clone(), &name, on_node)).await.unwrap().unwrap();
    let old_uid = requests.get(&name).await.unwrap().metadata.uid;

    api.delete(&name, &DeleteParams::foreground()).await.unwrap();
    let cleanup = requested(&ns, &name, "cleanup").await;
    assert_ne!(
        cleanup.metadata.uid, old_uid,
        "a RequestState of its own, after the collector deleted the first"
    );
    let history = cleanup.status.clone().unwrap().history;
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(shared_types::protocol::node(&cleanup).as_deref(), Some("node-a"));
    work(&ns, &name, "cleanup", "worker-b", JobState::Completed, None).await;
    gone(&ns, &name).await;
    assert_eq!(event_note(&ns, &name, "Failed").await, "deleted while running; workspace cleaned up");
}

/// Issue 17: a run cancelled with the `kube.ci/cancel` annotation while a task runs gets its
/// cleanup requested and ends `Cancelled` (not `Failed`), naming who cancelled it, once the
/// cleanup was attempted; a cancel that comes after the tasks' cleanup is requested changes
/// nothing.
#[tokio::test]
async fn a_run_cancelled_mid_run_ends_cancelled_naming_who() {
    let ns = TestEnv::get().namespace("operator-cancel").await;
    let _operator = operator(&ns.name);
    let name = seed_workplan(&ns).await.metadata.name.unwrap();
    start(&ns, &name, "task-0", "worker-a").await;
    let cancel = serde_json::json!({"metadata": {"annotations": {"kube.ci/cancel": "alice"}}});
    Api::<Workplan>::namespaced(ns.client.clone(), &ns.name)
        .patch(&name, &PatchParams::default(), &Patch::Merge(cancel))
        .await
        .unwrap();
    work(&ns, &name, "cleanup", "worker-b", JobState::Completed, None).await;
    let status = finished(&ns, &name).await.status.unwrap();
    let reason = "Cancelled by alice while running task-0; workspace cleaned up";
    assert_eq!((status.phase, status.reason.as_deref()), (Some(Phase::Cancelled), Some(reason)));
    let condition = status.conditions.iter().find(|c| c.type_ == "Finished").unwrap();
    assert_eq!((condition.status.as_str(), condition.reason.as_str()), ("True", "Cancelled"));
    let events: Api<Event> = Api::namespaced(ns.client.clone(), &ns.name);
    eventually("the Cancelled Events: requested, then final", TIMEOUT, || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        let notes: Vec<(String, String)> = list
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("Cancelled"))
            .map(|e| (e.type_.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect();
        let requested = (
            "Warning".to_string(),
            "Cancelled by alice while running task-0; requested the cleanup".to_string(),
        );
        let done = ("Normal".to_string(), reason.to_string());
        (notes.contains(&requested) && notes.contains(&done)).then_some(())
    })
    .await;
}
