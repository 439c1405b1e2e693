//! Hostile objects (issue 13, failure 2): objects the API server stores but kubeci's types refuse
//! must halt nothing. The real director, workplan-operator and worker on the real API server, the
//! test playing scheduler and kubelet (`e2e::kubelet`).
//!
//! What the API server really stores for kubeci's CRDs that does not deserialize (tried against
//! it; the schemas validate types, enums, `date-time` formats and the RequestState `job` pattern):
//! - Workflow: the seed's `lastObservedGeneration` next to `observedGeneration` (one field under a
//!   serde alias: a duplicate), and integers beyond `int32` in `int32` fields
//!   (`spec.workplanHistoryLimit`, `status.steps`: the schema's `format: int32` is not enforced);
//! - Workplan: `status.taskIndex` beyond `int32` (its spec has no `int32` field);
//! - RequestState: `spec.job` `task-<i>` whose index overflows (the pattern lets it through,
//!   `Job` refuses it), a `status.history[].job` that is neither `task-<i>` nor `cleanup`.
//!
//! Each lives next to valid Workflows that must run to Completed, through a restart of every
//! component; each is reported (a Warning Event `Malformed` with the path, a condition where the
//! object is kubeci's, a counter), and runs once repaired.
//!
//! The binaries are the workspace's own, built by `cargo test --workspace` (`make test`) next to
//! this test binary.

use std::time::Duration;

use e2e::kubelet::{Act, Kubelet, pod_namespace};
use e2e::{Component, TestNamespace, eventually, workspace_binary as binary};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::DeserializeGuard;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use shared_types::{Phase, TriggerEvent, Workflow, Workplan, planner};

const TIMEOUT: Duration = Duration::from_secs(120);
/// Beyond `int32`, within what the API server stores.
const TOO_BIG: i64 = 1 << 40;
/// The test's own field manager.
const MANAGER: &str = "hostile-test";

/// The three components of kubeci for one namespace.
struct Kubeci {
    director: Component,
    operator: Component,
    worker: Component,
}

impl Kubeci {
    fn start(ns: &str) -> Kubeci {
        Kubeci {
            director: Component::start(binary("director"), ns, &["--no-leader-election"]),
            operator: Component::start(
                binary("workplan-operator"),
                ns,
                &["--no-leader-election", "--worker-lease-namespace", ns],
            ),
            worker: Component::start(
                binary("worker"),
                ns,
                &["--identity", "worker-1", "--lease-namespace", ns],
            ),
        }
    }

    /// Waits until every component's `/readyz` answers 200.
    async fn ready(&self) {
        eventually("every component is ready", TIMEOUT, || async {
            let ready = self.director.is_ready().await
                && self.operator.is_ready().await
                && self.worker.is_ready().await;
            ready.then_some(())
        })
        .await;
    }

    fn stop(self) {
        self.director.stop();
        self.operator.stop();
        self.worker.stop();
    }
}

fn raw<K: Resource<DynamicType = ()>>(ns: &TestNamespace) -> Api<DynamicObject> {
    Api::namespaced_with(ns.client.clone(), &ns.name, &ApiResource::erase::<K>(&()))
}

fn params() -> PatchParams {
    PatchParams { field_manager: Some(MANAGER.into()), ..PatchParams::default() }
}

/// A trigger-less one-step Workflow: it runs once per generation.
fn one_step(name: &str) -> Value {
    json!({
        "apiVersion": "kube.ci/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": name},
        "spec": {"steps": [{"name": "only", "image": "alpine"}]},
    })
}

async fn create<K: Resource<DynamicType = ()>>(ns: &TestNamespace, object: Value) -> DynamicObject {
    let object: DynamicObject = serde_json::from_value(object).unwrap();
    let post = PostParams { field_manager: Some(MANAGER.into()), ..PostParams::default() };
    raw::<K>(ns)
        .create(&post, &object)
        .await
        .unwrap_or_else(|e| panic!("creating {}: {e}", object.name_any()))
}

async fn patch_status<K: Resource<DynamicType = ()>>(ns: &TestNamespace, name: &str, patch: Patch<Value>) {
    raw::<K>(ns)
        .patch_status(name, &params(), &patch)
        .await
        .unwrap_or_else(|e| panic!("patching the status of {name}: {e}"));
}

async fn get<K: Resource<DynamicType = ()>>(ns: &TestNamespace, name: &str) -> Value {
    serde_json::to_value(raw::<K>(ns).get(name).await.unwrap()).unwrap()
}

/// (status, reason, message) of condition `type_` of the object as stored.
async fn condition<K: Resource<DynamicType = ()>>(
    ns: &TestNamespace,
    name: &str,
    type_: &str,
) -> Option<[String; 3]> {
    let object = get::<K>(ns, name).await;
    let found =
        object.pointer("/status/conditions")?.as_array()?.iter().find(|c| c["type"] == type_)?.clone();
    Some(["status", "reason", "message"].map(|f| found[f].as_str().unwrap_or_default().to_string()))
}

