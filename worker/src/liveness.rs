//! The worker's liveness Lease (DESIGN.md §5): a `coordination.k8s.io/v1` Lease named after the
//! worker's identity, held and renewed by kube-lease-manager. The workplan-operator takes a
//! worker for lost when the Lease is missing or `renewTime + leaseDurationSeconds` is past, and
//! then requests the worker's STARTED jobs again.
//!
//! kube-lease-manager (0.13.1, `state.rs`) writes exactly the fields that decision reads: taking
//! a free Lease server-side-applies `holderIdentity`, `acquireTime`, `renewTime` and
//! `leaseDurationSeconds`; each renewal (every `duration - grace` = 10 s) patches `renewTime` and
//! `leaseDurationSeconds`; releasing clears them. Because the Lease carries this worker's own
//! name, nobody else competes for it and it is taken at once.
//!
//! The loop drives `LeaseManager::changed` itself rather than `watch()` for one reason: a
//! manager whose Lease was deleted (by hand, or by a clean-up of lost workers' Leases) errors
//! forever and never recreates it, and a live worker without a Lease would see every job it
//! claims requested again. Here a missing Lease is recreated by building a new manager. While
//! the Lease is not held, the worker claims nothing.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::{Api, DeleteParams, Preconditions};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError};
use plumbing::Shutdown;
use plumbing::leader::{LEASE_DURATION_SECONDS, LEASE_GRACE_SECONDS};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::{Error, FIELD_MANAGER};

/// How long to wait after a failed Lease request before the next.
const RETRY: Duration = Duration::from_secs(1);

/// The running liveness Lease.
pub struct Liveness {
    held: watch::Receiver<bool>,
    stop: CancellationToken,
    task: JoinHandle<()>,
    api: Api<Lease>,
    identity: String,
}

impl Liveness {
    /// Starts holding the Lease `identity` in `namespace` in the background.
    pub fn start(
        client: Client,
        namespace: &str,
        identity: &str,
        metrics: std::sync::Arc<Metrics>,
    ) -> Liveness {
        let (tx, held) = watch::channel(false);
        let stop = CancellationToken::new();
        let task = tokio::spawn(hold(
            client.clone(),
            namespace.to_string(),
            identity.to_string(),
            tx,
            stop.clone(),
            metrics,
        ));
        Liveness { held, stop, task, api: Api::namespaced(client, namespace), identity: identity.to_string() }
    }

    /// Whether the Lease is held now, and its changes.
    pub fn held(&self) -> watch::Receiver<bool> {
        self.held.clone()
    }

    /// Waits until the Lease is held; false if shutdown came first.
    pub async fn wait_held(&mut self, shutdown: &Shutdown) -> bool {
        tokio::select! {
            held = self.held.wait_for(|held| *held) => held.is_ok(),
            _ = shutdown.requested() => false,
        }
    }

    /// Releases the Lease and deletes it, so the workplan-operator sees at once that this worker
    /// is gone (and no Lease is left behind per worker process). The delete is guarded by the
    /// resourceVersion just read and skipped when another process holds the Lease.
    pub async fn release(self) -> Result<(), Error> {
        self.stop.cancel();
        if let Err(join) = self.task.await {
            tracing::warn!(error = %join, "the lease task ended abnormally");
        }
        let name = self.identity.as_str();
        let lease = self
            .api
            .get_opt(name)
            .await
            .map_err(|source| Error::DeleteLease { name: name.into(), source })?;
        let Some(lease) = lease else { return Ok(()) };
        let holder = lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref());
        if holder.is_some_and(|h| h != name) {
            tracing::warn!(lease = %name, holder, "the lease is held by another process; leaving it");
            return Ok(());
        }
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                resource_version: lease.metadata.resource_version.clone(),
                uid: None,
            }),
            ..DeleteParams::default()
        };
        match self.api.delete(name, &params).await {
            Ok(_) => {
                tracing::info!(lease = %name, "released and deleted the worker lease");
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
            Err(kube::Error::Api(s)) if s.is_conflict() => {
                tracing::warn!(lease = %name, "the lease changed while shutting down; leaving it to expire");
                Ok(())
            }
            Err(source) => Err(Error::DeleteLease { name: name.into(), source }),
        }
    }
}

async fn build(client: &Client, namespace: &str, identity: &str) -> Result<LeaseManager, LeaseManagerError> {
    LeaseManagerBuilder::new(client.clone(), identity)
        .with_namespace(namespace)
        .with_identity(identity)
        .with_duration(LEASE_DURATION_SECONDS)
        .with_grace(LEASE_GRACE_SECONDS)
        .with_field_manager(FIELD_MANAGER)
        .build()
        .await
}

fn lease_missing(error: &LeaseManagerError) -> bool {
    match error {
        LeaseManagerError::NonexistentLease(_) => true,
        LeaseManagerError::KubeError(kube::Error::Api(s)) => s.is_not_found(),
        _ => false,
    }
}

async fn hold(
    client: Client,
    namespace: String,
    identity: String,
    held: watch::Sender<bool>,
    stop: CancellationToken,
    metrics: std::sync::Arc<Metrics>,
) {
    let set = |value: bool| {
        if held.send_replace(value) != value {
            metrics.lease_held.set(i64::from(value));
            if value {
                tracing::info!(lease = %identity, %namespace, "holding the worker lease");
            } else {
                tracing::warn!(lease = %identity, %namespace, "not holding the worker lease; claiming nothing");
            }
        }
    };
    let failed = |source: LeaseManagerError| {
        let error = Error::Lease { name: identity.clone(), source };
        metrics.error(&error);
        tracing::warn!(%error, "worker lease");
    };
    'build: loop {
        // Building creates the Lease when it is missing.
        let manager = tokio::select! {
            built = build(&client, &namespace, &identity) => built,
            _ = stop.cancelled() => return,
        };
        let manager = match manager {
            Ok(manager) => manager,
            Err(e) => {
                failed(e);
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => continue 'build,
                    _ = stop.cancelled() => return,
                }
            }
        };
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => {
                    if let Err(e) = manager.release().await {
                        failed(e);
                    }
                    held.send_replace(false);
                    metrics.lease_held.set(0);
                    return;
                }
                changed = manager.changed() => match changed {
                    Ok(value) => set(value),
                    Err(e) if lease_missing(&e) => {
                        tracing::warn!(lease = %identity, "the worker lease disappeared; recreating it");
                        set(false);
                        continue 'build;
                    }
                    Err(e) => {
                        failed(e);
                        tokio::select! {
                            _ = tokio::time::sleep(RETRY) => {}
                            _ = stop.cancelled() => {}
                        }
                    }
                }
            }
        }
    }
}
