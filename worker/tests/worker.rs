//! The worker binary against the real API server: the test creates Workplans and RequestStates
//! as the director and the workplan-operator would, and plays scheduler and kubelet.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::await_condition;
use pretty_assertions::assert_eq;
use shared_types::protocol::{self, Job};
use shared_types::render::{RenderConfig, task_pod, task_pod_name};
use shared_types::{JobState, RequestState};
use support::*;

fn trail(rqs: &RequestState) -> Vec<(String, JobState, Option<String>, Option<String>)> {
    rqs.status
        .iter()
        .flat_map(|s| &s.history)
        .map(|e| (e.job.to_string(), e.state, e.worker.clone(), e.node_name.clone()))
        .collect()
}

fn some(s: &str) -> Option<String> {
    Some(s.to_string())
}

/// The parts of a pod the worker renders (admission adds the rest: token volume, defaults).
fn rendered_parts(pod: &Pod) -> serde_json::Value {
    let spec = pod.spec.as_ref().unwrap();
    let containers = |list: &[k8s_openapi::api::core::v1::Container]| {
        list.iter()
            .map(|c| {
                serde_json::json!([
                    c.name,
                    c.image,
                    c.command,
                    c.args,
                    c.volume_mounts.iter().flatten().find(|m| m.mount_path == "/kubeci").map(|m| &m.name)
                ])
            })
            .collect::<Vec<_>>()
    };
    serde_json::json!({
        "name": pod.name_any(),
        "labels": pod.labels(),
        "owners": pod.owner_references(),
        "init": containers(spec.init_containers.as_deref().unwrap_or_default()),
        "containers": containers(&spec.containers),
        "restartPolicy": spec.restart_policy,
        "workspace": spec.volumes.iter().flatten().find(|v| v.name == "kubeci-workspace"),
    })
}

#[tokio::test]
async fn runs_task_0_then_pins_task_1_to_the_node_of_task_0() {
    let ns = namespace("worker-runs-tasks").await;
    let wp = create_workplan(&ns, "1").await;
    let name = wp.name_any();
    let worker = Worker::start(&ns.name, "worker-a", &[]);
    let _kubelet = Kubelet::start(&ns, |_| Act::Succeed);

    request_task_0(&ns, &wp).await;
    let done = job_in(&ns, &name, "task-0", JobState::Completed).await;
    assert_eq!(
        trail(&done),
        vec![
            ("task-0".into(), JobState::Requested, None, None),
            ("task-0".into(), JobState::Started, some("worker-a"), None),
            ("task-0".into(), JobState::Completed, some("worker-a"), some(NODE)),
        ]
    );
    let pod = pods_api(&ns).get(&task_pod_name(&name, 0)).await.unwrap();
    let expected = task_pod(&wp, 0, None, &RenderConfig::default()).unwrap();
    assert_eq!(rendered_parts(&pod), rendered_parts(&expected));

    request(&ns, &name, Job::Task(1)).await;
    let done = job_in(&ns, &name, "task-1", JobState::Completed).await;
    assert_eq!(
        trail(&done).last().unwrap(),
        &("task-1".into(), JobState::Completed, some("worker-a"), some(NODE))
    );
    let pod = pods_api(&ns).get(&task_pod_name(&name, 1)).await.unwrap();
    let expected = task_pod(&wp, 1, Some(NODE), &RenderConfig::default()).unwrap();
    assert_eq!(rendered_parts(&pod), rendered_parts(&expected));
    // Pinned at creation: the pod was never bound by the "scheduler".
    assert_eq!(pod.spec.as_ref().unwrap().node_name.as_deref(), Some(NODE));
    let created_pinned = pod.managed_fields().iter().all(|f| f.subresource.as_deref() != Some("binding"));
    assert!(created_pinned, "task-1's pod was bound, not created on {NODE}");

    worker.metric_is("kubeci_worker_claims_won_total", 2.0).await;
    worker.metric_is("kubeci_worker_jobs_total{outcome=\"completed\"}", 2.0).await;
    worker.metric_is("kubeci_worker_claim_latency_seconds_count", 2.0).await;
    worker.metric_is("kubeci_worker_job_duration_seconds_count", 2.0).await;
    worker.metric_is("kubeci_worker_jobs_in_flight", 0.0).await;
    worker.metric_is("kubeci_worker_errors_total", 0.0).await;
}

