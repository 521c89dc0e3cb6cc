//! One TCP connection's TLS, both directions: record framing over arbitrary chunks, the
//! hellos, which key protects each record (and when that changes), holding records whose
//! keys have not arrived yet, and turning all of it into events.
//!
//! The two directions are decoded independently except for what the hellos tell both (the
//! randoms, the version and the suite). A record that cannot be decoded yet — its key is not
//! in the key log, or the other direction's hello has not been fed — is held, and so is
//! every later record of its direction, because the sequence numbers and key changes only
//! make sense in order. Held records are retried whenever something may have changed: a
//! feed on either direction, or [`TlsConnection::retry`] after new key log lines.

use std::collections::VecDeque;
use std::fmt;

use crate::crypto::{RecordOpener, next_traffic_secret};
use crate::error::TlsError;
use crate::handshake::{self, CLIENT_HELLO, FINISHED, KEY_UPDATE, Message, SERVER_HELLO};
use crate::join;
use crate::keylog::{KeyLog, Label, encode_hex};
use crate::suites::{self, Suite, TlsVersion};

const CHANGE_CIPHER_SPEC: u8 = 20;
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const APPLICATION_DATA: u8 = 23;
const HEARTBEAT: u8 = 24;
/// RFC 5246 §6.2.3: a TLSCiphertext fragment is at most 2^14 + 2048 bytes (TLS 1.3 allows
/// less, 2^14 + 256, so this bound covers both).
const MAX_FRAGMENT: usize = 16384 + 2048;
/// Records that may be lost in one gap and still be found again by trial.
const RESYNC_WINDOW: u64 = 1 << 20;
/// Records after a gap that may fail that trial before the direction is given up.
const MAX_RESYNC_FAILURES: u32 = 16;

/// Which byte stream of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Bytes the client sent.
    ClientToServer,
    /// Bytes the server sent.
    ServerToClient,
}

impl Direction {
    /// The other direction.
    pub fn reverse(self) -> Self {
        match self {
            Direction::ClientToServer => Direction::ServerToClient,
            Direction::ServerToClient => Direction::ClientToServer,
        }
    }

    fn index(self) -> usize {
        match self {
            Direction::ClientToServer => 0,
            Direction::ServerToClient => 1,
        }
    }
}

/// Bounds on what one connection keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of complete records (both directions together) that may wait for keys or for
    /// the other direction's hello. Past this, the direction being fed drops what it holds
    /// and stops, with a [`TlsError::HeldOverflow`] event.
    pub max_held_bytes: usize,
    /// Highest sequence number tried when joining a TLS 1.3 connection mid-stream with an
    /// AES-GCM suite (one AES block per candidate and secret).
    pub join_max_seq: u64,
    /// The same for ChaCha20-Poly1305, whose candidates cost a whole tag check each.
    pub join_max_seq_chacha: u64,
}

impl Default for Limits {
    /// 4 MiB held per connection; joins search 16 Mi records (AES-GCM) or 1 Mi (ChaCha20).
    fn default() -> Self {
        Limits {
            max_held_bytes: 4 << 20,
            join_max_seq: 1 << 24,
            join_max_seq_chacha: 1 << 20,
        }
    }
}

/// What decoding produced, in the order it happened on each direction.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsEvent {
    /// Decrypted application data of one record (never empty), with the capture time of the
    /// chunk that completed that record — not the time of decryption, which is later for
    /// records that waited for keys.
    ApplicationData {
        /// Who sent it.
        dir: Direction,
        /// Capture time of the chunk that completed the record.
        ts_ns: u64,
        /// The plaintext.
        data: Vec<u8>,
    },
    /// TLS 1.3 0-RTT data from the client, decrypted with CLIENT_EARLY_TRAFFIC_SECRET. The
    /// server may have rejected it, so it is kept apart from [`TlsEvent::ApplicationData`].
    EarlyData {
        /// Capture time of the chunk that completed the record.
        ts_ns: u64,
        /// The plaintext.
        data: Vec<u8>,
    },
    /// The server answered with a HelloRetryRequest (TLS 1.3); a second ClientHello follows.
    HelloRetryRequest {
        /// Capture time of the chunk that completed the record.
        ts_ns: u64,
    },
    /// The ServerHello chose a version and suite this crate decrypts.
    Negotiated {
        /// Capture time of the chunk that completed the record.
        ts_ns: u64,
        /// TLS 1.2 or 1.3.
        version: TlsVersion,
        /// The suite's code point (see [`crate::cipher_suite_name`]).
        cipher_suite: u16,
    },
    /// This direction's Finished message was decrypted: its handshake is over.
    HandshakeFinished {
        /// Whose Finished.
        dir: Direction,
        /// Capture time of the chunk that completed the record.
        ts_ns: u64,
    },
    /// TLS 1.3 KeyUpdate: this direction's later records use the next traffic secret.
    KeyUpdate {
        /// Whose keys changed.
        dir: Direction,
        /// Capture time of the chunk that completed the record.
        ts_ns: u64,
    },
    /// The capture joined this TLS 1.3 connection after its handshake, and a key log secret
    /// opened this direction's records by trial decryption.
    Joined {
        /// Which direction.
        dir: Direction,
        /// Capture time of the chunk that completed the record that opened.
        ts_ns: u64,
        /// The suite the secret opened the record under.
        cipher_suite: u16,
        /// That record's sequence number: records the direction sent before the capture saw it.
        seq: u64,
        /// KeyUpdates the direction had made before.
        key_updates: u32,
    },
    /// Bytes of this direction were skipped to find a record boundary, joining mid-stream or
    /// after lost bytes; records are framed again from there.
    Resynchronised {
        /// Which direction.
        dir: Direction,
        /// Bytes skipped.
        skipped: usize,
    },
    /// An alert (plaintext or decrypted). Description 0 is close_notify.
    Alert {
        /// Who sent it.
        dir: Direction,
        /// Capture time of the chunk that completed the record.
        ts_ns: u64,
        /// 1 warning, 2 fatal.
        level: u8,
        /// RFC 8446 §6 AlertDescription.
        description: u8,
    },
    /// Records of this direction wait for a key log line; they are held and decrypted by a
    /// later [`TlsConnection::retry`] or feed. Said once per wait.
    KeysPending {
        /// Which direction waits.
        dir: Direction,
        /// The line it waits for.
        label: Label,
    },
    /// A problem; see [`TlsError`] for which ones stop the direction.
    Error {
        /// Where it happened.
        dir: Direction,
        /// What happened.
        error: TlsError,
    },
}

