//! The director's metrics, in one registry with the prefix `kubeci_director_`.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Every metric the director exports.
pub struct Metrics {
    pub registry: Registry,
    /// Workflow reconciliations.
    pub reconciles: IntCounter,
    /// Failed reconciliations and other errors, by a fixed error label.
    pub errors: IntCounterVec,
    /// Reconciliation time.
    pub reconcile_duration: Histogram,
    /// Events delivered by the trigger watches (listings and single changes).
    pub trigger_events: IntCounter,
    /// Trigger objects that fired: one per distinct (Workflow, object, version) observed.
    pub trigger_fired: IntCounter,
    /// Deliveries of a version already recorded (re-lists, reconnects, duplicates).
    pub trigger_deduplicated: IntCounter,
    /// Fires dropped because the Workflow is suspended.
    pub trigger_suspended: IntCounter,
    /// Running trigger watches.
    pub trigger_watches: IntGauge,
    /// Workplans created.
    pub workplans_created: IntCounter,
    /// Creates that found the Workplan already there (a replayed event).
    pub workplans_existing: IntCounter,
    /// Admission reviews answered by the webhook, by verdict (`allowed`, `denied`, `malformed`).
    pub admission_reviews: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("kubeci_director".into()), None).expect("a valid prefix");
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("registered once");
            c
        };
        let metrics = Metrics {
            reconciles: counter("reconcile_total", "Workflow reconciliations"),
            errors: IntCounterVec::new(Opts::new("errors_total", "Errors by kind"), &["error"])
                .expect("valid metric"),
            reconcile_duration: Histogram::with_opts(
                HistogramOpts::new("reconcile_duration_seconds", "Time to reconcile a Workflow")
                    .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
            )
            .expect("valid metric"),
            trigger_events: counter("trigger_events_total", "Events delivered by trigger watches"),
            trigger_fired: counter("trigger_fired_total", "Distinct trigger object versions that fired"),
            trigger_deduplicated: counter(
                "trigger_deduplicated_total",
                "Deliveries of an already recorded version",
            ),
            trigger_suspended: counter(
                "trigger_suspended_total",
                "Fires dropped while the Workflow is suspended",
            ),
            trigger_watches: IntGauge::new("trigger_watches", "Running trigger watches")
                .expect("valid metric"),
            workplans_created: counter("workplans_created_total", "Workplans created"),
            workplans_existing: counter(
                "workplans_existing_total",
                "Workplan creates that found it existing",
            ),
            admission_reviews: IntCounterVec::new(
                Opts::new("admission_reviews_total", "Admission reviews answered, by verdict"),
                &["verdict"],
            )
            .expect("valid metric"),
            registry: registry.clone(),
        };
        registry.register(Box::new(metrics.admission_reviews.clone())).expect("registered once");
        registry.register(Box::new(metrics.errors.clone())).expect("registered once");
        registry.register(Box::new(metrics.reconcile_duration.clone())).expect("registered once");
        registry.register(Box::new(metrics.trigger_watches.clone())).expect("registered once");
        metrics
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
