//! What the real-node tests share: a namespace whose pods land on the real node,
//! FerretDB in a pod, a Helm release of the chart, kubectl, the logs of every pod
//! when a test fails, the API server's service proxy, a real Prometheus discovering
//! pods through the API, and step timings.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::support::{Release, kubeconfig, kubectl, repo, run, run_with_input, wait_for};

/// The node name, taint and namespace annotations of scripts/node.sh.
pub const NODE: &str = "ticklab-node";
const NODE_SELECTOR_ANNOTATION: &str = "scheduler.alpha.kubernetes.io/node-selector";
const TOLERATIONS_ANNOTATION: &str = "scheduler.alpha.kubernetes.io/defaultTolerations";

fn env(name: &str, how: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests through scripts/test.sh, which {how}")
    })
}

/// The ticklab image imported into the real node (`scripts/image.sh build`).
pub fn ticklab_image() -> (String, String) {
    let image = env(
        "TICKLAB_TEST_IMAGE",
        "builds the image and imports it into the real node",
    );
    let (repository, tag) = image
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("TICKLAB_TEST_IMAGE {image:?} has no tag"));
    (repository.to_string(), tag.to_string())
}

/// The FerretDB image imported into the real node (`scripts/image/test-image.sh ferretdb`).
pub fn ferretdb_image() -> String {
    env(
        "TICKLAB_TEST_FERRETDB_IMAGE",
        "builds the FerretDB image and imports it into the real node",
    )
}

/// The busybox image the NetworkPolicy probes run (`scripts/image/test-image.sh busybox`).
pub fn probe_image() -> String {
    env(
        "TICKLAB_TEST_PROBE_IMAGE",
        "builds the probe image and imports it into the real node",
    )
}

/// The chart installed with the real-node test values (the imported image, FerretDB
/// as the external MongoDB) into `ns`, watching `ns` only, with `set` added.
pub fn install_chart(ns: &str, set: &[String]) -> Release {
    let (repository, tag) = ticklab_image();
    let mut args = vec![
        "--values".to_string(),
        repo()
            .join("charts/ticklab/ci/real-node-values.yaml")
            .display()
            .to_string(),
        "--set".to_string(),
        format!("image.repository={repository},image.tag={tag}"),
        "--set".to_string(),
        format!("operator.watchNamespace={ns}"),
        "--set".to_string(),
        format!("mongodb.external.uri=mongodb://ferretdb.{ns}.svc:27017/ticklab"),
    ];
    for s in set {
        args.push("--set".to_string());
        args.push(s.clone());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Release::install(ns, &args)
}

/// kubectl of the test cluster, as its admin.
pub fn kubectl_cmd() -> Command {
    let mut command = Command::new(kubectl().expect("no kubectl next to the kubeconfig"));
    command.arg("--kubeconfig").arg(kubeconfig());
    command
}

/// Makes `ns` put its pods on the real node (the annotations scripts/node.sh names)
/// and enforce the restricted Pod Security Standard, as a careful user's would.
pub async fn use_real_node(client: &Client, ns: &str) {
    let tolerations = json!([{
        "key": "ticklab.dev/real-node", "operator": "Exists", "effect": "NoSchedule"
    }])
    .to_string();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            ns,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {
                "annotations": {
                    NODE_SELECTOR_ANNOTATION: format!("kubernetes.io/hostname={NODE}"),
                    TOLERATIONS_ANNOTATION: tolerations,
                },
                "labels": {
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/enforce-version": "latest",
                },
            }})),
        )
        .await
        .unwrap();
}

/// On a failing test, prints the logs of every container in the namespace (the
/// namespace's objects and events are printed by `with_temp_ns`).
pub struct DumpLogsOnFailure(pub String);

impl Drop for DumpLogsOnFailure {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let ns = &self.0;
        let Ok(pods) = kubectl_cmd()
            .args(["-n", ns, "get", "pods", "-o", "name"])
            .output()
        else {
            return;
        };
        for pod in String::from_utf8_lossy(&pods.stdout).lines() {
            for previous in [false, true] {
                let mut command = kubectl_cmd();
                command.args(["-n", ns, "logs", pod, "--all-containers", "--tail=60"]);
                if previous {
                    command.arg("--previous");
                }
                if let Ok(out) = command.output()
                    && out.status.success()
                    && !out.stdout.is_empty()
                {
                    eprintln!(
                        "--- logs of {ns}/{pod}{}:\n{}",
                        if previous {
                            " (previous container)"
                        } else {
                            ""
                        },
                        String::from_utf8_lossy(&out.stdout)
                    );
                }
            }
        }
    }
}

