//! kubectl's connection flags and the reads every cluster command shares.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, Resource};
use serde::de::DeserializeOwned;
use shared_types::{RequestState, Workflow, Workplan, labels};

use crate::Error;

/// Field manager of the plugin's writes (`kube.ci/run` on a Workflow, `kube.ci/cancel` on a
/// Workplan).
pub const MANAGER: &str = "kubectl-kubeci";

/// Whether a run is over: its Workplan reached a final phase, or is gone.
pub fn run_over(workplan: Option<&Workplan>) -> bool {
    workplan.is_none_or(|w| w.status.as_ref().and_then(|s| s.phase).is_some_and(|p| p.is_finished()))
}

/// `--kubeconfig`, `--context` and `-n`, as kubectl reads them.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ClusterArgs {
    /// Path to the kubeconfig file (default: `$KUBECONFIG`, else `~/.kube/config`, else the
    /// in-cluster configuration).
    #[arg(long, global = true, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// The kubeconfig context to use (default: its current context).
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,

    /// The namespace (default: the context's namespace, else `default`).
    #[arg(short = 'n', long, global = true, value_name = "NS")]
    pub namespace: Option<String>,
}

impl ClusterArgs {
    fn kubeconfig(&self) -> Result<Kubeconfig, Error> {
        let read = match &self.kubeconfig {
            Some(path) => Kubeconfig::read_from(path),
            None => Kubeconfig::read(),
        };
        read.map_err(|e| Error::Kubeconfig(e.to_string()))
    }

    /// The namespace without talking to a cluster: `-n`, else the chosen context's namespace in
    /// the kubeconfig (when there is one to read), else `default`. `plan` uses it.
    pub fn offline_namespace(&self) -> String {
        if let Some(ns) = &self.namespace {
            return ns.clone();
        }
        let Ok(kubeconfig) = self.kubeconfig() else { return "default".to_string() };
        let context = self.context.clone().or(kubeconfig.current_context.clone());
        kubeconfig
            .contexts
            .iter()
            .find(|c| Some(&c.name) == context.as_ref())
            .and_then(|c| c.context.as_ref())
            .and_then(|c| c.namespace.clone())
            .unwrap_or_else(|| "default".to_string())
    }

    /// A client for the chosen context, and the namespace to work in.
    pub async fn connect(&self) -> Result<Cluster, Error> {
        let config = match self.kubeconfig() {
            Ok(kubeconfig) => {
                let options =
                    KubeConfigOptions { context: self.context.clone(), ..KubeConfigOptions::default() };
                Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .map_err(|e| Error::Kubeconfig(e.to_string()))?
            }
            // Inside a pod without a kubeconfig, as kubectl does.
            Err(no_file) if self.kubeconfig.is_none() && self.context.is_none() => {
                Config::incluster().map_err(|_| no_file)?
            }
            Err(e) => return Err(e),
        };
        let namespace = self.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
        let client = Client::try_from(config).map_err(|e| Error::Kubeconfig(e.to_string()))?;
        Ok(Cluster { client, namespace })
    }
}

/// A connected cluster and the namespace the command works in.
#[derive(Clone)]
pub struct Cluster {
    pub client: Client,
    pub namespace: String,
}

