//! Key schedules and record decryption: TLS 1.3 HKDF-Expand-Label (RFC 8446 §7.1, §7.3), the
//! TLS 1.2 PRF (RFC 5246 §5), and one AEAD record opener covering the TLS 1.3 nonce/AAD
//! rules (§5.2–5.3), TLS 1.2 AES-GCM (RFC 5288) and TLS 1.2 ChaCha20-Poly1305 (RFC 7905).
//! All ciphers come from the RustCrypto crates.

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes128Gcm, Aes256Gcm, Nonce};
use chacha20poly1305::ChaCha20Poly1305;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::{Sha256, Sha384};

use crate::suites::{Aead, Hash, Suite};

/// HKDF-Expand-Label(secret, label, context, len) of RFC 8446 §7.1. `None` only for
/// impossible inputs (a secret shorter than the hash, labels over 255 bytes).
pub(crate) fn hkdf_expand_label(
    hash: Hash,
    secret: &[u8],
    label: &str,
    context: &[u8],
    len: usize,
) -> Option<Vec<u8>> {
    let full_label = u8::try_from(6 + label.len()).ok()?;
    let mut info = Vec::with_capacity(4 + usize::from(full_label) + context.len());
    info.extend_from_slice(&u16::try_from(len).ok()?.to_be_bytes());
    info.push(full_label);
    info.extend_from_slice(b"tls13 ");
    info.extend_from_slice(label.as_bytes());
    info.push(u8::try_from(context.len()).ok()?);
    info.extend_from_slice(context);
    let mut okm = vec![0u8; len];
    match hash {
        Hash::Sha256 => Hkdf::<Sha256>::from_prk(secret)
            .ok()?
            .expand(&info, &mut okm)
            .ok()?,
        Hash::Sha384 => Hkdf::<Sha384>::from_prk(secret)
            .ok()?
            .expand(&info, &mut okm)
            .ok()?,
    }
    Some(okm)
}

/// The next TLS 1.3 application traffic secret after a KeyUpdate (RFC 8446 §7.2).
pub(crate) fn next_traffic_secret(hash: Hash, secret: &[u8]) -> Option<Vec<u8>> {
    hkdf_expand_label(hash, secret, "traffic upd", &[], hash.len())
}

/// The TLS 1.2 PRF (RFC 5246 §5): P_hash(secret, label || seed) with the suite's hash,
/// filling `out`. `seed` is given in parts so callers need not concatenate randoms.
pub(crate) fn prf(hash: Hash, secret: &[u8], label: &[u8], seed: &[&[u8]], out: &mut [u8]) {
    let mut parts: Vec<&[u8]> = Vec::with_capacity(seed.len() + 1);
    parts.push(label);
    parts.extend_from_slice(seed);
    match hash {
        Hash::Sha256 => p_hash::<Hmac<Sha256>>(secret, &parts, out),
        Hash::Sha384 => p_hash::<Hmac<Sha384>>(secret, &parts, out),
    }
}

fn p_hash<M: Mac + KeyInit + Clone>(secret: &[u8], seed: &[&[u8]], out: &mut [u8]) {
    // HMAC takes keys of any length, so this cannot fail; an empty output is the safe answer
    // should a future hmac version disagree.
    let Ok(keyed) = <M as KeyInit>::new_from_slice(secret) else {
        out.fill(0);
        return;
    };
    // A(1) = HMAC(secret, seed); block i = HMAC(secret, A(i) || seed); A(i+1) = HMAC(secret, A(i)).
    let mut mac = keyed.clone();
    for part in seed {
        mac.update(part);
    }
    let mut a = mac.finalize().into_bytes();
    let mut filled = 0;
    while filled < out.len() {
        let mut mac = keyed.clone();
        mac.update(&a);
        for part in seed {
            mac.update(part);
        }
        let block = mac.finalize().into_bytes();
        let n = block.len().min(out.len() - filled);
        out[filled..filled + n].copy_from_slice(&block[..n]);
        filled += n;
        let mut mac = keyed.clone();
        mac.update(&a);
        a = mac.finalize().into_bytes();
    }
}

