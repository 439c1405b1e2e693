//! The director binary on the test control plane.

#![allow(dead_code)]

use kube::api::{Api, ListParams};
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
