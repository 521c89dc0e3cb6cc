//! The capture pipeline over frames: link and transport headers, then per
//! connection TCP reassembly, TLS decryption when the connection is TLS, and the
//! application protocol found in the first bytes (WebSocket, HTTP or ticklab's
//! length-prefixed binary channel), down to feed and order messages for
//! [`WireLatency`]. A connection that was open before the capture saw it (a mirror
//! that joined later) or that lost bytes is picked up again at the next message
//! boundary (see [`crate::resync`]), TLS 1.3 included. UDP datagrams are feed packets, retransmission replies or
//! requests. Nothing here fails: every frame ends up decoded, counted as another
//! protocol, or counted as an error by kind.

use std::collections::HashMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use ticklab_crd::LatencySummary;
use ticklab_tls_decrypt::{KeyLog, TlsConnection, TlsEvent};
use ticklab_wire::frame::split_frame;
use ticklab_wire::{Ack, Fill, Message, Order, PacketKind, RetransmitRequest};

use crate::http::{HttpDecoder, HttpEvent, HttpRole};
use crate::link::{self, LinkType, Packet, TcpFlags, Transport};
use crate::messages::{self, is_order_channel_size};
use crate::resync::{self, Protocol, Sync};
use crate::tcp::{Reassembler, StreamEvent};
use crate::vxlan;
use crate::websocket::{Role, WsDecoder, WsEvent};
use crate::wire::{ErrorCounts, Observation, Timing, WireLatency};
use ticklab_crd::mirror_session::DifferenceSummary;

/// What the analyzer needs to know about the mirrored experiment.
#[derive(Clone, Debug)]
pub struct AnalyzerConfig {
    /// Source ports of retransmission replies (the exchange's retransmission
    /// server): trades in them are recovered, not live.
    pub retransmit_ports: Vec<u16>,
    /// Ports servers listen on, to tell client from server on a connection whose
    /// SYN was not captured; otherwise the lower port is taken as the server's.
    pub server_ports: Vec<u16>,
    /// Only frames of this VXLAN network are decoded (None: any).
    pub vni: Option<u32>,
    /// Connections tracked at once; past it the least recently active is closed.
    pub max_connections: usize,
    /// Keep a per-message record ([`Analyzer::take_observations`]).
    pub observe: bool,
}

impl Default for AnalyzerConfig {
    fn default() -> Self {
        // The exchange's ports in a cluster (operator/src/children.rs `ports`).
        Self {
            retransmit_ports: vec![9001],
            server_ports: vec![9000, 9002, 9003],
            vni: None,
            max_connections: 4096,
            observe: false,
        }
    }
}

/// Everything the capture measured, for reports, status and `/report`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireReport {
    /// Frames received (VXLAN packets or file records).
    pub frames: u64,
    /// Frames stamped at the mirrored interface (by ticklab's mirror, or in a file
    /// of plain frames by the tool that captured them).
    pub frames_timed_at_interface: u64,
    /// Frames stamped on arrival (plain VXLAN, capture files).
    pub frames_timed_on_arrival: u64,
    /// Frames that carried ticklab traffic (feed, orders, their handshakes).
    pub packets_decoded: u64,
    /// Frames the mirror cut short (decoded as far as they went).
    pub truncated: u64,
    /// Frames of other traffic (ARP, DNS, MongoDB, probes): not errors.
    pub other: u64,
    /// Errors by kind; an error never stops decoding.
    pub decode_errors: ErrorCounts,
    pub messages: crate::wire::MessageCounts,
    /// Retransmission requests the trader sent.
    pub retransmit_requests: u64,
    /// TCP connections seen.
    pub connections: u64,
    /// Of those, connections already open when the capture saw them (no SYN): decoded
    /// from the first message boundary found.
    #[serde(default)]
    pub connections_joined: u64,
    /// Times a byte stream's next message boundary was searched for and found (joining a
    /// connection, or after lost bytes), and the bytes skipped to find it.
    #[serde(default)]
    pub resynchronisations: u64,
    #[serde(default)]
    pub bytes_skipped: u64,
    /// TLS: connections, records decrypted, and what could not be.
    pub tls: TlsCounts,
    /// "interface", "arrival" or "mixed": where the latency figures' times come from.
    pub timing: String,
    pub feed_latency: Option<LatencySummary>,
    pub tick_to_trade: Option<LatencySummary>,
    pub order_round_trip: Option<LatencySummary>,
    /// Order seen on the wire minus the trader's own send stamp.
    pub order_wire_minus_app: Option<DifferenceSummary>,
    /// Trader's receive stamp minus the trade seen on the wire.
    pub trade_app_minus_wire: Option<DifferenceSummary>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsCounts {
    pub connections: u64,
    /// Directions of TLS 1.3 connections joined mid-stream whose key log secret and
    /// record number were found by trial decryption.
    #[serde(default)]
    pub joined: u64,
    pub records_decrypted: u64,
    pub key_log_lines: u64,
}

