//! ticklab's trader: receives the exchange's feed (UDP, TCP or WebSocket), measures
//! one-way latency per trade, detects and recovers gaps, turns some ticks into
//! orders and measures tick-to-trade, stores trades in MongoDB off the feed path, and
//! serves `/trades`, `/stats` and `/metrics`. With `tls` configured, every TCP
//! connection to the exchange (TCP or WebSocket feed, both order channels) is TLS
//! through one rustls client, whose session keys it can log for `/keylog` ([`tls`]).
//!
//! [`start`] binds everything and returns a [`TraderHandle`]; the `trader` binary and
//! `ticklab run` both use it.

#![forbid(unsafe_code)]

pub mod api;
pub mod feed;
pub use ticklab_wire::gap_tracker;
pub mod latency;
pub mod metrics;
pub mod orders;
pub mod state;
pub mod store;
pub mod strategy;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use ticklab_admin::AdminState;
use ticklab_crd::{ExperimentResults, Instrument, SloSpec, TraderSpec, Transport};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::feed::processor::FeedProcessor;
use crate::feed::stream::{StreamSource, run_stream_feed};
use crate::feed::udp::{FeedSocket, bind_feed_socket, run_udp_feed};
use crate::gap_tracker::RecoveryPolicy;
use crate::metrics::TraderMetrics;
use crate::orders::{OrderTarget, run_order_client};
use crate::state::TraderShared;
use crate::store::{StoreCounts, TradeStore};
use crate::strategy::MomentumStrategy;

/// Everything the trader needs to run; the operator renders it from the experiment.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TraderConfig {
    /// Experiment name: labels stored trades.
    pub experiment: String,
    /// Symbols the exchange publishes.
    pub symbols: Vec<Instrument>,
    pub spec: TraderSpec,
    /// Feed transport.
    pub transport: Transport,
    /// UDP feed: where to receive (the exchange sends here).
    pub feed_udp_listen: SocketAddr,
    /// TCP feed: "host:port"; WebSocket feed: "ws://host:port/feed" ("wss://" with
    /// TLS).
    #[serde(default)]
    pub feed_connect: String,
    /// The exchange's retransmission server, "host:port".
    pub retransmit_server: String,
    /// The exchange's binary order port, "host:port".
    pub order_tcp: String,
    /// The exchange's HTTP order API base URL ("https://" with TLS).
    pub order_http: String,
    /// Admin and REST port (`/metrics`, `/healthz`, `/readyz`, `/trades`, `/stats`).
    pub api_listen: SocketAddr,
    /// MongoDB connection string; without it trades are kept in memory only.
    #[serde(default)]
    pub mongodb_uri: Option<String>,
    /// How long to keep trying to reach MongoDB at start, in seconds (0: fail at
    /// the first attempt, as `ticklab run` does). In a cluster the database may come
    /// up after the trader (a managed MongoDB's first start takes a while): a trader
    /// that waits — serving `/healthz`, not ready — beats one in a crash loop whose
    /// back-off outlasts the database's start.
    #[serde(default)]
    pub mongodb_wait_seconds: u64,
    #[serde(default)]
    pub slo: Option<SloSpec>,
    /// Retransmission request timeout in milliseconds.
    #[serde(default = "default_recovery_timeout_ms")]
    pub recovery_timeout_ms: u64,
    /// TLS on the TCP and WebSocket feed and both order channels; absent: plain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<tls::ClientTlsConfig>,
}

fn default_recovery_timeout_ms() -> u64 {
    DEFAULT_RECOVERY_TIMEOUT_MS
}

