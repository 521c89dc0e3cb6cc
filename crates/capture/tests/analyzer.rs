//! The analyzer over frames built independently (etherparse's packet builder):
//! feed datagrams, retransmission replies, truncated frames, the binary order
//! channel over TCP with reordered and duplicated segments, and VXLAN with and
//! without ticklab's trailer. The netns and TLS tests run it over real traffic.
#![allow(clippy::unwrap_used)]

use etherparse::PacketBuilder;
use ticklab_capture::analyzer::{Analyzer, AnalyzerConfig};
use ticklab_capture::link::LinkType;
use ticklab_capture::vxlan::{self, Direction, Trailer};
use ticklab_capture::wire::{Observation, Timing};
use ticklab_wire::frame::encode_frame;
use ticklab_wire::{
    Ack, AckStatus, Message, Order, PacketBuilder as FeedBuilder, Price, Quantity, Session, Side,
    Symbol, Trade,
};

const EXCHANGE: [u8; 4] = [10, 0, 0, 1];
const TRADER: [u8; 4] = [10, 0, 0, 2];
const MS: u64 = 1_000_000;
const T0: u64 = 1_790_000_000_000_000_000;

fn trade(id: u64, sent: u64) -> Trade {
    Trade {
        symbol: Symbol::new("BTCUSD").unwrap(),
        price: Price(100),
        quantity: Quantity(1),
        side: Side::Buy,
        trade_id: id,
        send_ts_ns: sent,
    }
}

fn feed_packet(first_seq: u64, trades: &[Trade]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut b = FeedBuilder::new(&mut out, Session::from_name("S1"), first_seq, 1400);
    for t in trades {
        assert!(b.push_trade(t));
    }
    b.finish();
    out
}

fn udp(src: ([u8; 4], u16), dst: ([u8; 4], u16), payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2([1; 6], [2; 6])
        .ipv4(src.0, dst.0, 64)
        .udp(src.1, dst.1)
        .write(&mut out, payload)
        .unwrap();
    out
}

fn tcp(src: ([u8; 4], u16), dst: ([u8; 4], u16), seq: u32, syn: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let b = PacketBuilder::ethernet2([1; 6], [2; 6])
        .ipv4(src.0, dst.0, 64)
        .tcp(src.1, dst.1, seq, 65535);
    let b = if syn { b.syn() } else { b.ack(1) };
    b.write(&mut out, payload).unwrap();
    out
}

#[test]
fn udp_feed_retransmission_and_truncation() {
    let mut a = Analyzer::new(AnalyzerConfig {
        observe: true,
        ..Default::default()
    });
    // Live: seq 1-3 sent at T0, seen 20 µs later.
    let p = feed_packet(1, &[trade(1, T0), trade(2, T0), trade(3, T0)]);
    a.frame(
        T0 + 20_000,
        Timing::Interface,
        LinkType::Ethernet,
        &udp((EXCHANGE, 40000), (TRADER, 9100), &p),
    );
    // Seq 4-5 lost live, recovered from the retransmission server (source port 9001).
    let p = feed_packet(4, &[trade(4, T0), trade(5, T0)]);
    a.frame(
        T0 + 5 * MS,
        Timing::Interface,
        LinkType::Ethernet,
        &udp((EXCHANGE, 9001), (TRADER, 50000), &p),
    );
    // A retransmission request from the trader.
    let mut req = Vec::new();
    ticklab_wire::RetransmitRequest {
        session: Session::from_name("S1"),
        seq: 4,
        count: 2,
    }
    .encode(&mut req);
    a.frame(
        T0 + MS,
        Timing::Interface,
        LinkType::Ethernet,
        &udp((TRADER, 50000), (EXCHANGE, 9001), &req),
    );
    // Seq 6-9 in a frame the mirror cut inside the third trade: two decode.
    let p = feed_packet(6, &[trade(6, T0), trade(7, T0), trade(8, T0), trade(9, T0)]);
    let frame = udp((EXCHANGE, 40000), (TRADER, 9100), &p);
    let cut = 14 + 20 + 8 + 20 + 2 * 44 + 30;
    a.frame(
        T0 + 30_000,
        Timing::Interface,
        LinkType::Ethernet,
        &frame[..cut],
    );
    // A DNS answer: not ours, not an error.
    a.frame(
        T0,
        Timing::Interface,
        LinkType::Ethernet,
        &udp(([10, 0, 0, 53], 53), (TRADER, 3333), b"\x12\x34dns"),
    );

    let r = a.report();
    assert_eq!(r.messages.trades, 5, "{r:#?}");
    assert_eq!(r.messages.trades_recovered, 2);
    assert_eq!(r.retransmit_requests, 1);
    assert_eq!(r.truncated, 1);
    assert_eq!(r.decode_errors.get("feed_cut_off"), Some(&1));
    assert_eq!(r.other, 1);
    assert_eq!(r.packets_decoded, 4);
    let feed = r.feed_latency.unwrap();
    assert_eq!(feed.count, 5, "recovered trades are not feed latency");
    assert!(
        (feed.min_micros - 20.0).abs() < 0.1 && (feed.max_micros - 30.0).abs() < 0.1,
        "{feed:?}"
    );
    let recovered: Vec<u64> = a
        .take_observations()
        .iter()
        .filter_map(|o| match o {
            Observation::Trade {
                seq,
                recovered: true,
                ..
            } => Some(*seq),
            _ => None,
        })
        .collect();
    assert_eq!(recovered, [4, 5]);
}

