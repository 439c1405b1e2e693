//! The Helm chart (issue 6): it lints, renders manifests that are valid for this API server,
//! installs into the real control plane (the controller manager turns its Deployments into pods),
//! and its RBAC lets each component do its whole job and nothing more: checked with
//! `kubectl auth can-i --as` for what must be allowed and denied, and by running the three real
//! binaries under their ServiceAccounts' own tokens through a whole Workflow run.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use e2e::chart::{chart_dir, helm, run, service_account_kubeconfig, tool, write_schemas};
use e2e::kubelet::{Act, Kubelet, pod_namespace};
use e2e::{Component, TestEnv, TestNamespace, eventually};
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::await_condition;
use shared_types::{Phase, Workflow, Workplan};

const TIMEOUT: Duration = Duration::from_secs(120);
const RELEASE: &str = "kubeci";

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kubeci-chart-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The value sets the chart is checked with: the defaults, and every option turned on.
const VARIANTS: [(&str, &[&str]); 3] = [
    ("defaults", &[]),
    (
        "everything-on",
        &[
            "webhook.certificate.certManager.enabled=true",
            "metrics.serviceMonitor.enabled=true",
            "director.triggers.readAll=true",
            "watchNamespace=team-a",
            "worker.replicas=5",
        ],
    ),
    ("webhook-off", &["webhook.enabled=false", "crds.install=false", "director.replicas=1"]),
];

fn render(sets: &[&str]) -> String {
    let mut helm = helm();
    helm.args(["template", RELEASE]).arg(chart_dir()).args(["--namespace", "kubeci-system"]);
    for set in sets {
        helm.args(["--set", set]);
    }
    String::from_utf8(run(&mut helm).stdout).unwrap()
}

fn kubeconform(schemas: &Path, skip: &[&str], input: &str) -> String {
    let location = format!("{}/{{{{ .ResourceKind }}}}{{{{ .KindSuffix }}}}.json", schemas.display());
    let mut child = Command::new(tool("kubeconform"))
        .args(["-strict", "-summary", "-output", "text", "-schema-location", &location])
        .args(if skip.is_empty() { vec![] } else { vec!["-skip".to_string(), skip.join(",")] })
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "kubeconform found problems:\n{text}");
    text
}

#[tokio::test]
async fn the_chart_lints_and_renders_manifests_valid_for_this_api_server() {
    for (variant, sets) in VARIANTS {
        let mut lint = helm();
        lint.args(["lint", "--strict"]).arg(chart_dir());
        for set in sets {
            lint.args(["--set", set]);
        }
        let out = run(&mut lint);
        assert!(String::from_utf8_lossy(&out.stdout).contains("0 chart(s) failed"), "{variant}");
    }

    // The values schema refuses what the chart cannot honour, naming the value.
    let bad =
        helm().args(["template", RELEASE]).arg(chart_dir()).args(["--set", "worker.maxInFlight=0"]).output();
    let stderr = String::from_utf8_lossy(&bad.as_ref().unwrap().stderr).into_owned();
    assert!(stderr.contains("/worker/maxInFlight"), "{stderr}");
    let typo =
        helm().args(["template", RELEASE]).arg(chart_dir()).args(["--set", "director.replica=3"]).output();
    let stderr = String::from_utf8_lossy(&typo.as_ref().unwrap().stderr).into_owned();
    assert!(stderr.contains("'replica' not allowed"), "{stderr}");

    // Schemas from this API server's own OpenAPI (our CRDs included), made strict.
    let schemas = temp_dir("schemas");
    let kinds = write_schemas(&schemas).await;
    assert!(kinds.contains("deployment-apps-v1.json") && kinds.contains("workflow-kube-v1alpha1.json"));

    let defaults = render(&[]);
    let summary = kubeconform(&schemas, &[], &defaults);
    assert!(summary.contains("Invalid: 0, Errors: 0, Skipped: 0"), "{summary}");
    // cert-manager's and prometheus-operator's kinds have no schema here (their CRDs are not
    // installed): they are skipped by name, and everything else is still checked.
    let everything = render(VARIANTS[1].1);
    for kind in ["kind: Certificate", "kind: Issuer", "kind: ServiceMonitor"] {
        assert!(everything.contains(kind), "{kind} is rendered");
    }
    let summary = kubeconform(&schemas, &["Certificate", "Issuer", "ServiceMonitor"], &everything);
    assert!(summary.contains("Invalid: 0, Errors: 0, Skipped: 3"), "{summary}");
    kubeconform(&schemas, &[], &render(VARIANTS[2].1));

    // The examples are valid against the CRDs' schemas too.
    let examples = TestEnv::repo_root().join("examples");
    for entry in std::fs::read_dir(examples).unwrap() {
        let yaml = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        kubeconform(&schemas, &[], &yaml);
    }

    // What the variants change is really there.
    assert!(everything.contains("cert-manager.io/inject-ca-from"));
    assert!(everything.contains("apiGroups: [\"*\"]"), "readAll grants list/watch on everything");
    assert!(everything.contains("value: \"team-a\""), "watchNamespace reaches the components");
    assert!(!defaults.contains("resources: [\"secrets\"]") && !defaults.contains("\"*\""));
    let off = render(VARIANTS[2].1);
    assert!(!off.contains("ValidatingWebhookConfiguration") && !off.contains("CustomResourceDefinition"));
    assert!(!off.contains("PodDisruptionBudget"), "no PDB for a single director");
    let _ = std::fs::remove_dir_all(schemas);
}

