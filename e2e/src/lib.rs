//! Test harness for kubeci's integration tests: a real kube-apiserver (with etcd and
//! kube-controller-manager) built from the upstream Kubernetes modules by `hack/testenv.sh`.
//!
//! [`TestEnv::get`] starts one control plane per test binary, the first time a test asks for it,
//! and installs the CRDs from `crds/`. Each test then takes its own namespace with
//! [`TestEnv::namespace`]. The control plane runs with `--exit-on-stdin-eof` and the harness holds
//! its stdin, so it stops when the test binary exits, however the binary ends.
//!
//! [`LocalNode::get`] adds a real node (containerd, runc, kubelet, kube-scheduler; `hack/node.sh`)
//! to that control plane for the end-to-end tier, where pods really run.
//!
//! The harness never skips: if the control plane cannot be built or started, the test fails
//! with the command to run and the control plane's log.
//!
//! The same harness carries `kubeci-bench` (`src/bin/kubeci-bench.rs`, DESIGN.md §9.4), whose
//! pure parts are in [`bench`].

pub mod bench;
pub mod chart;
pub mod component;
pub mod install;
pub mod kubelet;
pub mod node;
pub mod supervised;
pub mod testenv;

pub use component::{Component, admin_metric, eventually, workspace_binary};
pub use node::{LocalNode, node_namespace};
pub use testenv::{TestEnv, TestNamespace};