/// Waits for condition `type_` to be `expected` (status, reason, message).
async fn await_condition<K: Resource<DynamicType = ()>>(
    ns: &TestNamespace,
    name: &str,
    type_: &str,
    expected: [&str; 3],
) {
    eventually(&format!("{type_} {expected:?} on {} {name}", K::kind(&())), TIMEOUT, || async {
        condition::<K>(ns, name, type_).await.filter(|c| *c == expected.map(String::from)).map(|_| ())
    })
    .await;
}

/// Waits for a Warning Event `Malformed` about the `K` named `name` whose note contains `text`.
async fn await_warning<K: Resource<DynamicType = ()>>(ns: &TestNamespace, name: &str, text: &str) {
    let events: Api<Event> = Api::namespaced(ns.client.clone(), &ns.name);
    let kind = K::kind(&()).to_string();
    eventually(&format!("a Warning Event Malformed on {kind} {name}: {text}"), TIMEOUT, || async {
        let list = events.list(&ListParams::default()).await.unwrap().items;
        list.into_iter()
            .find(|e| {
                let about = e.regarding.as_ref();
                e.type_.as_deref() == Some("Warning")
                    && e.reason.as_deref() == Some("Malformed")
                    && about
                        .is_some_and(|r| r.kind.as_deref() == Some(&kind) && r.name.as_deref() == Some(name))
                    && e.note.as_deref().is_some_and(|n| n.contains(text))
            })
            .map(|_| ())
    })
    .await;
}

/// Waits for `count` Completed Workplans of Workflow `workflow` (read through the guard: a
/// malformed Workplan is in the same namespace).
async fn await_completed(ns: &TestNamespace, workflow: &str, count: usize) {
    let workplans: Api<DeserializeGuard<Workplan>> = Api::namespaced(ns.client.clone(), &ns.name);
    eventually(&format!("{count} Completed Workplan(s) of {workflow}"), TIMEOUT, || async {
        let list = workplans.list(&ListParams::default()).await.unwrap().items;
        let completed = list
            .iter()
            .filter_map(|w| w.0.as_ref().ok())
            .filter(|w| w.spec.workflow == workflow)
            .filter(|w| w.status.as_ref().and_then(|s| s.phase) == Some(Phase::Completed))
            .count();
        (completed >= count).then_some(())
    })
    .await;
}

/// Waits for a counter of `component` to reach `at_least`.
async fn await_metric(component: &Component, metric: &str, at_least: f64) {
    eventually(&format!("{metric} >= {at_least}"), TIMEOUT, || async {
        (component.metric(metric).await >= at_least).then_some(())
    })
    .await;
}

/// Failure 2 of issue 13: a Workflow with the seed's `lastObservedGeneration` next to
/// `observedGeneration` kept every Workflow of every namespace from being processed after a
/// director restart, and `/readyz` at 503.
#[tokio::test]
async fn malformed_workflows_halt_no_other_and_run_once_repaired() {
    let ns = pod_namespace("hostile-workflows").await;
    let _kubelet = Kubelet::start(&ns, |_| Act::Succeed);

    // Stored before the director starts, as after a restart.
    create::<Workflow>(&ns, one_step("duplicate")).await;
    let alias = json!({"status": {"observedGeneration": 0, "lastObservedGeneration": 0}});
    patch_status::<Workflow>(&ns, "duplicate", Patch::Merge(alias)).await;
    let mut too_big = one_step("too-big");
    too_big["spec"]["workplanHistoryLimit"] = json!(TOO_BIG);
    create::<Workflow>(&ns, too_big).await;
    create::<Workflow>(&ns, one_step("good")).await;

    let kubeci = Kubeci::start(&ns.name);
    await_completed(&ns, "good", 1).await;
    kubeci.ready().await;

    let duplicate = "status: duplicate field observedGeneration";
    let too_big = "spec.workplanHistoryLimit: invalid value: integer 1099511627776, expected i32";
    for (name, message) in [("duplicate", duplicate), ("too-big", too_big)] {
        await_warning::<Workflow>(&ns, name, message).await;
        await_condition::<Workflow>(&ns, name, "Ready", ["False", "Malformed", message]).await;
    }
    let malformed = r#"kubeci_director_errors_total{error="malformed_workflow"}"#;
    await_metric(&kubeci.director, malformed, 2.0).await;
    let status = get::<Workflow>(&ns, "duplicate").await["status"].clone();
    assert_eq!(
        (&status["observedGeneration"], &status["lastObservedGeneration"]),
        (&json!(0), &json!(0)),
        "the user's fields are left as they are"
    );

    // A Workflow the director processed turns malformed: reported, with the director's own
    // status fields kept.
    let alias = json!({"status": {"lastObservedGeneration": 1}});
    patch_status::<Workflow>(&ns, "good", Patch::Merge(alias)).await;
    await_condition::<Workflow>(&ns, "good", "Ready", ["False", "Malformed", duplicate]).await;
    let status = get::<Workflow>(&ns, "good").await["status"].clone();
    assert_eq!(
        [&status["observedGeneration"], &status["lastObservedGeneration"], &status["steps"]],
        [&json!(1), &json!(1), &json!(1)],
        "{status}"
    );

    // Every component restarts and becomes ready with them present, and a new run completes.
    kubeci.stop();
    let kubeci = Kubeci::start(&ns.name);
    kubeci.ready().await;
    create::<Workflow>(&ns, one_step("good-2")).await;
    await_completed(&ns, "good-2", 1).await;
    await_metric(&kubeci.director, malformed, 3.0).await; // reported again by the new process

    // Repaired, each is processed as any other.
    let remove_alias = || {
        Patch::Json(
            serde_json::from_value(json!([{"op": "remove", "path": "/status/lastObservedGeneration"}]))
                .unwrap(),
        )
    };
    let valid = ["True", "Valid", "the Workflow is valid and its triggers are served"];
    for name in ["duplicate", "good"] {
        patch_status::<Workflow>(&ns, name, remove_alias()).await;
        await_condition::<Workflow>(&ns, name, "Ready", valid).await;
    }
    await_completed(&ns, "duplicate", 1).await;
    let repair = json!({"spec": {"workplanHistoryLimit": 5}});
    raw::<Workflow>(&ns).patch("too-big", &params(), &Patch::Merge(repair)).await.unwrap();
    await_completed(&ns, "too-big", 1).await;
    kubeci.stop();
}