#[tokio::test]
async fn a_failing_step_fails_the_job_with_its_exit_code_and_message() {
    let ns = namespace("worker-failing-step").await;
    let wp = create_workplan(&ns, "1").await;
    let worker = Worker::start(&ns.name, "worker-a", &[]);
    let _kubelet = Kubelet::start(&ns, |_| Act::Fail {
        step: "step-2".into(),
        code: 3,
        message: "3 tests failed\n".into(),
    });

    request_task_0(&ns, &wp).await;
    let failed = job_in(&ns, &wp.name_any(), "task-0", JobState::Failed).await;
    let last = failed.status.unwrap().history.pop().unwrap();
    assert_eq!(last.worker.as_deref(), Some("worker-a"));
    assert_eq!(last.node_name.as_deref(), Some(NODE));
    assert_eq!(last.message.as_deref(), Some("step \"step-2\" exited with code 3: 3 tests failed"));
    worker.metric_is("kubeci_worker_jobs_total{outcome=\"failed\"}", 1.0).await;
}

#[tokio::test]
async fn three_workers_claim_each_of_twenty_jobs_exactly_once() {
    let ns = namespace("worker-three-workers").await;
    let runs: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    let workplans = futures::future::join_all(runs.iter().map(|run| create_workplan(&ns, run))).await;
    let workers: Vec<Worker> =
        ["worker-a", "worker-b", "worker-c"].iter().map(|id| Worker::start(&ns.name, id, &[])).collect();
    for w in &workers {
        w.ready().await;
    }
    let _kubelet = Kubelet::start(&ns, |_| Act::Succeed);

    futures::future::join_all(workplans.iter().map(|wp| request_task_0(&ns, wp))).await;
    let api = rqs_api(&ns);
    let all = eventually("20 jobs COMPLETED", TIMEOUT, || {
        let api = api.clone();
        async move {
            let list = api.list(&ListParams::default()).await.ok()?.items;
            (list.len() == 20 && list.iter().all(|r| r.spec.state == JobState::Completed)).then_some(list)
        }
    })
    .await;

    let identities: BTreeSet<&str> = workers.iter().map(|w| w.identity.as_str()).collect();
    for rqs in &all {
        let history = &rqs.status.as_ref().unwrap().history;
        let starts: Vec<_> = history.iter().filter(|e| e.state == JobState::Started).collect();
        assert_eq!(starts.len(), 1, "{} was claimed {} times: {history:?}", rqs.name_any(), starts.len());
        let claimant = starts[0].worker.as_deref().unwrap();
        assert!(identities.contains(claimant));
        let completed = history.last().unwrap();
        assert_eq!(
            (completed.worker.as_deref(), completed.node_name.as_deref()),
            (Some(claimant), Some(NODE))
        );
    }
    let pods = pods_api(&ns).list(&ListParams::default()).await.unwrap().items;
    assert_eq!(pods.len(), 20, "one pod per job");

    // Every conflict a worker met is counted as a lost claim, and only those are.
    let (won, lost) = eventually("metrics matching the logs", TIMEOUT, || {
        let workers = &workers;
        async move {
            let (mut won, mut lost, mut completed) = (0.0, 0.0, 0.0);
            for w in workers {
                let metrics = w.metrics().await;
                let w_lost = metric_value(&metrics, "kubeci_worker_claims_lost_total");
                if w_lost != w.log_count("claim lost") as f64 {
                    return None;
                }
                won += metric_value(&metrics, "kubeci_worker_claims_won_total");
                lost += w_lost;
                completed += metric_value(&metrics, "kubeci_worker_jobs_total{outcome=\"completed\"}");
            }
            (completed == 20.0).then_some((won, lost))
        }
    })
    .await;
    assert_eq!(won, 20.0);
    eprintln!("3 workers, 20 jobs: {lost} claims lost to conflicts");
}

