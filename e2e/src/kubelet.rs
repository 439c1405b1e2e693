//! A stand-in for the scheduler and the kubelet where none runs: binds pods to a Node the test
//! created and sets their final status, so that controllers can be tested against the real API
//! server without containers. Used until the end-to-end tier with a real kubelet.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod, ServiceAccount};
use kube::ResourceExt;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::wait::await_condition;
use kube::runtime::watcher::{self, Event};
use tokio::task::JoinHandle;

use crate::{TestEnv, TestNamespace};

const TIMEOUT: Duration = Duration::from_secs(60);
/// The Node the test's "scheduler" binds pods to.
pub const NODE: &str = "node-a";

/// A test namespace ready for pods: its `default` ServiceAccount exists (the ServiceAccount
/// admission plugin rejects pods before the controller manager has created it) and so does
/// the Node `node-a`.
pub async fn pod_namespace(test: &str) -> TestNamespace {
    let ns = TestEnv::get().namespace(test).await;
    let nodes: Api<Node> = Api::all(ns.client.clone());
    let node =
        Node { metadata: ObjectMeta { name: Some(NODE.into()), ..ObjectMeta::default() }, ..Node::default() };
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.is_already_exists() => {}
        Err(e) => panic!("creating node {NODE}: {e}"),
    }
    let accounts: Api<ServiceAccount> = Api::namespaced(ns.client.clone(), &ns.name);
    tokio::time::timeout(
        TIMEOUT,
        await_condition(accounts, "default", |sa: Option<&ServiceAccount>| sa.is_some()),
    )
    .await
    .expect("the default ServiceAccount is created")
    .unwrap();
    ns
}

/// What the fake kubelet does with a pod once it is on a node.
#[derive(Clone, Debug)]
pub enum Act {
    /// Leave it Pending (bound).
    Leave,
    /// Every step succeeds.
    Succeed,
    /// `step` exits with `code` and termination message `message`; the others succeed.
    Fail { step: String, code: i32, message: String },
}

/// Watches the namespace's pods: binds unscheduled ones to `node-a` and then does what `act`
/// says with each (once). Stops when dropped.
pub struct Kubelet {
    task: JoinHandle<()>,
}

impl Kubelet {
    pub fn start(ns: &TestNamespace, act: impl Fn(&Pod) -> Act + Send + Sync + 'static) -> Kubelet {
        let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
        let act = Arc::new(act);
        let task = tokio::spawn(async move {
            let mut done = std::collections::HashSet::new();
            let mut events =
                std::pin::pin!(watcher::watcher(pods.clone(), watcher::Config::default()).default_backoff());
            while let Some(event) = events.next().await {
                let pod = match event {
                    Ok(Event::Apply(pod) | Event::InitApply(pod)) => pod,
                    _ => continue,
                };
                let name = pod.name_any();
                let phase = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
                if phase == "Succeeded" || phase == "Failed" || done.contains(&pod.uid().unwrap_or_default())
                {
                    continue;
                }
                if pod.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none() {
                    bind(&pods, &name).await; // the bound pod comes back as the next event
                    continue;
                }
                let outcome = act(&pod);
                if !matches!(outcome, Act::Leave) {
                    done.insert(pod.uid().unwrap_or_default());
                    finish(&pods, &pod, &outcome).await;
                }
            }
        });
        Kubelet { task }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds the pod to `node-a`, as the scheduler would (through the pods/binding subresource).
pub async fn bind(pods: &Api<Pod>, name: &str) {
    let binding = Binding {
        metadata: ObjectMeta { name: Some(name.into()), ..ObjectMeta::default() },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(NODE.into()),
            ..ObjectReference::default()
        },
    };
    match pods
        .create_subresource::<_, serde_json::Value>("binding", name, &PostParams::default(), &binding)
        .await
    {
        Ok(_) => {}
        // Already bound (an event seen twice): fine.
        Err(kube::Error::Api(s)) if s.is_conflict() => {}
        Err(e) => panic!("binding pod {name}: {e}"),
    }
}

/// Sets the pod's final status, as the kubelet would: every container terminated, exit code 0
/// except `step` under [`Act::Fail`].
pub async fn finish(pods: &Api<Pod>, pod: &Pod, act: &Act) {
    let spec = pod.spec.as_ref().unwrap();
    let status = |c: &k8s_openapi::api::core::v1::Container| {
        let (code, message, reason) = match act {
            Act::Fail { step, code, message } if *step == c.name => (*code, message.clone(), "Error"),
            _ => (0, String::new(), "Completed"),
        };
        serde_json::json!({
            "name": c.name, "image": c.image, "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": code, "reason": reason, "message": message,
                                     "startedAt": "2026-01-01T00:00:00Z", "finishedAt": "2026-01-01T00:00:01Z"}}
        })
    };
    let phase = if matches!(act, Act::Fail { .. }) { "Failed" } else { "Succeeded" };
    let patch = serde_json::json!({"status": {
        "phase": phase,
        "initContainerStatuses": spec.init_containers.iter().flatten().map(status).collect::<Vec<_>>(),
        "containerStatuses": spec.containers.iter().map(status).collect::<Vec<_>>(),
    }});
    pods.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap_or_else(|e| panic!("setting the status of pod {}: {e}", pod.name_any()));
}