/// Per-direction part of a [`ConnectionSummary`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirectionSummary {
    /// This side's Finished was decrypted.
    pub handshake_finished: bool,
    /// Records decrypted.
    pub records_decrypted: u64,
    /// Records that failed to decrypt.
    pub records_failed: u64,
    /// Records held waiting for keys or the other direction.
    pub records_held: usize,
    /// Their bytes on the wire.
    pub bytes_held: usize,
    /// TLS 1.3 KeyUpdates seen.
    pub key_updates: u32,
    /// No longer decoded (gap, framing error, overflow, unsupported, closed).
    pub stopped: bool,
    /// Joined mid-stream: the sequence number of the first record opened.
    pub joined_at_seq: Option<u64>,
    /// Times a record boundary was searched for (joining, or after lost bytes).
    pub resynchronisations: u32,
    /// Bytes skipped finding those boundaries.
    pub bytes_skipped: u64,
}

/// State of a connection for reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionSummary {
    /// Version chosen by the ServerHello.
    pub version: Option<TlsVersion>,
    /// Suite chosen by the ServerHello.
    pub cipher_suite: Option<u16>,
    /// Its IANA name, when known.
    pub cipher_suite_name: Option<&'static str>,
    /// Hex of the ClientHello random, the key log's lookup key.
    pub client_random: Option<String>,
    /// server_name (SNI) of the ClientHello.
    pub server_name: Option<String>,
    /// Suites the client offered, in its order.
    pub offered_cipher_suites: Vec<u16>,
    /// The server sent a HelloRetryRequest.
    pub hello_retry: bool,
    /// A secret for this connection was found in the key log.
    pub keys_found: bool,
    /// The capture saw this connection only after its start (no handshake).
    pub mid_stream: bool,
    /// Client to server.
    pub client: DirectionSummary,
    /// Server to client.
    pub server: DirectionSummary,
}

/// A complete record as framed from the stream.
struct Record {
    content_type: u8,
    version: [u8; 2],
    payload: Vec<u8>,
    ts_ns: u64,
}

impl Record {
    fn header(&self) -> [u8; 5] {
        // Framing guarantees payload.len() <= MAX_FRAGMENT, which fits in u16.
        let len = u16::try_from(self.payload.len())
            .unwrap_or(u16::MAX)
            .to_be_bytes();
        [
            self.content_type,
            self.version[0],
            self.version[1],
            len[0],
            len[1],
        ]
    }

    fn wire_len(&self) -> usize {
        5 + self.payload.len()
    }
}

/// Why a direction's next record cannot be decoded yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    ClientHello,
    ServerHello,
    Key(Label),
    /// Joining mid-stream: a secret of this label that opens the record.
    Join(Label),
}

impl Waiting {
    fn describe(self) -> String {
        match self {
            Waiting::ClientHello => "the ClientHello".into(),
            Waiting::ServerHello => "the ServerHello".into(),
            Waiting::Key(label) => format!("the key log line {label}"),
            Waiting::Join(label) => format!("a {label} that opens the connection mid-stream"),
        }
    }
}

/// TLS 1.3 keys of one direction.
struct Tls13Keys {
    /// Past this side's Finished: application traffic keys.
    application: bool,
    /// Current traffic secret, once looked up (kept for KeyUpdate).
    secret: Option<Vec<u8>>,
    opener: Option<RecordOpener>,
    /// A record opened under the handshake keys: no more plaintext handshake or 0-RTT.
    handshake_opened: bool,
    /// The client offered 0-RTT and no record has opened under the handshake keys yet, so
    /// a record that does not may be early data.
    early_possible: bool,
    early: Option<RecordOpener>,
}

/// How this direction's records are protected right now.
enum Protection {
    Plain,
    Tls12(Box<RecordOpener>),
    Tls13(Box<Tls13Keys>),
}

/// One direction's decoding state.
struct Side {
    /// Bytes of a record not complete yet.
    partial: Vec<u8>,
    records_framed: u64,
    /// Complete records not decoded yet, oldest first.
    queue: VecDeque<Record>,
    queued_bytes: usize,
    /// No more input is accepted (gap, framing error, overflow, closed).
    input_closed: bool,
    /// Nothing more is decoded, not even held records.
    stopped: bool,
    handshake: handshake::Reader,
    protection: Protection,
    /// Client: a ClientHello was parsed.
    hello_done: bool,
    finished: bool,
    waiting: Option<Waiting>,
    decrypted: u64,
    failed: u64,
    key_updates: u32,
    /// Looking for a record boundary: joined mid-stream, or bytes were lost.
    syncing: bool,
    resynchronisations: u32,
    bytes_skipped: u64,
    /// Key log size at the last mid-stream join attempt: no retry until it grows.
    join_tried: Option<usize>,
    joined_at_seq: Option<u64>,
    /// After lost bytes under TLS 1.3 keys: the next record's sequence number is at least
    /// this, and is found by trial.
    resync_from: Option<u64>,
    /// Records that failed that trial.
    resync_failures: u32,
}

impl Side {
    fn new() -> Self {
        Side {
            partial: Vec::new(),
            records_framed: 0,
            queue: VecDeque::new(),
            queued_bytes: 0,
            input_closed: false,
            stopped: false,
            handshake: handshake::Reader::default(),
            protection: Protection::Plain,
            hello_done: false,
            finished: false,
            waiting: None,
            decrypted: 0,
            failed: 0,
            key_updates: 0,
            syncing: false,
            resynchronisations: 0,
            bytes_skipped: 0,
            join_tried: None,
            joined_at_seq: None,
            resync_from: None,
            resync_failures: 0,
        }
    }

    /// Starts looking for a record boundary in the bytes to come.
    fn resync(&mut self) {
        self.syncing = true;
        self.partial = Vec::new();
        self.resynchronisations += 1;
    }

