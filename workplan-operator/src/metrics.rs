//! The workplan-operator's metrics, prefix `kubeci_workplan_operator_`.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

pub struct Metrics {
    pub registry: Registry,
    /// Workplan reconciliations.
    pub reconciles: IntCounter,
    /// Errors by a fixed kind.
    pub errors: IntCounterVec,
    /// Reconciliation time.
    pub reconcile_duration: Histogram,
    /// Jobs requested (tasks, cleanups, re-requests).
    pub requests: IntCounter,
    /// Started jobs requested again because their worker's Lease expired.
    pub workers_lost: IntCounter,
    /// Workplans that reached a final phase, by phase.
    pub finished: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry =
            Registry::new_custom(Some("kubeci_workplan_operator".into()), None).expect("a valid prefix");
        let metrics = Metrics {
            reconciles: IntCounter::new("reconcile_total", "Workplan reconciliations").expect("valid"),
            errors: IntCounterVec::new(Opts::new("errors_total", "Errors by kind"), &["error"])
                .expect("valid"),
            reconcile_duration: Histogram::with_opts(
                HistogramOpts::new("reconcile_duration_seconds", "Time to reconcile a Workplan")
                    .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
            )
            .expect("valid"),
            requests: IntCounter::new("requests_total", "Jobs requested").expect("valid"),
            workers_lost: IntCounter::new(
                "workers_lost_total",
                "Jobs requested again after their worker's lease expired",
            )
            .expect("valid"),
            finished: IntCounterVec::new(
                Opts::new("workplans_finished_total", "Workplans finished, by phase"),
                &["phase"],
            )
            .expect("valid"),
            registry: registry.clone(),
        };
        for collector in [
            Box::new(metrics.reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(metrics.errors.clone()),
            Box::new(metrics.reconcile_duration.clone()),
            Box::new(metrics.requests.clone()),
            Box::new(metrics.workers_lost.clone()),
            Box::new(metrics.finished.clone()),
        ] {
            registry.register(collector).expect("registered once");
        }
        metrics
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
