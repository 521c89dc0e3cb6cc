//! Local mode: runs one experiment on loopback. The trader starts first (its feed
//! socket must exist before the exchange sends), then the exchange; a progress bar
//! shows the live rate and percentiles; when the exchange ends the session the
//! trader gets a moment to recover the last gaps, then both stop and the report
//! is printed. RecordingSessions in the same file record the feed into
//! `--recordings-dir`; an experiment whose exchange replays a recording (or
//! `ticklab replay FILE`) publishes that file instead of generated trades.
//!
//! With `spec.tls`, a self-signed certificate for 127.0.0.1 and localhost is made in
//! a private temporary directory (removed when the pair stops), the exchange serves
//! it and the trader trusts it; with `keyLog`, the trader's key log is served at its
//! `/keylog` and, when `SSLKEYLOGFILE` names a file, appended to that file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use ticklab_crd::experiment_file::{ExperimentFileError, Manifest};
use ticklab_crd::mirror_session::MirrorMode;
use ticklab_crd::{
    ExperimentResults, Instrument, LatencyExperiment, LatencyExperimentSpec, MirrorSession,
    RecordingSession, SloVerdict, TlsVersion, Transport,
};
use ticklab_exchange::replay::ReplayConfig;
use ticklab_exchange::tls::ServerTlsConfig;
use ticklab_exchange::{ExchangeConfig, ExchangeReport};
use ticklab_trader::TraderConfig;
use ticklab_trader::tls::ClientTlsConfig;
use tokio_util::sync::CancellationToken;

use crate::ports::{free_tcp, free_udp, loopback};
use crate::progress::Progress;
use crate::recording::{LocalRecorders, replay_of};
use crate::report;
use crate::{OutputFormat, ReplayArgs, RunArgs, TransportArg, exit};

/// How long the trader may keep recovering after the feed ended.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);
/// The same after Ctrl-C, when the user wants the report now.
const INTERRUPT_SETTLE_TIMEOUT: Duration = Duration::from_secs(1);

/// What `--output json` prints.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunReport {
    pub experiment: String,
    pub transport: Transport,
    pub rate_per_second: u64,
    pub elapsed_seconds: f64,
    /// "mongodb" or "memory".
    pub persistence: &'static str,
    pub interrupted: bool,
    pub results: ExperimentResults,
    pub exchange: ExchangeReport,
    /// What each RecordingSession recorded, and where.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub recordings: Vec<RecordingSummary>,
    /// Where the run listened (e.g. the ports to decode as TLS in a capture).
    pub endpoints: LocalEndpoints,
    /// With `spec.tls`: what was encrypted and where the key log went.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSummary>,
    /// With a MirrorSession: what the wire showed (the capture's report).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wire: Option<ticklab_capture::analyzer::WireReport>,
}

/// Loopback addresses of a local run.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalEndpoints {
    /// TCP or WebSocket feed (absent for UDP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feed: Option<String>,
    pub retransmit: String,
    pub order_tcp: String,
    pub order_http: String,
    pub exchange_admin: String,
    pub trader_api: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsSummary {
    pub min_version: TlsVersion,
    /// Handshakes the exchange completed (feed and order connections).
    pub handshakes: u64,
    pub handshake_failures: u64,
    /// Key log lines the trader logged (with `keyLog`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_log_lines: Option<u64>,
    /// The key log file (with `keyLog` and `SSLKEYLOGFILE`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_log_file: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordingSummary {
    pub name: String,
    pub directory: String,
    pub packets: u64,
    pub bytes: u64,
    pub files: usize,
    pub recovered: u64,
    pub unrecoverable: u64,
    pub write_errors: u64,
}

/// Exchange and trader running on loopback for one experiment.
pub struct LocalPair {
    pub trader: ticklab_trader::TraderHandle,
    pub exchange: ticklab_exchange::ExchangeHandle,
    trader_stop: CancellationToken,
    exchange_stop: CancellationToken,
    /// The certificate's directory, removed when the pair is dropped.
    _tls_dir: Option<PrivateDir>,
}