#[tokio::test]
async fn an_existing_pod_is_adopted_not_duplicated() {
    let ns = namespace("worker-adopts").await;
    let wp = create_workplan(&ns, "1").await;
    let name = wp.name_any();
    let pods = pods_api(&ns);
    let existing = pods
        .create(&PostParams::default(), &task_pod(&wp, 0, None, &RenderConfig::default()).unwrap())
        .await
        .unwrap();
    let worker = Worker::start(&ns.name, "worker-a", &[]);
    let _kubelet = Kubelet::start(&ns, |_| Act::Leave); // binds only

    request_task_0(&ns, &wp).await;
    job_in(&ns, &name, "task-0", JobState::Started).await;
    let pod_name = task_pod_name(&name, 0);
    // The worker found the pod (AlreadyExists) and watches it: bound, and still the only pod.
    let bound = tokio::time::timeout(
        TIMEOUT,
        await_condition(pods.clone(), &pod_name, |p: Option<&Pod>| {
            p.and_then(|p| p.spec.as_ref()).is_some_and(|s| s.node_name.is_some())
        }),
    )
    .await
    .unwrap()
    .unwrap()
    .unwrap();
    eventually("the worker to adopt the pod", TIMEOUT, || async {
        (worker.log_count("adopted the existing pod") == 1).then_some(())
    })
    .await;
    let list = pods.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].uid(), existing.uid());

    finish(&pods, &bound, &Act::Succeed).await;
    let done = job_in(&ns, &name, "task-0", JobState::Completed).await;
    assert_eq!(
        trail(&done).last().unwrap(),
        &("task-0".into(), JobState::Completed, some("worker-a"), some(NODE))
    );
    assert_eq!(worker.log_count("created the pod"), 0);
    worker.metric_is("kubeci_worker_errors_total", 0.0).await;
}

#[tokio::test]
async fn the_worker_holds_and_renews_its_lease_and_deletes_it_on_shutdown() {
    let ns = namespace("worker-lease").await;
    let worker = Worker::start(&ns.name, "worker-lease-a", &[]);
    let leases: Api<Lease> = Api::namespaced(ns.client.clone(), &ns.name);
    let held = |l: Option<&Lease>| {
        l.and_then(|l| l.spec.as_ref()).is_some_and(|s| {
            s.holder_identity.as_deref() == Some("worker-lease-a")
                && s.renew_time.is_some()
                && s.lease_duration_seconds == Some(15)
        })
    };
    let lease = tokio::time::timeout(TIMEOUT, await_condition(leases.clone(), "worker-lease-a", held))
        .await
        .expect("the worker takes its lease")
        .unwrap()
        .unwrap();
    let first = lease.spec.unwrap().renew_time.unwrap().0;
    let renewed = move |l: Option<&Lease>| {
        held(l) && l.and_then(|l| l.spec.as_ref()?.renew_time.as_ref()).is_some_and(|t| t.0 > first)
    };
    // Renewed every duration - grace = 10 s.
    tokio::time::timeout(Duration::from_secs(30), await_condition(leases.clone(), "worker-lease-a", renewed))
        .await
        .expect("the worker renews its lease")
        .unwrap();
    worker.ready().await;
    worker.metric_is("kubeci_worker_lease_held", 1.0).await;

    assert!(worker.stop(), "the worker exits cleanly on SIGTERM");
    assert!(leases.get_opt("worker-lease-a").await.unwrap().is_none(), "the lease is deleted on shutdown");
}

