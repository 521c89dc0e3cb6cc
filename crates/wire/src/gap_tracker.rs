//! Sequence bookkeeping for one feed session: which sequence numbers arrived, which
//! are missing (gaps), which were recovered by retransmission or given up as lost.
//! Pure logic, no I/O: the feed handler feeds it packets and the recovery driver asks
//! it which ranges to request, so exactly-once delivery is decided in one place.

use std::collections::BTreeMap;

/// How a message was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// On the feed itself.
    Live,
    /// From the retransmission server.
    Retransmission,
}

/// What to do with a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// First copy, in order or ahead of a gap: deliver.
    New,
    /// First copy of a message that had been missing: deliver, and it counts as
    /// recovered when it came by retransmission, or as late when it came live.
    Filled,
    /// Already delivered (or given up): drop.
    Duplicate,
}

/// A run of missing sequence numbers and its recovery attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MissingRange {
    /// One past the last missing sequence number.
    pub end: u64,
    /// Retransmission requests sent for it so far.
    pub attempts: u32,
    /// When the last request went out (ns, caller's clock).
    pub last_request_ns: u64,
    /// One past the last sequence number of the outstanding request; a range longer
    /// than one request is recovered chunk by chunk. At or below the range's start:
    /// nothing outstanding.
    pub requested_end: u64,
}

impl MissingRange {
    fn new(end: u64) -> Self {
        Self {
            end,
            attempts: 0,
            last_request_ns: 0,
            requested_end: 0,
        }
    }
}

/// Counts over the session, in messages unless the name says otherwise.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GapCounts {
    pub received: u64,
    pub recovered: u64,
    /// Missing messages that turned up late on the feed (reordering).
    pub late: u64,
    pub lost: u64,
    pub duplicates: u64,
    /// Runs of missing sequence numbers detected.
    pub gaps: u64,
}

/// How hard recovery tries.
#[derive(Clone, Copy, Debug)]
pub struct RecoveryPolicy {
    /// Wait this long for an answer before asking again.
    pub timeout_ns: u64,
    /// Unanswered requests in a row before a range is declared lost.
    pub max_attempts: u32,
    /// Most messages asked for in one request (keeps reply bursts within socket
    /// buffers).
    pub chunk: u64,
    /// Most requests sent per call.
    pub max_requests: usize,
}

impl Default for RecoveryPolicy {
    fn default() -> Self {
        Self {
            timeout_ns: 50_000_000,
            max_attempts: 5,
            chunk: 2048,
            max_requests: 16,
        }
    }
}

#[derive(Debug)]
pub struct GapTracker {
    /// Every sequence number below this was delivered, or is in `missing`, or lost.
    next_expected: u64,
    /// Start -> range; ranges never overlap nor touch each other's ends.
    missing: BTreeMap<u64, MissingRange>,
    /// One past the last message of the session, once the exchange has said so.
    end_of_session: Option<u64>,
    counts: GapCounts,
    /// `[start, end)` ranges given up since the last [`GapTracker::take_given_up`],
    /// kept only when asked for ([`GapTracker::logging_given_up`]): a recorder lists
    /// them in its index as the sequence numbers it could not get.
    given_up: Option<Vec<(u64, u64)>>,
}

impl Default for GapTracker {
    fn default() -> Self {
        Self::new(1)
    }
}

impl GapTracker {
    /// A tracker expecting `first_seq` first (MoldUDP64 sessions start at 1, so a
    /// receiver that joins late sees a gap from 1 and can recover the beginning).
    pub fn new(first_seq: u64) -> Self {
        Self {
            next_expected: first_seq,
            missing: BTreeMap::new(),
            end_of_session: None,
            counts: GapCounts::default(),
            given_up: None,
        }
    }

    pub fn counts(&self) -> GapCounts {
        self.counts
    }

    pub fn next_expected(&self) -> u64 {
        self.next_expected
    }

    pub fn end_of_session(&self) -> Option<u64> {
        self.end_of_session
    }

    /// Messages the exchange is known to have sent (highest sequence seen or announced).
    pub fn known_sent(&self) -> u64 {
        self.end_of_session
            .unwrap_or(self.next_expected)
            .max(self.next_expected)
            .saturating_sub(1)
    }