/// A directory only this user can read, removed with everything in it on drop
/// (also when a start fails half-way, or the run is interrupted).
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn create() -> std::io::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!("ticklab-tls-{}-{nanos}", std::process::id()));
        let mut builder = std::fs::DirBuilder::new();
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder.create(&path)?;
        Ok(Self(path))
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A self-signed certificate for 127.0.0.1 and localhost, written to a private
/// temporary directory: the exchange serves it, the trader trusts it.
fn local_certificate(min_version: TlsVersion) -> anyhow::Result<(PrivateDir, ServerTlsConfig)> {
    let dir = PrivateDir::create().context("cannot create a directory for the TLS certificate")?;
    let pair = ticklab_exchange::tls::self_signed(&["127.0.0.1".into(), "localhost".into()])
        .context("cannot generate a TLS certificate")?;
    let cert_pem_path = dir.0.join("tls.crt");
    let key_pem_path = dir.0.join("tls.key");
    std::fs::write(&cert_pem_path, &pair.cert_pem)
        .with_context(|| format!("cannot write {}", cert_pem_path.display()))?;
    std::fs::write(&key_pem_path, &pair.key_pem)
        .with_context(|| format!("cannot write {}", key_pem_path.display()))?;
    Ok((
        dir,
        ServerTlsConfig {
            cert_pem_path,
            key_pem_path,
            min_version,
        },
    ))
}

/// The loopback addresses of a local pair, picked before it starts, so a mirror can
/// be listening before the first packet (it tells the trader's traffic apart on
/// loopback by these ports).
#[derive(Clone, Debug)]
pub struct PairPorts {
    pub retransmit: SocketAddr,
    pub order_tcp: SocketAddr,
    pub order_http: SocketAddr,
    pub feed_stream: SocketAddr,
    pub trader_feed: SocketAddr,
    pub trader_api: SocketAddr,
}

impl PairPorts {
    /// Free ports on 127.0.0.1; the trader's API on `trader_api_port` unless 0.
    pub fn pick(trader_api_port: u16) -> anyhow::Result<Self> {
        let tcp = || free_tcp().context("no free TCP port on 127.0.0.1");
        let udp = || free_udp().context("no free UDP port on 127.0.0.1");
        Ok(Self {
            retransmit: udp()?,
            order_tcp: tcp()?,
            order_http: tcp()?,
            feed_stream: tcp()?,
            trader_feed: udp()?,
            trader_api: if trader_api_port == 0 {
                tcp()?
            } else {
                loopback(trader_api_port)
            },
        })
    }
}

/// Knobs local mode and the benchmarks set beyond the experiment spec.
pub struct PairOptions {
    /// Addresses picked beforehand; None: picked at start.
    pub ports: Option<PairPorts>,
    pub duration: Option<Duration>,
    pub mongodb_uri: Option<String>,
    pub trader_port: u16,
    pub exchange_port: u16,
    /// Publish this recording instead of generated trades.
    pub replay: Option<ReplayConfig>,
}

impl LocalPair {
    /// Starts the trader, then the exchange aimed at it.
    pub async fn start(
        name: &str,
        spec: &LatencyExperimentSpec,
        options: &PairOptions,
    ) -> anyhow::Result<Self> {
        Self::start_with_key_log(name, spec, options, None).await
    }

