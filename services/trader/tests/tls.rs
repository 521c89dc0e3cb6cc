//! The trader and the exchange in-process over TLS on loopback: the WebSocket feed
//! (wss) with HTTPS orders, and the TCP feed with binary orders over TLS. Every
//! trade arrives, every order is acknowledged, and the key log served at
//! `GET /keylog` (and written to its file) holds one set of TLS 1.3 secrets per
//! connection the exchange accepted. The key log's lines are checked against the
//! server's own key log of the same handshakes, in TLS 1.2 and 1.3. A trader that
//! does not trust the certificate counts failed handshakes. Counts, never timing.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ticklab_crd::{Instrument, OrderTransport, StrategySpec, TlsVersion, TraderSpec, Transport};
use ticklab_exchange::tls::{ServerTlsConfig, self_signed};
use ticklab_exchange::{ExchangeConfig, ExchangeHandle};
use ticklab_trader::TraderConfig;
use ticklab_trader::metrics::TraderMetrics;
use ticklab_trader::tls::{ClientTlsConfig, KEY_LOG_LINES, SessionKeyLog, TlsClient};
use tokio_util::sync::CancellationToken;

const TLS13_LABELS: [&str; 5] = [
    "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
    "SERVER_HANDSHAKE_TRAFFIC_SECRET",
    "CLIENT_TRAFFIC_SECRET_0",
    "SERVER_TRAFFIC_SECRET_0",
    "EXPORTER_SECRET",
];