impl Cluster {
    /// The typed Api of the namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// One object of kind `K`, read as plain data first so that one that does not deserialize is
    /// reported with the field that is wrong instead of a bare serde error.
    pub async fn get<K>(&self, name: &str) -> Result<K, Error>
    where
        K: Resource<DynamicType = ()> + DeserializeOwned,
    {
        let kind = K::kind(&()).into_owned();
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &self.namespace, &ApiResource::erase::<K>(&()));
        match api.get_opt(name).await {
            Ok(Some(object)) => self.typed(object),
            Ok(None) => {
                Err(Error::NotFound { kind, name: name.to_string(), namespace: self.namespace.clone() })
            }
            Err(source) => {
                Err(Error::Kube { what: format!("reading {kind} {}/{name}", self.namespace), source })
            }
        }
    }

    /// Like [`Cluster::get`], `None` when the object does not exist.
    pub async fn get_opt<K>(&self, name: &str) -> Result<Option<K>, Error>
    where
        K: Resource<DynamicType = ()> + DeserializeOwned,
    {
        match self.get(name).await {
            Ok(object) => Ok(Some(object)),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every object of kind `K` matching `labels`: those that deserialize, and for each that
    /// does not, its name and the error.
    pub async fn list<K>(&self, selector: &str) -> Result<(Vec<K>, Vec<Error>), Error>
    where
        K: Resource<DynamicType = ()> + DeserializeOwned,
    {
        let kind = K::kind(&()).into_owned();
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &self.namespace, &ApiResource::erase::<K>(&()));
        let list = api.list(&ListParams::default().labels(selector)).await.map_err(|source| Error::Kube {
            what: format!("listing {kind}s in {}", self.namespace),
            source,
        })?;
        let (mut good, mut bad) = (Vec::new(), Vec::new());
        for object in list.items {
            match self.typed::<K>(object) {
                Ok(object) => good.push(object),
                Err(e) => bad.push(e),
            }
        }
        Ok((good, bad))
    }

    fn typed<K>(&self, object: DynamicObject) -> Result<K, Error>
    where
        K: Resource<DynamicType = ()> + DeserializeOwned,
    {
        let name = object.metadata.name.clone().unwrap_or_default();
        let value = serde_json::to_value(&object).expect("an object read from the API serializes");
        serde_path_to_error::deserialize(value).map_err(|e| Error::Malformed {
            kind: K::kind(&()).into_owned(),
            name: format!("{}/{name}", self.namespace),
            message: format!("{}: {}", e.path(), e.inner()),
        })
    }

    /// What `get` and `logs` read about one run: the Workplan, its RequestState (same name; none
    /// before the operator requested the first task) and the pods the worker labelled with it.
    pub async fn run(&self, name: &str) -> Result<(Workplan, Option<RequestState>, Vec<Pod>), Error> {
        let workplan: Workplan = self.get(name).await?;
        let request = self.get_opt::<RequestState>(name).await?;
        let pods = self
            .api::<Pod>()
            .list(&ListParams::default().labels(&format!("{}={name}", labels::WORKPLAN)))
            .await
            .map_err(|source| Error::Kube { what: format!("listing the pods of Workplan {name}"), source })?
            .items;
        Ok((workplan, request, pods))
    }

    /// Waits (through a watch) until run `name` is over, within `timeout`; the Workplan as it
    /// ended, `None` if it was deleted.
    pub async fn run_end(&self, name: &str, timeout: std::time::Duration) -> Result<Option<Workplan>, Error> {
        let over = kube::runtime::wait::await_condition(self.api::<Workplan>(), name, run_over);
        tokio::time::timeout(timeout, over)
            .await
            .map_err(|_| Error::Timeout { workplan: format!("{}/{name}", self.namespace), timeout })?
            .map_err(|e| Error::WatchEnded(format!("{name}: {e}")))
    }

    /// A Workflow by name.
    pub async fn workflow(&self, name: &str) -> Result<Workflow, Error> {
        self.get(name).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBECONFIG: &str = r#"
apiVersion: v1
kind: Config
current-context: dev
clusters:
- name: c
  cluster: {server: "https://127.0.0.1:1"}
users:
- name: u
  user: {token: t}
contexts:
- name: dev
  context: {cluster: c, user: u, namespace: team-a}
- name: prod
  context: {cluster: c, user: u}
"#;

    fn args(context: Option<&str>, namespace: Option<&str>) -> (ClusterArgs, PathBuf) {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let unique = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("kubeci-cli-kubeconfig-{}-{unique}", std::process::id()));
        std::fs::write(&path, KUBECONFIG).unwrap();
        let args = ClusterArgs {
            kubeconfig: Some(path.clone()),
            context: context.map(str::to_string),
            namespace: namespace.map(str::to_string),
        };
        (args, path)
    }

    #[test]
    fn the_namespace_comes_from_the_flag_then_the_chosen_context_then_default() {
        let (current, _) = args(None, None);
        assert_eq!(current.offline_namespace(), "team-a");
        let (prod, _) = args(Some("prod"), None);
        assert_eq!(prod.offline_namespace(), "default");
        let (flag, _) = args(Some("dev"), Some("mine"));
        assert_eq!(flag.offline_namespace(), "mine");
        let missing =
            ClusterArgs { kubeconfig: Some("/nonexistent/kubeconfig".into()), ..ClusterArgs::default() };
        assert_eq!(missing.offline_namespace(), "default");
    }

    #[tokio::test]
    async fn connect_takes_the_context_and_its_namespace() {
        let (dev, _) = args(None, None);
        let cluster = dev.connect().await.unwrap();
        assert_eq!(cluster.namespace, "team-a");
        let (unknown, _) = args(Some("nope"), None);
        let err = unknown.connect().await.err().expect("an unknown context is an error");
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
