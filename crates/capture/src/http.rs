//! HTTP/1.1 decoding of one direction of a connection (requests from the client, or
//! responses from the server), from the plain bytes of the reassembled (and, for TLS,
//! decrypted) stream: heads, Content-Length and chunked bodies, pipelining, interim
//! responses, and resynchronisation after lost bytes.
//!
//! Timestamp rule: a message carries the capture time of the chunk holding its first
//! byte (an order "leaves" then) and of the chunk that completed it (its last body byte,
//! the end of its chunked trailers, or the end of its head when it has no body).
//!
//! Resynchronisation: after a gap or an error that loses the framing, bytes are skipped
//! until a line that begins with a method name and a space (GET, POST, PUT, DELETE,
//! PATCH, HEAD, OPTIONS, CONNECT, TRACE) for requests, or "HTTP/1.1 " / "HTTP/1.0 " for
//! responses; decoding resumes there and `HttpStats::resyncs` counts it. The start of
//! each chunk fed while resynchronising also counts as a line start: chunks are TCP
//! segments, and a message following a Content-Length body (which does not end with a
//! line end) usually starts a segment. A message that starts neither a line nor a
//! segment is missed; a chunk starting with such a word inside a body gives a false
//! start, which its head then fails (an error, and resynchronisation again).
//!
//! Limits of a one-direction view: a response to HEAD (or a 2xx to CONNECT) is read as
//! if its Content-Length framed a body, and a request sent with `Expect: 100-continue`
//! whose body the client then never sends is not recognised: both desynchronise until
//! the next recognisable line.

use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpRole {
    /// The client's direction: requests.
    Requests,
    /// The server's direction: responses.
    Responses,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Largest head (request or status line and headers, blank line included), and
    /// largest block of chunked trailers.
    pub max_header: usize,
    /// Largest body kept; larger ones are reported and skipped.
    pub max_body: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_header: 64 << 10,
            max_body: 1 << 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpEvent {
    Request {
        ts_ns: u64,
        first_byte_ts_ns: u64,
        method: String,
        path: String,
        body: Vec<u8>,
    },
    /// A final response (1xx interim responses are skipped, except 101, which ends
    /// HTTP on this direction: it is reported and what follows is ignored).
    Response {
        ts_ns: u64,
        first_byte_ts_ns: u64,
        status: u16,
        body: Vec<u8>,
    },
    Error(HttpError),
}

/// What went wrong; `kind()` gives a stable label for counters.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HttpError {
    /// A head httparse rejects, or framing headers that contradict each other.
    #[error("http header: {0}")]
    Header(String),
    /// A body whose framing is broken (chunk sizes, a request body of unknown length).
    #[error("http body: {0}")]
    Body(String),
    #[error("http head or trailers longer than {limit} bytes")]
    HeaderOversize { limit: usize },
    /// The message is skipped by its length; decoding goes on after it.
    #[error("http body of at least {size} bytes exceeds {limit}")]
    BodyOversize { size: u64, limit: usize },
    /// Bytes were lost: the message in progress is dropped, decoding resynchronises.
    #[error("http stream has a gap")]
    Gap,
    /// The stream ended inside a message.
    #[error("http stream ended inside a message")]
    Truncated,
}

impl HttpError {
    pub fn kind(&self) -> &'static str {
        match self {
            HttpError::Header(_) => "http_header",
            HttpError::Body(_) => "http_body",
            HttpError::HeaderOversize { .. } | HttpError::BodyOversize { .. } => "http_oversize",
            HttpError::Gap => "http_gap",
            HttpError::Truncated => "http_truncated",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HttpStats {
    /// Requests or final responses decoded (events emitted).
    pub messages: u64,
    /// 1xx responses skipped (101 excluded).
    pub interim_responses: u64,
    /// Error events, gaps included.
    pub errors: u64,
    pub gaps: u64,
    /// Times decoding resumed at a recognised line after a gap or an error.
    pub resyncs: u64,
    /// Bytes skipped while looking for such a line.
    pub resync_skipped_bytes: u64,
}

/// Longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;
/// Headers httparse is given room for.
const MAX_HEADERS: usize = 128;

const REQUEST_STARTS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"PATCH ",
    b"HEAD ",
    b"OPTIONS ",
    b"CONNECT ",
    b"TRACE ",
];
const RESPONSE_STARTS: &[&[u8]] = &[b"HTTP/1.1 ", b"HTTP/1.0 "];
const LONGEST_START: usize = 9;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Between messages: blank lines are skipped.
    Idle,
    Head,
    Body {
        remaining: u64,
    },
    ChunkSize,
    ChunkData {
        remaining: u64,
    },
    ChunkDataEnd {
        seen_cr: bool,
    },
    Trailers,
    /// A response body delimited by the end of the connection.
    UntilClose,
    /// Looking for a message start; `at_line_start` says whether the next byte begins
    /// a line. A candidate cut by the end of a chunk waits in `line`.
    Resync {
        at_line_start: bool,
    },
    /// After 101 Switching Protocols: no more HTTP.
    Upgraded,
}

