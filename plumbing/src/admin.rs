//! The admin server: `/livez` (the process serves), `/readyz` (200 only after every cache has
//! synced, 503 again once shutdown starts) and `/metrics` (the binary's prometheus registry).

use std::hash::Hash;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use kube::Resource;
use kube::runtime::reflector::Store;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;

use crate::{Error, Shutdown};

/// What `/readyz` reports. Cloned into every component that must be ready.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Marks the process ready (call once every cache has synced).
    pub fn set_ready(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }

    /// Whether the process said it is ready.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Marks the process ready once `store` has its first complete listing; returns whether it
    /// did (false: the store's writer went away first).
    ///
    /// kube-runtime 5's `Store::wait_until_ready` wakes only the last of several concurrent
    /// waiters (its one-shot channel keeps a single waker), and a `Controller` waits on its own
    /// store too, so a plain `await` here could sleep forever and leave `/readyz` at 503. The
    /// wait is therefore re-polled every 100 ms: once the store is ready, the next poll sees it.
    pub async fn set_ready_when_synced<K>(&self, store: &Store<K>) -> bool
    where
        K: Resource + Clone + 'static,
        K::DynamicType: Eq + Hash + Clone,
    {
        loop {
            match tokio::time::timeout(Duration::from_millis(100), store.wait_until_ready()).await {
                Ok(Ok(())) => {
                    self.set_ready(true);
                    return true;
                }
                Ok(Err(_)) => return false,
                Err(_) => continue,
            }
        }
    }
}

#[derive(Clone)]
struct AdminState {
    registry: Registry,
    readiness: Readiness,
    shutdown: Shutdown,
}

/// The admin routes, for serving or for tests.
pub fn router(registry: Registry, readiness: Readiness, shutdown: Shutdown) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(AdminState { registry, readiness, shutdown })
}

/// Binds `addr` and serves the admin routes until shutdown. Returns the bound address (useful
/// with port 0) and the serving task.
pub async fn serve(
    addr: SocketAddr,
    registry: Registry,
    readiness: Readiness,
    shutdown: Shutdown,
) -> Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>), Error> {
    let listener = TcpListener::bind(addr).await.map_err(|source| Error::Admin { addr, source })?;
    let bound = listener.local_addr().map_err(|source| Error::Admin { addr, source })?;
    let app = router(registry, readiness, shutdown.clone());
    let task = tokio::spawn(async move {
        axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.requested().await }).await
    });
    Ok((bound, task))
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.shutdown.is_requested() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down")
    } else if state.readiness.is_ready() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced")
    }
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let encoder = TextEncoder::new();
    let mut body = Vec::new();
    match encoder.encode(&state.registry.gather(), &mut body) {
        Ok(()) => (StatusCode::OK, [(header::CONTENT_TYPE, encoder.format_type().to_string())], body),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain".to_string())],
            e.to_string().into_bytes(),
        ),
    }
}
