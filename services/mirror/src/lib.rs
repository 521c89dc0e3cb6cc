//! ticklab's mirror: what AWS VPC Traffic Mirroring does for an ENI, done for a pod.
//! It captures the pod's interface with an AF_PACKET socket (kernel timestamps),
//! keeps the frames the session's filter accepts, truncates them to the session's
//! packet length, and sends each in VXLAN to the capture service with the capture
//! time in ticklab's trailer ([`ticklab_capture::vxlan`]), so the capture measures
//! latency at the pod rather than on arrival.
//!
//! Needs CAP_NET_RAW (and nothing else). Its own VXLAN packets are never mirrored.

#![forbid(unsafe_code)]

pub mod capture;
pub mod filter;
pub mod metrics;

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use ticklab_admin::AdminState;
use ticklab_crd::mirror_session::FilterRule;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::metrics::MirrorMetrics;

/// Everything the mirror needs; the operator renders it from the MirrorSession.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MirrorConfig {
    /// The MirrorSession (logs, metrics).
    pub session: String,
    /// The experiment whose pod is mirrored (logs, metrics).
    pub experiment: String,
    /// "host:port" of the capture service's VXLAN port.
    pub capture: String,
    pub vni: u32,
    /// Interface to capture; absent: every interface but loopback (in a pod, its
    /// network interface).
    #[serde(default)]
    pub interface: Option<String>,
    #[serde(default)]
    pub filter: Vec<FilterRule>,
    /// Bytes of each frame to send (AWS PacketLength); absent: whole frames.
    #[serde(default)]
    pub packet_length: Option<u32>,
    /// On loopback every packet shows twice (sent and received) and has no
    /// direction of its own: the mirror keeps the sent copy and takes the direction
    /// from these, the ports the mirrored process listens on...
    #[serde(default)]
    pub local_ports: Vec<u16>,
    /// ...and the ports of the servers it connects to. A loopback packet touching
    /// neither is not the mirrored process's and is skipped. Loopback cannot tell
    /// processes apart: list only peer ports no other local process uses.
    #[serde(default)]
    pub peer_ports: Vec<u16>,
    /// `/metrics`, `/healthz`, `/readyz`.
    pub admin_listen: SocketAddr,
    /// End when the capture's name stops resolving for [`GONE_AFTER`]: an
    /// ephemeral container cannot be removed from its pod, so when the session is
    /// deleted (and with it the capture's Service) the mirror ends by itself.
    #[serde(default)]
    pub stop_when_capture_gone: bool,
    /// The capture's `POST /mirror`: the mirror sends its counts there every
    /// [`REPORT_EVERY`], so the capture (one scrape target per session) exports
    /// them; an ephemeral container has no port a pod monitor could scrape.
    #[serde(default)]
    pub report_url: Option<String>,
}

/// How often the mirror sends its counts to the capture.
pub const REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// How long the capture's name must fail to resolve before a mirror that follows
/// its session ends.
pub const GONE_AFTER: std::time::Duration = std::time::Duration::from_secs(30);
const RESOLVE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot open a packet socket: {0} (the mirror needs the NET_RAW capability: run it as root or with CAP_NET_RAW)"
    )]
    Socket(#[source] nix::Error),
    #[error("no interface named {0:?}")]
    Interface(String),
    #[error("cannot reach the capture service {target}: {problem}")]
    Capture { target: String, problem: String },
    #[error(transparent)]
    Admin(#[from] ticklab_admin::Error),
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot start the capture thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("the capture thread stopped: {0}")]
    ThreadDied(String),
    #[error("a mirror task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Counts of a finished run.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MirrorReport {
    pub captured: u64,
    pub mirrored: u64,
    pub filtered: u64,
    /// The mirror's own VXLAN datagrams.
    #[serde(default)]
    pub own: u64,
    /// Loopback's second copy of each packet.
    #[serde(default)]
    pub duplicate: u64,
    /// Another interface's frames, or on loopback another process's.
    #[serde(default)]
    pub not_target: u64,
    pub truncated: u64,
    pub send_errors: u64,
    pub kernel_drops: u64,
}

pub struct MirrorHandle {
    pub admin_addr: SocketAddr,
    pub metrics: MirrorMetrics,
    thread: std::thread::JoinHandle<Result<()>>,
    http: JoinHandle<ticklab_admin::Result<()>>,
    reporter: Option<JoinHandle<()>>,
    stop: CancellationToken,
}