#[derive(Debug)]
enum Kind {
    Request { method: String, path: String },
    Response { status: u16 },
}

#[derive(Debug)]
struct Pending {
    kind: Kind,
    first_byte_ts_ns: u64,
    body: Vec<u8>,
    /// Over the body limit (reported): the body is skipped and no event emitted.
    oversize: bool,
}

/// Decodes one direction of an HTTP/1.x connection.
#[derive(Debug)]
pub struct HttpDecoder {
    role: HttpRole,
    limits: HttpLimits,
    phase: Phase,
    /// The head while it arrives; where the search for its end got to.
    head: Vec<u8>,
    scanned: usize,
    head_first_ts: u64,
    message: Option<Pending>,
    /// A chunk-size or trailer line while it arrives, or a resync candidate.
    line: Vec<u8>,
    line_ts: u64,
    trailer_bytes: usize,
    stats: HttpStats,
}

/// Where an HTTP head ends in `buf` (the index after its blank line), searching line
/// ends from `from`. Bare LF line ends are accepted as httparse accepts them.
pub(crate) fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(p) = buf.get(i..)?.iter().position(|&b| b == b'\n') {
        let lf = i + p;
        match buf.get(lf + 1..) {
            Some([b'\n', ..]) => return Some(lf + 2),
            Some([b'\r', b'\n', ..]) => return Some(lf + 3),
            _ => i = lf + 1,
        }
    }
    None
}

fn header_values<'a>(
    headers: &'a [httparse::Header<'a>],
    name: &'a str,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
}

#[derive(Debug, PartialEq, Eq)]
enum Framing {
    Chunked,
    Length(u64),
    /// No body framing given.
    Unspecified,
    /// Transfer-Encoding without chunked last.
    OtherEncoding,
}

fn framing(headers: &[httparse::Header]) -> Result<Framing, HttpError> {
    if let Some(last) = header_values(headers, "transfer-encoding").last() {
        return Ok(if last.eq_ignore_ascii_case(b"chunked") {
            Framing::Chunked
        } else {
            Framing::OtherEncoding
        });
    }
    let mut length = None;
    for v in header_values(headers, "content-length") {
        let n = std::str::from_utf8(v)
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| HttpError::Header("invalid Content-Length".into()))?;
        if length.is_some_and(|l| l != n) {
            return Err(HttpError::Header("conflicting Content-Length".into()));
        }
        length = Some(n);
    }
    Ok(length.map_or(Framing::Unspecified, Framing::Length))
}

enum Candidate {
    /// Begins with a start of this length.
    Full(usize),
    Partial,
    No,
}

fn classify(starts: &[&[u8]], cand: &[u8]) -> Candidate {
    let mut partial = false;
    for s in starts {
        if cand.len() >= s.len() {
            if cand.starts_with(s) {
                return Candidate::Full(s.len());
            }
        } else if s.starts_with(cand) {
            partial = true;
        }
    }
    if partial {
        Candidate::Partial
    } else {
        Candidate::No
    }
}

impl HttpDecoder {
    pub fn new(role: HttpRole, limits: HttpLimits) -> Self {
        HttpDecoder {
            role,
            limits,
            phase: Phase::Idle,
            head: Vec::new(),
            scanned: 0,
            head_first_ts: 0,
            message: None,
            line: Vec::new(),
            line_ts: 0,
            trailer_bytes: 0,
            stats: HttpStats::default(),
        }
    }

