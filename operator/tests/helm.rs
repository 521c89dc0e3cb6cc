//! The Helm chart in the real control plane (scripts/control-plane.sh): `helm install`
//! into a namespace that enforces the restricted Pod Security Standard, the objects
//! it creates, and then the operator binary run with exactly the arguments of the
//! chart's Deployment and only the chart's RBAC (a token of its ServiceAccount)
//! reconciling the quickstart example. Helm and the prometheus-operator CRDs come
//! from scripts/tools/packaging.sh (TICKLAB_TEST_PACKAGING_TOOLS).
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, Role};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use support::{
    Operator, Release, free_port, helm, kubeconfig, packaging_tools, repo, run, wait_for,
    with_temp_ns,
};
use ticklab_crd::{LatencyExperiment, Phase};

fn chart() -> PathBuf {
    repo().join("charts/ticklab")
}

/// What the chart is installed with here: an image that is never pulled (kwok runs
/// no containers), in a namespace made to enforce the restricted Pod Security
/// Standard, the monitoring CRDs present, the values file of the chart's `ci/` and
/// one `--set`.
async fn install_restricted(client: &Client, namespace: &str, values: &str, set: &str) -> Release {
    enforce_restricted(client, namespace).await;
    install_monitoring_crds(client).await;
    let values = chart().join("ci").join(values);
    Release::install(
        namespace,
        &[
            "--set",
            "image.repository=localhost/ticklab,image.tag=test",
            "--values",
            values.to_str().unwrap(),
            "--set",
            set,
        ],
    )
}

/// Makes `ns` enforce the restricted Pod Security Standard: a pod that does not meet
/// it is refused at admission.
async fn enforce_restricted(client: &Client, ns: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            ns,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": "latest",
            }}})),
        )
        .await
        .unwrap();
}

/// ServiceMonitor, PodMonitor and PrometheusRule, as kube-prometheus-stack installs them.
async fn install_monitoring_crds(client: &Client) {
    let dir = packaging_tools().join("crds/monitoring");
    let crds = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            serde_yaml::from_str::<CustomResourceDefinition>(&text).unwrap()
        })
        .collect();
    support::apply_crds(client, crds).await;
}

/// A kubeconfig for the control plane as ServiceAccount `sa` (a bound token).
async fn service_account_kubeconfig(
    client: &Client,
    ns: &str,
    sa: &str,
) -> tempfile::NamedTempFile {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    let token = accounts
        .create_token_request(sa, &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    let mut config: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(kubeconfig()).unwrap()).unwrap();
    config["users"][0]["user"]["token"] = serde_yaml::Value::String(token);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), serde_yaml::to_string(&config).unwrap()).unwrap();
    file
}

async fn client_from(kubeconfig: &Path) -> Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

/// The operator container's arguments in the chart's Deployment.
fn operator_args(deployment: &Deployment) -> Vec<String> {
    let pod = deployment.spec.clone().unwrap().template.spec.unwrap();
    let container = pod
        .containers
        .into_iter()
        .find(|c| c.name == "operator")
        .unwrap();
    assert_eq!(
        container.command.as_deref(),
        Some(&["/usr/local/bin/ticklab-operator".to_string()][..])
    );
    container.args.unwrap()
}

/// The operator binary as the chart configures it: the Deployment's arguments, the
/// pod's environment, and the ServiceAccount's token; only the admin address is
/// moved to loopback.
fn start_chart_operator(
    deployment: &Deployment,
    kubeconfig: &Path,
    ns: &str,
    extra: &[&str],
) -> Operator {
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut args: Vec<String> = operator_args(deployment)
        .into_iter()
        .map(|a| {
            if a.starts_with("--admin-listen=") {
                format!("--admin-listen={admin}")
            } else {
                a
            }
        })
        .collect();
    args.extend(extra.iter().map(ToString::to_string));
    Operator::spawn(
        kubeconfig,
        &args,
        &[
            ("POD_NAME", "chart-operator-0"),
            ("POD_NAMESPACE", ns),
            ("TICKLAB_LOG_FORMAT", "text"),
        ],
        admin,
        "chart-operator-0",
    )
}

