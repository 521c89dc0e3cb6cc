#![allow(clippy::unwrap_used)]
//! Property tests: every message and packet the encoders can produce decodes back to
//! the same values, and no byte string makes a decoder panic.

use proptest::prelude::*;
use ticklab_wire::frame::split_frame;
use ticklab_wire::packet::{
    PacketBuilder, encode_end_of_session, encode_heartbeat, encode_unavailable,
};
use ticklab_wire::*;

fn symbol() -> impl Strategy<Value = Symbol> {
    "[A-Z0-9./-]{1,8}".prop_map(|s| Symbol::new(&s).unwrap())
}

fn side() -> impl Strategy<Value = Side> {
    prop_oneof![Just(Side::Buy), Just(Side::Sell)]
}

fn message() -> impl Strategy<Value = Message> {
    let trade = (
        symbol(),
        any::<i64>(),
        any::<u64>(),
        side(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(|(symbol, p, q, side, trade_id, ts)| {
            Message::Trade(Trade {
                symbol,
                price: Price(p),
                quantity: Quantity(q),
                side,
                trade_id,
                send_ts_ns: ts,
            })
        });
    let order = (
        any::<u64>(),
        symbol(),
        side(),
        any::<i64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(|(id, symbol, side, p, q, seq, ts)| {
            Message::Order(Order {
                client_order_id: id,
                symbol,
                side,
                limit_price: Price(p),
                quantity: Quantity(q),
                trigger_seq: seq,
                send_ts_ns: ts,
            })
        });
    let status = prop_oneof![
        Just(AckStatus::Accepted),
        Just(AckStatus::Expired),
        Just(AckStatus::Rejected)
    ];
    let ack = (any::<u64>(), any::<u64>(), status, any::<u64>()).prop_map(|(c, e, status, ts)| {
        Message::Ack(Ack {
            client_order_id: c,
            exchange_order_id: e,
            status,
            exchange_ts_ns: ts,
        })
    });
    let fill = (
        any::<u64>(),
        any::<u64>(),
        symbol(),
        side(),
        any::<i64>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(|(c, e, symbol, side, p, q, ts)| {
            Message::Fill(Fill {
                client_order_id: c,
                exchange_order_id: e,
                symbol,
                side,
                price: Price(p),
                quantity: Quantity(q),
                exchange_ts_ns: ts,
            })
        });
    prop_oneof![trade, order, ack, fill]
}

proptest! {
    #[test]
    fn message_round_trips(m in message()) {
        let mut out = Vec::new();
        m.encode(&mut out);
        prop_assert_eq!(out.len(), m.encoded_len());
        prop_assert_eq!(Message::decode(&out), Ok(m));
    }

    #[test]
    fn packet_round_trips(
        name in "[a-z]{1,10}",
        seq in 0u64..u64::MAX / 2,
        messages in proptest::collection::vec(message(), 0..60),
        max_len in 100usize..4000,
    ) {
        let session = Session::from_name(&name);
        let mut buf = Vec::new();
        let mut builder = PacketBuilder::new(&mut buf, session, seq, max_len);
        let mut accepted = Vec::new();
        for m in &messages {
            if !builder.push(m) { break; }
            accepted.push(*m);
        }
        let count = builder.finish();
        prop_assert!(buf.len() <= max_len.max(64));
        let packet = FeedPacket::parse(&buf).unwrap();
        prop_assert_eq!(packet.header.session, session);
        prop_assert_eq!(usize::from(count), accepted.len());
        if count == 0 {
            // An empty data packet is indistinguishable from a heartbeat, as in MoldUDP64.
            prop_assert_eq!(packet.kind, PacketKind::Heartbeat);
        }
        let decoded: Vec<(u64, Message)> = packet.messages().map(|(s, m)| (s, m.unwrap())).collect();
        let expected: Vec<(u64, Message)> = accepted.iter().enumerate().map(|(i, m)| (seq + i as u64, *m)).collect();
        prop_assert_eq!(decoded, expected);
    }

    #[test]
    fn control_packets_round_trip(seq in any::<u64>(), count in any::<u64>()) {
        let s = Session::from_name("ctl");
        let mut buf = Vec::new();
        encode_heartbeat(&mut buf, s, seq);
        let p = FeedPacket::parse(&buf).unwrap();
        prop_assert_eq!((p.kind, p.header.seq), (PacketKind::Heartbeat, seq));
        buf.clear();
        encode_end_of_session(&mut buf, s, seq);
        let p = FeedPacket::parse(&buf).unwrap();
        prop_assert_eq!((p.kind, p.header.seq), (PacketKind::EndOfSession, seq));
        buf.clear();
        encode_unavailable(&mut buf, s, seq, count);
        let p = FeedPacket::parse(&buf).unwrap();
        prop_assert_eq!((p.kind, p.header.seq), (PacketKind::Unavailable { count }, seq));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        if let Ok(p) = FeedPacket::parse(&bytes) {
            for (_, m) in p.messages() { let _ = m; }
        }
        let _ = Message::decode(&bytes);
        let _ = RetransmitRequest::decode(&bytes);
        let _ = split_frame(&bytes);
    }

    #[test]
    fn corrupted_packets_never_panic(
        messages in proptest::collection::vec(message(), 1..20),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut buf = Vec::new();
        let mut builder = PacketBuilder::new(&mut buf, Session::from_name("c"), 1, 4096);
        for m in &messages { builder.push(m); }
        builder.finish();
        for (at, byte) in flips { let i = at.index(buf.len()); buf[i] = byte; }
        let end = cut.index(buf.len() + 1);
        if let Ok(p) = FeedPacket::parse(&buf[..end]) {
            let n = p.messages().count();
            prop_assert_eq!(n, usize::from(p.message_count()));
        }
    }
}
