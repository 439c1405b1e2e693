//! The validating admission webhook for Workflows (DESIGN.md §7), served by every director
//! replica over TLS, leader or not. It runs the planner's validation, the same check the
//! Workflow controller reports as the `Invalid` condition, so what a user sees at
//! `kubectl apply` time and what a Workflow that slipped past admission shows agree word for word.
//!
//! The certificate is read from `tls.crt` and `tls.key` in a directory (the layout of a
//! `kubernetes.io/tls` Secret mounted as a volume) and re-read when the files change, so a
//! rotated certificate (cert-manager, or a `helm upgrade`) is served without a restart.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use axum_server::tls_rustls::RustlsConfig;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use plumbing::Shutdown;
use shared_types::Workflow;
use shared_types::planner::validate_workflow;

use crate::error::Error;
use crate::metrics::Metrics;

/// The path the ValidatingWebhookConfiguration calls.
pub const PATH: &str = "/validate-workflow";

/// The webhook's flags.
#[derive(clap::Args, Clone, Debug)]
pub struct WebhookArgs {
    /// Serve the validating admission webhook with the certificate `tls.crt` and key `tls.key`
    /// from this directory (a mounted `kubernetes.io/tls` Secret). Without it no webhook is
    /// served and invalid Workflows are only reported on their status.
    #[arg(long, env = "KUBECI_WEBHOOK_CERT_DIR")]
    pub webhook_cert_dir: Option<PathBuf>,

    /// Address the webhook listens on (HTTPS).
    #[arg(long, env = "KUBECI_WEBHOOK_ADDR", default_value = "0.0.0.0:9443")]
    pub webhook_addr: SocketAddr,

    /// How often to look for a rotated certificate in the cert dir, in seconds.
    #[arg(long, env = "KUBECI_WEBHOOK_CERT_RELOAD_SECONDS", default_value_t = 10)]
    pub webhook_cert_reload_seconds: u64,
}

/// The verdict on one admission request: the planner's validation of the Workflow in it.
pub fn review(request: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
    let response = AdmissionResponse::from(request);
    let Some(object) = &request.object else {
        return response; // DELETE and CONNECT carry no new object; nothing to validate
    };
    let workflow = match parse(object) {
        Ok(workflow) => workflow,
        Err(message) => return response.deny(message),
    };
    // An update that leaves the spec alone (labels, annotations such as a manual run,
    // finalizers) is allowed even for a Workflow that is invalid already, so that it can always
    // be labelled, run-annotated to see the error again, or deleted.
    if request.operation == Operation::Update
        && let Some(Ok(old)) = request.old_object.as_ref().map(parse)
        && old.spec == workflow.spec
    {
        return response;
    }
    match validate_workflow(&workflow) {
        Ok(()) => response,
        Err(invalid) => response.deny(invalid),
    }
}

/// The Workflow in an admission request, or an error naming the field that does not parse.
fn parse(object: &DynamicObject) -> Result<Workflow, String> {
    let value = serde_json::to_value(object).map_err(|e| format!("Workflow: {e}"))?;
    serde_path_to_error::deserialize::<_, Workflow>(value).map_err(|e| match e.path().to_string() {
        path if path == "." => format!("Workflow: {}", e.inner()),
        path => format!("{path}: {}", e.inner()),
    })
}

async fn handle(
    State(metrics): State<Arc<Metrics>>,
    Json(review_request): Json<AdmissionReview<DynamicObject>>,
) -> Json<AdmissionReview<DynamicObject>> {
    let request: Result<AdmissionRequest<DynamicObject>, _> = review_request.try_into();
    let response = match request {
        Ok(request) => {
            let response = review(&request);
            let verdict = if response.allowed { "allowed" } else { "denied" };
            if !response.allowed {
                tracing::info!(
                    namespace = request.namespace.as_deref().unwrap_or_default(),
                    name = %request.name,
                    operation = ?request.operation,
                    reason = %response.result.message,
                    "denied a Workflow"
                );
            }
            metrics.admission_reviews.with_label_values(&[verdict]).inc();
            response
        }
        Err(e) => {
            metrics.admission_reviews.with_label_values(&["malformed"]).inc();
            tracing::warn!(error = %e, "malformed AdmissionReview");
            AdmissionResponse::invalid(e)
        }
    };
    Json(response.into_review())
}

/// The webhook's routes (for serving, and for tests without TLS).
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new().route(PATH, post(handle)).with_state(metrics)
}