#[tokio::test]
async fn a_pod_stuck_pending_fails_the_job_after_the_pending_timeout() {
    let ns = namespace("worker-pending-timeout").await;
    let wp = create_workplan(&ns, "1").await;
    let name = wp.name_any();
    let _worker = Worker::start(&ns.name, "worker-a", &["--pending-timeout-seconds", "2"]);
    request_task_0(&ns, &wp).await;
    let pods = pods_api(&ns);
    let pod_name = task_pod_name(&name, 0);
    tokio::time::timeout(TIMEOUT, await_condition(pods.clone(), &pod_name, |p: Option<&Pod>| p.is_some()))
        .await
        .unwrap()
        .unwrap();
    // The scheduler's verdict.
    let status = serde_json::json!({"status": {"phase": "Pending", "conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/1 nodes are available: 1 Insufficient cpu."
    }]}});
    pods.patch_status(&pod_name, &PatchParams::default(), &Patch::Merge(status)).await.unwrap();
    let failed = job_in(&ns, &name, "task-0", JobState::Failed).await;
    let last = failed.status.unwrap().history.pop().unwrap();
    assert_eq!(
        last.message.as_deref(),
        Some(
            "pod cannot be scheduled: 0/1 nodes are available: 1 Insufficient cpu. (still pending after 2s)"
        )
    );
    assert_eq!(last.node_name, None);
}

#[tokio::test]
async fn a_pod_deleted_while_running_fails_the_job() {
    a_running_jobs_pod_goes("worker-pod-deleted", false).await;
}

#[tokio::test]
async fn a_pod_replaced_under_its_name_fails_the_job() {
    a_running_jobs_pod_goes("worker-pod-replaced", true).await;
}

/// Deletes the pod of a running job, and with `replace` creates another pod under its name at
/// once: either way the job fails, and a replacement is left alone.
async fn a_running_jobs_pod_goes(prefix: &str, replace: bool) {
    let ns = namespace(prefix).await;
    let wp = create_workplan(&ns, "1").await;
    let name = wp.name_any();
    let worker = Worker::start(&ns.name, "worker-a", &[]);
    request_task_0(&ns, &wp).await;
    let pods = pods_api(&ns);
    let pod_name = task_pod_name(&name, 0);
    tokio::time::timeout(TIMEOUT, await_condition(pods.clone(), &pod_name, |p: Option<&Pod>| p.is_some()))
        .await
        .unwrap()
        .unwrap();
    eventually("the worker to watch its pod", TIMEOUT, || async {
        (worker.log_count("created the pod") == 1).then_some(())
    })
    .await;
    pods.delete(&pod_name, &DeleteParams::default().grace_period(0)).await.unwrap();
    let mut replacement = None;
    if replace {
        let pod = task_pod(&wp, 0, None, &RenderConfig::default()).unwrap();
        replacement = Some(pods.create(&PostParams::default(), &pod).await.unwrap());
    }
    let failed = job_in(&ns, &name, "task-0", JobState::Failed).await;
    assert_eq!(failed.status.unwrap().history.pop().unwrap().message.as_deref(), Some("pod was deleted"));
    if let Some(replacement) = replacement {
        let left = pods.get(&pod_name).await.unwrap();
        assert_eq!(left.uid(), replacement.uid(), "the replacement is left alone");
    }
}