/// A malformed Workplan and a malformed RequestState next to a valid Workflow.
#[tokio::test]
async fn malformed_workplans_and_request_states_halt_no_other_and_run_once_repaired() {
    let ns = pod_namespace("hostile-workplans").await;
    let _kubelet = Kubelet::start(&ns, |_| Act::Succeed);
    let plan = |workflow: &str| {
        let wf: Workflow = serde_json::from_value(one_step(workflow)).unwrap();
        let mut wp =
            serde_json::to_value(planner::plan(&wf, TriggerEvent::manual(Some("1".into()))).unwrap())
                .unwrap();
        wp["metadata"]["name"] = json!(format!("{workflow}-run"));
        wp
    };

    // A Workplan whose status holds an int32 field beyond int32.
    create::<Workplan>(&ns, plan("status")).await;
    patch_status::<Workplan>(&ns, "status-run", Patch::Merge(json!({"status": {"taskIndex": TOO_BIG}})))
        .await;
    // A Workplan whose RequestState asks for a job `Job` refuses.
    let waiting = create::<Workplan>(&ns, plan("waiting")).await;
    let uid = waiting.uid().unwrap();
    let request = json!({
        "apiVersion": "kube.ci/v1alpha1",
        "kind": "RequestState",
        "metadata": {
            "name": "waiting-run",
            "ownerReferences": [{"apiVersion": "kube.ci/v1alpha1", "kind": "Workplan", "name": "waiting-run", "uid": uid, "controller": true}],
        },
        "spec": {"request-uid": uid, "job": "task-99999999999999999999999", "state": "REQUESTED"},
    });
    create::<shared_types::RequestState>(&ns, request).await;
    create::<Workflow>(&ns, one_step("good")).await;

    let kubeci = Kubeci::start(&ns.name);
    await_completed(&ns, "good", 1).await;
    kubeci.ready().await;

    let task_index = "status.taskIndex: invalid value: integer 1099511627776, expected i32";
    await_warning::<Workplan>(&ns, "status-run", task_index).await;
    await_condition::<Workplan>(&ns, "status-run", "Finished", ["False", "Malformed", task_index]).await;
    assert_eq!(get::<Workplan>(&ns, "status-run").await["status"]["taskIndex"], json!(TOO_BIG));
    let job = "spec.job: job \"task-99999999999999999999999\" is neither task-<i> nor cleanup";
    await_warning::<shared_types::RequestState>(&ns, "waiting-run", job).await;
    await_warning::<Workplan>(&ns, "waiting-run", job).await;
    for kind in ["workplan", "requeststate"] {
        let metric = format!(r#"kubeci_workplan_operator_errors_total{{error="malformed_{kind}"}}"#);
        await_metric(&kubeci.operator, &metric, 1.0).await;
    }

    // Every component restarts and becomes ready with them present, and a new run completes.
    kubeci.stop();
    let kubeci = Kubeci::start(&ns.name);
    kubeci.ready().await;
    create::<Workflow>(&ns, one_step("good-2")).await;
    await_completed(&ns, "good-2", 1).await;
    let waiting = get::<Workplan>(&ns, "waiting-run").await;
    assert_eq!(waiting["status"]["phase"], Value::Null, "the Workplan waits for its RequestState: {waiting}");

    // Repaired, each runs.
    let repair = json!({"spec": {"job": "task-0"}});
    raw::<shared_types::RequestState>(&ns)
        .patch("waiting-run", &params(), &Patch::Merge(repair))
        .await
        .unwrap();
    await_completed(&ns, "waiting", 1).await;
    patch_status::<Workplan>(&ns, "status-run", Patch::Merge(json!({"status": {"taskIndex": null}}))).await;
    await_completed(&ns, "status", 1).await;
    kubeci.stop();
}
