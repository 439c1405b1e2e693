//! What the Helm chart's tests need: the pinned helm and kubeconform (installed and cached by
//! `hack/tools.sh`), strict JSON schemas for kubeconform made from the test control plane's own
//! OpenAPI document (no download: every kind, our CRDs included, exactly as this API server
//! serves it), and kubeconfigs that authenticate as a ServiceAccount.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

use serde_json::{Map, Value, json};

use crate::TestEnv;

/// The path of a tool from `hack/tools.sh` (`helm`, `kubeconform`), installing it the first time.
/// Panics with the script's output when it cannot: the tests never skip. Asked once per tool
/// and test binary.
pub fn tool(name: &str) -> PathBuf {
    static TOOLS: Mutex<BTreeMap<String, PathBuf>> = Mutex::new(BTreeMap::new());
    let mut tools = TOOLS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    tools
        .entry(name.to_string())
        .or_insert_with(|| {
            let script = TestEnv::repo_root().join("hack/tools.sh");
            let out = Command::new(&script)
                .arg(name)
                .output()
                .unwrap_or_else(|e| panic!("running {script:?}: {e}"));
            assert!(
                out.status.success(),
                "hack/tools.sh {name} failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            PathBuf::from(String::from_utf8(out.stdout).expect("a path").trim())
        })
        .clone()
}

/// Runs `command`; panics with its output unless it succeeds.
pub fn run(command: &mut Command) -> Output {
    let out = command.output().unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A `helm` command pointed at the test control plane.
pub fn helm() -> Command {
    let mut helm = Command::new(tool("helm"));
    helm.arg("--kubeconfig").arg(TestEnv::get().kubeconfig());
    helm
}

/// The chart's directory.
pub fn chart_dir() -> PathBuf {
    TestEnv::repo_root().join("charts/kubeci")
}

/// Writes one strict schema file per kind the API server serves into `dir`, named as
/// kubeconform's `{{ .ResourceKind }}{{ .KindSuffix }}.json` expects (`deployment-apps-v1.json`,
/// `configmap-v1.json`, `workflow-kube-v1alpha1.json`). Returns the kinds written.
pub async fn write_schemas(dir: &Path) -> BTreeSet<String> {
    let client = TestEnv::get().client().await;
    let request = http::Request::get("/openapi/v2").body(Vec::new()).expect("a valid request");
    let document: Value = client.request(request).await.expect("the API server serves /openapi/v2");
    let definitions = document["definitions"].as_object().expect("an OpenAPI v2 document").clone();
    std::fs::create_dir_all(dir).unwrap();
    let mut written = BTreeSet::new();
    for (name, definition) in &definitions {
        let Some(gvks) = definition["x-kubernetes-group-version-kind"].as_array() else { continue };
        for gvk in gvks {
            let (group, version, kind) = (
                gvk["group"].as_str().unwrap_or(""),
                gvk["version"].as_str().unwrap(),
                gvk["kind"].as_str().unwrap(),
            );
            let file = schema_file_name(group, version, kind);
            let schema = standalone(name, &definitions);
            std::fs::write(dir.join(&file), serde_json::to_vec(&schema).unwrap()).unwrap();
            written.insert(file);
        }
    }
    written
}

/// kubeconform's file name for a kind: the kind lower-cased, the first label of the group,
/// the version.
pub fn schema_file_name(group: &str, version: &str, kind: &str) -> String {
    let group = group.split('.').next().unwrap_or_default();
    match group {
        "" => format!("{}-{version}.json", kind.to_lowercase()),
        group => format!("{}-{group}-{version}.json", kind.to_lowercase()),
    }
}

/// The schema of definition `root` with every definition it reaches, made strict.
fn standalone(root: &str, definitions: &Map<String, Value>) -> Value {
    let mut reached = BTreeMap::new();
    let mut todo = vec![root.to_string()];
    while let Some(name) = todo.pop() {
        if reached.contains_key(&name) {
            continue;
        }
        let mut definition = definitions.get(&name).cloned().unwrap_or(json!({}));
        refs(&definition, &mut todo);
        strict(&mut definition, &name);
        reached.insert(name, definition);
    }
    json!({ "$ref": format!("#/definitions/{root}"), "definitions": reached })
}

fn refs(value: &Value, into: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(target) = map.get("$ref").and_then(Value::as_str) {
                into.push(target.trim_start_matches("#/definitions/").to_string());
            }
            map.values().for_each(|v| refs(v, into));
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, into)),
        _ => {}
    }
}