impl WireReport {
    pub fn errors(&self) -> u64 {
        self.decode_errors.values().sum()
    }
}

/// JSON reply of the exchange's HTTP order API.
#[derive(Deserialize)]
struct HttpOrderReply {
    ack: Ack,
    #[serde(default)]
    fill: Option<Fill>,
}

pub struct Analyzer {
    config: AnalyzerConfig,
    keys: KeyLog,
    /// A connection is looked up several times per frame: foldhash, seeded per process
    /// (SipHash was a tenth of the decode time).
    connections: HashMap<ConnectionKey, Connection, foldhash::fast::RandomState>,
    latency: WireLatency,
    report: WireReport,
    /// Reused per frame.
    events: Vec<StreamEvent>,
}

/// A connection by its two endpoints, lower first, so both directions share it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct ConnectionKey(SocketAddr, SocketAddr);

impl ConnectionKey {
    fn of(a: SocketAddr, b: SocketAddr) -> Self {
        if a <= b { Self(a, b) } else { Self(b, a) }
    }
}

struct Connection {
    /// Client endpoint, once known.
    client: Option<SocketAddr>,
    /// Open before the capture saw it: no handshake, decoding starts at a boundary.
    mid_stream: bool,
    halves: [Half; 2],
    tls: Option<TlsConnection>,
    /// Not ticklab traffic: no more decoding, its frames counted as other.
    other: bool,
    last_seen_ns: u64,
}

/// One direction of a connection: its reassembly, and the decoder of what it carries.
struct Half {
    stream: Reassembler,
    app: App,
}

enum App {
    /// Bytes until the protocol shows (first few bytes, or a whole HTTP header).
    Detect(Vec<u8>),
    /// Looking for the next message boundary: the connection was joined mid-stream, or
    /// bytes were lost. On a joined connection not known to be TLS yet these are the raw
    /// bytes, which may also turn out to be TLS records.
    Resync(Box<Pending>),
    /// ticklab's length-prefixed channel: bytes short of a whole frame, and
    /// whether a frame decoded yet (until one has, a bad frame means the stream is
    /// some other protocol, not an error).
    Binary(Vec<u8>, bool),
    WebSocket(Box<WsDecoder>),
    Http(Box<HttpDecoder>),
}

/// Bytes held while resynchronising, with the capture time of each chunk, so a message
/// found in them keeps the time its last byte was captured.
#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    /// (end offset in `bytes`, capture time) per chunk, in order.
    chunks: Vec<(usize, u64)>,
    /// Bytes let go so far without finding a boundary.
    skipped: u64,
}

impl Pending {
    fn push(&mut self, ts_ns: u64, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
        self.chunks.push((self.bytes.len(), ts_ns));
    }

    fn drop_front(&mut self, n: usize) {
        let n = n.min(self.bytes.len());
        self.bytes.drain(..n);
        self.skipped += n as u64;
        self.chunks.retain_mut(|(end, _)| {
            *end = end.saturating_sub(n);
            *end > 0
        });
    }

    /// The held bytes from `from` on, cut back into their chunks.
    fn pieces(&self, from: usize) -> Vec<(u64, &[u8])> {
        let mut start = 0;
        let mut out = Vec::new();
        for &(end, ts) in &self.chunks {
            let begin = start.max(from);
            if end > begin {
                out.push((ts, &self.bytes[begin..end]));
            }
            start = end;
        }
        out
    }
}

const CLIENT: usize = 0;
const SERVER: usize = 1;
/// Bytes an HTTP header may take before the protocol is decided anyway.
const DETECT_LIMIT: usize = 16 * 1024;
/// Binary bytes waiting for the rest of a frame (frames are at most 64 KiB).
const BINARY_LIMIT: usize = 70 * 1024;
/// Bytes held while resynchronising; past this the oldest are let go.
const RESYNC_HOLD: usize = 128 * 1024;
/// Bytes of a joined connection searched without a boundary before it is taken for
/// some other protocol (MongoDB, say).
const RESYNC_GIVE_UP: u64 = 1 << 20;

impl Analyzer {
    pub fn new(config: AnalyzerConfig) -> Self {
        let mut latency = WireLatency::default();
        if config.observe {
            latency.observe();
        }
        Self {
            config,
            keys: KeyLog::new(),
            connections: HashMap::default(),
            latency,
            report: WireReport::default(),
            events: Vec::new(),
        }
    }