fn quickstart() -> LatencyExperiment {
    ticklab_crd::load_experiment(&repo().join("manifests/examples/quickstart.yaml")).unwrap()
}

async fn create_quickstart(client: &Client, ns: &str) {
    let mut experiment = quickstart();
    // Long enough to be seen Running.
    experiment.spec.duration = Some("10m".into());
    Api::<LatencyExperiment>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &experiment)
        .await
        .unwrap();
}

async fn wait_running(client: &Client, ns: &str, operator: &Operator) {
    let api: Api<LatencyExperiment> = Api::namespaced(client.clone(), ns);
    let waited = tokio::time::timeout(Duration::from_secs(90), async {
        loop {
            let e = api.get("quickstart").await.unwrap();
            if e.status.as_ref().and_then(|s| s.phase) == Some(Phase::Running) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "quickstart not Running in 90 s; operator log:\n{}",
        operator.log()
    );
}

/// Pods of `selector` in `ns`, all Running: admitted under the namespace's Pod
/// Security Standard and (by kwok) started.
async fn running_pods(client: &Client, ns: &str, selector: &str, count: usize) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    wait_for(
        &format!("{count} Running pods {selector}"),
        Duration::from_secs(60),
        || {
            let pods = pods.clone();
            async move {
                let list = pods
                    .list(&ListParams::default().labels(selector))
                    .await
                    .ok()?
                    .items;
                let running = list
                    .iter()
                    .filter(|p| {
                        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                    })
                    .count();
                (running == count).then_some(list)
            }
        },
    )
    .await
}

/// Every document of every example manifest is accepted by the API server
/// (server-side dry run: schema, CEL rules, admission).
async fn examples_pass_a_dry_run(client: &Client, ns: &str) {
    let dir = repo().join("manifests/examples");
    let mut count = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for document in serde_yaml::Deserializer::from_str(&text) {
            let object: Option<DynamicObject> = serde::Deserialize::deserialize(document).unwrap();
            let Some(object) = object else { continue };
            let types = object.types.clone().unwrap();
            let (group, version) = types.api_version.split_once('/').unwrap();
            let resource =
                ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, &types.kind));
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
            let params = PostParams {
                dry_run: true,
                ..Default::default()
            };
            if let Err(e) = api.create(&params, &object).await {
                panic!(
                    "{}: {} {}: {e}",
                    path.display(),
                    types.kind,
                    object.name_any()
                );
            }
            count += 1;
        }
    }
    assert!(count >= 10, "only {count} example resources found");
}

async fn dynamic(
    client: &Client,
    ns: &str,
    group: &str,
    version: &str,
    kind: &str,
    name: &str,
) -> Option<DynamicObject> {
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
    Api::<DynamicObject>::namespaced_with(client.clone(), ns, &resource)
        .get_opt(name)
        .await
        .unwrap()
}

/// Waits until `sa` may list LatencyExperiments in `ns` (and, with `lease`, read that
/// leader Lease). The API server's RBAC authorizer learns of new Roles and bindings
/// through a watch, so a request made right after `helm install` can be refused
/// while the grant is still on its way.
async fn wait_until_authorized(sa: &Client, ns: &str, lease: Option<&str>) {
    let experiments: Api<LatencyExperiment> = Api::namespaced(sa.clone(), ns);
    let leases: Api<Lease> = Api::namespaced(sa.clone(), ns);
    wait_for(
        "the chart's RBAC in effect for its ServiceAccount",
        Duration::from_secs(30),
        || async {
            experiments.list(&ListParams::default()).await.ok()?;
            if let Some(lease) = lease {
                leases.get_opt(lease).await.ok()?;
            }
            Some(())
        },
    )
    .await;
}

fn is_subset(small: &BTreeMap<String, String>, big: &BTreeMap<String, String>) -> bool {
    small.iter().all(|(k, v)| big.get(k) == Some(v))
}