fn order(id: u64, trigger: u64, sent: u64) -> Order {
    Order {
        client_order_id: id,
        symbol: Symbol::new("BTCUSD").unwrap(),
        side: Side::Sell,
        limit_price: Price(90),
        quantity: Quantity(1),
        trigger_seq: trigger,
        send_ts_ns: sent,
    }
}

fn framed(m: &Message) -> Vec<u8> {
    let mut body = Vec::new();
    m.encode(&mut body);
    let mut out = Vec::new();
    encode_frame(&mut out, &body).unwrap();
    out
}

#[test]
fn order_channel_over_tcp_with_reordered_and_duplicated_segments() {
    let mut a = Analyzer::new(AnalyzerConfig::default());
    // Ticks 1..=3 arrive at T0 + 10 µs each.
    let p = feed_packet(1, &[trade(1, T0), trade(2, T0), trade(3, T0)]);
    a.frame(
        T0 + 10_000,
        Timing::Interface,
        LinkType::Ethernet,
        &udp((EXCHANGE, 40000), (TRADER, 9100), &p),
    );

    let client = (TRADER, 51000);
    let server = (EXCHANGE, 9002);
    a.frame(
        T0,
        Timing::Interface,
        LinkType::Ethernet,
        &tcp(client, server, 999, true, b""),
    );
    // Three orders on ticks 1, 2, 3, sent 5 µs after their tick arrived.
    let orders: Vec<Vec<u8>> = (1..=3u64)
        .map(|i| framed(&Message::Order(order(i, i, T0 + 15_000))))
        .collect();
    let seq = |i: usize| 1000 + orders[..i].iter().map(Vec::len).sum::<usize>() as u32;
    // Order 2's segment arrives first, then 1, then 1 again (a retransmission), then 3.
    for (i, at) in [(1usize, 20_000u64), (0, 21_000), (0, 22_000), (2, 23_000)] {
        a.frame(
            T0 + at,
            Timing::Interface,
            LinkType::Ethernet,
            &tcp(client, server, seq(i), false, &orders[i]),
        );
    }
    // The acks, one segment holding all three.
    let mut acks = Vec::new();
    for i in 1..=3 {
        acks.extend(framed(&Message::Ack(Ack {
            client_order_id: i,
            exchange_order_id: i,
            status: AckStatus::Accepted,
            exchange_ts_ns: 0,
        })));
    }
    a.frame(
        T0,
        Timing::Interface,
        LinkType::Ethernet,
        &tcp(server, client, 5000, true, b""),
    );
    a.frame(
        T0 + 100_000,
        Timing::Interface,
        LinkType::Ethernet,
        &tcp(server, client, 5001, false, &acks),
    );
    a.flush();

    let r = a.report();
    assert_eq!(r.messages.orders, 3, "{r:#?}");
    assert_eq!(r.messages.orders_matched, 3);
    assert_eq!(r.messages.acks, 3);
    assert!(r.errors() == 0, "{:?}", r.decode_errors);
    // Orders 1 and 2 become readable together at 21 µs, 3 at 23 µs; ticks at 10 µs.
    let t2t = r.tick_to_trade.unwrap();
    assert!(
        (t2t.min_micros - 11.0).abs() < 0.1 && (t2t.max_micros - 13.0).abs() < 0.1,
        "{t2t:?}"
    );
    let wma = r.order_wire_minus_app.unwrap();
    assert!((wma.min_micros - 6.0).abs() < 0.1, "{wma:?}");
    assert_eq!(r.order_round_trip.unwrap().count, 3);
}

