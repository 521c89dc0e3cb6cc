//! The exchange's TCP channels over TLS, on loopback: TLS subscribers to the TCP and
//! WebSocket (wss) feeds get every packet; orders are acknowledged over TLS TCP and
//! HTTPS; a client speaking plain TCP to a TLS port is counted as a failed handshake
//! and the listener goes on serving; a missing certificate fails the start naming
//! the file. Counts only, never timing.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use rustls::pki_types::ServerName;
use ticklab_crd::TlsVersion;
use ticklab_exchange::tls::{ServerTlsConfig, self_signed};
use ticklab_exchange::{ExchangeConfig, ExchangeHandle, start};
use ticklab_wire::*;
use tokio::io::AsyncWriteExt;
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

/// A self-signed certificate for 127.0.0.1 and localhost, written to `dir`.
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

/// A client configuration trusting only `cert`.
fn client_config(cert: &Path) -> rustls::ClientConfig {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

async fn tls_connect(
    config: &rustls::ClientConfig,
    addr: std::net::SocketAddr,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config.clone()))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap()
}

fn spec(extra: serde_json::Value) -> ticklab_crd::ExchangeSpec {
    let mut v =
        serde_json::json!({"symbols": ["EURUSD", "BTCUSD"], "ratePerSecond": 10000, "seed": 11});
    v.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    serde_json::from_value(v).unwrap()
}