#[tokio::test]
async fn the_workers_writes_name_its_field_manager() {
    let ns = namespace("worker-field-manager").await;
    let wp = create_workplan(&ns, "1").await;
    let name = wp.name_any();
    let _worker = Worker::start(&ns.name, "worker-a", &[]);
    let _kubelet = Kubelet::start(&ns, |_| Act::Succeed);
    request_task_0(&ns, &wp).await;
    let done = job_in(&ns, &name, "task-0", JobState::Completed).await;
    let managers = |fields: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry]| {
        fields.iter().filter_map(|f| f.manager.clone()).collect::<BTreeSet<_>>()
    };
    let rqs_managers = managers(done.managed_fields());
    assert!(rqs_managers.contains("kubeci-worker"), "{rqs_managers:?}");
    // The worker caches RequestStates without managedFields; its writes keep the others' entries.
    assert!(rqs_managers.len() > 1, "the creator's entry is gone: {rqs_managers:?}");
    let pod = pods_api(&ns).get(&task_pod_name(&name, 0)).await.unwrap();
    let created = pod
        .managed_fields()
        .iter()
        .find(|f| f.operation.as_deref() == Some("Update") && f.subresource.is_none())
        .and_then(|f| f.manager.as_deref());
    assert_eq!(created, Some("kubeci-worker"), "{:?}", managers(pod.managed_fields()));
}

#[tokio::test]
async fn jobs_that_cannot_run_are_reported_failed() {
    let ns = namespace("worker-bad-jobs").await;
    let _worker = Worker::start(&ns.name, "worker-a", &[]);

    // A task past the Workplan's last one: the rendering error is the message.
    let wp = create_workplan(&ns, "1").await;
    request_fresh(&ns, &wp, Job::Task(5)).await;
    let failed = job_in(&ns, &wp.name_any(), "task-5", JobState::Failed).await;
    assert_eq!(
        failed.status.unwrap().history.pop().unwrap().message,
        Some(format!("Workplan {:?} has 2 tasks, there is no task 5", wp.name_any()))
    );

    // A RequestState whose request-uid is not its Workplan's.
    let other = create_workplan(&ns, "2").await;
    let mut impostor = other.clone();
    impostor.metadata.uid = Some("not-the-workplans-uid".into());
    request_fresh(&ns, &impostor, Job::Task(0)).await;
    let failed = job_in(&ns, &other.name_any(), "task-0", JobState::Failed).await;
    let message = failed.status.unwrap().history.pop().unwrap().message.unwrap();
    assert!(message.starts_with("RequestState belongs to another Workplan"), "{message}");
}

#[tokio::test]
async fn a_restarted_worker_resumes_the_job_it_had_started() {
    let ns = namespace("worker-resumes").await;
    let wp = create_workplan(&ns, "1").await;
    let name = wp.name_any();
    let pods = pods_api(&ns);
    let pod_name = task_pod_name(&name, 0);
    let first = Worker::start(&ns.name, "worker-fixed", &[]);
    request_task_0(&ns, &wp).await;
    job_in(&ns, &name, "task-0", JobState::Started).await;
    tokio::time::timeout(TIMEOUT, await_condition(pods.clone(), &pod_name, |p: Option<&Pod>| p.is_some()))
        .await
        .unwrap()
        .unwrap();
    first.kill(); // a crash: the job stays STARTED by worker-fixed

    let second = Worker::start(&ns.name, "worker-fixed", &[]);
    second.ready().await;
    eventually("the restarted worker to resume", TIMEOUT, || async {
        (second.log_count("adopted the existing pod") == 1).then_some(())
    })
    .await;
    let _kubelet = Kubelet::start(&ns, |_| Act::Succeed);
    let done = job_in(&ns, &name, "task-0", JobState::Completed).await;
    let starts = trail(&done).iter().filter(|e| e.1 == JobState::Started).count();
    assert_eq!(starts, 1, "resumed, not claimed again");
    assert_eq!(pods.list(&ListParams::default()).await.unwrap().items.len(), 1);
}

