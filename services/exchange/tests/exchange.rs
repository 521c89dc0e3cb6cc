//! The exchange over real loopback sockets: the UDP feed, retransmission (original
//! bytes, unavailable ranges, garbage), TCP and WebSocket subscribers, the order
//! API over TCP and HTTP, and a port in use. Feeds are short and counted; nothing
//! asserts on timing.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use ticklab_exchange::{ExchangeConfig, ExchangeHandle, start};
use ticklab_wire::*;
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

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
) -> (ExchangeHandle, CancellationToken) {
    let stop = CancellationToken::new();
    let config = ExchangeConfig::local("test", spec, Some(Duration::from_millis(millis)), target);
    (
        start(config, prometheus::Registry::new(), stop.clone())
            .await
            .unwrap(),
        stop,
    )
}

/// Reads datagrams until the end of session; returns (seq -> message bytes, end seq).
fn drain_udp(socket: &UdpSocket) -> (BTreeMap<u64, Vec<u8>>, u64) {
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut messages = BTreeMap::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let len = socket
            .recv(&mut buf)
            .expect("feed went quiet before the end of session");
        let packet = FeedPacket::parse(&buf[..len]).unwrap();
        match packet.kind {
            PacketKind::EndOfSession => return (messages, packet.header.seq),
            PacketKind::Data => {
                for (seq, m) in packet.messages() {
                    let mut raw = Vec::new();
                    m.unwrap().encode(&mut raw);
                    assert!(messages.insert(seq, raw).is_none(), "seq {seq} twice");
                }
            }
            _ => {}
        }
    }
}

