//! WebSocket decoding checked against byte streams written by an independent
//! implementation (tungstenite): a real client and server over a socket pair, and
//! frames from tungstenite's encoder, fed in random chunkings.

// Test helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, OnceLock};

use proptest::prelude::*;
use ticklab_capture::websocket::{ControlOpcode, Role, WsDecoder, WsError, WsEvent, WsLimits};
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::frame::{Frame, FrameHeader};
use tungstenite::{Bytes, Message};

/// A stream that records what is written to it: the bytes of one direction.
struct Tap {
    inner: UnixStream,
    log: Arc<Mutex<Vec<u8>>>,
}

impl Read for Tap {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf)
    }
}

impl Write for Tap {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.log.lock().unwrap().extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// What a decoded event says, without its times.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Message(bool, Vec<u8>),
    Control(ControlOpcode, Vec<u8>),
    Close(Option<u16>, String),
    Error(&'static str),
}

fn seen(e: &WsEvent) -> Seen {
    match e {
        WsEvent::Message {
            binary, payload, ..
        } => Seen::Message(*binary, payload.clone()),
        WsEvent::Control {
            opcode, payload, ..
        } => Seen::Control(*opcode, payload.clone()),
        WsEvent::Close { code, reason, .. } => Seen::Close(*code, reason.clone()),
        WsEvent::Error(e) => Seen::Error(e.kind()),
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// The two directions of a real session: (client's bytes, server's bytes).
struct Session {
    client: Vec<u8>,
    server: Vec<u8>,
}

/// A tungstenite client and server talk over a socket pair: the client sends small,
/// 16-bit and 64-bit length messages, text, a ping, a message fragmented around a
/// ping, and closes; the server sends its own messages, answers the pings and the
/// close. Each side's writes are recorded.
fn real_session() -> &'static Session {
    static SESSION: OnceLock<Session> = OnceLock::new();
    SESSION.get_or_init(|| {
        let (a, b) = UnixStream::pair().unwrap();
        let client_log = Arc::new(Mutex::new(Vec::new()));
        let server_log = Arc::new(Mutex::new(Vec::new()));
        let server_tap = Tap {
            inner: b,
            log: server_log.clone(),
        };
        let server = std::thread::spawn(move || {
            let mut ws = tungstenite::accept(server_tap).unwrap();
            ws.send(Message::binary(pattern(10, 1))).unwrap();
            ws.send(Message::binary(pattern(70_000, 2))).unwrap();
            ws.send(Message::text("feed")).unwrap();
            // Read until the client's close, which tungstenite answers.
            loop {
                match ws.read() {
                    Ok(Message::Close(_)) => {}
                    Ok(_) => continue,
                    Err(_) => break,
                }
            }
        });
        let client_tap = Tap {
            inner: a,
            log: client_log.clone(),
        };
        let (mut ws, _) = tungstenite::client("ws://localhost/feed", client_tap).unwrap();
        ws.send(Message::binary(pattern(5, 3))).unwrap();
        ws.send(Message::binary(pattern(300, 4))).unwrap();
        ws.send(Message::binary(pattern(70_000, 5))).unwrap();
        ws.send(Message::text("hello")).unwrap();
        ws.send(Message::Ping(Bytes::from_static(b"p1"))).unwrap();
        let first = Frame::message(pattern(7, 6), OpCode::Data(Data::Binary), false);
        ws.send(Message::Frame(first)).unwrap();
        ws.send(Message::Ping(Bytes::from_static(b"p2"))).unwrap();
        let last = Frame::message(pattern(9, 7), OpCode::Data(Data::Continue), true);
        ws.send(Message::Frame(last)).unwrap();
        ws.close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        }))
        .unwrap();
        // Read until the server's answer to the close.
        while ws.read().is_ok() {}
        server.join().unwrap();
        let client = client_log.lock().unwrap().clone();
        let server = server_log.lock().unwrap().clone();
        Session { client, server }
    })
}

