//! Property tests of TCP reassembly: a random byte stream cut into random segments,
//! reordered, duplicated, overlapped, dropped and truncated as mirroring does, must
//! come out byte-exact, with gaps exactly where bytes were never captured.

use proptest::prelude::*;
use proptest::sample::Index;
use ticklab_capture::tcp::{Limits, Reassembler, StreamEvent, TcpFlags};

/// One segment to send: stream offset, length sent, bytes captured of it.
#[derive(Debug, Clone, Copy)]
struct Seg {
    off: usize,
    len: usize,
    captured: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Item {
    Data(Vec<u8>),
    Gap(u64),
    Fin,
    Reset,
}

/// Merges adjacent data and adjacent gaps, so that how the output is cut does not
/// matter.
fn normalize(events: &[StreamEvent]) -> Vec<Item> {
    let mut items: Vec<Item> = Vec::new();
    for e in events {
        match (e, items.last_mut()) {
            (StreamEvent::Data { bytes, .. }, Some(Item::Data(d))) => d.extend_from_slice(bytes),
            (StreamEvent::Data { bytes, .. }, _) => items.push(Item::Data(bytes.clone())),
            (StreamEvent::Gap { missing, .. }, Some(Item::Gap(g))) => *g += missing,
            (StreamEvent::Gap { missing, .. }, _) => items.push(Item::Gap(*missing)),
            (StreamEvent::Fin { .. }, _) => items.push(Item::Fin),
            (StreamEvent::Reset { .. }, _) => items.push(Item::Reset),
        }
    }
    items
}

/// The original with the bytes not in `present` replaced by gaps.
fn expected(data: &[u8], present: &[bool], fin: bool) -> Vec<Item> {
    let mut items: Vec<Item> = Vec::new();
    for (i, &b) in data.iter().enumerate() {
        match (present[i], items.last_mut()) {
            (true, Some(Item::Data(d))) => d.push(b),
            (true, _) => items.push(Item::Data(vec![b])),
            (false, Some(Item::Gap(g))) => *g += 1,
            (false, _) => items.push(Item::Gap(1)),
        }
    }
    if fin {
        items.push(Item::Fin);
    }
    items
}

/// A small deterministic generator for shuffles and choices, seeded by proptest.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*; a zero seed would stay zero.
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

/// Cuts `len` bytes at the given points into consecutive segments.
fn partition(len: usize, cuts: &[usize]) -> Vec<Seg> {
    let mut points: Vec<usize> = cuts.iter().map(|&c| c % len).filter(|&c| c > 0).collect();
    points.push(0);
    points.push(len);
    points.sort_unstable();
    points.dedup();
    points
        .windows(2)
        .map(|w| Seg {
            off: w[0],
            len: w[1] - w[0],
            captured: w[1] - w[0],
        })
        .collect()
}

fn seq_of(isn: u32, off: usize) -> u32 {
    isn.wrapping_add(1).wrapping_add(off as u32)
}

const NONE: TcpFlags = TcpFlags {
    syn: false,
    fin: false,
    rst: false,
};

/// What to send: segments in arrival order, where the SYN goes (None: not captured),
/// and whether a FIN closes the stream (sent last, as its own segment).
struct Run<'a> {
    isn: u32,
    data: &'a [u8],
    arrivals: Vec<Seg>,
    syn_at: Option<usize>,
    fin: bool,
    limits: Limits,
}

/// Sends everything with capture times 1, 2, 3... in arrival order, then flushes;
/// checks the held bytes stay within the limit after every segment.
fn run(r: &Run) -> (Vec<StreamEvent>, Reassembler) {
    let mut re = Reassembler::new(r.limits);
    let mut out = Vec::new();
    let mut ts = 0;
    let max_seg = r.arrivals.iter().map(|s| s.len).max().unwrap_or(0);
    for (i, s) in r.arrivals.iter().enumerate() {
        if r.syn_at == Some(i) {
            ts += 1;
            let syn = TcpFlags { syn: true, ..NONE };
            re.segment(ts, r.isn, syn, &[], 0, &mut out);
        }
        ts += 1;
        let payload = &r.data[s.off..s.off + s.captured];
        re.segment(ts, seq_of(r.isn, s.off), NONE, payload, s.len, &mut out);
        assert!(re.buffered_bytes() <= r.limits.max_buffered_bytes.max(max_seg));
    }
    if r.syn_at.is_some_and(|at| at >= r.arrivals.len()) {
        ts += 1;
        let syn = TcpFlags { syn: true, ..NONE };
        re.segment(ts, r.isn, syn, &[], 0, &mut out);
    }
    if r.fin {
        ts += 1;
        let fin = TcpFlags { fin: true, ..NONE };
        re.segment(ts, seq_of(r.isn, r.data.len()), fin, &[], 0, &mut out);
    }
    re.flush(&mut out);
    (out, re)
}

