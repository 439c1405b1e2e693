//! `kubectl kubeci plan` end to end: the built binary, real files, exit codes and streams.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use pretty_assertions::assert_eq;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_kubectl-kubeci");

fn examples() -> std::path::PathBuf {
    shared_types::repo::root().join("examples")
}

fn plan(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(BIN)
        .arg("plan")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the plugin runs");
    child.stdin.take().unwrap().write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `[{serial: [...], parallel: [...]}]` of a Workplan's step names.
fn step_names(workplan: &Value) -> Value {
    let names = |steps: &Value| -> Vec<Value> {
        steps.as_array().map(|s| s.iter().map(|step| step["name"].clone()).collect()).unwrap_or_default()
    };
    workplan["spec"]["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| serde_json::json!({"serial": names(&t["serialSteps"]), "parallel": names(&t["parallelSteps"])}))
        .collect()
}

#[test]
fn seed_workflow_plans_to_the_seed_workplan() {
    let file = examples().join("seed-workflow.yaml");
    let out = plan(&["-f", file.to_str().unwrap(), "-o", "json"], None);
    assert!(out.status.success(), "{}", stderr(&out));
    let workplan: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(workplan["kind"], "Workplan");
    assert_eq!(workplan["metadata"]["labels"]["kube.ci/workflow"], "my-workflow");
    assert_eq!(
        step_names(&workplan),
        serde_json::json!([
            {"serial": ["step-1"], "parallel": ["step-2", "step-3"]},
            {"serial": ["step-4"], "parallel": ["step-5"]},
        ])
    );
    // The step specs are copied in full.
    assert_eq!(
        workplan["spec"]["tasks"][1]["parallelSteps"][0]["args"],
        serde_json::json!(["-c", "echo step-5; ls /kubeci"])
    );
}

#[test]
fn yaml_output_and_stdin() {
    let seed = std::fs::read_to_string(examples().join("seed-workflow.yaml")).unwrap();
    let out = plan(&["-f", "-"], Some(&seed));
    assert!(out.status.success(), "{}", stderr(&out));
    let workplan: Value = serde_yaml::from_slice(&out.stdout).unwrap();
    assert_eq!(step_names(&workplan)[1]["parallel"], serde_json::json!(["step-5"]));
}

#[test]
fn every_example_plans() {
    for entry in std::fs::read_dir(examples()).unwrap() {
        let path = entry.unwrap().path();
        let out = plan(&["-f", path.to_str().unwrap(), "-o", "json"], None);
        assert!(out.status.success(), "{}: {}", path.display(), stderr(&out));
    }
}

#[test]
fn cycle_exits_1_and_names_it() {
    let wf = r#"
apiVersion: kube.ci/v1alpha1
kind: Workflow
metadata: {name: loop}
spec:
  steps:
  - {name: a, image: alpine, dependency: [c]}
  - {name: b, image: alpine, dependency: [a]}
  - {name: c, image: alpine, dependency: [b]}
"#;
    let out = plan(&["-f", "-"], Some(wf));
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert_eq!(
        stderr(&out),
        "error: <stdin>: Workflow \"loop\" is invalid:\n\
         spec.steps: dependency cycle a → c → b → a (each step depends on the next)\n"
    );
}

#[test]
fn every_problem_in_one_run() {
    let wf = r#"
apiVersion: kube.ci/v1alpha1
kind: Workflow
metadata: {name: many-problems}
spec:
  steps:
  - {name: build, image: alpine, dependency: [fetch]}
  - {name: test, image: alpine, dependency: [build, lint]}
  - {name: build, image: alpine}
  - {name: x, image: alpine, dependency: [y]}
  - {name: y, image: alpine, dependency: [x]}
"#;
    let out = plan(&["-f", "-"], Some(wf));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "error: <stdin>: Workflow \"many-problems\" is invalid:\n\
         spec.steps[2].name: step name \"build\" is already used by spec.steps[0]\n\
         spec.steps[0].dependency: step \"build\" depends on \"fetch\", which is not a step of this workflow\n\
         spec.steps[1].dependency: step \"test\" depends on \"lint\", which is not a step of this workflow\n\
         spec.steps: dependency cycle x → y → x (each step depends on the next)\n"
    );
}

#[test]
fn malformed_input_names_the_field() {
    let wf = "apiVersion: kube.ci/v1alpha1\nkind: Workflow\nmetadata: {name: w}\nspec:\n  steps:\n  - {name: a, image: x}\n  - {name: b}\n";
    let out = plan(&["-f", "-"], Some(wf));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "error: <stdin>: document 0: not a valid Workflow: spec.steps[1]: missing field `image`\n"
    );
}

#[test]
fn missing_file_and_no_workflow() {
    let out = plan(&["-f", "/nonexistent/wf.yaml"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).starts_with("error: cannot read /nonexistent/wf.yaml: "), "{}", stderr(&out));

    let out = plan(&["-f", "-"], Some("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n"));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "error: <stdin>: no kube.ci/v1alpha1 Workflow found (other objects: [ConfigMap c])\n"
    );
}

#[test]
fn several_workflows_give_a_list() {
    let chain = std::fs::read_to_string(examples().join("chain.yaml")).unwrap();
    let diamond = std::fs::read_to_string(examples().join("diamond.yaml")).unwrap();
    let out = plan(&["-f", "-", "-o", "json"], Some(&format!("{chain}\n---\n{diamond}")));
    assert!(out.status.success(), "{}", stderr(&out));
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list["kind"], "List");
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    assert_eq!(
        step_names(&list["items"][0]),
        serde_json::json!([{"serial": ["fetch", "build"], "parallel": ["publish"]}])
    );
}
