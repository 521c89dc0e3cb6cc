//! The trader against a scripted exchange: the test sends hand-built packets over
//! loopback UDP with gaps on purpose, and answers the trader's retransmission
//! requests itself — some from its store, some with "unavailable" — so every count
//! the trader reports can be checked exactly.
#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ticklab_crd::{Instrument, StrategySpec, TraderSpec, Transport};
use ticklab_trader::{TraderConfig, start};
use ticklab_wire::packet::{encode_end_of_session, encode_heartbeat, encode_unavailable};
use ticklab_wire::*;
use tokio_util::sync::CancellationToken;

const SESSION: &str = "SCRIPTED01";

fn trade(seq: u64) -> Trade {
    Trade {
        symbol: Symbol::new("EURUSD").unwrap(),
        price: Price(108_000_000 + (seq % 100) as i64),
        quantity: Quantity(100_000_000_000),
        side: if seq.is_multiple_of(2) {
            Side::Buy
        } else {
            Side::Sell
        },
        trade_id: seq,
        send_ts_ns: now_unix_nanos(),
    }
}

fn packet(first: u64, count: u64) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut b = PacketBuilder::new(&mut buf, Session::from_name(SESSION), first, 1472);
    for seq in first..first + count {
        assert!(b.push_trade(&trade(seq)));
    }
    b.finish();
    buf
}