/// `kubectl auth can-i VERB RESOURCE -n NAMESPACE --as SA`; `RESOURCE` may name an object
/// (`leases/NAME`) or, after `#`, a subresource (`workflows.kube.ci#status`).
fn can(ns: &str, account: &str, verb: &str, resource: &str, namespace: &str) -> bool {
    let (resource, subresource) = resource.split_once('#').unwrap_or((resource, ""));
    let out = TestEnv::get()
        .kubectl()
        .args(["auth", "can-i", verb, resource, "-n", namespace])
        .arg(format!("--subresource={subresource}"))
        .arg(format!("--as=system:serviceaccount:{ns}:{account}"))
        .output()
        .unwrap();
    match String::from_utf8_lossy(&out.stdout).trim() {
        "yes" => true,
        "no" => false,
        other => panic!("kubectl auth can-i: {other} {}", String::from_utf8_lossy(&out.stderr)),
    }
}

struct Install {
    ns: TestNamespace,
}

impl Install {
    fn name(&self, component: &str) -> String {
        format!("{RELEASE}-{component}")
    }

    /// Helm takes over the CRDs the harness installed, as it would on an upgrade from a manual
    /// install: with its ownership labels and annotations on them.
    fn adopt_crds(&self) {
        for crd in
            ["workflows.kube.ci", "workplans.kube.ci", "requeststates.kube.ci", "triggerrecords.kube.ci"]
        {
            let env = TestEnv::get();
            run(env.kubectl().args([
                "label",
                "--overwrite",
                "crd",
                crd,
                "app.kubernetes.io/managed-by=Helm",
            ]));
            run(env.kubectl().args(["annotate", "--overwrite", "crd", crd]).args([
                format!("meta.helm.sh/release-name={RELEASE}"),
                format!("meta.helm.sh/release-namespace={}", self.ns.name),
            ]));
        }
    }

    fn helm(&self, verb: &str) -> Output {
        // The webhook is registered but only for namespaces labelled for it (none here): no
        // director pod can run without a node and images, and with failurePolicy Fail the
        // Workflows of the functional check below would be refused.
        let values = temp_dir("values").join("values.yaml");
        std::fs::write(
            &values,
            "webhook:\n  namespaceSelector:\n    matchLabels: {kube.ci/webhook-test: enabled}\n\
             director:\n  triggers:\n    resources:\n    - apiGroups: ['']\n      resources: [configmaps]\n\
             logFormat: plain\n",
        )
        .unwrap();
        run(helm().args([verb, RELEASE]).arg(chart_dir()).args(["-n", &self.ns.name, "-f"]).arg(&values))
    }
}

