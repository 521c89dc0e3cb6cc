//! Reassembly of one direction of one TCP connection from mirrored segments, which
//! may be truncated to a snap length, reordered, duplicated or missing. It turns them
//! into the byte stream the receiver saw, each byte stamped with when it could have it.
//!
//! Timestamp rule: a delivered byte carries the latest capture time among the segments
//! of its contiguous run, from the start of the delivery up to and including the one
//! that brought it. A byte that arrives in order carries its own segment's time; bytes
//! held behind a hole carry the time of the segment that filled the hole when that is
//! later than their own arrival. The receiver could have a byte only once every earlier
//! byte had arrived: the later of the arrival times.
//!
//! Sequence numbers are unwrapped into a 64-bit stream offset ("abs") once, so the
//! 32-bit wraparound is handled in one place (`abs_of`, serial arithmetic with i32).

use std::collections::{BTreeMap, VecDeque};

/// Segments whose sequence number lies further than this from the expected one are
/// not of this stream (or not of this epoch of it): TCP windows are at most 2^30 bytes.
pub const MAX_WINDOW: u64 = 1 << 30;

/// Offset at which the first seen sequence number is placed in the unwrapped space, so
/// that a segment up to 2^31 bytes before it still has a non-negative offset.
const ORIGIN_ABS: u64 = 1 << 32;

/// Bounds on what one direction holds while waiting for holes to fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Out-of-order payload bytes held; beyond it the oldest hole is declared a gap.
    pub max_buffered_bytes: usize,
    /// Out-of-order pieces held (each captured segment or truncated tail is one).
    pub max_segments: usize,
    /// Without a captured SYN the stream start is unknown: hold the first this many
    /// segments carrying data before choosing the lowest sequence among them as the
    /// start, so that a segment reordered ahead of the first one seen is still placed.
    /// 0 or 1 start at the first segment.
    pub start_hold_segments: usize,
    /// ...or until a segment (or `advance_time`) comes this much capture time after
    /// the first one. Holding delays output only: timestamps are those of capture.
    pub start_hold_ns: u64,
    /// Delivered bytes remembered to check retransmissions of them for conflicting
    /// content; older retransmissions are counted as duplicates without the check.
    pub recent_bytes_kept: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_buffered_bytes: 4 << 20,
            max_segments: 4096,
            start_hold_segments: 8,
            start_hold_ns: 10_000_000,
            recent_bytes_kept: 64 << 10,
        }
    }
}

/// The TCP flags reassembly cares about.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpFlags {
    pub syn: bool,
    pub fin: bool,
    pub rst: bool,
}

impl TcpFlags {
    /// From the flags byte of the TCP header (byte 13).
    pub fn from_bits(bits: u8) -> Self {
        TcpFlags {
            fin: bits & 0x01 != 0,
            syn: bits & 0x02 != 0,
            rst: bits & 0x04 != 0,
        }
    }
}

/// What the stream delivers, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// Stream bytes, all available to the receiver at `ts_ns`.
    Data { ts_ns: u64, bytes: Vec<u8> },
    /// `missing` bytes were sent but not captured (lost, or cut by the snap length).
    Gap { ts_ns: u64, missing: u64 },
    /// The sender closed this direction; every byte before it was delivered (or gapped).
    Fin { ts_ns: u64 },
    /// The connection was reset; nothing more comes on this direction.
    Reset { ts_ns: u64 },
}

/// Counters of one direction. Segment counts are of segments, byte counts of bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReassemblyStats {
    pub segments: u64,
    pub bytes_delivered: u64,
    /// Segments all of whose bytes had been seen already (retransmissions, mirror copies).
    pub duplicate_segments: u64,
    /// Segments some but not all of whose bytes had been seen already.
    pub overlapping_segments: u64,
    /// Bytes of duplicate and overlapping segments that were seen already (dropped).
    pub overlap_bytes: u64,
    /// Segments whose already seen bytes differ from the first copy (which was kept).
    pub conflicting_overlaps: u64,
    /// Segments that arrived ahead of the next expected byte and were held.
    pub out_of_order_segments: u64,
    /// Gap events and the bytes they stand for (includes truncation and limit gaps).
    pub gaps: u64,
    pub gap_bytes: u64,
    /// Gaps declared because the held bytes or pieces exceeded the limits.
    pub limit_gaps: u64,
    /// Segments captured shorter than they were sent.
    pub truncated_segments: u64,
    /// Keep-alive probes (sequence one below the next expected byte), ignored.
    pub keepalives: u64,
    /// Segments too far from the expected sequence (or beyond the FIN), ignored.
    pub out_of_window: u64,
    /// Bytes held before the start was known that fell before it (SYN seen later).
    pub before_start_bytes: u64,
    /// Segments after a reset, ignored.
    pub after_close: u64,
}

