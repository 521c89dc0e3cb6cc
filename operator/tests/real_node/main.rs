//! ticklab end to end on the test cluster's real node (scripts/node.sh: kubelet,
//! containerd, runc, CNI, kube-proxy, CoreDNS): the chart installed with Helm, the
//! operator in a pod with its ServiceAccount, and experiments applied with kubectl
//! whose exchange and trader containers really run, talk through Services, recover
//! gaps, place orders and store trades in a MongoDB-wire server in a pod. Each test
//! has its own namespace (pods on the real node, restricted Pod Security), dumps
//! state and every pod's logs when it fails, and stops by itself.
#![allow(clippy::unwrap_used)]

#[path = "../support/mod.rs"]
mod support;

mod harness;
mod mirror;
mod recording;

use std::time::Duration;

use futures::FutureExt;
use harness::{
    DumpLogsOnFailure, Prometheus, Steps, component, deploy_ferretdb, example_experiments,
    install_chart, kubectl_cmd, pod_ip, pod_logs, pod_names, proxy_get, ready_pod, use_real_node,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client};
use serde_json::{Value, json};
use support::{Release, condition, run, run_with_input, wait_for, wait_phase, with_temp_ns};
use ticklab_crd::{LatencyExperiment, Phase, SloVerdict};

/// One test at a time on the real node: its two cores, and the scheduler's CPU
/// arithmetic (an experiment requests half a core), hold one test's pods; tests
/// side by side would leave pods Pending and measure each other's load.
static REAL_NODE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Long enough for the checks made while a run goes on (logs, scrapes, recent
/// trades); the example's 8 s can end before Prometheus has scraped twice on a
/// loaded machine.
const RUN: &str = "15s";

async fn experiment(client: &Client, ns: &str, name: &str) -> Option<LatencyExperiment> {
    Api::<LatencyExperiment>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .ok()
        .flatten()
}

/// Waits until a Running, ready pod of the experiment's component exists.
async fn wait_running(client: &Client, ns: &str, experiment: &str, what: &str) -> Pod {
    ready_pod(
        client,
        ns,
        &component(experiment, what),
        Duration::from_secs(180),
    )
    .await
}

/// The trader's `/stats`, read through the API server's service proxy.
async fn trader_stats(client: &Client, ns: &str, experiment: &str) -> Option<Value> {
    proxy_get(client, ns, &format!("{experiment}-trader"), 9190, "/stats")
        .await
        .ok()
}

/// Every line of the pods' logs is one JSON object with a timestamp and a level.
fn assert_json_logs(ns: &str, selector: &str) {
    let logs = pod_logs(ns, selector);
    let lines: Vec<&str> = logs.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "no logs from {selector}");
    for line in lines {
        let value: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a log line of {selector} is not JSON ({e}): {line}"));
        assert!(
            value.get("level").is_some() && value.get("timestamp").is_some(),
            "a log line of {selector} lacks a level or timestamp: {line}"
        );
    }
}

fn u(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("no {key} in {v}"))
}

/// Installs the chart with the real-node values into `ns` (the operator watching
/// `ns`), with FerretDB as its external MongoDB; returns once the operator pod is
/// Ready and holds the Lease.
async fn install(client: &Client, ns: &str, steps: &mut Steps) -> Release {
    use_real_node(client, ns).await;
    deploy_ferretdb(client, ns).await;
    steps.done("FerretDB ready");
    let release = install_chart(ns, &[]);
    steps.done("helm install --wait (operator Ready)");
    let operator = release.operator_name();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let operator_pod = pods
        .list(&ListParams::default().labels("app.kubernetes.io/component=operator"))
        .await
        .unwrap()
        .items
        .into_iter()
        .next()
        .expect("no operator pod after helm install --wait");
    let pod_name = operator_pod.metadata.name.clone().unwrap();
    assert_eq!(
        operator_pod.spec.as_ref().unwrap().node_name.as_deref(),
        Some(harness::NODE),
        "the operator pod runs on the real node"
    );
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    wait_for(
        "the operator pod to hold its Lease",
        Duration::from_secs(60),
        || {
            let leases = leases.clone();
            let operator = operator.clone();
            let pod_name = pod_name.clone();
            async move {
                let lease = leases.get_opt(&operator).await.ok()??;
                (lease.spec?.holder_identity? == pod_name).then_some(())
            }
        },
    )
    .await;
    steps.done("operator holds the Lease");
    release
}