/// Per byte of the stream, the capture time at which the receiver had it: the latest
/// first arrival among it and every byte before it.
fn expected_times(len: usize, arrivals: &[Seg], times: &[u64]) -> Vec<u64> {
    let mut first = vec![u64::MAX; len];
    for (s, &t) in arrivals.iter().zip(times) {
        for f in &mut first[s.off..s.off + s.captured] {
            *f = (*f).min(t);
        }
    }
    let mut max = 0;
    first
        .iter()
        .map(|&f| {
            max = max.max(f);
            max
        })
        .collect()
}

fn delivered_times(events: &[StreamEvent]) -> Vec<u64> {
    events
        .iter()
        .flat_map(|e| match e {
            StreamEvent::Data { ts_ns, bytes } => vec![*ts_ns; bytes.len()],
            _ => Vec::new(),
        })
        .collect()
}

fn isn_strategy() -> impl Strategy<Value = u32> {
    prop_oneof![any::<u32>(), (0u32..5000).prop_map(|x| u32::MAX - x)]
}

/// A stream and how it is cut: data, cut points, extra overlapping ranges, segments
/// to send twice, a seed for the order and choices, the ISN.
type Cutting = (
    Vec<u8>,
    Vec<usize>,
    Vec<(usize, usize)>,
    Vec<Index>,
    u64,
    u32,
);

fn cutting() -> impl Strategy<Value = Cutting> {
    (
        prop::collection::vec(any::<u8>(), 1..3000),
        prop::collection::vec(any::<usize>(), 0..40),
        prop::collection::vec((any::<usize>(), 1usize..500), 0..12),
        prop::collection::vec(any::<Index>(), 0..12),
        any::<u64>().prop_map(|s| s | 1),
        isn_strategy(),
    )
}

/// Partition plus duplicates plus overlapping ranges (consistent content).
fn with_copies(
    data: &[u8],
    cuts: &[usize],
    overlaps: &[(usize, usize)],
    dups: &[Index],
) -> Vec<Seg> {
    let len = data.len();
    let mut segs = partition(len, cuts);
    let base = segs.clone();
    for d in dups {
        segs.push(*d.get(&base));
    }
    for &(off, l) in overlaps {
        let off = off % len;
        let l = l.min(len - off);
        segs.push(Seg {
            off,
            len: l,
            captured: l,
        });
    }
    segs
}