/// Waits until a Deployment has `want` available replicas.
pub async fn wait_available(client: &Client, ns: &str, name: &str, timeout: Duration) {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    wait_for(
        &format!("Deployment {ns}/{name} available"),
        timeout,
        || {
            let deployments = deployments.clone();
            async move {
                let d = deployments.get_opt(name).await.ok()??;
                (d.status?.available_replicas.unwrap_or(0) >= 1).then_some(())
            }
        },
    )
    .await;
}

/// FerretDB in the namespace, Service `ferretdb:27017`; returns once it is ready.
pub async fn deploy_ferretdb(client: &Client, ns: &str) {
    let manifest =
        std::fs::read_to_string(repo().join("operator/tests/fixtures/real-node/ferretdb.yaml"))
            .unwrap()
            .replace("image: IMAGE", &format!("image: {}", ferretdb_image()));
    run_with_input(
        kubectl_cmd().args(["-n", ns, "apply", "-f", "-"]),
        Some(&manifest),
    );
    wait_available(client, ns, "ferretdb", Duration::from_secs(120)).await;
}

/// Waits until a pod matching `selector` is Running and Ready, and returns it.
pub async fn ready_pod(client: &Client, ns: &str, selector: &str, timeout: Duration) -> Pod {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    wait_for(
        &format!("a pod {selector} Running and Ready"),
        timeout,
        || {
            let pods = pods.clone();
            async move {
                let list = pods
                    .list(&ListParams::default().labels(selector))
                    .await
                    .ok()?;
                list.items.into_iter().find(|p| {
                    let Some(status) = &p.status else {
                        return false;
                    };
                    status.phase.as_deref() == Some("Running")
                        && status
                            .conditions
                            .iter()
                            .flatten()
                            .any(|c| c.type_ == "Ready" && c.status == "True")
                })
            }
        },
    )
    .await
}

/// The IP of a Running, Ready pod matching `selector`.
pub async fn pod_ip(client: &Client, ns: &str, selector: &str) -> String {
    let pod = ready_pod(client, ns, selector, Duration::from_secs(60)).await;
    pod.status
        .and_then(|s| s.pod_ip)
        .expect("a Ready pod has an IP")
}

/// `GET path` of a Service's port through the API server's service proxy (how the
/// console will reach a trader); the body as JSON, or why not.
pub async fn proxy_get(
    client: &Client,
    ns: &str,
    service: &str,
    port: u16,
    path: &str,
) -> Result<Value, String> {
    let request = http::Request::get(format!(
        "/api/v1/namespaces/{ns}/services/http:{service}:{port}/proxy{path}"
    ))
    .body(Vec::new())
    .map_err(|e| e.to_string())?;
    let text = client
        .request_text(request)
        .await
        .map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))
}

/// Every line of `kubectl logs` of the pods matching `selector` (all containers).
pub fn pod_logs(ns: &str, selector: &str) -> String {
    run(kubectl_cmd().args([
        "-n",
        ns,
        "logs",
        "-l",
        selector,
        "--all-containers",
        "--tail=-1",
    ]))
}

/// Prometheus on this machine scraping the namespace's exchange and trader pods at
/// their pod IPs each second. Debian builds Prometheus without Kubernetes service
/// discovery, so a task here plays it: it lists the pods through the API and keeps
/// a `file_sd` target file current (address of each declared `admin`/`api` port,
/// and the pod's name and component as labels, as a PodMonitor would). Stopped
/// when dropped.
pub struct Prometheus {
    child: Child,
    discovery: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
    pub base: String,
    http: reqwest::Client,
}

