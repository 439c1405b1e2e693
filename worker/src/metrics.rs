//! The worker's metrics, in one registry with the prefix `kubeci_worker_`.

use plumbing::kit::{MetricLabel, Registrar};
use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge, Registry};

/// Every metric the worker exports.
pub struct Metrics {
    pub registry: Registry,
    /// Claims this worker won (its STARTED write went through).
    pub claims_won: IntCounter,
    /// Claims that got 409 Conflict: another worker won, or the job moved on first.
    pub claims_lost: IntCounter,
    /// Time from a job's REQUESTED history entry to this worker's successful claim.
    pub claim_latency: Histogram,
    /// Jobs reported, by `outcome` (`completed`, `failed`).
    pub jobs: IntCounterVec,
    /// Time from the claim (or the resumption) to the report.
    pub job_duration: Histogram,
    /// Jobs claimed and not yet reported or given up.
    pub jobs_in_flight: IntGauge,
    /// Results not reported because the job was no longer this worker's (it was re-requested).
    pub results_dropped: IntCounter,
    /// Jobs left running at shutdown after the drain timeout (another worker adopts their pods).
    pub jobs_abandoned: IntCounter,
    /// 1 while this worker holds its liveness Lease.
    pub lease_held: IntGauge,
    /// Errors by a fixed label (see [`MetricLabel`]).
    pub errors: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registrar::new("kubeci_worker");
        Metrics {
            claims_won: r.counter("claims_won_total", "Claims won"),
            claims_lost: r.counter("claims_lost_total", "Claims lost to a conflict (another worker won)"),
            claim_latency: r.histogram(
                "claim_latency_seconds",
                "Time from a job's request to its claim",
                vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0],
            ),
            jobs: r.counter_vec("jobs_total", "Jobs reported, by outcome", &["outcome"]),
            job_duration: r.histogram(
                "job_duration_seconds",
                "Time from claim to report",
                vec![0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0],
            ),
            jobs_in_flight: r.gauge("jobs_in_flight", "Jobs claimed and not yet reported"),
            results_dropped: r.counter(
                "results_dropped_total",
                "Results not reported because the job was no longer this worker's",
            ),
            jobs_abandoned: r.counter("jobs_abandoned_total", "Jobs left running at shutdown"),
            lease_held: r.gauge("lease_held", "1 while the worker holds its liveness Lease"),
            errors: r.counter_vec("errors_total", "Errors by kind", &["error"]),
            registry: r.registry(),
        }
    }

    /// Counts an error under its fixed label.
    pub fn error(&self, error: &impl MetricLabel) {
        self.errors.with_label_values(&[error.metric_label()]).inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Counts a job in `jobs_in_flight` for as long as it lives.
pub struct InFlight<'a>(&'a IntGauge);

impl<'a> InFlight<'a> {
    pub fn start(gauge: &'a IntGauge) -> InFlight<'a> {
        gauge.inc();
        InFlight(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
