//! kubectl's conventions on the built binary: completion scripts, global flags, errors that name
//! what is missing.

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_kubectl-kubeci");

fn kubeci(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("the plugin runs")
}

#[test]
fn completion_scripts_for_every_shell() {
    for (shell, marker) in
        [("bash", "complete -F"), ("zsh", "#compdef kubectl-kubeci"), ("fish", "complete -c kubectl-kubeci")]
    {
        let out = kubeci(&["completion", shell]);
        assert!(out.status.success(), "{shell}: {}", String::from_utf8_lossy(&out.stderr));
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(script.contains(marker), "{shell} script lacks {marker:?}");
        for command in ["plan", "completion"] {
            assert!(script.contains(command), "{shell} script completes {command}");
        }
    }
    let out = kubeci(&["completion", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn plan_needs_no_cluster_and_takes_the_global_flags() {
    let seed = shared_types::repo::root().join("examples/chain.yaml");
    let out = kubeci(&[
        "--kubeconfig",
        "/nonexistent/kubeconfig",
        "plan",
        "-f",
        seed.to_str().unwrap(),
        "-n",
        "team-b",
        "-o",
        "json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let workplan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(workplan["metadata"]["namespace"], "team-b");
}