/// Opens the packet socket and the socket to the capture service, then captures
/// until `shutdown`.
pub async fn start(
    config: MirrorConfig,
    registry: prometheus::Registry,
    shutdown: CancellationToken,
) -> Result<MirrorHandle> {
    let metrics = MirrorMetrics::register(&registry)?;
    let admin = AdminState::new(registry);
    let target = tokio::net::lookup_host(&config.capture)
        .await
        .map_err(|e| Error::Capture {
            target: config.capture.clone(),
            problem: e.to_string(),
        })?
        .next()
        .ok_or_else(|| Error::Capture {
            target: config.capture.clone(),
            problem: "no address".into(),
        })?;
    let mirror = capture::Mirror::open(&config, target, metrics.clone())?;
    let listener = ticklab_admin::bind(config.admin_listen).await?;
    let admin_addr = listener
        .local_addr()
        .map_err(|source| ticklab_admin::Error::Bind {
            addr: config.admin_listen,
            source,
        })?;
    let stop = shutdown.child_token();
    let thread = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("mirror".into())
            .spawn(move || mirror.run(&stop))
            .map_err(Error::Thread)?
    };
    if config.stop_when_capture_gone {
        tokio::spawn(end_with_capture(config.capture.clone(), stop.clone()));
    }
    let reporter = config
        .report_url
        .clone()
        .map(|url| tokio::spawn(report_to_capture(url, metrics.clone(), stop.clone())));
    admin.set_ready(true);
    let http = tokio::spawn(ticklab_admin::serve(
        listener,
        ticklab_admin::admin_router(admin),
        stop.clone(),
    ));
    tracing::info!(session = %config.session, capture = %target, vni = config.vni, "mirroring");
    Ok(MirrorHandle {
        admin_addr,
        metrics,
        thread,
        http,
        reporter,
        stop,
    })
}

/// What the mirror sends the capture: which pod it runs in, and its counts.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MirrorStats {
    /// The pod (its host name: an ephemeral container shares the pod's).
    pub pod: String,
    pub report: MirrorReport,
}

/// Sends the counts every [`REPORT_EVERY`] and once more at the end. A capture
/// that cannot be reached is retried at the next turn; the failures are logged at
/// debug (the capture's own metrics show a mirror that stopped reporting).
async fn report_to_capture(url: String, metrics: MirrorMetrics, stop: CancellationToken) {
    let pod = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown".into());
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(2))
        .build()
        .unwrap_or_default();
    loop {
        let last = tokio::select! {
            () = stop.cancelled() => true,
            () = tokio::time::sleep(REPORT_EVERY) => false,
        };
        let stats = MirrorStats {
            pod: pod.clone(),
            report: metrics.report(),
        };
        if let Err(e) = http.post(&url).json(&stats).send().await {
            tracing::debug!(error = %e, %url, "cannot report to the capture");
        }
        if last {
            return;
        }
    }
}

/// Stops the mirror once `capture` has not resolved for [`GONE_AFTER`].
async fn end_with_capture(capture: String, stop: CancellationToken) {
    let mut failing_since: Option<std::time::Instant> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(RESOLVE_EVERY) => {}
        }
        let resolved = tokio::net::lookup_host(&capture)
            .await
            .is_ok_and(|mut addrs| addrs.next().is_some());
        match resolved {
            true => failing_since = None,
            false => {
                let since = *failing_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() >= GONE_AFTER {
                    tracing::info!(%capture, "the capture service is gone (its session was deleted): the mirror ends");
                    stop.cancel();
                    return;
                }
            }
        }
    }
}

impl MirrorHandle {
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Waits for the capture to end (shutdown, or the capture thread failing: that
    /// ends the process, so its pod restarts rather than mirror nothing).
    pub async fn join(self) -> Result<MirrorReport> {
        let stop = self.stop.clone();
        let thread = tokio::task::spawn_blocking(move || self.thread.join());
        let outcome = thread.await?;
        stop.cancel();
        let _ = self.http.await?;
        if let Some(reporter) = self.reporter {
            let _ = reporter.await;
        }
        match outcome {
            Ok(Ok(())) => Ok(self.metrics.report()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::ThreadDied("it panicked".into())),
        }
    }
}

/// The registry of a mirror's metrics: every series carries `experiment` and
/// `mirror_session`, plus the process metrics every ticklab component exports.
pub fn registry(experiment: &str, session: &str) -> prometheus::Result<prometheus::Registry> {
    ticklab_admin::session_registry("mirror", experiment, "mirror_session", session)
}
