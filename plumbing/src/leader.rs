//! Leader election for the director and the workplan-operator: one active replica, the holder
//! of a `coordination.k8s.io/v1` Lease, through kube-lease-manager (server-side apply on the Lease,
//! so two candidates can never both hold it).
//!
//! A replica that loses the lease stops acting at once: [`Leadership::lost`] completes, and the
//! binaries then shut down so that Kubernetes restarts them as candidates. Stopping is safe at
//! any moment because every write is idempotent.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseParams};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::{Error, Shutdown};

/// How long a lease stays valid without renewal, in seconds.
pub const LEASE_DURATION_SECONDS: u64 = 15;
/// How long before expiry the holder renews, in seconds.
pub const LEASE_GRACE_SECONDS: u64 = 5;

/// A held lease.
pub struct Leadership {
    state: watch::Receiver<bool>,
    task: JoinHandle<kube_lease_manager::Result<LeaseManager>>,
}

impl Leadership {
    /// Completes when this replica no longer holds the lease.
    pub async fn lost(&mut self) {
        let _ = self.state.wait_for(|leader| !leader).await;
    }

    /// Gives the lease up now, so another replica takes over without waiting for it to expire.
    pub async fn release(self) -> Result<(), Error> {
        drop(self.state); // closing the channel makes the renewal task release and end
        match self.task.await {
            Ok(result) => result.map(|_| ()).map_err(Error::Leader),
            Err(join) => {
                tracing::warn!(error = %join, "lease renewal task ended abnormally");
                Ok(())
            }
        }
    }
}

/// Waits until this replica (`identity`) holds the Lease `name` in `namespace`; `None` if
/// shutdown came first. The lease is renewed in the background for as long as the returned
/// [`Leadership`] lives.
pub async fn acquire(
    client: Client,
    namespace: &str,
    name: &str,
    identity: &str,
    shutdown: &Shutdown,
) -> Result<Option<Leadership>, Error> {
    let params = LeaseParams::new(identity, LEASE_DURATION_SECONDS, LEASE_GRACE_SECONDS)
        .with_field_manager(format!("kubeci-leader-{identity}"));
    let manager = LeaseManagerBuilder::new(client, name)
        .with_namespace(namespace)
        .with_parameters(params)
        .build()
        .await?;
    let (mut state, task) = manager.watch().await;
    tracing::info!(lease = name, namespace, identity, "waiting to become the leader");
    tokio::select! {
        changed = state.wait_for(|leader| *leader) => {
            if changed.is_err() {
                return Ok(None);
            }
        }
        _ = shutdown.requested() => return Ok(None),
    }
    tracing::info!(lease = name, identity, "became the leader");
    Ok(Some(Leadership { state, task }))
}

/// A default identity: the pod name when running in a pod (`HOSTNAME`), with a random suffix so
/// two processes on one host differ.
pub fn default_identity() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "kubeci".to_string());
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or(Duration::ZERO);
    format!("{host}-{:x}", nanos.as_nanos() as u64 ^ u64::from(std::process::id()))
}