    /// Messages currently missing.
    pub fn missing_count(&self) -> u64 {
        self.missing.iter().map(|(s, r)| r.end - s).sum()
    }

    /// The session is over and nothing is missing any more.
    pub fn is_settled(&self) -> bool {
        self.end_of_session
            .is_some_and(|end| self.next_expected >= end)
            && self.missing.is_empty()
    }

    /// Fast path for a live data packet `[seq, seq + count)`: when it is exactly the
    /// next one, every message is new and no per-message work is needed. Returns
    /// `None` when the caller must classify message by message with [`Self::accept`].
    #[inline]
    pub fn accept_in_order_packet(&mut self, seq: u64, count: u64) -> Option<Verdict> {
        if seq == self.next_expected {
            self.next_expected += count;
            self.counts.received += count;
            Some(Verdict::New)
        } else {
            None
        }
    }

    /// Classifies one message.
    pub fn accept(&mut self, seq: u64, via: Via) -> Verdict {
        if seq >= self.next_expected {
            if seq > self.next_expected {
                self.open_gap(self.next_expected, seq);
            }
            self.next_expected = seq + 1;
            self.count_delivery(via, false);
            return Verdict::New;
        }
        // Below next_expected: delivered already, unless it sits in a missing range.
        let Some((&start, &range)) = self.missing.range(..=seq).next_back() else {
            self.counts.duplicates += 1;
            return Verdict::Duplicate;
        };
        if seq >= range.end {
            self.counts.duplicates += 1;
            return Verdict::Duplicate;
        }
        self.missing.remove(&start);
        if start < seq {
            self.missing
                .insert(start, MissingRange { end: seq, ..range });
        }
        if seq + 1 < range.end {
            let mut rest = range;
            if via == Via::Retransmission && seq + 1 >= range.requested_end {
                // The outstanding request is answered in full: the server is alive,
                // so the next chunk starts with a fresh attempt count, at once.
                rest.attempts = 0;
                rest.requested_end = 0;
            }
            self.missing.insert(seq + 1, rest);
        }
        self.count_delivery(via, true);
        Verdict::Filled
    }

    fn count_delivery(&mut self, via: Via, was_missing: bool) {
        match (via, was_missing) {
            (Via::Retransmission, true) => self.counts.recovered += 1,
            (Via::Live, true) => self.counts.late += 1,
            // A retransmitted message ahead of the live feed: still a first delivery.
            _ => self.counts.received += 1,
        }
    }

    fn open_gap(&mut self, start: u64, end: u64) {
        if end <= start {
            return;
        }
        self.counts.gaps += 1;
        self.missing.insert(start, MissingRange::new(end));
    }

    /// A heartbeat or end-of-session announcing `next_seq`: anything before it that
    /// has not arrived is a gap (the tail of a burst lost with no packet after it).
    pub fn announce_next(&mut self, next_seq: u64) {
        if next_seq > self.next_expected {
            self.open_gap(self.next_expected, next_seq);
            self.next_expected = next_seq;
        }
    }

    /// The exchange ended the session; `next_seq` is one past its last message.
    pub fn end(&mut self, next_seq: u64) {
        self.announce_next(next_seq);
        self.end_of_session = Some(next_seq);
    }

    /// The retransmission server no longer holds `[seq, seq + count)`: whatever of it
    /// is still missing is lost.
    pub fn mark_unavailable(&mut self, seq: u64, count: u64) {
        let end = seq.saturating_add(count);
        self.give_up(seq, end);
    }

    /// Declares `[start, end)` lost where it is still missing.
    fn give_up(&mut self, start: u64, end: u64) {
        let overlapping: Vec<(u64, MissingRange)> = self
            .missing
            .range(..end)
            .filter(|(s, r)| r.end > start && **s < end)
            .map(|(s, r)| (*s, *r))
            .collect();
        for (s, r) in overlapping {
            self.missing.remove(&s);
            let lost_start = s.max(start);
            let lost_end = r.end.min(end);
            self.counts.lost += lost_end - lost_start;
            if let Some(log) = &mut self.given_up {
                log.push((lost_start, lost_end));
            }
            if s < lost_start {
                self.missing.insert(
                    s,
                    MissingRange {
                        end: lost_start,
                        ..r
                    },
                );
            }
            if lost_end < r.end {
                self.missing.insert(lost_end, r);
            }
        }
    }

