//! The exchange over real loopback sockets: the UDP feed, retransmission (original
//! bytes, unavailable ranges, garbage), TCP and WebSocket subscribers, the order
//! API over TCP and HTTP, and a port in use. Feeds are short and counted; nothing
//! asserts on timing.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

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
    let udp = target.is_some();
    let config = ExchangeConfig::local("test", spec, Some(Duration::from_millis(millis)), target);
    let handle = start(config, prometheus::Registry::new(), stop.clone())
        .await
        .unwrap();
    if udp {
        subscribe(&handle);
    }
    (handle, stop)
}

/// Subscribes to the UDP feed as a trader does: the feed starts then.
fn subscribe(ex: &ExchangeHandle) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut request = Vec::new();
    RetransmitRequest::subscription().encode(&mut request);
    socket.send_to(&request, ex.addrs.retransmit).unwrap();
}

/// A UDP socket for the feed with a receive buffer that holds a whole test feed, so
/// a reader thread kept off a core for a while (two cores, tests in parallel) does
/// not make the kernel drop datagrams: past net.core.rmem_max where the process may
/// (root, as in CI), else as much as the kernel grants.
fn feed_socket() -> UdpSocket {
    const BUFFER: usize = 16 << 20;
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .unwrap();
    if nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::RcvBufForce, &BUFFER)
        .is_err()
    {
        let _ = socket.set_recv_buffer_size(BUFFER);
    }
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    socket.into()
}

/// Datagrams the kernel dropped for `socket` because its receive buffer was full
/// (the `drops` column of /proc/net/udp).
fn socket_drops(socket: &UdpSocket) -> u64 {
    let local = match socket.local_addr().unwrap() {
        SocketAddr::V4(a) => format!("{:08X}:{:04X}", u32::from(*a.ip()).swap_bytes(), a.port()),
        SocketAddr::V6(_) => unreachable!("the feed socket is IPv4"),
    };
    let table = std::fs::read_to_string("/proc/net/udp").unwrap();
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields.get(1) == Some(&local.as_str()))
        .and_then(|fields| fields.last()?.parse().ok())
        .unwrap_or_else(|| panic!("{local} not in /proc/net/udp:\n{table}"))
}

/// Datagrams dropped before reaching any socket (full per-CPU backlogs), for the
/// whole machine: a rise only says "maybe ours".
fn backlog_drops() -> u64 {
    std::fs::read_to_string("/proc/net/softnet_stat")
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|hex| u64::from_str_radix(hex, 16).unwrap())
        .sum()
}

/// Reads datagrams until the end of session; returns (seq -> message bytes, end seq).
/// The end of session is sent three times in the feed's last milliseconds, and a
/// kernel that drops datagrams can drop all three: so once `finished` is set (the
/// exchange has sent it) and the socket has been quiet for a second, the reader
/// stops with no end.
fn drain_udp(socket: &UdpSocket, finished: &AtomicBool) -> (BTreeMap<u64, Vec<u8>>, Option<u64>) {
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut messages = BTreeMap::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let len = match socket.recv(&mut buf) {
            Ok(len) => len,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if finished.load(Ordering::Acquire) {
                    return (messages, None);
                }
                assert!(
                    Instant::now() < deadline,
                    "feed went quiet before the end of session"
                );
                continue;
            }
            Err(e) => panic!("feed socket: {e}"),
        };
        let packet = FeedPacket::parse(&buf[..len]).unwrap();
        match packet.kind {
            PacketKind::EndOfSession => return (messages, Some(packet.header.seq)),
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

/// Drains the exchange's UDP feed on a thread until the session ends; returns what
/// arrived, the end of session (from the feed, or from the exchange's count when
/// the kernel dropped every copy of it), and how many datagrams the kernel may have
/// dropped on the way (`backlog_before`: [`backlog_drops`] before the feed started).
async fn read_feed(
    ex: &ExchangeHandle,
    feed: UdpSocket,
    backlog_before: u64,
) -> (BTreeMap<u64, Vec<u8>>, u64, u64) {
    let finished = Arc::new(AtomicBool::new(false));
    let reader = {
        let finished = finished.clone();
        std::thread::spawn(move || {
            let (messages, end) = drain_udp(&feed, &finished);
            (messages, end, socket_drops(&feed))
        })
    };
    ex.feed_finished().await;
    finished.store(true, Ordering::Release);
    let (messages, end, dropped) = reader.join().unwrap();
    let kernel_dropped = dropped + backlog_drops().saturating_sub(backlog_before);
    let end = end.unwrap_or_else(|| {
        assert!(
            kernel_dropped > 0,
            "no end of session received, and the kernel dropped nothing"
        );
        ex.stats.snapshot().next_seq
    });
    (messages, end, kernel_dropped)
}

/// Runs of consecutive sequence numbers in `seqs` (ascending), as (first, count).
fn runs(seqs: &[u64]) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &seq in seqs {
        match runs.last_mut() {
            Some((first, count)) if *first + *count == seq => *count += 1,
            _ => runs.push((seq, 1)),
        }
    }
    runs
}

