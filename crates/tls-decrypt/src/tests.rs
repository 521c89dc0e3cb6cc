//! Connection-level tests on RFC 8448's published TLS 1.3 trace (records produced by neither
//! this crate nor rustls) and on hand-made malformed and unsupported input.

use proptest::prelude::*;

use crate::crypto::tests::{C_AP, C_HS, S_AP, S_HS, hex};
use crate::handshake::tests::RFC8448_CH;
use crate::{Direction, KeyLog, Label, Limits, TlsConnection, TlsError, TlsEvent, TlsVersion};

const C2S: Direction = Direction::ClientToServer;
const S2C: Direction = Direction::ServerToClient;

const CLIENT_RANDOM: &str = "cb34ecb1e78163ba1c38c6dacb196a6dffa21a8d9912ec18a2ef6283024dece7";

// RFC 8448 §3 "Simple 1-RTT Handshake": the records as sent on the wire.
const SH_REC: &str = "
    16 03 03 00 5a 02 00 00 56 03 03 a6 af 06 a4 12 18 60 dc 5e 6e 60 24 9c
    d3 4c 95 93 0c 8a c5 cb 14 34 da c1 55 77 2e d3 e2 69 28 00 13 01 00 00
    2e 00 33 00 24 00 1d 00 20 c9 82 88 76 11 20 95 fe 66 76 2b db f7 c6 72
    e1 56 d6 cc 25 3b 83 3d f1 dd 69 b1 b0 4e 75 1f 0f 00 2b 00 02 03 04";
/// EncryptedExtensions, Certificate, CertificateVerify, Finished under the server
/// handshake traffic key.
const FLIGHT_REC: &str = "
    17 03 03 02 a2 d1 ff 33 4a 56 f5 bf f6 59 4a 07 cc 87 b5 80 23 3f 50 0f
    45 e4 89 e7 f3 3a f3 5e df 78 69 fc f4 0a a4 0a a2 b8 ea 73 f8 48 a7 ca
    07 61 2e f9 f9 45 cb 96 0b 40 68 90 51 23 ea 78 b1 11 b4 29 ba 91 91 cd
    05 d2 a3 89 28 0f 52 61 34 aa dc 7f c7 8c 4b 72 9d f8 28 b5 ec f7 b1 3b
    d9 ae fb 0e 57 f2 71 58 5b 8e a9 bb 35 5c 7c 79 02 07 16 cf b9 b1 18 3e
    f3 ab 20 e3 7d 57 a6 b9 d7 47 76 09 ae e6 e1 22 a4 cf 51 42 73 25 25 0c
    7d 0e 50 92 89 44 4c 9b 3a 64 8f 1d 71 03 5d 2e d6 5b 0e 3c dd 0c ba e8
    bf 2d 0b 22 78 12 cb b3 60 98 72 55 cc 74 41 10 c4 53 ba a4 fc d6 10 92
    8d 80 98 10 e4 b7 ed 1a 8f d9 91 f0 6a a6 24 82 04 79 7e 36 a6 a7 3b 70
    a2 55 9c 09 ea d6 86 94 5b a2 46 ab 66 e5 ed d8 04 4b 4c 6d e3 fc f2 a8
    94 41 ac 66 27 2f d8 fb 33 0e f8 19 05 79 b3 68 45 96 c9 60 bd 59 6e ea
    52 0a 56 a8 d6 50 f5 63 aa d2 74 09 96 0d ca 63 d3 e6 88 61 1e a5 e2 2f
    44 15 cf 95 38 d5 1a 20 0c 27 03 42 72 96 8a 26 4e d6 54 0c 84 83 8d 89
    f7 2c 24 46 1a ad 6d 26 f5 9e ca ba 9a cb bb 31 7b 66 d9 02 f4 f2 92 a3
    6a c1 b6 39 c6 37 ce 34 31 17 b6 59 62 22 45 31 7b 49 ee da 0c 62 58 f1
    00 d7 d9 61 ff b1 38 64 7e 92 ea 33 0f ae ea 6d fa 31 c7 a8 4d c3 bd 7e
    1b 7a 6c 71 78 af 36 87 90 18 e3 f2 52 10 7f 24 3d 24 3d c7 33 9d 56 84
    c8 b0 37 8b f3 02 44 da 8c 87 c8 43 f5 e5 6e b4 c5 e8 28 0a 2b 48 05 2c
    f9 3b 16 49 9a 66 db 7c ca 71 e4 59 94 26 f7 d4 61 e6 6f 99 88 2b d8 9f
    c5 08 00 be cc a6 2d 6c 74 11 6d bd 29 72 fd a1 fa 80 f8 5d f8 81 ed be
    5a 37 66 89 36 b3 35 58 3b 59 91 86 dc 5c 69 18 a3 96 fa 48 a1 81 d6 b6
    fa 4f 9d 62 d5 13 af bb 99 2f 2b 99 2f 67 f8 af e6 7f 76 91 3f a3 88 cb
    56 30 c8 ca 01 e0 c6 5d 11 c6 6a 1e 2a c4 c8 59 77 b7 c7 a6 99 9b bf 10
    dc 35 ae 69 f5 51 56 14 63 6c 0b 9b 68 c1 9e d2 e3 1c 0b 3b 66 76 30 38
    eb ba 42 f3 b3 8e dc 03 99 f3 a9 f2 3f aa 63 97 8c 31 7f c9 fa 66 a7 3f
    60 f0 50 4d e9 3b 5b 84 5e 27 55 92 c1 23 35 ee 34 0b bc 4f dd d5 02 78
    40 16 e4 b3 be 7e f0 4d da 49 f4 b4 40 a3 0c b5 d2 af 93 98 28 fd 4a e3
    79 4e 44 f9 4d f5 a6 31 ed e4 2c 17 19 bf da bf 02 53 fe 51 75 be 89 8e
    75 0e dc 53 37 0d 2b";