    /// [`LocalPair::start`]; with `spec.tls.keyLog`, the trader also appends its key
    /// log to `key_log_file`.
    pub async fn start_with_key_log(
        name: &str,
        spec: &LatencyExperimentSpec,
        options: &PairOptions,
        key_log_file: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let transport = spec.exchange.transport;
        let tls = match &spec.tls {
            Some(tls) => Some((tls, local_certificate(tls.min_version)?)),
            None => None,
        };
        let (ws, http) = if tls.is_some() {
            ("wss", "https")
        } else {
            ("ws", "http")
        };
        let ports = match &options.ports {
            Some(p) => p.clone(),
            None => PairPorts::pick(options.trader_port)?,
        };
        let PairPorts {
            retransmit,
            order_tcp,
            order_http,
            feed_stream,
            trader_feed,
            trader_api,
        } = ports;
        let trader_stop = CancellationToken::new();
        let exchange_stop = CancellationToken::new();
        // Both registries before anything starts: a failure here has nothing to stop.
        let trader_registry = ticklab_admin::experiment_registry("trader", name)?;
        let exchange_registry = ticklab_admin::experiment_registry("exchange", name)?;

        // A replay trades whatever was recorded: the trader knows every instrument.
        let symbols = if options.replay.is_some() && spec.exchange.symbols.is_empty() {
            Instrument::ALL.to_vec()
        } else {
            spec.exchange.symbols.clone()
        };
        let trader_config = TraderConfig {
            experiment: name.to_string(),
            symbols,
            spec: spec.trader.clone(),
            transport,
            feed_udp_listen: trader_feed,
            feed_connect: match transport {
                Transport::Udp => String::new(),
                Transport::Tcp => feed_stream.to_string(),
                Transport::Websocket => format!("{ws}://{feed_stream}/feed"),
            },
            retransmit_server: retransmit.to_string(),
            order_tcp: order_tcp.to_string(),
            order_http: format!("{http}://{order_http}"),
            api_listen: trader_api,
            mongodb_uri: options.mongodb_uri.clone(),
            mongodb_wait_seconds: 0,
            slo: spec.slo.clone(),
            recovery_timeout_ms: ticklab_trader::DEFAULT_RECOVERY_TIMEOUT_MS,
            tls: tls.as_ref().map(|(spec, (_, server))| ClientTlsConfig {
                ca_pem_path: server.cert_pem_path.clone(),
                // The addresses are 127.0.0.1, which the certificate names.
                server_name: None,
                key_log_file: key_log_file.filter(|_| spec.key_log).map(Path::to_path_buf),
                key_log: spec.key_log,
                min_version: spec.min_version,
            }),
        };
        let trader = ticklab_trader::start(trader_config, trader_registry, trader_stop.clone())
            .await
            .context("trader")?;

        let exchange_config = ExchangeConfig {
            experiment: name.to_string(),
            spec: spec.exchange.clone(),
            duration: options.duration,
            feed_udp_target: trader.addrs.feed_udp.map(|a| a.to_string()),
            feed_listen: feed_stream,
            retransmit_listen: retransmit,
            order_tcp_listen: order_tcp,
            order_http_listen: order_http,
            admin_listen: loopback(options.exchange_port),
            replay: options.replay.clone(),
            tls: tls.as_ref().map(|(_, (_, server))| server.clone()),
        };
        match ticklab_exchange::start(exchange_config, exchange_registry, exchange_stop.clone())
            .await
        {
            Ok(exchange) => Ok(Self {
                trader,
                exchange,
                trader_stop,
                exchange_stop,
                _tls_dir: tls.map(|(_, (dir, _))| dir),
            }),
            Err(e) => {
                trader_stop.cancel();
                let _ = trader.join().await;
                Err(anyhow::Error::new(e).context("exchange"))
            }
        }
    }

    /// Stops both (the trader first, so what it still misses counts as lost) and
    /// returns the trader's results, reconciled with the exchange's own count.
    pub async fn stop(self) -> anyhow::Result<(ExperimentResults, ExchangeReport)> {
        self.trader_stop.cancel();
        let mut results = self.trader.join().await.context("trader")?;
        self.exchange_stop.cancel();
        let exchange = self.exchange.join().await.context("exchange")?;
        // On one machine the exchange's own count is authoritative: trades it
        // published that the trader never learnt of (by sequence number) are lost too.
        let published = exchange.trades_published;
        results.lost += published.saturating_sub(results.sent);
        results.sent = results.sent.max(published);
        Ok((results, exchange))
    }
}

