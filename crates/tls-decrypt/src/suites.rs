//! Protocol versions and the cipher suites this crate can decrypt: which AEAD and which hash
//! each suite uses, which is all the key schedules need to know about it.

use std::fmt;

/// A TLS protocol version as negotiated by the ServerHello.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsVersion {
    /// SSL 3.0 (unsupported).
    Ssl3,
    /// TLS 1.0 (unsupported).
    Tls10,
    /// TLS 1.1 (unsupported).
    Tls11,
    /// TLS 1.2.
    Tls12,
    /// TLS 1.3.
    Tls13,
    /// Any other code point (unsupported).
    Other(u16),
}

impl TlsVersion {
    /// The version for its wire code point (0x0303 is TLS 1.2).
    pub fn from_wire(code: u16) -> Self {
        match code {
            0x0300 => TlsVersion::Ssl3,
            0x0301 => TlsVersion::Tls10,
            0x0302 => TlsVersion::Tls11,
            0x0303 => TlsVersion::Tls12,
            0x0304 => TlsVersion::Tls13,
            other => TlsVersion::Other(other),
        }
    }

    /// The usual name ("TLSv1.3"), for reports.
    pub fn name(&self) -> String {
        match self {
            TlsVersion::Ssl3 => "SSLv3".into(),
            TlsVersion::Tls10 => "TLSv1.0".into(),
            TlsVersion::Tls11 => "TLSv1.1".into(),
            TlsVersion::Tls12 => "TLSv1.2".into(),
            TlsVersion::Tls13 => "TLSv1.3".into(),
            TlsVersion::Other(code) => format!("0x{code:04x}"),
        }
    }
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Aead {
    Aes128Gcm,
    Aes256Gcm,
    ChaCha20Poly1305,
}

impl Aead {
    pub(crate) fn key_len(self) -> usize {
        match self {
            Aead::Aes128Gcm => 16,
            Aead::Aes256Gcm | Aead::ChaCha20Poly1305 => 32,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hash {
    Sha256,
    Sha384,
}

impl Hash {
    pub(crate) fn len(self) -> usize {
        match self {
            Hash::Sha256 => 32,
            Hash::Sha384 => 48,
        }
    }
}

/// One decryptable suite. TLS 1.2 suites differ only in key exchange and certificate type,
/// neither of which matters once the key log gives the master secret, so the RSA and DHE
/// variants of the same AEAD come for free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Suite {
    pub(crate) id: u16,
    pub(crate) name: &'static str,
    pub(crate) tls13: bool,
    pub(crate) aead: Aead,
    pub(crate) hash: Hash,
}

const fn suite(id: u16, name: &'static str, tls13: bool, aead: Aead, hash: Hash) -> Suite {
    Suite {
        id,
        name,
        tls13,
        aead,
        hash,
    }
}

static SUITES: &[Suite] = &[
    suite(
        0x1301,
        "TLS_AES_128_GCM_SHA256",
        true,
        Aead::Aes128Gcm,
        Hash::Sha256,
    ),
    suite(
        0x1302,
        "TLS_AES_256_GCM_SHA384",
        true,
        Aead::Aes256Gcm,
        Hash::Sha384,
    ),
    suite(
        0x1303,
        "TLS_CHACHA20_POLY1305_SHA256",
        true,
        Aead::ChaCha20Poly1305,
        Hash::Sha256,
    ),
    suite(
        0xc02b,
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        false,
        Aead::Aes128Gcm,
        Hash::Sha256,
    ),
    suite(
        0xc02c,
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        false,
        Aead::Aes256Gcm,
        Hash::Sha384,
    ),
    suite(
        0xc02f,
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        false,
        Aead::Aes128Gcm,
        Hash::Sha256,
    ),
    suite(
        0xc030,
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        false,
        Aead::Aes256Gcm,
        Hash::Sha384,
    ),
    suite(
        0xcca8,
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        false,
        Aead::ChaCha20Poly1305,
        Hash::Sha256,
    ),
    suite(
        0xcca9,
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        false,
        Aead::ChaCha20Poly1305,
        Hash::Sha256,
    ),
    suite(
        0xccaa,
        "TLS_DHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        false,
        Aead::ChaCha20Poly1305,
        Hash::Sha256,
    ),
    suite(
        0x009c,
        "TLS_RSA_WITH_AES_128_GCM_SHA256",
        false,
        Aead::Aes128Gcm,
        Hash::Sha256,
    ),
    suite(
        0x009d,
        "TLS_RSA_WITH_AES_256_GCM_SHA384",
        false,
        Aead::Aes256Gcm,
        Hash::Sha384,
    ),
    suite(
        0x009e,
        "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256",
        false,
        Aead::Aes128Gcm,
        Hash::Sha256,
    ),
    suite(
        0x009f,
        "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384",
        false,
        Aead::Aes256Gcm,
        Hash::Sha384,
    ),
];

/// Names of some common suites this crate cannot decrypt, so reports say what was seen.
static UNSUPPORTED_NAMES: &[(u16, &str)] = &[
    (0x1304, "TLS_AES_128_CCM_SHA256"),
    (0x1305, "TLS_AES_128_CCM_8_SHA256"),
    (0x002f, "TLS_RSA_WITH_AES_128_CBC_SHA"),
    (0x0035, "TLS_RSA_WITH_AES_256_CBC_SHA"),
    (0x003c, "TLS_RSA_WITH_AES_128_CBC_SHA256"),
    (0xc009, "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA"),
    (0xc00a, "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA"),
    (0xc013, "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"),
    (0xc014, "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA"),
    (0xc023, "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256"),
    (0xc027, "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256"),
    (0x000a, "TLS_RSA_WITH_3DES_EDE_CBC_SHA"),
];

/// Every suite this crate decrypts.
pub(crate) fn all() -> &'static [Suite] {
    SUITES
}

pub(crate) fn find(id: u16) -> Option<&'static Suite> {
    SUITES.iter().find(|s| s.id == id)
}

/// The IANA name of a cipher suite code point, for the suites this crate decrypts and a
/// few common ones it does not; `None` for the rest.
pub fn cipher_suite_name(id: u16) -> Option<&'static str> {
    find(id).map(|s| s.name).or_else(|| {
        UNSUPPORTED_NAMES
            .iter()
            .find(|(code, _)| *code == id)
            .map(|(_, name)| *name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suites_are_unique_and_named() {
        for (i, a) in SUITES.iter().enumerate() {
            assert_eq!(cipher_suite_name(a.id), Some(a.name));
            assert_eq!(a.tls13, a.id >> 8 == 0x13, "{}", a.name);
            assert!(a.name.ends_with(if a.hash == Hash::Sha384 {
                "SHA384"
            } else {
                "SHA256"
            }));
            for b in &SUITES[i + 1..] {
                assert_ne!(a.id, b.id);
            }
        }
        assert_eq!(
            cipher_suite_name(0xc013),
            Some("TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA")
        );
        assert!(find(0xc013).is_none());
        assert_eq!(cipher_suite_name(0xffff), None);
    }

    #[test]
    fn versions_have_names() {
        assert_eq!(TlsVersion::from_wire(0x0303).to_string(), "TLSv1.2");
        assert_eq!(TlsVersion::from_wire(0x0304), TlsVersion::Tls13);
        assert_eq!(TlsVersion::from_wire(0x7f1c).to_string(), "0x7f1c");
    }
}
