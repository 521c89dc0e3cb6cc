//! Round trips against a real TLS stack: rustls client and server talk in memory, their key
//! log and both directions' bytes are recorded, and the decoder must give back exactly what
//! each side wrote, whatever the chunking, whenever the keys arrive.
// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use rustls::crypto::ring;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{
    ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection,
    SupportedCipherSuite, SupportedProtocolVersion,
};
use ticklab_tls_decrypt::{
    Direction, KeyLog, Limits, TlsConnection, TlsError, TlsEvent, TlsVersion,
};

const C2S: Direction = Direction::ClientToServer;
const S2C: Direction = Direction::ServerToClient;

/// rustls's key log callback, collecting NSS key log lines.
#[derive(Debug, Default)]
struct CollectKeys(Mutex<String>);

impl rustls::KeyLog for CollectKeys {
    fn log(&self, label: &str, client_random: &[u8], secret: &[u8]) {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let line = format!("{label} {} {}\n", hex(client_random), hex(secret));
        self.0.lock().unwrap().push_str(&line);
    }
}

/// One recorded connection.
#[derive(Debug, Default, Clone)]
struct Transcript {
    c2s: Vec<u8>,
    s2c: Vec<u8>,
    /// What each side's application wrote (early data separately).
    wrote_c2s: Vec<u8>,
    wrote_s2c: Vec<u8>,
    wrote_early: Vec<u8>,
    key_updates_c2s: u32,
    key_updates_s2c: u32,
}

struct Certificate {
    cert: CertificateDer<'static>,
    key_pkcs8: Vec<u8>,
}

fn certificate() -> Certificate {
    // rcgen's default key is ECDSA P-256: good for TLS 1.3 and the ECDHE-ECDSA suites.
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    Certificate {
        cert: generated.cert.der().clone(),
        key_pkcs8: generated.signing_key.serialize_der(),
    }
}

type Groups = Vec<&'static dyn rustls::crypto::SupportedKxGroup>;

struct Setup {
    suite: SupportedCipherSuite,
    version: &'static SupportedProtocolVersion,
    /// Key exchange groups (client, server); None for the provider's defaults.
    groups: Option<(Groups, Groups)>,
    early_data: bool,
}

fn setup(suite: SupportedCipherSuite, version: &'static SupportedProtocolVersion) -> Setup {
    Setup {
        suite,
        version,
        groups: None,
        early_data: false,
    }
}

struct Pair {
    client_config: Arc<ClientConfig>,
    server_config: Arc<ServerConfig>,
    keys: Arc<CollectKeys>,
}

fn configs(s: &Setup) -> Pair {
    let cert = certificate();
    let mut client_provider = ring::default_provider();
    client_provider.cipher_suites = vec![s.suite];
    let mut server_provider = client_provider.clone();
    if let Some((client_groups, server_groups)) = &s.groups {
        client_provider.kx_groups = client_groups.clone();
        server_provider.kx_groups = server_groups.clone();
    }
    let mut server = ServerConfig::builder_with_provider(Arc::new(server_provider))
        .with_protocol_versions(&[s.version])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.cert.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pkcs8)),
        )
        .unwrap();
    if s.early_data {
        server.max_early_data_size = 1 << 16;
    }
    let mut roots = RootCertStore::empty();
    roots.add(cert.cert).unwrap();
    let mut client = ClientConfig::builder_with_provider(Arc::new(client_provider))
        .with_protocol_versions(&[s.version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let keys = Arc::new(CollectKeys::default());
    client.key_log = keys.clone();
    client.enable_early_data = s.early_data;
    Pair {
        client_config: Arc::new(client),
        server_config: Arc::new(server),
        keys,
    }
}

/// Moves bytes both ways until neither side has anything to send, recording them and what
/// each side's application received (rustls refuses input while its plaintext buffer is full).
fn shuttle(
    client: &mut ClientConnection,
    server: &mut ServerConnection,
    t: &mut Transcript,
    got: &mut [Vec<u8>; 2],
) {
    loop {
        let mut moved = false;
        while client.wants_write() {
            let mut buf = Vec::new();
            client.write_tls(&mut buf).unwrap();
            t.c2s.extend_from_slice(&buf);
            let mut rd = &buf[..];
            while !rd.is_empty() {
                server.read_tls(&mut rd).unwrap();
                server.process_new_packets().unwrap();
                drain(&mut server.reader(), &mut got[0]);
            }
            moved = true;
        }
        while server.wants_write() {
            let mut buf = Vec::new();
            server.write_tls(&mut buf).unwrap();
            t.s2c.extend_from_slice(&buf);
            let mut rd = &buf[..];
            while !rd.is_empty() {
                client.read_tls(&mut rd).unwrap();
                client.process_new_packets().unwrap();
                drain(&mut client.reader(), &mut got[1]);
            }
            moved = true;
        }
        if !moved {
            return;
        }
    }
}

fn drain(reader: &mut dyn Read, into: &mut Vec<u8>) {
    let mut buf = [0u8; 8192];
    loop {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => into.extend_from_slice(&buf[..n]),
        }
    }
}

