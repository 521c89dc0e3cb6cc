//! Test harness around the real control plane `scripts/control-plane.sh` starts:
//! clients, a temporary namespace per test (deleted afterwards, with its state dumped
//! when the test fails), the operator binary as a child process, and polling.
#![allow(clippy::unwrap_used, dead_code)]

use std::future::Future;
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::FutureExt;
use k8s_openapi::api::core::v1::{Event, Namespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, CustomResourceExt, ResourceExt};
use ticklab_crd::{LatencyExperiment, MirrorSession, RecordingSession};

/// The admin kubeconfig of the test control plane. Missing is an error, not a skip:
/// `scripts/test.sh` always starts the control plane.
pub fn kubeconfig() -> PathBuf {
    PathBuf::from(std::env::var("TICKLAB_TEST_KUBECONFIG").expect(
        "TICKLAB_TEST_KUBECONFIG is not set: run the tests through scripts/test.sh, which \
         starts a control plane (scripts/control-plane.sh start DIR prints the kubeconfig)",
    ))
}

/// The kubeconfig of the second, empty API server (no ticklab CRDs).
pub fn bare_kubeconfig() -> PathBuf {
    kubeconfig().with_file_name("kubeconfig-bare")
}

pub async fn client() -> Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

/// Installs (or updates) ticklab's CRDs from the Rust types and waits until the API
/// server serves them. Idempotent: every test calls it.
pub async fn install_crds(client: &Client) {
    apply_crds(
        client,
        vec![
            LatencyExperiment::crd(),
            RecordingSession::crd(),
            MirrorSession::crd(),
        ],
    )
    .await;
}

/// Applies `crds` (server-side) and waits until each is Established.
pub async fn apply_crds(client: &Client, crds: Vec<CustomResourceDefinition>) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crds {
        let name = crd.name_any();
        api.patch(
            &name,
            &PatchParams::apply("ticklab-tests").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap();
        wait_for(
            &format!("CRD {name} Established"),
            Duration::from_secs(30),
            || {
                let api = api.clone();
                let name = name.clone();
                async move {
                    let crd = api.get(&name).await.ok()?;
                    crd.status?
                        .conditions?
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                        .then_some(())
                }
            },
        )
        .await;
    }
}

/// Runs `body` in a fresh namespace; deletes it afterwards, and on failure prints
/// the namespace's objects and events (and whatever `body` registered to dump).
pub async fn with_temp_ns<F, Fut>(prefix: &str, body: F)
where
    F: FnOnce(Client, String) -> Fut,
    Fut: Future<Output = ()>,
{
    let client = client().await;
    install_crds(&client).await;
    let name = format!("tl-{prefix}-{:08x}", rand::random::<u32>());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
    }))
    .unwrap();
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    // The controller-manager creates each namespace's default ServiceAccount, which
    // pods need before they can be admitted.
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), &name);
    wait_for("default ServiceAccount", Duration::from_secs(30), || {
        let accounts = accounts.clone();
        async move { accounts.get_opt("default").await.ok().flatten().map(|_| ()) }
    })
    .await;

    let outcome = std::panic::AssertUnwindSafe(body(client.clone(), name.clone()))
        .catch_unwind()
        .await;
    if outcome.is_err() {
        dump_namespace(&name);
    }
    let _ = namespaces.delete(&name, &DeleteParams::background()).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// kubectl of the test control plane (built with it; its directory is recorded
/// next to the kubeconfig).
pub fn kubectl() -> Option<PathBuf> {
    let bin = std::fs::read_to_string(kubeconfig().with_file_name("bin-dir")).ok()?;
    Some(PathBuf::from(bin.trim()).join("kubectl"))
}

fn dump_namespace(ns: &str) {
    let Some(kubectl) = kubectl() else {
        return;
    };
    let output = Command::new(kubectl)
        .args(["--kubeconfig", kubeconfig().to_str().unwrap(), "-n", ns])
        .args(["get", "latencyexperiments,deployments,replicasets,statefulsets,pods,services,configmaps,secrets,networkpolicies,leases,events", "-o", "wide"])
        .output();
    if let Ok(output) = output {
        eprintln!(
            "--- state of namespace {ns}:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Polls `check` until it returns Some, or panics naming `what` after `timeout`.
pub async fn wait_for<T, Fut>(what: &str, timeout: Duration, mut check: impl FnMut() -> Fut) -> T
where
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The operator binary running against the test control plane, watching one
/// namespace, its log in a temporary file.
pub struct Operator {
    child: Option<Child>,
    pub admin: SocketAddr,
    pub identity: String,
    log: tempfile::NamedTempFile,
}

impl Operator {
    pub fn start(namespace: &str, identity: &str, extra: &[&str]) -> Self {
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut args: Vec<String> = [
            "--namespace",
            namespace,
            "--admin-listen",
            &admin.to_string(),
            "--identity",
            identity,
            "--lease-seconds",
            "3",
            "--log-format",
            "text",
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        args.extend(extra.iter().map(ToString::to_string));
        Self::spawn(&kubeconfig(), &args, &[], admin, identity)
    }

    /// Runs the operator with exactly `args` (it must listen on `admin`), as the
    /// user of `kubeconfig`, with `env` added.
    pub fn spawn(
        kubeconfig: &std::path::Path,
        args: &[String],
        env: &[(&str, &str)],
        admin: SocketAddr,
        identity: &str,
    ) -> Self {
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ticklab-operator"))
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,kube=warn")
            .envs(env.iter().copied())
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.reopen().unwrap())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap();
        Self {
            child: Some(child),
            admin,
            identity: identity.to_string(),
            log,
        }
    }

    /// SIGTERM, then wait for a clean exit; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "operator did not stop within 20 s of SIGTERM; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: a crash, no clean-up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        let mut text = String::new();
        let _ = std::fs::File::open(self.log.path()).and_then(|mut f| f.read_to_string(&mut text));
        text
    }

    /// One sample from the operator's /metrics, or None when unreachable/absent.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let body = reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        body.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- operator {} log:\n{}", self.identity, self.log());
        }
        self.kill();
    }
}