const CFIN_REC: &str = "
    17 03 03 00 35 75 ec 4d c2 38 cc e6 0b 29 80 44 a7 1e 21 9c 56 cc 77 b0
    51 7f e9 b9 3c 7a 4b fc 44 d8 7f 38 f8 03 38 ac 98 fc 46 de b3 84 bd 1c
    ae ac ab 68 67 d7 26 c4 05 46";
/// NewSessionTicket: the server's first record under its application key.
const NST_REC: &str = "
    17 03 03 00 de 3a 6b 8f 90 41 4a 97 d6 95 9c 34 87 68 0d e5 13 4a 2b 24
    0e 6c ff ac 11 6e 95 d4 1d 6a f8 f6 b5 80 dc f3 d1 1d 63 c7 58 db 28 9a
    01 59 40 25 2f 55 71 3e 06 1d c1 3e 07 88 91 a3 8e fb cf 57 53 ad 8e f1
    70 ad 3c 73 53 d1 6d 9d a7 73 b9 ca 7f 2b 9f a1 b6 c0 d4 a3 d0 3f 75 e0
    9c 30 ba 1e 62 97 2a c4 6f 75 f7 b9 81 be 63 43 9b 29 99 ce 13 06 46 15
    13 98 91 d5 e4 c5 b4 06 f1 6e 3f c1 81 a7 7c a4 75 84 00 25 db 2f 0a 77
    f8 1b 5a b0 5b 94 c0 13 46 75 5f 69 23 2c 86 51 9d 86 cb ee ac 87 aa c3
    47 d1 43 f9 60 5d 64 f6 50 db 4d 02 3e 70 e9 52 ca 49 fe 51 37 12 1c 74
    bc 26 97 68 7e 24 87 46 d6 df 35 30 05 f3 bc e1 86 96 12 9c 81 53 55 6b
    3b 6c 67 79 b3 7b f1 59 85 68 4f";