/// What `-strict` needs and OpenAPI v2 does not say: unknown fields are errors, and the two
/// string-or-number types accept both.
fn strict(value: &mut Value, name: &str) {
    match name {
        "io.k8s.apimachinery.pkg.util.intstr.IntOrString" => {
            *value = json!({"oneOf": [{"type": "string"}, {"type": "integer"}]});
            return;
        }
        "io.k8s.apimachinery.pkg.api.resource.Quantity" => {
            *value = json!({"oneOf": [{"type": "string"}, {"type": "number"}]});
            return;
        }
        _ => {}
    }
    close(value);
}

fn close(value: &mut Value) {
    let Value::Object(map) = value else { return };
    if map.get("x-kubernetes-int-or-string").and_then(Value::as_bool) == Some(true) {
        map.remove("type");
        map.insert("oneOf".into(), json!([{"type": "string"}, {"type": "integer"}]));
    }
    let open = map.get("x-kubernetes-preserve-unknown-fields").and_then(Value::as_bool) == Some(true);
    if map.contains_key("properties") && !map.contains_key("additionalProperties") && !open {
        map.insert("additionalProperties".into(), Value::Bool(false));
    }
    for (key, child) in map.iter_mut() {
        match key.as_str() {
            "properties" | "definitions" => {
                if let Value::Object(children) = child {
                    children.values_mut().for_each(close);
                }
            }
            "items" | "additionalProperties" => close(child),
            "allOf" | "anyOf" | "oneOf" => {
                if let Value::Array(children) = child {
                    children.iter_mut().for_each(close);
                }
            }
            _ => {}
        }
    }
}

/// A kubeconfig for ServiceAccount `namespace/name`, with a token from the TokenRequest API
/// (as a pod's projected token) and the test control plane's address and CA.
pub fn service_account_kubeconfig(namespace: &str, name: &str, path: &Path) {
    let env = TestEnv::get();
    let out = env
        .kubectl()
        .args(["create", "token", name, "-n", namespace, "--duration=2h"])
        .output()
        .expect("kubectl runs");
    assert!(out.status.success(), "kubectl create token: {}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let admin: Value = serde_yaml::from_str(&std::fs::read_to_string(env.kubeconfig()).unwrap()).unwrap();
    let cluster = admin["clusters"][0]["cluster"].clone();
    let kubeconfig = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "testenv", "cluster": cluster}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": "testenv", "user": name}}],
        "current-context": name,
    });
    std::fs::write(path, serde_yaml::to_string(&kubeconfig).unwrap()).unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_follow_kubeconform() {
        assert_eq!(schema_file_name("", "v1", "ConfigMap"), "configmap-v1.json");
        assert_eq!(schema_file_name("apps", "v1", "Deployment"), "deployment-apps-v1.json");
        assert_eq!(
            schema_file_name("rbac.authorization.k8s.io", "v1", "ClusterRole"),
            "clusterrole-rbac-v1.json"
        );
        assert_eq!(schema_file_name("kube.ci", "v1alpha1", "Workflow"), "workflow-kube-v1alpha1.json");
    }

    #[test]
    fn schemas_are_closed_except_where_open() {
        let mut schema = json!({
            "properties": {
                "a": {"type": "object", "properties": {"b": {"type": "string"}}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true, "properties": {}},
                "port": {"x-kubernetes-int-or-string": true, "type": "string"},
                "list": {"type": "array", "items": {"properties": {"c": {}}}},
                "map": {"type": "object", "additionalProperties": {"type": "string"}},
            }
        });
        close(&mut schema);
        assert_eq!(schema["additionalProperties"], json!(false));
        assert_eq!(schema["properties"]["a"]["additionalProperties"], json!(false));
        assert!(schema["properties"]["free"].get("additionalProperties").is_none());
        assert_eq!(schema["properties"]["port"]["oneOf"][1], json!({"type": "integer"}));
        assert_eq!(schema["properties"]["list"]["items"]["additionalProperties"], json!(false));
        assert_eq!(schema["properties"]["map"]["additionalProperties"], json!({"type": "string"}));
    }
}
