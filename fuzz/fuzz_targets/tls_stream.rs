//! A captured TLS connection's two byte streams cut and interleaved anyhow, with gaps and
//! key log lines arriving late: the decryptor must report errors, never panic, and never
//! hold more than its limit, whether it saw the handshake or joined mid-stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ticklab_tls_decrypt::{Direction, KeyLog, Limits, TlsConnection};

/// RFC 8448 §3's client_random with that trace's TLS 1.3 secrets, plus a TLS 1.2 master
/// secret and a 0-RTT secret under the same random, so inputs that begin like the RFC's
/// ClientHello reach the key schedules and the record decryption for real.
const KEY_LOG: &str = "\
CLIENT_HANDSHAKE_TRAFFIC_SECRET cb34ecb1e78163ba1c38c6dacb196a6dffa21a8d9912ec18a2ef6283024dece7 b3eddb126e067f35a780b3abf45e2d8f3b1a950738f52e9600746a0e27a55a21
SERVER_HANDSHAKE_TRAFFIC_SECRET cb34ecb1e78163ba1c38c6dacb196a6dffa21a8d9912ec18a2ef6283024dece7 b67b7d690cc16c4e75e54213cb2d37b4e9c912bcded9105d42befd59d391ad38
CLIENT_TRAFFIC_SECRET_0 cb34ecb1e78163ba1c38c6dacb196a6dffa21a8d9912ec18a2ef6283024dece7 9e40646ce79a7f9dc05af8889bce6552875afa0b06df0087f792ebb7c17504a5
SERVER_TRAFFIC_SECRET_0 cb34ecb1e78163ba1c38c6dacb196a6dffa21a8d9912ec18a2ef6283024dece7 a11af9f05531f856ad47116b45a950328204b4f44bfb6b3a4b4f1f3fcb631643
CLIENT_EARLY_TRAFFIC_SECRET cb34ecb1e78163ba1c38c6dacb196a6dffa21a8d9912ec18a2ef6283024dece7 3fce516009c21727d0f2e4e86ee403bc3fce516009c21727d0f2e4e86ee403bc
CLIENT_RANDOM cb34ecb1e78163ba1c38c6dacb196a6dffa21a8d9912ec18a2ef6283024dece7 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f
";

const LIMIT: usize = 64 * 1024;

// The input is a list of commands: [op, len, bytes...]. Bit 0 of op picks the direction;
// bits 1-4 pick the action (0: TCP gap, 1: the key log arrives and held records are
// retried, else feed); bits 5-7 scale len, so chunks run from 0 to 2040 bytes.
fuzz_target!(|data: &[u8]| {
    let mut full = KeyLog::new();
    assert_eq!(full.add_text(KEY_LOG), 0);
    let empty = KeyLog::new();
    // The first byte also decides whether the keys are there from the start.
    let mut keys = if data.first().is_some_and(|b| b & 0x10 != 0) {
        &full
    } else {
        &empty
    };
    let limits = Limits {
        max_held_bytes: LIMIT,
        // Joins try every candidate up to these: small, so an input stays fast.
        join_max_seq: 1 << 12,
        join_max_seq_chacha: 1 << 8,
    };
    // ... and whether the capture joined the connection mid-stream.
    let mut conn = if data.first().is_some_and(|b| b & 0x20 != 0) {
        TlsConnection::mid_stream(limits)
    } else {
        TlsConnection::new(limits)
    };
    let mut events = Vec::new();
    let mut rest = data;
    let mut ts = 0u64;
    while let [op, len, tail @ ..] = rest {
        let dir = if op & 1 == 0 {
            Direction::ClientToServer
        } else {
            Direction::ServerToClient
        };
        match (op >> 1) & 0x0f {
            0 => {
                conn.gap(dir, &mut events);
                rest = tail;
            }
            1 => {
                keys = &full;
                conn.retry(keys, &mut events);
                rest = tail;
            }
            _ => {
                let n = (usize::from(*len) * (1 + usize::from(op >> 5))).min(tail.len());
                conn.feed(dir, ts, &tail[..n], keys, &mut events);
                rest = &tail[n..];
            }
        }
        ts += 1;
        let summary = conn.summary();
        assert!(summary.client.bytes_held + summary.server.bytes_held <= LIMIT);
        for event in events.drain(..) {
            if let ticklab_tls_decrypt::TlsEvent::Error { error, .. } = event {
                assert!(error.kind().starts_with("tls_"));
            }
        }
    }
    conn.retry(&full, &mut events);
    conn.close(&mut events);
    let summary = conn.summary();
    assert_eq!(summary.client.records_held + summary.server.records_held, 0);
});
