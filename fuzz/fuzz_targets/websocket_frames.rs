//! A WebSocket direction cut into arbitrary chunks, with gaps: decoding must never
//! panic, never return a message over the limit, and say nothing after a gap but the
//! gap itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ticklab_capture::websocket::{Role, WsDecoder, WsEvent, WsLimits};

fuzz_target!(|data: &[u8]| {
    let [config, rest @ ..] = data else {
        return;
    };
    let role = if config & 1 == 0 {
        Role::Client
    } else {
        Role::Server
    };
    let limits = WsLimits {
        max_message: 1 << (config >> 4),
        max_handshake: 256,
    };
    // Most inputs skip the handshake, so the fuzzer reaches the frames.
    let mut d = if config & 2 == 0 {
        WsDecoder::without_handshake(role, limits)
    } else {
        WsDecoder::new(role, limits)
    };
    let mut out = Vec::new();
    let mut rest = rest;
    let mut ts = 0;
    let mut gapped = false;
    // Each chunk is preceded by its length byte; 0xff stands for a gap.
    while let [len, tail @ ..] = rest {
        if *len == 0xff {
            d.gap(&mut out);
            gapped = true;
            rest = tail;
            continue;
        }
        let n = usize::from(*len).min(tail.len());
        let before = out.len();
        d.feed(ts, &tail[..n], &mut out);
        if gapped {
            assert_eq!(out.len(), before, "nothing decoded after a gap");
        }
        ts += 1;
        rest = &tail[n..];
    }
    for e in &out {
        if let WsEvent::Message { payload, .. } = e {
            assert!(payload.len() <= limits.max_message);
        }
    }
});
