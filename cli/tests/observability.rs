//! The dashboards and alerts against real data: a real Prometheus (Debian's
//! package) scrapes a local `ticklab run` and an operator reconciling in the test
//! control plane, with the chart's alert rules loaded. Every query of every Grafana
//! dashboard (its variables resolved the way Grafana does, from label values) must
//! return data; every alert expression must evaluate, its signal (the side of its
//! threshold that measures) and every series it selects must return data, and the
//! alerts this run provokes for real must fire: a p99 bound no feed can meet, 5% of
//! feed packets dropped, a reconcile that keeps failing on a foreign immutable
//! ConfigMap. Metrics, dashboards and rules drift apart only by failing here.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, CustomResourceExt};
use promql_parser::parser::{self, Expr};
use serde_json::{Value, json};
use ticklab_crd::{LatencyExperiment, MirrorSession, RecordingSession};
use ticklab_operator::children::ChildSettings;
use ticklab_operator::controller::{self, Context};
use ticklab_operator::metrics::OperatorMetrics;
use ticklab_operator::results::{DEFAULT_STATS_URL, ResultsReader};
use tokio_util::sync::CancellationToken;

const EXPERIMENT: &str = "observability";
/// Alerts this run provokes for real, and one it must not.
const MUST_FIRE: [&str; 3] = [
    "TicklabFeedLatencySLOBreached",
    "TicklabFeedPacketLoss",
    "TicklabOperatorReconcileFailures",
];
const MUST_NOT_FIRE: [&str; 1] = ["TicklabOperatorNoLeader"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A process killed when the test ends, whatever way it ends.
struct Process(std::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The quickstart, made to provoke alerts: 5% of packets dropped (recovered), and
/// an SLO no feed meets.
fn experiment_file(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("manifests/examples/quickstart.yaml"))
        .unwrap()
        .replace("name: quickstart", &format!("name: {EXPERIMENT}"))
        .replace("dropPercent: 0.5", "dropPercent: 5")
        .replace("duration: 8s", "duration: 120s")
        .replace("p99Micros: 2000", "p99Micros: 0.001");
    assert!(text.contains("dropPercent: 5") && text.contains("p99Micros: 0.001"));
    // A recorder too, so the recording panels and alerts have data, and a mirror
    // session for the capture's.
    let text = format!(
        "{text}\n---\napiVersion: ticklab.dev/v1alpha1\nkind: RecordingSession\nmetadata:\n  name: {EXPERIMENT}\nspec:\n  experiment: {EXPERIMENT}\n\n---\napiVersion: ticklab.dev/v1alpha1\nkind: MirrorSession\nmetadata:\n  name: {EXPERIMENT}\nspec:\n  experiment: {EXPERIMENT}\n"
    );
    let path = dir.join("observability.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn start_local_run(file: &Path, ports: &Ports) -> Process {
    let recordings = file.with_file_name("recordings");
    let child = Command::new(env!("CARGO_BIN_EXE_ticklab"))
        .arg("run")
        .arg(file)
        .args(["--trader-port", &ports.trader.to_string()])
        .args(["--exchange-port", &ports.exchange.to_string()])
        .args(["--recorder-port", &ports.recorder.to_string()])
        .args(["--capture-port", &ports.capture.to_string()])
        .args(["--mirror-port", &ports.mirror.to_string()])
        .arg("--recordings-dir")
        .arg(&recordings)
        .args(["--output", "json"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Process(child)
}

/// The scrape targets' ports.
struct Ports {
    trader: u16,
    exchange: u16,
    recorder: u16,
    capture: u16,
    mirror: u16,
    replay_trader: u16,
    replay_exchange: u16,
    operator: u16,
}

/// A short recording (2 s, recorded by `ticklab run`), then `ticklab replay` of it
/// looped at ×1, so the replay panels have data.
fn start_replay(dir: &Path, ports: &Ports) -> Process {
    let file = dir.join("to-replay.yaml");
    let text = std::fs::read_to_string(repo().join("manifests/examples/quickstart.yaml"))
        .unwrap()
        .replace("duration: 8s", "duration: 2s");
    std::fs::write(
        &file,
        format!("{text}\n---\napiVersion: ticklab.dev/v1alpha1\nkind: RecordingSession\nmetadata:\n  name: short\nspec:\n  experiment: quickstart\n"),
    )
    .unwrap();
    let recordings = dir.join("short-recordings");
    let status = Command::new(env!("CARGO_BIN_EXE_ticklab"))
        .arg("run")
        .arg(&file)
        .arg("--recordings-dir")
        .arg(&recordings)
        .args(["--output", "json"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let recorded = std::fs::read_dir(recordings.join("short"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "pcap"))
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_ticklab"))
        .arg("replay")
        .arg(&recorded)
        .args(["--loop", "--name", EXPERIMENT])
        .args(["--trader-port", &ports.replay_trader.to_string()])
        .args(["--exchange-port", &ports.replay_exchange.to_string()])
        .args(["--output", "json", "--quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Process(child)
}

async fn kube_client() -> Client {
    let path = std::env::var("TICKLAB_TEST_KUBECONFIG").expect(
        "TICKLAB_TEST_KUBECONFIG is not set: run the tests through scripts/test.sh, which \
         starts a control plane for the operator",
    );
    let kc = kube::config::Kubeconfig::read_from(path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

async fn install_crds(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in [
        LatencyExperiment::crd(),
        RecordingSession::crd(),
        MirrorSession::crd(),
    ] {
        let name = crd.metadata.name.clone().unwrap();
        api.patch(
            &name,
            &PatchParams::apply("ticklab-tests").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let established = api
                .get(&name)
                .await
                .ok()
                .and_then(|c| c.status?.conditions)
                .is_some_and(|conditions| {
                    conditions
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                });
            if established {
                break;
            }
            assert!(Instant::now() < deadline, "CRD {name} not Established");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The operator in this process, reconciling one namespace of the test control
/// plane and serving /metrics on `admin`: one experiment it can reconcile, and one
/// whose ConfigMap name is taken by someone's immutable ConfigMap, so every
/// reconcile of it fails (a real failure, as the alert would see in a cluster).
async fn start_operator(client: Client, ns: &str, admin: SocketAddr, stop: CancellationToken) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
        )
        .await
        .unwrap();
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    config_maps
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "blocked-config"},
                "immutable": true,
                "data": {"owner": "someone else"},
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let experiments: Api<LatencyExperiment> = Api::namespaced(client.clone(), ns);
    for name in ["healthy", "blocked"] {
        let experiment: LatencyExperiment = serde_json::from_value(json!({
            "apiVersion": "ticklab.dev/v1alpha1",
            "kind": "LatencyExperiment",
            "metadata": {"name": name},
            "spec": {"exchange": {"symbols": ["EURUSD"], "ratePerSecond": 1000}},
        }))
        .unwrap();
        experiments
            .create(&PostParams::default(), &experiment)
            .await
            .unwrap();
    }

    let registry = prometheus::Registry::new();
    let metrics = OperatorMetrics::register(&registry).unwrap();
    // What main does when this replica leads.
    metrics.leader.set(1);
    let admin_state = ticklab_admin::AdminState::new(registry);
    admin_state.set_ready(true);
    let listener = ticklab_admin::bind(admin).await.unwrap();
    tokio::spawn(ticklab_admin::serve(
        listener,
        ticklab_admin::admin_router(admin_state),
        stop.clone(),
    ));
    let results = ResultsReader::new(DEFAULT_STATS_URL, Duration::from_secs(1)).unwrap();
    let ctx = Arc::new(Context::new(
        client,
        metrics,
        ChildSettings::default(),
        results,
        Some("observability-test".into()),
    ));
    tokio::spawn(controller::run(ctx, Some(ns.to_string()), stop));
}

/// Prometheus scraping every target each second, with the chart's alert rules. The
/// targets get the labels Kubernetes service discovery gives them in a cluster.
fn start_prometheus(dir: &Path, port: u16, ports: &Ports) -> Process {
    let rules = repo().join("charts/ticklab/rules/ticklab-alerts.yaml");
    let Ports {
        trader,
        exchange,
        recorder,
        capture,
        replay_trader,
        replay_exchange,
        operator,
        ..
    } = ports;
    let config = format!(
        r#"global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: ["{rules}"]
scrape_configs:
  - job_name: ticklab-experiments
    static_configs:
      - targets: ["127.0.0.1:{trader}"]
        labels: {{namespace: local, pod: {EXPERIMENT}-trader, container: trader, endpoint: api}}
      - targets: ["127.0.0.1:{exchange}"]
        labels: {{namespace: local, pod: {EXPERIMENT}-exchange, container: exchange, endpoint: admin}}
      - targets: ["127.0.0.1:{recorder}"]
        labels: {{namespace: local, pod: {EXPERIMENT}-recorder, container: recorder, endpoint: admin}}
      - targets: ["127.0.0.1:{capture}"]
        labels: {{namespace: local, pod: {EXPERIMENT}-capture, container: capture, endpoint: admin}}
      - targets: ["127.0.0.1:{replay_trader}"]
        labels: {{namespace: local, pod: {EXPERIMENT}-replay-trader, container: trader, endpoint: api}}
      - targets: ["127.0.0.1:{replay_exchange}"]
        labels: {{namespace: local, pod: {EXPERIMENT}-replay-exchange, container: exchange, endpoint: admin}}
  - job_name: ticklab-operator
    static_configs:
      - targets: ["127.0.0.1:{operator}"]
        labels: {{namespace: ticklab-system, pod: ticklab-operator-0, container: operator}}
"#,
        rules = rules.display()
    );
    let config_path = dir.join("prometheus.yml");
    std::fs::write(&config_path, config).unwrap();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--log.level=warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("cannot start prometheus: scripts/tools/apt-packages.sh installs it");
    Process(child)
}

struct Prometheus {
    http: reqwest::Client,
    base: String,
}

impl Prometheus {
    /// An instant query: the result vector, or the server's error.
    async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let response = self
            .http
            .get(format!("{}/api/v1/query", self.base))
            .query(&[("query", expr)])
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let body: Value = response.json().await.map_err(|e| e.to_string())?;
        if body["status"] != "success" {
            return Err(format!("{}: {}", body["errorType"], body["error"]));
        }
        match &body["data"]["result"] {
            Value::Array(items) => Ok(items.clone()),
            // A scalar result (vector(0) < 1 and such) is one value.
            other => Ok(vec![other.clone()]),
        }
    }

    async fn get(&self, path: &str) -> Option<Value> {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()
    }
}

/// Grafana's variable syntax filled in: `$name`, `${name}` and `${name:format}`,
/// with the built-ins a dashboard uses for windows.
fn substitute(expr: &str, vars: &BTreeMap<String, String>) -> String {
    let mut all = vars.clone();
    for (name, value) in [
        ("__rate_interval", "30s"),
        ("__interval", "15s"),
        ("__range", "1m"),
        ("__range_s", "60"),
        ("__interval_ms", "15000"),
    ] {
        all.insert(name.into(), value.into());
    }
    let mut out = expr.to_string();
    // Longest names first, so $__range_s is not read as $__range followed by "_s".
    let mut names: Vec<&String> = all.keys().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    for name in names {
        let value = &all[name];
        while let Some(start) = out.find(&format!("${{{name}")) {
            let end = start + out[start..].find('}').unwrap();
            let inner = &out[start + 2..end];
            if inner == name || inner.starts_with(&format!("{name}:")) {
                out.replace_range(start..=end, value);
            } else {
                break;
            }
        }
        out = out.replace(&format!("${name}"), value);
    }
    out
}

/// Every `expr` of every target of every panel, rows' nested panels included, with
/// the panel's title.
fn panel_queries(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(value: &Value, title: &str, out: &mut Vec<(String, String)>) {
        match value {
            Value::Object(map) => {
                let title = map.get("title").and_then(Value::as_str).unwrap_or(title);
                if let Some(Value::Array(targets)) = map.get("targets") {
                    for target in targets {
                        if let Some(expr) = target.get("expr").and_then(Value::as_str) {
                            out.push((title.to_string(), expr.to_string()));
                        }
                    }
                }
                for (key, child) in map {
                    if key != "templating" {
                        walk(child, title, out);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, title, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, "", &mut out);
    out
}

/// Resolves a dashboard's query variables as Grafana does: `label_values(SELECTOR,
/// LABEL)` evaluated, the first value taken (variables may depend on earlier ones).
async fn resolve_variables(
    prometheus: &Prometheus,
    dashboard: &Value,
    failures: &mut Vec<String>,
) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    let list = dashboard["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for variable in list {
        let name = variable["name"].as_str().unwrap_or_default().to_string();
        if variable["type"] != "query" {
            continue;
        }
        let query = match &variable["query"] {
            Value::String(q) => q.clone(),
            other => other["query"].as_str().unwrap_or_default().to_string(),
        };
        let query = substitute(&query, &vars);
        let Some(args) = query
            .trim()
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
        else {
            failures.push(format!(
                "variable {name}: {query:?} is not label_values(...)"
            ));
            continue;
        };
        let (selector, label) = match args.rsplit_once(',') {
            Some((selector, label)) => (selector.trim().to_string(), label.trim().to_string()),
            None => (
                format!("{{{}=~\".+\"}}", args.trim()),
                args.trim().to_string(),
            ),
        };
        let values: BTreeSet<String> = match prometheus.query(&selector).await {
            Ok(series) => series
                .iter()
                .filter_map(|s| s["metric"][&label].as_str().map(String::from))
                .collect(),
            Err(e) => {
                failures.push(format!("variable {name}: {selector}: {e}"));
                continue;
            }
        };
        match values.into_iter().next() {
            Some(value) => {
                vars.insert(name, value);
            }
            None => failures.push(format!("variable {name}: no values from {selector}")),
        }
    }
    vars
}

/// The side of a top-level threshold that measures (`A > B`: A); the whole
/// expression when it has no threshold.
fn signal(expr: &Expr) -> &Expr {
    match expr {
        Expr::Paren(p) => signal(&p.expr),
        Expr::Binary(b) if b.op.is_comparison_operator() => &b.lhs,
        other => other,
    }
}

/// Every series selector in an expression.
fn selectors(expr: &Expr, out: &mut Vec<String>) {
    match expr {
        Expr::VectorSelector(vs) => out.push(vs.to_string()),
        Expr::MatrixSelector(ms) => out.push(ms.vs.to_string()),
        Expr::Aggregate(a) => {
            selectors(&a.expr, out);
            if let Some(p) = &a.param {
                selectors(p, out);
            }
        }
        Expr::Unary(u) => selectors(&u.expr, out),
        Expr::Binary(b) => {
            selectors(&b.lhs, out);
            selectors(&b.rhs, out);
        }
        Expr::Paren(p) => selectors(&p.expr, out),
        Expr::Subquery(s) => selectors(&s.expr, out),
        Expr::Call(c) => c.args.args.iter().for_each(|a| selectors(a, out)),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

fn alert_rules() -> Vec<(String, String)> {
    let path = repo().join("charts/ticklab/rules/ticklab-alerts.yaml");
    let rules: Value = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .map(|r| {
            (
                r["alert"]
                    .as_str()
                    .or(r["record"].as_str())
                    .unwrap()
                    .to_string(),
                r["expr"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The chart's dashboards, in name order.
fn dashboard_files() -> Vec<PathBuf> {
    let dir = repo().join("charts/ticklab/dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no dashboards in {}", dir.display());
    files
}

/// One pass over everything; the problems found (empty: all good).
async fn check_everything(prometheus: &Prometheus) -> (Vec<String>, usize) {
    let mut failures = Vec::new();
    let mut checked = 0;

    for file in dashboard_files() {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let dashboard: Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let mut problems = Vec::new();
        let vars = resolve_variables(prometheus, &dashboard, &mut problems).await;
        for (panel, expr) in panel_queries(&dashboard) {
            checked += 1;
            let query = substitute(&expr, &vars);
            match prometheus.query(&query).await {
                Ok(result) if !result.is_empty() => {}
                Ok(_) => problems.push(format!("panel {panel:?}: no data: {query}")),
                Err(e) => problems.push(format!("panel {panel:?}: {e}: {query}")),
            }
        }
        failures.extend(problems.into_iter().map(|p| format!("{name}: {p}")));
    }

    for (alert, expr) in alert_rules() {
        let ast = match parser::parse(&expr) {
            Ok(ast) => ast,
            Err(e) => {
                failures.push(format!("alert {alert}: does not parse: {e}"));
                continue;
            }
        };
        checked += 1;
        match prometheus.query(&expr).await {
            Ok(result) if MUST_FIRE.contains(&alert.as_str()) && result.is_empty() => {
                failures.push(format!(
                    "alert {alert}: does not fire, though this run breaks it"
                ));
            }
            Ok(result) if MUST_NOT_FIRE.contains(&alert.as_str()) && !result.is_empty() => {
                failures.push(format!("alert {alert}: fires: {result:?}"));
            }
            Ok(_) => {}
            Err(e) => failures.push(format!("alert {alert}: {e}")),
        }
        let measured = signal(&ast).to_string();
        match prometheus.query(&measured).await {
            Ok(result) if !result.is_empty() => {}
            Ok(_) => failures.push(format!(
                "alert {alert}: its signal returns no data: {measured}"
            )),
            Err(e) => failures.push(format!("alert {alert}: {e}: {measured}")),
        }
        let mut series = Vec::new();
        selectors(&ast, &mut series);
        for selector in series {
            match prometheus.query(&selector).await {
                Ok(result) if !result.is_empty() => {}
                Ok(_) => failures.push(format!("alert {alert}: selects nothing: {selector}")),
                Err(e) => failures.push(format!("alert {alert}: {e}: {selector}")),
            }
        }
    }

    // Prometheus itself evaluates the rules: every one healthy, and the latency
    // alert on its way to firing (pending for its `for:`, or firing).
    match prometheus.get("/api/v1/rules").await {
        Some(rules) => {
            for group in rules["data"]["groups"]
                .as_array()
                .cloned()
                .unwrap_or_default()
            {
                for rule in group["rules"].as_array().cloned().unwrap_or_default() {
                    if rule["health"] != "ok" {
                        failures.push(format!(
                            "Prometheus: rule {} is {}: {}",
                            rule["name"], rule["health"], rule["lastError"]
                        ));
                    }
                }
            }
        }
        None => failures.push("Prometheus: /api/v1/rules unreachable".into()),
    }
    match prometheus
        .query(r#"ALERTS{alertname="TicklabFeedLatencySLOBreached", experiment="observability"}"#)
        .await
    {
        Ok(result) if !result.is_empty() => {}
        other => failures.push(format!(
            "Prometheus: no ALERTS for the latency SLO: {other:?}"
        )),
    }
    (failures, checked)
}

#[tokio::test]
async fn every_dashboard_query_and_alert_expression_returns_data_from_a_real_prometheus() {
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports {
        trader: free_port(),
        exchange: free_port(),
        recorder: free_port(),
        capture: free_port(),
        mirror: free_port(),
        replay_trader: free_port(),
        replay_exchange: free_port(),
        operator: free_port(),
    };
    let prometheus_port = free_port();

    let client = kube_client().await;
    install_crds(&client).await;
    let ns = format!("tl-obs-{:08x}", rand_suffix());
    let stop = CancellationToken::new();
    start_operator(
        client.clone(),
        &ns,
        SocketAddr::from(([127, 0, 0, 1], ports.operator)),
        stop.clone(),
    )
    .await;
    let _replay = start_replay(dir.path(), &ports);
    let _run = start_local_run(&experiment_file(dir.path()), &ports);
    let _prometheus_process = start_prometheus(dir.path(), prometheus_port, &ports);
    let prometheus = Prometheus {
        http: reqwest::Client::new(),
        base: format!("http://127.0.0.1:{prometheus_port}"),
    };

    // Checked until everything holds (rates need two scrapes, the failing reconcile
    // its retries), or for at most 90 s; then the last pass's problems are the verdict.
    let deadline = Instant::now() + Duration::from_secs(90);
    let (failures, checked) = loop {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (failures, checked) = check_everything(&prometheus).await;
        if failures.is_empty() || Instant::now() > deadline {
            break (failures, checked);
        }
    };
    stop.cancel();
    let _ = Api::<Namespace>::all(client)
        .delete(&ns, &DeleteParams::background())
        .await;
    let log = std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
    assert!(
        failures.is_empty(),
        "{} of {checked} checks failed:\n{}\n--- prometheus log:\n{log}",
        failures.len(),
        failures.join("\n")
    );
    assert!(checked >= 20, "only {checked} expressions checked");
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        ^ std::process::id()
}

/// What Grafana needs to load the dashboards the way they are meant (no Prometheus
/// needed): a unique uid and title, a `datasource` variable that every panel, target
/// and query variable uses (so they follow whichever Prometheus the user picks),
/// unique panel ids, unique refIds per panel, panels inside the 24-column grid and
/// not on top of one another, units on every panel that plots values.
#[test]
fn dashboards_are_well_formed_for_grafana() {
    let files = dashboard_files();
    assert!(
        files.len() >= 3,
        "experiment, overview and operator dashboards"
    );
    let mut uids = BTreeSet::new();
    let mut titles = BTreeSet::new();
    let mut problems = Vec::new();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let d: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap())
            .unwrap_or_else(|e| panic!("{name}: not JSON: {e}"));
        let mut problem = |p: String| problems.push(format!("{name}: {p}"));
        let uid = d["uid"].as_str().unwrap_or_default();
        if uid.is_empty() || uid.len() > 40 || !uids.insert(uid.to_string()) {
            problem(format!("uid {uid:?} missing, longer than 40 or not unique"));
        }
        if !titles.insert(d["title"].as_str().unwrap_or_default().to_string()) {
            problem("title missing or not unique".into());
        }
        if d["schemaVersion"].as_u64().unwrap_or(0) < 39 {
            problem("schemaVersion below 39 (Grafana 10.4)".into());
        }
        let variables = d["templating"]["list"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !variables.iter().any(|v| {
            v["name"] == "datasource" && v["type"] == "datasource" && v["query"] == "prometheus"
        }) {
            problem("no `datasource` variable of type prometheus".into());
        }
        for v in variables.iter().filter(|v| v["type"] == "query") {
            if v["datasource"]["uid"] != "${datasource}" {
                problem(format!(
                    "variable {} does not use ${{datasource}}",
                    v["name"]
                ));
            }
        }

        let mut ids = BTreeSet::new();
        let mut cells: BTreeMap<(u64, u64), String> = BTreeMap::new();
        let panels = d["panels"].as_array().cloned().unwrap_or_default();
        assert!(!panels.is_empty(), "{name}: no panels");
        for panel in &panels {
            let title = panel["title"].as_str().unwrap_or_default().to_string();
            if !ids.insert(panel["id"].as_u64().unwrap_or(0)) || panel["id"].as_u64().is_none() {
                problem(format!("panel {title:?}: id missing or not unique"));
            }
            let g = &panel["gridPos"];
            let (x, y, w, h) = (
                g["x"].as_u64().unwrap_or(99),
                g["y"].as_u64().unwrap_or(0),
                g["w"].as_u64().unwrap_or(0),
                g["h"].as_u64().unwrap_or(0),
            );
            if w == 0 || h == 0 || x + w > 24 {
                problem(format!(
                    "panel {title:?}: gridPos {g} outside the 24-column grid"
                ));
            }
            let mut overlapped = BTreeSet::new();
            for cx in x..x + w {
                for cy in y..y + h {
                    if let Some(other) = cells.insert((cx, cy), title.clone()) {
                        overlapped.insert(other);
                    }
                }
            }
            for other in overlapped {
                problem(format!("panel {title:?} overlaps {other:?}"));
            }
            if panel["type"] == "row" {
                continue;
            }
            if panel["description"].as_str().unwrap_or_default().is_empty() {
                problem(format!(
                    "panel {title:?}: no description (what it shows, how it is measured)"
                ));
            }
            if panel["datasource"]["uid"] != "${datasource}" {
                problem(format!(
                    "panel {title:?}: datasource is not ${{datasource}}"
                ));
            }
            let targets = panel["targets"].as_array().cloned().unwrap_or_default();
            if targets.is_empty() {
                problem(format!("panel {title:?}: no queries"));
            }
            let mut refs = BTreeSet::new();
            for t in &targets {
                if !refs.insert(t["refId"].as_str().unwrap_or_default().to_string()) {
                    problem(format!("panel {title:?}: refId missing or repeated"));
                }
                if t["datasource"]["uid"] != "${datasource}" {
                    problem(format!(
                        "panel {title:?}: a query's datasource is not ${{datasource}}"
                    ));
                }
                if let Err(e) = parser::parse(&substitute(
                    t["expr"].as_str().unwrap_or_default(),
                    &BTreeMap::from([
                        ("namespace".to_string(), "ns".to_string()),
                        ("experiment".to_string(), "exp".to_string()),
                    ]),
                )) {
                    problem(format!("panel {title:?}: query does not parse: {e}"));
                }
            }
            let plots_values = matches!(panel["type"].as_str(), Some("timeseries" | "stat"));
            if plots_values && panel["fieldConfig"]["defaults"]["unit"].as_str().is_none() {
                problem(format!("panel {title:?}: no unit"));
            }
            if panel["type"] == "heatmap" && targets.iter().any(|t| t["format"] != "heatmap") {
                problem(format!(
                    "panel {title:?}: heatmap query not in heatmap format"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
