//! Any bytes a socket hands us: packet and message decoders must return errors, never
//! panic, and whatever decodes must re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ticklab_wire::{FeedPacket, Message, PacketKind, RetransmitRequest};

fuzz_target!(|data: &[u8]| {
    if let Ok(packet) = FeedPacket::parse(data) {
        let mut decoded = 0usize;
        for (_, message) in packet.messages() {
            if let Ok(m) = message {
                let mut again = Vec::new();
                m.encode(&mut again);
                assert_eq!(Message::decode(&again), Ok(m));
            }
            decoded += 1;
        }
        if packet.kind == PacketKind::Data {
            assert_eq!(decoded, usize::from(packet.message_count()));
        }
    }
    if let Ok(m) = Message::decode(data) {
        let mut again = Vec::new();
        m.encode(&mut again);
        assert_eq!(again.as_slice(), data);
    }
    if let Ok(r) = RetransmitRequest::decode(data) {
        let mut again = Vec::new();
        r.encode(&mut again);
        assert_eq!(again.as_slice(), data);
    }
});