/// A self-signed certificate for localhost and 127.0.0.1, written into `dir`.
fn certificate(dir: &Path) -> ServerTlsConfig {
    let pair = self_signed(&["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert_pem_path = dir.join("tls.crt");
    let key_pem_path = dir.join("tls.key");
    std::fs::write(&cert_pem_path, &pair.cert_pem).unwrap();
    std::fs::write(&key_pem_path, &pair.key_pem).unwrap();
    ServerTlsConfig {
        cert_pem_path,
        key_pem_path,
        min_version: TlsVersion::Tls12,
    }
}

async fn start_exchange(
    transport: &str,
    tls: &ServerTlsConfig,
) -> (ExchangeHandle, CancellationToken) {
    let spec = serde_json::from_value(serde_json::json!({
        "symbols": ["EURUSD", "BTCUSD"], "ratePerSecond": 10000, "seed": 5,
        "transport": transport,
    }))
    .unwrap();
    let mut config = ExchangeConfig::local("tls", spec, Some(Duration::from_millis(500)), None);
    config.tls = Some(tls.clone());
    let stop = CancellationToken::new();
    let exchange = ticklab_exchange::start(config, prometheus::Registry::new(), stop.clone())
        .await
        .unwrap();
    (exchange, stop)
}

fn trader_config(
    exchange: &ExchangeHandle,
    transport: Transport,
    orders: OrderTransport,
    tls: ClientTlsConfig,
) -> TraderConfig {
    let feed = exchange.addrs.feed.unwrap();
    TraderConfig {
        experiment: "tls".into(),
        symbols: vec![Instrument::EurUsd, Instrument::BtcUsd],
        spec: TraderSpec {
            // A low threshold: orders on most runs of a few ticks.
            strategy: StrategySpec {
                threshold_bps: 0.5,
                ..StrategySpec::default()
            },
            order_transport: orders,
            ..TraderSpec::default()
        },
        transport,
        feed_udp_listen: "127.0.0.1:0".parse().unwrap(),
        feed_connect: match transport {
            Transport::Websocket => format!("wss://{feed}/feed"),
            _ => feed.to_string(),
        },
        retransmit_server: exchange.addrs.retransmit.to_string(),
        order_tcp: exchange.addrs.order_tcp.to_string(),
        order_http: format!("https://{}", exchange.addrs.order_http),
        api_listen: "127.0.0.1:0".parse().unwrap(),
        mongodb_uri: None,
        mongodb_wait_seconds: 0,
        slo: None,
        recovery_timeout_ms: 500,
        tls: Some(tls),
    }
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs one experiment to its end: every trade delivered, every order answered.
/// Returns the exchange's report and what `GET /keylog` served before the stop.
async fn run(
    transport: Transport,
    orders: OrderTransport,
    tls: ClientTlsConfig,
    server: &ServerTlsConfig,
) -> (ticklab_exchange::ExchangeReport, reqwest::Response) {
    let name = if transport == Transport::Websocket {
        "websocket"
    } else {
        "tcp"
    };
    let (exchange, exchange_stop) = start_exchange(name, server).await;
    let trader_stop = CancellationToken::new();
    let trader = ticklab_trader::start(
        trader_config(&exchange, transport, orders, tls),
        prometheus::Registry::new(),
        trader_stop.clone(),
    )
    .await
    .unwrap();
    exchange.feed_finished().await;
    assert!(
        trader.wait_settled(Duration::from_secs(30)).await,
        "{name}: the trader did not settle: {:?}",
        trader.results()
    );
    let ledger = trader.shared.orders.clone();
    wait_for("every order to be answered", || {
        let l = ledger.lock();
        l.sent > 0 && l.filled + l.expired + l.rejected == l.sent
    })
    .await;
    let keylog = reqwest::get(format!("http://{}/keylog", trader.addrs.api))
        .await
        .unwrap();
    trader_stop.cancel();
    let results = trader.join().await.unwrap();
    exchange_stop.cancel();
    let report = exchange.join().await.unwrap();

    assert!(report.trades_published > 1000, "{name}: {report:?}");
    assert_eq!(results.sent, report.trades_published, "{name}: {results:?}");
    assert_eq!(
        results.received + results.recovered,
        report.trades_published,
        "{name}: {results:?}"
    );
    assert_eq!(
        (results.lost, results.malformed),
        (0, 0),
        "{name}: {results:?}"
    );
    assert!(results.orders > 0, "{name}: {results:?}");
    assert_eq!(report.orders_received, results.orders, "{name}: {report:?}");
    assert_eq!(ledger.lock().failed, 0);
    assert_eq!(report.tls_handshake_failures, 0, "{name}: {report:?}");
    (report, keylog)
}

/// Checks every line's shape; returns the lines per client random.
fn parse_key_log(text: &str) -> BTreeMap<String, Vec<(String, String)>> {
    let mut by_random: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let [label, random, secret] = fields[..] else {
            panic!("not three fields: {line:?}")
        };
        assert!(
            TLS13_LABELS.contains(&label) || label == "CLIENT_RANDOM",
            "unexpected label: {line}"
        );
        let hex = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        assert!(random.len() == 64 && hex(random), "client random: {line}");
        // TLS 1.3 secrets are as long as the suite's hash (SHA-256 or SHA-384); the
        // TLS 1.2 master secret is 48 bytes.
        let lengths: &[usize] = if label == "CLIENT_RANDOM" {
            &[96]
        } else {
            &[64, 96]
        };
        assert!(
            lengths.contains(&secret.len()) && hex(secret),
            "secret: {line}"
        );
        by_random
            .entry(random.to_string())
            .or_default()
            .push((label.to_string(), secret.to_string()));
    }
    by_random
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_feed_and_https_orders_with_a_key_log() {
    let dir = tempfile::tempdir().unwrap();
    let server = certificate(dir.path());
    let key_log_file = dir.path().join("keys.log");
    let tls = ClientTlsConfig {
        ca_pem_path: server.cert_pem_path.clone(),
        // Not the host of the addresses (127.0.0.1): every connection verifies this
        // name instead, and HTTPS still reaches the configured address.
        server_name: Some("localhost".into()),
        key_log_file: Some(key_log_file.clone()),
        key_log: true,
        min_version: TlsVersion::Tls12,
    };
    let (report, keylog) = run(Transport::Websocket, OrderTransport::Http, tls, &server).await;

    assert_eq!(keylog.status(), 200);
    assert_eq!(
        keylog.headers()["content-type"],
        "text/plain; charset=utf-8"
    );
    let next: u64 = keylog.headers()["x-keylog-next"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(keylog.headers()["x-keylog-first"], "0");
    let served = keylog.text().await.unwrap();
    assert_eq!(served.lines().count() as u64, next);
    // The file holds the same lines, each flushed as it was logged.
    assert_eq!(std::fs::read_to_string(&key_log_file).unwrap(), served);

    let by_random = parse_key_log(&served);
    // One client random per handshake the exchange completed (the WebSocket and
    // one or more HTTPS connections), each with the five TLS 1.3 secrets: the
    // versions were left open, and rustls prefers 1.3.
    assert!(by_random.len() >= 2, "{served}");
    assert_eq!(by_random.len() as u64, report.tls_handshakes, "{served}");
    for (random, lines) in &by_random {
        let labels: BTreeSet<&str> = lines.iter().map(|(l, _)| l.as_str()).collect();
        assert!(lines.len() >= 2, "{random}: {lines:?}");
        assert_eq!(labels, TLS13_LABELS.into_iter().collect(), "{random}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_tcp_feed_and_tls_tcp_orders_without_a_key_log() {
    let dir = tempfile::tempdir().unwrap();
    let server = certificate(dir.path());
    let tls = ClientTlsConfig {
        ca_pem_path: server.cert_pem_path.clone(),
        server_name: None,
        key_log_file: None,
        key_log: false,
        min_version: TlsVersion::Tls13,
    };
    let (report, keylog) = run(Transport::Tcp, OrderTransport::Tcp, tls, &server).await;
    // The feed and the order channel.
    assert_eq!(report.tls_handshakes, 2, "{report:?}");
    assert_eq!(keylog.status(), 404);
    let body: serde_json::Value = keylog.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("keyLog"), "{body}");
}

/// The server's key log of the same handshakes, for comparison.
#[derive(Debug, Default)]
struct Collected(Mutex<Vec<String>>);

impl rustls::KeyLog for Collected {
    fn log(&self, label: &str, client_random: &[u8], secret: &[u8]) {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        self.0
            .lock()
            .unwrap()
            .push(format!("{label} {} {}", hex(client_random), hex(secret)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_log_lines_are_the_secrets_the_server_derived_in_tls_1_2_and_1_3() {
    use rustls::pki_types::pem::PemObject;
    let dir = tempfile::tempdir().unwrap();
    let server = certificate(dir.path());
    let chain: Vec<_> = rustls::pki_types::CertificateDer::pem_file_iter(&server.cert_pem_path)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&server.key_pem_path).unwrap();
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let server_log = Arc::new(Collected::default());
        let mut server_config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain.clone(), key.clone_key())
        .unwrap();
        server_config.key_log = server_log.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
        let accepting = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.unwrap();
            // Until the client closes: the session is complete on both sides.
            let mut sink = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut tls, &mut sink).await;
        });

        let metrics = TraderMetrics::register(&prometheus::Registry::new()).unwrap();
        let key_log = Arc::new(SessionKeyLog::open(None, KEY_LOG_LINES, &metrics).unwrap());
        let client = TlsClient::new(
            &ClientTlsConfig {
                ca_pem_path: server.cert_pem_path.clone(),
                server_name: None,
                key_log_file: None,
                key_log: true,
                min_version: TlsVersion::Tls12,
            },
            Some(key_log.clone()),
            &metrics,
        )
        .unwrap();
        let mut stream = client.connect(&addr.to_string()).await.unwrap();
        tokio::io::AsyncWriteExt::shutdown(&mut stream)
            .await
            .unwrap();
        drop(stream);
        accepting.await.unwrap();

        let ours = key_log.read_from(0, usize::MAX).lines;
        let theirs = server_log.0.lock().unwrap().clone();
        let by_random = parse_key_log(&(ours.join("\n") + "\n"));
        assert_eq!(by_random.len(), 1, "{version:?}: {ours:?}");
        if *version == rustls::version::TLS12 {
            assert_eq!(ours.len(), 1, "{ours:?}");
            assert!(ours[0].starts_with("CLIENT_RANDOM "), "{ours:?}");
        } else {
            assert_eq!(ours.len(), 5, "{ours:?}");
        }
        let sorted = |mut v: Vec<String>| {
            v.sort();
            v
        };
        assert_eq!(sorted(ours), sorted(theirs), "{version:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_the_trader_does_not_trust_is_counted_and_nothing_is_received() {
    let dir = tempfile::tempdir().unwrap();
    let server = certificate(dir.path());
    let other = tempfile::tempdir().unwrap();
    let untrusted: PathBuf = certificate(other.path()).cert_pem_path;
    let (exchange, exchange_stop) = start_exchange("tcp", &server).await;
    let trader_stop = CancellationToken::new();
    let trader = ticklab_trader::start(
        trader_config(
            &exchange,
            Transport::Tcp,
            OrderTransport::Tcp,
            ClientTlsConfig {
                ca_pem_path: untrusted,
                server_name: None,
                key_log_file: None,
                key_log: false,
                min_version: TlsVersion::Tls12,
            },
        ),
        prometheus::Registry::new(),
        trader_stop.clone(),
    )
    .await
    .unwrap();
    let metrics_url = format!("http://{}/metrics", trader.addrs.api);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = reqwest::get(&metrics_url)
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let failures = text
            .lines()
            .find(|l| l.starts_with("ticklab_trader_tls_handshake_failures_total"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        // Feed and order channel both refused, at least once each.
        if failures >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no failed handshake counted:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    trader_stop.cancel();
    let results = trader.join().await.unwrap();
    exchange_stop.cancel();
    let report = exchange.join().await.unwrap();
    assert_eq!(results.received, 0, "{results:?}");
    assert_eq!(
        report.trades_published, 0,
        "the feed never started: {report:?}"
    );
    assert_eq!(report.tls_handshakes, 0, "{report:?}");
    assert!(report.tls_handshake_failures >= 2, "{report:?}");
}

#[tokio::test]
async fn addresses_that_disagree_with_the_tls_setting_fail_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let server = certificate(dir.path());
    let (exchange, exchange_stop) = start_exchange("websocket", &server).await;
    let tls = ClientTlsConfig {
        ca_pem_path: server.cert_pem_path.clone(),
        server_name: None,
        key_log_file: None,
        key_log: false,
        min_version: TlsVersion::Tls12,
    };
    let start = |config| {
        ticklab_trader::start(
            config,
            prometheus::Registry::new(),
            CancellationToken::new(),
        )
    };

    let mut plain_url = trader_config(
        &exchange,
        Transport::Websocket,
        OrderTransport::Http,
        tls.clone(),
    );
    plain_url.feed_connect = plain_url.feed_connect.replace("wss://", "ws://");
    let e = start(plain_url).await.err().unwrap().to_string();
    assert!(e.contains("feedConnect") && e.contains("wss://"), "{e}");

    let mut no_tls = trader_config(
        &exchange,
        Transport::Websocket,
        OrderTransport::Http,
        tls.clone(),
    );
    no_tls.tls = None;
    let e = start(no_tls).await.err().unwrap().to_string();
    assert!(e.contains("ws://") && e.contains("no tls"), "{e}");

    let mut missing_ca = trader_config(
        &exchange,
        Transport::Websocket,
        OrderTransport::Http,
        tls.clone(),
    );
    let missing = dir.path().join("absent-ca.crt");
    missing_ca.tls.as_mut().unwrap().ca_pem_path = missing.clone();
    let e = start(missing_ca).await.err().unwrap().to_string();
    assert!(e.contains(&missing.display().to_string()), "{e}");

    let mut file_without_log =
        trader_config(&exchange, Transport::Websocket, OrderTransport::Http, tls);
    file_without_log.tls.as_mut().unwrap().key_log_file = Some(dir.path().join("k.log"));
    let e = start(file_without_log).await.err().unwrap().to_string();
    assert!(e.contains("keyLog"), "{e}");

    exchange_stop.cancel();
    exchange.join().await.unwrap();
}