#[test]
fn vxlan_with_and_without_the_trailer() {
    let mut a = Analyzer::new(AnalyzerConfig {
        vni: Some(42),
        ..Default::default()
    });
    let p = feed_packet(1, &[trade(1, T0)]);
    let frame = udp((EXCHANGE, 40000), (TRADER, 9100), &p);
    let mut out = Vec::new();
    let trailer = Trailer {
        captured_at_ns: T0 + 7_000,
        original_len: frame.len() as u32,
        direction: Direction::Ingress,
    };
    vxlan::encode(42, &frame, Some(&trailer), &mut out).unwrap();
    // Arrival a millisecond later: the trailer's time is the one that counts.
    a.vxlan(T0 + MS, &out);
    // The same frame as AWS sends it (no trailer), another sequence number.
    let p = feed_packet(2, &[trade(2, T0)]);
    let frame = udp((EXCHANGE, 40000), (TRADER, 9100), &p);
    out.clear();
    vxlan::encode(42, &frame, None, &mut out).unwrap();
    a.vxlan(T0 + 2 * MS, &out);
    // Another session's network: not decoded.
    out.clear();
    vxlan::encode(7, &frame, None, &mut out).unwrap();
    a.vxlan(T0, &out);

    let r = a.report();
    assert_eq!(
        (r.frames_timed_at_interface, r.frames_timed_on_arrival),
        (1, 1)
    );
    assert_eq!(r.timing, "mixed");
    assert_eq!(r.messages.trades, 2);
    let f = r.feed_latency.unwrap();
    assert!(
        (f.min_micros - 7.0).abs() < 0.01 && (f.max_micros - 2000.0).abs() < 2.0,
        "{f:?}"
    );
    assert_eq!(r.other, 1);
}

/// The binary TCP feed as the exchange writes it: one length-prefixed packet per write.
fn binary_feed(packets: u64) -> Vec<Vec<u8>> {
    (0..packets)
        .map(|p| {
            let trades: Vec<Trade> = (0..3).map(|i| trade(p * 3 + i + 1, T0)).collect();
            let mut out = Vec::new();
            encode_frame(&mut out, &feed_packet(p * 3 + 1, &trades)).unwrap();
            out
        })
        .collect()
}

#[test]
fn a_binary_feed_joined_mid_stream_is_decoded_from_its_next_frame_and_after_a_gap() {
    let mut a = Analyzer::new(AnalyzerConfig::default());
    let server = (EXCHANGE, 9000);
    let client = (TRADER, 52000);
    let frames = binary_feed(8);
    // No SYN was captured: the first segment holds the tail of frame 0 and frame 1.
    let mut first = frames[0][30..].to_vec();
    first.extend_from_slice(&frames[1]);
    let mut seq = 7_000u32;
    let mut at = T0 + MS;
    let send = |a: &mut Analyzer, seq: u32, bytes: &[u8], at: u64| {
        a.frame(
            at,
            Timing::Interface,
            LinkType::Ethernet,
            &tcp(server, client, seq, false, bytes),
        );
    };
    send(&mut a, seq, &first, at);
    seq += first.len() as u32;
    // Frames 2 and 3 in order; frame 4 is lost; 5..7 follow.
    for (i, frame) in frames.iter().enumerate().skip(2) {
        at += MS;
        if i != 4 {
            send(&mut a, seq, frame, at);
        }
        seq += frame.len() as u32;
    }
    a.flush();
    let r = a.report();
    assert_eq!(r.connections_joined, 1, "{r:#?}");
    assert!(r.resynchronisations >= 2, "{r:#?}");
    // Frames 1, 2, 3 and 5, 6, 7: three trades each; frame 0 (cut) and 4 (lost) are not.
    assert_eq!(r.messages.trades, 18, "{r:#?}");
    assert_eq!(r.other, 0);
    let unexpected: Vec<_> = r
        .decode_errors
        .iter()
        .filter(|(k, _)| k.as_str() != "tcp_gap")
        .collect();
    assert!(unexpected.is_empty(), "{unexpected:?}");
    // Each trade is timed by the segment that completed it, 1 ms apart from frame 1 on.
    let feed = r.feed_latency.unwrap();
    assert_eq!(feed.count, 18);
    assert!((feed.min_micros - 1_000.0).abs() < 1.0, "{feed:?}");
}

