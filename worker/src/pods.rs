//! One watch of kubeci's pods for the whole worker process (DESIGN.md §4), instead of one per
//! job: 1,000 jobs in flight are one watch connection and one cache, not 1,000 of each.
//!
//! The watch selects the pods kubeci renders (labelled `kube.ci/workplan`: the task and cleanup
//! pods, and so every pod a job may adopt) in `--namespace` or in all namespaces, and keeps them
//! in a reflector store slimmed to what [`pod_outcome`] reads. Each job subscribes to its pod's
//! name ([`PodWatch::subscribe`]): it gets the pod as the cache has it then, and every change
//! after, in order, through a channel of its own that lives as long as the job follows the pod.
//! What a change means for the job is decided in [`crate::decide::PodTracker`].

use std::collections::HashMap;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use shared_types::labels;
use tokio::sync::{mpsc, watch};

use crate::Error;
use crate::decide::{Key, PodChange, SeenPod};
use crate::metrics::Metrics;

/// The shared pod watch: its cache and the jobs following a pod.
pub struct PodWatch {
    store: Store<Pod>,
    subscribers: Arc<Mutex<Subscribers>>,
    synced: watch::Receiver<bool>,
}

#[derive(Default)]
struct Subscribers {
    next_id: u64,
    /// By pod name; a job follows one pod, so a name has one subscriber except in passing.
    by_pod: HashMap<Key, Vec<(u64, mpsc::UnboundedSender<PodChange>)>>,
}

fn lock(subscribers: &Mutex<Subscribers>) -> MutexGuard<'_, Subscribers> {
    subscribers.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl PodWatch {
    /// Starts watching the pods of `api` (one namespace, or all) in the background, for the
    /// rest of the process.
    pub fn start(api: Api<Pod>, metrics: Arc<Metrics>) -> PodWatch {
        let (store, writer) = reflector::store();
        let subscribers = Arc::new(Mutex::new(Subscribers::default()));
        let (synced_tx, synced) = watch::channel(false);
        let events = watcher::watcher(api, watcher::Config::default().labels(labels::WORKPLAN))
            .default_backoff()
            .modify(slim);
        let events = reflector::reflector(writer, events);
        tokio::spawn(dispatch(events, store.clone(), subscribers.clone(), synced_tx, metrics));
        PodWatch { store, subscribers, synced }
    }

    /// Waits until the cache has its first complete listing.
    pub async fn synced(&self) {
        let mut synced = self.synced.clone();
        // The sender lives as long as the watch task, which runs as long as the process.
        let _ = synced.wait_for(|synced| *synced).await;
    }

    /// Follows the pod `key`: the subscription starts with the pod the cache has under the name
    /// (if any) and then carries every change, in order. Subscribe before creating or reading
    /// the pod, so that no change of it can fall before the subscription.
    pub fn subscribe(&self, key: Key) -> Subscription {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut subscribers = lock(&self.subscribers);
        // Read under the lock: the watch task applies a change to the store before it takes the
        // lock to pass the change on, so a change is either in this read or sent after it (or
        // both, which repeats a state and is harmless).
        if let Some(pod) = self.store.get(&ObjectRef::new(&key.name).within(&key.namespace)) {
            let _ = tx.send(PodChange::Applied(SeenPod::of(&pod)));
        }
        let id = subscribers.next_id;
        subscribers.next_id += 1;
        subscribers.by_pod.entry(key.clone()).or_default().push((id, tx));
        Subscription { key, id, rx, subscribers: self.subscribers.clone() }
    }
}

/// A job's view of its pod's name; unsubscribes when dropped.
pub struct Subscription {
    key: Key,
    id: u64,
    rx: mpsc::UnboundedReceiver<PodChange>,
    subscribers: Arc<Mutex<Subscribers>>,
}

impl Subscription {
    /// The next change; `None` only if the watch task ended.
    pub async fn next(&mut self) -> Option<PodChange> {
        self.rx.recv().await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut subscribers = lock(&self.subscribers);
        if let Some(list) = subscribers.by_pod.get_mut(&self.key) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                subscribers.by_pod.remove(&self.key);
            }
        }
    }
}

/// Passes each change of the cache on to the subscribers of the pod's name.
async fn dispatch(
    events: impl futures::Stream<Item = Result<Event<Pod>, watcher::Error>>,
    store: Store<Pod>,
    subscribers: Arc<Mutex<Subscribers>>,
    synced: watch::Sender<bool>,
    metrics: Arc<Metrics>,
) {
    let mut events = pin!(events);
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Apply(pod)) => notify(&subscribers, &pod, PodChange::Applied),
            Ok(Event::Delete(pod)) => notify(&subscribers, &pod, PodChange::Deleted),
            Ok(Event::InitDone) => {
                if !synced.send_replace(true) {
                    tracing::info!(pods = store.len(), "pods cached");
                }
                let subscribers = lock(&subscribers);
                for (key, list) in &subscribers.by_pod {
                    let listed = store.get(&ObjectRef::new(&key.name).within(&key.namespace));
                    let listed = listed.map(|pod| SeenPod::of(&pod));
                    for (_, tx) in list {
                        let _ = tx.send(PodChange::Relisted(listed.clone()));
                    }
                }
            }
            // The listing in progress goes to the store at InitDone, and is passed on then.
            Ok(Event::Init | Event::InitApply(_)) => {}
            Err(source) => {
                let error = Error::WatchPods(source);
                metrics.error(&error);
                tracing::warn!(%error, "the pod watch restarts");
            }
        }
    }
    tracing::error!("the pod watch ended");
}