    /// Adds key log text (NSS format) and decrypts what waited for it. Returns the
    /// number of malformed lines (counted as errors too).
    pub fn add_key_log(&mut self, text: &str) -> usize {
        let before = self.keys.len();
        let malformed = self.keys.add_text(text);
        self.report.tls.key_log_lines += (self.keys.len() - before) as u64;
        if malformed > 0 {
            *self
                .report
                .decode_errors
                .entry("keylog_line".into())
                .or_default() += malformed as u64;
        }
        let mut out = Vec::new();
        let keys = &self.keys;
        let mut pending = Vec::new();
        for (key, conn) in self.connections.iter_mut() {
            if let Some(tls) = &mut conn.tls {
                tls.retry(keys, &mut out);
                if !out.is_empty() {
                    pending.push((*key, std::mem::take(&mut out)));
                }
            }
        }
        for (key, events) in pending {
            self.tls_events(key, events);
        }
        malformed
    }

    pub fn key_log(&self) -> &KeyLog {
        &self.keys
    }

    /// A UDP payload received on the VXLAN port at `arrival_ns`.
    pub fn vxlan(&mut self, arrival_ns: u64, payload: &[u8]) {
        match vxlan::decode(payload) {
            Ok(e) => {
                if self.config.vni.is_some_and(|v| v != e.vni) {
                    self.report.frames += 1;
                    self.report.other += 1;
                    return;
                }
                match e.trailer {
                    Some(t) => self.frame(
                        t.captured_at_ns,
                        Timing::Interface,
                        LinkType::Ethernet,
                        e.frame,
                    ),
                    None => self.frame(arrival_ns, Timing::Arrival, LinkType::Ethernet, e.frame),
                }
            }
            Err(error) => {
                self.error(error.kind());
                // A broken trailer: the frame may still decode, timed on arrival.
                if let (vxlan::VxlanError::Trailer, Some((vni, frame))) =
                    (&error, vxlan::frame_without_trailer(payload))
                    && self.config.vni.is_none_or(|v| v == vni)
                {
                    self.frame(arrival_ns, Timing::Arrival, LinkType::Ethernet, frame);
                } else {
                    self.report.frames += 1;
                }
            }
        }
    }

    /// One captured frame.
    pub fn frame(&mut self, ts_ns: u64, timing: Timing, link: LinkType, data: &[u8]) {
        self.report.frames += 1;
        match timing {
            Timing::Interface => self.report.frames_timed_at_interface += 1,
            Timing::Arrival => self.report.frames_timed_on_arrival += 1,
        }
        let packet = match link::decode(link, data) {
            Ok(p) => p,
            Err(e) if e.is_error() => return self.error(e.kind()),
            Err(_) => {
                self.report.other += 1;
                return;
            }
        };
        if packet.truncated() {
            self.report.truncated += 1;
        }
        let decoded = match packet.transport {
            Transport::Udp { .. } => self.udp(ts_ns, &packet),
            Transport::Tcp { .. } => self.tcp(ts_ns, &packet),
        };
        if decoded {
            self.report.packets_decoded += 1;
        } else {
            self.report.other += 1;
        }
    }

    /// A frame of a link type ticklab cannot read (capture files only).
    pub fn unsupported_link(&mut self) {
        self.report.frames += 1;
        self.error("unsupported_link");
    }

    /// End of the capture: give up on holes and decode what waited behind them.
    pub fn flush(&mut self) {
        let keys: Vec<ConnectionKey> = self.connections.keys().copied().collect();
        for key in keys {
            self.close(key);
        }
        self.latency.give_up_waiting();
    }

    /// Forgets connections idle for `idle_ns` of capture time (flushing them first).
    pub fn expire(&mut self, now_ns: u64, idle_ns: u64) {
        let idle: Vec<ConnectionKey> = self
            .connections
            .iter()
            .filter(|(_, c)| now_ns.saturating_sub(c.last_seen_ns) > idle_ns)
            .map(|(k, _)| *k)
            .collect();
        for key in idle {
            self.close(key);
        }
    }

    /// The trader's own receive stamp for a trade the wire saw (when the caller can
    /// get it from the trader), for the wire-against-app comparison.
    pub fn app_received(&mut self, app_ns: u64, wire_ns: u64) {
        self.latency
            .trade_app_minus_wire
            .record(app_ns as i64 - wire_ns as i64);
    }

    pub fn latency(&self) -> &WireLatency {
        &self.latency
    }

