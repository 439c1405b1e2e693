//! kubeci installed with Helm on the local node (issue 16): its images, built on this machine by
//! `hack/images.sh` and imported into the node's containerd, and a release of `charts/kubeci`
//! that runs them as pods.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;

use crate::chart::{chart_dir, helm, run};
use crate::{LocalNode, TestEnv};

/// Where `hack/images.sh` tags kubeci's images.
pub const REGISTRY: &str = "localhost/kubeci";

/// kubeci's images on the local node.
pub struct Images {
    /// The tag of the three images: a hash of their content.
    pub tag: String,
}

impl Images {
    /// Builds the images (cached by content hash; the first build compiles release binaries) and
    /// imports them into the local node of this test binary, once. Panics with the script's
    /// output when it cannot.
    pub fn get() -> &'static Images {
        static IMAGES: OnceLock<Images> = OnceLock::new();
        IMAGES.get_or_init(|| {
            LocalNode::get();
            let script = TestEnv::repo_root().join("hack/images.sh");
            let out = run(Command::new("bash").arg(&script).arg("import"));
            let tag = String::from_utf8_lossy(&out.stdout).trim().to_string();
            assert!(!tag.is_empty(), "{} import printed no tag", script.display());
            Images { tag }
        })
    }

    /// Tags the three images also as `tag` in the node's containerd, as a new release would be
    /// tagged (for `helm upgrade` to a new tag).
    pub fn retag(&self, tag: &str) {
        let socket = LocalNode::containerd_socket();
        for component in ["director", "workplan-operator", "worker"] {
            let image = format!("{REGISTRY}/kubeci-{component}");
            run(Command::new("ctr")
                .arg("-a")
                .arg(&socket)
                .args(["-n", "k8s.io", "images", "tag", "--force"])
                .arg(format!("{image}:{}", self.tag))
                .arg(format!("{image}:{tag}")));
        }
    }
}

/// A Helm release of `charts/kubeci` in `namespace`, running the local images.
pub struct Release {
    /// The release's name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    values: PathBuf,
}

impl Release {
    /// A release whose values point the chart at the local images (`pullPolicy: Never`: the
    /// node has no registry to pull from), with `extra` values YAML appended.
    pub fn new(name: &str, namespace: &str, extra: &str) -> Release {
        let images = Images::get();
        let values = std::env::temp_dir().join(format!("kubeci-install-{}-{name}.yaml", std::process::id()));
        let yaml = format!(
            "image:\n  registry: {REGISTRY}\n  tag: {tag}\n  pullPolicy: Never\nlogFormat: plain\n{extra}",
            tag = images.tag
        );
        std::fs::write(&values, yaml).unwrap();
        Release { name: name.to_string(), namespace: namespace.to_string(), values }
    }

    /// `helm install|upgrade RELEASE charts/kubeci -n NAMESPACE -f VALUES ARGS...`; panics with
    /// helm's output when it fails.
    pub fn helm(&self, verb: &str, args: &[&str]) -> Output {
        run(helm()
            .args([verb, &self.name])
            .arg(chart_dir())
            .args(["-n", &self.namespace, "-f"])
            .arg(&self.values)
            .args(args))
    }

    /// `helm uninstall RELEASE -n NAMESPACE --wait`.
    pub fn uninstall(&self) -> Output {
        run(helm().args(["uninstall", &self.name, "-n", &self.namespace, "--wait", "--timeout", "120s"]))
    }

    /// The name of one component's objects (`<release>-kubeci-<component>`, or
    /// `<release>-<component>` when the release's name contains `kubeci`).
    pub fn object(&self, component: &str) -> String {
        if self.name.contains("kubeci") {
            format!("{}-{component}", self.name)
        } else {
            format!("{}-kubeci-{component}", self.name)
        }
    }

    /// The label selector of the release's pods.
    pub fn selector(&self) -> String {
        format!("app.kubernetes.io/name=kubeci,app.kubernetes.io/instance={}", self.name)
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.values);
    }
}