fn client_expected() -> Vec<Seen> {
    let mut fragmented = pattern(7, 6);
    fragmented.extend(pattern(9, 7));
    vec![
        Seen::Message(true, pattern(5, 3)),
        Seen::Message(true, pattern(300, 4)),
        Seen::Message(true, pattern(70_000, 5)),
        Seen::Message(false, b"hello".to_vec()),
        Seen::Control(ControlOpcode::Ping, b"p1".to_vec()),
        Seen::Control(ControlOpcode::Ping, b"p2".to_vec()),
        Seen::Message(true, fragmented),
        Seen::Close(Some(1000), "bye".into()),
    ]
}

fn server_expected() -> Vec<Seen> {
    vec![
        Seen::Message(true, pattern(10, 1)),
        Seen::Message(true, pattern(70_000, 2)),
        Seen::Message(false, b"feed".to_vec()),
        Seen::Control(ControlOpcode::Pong, b"p1".to_vec()),
        Seen::Control(ControlOpcode::Pong, b"p2".to_vec()),
        Seen::Close(Some(1000), "bye".into()),
    ]
}

/// Feeds `bytes` cut at `cuts`, chunk i at time i.
fn decode_chunked(decoder: &mut WsDecoder, bytes: &[u8], cuts: &[usize]) -> Vec<WsEvent> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.push(0);
    points.push(bytes.len());
    points.sort_unstable();
    points.dedup();
    let mut out = Vec::new();
    for (i, w) in points.windows(2).enumerate() {
        decoder.feed(i as u64, &bytes[w[0]..w[1]], &mut out);
    }
    out
}

/// Fed one byte at a time with the offset as the time, each event says at which byte
/// it ended (and a message at which byte it began).
fn byte_offsets(role: Role, bytes: &[u8]) -> Vec<(u64, Option<u64>)> {
    let mut d = WsDecoder::new(role, WsLimits::default());
    let mut out = Vec::new();
    for (i, b) in bytes.iter().enumerate() {
        d.feed(i as u64, std::slice::from_ref(b), &mut out);
    }
    out.iter().map(times).collect()
}

fn times(e: &WsEvent) -> (u64, Option<u64>) {
    match e {
        WsEvent::Message {
            ts_ns,
            first_byte_ts_ns,
            ..
        } => (*ts_ns, Some(*first_byte_ts_ns)),
        WsEvent::Control { ts_ns, .. } | WsEvent::Close { ts_ns, .. } => (*ts_ns, None),
        WsEvent::Error(_) => (0, None),
    }
}

