//! The worker's metrics, in one registry with the prefix `kubeci_worker_`.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::Error;

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
    /// Errors by a fixed label (see `Error::metric_label`).
    pub errors: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("kubeci_worker".into()), None).expect("a valid prefix");
        let register =
            |c: Box<dyn prometheus::core::Collector>| registry.register(c).expect("registered once");
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            register(Box::new(c.clone()));
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            register(Box::new(g.clone()));
            g
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h =
                Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid metric");
            register(Box::new(h.clone()));
            h
        };
        let vec = |name: &str, help: &str, label: &str| {
            let v = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
            register(Box::new(v.clone()));
            v
        };
        Metrics {
            claims_won: counter("claims_won_total", "Claims won"),
            claims_lost: counter("claims_lost_total", "Claims lost to a conflict (another worker won)"),
            claim_latency: histogram(
                "claim_latency_seconds",
                "Time from a job's request to its claim",
                vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0],
            ),
            jobs: vec("jobs_total", "Jobs reported, by outcome", "outcome"),
            job_duration: histogram(
                "job_duration_seconds",
                "Time from claim to report",
                vec![0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0],
            ),
            jobs_in_flight: gauge("jobs_in_flight", "Jobs claimed and not yet reported"),
            results_dropped: counter(
                "results_dropped_total",
                "Results not reported because the job was no longer this worker's",
            ),
            jobs_abandoned: counter("jobs_abandoned_total", "Jobs left running at shutdown"),
            lease_held: gauge("lease_held", "1 while the worker holds its liveness Lease"),
            errors: vec("errors_total", "Errors by kind", "error"),
            registry: registry.clone(),
        }
    }

    /// Counts an error under its fixed label.
    pub fn error(&self, error: &Error) {
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