/// The experiment of a `ticklab run` file, the RecordingSessions that record it and
/// the MirrorSession (at most one, mode sidecar) that mirrors its trader. A session
/// naming another experiment is an error (it would record or mirror nothing).
pub fn load_run_file(
    path: &std::path::Path,
) -> Result<(LatencyExperiment, Vec<RecordingSession>, Vec<MirrorSession>), ExperimentFileError> {
    let origin = path.display().to_string();
    let invalid = |field: &str, problem: String| ExperimentFileError::Invalid {
        origin: origin.clone(),
        field: field.to_string(),
        problem,
    };
    let manifests = ticklab_crd::load_manifests(path)?;
    let mut experiments = Vec::new();
    let mut sessions = Vec::new();
    let mut mirrors: Vec<MirrorSession> = Vec::new();
    for manifest in manifests {
        match manifest {
            Manifest::Experiment(e) => experiments.push(e),
            Manifest::Recording(r) => sessions.push(r),
            Manifest::Mirror(m) => mirrors.push(m),
        }
    }
    let experiment = match experiments.len() {
        1 => experiments.remove(0),
        0 => {
            return Err(invalid(
                "kind",
                "the file holds no LatencyExperiment".into(),
            ));
        }
        n => {
            return Err(invalid(
                "kind",
                format!("the file holds {n} LatencyExperiments; ticklab run runs one"),
            ));
        }
    };
    let name = experiment.metadata.name.clone().unwrap_or_default();
    if let Some(other) = sessions.iter().find(|s| s.spec.experiment != name) {
        return Err(invalid(
            "spec.experiment",
            format!(
                "RecordingSession {:?} records experiment {:?}, which is not in the file (it holds {name:?})",
                other.metadata.name.clone().unwrap_or_default(),
                other.spec.experiment
            ),
        ));
    }
    if let Some(other) = mirrors.iter().find(|m| m.spec.experiment != name) {
        return Err(invalid(
            "spec.experiment",
            format!(
                "MirrorSession {:?} mirrors experiment {:?}, which is not in the file (it holds {name:?})",
                other.metadata.name.clone().unwrap_or_default(),
                other.spec.experiment
            ),
        ));
    }
    if mirrors.len() > 1 {
        return Err(invalid(
            "kind",
            format!(
                "the file holds {} MirrorSessions; ticklab run mirrors its trader once",
                mirrors.len()
            ),
        ));
    }
    if let Some(m) = mirrors.first()
        && m.spec.mode == MirrorMode::Vpc
    {
        return Err(invalid(
            "spec.mode",
            format!(
                "MirrorSession {:?} is mode vpc (AWS mirroring delivers to a cluster); ticklab run mirrors its trader itself: use mode sidecar",
                m.metadata.name.clone().unwrap_or_default()
            ),
        ));
    }
    Ok((experiment, sessions, mirrors))
}

/// `ticklab replay FILE`: an experiment whose exchange replays FILE into a trader.
pub fn replay_run(args: &ReplayArgs) -> anyhow::Result<(LatencyExperiment, RunArgs, ReplayConfig)> {
    if !args.file.is_file() {
        anyhow::bail!("{}: no such file", args.file.display());
    }
    let transport = match args.transport {
        TransportArg::Udp => "udp",
        TransportArg::Tcp => "tcp",
        TransportArg::Websocket => "websocket",
    };
    let file_name = args
        .file
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let experiment: LatencyExperiment = serde_json::from_value(serde_json::json!({
        "apiVersion": "ticklab.dev/v1alpha1",
        "kind": "LatencyExperiment",
        "metadata": {"name": args.name},
        "spec": {
            "exchange": {
                "transport": transport,
                "replay": {"recording": "local", "file": file_name, "loop": args.looped},
            },
            "trader": {"persistence": {"enabled": false}},
        },
    }))
    .context("building the replay experiment")?;
    let replay = ReplayConfig {
        source: args.file.display().to_string(),
        speed: (!args.top_speed).then_some(args.speed),
        looped: args.looped,
    };
    let run_args = RunArgs {
        file: args.file.clone(),
        output: args.output,
        mongodb_uri: None,
        duration: args.duration,
        trader_port: args.trader_port,
        exchange_port: args.exchange_port,
        quiet: args.quiet,
        recordings_dir: std::path::PathBuf::from("recordings"),
        recorder_port: 0,
        keylog: None,
        capture_port: 0,
        mirror_port: 0,
        capture_dir: None,
    };
    Ok((experiment, run_args, replay))
}

