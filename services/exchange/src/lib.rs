//! ticklab's simulated exchange: a seeded trade generator feeding a publisher thread
//! (UDP, or TCP and WebSocket subscribers), a retransmission server answering gap
//! requests from a ring of recent messages, and an order API (binary TCP and HTTP
//! JSON) that acknowledges and fills orders with exchange timestamps.
//!
//! With `tls` configured, the four TCP channels (TCP and WebSocket feed, binary and
//! HTTP order API) speak TLS ([`tls`]); the UDP feed and retransmission stay plain.
//!
//! [`start`] binds every socket first — so a port in use is an error naming it —
//! then starts publishing; the `exchange` binary and `ticklab run` both use it.

#![forbid(unsafe_code)]

pub mod generator;
pub mod metrics;
pub mod orders;
pub mod publisher;
pub mod replay;
pub mod retransmit;
pub mod ring;
pub mod streams;
pub mod tap;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use ticklab_admin::AdminState;
use ticklab_crd::{ExchangeSpec, Transport};
use ticklab_wire::Session;
use tokio::sync::{Notify, broadcast, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::generator::{ArrivalClock, TradeGenerator};
use crate::metrics::ExchangeMetrics;
use crate::orders::{LastPrices, Matcher};
use crate::publisher::{FeedSink, Publisher};
use crate::retransmit::RetransmitServer;
use crate::ring::RetransmitRing;
use crate::streams::Subscribers;
use crate::tap::Taps;

/// Everything the exchange needs; the operator renders it from the experiment.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExchangeConfig {
    /// Experiment name (logs).
    pub experiment: String,
    /// What to publish.
    pub spec: ExchangeSpec,
    /// Publish this long, then end the session; absent: until shutdown.
    #[serde(default, with = "millis", rename = "durationMillis")]
    pub duration: Option<Duration>,
    /// "host:port" the UDP feed goes to (transport udp); resolved at start.
    #[serde(default)]
    pub feed_udp_target: Option<String>,
    /// TCP or WebSocket feed listen address (transport tcp | websocket).
    pub feed_listen: SocketAddr,
    /// UDP retransmission server.
    pub retransmit_listen: SocketAddr,
    /// Binary order port.
    pub order_tcp_listen: SocketAddr,
    /// HTTP JSON order API.
    pub order_http_listen: SocketAddr,
    /// `/metrics`, `/healthz`, `/readyz`.
    pub admin_listen: SocketAddr,
    /// Publish a recording instead of generated trades.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<replay::ReplayConfig>,
    /// TLS on the TCP and WebSocket feed and both order channels; absent: plain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<tls::ServerTlsConfig>,
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_millis() as u64)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