#[test]
fn real_session_decodes_in_one_chunk() {
    let s = real_session();
    assert!(s.client.starts_with(b"GET /feed HTTP/1.1\r\n"));
    assert!(s.server.starts_with(b"HTTP/1.1 101"));
    for (role, bytes, want) in [
        (Role::Client, &s.client, client_expected()),
        (Role::Server, &s.server, server_expected()),
    ] {
        let mut d = WsDecoder::new(role, WsLimits::default());
        let mut out = Vec::new();
        d.feed(0, bytes, &mut out);
        assert_eq!(out.iter().map(seen).collect::<Vec<_>>(), want, "{role:?}");
        assert!(!d.is_active(), "closed");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any chunking of the real session decodes to the same events, each stamped with
    /// the chunk that held its last byte (and a message, its first byte).
    #[test]
    fn real_session_in_random_chunks(
        cuts in prop::collection::vec(any::<usize>(), 0..60),
        client_side in any::<bool>(),
    ) {
        let s = real_session();
        let (role, bytes, want) = if client_side {
            (Role::Client, &s.client, client_expected())
        } else {
            (Role::Server, &s.server, server_expected())
        };
        let mut d = WsDecoder::new(role, WsLimits::default());
        let out = decode_chunked(&mut d, bytes, &cuts);
        prop_assert_eq!(out.iter().map(seen).collect::<Vec<_>>(), want);

        let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        points.push(0);
        points.sort_unstable();
        points.dedup();
        // The chunk holding byte offset o: the last cut at or before it.
        let chunk_of = |o: u64| (points.partition_point(|&p| p as u64 <= o) - 1) as u64;
        for (e, (last, first)) in out.iter().zip(byte_offsets(role, bytes)) {
            let (ts, first_ts) = times(e);
            prop_assert_eq!(ts, chunk_of(last));
            prop_assert_eq!(first_ts, first.map(chunk_of));
        }
    }
}

/// A frame from tungstenite's encoder, masked with `mask` when given.
fn encode(
    opcode: OpCode,
    fin: bool,
    rsv1: bool,
    mask: Option<[u8; 4]>,
    payload: Vec<u8>,
) -> Vec<u8> {
    let header = FrameHeader {
        is_final: fin,
        rsv1,
        opcode,
        mask,
        ..FrameHeader::default()
    };
    let mut out = Vec::new();
    Frame::from_payload(header, payload.into())
        .format(&mut out)
        .unwrap();
    out
}

/// One message of a generated stream: payload, fragment sizes, pings between
/// fragments, and whether it is text.
type Msg = (Vec<u8>, Vec<usize>, Vec<bool>, bool);

fn message() -> impl Strategy<Value = Msg> {
    (
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..126),
            prop::collection::vec(any::<u8>(), 126..2000),
            prop::collection::vec(any::<u8>(), 65_536..66_000),
        ],
        prop::collection::vec(any::<usize>(), 0..4),
        prop::collection::vec(any::<bool>(), 0..4),
        any::<bool>(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Streams of tungstenite-encoded frames: messages of every length size, fragmented
    /// at random with pings between fragments, masked with random keys for a client
    /// and unmasked for a server, behind the handshake, in random chunks: the decoder
    /// reassembles exactly the messages sent.
    #[test]
    fn encoded_frames_reassemble(
        messages in prop::collection::vec(message(), 1..6),
        masks in prop::collection::vec(any::<[u8; 4]>(), 1..8),
        client in any::<bool>(),
        cuts in prop::collection::vec(any::<usize>(), 0..40),
    ) {
        let s = real_session();
        let (role, handshake_end) = if client {
            (Role::Client, s.client.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4)
        } else {
            (Role::Server, s.server.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4)
        };
        let mut stream = if client { s.client[..handshake_end].to_vec() } else { s.server[..handshake_end].to_vec() };
        let mut want = Vec::new();
        let mut k = 0;
        let mut mask = || {
            k += 1;
            client.then(|| masks[k % masks.len()])
        };
        for (payload, frag, pings, text) in &messages {
            // Text must be UTF-8: map the bytes to ASCII for text messages.
            let payload: Vec<u8> = if *text { payload.iter().map(|b| b'a' + b % 26).collect() } else { payload.clone() };
            let mut cuts: Vec<usize> = frag.iter().map(|c| c % (payload.len() + 1)).collect();
            cuts.push(0);
            cuts.push(payload.len());
            cuts.sort_unstable();
            cuts.dedup();
            if cuts.len() == 1 {
                cuts.push(0); // an empty message is one empty frame
            }
            let frames = cuts.len() - 1;
            for (i, w) in cuts.windows(2).enumerate() {
                let opcode = match (i, text) {
                    (0, true) => OpCode::Data(Data::Text),
                    (0, false) => OpCode::Data(Data::Binary),
                    _ => OpCode::Data(Data::Continue),
                };
                stream.extend(encode(opcode, i + 1 == frames, false, mask(), payload[w[0]..w[1]].to_vec()));
                if pings.get(i).copied().unwrap_or(false) && i + 1 < frames {
                    stream.extend(encode(OpCode::Control(tungstenite::protocol::frame::coding::Control::Ping), true, false, mask(), vec![i as u8]));
                    want.push(Seen::Control(ControlOpcode::Ping, vec![i as u8]));
                }
            }
            want.push(Seen::Message(!text, payload));
        }
        let mut d = WsDecoder::new(role, WsLimits::default());
        let out = decode_chunked(&mut d, &stream, &cuts);
        prop_assert_eq!(out.iter().map(seen).collect::<Vec<_>>(), want);
    }
}

#[test]
fn compressed_message_from_encoder_is_skipped() {
    let mut s = encode(OpCode::Data(Data::Binary), false, true, None, vec![1, 2]);
    s.extend(encode(
        OpCode::Data(Data::Continue),
        true,
        false,
        None,
        vec![3],
    ));
    s.extend(encode(
        OpCode::Data(Data::Binary),
        true,
        false,
        None,
        vec![4],
    ));
    let mut d = WsDecoder::without_handshake(Role::Server, WsLimits::default());
    let mut out = Vec::new();
    d.feed(0, &s, &mut out);
    assert_eq!(
        out.iter().map(seen).collect::<Vec<_>>(),
        vec![
            Seen::Error("websocket_compressed"),
            Seen::Message(true, vec![4])
        ]
    );
}

#[test]
fn reserved_opcode_and_oversize_keep_framing() {
    let key = Some([1, 2, 3, 4]);
    let mut s = encode(
        OpCode::Data(Data::Reserved(3)),
        true,
        false,
        key,
        vec![0; 10],
    );
    s.extend(encode(
        OpCode::Data(Data::Binary),
        true,
        false,
        key,
        vec![9; 100],
    ));
    s.extend(encode(
        OpCode::Data(Data::Binary),
        true,
        false,
        key,
        vec![8; 5],
    ));
    let mut d = WsDecoder::without_handshake(
        Role::Client,
        WsLimits {
            max_message: 50,
            ..WsLimits::default()
        },
    );
    let mut out = Vec::new();
    d.feed(0, &s, &mut out);
    assert_eq!(
        out.iter().map(seen).collect::<Vec<_>>(),
        vec![
            Seen::Error("websocket_frame"),
            Seen::Error("websocket_oversize"),
            Seen::Message(true, vec![8; 5])
        ]
    );
}

/// A tungstenite server refusing the upgrade answers 403: no 101, decoding stops.
#[test]
// The large error type is tungstenite's callback signature.
#[allow(clippy::result_large_err)]
fn refused_upgrade_is_a_handshake_error() {
    let (a, b) = UnixStream::pair().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let tap = Tap {
        inner: b,
        log: log.clone(),
    };
    let server = std::thread::spawn(move || {
        let refuse = |_: &tungstenite::handshake::server::Request,
                      _: tungstenite::handshake::server::Response| {
            Err(tungstenite::http::Response::builder()
                .status(403)
                .body(Some("no".to_string()))
                .unwrap())
        };
        assert!(tungstenite::accept_hdr(tap, refuse).is_err());
    });
    assert!(tungstenite::client("ws://localhost/feed", a).is_err());
    server.join().unwrap();
    let bytes = log.lock().unwrap().clone();
    let mut d = WsDecoder::new(Role::Server, WsLimits::default());
    let mut out = Vec::new();
    d.feed(0, &bytes, &mut out);
    d.feed(
        1,
        &encode(OpCode::Data(Data::Binary), true, false, None, vec![1]),
        &mut out,
    );
    assert_eq!(out.len(), 1);
    assert!(matches!(&out[0], WsEvent::Error(WsError::Handshake(r)) if r.contains("403")));
    assert!(!d.is_active());
}

/// A gap in the real session: everything before it decodes, then one gap error.
#[test]
fn gap_in_real_session_stops_once() {
    let s = real_session();
    let mut d = WsDecoder::new(Role::Server, WsLimits::default());
    let mut out = Vec::new();
    let half = s.server.len() / 2;
    d.feed(0, &s.server[..half], &mut out);
    let before = out.len();
    d.gap(&mut out);
    d.feed(1, &s.server[half + 10..], &mut out);
    d.gap(&mut out);
    assert_eq!(out.len(), before + 1);
    assert_eq!(seen(&out[before]), Seen::Error("websocket_gap"));
}
