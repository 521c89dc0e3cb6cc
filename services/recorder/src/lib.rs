//! ticklab's recorder: taps an exchange's feed (a copy of every packet, whatever the
//! experiment's transport), recovers what it misses from the retransmission server,
//! and writes rotating pcap or JSON-lines files with an index of sequence ranges.
//!
//! Recording is a toggle ([`Control`]): on, the recorder renews its tap and writes;
//! off, it finishes recovering what the recorded span misses, closes the file and
//! ends the tap. HTTP ([`http`]) lists and serves the files and flips the toggle.

#![forbid(unsafe_code)]

pub mod http;
pub mod metrics;
pub mod tap;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use ticklab_admin::AdminState;
use ticklab_crd::recording_session::{RecordingFormat, Rotation};
use ticklab_recording::Index;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::metrics::RecorderMetrics;

/// Everything the recorder needs; the operator renders it from the session.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RecorderConfig {
    /// The LatencyExperiment whose feed is recorded (logs, metrics, file names).
    pub experiment: String,
    /// The RecordingSession (logs, metrics).
    pub recording: String,
    /// "host:port" of the exchange's retransmission server: taps and recovery.
    pub exchange_retransmit: String,
    /// Where the files and their index live.
    pub directory: PathBuf,
    #[serde(default)]
    pub format: RecordingFormat,
    #[serde(default)]
    pub rotation: Rotation,
    /// Recording at start (the session's `spec.enabled`); flipped over HTTP after.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// HTTP: files, the toggle, `/metrics`, `/healthz`, `/readyz`.
    pub listen: SocketAddr,
    /// The first recording period starts at sequence number 1, recovering from the
    /// exchange what came before the recorder's first packet: for a recorder that
    /// starts with the exchange's session (`ticklab run`). Otherwise a period starts
    /// at the first packet it receives.
    #[serde(default)]
    pub from_start: bool,
}

fn default_true() -> bool {
    true
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach the exchange's retransmission server {target}: {problem}")]
    Exchange { target: String, problem: String },
    #[error("recording directory {dir}: {source}")]
    Directory {
        dir: PathBuf,
        #[source]
        source: ticklab_recording::RecordingError,
    },
    #[error(transparent)]
    Admin(#[from] ticklab_admin::Error),
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot start the recording thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("the recording thread stopped unexpectedly{0}")]
    ThreadDied(String),
    #[error("a recorder task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Recording or paused, as the status and the metric report it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecorderState {
    Recording,
    /// Off, finishing the recovery of what the recorded span misses.
    Draining,
    Paused,
}

/// The toggle, flipped by HTTP and read by the recording thread every turn.
#[derive(Debug)]
pub struct Control {
    enabled: AtomicBool,
}

impl Control {
    pub fn set(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::Release);
    }
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }
}

/// Counts kept by the recording thread and read by HTTP and the final report.
#[derive(Debug, Default)]
pub struct RecorderStats {
    /// Feed packets written to files.
    pub packets: AtomicU64,
    /// Bytes written to files (file headers included).
    pub bytes: AtomicU64,
    /// Sequence numbers that were missing and then arrived (recovered).
    pub recovered: AtomicU64,
    /// Sequence numbers given up (listed as missing in the index).
    pub unrecoverable: AtomicU64,
    /// Packets that held only messages already written.
    pub duplicates: AtomicU64,
    /// Packets that arrived while paused (the tap's lease running out).
    pub ignored_while_paused: AtomicU64,
    /// Datagrams that are not feed packets.
    pub malformed: AtomicU64,
    /// Datagrams the kernel dropped because the socket buffer was full.
    pub kernel_drops: AtomicU64,
    pub write_errors: AtomicU64,
    /// Messages announced and not yet written in order (awaiting recovery).
    pub behind: AtomicU64,
}

/// What `GET /recording` answers and the operator copies into the status.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RecorderStatus {
    pub experiment: String,
    pub recording: String,
    pub enabled: bool,
    pub state: RecorderState,
    pub packets: u64,
    pub bytes: u64,
    pub recovered: u64,
    pub unrecoverable: u64,
    pub duplicates: u64,
    pub ignored_while_paused: u64,
    pub malformed: u64,
    pub kernel_drops: u64,
    pub write_errors: u64,
    pub behind: u64,
    /// The last write or index error, until the next success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub index: Index,
}

