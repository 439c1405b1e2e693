//! The validating admission webhook against the real API server: the director serves it over
//! TLS on loopback, a ValidatingWebhookConfiguration scoped to the test's namespace points the
//! API server at it, and `kubectl apply` of a Workflow with a cycle is rejected with the
//! planner's message.

mod support;

use std::io::Write;
use std::process::{Output, Stdio};
use std::time::Duration;

use e2e::{TestEnv, TestNamespace};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use kube::api::{Api, DeleteParams, PostParams};
use shared_types::Workflow;
use shared_types::planner::validate_workflow;
use support::{Director, eventually};

const TIMEOUT: Duration = Duration::from_secs(60);

const CYCLE: &str = "apiVersion: kube.ci/v1alpha1
kind: Workflow
metadata: {name: cyclic}
spec:
  steps:
  - {name: a, image: busybox, dependency: [c]}
  - {name: b, image: busybox, dependency: [a]}
  - {name: c, image: busybox, dependency: [b]}
";

const CHAIN: &str = "apiVersion: kube.ci/v1alpha1
kind: Workflow
metadata: {name: chain}
spec:
  steps:
  - {name: a, image: busybox}
  - {name: b, image: busybox, dependency: [a]}
";

/// A director serving the webhook with a fresh self-signed certificate for 127.0.0.1, and the
/// API server told to call it for Workflows of `ns` (and no other namespace).
struct Webhook {
    director: Director,
    config_name: String,
    certs: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Webhook {
    async fn start(ns: &TestNamespace) -> Webhook {
        let dir = std::env::temp_dir().join(format!("kubeci-webhook-{}", ns.name));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_bundle = write_certificate(&dir);
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let director = Director::start(
            env!("CARGO_BIN_EXE_director"),
            &ns.name,
            &[
                "--no-leader-election",
                "--webhook-cert-dir",
                dir.to_str().unwrap(),
                "--webhook-addr",
                &addr,
                "--webhook-cert-reload-seconds",
                "1",
            ],
        );

        let config_name = format!("kubeci-test-{}", ns.name);
        let mut config: ValidatingWebhookConfiguration = serde_json::from_value(serde_json::json!({
            "metadata": {"name": config_name},
            "webhooks": [{
                "name": "workflows.kube.ci",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Fail",
                "timeoutSeconds": 5,
                "clientConfig": {
                    "url": format!("https://{addr}/validate-workflow"),
                },
                "rules": [{
                    "apiGroups": ["kube.ci"],
                    "apiVersions": ["v1alpha1"],
                    "operations": ["CREATE", "UPDATE"],
                    "resources": ["workflows"],
                    "scope": "Namespaced",
                }],
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns.name}},
            }],
        }))
        .unwrap();
        let webhooks = config.webhooks.as_mut().unwrap();
        webhooks[0].client_config.ca_bundle = Some(ByteString(ca_bundle));
        Api::<ValidatingWebhookConfiguration>::all(ns.client.clone())
            .create(&PostParams::default(), &config)
            .await
            .unwrap();
        let webhook = Webhook { director, config_name, certs: TempDir(dir) };
        webhook.answers(ns).await;
        webhook
    }

    /// Waits until the API server reaches the webhook over TLS: a server-side dry run of a cycle
    /// is denied by it. (The API server picks webhook configurations up from an informer.)
    async fn answers(&self, ns: &TestNamespace) {
        eventually("the API server calls the webhook", TIMEOUT, || async {
            let out = apply(ns, CYCLE, &["--dry-run=server"]);
            stderr(&out).contains("denied the request").then_some(())
        })
        .await;
    }

    async fn stop(self, ns: &TestNamespace) {
        Api::<ValidatingWebhookConfiguration>::all(ns.client.clone())
            .delete(&self.config_name, &DeleteParams::default())
            .await
            .unwrap();
        self.director.stop();
    }
}

/// A fresh self-signed certificate for 127.0.0.1 in `dir` (`tls.crt`, `tls.key`); returns it
/// as the CA bundle that trusts it.
fn write_certificate(dir: &std::path::Path) -> Vec<u8> {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    std::fs::write(dir.join("tls.key.new"), certified.signing_key.serialize_pem()).unwrap();
    std::fs::write(dir.join("tls.crt.new"), certified.cert.pem()).unwrap();
    std::fs::rename(dir.join("tls.key.new"), dir.join("tls.key")).unwrap();
    std::fs::rename(dir.join("tls.crt.new"), dir.join("tls.crt")).unwrap();
    certified.cert.pem().into_bytes()
}

fn apply(ns: &TestNamespace, yaml: &str, extra: &[&str]) -> Output {
    let mut child = TestEnv::get()
        .kubectl()
        .args(["apply", "-n", &ns.name, "-f", "-"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(yaml.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn planner_message(yaml: &str) -> String {
    let workflow: Workflow = serde_yaml::from_str(yaml).unwrap();
    validate_workflow(&workflow).unwrap_err().to_string()
}

#[tokio::test]
async fn a_cycle_is_rejected_at_apply_time_with_the_planners_message() {
    let ns = TestEnv::get().namespace("webhook-cycle").await;
    let webhook = Webhook::start(&ns).await;
    let workflows: Api<Workflow> = Api::namespaced(ns.client.clone(), &ns.name);

    let out = apply(&ns, CYCLE, &[]);
    assert!(!out.status.success(), "a cycle must not be admitted");
    let message = planner_message(CYCLE);
    assert!(message.contains("dependency cycle a → c → b → a"), "{message}");
    let err = stderr(&out);
    assert!(
        err.contains("admission webhook \"workflows.kube.ci\" denied the request") && err.contains(&message),
        "kubectl should print the planner's message {message:?}, got:\n{err}"
    );
    assert!(workflows.get_opt("cyclic").await.unwrap().is_none(), "nothing was stored");

    // A valid Workflow is admitted; an update that introduces a cycle is not, and the stored
    // Workflow stays as it was.
    let out = apply(&ns, CHAIN, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let broken = CHAIN.replace("{name: a, image: busybox}", "{name: a, image: busybox, dependency: [b]}");
    let out = apply(&ns, &broken, &[]);
    assert!(stderr(&out).contains("dependency cycle"), "{}", stderr(&out));
    let stored = workflows.get("chain").await.unwrap();
    assert!(stored.spec.steps[0].dependency.is_empty(), "the rejected update was not stored");

    // The verdicts are counted.
    eventually("the denials are counted", TIMEOUT, || async {
        (webhook.director.metric("kubeci_director_admission_reviews_total{verdict=\"denied\"}").await >= 3.0)
            .then_some(())
    })
    .await;
    webhook.stop(&ns).await;
}

#[tokio::test]
async fn a_rotated_certificate_is_served_without_a_restart() {
    let ns = TestEnv::get().namespace("webhook-rotation").await;
    let webhook = Webhook::start(&ns).await;

    // Rotate: new files in the cert dir, and the API server told to trust only the new one.
    let ca_bundle = write_certificate(&webhook.certs.0);
    let configs = Api::<ValidatingWebhookConfiguration>::all(ns.client.clone());
    let mut config = configs.get(&webhook.config_name).await.unwrap();
    config.webhooks.as_mut().unwrap()[0].client_config.ca_bundle = Some(ByteString(ca_bundle));
    configs.replace(&webhook.config_name, &PostParams::default(), &config).await.unwrap();
    webhook.answers(&ns).await;
    webhook.stop(&ns).await;
}
