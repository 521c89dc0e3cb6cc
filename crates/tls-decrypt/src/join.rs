//! Joining a TLS 1.3 connection whose handshake the capture missed (a mirror that started
//! after the client connected). Without the hellos there is no client_random to look the
//! keys up by and no record count for the nonce, so each application traffic secret of the
//! key log is tried against one record at every sequence number up to a bound: a 128-bit
//! tag that verifies names the secret, the suite and the sequence number at once.
//!
//! For AES-GCM the GHASH of a record does not depend on the nonce, so a candidate sequence
//! number costs one AES block (`E(K, nonce || 1)` against `tag ^ GHASH`), batched so the
//! cipher can pipeline; ChaCha20-Poly1305 derives its MAC key from the nonce and costs a
//! full tag check per candidate, so its bound is lower. TLS 1.2 cannot be joined: its keys
//! need the server random of the ServerHello.

use aes::cipher::{BlockEncrypt, KeyInit};
use aes::{Aes128, Aes256};
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, Nonce, Tag};
use ghash::GHash;
use ghash::universal_hash::UniversalHash;

use crate::crypto::{hkdf_expand_label, next_traffic_secret};
use crate::suites::{self, Aead, Suite};

const TAG_LEN: usize = 16;
/// Blocks encrypted per batch (AES-NI pipelines several blocks at once).
const BATCH: usize = 64;
/// Key updates (RFC 8446 §4.6.3) a connection may have made before the capture joined.
pub(crate) const MAX_GENERATIONS: u32 = 3;

/// A key log secret that opened a record mid-stream.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    pub(crate) client_random: [u8; 32],
    pub(crate) suite: &'static Suite,
    /// The traffic secret in use (after `generation` key updates of the logged one).
    pub(crate) secret: Vec<u8>,
    pub(crate) generation: u32,
    /// Sequence number of the record tried.
    pub(crate) seq: u64,
}

/// One candidate: a secret under one suite, its key and iv derived once.
struct Candidate<'a> {
    client_random: [u8; 32],
    suite: &'static Suite,
    secret: Vec<u8>,
    generation: u32,
    trial: Trial<'a>,
}

enum Trial<'a> {
    Gcm(GcmTrial),
    ChaCha(ChaChaTrial<'a>),
}

/// Searches `candidates` (client_random, logged secret) for the one that opens the TLS 1.3
/// record `header` + `payload`, trying sequence numbers from `from` up to `max_seq`
/// (ChaCha20-Poly1305 up to `max_seq_chacha`). `suite` restricts the search once the connection's suite is
/// known. Sequence numbers are searched in growing windows over all candidates, so a young
/// connection is found quickly however many secrets the key log holds.
pub(crate) fn find(
    candidates: &[([u8; 32], &[u8])],
    header: [u8; 5],
    payload: &[u8],
    from: u64,
    max_seq: u64,
    max_seq_chacha: u64,
    suite: Option<&'static Suite>,
) -> Option<Found> {
    if payload.len() < TAG_LEN + 1 {
        return None;
    }
    let mut trials = Vec::new();
    for (client_random, logged) in candidates {
        let mut secret = logged.to_vec();
        for generation in 0..=MAX_GENERATIONS {
            for s in suites_for(secret.len(), suite) {
                if let Some(trial) = Trial::new(s, &secret, &header, payload) {
                    trials.push(Candidate {
                        client_random: *client_random,
                        suite: s,
                        secret: secret.clone(),
                        generation,
                        trial,
                    });
                }
            }
            let Some(hash) = suites_for(secret.len(), suite).first().map(|s| s.hash) else {
                break;
            };
            match next_traffic_secret(hash, &secret) {
                Some(next) => secret = next,
                None => break,
            }
        }
    }
    let mut start = from;
    let mut end = from.saturating_add(1024).min(max_seq.saturating_add(1));
    while start < end {
        for c in &trials {
            let limit = match c.trial {
                Trial::Gcm(_) => end,
                Trial::ChaCha(_) => end.min(max_seq_chacha.saturating_add(1)),
            };
            if let Some(seq) = c.trial.search(start, limit) {
                return Some(Found {
                    client_random: c.client_random,
                    suite: c.suite,
                    secret: c.secret.clone(),
                    generation: c.generation,
                    seq,
                });
            }
        }
        start = end;
        end = (from + (end - from).saturating_mul(16)).min(max_seq.saturating_add(1));
    }
    None
}