    pub fn stats(&self) -> HttpStats {
        self.stats
    }

    /// The direction's bytes, in order, as captured at `ts_ns`.
    pub fn feed(&mut self, ts_ns: u64, bytes: &[u8], out: &mut Vec<HttpEvent>) {
        let mut input = bytes;
        if let Phase::Resync { .. } = self.phase {
            // A chunk (segment) start is a candidate message start.
            self.phase = Phase::Resync {
                at_line_start: true,
            };
        }
        // Every step consumes bytes or changes the phase to one that will.
        while !input.is_empty() {
            let used = match self.phase {
                Phase::Idle => {
                    let blank = input
                        .iter()
                        .take_while(|&&b| b == b'\r' || b == b'\n')
                        .count();
                    if blank < input.len() {
                        self.phase = Phase::Head;
                        self.head_first_ts = ts_ns;
                        self.head.clear();
                        self.scanned = 0;
                    }
                    blank
                }
                Phase::Head => self.read_head(ts_ns, input, out),
                Phase::Body { remaining } => {
                    let take = self.take_body(input, remaining, out);
                    if take as u64 == remaining {
                        self.complete(ts_ns, out);
                    } else {
                        self.phase = Phase::Body {
                            remaining: remaining - take as u64,
                        };
                    }
                    take
                }
                Phase::ChunkSize => self.read_chunk_size(input, out),
                Phase::ChunkData { remaining } => {
                    let take = self.take_body(input, remaining, out);
                    self.phase = if take as u64 == remaining {
                        Phase::ChunkDataEnd { seen_cr: false }
                    } else {
                        Phase::ChunkData {
                            remaining: remaining - take as u64,
                        }
                    };
                    take
                }
                Phase::ChunkDataEnd { seen_cr } => match input[0] {
                    b'\r' if !seen_cr => {
                        self.phase = Phase::ChunkDataEnd { seen_cr: true };
                        1
                    }
                    b'\n' => {
                        self.phase = Phase::ChunkSize;
                        self.line.clear();
                        1
                    }
                    _ => {
                        let error = HttpError::Body("chunk data not followed by CRLF".into());
                        self.desync(error, false, out);
                        0
                    }
                },
                Phase::Trailers => self.read_trailers(ts_ns, input, out),
                Phase::UntilClose => self.take_body(input, u64::MAX, out),
                Phase::Resync { at_line_start } => self.resync(ts_ns, input, at_line_start),
                Phase::Upgraded => input.len(),
            };
            input = &input[used..];
        }
    }

    /// The transport lost bytes: the message in progress is dropped (reported), and
    /// decoding resynchronises at the next message start.
    pub fn gap(&mut self, out: &mut Vec<HttpEvent>) {
        if self.phase == Phase::Upgraded {
            return;
        }
        self.stats.gaps += 1;
        self.desync(HttpError::Gap, true, out);
    }

    /// The direction ended (FIN) at `ts_ns`: completes a response delimited by the end
    /// of the connection, reports a message cut short.
    pub fn end(&mut self, ts_ns: u64, out: &mut Vec<HttpEvent>) {
        match self.phase {
            Phase::UntilClose => self.complete(ts_ns, out),
            Phase::Idle | Phase::Resync { .. } | Phase::Upgraded => {}
            _ => {
                self.stats.errors += 1;
                out.push(HttpEvent::Error(HttpError::Truncated));
                self.message = None;
            }
        }
        self.phase = Phase::Idle;
    }

    /// Reports `error`, drops the message in progress and looks for the next start.
    fn desync(&mut self, error: HttpError, at_line_start: bool, out: &mut Vec<HttpEvent>) {
        self.stats.errors += 1;
        out.push(HttpEvent::Error(error));
        self.message = None;
        self.head.clear();
        self.line.clear();
        self.phase = Phase::Resync { at_line_start };
    }