const C_APP_REC: &str = "
    17 03 03 00 43 a2 3f 70 54 b6 2c 94 d0 af fa fe 82 28 ba 55 cb ef ac ea
    42 f9 14 aa 66 bc ab 3f 2b 98 19 a8 a5 b4 6b 39 5b d5 4a 9a 20 44 1e 2b
    62 97 4e 1f 5a 62 92 a2 97 70 14 bd 1e 3d ea e6 3a ee bb 21 69 49 15 e4";
const S_APP_REC: &str = "
    17 03 03 00 43 2e 93 7e 11 ef 4a c7 40 e5 38 ad 36 00 5f c4 a4 69 32 fc
    32 25 d0 5f 82 aa 1b 36 e3 0e fa f9 7d 90 e6 df fc 60 2d cb 50 1a 59 a8
    fc c4 9c 4b f2 e5 f0 a2 1c 00 47 c2 ab f3 32 54 0d d0 32 e1 67 c2 95 5d";
/// close_notify from each side.
const C_ALERT_REC: &str = "17 03 03 00 13 c9 87 27 60 65 56 66 b7 4d 7f f1 15 3e fd 6d b6 d0 b0 e3";
const S_ALERT_REC: &str = "17 03 03 00 13 b5 8f d6 71 66 eb f5 99 d2 47 20 cf be 7e fa 7a 88 64 a9";

