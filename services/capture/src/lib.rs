//! ticklab's capture service: the target of a mirror session. It receives mirrored
//! frames in VXLAN on UDP 4789 (from ticklab's mirror, stamped at the pod, or from
//! real AWS VPC Traffic Mirroring, timed on arrival), decodes them down to feed and
//! order messages with [`ticklab_capture::analyzer`], decrypting TLS with the key
//! log it gets from the trader, and measures latency from the wire.
//!
//! Out: Prometheus metrics, `GET /report` (the [`WireReport`]), optional pcapng
//! files with the key log embedded, optional JSON lines of every message.

#![forbid(unsafe_code)]

pub mod http;
pub mod keylog;
pub mod metrics;
pub mod receiver;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use ticklab_admin::AdminState;
use ticklab_capture::analyzer::WireReport;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::metrics::CaptureMetrics;

/// Everything the capture needs; the operator renders it from the MirrorSession.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CaptureConfig {
    /// The MirrorSession (logs, metrics).
    pub session: String,
    /// The experiment whose traffic is mirrored (logs, metrics).
    pub experiment: String,
    /// UDP address VXLAN arrives on (port 4789 in a cluster).
    pub listen: SocketAddr,
    /// `/metrics`, `/healthz`, `/readyz`, `/report`, `POST /keylog`.
    pub admin_listen: SocketAddr,
    /// Decode only this VXLAN network; absent: any.
    #[serde(default)]
    pub vni: Option<u32>,
    /// Source ports of retransmission replies (trades in them count as recovered).
    #[serde(default = "default_retransmit_ports")]
    pub retransmit_ports: Vec<u16>,
    /// Server ports, to tell client from server on connections whose start was
    /// not mirrored.
    #[serde(default = "default_server_ports")]
    pub server_ports: Vec<u16>,
    /// The trader's API ("http://host:port"): the capture polls its `GET /keylog`
    /// for TLS secrets and its `GET /trades` to set its receive stamps beside the
    /// wire's.
    #[serde(default)]
    pub trader_api: Option<String>,
    /// A key log file to read at start (NSS format).
    #[serde(default)]
    pub key_log_file: Option<PathBuf>,
    /// Write the decapsulated frames as pcapng here.
    #[serde(default)]
    pub pcapng: Option<PcapngOutput>,
    /// Write one JSON line per message decoded (trades, orders, acks) here.
    #[serde(default)]
    pub messages_file: Option<PathBuf>,
}

fn default_retransmit_ports() -> Vec<u16> {
    ticklab_capture::analyzer::AnalyzerConfig::default().retransmit_ports
}

