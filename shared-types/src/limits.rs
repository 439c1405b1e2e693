//! Limits shared by the CRD schemas (where CEL rules need bounded lists) and the planner.
//!
//! The CEL rules that check unique step names and known dependencies compare every step with
//! every other, so the API server's cost estimator needs bounds on the lists they walk; without
//! them it rejects the CRD itself.

/// Most steps a Workflow may have.
pub const MAX_STEPS: usize = 200;

/// Most dependencies one step may list.
pub const MAX_DEPENDENCIES: usize = 50;

/// Longest step name: a DNS-1123 label.
pub const MAX_NAME_LENGTH: usize = 63;

/// Largest Workplan the planner produces, in bytes of JSON. The API server refuses requests over
/// 1.5 MiB (etcd's limit); the margin leaves room for metadata and status.
pub const MAX_WORKPLAN_BYTES: usize = 1_400_000;