impl ExchangeConfig {
    /// Every listen address on 127.0.0.1 with a free port.
    pub fn local(
        experiment: &str,
        spec: ExchangeSpec,
        duration: Option<Duration>,
        feed_udp_target: Option<String>,
    ) -> Self {
        let any: SocketAddr = ([127, 0, 0, 1], 0).into();
        Self {
            experiment: experiment.to_string(),
            spec,
            duration,
            feed_udp_target,
            feed_listen: any,
            retransmit_listen: any,
            order_tcp_listen: any,
            order_http_listen: any,
            admin_listen: any,
            replay: None,
            tls: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot send the UDP feed to {target}: {problem}")]
    FeedTarget { target: String, problem: String },
    #[error("the experiment has no symbols")]
    NoSymbols,
    #[error("{0}")]
    Replay(String),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Admin(#[from] ticklab_admin::Error),
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot start a thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("an exchange task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("an exchange thread panicked")]
    ThreadPanicked,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Counters, shared by the publisher, servers and whoever reports.
#[derive(Default, Debug)]
pub struct ExchangeStats {
    pub trades_published: AtomicU64,
    pub packets_sent: AtomicU64,
    pub packets_dropped_by_fault: AtomicU64,
    pub packets_lagged: AtomicU64,
    pub next_seq: AtomicU64,
    pub retransmit_requests: AtomicU64,
    pub messages_retransmitted: AtomicU64,
    pub unavailable_replies: AtomicU64,
    pub malformed_requests: AtomicU64,
    pub orders_received: AtomicU64,
    pub orders_filled: AtomicU64,
    pub orders_expired: AtomicU64,
    pub orders_rejected: AtomicU64,
    pub subscribers: AtomicU64,
    pub subscriptions: AtomicU64,
    pub tap_packets_sent: AtomicU64,
    pub tap_packets_failed: AtomicU64,
    pub tls_handshakes: AtomicU64,
    pub tls_handshake_failures: AtomicU64,
}

/// The exchange's own account of a run.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExchangeReport {
    pub session: String,
    pub trades_published: u64,
    pub packets_sent: u64,
    pub packets_dropped_by_fault: u64,
    pub packets_lagged: u64,
    pub next_seq: u64,
    pub retransmit_requests: u64,
    pub messages_retransmitted: u64,
    pub unavailable_replies: u64,
    pub malformed_requests: u64,
    pub orders_received: u64,
    pub orders_filled: u64,
    pub orders_expired: u64,
    pub orders_rejected: u64,
    pub subscribers: u64,
    /// UDP subscriptions and keep-alives received.
    #[serde(default)]
    pub subscriptions: u64,
    /// Feed packet copies sent to recorders, and those that could not be sent.
    #[serde(default)]
    pub tap_packets_sent: u64,
    #[serde(default)]
    pub tap_packets_failed: u64,
    /// TLS handshakes completed and failed, over every channel (zero without TLS).
    #[serde(default)]
    pub tls_handshakes: u64,
    #[serde(default)]
    pub tls_handshake_failures: u64,
    /// The replay's account, when the feed was a recording.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<replay::ReplayReport>,
}

impl ExchangeStats {
    pub fn snapshot(&self) -> ExchangeReport {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ExchangeReport {
            session: String::new(),
            trades_published: l(&self.trades_published),
            packets_sent: l(&self.packets_sent),
            packets_dropped_by_fault: l(&self.packets_dropped_by_fault),
            packets_lagged: l(&self.packets_lagged),
            next_seq: l(&self.next_seq),
            retransmit_requests: l(&self.retransmit_requests),
            messages_retransmitted: l(&self.messages_retransmitted),
            unavailable_replies: l(&self.unavailable_replies),
            malformed_requests: l(&self.malformed_requests),
            orders_received: l(&self.orders_received),
            orders_filled: l(&self.orders_filled),
            orders_expired: l(&self.orders_expired),
            orders_rejected: l(&self.orders_rejected),
            subscribers: l(&self.subscribers),
            subscriptions: l(&self.subscriptions),
            tap_packets_sent: l(&self.tap_packets_sent),
            tap_packets_failed: l(&self.tap_packets_failed),
            tls_handshakes: l(&self.tls_handshakes),
            tls_handshake_failures: l(&self.tls_handshake_failures),
            replay: None,
        }
    }
}

/// Bound addresses.
#[derive(Clone, Copy, Debug)]
pub struct ExchangeAddrs {
    /// TCP / WebSocket feed (absent for UDP).
    pub feed: Option<SocketAddr>,
    pub retransmit: SocketAddr,
    pub order_tcp: SocketAddr,
    pub order_http: SocketAddr,
    pub admin: SocketAddr,
}

pub struct ExchangeHandle {
    pub addrs: ExchangeAddrs,
    pub session: Session,
    pub stats: Arc<ExchangeStats>,
    finished: watch::Receiver<bool>,
    publisher: std::thread::JoinHandle<()>,
    retransmitter: std::thread::JoinHandle<()>,
    tasks: Vec<JoinHandle<()>>,
    admin: JoinHandle<ticklab_admin::Result<()>>,
    services_stop: CancellationToken,
    shutdown: CancellationToken,
    feed_control: CancellationToken,
    replay_report: Option<Arc<parking_lot::Mutex<replay::ReplayReport>>>,
}

/// A session name unique per start: base 36 of the start time in milliseconds, so
/// a restarted exchange never reuses (session, sequence number) pairs.
fn session_name() -> Session {
    let mut ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let digits = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut name = Vec::new();
    while ms > 0 {
        name.push(digits[(ms % 36) as usize]);
        ms /= 36;
    }
    name.reverse();
    Session::from_name(std::str::from_utf8(&name).unwrap_or("TICKLAB"))
}

fn bind_err(addr: SocketAddr) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Bind { addr, source }
}

/// A TCP listener on `addr`, dual-stack for `[::]` (`ticklab_admin::net`).
fn listen_tcp(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    ticklab_admin::net::tcp_listener(addr)
        .and_then(tokio::net::TcpListener::from_std)
        .map_err(bind_err(addr))
}

/// Binds everything, then starts publishing. Publishing stops when the configured
/// duration elapses or `shutdown` is cancelled; the servers run until `shutdown`.
pub async fn start(
    config: ExchangeConfig,
    registry: prometheus::Registry,
    shutdown: CancellationToken,
) -> Result<ExchangeHandle> {
    let spec = &config.spec;
    let metrics = ExchangeMetrics::register(&registry)?;
    let admin_state = AdminState::new(registry);
    let stats = Arc::new(ExchangeStats::default());
    let session = session_name();
    // A recording is read (or downloaded) first: a bad one fails the start.
    let replay = match &config.replay {
        Some(r) => Some(replay::load(r).await.map_err(Error::Replay)?),
        None => None,
    };
    let generator = TradeGenerator::new(spec.seed, &spec.symbols);
    let symbols = match &replay {
        Some(r) => replay::symbols(&r.packets),
        None if generator.is_empty() => return Err(Error::NoSymbols),
        None => generator.symbols(),
    };
    let prices = Arc::new(LastPrices::new(symbols));
    let ring = Arc::new(RetransmitRing::new(spec.retransmission_buffer as usize));
    let max_packet_bytes = spec.max_packet_bytes as usize;
    let services_stop = CancellationToken::new();
    // The certificate is read before anything binds: a missing file fails the start.
    let tls_config = config.tls.as_ref().map(tls::server_config).transpose()?;
    let acceptor = |channel| {
        tls_config
            .clone()
            .map(|c| tls::TlsAcceptor::new(c, channel, &metrics, stats.clone()))
    };

    // Bind every socket before anything starts.
    let admin_listener = ticklab_admin::bind(config.admin_listen).await?;
    let retransmit_socket =
        ticklab_admin::net::bind_udp_socket(config.retransmit_listen, |_| Ok(()))
            .map_err(bind_err(config.retransmit_listen))?;
    let order_tcp = listen_tcp(config.order_tcp_listen)?;
    let order_http = listen_tcp(config.order_http_listen)?;
    let local = |l: &tokio::net::TcpListener, a| l.local_addr().map_err(bind_err(a));
    let mut addrs = ExchangeAddrs {
        feed: None,
        retransmit: retransmit_socket
            .local_addr()
            .map_err(bind_err(config.retransmit_listen))?,
        order_tcp: local(&order_tcp, config.order_tcp_listen)?,
        order_http: local(&order_http, config.order_http_listen)?,
        admin: local(&admin_listener, config.admin_listen)?,
    };

    let taps = Arc::new(Taps::new(
        retransmit_socket
            .try_clone()
            .map_err(bind_err(config.retransmit_listen))?,
        metrics.taps.clone(),
    ));

    let mut tasks = Vec::new();
    // The feed's start: woken by its first receiver (see below).
    let feed_start = Arc::new(Notify::new());
    let sink = match spec.transport {
        Transport::Udp => {
            let target = config.feed_udp_target.clone().unwrap_or_default();
            let resolved = tokio::net::lookup_host(&target)
                .await
                .map_err(|e| Error::FeedTarget {
                    target: target.clone(),
                    problem: e.to_string(),
                })?
                .next()
                .ok_or_else(|| Error::FeedTarget {
                    target: target.clone(),
                    problem: "no address".into(),
                })?;
            // A large send buffer absorbs a sendmmsg burst instead of blocking.
            let socket = ticklab_admin::net::connected_udp_socket(resolved, |socket| {
                let _ = socket.set_send_buffer_size(4 * 1024 * 1024);
                Ok(())
            })
            .map_err(|e| Error::FeedTarget {
                target: target.clone(),
                problem: e.to_string(),
            })?;
            FeedSink::Udp(socket.into())
        }
        Transport::Tcp | Transport::Websocket => {
            let listener = listen_tcp(config.feed_listen)?;
            addrs.feed = Some(local(&listener, config.feed_listen)?);
            let (tx, _) = broadcast::channel(65_536);
            let subs = Subscribers {
                packets: tx.clone(),
                stats: stats.clone(),
                metrics: metrics.clone(),
                first: feed_start.clone(),
                stop: services_stop.clone(),
            };
            let feed_tls = acceptor("feed");
            if spec.transport == Transport::Tcp {
                tasks.push(tokio::spawn(streams::serve_tcp(listener, feed_tls, subs)));
            } else {
                let router = streams::ws_router(subs);
                let stop = services_stop.clone();
                tasks.push(tokio::spawn(async move {
                    if let Err(e) = tls::serve_http(listener, feed_tls, router, stop).await {
                        tracing::error!(error = %e, "WebSocket feed server failed");
                    }
                }));
            }
            FeedSink::Streams(tx)
        }
    };

    let matcher = Matcher::new(prices.clone(), ring.clone(), stats.clone(), metrics.clone());
    tasks.push(tokio::spawn(orders::serve_tcp(
        order_tcp,
        acceptor("orders"),
        matcher.clone(),
        services_stop.clone(),
    )));
    {
        let stop = services_stop.clone();
        let router = orders::http_router(matcher);
        let http_tls = acceptor("orders_http");
        tasks.push(tokio::spawn(async move {
            if let Err(e) = tls::serve_http(order_http, http_tls, router, stop).await {
                tracing::error!(error = %e, "order API failed");
            }
        }));
    }
    let replay_report = replay
        .is_some()
        .then(|| Arc::new(parking_lot::Mutex::new(replay::ReplayReport::default())));
    let admin = tokio::spawn(ticklab_admin::serve(
        admin_listener,
        ticklab_admin::admin_router(admin_state.clone())
            .merge(replay::report_router(replay_report.clone())),
        services_stop.clone(),
    ));

    let retransmitter = {
        let server = RetransmitServer {
            socket: retransmit_socket,
            ring: ring.clone(),
            session,
            max_packet_bytes,
            stats: stats.clone(),
            metrics: metrics.clone(),
            // Only a UDP feed starts at a subscription; a stream starts at its first
            // connection, not at a trader's keep-alive.
            subscribed: (spec.transport == Transport::Udp).then(|| feed_start.clone()),
            taps: taps.clone(),
        };
        let stop = services_stop.clone();
        std::thread::Builder::new()
            .name("retransmit".into())
            .spawn(move || server.run(stop))
            .map_err(Error::Thread)?
    };

    let (finished_tx, finished) = watch::channel(false);
    let publisher = Publisher {
        generator,
        clock: ArrivalClock::new(spec.seed, spec.rate_per_second, spec.microbursts.as_ref()),
        session,
        max_packet_bytes,
        sink,
        ring,
        prices,
        stats: stats.clone(),
        metrics,
        drop_fraction: spec
            .faults
            .as_ref()
            .map_or(0.0, |f| f.drop_percent / 100.0)
            .clamp(0.0, 1.0),
        fault_rng: Publisher::fault_rng(spec.seed),
        tap_fault_rng: Publisher::tap_fault_rng(spec.seed),
        taps,
        duration: config.duration,
        finished: finished_tx,
    };
    // The feed starts when its first receiver exists: a TCP or WebSocket subscriber
    // connects, or a trader subscribes to the UDP feed through the retransmission
    // server. Nothing is published into the void before a trader is up (in a cluster
    // it may wait a minute for MongoDB), and the duration counts from then.
    // The feed can end early on its own (`end_feed`) while the servers go on.
    let feed_stop = shutdown.child_token();
    let feed_control = feed_stop.clone();
    let first = feed_start.clone();
    let thread_report = replay_report.clone();
    let publisher = std::thread::Builder::new()
        .name("feed-publisher".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread().build() {
                Ok(rt) => rt.block_on(async {
                    tokio::select! {
                        () = first.notified() => {},
                        () = feed_stop.cancelled() => {},
                    }
                }),
                // Without a runtime to wait in, start at once rather than never.
                Err(error) => {
                    tracing::error!(%error, "cannot wait for a subscriber; the feed starts now")
                }
            }
            match (replay, thread_report) {
                (Some(replay), Some(report)) => replay::run(publisher, replay, report, feed_stop),
                _ => publisher.run(feed_stop),
            }
        })
        .map_err(Error::Thread)?;
    admin_state.set_ready(true);
    tracing::info!(%session, ?addrs, transport = ?spec.transport, tls = config.tls.is_some(), rate = spec.rate_per_second, "exchange started");

    Ok(ExchangeHandle {
        addrs,
        session,
        stats,
        finished,
        publisher,
        retransmitter,
        tasks,
        admin,
        services_stop,
        shutdown,
        feed_control,
        replay_report,
    })
}

impl ExchangeHandle {
    /// Resolves once the end of session has been sent.
    pub async fn feed_finished(&self) {
        let mut rx = self.finished.clone();
        let _ = rx.wait_for(|done| *done).await;
    }

    /// Ends the session now (end-of-session sent as usual); retransmission and the
    /// order API keep serving until shutdown.
    pub fn end_feed(&self) {
        self.feed_control.cancel();
    }

    /// After `shutdown` is cancelled: stops everything and returns the final counts.
    pub async fn join(self) -> Result<ExchangeReport> {
        self.shutdown.cancelled().await;
        let publisher = self.publisher;
        tokio::task::spawn_blocking(move || publisher.join())
            .await?
            .map_err(|_| Error::ThreadPanicked)?;
        self.services_stop.cancel();
        let retransmitter = self.retransmitter;
        tokio::task::spawn_blocking(move || retransmitter.join())
            .await?
            .map_err(|_| Error::ThreadPanicked)?;
        for task in self.tasks {
            task.await?;
        }
        self.admin.await??;
        let mut report = self.stats.snapshot();
        report.session = self.session.as_str();
        report.replay = self.replay_report.map(|r| r.lock().clone());
        Ok(report)
    }
}
