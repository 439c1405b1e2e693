//! The director's metrics, in one registry with the prefix `kubeci_director_`.

use plumbing::kit::{MetricLabel, ReconcileMetrics, Registrar};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Registry};

/// Every metric the director exports.
pub struct Metrics {
    registrar: Registrar,
    /// `reconcile_total`, `reconcile_duration_seconds` and `errors_total{error}`.
    pub reconcile: ReconcileMetrics,
    /// Events of the trigger watches handled (listings and single changes), counted once the
    /// Workplans they start exist.
    pub trigger_events: IntCounter,
    /// Trigger objects that fired: one per distinct (Workflow, object, version) watched.
    pub trigger_fired: IntCounter,
    /// Watched versions already in the trigger record (re-lists, reconnects, duplicates).
    pub trigger_deduplicated: IntCounter,
    /// Fires dropped because the Workflow is suspended.
    pub trigger_suspended: IntCounter,
    /// TriggerRecord shards written or deleted (a baseline writes every non-empty shard, an event
    /// the one its object is in).
    pub trigger_record_writes: IntCounter,
    /// Trigger objects in the saved records of the Workflows served.
    pub trigger_record_objects: IntGauge,
    /// Running trigger watches.
    pub trigger_watches: IntGauge,
    /// Workplans created.
    pub workplans_created: IntCounter,
    /// Creates that found the Workplan already there (a replayed event).
    pub workplans_existing: IntCounter,
    /// Runs whose Workplan does not exist yet: on their way, refused and retried, or held by
    /// a cap.
    pub workplans_pending: IntGauge,
    /// Admission reviews answered by the webhook, by verdict (`allowed`, `denied`, `malformed`).
    pub admission_reviews: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registrar::new("kubeci_director");
        Metrics {
            reconcile: ReconcileMetrics::register(&r, "Workflow"),
            trigger_events: r.counter("trigger_events_total", "Trigger watch events handled"),
            trigger_fired: r
                .counter("trigger_fired_total", "Distinct watched trigger object versions that fired"),
            trigger_deduplicated: r
                .counter("trigger_deduplicated_total", "Watched versions already in the trigger record"),
            trigger_suspended: r
                .counter("trigger_suspended_total", "Fires dropped while the Workflow is suspended"),
            trigger_record_writes: r
                .counter("trigger_record_writes_total", "TriggerRecord shards written or deleted"),
            trigger_record_objects: r.gauge(
                "trigger_record_objects",
                "Trigger objects in the saved records of the Workflows served",
            ),
            trigger_watches: r.gauge("trigger_watches", "Running trigger watches"),
            workplans_created: r.counter("workplans_created_total", "Workplans created"),
            workplans_existing: r
                .counter("workplans_existing_total", "Workplan creates that found it existing"),
            workplans_pending: r.gauge("workplans_pending", "Runs decided whose Workplan does not exist yet"),
            admission_reviews: r.counter_vec(
                "admission_reviews_total",
                "Admission reviews answered, by verdict",
                &["verdict"],
            ),
            registrar: r,
        }
    }

    /// The registry, for the admin server's `/metrics`.
    pub fn registry(&self) -> Registry {
        self.registrar.registry()
    }

    /// Counts an error under its fixed label.
    pub fn error(&self, error: &impl MetricLabel) {
        self.reconcile.error(error)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