pub async fn run(
    experiment: LatencyExperiment,
    sessions: Vec<RecordingSession>,
    mirrors: Vec<MirrorSession>,
    args: RunArgs,
    replay: Option<ReplayConfig>,
) -> anyhow::Result<u8> {
    let name = experiment
        .metadata
        .name
        .clone()
        .unwrap_or_else(|| "experiment".into());
    let spec = experiment.spec;
    let duration = args.duration.or_else(|| spec.run_duration());
    let transport = spec.exchange.transport;
    let mongodb_uri = if spec.trader.persistence.enabled {
        args.mongodb_uri.clone()
    } else {
        None
    };
    let interrupted = CancellationToken::new();
    ticklab_admin::cancel_on_signal(interrupted.clone());
    let replay = replay.or_else(|| replay_of(&spec, &args.recordings_dir));
    let replaying = replay.is_some();
    let key_log_file = args
        .keylog
        .clone()
        .filter(|_| spec.tls.as_ref().is_some_and(|t| t.key_log));
    let ports = PairPorts::pick(args.trader_port)?;
    // The mirror listens before the first packet: it sees every handshake.
    let mirror = match mirrors.first() {
        Some(session) => Some(
            crate::local_mirror::LocalMirror::start(
                &name,
                session,
                &ports,
                !sessions.is_empty(),
                args.capture_port,
                args.mirror_port,
                args.capture_dir.clone(),
            )
            .await?,
        ),
        None => None,
    };
    let pair = match LocalPair::start_with_key_log(
        &name,
        &spec,
        &PairOptions {
            ports: Some(ports),
            duration,
            mongodb_uri: mongodb_uri.clone(),
            trader_port: args.trader_port,
            exchange_port: args.exchange_port,
            replay,
        },
        key_log_file.as_deref(),
    )
    .await
    {
        Ok(pair) => pair,
        Err(e) => {
            if let Some(m) = mirror {
                let _ = m.stop(None).await;
            }
            return Err(e);
        }
    };
    let recorders = match LocalRecorders::start(
        &name,
        &sessions,
        &args.recordings_dir,
        pair.exchange.addrs.retransmit,
        args.recorder_port,
    )
    .await
    {
        Ok(r) => r,
        Err(e) => {
            let _ = pair.stop().await;
            return Err(e);
        }
    };
    let (trader, exchange) = (&pair.trader, &pair.exchange);
    let endpoints = LocalEndpoints {
        feed: exchange.addrs.feed.map(|a| a.to_string()),
        retransmit: exchange.addrs.retransmit.to_string(),
        order_tcp: exchange.addrs.order_tcp.to_string(),
        order_http: exchange.addrs.order_http.to_string(),
        exchange_admin: exchange.addrs.admin.to_string(),
        trader_api: trader.addrs.api.to_string(),
    };
    let key_log = trader.key_log.clone();

    let quiet = args.quiet || args.output == OutputFormat::Json;
    if !quiet {
        let what = if replaying {
            "a recording".to_string()
        } else {
            format!("{} trades/s", spec.exchange.rate_per_second)
        };
        eprintln!(
            "ticklab: running {name:?}: {what} over {} for {}; trader API http://{}/stats, metrics http://{}/metrics and http://{}/metrics",
            transport_name(transport),
            duration.map_or_else(|| "until Ctrl-C".to_string(), |d| format!("{d:?}")),
            trader.addrs.api,
            trader.addrs.api,
            exchange.addrs.admin,
        );
        if mongodb_uri.is_none() {
            eprintln!(
                "ticklab: trades are kept in memory only (last 1000); pass --mongodb-uri or set MONGODB_URI to persist them"
            );
        }
        if let Some(tls) = &spec.tls {
            if let Some(secret) = &tls.secret_name {
                eprintln!(
                    "ticklab: spec.tls.secretName {secret:?} names a Kubernetes Secret; on this machine a self-signed certificate for 127.0.0.1 is used instead"
                );
            }
            let key_log = match (tls.key_log, &key_log_file) {
                (false, _) => String::new(),
                (true, Some(file)) => format!(
                    "; TLS key log at http://{}/keylog and {}",
                    trader.addrs.api,
                    file.display()
                ),
                (true, None) => format!(
                    "; TLS key log at http://{}/keylog (--keylog FILE or SSLKEYLOGFILE for a file)",
                    trader.addrs.api
                ),
            };
            let channels = match transport {
                Transport::Udp => "the order channels (the UDP feed stays plain)".to_string(),
                t => format!("the {} feed and the order channels", transport_name(t)),
            };
            eprintln!(
                "ticklab: TLS on {channels}, with a self-signed certificate for 127.0.0.1{key_log}"
            );
        }
    }

    let started = Instant::now();
    let progress = Progress::new(duration, quiet);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut was_interrupted = false;
    loop {
        tokio::select! {
            _ = exchange.feed_finished() => break,
            _ = interrupted.cancelled() => { was_interrupted = true; break }
            _ = tick.tick() => progress.update(&trader.results(), started.elapsed()),
        }
    }
    if was_interrupted {
        // End the session cleanly so trades already on the way are counted as
        // delivered, not lost, then give recovery a short moment.
        exchange.end_feed();
        exchange.feed_finished().await;
        trader.wait_settled(INTERRUPT_SETTLE_TIMEOUT).await;
    } else {
        progress.set_message("feed ended; recovering the last gaps");
        tokio::select! {
            _ = trader.wait_settled(SETTLE_TIMEOUT) => {},
            _ = interrupted.cancelled() => was_interrupted = true,
        }
    }
    progress.finish();
    let elapsed = started.elapsed();
    // Recorders first: they may still be recovering the last gaps from the exchange.
    let recorded = if recorders.is_empty() {
        Vec::new()
    } else {
        recorders.stop().await?
    };
    let trader_shared = pair.trader.shared.clone();
    let (mut results, exchange_report) = pair.stop().await?;
    // The mirror last: it has seen everything the pair sent until it stopped. The
    // trader's last receive stamps (its final flush came after the capture's last
    // poll) go to the capture directly.
    let wire = match mirror {
        Some(m) => {
            let stamps = {
                let feed = trader_shared.feed.lock();
                feed.stamps
                    .session
                    .clone()
                    .map(|session| (session, feed.stamps.page(0, usize::MAX).1))
            };
            Some(m.stop(stamps).await?)
        }
        None => None,
    };
    let recordings = recorded
        .into_iter()
        .map(|(status, dir)| RecordingSummary {
            name: status.recording,
            directory: dir.display().to_string(),
            packets: status.packets,
            bytes: status.bytes,
            files: status.index.files.len(),
            recovered: status.recovered,
            unrecoverable: status.unrecoverable,
            write_errors: status.write_errors,
        })
        .collect();
    if let Some(slo) = &spec.slo {
        results.slo_verdict = Some(results.judge(slo));
    }

    let run_report = RunReport {
        experiment: name,
        transport,
        rate_per_second: spec.exchange.rate_per_second,
        elapsed_seconds: (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
        persistence: if mongodb_uri.is_some() {
            "mongodb"
        } else {
            "memory"
        },
        interrupted: was_interrupted,
        tls: spec.tls.as_ref().map(|tls| TlsSummary {
            min_version: tls.min_version,
            handshakes: exchange_report.tls_handshakes,
            handshake_failures: exchange_report.tls_handshake_failures,
            key_log_lines: key_log.as_ref().map(|k| k.logged()),
            key_log_file: key_log_file.as_ref().map(|f| f.display().to_string()),
        }),
        results,
        exchange: exchange_report,
        recordings,
        endpoints,
        wire,
    };
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&run_report)?),
        OutputFormat::Table => println!("{}", report::table(&run_report)),
    }
    Ok(match run_report.results.slo_verdict {
        Some(SloVerdict::Breached) => exit::SLO_BREACHED,
        _ => exit::OK,
    })
}

pub fn transport_name(t: Transport) -> &'static str {
    match t {
        Transport::Udp => "UDP",
        Transport::Tcp => "TCP",
        Transport::Websocket => "WebSocket",
    }
}