    /// While syncing: drops bytes up to the first plausible record boundary, or keeps
    /// waiting for more. Returns the bytes skipped once the boundary is found.
    fn sync(&mut self) -> Option<usize> {
        match find_record_boundary(&self.partial) {
            Ok(pos) => {
                self.partial.drain(..pos);
                self.bytes_skipped += pos as u64;
                self.syncing = false;
                Some(pos)
            }
            Err(keep_from) => {
                // Bytes before `keep_from` cannot start a boundary.
                self.partial.drain(..keep_from);
                self.bytes_skipped += keep_from as u64;
                None
            }
        }
    }

    /// Appends `bytes` and queues every record they complete. On bytes that cannot be TLS
    /// the direction's input closes (records framed before them stay queued).
    fn frame(&mut self, ts_ns: u64, bytes: &[u8]) -> Result<(), TlsError> {
        self.partial.extend_from_slice(bytes);
        if self.syncing && self.sync().is_none() {
            return Ok(());
        }
        let mut pos = 0;
        let result = loop {
            let rest = &self.partial[pos..];
            if rest.len() < 5 {
                break Ok(());
            }
            if let Err(e) = check_header(rest, self.records_framed == 0) {
                break Err(e);
            }
            let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
            let Some(payload) = rest.get(5..5 + len) else {
                break Ok(());
            };
            let record = Record {
                content_type: rest[0],
                version: [rest[1], rest[2]],
                payload: payload.to_vec(),
                ts_ns,
            };
            pos += record.wire_len();
            self.records_framed += 1;
            self.queued_bytes += record.wire_len();
            self.queue.push_back(record);
        };
        self.partial.drain(..pos);
        // One huge chunk should not pin its allocation for the connection's lifetime.
        if self.partial.capacity() > 4 * MAX_FRAGMENT && self.partial.len() <= MAX_FRAGMENT {
            self.partial.shrink_to(MAX_FRAGMENT + 5);
        }
        if result.is_err() {
            self.partial = Vec::new();
            self.input_closed = true;
        }
        result
    }

    fn drop_queue(&mut self) {
        self.queue.clear();
        self.queued_bytes = 0;
    }

    fn summary(&self) -> DirectionSummary {
        DirectionSummary {
            handshake_finished: self.finished,
            records_decrypted: self.decrypted,
            records_failed: self.failed,
            records_held: self.queue.len(),
            bytes_held: self.queued_bytes,
            key_updates: self.key_updates,
            stopped: self.stopped || self.input_closed,
            joined_at_seq: self.joined_at_seq,
            resynchronisations: self.resynchronisations,
            bytes_skipped: self.bytes_skipped,
        }
    }
}

/// The first offset of `buf` where a TLS 1.3 protected record (application_data, legacy
/// version 0x0303, room for a tag) starts and is followed by another record header or ends
/// exactly where the bytes end (a record per segment is the common case): a stream joined
/// mid-way, or after lost bytes, is framed from there. The trial decryption that follows is
/// the real check; this only has to find the boundary. `Err(keep_from)`: no boundary yet,
/// and none can start before `keep_from` however many bytes follow.
pub fn find_record_boundary(buf: &[u8]) -> Result<usize, usize> {
    let mut pos = 0;
    while pos + 5 <= buf.len() {
        let h = &buf[pos..];
        let len = usize::from(u16::from_be_bytes([h[3], h[4]]));
        if h[0] == APPLICATION_DATA && h[1] == 3 && h[2] == 3 && (17..=MAX_FRAGMENT).contains(&len)
        {
            let end = pos + 5 + len;
            match buf.get(end..end + 5) {
                _ if end == buf.len() => return Ok(pos),
                Some(next) if check_header(next, false).is_ok() && next[1] == 3 && next[2] == 3 => {
                    return Ok(pos);
                }
                Some(_) => {}
                // The candidate's end or the next header is not in yet: wait rather than
                // skip past what may be the boundary.
                None => return Err(pos),
            }
        }
        pos += 1;
    }
    // A header may begin in the last four bytes.
    Err(pos.min(buf.len()))
}

/// Checks a record header (at least 5 bytes): known content type, a 3.x version, a length
/// within the protocol maximum. The first record of a stream may instead be an SSLv2
/// ClientHello, which is reported as unsupported.
fn check_header(h: &[u8], first: bool) -> Result<(), TlsError> {
    if first && h[0] & 0x80 != 0 && h[2] == 1 {
        return Err(TlsError::Unsupported("SSLv2-compatible ClientHello".into()));
    }
    if !(CHANGE_CIPHER_SPEC..=HEARTBEAT).contains(&h[0]) {
        return Err(TlsError::Framing(format!("content type 0x{:02x}", h[0])));
    }
    if h[1] != 3 || h[2] > 4 {
        return Err(TlsError::Framing(format!(
            "record version 0x{:02x}{:02x}",
            h[1], h[2]
        )));
    }
    let len = usize::from(u16::from_be_bytes([h[3], h[4]]));
    if len > MAX_FRAGMENT {
        return Err(TlsError::Framing(format!(
            "record length {len} over the maximum {MAX_FRAGMENT}"
        )));
    }
    Ok(())
}

/// One TCP connection's TLS, both directions. Feed it the two reassembled byte streams;
/// see the crate documentation for the model.
pub struct TlsConnection {
    limits: Limits,
    /// Indexed by `Direction::index`: client to server, then server to client.
    sides: [Side; 2],
    client_random: Option<[u8; 32]>,
    server_random: Option<[u8; 32]>,
    offered_suites: Vec<u16>,
    server_name: Option<String>,
    early_data_offered: bool,
    version: Option<TlsVersion>,
    cipher_suite: Option<u16>,
    /// The negotiated suite, once a supported ServerHello (not a HelloRetryRequest) is in.
    suite: Option<&'static Suite>,
    hello_retry: bool,
    /// Nothing on this connection can be decrypted (unsupported, or unparseable hellos).
    abandoned: bool,
    keys_found: bool,
    /// The capture joined after the connection started: no hellos to come.
    mid_stream: bool,
}