fn hold_all() -> Limits {
    Limits {
        start_hold_segments: usize::MAX,
        start_hold_ns: u64::MAX,
        ..Limits::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Reordered, duplicated and overlapping segments reassemble to the original
    /// exactly, with no gap, whether the SYN comes first, late, or not at all (then
    /// the start is held until the flush); each byte carries the time at which it and
    /// every byte before it had arrived.
    #[test]
    fn reorder_duplicate_overlap_reassemble_exactly(
        (data, cuts, overlaps, dups, seed, isn) in cutting(),
        variant in 0..3u8,
    ) {
        let mut rng = Rng(seed);
        let mut arrivals = with_copies(&data, &cuts, &overlaps, &dups);
        rng.shuffle(&mut arrivals);
        let (syn_at, limits) = match variant {
            0 => (Some(0), Limits::default()),
            1 => (Some(rng.below(arrivals.len() + 1)), hold_all()),
            _ => (None, hold_all()),
        };
        let r = Run { isn, data: &data, arrivals, syn_at, fin: true, limits };
        let (events, re) = run(&r);
        prop_assert_eq!(normalize(&events), expected(&data, &vec![true; data.len()], true));
        prop_assert_eq!(re.stats().gaps, 0);
        prop_assert_eq!(re.stats().bytes_delivered, data.len() as u64);
        prop_assert_eq!(re.buffered_bytes(), 0);

        // Times: arrival i is sent at 1 + i, plus one for a SYN sent before it.
        let times: Vec<u64> = (0..r.arrivals.len())
            .map(|i| 1 + i as u64 + u64::from(syn_at.is_some_and(|at| at <= i)))
            .collect();
        prop_assert_eq!(delivered_times(&events), expected_times(data.len(), &r.arrivals, &times));
    }

    /// Dropped segments become gaps of exactly their sizes (adjacent ones merged), the
    /// data around them byte-exact, after the flush.
    #[test]
    fn dropped_segments_become_exact_gaps(
        (data, cuts, _overlaps, dups, seed, isn) in cutting(),
        late_syn in any::<bool>(),
    ) {
        let mut rng = Rng(seed);
        let base = partition(data.len(), &cuts);
        let keep: Vec<bool> = base.iter().map(|_| rng.below(4) != 0).collect();
        let mut present = vec![false; data.len()];
        let mut arrivals = Vec::new();
        for (s, &k) in base.iter().zip(&keep) {
            if k {
                present[s.off..s.off + s.len].iter_mut().for_each(|p| *p = true);
                arrivals.push(*s);
            }
        }
        // Duplicates of kept segments only: a copy of a dropped one would fill it.
        for d in &dups {
            let s = *d.get(&base);
            if present[s.off] {
                arrivals.push(s);
            }
        }
        rng.shuffle(&mut arrivals);
        let (syn_at, limits) = if late_syn {
            (Some(rng.below(arrivals.len() + 1)), hold_all())
        } else {
            (Some(0), Limits::default())
        };
        let r = Run { isn, data: &data, arrivals, syn_at, fin: true, limits };
        let (events, re) = run(&r);
        let want = expected(&data, &present, true);
        let gaps = want.iter().filter(|i| matches!(i, Item::Gap(_))).count() as u64;
        prop_assert_eq!(normalize(&events), want);
        prop_assert_eq!(re.stats().gaps, gaps);
        prop_assert_eq!(re.stats().gap_bytes, present.iter().filter(|p| !**p).count() as u64);
    }

    /// Segments truncated by the snap length: each missing tail is a gap, never
    /// invented bytes; the captured heads are exact.
    #[test]
    fn truncated_segments_gap_their_tails(
        (data, cuts, _overlaps, _dups, seed, isn) in cutting(),
    ) {
        let mut rng = Rng(seed);
        let mut present = vec![true; data.len()];
        let mut arrivals = partition(data.len(), &cuts);
        for s in &mut arrivals {
            if rng.below(3) == 0 {
                s.captured = rng.below(s.len + 1);
                present[s.off + s.captured..s.off + s.len].iter_mut().for_each(|p| *p = false);
            }
        }
        rng.shuffle(&mut arrivals);
        let r = Run { isn, data: &data, arrivals, syn_at: Some(0), fin: true, limits: Limits::default() };
        let (events, re) = run(&r);
        prop_assert_eq!(normalize(&events), expected(&data, &present, true));
        prop_assert_eq!(re.stats().gap_bytes, present.iter().filter(|p| !**p).count() as u64);
    }

    /// With small limits, losses, reordering and copies, the output stays consistent
    /// with the original: every data byte is the original's at its offset, gaps
    /// account for the rest, and the FIN ends it at the original's length.
    #[test]
    fn small_limits_stay_consistent(
        (data, cuts, overlaps, dups, seed, isn) in cutting(),
        max_buffered_bytes in 0usize..600,
        max_segments in 0usize..6,
    ) {
        let mut rng = Rng(seed);
        let mut arrivals: Vec<Seg> = with_copies(&data, &cuts, &overlaps, &dups)
            .into_iter()
            .filter(|_| rng.below(5) != 0)
            .collect();
        rng.shuffle(&mut arrivals);
        let limits = Limits { max_buffered_bytes, max_segments, ..Limits::default() };
        let r = Run { isn, data: &data, arrivals, syn_at: Some(0), fin: true, limits };
        let (events, _) = run(&r);
        let mut at = 0usize;
        let mut fin = false;
        for e in &events {
            prop_assert!(!fin, "event after the FIN");
            match e {
                StreamEvent::Data { bytes, .. } => {
                    prop_assert_eq!(&bytes[..], &data[at..at + bytes.len()]);
                    at += bytes.len();
                }
                StreamEvent::Gap { missing, .. } => at += *missing as usize,
                StreamEvent::Fin { .. } => fin = true,
                StreamEvent::Reset { .. } => prop_assert!(false, "no reset was sent"),
            }
        }
        prop_assert!(fin);
        prop_assert_eq!(at, data.len());
    }

    /// Arbitrary segments (any sequence numbers, flags, lengths, truncation) never
    /// panic and never hold more than the limits allow.
    #[test]
    fn arbitrary_segments_are_bounded(
        segs in prop::collection::vec(
            (any::<u32>(), 0u32..4000, any::<u8>(), 0usize..300, 0usize..400, any::<bool>()),
            1..80,
        ),
    ) {
        let limits = Limits { max_buffered_bytes: 1000, max_segments: 8, ..Limits::default() };
        let mut re = Reassembler::new(limits);
        let mut out = Vec::new();
        let base = segs[0].0;
        for (i, &(far, near, flags, len, original, use_far)) in segs.iter().enumerate() {
            let seq = if use_far { far } else { base.wrapping_add(near) };
            let payload = vec![i as u8; len];
            re.segment(i as u64, seq, TcpFlags::from_bits(flags), &payload, original, &mut out);
            prop_assert!(re.buffered_bytes() <= 1000 + 300);
        }
        re.flush(&mut out);
        let delivered: u64 = out
            .iter()
            .map(|e| match e { StreamEvent::Data { bytes, .. } => bytes.len() as u64, _ => 0 })
            .sum();
        prop_assert_eq!(delivered, re.stats().bytes_delivered);
    }
}

/// A mid-connection capture (no SYN) whose first segments arrive out of order: the
/// start hold places the earlier one.
#[test]
fn mid_connection_start_with_reordering() {
    let data: Vec<u8> = (0..100u8).collect();
    let mut re = Reassembler::new(Limits {
        start_hold_segments: 3,
        ..Limits::default()
    });
    let mut out = Vec::new();
    let isn = 4_000_000_000u32;
    re.segment(1, seq_of(isn, 30), NONE, &data[30..60], 30, &mut out);
    re.segment(2, seq_of(isn, 0), NONE, &data[0..30], 30, &mut out);
    re.segment(3, seq_of(isn, 60), NONE, &data[60..100], 40, &mut out);
    assert_eq!(
        normalize(&out),
        vec![Item::Data(data.clone())],
        "all three placed"
    );
    assert_eq!(re.next_seq(), Some(seq_of(isn, 100)));
}
