//! Any bytes as a recording (pcap, pcapng, JSON lines, or garbage): the reader
//! returns an error or feed packets, never panics; what it returns is replayable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ticklab_wire::{FeedPacket, PacketKind};

fuzz_target!(|data: &[u8]| {
    if let Ok(feed) = ticklab_recording::load_feed_bytes("fuzz", data) {
        let mut last = 0;
        for packet in &feed.packets {
            let parsed = FeedPacket::parse(&packet.payload).expect("only feed packets are kept");
            assert_eq!(parsed.kind, PacketKind::Data);
            assert!(packet.ts_ns >= last, "the schedule never goes backwards");
            last = packet.ts_ns;
        }
        let _ = ticklab_recording::original_latency(&feed);
    }
});
