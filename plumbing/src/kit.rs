//! The controller kit: what the director, the workplan-operator and the worker would otherwise
//! each write for themselves.
//!
//! - [`Registrar`]: metrics in one prefixed registry, without the register-every-collector
//!   boilerplate;
//! - [`ReconcileMetrics`]: `reconcile_total`, `reconcile_duration_seconds` and
//!   `errors_total{error}` (a fixed label per error kind, [`MetricLabel`]), with [`ReconcileMetrics::measure`];
//! - [`ErrorBackoff`]: per-object exponential back-off for a controller's `error_policy`, reset by
//!   the next success;
//! - [`Backoff`]: capped exponential back-off for retry loops;
//! - [`Events`]: publishing Kubernetes Events, never failing the caller;
//! - [`api`]: the `Api` of one namespace, or of all;
//! - [`Kinds`]: discovery of a kind's resource and scope, cached;
//! - [`Synced`]: when a reflector's store has its first listing, for any number of waiters.

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::api::{Api, ApiResource};
use kube::core::GroupVersionKind;
use kube::discovery::{Scope, pinned_kind};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::{Client, Resource};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Registers metrics into one registry whose prefix names the component
/// (`kubeci_director_…`). Metric definitions are programmer input: a bad name panics at start.
pub struct Registrar {
    registry: Registry,
}

impl Registrar {
    /// A new registry with `prefix` (for example `kubeci_director`).
    pub fn new(prefix: &str) -> Registrar {
        Registrar { registry: Registry::new_custom(Some(prefix.into()), None).expect("a valid prefix") }
    }

    /// The registry, for the admin server's `/metrics`.
    pub fn registry(&self) -> Registry {
        self.registry.clone()
    }

    fn register<C: prometheus::core::Collector + Clone + 'static>(&self, collector: C) -> C {
        self.registry.register(Box::new(collector.clone())).expect("each metric is registered once");
        collector
    }

    pub fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.register(IntCounter::new(name, help).expect("a valid metric"))
    }

    pub fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.register(IntGauge::new(name, help).expect("a valid metric"))
    }

    pub fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.register(IntCounterVec::new(Opts::new(name, help), labels).expect("a valid metric"))
    }

    pub fn histogram(&self, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
        self.register(
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("a valid metric"),
        )
    }
}

/// A fixed, low-cardinality name for an error kind: the `error` label of `errors_total`.
pub trait MetricLabel {
    fn metric_label(&self) -> &'static str;
}

/// What every reconciler reports: how often it ran, how long it took, and its errors by kind.
#[derive(Clone)]
pub struct ReconcileMetrics {
    /// `reconcile_total`.
    pub reconciles: IntCounter,
    /// `reconcile_duration_seconds`.
    pub duration: Histogram,
    /// `errors_total{error}`: failed reconciliations and other errors, by a fixed label.
    pub errors: IntCounterVec,
}

impl ReconcileMetrics {
    /// Registers the three metrics; `object` names what is reconciled (`Workflow`).
    pub fn register(registrar: &Registrar, object: &str) -> ReconcileMetrics {
        ReconcileMetrics {
            reconciles: registrar.counter("reconcile_total", &format!("{object} reconciliations")),
            duration: registrar.histogram(
                "reconcile_duration_seconds",
                &format!("Time to reconcile a {object}"),
                vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0],
            ),
            errors: registrar.counter_vec("errors_total", "Errors by kind", &["error"]),
        }
    }

    /// Counts and times one reconciliation.
    pub async fn measure<T>(&self, reconcile: impl Future<Output = T>) -> T {
        let started = Instant::now();
        self.reconciles.inc();
        let result = reconcile.await;
        self.duration.observe(started.elapsed().as_secs_f64());
        result
    }

    /// Counts an error under its label.
    pub fn error(&self, error: &impl MetricLabel) {
        self.errors.with_label_values(&[error.metric_label()]).inc();
    }
}

/// Per-object exponential back-off for failed reconciliations: `base`, doubling with each
/// failure in a row, at most `max`; [`ErrorBackoff::reset`] after a success. One object failing
/// again and again backs off on its own without slowing the others.
pub struct ErrorBackoff<K> {
    base: Duration,
    max: Duration,
    failures: Mutex<HashMap<K, u32>>,
}

impl<K: Eq + Hash + Clone> ErrorBackoff<K> {
    pub fn new(base: Duration, max: Duration) -> ErrorBackoff<K> {
        ErrorBackoff { base, max, failures: Mutex::new(HashMap::new()) }
    }

    /// The delay before retrying `key` after one more failure.
    pub fn next(&self, key: &K) -> Duration {
        let mut failures = self.failures.lock().expect("never poisoned");
        let count = failures.entry(key.clone()).or_insert(0);
        let delay = self.base.saturating_mul(2u32.saturating_pow(*count)).min(self.max);
        *count = count.saturating_add(1);
        delay
    }

    /// `key` succeeded (or is gone): its next failure starts from `base` again.
    pub fn reset(&self, key: &K) {
        self.failures.lock().expect("never poisoned").remove(key);
    }
}

/// Capped exponential back-off for a retry loop.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    first: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff { next: first, first, max }
    }

    /// The delay to wait now; the next one is twice as long, at most `max`.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// Sleeps for [`Backoff::next_delay`].
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// Starts again from the first delay (after a success).
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