/// The AEAD instance, boxed because the AES key schedules make the variants large.
enum Cipher {
    Aes128(Box<Aes128Gcm>),
    Aes256(Box<Aes256Gcm>),
    ChaCha(Box<ChaCha20Poly1305>),
}

/// How the per-record nonce and additional data are built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// TLS 1.3: nonce = iv XOR seq, AAD = the record header.
    Tls13,
    /// TLS 1.2 AES-GCM: nonce = 4-byte implicit IV || 8-byte explicit nonce from the record,
    /// AAD = seq || type || version || plaintext length.
    Tls12ExplicitNonce,
    /// TLS 1.2 ChaCha20-Poly1305: nonce = iv XOR seq, TLS 1.2 AAD, no explicit nonce.
    Tls12XorNonce,
}

const TAG_LEN: usize = 16;

/// Opens the records of one direction under one key, counting their sequence numbers.
pub(crate) struct RecordOpener {
    cipher: Cipher,
    iv: [u8; 12],
    framing: Framing,
    seq: u64,
}

/// A record that did not authenticate under the key at this sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OpenFailed {
    pub(crate) seq: u64,
}

impl RecordOpener {
    fn new(aead: Aead, key: &[u8], iv: &[u8], framing: Framing) -> Option<Self> {
        let cipher = match aead {
            Aead::Aes128Gcm => Cipher::Aes128(Box::new(Aes128Gcm::new_from_slice(key).ok()?)),
            Aead::Aes256Gcm => Cipher::Aes256(Box::new(Aes256Gcm::new_from_slice(key).ok()?)),
            Aead::ChaCha20Poly1305 => {
                Cipher::ChaCha(Box::new(ChaCha20Poly1305::new_from_slice(key).ok()?))
            }
        };
        let mut full_iv = [0u8; 12];
        full_iv.get_mut(..iv.len())?.copy_from_slice(iv);
        Some(RecordOpener {
            cipher,
            iv: full_iv,
            framing,
            seq: 0,
        })
    }

    /// The TLS 1.3 opener for a traffic secret: key and iv by HKDF-Expand-Label (§7.3).
    pub(crate) fn tls13(suite: &Suite, secret: &[u8]) -> Option<Self> {
        let key = hkdf_expand_label(suite.hash, secret, "key", &[], suite.aead.key_len())?;
        let iv = hkdf_expand_label(suite.hash, secret, "iv", &[], 12)?;
        Self::new(suite.aead, &key, &iv, Framing::Tls13)
    }

    /// The two TLS 1.2 openers (client write, server write) from the master secret:
    /// key_block = PRF(master, "key expansion", server_random || client_random), cut into
    /// client key, server key, client IV, server IV (AEAD suites have no MAC keys).
    pub(crate) fn tls12_pair(
        suite: &Suite,
        master: &[u8],
        client_random: &[u8; 32],
        server_random: &[u8; 32],
    ) -> Option<(Self, Self)> {
        let key_len = suite.aead.key_len();
        let (iv_len, framing) = match suite.aead {
            Aead::ChaCha20Poly1305 => (12, Framing::Tls12XorNonce),
            Aead::Aes128Gcm | Aead::Aes256Gcm => (4, Framing::Tls12ExplicitNonce),
        };
        let mut block = vec![0u8; 2 * (key_len + iv_len)];
        prf(
            suite.hash,
            master,
            b"key expansion",
            &[server_random, client_random],
            &mut block,
        );
        let (client_key, rest) = block.split_at(key_len);
        let (server_key, rest) = rest.split_at(key_len);
        let (client_iv, server_iv) = rest.split_at(iv_len);
        Some((
            Self::new(suite.aead, client_key, client_iv, framing)?,
            Self::new(suite.aead, server_key, server_iv, framing)?,
        ))
    }

