//! One real control plane per test binary (see the crate docs).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Config};

use crate::supervised::Supervised;

/// How long CRDs may take to become Established.
const CRD_TIMEOUT: Duration = Duration::from_secs(60);
/// The field manager of everything the harness applies.
pub const FIELD_MANAGER: &str = "kubeci-e2e";

/// A running control plane with kubeci's CRDs installed.
pub struct TestEnv {
    kubeconfig: PathBuf,
    dir: PathBuf,
    _process: Supervised,
}

/// A namespace of one test, named after it.
pub struct TestNamespace {
    /// The namespace's name.
    pub name: String,
    /// A client for the test's own runtime.
    pub client: Client,
}

impl TestEnv {
    /// The control plane of this test binary, started on first use. Panics, with the reason and
    /// what to run, when it cannot be started.
    pub fn get() -> &'static TestEnv {
        static ENV: OnceLock<TestEnv> = OnceLock::new();
        ENV.get_or_init(|| TestEnv::start().unwrap_or_else(|e| panic!("test control plane: {e}")))
    }

    /// The repository's root directory.
    pub fn repo_root() -> PathBuf {
        shared_types::repo::root()
    }

    /// Path of the admin kubeconfig, for `kubectl --kubeconfig`.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Directory holding the control plane's state and component logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A client for the calling test's runtime. (A client holds connections bound to the
    /// runtime that made them, and every `#[tokio::test]` has its own runtime.)
    pub async fn client(&self) -> Client {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig).expect("the harness wrote a kubeconfig");
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("the kubeconfig is valid");
        Client::try_from(config).expect("a client can be built")
    }

    /// Creates a fresh namespace named after `test` (lower-cased, cut, made unique).
    pub async fn namespace(&self, test: &str) -> TestNamespace {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let base: String = test
            .to_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(40)
            .collect();
        let name = format!(
            "{}-{}-{}",
            base.trim_matches('-'),
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let client = self.client().await;
        let namespace = Namespace {
            metadata: ObjectMeta { name: Some(name.clone()), ..ObjectMeta::default() },
            ..Namespace::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
        TestNamespace { name, client }
    }

    /// A `kubectl` command pointed at this control plane.
    pub fn kubectl(&self) -> Command {
        let mut command = Command::new("kubectl");
        command.arg("--kubeconfig").arg(&self.kubeconfig);
        command
    }

    fn start() -> Result<TestEnv, String> {
        let root = Self::repo_root();
        let binary = testenv_binary(&root)?;
        let dir = std::env::temp_dir().join(format!("kubeci-testenv-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);

        let mut command = Command::new(&binary);
        command.args(["up", "--dir"]).arg(&dir).args(["--exit-on-stdin-eof", "--cleanup"]);
        let (kubeconfig, process) = Supervised::start(command, Duration::from_secs(180))
            .map_err(|e| format!("{} {e}\nComponent logs are in {}.", binary.display(), dir.display()))?;
        let env = TestEnv { kubeconfig: PathBuf::from(kubeconfig), dir, _process: process };
        env.install_crds(&root)?;
        Ok(env)
    }

    /// Applies `crds/*.yaml` and waits until each is Established. Runs on its own thread and
    /// runtime: `get` may be called from inside a test's runtime, where blocking on another is
    /// not allowed.
    fn install_crds(&self, root: &Path) -> Result<(), String> {
        let crds = read_crds(&root.join("crds"))?;
        let kubeconfig = self.kubeconfig.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async move {
                let kubeconfig = Kubeconfig::read_from(&kubeconfig).map_err(|e| e.to_string())?;
                let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                    .await
                    .map_err(|e| e.to_string())?;
                let api: Api<CustomResourceDefinition> =
                    Api::all(Client::try_from(config).map_err(|e| e.to_string())?);
                for crd in &crds {
                    let name = crd.metadata.name.clone().unwrap_or_default();
                    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(crd))
                        .await
                        .map_err(|e| format!("installing CRD {name}: {e}"))?;
                }
                for crd in &crds {
                    let name = crd.metadata.name.clone().unwrap_or_default();
                    tokio::time::timeout(
                        CRD_TIMEOUT,
                        await_condition(api.clone(), &name, conditions::is_crd_established()),
                    )
                    .await
                    .map_err(|_| format!("CRD {name} not Established after {CRD_TIMEOUT:?}"))?
                    .map_err(|e| format!("waiting for CRD {name}: {e}"))?;
                }
                Ok(())
            })
        })
        .join()
        .map_err(|_| "the CRD installer panicked".to_string())?
    }
}

/// The CRDs committed in `dir`, in file name order.
pub fn read_crds(dir: &Path) -> Result<Vec<CustomResourceDefinition>, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
        })
        .collect()
}

/// The control plane binary: `KUBECI_TESTENV_BIN` if set, else what `hack/testenv.sh bin` builds
/// (cached by content hash, so only the first run of a machine compiles).
fn testenv_binary(root: &Path) -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("KUBECI_TESTENV_BIN") {
        return Ok(PathBuf::from(path));
    }
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let script = root.join("hack/testenv.sh");
    let output = Command::new("bash")
        .arg(&script)
        .arg("bin")
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    let path = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if !output.status.success() || path.is_empty() {
        return Err(format!(
            "`hack/testenv.sh bin` failed ({}); run it by hand to see why, then rerun the tests",
            output.status
        ));
    }
    Ok(PathBuf::from(path))
}