fn apply(ns: &str, experiment: &Value) {
    run_with_input(
        kubectl_cmd().args(["-n", ns, "apply", "-f", "-"]),
        Some(&serde_json::to_string(experiment).unwrap()),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_runs_the_quickstart_over_udp_in_real_pods() {
    let _node = REAL_NODE.lock().await;
    with_temp_ns("real-udp", |client, ns| async move {
        let _logs = DumpLogsOnFailure(ns.clone());
        let mut steps = Steps::new();
        let _release = install(&client, &ns, &mut steps).await;
        let prometheus = Prometheus::start(&client, &ns);

        // The example file as a user applies it, with a longer run for the checks.
        // The tests' MongoDB (FerretDB on SQLite) writes about half as fast as the
        // feed; a buffer that holds the run lets it catch up, as a user would size it.
        let quickstart = example_experiments(
            "quickstart.yaml",
            json!({"duration": RUN, "trader": {"persistence": {"bufferTrades": 1_000_000}}}),
        )
            .remove("quickstart")
            .unwrap();
        apply(&ns, &quickstart);
        steps.done("kubectl apply");
        let exchange_pod = wait_running(&client, &ns, "quickstart", "exchange").await;
        let trader_pod = wait_running(&client, &ns, "quickstart", "trader").await;
        steps.done("exchange and trader pods Running and Ready");
        for pod in [&exchange_pod, &trader_pod] {
            assert_eq!(
                pod.spec.as_ref().unwrap().node_name.as_deref(),
                Some(harness::NODE)
            );
        }

        // The feed crosses the pod network through the trader's Service; the trader
        // answers through the API server's service proxy.
        wait_for("the first trade at the trader", Duration::from_secs(60), || async {
            let stats = trader_stats(&client, &ns, "quickstart").await?;
            (u(&stats, "received") > 0).then_some(())
        })
        .await;
        steps.done("first trade received");

        // While it runs: recent trades come from MongoDB, every pod logs JSON, and a
        // real Prometheus scrapes both services' /metrics.
        let recent = wait_for("50 recent trades from MongoDB", Duration::from_secs(30), || async {
            let recent = proxy_get(&client, &ns, "quickstart-trader", 9190, "/trades?limit=50")
                .await
                .ok()?;
            (recent["trades"].as_array()?.len() == 50).then_some(recent)
        })
        .await;
        assert_eq!(recent["source"], "mongodb", "{recent}");
        assert!(recent["trades"][0]["latencyMicros"].as_f64().unwrap() > 0.0);
        assert_json_logs(&ns, &component("quickstart", "exchange"));
        assert_json_logs(&ns, &component("quickstart", "trader"));
        assert_json_logs(&ns, "app.kubernetes.io/component=operator");
        for (metric, who) in [
            ("ticklab_exchange_trades_published_total", "exchange"),
            ("ticklab_trader_trades_received_total", "trader"),
        ] {
            let samples = prometheus
                .wait_for_samples(
                    &format!(r#"{metric}{{experiment="quickstart",component="{who}"}} > 0"#),
                    Duration::from_secs(60),
                )
                .await;
            assert_eq!(samples.len(), 1, "{samples:?}");
        }
        prometheus
            .wait_for_samples(r#"up{component=~"exchange|trader"} == 1"#, Duration::from_secs(30))
            .await;
        steps.done("logs, recent trades and scrapes checked");

        let completed =
            wait_phase(&client, &ns, "quickstart", Phase::Completed, Duration::from_secs(120))
                .await;
        steps.done("Completed");
        let status = completed.status.unwrap();
        let results = status.results.clone().unwrap();
        let completed_condition = condition(&status, "Completed");
        assert_eq!(
            completed_condition.reason, "FeedEnded",
            "the operator read the trader's final results through its Service name: {completed_condition:?}"
        );
        // 0.5% of packets dropped on purpose: gaps, every one recovered through the
        // retransmission Service.
        assert!(results.sent > 100_000, "{results:?}");
        assert!(results.gaps > 0 && results.recovered > 0, "{results:?}");
        assert_eq!(results.lost, 0, "{results:?}");
        assert_eq!(results.received + results.recovered, results.sent, "{results:?}");
        assert!(results.orders > 0 && results.fills > 0, "orders reached the order API: {results:?}");
        assert_eq!(results.timestamp_source, "kernel");
        assert!(results.feed_latency.as_ref().unwrap().count > 0);
        assert_eq!(results.slo_verdict, Some(SloVerdict::Met), "{results:?}");

        // The results were final when read: every trade received was written to the
        // MongoDB pod, or counted as not persisted; and what was written is there
        // exactly once.
        let persisted = results.persisted.unwrap();
        assert!(persisted > 0, "{results:?}");
        assert_eq!(
            persisted + results.not_persisted.unwrap(),
            results.sent,
            "{results:?}"
        );
        let ferretdb = pod_ip(&client, &ns, "app.kubernetes.io/name=ferretdb").await;
        let mongo = mongodb::Client::with_uri_str(format!("mongodb://{ferretdb}:27017/"))
            .await
            .unwrap();
        let trades = mongo
            .database("ticklab")
            .collection::<mongodb::bson::Document>("trades");
        let stored = std::sync::atomic::AtomicU64::new(0);
        let every_trade = async {
            wait_for("every trade stored", Duration::from_secs(60), || async {
                let count = trades
                    .count_documents(mongodb::bson::doc! {"experiment": "quickstart"})
                    .await
                    .ok()?;
                stored.store(count, std::sync::atomic::Ordering::Relaxed);
                assert!(count <= persisted, "{count} stored, {persisted} reported persisted");
                (count == persisted).then_some(())
            })
            .await;
        };
        if std::panic::AssertUnwindSafe(every_trade).catch_unwind().await.is_err() {
            panic!(
                "{} trades stored after 60 s, {persisted} reported persisted; results {results:?}",
                stored.load(std::sync::atomic::Ordering::Relaxed),
            );
        }

        // What a user scans: phase, p99 and verdict.
        let table = run(kubectl_cmd().args(["-n", &ns, "get", "lexp"]));
        let header = table.lines().next().unwrap();
        for column in ["PHASE", "P99", "VERDICT"] {
            assert!(header.contains(column), "{table}");
        }
        let row = table.lines().find(|l| l.starts_with("quickstart")).unwrap();
        assert!(row.contains("Completed") && row.contains("Met"), "{table}");
        let p99 = results.feed_latency.as_ref().unwrap().p99_micros;
        assert!(row.contains(&format!("{p99}")), "p99 {p99} not in {table}");

        // The run ended: exchange and trader scaled to zero, their pods gone.
        wait_for("exchange and trader pods gone", Duration::from_secs(60), || async {
            pod_names(&client, &ns, "ticklab.dev/experiment=quickstart")
                .await
                .is_empty()
                .then_some(())
        })
        .await;
        eprintln!("quickstart on the real node:\n{}", steps.report());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_and_websocket_run_in_real_pods_and_deleting_an_experiment_removes_its_pods() {
    let _node = REAL_NODE.lock().await;
    with_temp_ns("real-streams", |client, ns| async move {
        let _logs = DumpLogsOnFailure(ns.clone());
        let mut steps = Steps::new();
        let _release = install(&client, &ns, &mut steps).await;

        let mut transports = example_experiments("transports.yaml", json!({"duration": "10s"}));
        for name in ["transport-tcp", "transport-websocket"] {
            apply(&ns, &transports.remove(name).unwrap());
        }
        for name in ["transport-tcp", "transport-websocket"] {
            let completed = wait_phase(
                &client,
                &ns,
                name,
                Phase::Completed,
                Duration::from_secs(240),
            )
            .await;
            let status = completed.status.unwrap();
            let results = status.results.clone().unwrap();
            let reason = &condition(&status, "Completed").reason;
            assert_eq!(reason, "FeedEnded", "{name}: {results:?}");
            assert!(results.sent > 50_000, "{name}: {results:?}");
            assert_eq!(results.lost, 0, "{name}: {results:?}");
            assert_eq!(
                results.received + results.recovered,
                results.sent,
                "{name}: {results:?}"
            );
            assert_eq!(results.timestamp_source, "user", "{name}");
            assert!(
                results.orders > 0 && results.fills > 0,
                "{name}: {results:?}"
            );
        }
        steps.done("TCP and WebSocket runs Completed");

        // An experiment deleted while it runs takes its pods with it (owner
        // references, the garbage collector, the kubelet stopping the containers).
        let mut udp = transports.remove("transport-udp").unwrap();
        udp["spec"].as_object_mut().unwrap().remove("duration");
        apply(&ns, &udp);
        wait_running(&client, &ns, "transport-udp", "exchange").await;
        wait_running(&client, &ns, "transport-udp", "trader").await;
        run(kubectl_cmd().args(["-n", &ns, "delete", "lexp", "transport-udp", "--wait=true"]));
        wait_for(
            "the deleted experiment's pods gone",
            Duration::from_secs(120),
            || async {
                pod_names(&client, &ns, "ticklab.dev/experiment=transport-udp")
                    .await
                    .is_empty()
                    .then_some(())
            },
        )
        .await;
        steps.done("deleted experiment's pods gone");
        eprintln!("TCP and WebSocket on the real node:\n{}", steps.report());
    })
    .await;
}

/// A pod that asks `target`'s trader for `/healthz` through its Service's ClusterIP
/// (retrying `attempts` times, a second apart) as a pod of `experiment` (its label),
/// and whether it got a 200. busybox's `nc` with a hand-written request: its `wget`
/// crashes in an image with nothing else (a static glibc resolving names).
async fn probe(
    client: &Client,
    ns: &str,
    experiment: Option<&str>,
    target: &str,
    attempts: u32,
) -> bool {
    let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client.clone(), ns);
    let cluster_ip = services
        .get(&format!("{target}-trader"))
        .await
        .unwrap()
        .spec
        .unwrap()
        .cluster_ip
        .unwrap();
    let name = format!("probe-{:06x}", rand::random::<u32>() & 0xff_ffff);
    let labels = match experiment {
        Some(e) => json!({"ticklab.dev/experiment": e, "app.kubernetes.io/component": "probe"}),
        None => json!({"app.kubernetes.io/component": "probe"}),
    };
    let script = format!(
        "b=/bin/busybox; for i in $($b seq {attempts}); do \
         printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' | $b nc -w 2 {cluster_ip} 9190 | $b grep -q ' 200 ' && exit 0; \
         $b sleep 1; done; exit 1"
    );
    let url = format!("{target}'s trader ({cluster_ip}:9190)");
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "probe", "image": harness::probe_image(), "imagePullPolicy": "Never",
                "args": ["sh", "-c", script],
                "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}},
            }],
        },
    });
    apply(ns, &pod);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let phase = wait_for(
        &format!("probe {name} of {url} to finish"),
        // A pod's start on the one real node waits behind the other tests' load
        // (and a namespace still being torn down): generous, it is only a deadline.
        Duration::from_secs(180 + u64::from(attempts) * 4),
        || async {
            let phase = pods.get(&name).await.ok()?.status?.phase?;
            matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase)
        },
    )
    .await;
    let _ = pods.delete(&name, &Default::default()).await;
    phase == "Succeeded"
}