    /// Sequence number the next record is expected to carry.
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    /// Sets the sequence number of the next record (a connection joined mid-stream).
    pub(crate) fn set_seq(&mut self, seq: u64) {
        self.seq = seq;
    }

    /// Counts a record that will not be opened with this key (it failed, or was skipped),
    /// so the next one is expected at the following sequence number.
    pub(crate) fn skip(&mut self) {
        self.seq = self.seq.wrapping_add(1);
    }

    /// Opens one record (`header` is its 5 bytes, `payload` what follows), decrypting in
    /// place. On success the sequence number advances; on failure it does not, so the caller
    /// decides whether the record counted under this key (see [`RecordOpener::skip`]).
    pub(crate) fn open(
        &mut self,
        header: [u8; 5],
        mut payload: Vec<u8>,
    ) -> Result<Vec<u8>, OpenFailed> {
        let failed = OpenFailed { seq: self.seq };
        let seq = self.seq.to_be_bytes();
        let mut nonce = self.iv;
        let mut tls12_aad = [0u8; 13];
        let aad: &[u8] = match self.framing {
            Framing::Tls13 => {
                xor_seq(&mut nonce, &seq);
                &header
            }
            Framing::Tls12ExplicitNonce | Framing::Tls12XorNonce => {
                if self.framing == Framing::Tls12ExplicitNonce {
                    let explicit = payload.get(..8).ok_or(failed)?;
                    nonce[4..].copy_from_slice(explicit);
                    payload.drain(..8);
                } else {
                    xor_seq(&mut nonce, &seq);
                }
                let plain_len = payload.len().checked_sub(TAG_LEN).ok_or(failed)?;
                let plain_len = u16::try_from(plain_len).map_err(|_| failed)?;
                tls12_aad[..8].copy_from_slice(&seq);
                tls12_aad[8..11].copy_from_slice(&header[..3]);
                tls12_aad[11..].copy_from_slice(&plain_len.to_be_bytes());
                &tls12_aad
            }
        };
        if payload.len() < TAG_LEN {
            return Err(failed);
        }
        let nonce = Nonce::from_slice(&nonce);
        let result = match &self.cipher {
            Cipher::Aes128(c) => c.decrypt_in_place(nonce, aad, &mut payload),
            Cipher::Aes256(c) => c.decrypt_in_place(nonce, aad, &mut payload),
            Cipher::ChaCha(c) => c.decrypt_in_place(nonce, aad, &mut payload),
        };
        result.map_err(|_| failed)?;
        self.seq = self.seq.wrapping_add(1);
        Ok(payload)
    }
}