fn default_server_ports() -> Vec<u16> {
    ticklab_capture::analyzer::AnalyzerConfig::default().server_ports
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PcapngOutput {
    pub directory: PathBuf,
    /// Start a new file past this size.
    #[serde(default = "default_rotate_megabytes")]
    pub rotate_megabytes: u64,
    /// ... or this age.
    #[serde(default = "default_rotate_seconds")]
    pub rotate_seconds: u64,
}

fn default_rotate_megabytes() -> u64 {
    256
}

fn default_rotate_seconds() -> u64 {
    300
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen for VXLAN on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the key log {path}: {source}")]
    KeyLogFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Output {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Admin(#[from] ticklab_admin::Error),
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot start the capture thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("the capture thread stopped: {0}")]
    ThreadDied(String),
    #[error("a capture task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the receiving thread is told from outside.
pub enum Input {
    /// Key log text (NSS lines).
    KeyLog(String),
    /// The trader's receive stamps of live trades: (sequence number, receive ns), all
    /// of one feed session.
    AppReceived {
        session: String,
        stamps: Vec<(u64, u64)>,
    },
}

/// State the thread publishes and the HTTP side reads.
pub struct Shared {
    pub config: CaptureConfig,
    pub report: RwLock<WireReport>,
    pub metrics: CaptureMetrics,
    pub input: parking_lot::Mutex<mpsc::Sender<Input>>,
    /// pcapng files written out whole.
    pub files: RwLock<Vec<PathBuf>>,
    /// Each mirror's last report, by pod.
    pub mirrors:
        parking_lot::Mutex<std::collections::HashMap<String, ticklab_mirror::MirrorReport>>,
}

pub struct CaptureHandle {
    pub vxlan_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub shared: Arc<Shared>,
    thread: std::thread::JoinHandle<Result<()>>,
    tasks: Vec<JoinHandle<()>>,
    http: JoinHandle<ticklab_admin::Result<()>>,
    stop: CancellationToken,
}

/// Binds the VXLAN socket and the admin port, reads the key log file if given,
/// starts receiving, polling the trader, and serving.
pub async fn start(
    config: CaptureConfig,
    registry: prometheus::Registry,
    shutdown: CancellationToken,
) -> Result<CaptureHandle> {
    let metrics = CaptureMetrics::register(&registry)?;
    let admin = AdminState::new(registry);
    let socket = receiver::bind(config.listen)?;
    let vxlan_addr = socket.local_addr().map_err(|source| Error::Listen {
        addr: config.listen,
        source,
    })?;
    let (tx, rx) = mpsc::channel();
    if let Some(path) = &config.key_log_file {
        let text = std::fs::read_to_string(path).map_err(|source| Error::KeyLogFile {
            path: path.clone(),
            source,
        })?;
        let _ = tx.send(Input::KeyLog(text));
    }
    let listener = ticklab_admin::bind(config.admin_listen).await?;
    let admin_addr = listener
        .local_addr()
        .map_err(|source| ticklab_admin::Error::Bind {
            addr: config.admin_listen,
            source,
        })?;
    let shared = Arc::new(Shared {
        report: RwLock::new(WireReport::default()),
        metrics,
        input: parking_lot::Mutex::new(tx),
        files: RwLock::new(Vec::new()),
        mirrors: parking_lot::Mutex::new(Default::default()),
        config,
    });
    let receiver = receiver::Receiver::new(socket, shared.clone(), rx)?;
    let stop = shutdown.child_token();
    let thread = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("capture".into())
            .spawn(move || receiver.run(&stop))
            .map_err(Error::Thread)?
    };
    let mut tasks = Vec::new();
    if let Some(api) = shared.config.trader_api.clone() {
        tasks.push(tokio::spawn(keylog::poll_trader(
            api,
            shared.clone(),
            stop.clone(),
        )));
    }
    admin.set_ready(true);
    let router = http::router(shared.clone()).merge(ticklab_admin::admin_router(admin));
    let http = tokio::spawn(ticklab_admin::serve(listener, router, stop.clone()));
    tracing::info!(session = %shared.config.session, %vxlan_addr, "capturing");
    Ok(CaptureHandle {
        vxlan_addr,
        admin_addr,
        shared,
        thread,
        tasks,
        http,
        stop,
    })
}

impl CaptureHandle {
    pub fn stop(&self) {
        self.stop.cancel();
    }

    pub fn report(&self) -> WireReport {
        self.shared.report.read().clone()
    }

    /// Waits for the capture to end; the final report (the decoders flushed, the
    /// pcapng file written out). A capture thread that fails ends the process.
    pub async fn join(self) -> Result<WireReport> {
        let stop = self.stop.clone();
        let thread = tokio::task::spawn_blocking(move || self.thread.join());
        let outcome = thread.await?;
        stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        let _ = self.http.await?;
        match outcome {
            Ok(Ok(())) => Ok(self.shared.report.read().clone()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::ThreadDied("it panicked".into())),
        }
    }
}

/// The registry of a capture's metrics: every series carries `experiment` and
/// `mirror_session`, plus the process metrics every ticklab component exports.
pub fn registry(experiment: &str, session: &str) -> prometheus::Result<prometheus::Registry> {
    ticklab_admin::session_registry("capture", experiment, "mirror_session", session)
}