    pub fn take_observations(&mut self) -> Vec<Observation> {
        self.latency.take_observations()
    }

    pub fn report(&self) -> WireReport {
        let mut r = self.report.clone();
        r.messages = self.latency.counts.clone();
        r.timing = match (r.frames_timed_at_interface, r.frames_timed_on_arrival) {
            (_, 0) => "interface",
            (0, _) => "arrival",
            _ => "mixed",
        }
        .to_string();
        r.feed_latency = self.latency.feed.summary();
        r.tick_to_trade = self.latency.tick_to_trade.summary();
        r.order_round_trip = self.latency.order_round_trip.summary();
        r.order_wire_minus_app = self.latency.order_wire_minus_app.summary();
        r.trade_app_minus_wire = self.latency.trade_app_minus_wire.summary();
        r
    }

    fn error(&mut self, kind: &str) {
        match self.report.decode_errors.get_mut(kind) {
            Some(n) => *n += 1,
            None => {
                self.report.decode_errors.insert(kind.to_string(), 1);
            }
        }
    }

    /// Returns whether the datagram was ticklab's.
    fn udp(&mut self, ts_ns: u64, packet: &Packet<'_>) -> bool {
        let Transport::Udp {
            src_port,
            payload,
            original_len,
            ..
        } = packet.transport
        else {
            return false;
        };
        // A retransmission request: fixed size, from the trader.
        if payload.len() == RetransmitRequest::LEN
            && let Ok(_request) = RetransmitRequest::decode(payload)
            && !self.config.retransmit_ports.contains(&src_port)
        {
            self.report.retransmit_requests += 1;
            return true;
        }
        let recovered = self.config.retransmit_ports.contains(&src_port);
        match messages::feed_packet(payload, original_len) {
            Ok(view) => {
                if view.cut_off > 0 {
                    self.error("feed_cut_off");
                }
                for _ in 0..view.malformed {
                    self.error("feed_message");
                }
                if view.kind == PacketKind::Data || !view.messages.is_empty() {
                    for (seq, message) in &view.messages {
                        match message {
                            Message::Trade(t) => {
                                self.latency
                                    .trade(ts_ns, view.header.session, *seq, t, recovered)
                            }
                            _ => self.error("feed_message"),
                        }
                    }
                }
                true
            }
            // Not every datagram to or from a pod is ours (DNS, for one).
            Err(_) => false,
        }
    }

    fn tcp(&mut self, ts_ns: u64, packet: &Packet<'_>) -> bool {
        let Transport::Tcp {
            src_port,
            dst_port,
            seq,
            flags,
            payload,
            original_len,
        } = packet.transport
        else {
            return false;
        };
        let src = SocketAddr::new(packet.src, src_port);
        let dst = SocketAddr::new(packet.dst, dst_port);
        let key = ConnectionKey::of(src, dst);
        if !self.connections.contains_key(&key) {
            if payload.is_empty() && !flags.syn {
                // A bare ACK or FIN of a connection we never saw carry data.
                return false;
            }
            self.evict_if_full();
            self.report.connections += 1;
            let mid_stream = !flags.syn;
            if mid_stream {
                self.report.connections_joined += 1;
            }
            self.connections.insert(key, Connection::new(mid_stream));
        }
        let server_ports = &self.config.server_ports;
        let Some(conn) = self.connections.get_mut(&key) else {
            return false;
        };
        conn.last_seen_ns = ts_ns;
        if conn.client.is_none() {
            conn.client = client_of(src, dst, flags, server_ports);
        }
        if conn.other {
            return false;
        }
        let side = if conn.client == Some(src) {
            CLIENT
        } else {
            SERVER
        };
        let mut events = std::mem::take(&mut self.events);
        events.clear();
        conn.halves[side].stream.segment(
            ts_ns,
            seq,
            into_tcp_flags(flags),
            payload,
            original_len,
            &mut events,
        );
        for event in events.drain(..) {
            self.stream_event(key, side, event);
        }
        self.events = events;
        self.connections.get(&key).is_some_and(|c| !c.other)
    }

    fn evict_if_full(&mut self) {
        if self.connections.len() < self.config.max_connections {
            return;
        }
        if let Some(oldest) = self
            .connections
            .iter()
            .min_by_key(|(_, c)| c.last_seen_ns)
            .map(|(k, _)| *k)
        {
            self.error("connections_evicted");
            self.close(oldest);
        }
    }