    fn read_head(&mut self, ts_ns: u64, input: &[u8], out: &mut Vec<HttpEvent>) -> usize {
        let old = self.head.len();
        let room = self.limits.max_header.saturating_sub(old);
        let take = input.len().min(room);
        self.head.extend_from_slice(&input[..take]);
        if let Some(end) = find_head_end(&self.head, self.scanned.saturating_sub(3)) {
            let head = std::mem::take(&mut self.head);
            self.parse_head(ts_ns, &head[..end], out);
            // Keep the allocation for the next head.
            self.head = head;
            self.head.clear();
            // The end is past `old`: the bytes held before hold no head end (they were
            // scanned, or are a message start without a line end).
            return end.saturating_sub(old);
        }
        self.scanned = self.head.len();
        if self.head.len() >= self.limits.max_header {
            let at_line_start = self.head.last() == Some(&b'\n');
            let limit = self.limits.max_header;
            self.desync(HttpError::HeaderOversize { limit }, at_line_start, out);
            // Release what an attacker made us hold.
            self.head = Vec::new();
        }
        take
    }

    fn parse_head(&mut self, ts_ns: u64, head: &[u8], out: &mut Vec<HttpEvent>) {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let parsed = match self.role {
            HttpRole::Requests => {
                let mut req = httparse::Request::new(&mut headers);
                match req.parse(head) {
                    Ok(httparse::Status::Complete(_)) => {
                        let kind = Kind::Request {
                            method: req.method.unwrap_or_default().to_owned(),
                            path: req.path.unwrap_or_default().to_owned(),
                        };
                        framing(req.headers).map(|f| (kind, f))
                    }
                    Ok(httparse::Status::Partial) => {
                        Err(HttpError::Header("incomplete request head".into()))
                    }
                    Err(e) => Err(HttpError::Header(format!("request head: {e}"))),
                }
            }
            HttpRole::Responses => {
                let mut resp = httparse::Response::new(&mut headers);
                match resp.parse(head) {
                    Ok(httparse::Status::Complete(_)) => {
                        let kind = Kind::Response {
                            status: resp.code.unwrap_or_default(),
                        };
                        framing(resp.headers).map(|f| (kind, f))
                    }
                    Ok(httparse::Status::Partial) => {
                        Err(HttpError::Header("incomplete response head".into()))
                    }
                    Err(e) => Err(HttpError::Header(format!("response head: {e}"))),
                }
            }
        };
        let (kind, framing) = match parsed {
            Ok(p) => p,
            Err(error) => {
                // The bad head is skipped whole: its lines are not candidates.
                self.desync(error, true, out);
                return;
            }
        };
        let status = match kind {
            Kind::Response { status } => Some(status),
            Kind::Request { .. } => None,
        };
        self.message = Some(Pending {
            kind,
            first_byte_ts_ns: self.head_first_ts,
            body: Vec::new(),
            oversize: false,
        });
        match (status, framing) {
            (Some(101), _) => {
                self.complete(ts_ns, out);
                self.phase = Phase::Upgraded;
            }
            (Some(100..=199), _) => {
                self.stats.interim_responses += 1;
                self.message = None;
                self.phase = Phase::Idle;
            }
            (Some(204 | 304), _) | (None, Framing::Unspecified) | (_, Framing::Length(0)) => {
                self.complete(ts_ns, out)
            }
            (_, Framing::Chunked) => {
                self.line.clear();
                self.phase = Phase::ChunkSize;
            }
            (_, Framing::Length(n)) => {
                self.check_body_size(n, out);
                self.phase = Phase::Body { remaining: n };
            }
            (Some(_), Framing::Unspecified | Framing::OtherEncoding) => {
                self.phase = Phase::UntilClose;
            }
            (None, Framing::OtherEncoding) => {
                let error = HttpError::Body("request Transfer-Encoding without chunked".into());
                self.desync(error, true, out);
            }
        }
    }

    /// Marks the message oversize (once, reported) if `more` body bytes would exceed
    /// the limit.
    fn check_body_size(&mut self, more: u64, out: &mut Vec<HttpEvent>) {
        let limit = self.limits.max_body;
        if let Some(m) = self.message.as_mut()
            && !m.oversize
        {
            let size = (m.body.len() as u64).saturating_add(more);
            if size > limit as u64 {
                m.oversize = true;
                m.body = Vec::new();
                self.stats.errors += 1;
                out.push(HttpEvent::Error(HttpError::BodyOversize { size, limit }));
            }
        }
    }