#[tokio::test]
async fn the_chart_installs_and_each_component_can_do_its_job_and_nothing_more() {
    let env = TestEnv::get();
    let install = Install { ns: env.namespace("kubeci-system").await };
    let workloads = pod_namespace("chart-workloads").await;
    let ns = install.ns.name.clone();
    install.adopt_crds();
    install.helm("install");

    // The objects, as the chart says.
    let client = install.ns.client.clone();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let mut replicas = BTreeMap::new();
    for component in ["director", "workplan-operator", "worker"] {
        let deployment = deployments.get(&install.name(component)).await.unwrap();
        let spec = deployment.spec.unwrap();
        replicas.insert(component, spec.replicas.unwrap());
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some(install.name(component).as_str()));
        let security = pod.security_context.unwrap();
        assert_eq!(security.run_as_non_root, Some(true), "{component}");
        let container = &pod.containers[0];
        let security = container.security_context.clone().unwrap();
        assert_eq!(security.read_only_root_filesystem, Some(true), "{component}");
        assert_eq!(security.allow_privilege_escalation, Some(false), "{component}");
        assert_eq!(security.capabilities.unwrap().drop.unwrap(), vec!["ALL".to_string()], "{component}");
        let probe = |p: Option<k8s_openapi::api::core::v1::Probe>| p.unwrap().http_get.unwrap().path.unwrap();
        assert_eq!(probe(container.liveness_probe.clone()), "/livez");
        assert_eq!(probe(container.readiness_probe.clone()), "/readyz");
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
        accounts.get(&install.name(component)).await.unwrap();
    }
    assert_eq!(replicas, BTreeMap::from([("director", 2), ("workplan-operator", 2), ("worker", 2)]));

    // The controller manager makes the pods (they stay Pending: no node runs these images).
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    eventually("the Deployments' pods are created", TIMEOUT, || async {
        let list =
            pods.list(&ListParams::default().labels("app.kubernetes.io/instance=kubeci")).await.ok()?;
        (list.items.len() == 6).then_some(())
    })
    .await;

    // The webhook: registered with the generated CA; its Secret survives an upgrade unchanged.
    let webhooks: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let webhook = webhooks.get(RELEASE).await.unwrap().webhooks.unwrap().remove(0);
    let service = webhook.client_config.service.unwrap();
    assert_eq!((service.name.as_str(), service.namespace.as_str()), ("kubeci-webhook", ns.as_str()));
    assert_eq!(webhook.failure_policy.as_deref(), Some("Fail"));
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let tls = secrets.get("kubeci-webhook-tls").await.unwrap();
    let data = tls.data.unwrap();
    assert_eq!(
        webhook.client_config.ca_bundle.unwrap().0,
        data["ca.crt"].0,
        "the caBundle is the Secret's CA"
    );
    install.helm("upgrade");
    let after = secrets.get("kubeci-webhook-tls").await.unwrap().data.unwrap();
    assert_eq!(after["tls.crt"].0, data["tls.crt"].0, "helm upgrade keeps the webhook certificate");

    // RBAC: what each component needs, and what it must not have.
    let (director, operator, worker) =
        (install.name("director"), install.name("workplan-operator"), install.name("worker"));
    let w = workloads.name.as_str();
    let allowed: &[(&str, &str, &str, &str)] = &[
        (&director, "watch", "workflows.kube.ci", w),
        (&director, "patch", "workflows.kube.ci#status", w),
        (&director, "create", "workplans.kube.ci", w),
        (&director, "delete", "workplans.kube.ci", w),
        (&director, "list", "triggerrecords.kube.ci", w),
        (&director, "create", "triggerrecords.kube.ci", w),
        (&director, "patch", "triggerrecords.kube.ci", w),
        (&director, "delete", "triggerrecords.kube.ci", w),
        (&director, "create", "events.events.k8s.io", w),
        (&director, "watch", "configmaps", w),
        (&director, "patch", "leases/kubeci-director", &ns),
        (&operator, "update", "requeststates.kube.ci", w),
        (&operator, "create", "requeststates.kube.ci", w),
        (&operator, "patch", "workplans.kube.ci#status", w),
        (&operator, "patch", "workplans.kube.ci", w),
        (&operator, "watch", "leases", &ns),
        (&worker, "create", "pods", w),
        (&worker, "delete", "pods", w),
        (&worker, "update", "requeststates.kube.ci", w),
        (&worker, "get", "workplans.kube.ci", w),
        (&worker, "delete", "leases", &ns),
    ];
    let denied: &[(&str, &str, &str, &str)] = &[
        (&director, "create", "pods", w),
        (&operator, "create", "pods", w),
        (&director, "update", "workflows.kube.ci", w),
        (&director, "create", "requeststates.kube.ci", w),
        (&director, "patch", "leases/kubeci-workplan-operator", &ns),
        (&director, "delete", "leases", &ns),
        (&operator, "create", "workplans.kube.ci", w),
        (&operator, "update", "workplans.kube.ci", w),
        (&operator, "delete", "workplans.kube.ci", w),
        (&operator, "patch", "workflows.kube.ci", w),
        (&operator, "delete", "pods", w),
        (&worker, "update", "workflows.kube.ci", w),
        (&worker, "patch", "workflows.kube.ci", w),
        (&worker, "create", "workplans.kube.ci", w),
        (&worker, "patch", "workplans.kube.ci#status", w),
        (&worker, "create", "leases", w),
        (&worker, "list", "configmaps", w),
        (&director, "update", "triggerrecords.kube.ci", w),
        (&operator, "patch", "triggerrecords.kube.ci", w),
        (&worker, "patch", "triggerrecords.kube.ci", w),
    ];
    for (account, verb, resource, namespace) in allowed {
        assert!(can(&ns, account, verb, resource, namespace), "{account} must be able to {verb} {resource}");
    }
    for (account, verb, resource, namespace) in denied {
        assert!(!can(&ns, account, verb, resource, namespace), "{account} must not {verb} {resource}");
    }
    for account in [&director, &operator, &worker] {
        for verb in ["get", "list", "watch"] {
            for namespace in [w, ns.as_str(), "kube-system"] {
                assert!(!can(&ns, account, verb, "secrets", namespace), "{account} must not {verb} secrets");
            }
        }
    }

    // And the grants suffice: the three real binaries, each with its own ServiceAccount's
    // token, take a ConfigMap change through a Workplan to Completed.
    let kubeconfigs = temp_dir("kubeconfigs");
    let kubeconfig = |account: &str| {
        let path = kubeconfigs.join(account);
        service_account_kubeconfig(&ns, account, &path);
        path
    };
    let binary = |name: &str| {
        let dir = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().to_path_buf();
        dir.join(name)
    };
    let _director = Component::start_as(
        binary("director"),
        &kubeconfig(&director),
        w,
        &["--lease-namespace", &ns, "--lease-name", &director],
    );
    let _operator = Component::start_as(
        binary("workplan-operator"),
        &kubeconfig(&operator),
        w,
        &["--lease-namespace", &ns, "--lease-name", &operator, "--worker-lease-namespace", &ns],
    );
    let _worker = Component::start_as(
        binary("worker"),
        &kubeconfig(&worker),
        w,
        &["--lease-namespace", &ns, "--identity", "kubeci-worker-0"],
    );
    let _kubelet = Kubelet::start(&workloads, |_| Act::Succeed);

    let example =
        std::fs::read_to_string(TestEnv::repo_root().join("examples/configmap-trigger.yaml")).unwrap();
    let mut docs = example.split("\n---\n");
    let config_map: ConfigMap = serde_yaml::from_str(docs.next().unwrap()).unwrap();
    let workflow: Workflow = serde_yaml::from_str(docs.next().unwrap()).unwrap();
    let config_maps: Api<ConfigMap> = Api::namespaced(workloads.client.clone(), w);
    config_maps.create(&PostParams::default(), &config_map).await.unwrap();
    let workflows: Api<Workflow> = Api::namespaced(workloads.client.clone(), w);
    workflows.create(&PostParams::default(), &workflow).await.unwrap();
    let name = workflow.metadata.name.clone().unwrap();
    tokio::time::timeout(
        TIMEOUT,
        await_condition(workflows.clone(), &name, |wf: Option<&Workflow>| {
            wf.and_then(|w| w.status.as_ref()).is_some_and(|s| !s.baselined_triggers.is_empty())
        }),
    )
    .await
    .expect("the director (as its ServiceAccount) takes the trigger baseline")
    .unwrap();
    let patch = serde_json::json!({"data": {"greeting": "hello again"}});
    config_maps.patch("web-config", &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();

    let workplans: Api<Workplan> = Api::namespaced(workloads.client.clone(), w);
    let completed = eventually("the Workplan completes", TIMEOUT, || async {
        let list = workplans.list(&ListParams::default()).await.ok()?;
        let phases: Vec<_> = list.items.iter().map(|wp| wp.status.as_ref().and_then(|s| s.phase)).collect();
        assert!(!phases.contains(&Some(Phase::Failed)), "a Workplan failed: {:?}", list.items);
        list.items.into_iter().find(|wp| wp.status.as_ref().and_then(|s| s.phase) == Some(Phase::Completed))
    })
    .await;
    assert_eq!(completed.spec.tasks.len(), 1, "render and announce plan to one pod");
    // The operator may remove the cleanup finalizer of what it finished.
    let name = completed.metadata.name.clone().unwrap();
    eventually("the operator removes the cleanup finalizer", TIMEOUT, || async {
        let wp = workplans.get(&name).await.ok()?;
        wp.metadata.finalizers.as_deref().unwrap_or_default().is_empty().then_some(())
    })
    .await;
    let events: Api<Event> = Api::namespaced(workloads.client.clone(), w);
    let reporters: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|e| e.reporting_controller)
        .collect();
    assert!(reporters.iter().any(|r| r == "kubeci-director"), "the director publishes Events: {reporters:?}");
    assert!(reporters.iter().any(|r| r == "kubeci-workplan-operator"), "the operator too: {reporters:?}");

    // A trigger on a resource the chart does not grant is reported on the Workflow, not only
    // in the director's log.
    let secret_trigger: Workflow = serde_yaml::from_str(
        "apiVersion: kube.ci/v1alpha1\nkind: Workflow\nmetadata: {name: on-secrets}\nspec:\n  triggers:\n  \
         - {apiVersion: v1, kind: Secret, resource: secrets, onAddOrUpdate: true}\n  steps:\n  - {name: a, image: busybox}\n",
    )
    .unwrap();
    workflows.create(&PostParams::default(), &secret_trigger).await.unwrap();
    let forbidden = |wf: Option<&Workflow>| {
        let conditions = wf.and_then(|w| w.status.as_ref()).map(|s| s.conditions.clone()).unwrap_or_default();
        conditions.iter().any(|c| c.type_ == "Ready" && c.status == "False" && c.reason == "TriggerForbidden")
    };
    if tokio::time::timeout(TIMEOUT, await_condition(workflows.clone(), "on-secrets", forbidden))
        .await
        .is_err()
    {
        panic!("no TriggerForbidden: {:?}", workflows.get("on-secrets").await.unwrap().status);
    }
    let ready = workflows.get("on-secrets").await.unwrap().status.unwrap().conditions;
    let message = &ready.iter().find(|c| c.type_ == "Ready").unwrap().message;
    assert_eq!(
        message,
        &format!(
            "spec.triggers[0]: the director may not list or watch secrets in namespace {w}; \
             grant it (Helm value director.triggers.resources)"
        )
    );
    let _ = std::fs::remove_dir_all(kubeconfigs);
}