    /// Requests to send now, as `[start, end)` chunks of at most `policy.chunk`
    /// messages, for at most `policy.max_requests` ranges: ranges with nothing
    /// outstanding, or whose request timed out. A range whose requests went
    /// unanswered `policy.max_attempts` times in a row is given up as lost.
    pub fn due_requests(&mut self, now_ns: u64, policy: &RecoveryPolicy) -> Vec<(u64, u64)> {
        let mut due = Vec::new();
        let mut exhausted = Vec::new();
        for (&start, range) in self.missing.iter_mut() {
            if due.len() >= policy.max_requests {
                break;
            }
            let outstanding = range.requested_end > start
                && now_ns < range.last_request_ns.saturating_add(policy.timeout_ns);
            if outstanding {
                continue;
            }
            if range.attempts >= policy.max_attempts {
                exhausted.push((start, range.end));
                continue;
            }
            let end = range.end.min(start.saturating_add(policy.chunk.max(1)));
            range.attempts += 1;
            range.last_request_ns = now_ns;
            range.requested_end = end;
            due.push((start, end));
        }
        for (start, end) in exhausted {
            self.give_up(start, end);
        }
        due
    }

    /// Gives up on everything still missing (the run is over).
    pub fn finish(&mut self) {
        let ranges: Vec<(u64, u64)> = self.missing.iter().map(|(s, r)| (*s, r.end)).collect();
        for (s, e) in ranges {
            self.give_up(s, e);
        }
    }

    /// Keeps the ranges given up as lost for [`GapTracker::take_given_up`].
    pub fn logging_given_up(mut self) -> Self {
        self.given_up = Some(Vec::new());
        self
    }