impl Prometheus {
    pub fn start(client: &Client, ns: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = crate::support::free_port();
        let targets = dir.path().join("targets.json");
        std::fs::write(&targets, "[]").unwrap();
        let config = format!(
            r#"global: {{scrape_interval: 1s}}
scrape_configs:
  - job_name: ticklab-pods
    file_sd_configs:
      - files: ["{targets}"]
        refresh_interval: 1s
"#,
            targets = targets.display()
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start prometheus: scripts/tools/apt-packages.sh installs it");
        let discovery = tokio::spawn(discover(client.clone(), ns.to_string(), targets));
        Self {
            child,
            discovery,
            _dir: dir,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        }
    }

    /// An instant query's result vector, or why not.
    pub async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let body: Value = self
            .http
            .get(format!("{}/api/v1/query", self.base))
            .query(&[("query", expr)])
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        if body["status"] != "success" {
            return Err(body.to_string());
        }
        Ok(body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Waits until `expr` returns at least one sample, which it returns.
    pub async fn wait_for_samples(&self, expr: &str, timeout: Duration) -> Vec<Value> {
        wait_for(
            &format!("Prometheus samples for {expr}"),
            timeout,
            || async { self.query(expr).await.ok().filter(|r| !r.is_empty()) },
        )
        .await
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.discovery.abort();
        if std::thread::panicking() {
            eprintln!("--- prometheus log:\n{}", self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Keeps `targets` listing the Running pods' `admin` and `api` ports (written to a
/// temporary file and renamed, so Prometheus never reads half a file).
async fn discover(client: Client, ns: String, targets: PathBuf) {
    let pods: Api<Pod> = Api::namespaced(client, &ns);
    let mut last = String::new();
    loop {
        if let Ok(list) = pods.list(&ListParams::default()).await {
            let mut groups = Vec::new();
            for pod in list.items {
                let (Some(spec), Some(status)) = (&pod.spec, &pod.status) else {
                    continue;
                };
                let Some(ip) = status.pod_ip.as_deref() else {
                    continue;
                };
                if status.phase.as_deref() != Some("Running") {
                    continue;
                }
                let component = pod
                    .labels()
                    .get("app.kubernetes.io/component")
                    .cloned()
                    .unwrap_or_default();
                for port in spec
                    .containers
                    .iter()
                    .flat_map(|c| c.ports.iter().flatten())
                {
                    if matches!(port.name.as_deref(), Some("admin" | "api")) {
                        groups.push(json!({
                            "targets": [format!("{ip}:{}", port.container_port)],
                            "labels": {"namespace": ns, "pod": pod.name_any(), "component": component},
                        }));
                    }
                }
            }
            let text = Value::Array(groups).to_string();
            if text != last {
                let partial = targets.with_extension("tmp");
                if std::fs::write(&partial, &text).is_ok()
                    && std::fs::rename(&partial, &targets).is_ok()
                {
                    last = text;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Named steps and how long each took from the previous one, printed at the end
/// (figures for BENCHMARKS.md come from bench/real-node.sh, not from tests).
pub struct Steps {
    started: Instant,
    last: Instant,
    steps: Vec<(String, Duration)>,
}

impl Steps {
    pub fn new() -> Self {
        let now = Instant::now();
        Self {
            started: now,
            last: now,
            steps: Vec::new(),
        }
    }

    pub fn done(&mut self, what: &str) {
        let now = Instant::now();
        self.steps.push((what.to_string(), now - self.last));
        self.last = now;
    }

    pub fn report(&self) -> String {
        let mut out = String::new();
        for (what, took) in &self.steps {
            out.push_str(&format!("  {what}: {:.1}s\n", took.as_secs_f64()));
        }
        out.push_str(&format!(
            "  total: {:.1}s",
            self.started.elapsed().as_secs_f64()
        ));
        out
    }
}

/// The labels selecting one component's pods of an experiment.
pub fn component(experiment: &str, component: &str) -> String {
    format!("ticklab.dev/experiment={experiment},app.kubernetes.io/component={component}")
}

/// Names of the pods in `ns` matching `selector`.
pub async fn pod_names(client: &Client, ns: &str, selector: &str) -> Vec<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.list(&ListParams::default().labels(selector))
        .await
        .map(|l| l.items.iter().map(ResourceExt::name_any).collect())
        .unwrap_or_default()
}

/// Experiment documents of an example file, by name, with `overrides` merged into
/// each one's spec (a shorter duration for a test).
pub fn example_experiments(file: &str, overrides: Value) -> BTreeMap<String, Value> {
    let text = std::fs::read_to_string(repo().join("manifests/examples").join(file)).unwrap();
    let mut out = BTreeMap::new();
    for document in serde_yaml::Deserializer::from_str(&text) {
        let mut value = Value::deserialize(document).unwrap();
        if value["kind"] != "LatencyExperiment" {
            continue;
        }
        merge(&mut value["spec"], &overrides);
        out.insert(
            value["metadata"]["name"].as_str().unwrap().to_string(),
            value,
        );
    }
    out
}

fn merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(base), Value::Object(patch)) => {
            for (k, v) in patch {
                merge(base.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (base, patch) => *base = patch.clone(),
    }
}
