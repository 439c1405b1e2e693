//! The life of a kubeci process: admin server up, then (for the director and the
//! workplan-operator) wait to lead, run the work while leading, and on the way out release the
//! lease and drain the admin server.

use std::future::Future;

use kube::Client;
use prometheus::Registry;
use tokio::task::JoinHandle;

use crate::admin::{self, Readiness};
use crate::leader::{self, Leadership};
use crate::{CommonArgs, Error, Shutdown};

/// Leader election flags of the director and the workplan-operator.
#[derive(clap::Args, Clone, Debug)]
pub struct LeaderArgs {
    /// Run without leader election (only for a single replica).
    #[arg(long, env = "KUBECI_NO_LEADER_ELECTION")]
    pub no_leader_election: bool,

    /// Namespace of the leader election Lease.
    #[arg(long, env = "KUBECI_LEASE_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,

    /// Name of the leader election Lease. Default: `kubeci-<component>`.
    #[arg(long, env = "KUBECI_LEASE_NAME")]
    pub lease_name: Option<String>,

    /// This replica's identity in the Lease. Default: the host name with a random suffix.
    #[arg(long, env = "KUBECI_IDENTITY")]
    pub identity: Option<String>,
}

/// A started process: its client, identity, readiness and shutdown, holding the lease if it
/// takes part in leader election.
pub struct Process {
    pub client: Client,
    pub identity: String,
    pub readiness: Readiness,
    pub shutdown: Shutdown,
    admin: JoinHandle<std::io::Result<()>>,
    leadership: Option<(String, Leadership)>,
}

impl Process {
    /// Starts the admin server, then waits to lead when `leader` asks for it (a standby reports
    /// ready, so that rollouts of several replicas proceed). `None`: shutdown came first.
    pub async fn start(
        component: &str,
        common: &CommonArgs,
        leader: Option<&LeaderArgs>,
        registry: Registry,
        shutdown: Shutdown,
    ) -> Result<Option<Process>, Error> {
        let client = common.client().await?;
        let readiness = Readiness::default();
        let (addr, admin) =
            admin::serve(common.metrics_addr, registry, readiness.clone(), shutdown.clone()).await?;
        tracing::info!(%addr, component, "admin server listening");
        let identity = leader.and_then(|l| l.identity.clone()).unwrap_or_else(leader::default_identity);

        let mut leadership = None;
        if let Some(args) = leader.filter(|l| !l.no_leader_election) {
            let lease = args.lease_name.clone().unwrap_or_else(|| format!("kubeci-{component}"));
            readiness.set_ready(true);
            match leader::acquire(client.clone(), &args.lease_namespace, &lease, &identity, &shutdown).await?
            {
                Some(held) => leadership = Some((lease, held)),
                None => {
                    admin.await.map_err(|e| Error::Join(e.to_string()))?.map_err(Error::Serve)?;
                    return Ok(None);
                }
            }
            readiness.set_ready(false); // ready again once the new leader's caches sync
        }
        Ok(Some(Process { client, identity, readiness, shutdown, admin, leadership }))
    }

    /// Runs `work` (which should end on [`Shutdown`]) while this process leads. Losing the lease
    /// is an error: the process exits and its restart is a candidate again. Afterwards the lease
    /// is released, so a successor takes over at once, and the admin server drains.
    pub async fn run(mut self, work: impl Future<Output = ()>) -> Result<(), Error> {
        let outcome = match self.leadership.as_mut() {
            Some((lease, held)) => tokio::select! {
                _ = work => Ok(()),
                _ = held.lost() => Err(Error::LostLeadership(lease.clone())),
            },
            None => {
                work.await;
                Ok(())
            }
        };
        self.shutdown.trigger();
        if let Some((_, held)) = self.leadership
            && outcome.is_ok()
            && let Err(e) = held.release().await
        {
            tracing::warn!(error = %e, "could not release the leader lease; it expires on its own");
        }
        outcome?;
        self.admin.await.map_err(|e| Error::Join(e.to_string()))?.map_err(Error::Serve)
    }
}