    /// Takes up to `remaining` body bytes, kept unless the message is oversize.
    fn take_body(&mut self, input: &[u8], remaining: u64, out: &mut Vec<HttpEvent>) -> usize {
        let take = input
            .len()
            .min(usize::try_from(remaining).unwrap_or(usize::MAX));
        if self.phase == Phase::UntilClose {
            self.check_body_size(take as u64, out);
        }
        if let Some(m) = self.message.as_mut()
            && !m.oversize
        {
            m.body.extend_from_slice(&input[..take]);
        }
        take
    }

    /// Reads a line into `line`, up to `max` bytes; returns the bytes used and whether
    /// the line is complete, or None when it is too long.
    fn read_line(&mut self, input: &[u8], max: usize) -> Option<(usize, bool)> {
        let (used, complete) = match input.iter().position(|&b| b == b'\n') {
            Some(p) => (p + 1, true),
            None => (input.len(), false),
        };
        if self.line.len() + used > max {
            return None;
        }
        self.line.extend_from_slice(&input[..used]);
        Some((used, complete))
    }

    fn read_chunk_size(&mut self, input: &[u8], out: &mut Vec<HttpEvent>) -> usize {
        let Some((used, complete)) = self.read_line(input, MAX_CHUNK_LINE) else {
            let error = HttpError::Body("chunk size line too long".into());
            self.desync(error, false, out);
            return 0;
        };
        if !complete {
            return used;
        }
        match httparse::parse_chunk_size(&self.line) {
            Ok(httparse::Status::Complete((_, 0))) => {
                self.line.clear();
                self.trailer_bytes = 0;
                self.phase = Phase::Trailers;
            }
            Ok(httparse::Status::Complete((_, size))) => {
                self.line.clear();
                self.check_body_size(size, out);
                self.phase = Phase::ChunkData { remaining: size };
            }
            Ok(httparse::Status::Partial) | Err(_) => {
                let error = HttpError::Body("invalid chunk size line".into());
                self.desync(error, true, out);
            }
        }
        used
    }

    fn read_trailers(&mut self, ts_ns: u64, input: &[u8], out: &mut Vec<HttpEvent>) -> usize {
        let room = self.limits.max_header.saturating_sub(self.trailer_bytes);
        let Some((used, complete)) = self.read_line(input, room) else {
            let limit = self.limits.max_header;
            self.desync(HttpError::HeaderOversize { limit }, false, out);
            return 0;
        };
        self.trailer_bytes += used;
        if complete {
            if matches!(&self.line[..], b"\r\n" | b"\n") {
                self.complete(ts_ns, out);
            }
            self.line.clear();
        }
        used
    }

    fn complete(&mut self, ts_ns: u64, out: &mut Vec<HttpEvent>) {
        self.phase = Phase::Idle;
        let Some(m) = self.message.take() else {
            return;
        };
        if m.oversize {
            return;
        }
        self.stats.messages += 1;
        out.push(match m.kind {
            Kind::Request { method, path } => HttpEvent::Request {
                ts_ns,
                first_byte_ts_ns: m.first_byte_ts_ns,
                method,
                path,
                body: m.body,
            },
            Kind::Response { status } => HttpEvent::Response {
                ts_ns,
                first_byte_ts_ns: m.first_byte_ts_ns,
                status,
                body: m.body,
            },
        });
    }