fn xor_seq(nonce: &mut [u8; 12], seq: &[u8; 8]) {
    for (n, s) in nonce[4..].iter_mut().zip(seq) {
        *n ^= s;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::suites::find;

    pub(crate) fn hex(text: &str) -> Vec<u8> {
        let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
        assert_eq!(digits.len() % 2, 0);
        digits
            .chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
            .collect()
    }

    // RFC 8448 §3 ("Simple 1-RTT Handshake"): traffic secrets and the keys/ivs the RFC
    // derives from them.
    pub(crate) const C_HS: &str =
        "b3eddb126e067f35a780b3abf45e2d8f3b1a950738f52e9600746a0e27a55a21";
    pub(crate) const S_HS: &str =
        "b67b7d690cc16c4e75e54213cb2d37b4e9c912bcded9105d42befd59d391ad38";
    pub(crate) const C_AP: &str =
        "9e40646ce79a7f9dc05af8889bce6552875afa0b06df0087f792ebb7c17504a5";
    pub(crate) const S_AP: &str =
        "a11af9f05531f856ad47116b45a950328204b4f44bfb6b3a4b4f1f3fcb631643";

    fn key_iv(secret: &str) -> (Vec<u8>, Vec<u8>) {
        let secret = hex(secret);
        (
            hkdf_expand_label(Hash::Sha256, &secret, "key", &[], 16).unwrap(),
            hkdf_expand_label(Hash::Sha256, &secret, "iv", &[], 12).unwrap(),
        )
    }

    #[test]
    fn rfc8448_traffic_keys_from_secrets() {
        assert_eq!(
            key_iv(C_HS),
            (
                hex("dbfaa693d1762c5b666af5d950258d01"),
                hex("5bd3c71b836e0b76bb73265f")
            )
        );
        assert_eq!(
            key_iv(S_HS),
            (
                hex("3fce516009c21727d0f2e4e86ee403bc"),
                hex("5d313eb2671276ee13000b30")
            )
        );
        assert_eq!(
            key_iv(C_AP),
            (
                hex("17422dda596ed5d9acd890e3c63f5051"),
                hex("5b78923dee08579033e523d9")
            )
        );
        assert_eq!(
            key_iv(S_AP),
            (
                hex("9f02283b6c9c07efc26bb9f2ac92e356"),
                hex("cf782b88dd83549aadf1e984")
            )
        );
    }

    #[test]
    fn rfc8448_derive_secret_from_handshake_secret() {
        // "derive secret tls13 c hs traffic": handshake secret, hash(ClientHello..ServerHello).
        let handshake = hex("1dc826e93606aa6fdc0aadc12f741b01046aa6b99f691ed221a9f0ca043fbeac");
        let hello_hash = hex("860c06edc07858ee8e78f0e7428c58edd6b43f2ca3e6e95f02ed063cf0e1cad8");
        assert_eq!(
            hkdf_expand_label(Hash::Sha256, &handshake, "c hs traffic", &hello_hash, 32).unwrap(),
            hex(C_HS)
        );
        assert_eq!(
            hkdf_expand_label(Hash::Sha256, &handshake, "s hs traffic", &hello_hash, 32).unwrap(),
            hex(S_HS)
        );
        // Wrong sizes are refused, not panicked on.
        assert!(hkdf_expand_label(Hash::Sha384, &handshake, "key", &[], 16).is_none());
        assert!(hkdf_expand_label(Hash::Sha256, &handshake, &"x".repeat(250), &[], 16).is_none());
    }

    #[test]
    fn rfc8448_records_open_at_their_sequence_numbers() {
        let suite = find(0x1301).unwrap();
        let client_app = hex(
            "17 03 03 00 43 a2 3f 70 54 b6 2c 94 d0 af fa fe 82 28 ba 55 cb ef ac ea
             42 f9 14 aa 66 bc ab 3f 2b 98 19 a8 a5 b4 6b 39 5b d5 4a 9a 20 44 1e 2b
             62 97 4e 1f 5a 62 92 a2 97 70 14 bd 1e 3d ea e6 3a ee bb 21 69 49 15 e4",
        );
        let server_app = hex(
            "17 03 03 00 43 2e 93 7e 11 ef 4a c7 40 e5 38 ad 36 00 5f c4 a4 69 32 fc
             32 25 d0 5f 82 aa 1b 36 e3 0e fa f9 7d 90 e6 df fc 60 2d cb 50 1a 59 a8
             fc c4 9c 4b f2 e5 f0 a2 1c 00 47 c2 ab f3 32 54 0d d0 32 e1 67 c2 95 5d",
        );
        let header = |r: &[u8]| -> [u8; 5] { r[..5].try_into().unwrap() };
        let mut expected: Vec<u8> = (0u8..50).collect();
        expected.push(23); // inner content type: application_data

        let mut client = RecordOpener::tls13(suite, &hex(C_AP)).unwrap();
        assert_eq!(
            client
                .open(header(&client_app), client_app[5..].to_vec())
                .unwrap(),
            expected
        );
        assert_eq!(client.seq(), 1);

        // The server's application data is its second record under this key (after a
        // NewSessionTicket): at sequence 0 it must not open, and the failure must not count.
        let mut server = RecordOpener::tls13(suite, &hex(S_AP)).unwrap();
        assert_eq!(
            server.open(header(&server_app), server_app[5..].to_vec()),
            Err(OpenFailed { seq: 0 })
        );
        assert_eq!(server.seq(), 0);
        server.skip();
        assert_eq!(
            server
                .open(header(&server_app), server_app[5..].to_vec())
                .unwrap(),
            expected
        );

        // A changed header byte is additional data: authentication fails.
        let mut tampered = header(&client_app);
        tampered[2] = 1;
        let mut client = RecordOpener::tls13(suite, &hex(C_AP)).unwrap();
        assert!(client.open(tampered, client_app[5..].to_vec()).is_err());
        // Too short for a tag.
        assert!(client.open([23, 3, 3, 0, 3], vec![1, 2, 3]).is_err());
    }

    #[test]
    fn traffic_update_is_expand_label_of_the_current_secret() {
        let next = next_traffic_secret(Hash::Sha256, &hex(C_AP)).unwrap();
        assert_eq!(
            next,
            hkdf_expand_label(Hash::Sha256, &hex(C_AP), "traffic upd", &[], 32).unwrap()
        );
        assert_ne!(next, hex(C_AP));
        assert_eq!(
            next_traffic_secret(Hash::Sha384, &[7; 48]).unwrap().len(),
            48
        );
    }

    #[test]
    fn tls12_prf_published_vectors() {
        // The TLS 1.2 PRF vectors circulated on the IETF TLS list (msg03416), "test label".
        let mut out = [0u8; 100];
        prf(
            Hash::Sha256,
            &hex("9bbe436ba940f017b17652849a71db35"),
            b"test label",
            &[&hex("a0ba9f936cda311827a6f796ffd5198c")],
            &mut out,
        );
        assert_eq!(
            out.to_vec(),
            hex(
                "e3f229ba727be17b8d122620557cd453c2aab21d07c3d495329b52d4e61edb5a6b301791e90d35c9c9a46b4e14baf9af0fa022f7077def17abfd3797c0564bab4fbc91666e9def9b97fce34f796789baa48082d122ee42c5a72e5a5110fff70187347b66"
            )
        );
        let mut out = [0u8; 148];
        prf(
            Hash::Sha384,
            &hex("b80b733d6ceefcdc71566ea48e5567df"),
            b"test label",
            &[&hex("cd665cf6a8447dd6"), &hex("ff8b27555edb7465")],
            &mut out,
        );
        assert_eq!(
            out.to_vec(),
            hex(
                "7b0c18e9ced410ed1804f2cfa34a336a1c14dffb4900bb5fd7942107e81c83cde9ca0faa60be9fe34f82b1233c9146a0e534cb400fed2700884f9dc236f80edd8bfa961144c9e8d792eca722a7b32fc3d416d473ebc2c5fd4abfdad05d9184259b5bf8cd4d90fa0d31e2dec479e4f1a26066f2eea9a69236a3e52655c9e9aee691c8f3a26854308d5eaa3be85e0990703d73e56f"
            )
        );
    }

    #[test]
    fn tls12_short_records_fail_without_panicking() {
        let suite = find(0xc02f).unwrap();
        let (mut client, _) =
            RecordOpener::tls12_pair(suite, &[1; 48], &[2; 32], &[3; 32]).unwrap();
        for len in 0..30 {
            assert!(client.open([23, 3, 3, 0, 0], vec![0; len]).is_err());
        }
        let suite = find(0xcca9).unwrap();
        let (_, mut server) =
            RecordOpener::tls12_pair(suite, &[1; 48], &[2; 32], &[3; 32]).unwrap();
        for len in 0..20 {
            assert!(server.open([23, 3, 3, 0, 0], vec![0; len]).is_err());
        }
    }
}