#[derive(Debug)]
enum Piece {
    Data(Vec<u8>),
    /// Bytes sent but not captured (the truncated tail of a segment).
    Missing(u64),
}

#[derive(Debug)]
struct Held {
    ts_ns: u64,
    piece: Piece,
}

impl Held {
    fn len(&self) -> u64 {
        match &self.piece {
            Piece::Data(d) => d.len() as u64,
            Piece::Missing(n) => *n,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing seen yet.
    Empty,
    /// No SYN seen: segments are held until the start is chosen.
    Holding { first_ts: u64, data_segments: usize },
    /// Delivering from `next_abs`.
    Open,
    /// Reset: nothing more.
    Reset,
}

/// Reassembles one direction of one TCP connection.
#[derive(Debug)]
pub struct Reassembler {
    limits: Limits,
    state: State,
    /// Sequence number of the byte at `ORIGIN_ABS`.
    origin_seq: u32,
    /// Offset of the next byte to deliver (meaningful when `Open`).
    next_abs: u64,
    /// Pieces not yet deliverable, keyed by offset; they never overlap one another and
    /// all start at or after `next_abs`.
    held: BTreeMap<u64, Held>,
    held_bytes: usize,
    /// Highest end offset seen, to count reordering before the start is known.
    max_end_seen: u64,
    /// Offset of the FIN and the capture time of the segment carrying it.
    fin: Option<(u64, u64)>,
    fin_delivered: bool,
    /// The last delivered bytes, for the conflict check of retransmissions.
    recent: VecDeque<u8>,
    stats: ReassemblyStats,
}

impl Reassembler {
    pub fn new(limits: Limits) -> Self {
        Reassembler {
            limits,
            state: State::Empty,
            origin_seq: 0,
            next_abs: ORIGIN_ABS,
            held: BTreeMap::new(),
            held_bytes: 0,
            max_end_seen: 0,
            fin: None,
            fin_delivered: false,
            recent: VecDeque::new(),
            stats: ReassemblyStats::default(),
        }
    }

    pub fn stats(&self) -> ReassemblyStats {
        self.stats
    }

    /// The sequence number of the next byte expected, once the start is known.
    pub fn next_seq(&self) -> Option<u32> {
        (self.state == State::Open).then(|| self.seq_of(self.next_abs))
    }

    /// Out-of-order payload bytes currently held.
    pub fn buffered_bytes(&self) -> usize {
        self.held_bytes
    }

    /// Whether this direction ended: its FIN was delivered or it was reset.
    pub fn is_closed(&self) -> bool {
        self.fin_delivered || self.state == State::Reset
    }

    fn seq_of(&self, abs: u64) -> u32 {
        // Truncating to u32 is the point: the offset modulo 2^32.
        self.origin_seq
            .wrapping_add(abs.wrapping_sub(ORIGIN_ABS) as u32)
    }

    /// Unwraps a sequence number relative to the expected byte (or to the first one
    /// seen while the start is unknown): within ±2^31 of it, as serial arithmetic says.
    fn abs_of(&self, seq: u32) -> u64 {
        let reference = if self.state == State::Open {
            self.next_abs
        } else {
            ORIGIN_ABS
        };
        let rel = i64::from(seq.wrapping_sub(self.seq_of(reference)) as i32);
        // reference >= 2^31 always (ORIGIN_ABS is 2^32, and the start chosen is at most
        // 2^31 below it), so the sum is non-negative.
        (reference as i64 + rel).max(0) as u64
    }

    /// One captured segment of this direction. `seq` as on the wire; `payload` what
    /// was captured; `original_payload_len` what the IP and TCP lengths say was sent
    /// (larger when the capture truncated it: the missing tail becomes a gap).
    pub fn segment(
        &mut self,
        ts_ns: u64,
        seq: u32,
        flags: TcpFlags,
        payload: &[u8],
        original_payload_len: usize,
        out: &mut Vec<StreamEvent>,
    ) {
        self.stats.segments += 1;
        if self.state == State::Reset {
            self.stats.after_close += 1;
            return;
        }
        // Capped so that the arithmetic below cannot overflow: anything that long is
        // out of the window anyway.
        let sent_len = (original_payload_len.max(payload.len()) as u64).min(MAX_WINDOW + 1);
        // The SYN occupies one sequence number; data on it starts after.
        let data_seq = if flags.syn { seq.wrapping_add(1) } else { seq };
        if self.state == State::Empty {
            self.origin_seq = data_seq;
            self.state = State::Holding {
                first_ts: ts_ns,
                data_segments: 0,
            };
        }
        let start = self.abs_of(data_seq);
        let mut end = start + sent_len;
        let reference = if self.state == State::Open {
            self.next_abs
        } else {
            ORIGIN_ABS
        };
        if end > reference + MAX_WINDOW || start + MAX_WINDOW < reference {
            self.stats.out_of_window += 1;
            return;
        }
        // A SYN after the start is known is a retransmission: its data (if any) is
        // placed like any other.
        if flags.syn
            && let State::Holding { .. } = self.state
        {
            self.open_at(start);
        }
        if self.state == State::Open
            && sent_len <= 1
            && start + 1 == self.next_abs
            && !flags.fin
            && !flags.rst
            && !flags.syn
        {
            self.stats.keepalives += 1;
            return;
        }
        if let Some((fin_abs, _)) = self.fin {
            if start >= fin_abs && sent_len > 0 {
                self.stats.out_of_window += 1;
                return;
            }
            end = end.min(fin_abs);
        }
        if end > start {
            let captured_end = (start + payload.len() as u64).min(end);
            let captured = &payload[..(captured_end - start) as usize];
            match self.state {
                State::Open if start > self.next_abs => self.stats.out_of_order_segments += 1,
                State::Holding { .. } if start < self.max_end_seen => {
                    self.stats.out_of_order_segments += 1
                }
                _ => {}
            }
            self.max_end_seen = self.max_end_seen.max(end);
            let mut overlapped = 0;
            let mut conflict = false;
            if captured_end > start {
                let (o, c) = self.place(start, captured_end, Some(captured), ts_ns);
                overlapped += o;
                conflict |= c;
            }
            if end > captured_end {
                self.stats.truncated_segments += 1;
                let (o, _) = self.place(captured_end, end, None, ts_ns);
                overlapped += o;
            }
            if overlapped == end - start {
                self.stats.duplicate_segments += 1;
            } else if overlapped > 0 {
                self.stats.overlapping_segments += 1;
            }
            self.stats.overlap_bytes += overlapped;
            if conflict {
                self.stats.conflicting_overlaps += 1;
            }
        }
        if flags.fin && self.fin.is_none() {
            self.fin = Some((start + sent_len, ts_ns));
            self.max_end_seen = self.max_end_seen.max(start + sent_len);
        }
        if let State::Holding {
            first_ts,
            data_segments,
        } = self.state
        {
            let data_segments = data_segments + usize::from(sent_len > 0 || flags.fin);
            self.state = State::Holding {
                first_ts,
                data_segments,
            };
            if data_segments >= self.limits.start_hold_segments
                || ts_ns.saturating_sub(first_ts) >= self.limits.start_hold_ns
                || self.over_limits()
                || flags.rst
            {
                self.release_start();
            }
        }
        if self.state == State::Open {
            self.drain(out);
            while self.over_limits() {
                if self.give_up_hole(out) {
                    self.stats.limit_gaps += 1;
                }
            }
        }
        if flags.rst {
            self.flush(out);
            out.push(StreamEvent::Reset { ts_ns });
            self.state = State::Reset;
            self.held.clear();
            self.held_bytes = 0;
        }
    }

    /// Capture time has moved on to `now_ns` without segments: ends the hold of the
    /// start once its time is up, so that a quiet stream is delivered without waiting
    /// for its next segment.
    pub fn advance_time(&mut self, now_ns: u64, out: &mut Vec<StreamEvent>) {
        if let State::Holding { first_ts, .. } = self.state
            && now_ns.saturating_sub(first_ts) >= self.limits.start_hold_ns
        {
            self.release_start();
            if self.state == State::Open {
                self.drain(out);
            }
        }
    }

    /// No more segments will come (end of capture, connection idle too long): gives up
    /// on the holes, emitting each as a Gap followed by the data held after it, and the
    /// FIN if one was seen. A hole after the last held byte has no known size and emits
    /// nothing. The reassembler stays usable: a later segment continues the stream.
    pub fn flush(&mut self, out: &mut Vec<StreamEvent>) {
        if let State::Holding { .. } = self.state {
            self.release_start();
        }
        if self.state != State::Open {
            return;
        }
        self.drain(out);
        while !self.held.is_empty() {
            self.give_up_hole(out);
        }
        if let Some((fin_abs, fin_ts)) = self.fin
            && !self.fin_delivered
            && fin_abs > self.next_abs
        {
            let missing = fin_abs - self.next_abs;
            self.note_gap(missing);
            out.push(StreamEvent::Gap {
                ts_ns: fin_ts,
                missing,
            });
            self.next_abs = fin_abs;
            self.drain(out);
        }
    }

    fn over_limits(&self) -> bool {
        self.held_bytes > self.limits.max_buffered_bytes
            || self.held.len() > self.limits.max_segments
    }

    fn note_gap(&mut self, missing: u64) {
        self.stats.gaps += 1;
        self.stats.gap_bytes += missing;
    }

    /// Starts the stream at `start` (a SYN was seen), dropping what was held before it.
    fn open_at(&mut self, start: u64) {
        self.state = State::Open;
        self.next_abs = start;
        while let Some(entry) = self.held.first_entry() {
            let key = *entry.key();
            if key >= start {
                break;
            }
            let held = entry.remove();
            let len = held.len();
            let dropped = (start - key).min(len);
            self.stats.before_start_bytes += dropped;
            if let Piece::Data(d) = &held.piece {
                self.held_bytes -= d.len();
            }
            if dropped < len {
                let piece = match held.piece {
                    Piece::Data(mut d) => {
                        d.drain(..dropped as usize);
                        self.held_bytes += d.len();
                        Piece::Data(d)
                    }
                    Piece::Missing(n) => Piece::Missing(n - dropped),
                };
                self.held.insert(
                    start,
                    Held {
                        ts_ns: held.ts_ns,
                        piece,
                    },
                );
            }
        }
        if let Some((fin_abs, _)) = self.fin
            && fin_abs < start
        {
            self.fin = None;
        }
    }

    /// Without a SYN: the stream starts at the lowest byte held (or at the FIN).
    fn release_start(&mut self) {
        let first = self.held.keys().next().copied();
        let start = match (first, self.fin) {
            (Some(k), Some((f, _))) => k.min(f),
            (Some(k), None) => k,
            (None, Some((f, _))) => f,
            (None, None) => return,
        };
        self.open_at(start);
    }

    /// Records the not yet delivered part of `[start, end)` (captured bytes, or a
    /// missing tail when `data` is None) that nothing seen earlier covers: the first
    /// copy wins. Returns the bytes already covered and whether any covered byte
    /// differs from the first copy.
    fn place(&mut self, start: u64, end: u64, data: Option<&[u8]>, ts_ns: u64) -> (u64, bool) {
        let mut overlapped = 0;
        let mut conflict = false;
        let mut from = start;
        if self.state == State::Open && from < self.next_abs {
            let upto = end.min(self.next_abs);
            overlapped += upto - from;
            if let Some(d) = data {
                conflict |= self.differs_from_recent(from, &d[..(upto - start) as usize]);
            }
            from = upto;
        }
        if from >= end {
            return (overlapped, conflict);
        }
        // The uncovered sub-ranges of [from, end).
        let mut uncovered: Vec<(u64, u64)> = Vec::new();
        let lo = match self.held.range(..=from).next_back() {
            Some((&k, h)) if k + h.len() > from => k,
            _ => from,
        };
        let mut cursor = from;
        for (&k, h) in self.held.range(lo..end) {
            let h_end = k + h.len();
            if k > cursor {
                uncovered.push((cursor, k));
            }
            let (o_start, o_end) = (cursor.max(k), end.min(h_end));
            if o_end > o_start {
                overlapped += o_end - o_start;
                if let (Some(d), Piece::Data(hd)) = (data, &h.piece) {
                    let new = &d[(o_start - start) as usize..(o_end - start) as usize];
                    let old = &hd[(o_start - k) as usize..(o_end - k) as usize];
                    conflict |= new != old;
                }
            }
            cursor = cursor.max(h_end);
            if cursor >= end {
                break;
            }
        }
        if cursor < end {
            uncovered.push((cursor, end));
        }
        for (s, e) in uncovered {
            let piece = match data {
                Some(d) => {
                    let bytes = d[(s - start) as usize..(e - start) as usize].to_vec();
                    self.held_bytes += bytes.len();
                    Piece::Data(bytes)
                }
                None => Piece::Missing(e - s),
            };
            self.held.insert(s, Held { ts_ns, piece });
        }
        (overlapped, conflict)
    }

    /// Compares a retransmission of delivered bytes starting at `start` with the part
    /// of them still remembered.
    fn differs_from_recent(&self, start: u64, bytes: &[u8]) -> bool {
        let kept_from = self.next_abs - self.recent.len() as u64;
        let end = start + bytes.len() as u64;
        let (s, e) = (start.max(kept_from), end.min(self.next_abs));
        if s >= e {
            return false;
        }
        let old = self
            .recent
            .range((s - kept_from) as usize..(e - kept_from) as usize);
        let new = &bytes[(s - start) as usize..(e - start) as usize];
        !old.eq(new.iter())
    }

    fn remember(&mut self, bytes: &[u8]) {
        let keep = self.limits.recent_bytes_kept;
        if keep == 0 {
            return;
        }
        let tail = &bytes[bytes.len().saturating_sub(keep)..];
        let excess = (self.recent.len() + tail.len()).saturating_sub(keep);
        self.recent.drain(..excess);
        self.recent.extend(tail.iter().copied());
    }

    /// Delivers the contiguous run held at `next_abs`, each piece stamped with the
    /// latest arrival time in the run so far, then the FIN if the run reached it.
    fn drain(&mut self, out: &mut Vec<StreamEvent>) {
        let mut run_ts = 0;
        while let Some(entry) = self.held.first_entry() {
            if *entry.key() != self.next_abs {
                break;
            }
            let held = entry.remove();
            run_ts = run_ts.max(held.ts_ns);
            match held.piece {
                Piece::Data(bytes) => {
                    self.held_bytes -= bytes.len();
                    self.next_abs += bytes.len() as u64;
                    self.stats.bytes_delivered += bytes.len() as u64;
                    self.remember(&bytes);
                    out.push(StreamEvent::Data {
                        ts_ns: run_ts,
                        bytes,
                    });
                }
                Piece::Missing(missing) => {
                    self.next_abs += missing;
                    self.note_gap(missing);
                    out.push(StreamEvent::Gap {
                        ts_ns: run_ts,
                        missing,
                    });
                }
            }
        }
        if let Some((fin_abs, fin_ts)) = self.fin
            && !self.fin_delivered
            && self.next_abs == fin_abs
        {
            self.fin_delivered = true;
            // Anything held beyond the FIN was not part of the stream.
            self.held.clear();
            self.held_bytes = 0;
            out.push(StreamEvent::Fin {
                ts_ns: run_ts.max(fin_ts),
            });
        }
    }

    /// Declares the hole before the first held piece lost and delivers from there;
    /// says whether there was a hole. The gap and the run after it carry the arrival
    /// times of that run: when the receiver got the missing bytes is unknown, the data
    /// after them was there then.
    fn give_up_hole(&mut self, out: &mut Vec<StreamEvent>) -> bool {
        let Some((first, first_ts)) = self.held.iter().next().map(|(&k, h)| (k, h.ts_ns)) else {
            return false;
        };
        let hole = first > self.next_abs;
        if hole {
            let missing = first - self.next_abs;
            self.note_gap(missing);
            out.push(StreamEvent::Gap {
                ts_ns: first_ts,
                missing,
            });
            self.next_abs = first;
        }
        self.drain(out);
        hole
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: TcpFlags = TcpFlags {
        syn: false,
        fin: false,
        rst: false,
    };

    fn immediate() -> Limits {
        Limits {
            start_hold_segments: 1,
            ..Limits::default()
        }
    }

    fn data(ts_ns: u64, bytes: &[u8]) -> StreamEvent {
        StreamEvent::Data {
            ts_ns,
            bytes: bytes.to_vec(),
        }
    }

    #[test]
    fn in_order_is_delivered_at_once() {
        let mut r = Reassembler::new(immediate());
        let mut out = Vec::new();
        r.segment(1, 1000, NONE, b"abc", 3, &mut out);
        assert_eq!(out, vec![data(1, b"abc")]);
        out.clear();
        r.segment(2, 1003, NONE, b"de", 2, &mut out);
        assert_eq!(out, vec![data(2, b"de")]);
        assert_eq!(r.next_seq(), Some(1005));
        assert_eq!(r.stats().bytes_delivered, 5);
    }

    #[test]
    fn syn_sets_the_start_and_fin_ends() {
        let mut r = Reassembler::new(Limits::default());
        let mut out = Vec::new();
        let syn = TcpFlags { syn: true, ..NONE };
        let fin = TcpFlags { fin: true, ..NONE };
        r.segment(1, 99, syn, b"", 0, &mut out);
        // The FIN comes first, then the data before it fills the hole.
        r.segment(3, 103, fin, b"", 0, &mut out);
        assert!(out.is_empty());
        r.segment(5, 100, NONE, b"xyz", 3, &mut out);
        assert_eq!(out, vec![data(5, b"xyz"), StreamEvent::Fin { ts_ns: 5 }]);
        assert!(r.is_closed());
        // A retransmission after the FIN is a duplicate.
        out.clear();
        r.segment(6, 100, fin, b"xyz", 3, &mut out);
        assert!(out.is_empty());
        assert_eq!(r.stats().duplicate_segments, 1);
    }

    #[test]
    fn reordered_bytes_take_the_time_of_the_fill() {
        let mut r = Reassembler::new(immediate());
        let mut out = Vec::new();
        r.segment(10, 0, NONE, b"ab", 2, &mut out);
        r.segment(11, 4, NONE, b"ef", 2, &mut out);
        r.segment(12, 6, NONE, b"gh", 2, &mut out);
        assert_eq!(out, vec![data(10, b"ab")]);
        out.clear();
        r.segment(20, 2, NONE, b"cd", 2, &mut out);
        assert_eq!(out, vec![data(20, b"cd"), data(20, b"ef"), data(20, b"gh")]);
        assert_eq!(r.stats().out_of_order_segments, 2);
    }

    #[test]
    fn later_arrival_wins_when_capture_times_go_backwards() {
        let mut r = Reassembler::new(immediate());
        let mut out = Vec::new();
        r.segment(10, 0, NONE, b"ab", 2, &mut out);
        r.segment(30, 4, NONE, b"ef", 2, &mut out);
        r.segment(20, 2, NONE, b"cd", 2, &mut out);
        assert_eq!(out, vec![data(10, b"ab"), data(20, b"cd"), data(30, b"ef")]);
    }

    #[test]
    fn start_hold_places_a_segment_reordered_before_the_first_seen() {
        let mut r = Reassembler::new(Limits {
            start_hold_segments: 3,
            ..Limits::default()
        });
        let mut out = Vec::new();
        r.segment(10, 5003, NONE, b"def", 3, &mut out);
        r.segment(11, 5000, NONE, b"abc", 3, &mut out);
        assert!(out.is_empty());
        r.segment(12, 5006, NONE, b"g", 1, &mut out);
        assert_eq!(
            out,
            vec![data(11, b"abc"), data(11, b"def"), data(12, b"g")]
        );
        assert_eq!(r.next_seq(), Some(5007));
    }

    #[test]
    fn start_hold_ends_with_time() {
        let mut r = Reassembler::new(Limits {
            start_hold_segments: 100,
            start_hold_ns: 50,
            ..Limits::default()
        });
        let mut out = Vec::new();
        r.segment(10, 7, NONE, b"abc", 3, &mut out);
        r.advance_time(40, &mut out);
        assert!(out.is_empty());
        r.advance_time(60, &mut out);
        assert_eq!(out, vec![data(10, b"abc")]);
        // Bytes before the chosen start are old retransmissions.
        out.clear();
        r.segment(70, 4, NONE, b"xyz", 3, &mut out);
        assert!(out.is_empty());
        assert_eq!(r.stats().duplicate_segments, 1);
    }

    #[test]
    fn syn_after_held_data_drops_what_precedes_it() {
        let mut r = Reassembler::new(Limits::default());
        let mut out = Vec::new();
        r.segment(1, 8, NONE, b"0123", 4, &mut out);
        let syn = TcpFlags { syn: true, ..NONE };
        r.segment(2, 9, syn, b"", 0, &mut out);
        assert_eq!(out, vec![data(1, b"23")]);
        assert_eq!(r.stats().before_start_bytes, 2);
    }

    #[test]
    fn wraparound() {
        let mut r = Reassembler::new(immediate());
        let mut out = Vec::new();
        r.segment(1, u32::MAX - 1, NONE, b"ab", 2, &mut out);
        r.segment(2, 2, NONE, b"ef", 2, &mut out);
        r.segment(3, 0, NONE, b"cd", 2, &mut out);
        assert_eq!(out, vec![data(1, b"ab"), data(3, b"cd"), data(3, b"ef")]);
        assert_eq!(r.next_seq(), Some(4));
    }

    #[test]
    fn duplicates_and_overlaps_first_copy_wins() {
        let mut r = Reassembler::new(immediate());
        let mut out = Vec::new();
        r.segment(1, 0, NONE, b"abcd", 4, &mut out);
        r.segment(2, 0, NONE, b"abcd", 4, &mut out);
        r.segment(3, 2, NONE, b"cdef", 4, &mut out);
        r.segment(4, 8, NONE, b"ij", 2, &mut out);
        // Overlaps the held "ij" with different content: the held copy wins.
        r.segment(5, 6, NONE, b"ghXY", 4, &mut out);
        // Conflicts with delivered bytes.
        r.segment(6, 1, NONE, b"Z", 1, &mut out);
        let bytes: Vec<u8> = out
            .iter()
            .flat_map(|e| match e {
                StreamEvent::Data { bytes, .. } => bytes.clone(),
                _ => Vec::new(),
            })
            .collect();
        assert_eq!(bytes, b"abcdefghij");
        let s = r.stats();
        assert_eq!(s.duplicate_segments, 2);
        assert_eq!(s.overlapping_segments, 2);
        assert_eq!(s.conflicting_overlaps, 2);
        assert_eq!(s.overlap_bytes, 4 + 2 + 2 + 1);
    }

    #[test]
    fn keepalive_is_ignored() {
        let mut r = Reassembler::new(immediate());
        let mut out = Vec::new();
        r.segment(1, 0, NONE, b"abcd", 4, &mut out);
        r.segment(2, 3, NONE, b"\0", 1, &mut out);
        r.segment(3, 3, NONE, b"", 0, &mut out);
        assert_eq!(out.len(), 1);
        let s = r.stats();
        assert_eq!(s.keepalives, 2);
        assert_eq!(s.conflicting_overlaps, 0);
    }

    #[test]
    fn truncated_segment_leaves_a_gap_for_its_tail() {
        let mut r = Reassembler::new(immediate());
        let mut out = Vec::new();
        r.segment(1, 0, NONE, b"ab", 5, &mut out);
        r.segment(2, 5, NONE, b"fg", 2, &mut out);
        assert_eq!(
            out,
            vec![
                data(1, b"ab"),
                StreamEvent::Gap {
                    ts_ns: 1,
                    missing: 3
                },
                data(2, b"fg")
            ]
        );
        assert_eq!(r.stats().truncated_segments, 1);
        assert_eq!(r.stats().gap_bytes, 3);
    }

    #[test]
    fn limit_declares_the_oldest_hole_a_gap() {
        let mut r = Reassembler::new(Limits {
            max_buffered_bytes: 4,
            start_hold_segments: 1,
            ..Limits::default()
        });
        let mut out = Vec::new();
        r.segment(1, 0, NONE, b"ab", 2, &mut out);
        r.segment(2, 4, NONE, b"ef", 2, &mut out);
        r.segment(3, 8, NONE, b"ij", 2, &mut out);
        assert_eq!(out, vec![data(1, b"ab")]);
        r.segment(4, 10, NONE, b"k", 1, &mut out);
        assert_eq!(
            out[1..],
            [
                StreamEvent::Gap {
                    ts_ns: 2,
                    missing: 2
                },
                data(2, b"ef")
            ]
        );
        assert_eq!(r.stats().limit_gaps, 1);
        assert_eq!(r.buffered_bytes(), 3);
        out.clear();
        r.flush(&mut out);
        assert_eq!(
            out,
            vec![
                StreamEvent::Gap {
                    ts_ns: 3,
                    missing: 2
                },
                data(3, b"ij"),
                data(4, b"k")
            ]
        );
        // The hole filled late: its bytes are old now.
        out.clear();
        r.segment(5, 2, NONE, b"cd", 2, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn flush_gaps_up_to_a_fin() {
        let mut r = Reassembler::new(immediate());
        let mut out = Vec::new();
        let fin = TcpFlags { fin: true, ..NONE };
        r.segment(1, 0, NONE, b"ab", 2, &mut out);
        r.segment(2, 6, fin, b"", 0, &mut out);
        r.flush(&mut out);
        assert_eq!(
            out,
            vec![
                data(1, b"ab"),
                StreamEvent::Gap {
                    ts_ns: 2,
                    missing: 4
                },
                StreamEvent::Fin { ts_ns: 2 }
            ]
        );
    }

    #[test]
    fn reset_flushes_and_stops() {
        let mut r = Reassembler::new(immediate());
        let mut out = Vec::new();
        let rst = TcpFlags { rst: true, ..NONE };
        r.segment(1, 0, NONE, b"ab", 2, &mut out);
        r.segment(2, 4, NONE, b"ef", 2, &mut out);
        r.segment(3, 6, rst, b"", 0, &mut out);
        r.segment(4, 2, NONE, b"cd", 2, &mut out);
        assert_eq!(
            out,
            vec![
                data(1, b"ab"),
                StreamEvent::Gap {
                    ts_ns: 2,
                    missing: 2
                },
                data(2, b"ef"),
                StreamEvent::Reset { ts_ns: 3 }
            ]
        );
        assert_eq!(r.stats().after_close, 1);
        assert!(r.is_closed());
    }

    #[test]
    fn far_segments_are_out_of_window() {
        let mut r = Reassembler::new(immediate());
        let mut out = Vec::new();
        r.segment(1, 0, NONE, b"ab", 2, &mut out);
        r.segment(2, 1 << 31, NONE, b"zz", 2, &mut out);
        r.segment(3, 2, NONE, b"x", 100_000_000, &mut out);
        assert_eq!(out.len(), 3);
        r.segment(4, (1 << 30) + 200_000_000, NONE, b"zz", 2, &mut out);
        assert_eq!(r.stats().out_of_window, 2);
        assert_eq!(r.buffered_bytes(), 0);
    }

    #[test]
    fn segment_limit_bounds_held_pieces() {
        let mut r = Reassembler::new(Limits {
            max_segments: 3,
            start_hold_segments: 1,
            ..Limits::default()
        });
        let mut out = Vec::new();
        r.segment(0, 0, NONE, b"a", 1, &mut out);
        for i in 0..10u32 {
            r.segment(u64::from(i), 2 + 2 * i, NONE, b"x", 1, &mut out);
            assert!(r.held.len() <= 3);
        }
        assert!(r.stats().limit_gaps > 0);
    }
}