fn request(socket: &UdpSocket, session: Session, seq: u64, count: u16) {
    let mut out = Vec::new();
    RetransmitRequest {
        session,
        seq,
        count,
    }
    .encode(&mut out);
    socket.send(&out).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_feed_is_contiguous_and_matches_the_report() {
    let feed = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (ex, stop) = exchange(
        spec(serde_json::json!({})),
        Some(feed.local_addr().unwrap().to_string()),
        300,
    )
    .await;
    let reader = std::thread::spawn(move || drain_udp(&feed));
    ex.feed_finished().await;
    let (messages, end) = reader.join().unwrap();
    stop.cancel();
    let report = ex.join().await.unwrap();
    assert!(report.trades_published > 1000, "{report:?}");
    assert_eq!(messages.len() as u64, report.trades_published);
    assert_eq!(end, report.trades_published + 1);
    assert_eq!(
        messages.keys().copied().collect::<Vec<_>>(),
        (1..end).collect::<Vec<_>>()
    );
    assert!(report.packets_sent <= report.trades_published, "{report:?}");
    for raw in messages.values() {
        let Message::Trade(t) = Message::decode(raw).unwrap() else {
            panic!("not a trade")
        };
        assert!(t.price.0 > 0 && t.send_ts_ns > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_packets_come_back_from_the_retransmission_server_byte_for_byte() {
    let feed = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (ex, stop) = exchange(
        spec(serde_json::json!({"faults": {"dropPercent": 20.0}, "retransmissionBuffer": 1024})),
        Some(feed.local_addr().unwrap().to_string()),
        300,
    )
    .await;
    let reader = std::thread::spawn(move || drain_udp(&feed));
    ex.feed_finished().await;
    let (live, end) = reader.join().unwrap();
    let report = ex.stats.snapshot();
    assert!(report.packets_dropped_by_fault > 0);
    let missing: Vec<u64> = (1..end).filter(|s| !live.contains_key(s)).collect();
    assert!(!missing.is_empty());

    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.connect(ex.addrs.retransmit).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // Garbage first: ignored, the server keeps serving.
    client.send(b"garbage").unwrap();
    request(&client, Session::from_name("OTHER"), 1, 1);
    let held_from = end.saturating_sub(1024).max(1);
    let wanted: Vec<u64> = missing
        .iter()
        .copied()
        .filter(|s| *s >= held_from)
        .collect();
    let mut recovered = BTreeMap::new();
    let mut buf = vec![0u8; 65536];
    for &seq in &wanted {
        request(&client, ex.session, seq, 1);
        let len = client.recv(&mut buf).unwrap();
        let packet = FeedPacket::parse(&buf[..len]).unwrap();
        assert_eq!(packet.kind, PacketKind::Data);
        for (s, m) in packet.messages() {
            let mut raw = Vec::new();
            m.unwrap().encode(&mut raw);
            recovered.insert(s, raw);
        }
    }
    assert_eq!(recovered.keys().copied().collect::<Vec<_>>(), wanted);
    // A range older than the ring: one "unavailable" answer for the part not held,
    // then the held part.
    if held_from > 1 {
        request(&client, ex.session, 1, 5);
        let len = client.recv(&mut buf).unwrap();
        let packet = FeedPacket::parse(&buf[..len]).unwrap();
        assert_eq!(
            (packet.kind, packet.header.seq),
            (
                PacketKind::Unavailable {
                    count: 5.min(held_from - 1)
                },
                1
            )
        );
    }
    // A multi-message range is split into packets of the feed's size.
    request(&client, ex.session, held_from, 200);
    let mut got = 0u64;
    while got < 200 {
        let len = client.recv(&mut buf).unwrap();
        assert!(len <= 1472);
        let packet = FeedPacket::parse(&buf[..len]).unwrap();
        assert_eq!(packet.header.seq, held_from + got);
        got += u64::from(packet.message_count());
    }
    stop.cancel();
    let report = ex.join().await.unwrap();
    assert!(report.malformed_requests >= 2, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_and_websocket_subscribers_get_every_packet() {
    for transport in ["tcp", "websocket"] {
        let (ex, stop) =
            exchange(spec(serde_json::json!({"transport": transport})), None, 300).await;
        let addr = ex.addrs.feed.unwrap();
        let mut seqs = Vec::new();
        let mut on_packet = |bytes: &[u8]| -> bool {
            let p = FeedPacket::parse(bytes).unwrap();
            seqs.extend(p.messages().map(|(s, _)| s));
            p.kind == PacketKind::EndOfSession
        };
        if transport == "tcp" {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
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
            let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/feed"))
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
        stop.cancel();
        let report = ex.join().await.unwrap();
        assert!(report.trades_published > 1000, "{transport}: {report:?}");
        assert_eq!(
            seqs,
            (1..=report.trades_published).collect::<Vec<_>>(),
            "{transport}"
        );
        assert_eq!(report.packets_lagged, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_fill_expire_or_are_rejected_over_tcp_and_http() {
    let feed = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (ex, stop) = exchange(
        spec(serde_json::json!({"symbols": ["EURUSD"]})),
        Some(feed.local_addr().unwrap().to_string()),
        60_000,
    )
    .await;
    // Learn a price from the feed.
    feed.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = vec![0u8; 65536];
    let last = loop {
        let len = feed.recv(&mut buf).unwrap();
        let p = FeedPacket::parse(&buf[..len]).unwrap();
        if let Some((_, Ok(Message::Trade(t)))) = p.messages().last() {
            break t.price.0;
        }
    };
    let order = |id: u64, symbol: &str, side: Side, limit: i64, qty: u64| Order {
        client_order_id: id,
        symbol: Symbol::new(symbol).unwrap(),
        side,
        limit_price: Price(limit),
        quantity: Quantity(qty),
        trigger_seq: 1,
        send_ts_ns: now_unix_nanos(),
    };

    let stream = tokio::net::TcpStream::connect(ex.addrs.order_tcp)
        .await
        .unwrap();
    let codec = LengthDelimitedCodec::builder()
        .length_field_length(2)
        .new_codec();
    let mut framed = Framed::new(stream, codec);
    let mut send = async |o: Order| {
        let mut out = Vec::new();
        Message::Order(o).encode(&mut out);
        framed.send(bytes::Bytes::from(out)).await.unwrap();
        let Message::Ack(ack) = Message::decode(&framed.next().await.unwrap().unwrap()).unwrap()
        else {
            panic!("no ack")
        };
        let fill = if ack.status == AckStatus::Accepted {
            let Message::Fill(f) = Message::decode(&framed.next().await.unwrap().unwrap()).unwrap()
            else {
                panic!("no fill")
            };
            Some(f)
        } else {
            None
        };
        (ack, fill)
    };
    // Far through the market: fills, at the last price (which moves; so within 10%).
    let (ack, fill) = send(order(1, "EURUSD", Side::Buy, last * 2, 100_000_000)).await;
    assert_eq!((ack.client_order_id, ack.status), (1, AckStatus::Accepted));
    let fill = fill.unwrap();
    assert!(fill.price.0 > last * 9 / 10 && fill.price.0 < last * 11 / 10);
    assert_eq!(fill.quantity, Quantity(100_000_000));
    // A buy far below the market: expires.
    assert_eq!(
        send(order(2, "EURUSD", Side::Buy, 1, 100)).await.0.status,
        AckStatus::Expired
    );
    // Unknown symbol, zero quantity: rejected.
    assert_eq!(
        send(order(3, "BTCUSD", Side::Sell, 1, 100)).await.0.status,
        AckStatus::Rejected
    );
    assert_eq!(
        send(order(4, "EURUSD", Side::Sell, 1, 0)).await.0.status,
        AckStatus::Rejected
    );
    // Not an order: the connection is closed.
    let mut out = Vec::new();
    Message::Ack(Ack {
        client_order_id: 1,
        exchange_order_id: 1,
        status: AckStatus::Accepted,
        exchange_ts_ns: 1,
    })
    .encode(&mut out);
    framed.send(bytes::Bytes::from(out)).await.unwrap();
    assert!(framed.next().await.is_none());

    let http = reqwest::Client::new();
    let url = format!("http://{}/orders", ex.addrs.order_http);
    let reply: serde_json::Value = http
        .post(&url)
        .json(&serde_json::json!({"clientOrderId": 9, "symbol": "EURUSD", "side": "sell", "limitPrice": "0.00000001", "quantity": "1000", "triggerSeq": 1, "sendTsNs": 0}))
        .send().await.unwrap().json().await.unwrap();
    assert_eq!(reply["ack"]["status"], "accepted", "{reply}");
    assert_eq!(reply["fill"]["quantity"], "1000");
    for bad in [
        r#"{"clientOrderId": 1"#,
        r#"{"clientOrderId": 1, "symbol": "EURUSD"}"#,
        r#"{"clientOrderId": 1, "symbol": "EURUSD", "side": "up", "limitPrice": "1", "quantity": "1", "triggerSeq": 1, "sendTsNs": 0}"#,
    ] {
        let r = http
            .post(&url)
            .header("content-type", "application/json")
            .body(bad)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_client_error(), "{bad}: {}", r.status());
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(
            body["error"].as_str().unwrap().starts_with("invalid order"),
            "{body}"
        );
    }
    let r = http
        .get(format!("http://{}/nowhere", ex.addrs.order_http))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.json::<serde_json::Value>().await.unwrap()["error"].is_string());

    let metrics = reqwest::get(format!("http://{}/metrics", ex.addrs.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("ticklab_exchange_orders_total{status=\"accepted\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("ticklab_exchange_order_reaction_seconds_count"));
    stop.cancel();
    let report = ex.join().await.unwrap();
    assert_eq!(
        (
            report.orders_received,
            report.orders_filled,
            report.orders_expired,
            report.orders_rejected
        ),
        (5, 2, 1, 2)
    );
}

#[tokio::test]
async fn a_port_in_use_is_an_error_naming_it() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = taken.local_addr().unwrap();
    let mut config = ExchangeConfig::local(
        "busy",
        spec(serde_json::json!({})),
        None,
        Some("127.0.0.1:9".into()),
    );
    config.order_http_listen = addr;
    let err = start(
        config,
        prometheus::Registry::new(),
        CancellationToken::new(),
    )
    .await
    .err()
    .unwrap();
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}
