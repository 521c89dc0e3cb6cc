//! The search for a message boundary in a stream joined mid-way (or after lost bytes),
//! and the TLS record boundary search: any bytes, either side, any starting offset; the
//! answer must lie inside the input, and nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ticklab_capture::resync::{self, Sync};

fuzz_target!(|data: &[u8]| {
    let Some((&first, bytes)) = data.split_first() else {
        return;
    };
    let client = first & 1 == 1;
    let from = usize::from(first >> 1).min(bytes.len());
    match resync::find(client, bytes, from) {
        Sync::Found { offset, .. } => assert!(offset >= from && offset < bytes.len()),
        Sync::NotYet { keep_from } => assert!(keep_from >= from && keep_from <= bytes.len()),
    }
    match ticklab_tls_decrypt::find_record_boundary(bytes) {
        Ok(pos) => assert!(pos + 5 <= bytes.len()),
        Err(keep) => assert!(keep <= bytes.len()),
    }
});