impl Default for TlsConnection {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

impl fmt::Debug for TlsConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConnection")
            .field("limits", &self.limits)
            .field("summary", &self.summary())
            .finish_non_exhaustive()
    }
}

impl TlsConnection {
    /// A connection with nothing seen yet.
    pub fn new(limits: Limits) -> Self {
        TlsConnection {
            limits,
            sides: [Side::new(), Side::new()],
            client_random: None,
            server_random: None,
            offered_suites: Vec::new(),
            server_name: None,
            early_data_offered: false,
            version: None,
            cipher_suite: None,
            suite: None,
            hello_retry: false,
            abandoned: false,
            keys_found: false,
            mid_stream: false,
        }
    }

    /// A connection the capture joined after it started (the mirror came later than the
    /// client's connect): each direction first looks for a record boundary, and a TLS 1.3
    /// connection's keys and sequence numbers are found by trying the key log's application
    /// traffic secrets (see [`Limits::join_max_seq`]). TLS 1.2 cannot be joined (its keys
    /// need the ServerHello's random); its records are reported as waiting for it. Bytes that
    /// do start with a ClientHello are decoded as from the beginning.
    pub fn mid_stream(limits: Limits) -> Self {
        let mut conn = Self::new(limits);
        conn.mid_stream = true;
        for side in &mut conn.sides {
            side.syncing = true;
        }
        conn
    }

    /// Feeds bytes of one direction in stream order (`ts_ns`: capture time of the segment
    /// they came from); appends what came out to `out`. Records of any size may be split over
    /// any number of calls, and one call may carry many records.
    pub fn feed(
        &mut self,
        dir: Direction,
        ts_ns: u64,
        bytes: &[u8],
        keys: &KeyLog,
        out: &mut Vec<TlsEvent>,
    ) {
        let side = &mut self.sides[dir.index()];
        if self.abandoned || side.input_closed || bytes.is_empty() {
            return;
        }
        let syncing = side.syncing;
        let framing = side.frame(ts_ns, bytes);
        if syncing && !side.syncing {
            out.push(TlsEvent::Resynchronised {
                dir,
                skipped: usize::try_from(side.bytes_skipped).unwrap_or(usize::MAX),
            });
        }
        self.pump(keys, out);
        if let Err(error) = framing {
            let unsupported = matches!(error, TlsError::Unsupported(_));
            out.push(TlsEvent::Error { dir, error });
            if unsupported {
                self.abandon();
            }
        }
        self.enforce_limit(dir, out);
    }

    /// Bytes of this direction were lost (a TCP gap): records cannot be framed any more.
    /// Says so once (a [`TlsError::Gap`] event) and ignores this direction's input from now
    /// on. Records completed before the gap are still decoded, including ones that wait for
    /// keys.
    pub fn gap(&mut self, dir: Direction, out: &mut Vec<TlsEvent>) {
        let mid_stream = self.mid_stream && !self.sides[0].hello_done;
        let side = &mut self.sides[dir.index()];
        if self.abandoned || side.input_closed {
            return;
        }
        // Under TLS 1.3 application keys (or still joining) the next record boundary can be
        // found again, and the sequence number by trial: the records lost are the only loss.
        if let Protection::Tls13(k) = &side.protection
            && k.application
            && let Some(opener) = &k.opener
        {
            side.resync_from = Some(opener.seq());
            side.resync();
            return;
        }
        if mid_stream && matches!(side.protection, Protection::Plain) {
            side.resync();
            return;
        }
        side.input_closed = true;
        side.partial = Vec::new();
        out.push(TlsEvent::Error {
            dir,
            error: TlsError::Gap,
        });
    }

    /// Keys may have arrived: decodes held records that can now be decoded.
    pub fn retry(&mut self, keys: &KeyLog, out: &mut Vec<TlsEvent>) {
        self.pump(keys, out);
    }

    /// The connection is over (or the capture service gives up on its keys): records still
    /// held are dropped, each direction reporting them once as [`TlsError::NoKey`] or
    /// [`TlsError::MissingHello`]. Later calls do nothing.
    pub fn close(&mut self, out: &mut Vec<TlsEvent>) {
        for dir in [Direction::ClientToServer, Direction::ServerToClient] {
            let client_random = self.client_random.map(|r| encode_hex(&r));
            let side = &mut self.sides[dir.index()];
            if !side.queue.is_empty() {
                let records = side.queue.len();
                let bytes = side.queued_bytes;
                let error = match side.waiting {
                    Some(Waiting::Join(label)) => TlsError::NoJoinKey {
                        label,
                        max_seq: self.limits.join_max_seq,
                        records,
                        bytes,
                    },
                    Some(Waiting::Key(label)) => TlsError::NoKey {
                        label,
                        client_random: client_random.unwrap_or_default(),
                        records,
                        bytes,
                    },
                    Some(Waiting::ClientHello) => TlsError::MissingHello {
                        which: "ClientHello",
                        records,
                        bytes,
                    },
                    Some(Waiting::ServerHello) | None => TlsError::MissingHello {
                        which: "ServerHello",
                        records,
                        bytes,
                    },
                };
                out.push(TlsEvent::Error { dir, error });
            }
            side.drop_queue();
            side.partial = Vec::new();
            side.input_closed = true;
            side.stopped = true;
        }
    }

    /// State for reports.
    pub fn summary(&self) -> ConnectionSummary {
        ConnectionSummary {
            version: self.version,
            cipher_suite: self.cipher_suite,
            cipher_suite_name: self.cipher_suite.and_then(suites::cipher_suite_name),
            client_random: self.client_random.map(|r| encode_hex(&r)),
            server_name: self.server_name.clone(),
            offered_cipher_suites: self.offered_suites.clone(),
            hello_retry: self.hello_retry,
            keys_found: self.keys_found,
            mid_stream: self.mid_stream,
            client: self.sides[0].summary(),
            server: self.sides[1].summary(),
        }
    }

    /// TLS 1.3 (`Some(true)`) or 1.2 (`Some(false)`) once a hello said so.
    fn tls13(&self) -> Option<bool> {
        match self.version {
            Some(TlsVersion::Tls13) => Some(true),
            Some(TlsVersion::Tls12) => Some(false),
            _ => None,
        }
    }