async fn exchange(
    spec: ticklab_crd::ExchangeSpec,
    target: Option<String>,
    millis: u64,
    tls: &ServerTlsConfig,
) -> (ExchangeHandle, CancellationToken) {
    let stop = CancellationToken::new();
    let mut config =
        ExchangeConfig::local("tls", spec, Some(Duration::from_millis(millis)), target);
    config.tls = Some(tls.clone());
    let handle = start(config, prometheus::Registry::new(), stop.clone())
        .await
        .unwrap();
    (handle, stop)
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Connects in plain TCP, sends `bytes` and waits for the exchange to close the
/// connection: a TLS port must refuse it and count a failed handshake.
async fn plain_client_is_refused(ex: &ExchangeHandle, addr: std::net::SocketAddr, bytes: &[u8]) {
    let before = ex.stats.tls_handshake_failures.load(Ordering::Acquire);
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain.write_all(bytes).await.unwrap();
    wait_for("the plain client's failed handshake to be counted", || {
        ex.stats.tls_handshake_failures.load(Ordering::Acquire) > before
    })
    .await;
}

async fn metrics_text(ex: &ExchangeHandle) -> String {
    reqwest::get(format!("http://{}/metrics", ex.addrs.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_subscribers_get_every_packet_and_plain_clients_are_counted_and_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tls = certificate(dir.path());
    let client = client_config(&tls.cert_pem_path);
    for transport in ["tcp", "websocket"] {
        let (ex, stop) = exchange(
            spec(serde_json::json!({"transport": transport})),
            None,
            300,
            &tls,
        )
        .await;
        let addr = ex.addrs.feed.unwrap();
        // Plain first: refused and counted, and it does not start the feed.
        let plain: &[u8] = if transport == "tcp" {
            b"\x00\x05hello"
        } else {
            b"GET /feed HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n"
        };
        plain_client_is_refused(&ex, addr, plain).await;
        assert_eq!(ex.stats.trades_published.load(Ordering::Acquire), 0);
        assert_eq!(ex.stats.subscribers.load(Ordering::Acquire), 0);

        // The listener still serves: a TLS subscriber gets the whole feed.
        let mut seqs = Vec::new();
        let mut on_packet = |bytes: &[u8]| -> bool {
            let p = FeedPacket::parse(bytes).unwrap();
            seqs.extend(p.messages().map(|(s, _)| s));
            p.kind == PacketKind::EndOfSession
        };
        let stream = tls_connect(&client, addr).await;
        if transport == "tcp" {
            let codec = LengthDelimitedCodec::builder()
                .length_field_length(2)
                .new_codec();
            let mut framed = Framed::new(stream, codec);
            while let Some(frame) = framed.next().await {
                if on_packet(&frame.unwrap()) {
                    break;
                }
            }
        } else {
            let (mut ws, _) = tokio_tungstenite::client_async(format!("wss://{addr}/feed"), stream)
                .await
                .unwrap();
            while let Some(msg) = ws.next().await {
                if let tokio_tungstenite::tungstenite::Message::Binary(b) = msg.unwrap()
                    && on_packet(&b)
                {
                    break;
                }
            }
            let _ = ws.close(None).await;
        }
        let metrics = metrics_text(&ex).await;
        stop.cancel();
        let report = ex.join().await.unwrap();
        assert!(report.trades_published > 1000, "{transport}: {report:?}");
        assert_eq!(
            seqs,
            (1..=report.trades_published).collect::<Vec<_>>(),
            "{transport}"
        );
        assert_eq!(
            (report.tls_handshakes, report.tls_handshake_failures),
            (1, 1),
            "{transport}: {report:?}"
        );
        assert!(
            metrics.contains("ticklab_exchange_tls_handshakes_total{channel=\"feed\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("ticklab_exchange_tls_handshake_failures_total{channel=\"feed\"} 1"),
            "{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_are_acknowledged_over_tls_tcp_and_https_and_plain_ones_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tls = certificate(dir.path());
    let client = client_config(&tls.cert_pem_path);
    let feed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let (ex, stop) = exchange(
        spec(serde_json::json!({"symbols": ["EURUSD"]})),
        Some(feed.local_addr().unwrap().to_string()),
        60_000,
        &tls,
    )
    .await;
    // The UDP feed stays plain: subscribe and learn a price from it.
    let mut subscription = Vec::new();
    RetransmitRequest::subscription().encode(&mut subscription);
    feed.send_to(&subscription, ex.addrs.retransmit).unwrap();
    feed.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = vec![0u8; 65536];
    let last = loop {
        let len = feed.recv(&mut buf).unwrap();
        let p = FeedPacket::parse(&buf[..len]).unwrap();
        if let Some((_, Ok(Message::Trade(t)))) = p.messages().last() {
            break t.price.0;
        }
    };
    let order = |id: u64| Order {
        client_order_id: id,
        symbol: Symbol::new("EURUSD").unwrap(),
        side: Side::Buy,
        limit_price: Price(last * 2),
        quantity: Quantity(1000),
        trigger_seq: 1,
        send_ts_ns: now_unix_nanos(),
    };

    // Binary orders: a plain client is refused, then a TLS one gets Ack and Fill.
    let mut raw = Vec::new();
    Message::Order(order(1)).encode(&mut raw);
    let mut framed_plain = raw.len().to_be_bytes()[6..].to_vec();
    framed_plain.extend_from_slice(&raw);
    plain_client_is_refused(&ex, ex.addrs.order_tcp, &framed_plain).await;
    let codec = LengthDelimitedCodec::builder()
        .length_field_length(2)
        .new_codec();
    let mut framed = Framed::new(tls_connect(&client, ex.addrs.order_tcp).await, codec);
    framed.send(bytes::Bytes::from(raw)).await.unwrap();
    let Message::Ack(ack) = Message::decode(&framed.next().await.unwrap().unwrap()).unwrap() else {
        panic!("no ack")
    };
    assert_eq!((ack.client_order_id, ack.status), (1, AckStatus::Accepted));
    let Message::Fill(fill) = Message::decode(&framed.next().await.unwrap().unwrap()).unwrap()
    else {
        panic!("no fill")
    };
    assert_eq!(fill.client_order_id, 1);

    // HTTPS: plain HTTP is refused and counted, HTTPS with the CA is served.
    plain_client_is_refused(
        &ex,
        ex.addrs.order_http,
        b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    let https = reqwest::Client::builder()
        .use_preconfigured_tls(client.clone())
        .build()
        .unwrap();
    let port = ex.addrs.order_http.port();
    let url = format!("https://127.0.0.1:{port}/orders");
    for id in [2, 3] {
        let reply: serde_json::Value = https
            .post(&url)
            .json(&order(id))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(reply["ack"]["status"], "accepted", "{reply}");
        assert_eq!(reply["ack"]["clientOrderId"], id, "{reply}");
    }
    // A client that does not trust the certificate fails its handshake, counted.
    let failures = ex.stats.tls_handshake_failures.load(Ordering::Acquire);
    let untrusting = client_config(&certificate(tempfile::tempdir().unwrap().path()).cert_pem_path);
    let tcp = tokio::net::TcpStream::connect(ex.addrs.order_tcp)
        .await
        .unwrap();
    let refused = tokio_rustls::TlsConnector::from(Arc::new(untrusting))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await;
    assert!(refused.is_err());
    wait_for("the untrusting client's failed handshake", || {
        ex.stats.tls_handshake_failures.load(Ordering::Acquire) > failures
    })
    .await;

    stop.cancel();
    let report = ex.join().await.unwrap();
    assert_eq!((report.orders_received, report.orders_filled), (3, 3));
    // One binary connection, and one HTTPS connection per request at most (reqwest
    // reuses the first when it is back in its pool in time).
    assert!((2..=3).contains(&report.tls_handshakes), "{report:?}");
    assert_eq!(report.tls_handshake_failures, 3, "{report:?}");
}

#[tokio::test]
async fn a_missing_certificate_fails_the_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut tls = certificate(dir.path());
    let missing: PathBuf = dir.path().join("nowhere/tls.crt");
    tls.cert_pem_path = missing.clone();
    let mut config = ExchangeConfig::local(
        "tls",
        spec(serde_json::json!({"transport": "tcp"})),
        None,
        None,
    );
    config.tls = Some(tls);
    let err = start(
        config,
        prometheus::Registry::new(),
        CancellationToken::new(),
    )
    .await
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains(&missing.display().to_string()), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}