/// Waits until kube-router has a firewall chain for the pod at `ip`: from then on
/// its NetworkPolicies hold for traffic to it.
async fn wait_firewalled(ip: &str) {
    wait_for(
        &format!("kube-router's firewall for pod {ip}"),
        Duration::from_secs(60),
        || async {
            let rules = std::process::Command::new("iptables-save")
                .args(["-t", "filter"])
                .output()
                .ok()?;
            let rules = String::from_utf8_lossy(&rules.stdout);
            rules
                .lines()
                .any(|l| l.contains(&format!("-d {ip}/32")) && l.contains("KUBE-POD-FW-"))
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_policies_keep_experiments_apart_and_each_still_works() {
    let _node = REAL_NODE.lock().await;
    with_temp_ns("real-netpol", |client, ns| async move {
        let _logs = DumpLogsOnFailure(ns.clone());
        let mut steps = Steps::new();
        // The chart's default: the operator gives each experiment a NetworkPolicy.
        let _release = install(&client, &ns, &mut steps).await;
        let base = example_experiments("quickstart.yaml", json!({"duration": null}))
            .remove("quickstart")
            .unwrap();
        for name in ["desk-a", "desk-b"] {
            let mut e = base.clone();
            e["metadata"]["name"] = json!(name);
            e["spec"].as_object_mut().unwrap().remove("duration");
            e["spec"]["exchange"]["ratePerSecond"] = json!(2000);
            e["spec"]["trader"]["persistence"] = json!({"enabled": false});
            apply(&ns, &e);
        }
        for name in ["desk-a", "desk-b"] {
            wait_running(&client, &ns, name, "exchange").await;
            wait_running(&client, &ns, name, "trader").await;
        }
        let trader_b = pod_ip(&client, &ns, &component("desk-b", "trader")).await;
        let trader_a = pod_ip(&client, &ns, &component("desk-a", "trader")).await;
        wait_firewalled(&trader_a).await;
        wait_firewalled(&trader_b).await;
        steps.done("two experiments running, their traders firewalled");

        assert!(
            probe(&client, &ns, Some("desk-a"), "desk-a", 30).await,
            "a pod of desk-a reaches desk-a's trader"
        );
        assert!(
            !probe(&client, &ns, Some("desk-a"), "desk-b", 3).await,
            "a pod of desk-a must not reach desk-b's trader"
        );
        assert!(
            !probe(&client, &ns, None, "desk-a", 3).await,
            "a pod of no experiment must not reach desk-a's trader"
        );
        assert!(
            probe(&client, &ns, Some("desk-b"), "desk-b", 30).await,
            "a pod of desk-b reaches desk-b's trader"
        );
        steps.done("probes");

        // Each experiment still works behind its policy: the feed, retransmission
        // and orders flow, and the operator reads the trader's results.
        for name in ["desk-a", "desk-b"] {
            wait_for(
                &format!("{name}'s results in its status, trades flowing and recovered"),
                Duration::from_secs(60),
                || async {
                    let results = experiment(&client, &ns, name).await?.status?.results?;
                    (results.received > 5000 && results.recovered > 0 && results.orders > 0)
                        .then_some(())
                },
            )
            .await;
            let stats = trader_stats(&client, &ns, name).await.unwrap();
            assert_eq!(u(&stats, "lost"), 0, "{name}: {stats}");
        }
        steps.done("both experiments working");
        eprintln!("network policies on the real node:\n{}", steps.report());
    })
    .await;
}