/// Reasons of the Events recorded for an object, oldest first.
pub async fn event_reasons(client: &Client, ns: &str, object: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let mut list: Vec<Event> = events
        .list(&ListParams::default().fields(&format!("involvedObject.name={object}")))
        .await
        .unwrap()
        .items;
    list.sort_by_key(|e| {
        e.event_time
            .as_ref()
            .map(|t| t.0)
            .or(e.first_timestamp.as_ref().map(|t| t.0))
    });
    list.into_iter().filter_map(|e| e.reason).collect()
}

impl Operator {
    /// Waits until the operator's `/readyz` answers 200: it has checked its CRDs and
    /// is configured, so from here on it is in the election (or reconciling). The
    /// binary starts cold, and its admin port may come up seconds after another
    /// replica's, so this is polled, never assumed.
    pub async fn wait_ready(&self, timeout: Duration) {
        let url = format!("http://{}/readyz", self.admin);
        wait_for(
            &format!("operator {} ready", self.identity),
            timeout,
            || {
                let url = url.clone();
                async move {
                    let response = reqwest::get(url).await.ok()?;
                    response.status().is_success().then_some(())
                }
            },
        )
        .await;
    }

    /// Polls `/metrics` until it serves `name` and returns its value: unlike
    /// [`Operator::metric`], an admin port not up yet is waited for, not read as
    /// "no value".
    pub async fn wait_metric(&self, name: &str, timeout: Duration) -> f64 {
        wait_for(
            &format!("{name} from operator {}", self.identity),
            timeout,
            || self.metric(name),
        )
        .await
    }
}

/// The repository's root.
pub fn repo() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where scripts/tools/packaging.sh installed Helm and the monitoring CRDs.
pub fn packaging_tools() -> PathBuf {
    PathBuf::from(std::env::var("TICKLAB_TEST_PACKAGING_TOOLS").expect(
        "TICKLAB_TEST_PACKAGING_TOOLS is not set: run the tests through scripts/test.sh \
         (scripts/tools/packaging.sh prints the directory)",
    ))
}

/// Runs a command to completion and returns its standard output; panics with all of
/// its output when it fails.
pub fn run(command: &mut Command) -> String {
    run_with_input(command, None)
}

/// [`run`], with `input` on its standard input.
pub fn run_with_input(command: &mut Command, input: Option<&str>) -> String {
    use std::io::Write;
    let mut child = command
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    if let Some(input) = input {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Helm, acting on the test cluster.
pub fn helm() -> Command {
    let mut command = Command::new(packaging_tools().join("bin/helm"));
    command.env("KUBECONFIG", kubeconfig());
    command
}

/// A Helm release of the chart, uninstalled when dropped (its cluster-scoped objects
/// outlive the test namespace otherwise).
pub struct Release {
    pub name: String,
    pub namespace: String,
}

impl Release {
    /// `helm install --wait` of the chart into `namespace` with `args` added: returns
    /// once the operator's pods are Ready.
    pub fn install(namespace: &str, args: &[&str]) -> Self {
        let name = format!("tl{:06x}", rand::random::<u32>() & 0xff_ffff);
        run(helm()
            .args(["install", &name])
            .arg(repo().join("charts/ticklab"))
            .args(["--namespace", namespace, "--wait", "--timeout", "240s"])
            .args(args));
        Self {
            name,
            namespace: namespace.to_string(),
        }
    }

    /// The operator's Deployment (and Lease) name.
    pub fn operator_name(&self) -> String {
        format!("{}-ticklab-operator", self.name)
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = helm()
            .args(["uninstall", &self.name, "--namespace", &self.namespace])
            .output();
    }
}

/// Waits until the experiment reports `phase`, and returns it.
pub async fn wait_phase(
    client: &Client,
    ns: &str,
    name: &str,
    phase: ticklab_crd::Phase,
    timeout: Duration,
) -> LatencyExperiment {
    let experiments: Api<LatencyExperiment> = Api::namespaced(client.clone(), ns);
    wait_for(&format!("{name} to be {phase:?}"), timeout, || {
        let experiments = experiments.clone();
        async move {
            let e = experiments.get_opt(name).await.ok()??;
            (e.status.as_ref()?.phase == Some(phase)).then_some(e)
        }
    })
    .await
}

/// The condition of `type_` in an experiment's status; panics naming it if absent.
pub fn condition<'a>(
    status: &'a ticklab_crd::LatencyExperimentStatus,
    type_: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {:?}", status.conditions))
}