/// A message of `len` bytes that differs by position and by message.
fn message(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt))
        .collect()
}

/// Sizes from empty to several records' worth (16 KiB is rustls's record payload limit).
const SIZES: [usize; 9] = [0, 1, 2, 100, 1400, 16384, 16385, 40000, 7];

/// Handshake, messages both ways (with KeyUpdates half-way on TLS 1.3), close_notify.
fn converse(pair: &Pair, tls13: bool, early: Option<&[u8]>) -> Transcript {
    let mut t = Transcript::default();
    let mut client = ClientConnection::new(
        pair.client_config.clone(),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let mut server = ServerConnection::new(pair.server_config.clone()).unwrap();
    if let Some(early) = early {
        let mut writer = client
            .early_data()
            .expect("early data is possible on resumption");
        writer.write_all(early).unwrap();
        t.wrote_early = early.to_vec();
    }
    let mut got = [Vec::new(), Vec::new()];
    shuttle(&mut client, &mut server, &mut t, &mut got);
    assert!(!client.is_handshaking() && !server.is_handshaking());
    if early.is_some() {
        assert!(client.is_early_data_accepted());
    }
    for (i, len) in SIZES.iter().enumerate() {
        if tls13 && i == SIZES.len() / 2 {
            client.refresh_traffic_keys().unwrap();
            server.refresh_traffic_keys().unwrap();
            t.key_updates_c2s += 1;
            t.key_updates_s2c += 1;
        }
        if tls13 && i == SIZES.len() - 2 {
            client.refresh_traffic_keys().unwrap();
            t.key_updates_c2s += 1;
        }
        // rustls buffers at most 64 KiB of unsent plaintext: write what it takes, move it.
        let up = message(*len, i as u8);
        let mut rest = &up[..];
        while !rest.is_empty() {
            let n = client.writer().write(rest).unwrap();
            rest = &rest[n..];
            shuttle(&mut client, &mut server, &mut t, &mut got);
        }
        t.wrote_c2s.extend_from_slice(&up);
        let down = message(len * 2 + 3, 100 + i as u8);
        let mut rest = &down[..];
        while !rest.is_empty() {
            let n = server.writer().write(rest).unwrap();
            rest = &rest[n..];
            shuttle(&mut client, &mut server, &mut t, &mut got);
        }
        t.wrote_s2c.extend_from_slice(&down);
    }
    client.send_close_notify();
    server.send_close_notify();
    shuttle(&mut client, &mut server, &mut t, &mut got);
    // rustls itself agrees on what was sent.
    let [got_c2s, got_s2c] = got;
    assert_eq!(got_c2s, t.wrote_c2s);
    assert_eq!(got_s2c, t.wrote_s2c);
    t
}

fn key_log(pair: &Pair) -> KeyLog {
    let mut keys = KeyLog::new();
    let text = pair.keys.0.lock().unwrap().clone();
    assert_eq!(keys.add_text(&text), 0, "{text}");
    keys
}

/// How to cut and interleave the two streams.
#[derive(Debug, Clone)]
struct Plan {
    sizes: Vec<usize>,
    /// Bit i picks which direction the i-th chunk comes from.
    order: u64,
}

fn plan() -> impl Strategy<Value = Plan> {
    (
        proptest::collection::vec(
            prop_oneof![1usize..16, 16usize..2000, 2000usize..50_000],
            1..12,
        ),
        any::<u64>(),
    )
        .prop_map(|(sizes, order)| Plan { sizes, order })
}

/// What one decode run produced, and the timestamps of the chunks that completed records.
struct Run {
    events: Vec<TlsEvent>,
    completing_ts: [Vec<u64>; 2],
}

/// Feeds both streams cut and interleaved by `plan`; chunk timestamps are unique and tell
/// the direction (even client, odd server). Returns events and, per direction, the
/// timestamps of the chunks in which some record ends.
fn decode(t: &Transcript, keys: &KeyLog, plan: &Plan) -> (TlsConnection, Run) {
    let mut conn = TlsConnection::new(Limits::default());
    let mut events = Vec::new();
    let streams = [&t.c2s, &t.s2c];
    let ends = [record_ends(&t.c2s), record_ends(&t.s2c)];
    let mut completing_ts: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
    let mut pos = [0usize; 2];
    let mut k = 0usize;
    while pos[0] < streams[0].len() || pos[1] < streams[1].len() {
        let mut d = usize::from(plan.order >> (k % 64) & 1 == 1);
        if pos[d] >= streams[d].len() {
            d = 1 - d;
        }
        let n = plan.sizes[k % plan.sizes.len()];
        let end = (pos[d] + n).min(streams[d].len());
        let ts = (k as u64) * 2 + d as u64;
        if ends[d].iter().any(|&e| e > pos[d] && e <= end) {
            completing_ts[d].push(ts);
        }
        let dir = if d == 0 { C2S } else { S2C };
        conn.feed(dir, ts, &streams[d][pos[d]..end], keys, &mut events);
        pos[d] = end;
        k += 1;
    }
    (
        conn,
        Run {
            events,
            completing_ts,
        },
    )
}

/// Offsets just past each record of a stream.
fn record_ends(stream: &[u8]) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut pos = 0;
    while pos + 5 <= stream.len() {
        pos += 5 + usize::from(u16::from_be_bytes([stream[pos + 3], stream[pos + 4]]));
        ends.push(pos);
    }
    ends
}