#[tokio::test]
async fn on_shutdown_a_running_job_is_left_to_the_next_worker() {
    let ns = namespace("worker-shutdown-handover").await;
    let wp = create_workplan(&ns, "1").await;
    let name = wp.name_any();
    let leases: Api<Lease> = Api::namespaced(ns.client.clone(), &ns.name);
    let first = Worker::start(&ns.name, "worker-a", &["--drain-seconds", "1"]);
    request_task_0(&ns, &wp).await;
    job_in(&ns, &name, "task-0", JobState::Started).await;
    eventually("the worker to create its pod", TIMEOUT, || async {
        (first.log_count("created the pod") == 1).then_some(())
    })
    .await;
    assert!(first.stop(), "the worker exits cleanly on SIGTERM");
    assert!(leases.get_opt("worker-a").await.unwrap().is_none(), "the lease is deleted on shutdown");
    let rqs = rqs_api(&ns).get(&name).await.unwrap();
    assert_eq!((rqs.spec.state, rqs.spec.worker.as_deref()), (JobState::Started, Some("worker-a")));

    // The workplan-operator sees the Lease gone and requests the job again.
    let again = protocol::request(&rqs, Job::Task(0), Some("worker worker-a lost".into()), Timestamp::now());
    rqs_api(&ns).replace(&name, &PostParams::default(), &again).await.unwrap();
    let second = Worker::start(&ns.name, "worker-b", &[]);
    let _kubelet = Kubelet::start(&ns, |_| Act::Succeed);
    let done = job_in(&ns, &name, "task-0", JobState::Completed).await;
    assert_eq!(
        trail(&done).last().unwrap(),
        &("task-0".into(), JobState::Completed, some("worker-b"), some(NODE))
    );
    assert_eq!(second.log_count("adopted the existing pod"), 1);
    assert_eq!(pods_api(&ns).list(&ListParams::default()).await.unwrap().items.len(), 1);
}

#[tokio::test]
async fn no_more_jobs_than_max_in_flight_run_at_once() {
    let ns = namespace("worker-max-in-flight").await;
    let runs: Vec<String> = (0..5).map(|i| i.to_string()).collect();
    let workplans = futures::future::join_all(runs.iter().map(|run| create_workplan(&ns, run))).await;
    let worker = Worker::start(&ns.name, "worker-a", &["--max-in-flight", "2"]);
    worker.ready().await;
    // Record the most jobs STARTED at once, from every change the API server reports, and how
    // many the recorder has seen COMPLETED (so it is read only once it has seen them all).
    let api = rqs_api(&ns);
    let most = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let completed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let recorder = {
        let (api, most, completed) = (api.clone(), most.clone(), completed.clone());
        tokio::spawn(async move {
            use futures::StreamExt;
            use kube::runtime::{WatchStreamExt, watcher};
            let mut states = std::collections::HashMap::new();
            let mut objects =
                std::pin::pin!(watcher::watcher(api, watcher::Config::default()).applied_objects());
            while let Some(Ok(rqs)) = objects.next().await {
                states.insert(rqs.name_any(), rqs.spec.state);
                let started = states.values().filter(|s| **s == JobState::Started).count();
                most.fetch_max(started, std::sync::atomic::Ordering::SeqCst);
                let done = states.values().filter(|s| **s == JobState::Completed).count();
                completed.store(done, std::sync::atomic::Ordering::SeqCst);
            }
        })
    };
    let _kubelet = Kubelet::start(&ns, |_| Act::Succeed);
    futures::future::join_all(workplans.iter().map(|wp| request_task_0(&ns, wp))).await;
    eventually("5 jobs COMPLETED", TIMEOUT, || {
        let api = api.clone();
        async move {
            let list = api.list(&ListParams::default()).await.ok()?.items;
            (list.len() == 5 && list.iter().all(|r| r.spec.state == JobState::Completed)).then_some(())
        }
    })
    .await;
    eventually("the recorder to see the 5 jobs COMPLETED", TIMEOUT, || async {
        (completed.load(std::sync::atomic::Ordering::SeqCst) == 5).then_some(())
    })
    .await;
    recorder.abort();
    let most = most.load(std::sync::atomic::Ordering::SeqCst);
    assert!((1..=2).contains(&most), "{most} jobs ran at once with --max-in-flight 2");
    worker.metric_is("kubeci_worker_jobs_total{outcome=\"completed\"}", 5.0).await;
}
