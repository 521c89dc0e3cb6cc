//! How long joining a TLS 1.3 connection mid-stream takes, by how many records it sent
//! before the capture saw it: a record sealed at sequence number N under one of K
//! application traffic secrets in the key log, fed to a connection joined mid-stream.
//! Prints the time to the first decrypted record. Run with
//! `cargo run --release -p ticklab-tls-decrypt --example join_cost`.
#![allow(clippy::unwrap_used)] // an example: a failure is a crash with a message

use std::time::Instant;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use hkdf::Hkdf;
use sha2::Sha384;
use ticklab_tls_decrypt::{Direction, KeyLog, Limits, TlsConnection, TlsEvent};

fn expand_label(secret: &[u8], label: &str, len: usize) -> Vec<u8> {
    let full = format!("tls13 {label}");
    let mut info = (len as u16).to_be_bytes().to_vec();
    info.push(full.len() as u8);
    info.extend_from_slice(full.as_bytes());
    info.push(0);
    let mut out = vec![0u8; len];
    Hkdf::<Sha384>::from_prk(secret)
        .unwrap()
        .expand(&info, &mut out)
        .unwrap();
    out
}

/// A TLS_AES_256_GCM_SHA384 application data record at `seq`.
fn record(secret: &[u8], seq: u64, plain: &[u8]) -> Vec<u8> {
    let key = expand_label(secret, "key", 32);
    let iv = expand_label(secret, "iv", 12);
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&iv);
    for (n, s) in nonce[4..].iter_mut().zip(seq.to_be_bytes()) {
        *n ^= s;
    }
    let mut body = plain.to_vec();
    body.push(23);
    let len = (body.len() + 16) as u16;
    let header = [23, 3, 3, (len >> 8) as u8, len as u8];
    let tag = Aes256Gcm::new_from_slice(&key)
        .unwrap()
        .encrypt_in_place_detached(Nonce::from_slice(&nonce), &header, &mut body)
        .unwrap();
    let mut out = header.to_vec();
    out.extend_from_slice(&body);
    out.extend_from_slice(&tag);
    out
}

fn main() {
    println!("{:>12} {:>8} {:>12}", "records", "secrets", "join (ms)");
    for secrets in [1usize, 8] {
        let mut keys = KeyLog::new();
        let mut text = String::new();
        for i in 0..secrets {
            text.push_str(&format!(
                "SERVER_TRAFFIC_SECRET_0 {} {}\n",
                format!("{:02x}", i).repeat(32),
                format!("{:02x}", 0x40 + i).repeat(48)
            ));
        }
        keys.add_text(&text);
        // The connection's own secret is the last one logged.
        let secret = vec![0x40 + (secrets as u8 - 1); 48];
        for seq in [1_000u64, 100_000, 1_000_000, 10_000_000] {
            let bytes = record(&secret, seq, b"a feed packet of some tens of bytes");
            let mut conn = TlsConnection::mid_stream(Limits::default());
            let mut out = Vec::new();
            let start = Instant::now();
            conn.feed(Direction::ServerToClient, 1, &bytes, &keys, &mut out);
            let took = start.elapsed();
            assert!(
                out.iter()
                    .any(|e| matches!(e, TlsEvent::ApplicationData { .. })),
                "{out:?}"
            );
            println!("{seq:>12} {secrets:>8} {:>12.2}", took.as_secs_f64() * 1e3);
        }
    }
}