fn data_of(events: &[TlsEvent], want: Direction) -> Vec<u8> {
    events
        .iter()
        .filter_map(|e| match e {
            TlsEvent::ApplicationData { dir, data, .. } if *dir == want => Some(data.as_slice()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .concat()
}

fn early_of(events: &[TlsEvent]) -> Vec<u8> {
    events
        .iter()
        .filter_map(|e| match e {
            TlsEvent::EarlyData { data, .. } => Some(data.as_slice()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .concat()
}

fn error_list(events: &[TlsEvent]) -> Vec<&TlsError> {
    events
        .iter()
        .filter_map(|e| match e {
            TlsEvent::Error { error, .. } => Some(error),
            _ => None,
        })
        .collect()
}

/// Everything a correct decode of `t` must show.
fn check(t: &Transcript, run: &Run, version: TlsVersion, suite: u16) -> Result<(), TestCaseError> {
    let events = &run.events;
    prop_assert!(
        error_list(events).is_empty(),
        "errors: {:?}",
        error_list(events)
    );
    prop_assert!(
        data_of(events, C2S) == t.wrote_c2s,
        "client to server data differs"
    );
    prop_assert!(
        data_of(events, S2C) == t.wrote_s2c,
        "server to client data differs"
    );
    prop_assert!(early_of(events) == t.wrote_early, "early data differs");
    prop_assert!(
        events.iter().any(|e| matches!(e,
        TlsEvent::Negotiated { version: v, cipher_suite: s, .. } if *v == version && *s == suite)),
        "not negotiated as expected"
    );
    for dir in [C2S, S2C] {
        prop_assert!(
            events
                .iter()
                .any(|e| matches!(e, TlsEvent::HandshakeFinished { dir: d, .. } if *d == dir)),
            "no Finished from {:?}",
            dir
        );
        let updates = events
            .iter()
            .filter(|e| matches!(e, TlsEvent::KeyUpdate { dir: d, .. } if *d == dir))
            .count() as u32;
        // At least the ones the test asked for; rustls also answers a peer's
        // update_requested with a KeyUpdate of its own.
        let want = if dir == C2S {
            t.key_updates_c2s
        } else {
            t.key_updates_s2c
        };
        prop_assert!(
            updates >= want,
            "{} KeyUpdates from {:?}, expected {} or more",
            updates,
            dir,
            want
        );
        prop_assert!(
            events.iter().any(|e| matches!(e,
            TlsEvent::Alert { dir: d, level: 1, description: 0, .. } if *d == dir)),
            "close_notify from {:?}",
            dir
        );
    }
    // Each record's data carries the time of the chunk that completed it, in order.
    for (d, dir) in [(0, C2S), (1, S2C)] {
        let stamps: Vec<u64> = events
            .iter()
            .filter_map(|e| match e {
                TlsEvent::ApplicationData { dir: x, ts_ns, .. } if *x == dir => Some(*ts_ns),
                _ => None,
            })
            .collect();
        for ts in &stamps {
            prop_assert!(
                run.completing_ts[d].contains(ts),
                "{dir:?} data at ts {ts} which completed no record"
            );
        }
        prop_assert!(stamps.windows(2).all(|w| w[0] <= w[1]));
    }
    Ok(())
}

/// Decodes `t` under many chunkings, with the keys from the start and with the keys only
/// arriving after everything was fed.
fn check_all_chunkings(t: &Transcript, keys: &KeyLog, version: TlsVersion, suite: u16) {
    let mut runner = TestRunner::new(Config {
        cases: 12,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&plan(), |plan| {
            let (conn, run) = decode(t, keys, &plan);
            check(t, &run, version, suite)?;
            let summary = conn.summary();
            prop_assert!(summary.keys_found);
            prop_assert_eq!(summary.version, Some(version));
            prop_assert_eq!(summary.cipher_suite, Some(suite));
            prop_assert_eq!(summary.client.records_held + summary.server.records_held, 0);

            // Keys late: nothing decrypted before they come; then the same events as above
            // for the data, with the original chunk timestamps.
            let (mut late_conn, mut late) = decode(t, &KeyLog::new(), &plan);
            prop_assert!(
                data_of(&late.events, C2S).is_empty() && data_of(&late.events, S2C).is_empty()
            );
            prop_assert!(
                late.events
                    .iter()
                    .any(|e| matches!(e, TlsEvent::KeysPending { .. })),
                "no KeysPending without keys"
            );
            late_conn.retry(keys, &mut late.events);
            check(t, &late, version, suite)?;
            // Per direction: a retry decodes one direction's backlog, then the other's.
            for dir in [C2S, S2C] {
                let data = |events: &[TlsEvent]| -> Vec<TlsEvent> {
                    events
                        .iter()
                        .filter(|e| match e {
                            TlsEvent::ApplicationData { dir: d, .. } => *d == dir,
                            TlsEvent::EarlyData { .. } => dir == C2S,
                            _ => false,
                        })
                        .cloned()
                        .collect()
                };
                prop_assert!(
                    data(&late.events) == data(&run.events),
                    "{:?} data or stamps differ",
                    dir
                );
            }
            Ok(())
        })
        .unwrap();
}

fn round_trip(suite: SupportedCipherSuite, version: &'static SupportedProtocolVersion) {
    let tls13 = version.version == rustls::ProtocolVersion::TLSv1_3;
    let pair = configs(&setup(suite, version));
    let t = converse(&pair, tls13, None);
    let keys = key_log(&pair);
    let wire_version = if tls13 {
        TlsVersion::Tls13
    } else {
        TlsVersion::Tls12
    };
    check_all_chunkings(&t, &keys, wire_version, u16::from(suite.suite()));
}

#[test]
fn tls13_aes_128_gcm() {
    round_trip(
        ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
        &rustls::version::TLS13,
    );
}

#[test]
fn tls13_aes_256_gcm() {
    round_trip(
        ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
        &rustls::version::TLS13,
    );
}

#[test]
fn tls13_chacha20_poly1305() {
    round_trip(
        ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        &rustls::version::TLS13,
    );
}

#[test]
fn tls12_ecdhe_aes_128_gcm() {
    round_trip(
        ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        &rustls::version::TLS12,
    );
}

#[test]
fn tls12_ecdhe_aes_256_gcm() {
    round_trip(
        ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        &rustls::version::TLS12,
    );
}

#[test]
fn tls12_ecdhe_chacha20_poly1305() {
    round_trip(
        ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        &rustls::version::TLS12,
    );
}

#[test]
fn tls13_hello_retry_request() {
    // The client's first key share is X25519, which the server does not take: it asks for
    // P-256 with a HelloRetryRequest, and the client sends a second ClientHello.
    let mut s = setup(
        ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
        &rustls::version::TLS13,
    );
    s.groups = Some((
        vec![ring::kx_group::X25519, ring::kx_group::SECP256R1],
        vec![ring::kx_group::SECP256R1],
    ));
    let pair = configs(&s);
    let t = converse(&pair, true, None);
    let keys = key_log(&pair);
    let (conn, run) = decode(
        &t,
        &keys,
        &Plan {
            sizes: vec![333],
            order: 0x5555_5555_5555_5555,
        },
    );
    assert!(
        run.events
            .iter()
            .any(|e| matches!(e, TlsEvent::HelloRetryRequest { .. }))
    );
    assert!(conn.summary().hello_retry);
    check(&t, &run, TlsVersion::Tls13, 0x1301).unwrap();
    check_all_chunkings(&t, &keys, TlsVersion::Tls13, 0x1301);
}

#[test]
fn tls13_resumption_with_early_data() {
    let mut s = setup(
        ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
        &rustls::version::TLS13,
    );
    s.early_data = true;
    let pair = configs(&s);
    // The first connection leaves a ticket; the second resumes and sends 0-RTT data.
    let first = converse(&pair, true, None);
    let early = message(3000, 9);
    let second = converse(&pair, true, Some(&early));
    let keys = key_log(&pair);
    assert!(keys.to_text().contains("CLIENT_EARLY_TRAFFIC_SECRET"));
    check_all_chunkings(&first, &keys, TlsVersion::Tls13, 0x1302);
    check_all_chunkings(&second, &keys, TlsVersion::Tls13, 0x1302);
    let (_, run) = decode(
        &second,
        &keys,
        &Plan {
            sizes: vec![1000],
            order: 0,
        },
    );
    assert_eq!(early_of(&run.events), early);
}

#[test]
fn tls12_resumption() {
    // An abbreviated handshake: the server encrypts (CCS, Finished) before the client does.
    let pair = configs(&setup(
        ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        &rustls::version::TLS12,
    ));
    let first = converse(&pair, false, None);
    let second = converse(&pair, false, None);
    let keys = key_log(&pair);
    // A resumed session reuses the master secret, logged again under the new client_random.
    assert_eq!(keys.len(), 2);
    // Resumed indeed: no Certificate (nor key exchange) before the server's
    // ChangeCipherSpec, only the ServerHello.
    let plain_bytes = |stream: &[u8]| -> usize {
        let mut pos = 0;
        while stream[pos] != 20 {
            pos += 5 + usize::from(u16::from_be_bytes([stream[pos + 3], stream[pos + 4]]));
        }
        pos
    };
    assert!(
        plain_bytes(&second.s2c) < 200,
        "{}",
        plain_bytes(&second.s2c)
    );
    assert!(plain_bytes(&first.s2c) > plain_bytes(&second.s2c) + 200);
    check_all_chunkings(&first, &keys, TlsVersion::Tls12, 0xc02b);
    check_all_chunkings(&second, &keys, TlsVersion::Tls12, 0xc02b);
}

#[test]
fn tls12_wrong_master_secret_gives_decrypt_errors() {
    let pair = configs(&setup(
        ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        &rustls::version::TLS12,
    ));
    let t = converse(&pair, false, None);
    let text = pair.keys.0.lock().unwrap().clone();
    // Flip the last hex digit of the master secret.
    let trimmed = text.trim_end();
    let last = trimmed.chars().last().unwrap();
    let flipped = format!(
        "{}{}\n",
        &trimmed[..trimmed.len() - 1],
        if last == '0' { '1' } else { '0' }
    );
    let mut keys = KeyLog::new();
    assert_eq!(keys.add_text(&flipped), 0);
    let (conn, run) = decode(
        &t,
        &keys,
        &Plan {
            sizes: vec![777],
            order: 0xf0f0,
        },
    );
    let errors = error_list(&run.events);
    assert!(!errors.is_empty());
    assert!(
        errors.iter().all(|e| e.kind() == "tls_decrypt"),
        "{errors:?}"
    );
    assert!(data_of(&run.events, C2S).is_empty() && data_of(&run.events, S2C).is_empty());
    let summary = conn.summary();
    assert_eq!(
        summary.client.records_decrypted + summary.server.records_decrypted,
        0
    );
    assert_eq!(
        summary.client.records_failed + summary.server.records_failed,
        errors.len() as u64
    );
}

#[test]
fn tls13_a_gap_loses_only_the_records_it_cut() {
    let pair = configs(&setup(
        ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
        &rustls::version::TLS13,
    ));
    let t = converse(&pair, true, None);
    let keys = key_log(&pair);
    let mut conn = TlsConnection::default();
    let mut events = Vec::new();
    let half = t.s2c.len() / 2;
    conn.feed(C2S, 0, &t.c2s, &keys, &mut events);
    conn.feed(S2C, 1, &t.s2c[..half], &keys, &mut events);
    let before = data_of(&events, S2C);
    assert!(!before.is_empty() && before.len() < t.wrote_s2c.len());
    assert!(t.wrote_s2c.starts_with(&before));
    conn.gap(S2C, &mut events);
    let n = events.len();
    // The cut lands mid-record; the KeyUpdate half-way may be among what is lost.
    conn.feed(S2C, 2, &t.s2c[half + 1000..], &keys, &mut events);
    let after = data_of(&events[n..], S2C);
    assert!(!after.is_empty(), "{:?}", &events[n..]);
    assert!(t.wrote_s2c.ends_with(&after));
    assert!(before.len() + after.len() < t.wrote_s2c.len());
    assert!(
        events[n..]
            .iter()
            .any(|e| matches!(e, TlsEvent::Resynchronised { dir: S2C, .. }))
    );
    assert_eq!(error_list(&events), Vec::<&TlsError>::new());
    assert_eq!(data_of(&events, C2S), t.wrote_c2s);
    let summary = conn.summary();
    assert_eq!(summary.server.resynchronisations, 1);
    assert!(summary.server.bytes_skipped > 0);
}

/// Feeds both streams from `from` of their length on (mid-record), in chunks of `chunk`
/// bytes, to a connection joined mid-stream; closes it.
fn join_at(
    t: &Transcript,
    keys: &KeyLog,
    from: f64,
    chunk: usize,
) -> (TlsConnection, Vec<TlsEvent>) {
    let mut conn = TlsConnection::mid_stream(Limits::default());
    let mut events = Vec::new();
    let start = |s: &[u8]| (s.len() as f64 * from) as usize;
    let (c, s) = (&t.c2s[start(&t.c2s)..], &t.s2c[start(&t.s2c)..]);
    for i in 0..c.len().max(s.len()).div_ceil(chunk) {
        let ts = i as u64;
        let piece = |b: &[u8]| {
            b.get(i * chunk..((i + 1) * chunk).min(b.len()))
                .unwrap_or(&[])
                .to_vec()
        };
        conn.feed(C2S, ts, &piece(c), keys, &mut events);
        conn.feed(S2C, ts, &piece(s), keys, &mut events);
    }
    conn.close(&mut events);
    (conn, events)
}

#[test]
fn tls13_joined_mid_stream_decrypts_from_the_next_record_in_every_suite() {
    for suite in [
        ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
        ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
        ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ] {
        let pair = configs(&setup(suite, &rustls::version::TLS13));
        let t = converse(&pair, true, None);
        let keys = key_log(&pair);
        for (from, chunk) in [(0.35, 1000), (0.6, 7), (0.8, 1 << 20)] {
            let (conn, events) = join_at(&t, &keys, from, chunk);
            let context = format!("{suite:?} from {from} in chunks of {chunk}");
            assert_eq!(error_list(&events), Vec::<&TlsError>::new(), "{context}");
            for (dir, wrote) in [(C2S, &t.wrote_c2s), (S2C, &t.wrote_s2c)] {
                let got = data_of(&events, dir);
                assert!(!got.is_empty(), "{context}: {dir:?} decrypted nothing");
                assert!(
                    wrote.ends_with(&got),
                    "{context}: {dir:?} is not what was sent"
                );
                assert!(got.len() < wrote.len(), "{context}");
                assert!(
                    events
                        .iter()
                        .any(|e| matches!(e, TlsEvent::Joined { dir: d, .. } if *d == dir)),
                    "{context}"
                );
            }
            let summary = conn.summary();
            assert!(summary.mid_stream);
            assert_eq!(summary.version, Some(TlsVersion::Tls13));
            assert!(
                summary.client.joined_at_seq.is_some_and(|s| s > 0),
                "{context}"
            );
            assert!(
                summary.server.joined_at_seq.is_some_and(|s| s > 0),
                "{context}"
            );
        }
    }
}

#[test]
fn tls12_joined_mid_stream_is_reported_as_undecryptable() {
    let pair = configs(&setup(
        ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        &rustls::version::TLS12,
    ));
    let t = converse(&pair, false, None);
    let keys = key_log(&pair);
    let (_, events) = join_at(&t, &keys, 0.5, 1000);
    assert!(data_of(&events, S2C).is_empty() && data_of(&events, C2S).is_empty());
    let kinds: Vec<&str> = error_list(&events).iter().map(|e| e.kind()).collect();
    assert!(
        !kinds.is_empty() && kinds.iter().all(|k| *k == "tls_no_key"),
        "{kinds:?}"
    );
}

#[test]
fn a_joined_stream_without_its_secret_waits_then_decrypts_when_it_arrives() {
    let pair = configs(&setup(
        ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
        &rustls::version::TLS13,
    ));
    let t = converse(&pair, true, None);
    let keys = key_log(&pair);
    let mut conn = TlsConnection::mid_stream(Limits::default());
    let mut events = Vec::new();
    let empty = KeyLog::new();
    let from = t.s2c.len() / 2;
    conn.feed(S2C, 1, &t.s2c[from..], &empty, &mut events);
    assert!(data_of(&events, S2C).is_empty());
    assert!(
        events
            .iter()
            .any(|e| matches!(e, TlsEvent::KeysPending { dir: S2C, .. }))
    );
    conn.retry(&keys, &mut events);
    let got = data_of(&events, S2C);
    assert!(!got.is_empty() && t.wrote_s2c.ends_with(&got));
    // Held records keep the time they were captured.
    assert!(
        events
            .iter()
            .all(|e| !matches!(e, TlsEvent::ApplicationData { ts_ns, .. } if *ts_ns != 1))
    );
}