    fn side(&mut self, dir: Direction) -> &mut Side {
        &mut self.sides[dir.index()]
    }

    /// Nothing more can be decoded on this connection.
    fn abandon(&mut self) {
        self.abandoned = true;
        for side in &mut self.sides {
            side.drop_queue();
            side.partial = Vec::new();
            side.input_closed = true;
            side.stopped = true;
        }
    }

    fn fail_connection(&mut self, dir: Direction, error: TlsError, out: &mut Vec<TlsEvent>) {
        out.push(TlsEvent::Error { dir, error });
        self.abandon();
    }

    fn stop(&mut self, dir: Direction, error: TlsError, out: &mut Vec<TlsEvent>) {
        out.push(TlsEvent::Error { dir, error });
        let side = self.side(dir);
        side.stopped = true;
        side.input_closed = true;
        side.partial = Vec::new();
    }

    /// Decodes queued records of both directions until neither can make progress (one
    /// direction's progress, such as a parsed hello, can unblock the other).
    fn pump(&mut self, keys: &KeyLog, out: &mut Vec<TlsEvent>) {
        loop {
            let mut progress = false;
            for dir in [Direction::ClientToServer, Direction::ServerToClient] {
                loop {
                    if self.abandoned {
                        return;
                    }
                    let side = self.side(dir);
                    if side.stopped {
                        side.drop_queue();
                        break;
                    }
                    let Some(record) = side.queue.pop_front() else {
                        break;
                    };
                    let wire = record.wire_len();
                    match self.process(dir, record, keys, out) {
                        Ok(()) => {
                            let side = self.side(dir);
                            side.queued_bytes = side.queued_bytes.saturating_sub(wire);
                            side.waiting = None;
                            progress = true;
                        }
                        Err((record, waiting)) => {
                            let side = self.side(dir);
                            side.queue.push_front(record);
                            if side.waiting != Some(waiting) {
                                side.waiting = Some(waiting);
                                if let Waiting::Key(label) | Waiting::Join(label) = waiting {
                                    out.push(TlsEvent::KeysPending { dir, label });
                                }
                            }
                            break;
                        }
                    }
                }
            }
            if !progress {
                return;
            }
        }
    }

    /// Past the limit, the fed direction (then the other) drops what it holds and stops.
    fn enforce_limit(&mut self, fed: Direction, out: &mut Vec<TlsEvent>) {
        let limit = self.limits.max_held_bytes;
        let mut total: usize = self.sides.iter().map(|s| s.queued_bytes).sum();
        for dir in [fed, fed.reverse()] {
            if total <= limit {
                return;
            }
            let side = self.side(dir);
            if side.queue.is_empty() {
                continue;
            }
            let bytes = side.queued_bytes;
            let waiting_for = side
                .waiting
                .map_or_else(|| "decoding".to_owned(), Waiting::describe);
            total = total.saturating_sub(bytes);
            side.drop_queue();
            self.stop(
                dir,
                TlsError::HeldOverflow {
                    bytes,
                    limit,
                    waiting_for,
                },
                out,
            );
        }
    }

    /// Decodes one record, or hands it back with what it waits for.
    fn process(
        &mut self,
        dir: Direction,
        record: Record,
        keys: &KeyLog,
        out: &mut Vec<TlsEvent>,
    ) -> Result<(), (Record, Waiting)> {
        let joining =
            self.mid_stream && !self.sides[0].hello_done && record.content_type == APPLICATION_DATA;
        match self.side(dir).protection {
            Protection::Plain if joining => self.join(dir, record, keys, out),
            Protection::Plain => self.process_plain(dir, record, keys, out),
            Protection::Tls12(_) => {
                self.process_tls12(dir, record, keys, out);
                Ok(())
            }
            Protection::Tls13(_) => self.process_tls13(dir, record, keys, out),
        }
    }

    fn process_plain(
        &mut self,
        dir: Direction,
        record: Record,
        keys: &KeyLog,
        out: &mut Vec<TlsEvent>,
    ) -> Result<(), (Record, Waiting)> {
        let ts = record.ts_ns;
        let client = dir == Direction::ClientToServer;
        match record.content_type {
            HANDSHAKE => self.on_handshake_bytes(dir, ts, &record.payload, out),
            ALERT => on_alerts(dir, ts, &record.payload, out),
            CHANGE_CIPHER_SPEC => match self.tls13() {
                // TLS 1.3 middlebox-compatibility CCS (RFC 8446 §D.4): no meaning.
                Some(true) => {}
                Some(false) => return self.start_tls12(dir, record, keys),
                // Only the ServerHello says whether this CCS starts TLS 1.2 encryption.
                None if client && self.sides[0].hello_done => {
                    return Err((record, Waiting::ServerHello));
                }
                None => out.push(TlsEvent::Error {
                    dir,
                    error: TlsError::Malformed("ChangeCipherSpec before the hellos".into()),
                }),
            },
            APPLICATION_DATA => match self.tls13() {
                Some(true) if client => {
                    // The client's first protected record (0-RTT or handshake): needs the
                    // real ServerHello, which may come after a HelloRetryRequest.
                    if self.suite.is_none() {
                        return Err((record, Waiting::ServerHello));
                    }
                    self.enter_tls13(dir);
                    return self.process_tls13(dir, record, keys, out);
                }
                Some(_) => out.push(TlsEvent::Error {
                    dir,
                    error: TlsError::Malformed("protected record before keys were set".into()),
                }),
                None if client && self.sides[0].hello_done => {
                    return Err((record, Waiting::ServerHello));
                }
                None => self.stop(
                    dir,
                    TlsError::Handshake(
                        "protected records before any hello: the capture missed the start of the connection"
                            .into(),
                    ),
                    out,
                ),
            },
            _ => {} // heartbeat: nothing to decode
        }
        Ok(())
    }