    fn close(&mut self, key: ConnectionKey) {
        let Some(conn) = self.connections.get_mut(&key) else {
            return;
        };
        let mut events = Vec::new();
        let mut flushed = Vec::new();
        for side in [CLIENT, SERVER] {
            conn.halves[side].stream.flush(&mut events);
            flushed.extend(events.drain(..).map(|e| (side, e)));
        }
        for (side, event) in flushed {
            self.stream_event(key, side, event);
        }
        // Records still held for keys that never came are reported now.
        let mut held = Vec::new();
        if let Some(tls) = self.connections.get_mut(&key).and_then(|c| c.tls.as_mut()) {
            tls.close(&mut held);
        }
        self.tls_events(key, held);
        if let Some(conn) = self.connections.remove(&key) {
            for half in conn.halves {
                let stats = half.stream.stats();
                if stats.gaps > 0 {
                    *self
                        .report
                        .decode_errors
                        .entry("tcp_gap".into())
                        .or_default() += stats.gaps;
                }
            }
        }
    }

    /// In-order bytes (or a gap) of one side of a connection.
    fn stream_event(&mut self, key: ConnectionKey, side: usize, event: StreamEvent) {
        let Some(conn) = self.connections.get_mut(&key) else {
            return;
        };
        let dir = if side == CLIENT {
            ticklab_tls_decrypt::Direction::ClientToServer
        } else {
            ticklab_tls_decrypt::Direction::ServerToClient
        };
        match event {
            StreamEvent::Data { ts_ns, bytes } => {
                if conn.tls.is_none() && is_tls_start(&conn.halves[side].app, &bytes) {
                    conn.tls = Some(TlsConnection::new(Default::default()));
                    self.report.tls.connections += 1;
                }
                if let Some(tls) = &mut conn.tls {
                    let mut out = Vec::new();
                    tls.feed(dir, ts_ns, &bytes, &self.keys, &mut out);
                    self.tls_events(key, out);
                } else {
                    self.plaintext(key, side, ts_ns, &bytes);
                }
            }
            StreamEvent::Gap { .. } => {
                if let Some(tls) = &mut conn.tls {
                    // TLS 1.3 finds its next record again (a Resynchronised event);
                    // otherwise the direction stops with a gap error.
                    let mut out = Vec::new();
                    tls.gap(dir, &mut out);
                    self.tls_events(key, out);
                } else {
                    self.plaintext_gap(key, side);
                }
            }
            // Under TLS the plaintext ends with the records already decrypted.
            StreamEvent::Fin { ts_ns } | StreamEvent::Reset { ts_ns } => {
                self.end_of_stream(key, side, ts_ns)
            }
        }
    }

    fn tls_events(&mut self, key: ConnectionKey, events: Vec<TlsEvent>) {
        for event in events {
            match event {
                TlsEvent::ApplicationData { dir, ts_ns, data } => {
                    self.report.tls.records_decrypted += 1;
                    let side = match dir {
                        ticklab_tls_decrypt::Direction::ClientToServer => CLIENT,
                        ticklab_tls_decrypt::Direction::ServerToClient => SERVER,
                    };
                    self.plaintext(key, side, ts_ns, &data);
                }
                TlsEvent::Error { error, .. } => self.error(error.kind()),
                TlsEvent::Joined { .. } => self.report.tls.joined += 1,
                TlsEvent::Resynchronised { dir, .. } => {
                    // Records resume at a boundary, the plaintext mid-message: find its
                    // next message too.
                    let side = match dir {
                        ticklab_tls_decrypt::Direction::ClientToServer => CLIENT,
                        ticklab_tls_decrypt::Direction::ServerToClient => SERVER,
                    };
                    self.plaintext_gap(key, side);
                }
                _ => {}
            }
        }
    }

    fn plaintext_gap(&mut self, key: ConnectionKey, side: usize) {
        let Some(conn) = self.connections.get_mut(&key) else {
            return;
        };
        let app = &mut conn.halves[side].app;
        let mut errors: Vec<&'static str> = Vec::new();
        match app {
            App::WebSocket(ws) => {
                let mut out = Vec::new();
                ws.gap(&mut out);
                errors.extend(out.iter().filter_map(|e| match e {
                    WsEvent::Error(e) => Some(e.kind()),
                    _ => None,
                }));
                *app = App::Resync(Box::default());
            }
            App::Http(http) => {
                let mut out = Vec::new();
                http.gap(&mut out);
                errors.extend(out.iter().filter_map(|e| match e {
                    HttpEvent::Error(e) => Some(e.kind()),
                    _ => None,
                }));
            }
            // The next frame is searched for; what was held before the loss is dropped.
            App::Binary(..) | App::Detect(_) => *app = App::Resync(Box::default()),
            App::Resync(pending) => {
                let n = pending.bytes.len();
                pending.drop_front(n);
            }
        }
        for e in errors {
            self.error(e);
        }
    }