/// TLS 1.3 suites whose hash has this secret length.
fn suites_for(secret_len: usize, only: Option<&'static Suite>) -> Vec<&'static Suite> {
    suites::all()
        .iter()
        .filter(|s| s.tls13 && s.hash.len() == secret_len)
        .filter(|s| only.is_none_or(|o| o.id == s.id))
        .collect()
}

impl<'a> Trial<'a> {
    fn new(suite: &Suite, secret: &[u8], header: &[u8; 5], payload: &'a [u8]) -> Option<Self> {
        let key = hkdf_expand_label(suite.hash, secret, "key", &[], suite.aead.key_len())?;
        let iv: [u8; 12] = hkdf_expand_label(suite.hash, secret, "iv", &[], 12)?
            .try_into()
            .ok()?;
        Some(match suite.aead {
            Aead::Aes128Gcm => Trial::Gcm(GcmTrial::new(
                Box::new(Aes128::new_from_slice(&key).ok()?),
                iv,
                header,
                payload,
            )),
            Aead::Aes256Gcm => Trial::Gcm(GcmTrial::new(
                Box::new(Aes256::new_from_slice(&key).ok()?),
                iv,
                header,
                payload,
            )),
            Aead::ChaCha20Poly1305 => Trial::ChaCha(ChaChaTrial {
                cipher: Box::new(ChaCha20Poly1305::new_from_slice(&key).ok()?),
                iv,
                header: *header,
                payload,
            }),
        })
    }

    /// The sequence number in `start..end` under which the record authenticates.
    fn search(&self, start: u64, end: u64) -> Option<u64> {
        match self {
            Trial::Gcm(t) => t.search(start, end),
            Trial::ChaCha(t) => t.search(start, end),
        }
    }
}

/// A block cipher that can encrypt many blocks at once (AES-128 or AES-256).
trait Blocks {
    fn encrypt(&self, blocks: &mut [aes::Block]);
}

impl Blocks for Aes128 {
    fn encrypt(&self, blocks: &mut [aes::Block]) {
        self.encrypt_blocks(blocks);
    }
}

impl Blocks for Aes256 {
    fn encrypt(&self, blocks: &mut [aes::Block]) {
        self.encrypt_blocks(blocks);
    }
}

/// GCM's tag is `E(K, J0) ^ GHASH(H, aad, ciphertext)` with `J0 = nonce || 1` (NIST SP
/// 800-38D §7.2): with the GHASH computed once, each nonce costs one block.
struct GcmTrial {
    cipher: Box<dyn Blocks>,
    iv: [u8; 12],
    /// `tag ^ GHASH`: what `E(K, J0)` must be.
    want: [u8; 16],
}

impl GcmTrial {
    fn new(cipher: Box<dyn Blocks>, iv: [u8; 12], header: &[u8; 5], payload: &[u8]) -> Self {
        let (ciphertext, tag) = payload.split_at(payload.len() - TAG_LEN);
        let mut h = [aes::Block::default()];
        cipher.encrypt(&mut h);
        let mut ghash = GHash::new(&h[0]);
        ghash.update_padded(header);
        ghash.update_padded(ciphertext);
        let mut lengths = aes::Block::default();
        lengths[..8].copy_from_slice(&(8 * header.len() as u64).to_be_bytes());
        lengths[8..].copy_from_slice(&(8 * ciphertext.len() as u64).to_be_bytes());
        ghash.update(&[lengths]);
        let s = ghash.finalize();
        let mut want = [0u8; 16];
        for (w, (t, s)) in want.iter_mut().zip(tag.iter().zip(s.iter())) {
            *w = t ^ s;
        }
        GcmTrial { cipher, iv, want }
    }

    fn search(&self, start: u64, end: u64) -> Option<u64> {
        let mut blocks = [aes::Block::default(); BATCH];
        let mut base = start;
        while base < end {
            let n = usize::try_from((end - base).min(BATCH as u64)).unwrap_or(BATCH);
            for (i, block) in blocks[..n].iter_mut().enumerate() {
                let nonce = nonce(&self.iv, base + i as u64);
                block[..12].copy_from_slice(&nonce);
                block[12..].copy_from_slice(&1u32.to_be_bytes());
            }
            self.cipher.encrypt(&mut blocks[..n]);
            if let Some(i) = blocks[..n].iter().position(|b| b[..] == self.want[..]) {
                return Some(base + i as u64);
            }
            base += n as u64;
        }
        None
    }
}

struct ChaChaTrial<'a> {
    cipher: Box<ChaCha20Poly1305>,
    iv: [u8; 12],
    header: [u8; 5],
    payload: &'a [u8],
}

