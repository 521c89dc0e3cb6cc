//! The mirror on loopback, as `ticklab run` uses it: datagrams to and from the
//! mirrored ports arrive at a stand-in capture socket once each, in VXLAN with the
//! trailer (direction, original length, a capture time), truncated as asked; other
//! traffic and the mirror's own datagrams are not mirrored. Needs CAP_NET_RAW (the
//! suite runs as root).

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

use ticklab_capture::link::{self, LinkType, Transport};
use ticklab_capture::vxlan::{self, Direction};
use ticklab_crd::mirror_session::{Direction as RuleDirection, FilterAction, FilterRule, Protocol};
use ticklab_mirror::MirrorConfig;
use tokio_util::sync::CancellationToken;

fn bound() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_traffic_of_the_mirrored_ports_is_mirrored_once_with_its_direction() {
    let capture = bound();
    let trader = bound(); // the mirrored process's port
    let exchange = bound(); // a peer it talks to
    let stranger = bound(); // traffic that is not the trader's
    let elsewhere = bound(); // a port neither the trader's nor its peers'.
    let trader_port = trader.local_addr().unwrap().port();
    let config = MirrorConfig {
        session: "s".into(),
        experiment: "e".into(),
        capture: capture.local_addr().unwrap().to_string(),
        vni: 4242,
        interface: Some("lo".into()),
        // Reject one payload size on ingress to see the filter act; accept the rest.
        filter: vec![
            FilterRule {
                direction: RuleDirection::Ingress,
                action: FilterAction::Reject,
                protocol: Protocol::Udp,
                ports: vec![trader_port],
                source_ports: vec![stranger.local_addr().unwrap().port()],
            },
            FilterRule {
                direction: RuleDirection::Ingress,
                action: FilterAction::Accept,
                protocol: Protocol::All,
                ports: vec![],
                source_ports: vec![],
            },
            FilterRule {
                direction: RuleDirection::Egress,
                action: FilterAction::Accept,
                protocol: Protocol::Udp,
                ports: vec![],
                source_ports: vec![],
            },
        ],
        packet_length: Some(14 + 20 + 8 + 100),
        local_ports: vec![trader_port],
        peer_ports: vec![exchange.local_addr().unwrap().port()],
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        stop_when_capture_gone: false,
        report_url: None,
    };
    let registry = ticklab_mirror::registry("e", "s").unwrap();
    let stop = CancellationToken::new();
    let mirror = ticklab_mirror::start(config, registry, stop.clone())
        .await
        .unwrap();

    // The socket is open once start returns: everything sent from here is seen.
    let big = vec![7u8; 300];
    for i in 0..20u8 {
        exchange
            .send_to(&[i; 10], trader.local_addr().unwrap())
            .unwrap(); // ingress
        trader
            .send_to(&big, exchange.local_addr().unwrap())
            .unwrap(); // egress, truncated
        stranger
            .send_to(&[i; 10], elsewhere.local_addr().unwrap())
            .unwrap(); // not the trader's
        stranger
            .send_to(&[i; 10], trader.local_addr().unwrap())
            .unwrap(); // rejected
    }

    let mut seen: HashMap<(Direction, usize), usize> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = vec![0u8; 70_000];
    while seen.values().sum::<usize>() < 40 && Instant::now() < deadline {
        let Ok(n) = capture.recv(&mut buf) else {
            continue;
        };
        let e = vxlan::decode(&buf[..n]).expect("VXLAN with a trailer");
        assert_eq!(e.vni, 4242);
        let t = e.trailer.expect("the mirror's trailer");
        let p = link::decode(LinkType::Ethernet, e.frame).unwrap();
        let Transport::Udp {
            payload,
            original_len,
            ..
        } = p.transport
        else {
            panic!("not UDP")
        };
        assert_eq!(t.original_len as usize, 14 + 20 + 8 + original_len);
        assert!(t.captured_at_ns > 1_600_000_000_000_000_000);
        *seen.entry((t.direction, payload.len())).or_default() += 1;
    }
    // Ingress 10-byte datagrams from the exchange, egress 300-byte ones cut to 100:
    // each once, nothing else.
    let expected = HashMap::from([
        ((Direction::Ingress, 10), 20),
        ((Direction::Egress, 100), 20),
    ]);
    // Anything late would be a duplicate or a stranger's: give it a moment to show.
    let settle = Instant::now() + Duration::from_millis(500);
    while Instant::now() < settle {
        if let Ok(n) = capture.recv(&mut buf) {
            let e = vxlan::decode(&buf[..n]).unwrap();
            let t = e.trailer.unwrap();
            let p = link::decode(LinkType::Ethernet, e.frame).unwrap();
            let Transport::Udp { payload, .. } = p.transport else {
                panic!()
            };
            *seen.entry((t.direction, payload.len())).or_default() += 1;
        }
    }
    assert_eq!(seen, expected);
    let report = mirror.metrics.report();
    assert_eq!(report.mirrored, 40);
    assert_eq!(report.truncated, 20);
    assert!(report.filtered >= 20, "{report:?}");
    stop.cancel();
    mirror.join().await.unwrap();
}