    fn starts(&self) -> &'static [&'static [u8]] {
        match self.role {
            HttpRole::Requests => REQUEST_STARTS,
            HttpRole::Responses => RESPONSE_STARTS,
        }
    }

    /// Skips to the next line starting a message; returns the bytes used.
    fn resync(&mut self, ts_ns: u64, input: &[u8], at_line_start: bool) -> usize {
        let starts = self.starts();
        if !self.line.is_empty() {
            // A candidate cut by the end of the previous chunk: complete it.
            let take = LONGEST_START
                .saturating_sub(self.line.len())
                .min(input.len());
            self.line.extend_from_slice(&input[..take]);
            match classify(starts, &self.line) {
                Candidate::Full(len) => {
                    // Only the start itself moves to the head (the bytes after it are
                    // read as head bytes): the start holds no line end, so the search
                    // for the head's end stays within new bytes. It is longer than
                    // what was held (else that would have matched already).
                    let held = self.line.len() - take;
                    let take = len.saturating_sub(held);
                    self.line.truncate(len);
                    self.head = std::mem::take(&mut self.line);
                    self.scanned = 0;
                    self.head_first_ts = self.line_ts;
                    self.stats.resyncs += 1;
                    self.phase = Phase::Head;
                    return take;
                }
                Candidate::Partial => return take,
                Candidate::No => {
                    // Candidates hold no line end, so the next one is at the start of
                    // this chunk (this runs first in a feed) or after a later LF:
                    // these bytes are scanned again.
                    self.stats.resync_skipped_bytes += (self.line.len() - take) as u64;
                    self.line.clear();
                    self.phase = Phase::Resync {
                        at_line_start: true,
                    };
                    return 0;
                }
            }
        }
        let mut pos = 0;
        let mut at_start = at_line_start;
        loop {
            let candidate = if at_start {
                pos
            } else {
                match input[pos..].iter().position(|&b| b == b'\n') {
                    Some(p) => pos + p + 1,
                    None => {
                        self.stats.resync_skipped_bytes += input.len() as u64;
                        self.phase = Phase::Resync {
                            at_line_start: input.last() == Some(&b'\n'),
                        };
                        return input.len();
                    }
                }
            };
            if candidate == input.len() {
                self.stats.resync_skipped_bytes += input.len() as u64;
                self.phase = Phase::Resync {
                    at_line_start: true,
                };
                return input.len();
            }
            let end = input.len().min(candidate + LONGEST_START);
            match classify(starts, &input[candidate..end]) {
                Candidate::Full(_) => {
                    self.stats.resync_skipped_bytes += candidate as u64;
                    self.stats.resyncs += 1;
                    self.head.clear();
                    self.scanned = 0;
                    self.head_first_ts = ts_ns;
                    self.phase = Phase::Head;
                    return candidate;
                }
                Candidate::Partial => {
                    self.stats.resync_skipped_bytes += candidate as u64;
                    self.line.clear();
                    self.line.extend_from_slice(&input[candidate..]);
                    self.line_ts = ts_ns;
                    return input.len();
                }
                Candidate::No => {
                    pos = candidate;
                    at_start = false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(role: HttpRole, chunks: &[&[u8]]) -> (Vec<HttpEvent>, HttpDecoder) {
        let mut d = HttpDecoder::new(role, HttpLimits::default());
        let mut out = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            d.feed(i as u64 + 1, c, &mut out);
        }
        (out, d)
    }

    fn request(ts_ns: u64, first: u64, method: &str, path: &str, body: &[u8]) -> HttpEvent {
        HttpEvent::Request {
            ts_ns,
            first_byte_ts_ns: first,
            method: method.into(),
            path: path.into(),
            body: body.to_vec(),
        }
    }

    fn response(ts_ns: u64, first: u64, status: u16, body: &[u8]) -> HttpEvent {
        HttpEvent::Response {
            ts_ns,
            first_byte_ts_ns: first,
            status,
            body: body.to_vec(),
        }
    }

    #[test]
    fn head_end() {
        assert_eq!(find_head_end(b"a\r\n\r\nb", 0), Some(5));
        assert_eq!(find_head_end(b"a\n\nb", 0), Some(3));
        assert_eq!(find_head_end(b"a\r\nb\r\n", 0), None);
        assert_eq!(find_head_end(b"a\r\n\r", 0), None);
    }

    #[test]
    fn content_length_across_chunks_with_both_times() {
        let (out, _) = decode(
            HttpRole::Requests,
            &[
                b"POST /orders HTTP/1.1\r\nContent-Le",
                b"ngth: 7\r\n\r\n{\"a\"",
                b":1}",
            ],
        );
        assert_eq!(out, vec![request(3, 1, "POST", "/orders", b"{\"a\":1}")]);
    }

    #[test]
    fn pipelined_with_leading_blank_line() {
        let s = b"\r\nGET /a HTTP/1.1\r\n\r\nPOST /orders HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}DELETE /orders/1 HTTP/1.1\r\nHost: x\r\n\r\n";
        let (out, d) = decode(HttpRole::Requests, &[s]);
        assert_eq!(
            out,
            vec![
                request(1, 1, "GET", "/a", b""),
                request(1, 1, "POST", "/orders", b"{}"),
                request(1, 1, "DELETE", "/orders/1", b"")
            ]
        );
        assert_eq!(d.stats().messages, 3);
    }

    #[test]
    fn chunked_with_extensions_and_trailers() {
        let s: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nX-Trailer: 1\r\nY: 2\r\n\r\n";
        for cut in 0..s.len() {
            let (out, _) = decode(HttpRole::Responses, &[&s[..cut], &s[cut..]]);
            assert_eq!(
                out,
                vec![response(2, if cut == 0 { 2 } else { 1 }, 200, b"Wikipedia")]
            );
        }
    }

    #[test]
    fn interim_responses_are_skipped_and_no_body_statuses() {
        let s = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\nHTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nHTTP/1.1 304 Not Modified\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let (out, d) = decode(HttpRole::Responses, &[s]);
        assert_eq!(
            out,
            vec![
                response(1, 1, 204, b""),
                response(1, 1, 304, b""),
                response(1, 1, 200, b"ok")
            ]
        );
        assert_eq!(d.stats().interim_responses, 2);
    }

    #[test]
    fn until_close_body_completes_at_end() {
        let mut d = HttpDecoder::new(HttpRole::Responses, HttpLimits::default());
        let mut out = Vec::new();
        d.feed(1, b"HTTP/1.0 200 OK\r\n\r\nall of ", &mut out);
        d.feed(2, b"it", &mut out);
        assert!(out.is_empty());
        d.end(3, &mut out);
        assert_eq!(out, vec![response(3, 1, 200, b"all of it")]);
    }

    #[test]
    fn switching_protocols_ends_http() {
        let (out, _) = decode(
            HttpRole::Responses,
            &[b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x82\x02hi"],
        );
        assert_eq!(out, vec![response(1, 1, 101, b"")]);
    }

    #[test]
    fn oversize_body_is_skipped_by_length() {
        let mut d = HttpDecoder::new(
            HttpRole::Requests,
            HttpLimits {
                max_body: 4,
                ..HttpLimits::default()
            },
        );
        let mut out = Vec::new();
        d.feed(
            1,
            b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\n12345POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\nPOST /c HTTP/1.1\r\nContent-Length: 4\r\n\r\n1234",
            &mut out,
        );
        let kinds: Vec<&str> = out
            .iter()
            .map(|e| match e {
                HttpEvent::Error(e) => e.kind(),
                _ => "message",
            })
            .collect();
        assert_eq!(kinds, ["http_oversize", "http_oversize", "message"]);
        assert_eq!(out[2], request(1, 1, "POST", "/c", b"1234"));
    }

    #[test]
    fn oversize_head_resyncs() {
        let mut d = HttpDecoder::new(
            HttpRole::Requests,
            HttpLimits {
                max_header: 64,
                ..HttpLimits::default()
            },
        );
        let mut out = Vec::new();
        let mut s = b"GET / HTTP/1.1\r\n".to_vec();
        for _ in 0..10 {
            s.extend_from_slice(b"X-Long: aaaaaaaaaaaa\r\n");
        }
        s.extend_from_slice(b"\r\nGET /next HTTP/1.1\r\n\r\n");
        d.feed(1, &s, &mut out);
        assert_eq!(
            out,
            vec![
                HttpEvent::Error(HttpError::HeaderOversize { limit: 64 }),
                request(1, 1, "GET", "/next", b"")
            ]
        );
        assert_eq!(d.stats().resyncs, 1);
    }

    #[test]
    fn bad_head_is_skipped_whole() {
        let (out, d) = decode(
            HttpRole::Requests,
            &[b"G\x01T / HTTP/1.1\r\nGET /hidden HTTP/1.1\r\n\r\nPOST /orders HTTP/1.1\r\n\r\n"],
        );
        assert!(matches!(&out[0], HttpEvent::Error(e) if e.kind() == "http_header"));
        assert_eq!(out[1], request(1, 1, "POST", "/orders", b""));
        assert_eq!(out.len(), 2);
        assert_eq!(d.stats().resyncs, 1);
    }

    #[test]
    fn conflicting_lengths_and_bad_chunks_are_errors() {
        let (out, _) = decode(
            HttpRole::Requests,
            &[b"POST /a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx"],
        );
        assert!(matches!(&out[..], [HttpEvent::Error(HttpError::Header(_))]));
        let (out, _) = decode(
            HttpRole::Requests,
            &[b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"],
        );
        assert!(matches!(&out[..], [HttpEvent::Error(HttpError::Body(_))]));
        let (out, _) = decode(
            HttpRole::Requests,
            &[b"POST /a HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\nzz\r\n"],
        );
        assert!(matches!(&out[..], [HttpEvent::Error(HttpError::Body(_))]));
        let (out, _) = decode(
            HttpRole::Requests,
            &[b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX"],
        );
        assert!(matches!(&out[..], [HttpEvent::Error(HttpError::Body(_))]));
    }

    #[test]
    fn gap_resyncs_at_a_method_split_across_chunks() {
        let mut d = HttpDecoder::new(HttpRole::Requests, HttpLimits::default());
        let mut out = Vec::new();
        d.feed(
            1,
            b"POST /orders HTTP/1.1\r\nContent-Length: 10\r\n\r\n{\"a\"",
            &mut out,
        );
        d.gap(&mut out);
        d.feed(2, b"x\":2}\r\nPO", &mut out);
        d.feed(
            3,
            b"ST /orders HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
            &mut out,
        );
        assert_eq!(
            out,
            vec![
                HttpEvent::Error(HttpError::Gap),
                request(3, 2, "POST", "/orders", b"{}")
            ]
        );
        let s = d.stats();
        assert_eq!((s.gaps, s.resyncs, s.resync_skipped_bytes), (1, 1, 7));
    }

    #[test]
    fn candidate_completed_by_a_chunk_with_line_ends() {
        // Found by fuzzing: the chunk completing a held candidate also ends the head.
        let mut d = HttpDecoder::new(HttpRole::Requests, HttpLimits::default());
        let mut out = Vec::new();
        d.gap(&mut out);
        d.feed(1, b"GE", &mut out);
        d.feed(2, b"T \n\n\n\nGET / HTTP/1.1\r\n\r\n", &mut out);
        assert!(matches!(&out[1], HttpEvent::Error(HttpError::Header(_))));
        assert_eq!(out[2], request(2, 2, "GET", "/", b""));
        assert_eq!(out.len(), 3);
        d.gap(&mut out);
        d.feed(3, b"GE", &mut out);
        d.feed(4, b"T /x HTTP/1.1\r\n\r\n", &mut out);
        assert_eq!(out[4], request(4, 3, "GET", "/x", b""));
    }

    #[test]
    fn gap_at_a_message_boundary_resyncs_at_once() {
        let mut d = HttpDecoder::new(HttpRole::Responses, HttpLimits::default());
        let mut out = Vec::new();
        d.gap(&mut out);
        d.feed(5, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", &mut out);
        assert_eq!(out[1], response(5, 5, 200, b""));
        // A false start ("HTTP/2") is not a candidate.
        d.gap(&mut out);
        d.feed(6, b"HTTP/2 x\nHTTP/1.0 404 NF\r\n\r\n", &mut out);
        assert_eq!(out.len(), 3, "no length: the body lasts until the end");
        d.end(7, &mut out);
        assert_eq!(out[3], response(7, 6, 404, b""));
    }

    #[test]
    fn truncated_at_end() {
        let mut d = HttpDecoder::new(HttpRole::Requests, HttpLimits::default());
        let mut out = Vec::new();
        d.feed(
            1,
            b"POST /a HTTP/1.1\r\nContent-Length: 9\r\n\r\n{",
            &mut out,
        );
        d.end(2, &mut out);
        assert_eq!(out, vec![HttpEvent::Error(HttpError::Truncated)]);
    }
}
