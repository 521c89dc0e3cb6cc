//! `ticklab-operator-bench`: measures the operator against a running control plane.
//! 1. Apply -> all children: creates experiments one at a time and times from the
//!    create call until every child (ConfigMap, 2 Deployments, 3 Services,
//!    StatefulSet, Secret) is seen by a watch; prints p50/p90/max.
//! 2. Memory: creates many experiments, waits until all are Running and the operator
//!    has settled, and prints the operator's resident memory (VmRSS).
//!
//! Usage: ticklab-operator-bench --operator PATH [--latency-runs 50] [--experiments 200]
//! (KUBECONFIG selects the cluster; the bench starts and stops the operator itself).

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use ticklab_crd::{LatencyExperiment, Phase};

#[derive(Parser)]
struct Args {
    /// The operator binary to measure.
    #[arg(long)]
    operator: String,
    /// Experiments created one at a time for the apply -> children latency.
    #[arg(long, default_value_t = 50)]
    latency_runs: usize,
    /// Experiments alive at once for the memory figure.
    #[arg(long, default_value_t = 200)]
    experiments: usize,
}

const CHILDREN_PER_EXPERIMENT: usize = 8;

type Seen = Arc<Mutex<HashMap<String, Instant>>>;

fn watch_children<K>(client: &Client, ns: &str, seen: &Seen)
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let seen = seen.clone();
    tokio::spawn(async move {
        let config =
            watcher::Config::default().labels("app.kubernetes.io/managed-by=ticklab-operator");
        let mut stream = watcher(api, config).applied_objects().boxed();
        while let Some(Ok(object)) = stream.next().await {
            let now = Instant::now();
            let key = format!("{}/{}", K::kind(&()), object.name_any());
            seen.lock()
                .map(|mut s| s.entry(key).or_insert(now).to_owned())
                .ok();
        }
    });
}

fn experiment(name: &str) -> anyhow::Result<LatencyExperiment> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "ticklab.dev/v1alpha1",
        "kind": "LatencyExperiment",
        "metadata": {"name": name},
        "spec": {"exchange": {"symbols": ["EURUSD", "BTCUSD"], "ratePerSecond": 10000}},
    }))?)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = Client::try_default().await?;
    let ns = format!("tl-bench-{:06x}", rand::random::<u32>() & 0xFF_FFFF);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": ns}}))?,
        )
        .await?;
    let result = run(&args, &client, &ns).await;
    namespaces
        .delete(&ns, &DeleteParams::background())
        .await
        .ok();
    result
}

async fn run(args: &Args, client: &Client, ns: &str) -> anyhow::Result<()> {
    let mut operator = Command::new(&args.operator)
        .args([
            "--namespace",
            ns,
            "--admin-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", args.operator))?;
    let pid = operator.id();
    let outcome = measure(args, client, ns, pid).await;
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = operator.wait();
    outcome
}

async fn measure(args: &Args, client: &Client, ns: &str, pid: u32) -> anyhow::Result<()> {
    let seen: Seen = Arc::default();
    watch_children::<ConfigMap>(client, ns, &seen);
    watch_children::<Deployment>(client, ns, &seen);
    watch_children::<Service>(client, ns, &seen);
    watch_children::<StatefulSet>(client, ns, &seen);
    watch_children::<Secret>(client, ns, &seen);
    let experiments: Api<LatencyExperiment> = Api::namespaced(client.clone(), ns);
    // Let the operator start, take the Lease and list (an empty namespace).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_rss = rss_kib(pid)?;

    let mut latencies = Vec::new();
    for i in 0..args.latency_runs {
        let name = format!("lat-{i}");
        let start = Instant::now();
        experiments
            .create(&PostParams::default(), &experiment(&name)?)
            .await?;
        let deadline = start + Duration::from_secs(30);
        loop {
            let done = {
                let seen = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                let mine: Vec<&Instant> = seen
                    .iter()
                    .filter(|(k, _)| {
                        k.split('/')
                            .nth(1)
                            .is_some_and(|n| n.starts_with(&format!("{name}-")))
                    })
                    .map(|(_, t)| t)
                    .collect();
                (mine.len() == CHILDREN_PER_EXPERIMENT)
                    .then(|| mine.into_iter().max().copied())
                    .flatten()
            };
            if let Some(last) = done {
                latencies.push(last - start);
                break;
            }
            if Instant::now() > deadline {
                bail!("{name}: children not all created within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    latencies.sort();
    println!(
        "apply -> all {CHILDREN_PER_EXPERIMENT} children, {} experiments one at a time: p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms",
        latencies.len(),
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.9).as_secs_f64() * 1e3,
        latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
    );

    let total = args.experiments.max(args.latency_runs);
    for i in args.latency_runs..total {
        experiments
            .create(&PostParams::default(), &experiment(&format!("mem-{i}"))?)
            .await?;
    }
    let start = Instant::now();
    loop {
        let list = experiments.list(&ListParams::default()).await?;
        let running = list
            .items
            .iter()
            .filter(|e| e.status.as_ref().and_then(|s| s.phase) == Some(Phase::Running))
            .count();
        if running == total {
            break;
        }
        if start.elapsed() > Duration::from_secs(600) {
            bail!("only {running} of {total} experiments Running after 10 min");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let all_running = start.elapsed();
    // Steady state: every experiment is re-read every few seconds for results.
    let mut samples = Vec::new();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        samples.push(rss_kib(pid)?);
    }
    let peak = samples.iter().copied().max().unwrap_or(0);
    println!(
        "operator resident memory: idle {:.1} MiB; with {total} experiments Running (all Running {:.1} s after the last create): {:.1} MiB (max of 10 samples over 20 s)",
        idle_rss as f64 / 1024.0,
        all_running.as_secs_f64(),
        peak as f64 / 1024.0,
    );
    Ok(())
}