/// Publishes Kubernetes Events as one controller. Events are for people: a failure to publish
/// is logged, never returned.
#[derive(Clone)]
pub struct Events {
    recorder: Recorder,
}

impl Events {
    /// `controller` is the Event's reporting controller (`kubeci-director`), `instance` this
    /// replica's identity.
    pub fn new(client: Client, controller: &str, instance: &str) -> Events {
        let reporter = Reporter { controller: controller.into(), instance: Some(instance.into()) };
        Events { recorder: Recorder::new(client, reporter) }
    }

    /// A Normal Event about `object`.
    pub async fn normal<K: Resource<DynamicType = ()>>(&self, object: &K, reason: &str, note: &str) {
        self.publish(object, EventType::Normal, reason, note).await
    }

    /// A Warning Event about `object`.
    pub async fn warning<K: Resource<DynamicType = ()>>(&self, object: &K, reason: &str, note: &str) {
        self.publish(object, EventType::Warning, reason, note).await
    }

    pub async fn publish<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        type_: EventType,
        reason: &str,
        note: &str,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note.into()),
            action: reason.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &object.object_ref(&())).await {
            tracing::debug!(error = %e, reason, "could not publish an Event");
        }
    }
}

/// The namespaced `Api` of `namespace`, or of every namespace (`--namespace` unset).
pub fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// Splits `apps/v1` into its group and version (`v1` is the core group).
pub fn group_version_kind(api_version: &str, kind: &str) -> GroupVersionKind {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    GroupVersionKind::gvk(group, version, kind)
}

/// Kinds resolved by discovery to their resource and scope, remembered once found (a kind not
/// found is asked again next time: its CRD may be installed later).
#[derive(Default)]
pub struct Kinds {
    found: Mutex<HashMap<GroupVersionKind, (ApiResource, Scope)>>,
}

impl Kinds {
    pub async fn resolve(
        &self,
        client: &Client,
        api_version: &str,
        kind: &str,
    ) -> Result<(ApiResource, Scope), kube::Error> {
        let gvk = group_version_kind(api_version, kind);
        if let Some(found) = self.found.lock().expect("never poisoned").get(&gvk) {
            return Ok(found.clone());
        }
        let (resource, capabilities) = pinned_kind(client, &gvk).await?;
        let found = (resource, capabilities.scope);
        self.found.lock().expect("never poisoned").insert(gvk, found.clone());
        Ok(found)
    }
}

impl Debug for Kinds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kinds").finish_non_exhaustive()
    }
}

/// Tells any number of waiters when a reflector's store has its first complete listing.
/// kube-runtime 5's `Store::wait_until_ready` wakes only the last of several concurrent waiters
/// (its one-shot channel keeps a single waker), so `Synced` is the store's one waiter and passes
/// the news on through a watch channel. Do not use it on a store a `Controller` also waits on:
/// that one is [`crate::admin::Readiness::set_ready_when_synced`]'s case.
#[derive(Clone)]
pub struct Synced(tokio::sync::watch::Receiver<bool>);

impl Synced {
    /// Starts the one waiter on `store`.
    pub fn of<K>(store: Store<K>) -> Synced
    where
        K: Resource + Clone + Send + Sync + 'static,
        K::DynamicType: Eq + Hash + Clone + Send + Sync,
    {
        let (sender, receiver) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            if store.wait_until_ready().await.is_ok() {
                let _ = sender.send(true);
            }
        });
        Synced(receiver)
    }

    /// Waits until the store has synced; false if its writer went away first.
    pub async fn wait(&self) -> bool {
        self.0.clone().wait_for(|synced| *synced).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_backoff_doubles_per_object_and_resets() {
        let backoff = ErrorBackoff::new(Duration::from_secs(1), Duration::from_secs(5));
        let (a, b) = ("a".to_string(), "b".to_string());
        let delays: Vec<u64> = (0..5).map(|_| backoff.next(&a).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 5, 5]);
        assert_eq!(backoff.next(&b), Duration::from_secs(1), "another object starts afresh");
        backoff.reset(&a);
        assert_eq!(backoff.next(&a), Duration::from_secs(1));
    }

    #[test]
    fn backoff_is_capped_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(1));
        let delays: Vec<u128> = (0..5).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, [200, 400, 800, 1000, 1000]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(200));
    }

    #[test]
    fn core_and_named_groups() {
        assert_eq!(group_version_kind("v1", "ConfigMap"), GroupVersionKind::gvk("", "v1", "ConfigMap"));
        assert_eq!(
            group_version_kind("apps/v1", "Deployment"),
            GroupVersionKind::gvk("apps", "v1", "Deployment")
        );
    }

    #[test]
    fn reconcile_metrics_share_one_prefixed_registry() {
        let registrar = Registrar::new("kubeci_test");
        let metrics = ReconcileMetrics::register(&registrar, "Thing");
        struct Oops;
        impl MetricLabel for Oops {
            fn metric_label(&self) -> &'static str {
                "oops"
            }
        }
        metrics.error(&Oops);
        let names: Vec<String> = registrar.registry().gather().iter().map(|f| f.name().to_string()).collect();
        assert_eq!(
            names,
            [
                "kubeci_test_errors_total",
                "kubeci_test_reconcile_duration_seconds",
                "kubeci_test_reconcile_total"
            ]
        );
    }
}