/// Binds the webhook's address and serves it until shutdown, reloading the certificate when its
/// files change. Returns the bound address (useful with port 0).
pub async fn serve(
    args: &WebhookArgs,
    cert_dir: &Path,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), Error> {
    let (cert, key) = (cert_dir.join("tls.crt"), cert_dir.join("tls.key"));
    let certificate_error = |source| Error::Certificate { cert: cert.clone(), key: key.clone(), source };
    let config = RustlsConfig::from_pem_file(&cert, &key).await.map_err(certificate_error)?;
    let (addr, reload_seconds) = (args.webhook_addr, args.webhook_cert_reload_seconds);
    let listener = std::net::TcpListener::bind(addr).map_err(|source| Error::Bind { addr, source })?;
    listener.set_nonblocking(true).map_err(|source| Error::Bind { addr, source })?;
    let bound = listener.local_addr().map_err(|source| Error::Bind { addr, source })?;

    let handle = axum_server::Handle::new();
    let server = axum_server::from_tcp_rustls(listener, config.clone())
        .map_err(|source| Error::Bind { addr, source })?
        .handle(handle.clone())
        .serve(router(metrics).into_make_service());
    let task = tokio::spawn(async move {
        let every = Duration::from_secs(reload_seconds.max(1));
        let reload = reload_on_change(config, cert, key, every);
        let stop = async {
            shutdown.requested().await;
            // Let in-flight reviews finish: the API server retries nothing on its own.
            handle.graceful_shutdown(Some(Duration::from_secs(5)));
        };
        tokio::select! {
            result = server => if let Err(e) = result {
                tracing::error!(error = %e, "webhook server failed");
            },
            _ = async { tokio::join!(stop, reload) } => {}
        }
    });
    tracing::info!(addr = %bound, "admission webhook listening");
    Ok((bound, task))
}

/// Re-reads the certificate when either file's content changes (a Secret volume swaps a
/// symlink, so modification times are not reliable); a bad pair keeps the old one served.
async fn reload_on_change(config: RustlsConfig, cert: PathBuf, key: PathBuf, every: Duration) {
    let read = || async { (tokio::fs::read(&cert).await.ok(), tokio::fs::read(&key).await.ok()) };
    let mut current = read().await;
    loop {
        tokio::time::sleep(every).await;
        let now = read().await;
        if now == current {
            continue;
        }
        match config.reload_from_pem_file(&cert, &key).await {
            Ok(()) => {
                tracing::info!(cert = %cert.display(), "reloaded the webhook certificate");
                current = now;
            }
            Err(e) => {
                tracing::warn!(error = %e, "the new webhook certificate does not load; serving the old")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(
        operation: &str,
        object: serde_json::Value,
        old: Option<serde_json::Value>,
    ) -> AdmissionRequest<DynamicObject> {
        let review: AdmissionReview<DynamicObject> = serde_json::from_value(json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "kube.ci", "version": "v1alpha1", "kind": "Workflow"},
                "resource": {"group": "kube.ci", "version": "v1alpha1", "resource": "workflows"},
                "name": "wf",
                "namespace": "ns",
                "operation": operation,
                "userInfo": {"username": "alice"},
                "object": object,
                "oldObject": old,
                "dryRun": false,
            }
        }))
        .unwrap();
        review.try_into().unwrap()
    }

    fn workflow(steps: serde_json::Value) -> serde_json::Value {
        json!({
            "apiVersion": "kube.ci/v1alpha1",
            "kind": "Workflow",
            "metadata": {"name": "wf", "namespace": "ns"},
            "spec": {"steps": steps},
        })
    }

    fn cycle() -> serde_json::Value {
        workflow(json!([
            {"name": "a", "image": "busybox", "dependency": ["b"]},
            {"name": "b", "image": "busybox", "dependency": ["a"]},
        ]))
    }

    fn chain() -> serde_json::Value {
        workflow(json!([
            {"name": "a", "image": "busybox"},
            {"name": "b", "image": "busybox", "dependency": ["a"]},
        ]))
    }

    #[test]
    fn a_valid_workflow_is_allowed() {
        let response = review(&request("CREATE", chain(), None));
        assert!(response.allowed, "{:?}", response.result);
        assert_eq!(response.uid, "705ab4f5-6393-11e8-b7cc-42010a800002");
    }

    #[test]
    fn a_cycle_is_denied_with_the_planners_message() {
        let response = review(&request("CREATE", cycle(), None));
        assert!(!response.allowed);
        let parsed: Workflow = serde_json::from_value(cycle()).unwrap();
        let planner = validate_workflow(&parsed).unwrap_err().to_string();
        assert_eq!(response.result.message, planner);
        assert!(response.result.message.contains("a → b → a"), "{}", response.result.message);
    }

    #[test]
    fn an_update_that_breaks_the_spec_is_denied() {
        let response = review(&request("UPDATE", cycle(), Some(chain())));
        assert!(!response.allowed);
    }

    #[test]
    fn an_update_that_keeps_an_invalid_spec_is_allowed() {
        let mut labelled = cycle();
        labelled["metadata"]["labels"] = json!({"team": "a"});
        let response = review(&request("UPDATE", labelled, Some(cycle())));
        assert!(response.allowed, "{:?}", response.result);
    }

    #[test]
    fn a_self_feeding_trigger_is_denied_naming_the_field() {
        let mut lease = chain();
        lease["spec"]["triggers"] =
            json!([{"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "onAddOrUpdate": true}]);
        let response = review(&request("CREATE", lease, None));
        assert!(!response.allowed);
        assert_eq!(
            response.result.message,
            "spec.triggers[0].kind: Lease is written by kubeci's leader election: a trigger on it would fire on kubeci's own writes"
        );
    }

    #[test]
    fn an_unparsable_workflow_is_denied_naming_the_field() {
        let broken = workflow(json!([{"name": "a"}]));
        let response = review(&request("CREATE", broken, None));
        assert!(!response.allowed);
        assert_eq!(response.result.message, "spec.steps[0]: missing field `image`");
    }
}