/// The messages `seqs` as the retransmission server sends them back.
fn retransmitted(ex: &ExchangeHandle, seqs: &[u64]) -> BTreeMap<u64, Vec<u8>> {
    let client = feed_socket();
    client.connect(ex.addrs.retransmit).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut out = BTreeMap::new();
    let mut buf = vec![0u8; 65536];
    // A few packets' worth at a time: a long run asked for at once comes back as a
    // burst that could itself overflow a receive buffer.
    let chunks = runs(seqs).into_iter().flat_map(|(first, count)| {
        (first..first + count)
            .step_by(256)
            .map(move |start| (start, (first + count - start).min(256)))
    });
    for (first, count) in chunks {
        request(&client, ex.session, first, count as u16);
        let end = first + count;
        while (first..end).any(|s| !out.contains_key(&s)) {
            let len = client.recv(&mut buf).unwrap();
            let packet = FeedPacket::parse(&buf[..len]).unwrap();
            assert_eq!(packet.kind, PacketKind::Data, "{first}+{count} not held");
            for (seq, m) in packet.messages() {
                let mut raw = Vec::new();
                m.unwrap().encode(&mut raw);
                out.insert(seq, raw);
            }
        }
    }
    out
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
    let feed = feed_socket();
    let backlog_before = backlog_drops();
    let (ex, stop) = exchange(
        spec(serde_json::json!({})),
        Some(feed.local_addr().unwrap().to_string()),
        300,
    )
    .await;
    let (mut messages, end, kernel_dropped) = read_feed(&ex, feed, backlog_before).await;
    let missing: Vec<u64> = (1..end).filter(|s| !messages.contains_key(s)).collect();
    if !missing.is_empty() {
        // On loopback only the kernel loses datagrams (a buffer that filled while
        // this reader was descheduled), each a run of messages at most; the
        // exchange did publish them, so its ring has them.
        let gaps = runs(&missing).len() as u64;
        assert!(
            gaps <= kernel_dropped,
            "{gaps} runs of {} messages missing, {kernel_dropped} datagrams dropped by the kernel",
            missing.len()
        );
        for (seq, raw) in retransmitted(&ex, &missing) {
            assert!(messages.insert(seq, raw).is_none(), "seq {seq} twice");
        }
    }
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
    let feed = feed_socket();
    let backlog_before = backlog_drops();
    let (ex, stop) = exchange(
        spec(serde_json::json!({"faults": {"dropPercent": 20.0}, "retransmissionBuffer": 1024})),
        Some(feed.local_addr().unwrap().to_string()),
        300,
    )
    .await;
    // What the kernel may drop besides the fault is missing too, and recovered alike.
    let (live, end, _) = read_feed(&ex, feed, backlog_before).await;
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