    /// Joining mid-stream: the first protected record of a direction tells, by trial, which
    /// key log secret this direction uses and how many records it sent before; the record is
    /// then decoded as any other. Tried again only when the key log has grown.
    fn join(
        &mut self,
        dir: Direction,
        record: Record,
        keys: &KeyLog,
        out: &mut Vec<TlsEvent>,
    ) -> Result<(), (Record, Waiting)> {
        let label = match dir {
            Direction::ClientToServer => Label::ClientTrafficSecret0,
            Direction::ServerToClient => Label::ServerTrafficSecret0,
        };
        if self.side(dir).join_tried == Some(keys.len()) {
            return Err((record, Waiting::Join(label)));
        }
        self.side(dir).join_tried = Some(keys.len());
        // Once the other direction has joined, only its connection's secret can fit.
        let candidates: Vec<([u8; 32], &[u8])> = match self.client_random {
            Some(random) => keys
                .secret(label, &random)
                .map(|s| vec![(random, s)])
                .unwrap_or_default(),
            None => keys.labelled(label).collect(),
        };
        let found = join::find(
            &candidates,
            record.header(),
            &record.payload,
            0,
            self.limits.join_max_seq,
            self.limits.join_max_seq_chacha,
            self.suite,
        );
        let Some(found) = found else {
            return Err((record, Waiting::Join(label)));
        };
        let suite = found.suite;
        let Some(mut opener) = RecordOpener::tls13(suite, &found.secret) else {
            return Err((record, Waiting::Join(label)));
        };
        opener.set_seq(found.seq);
        self.client_random = Some(found.client_random);
        self.version = Some(TlsVersion::Tls13);
        self.cipher_suite = Some(suite.id);
        self.suite = Some(suite);
        self.keys_found = true;
        let side = self.side(dir);
        side.joined_at_seq = Some(found.seq);
        side.key_updates = found.generation;
        side.protection = Protection::Tls13(Box::new(Tls13Keys {
            application: true,
            secret: Some(found.secret),
            opener: Some(opener),
            handshake_opened: true,
            early_possible: false,
            early: None,
        }));
        out.push(TlsEvent::Joined {
            dir,
            ts_ns: record.ts_ns,
            cipher_suite: suite.id,
            seq: found.seq,
            key_updates: found.generation,
        });
        self.process_tls13(dir, record, keys, out)
    }

    /// The TLS 1.2 opener for this direction, from CLIENT_RANDOM and both randoms.
    fn tls12_opener(&mut self, dir: Direction, keys: &KeyLog) -> Result<RecordOpener, Waiting> {
        let client_random = self.client_random.ok_or(Waiting::ClientHello)?;
        let server_random = self.server_random.ok_or(Waiting::ServerHello)?;
        let suite = self.suite.ok_or(Waiting::ServerHello)?;
        let master = keys
            .secret(Label::ClientRandom, &client_random)
            .ok_or(Waiting::Key(Label::ClientRandom))?;
        self.keys_found = true;
        // Cannot fail for a 48-byte master secret and a table suite.
        let (client, server) =
            RecordOpener::tls12_pair(suite, master, &client_random, &server_random)
                .ok_or(Waiting::Key(Label::ClientRandom))?;
        Ok(match dir {
            Direction::ClientToServer => client,
            Direction::ServerToClient => server,
        })
    }

    /// TLS 1.2 ChangeCipherSpec: later records of this direction are encrypted.
    fn start_tls12(
        &mut self,
        dir: Direction,
        record: Record,
        keys: &KeyLog,
    ) -> Result<(), (Record, Waiting)> {
        let opener = self.tls12_opener(dir, keys).map_err(|w| (record, w))?;
        self.side(dir).protection = Protection::Tls12(Box::new(opener));
        Ok(())
    }

    fn process_tls12(
        &mut self,
        dir: Direction,
        record: Record,
        keys: &KeyLog,
        out: &mut Vec<TlsEvent>,
    ) {
        let header = record.header();
        let side = self.side(dir);
        let Protection::Tls12(opener) = &mut side.protection else {
            return;
        };
        match opener.open(header, record.payload) {
            Ok(plain) => {
                side.decrypted += 1;
                self.on_content(
                    dir,
                    record.content_type,
                    record.ts_ns,
                    plain,
                    false,
                    keys,
                    out,
                );
            }
            Err(failed) => {
                opener.skip();
                side.failed += 1;
                out.push(TlsEvent::Error {
                    dir,
                    error: TlsError::Decrypt { seq: failed.seq },
                });
            }
        }
    }

    /// Switches a direction to TLS 1.3 handshake traffic keys (looked up on first use).
    fn enter_tls13(&mut self, dir: Direction) {
        let early_possible = dir == Direction::ClientToServer && self.early_data_offered;
        self.side(dir).protection = Protection::Tls13(Box::new(Tls13Keys {
            application: false,
            secret: None,
            opener: None,
            handshake_opened: false,
            early_possible,
            early: None,
        }));
    }

