//! The admin routes: readiness follows the caches and the shutdown, metrics come from the registry.

use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode};
use plumbing::Shutdown;
use plumbing::admin::{Readiness, router, serve};
use prometheus::{IntCounter, Registry};
use tower::ServiceExt;

async fn get(app: &axum::Router, path: &str) -> (StatusCode, String) {
    let response = app.clone().oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap();
    let status = response.status();
    let body = to_bytes(response.into_body(), 1 << 20).await.unwrap();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn readyz_follows_caches_and_shutdown() {
    let (readiness, shutdown) = (Readiness::default(), Shutdown::new());
    let app = router(Registry::new(), readiness.clone(), shutdown.clone());
    assert_eq!(get(&app, "/livez").await, (StatusCode::OK, "ok".into()));
    assert_eq!(get(&app, "/readyz").await, (StatusCode::SERVICE_UNAVAILABLE, "caches not synced".into()));
    readiness.set_ready(true);
    assert_eq!(get(&app, "/readyz").await, (StatusCode::OK, "ok".into()));
    shutdown.trigger();
    assert_eq!(get(&app, "/readyz").await, (StatusCode::SERVICE_UNAVAILABLE, "shutting down".into()));
    assert_eq!(get(&app, "/livez").await.0, StatusCode::OK, "still alive while draining");
}

#[tokio::test]
async fn metrics_expose_the_registry() {
    let registry = Registry::new_custom(Some("kubeci_test".into()), None).unwrap();
    let counter = IntCounter::new("reconcile_total", "Reconciliations").unwrap();
    registry.register(Box::new(counter.clone())).unwrap();
    counter.inc_by(3);
    let app = router(registry, Readiness::default(), Shutdown::new());
    let (status, body) = get(&app, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("kubeci_test_reconcile_total 3"), "{body}");
}

#[tokio::test]
async fn the_server_stops_on_shutdown() {
    let shutdown = Shutdown::new();
    let (addr, task) =
        serve("127.0.0.1:0".parse().unwrap(), Registry::new(), Readiness::default(), shutdown.clone())
            .await
            .unwrap();
    assert_ne!(addr.port(), 0);
    assert!(tokio::net::TcpStream::connect(addr).await.is_ok());
    shutdown.trigger();
    tokio::time::timeout(std::time::Duration::from_secs(5), task).await.expect("stops").unwrap().unwrap();
}
