//! The UDP feed starts at the first subscription and not before: in a cluster the
//! trader may come up a minute after the exchange (it waits for MongoDB), and a feed
//! published into the void meant a trader joining late, asking for more history than
//! the ring holds, and a run that counted trades from before it started.
#![allow(clippy::unwrap_used)]

use std::net::UdpSocket;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ticklab_exchange::{ExchangeConfig, start};
use ticklab_wire::{FeedPacket, PacketKind, RetransmitRequest, Session};
use tokio_util::sync::CancellationToken;

fn request(socket: &UdpSocket, to: std::net::SocketAddr, request: RetransmitRequest) {
    let mut bytes = Vec::new();
    request.encode(&mut bytes);
    socket.send_to(&bytes, to).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_udp_feed_waits_for_a_subscription_and_then_starts_at_seq_1() {
    let feed = UdpSocket::bind("127.0.0.1:0").unwrap();
    feed.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let spec = serde_json::from_value(serde_json::json!({
        "symbols": ["EURUSD", "BTCUSD"], "ratePerSecond": 50000, "seed": 7,
    }))
    .unwrap();
    let config = ExchangeConfig::local(
        "test",
        spec,
        Some(Duration::from_millis(200)),
        Some(feed.local_addr().unwrap().to_string()),
    );
    let stop = CancellationToken::new();
    let ex = start(config, prometheus::Registry::new(), stop.clone())
        .await
        .unwrap();

    // The exchange is up and serving: its retransmission server answers (counts) a
    // request of another session. At 50 000 trades/s a feed that had started would
    // have published by now.
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    request(
        &client,
        ex.addrs.retransmit,
        RetransmitRequest {
            session: Session::from_name("OTHER"),
            seq: 1,
            count: 1,
        },
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while ex.stats.malformed_requests.load(Ordering::Acquire) == 0 {
        assert!(
            Instant::now() < deadline,
            "the retransmission server never answered"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        ex.stats.trades_published.load(Ordering::Acquire),
        0,
        "published before anyone subscribed"
    );

    request(
        &client,
        ex.addrs.retransmit,
        RetransmitRequest::subscription(),
    );
    let mut buf = vec![0u8; 65536];
    let first = loop {
        let len = feed.recv(&mut buf).unwrap();
        let packet = FeedPacket::parse(&buf[..len]).unwrap();
        if packet.kind == PacketKind::Data {
            break packet.header.seq;
        }
    };
    assert_eq!(
        first, 1,
        "the first trade after the subscription is the session's first"
    );
    // A second subscription (the trader's keep-alive) changes nothing but the count.
    request(
        &client,
        ex.addrs.retransmit,
        RetransmitRequest::subscription(),
    );
    ex.feed_finished().await;
    stop.cancel();
    let report = ex.join().await.unwrap();
    assert!(report.trades_published > 0, "{report:?}");
    assert!(report.subscriptions >= 1, "{report:?}");
}