    fn process_tls13(
        &mut self,
        dir: Direction,
        record: Record,
        keys: &KeyLog,
        out: &mut Vec<TlsEvent>,
    ) -> Result<(), (Record, Waiting)> {
        let ts = record.ts_ns;
        let plaintext_allowed = match &self.side(dir).protection {
            Protection::Tls13(k) => !k.handshake_opened,
            _ => false,
        };
        match record.content_type {
            APPLICATION_DATA => {}
            CHANGE_CIPHER_SPEC => return Ok(()), // compatibility CCS
            ALERT => {
                // An unencrypted alert, e.g. a peer that could not derive keys.
                on_alerts(dir, ts, &record.payload, out);
                return Ok(());
            }
            HANDSHAKE if plaintext_allowed => {
                // A second ClientHello after HelloRetryRequest, behind 0-RTT records.
                self.on_handshake_bytes(dir, ts, &record.payload, out);
                return Ok(());
            }
            HANDSHAKE => {
                out.push(TlsEvent::Error {
                    dir,
                    error: TlsError::Malformed(
                        "unencrypted handshake record after the key change".into(),
                    ),
                });
                return Ok(());
            }
            _ => return Ok(()),
        }
        let Some(client_random) = self.client_random else {
            return Err((record, Waiting::ClientHello));
        };
        let Some(suite) = self.suite else {
            return Err((record, Waiting::ServerHello));
        };
        let client = dir == Direction::ClientToServer;
        let side = &mut self.sides[dir.index()];
        let Protection::Tls13(k) = &mut side.protection else {
            return Ok(());
        };
        if k.opener.is_none() {
            let label = match (client, k.application) {
                (true, false) => Label::ClientHandshakeTrafficSecret,
                (false, false) => Label::ServerHandshakeTrafficSecret,
                (true, true) => Label::ClientTrafficSecret0,
                (false, true) => Label::ServerTrafficSecret0,
            };
            let secret = match k.secret.take() {
                Some(secret) => secret,
                None => match keys.secret(label, &client_random) {
                    Some(secret) => secret.to_vec(),
                    None => return Err((record, Waiting::Key(label))),
                },
            };
            self.keys_found = true;
            if secret.len() != suite.hash.len() {
                side.failed += 1;
                out.push(TlsEvent::Error {
                    dir,
                    error: TlsError::SecretLength {
                        label,
                        got: secret.len(),
                        expected: suite.hash.len(),
                    },
                });
                return Ok(());
            }
            k.opener = RecordOpener::tls13(suite, &secret);
            k.secret = Some(secret);
        }
        if let Some(from) = side.resync_from
            && let Some(secret) = k.secret.as_deref()
        {
            // Bytes were lost: records went by uncounted, so the sequence number (and any
            // key update in between) is found by trial from where the loss began.
            let found = join::find(
                &[(client_random, secret)],
                record.header(),
                &record.payload,
                from,
                from.saturating_add(RESYNC_WINDOW),
                from.saturating_add(RESYNC_WINDOW),
                Some(suite),
            );
            match found.and_then(|f| Some((RecordOpener::tls13(suite, &f.secret)?, f))) {
                Some((mut opener, found)) => {
                    opener.set_seq(found.seq);
                    k.opener = Some(opener);
                    k.secret = Some(found.secret);
                    side.key_updates += found.generation;
                    side.resync_from = None;
                    side.resync_failures = 0;
                }
                None => {
                    side.failed += 1;
                    side.resync_failures += 1;
                    if side.resync_failures >= MAX_RESYNC_FAILURES {
                        side.stopped = true;
                        side.input_closed = true;
                        side.partial = Vec::new();
                        out.push(TlsEvent::Error {
                            dir,
                            error: TlsError::Gap,
                        });
                    } else {
                        out.push(TlsEvent::Error {
                            dir,
                            error: TlsError::Decrypt { seq: from },
                        });
                    }
                    return Ok(());
                }
            }
        }
        let Some(opener) = k.opener.as_mut() else {
            return Ok(());
        };
        let header = record.header();
        // Trial decryption for 0-RTT needs the ciphertext twice.
        let spare = k.early_possible.then(|| record.payload.clone());
        let opened = match opener.open(header, record.payload) {
            Ok(plain) => {
                if !k.application {
                    k.handshake_opened = true;
                    k.early_possible = false;
                    k.early = None;
                }
                Ok((plain, false))
            }
            Err(failed) if k.early_possible => {
                // Not under the handshake keys: 0-RTT data (RFC 8446 §4.2.10), which a
                // server also tells apart by trial decryption. It does not count against
                // the handshake sequence.
                if k.early.is_none() {
                    k.early = keys
                        .secret(Label::ClientEarlyTrafficSecret, &client_random)
                        .filter(|s| s.len() == suite.hash.len())
                        .and_then(|s| RecordOpener::tls13(suite, s));
                }
                match (k.early.as_mut(), spare) {
                    (Some(early), Some(payload)) => early
                        .open(header, payload)
                        .map(|p| (p, true))
                        .map_err(|_| failed),
                    _ => Err(failed),
                }
            }
            Err(failed) => {
                opener.skip();
                Err(failed)
            }
        };
        match opened {
            Ok((mut plain, early)) => {
                side.decrypted += 1;
                // TLSInnerPlaintext: content, then the real type, then zero padding (§5.2).
                let Some(end) = plain.iter().rposition(|&b| b != 0) else {
                    out.push(TlsEvent::Error {
                        dir,
                        error: TlsError::Malformed("TLS 1.3 record without a content type".into()),
                    });
                    return Ok(());
                };
                let content_type = plain[end];
                plain.truncate(end);
                self.on_content(dir, content_type, ts, plain, early, keys, out);
            }
            Err(failed) => {
                side.failed += 1;
                out.push(TlsEvent::Error {
                    dir,
                    error: TlsError::Decrypt { seq: failed.seq },
                });
            }
        }
        Ok(())
    }

    /// Decrypted content of one record.
    #[allow(clippy::too_many_arguments)] // the event context travels with the content
    fn on_content(
        &mut self,
        dir: Direction,
        content_type: u8,
        ts_ns: u64,
        content: Vec<u8>,
        early: bool,
        keys: &KeyLog,
        out: &mut Vec<TlsEvent>,
    ) {
        match content_type {
            APPLICATION_DATA if content.is_empty() => {}
            APPLICATION_DATA if early => out.push(TlsEvent::EarlyData {
                ts_ns,
                data: content,
            }),
            APPLICATION_DATA => out.push(TlsEvent::ApplicationData {
                dir,
                ts_ns,
                data: content,
            }),
            HANDSHAKE => self.on_handshake_bytes(dir, ts_ns, &content, out),
            ALERT => on_alerts(dir, ts_ns, &content, out),
            CHANGE_CIPHER_SPEC if self.tls13() == Some(false) => {
                // An encrypted CCS: TLS 1.2 renegotiation switching to the new keys. The
                // record is already consumed, so there is no holding it for keys.
                match self.tls12_opener(dir, keys) {
                    Ok(opener) => self.side(dir).protection = Protection::Tls12(Box::new(opener)),
                    Err(waiting) => self.stop(
                        dir,
                        TlsError::Handshake(format!(
                            "renegotiated keys unavailable: no {}",
                            waiting.describe()
                        )),
                        out,
                    ),
                }
            }
            HEARTBEAT => {}
            other => out.push(TlsEvent::Error {
                dir,
                error: TlsError::Malformed(format!("unexpected inner content type {other}")),
            }),
        }
    }

