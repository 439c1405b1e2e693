//! The repository's own files, for `crdgen` and the tests: the one place that knows where this
//! crate sits in the tree, so that no other path depends on a crate's depth.

use std::path::PathBuf;

/// The repository's root directory (where `Cargo.lock`, `crds/` and `examples/` are).
pub fn root() -> PathBuf {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    root.canonicalize().unwrap_or(root)
}

/// `examples/seed-workflow.yaml`: the seed's five-step Workflow, triggered by a ConfigMap.
pub const SEED_WORKFLOW: &str =
    include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/seed-workflow.yaml"));

/// `examples/chain.yaml`: a trigger-less chain `a → b → c`.
pub const CHAIN_WORKFLOW: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/chain.yaml"));
