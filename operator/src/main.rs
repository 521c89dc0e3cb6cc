//! `ticklab-operator`: checks that ticklab's CRDs are installed, serves `/metrics`,
//! `/healthz` and `/readyz`, joins the leader election, and reconciles
//! LatencyExperiments and RecordingSessions while it leads. SIGTERM stops it cleanly
//! and hands the Lease to a standby at once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use ticklab_admin::{AdminState, LogFormat};
use ticklab_crd::SecretKeySelector;
use ticklab_operator::children::{ChildSettings, IsolationSettings};
use ticklab_operator::controller::{self, Context};
use ticklab_operator::leader::{Election, LeaseSettings};
use ticklab_operator::metrics::OperatorMetrics;
use ticklab_operator::mirror::capture_api::{CaptureApi, DEFAULT_CAPTURE_URL};
use ticklab_operator::mirror::controller as mirror_controller;
use ticklab_operator::recording::build::RecordingSettings;
use ticklab_operator::recording::controller as recording_controller;
use ticklab_operator::recording::recorder_api::{DEFAULT_RECORDER_URL, RecorderApi};
use ticklab_operator::results::{DEFAULT_STATS_URL, ResultsReader};
use ticklab_operator::startup;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

#[derive(Parser, Debug)]
#[command(
    name = "ticklab-operator",
    version,
    about = "Reconciles ticklab LatencyExperiments and RecordingSessions"
)]
struct Args {
    /// Address of the admin port (/metrics, /healthz, /readyz).
    #[arg(long, env = "TICKLAB_ADMIN_LISTEN", default_value = "[::]:8080")]
    admin_listen: SocketAddr,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "TICKLAB_WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Image of the exchange and trader pods.
    #[arg(long, env = "TICKLAB_IMAGE", default_value_t = ChildSettings::default().image)]
    image: String,
    /// Pull policy of that image.
    #[arg(long, env = "TICKLAB_IMAGE_PULL_POLICY", default_value = "IfNotPresent",
          value_parser = ["Always", "IfNotPresent", "Never"])]
    image_pull_policy: String,
    /// Image of operator-managed MongoDB.
    #[arg(long, env = "TICKLAB_MONGODB_IMAGE", default_value_t = ChildSettings::default().mongodb_image)]
    mongodb_image: String,
    /// Where a trader's /stats is; {name} and {namespace} are filled in.
    #[arg(long, env = "TICKLAB_STATS_URL", default_value = DEFAULT_STATS_URL)]
    stats_url: String,
    /// Where a recorder's /recording is (the toggle and its status); {name} (the
    /// RecordingSession) and {namespace} are filled in.
    #[arg(long, env = "TICKLAB_RECORDER_URL", default_value = DEFAULT_RECORDER_URL)]
    recorder_url: String,
    /// Where a capture's /report is; {name} (the MirrorSession) and {namespace} are
    /// filled in.
    #[arg(long, env = "TICKLAB_CAPTURE_URL", default_value = DEFAULT_CAPTURE_URL)]
    capture_url: String,
    /// StorageClass of the recorders' volumes (default: the cluster's default class).
    #[arg(long, env = "TICKLAB_RECORDING_STORAGE_CLASS")]
    recording_storage_class: Option<String>,
    /// Take part in leader election (turn off only when exactly one replica runs).
    #[arg(long, env = "TICKLAB_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Name of the leader Lease.
    #[arg(long, env = "TICKLAB_LEASE_NAME", default_value = "ticklab-operator")]
    lease_name: String,
    /// Namespace of the leader Lease (default: the operator's namespace, else the
    /// watched namespace, else "default").
    #[arg(long, env = "TICKLAB_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Namespace the operator's pods run in (set from the downward API in a cluster).
    #[arg(long, env = "POD_NAMESPACE")]
    operator_namespace: Option<String>,
    /// Give each experiment a NetworkPolicy that admits only its own pods, the
    /// operator, and metrics scrapers (needs the operator's namespace).
    #[arg(long, env = "TICKLAB_NETWORK_POLICIES", default_value_t = false, action = clap::ArgAction::Set)]
    network_policies: bool,
    /// Labels of the namespaces allowed to scrape experiment metrics through those
    /// NetworkPolicies, as "key=value,key=value"; empty: every namespace.
    #[arg(long, env = "TICKLAB_METRICS_NAMESPACE_SELECTOR",
          default_value = "kubernetes.io/metadata.name=monitoring",
          value_parser = parse_labels)]
    metrics_namespace_selector: BTreeMap<String, String>,
    /// A Secret (in each experiment's namespace) with the URI of an external MongoDB,
    /// used by experiments that persist trades without naming their own; the
    /// operator then runs no MongoDB for them.
    #[arg(long, env = "TICKLAB_MONGODB_URI_SECRET")]
    mongodb_uri_secret: Option<String>,
    /// The key in that Secret.
    #[arg(long, env = "TICKLAB_MONGODB_URI_SECRET_KEY", default_value = "uri")]
    mongodb_uri_secret_key: String,
    /// Seconds a leader may go without renewing before a standby takes over.
    #[arg(long, env = "TICKLAB_LEASE_SECONDS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(2..=300))]
    lease_seconds: u64,
    /// This replica's identity in the election (default: pod name, else host and pid).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Log format.
    #[arg(long, env = "TICKLAB_LOG_FORMAT", default_value = "json", value_parser = ["json", "text"])]
    log_format: String,
}