/// Answers retransmission requests: messages below `unavailable_below` are "gone".
fn serve_retransmissions(
    socket: UdpSocket,
    unavailable_below: u64,
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicU64>,
) {
    socket
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let mut buf = [0u8; 64];
    while !stop.load(Ordering::Relaxed) {
        let Ok((len, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let req = RetransmitRequest::decode(&buf[..len]).unwrap();
        if req.count == 0 {
            // Asks for nothing: nothing to answer, and no retransmission to count.
            continue;
        }
        requests.fetch_add(1, Ordering::Relaxed);
        let end = req.seq + u64::from(req.count);
        let mut seq = req.seq;
        if seq < unavailable_below {
            let gone = unavailable_below.min(end) - seq;
            let mut reply = Vec::new();
            encode_unavailable(&mut reply, Session::from_name(SESSION), seq, gone);
            socket.send_to(&reply, from).unwrap();
            seq += gone;
        }
        while seq < end {
            let n = (end - seq).min(20);
            socket.send_to(&packet(seq, n), from).unwrap();
            seq += n;
        }
    }
}

fn config(retransmit: SocketAddr) -> TraderConfig {
    TraderConfig {
        experiment: "scripted".into(),
        symbols: vec![Instrument::EurUsd],
        spec: TraderSpec {
            strategy: StrategySpec {
                enabled: false,
                ..StrategySpec::default()
            },
            ..TraderSpec::default()
        },
        transport: Transport::Udp,
        feed_udp_listen: "127.0.0.1:0".parse().unwrap(),
        feed_connect: String::new(),
        retransmit_server: retransmit.to_string(),
        order_tcp: "127.0.0.1:9".into(),
        order_http: "http://127.0.0.1:9".into(),
        api_listen: "127.0.0.1:0".parse().unwrap(),
        mongodb_uri: None,
        mongodb_wait_seconds: 0,
        slo: None,
        // Every request is answered, but a loaded machine can keep the answering
        // thread off a core for a while: a short timeout would ask again (the second
        // answer counting as duplicates) and give up after five (counting as lost),
        // and every count here is exact.
        recovery_timeout_ms: 5_000,
        tls: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gaps_are_detected_recovered_or_declared_lost_exactly() {
    let retransmit = UdpSocket::bind("127.0.0.1:0").unwrap();
    let retransmit_addr = retransmit.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let requests = Arc::new(AtomicU64::new(0));
    // Sequences 1..=10 are "gone" from the server: the trader joins late and can
    // recover only what is still held.
    let server = {
        let (stop, requests) = (stop.clone(), requests.clone());
        std::thread::spawn(move || serve_retransmissions(retransmit, 11, stop, requests))
    };

    let shutdown = CancellationToken::new();
    let trader = start(
        config(retransmit_addr),
        prometheus::Registry::new(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let feed = trader.addrs.feed_udp.unwrap();
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();

    // Live feed: packets of 10 from seq 21 to 520, skipping 101..=150 and 301..=310,
    // sending 201..=210 twice, and 511..=520 never (only the end-of-session says so).
    let mut first = 21;
    while first <= 510 {
        let skip = (101..=150).contains(&first) || (301..=310).contains(&first);
        if !skip {
            sender.send_to(&packet(first, 10), feed).unwrap();
        }
        if first == 201 {
            sender.send_to(&packet(first, 10), feed).unwrap();
        }
        first += 10;
    }
    let mut hb = Vec::new();
    encode_heartbeat(&mut hb, Session::from_name(SESSION), 511);
    sender.send_to(&hb, feed).unwrap();
    sender.send_to(b"not a packet", feed).unwrap();
    let mut eos = Vec::new();
    encode_end_of_session(&mut eos, Session::from_name(SESSION), 521);
    sender.send_to(&eos, feed).unwrap();

    assert!(
        trader.wait_settled(Duration::from_secs(10)).await,
        "trader did not settle: {:?}",
        trader.results()
    );
    shutdown.cancel();
    let results = trader.join().await.unwrap();
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();

    assert_eq!(results.sent, 520);
    assert_eq!(results.received, 520 - 20 - 50 - 10 - 10, "{results:?}");
    assert_eq!(results.recovered, 10 + 50 + 10 + 10, "{results:?}");
    assert_eq!(results.lost, 10, "{results:?}");
    assert_eq!(
        results.received + results.recovered + results.lost,
        results.sent
    );
    assert_eq!(results.duplicates, 10);
    assert_eq!(results.malformed, 1);
    // 1..=20 at the start, 101..=150, 301..=310, 511..=520.
    assert_eq!(results.gaps, 4);
    assert_eq!(results.timestamp_source, "kernel");
    let latency = results.feed_latency.unwrap();
    assert_eq!(latency.count, results.received);
    assert!(requests.load(Ordering::Relaxed) >= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_and_recent_trades_are_served_as_json() {
    let retransmit = UdpSocket::bind("127.0.0.1:0").unwrap();
    let shutdown = CancellationToken::new();
    let trader = start(
        config(retransmit.local_addr().unwrap()),
        prometheus::Registry::new(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let feed = trader.addrs.feed_udp.unwrap();
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    for first in (1..=100).step_by(10) {
        sender.send_to(&packet(first, 10), feed).unwrap();
    }
    let mut eos = Vec::new();
    encode_end_of_session(&mut eos, Session::from_name(SESSION), 101);
    sender.send_to(&eos, feed).unwrap();
    assert!(trader.wait_settled(Duration::from_secs(10)).await);

    let base = format!("http://{}", trader.addrs.api);
    let stats: serde_json::Value = reqwest::get(format!("{base}/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["received"], 100);
    assert_eq!(stats["settled"], true);
    assert_eq!(stats["experiment"], "scripted");

    let trades: serde_json::Value = reqwest::get(format!("{base}/trades?limit=5"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(trades["source"], "memory");
    let seqs: Vec<u64> = trades["trades"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![100, 99, 98, 97, 96]);
    assert!(trades["trades"][0]["latencyMicros"].as_f64().unwrap() >= 0.0);

    // Every live trade's receive stamp, from a cursor: all 100, in order, then none.
    let stamps: serde_json::Value = reqwest::get(format!("{base}/stamps?after=0"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stamps["first"], 0);
    assert_eq!(stamps["next"], 100);
    assert_eq!(stamps["missed"], 0);
    let stamped: Vec<u64> = stamps["stamps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s[0].as_u64().unwrap())
        .collect();
    assert_eq!(stamped, (1..=100).collect::<Vec<u64>>());
    assert!(stamps["stamps"][0][1].as_u64().unwrap() > 0);
    let rest: serde_json::Value = reqwest::get(format!("{base}/stamps?after=100"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rest["stamps"], serde_json::json!([]));
    assert_eq!(rest["next"], 100);
    let r = reqwest::get(format!("{base}/stamps?after=-1"))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("after"), "{body}");

    for bad in ["limit=0", "limit=abc", "limit=100000"] {
        let r = reqwest::get(format!("{base}/trades?{bad}")).await.unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("limit"), "{body}");
    }
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("ticklab_trader_trades_received_total 100"),
        "{metrics}"
    );
    assert!(metrics.contains("ticklab_trader_feed_latency_seconds_bucket"));
    assert_eq!(
        reqwest::get(format!("{base}/healthz"))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        reqwest::get(format!("{base}/readyz"))
            .await
            .unwrap()
            .status(),
        200
    );
    shutdown.cancel();
    trader.join().await.unwrap();
}