/// How long a retransmission request waits for its answer before it is asked again
/// (five unanswered in a row declare the range lost). An answer takes microseconds on
/// loopback and a millisecond across a pod network, but a loaded node can keep the
/// exchange's retransmission thread off a core for a good part of a second: that is
/// no loss, and asking again sooner only duplicates requests.
pub const DEFAULT_RECOVERY_TIMEOUT_MS: u64 = 200;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen for the UDP feed on {addr}: {source}")]
    FeedBind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot reach the retransmission server {addr}: {source}")]
    Retransmit {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Admin(#[from] ticklab_admin::Error),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot start a thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("a trader task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("stopped while waiting for MongoDB")]
    StoppedWhileWaiting,
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("{0}")]
    Config(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Bound addresses.
#[derive(Clone, Copy, Debug)]
pub struct TraderAddrs {
    pub feed_udp: Option<SocketAddr>,
    pub api: SocketAddr,
}

/// A running trader.
pub struct TraderHandle {
    pub addrs: TraderAddrs,
    pub shared: Arc<TraderShared>,
    pub store: Option<TradeStore>,
    /// The TLS key log (with `tls.keyLog`), as `GET /keylog` serves it.
    pub key_log: Option<Arc<tls::SessionKeyLog>>,
    feed: FeedTask,
    others: Vec<JoinHandle<()>>,
    writer: Option<JoinHandle<()>>,
    admin: JoinHandle<ticklab_admin::Result<()>>,
    /// Stops the order client and the API after the feed handler.
    services_shutdown: CancellationToken,
}

enum FeedTask {
    Thread(std::thread::JoinHandle<FeedProcessor>),
    Task(JoinHandle<FeedProcessor>),
}

/// Binds the feed, API and recovery sockets, connects to MongoDB when configured,
/// and starts the feed handler, order client and API.
pub async fn start(
    config: TraderConfig,
    registry: prometheus::Registry,
    shutdown: CancellationToken,
) -> Result<TraderHandle> {
    let metrics = TraderMetrics::register(&registry)?;
    crate::metrics::register_slo(&registry, config.slo.as_ref())?;
    // TLS files are read before anything binds: a missing one fails the start.
    let (tls_client, key_log) = tls_client(&config, &metrics)?;
    let order_target = OrderTarget {
        transport: config.spec.order_transport,
        tcp: config.order_tcp.clone(),
        http: config.order_http.clone(),
        tls: tls_client.clone(),
    };
    if config.spec.order_transport == ticklab_crd::OrderTransport::Http {
        order_target.http_orders().map_err(Error::Config)?;
    }
    let admin_state = AdminState::new(registry);
    let services_shutdown = CancellationToken::new();

    // Trades persist when the spec asks for it and a database is named.
    let mongodb_uri = config
        .mongodb_uri
        .clone()
        .filter(|_| config.spec.persistence.enabled);
    let mut shared = TraderShared::new(&config.experiment, config.slo.clone());
    let store_counts = Arc::new(StoreCounts::default());
    if mongodb_uri.is_some() {
        shared.store = Some(store_counts.clone());
    }
    let shared = Arc::new(shared);

    // The admin port first: while the trader waits for MongoDB it is alive and says
    // it is not ready.
    let api_listener = ticklab_admin::bind(config.api_listen).await?;
    let api_addr = api_listener
        .local_addr()
        .map_err(|source| ticklab_admin::Error::Bind {
            addr: config.api_listen,
            source,
        })?;
    let store_cell = Arc::new(std::sync::OnceLock::new());
    let router =
        ticklab_admin::admin_router(admin_state.clone()).merge(api::api_router(api::ApiState {
            shared: shared.clone(),
            store: store_cell.clone(),
            key_log: key_log.clone(),
        }));
    let admin = tokio::spawn(ticklab_admin::serve(
        api_listener,
        router,
        services_shutdown.clone(),
    ));

    let mut writer = None;
    let store = match &mongodb_uri {
        Some(uri) => {
            let connected = connect_store(
                &config,
                uri,
                &metrics,
                &store_counts,
                &services_shutdown,
                &shutdown,
            )
            .await;
            let (store, task) = match connected {
                Ok(connected) => connected,
                Err(error) => {
                    services_shutdown.cancel();
                    let _ = admin.await;
                    return Err(error);
                }
            };
            writer = Some(task);
            // Set once, here; nothing else sets it.
            let _ = store_cell.set(store.clone());
            Some(store)
        }
        None => None,
    };

    let (intent_tx, intent_rx) = tokio::sync::mpsc::channel(4096);
    let others = vec![tokio::spawn(run_order_client(
        order_target,
        intent_rx,
        shared.orders.clone(),
        metrics.clone(),
        services_shutdown.clone(),
    ))];

    let strategy = MomentumStrategy::new(&config.spec.strategy, &config.symbols);
    let mut processor = FeedProcessor::new(
        &config.symbols,
        strategy,
        intent_tx,
        store.clone(),
        shared.clone(),
        metrics.clone(),
    )
    .map_err(Error::Thread)?;
    processor.set_recovery_policy(RecoveryPolicy {
        timeout_ns: config.recovery_timeout_ms.max(1) * 1_000_000,
        ..RecoveryPolicy::default()
    });

    let retransmit_addr = tokio::net::lookup_host(&config.retransmit_server)
        .await
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| Error::Retransmit {
            addr: config.retransmit_server.clone(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "address does not resolve"),
        })?;
    let recovery_bind: SocketAddr = if retransmit_addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let recovery =
        ticklab_admin::net::bind_udp_socket(recovery_bind, crate::feed::udp::large_receive_buffer)
            .and_then(|s| s.connect(retransmit_addr).map(|()| s))
            .map_err(|source| Error::Retransmit {
                addr: config.retransmit_server.clone(),
                source,
            })?;

    let (feed, feed_udp) = match config.transport {
        Transport::Udp => {
            let FeedSocket {
                socket,
                kernel_timestamps,
                receive_buffer,
            } = bind_feed_socket(config.feed_udp_listen).map_err(|source| Error::FeedBind {
                addr: config.feed_udp_listen,
                source,
            })?;
            metrics
                .feed_receive_buffer
                .set(i64::try_from(receive_buffer).unwrap_or(i64::MAX));
            let local = socket.local_addr().ok();
            processor.set_timestamp_source(if kernel_timestamps { "kernel" } else { "user" });
            let token = shutdown.clone();
            let busy_poll = config.spec.busy_poll;
            let thread = std::thread::Builder::new()
                .name("feed-udp".into())
                .spawn(move || run_udp_feed(socket, recovery, processor, busy_poll, token))
                .map_err(|source| Error::FeedBind {
                    addr: config.feed_udp_listen,
                    source,
                })?;
            (FeedTask::Thread(thread), local)
        }
        Transport::Tcp | Transport::Websocket => {
            let source = if config.transport == Transport::Tcp {
                StreamSource::Tcp(config.feed_connect.clone())
            } else {
                StreamSource::WebSocket(config.feed_connect.clone())
            };
            recovery
                .set_nonblocking(true)
                .map_err(|source| Error::Retransmit {
                    addr: config.retransmit_server.clone(),
                    source,
                })?;
            let recovery =
                tokio::net::UdpSocket::from_std(recovery).map_err(|source| Error::Retransmit {
                    addr: config.retransmit_server.clone(),
                    source,
                })?;
            processor.set_timestamp_source("user");
            let task = tokio::spawn(run_stream_feed(
                source,
                tls_client.clone(),
                recovery,
                processor,
                shutdown.clone(),
            ));
            (FeedTask::Task(task), None)
        }
    };
    admin_state.set_ready(true);
    tracing::info!(api = %api_addr, feed = ?feed_udp, transport = ?config.transport, tls = tls_client.is_some(), "trader started");

    Ok(TraderHandle {
        addrs: TraderAddrs {
            feed_udp,
            api: api_addr,
        },
        shared,
        store,
        key_log,
        feed,
        others,
        writer,
        admin,
        services_shutdown,
    })
}

/// The TLS client (and its key log) when the configuration asks for TLS, after
/// checking that the addresses agree with it: `wss://` and `https://` with TLS,
/// `ws://` and `http://` without, so a half-configured trader fails at start with
/// the field to fix instead of failing every connection.
#[allow(clippy::type_complexity)]
fn tls_client(
    config: &TraderConfig,
    metrics: &TraderMetrics,
) -> Result<(Option<Arc<tls::TlsClient>>, Option<Arc<tls::SessionKeyLog>>)> {
    let secure = config.tls.is_some();
    let scheme_of = |url: &str| {
        url.split_once("://")
            .map(|(scheme, _)| scheme.to_ascii_lowercase())
    };
    let check = |field: &str, url: &str, plain: &str, tls: &str| -> Result<()> {
        let want = if secure { tls } else { plain };
        match scheme_of(url) {
            Some(scheme) if scheme == want => Ok(()),
            _ => Err(Error::Config(format!(
                "{field} {url:?} must start with {want}:// {}",
                if secure {
                    "(tls is configured)"
                } else {
                    "(no tls is configured)"
                }
            ))),
        }
    };
    if config.transport == Transport::Websocket {
        check("feedConnect", &config.feed_connect, "ws", "wss")?;
    }
    if config.spec.order_transport == ticklab_crd::OrderTransport::Http {
        check("orderHttp", &config.order_http, "http", "https")?;
    }
    let Some(tls_config) = &config.tls else {
        return Ok((None, None));
    };
    let key_log = match (tls_config.key_log, &tls_config.key_log_file) {
        (true, file) => Some(Arc::new(tls::SessionKeyLog::open(
            file.as_deref(),
            tls::KEY_LOG_LINES,
            metrics,
        )?)),
        (false, Some(path)) => {
            return Err(tls::TlsError::KeyLogFileWithoutKeyLog { path: path.clone() }.into());
        }
        (false, None) => None,
    };
    let client = tls::TlsClient::new(tls_config, key_log.clone(), metrics)?;
    Ok((Some(Arc::new(client)), key_log))
}

/// Connects the trade store, retrying for up to `mongodb_wait_seconds` (with a
/// growing pause, at most 5 s) unless the trader is told to stop.
async fn connect_store(
    config: &TraderConfig,
    uri: &str,
    metrics: &TraderMetrics,
    counts: &Arc<StoreCounts>,
    services_shutdown: &CancellationToken,
    shutdown: &CancellationToken,
) -> Result<(TradeStore, JoinHandle<()>)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(config.mongodb_wait_seconds);
    let mut pause = Duration::from_millis(250);
    loop {
        let attempt = TradeStore::connect_with_counts(
            uri,
            &config.experiment,
            config.spec.persistence.buffer_trades as usize,
            metrics.clone(),
            counts.clone(),
            services_shutdown.clone(),
        )
        .await;
        match attempt {
            Ok(connected) => return Ok(connected),
            Err(error) if tokio::time::Instant::now() + pause < deadline => {
                tracing::warn!(%error, retry_in = ?pause, "MongoDB is not reachable yet; the trader waits (not ready)");
            }
            Err(error) => return Err(error.into()),
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = shutdown.cancelled() => return Err(Error::StoppedWhileWaiting),
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

impl TraderHandle {
    /// Results so far.
    pub fn results(&self) -> ExperimentResults {
        self.shared.results()
    }

    /// Waits until the session has ended and nothing is missing, or `timeout`.
    /// True when settled.
    pub async fn wait_settled(&self, timeout: Duration) -> bool {
        let mut rx = self.shared.settled.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|s| *s))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// After the `shutdown` token given to [`start`] is cancelled: waits for the
    /// feed handler (what is still missing counts as lost), stops the order client
    /// and API, lets the writer drain, and returns the final results.
    pub async fn join(self) -> Result<ExperimentResults> {
        match self.feed {
            FeedTask::Thread(t) => {
                let _ = tokio::task::spawn_blocking(move || t.join()).await?;
            }
            FeedTask::Task(t) => {
                t.await?;
            }
        }
        self.services_shutdown.cancel();
        for task in self.others {
            task.await?;
        }
        if let Some(w) = self.writer {
            w.await?;
        }
        self.admin.await??;
        Ok(self.shared.results())
    }
}
