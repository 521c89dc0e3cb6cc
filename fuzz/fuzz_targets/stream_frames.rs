//! A TCP feed or order stream cut anywhere: splitting frames and decoding what they
//! hold must never panic and must always make progress.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ticklab_wire::frame::split_frame;
use ticklab_wire::{FeedPacket, Message};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Some((body, used)) = split_frame(rest) {
        assert!(used >= 2 && used <= rest.len());
        let _ = FeedPacket::parse(body).map(|p| p.messages().count());
        let _ = Message::decode(body);
        rest = &rest[used..];
    }
});
