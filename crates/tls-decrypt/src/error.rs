//! What can go wrong while decrypting a captured connection. Every problem is reported as an
//! event carrying one of these, with a stable snake_case label for a Prometheus metric.

use crate::keylog::Label;

/// A problem on one direction of a connection. None of these is a panic, and only the ones
/// that say so stop the direction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The bytes are not TLS records (or a record header is impossible); the stream can no
    /// longer be cut into records, so this direction stops.
    #[error("not a TLS record: {0}; this direction is no longer decoded")]
    Framing(String),
    /// One record's content is malformed or unexpected; the record is skipped.
    #[error("malformed record: {0}")]
    Malformed(String),
    /// A ClientHello or ServerHello could not be parsed, or decryption could not start.
    #[error("handshake: {0}")]
    Handshake(String),
    /// The connection uses something this crate cannot decrypt (CBC suites, TLS 1.0/1.1,
    /// SSLv2 hellos, compression); nothing more is decoded on it.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A record failed authentication: wrong key, or not the record the key schedule
    /// expects. The record is skipped.
    #[error("record {seq} failed to decrypt (wrong key, or a record out of step)")]
    Decrypt {
        /// The record's sequence number under its key.
        seq: u64,
    },
    /// A logged secret has the wrong size for the negotiated suite's hash.
    #[error("{label} has {got} bytes but the cipher suite's hash needs {expected}")]
    SecretLength {
        /// Which key log line.
        label: Label,
        /// Bytes in the key log.
        got: usize,
        /// Bytes the suite needs.
        expected: usize,
    },
    /// The connection ended while records still waited for a key log line that never came.
    #[error(
        "{records} records ({bytes} bytes) never decrypted: no {label} in the key log for client_random {client_random}"
    )]
    NoKey {
        /// The missing line's label.
        label: Label,
        /// Hex of the connection's client_random.
        client_random: String,
        /// Records dropped.
        records: usize,
        /// Their bytes on the wire.
        bytes: usize,
    },
    /// The capture joined the connection mid-stream and no application traffic secret of
    /// the key log opened its records at any sequence number searched.
    #[error(
        "{records} records ({bytes} bytes) never decrypted: joined mid-stream and no {label} in the key log opens them at sequence numbers up to {max_seq}"
    )]
    NoJoinKey {
        /// The label searched.
        label: Label,
        /// Highest sequence number tried.
        max_seq: u64,
        /// Records dropped.
        records: usize,
        /// Their bytes on the wire.
        bytes: usize,
    },
    /// The connection ended while records still waited for the other direction's hello.
    #[error("{records} records ({bytes} bytes) never decrypted: the {which} was never seen")]
    MissingHello {
        /// `"ClientHello"` or `"ServerHello"`.
        which: &'static str,
        /// Records dropped.
        records: usize,
        /// Their bytes on the wire.
        bytes: usize,
    },
    /// Bytes of this direction were lost in capture; the rest cannot be cut into records.
    #[error("TCP gap: bytes were lost; the rest of this direction is not decoded")]
    Gap,
    /// Too many bytes waited for keys or the other direction; they are dropped and this
    /// direction stops.
    #[error(
        "{bytes} bytes held waiting for {waiting_for} exceed the limit of {limit}; this direction is dropped"
    )]
    HeldOverflow {
        /// Bytes this direction held.
        bytes: usize,
        /// The connection's limit.
        limit: usize,
        /// What they waited for.
        waiting_for: String,
    },
}

impl TlsError {
    /// A stable snake_case label for metrics: `tls_record`, `tls_handshake`,
    /// `tls_unsupported`, `tls_decrypt`, `tls_no_key`, `tls_gap` or `tls_held_overflow`.
    pub fn kind(&self) -> &'static str {
        match self {
            TlsError::Framing(_) | TlsError::Malformed(_) => "tls_record",
            TlsError::Handshake(_) | TlsError::MissingHello { .. } => "tls_handshake",
            TlsError::Unsupported(_) => "tls_unsupported",
            TlsError::Decrypt { .. } | TlsError::SecretLength { .. } => "tls_decrypt",
            TlsError::NoKey { .. } | TlsError::NoJoinKey { .. } => "tls_no_key",
            TlsError::Gap => "tls_gap",
            TlsError::HeldOverflow { .. } => "tls_held_overflow",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_stable_metric_labels() {
        let cases = [
            (TlsError::Framing("x".into()), "tls_record"),
            (TlsError::Malformed("x".into()), "tls_record"),
            (TlsError::Handshake("x".into()), "tls_handshake"),
            (
                TlsError::MissingHello {
                    which: "ServerHello",
                    records: 1,
                    bytes: 2,
                },
                "tls_handshake",
            ),
            (TlsError::Unsupported("x".into()), "tls_unsupported"),
            (TlsError::Decrypt { seq: 3 }, "tls_decrypt"),
            (
                TlsError::SecretLength {
                    label: Label::ClientTrafficSecret0,
                    got: 32,
                    expected: 48,
                },
                "tls_decrypt",
            ),
            (
                TlsError::NoKey {
                    label: Label::ClientRandom,
                    client_random: "00".into(),
                    records: 1,
                    bytes: 2,
                },
                "tls_no_key",
            ),
            (TlsError::Gap, "tls_gap"),
            (
                TlsError::HeldOverflow {
                    bytes: 1,
                    limit: 0,
                    waiting_for: "x".into(),
                },
                "tls_held_overflow",
            ),
        ];
        for (error, kind) in cases {
            assert_eq!(error.kind(), kind, "{error}");
        }
    }
}
