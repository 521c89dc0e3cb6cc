//! Mirrored TCP segments in any order, overlap, truncation and flags over one pattern
//! stream: reassembly must never panic, never hold more than its limits, and deliver
//! exactly the stream's bytes (each at its place, gaps standing for the rest).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ticklab_capture::tcp::{Limits, Reassembler, StreamEvent, TcpFlags};

/// Near the top of the sequence space, so the wraparound is crossed often.
const BASE_SEQ: u32 = 0xffff_8000;

/// The byte at sequence number `seq` of the sender's stream.
fn pattern(seq: u32) -> u8 {
    (seq.wrapping_mul(0x9e37_79b9) >> 24) as u8
}

fuzz_target!(|data: &[u8]| {
    let [config, hold, rest @ ..] = data else {
        return;
    };
    let limits = Limits {
        max_buffered_bytes: usize::from(config & 0x0f) * 64,
        max_segments: usize::from(config >> 4),
        start_hold_segments: usize::from(hold % 5),
        start_hold_ns: u64::from(hold / 5) * 10,
        recent_bytes_kept: 100,
    };
    let mut r = Reassembler::new(limits);
    let mut out = Vec::new();
    let mut ts = 0u64;
    // Records of 6 bytes: sequence offset (u16), flags, length sent, length captured,
    // time step. Flag bit 0x80 (not a TCP flag here) asks for a flush afterwards.
    for rec in rest.chunks_exact(6) {
        let offset = u16::from_le_bytes([rec[0], rec[1]]);
        let seq = BASE_SEQ.wrapping_add(u32::from(offset));
        let len = usize::from(rec[3]) * 3;
        let captured = usize::from(rec[4]).min(len);
        ts += u64::from(rec[5]);
        let payload: Vec<u8> = (0..captured as u32)
            .map(|i| pattern(seq.wrapping_add(i)))
            .collect();
        // SYN data starts one after the SYN's own sequence number.
        let flags = TcpFlags::from_bits(rec[2]);
        let payload: Vec<u8> = if flags.syn {
            (0..captured as u32)
                .map(|i| pattern(seq.wrapping_add(1 + i)))
                .collect()
        } else {
            payload
        };
        r.segment(ts, seq, flags, &payload, len, &mut out);
        assert!(r.buffered_bytes() <= limits.max_buffered_bytes);
        if rec[2] & 0x80 != 0 {
            r.flush(&mut out);
        }
        r.advance_time(ts, &mut out);
    }
    r.flush(&mut out);

    // Every delivered byte is the pattern at its sequence number: find the start from
    // where the stream ended up, then walk the events.
    let delivered: u64 = out
        .iter()
        .map(|e| match e {
            StreamEvent::Data { bytes, .. } => bytes.len() as u64,
            _ => 0,
        })
        .sum();
    assert_eq!(delivered, r.stats().bytes_delivered);
    if let Some(next) = r.next_seq() {
        let total: u64 = out
            .iter()
            .map(|e| match e {
                StreamEvent::Data { bytes, .. } => bytes.len() as u64,
                StreamEvent::Gap { missing, .. } => *missing,
                _ => 0,
            })
            .sum();
        let mut seq = next.wrapping_sub(total as u32);
        for e in &out {
            match e {
                StreamEvent::Data { bytes, .. } => {
                    for &b in bytes {
                        assert_eq!(b, pattern(seq));
                        seq = seq.wrapping_add(1);
                    }
                }
                StreamEvent::Gap { missing, .. } => seq = seq.wrapping_add(*missing as u32),
                StreamEvent::Fin { .. } | StreamEvent::Reset { .. } => {}
            }
        }
    }
});