#[test]
fn a_joined_connection_of_another_protocol_is_let_go_as_other() {
    let mut a = Analyzer::new(AnalyzerConfig::default());
    let server = (EXCHANGE, 27017);
    let client = (TRADER, 53000);
    // MongoDB-like traffic: little-endian lengths, BSON, no ticklab frame anywhere.
    let mut x = 7u64;
    let mut seq = 1u32;
    for i in 0..(2 << 20) / 1400 {
        let bytes: Vec<u8> = (0..1400)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x as u8) | 0x80
            })
            .collect();
        a.frame(
            T0 + i as u64,
            Timing::Interface,
            LinkType::Ethernet,
            &tcp(client, server, seq, false, &bytes),
        );
        seq = seq.wrapping_add(1400);
    }
    let r = a.report();
    assert_eq!(r.messages.trades + r.messages.orders, 0);
    assert!(r.other > 0, "{r:#?}");
    assert_eq!(r.errors(), 0, "{:?}", r.decode_errors);
}

#[test]
fn an_http_response_delimited_by_the_end_of_the_connection_is_decoded_at_its_fin() {
    let mut a = Analyzer::new(AnalyzerConfig::default());
    let client = (TRADER, 54000);
    let server = (EXCHANGE, 9003);
    let segment =
        |src: ([u8; 4], u16), dst: ([u8; 4], u16), seq: u32, flags: &str, payload: &[u8]| {
            let mut out = Vec::new();
            let b = PacketBuilder::ethernet2([1; 6], [2; 6])
                .ipv4(
                    if src == client { TRADER } else { EXCHANGE },
                    if dst == server { EXCHANGE } else { TRADER },
                    64,
                )
                .tcp(src.1, dst.1, seq, 65535);
            let b = match flags {
                "syn" => b.syn(),
                "fin" => b.fin().ack(1),
                _ => b.ack(1),
            };
            b.write(&mut out, payload).unwrap();
            out
        };
    let o = order(7, 1, T0 + 5_000);
    let body = serde_json::to_vec(&o).unwrap();
    let mut request = format!(
        "POST /orders HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    let ack = Ack {
        client_order_id: 7,
        exchange_order_id: 70,
        status: AckStatus::Accepted,
        exchange_ts_ns: 0,
    };
    let reply = serde_json::json!({ "ack": ack });
    // No length: the body runs to the end of the connection.
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n{reply}"
    );
    let frames = [
        (T0, segment(client, server, 100, "syn", b"")),
        (T0, segment(server, client, 900, "syn", b"")),
        (T0 + 10_000, segment(client, server, 101, "", &request)),
        (
            T0 + 60_000,
            segment(server, client, 901, "", response.as_bytes()),
        ),
    ];
    for (at, f) in &frames {
        a.frame(*at, Timing::Interface, LinkType::Ethernet, f);
    }
    assert_eq!(a.report().messages.acks, 0, "not complete before the FIN");
    let fin_seq = 901 + response.len() as u32;
    a.frame(
        T0 + 70_000,
        Timing::Interface,
        LinkType::Ethernet,
        &segment(server, client, fin_seq, "fin", b""),
    );
    let r = a.report();
    assert_eq!((r.messages.orders, r.messages.acks), (1, 1), "{r:#?}");
    assert_eq!(r.errors(), 0, "{:?}", r.decode_errors);
    // The round trip ends when the body ended: at the FIN, 60 µs after the order.
    let rtt = r.order_round_trip.unwrap();
    assert!((rtt.max_micros - 60.0).abs() < 0.5, "{rtt:?}");
}
