//! One namespace at its quota does not hold up another (issue 13, failure 1): a director serving
//! every namespace, so this binary has a control plane of its own.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e::TestEnv;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use shared_types::{Workflow, Workplan};
use support::{
    TIMEOUT, baselined, config_map, eventually, refuse_workplans, seed, set_value, workflow_where, workplans,
};

/// The director for every namespace (no `--namespace`); killed when dropped.
struct AllNamespaces(Child);

impl AllNamespaces {
    fn start() -> AllNamespaces {
        let child = Command::new(env!("CARGO_BIN_EXE_director"))
            .arg("--kubeconfig")
            .arg(TestEnv::get().kubeconfig())
            .args(["--metrics-addr", "127.0.0.1:0", "--no-leader-election", "--lease-namespace", "default"])
            .env("RUST_LOG", "info,kube=warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("starting the director");
        AllNamespaces(child)
    }
}

impl Drop for AllNamespaces {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_namespace_at_its_quota_does_not_hold_up_another() {
    let a = TestEnv::get().namespace("quota-a").await;
    let b = TestEnv::get().namespace("quota-b").await;
    let _director = AllNamespaces::start();
    for ns in [&a, &b] {
        let cms: Api<ConfigMap> = Api::namespaced(ns.client.clone(), &ns.name);
        cms.create(&PostParams::default(), &config_map("my-config", &[], "0")).await.unwrap();
        Api::<Workflow>::namespaced(ns.client.clone(), &ns.name)
            .create(&PostParams::default(), &seed(&ns.name))
            .await
            .unwrap();
        baselined(ns, "my-workflow").await;
    }

    // A refuses; three events of A wait there, retried with back-off.
    refuse_workplans(&a).await;
    let a_cms: Api<ConfigMap> = Api::namespaced(a.client.clone(), &a.name);
    for i in 1..=3 {
        set_value(&a_cms, "my-config", &i.to_string()).await;
    }
    workflow_where(&a, "my-workflow", "A's three runs pending", |wf| {
        wf.status.as_ref().and_then(|s| s.pending_runs.as_ref()).is_some_and(|p| p.count == 3)
    })
    .await;

    // B's event gets its Workplan at once (the old engine retried A's creates inline, about 6 s
    // each, before it got to B).
    let b_cms: Api<ConfigMap> = Api::namespaced(b.client.clone(), &b.name);
    let b_workplans: Api<Workplan> = Api::namespaced(b.client.clone(), &b.name);
    let changed = Instant::now();
    set_value(&b_cms, "my-config", "1").await;
    eventually("B's Workplan", TIMEOUT, || async {
        (!workplans(&b_workplans).await.is_empty()).then_some(())
    })
    .await;
    let took = changed.elapsed();
    println!("B's Workplan {took:?} after its change, with A's creates refused");
    assert!(took < Duration::from_secs(5), "B waited {took:?} behind A");
    let a_workplans: Api<Workplan> = Api::namespaced(a.client.clone(), &a.name);
    assert!(workplans(&a_workplans).await.is_empty(), "A is still refused");
}
