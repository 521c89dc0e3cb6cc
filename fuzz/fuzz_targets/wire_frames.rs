//! The whole capture pipeline over arbitrary frames: VXLAN (with and without the
//! mirror's trailer) or bare Ethernet, then link, IP, UDP/TCP, reassembly, TLS,
//! WebSocket, HTTP and ticklab's messages. Nothing may panic, whatever the bytes;
//! every frame is counted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ticklab_capture::analyzer::{Analyzer, AnalyzerConfig};
use ticklab_capture::link::LinkType;
use ticklab_capture::wire::Timing;

fuzz_target!(|data: &[u8]| {
    let mut analyzer = Analyzer::new(AnalyzerConfig {
        observe: true,
        max_connections: 8,
        ..Default::default()
    });
    analyzer.add_key_log("CLIENT_RANDOM 0000000000000000000000000000000000000000000000000000000000000000 000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\n");
    // Records: a selector byte, a 2-byte length, then the frame.
    let mut rest = data;
    let mut ts = 1_700_000_000_000_000_000u64;
    let mut frames = 0u64;
    while let [selector, hi, lo, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        let (frame, next) = tail.split_at(len);
        ts += u64::from(*selector) * 1_000;
        match selector % 4 {
            0 => analyzer.vxlan(ts, frame),
            1 => analyzer.frame(ts, Timing::Interface, LinkType::Ethernet, frame),
            2 => analyzer.frame(ts, Timing::Arrival, LinkType::RawIp, frame),
            _ => analyzer.frame(ts, Timing::Interface, LinkType::LinuxSll, frame),
        }
        frames += 1;
        let _ = analyzer.take_observations();
        rest = next;
    }
    analyzer.flush();
    let report = analyzer.report();
    assert_eq!(report.frames, frames);
});