    fn on_handshake_bytes(
        &mut self,
        dir: Direction,
        ts_ns: u64,
        data: &[u8],
        out: &mut Vec<TlsEvent>,
    ) {
        let mut messages = Vec::new();
        self.side(dir).handshake.push(data, &mut messages);
        for message in messages {
            if self.abandoned || self.side(dir).stopped {
                return;
            }
            self.on_handshake_message(dir, ts_ns, message, out);
        }
    }

    fn on_handshake_message(
        &mut self,
        dir: Direction,
        ts_ns: u64,
        message: Message,
        out: &mut Vec<TlsEvent>,
    ) {
        match (dir, message.msg_type) {
            (Direction::ClientToServer, CLIENT_HELLO) => self.on_client_hello(message, out),
            (Direction::ServerToClient, SERVER_HELLO) => self.on_server_hello(ts_ns, message, out),
            (_, FINISHED) => {
                let side = self.side(dir);
                if !side.finished {
                    side.finished = true;
                    out.push(TlsEvent::HandshakeFinished { dir, ts_ns });
                }
                // TLS 1.3: the next record is under the application traffic secret (§7.1).
                if let Protection::Tls13(k) = &mut side.protection
                    && !k.application
                {
                    k.application = true;
                    k.secret = None;
                    k.opener = None;
                    k.early_possible = false;
                    k.early = None;
                }
            }
            (_, KEY_UPDATE) => {
                let suite = self.suite;
                let side = self.side(dir);
                let updated = match (&mut side.protection, suite) {
                    (Protection::Tls13(k), Some(suite)) if k.application => {
                        let next = k
                            .secret
                            .as_deref()
                            .and_then(|s| next_traffic_secret(suite.hash, s));
                        match next.and_then(|n| Some((RecordOpener::tls13(suite, &n)?, n))) {
                            Some((opener, next)) => {
                                k.opener = Some(opener);
                                k.secret = Some(next);
                                true
                            }
                            None => false,
                        }
                    }
                    _ => false,
                };
                if updated {
                    side.key_updates += 1;
                    out.push(TlsEvent::KeyUpdate { dir, ts_ns });
                } else {
                    out.push(TlsEvent::Error {
                        dir,
                        error: TlsError::Malformed(
                            "KeyUpdate outside TLS 1.3 application data".into(),
                        ),
                    });
                }
            }
            _ => {}
        }
    }

    fn on_client_hello(&mut self, message: Message, out: &mut Vec<TlsEvent>) {
        let dir = Direction::ClientToServer;
        if message.too_large {
            let error = TlsError::Handshake("ClientHello too large to parse".into());
            return self.fail_connection(dir, error, out);
        }
        let hello = match handshake::parse_client_hello(&message.body) {
            Ok(hello) => hello,
            Err(e) => return self.fail_connection(dir, TlsError::Handshake(e.into()), out),
        };
        match self.client_random {
            None => self.client_random = Some(hello.random),
            // A new random is a TLS 1.2 renegotiation; its keys are logged under it. In
            // TLS 1.3 the second ClientHello (after HelloRetryRequest) repeats the random.
            Some(random) if random != hello.random && self.tls13() == Some(false) => {
                self.client_random = Some(hello.random);
            }
            Some(_) => {}
        }
        self.early_data_offered |= hello.early_data;
        self.offered_suites = hello.cipher_suites;
        if hello.server_name.is_some() {
            self.server_name = hello.server_name;
        }
        self.side(dir).hello_done = true;
    }

    fn on_server_hello(&mut self, ts_ns: u64, message: Message, out: &mut Vec<TlsEvent>) {
        let dir = Direction::ServerToClient;
        if message.too_large {
            let error = TlsError::Handshake("ServerHello too large to parse".into());
            return self.fail_connection(dir, error, out);
        }
        let hello = match handshake::parse_server_hello(&message.body) {
            Ok(hello) => hello,
            Err(e) => return self.fail_connection(dir, TlsError::Handshake(e.into()), out),
        };
        let version = TlsVersion::from_wire(hello.version);
        self.version = Some(version);
        self.cipher_suite = Some(hello.cipher_suite);
        if hello.hello_retry {
            if version != TlsVersion::Tls13 {
                let error = TlsError::Handshake("HelloRetryRequest without TLS 1.3".into());
                return self.fail_connection(dir, error, out);
            }
            self.hello_retry = true;
            out.push(TlsEvent::HelloRetryRequest { ts_ns });
            return;
        }
        if !matches!(version, TlsVersion::Tls12 | TlsVersion::Tls13) {
            let error =
                TlsError::Unsupported(format!("{version}: only TLS 1.2 and 1.3 are decrypted"));
            return self.fail_connection(dir, error, out);
        }
        let tls13 = version == TlsVersion::Tls13;
        let Some(suite) = suites::find(hello.cipher_suite).filter(|s| s.tls13 == tls13) else {
            let name = suites::cipher_suite_name(hello.cipher_suite)
                .map_or_else(|| format!("0x{:04x}", hello.cipher_suite), str::to_owned);
            let error = TlsError::Unsupported(format!("cipher suite {name} with {version}"));
            return self.fail_connection(dir, error, out);
        };
        if hello.compression != 0 {
            let error =
                TlsError::Unsupported(format!("TLS compression (method {})", hello.compression));
            return self.fail_connection(dir, error, out);
        }
        self.server_random = Some(hello.random);
        self.suite = Some(suite);
        out.push(TlsEvent::Negotiated {
            ts_ns,
            version,
            cipher_suite: suite.id,
        });
        // TLS 1.3 encrypts everything after the ServerHello.
        if tls13 && matches!(self.side(dir).protection, Protection::Plain) {
            self.enter_tls13(dir);
        }
    }
}

/// Alert records: (level, description) pairs.
fn on_alerts(dir: Direction, ts_ns: u64, data: &[u8], out: &mut Vec<TlsEvent>) {
    for pair in data.chunks(2) {
        if let [level, description] = *pair {
            out.push(TlsEvent::Alert {
                dir,
                ts_ns,
                level,
                description,
            });
        } else {
            out.push(TlsEvent::Error {
                dir,
                error: TlsError::Malformed("truncated alert".into()),
            });
        }
    }
    if data.is_empty() {
        out.push(TlsEvent::Error {
            dir,
            error: TlsError::Malformed("empty alert record".into()),
        });
    }
}