fn record(content_type: u8, version: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![content_type];
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// (client to server, server to client) byte streams of the RFC 8448 §3 connection.
fn rfc8448_streams() -> (Vec<u8>, Vec<u8>) {
    let mut c2s = record(22, 0x0301, &hex(RFC8448_CH));
    for r in [CFIN_REC, C_APP_REC, C_ALERT_REC] {
        c2s.extend(hex(r));
    }
    let mut s2c = Vec::new();
    for r in [SH_REC, FLIGHT_REC, NST_REC, S_APP_REC, S_ALERT_REC] {
        s2c.extend(hex(r));
    }
    (c2s, s2c)
}

fn rfc8448_keys() -> KeyLog {
    let mut keys = KeyLog::new();
    let text = format!(
        "CLIENT_HANDSHAKE_TRAFFIC_SECRET {CLIENT_RANDOM} {C_HS}\n\
         SERVER_HANDSHAKE_TRAFFIC_SECRET {CLIENT_RANDOM} {S_HS}\n\
         CLIENT_TRAFFIC_SECRET_0 {CLIENT_RANDOM} {C_AP}\n\
         SERVER_TRAFFIC_SECRET_0 {CLIENT_RANDOM} {S_AP}\n"
    );
    assert_eq!(keys.add_text(&text), 0);
    keys
}

fn payload() -> Vec<u8> {
    (0u8..50).collect()
}

/// Feeds `stream` of `dir` in chunks of `size`, numbering the chunks' timestamps from `ts0`.
fn feed_chunks(
    conn: &mut TlsConnection,
    dir: Direction,
    stream: &[u8],
    size: usize,
    ts0: u64,
    keys: &KeyLog,
    out: &mut Vec<TlsEvent>,
) {
    for (i, chunk) in stream.chunks(size).enumerate() {
        conn.feed(dir, ts0 + i as u64, chunk, keys, out);
    }
}

fn errors(events: &[TlsEvent]) -> Vec<(Direction, &'static str)> {
    events
        .iter()
        .filter_map(|e| match e {
            TlsEvent::Error { dir, error } => Some((*dir, error.kind())),
            _ => None,
        })
        .collect()
}

fn app_data(events: &[TlsEvent], want: Direction) -> Vec<Vec<u8>> {
    events
        .iter()
        .filter_map(|e| match e {
            TlsEvent::ApplicationData { dir, data, .. } if *dir == want => Some(data.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn rfc8448_trace_decrypts_through_the_connection() {
    let (c2s, s2c) = rfc8448_streams();
    let keys = rfc8448_keys();
    for size in [1, 7, 100, 100_000] {
        for server_first in [false, true] {
            let mut conn = TlsConnection::default();
            let mut events = Vec::new();
            let order = if server_first {
                [(S2C, &s2c), (C2S, &c2s)]
            } else {
                [(C2S, &c2s), (S2C, &s2c)]
            };
            for (dir, stream) in order {
                let ts0 = if dir == C2S { 1_000 } else { 2_000 };
                feed_chunks(&mut conn, dir, stream, size, ts0, &keys, &mut events);
            }
            let ctx = format!("chunks of {size}, server first {server_first}");
            assert_eq!(errors(&events), vec![], "{ctx}");
            assert_eq!(app_data(&events, C2S), vec![payload()], "{ctx}");
            assert_eq!(app_data(&events, S2C), vec![payload()], "{ctx}");
            let finished: Vec<Direction> = events
                .iter()
                .filter_map(|e| match e {
                    TlsEvent::HandshakeFinished { dir, .. } => Some(*dir),
                    _ => None,
                })
                .collect();
            assert_eq!(finished.len(), 2, "{ctx}");
            // The ServerHello completes in the chunk holding its 95th byte.
            assert!(events.contains(&TlsEvent::Negotiated {
                ts_ns: 2_000 + (94 / size) as u64,
                version: TlsVersion::Tls13,
                cipher_suite: 0x1301
            }));
            for dir in [C2S, S2C] {
                assert!(
                    events.iter().any(|e| matches!(e,
                        TlsEvent::Alert { dir: d, level: 1, description: 0, .. } if *d == dir)),
                    "{ctx}: close_notify from {dir:?}"
                );
            }
            let summary = conn.summary();
            assert_eq!(summary.version, Some(TlsVersion::Tls13));
            assert_eq!(summary.cipher_suite_name, Some("TLS_AES_128_GCM_SHA256"));
            assert_eq!(summary.client_random.as_deref(), Some(CLIENT_RANDOM));
            assert_eq!(summary.server_name.as_deref(), Some("server"));
            assert_eq!(summary.offered_cipher_suites, vec![0x1301, 0x1303, 0x1302]);
            assert!(summary.keys_found);
            // Finished, application data, alert; flight, ticket, data, alert.
            assert_eq!(summary.client.records_decrypted, 3);
            assert_eq!(summary.server.records_decrypted, 4);
            assert_eq!(summary.client.records_held + summary.server.records_held, 0);
        }
    }
}

#[test]
fn rfc8448_timestamps_are_those_of_the_completing_chunk() {
    let (c2s, s2c) = rfc8448_streams();
    let keys = rfc8448_keys();
    let mut conn = TlsConnection::default();
    let mut events = Vec::new();
    // The client's application data record is c2s bytes [201+58, 201+58+72); split it
    // across chunks stamped 10, 11 and 12: the record completes in chunk 12.
    let app_start = 5 + 196 + 58;
    let app_end = app_start + 72;
    conn.feed(C2S, 9, &c2s[..app_start + 10], &keys, &mut events);
    conn.feed(
        C2S,
        10,
        &c2s[app_start + 10..app_start + 20],
        &keys,
        &mut events,
    );
    conn.feed(
        C2S,
        11,
        &c2s[app_start + 20..app_end - 1],
        &keys,
        &mut events,
    );
    conn.feed(C2S, 12, &c2s[app_end - 1..], &keys, &mut events);
    // Held until the ServerHello is seen, which is later; the timestamp stays 12.
    assert!(app_data(&events, C2S).is_empty());
    conn.feed(S2C, 50, &s2c, &keys, &mut events);
    let stamped: Vec<(u64, usize)> = events
        .iter()
        .filter_map(|e| match e {
            TlsEvent::ApplicationData {
                dir: C2S,
                ts_ns,
                data,
            } => Some((*ts_ns, data.len())),
            _ => None,
        })
        .collect();
    assert_eq!(stamped, vec![(12, 50)]);
}

#[test]
fn rfc8448_keys_arriving_late_are_used_by_retry() {
    let (c2s, s2c) = rfc8448_streams();
    let all_keys = rfc8448_keys();
    let mut reference = Vec::new();
    {
        let mut conn = TlsConnection::default();
        feed_chunks(&mut conn, C2S, &c2s, 13, 100, &all_keys, &mut reference);
        feed_chunks(&mut conn, S2C, &s2c, 29, 500, &all_keys, &mut reference);
    }
    let mut keys = KeyLog::new();
    let mut conn = TlsConnection::default();
    let mut events = Vec::new();
    feed_chunks(&mut conn, C2S, &c2s, 13, 100, &keys, &mut events);
    feed_chunks(&mut conn, S2C, &s2c, 29, 500, &keys, &mut events);
    assert!(app_data(&events, C2S).is_empty());
    assert!(events.contains(&TlsEvent::KeysPending {
        dir: S2C,
        label: Label::ServerHandshakeTrafficSecret
    }));
    assert!(events.contains(&TlsEvent::KeysPending {
        dir: C2S,
        label: Label::ClientHandshakeTrafficSecret
    }));
    assert!(conn.summary().server.records_held > 0);
    // Only the handshake secrets first: the directions get as far as their Finished.
    keys.add_line(&format!(
        "SERVER_HANDSHAKE_TRAFFIC_SECRET {CLIENT_RANDOM} {S_HS}"
    ))
    .unwrap();
    keys.add_line(&format!(
        "CLIENT_HANDSHAKE_TRAFFIC_SECRET {CLIENT_RANDOM} {C_HS}"
    ))
    .unwrap();
    conn.retry(&keys, &mut events);
    assert!(app_data(&events, C2S).is_empty());
    assert!(events.contains(&TlsEvent::KeysPending {
        dir: S2C,
        label: Label::ServerTrafficSecret0
    }));
    keys.add_line(&format!("SERVER_TRAFFIC_SECRET_0 {CLIENT_RANDOM} {S_AP}"))
        .unwrap();
    keys.add_line(&format!("CLIENT_TRAFFIC_SECRET_0 {CLIENT_RANDOM} {C_AP}"))
        .unwrap();
    conn.retry(&keys, &mut events);
    assert_eq!(errors(&events), vec![]);
    // Same data with the same chunk timestamps as when the keys were there from the start.
    let data = |events: &[TlsEvent]| -> Vec<TlsEvent> {
        events
            .iter()
            .filter(|e| matches!(e, TlsEvent::ApplicationData { .. }))
            .cloned()
            .collect()
    };
    assert_eq!(data(&events), data(&reference));
    assert_eq!(data(&events).len(), 2);
    let summary = conn.summary();
    assert_eq!(summary.client.records_held + summary.server.records_held, 0);
}

#[test]
fn wrong_keys_give_decrypt_errors() {
    let (c2s, s2c) = rfc8448_streams();
    let mut keys = KeyLog::new();
    let flip = |s: &str| format!("{}{}", if s.starts_with('0') { "1" } else { "0" }, &s[1..]);
    for (label, secret) in [
        ("CLIENT_HANDSHAKE_TRAFFIC_SECRET", C_HS),
        ("SERVER_HANDSHAKE_TRAFFIC_SECRET", S_HS),
        ("CLIENT_TRAFFIC_SECRET_0", C_AP),
        ("SERVER_TRAFFIC_SECRET_0", S_AP),
    ] {
        keys.add_line(&format!("{label} {CLIENT_RANDOM} {}", flip(secret)))
            .unwrap();
    }
    let mut conn = TlsConnection::default();
    let mut events = Vec::new();
    feed_chunks(&mut conn, C2S, &c2s, 50, 0, &keys, &mut events);
    feed_chunks(&mut conn, S2C, &s2c, 50, 0, &keys, &mut events);
    assert!(app_data(&events, C2S).is_empty() && app_data(&events, S2C).is_empty());
    // Every protected record fails: 3 from the client, 4 from the server.
    let errs = errors(&events);
    assert_eq!(errs.len(), 7, "{events:?}");
    assert!(errs.iter().all(|(_, kind)| *kind == "tls_decrypt"));
    assert!(events.contains(&TlsEvent::Error {
        dir: S2C,
        error: TlsError::Decrypt { seq: 3 }
    }));
    assert_eq!(conn.summary().server.records_failed, 4);
}

#[test]
fn a_secret_of_the_wrong_size_for_the_suite_is_an_error() {
    let (c2s, s2c) = rfc8448_streams();
    let mut keys = rfc8448_keys();
    keys.add_line(&format!(
        "SERVER_HANDSHAKE_TRAFFIC_SECRET {CLIENT_RANDOM} {}",
        "11".repeat(48)
    ))
    .unwrap();
    let mut conn = TlsConnection::default();
    let mut events = Vec::new();
    conn.feed(C2S, 1, &c2s, &keys, &mut events);
    conn.feed(S2C, 2, &s2c, &keys, &mut events);
    assert!(events.contains(&TlsEvent::Error {
        dir: S2C,
        error: TlsError::SecretLength {
            label: Label::ServerHandshakeTrafficSecret,
            got: 48,
            expected: 32
        }
    }));
    // The client side is unaffected.
    assert_eq!(app_data(&events, C2S), vec![payload()]);
}

#[test]
fn a_gap_is_reported_once_and_silences_the_direction() {
    let (c2s, s2c) = rfc8448_streams();
    let keys = rfc8448_keys();
    let mut conn = TlsConnection::default();
    let mut events = Vec::new();
    // The client's Finished is complete, its application data record only half there.
    let cut = 5 + 196 + 58 + 30;
    conn.feed(C2S, 1, &c2s[..cut], &keys, &mut events);
    conn.gap(C2S, &mut events);
    conn.gap(C2S, &mut events);
    conn.feed(C2S, 2, &c2s[cut + 5..], &keys, &mut events);
    conn.feed(C2S, 3, &c2s, &keys, &mut events);
    conn.feed(S2C, 4, &s2c, &keys, &mut events);
    assert_eq!(errors(&events), vec![(C2S, "tls_gap")]);
    assert!(app_data(&events, C2S).is_empty());
    // Records complete before the gap still count: the client's Finished was decrypted.
    assert!(events.contains(&TlsEvent::HandshakeFinished { dir: C2S, ts_ns: 1 }));
    assert_eq!(app_data(&events, S2C), vec![payload()]);
    assert!(conn.summary().client.stopped);
}

#[test]
fn non_tls_bytes_stop_the_direction() {
    let keys = rfc8448_keys();
    let mut conn = TlsConnection::default();
    let mut events = Vec::new();
    conn.feed(
        C2S,
        1,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        &keys,
        &mut events,
    );
    conn.feed(
        C2S,
        2,
        &record(22, 0x0303, &[1, 0, 0, 0]),
        &keys,
        &mut events,
    );
    assert_eq!(errors(&events), vec![(C2S, "tls_record")]);
    assert!(
        matches!(&events[0], TlsEvent::Error { error: TlsError::Framing(m), .. } if m.contains("0x47"))
    );

    // Records before the junk are still decoded; an impossible length is junk too.
    let (c2s, s2c) = rfc8448_streams();
    let mut conn = TlsConnection::default();
    let mut events = Vec::new();
    let mut stream = c2s[..5 + 196 + 58 + 72].to_vec();
    stream.extend_from_slice(&[23, 3, 3, 0xff, 0xff, 0]);
    conn.feed(C2S, 1, &stream, &keys, &mut events);
    conn.feed(S2C, 2, &s2c, &keys, &mut events);
    assert_eq!(errors(&events), vec![(C2S, "tls_record")]);
    assert_eq!(app_data(&events, C2S), vec![payload()]);
}

#[test]
fn records_held_past_the_limit_are_dropped_with_one_event() {
    let (c2s, s2c) = rfc8448_streams();
    let mut conn = TlsConnection::new(Limits {
        max_held_bytes: 600,
        ..Limits::default()
    });
    let keys = KeyLog::new();
    let mut events = Vec::new();
    feed_chunks(&mut conn, C2S, &c2s, 20, 0, &keys, &mut events);
    feed_chunks(&mut conn, S2C, &s2c, 20, 0, &keys, &mut events);
    let errs = errors(&events);
    assert_eq!(errs, vec![(S2C, "tls_held_overflow")], "{events:?}");
    let summary = conn.summary();
    assert!(summary.server.stopped && summary.server.records_held == 0);
    assert!(!summary.client.stopped && summary.client.records_held > 0);
    // Closing reports what the client direction still held, once.
    conn.close(&mut events);
    conn.close(&mut events);
    let last = events.last().unwrap();
    assert!(
        matches!(
            last,
            TlsEvent::Error {
                dir: C2S,
                error: TlsError::NoKey {
                    label: Label::ClientHandshakeTrafficSecret,
                    records: 3,
                    ..
                }
            }
        ),
        "{last:?}"
    );
    assert_eq!(errors(&events).len(), 2);
}

#[test]
fn close_reports_records_waiting_for_the_other_hello() {
    let (c2s, _) = rfc8448_streams();
    let mut conn = TlsConnection::default();
    let mut events = Vec::new();
    conn.feed(C2S, 1, &c2s, &rfc8448_keys(), &mut events);
    assert!(events.is_empty());
    conn.close(&mut events);
    assert_eq!(
        events,
        vec![TlsEvent::Error {
            dir: C2S,
            error: TlsError::MissingHello {
                which: "ServerHello",
                records: 3,
                bytes: 58 + 72 + 24
            }
        }]
    );
}

/// A ServerHello body: version, random, empty session id, suite, compression, extensions.
fn server_hello(version: u16, suite: u16, compression: u8, extensions: &[u8]) -> Vec<u8> {
    let mut body = version.to_be_bytes().to_vec();
    body.extend_from_slice(&[0x42; 32]);
    body.push(0);
    body.extend_from_slice(&suite.to_be_bytes());
    body.push(compression);
    if !extensions.is_empty() {
        body.extend_from_slice(&u16::try_from(extensions.len()).unwrap().to_be_bytes());
        body.extend_from_slice(extensions);
    }
    let mut msg = vec![2, 0, 0, u8::try_from(body.len()).unwrap()];
    msg.extend(body);
    record(22, 0x0303, &msg)
}

#[test]
fn unsupported_protocols_are_reported_not_decoded() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            server_hello(0x0303, 0xc013, 0, &[]),
            "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
        ),
        (server_hello(0x0301, 0xc02f, 0, &[]), "TLSv1.0"),
        (server_hello(0x0302, 0xc02f, 0, &[]), "TLSv1.1"),
        (server_hello(0x0303, 0xc02f, 1, &[]), "compression"),
        // TLS 1.3 CCM suite.
        (
            server_hello(0x0303, 0x1304, 0, &[0, 43, 0, 2, 3, 4]),
            "TLS_AES_128_CCM_SHA256",
        ),
        // A TLS 1.3 suite in TLS 1.2.
        (
            server_hello(0x0303, 0x1301, 0, &[]),
            "TLS_AES_128_GCM_SHA256 with TLSv1.2",
        ),
    ];
    for (sh, what) in cases {
        let mut conn = TlsConnection::default();
        let mut events = Vec::new();
        let keys = rfc8448_keys();
        conn.feed(
            C2S,
            1,
            &record(22, 0x0301, &hex(RFC8448_CH)),
            &keys,
            &mut events,
        );
        conn.feed(S2C, 2, &sh, &keys, &mut events);
        conn.feed(S2C, 3, &record(20, 0x0303, &[1]), &keys, &mut events);
        conn.feed(S2C, 4, &record(23, 0x0303, &[0; 40]), &keys, &mut events);
        conn.feed(C2S, 5, &record(23, 0x0303, &[0; 40]), &keys, &mut events);
        assert_eq!(errors(&events), vec![(S2C, "tls_unsupported")], "{what}");
        let TlsEvent::Error { error, .. } = &events[0] else {
            panic!("{events:?}")
        };
        assert!(error.to_string().contains(what), "{error} lacks {what}");
        assert!(conn.summary().client.stopped && conn.summary().server.stopped);
    }

    // An SSLv2-compatible ClientHello (RFC 5246 appendix E.2).
    let mut conn = TlsConnection::default();
    let mut events = Vec::new();
    let sslv2 = [
        0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10,
    ];
    conn.feed(C2S, 1, &sslv2, &KeyLog::new(), &mut events);
    assert_eq!(errors(&events), vec![(C2S, "tls_unsupported")]);
}

#[test]
fn malformed_hellos_are_handshake_errors() {
    let mut conn = TlsConnection::default();
    let mut events = Vec::new();
    let keys = KeyLog::new();
    conn.feed(
        C2S,
        1,
        &record(22, 0x0301, &[1, 0, 0, 3, 3, 3, 0]),
        &keys,
        &mut events,
    );
    conn.feed(
        C2S,
        2,
        &record(22, 0x0301, &[1, 0, 0, 3, 3, 3, 0]),
        &keys,
        &mut events,
    );
    assert_eq!(errors(&events), vec![(C2S, "tls_handshake")]);

    let mut conn = TlsConnection::default();
    let mut events = Vec::new();
    conn.feed(
        S2C,
        1,
        &record(22, 0x0303, &[2, 0, 0, 2, 3, 3]),
        &keys,
        &mut events,
    );
    assert_eq!(errors(&events), vec![(S2C, "tls_handshake")]);

    // Mid-connection capture: protected data before any hello.
    let mut conn = TlsConnection::default();
    let mut events = Vec::new();
    conn.feed(S2C, 1, &record(23, 0x0303, &[0; 30]), &keys, &mut events);
    conn.feed(S2C, 1, &record(23, 0x0303, &[0; 30]), &keys, &mut events);
    assert_eq!(errors(&events), vec![(S2C, "tls_handshake")]);
}

#[test]
fn connections_and_key_logs_can_move_between_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<TlsConnection>();
    shareable::<KeyLog>();
    shareable::<TlsEvent>();
}

proptest! {
    /// Any bytes, cut anywhere, on both directions, with and without the right keys: errors
    /// at most, never a panic; and held bytes stay within the limit.
    #[test]
    fn arbitrary_input_never_panics(
        c2s in proptest::collection::vec(any::<u8>(), 0..3000),
        s2c in proptest::collection::vec(any::<u8>(), 0..3000),
        cuts in proptest::collection::vec(1usize..400, 1..20),
        prefix in any::<bool>(),
    ) {
        let keys = rfc8448_keys();
        let (real_c2s, real_s2c) = rfc8448_streams();
        // Half the cases start like the real connection so the decoders get deep.
        let (c2s, s2c) = if prefix {
            ([&real_c2s[..201], &c2s[..]].concat(), [&real_s2c[..95], &s2c[..]].concat())
        } else {
            (c2s, s2c)
        };
        let mut conn = TlsConnection::new(Limits {
            max_held_bytes: 2000,
            ..Limits::default()
        });
        let mut events = Vec::new();
        let (mut i, mut j, mut k) = (0, 0, 0);
        while i < c2s.len() || j < s2c.len() {
            let n = cuts[k % cuts.len()];
            k += 1;
            if k % 2 == 0 && i < c2s.len() {
                let end = (i + n).min(c2s.len());
                conn.feed(C2S, k as u64, &c2s[i..end], &keys, &mut events);
                i = end;
            } else if j < s2c.len() {
                let end = (j + n).min(s2c.len());
                conn.feed(S2C, k as u64, &s2c[j..end], &keys, &mut events);
                j = end;
            } else {
                let end = (i + n).min(c2s.len());
                conn.feed(C2S, k as u64, &c2s[i..end], &keys, &mut events);
                i = end;
            }
            let s = conn.summary();
            prop_assert!(s.client.bytes_held + s.server.bytes_held <= 2000);
        }
        conn.retry(&keys, &mut events);
        conn.close(&mut events);
        let _ = conn.summary();
    }
}