#[tokio::test]
async fn chart_with_every_feature_installs_and_its_operator_reconciles_with_only_its_rbac() {
    with_temp_ns("helm", |client, ns| async move {
        let release = install_restricted(
            &client,
            &ns,
            "all-features-values.yaml",
            &format!("monitoring.dashboards.namespace={ns}"),
        )
        .await;
        let operator_name = release.operator_name();

        // Two operator replicas, admitted under the restricted standard, Ready.
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        // `helm install --wait` waited for the rollout, but the Deployment's status is
        // the controller's to write and may trail what Helm saw of the pods.
        let deployment = wait_for(
            "2 ready operator replicas",
            Duration::from_secs(60),
            || async {
                let d = deployments.get(&operator_name).await.ok()?;
                (d.status.as_ref()?.ready_replicas == Some(2)).then_some(d)
            },
        )
        .await;
        let operator_pods = running_pods(
            &client,
            &ns,
            "app.kubernetes.io/name=ticklab,app.kubernetes.io/component=operator",
            2,
        )
        .await;

        // The objects of the chart.
        let cluster_roles: Api<ClusterRole> = Api::all(client.clone());
        assert!(
            cluster_roles
                .get_opt(&operator_name)
                .await
                .unwrap()
                .is_some()
        );
        let roles: Api<Role> = Api::namespaced(client.clone(), &ns);
        assert!(
            roles
                .get_opt(&format!("{operator_name}-leader-election"))
                .await
                .unwrap()
                .is_some()
        );
        let budgets: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
        assert!(budgets.get_opt(&operator_name).await.unwrap().is_some());
        let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
        assert!(policies.get_opt(&operator_name).await.unwrap().is_some());
        for kind in ["ServiceMonitor", "PrometheusRule"] {
            let name = if kind == "ServiceMonitor" {
                operator_name.clone()
            } else {
                format!("{}-ticklab", release.name)
            };
            assert!(
                dynamic(&client, &ns, "monitoring.coreos.com", "v1", kind, &name)
                    .await
                    .is_some(),
                "{kind} {name}"
            );
        }
        let pod_monitor = dynamic(
            &client,
            &ns,
            "monitoring.coreos.com",
            "v1",
            "PodMonitor",
            &format!("{}-ticklab-experiments", release.name),
        )
        .await
        .unwrap();
        assert_eq!(
            pod_monitor
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("release"))
                .map(String::as_str),
            Some("kube-prometheus-stack"),
            "the PodMonitor carries the label kube-prometheus-stack selects"
        );
        let rule = dynamic(
            &client,
            &ns,
            "monitoring.coreos.com",
            "v1",
            "PrometheusRule",
            &format!("{}-ticklab", release.name),
        )
        .await
        .unwrap();
        let alerts: Vec<&str> = rule.data["spec"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap())
            .map(|r| r["alert"].as_str().unwrap())
            .collect();
        assert!(
            alerts.contains(&"TicklabFeedLatencySLOBreached"),
            "{alerts:?}"
        );
        let dashboards: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        let shipped = std::fs::read_dir(chart().join("dashboards"))
            .unwrap()
            .count();
        let found = dashboards
            .list(&ListParams::default().labels("grafana_dashboard=1"))
            .await
            .unwrap()
            .items;
        assert!(shipped >= 1);
        assert_eq!(found.len(), shipped, "one ConfigMap per dashboard");
        for map in &found {
            let (file, json) = map.data.as_ref().unwrap().iter().next().unwrap();
            serde_json::from_str::<serde_json::Value>(json)
                .unwrap_or_else(|e| panic!("{file}: {e}"));
        }
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        assert!(
            secrets
                .get("ticklab-mongodb")
                .await
                .unwrap()
                .data
                .unwrap()
                .contains_key("uri")
        );

        examples_pass_a_dry_run(&client, &ns).await;

        // The operator as the chart runs it, with nothing but the chart's RBAC.
        let as_operator = service_account_kubeconfig(&client, &ns, &operator_name).await;
        wait_until_authorized(
            &client_from(as_operator.path()).await,
            &ns,
            Some(&operator_name),
        )
        .await;
        let mut operator = start_chart_operator(
            &deployment,
            as_operator.path(),
            &ns,
            // Other tests' namespaces are not this operator's business.
            &[&format!("--namespace={ns}")],
        );
        create_quickstart(&client, &ns).await;
        wait_running(&client, &ns, &operator).await;
        wait_for("the leader gauge", Duration::from_secs(30), || async {
            (operator.metric("ticklab_operator_leader").await? == 1.0).then_some(())
        })
        .await;

        // The external MongoDB of the values (mongodb.mode external): no StatefulSet,
        // the trader reads the URI from the chart's Secret.
        let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
        assert!(
            statefulsets
                .get_opt("quickstart-mongodb")
                .await
                .unwrap()
                .is_none()
        );
        let trader = deployments.get("quickstart-trader").await.unwrap();
        let env = trader.spec.unwrap().template.spec.unwrap().containers[0]
            .env
            .clone()
            .unwrap();
        let from = env[0].value_from.clone().unwrap().secret_key_ref.unwrap();
        assert_eq!(
            (from.name.as_str(), from.key.as_str()),
            ("ticklab-mongodb", "uri")
        );
        // Exchange and trader pods admitted under the restricted standard.
        running_pods(&client, &ns, "ticklab.dev/experiment=quickstart", 2).await;

        // The isolation policy admits exactly the chart's operator pods and the
        // scrapers' namespace of the values.
        let policy = policies
            .get("quickstart-isolation")
            .await
            .unwrap()
            .spec
            .unwrap();
        let ingress = policy.ingress.unwrap();
        let operator_peer = &ingress[1].from.as_ref().unwrap()[0];
        let operator_labels = operator_peer
            .pod_selector
            .clone()
            .unwrap()
            .match_labels
            .unwrap();
        for pod in &operator_pods {
            assert!(
                is_subset(&operator_labels, pod.metadata.labels.as_ref().unwrap()),
                "{operator_labels:?}"
            );
        }
        let namespace_labels = Api::<Namespace>::all(client.clone())
            .get(&ns)
            .await
            .unwrap()
            .metadata
            .labels
            .unwrap();
        assert!(is_subset(
            &operator_peer
                .namespace_selector
                .clone()
                .unwrap()
                .match_labels
                .unwrap(),
            &namespace_labels
        ));
        assert_eq!(
            ingress[2].from.as_ref().unwrap()[0]
                .namespace_selector
                .clone()
                .unwrap()
                .match_labels
                .unwrap()["kubernetes.io/metadata.name"],
            "monitoring"
        );

        // Deleting the experiment removes its children (owner references set with
        // blockOwnerDeletion, which the API server let the operator set).
        Api::<LatencyExperiment>::namespaced(client.clone(), &ns)
            .delete("quickstart", &DeleteParams::foreground())
            .await
            .unwrap();
        wait_for(
            "children garbage-collected",
            Duration::from_secs(60),
            || async {
                let d = deployments
                    .list(&ListParams::default().labels("ticklab.dev/experiment=quickstart"))
                    .await
                    .ok()?;
                let p = policies
                    .list(&ListParams::default().labels("ticklab.dev/experiment=quickstart"))
                    .await
                    .ok()?;
                (d.items.is_empty() && p.items.is_empty()).then_some(())
            },
        )
        .await;
        // Stopped first, so the log read is the whole of it, shutdown included.
        let code = operator.stop();
        let log = operator.log();
        assert_eq!(code, Some(0), "log:\n{log}");
        assert!(
            !log.to_lowercase().contains("forbidden"),
            "the chart's RBAC fell short:\n{log}"
        );

        // The documented CRD upgrade (Helm never upgrades crds/).
        let kubectl = support::kubectl().unwrap();
        let crds = run(helm().args(["show", "crds"]).arg(chart()));
        let mut apply = Command::new(kubectl)
            .args(["--kubeconfig", kubeconfig().to_str().unwrap()])
            .args(["apply", "--server-side", "--force-conflicts", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        apply
            .stdin
            .take()
            .unwrap()
            .write_all(crds.as_bytes())
            .unwrap();
        let output = apply.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(text.matches("serverside-applied").count(), 3, "{text}");
        drop(release);
    })
    .await;
}

#[tokio::test]
async fn namespaced_install_reads_nothing_outside_its_namespace() {
    with_temp_ns("helm-ns", |client, ns| async move {
        let release = install_restricted(
            &client,
            &ns,
            "namespaced-values.yaml",
            &format!("operator.watchNamespace={ns}"),
        )
        .await;
        let operator_name = release.operator_name();

        // A Role in the watched namespace, no ClusterRole, no Lease permissions (one
        // replica, no election), no NetworkPolicies.
        let roles: Api<Role> = Api::namespaced(client.clone(), &ns);
        assert!(roles.get_opt(&operator_name).await.unwrap().is_some());
        assert!(
            roles
                .get_opt(&format!("{operator_name}-leader-election"))
                .await
                .unwrap()
                .is_none()
        );
        let cluster_roles: Api<ClusterRole> = Api::all(client.clone());
        assert!(
            cluster_roles
                .get_opt(&operator_name)
                .await
                .unwrap()
                .is_none()
        );
        let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
        assert!(
            policies
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .is_empty()
        );

        // What the ServiceAccount may and may not do: what it may first, polled, so
        // the refusals below are the chart's and not a grant still on its way.
        let as_operator = service_account_kubeconfig(&client, &ns, &operator_name).await;
        let sa = client_from(as_operator.path()).await;
        let forbidden = |e: kube::Error| matches!(e, kube::Error::Api(s) if s.code == 403);
        wait_until_authorized(&sa, &ns, None).await;
        let everywhere = Api::<LatencyExperiment>::all(sa.clone())
            .list(&ListParams::default())
            .await;
        assert!(
            everywhere.is_err_and(forbidden),
            "experiments of every namespace"
        );
        let secrets = Api::<Secret>::namespaced(sa.clone(), &ns)
            .list(&ListParams::default())
            .await;
        assert!(secrets.is_err_and(forbidden), "listing Secrets");
        // Pods: listed (a MirrorSession's targets) and given a mirror through
        // their ephemeralcontainers subresource, nothing else: no deleting, no exec.
        let pods = Api::<Pod>::namespaced(sa.clone(), &ns);
        assert!(
            pods.list(&ListParams::default()).await.is_ok(),
            "listing Pods"
        );
        let delete = pods
            .delete("any", &kube::api::DeleteParams::default())
            .await;
        assert!(delete.is_err_and(forbidden), "deleting a Pod");

        // The operator with those rights reconciles the quickstart, MongoDB included
        // (managed by default), every pod admitted under the restricted standard.
        let deployment = Api::<Deployment>::namespaced(client.clone(), &ns)
            .get(&operator_name)
            .await
            .unwrap();
        assert!(operator_args(&deployment).contains(&format!("--namespace={ns}")));
        let mut operator = start_chart_operator(&deployment, as_operator.path(), &ns, &[]);
        create_quickstart(&client, &ns).await;
        wait_running(&client, &ns, &operator).await;
        running_pods(&client, &ns, "ticklab.dev/experiment=quickstart", 3).await;
        let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
        assert!(
            statefulsets
                .get_opt("quickstart-mongodb")
                .await
                .unwrap()
                .is_some()
        );
        // Stopped first, so the log read is the whole of it, shutdown included.
        let code = operator.stop();
        let log = operator.log();
        assert_eq!(code, Some(0), "log:\n{log}");
        assert!(
            !log.to_lowercase().contains("forbidden"),
            "the chart's RBAC fell short:\n{log}"
        );
        drop(release);
    })
    .await;
}