    /// Application bytes of one side (decrypted if the connection is TLS).
    fn plaintext(&mut self, key: ConnectionKey, side: usize, ts_ns: u64, bytes: &[u8]) {
        let Some(conn) = self.connections.get_mut(&key) else {
            return;
        };
        if let App::Resync(pending) = &mut conn.halves[side].app {
            pending.push(ts_ns, bytes);
            return self.resync(key, side);
        }
        if let App::Detect(buf) = &mut conn.halves[side].app {
            buf.extend_from_slice(bytes);
            let client_app = if side == SERVER {
                Some(&conn.halves[CLIENT].app)
            } else {
                None
            };
            let Some(decided) = detect(side, &conn.halves[side].app, client_app) else {
                if let App::Detect(buf) = &conn.halves[side].app
                    && buf.len() > DETECT_LIMIT
                {
                    conn.other = true;
                }
                return;
            };
            let App::Detect(buf) = std::mem::replace(&mut conn.halves[side].app, decided) else {
                return;
            };
            return self.decode_app(key, side, ts_ns, &buf);
        }
        self.decode_app(key, side, ts_ns, bytes);
    }

    /// Searches a resynchronising side's held bytes for the next message boundary and
    /// decodes from there; on a joined connection the bytes may instead be TLS records.
    fn resync(&mut self, key: ConnectionKey, side: usize) {
        let Some(conn) = self.connections.get_mut(&key) else {
            return;
        };
        let App::Resync(pending) = &mut conn.halves[side].app else {
            return;
        };
        let client = side == CLIENT;
        match resync::find(client, &pending.bytes, 0) {
            Sync::Found { offset, protocol } => {
                let app = match protocol {
                    Protocol::Http => App::Http(Box::new(HttpDecoder::new(
                        if client {
                            HttpRole::Requests
                        } else {
                            HttpRole::Responses
                        },
                        Default::default(),
                    ))),
                    Protocol::WebSocket => App::WebSocket(Box::new(WsDecoder::without_handshake(
                        if client { Role::Client } else { Role::Server },
                        Default::default(),
                    ))),
                    Protocol::Binary => App::Binary(Vec::new(), true),
                };
                let App::Resync(pending) = std::mem::replace(&mut conn.halves[side].app, app)
                else {
                    return;
                };
                self.report.resynchronisations += 1;
                self.report.bytes_skipped += pending.skipped + offset as u64;
                for (ts, piece) in pending.pieces(offset) {
                    self.decode_app(key, side, ts, piece);
                }
            }
            Sync::NotYet { keep_from } => {
                if conn.mid_stream && conn.tls.is_none() {
                    let tls_keep = match ticklab_tls_decrypt::find_record_boundary(&pending.bytes) {
                        Ok(_) => return self.join_tls(key),
                        Err(keep) => keep,
                    };
                    pending.drop_front(keep_from.min(tls_keep));
                } else {
                    pending.drop_front(keep_from);
                }
                if pending.bytes.len() > RESYNC_HOLD {
                    let excess = pending.bytes.len() - RESYNC_HOLD / 2;
                    pending.drop_front(excess);
                }
                let skipped = pending.skipped;
                let neither_synced = conn.halves.iter().all(|h| matches!(h.app, App::Resync(_)));
                if conn.mid_stream
                    && conn.tls.is_none()
                    && neither_synced
                    && skipped > RESYNC_GIVE_UP
                {
                    // A joined connection that never shows a ticklab message.
                    conn.other = true;
                    conn.halves[side].app = App::Resync(Box::default());
                }
            }
        }
    }

    /// A connection joined mid-stream turned out to carry TLS records: both sides' held
    /// bytes go to a decryptor that finds its keys by trial, and the plaintext it gives
    /// is resynchronised in turn.
    fn join_tls(&mut self, key: ConnectionKey) {
        let Some(conn) = self.connections.get_mut(&key) else {
            return;
        };
        let mut tls = TlsConnection::mid_stream(Default::default());
        self.report.tls.connections += 1;
        let mut out = Vec::new();
        for (side, dir) in [
            (CLIENT, ticklab_tls_decrypt::Direction::ClientToServer),
            (SERVER, ticklab_tls_decrypt::Direction::ServerToClient),
        ] {
            let held = std::mem::replace(&mut conn.halves[side].app, App::Resync(Box::default()));
            if let App::Resync(pending) = held {
                for (ts, piece) in pending.pieces(0) {
                    tls.feed(dir, ts, piece, &self.keys, &mut out);
                }
            }
        }
        conn.tls = Some(tls);
        self.tls_events(key, out);
    }

