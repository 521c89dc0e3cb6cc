//! An HTTP direction cut into arbitrary chunks, with gaps and an end: decoding must
//! never panic and never return a body over the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ticklab_capture::http::{HttpDecoder, HttpEvent, HttpLimits, HttpRole};

fuzz_target!(|data: &[u8]| {
    let [config, rest @ ..] = data else {
        return;
    };
    let role = if config & 1 == 0 {
        HttpRole::Requests
    } else {
        HttpRole::Responses
    };
    let limits = HttpLimits {
        max_header: 64 << (config >> 5),
        max_body: usize::from(config >> 1 & 0x0f) * 16,
    };
    let mut d = HttpDecoder::new(role, limits);
    let mut out = Vec::new();
    let mut rest = rest;
    let mut ts = 0;
    // Each chunk is preceded by its length byte; 0xff stands for a gap.
    while let [len, tail @ ..] = rest {
        if *len == 0xff {
            d.gap(&mut out);
            rest = tail;
            continue;
        }
        let n = usize::from(*len).min(tail.len());
        d.feed(ts, &tail[..n], &mut out);
        ts += 1;
        rest = &tail[n..];
    }
    d.end(ts, &mut out);
    for e in &out {
        match e {
            HttpEvent::Request { body, .. } | HttpEvent::Response { body, .. } => {
                assert!(body.len() <= limits.max_body);
            }
            HttpEvent::Error(e) => assert!(e.kind().starts_with("http_")),
        }
    }
});