/// "k=v,k2=v2" into labels; each key and value must be a valid label part.
fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?} is not key=value"))?;
        let (key, value) = (key.trim(), value.trim());
        let valid = |s: &str| {
            s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        };
        if key.is_empty() || !valid(key) || !valid(value) {
            return Err(format!("{pair:?} is not a valid label key=value"));
        }
        labels.insert(key.to_string(), value.to_string());
    }
    Ok(labels)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let format = if args.log_format == "text" {
        LogFormat::Text
    } else {
        LogFormat::Json
    };
    ticklab_admin::init_tracing(format, "info,kube=warn");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        // The operator waits on the network; two workers are plenty and keep the
        // resident memory small.
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("ticklab-operator: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("ticklab-operator: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let client = kube::Client::try_default().await.context(
        "cannot configure a Kubernetes client (KUBECONFIG or in-cluster service account)",
    )?;
    startup::check_crds(&client, args.namespace.as_deref()).await?;

    let registry = prometheus::Registry::new();
    let metrics = OperatorMetrics::register(&registry).context("cannot register metrics")?;
    let admin = AdminState::new(registry);
    let shutdown = CancellationToken::new();
    ticklab_admin::cancel_on_signal(shutdown.clone());
    let listener = ticklab_admin::bind(args.admin_listen).await?;
    let admin_addr = listener
        .local_addr()
        .context("admin listener has no address")?;
    let admin_server = tokio::spawn(ticklab_admin::serve(
        listener,
        ticklab_admin::admin_router(admin.clone()),
        shutdown.clone(),
    ));
    info!(%admin_addr, namespace = ?args.namespace, "ticklab-operator started");

    let network_policy = match (args.network_policies, &args.operator_namespace) {
        (false, _) => None,
        (true, Some(namespace)) => Some(IsolationSettings {
            operator_namespace: namespace.clone(),
            metrics_namespace_labels: args.metrics_namespace_selector.clone(),
        }),
        (true, None) => anyhow::bail!(
            "--network-policies needs the operator's namespace: set --operator-namespace or POD_NAMESPACE"
        ),
    };
    let settings = ChildSettings {
        image: args.image.clone(),
        image_pull_policy: args.image_pull_policy.clone(),
        mongodb_image: args.mongodb_image.clone(),
        default_mongodb_secret: args
            .mongodb_uri_secret
            .clone()
            .map(|name| SecretKeySelector {
                name,
                key: args.mongodb_uri_secret_key.clone(),
            }),
        network_policy,
    };
    let results = ResultsReader::new(&args.stats_url, Duration::from_secs(2))
        .context("cannot build the HTTP client")?;
    let recorder_api = RecorderApi::new(&args.recorder_url, Duration::from_secs(2))
        .context("cannot build the HTTP client")?;
    let capture_api = CaptureApi::new(&args.capture_url, Duration::from_secs(2))
        .context("cannot build the HTTP client")?;
    let recording = RecordingSettings {
        storage_class_name: args
            .recording_storage_class
            .clone()
            .filter(|class| !class.is_empty()),
    };
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let ctx = Arc::new(Context::new(
        client.clone(),
        metrics.clone(),
        settings,
        results,
        Some(identity.clone()),
    ));
    // Ready means "configured and serving": a standby is ready too, so a rollout of
    // two replicas does not stall waiting for the one that never leads.
    admin.set_ready(true);

    let controllers = |stop: CancellationToken| {
        let experiments = controller::run(ctx.clone(), args.namespace.clone(), stop.clone());
        let recordings = recording_controller::run(
            ctx.clone(),
            recording.clone(),
            recorder_api.clone(),
            args.namespace.clone(),
            stop.clone(),
        );
        let mirrors = mirror_controller::run(
            ctx.clone(),
            capture_api.clone(),
            args.namespace.clone(),
            stop,
        );
        async move {
            tokio::join!(experiments, recordings, mirrors);
        }
    };

    if !args.leader_election {
        metrics.leader.set(1);
        controllers(shutdown.clone()).await;
        shutdown.cancel();
        let _ = admin_server.await;
        return Ok(());
    }

    let lease = LeaseSettings {
        name: args.lease_name.clone(),
        namespace: args
            .lease_namespace
            .clone()
            .or_else(|| args.operator_namespace.clone())
            .or_else(|| args.namespace.clone())
            .unwrap_or_else(|| "default".to_string()),
        identity: identity.clone(),
        duration: Duration::from_secs(args.lease_seconds),
    };
    let mut election = Election::start(client, &lease).await.with_context(|| {
        format!(
            "cannot join the leader election on Lease {}/{}",
            lease.namespace, lease.name
        )
    })?;
    info!(lease = %lease.name, %identity, "waiting to lead");
    let leading = tokio::select! {
        leading = election.wait_until_leading() => leading,
        () = shutdown.cancelled() => false,
    };
    let mut lost = false;
    if leading {
        info!(%identity, "leading: reconciling");
        metrics.leader.set(1);
        let stop = shutdown.child_token();
        let controller = tokio::spawn(controllers(stop.clone()));
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = election.lost() => {
                lost = true;
                error!("lost the leader Lease; stopping so that only one replica reconciles");
            }
        }
        stop.cancel();
        let _ = controller.await;
        metrics.leader.set(0);
    }
    election.release().await;
    shutdown.cancel();
    let _ = admin_server.await;
    if lost {
        anyhow::bail!("lost the leader Lease");
    }
    info!("stopped");
    Ok(())
}