    fn decode_app(&mut self, key: ConnectionKey, side: usize, ts_ns: u64, bytes: &[u8]) {
        let Some(conn) = self.connections.get_mut(&key) else {
            return;
        };
        let mut messages: Vec<(u64, AppMessage)> = Vec::new();
        let mut errors: Vec<&'static str> = Vec::new();
        let mut not_ours = false;
        match &mut conn.halves[side].app {
            App::Binary(buf, proven) => {
                buf.extend_from_slice(bytes);
                let mut used = 0;
                while let Some((body, n)) = split_frame(&buf[used..]) {
                    used += n;
                    match binary_frame(side, body) {
                        Some(m) => {
                            *proven = true;
                            messages.push((ts_ns, m));
                        }
                        None if !*proven => {
                            not_ours = true;
                            break;
                        }
                        None => errors.push("binary_frame"),
                    }
                }
                buf.drain(..used.min(buf.len()));
                if buf.len() > BINARY_LIMIT {
                    buf.clear();
                    errors.push("binary_frame");
                }
            }
            App::WebSocket(ws) => {
                let mut out = Vec::new();
                ws.feed(ts_ns, bytes, &mut out);
                for e in out {
                    match e {
                        WsEvent::Message { ts_ns, payload, .. } => match ws_message(side, &payload)
                        {
                            Some(m) => messages.push((ts_ns, m)),
                            None => errors.push("websocket_payload"),
                        },
                        WsEvent::Error(e) => errors.push(e.kind()),
                        _ => {}
                    }
                }
            }
            App::Http(http) => {
                let mut out = Vec::new();
                http.feed(ts_ns, bytes, &mut out);
                http_messages(out, &mut messages, &mut errors);
            }
            App::Detect(_) | App::Resync(_) => {}
        }
        if not_ours {
            // The first frame of the stream is not ticklab's: some other protocol.
            conn.other = true;
            errors.clear();
        }
        for e in errors {
            self.error(e);
        }
        self.apply(messages);
    }

    /// One direction of a connection ended (FIN): an HTTP response delimited by the end
    /// of the connection is complete now, and a message cut short is reported.
    fn end_of_stream(&mut self, key: ConnectionKey, side: usize, ts_ns: u64) {
        let Some(conn) = self.connections.get_mut(&key) else {
            return;
        };
        let App::Http(http) = &mut conn.halves[side].app else {
            return;
        };
        let mut out = Vec::new();
        http.end(ts_ns, &mut out);
        let (mut messages, mut errors) = (Vec::new(), Vec::new());
        http_messages(out, &mut messages, &mut errors);
        for e in errors {
            self.error(e);
        }
        self.apply(messages);
    }

    /// Decoded messages to the latency bookkeeping.
    fn apply(&mut self, messages: Vec<(u64, AppMessage)>) {
        for (ts, m) in messages {
            match m {
                AppMessage::Feed(view) => {
                    for (seq, message) in &view.messages {
                        if let Message::Trade(t) = message {
                            self.latency.trade(ts, view.header.session, *seq, t, false);
                        }
                    }
                }
                AppMessage::Order(o) => self.latency.order(ts, &o),
                AppMessage::Ack(a) => self.latency.ack(ts, &a),
                AppMessage::Fill => self.latency.fill(),
            }
        }
    }
}

/// Orders and their replies from the HTTP order API's requests and responses.
fn http_messages(
    events: Vec<HttpEvent>,
    messages: &mut Vec<(u64, AppMessage)>,
    errors: &mut Vec<&'static str>,
) {
    for e in events {
        match e {
            HttpEvent::Request {
                first_byte_ts_ns,
                method,
                path,
                body,
                ..
            } => {
                if method == "POST" && path.split('?').next() == Some("/orders") {
                    match serde_json::from_slice::<Order>(&body) {
                        Ok(order) => messages.push((first_byte_ts_ns, AppMessage::Order(order))),
                        Err(_) => errors.push("order_json"),
                    }
                }
            }
            HttpEvent::Response {
                ts_ns,
                status,
                body,
                ..
            } => {
                if (200..300).contains(&status)
                    && let Ok(reply) = serde_json::from_slice::<HttpOrderReply>(&body)
                {
                    messages.push((ts_ns, AppMessage::Ack(reply.ack)));
                    if reply.fill.is_some() {
                        messages.push((ts_ns, AppMessage::Fill));
                    }
                }
            }
            HttpEvent::Error(e) => errors.push(e.kind()),
        }
    }
}

