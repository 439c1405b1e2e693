//! The director binary on the test control plane.

#![allow(dead_code)]

use kube::api::{Api, ListParams, Patch, PatchParams};
use shared_types::Workplan;

pub use e2e::eventually;

pub use e2e::Component as Director;

/// Starts the real `director` for Workflows of `namespace`, with its lease there too.
pub fn start_director(namespace: &str, leader_election: bool) -> Director {
    let mut args = vec!["--lease-namespace", namespace];
    if !leader_election {
        args.push("--no-leader-election");
    }
    Director::start(env!("CARGO_BIN_EXE_director"), namespace, &args)
}

pub async fn workplans(api: &Api<Workplan>) -> Vec<Workplan> {
    api.list(&ListParams::default()).await.unwrap().items
}

/// Plays the workplan-operator: marks a Workplan finished at `completed` (RFC 3339), and
/// releases its cleanup finalizer as the operator does once the final phase is written.
pub async fn finish(api: &Api<Workplan>, name: &str, completed: &str) {
    let patch = serde_json::json!({"status": {"phase": "Completed", "completionTime": completed}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
    let release = serde_json::json!({"metadata": {"finalizers": null}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(release)).await.unwrap();
}
