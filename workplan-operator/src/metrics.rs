//! The workplan-operator's metrics, in one registry with the prefix `kubeci_workplan_operator_`.

use plumbing::kit::{ReconcileMetrics, Registrar};
use prometheus::{IntCounter, IntCounterVec, Registry};

/// Every metric the workplan-operator exports.
pub struct Metrics {
    registrar: Registrar,
    /// `reconcile_total`, `reconcile_duration_seconds` and `errors_total{error}`.
    pub reconcile: ReconcileMetrics,
    /// `requests_total`: jobs requested (tasks, cleanups, re-requests).
    pub requests: IntCounter,
    /// `workers_lost_total`: started jobs requested again because their worker's Lease expired.
    pub workers_lost: IntCounter,
    /// `workplans_finished_total{phase}`: Workplans that reached a final phase.
    pub finished: IntCounterVec,
    /// `task_retries_total`: failed tasks requested again under their steps' `retries`.
    pub retries: IntCounter,
    /// `deadlines_exceeded_total`: runs stopped at their `activeDeadlineSeconds`.
    pub deadlines_exceeded: IntCounter,
    /// `runs_cancelled_total`: running Workplans stopped by their `kube.ci/cancel` annotation.
    pub cancelled: IntCounter,
}

impl Metrics {
    /// Registers every metric in a new registry.
    pub fn new() -> Metrics {
        let r = Registrar::new("kubeci_workplan_operator");
        Metrics {
            reconcile: ReconcileMetrics::register(&r, "Workplan"),
            requests: r.counter("requests_total", "Jobs requested"),
            workers_lost: r
                .counter("workers_lost_total", "Jobs requested again after their worker's lease expired"),
            finished: r.counter_vec("workplans_finished_total", "Workplans finished, by phase", &["phase"]),
            retries: r.counter("task_retries_total", "Failed tasks requested again under their retry policy"),
            deadlines_exceeded: r
                .counter("deadlines_exceeded_total", "Runs stopped at their activeDeadlineSeconds"),
            cancelled: r.counter(
                "runs_cancelled_total",
                "Running Workplans stopped by their kube.ci/cancel annotation",
            ),
            registrar: r,
        }
    }

    /// The registry, for the admin server's `/metrics`.
    pub fn registry(&self) -> Registry {
        self.registrar.registry()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names the docs, the tests and kubeci-bench read.
    #[test]
    fn metric_names_are_stable() {
        let metrics = Metrics::new();
        metrics.finished.with_label_values(&["Completed"]).inc();
        metrics.reconcile.errors.with_label_values(&["status"]).inc();
        let names: Vec<String> = metrics.registry().gather().iter().map(|f| f.name().to_string()).collect();
        assert_eq!(
            names,
            [
                "kubeci_workplan_operator_deadlines_exceeded_total",
                "kubeci_workplan_operator_errors_total",
                "kubeci_workplan_operator_reconcile_duration_seconds",
                "kubeci_workplan_operator_reconcile_total",
                "kubeci_workplan_operator_requests_total",
                "kubeci_workplan_operator_runs_cancelled_total",
                "kubeci_workplan_operator_task_retries_total",
                "kubeci_workplan_operator_workers_lost_total",
                "kubeci_workplan_operator_workplans_finished_total",
            ]
        );
    }
}
