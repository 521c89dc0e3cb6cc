//! RFC 6455 WebSocket decoding of one direction of a connection, from the plain bytes
//! of the reassembled (and, for TLS, decrypted) stream: the HTTP upgrade is checked and
//! skipped, then frames are unmasked and messages reassembled from their fragments.
//!
//! Timestamp rule: an event carries the capture time of the chunk fed when its last
//! byte arrived (what the receiver needed to act on it); a message also carries the
//! time of the chunk holding the first byte of its first frame.

use thiserror::Error;

use crate::http::find_head_end;

/// Which side sends the direction decoded: clients must mask their frames, servers
/// must not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsLimits {
    /// Largest message reassembled; larger ones are reported and skipped.
    pub max_message: usize,
    /// Largest upgrade request or response head.
    pub max_handshake: usize,
}

impl Default for WsLimits {
    fn default() -> Self {
        WsLimits {
            max_message: 16 << 20,
            max_handshake: 64 << 10,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlOpcode {
    Ping,
    Pong,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsEvent {
    /// A complete (reassembled, unmasked) data message.
    Message {
        ts_ns: u64,
        first_byte_ts_ns: u64,
        binary: bool,
        payload: Vec<u8>,
    },
    /// A ping or pong.
    Control {
        ts_ns: u64,
        opcode: ControlOpcode,
        payload: Vec<u8>,
    },
    /// A close frame: this direction ends. `reason` is decoded lossily.
    Close {
        ts_ns: u64,
        code: Option<u16>,
        reason: String,
    },
    Error(WsError),
}

/// What went wrong; `kind()` gives a stable label for counters.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WsError {
    /// The upgrade was missing or wrong: nothing more is decoded.
    #[error("websocket handshake: {0}")]
    Handshake(String),
    /// A frame breaking the protocol (reserved bits or opcodes, bad control frame,
    /// continuation without a message...): it is skipped, framing goes on.
    #[error("websocket frame: {0}")]
    Frame(String),
    /// A client frame without a mask or a server frame with one: the frame is skipped.
    #[error("websocket frame masking wrong for a {0:?} frame")]
    Mask(Role),
    /// RSV1 set (permessage-deflate), which ticklab never negotiates: the message is
    /// skipped, framing goes on.
    #[error("websocket compressed message (RSV1) skipped: compression is not negotiated")]
    Compressed,
    /// The message would exceed the limit: it is skipped, framing goes on.
    #[error("websocket message of at least {size} bytes exceeds {max}")]
    Oversize { size: u64, max: usize },
    /// A text message that is not UTF-8: it is dropped.
    #[error("websocket text message is not UTF-8")]
    InvalidUtf8,
    /// The transport lost bytes: framing is lost, nothing more is decoded.
    #[error("websocket stream has a gap: decoding stopped")]
    Gap,
    /// Bytes after the close frame, ignored.
    #[error("websocket bytes after the close frame")]
    AfterClose,
}

impl WsError {
    pub fn kind(&self) -> &'static str {
        match self {
            WsError::Handshake(_) => "websocket_handshake",
            WsError::Frame(_) => "websocket_frame",
            WsError::Mask(_) => "websocket_mask",
            WsError::Compressed => "websocket_compressed",
            WsError::Oversize { .. } => "websocket_oversize",
            WsError::InvalidUtf8 => "websocket_utf8",
            WsError::Gap => "websocket_gap",
            WsError::AfterClose => "websocket_after_close",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Handshake,
    Frames,
    /// A close frame was seen.
    Closed,
    /// Handshake failure, fatal frame, or gap: bytes are ignored.
    Stopped,
}

/// What to do with the payload of the frame being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// Append to the message being reassembled.
    Data,
    /// Part of a message being skipped (compressed or oversize).
    SkipMessage,
    /// A control frame, collected in `control`.
    Control(u8),
    /// A bad frame: skipped.
    Skip,
}

#[derive(Debug)]
struct Frame {
    fin: bool,
    mask: Option<[u8; 4]>,
    /// Payload bytes read so far (for the mask phase) and still to come.
    read: u64,
    remaining: u64,
    action: Action,
}

#[derive(Debug)]
struct Message {
    binary: bool,
    first_byte_ts_ns: u64,
    payload: Vec<u8>,
    /// Skipping the rest (compressed or oversize, already reported).
    skip: bool,
    /// Bytes counted for the size limit, skipped ones included.
    size: u64,
}

/// Decodes one direction of a WebSocket connection.
#[derive(Debug)]
pub struct WsDecoder {
    role: Role,
    limits: WsLimits,
    phase: Phase,
    /// The upgrade head while it arrives.
    head: Vec<u8>,
    header: [u8; 14],
    header_len: usize,
    header_first_ts: u64,
    frame: Option<Frame>,
    message: Option<Message>,
    control: Vec<u8>,
}

impl WsDecoder {
    /// A decoder for a stream that starts with the HTTP upgrade: the request (GET with
    /// Upgrade: websocket) for `Role::Client`, the 101 response for `Role::Server`.
    pub fn new(role: Role, limits: WsLimits) -> Self {
        WsDecoder {
            role,
            limits,
            phase: Phase::Handshake,
            head: Vec::new(),
            header: [0; 14],
            header_len: 0,
            header_first_ts: 0,
            frame: None,
            message: None,
            control: Vec::new(),
        }
    }

    /// A decoder for a stream known to start at a frame boundary after the upgrade.
    pub fn without_handshake(role: Role, limits: WsLimits) -> Self {
        WsDecoder {
            phase: Phase::Frames,
            ..WsDecoder::new(role, limits)
        }
    }

    /// Whether bytes are still decoded (no close frame, no fatal error, no gap).
    pub fn is_active(&self) -> bool {
        matches!(self.phase, Phase::Handshake | Phase::Frames)
    }

    /// The direction's bytes, in order, as captured at `ts_ns`.
    pub fn feed(&mut self, ts_ns: u64, bytes: &[u8], out: &mut Vec<WsEvent>) {
        let mut input = bytes;
        if self.phase == Phase::Handshake {
            let used = self.handshake(bytes, out);
            input = &input[used..];
        }
        while !input.is_empty() {
            match self.phase {
                Phase::Frames => {}
                Phase::Closed => {
                    out.push(WsEvent::Error(WsError::AfterClose));
                    // Said once: the rest is ignored.
                    self.phase = Phase::Stopped;
                    return;
                }
                Phase::Handshake | Phase::Stopped => return,
            }
            let used = if self.frame.is_none() {
                self.read_header(ts_ns, input, out)
            } else {
                self.read_payload(ts_ns, input, out)
            };
            input = &input[used..];
        }
    }

    /// The transport lost bytes: framing is lost. Says so once, then stops.
    pub fn gap(&mut self, out: &mut Vec<WsEvent>) {
        if self.phase != Phase::Stopped {
            out.push(WsEvent::Error(WsError::Gap));
            self.stop();
        }
    }

    fn stop(&mut self) {
        self.phase = Phase::Stopped;
        self.frame = None;
        self.message = None;
        self.head = Vec::new();
        self.control = Vec::new();
    }

    fn fail(&mut self, error: WsError, out: &mut Vec<WsEvent>) {
        out.push(WsEvent::Error(error));
        self.stop();
    }

    /// Accumulates the upgrade head; returns the bytes of `input` it used.
    fn handshake(&mut self, input: &[u8], out: &mut Vec<WsEvent>) -> usize {
        let old = self.head.len();
        let room = (self.limits.max_handshake + 4).saturating_sub(old);
        self.head.extend_from_slice(&input[..input.len().min(room)]);
        let Some(end) = find_head_end(&self.head, old.saturating_sub(3)) else {
            if self.head.len() > self.limits.max_handshake {
                let max = self.limits.max_handshake;
                self.fail(
                    WsError::Handshake(format!("head longer than {max} bytes")),
                    out,
                );
            }
            return input.len();
        };
        let used = end - old;
        let head = std::mem::take(&mut self.head);
        match check_upgrade(self.role, &head[..end]) {
            Ok(()) => self.phase = Phase::Frames,
            Err(reason) => self.fail(WsError::Handshake(reason), out),
        }
        used
    }

    /// Reads frame header bytes; starts the frame once complete.
    fn read_header(&mut self, ts_ns: u64, input: &[u8], out: &mut Vec<WsEvent>) -> usize {
        if self.header_len == 0 {
            self.header_first_ts = ts_ns;
        }
        let mut used = 0;
        loop {
            let need = header_size(&self.header[..self.header_len]);
            if self.header_len == need {
                break;
            }
            let take = (need - self.header_len).min(input.len() - used);
            if take == 0 {
                return used;
            }
            self.header[self.header_len..self.header_len + take]
                .copy_from_slice(&input[used..used + take]);
            self.header_len += take;
            used += take;
        }
        self.start_frame(ts_ns, out);
        used
    }

    fn start_frame(&mut self, ts_ns: u64, out: &mut Vec<WsEvent>) {
        let h = &self.header[..self.header_len];
        self.header_len = 0;
        let fin = h[0] & 0x80 != 0;
        let rsv1 = h[0] & 0x40 != 0;
        let rsv23 = h[0] & 0x30 != 0;
        let opcode = h[0] & 0x0f;
        let masked = h[1] & 0x80 != 0;
        // Non-minimal length encodings are tolerated: the value is what counts.
        let (len, rest) = match h[1] & 0x7f {
            126 => (u64::from(u16::from_be_bytes([h[2], h[3]])), &h[4..]),
            127 => {
                let mut b = [0; 8];
                b.copy_from_slice(&h[2..10]);
                (u64::from_be_bytes(b), &h[10..])
            }
            n => (u64::from(n), &h[2..]),
        };
        let mask = masked.then(|| [rest[0], rest[1], rest[2], rest[3]]);
        if len >> 63 != 0 {
            // Not a length any sender could mean: the framing is garbage.
            let error = WsError::Frame("64-bit length with the top bit set".into());
            self.fail(error, out);
            return;
        }
        let is_data = opcode < 8;
        let problem = if !matches!(opcode, 0..=2 | 8..=10) {
            Some(WsError::Frame(format!("reserved opcode {opcode}")))
        } else if masked != (self.role == Role::Client) {
            Some(WsError::Mask(self.role))
        } else if rsv23 {
            Some(WsError::Frame("RSV2 or RSV3 set".into()))
        } else if !is_data && (!fin || len > 125 || rsv1) {
            Some(WsError::Frame(format!(
                "control frame {opcode} fragmented, compressed or longer than 125 bytes"
            )))
        } else if opcode == 0 && self.message.is_none() {
            Some(WsError::Frame(
                "continuation frame without a message".into(),
            ))
        } else if opcode == 0 && rsv1 {
            Some(WsError::Frame("RSV1 set on a continuation frame".into()))
        } else {
            None
        };
        let action = if let Some(error) = problem {
            out.push(WsEvent::Error(error));
            if is_data {
                // The message this frame belonged to is broken.
                self.message = None;
            }
            Action::Skip
        } else if !is_data {
            self.control.clear();
            Action::Control(opcode)
        } else {
            if opcode != 0 {
                if self.message.take().is_some() {
                    out.push(WsEvent::Error(WsError::Frame(
                        "new message inside a fragmented one: the first is dropped".into(),
                    )));
                }
                self.message = Some(Message {
                    binary: opcode == 2,
                    first_byte_ts_ns: self.header_first_ts,
                    payload: Vec::new(),
                    skip: false,
                    size: 0,
                });
            }
            // Set just above or checked by `problem`.
            let Some(message) = self.message.as_mut() else {
                return;
            };
            message.size = message.size.saturating_add(len);
            if !message.skip {
                if rsv1 {
                    message.skip = true;
                    out.push(WsEvent::Error(WsError::Compressed));
                } else if message.size > self.limits.max_message as u64 {
                    message.skip = true;
                    out.push(WsEvent::Error(WsError::Oversize {
                        size: message.size,
                        max: self.limits.max_message,
                    }));
                }
                if message.skip {
                    message.payload = Vec::new();
                }
            }
            if message.skip {
                Action::SkipMessage
            } else {
                Action::Data
            }
        };
        self.frame = Some(Frame {
            fin,
            mask,
            read: 0,
            remaining: len,
            action,
        });
        if len == 0 {
            self.end_frame(ts_ns, out);
        }
    }

    fn read_payload(&mut self, ts_ns: u64, input: &[u8], out: &mut Vec<WsEvent>) -> usize {
        let Some(frame) = self.frame.as_mut() else {
            return 0;
        };
        let take = input
            .len()
            .min(usize::try_from(frame.remaining).unwrap_or(usize::MAX));
        let chunk = &input[..take];
        let target = match frame.action {
            Action::Data => self.message.as_mut().map(|m| &mut m.payload),
            Action::Control(_) => Some(&mut self.control),
            Action::SkipMessage | Action::Skip => None,
        };
        if let Some(target) = target {
            let from = target.len();
            target.extend_from_slice(chunk);
            if let Some(key) = frame.mask {
                let phase = (frame.read % 4) as usize;
                for (i, b) in target[from..].iter_mut().enumerate() {
                    *b ^= key[(phase + i) % 4];
                }
            }
        }
        frame.read += take as u64;
        frame.remaining -= take as u64;
        if frame.remaining == 0 {
            self.end_frame(ts_ns, out);
        }
        take
    }

    fn end_frame(&mut self, ts_ns: u64, out: &mut Vec<WsEvent>) {
        let Some(frame) = self.frame.take() else {
            return;
        };
        match frame.action {
            Action::Data if frame.fin => {
                let Some(m) = self.message.take() else {
                    return;
                };
                if !m.binary && std::str::from_utf8(&m.payload).is_err() {
                    out.push(WsEvent::Error(WsError::InvalidUtf8));
                } else {
                    out.push(WsEvent::Message {
                        ts_ns,
                        first_byte_ts_ns: m.first_byte_ts_ns,
                        binary: m.binary,
                        payload: m.payload,
                    });
                }
            }
            Action::SkipMessage if frame.fin => self.message = None,
            Action::Data | Action::SkipMessage | Action::Skip => {}
            Action::Control(opcode) => {
                let payload = std::mem::take(&mut self.control);
                let opcode = match opcode {
                    9 => ControlOpcode::Ping,
                    10 => ControlOpcode::Pong,
                    _ => {
                        self.close(ts_ns, &payload, out);
                        return;
                    }
                };
                out.push(WsEvent::Control {
                    ts_ns,
                    opcode,
                    payload,
                });
            }
        }
    }

    fn close(&mut self, ts_ns: u64, payload: &[u8], out: &mut Vec<WsEvent>) {
        let (code, reason) = match payload {
            [] => (None, String::new()),
            [_] => {
                out.push(WsEvent::Error(WsError::Frame(
                    "close frame with a 1-byte payload".into(),
                )));
                (None, String::new())
            }
            [a, b, reason @ ..] => (
                Some(u16::from_be_bytes([*a, *b])),
                String::from_utf8_lossy(reason).into_owned(),
            ),
        };
        out.push(WsEvent::Close {
            ts_ns,
            code,
            reason,
        });
        self.message = None;
        self.phase = Phase::Closed;
    }
}

/// Bytes of the frame header given its first bytes (2 until the second is known).
fn header_size(h: &[u8]) -> usize {
    match h {
        [_, b1, ..] => {
            let ext = match b1 & 0x7f {
                126 => 2,
                127 => 8,
                _ => 0,
            };
            2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 }
        }
        _ => 2,
    }
}

fn header_value<'a>(headers: &'a [httparse::Header<'a>], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

/// Whether a comma-separated header value lists `token` (case-insensitively).
fn has_token(value: Option<&[u8]>, token: &str) -> bool {
    value.is_some_and(|v| {
        v.split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// Checks the upgrade request or response head (complete, terminator included).
fn check_upgrade(role: Role, head: &[u8]) -> Result<(), String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let headers: &[httparse::Header] = match role {
        Role::Client => {
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(head) {
                Ok(httparse::Status::Complete(_)) => {}
                Ok(httparse::Status::Partial) => return Err("incomplete request head".into()),
                Err(e) => return Err(format!("request head: {e}")),
            }
            if req.method != Some("GET") {
                return Err(format!("method {:?}, not GET", req.method.unwrap_or("")));
            }
            if req.version != Some(1) {
                return Err("not HTTP/1.1".into());
            }
            let headers = req.headers;
            if header_value(headers, "sec-websocket-key").is_none() {
                return Err("no Sec-WebSocket-Key".into());
            }
            if header_value(headers, "sec-websocket-version").map(<[u8]>::trim_ascii) != Some(b"13")
            {
                return Err("Sec-WebSocket-Version is not 13".into());
            }
            headers
        }
        Role::Server => {
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(head) {
                Ok(httparse::Status::Complete(_)) => {}
                Ok(httparse::Status::Partial) => return Err("incomplete response head".into()),
                Err(e) => return Err(format!("response head: {e}")),
            }
            if resp.code != Some(101) {
                return Err(format!(
                    "status {}, not 101 Switching Protocols",
                    resp.code.unwrap_or(0)
                ));
            }
            let headers = resp.headers;
            if header_value(headers, "sec-websocket-accept").is_none() {
                return Err("no Sec-WebSocket-Accept".into());
            }
            headers
        }
    };
    if !has_token(header_value(headers, "upgrade"), "websocket") {
        return Err("no Upgrade: websocket".into());
    }
    if !has_token(header_value(headers, "connection"), "upgrade") {
        return Err("no Connection: Upgrade".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUEST: &[u8] = b"GET /feed HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    const RESPONSE: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

    fn frame(first: u8, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![first];
        let m = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n @ 0..=125 => v.push(m | n as u8),
            n @ 126..=65535 => {
                v.push(m | 126);
                v.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                v.push(m | 127);
                v.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if let Some(k) = mask {
            v.extend_from_slice(&k);
            v.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        } else {
            v.extend_from_slice(payload);
        }
        v
    }

    fn decode(role: Role, chunks: &[&[u8]]) -> Vec<WsEvent> {
        let mut d = WsDecoder::new(role, WsLimits::default());
        let mut out = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            d.feed(i as u64, c, &mut out);
        }
        out
    }

    #[test]
    fn handshake_then_masked_message() {
        let f = frame(0x82, Some([1, 2, 3, 4]), b"hello");
        let out = decode(Role::Client, &[REQUEST, &f[..3], &f[3..]]);
        assert_eq!(
            out,
            vec![WsEvent::Message {
                ts_ns: 2,
                first_byte_ts_ns: 1,
                binary: true,
                payload: b"hello".to_vec()
            }]
        );
    }

    #[test]
    fn handshake_and_frames_in_one_chunk() {
        let mut s = RESPONSE.to_vec();
        s.extend(frame(0x81, None, b"hi"));
        assert_eq!(
            decode(Role::Server, &[&s]),
            vec![WsEvent::Message {
                ts_ns: 0,
                first_byte_ts_ns: 0,
                binary: false,
                payload: b"hi".to_vec()
            }]
        );
    }

    #[test]
    fn non_101_stops() {
        let mut s = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n".to_vec();
        s.extend(frame(0x81, None, b"hi"));
        let out = decode(Role::Server, &[&s]);
        assert_eq!(out.len(), 1);
        assert!(matches!(&out[0], WsEvent::Error(e) if e.kind() == "websocket_handshake"));
    }

    #[test]
    fn request_without_upgrade_is_rejected() {
        let out = decode(Role::Client, &[b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"]);
        assert!(matches!(&out[..], [WsEvent::Error(WsError::Handshake(_))]));
    }

    #[test]
    fn oversize_handshake_is_rejected() {
        let mut d = WsDecoder::new(
            Role::Server,
            WsLimits {
                max_handshake: 100,
                ..WsLimits::default()
            },
        );
        let mut out = Vec::new();
        for _ in 0..100 {
            d.feed(0, b"HTTP/1.1 101 x\r\nX: aaaaaaaaaaaaaaaaa", &mut out);
        }
        assert_eq!(out.len(), 1);
        assert!(!d.is_active());
    }

    #[test]
    fn lengths_of_all_three_sizes_and_non_minimal() {
        let mut d = WsDecoder::without_handshake(Role::Server, WsLimits::default());
        let mut out = Vec::new();
        let big = vec![7u8; 70_000];
        let mid = vec![8u8; 300];
        d.feed(0, &frame(0x82, None, &big), &mut out);
        d.feed(1, &frame(0x82, None, &mid), &mut out);
        // "abc" with a 16-bit length, then with a 64-bit one.
        d.feed(2, &[0x82, 126, 0, 3, b'a', b'b', b'c'], &mut out);
        d.feed(
            3,
            &[0x82, 127, 0, 0, 0, 0, 0, 0, 0, 3, b'a', b'b', b'c'],
            &mut out,
        );
        let lens: Vec<usize> = out
            .iter()
            .map(|e| match e {
                WsEvent::Message { payload, .. } => payload.len(),
                _ => 0,
            })
            .collect();
        assert_eq!(lens, vec![70_000, 300, 3, 3]);
    }

    #[test]
    fn compressed_message_is_skipped_and_framing_continues() {
        let mut s = frame(0x42, None, b"zz"); // RSV1, binary, not final
        s.extend(frame(0x00, None, b"zz"));
        s.extend(frame(0x89, None, b"p")); // ping between the fragments
        s.extend(frame(0x80, None, b"zz"));
        s.extend(frame(0x82, None, b"ok"));
        let mut d = WsDecoder::without_handshake(Role::Server, WsLimits::default());
        let mut out = Vec::new();
        d.feed(5, &s, &mut out);
        assert_eq!(
            out,
            vec![
                WsEvent::Error(WsError::Compressed),
                WsEvent::Control {
                    ts_ns: 5,
                    opcode: ControlOpcode::Ping,
                    payload: b"p".to_vec()
                },
                WsEvent::Message {
                    ts_ns: 5,
                    first_byte_ts_ns: 5,
                    binary: true,
                    payload: b"ok".to_vec()
                }
            ]
        );
    }

    #[test]
    fn oversize_message_is_skipped_by_length() {
        let mut d = WsDecoder::without_handshake(
            Role::Client,
            WsLimits {
                max_message: 10,
                ..WsLimits::default()
            },
        );
        let mut out = Vec::new();
        let k = Some([9, 9, 9, 9]);
        let mut s = frame(0x02, k, b"123456");
        s.extend(frame(0x80, k, b"789012"));
        s.extend(frame(0x82, k, &[b'x'; 11]));
        s.extend(frame(0x82, k, b"fine"));
        d.feed(1, &s, &mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(
            out[0].clone(),
            WsEvent::Error(WsError::Oversize { size: 12, max: 10 })
        );
        assert!(matches!(&out[1], WsEvent::Error(e) if e.kind() == "websocket_oversize"));
        assert!(matches!(&out[2], WsEvent::Message { payload, .. } if payload == b"fine"));
    }

    #[test]
    fn protocol_errors_skip_the_frame() {
        let mut s = frame(0x83, None, b"bad opcode");
        s.extend(frame(0x82, Some([1, 1, 1, 1]), b"masked from server"));
        s.extend(frame(0xa2, None, b"rsv2"));
        s.extend(frame(0x80, None, b"orphan continuation"));
        s.extend(frame(0x09, None, b"fragmented ping"));
        s.extend(frame(0x82, None, b"ok"));
        let mut d = WsDecoder::without_handshake(Role::Server, WsLimits::default());
        let mut out = Vec::new();
        d.feed(1, &s, &mut out);
        let kinds: Vec<&str> = out
            .iter()
            .map(|e| match e {
                WsEvent::Error(e) => e.kind(),
                _ => "event",
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "websocket_frame",
                "websocket_mask",
                "websocket_frame",
                "websocket_frame",
                "websocket_frame",
                "event"
            ]
        );
    }

    #[test]
    fn unmasked_client_frame_is_an_error() {
        let mut d = WsDecoder::without_handshake(Role::Client, WsLimits::default());
        let mut out = Vec::new();
        d.feed(1, &frame(0x82, None, b"x"), &mut out);
        assert_eq!(out, vec![WsEvent::Error(WsError::Mask(Role::Client))]);
    }

    #[test]
    fn close_then_after_close() {
        let mut s = frame(0x88, None, &[0x03, 0xe8, b'b', b'y', b'e']);
        s.extend(frame(0x82, None, b"late"));
        let mut d = WsDecoder::without_handshake(Role::Server, WsLimits::default());
        let mut out = Vec::new();
        d.feed(3, &s, &mut out);
        d.feed(4, b"more", &mut out);
        assert_eq!(
            out,
            vec![
                WsEvent::Close {
                    ts_ns: 3,
                    code: Some(1000),
                    reason: "bye".into()
                },
                WsEvent::Error(WsError::AfterClose)
            ]
        );
    }

    #[test]
    fn invalid_utf8_text_is_dropped() {
        let mut d = WsDecoder::without_handshake(Role::Server, WsLimits::default());
        let mut out = Vec::new();
        d.feed(1, &frame(0x81, None, &[0xff, 0xfe]), &mut out);
        assert_eq!(out, vec![WsEvent::Error(WsError::InvalidUtf8)]);
    }

    #[test]
    fn gap_is_said_once_then_stops() {
        let mut d = WsDecoder::without_handshake(Role::Server, WsLimits::default());
        let mut out = Vec::new();
        d.feed(1, &frame(0x82, None, b"abc")[..3], &mut out);
        d.gap(&mut out);
        d.gap(&mut out);
        d.feed(2, &frame(0x82, None, b"abc"), &mut out);
        assert_eq!(out, vec![WsEvent::Error(WsError::Gap)]);
    }

    #[test]
    fn huge_length_with_top_bit_stops() {
        let mut d = WsDecoder::without_handshake(Role::Server, WsLimits::default());
        let mut out = Vec::new();
        d.feed(
            1,
            &[0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3],
            &mut out,
        );
        assert!(matches!(&out[..], [WsEvent::Error(WsError::Frame(_))]));
        assert!(!d.is_active());
    }
}