impl ChaChaTrial<'_> {
    fn search(&self, start: u64, end: u64) -> Option<u64> {
        let (ciphertext, tag) = self.payload.split_at(self.payload.len() - TAG_LEN);
        let tag = Tag::from_slice(tag);
        let mut scratch = ciphertext.to_vec();
        (start..end).find(|&seq| {
            let nonce = nonce(&self.iv, seq);
            // The tag is checked before anything is decrypted, so a failed attempt leaves
            // the scratch copy as it was.
            let opened = self
                .cipher
                .decrypt_in_place_detached(
                    Nonce::from_slice(&nonce),
                    &self.header,
                    &mut scratch,
                    tag,
                )
                .is_ok();
            if opened {
                scratch.copy_from_slice(ciphertext);
            }
            opened
        })
    }
}

/// The TLS 1.3 per-record nonce (RFC 8446 §5.3): iv XOR the 64-bit sequence number.
fn nonce(iv: &[u8; 12], seq: u64) -> [u8; 12] {
    let mut nonce = *iv;
    for (n, s) in nonce[4..].iter_mut().zip(seq.to_be_bytes()) {
        *n ^= s;
    }
    nonce
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::RecordOpener;

    /// A TLS 1.3 record sealed under `secret` at `seq` (the crate only opens, so tests seal
    /// with the same primitives).
    fn seal(suite: &Suite, secret: &[u8], seq: u64, plain: &[u8]) -> ([u8; 5], Vec<u8>) {
        let key = hkdf_expand_label(suite.hash, secret, "key", &[], suite.aead.key_len()).unwrap();
        let iv: [u8; 12] = hkdf_expand_label(suite.hash, secret, "iv", &[], 12)
            .unwrap()
            .try_into()
            .unwrap();
        let mut body = plain.to_vec();
        body.push(23); // inner content type: application data
        let len = u16::try_from(body.len() + TAG_LEN).unwrap().to_be_bytes();
        let header = [23, 3, 3, len[0], len[1]];
        let n = nonce(&iv, seq);
        let tag = match suite.aead {
            Aead::Aes128Gcm => aes_gcm::Aes128Gcm::new_from_slice(&key)
                .unwrap()
                .encrypt_in_place_detached(aes_gcm::Nonce::from_slice(&n), &header, &mut body)
                .unwrap(),
            Aead::Aes256Gcm => aes_gcm::Aes256Gcm::new_from_slice(&key)
                .unwrap()
                .encrypt_in_place_detached(aes_gcm::Nonce::from_slice(&n), &header, &mut body)
                .unwrap(),
            Aead::ChaCha20Poly1305 => ChaCha20Poly1305::new_from_slice(&key)
                .unwrap()
                .encrypt_in_place_detached(Nonce::from_slice(&n), &header, &mut body)
                .unwrap(),
        };
        body.extend_from_slice(&tag);
        (header, body)
    }

    fn suite(id: u16) -> &'static Suite {
        suites::find(id).unwrap()
    }

    #[test]
    fn each_suite_is_found_with_its_secret_and_sequence_number() {
        let other = [7u8; 48];
        for (id, len, seq) in [(0x1301, 32, 0), (0x1302, 48, 4_321), (0x1303, 32, 1_500)] {
            let secret = vec![id as u8; len];
            let (header, payload) = seal(suite(id), &secret, seq, b"a tick");
            let candidates = [([1u8; 32], &other[..len]), ([2u8; 32], &secret[..])];
            let found = find(&candidates, header, &payload, 0, 1 << 16, 1 << 12, None)
                .unwrap_or_else(|| panic!("suite {id:04x} not found"));
            assert_eq!(found.client_random, [2u8; 32]);
            assert_eq!(found.suite.id, id);
            assert_eq!(found.seq, seq);
            assert_eq!(found.generation, 0);
            // The opener the connection builds from it opens the record.
            let mut opener = RecordOpener::tls13(found.suite, &found.secret).unwrap();
            opener.set_seq(found.seq);
            let plain = opener.open(header, payload).unwrap();
            assert_eq!(&plain[..plain.len() - 1], b"a tick");
        }
    }

    #[test]
    fn a_secret_after_key_updates_is_found() {
        let s = suite(0x1301);
        let logged = vec![9u8; 32];
        let updated =
            next_traffic_secret(s.hash, &next_traffic_secret(s.hash, &logged).unwrap()).unwrap();
        let (header, payload) = seal(s, &updated, 3, b"after two key updates");
        let found = find(
            &[([3u8; 32], &logged)],
            header,
            &payload,
            0,
            1 << 10,
            1 << 10,
            None,
        )
        .expect("found");
        assert_eq!(found.generation, 2);
        assert_eq!(found.secret, updated);
        assert_eq!(found.seq, 3);
    }

    #[test]
    fn nothing_is_found_past_the_bound_or_with_other_secrets_or_a_forged_tag() {
        let s = suite(0x1301);
        let secret = vec![5u8; 32];
        let (header, payload) = seal(s, &secret, 5_000, b"late");
        assert!(find(&[([0; 32], &secret)], header, &payload, 0, 4_999, 0, None).is_none());
        // A search that starts near the record (a resynchronisation after lost bytes).
        let found = find(
            &[([0; 32], &secret)],
            header,
            &payload,
            4_990,
            5_100,
            0,
            None,
        );
        assert_eq!(found.map(|f| f.seq), Some(5_000));
        assert!(
            find(
                &[([0; 32], &secret)],
                header,
                &payload,
                5_001,
                1 << 14,
                0,
                None
            )
            .is_none()
        );
        assert!(
            find(
                &[([0; 32], &[6u8; 32])],
                header,
                &payload,
                0,
                1 << 14,
                0,
                None
            )
            .is_none()
        );
        let mut forged = payload.clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert!(find(&[([0; 32], &secret)], header, &forged, 0, 1 << 14, 0, None).is_none());
        // Too short to hold a tag and a content type: no candidate, no panic.
        assert!(
            find(
                &[([0; 32], &secret)],
                header,
                &payload[..16],
                0,
                1 << 14,
                0,
                None
            )
            .is_none()
        );
    }

    #[test]
    fn a_known_suite_restricts_the_search() {
        let secret = vec![4u8; 32];
        let (header, payload) = seal(suite(0x1303), &secret, 2, b"chacha");
        let aes_only = Some(suite(0x1301));
        assert!(find(&[([0; 32], &secret)], header, &payload, 0, 64, 64, aes_only).is_none());
        let found = find(&[([0; 32], &secret)], header, &payload, 0, 64, 64, None).unwrap();
        assert_eq!(found.suite.id, 0x1303);
    }
}