/// State shared by the recording thread and the HTTP handlers.
pub struct Shared {
    pub config: RecorderConfig,
    pub control: Control,
    pub stats: RecorderStats,
    pub state: Mutex<RecorderState>,
    /// The index as of the last flush (the thread owns the writer).
    pub index: RwLock<Index>,
    pub last_error: Mutex<Option<String>>,
    pub metrics: RecorderMetrics,
}

impl Shared {
    pub fn status(&self) -> RecorderStatus {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let s = &self.stats;
        RecorderStatus {
            experiment: self.config.experiment.clone(),
            recording: self.config.recording.clone(),
            enabled: self.control.enabled(),
            state: *self.state.lock(),
            packets: l(&s.packets),
            bytes: l(&s.bytes),
            recovered: l(&s.recovered),
            unrecoverable: l(&s.unrecoverable),
            duplicates: l(&s.duplicates),
            ignored_while_paused: l(&s.ignored_while_paused),
            malformed: l(&s.malformed),
            kernel_drops: l(&s.kernel_drops),
            write_errors: l(&s.write_errors),
            behind: l(&s.behind),
            last_error: self.last_error.lock().clone(),
            index: self.index.read().clone(),
        }
    }
}

pub struct RecorderHandle {
    pub addr: SocketAddr,
    pub shared: Arc<Shared>,
    thread: std::thread::JoinHandle<()>,
    http: JoinHandle<ticklab_admin::Result<()>>,
    stop: CancellationToken,
    shutdown: CancellationToken,
}

/// Opens the directory (repairing a file torn by a kill and rebuilding the index),
/// binds the tap socket and the HTTP server, then starts the recording thread.
pub async fn start(
    config: RecorderConfig,
    registry: prometheus::Registry,
    shutdown: CancellationToken,
) -> Result<RecorderHandle> {
    let metrics = RecorderMetrics::register(&registry)?;
    let admin = AdminState::new(registry);
    let writer = tap::open_writer(&config)?;
    let socket = tap::connect(&config.exchange_retransmit).await?;
    let listener = ticklab_admin::bind(config.listen).await?;
    let addr = listener
        .local_addr()
        .map_err(|source| ticklab_admin::Error::Bind {
            addr: config.listen,
            source,
        })?;
    let shared = Arc::new(Shared {
        control: Control {
            enabled: AtomicBool::new(config.enabled),
        },
        stats: RecorderStats::default(),
        state: Mutex::new(RecorderState::Paused),
        index: RwLock::new(writer.index().clone()),
        last_error: Mutex::new(None),
        metrics,
        config,
    });
    shared
        .metrics
        .files
        .set(shared.index.read().files.len() as i64);

    let stop = CancellationToken::new();
    let thread = {
        let (shared, stop) = (shared.clone(), stop.clone());
        std::thread::Builder::new()
            .name("recorder".into())
            .spawn(move || tap::run(socket, writer, &shared, &stop))
            .map_err(Error::Thread)?
    };
    let router = http::router(shared.clone()).merge(ticklab_admin::admin_router(admin.clone()));
    let http = tokio::spawn(ticklab_admin::serve(listener, router, stop.clone()));
    admin.set_ready(true);
    tracing::info!(
        %addr,
        experiment = %shared.config.experiment,
        recording = %shared.config.recording,
        enabled = shared.config.enabled,
        directory = %shared.config.directory.display(),
        "recorder started"
    );
    Ok(RecorderHandle {
        addr,
        shared,
        thread,
        http,
        stop,
        shutdown,
    })
}

impl RecorderHandle {
    /// Runs until `shutdown` (closing the current file cleanly) or until the
    /// recording thread dies, which is an error: a recorder that records nothing
    /// must not look healthy.
    pub async fn join(self) -> Result<RecorderStatus> {
        let thread = self.thread;
        let stop = self.stop.clone();
        let watcher = tokio::task::spawn_blocking(move || thread.join());
        tokio::pin!(watcher);
        let died = tokio::select! {
            () = self.shutdown.cancelled() => None,
            joined = &mut watcher => Some(joined),
        };
        stop.cancel();
        let joined = match died {
            Some(joined) => {
                self.http.await??;
                let why = match joined {
                    Ok(Ok(())) => String::new(),
                    Ok(Err(_)) | Err(_) => ": it panicked".into(),
                };
                return Err(Error::ThreadDied(why));
            }
            None => watcher.await?,
        };
        self.http.await??;
        if joined.is_err() {
            return Err(Error::ThreadDied(": it panicked".into()));
        }
        Ok(self.shared.status())
    }
}