fn notify(subscribers: &Mutex<Subscribers>, pod: &Pod, change: fn(SeenPod) -> PodChange) {
    let (Some(namespace), Some(name)) = (&pod.metadata.namespace, &pod.metadata.name) else { return };
    let key = Key { namespace: namespace.clone(), name: name.clone() };
    let subscribers = lock(subscribers);
    if let Some(list) = subscribers.by_pod.get(&key) {
        let seen = SeenPod::of(pod);
        for (_, tx) in list {
            let _ = tx.send(change(seen.clone()));
        }
    }
}

/// Keeps of a pod only what the cache is for: its place, uid and labels, and what
/// [`pod_outcome`] reads (the node, the phase, the conditions and each container's name and
/// state). Everything else (managedFields, the spec, images, IPs) would be held for every pod
/// for nothing.
///
/// [`pod_outcome`]: shared_types::outcome::pod_outcome
pub fn slim(pod: &mut Pod) {
    let meta = std::mem::take(&mut pod.metadata);
    pod.metadata = ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
        resource_version: meta.resource_version,
        labels: meta.labels,
        deletion_timestamp: meta.deletion_timestamp,
        ..ObjectMeta::default()
    };
    let node_name = pod.spec.take().and_then(|spec| spec.node_name);
    pod.spec = Some(PodSpec { node_name, ..PodSpec::default() });
    let steps = |statuses: Option<Vec<ContainerStatus>>| {
        statuses.map(|list| {
            list.into_iter()
                .map(|s| ContainerStatus { name: s.name, state: s.state, ..ContainerStatus::default() })
                .collect()
        })
    };
    pod.status = pod.status.take().map(|status| PodStatus {
        phase: status.phase,
        reason: status.reason,
        message: status.message,
        conditions: status.conditions,
        init_container_statuses: steps(status.init_container_statuses),
        container_statuses: steps(status.container_statuses),
        ..PodStatus::default()
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;
    use shared_types::outcome::pod_outcome;

    fn pod(yaml: &str) -> Pod {
        serde_yaml::from_str(yaml).unwrap()
    }

    const HEAD: &str = r#"
metadata:
  name: wp-task-0
  namespace: ns
  uid: u1
  resourceVersion: "42"
  labels: {kube.ci/workplan: wp, kube.ci/task: "0"}
  annotations: {a: b}
  ownerReferences: [{apiVersion: kube.ci/v1alpha1, kind: Workplan, name: wp, uid: w}]
  managedFields: [{manager: kubeci-worker, operation: Update, apiVersion: v1}]
spec:
  nodeName: n1
  containers: [{name: step-5, image: busybox, command: [sh, -c, "exit 1"]}]
"#;

    #[test]
    fn a_slim_pod_tells_the_same_outcome() {
        let statuses = [
            "status: {phase: Succeeded, podIP: 10.0.0.1, qosClass: BestEffort}",
            r#"
status:
  phase: Running
  containerStatuses:
  - {name: step-5, image: a, imageID: "x", ready: false, restartCount: 0, state: {terminated: {exitCode: 3, message: "disk full"}}}
"#,
            "status: {phase: Failed, reason: Evicted, message: low on memory}",
            r#"
status:
  phase: Pending
  conditions: [{type: PodScheduled, status: "False", reason: Unschedulable, message: "0/1 nodes"}]
"#,
            r#"
status:
  phase: Pending
  initContainerStatuses:
  - {name: step-1, image: nope, imageID: "", ready: false, restartCount: 0, state: {waiting: {reason: ImagePullBackOff, message: "not found"}}}
"#,
            "",
        ];
        for status in statuses {
            let full = pod(&format!("{HEAD}{status}"));
            let mut slimmed = full.clone();
            slim(&mut slimmed);
            assert_eq!(pod_outcome(&slimmed), pod_outcome(&full), "{status}");
            assert_eq!(SeenPod::of(&slimmed), SeenPod::of(&full));
        }
    }

    #[test]
    fn a_slim_pod_keeps_its_place_and_labels_only() {
        let full = pod(&format!("{HEAD}status: {{phase: Running, podIP: 10.0.0.1}}"));
        let mut p = full.clone();
        slim(&mut p);
        let kept = |p: &Pod| (p.metadata.name.clone(), p.metadata.namespace.clone(), p.metadata.uid.clone());
        assert_eq!(kept(&p), kept(&full));
        assert_eq!(
            (&p.metadata.labels, &p.metadata.resource_version),
            (&full.metadata.labels, &full.metadata.resource_version)
        );
        assert_eq!(p.metadata.managed_fields, None);
        assert_eq!(p.metadata.annotations, None);
        assert_eq!(p.metadata.owner_references, None);
        assert_eq!(p.spec, Some(PodSpec { node_name: Some("n1".into()), ..PodSpec::default() }));
        assert_eq!(p.status, Some(PodStatus { phase: Some("Running".into()), ..PodStatus::default() }));
    }
}