    /// The `[start, end)` ranges given up as lost since the last call (empty unless
    /// [`GapTracker::logging_given_up`]).
    pub fn take_given_up(&mut self) -> Vec<(u64, u64)> {
        self.given_up
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    pub fn missing_ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.missing.iter().map(|(s, r)| (*s, r.end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_packets_take_the_fast_path() {
        let mut t = GapTracker::new(1);
        assert_eq!(t.accept_in_order_packet(1, 10), Some(Verdict::New));
        assert_eq!(t.accept_in_order_packet(11, 5), Some(Verdict::New));
        assert_eq!(t.accept_in_order_packet(20, 5), None);
        assert_eq!(t.counts().received, 15);
        assert_eq!(t.next_expected(), 16);
    }

    #[test]
    fn gap_detected_then_recovered_exactly_once() {
        let mut t = GapTracker::new(1);
        for s in 1..=3 {
            assert_eq!(t.accept(s, Via::Live), Verdict::New);
        }
        assert_eq!(t.accept(7, Via::Live), Verdict::New);
        assert_eq!(t.missing_ranges().collect::<Vec<_>>(), vec![(4, 7)]);
        assert_eq!(t.counts().gaps, 1);
        assert_eq!(t.accept(5, Via::Retransmission), Verdict::Filled);
        assert_eq!(t.missing_ranges().collect::<Vec<_>>(), vec![(4, 5), (6, 7)]);
        assert_eq!(t.accept(5, Via::Retransmission), Verdict::Duplicate);
        assert_eq!(t.accept(4, Via::Retransmission), Verdict::Filled);
        assert_eq!(t.accept(6, Via::Live), Verdict::Filled);
        assert_eq!(t.missing_count(), 0);
        let c = t.counts();
        assert_eq!(
            (c.received, c.recovered, c.late, c.duplicates),
            (4, 2, 1, 1)
        );
        assert_eq!(t.accept(2, Via::Live), Verdict::Duplicate);
    }

    #[test]
    fn late_joiner_sees_a_gap_from_one() {
        let mut t = GapTracker::new(1);
        assert_eq!(t.accept_in_order_packet(100, 3), None);
        for s in 100..103 {
            t.accept(s, Via::Live);
        }
        assert_eq!(t.missing_ranges().collect::<Vec<_>>(), vec![(1, 100)]);
    }

    #[test]
    fn heartbeat_and_end_expose_tail_gaps() {
        let mut t = GapTracker::new(1);
        t.accept_in_order_packet(1, 10);
        t.announce_next(15);
        assert_eq!(t.missing_ranges().collect::<Vec<_>>(), vec![(11, 15)]);
        t.end(20);
        assert_eq!(
            t.missing_ranges().collect::<Vec<_>>(),
            vec![(11, 15), (15, 20)]
        );
        assert_eq!(t.known_sent(), 19);
        assert!(!t.is_settled());
        for s in 11..20 {
            t.accept(s, Via::Retransmission);
        }
        assert!(t.is_settled());
        assert_eq!(t.counts().recovered, 9);
    }

    fn policy(chunk: u64) -> RecoveryPolicy {
        RecoveryPolicy {
            timeout_ns: 100,
            max_attempts: 2,
            chunk,
            max_requests: 16,
        }
    }

    #[test]
    fn requests_time_out_retry_and_give_up() {
        let mut t = GapTracker::new(1);
        t.accept(10, Via::Live);
        let p = policy(100);
        assert_eq!(t.due_requests(0, &p), vec![(1, 10)]);
        assert!(t.due_requests(50, &p).is_empty());
        assert_eq!(t.due_requests(100, &p), vec![(1, 10)]);
        // A hole filled in the middle splits the range; both halves keep waiting.
        t.accept(5, Via::Retransmission);
        assert!(t.due_requests(150, &p).is_empty());
        // Two unanswered attempts: given up.
        assert!(t.due_requests(200, &p).is_empty());
        assert_eq!(t.counts().lost, 8);
        assert_eq!(t.missing_count(), 0);
    }

    #[test]
    fn long_ranges_are_recovered_chunk_by_chunk() {
        let mut t = GapTracker::new(1);
        t.accept(11, Via::Live);
        let p = policy(4);
        assert_eq!(t.due_requests(0, &p), vec![(1, 5)]);
        assert!(t.due_requests(1, &p).is_empty());
        for s in 1..5 {
            assert_eq!(t.accept(s, Via::Retransmission), Verdict::Filled);
        }
        // The chunk was answered in full: the next one goes out at once, with a
        // fresh attempt count, so long ranges are not given up for their length.
        assert_eq!(t.due_requests(2, &p), vec![(5, 9)]);
        for s in 5..9 {
            t.accept(s, Via::Retransmission);
        }
        assert_eq!(t.due_requests(3, &p), vec![(9, 11)]);
        t.accept(9, Via::Retransmission);
        t.accept(10, Via::Retransmission);
        assert_eq!(t.counts().recovered, 10);
        assert_eq!(t.counts().lost, 0);
    }

    #[test]
    fn given_up_ranges_are_logged_when_asked() {
        let mut t = GapTracker::new(1).logging_given_up();
        t.accept(1, Via::Live);
        t.accept(5, Via::Live);
        t.accept(9, Via::Live);
        t.mark_unavailable(2, 2);
        t.finish();
        assert_eq!(t.take_given_up(), vec![(2, 4), (4, 5), (6, 9)]);
        assert!(t.take_given_up().is_empty());
        let mut quiet = GapTracker::new(1);
        quiet.accept(3, Via::Live);
        quiet.finish();
        assert!(quiet.take_given_up().is_empty());
        assert_eq!(quiet.counts().lost, 2);
    }

    #[test]
    fn unavailable_ranges_are_lost_at_once() {
        let mut t = GapTracker::new(1);
        t.accept(20, Via::Live);
        t.mark_unavailable(1, 5);
        assert_eq!(t.counts().lost, 5);
        assert_eq!(t.missing_ranges().collect::<Vec<_>>(), vec![(6, 20)]);
        t.finish();
        assert_eq!(t.counts().lost, 19);
        // Given-up messages arriving later are not delivered twice.
        assert_eq!(t.accept(3, Via::Retransmission), Verdict::Duplicate);
    }
}