enum AppMessage {
    Feed(messages::FeedView),
    Order(Order),
    Ack(Ack),
    Fill,
}

/// One length-prefixed frame body of ticklab's binary TCP channels.
fn binary_frame(side: usize, body: &[u8]) -> Option<AppMessage> {
    if side == CLIENT || is_order_channel_size(body.len()) {
        return match messages::order_channel(body).ok()? {
            Message::Order(o) if side == CLIENT => Some(AppMessage::Order(o)),
            Message::Ack(a) if side == SERVER => Some(AppMessage::Ack(a)),
            Message::Fill(_) if side == SERVER => Some(AppMessage::Fill),
            _ => None,
        };
    }
    messages::feed_packet(body, body.len())
        .ok()
        .map(AppMessage::Feed)
}

/// One WebSocket message: the exchange sends a feed packet per binary message.
fn ws_message(side: usize, payload: &[u8]) -> Option<AppMessage> {
    if side == CLIENT {
        return None;
    }
    messages::feed_packet(payload, payload.len())
        .ok()
        .map(AppMessage::Feed)
}

fn is_tls_start(app: &App, bytes: &[u8]) -> bool {
    // A TLS record header as the very first bytes of a side: a handshake (22), or,
    // on a connection the mirror joined mid-stream, any record type (20-23), with
    // a TLS 1.0-1.3 version.
    matches!(app, App::Detect(buf) if buf.is_empty())
        && bytes.len() >= 3
        && (20..=23).contains(&bytes[0])
        && bytes[1] == 3
        && bytes[2] <= 4
}

const METHODS: [&[u8]; 7] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"PATCH ",
    b"OPTIONS ",
];

/// The decoder for one side, once its first bytes say which; None: need more.
fn detect(side: usize, app: &App, client: Option<&App>) -> Option<App> {
    let App::Detect(buf) = app else {
        return None;
    };
    if side == CLIENT {
        if buf.len() < 8
            && METHODS
                .iter()
                .any(|m| m.starts_with(&buf[..buf.len().min(m.len())]))
        {
            return None;
        }
        if !METHODS.iter().any(|m| buf.starts_with(m)) {
            return Some(App::Binary(Vec::new(), false));
        }
        let header_end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
        let header = String::from_utf8_lossy(&buf[..header_end]).to_ascii_lowercase();
        if buf.starts_with(b"GET ") && header.contains("upgrade: websocket") {
            return Some(App::WebSocket(Box::new(WsDecoder::new(
                Role::Client,
                Default::default(),
            ))));
        }
        return Some(App::Http(Box::new(HttpDecoder::new(
            HttpRole::Requests,
            Default::default(),
        ))));
    }
    if buf.len() < 5 && b"HTTP/".starts_with(buf) {
        return None;
    }
    if !buf.starts_with(b"HTTP/") {
        return Some(App::Binary(Vec::new(), false));
    }
    let upgraded = matches!(client, Some(App::WebSocket(_)));
    if upgraded || buf.starts_with(b"HTTP/1.1 101") {
        Some(App::WebSocket(Box::new(WsDecoder::new(
            Role::Server,
            Default::default(),
        ))))
    } else {
        Some(App::Http(Box::new(HttpDecoder::new(
            HttpRole::Responses,
            Default::default(),
        ))))
    }
}

/// The client of a connection, from its handshake or, mid-stream, its ports.
fn client_of(
    src: SocketAddr,
    dst: SocketAddr,
    flags: TcpFlags,
    server_ports: &[u16],
) -> Option<SocketAddr> {
    if flags.syn {
        return Some(if flags.ack { dst } else { src });
    }
    let src_serves = server_ports.contains(&src.port());
    let dst_serves = server_ports.contains(&dst.port());
    Some(match (src_serves, dst_serves) {
        (true, false) => dst,
        (false, true) => src,
        _ if src.port() < dst.port() => dst,
        _ => src,
    })
}

fn into_tcp_flags(flags: TcpFlags) -> crate::tcp::TcpFlags {
    crate::tcp::TcpFlags {
        syn: flags.syn,
        fin: flags.fin,
        rst: flags.rst,
    }
}

impl Connection {
    fn new(mid_stream: bool) -> Self {
        let half = || Half {
            stream: Reassembler::new(Default::default()),
            app: if mid_stream {
                App::Resync(Box::default())
            } else {
                App::Detect(Vec::new())
            },
        };
        Self {
            client: None,
            mid_stream,
            halves: [half(), half()],
            tls: None,
            other: false,
            last_seen_ns: 0,
        }
    }
}
