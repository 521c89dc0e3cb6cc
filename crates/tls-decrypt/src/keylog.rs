//! The NSS key log (SSLKEYLOGFILE, RFC 9850): lines of `LABEL <client_random> <secret>` that a
//! TLS client writes as it derives its secrets, parsed into a lookup by client_random, the
//! one value a passive observer can read from the ClientHello to find a connection's keys.

use std::collections::{HashMap, HashSet};
use std::fmt;

/// The key log labels this crate understands (RFC 9850 §3). Lines with other labels (such as
/// `ECH_SECRET`) are kept verbatim for [`KeyLog::to_text`] but not interpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Label {
    /// TLS 1.2 and earlier: the 48-byte master secret.
    ClientRandom,
    /// TLS 1.3 0-RTT data from the client.
    ClientEarlyTrafficSecret,
    /// TLS 1.3 client handshake traffic secret.
    ClientHandshakeTrafficSecret,
    /// TLS 1.3 server handshake traffic secret.
    ServerHandshakeTrafficSecret,
    /// TLS 1.3 first client application traffic secret.
    ClientTrafficSecret0,
    /// TLS 1.3 first server application traffic secret.
    ServerTrafficSecret0,
    /// TLS 1.3 early exporter secret (not needed to decrypt; kept).
    EarlyExporterSecret,
    /// TLS 1.3 exporter secret (not needed to decrypt; kept).
    ExporterSecret,
}

impl Label {
    const ALL: [Label; 8] = [
        Label::ClientRandom,
        Label::ClientEarlyTrafficSecret,
        Label::ClientHandshakeTrafficSecret,
        Label::ServerHandshakeTrafficSecret,
        Label::ClientTrafficSecret0,
        Label::ServerTrafficSecret0,
        Label::EarlyExporterSecret,
        Label::ExporterSecret,
    ];

    /// The label as written in the key log.
    pub fn as_str(self) -> &'static str {
        match self {
            Label::ClientRandom => "CLIENT_RANDOM",
            Label::ClientEarlyTrafficSecret => "CLIENT_EARLY_TRAFFIC_SECRET",
            Label::ClientHandshakeTrafficSecret => "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
            Label::ServerHandshakeTrafficSecret => "SERVER_HANDSHAKE_TRAFFIC_SECRET",
            Label::ClientTrafficSecret0 => "CLIENT_TRAFFIC_SECRET_0",
            Label::ServerTrafficSecret0 => "SERVER_TRAFFIC_SECRET_0",
            Label::EarlyExporterSecret => "EARLY_EXPORTER_SECRET",
            Label::ExporterSecret => "EXPORTER_SECRET",
        }
    }

    /// The label for a key log label string, if it is one this crate understands.
    pub fn parse(text: &str) -> Option<Label> {
        Label::ALL.into_iter().find(|l| l.as_str() == text)
    }

    /// Secret sizes a line with this label may carry: the TLS 1.2 master secret is always 48
    /// bytes; TLS 1.3 secrets are as long as the suite's hash (SHA-256 or SHA-384).
    fn secret_lengths(self) -> &'static [usize] {
        match self {
            Label::ClientRandom => &[48],
            _ => &[32, 48],
        }
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a key log line was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyLogError {
    /// A line must be exactly `LABEL CLIENT_RANDOM SECRET`.
    #[error("expected 3 fields (label, client_random, secret), found {0}")]
    FieldCount(usize),
    /// Labels are upper-case ASCII words such as `CLIENT_RANDOM`.
    #[error("{0:?} is not a key log label (upper-case letters, digits and '_')")]
    BadLabel(String),
    /// A field that must be hexadecimal is not (or has an odd number of digits).
    #[error("{field} is not hexadecimal")]
    NotHex {
        /// `"client_random"` or `"secret"`.
        field: &'static str,
    },
    /// A field decodes to the wrong number of bytes.
    #[error("{field} has {got} bytes, expected {expected}")]
    WrongLength {
        /// `"client_random"` or `"secret"`.
        field: &'static str,
        /// Bytes found.
        got: usize,
        /// Bytes allowed, in words ("32", "32 or 48", "48").
        expected: &'static str,
    },
}

/// Secrets from an NSS key log, keyed by client_random.
///
/// Adding a line for a (label, client_random) already present replaces its secret. The
/// structure only grows; the capture service decides how long to keep it.
#[derive(Debug, Clone, Default)]
pub struct KeyLog {
    secrets: HashMap<([u8; 32], Label), Vec<u8>>,
    /// Insertion order of `secrets`, so `to_text` is stable.
    order: Vec<([u8; 32], Label)>,
    /// Well-formed lines with labels this crate does not interpret, verbatim.
    other: Vec<String>,
    other_seen: HashSet<String>,
}

impl KeyLog {
    /// An empty key log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one line (`LABEL <client_random hex> <secret hex>`). Comments (`#`) and blank
    /// lines are accepted and ignored; lines with labels this crate does not know are kept
    /// for [`KeyLog::to_text`] without being checked further; malformed lines are rejected.
    pub fn add_line(&mut self, line: &str) -> Result<(), KeyLogError> {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return Ok(());
        }
        let fields: Vec<&str> = line.split_ascii_whitespace().collect();
        let [label, random, secret] = fields[..] else {
            return Err(KeyLogError::FieldCount(fields.len()));
        };
        if !label
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(KeyLogError::BadLabel(label.to_owned()));
        }
        let Some(known) = Label::parse(label) else {
            // Unknown labels (ECH_SECRET, future ones) may carry values of any size; they are
            // not ours to judge, only to pass on to Wireshark through `to_text`.
            let normalised = format!("{label} {random} {secret}");
            if self.other_seen.insert(normalised.clone()) {
                self.other.push(normalised);
            }
            return Ok(());
        };
        let random = decode_hex(random).ok_or(KeyLogError::NotHex {
            field: "client_random",
        })?;
        let random: [u8; 32] =
            random
                .as_slice()
                .try_into()
                .map_err(|_| KeyLogError::WrongLength {
                    field: "client_random",
                    got: random.len(),
                    expected: "32",
                })?;
        let secret = decode_hex(secret).ok_or(KeyLogError::NotHex { field: "secret" })?;
        if !known.secret_lengths().contains(&secret.len()) {
            return Err(KeyLogError::WrongLength {
                field: "secret",
                got: secret.len(),
                expected: if known == Label::ClientRandom {
                    "48"
                } else {
                    "32 or 48"
                },
            });
        }
        if self.secrets.insert((random, known), secret).is_none() {
            self.order.push((random, known));
        }
        Ok(())
    }

    /// Adds every line of a text; returns how many lines were malformed (and skipped).
    pub fn add_text(&mut self, text: &str) -> usize {
        text.lines()
            .filter(|line| self.add_line(line).is_err())
            .count()
    }

    /// The secret logged under `label` for a connection's client_random.
    pub fn secret(&self, label: Label, client_random: &[u8; 32]) -> Option<&[u8]> {
        self.secrets
            .get(&(*client_random, label))
            .map(Vec::as_slice)
    }

    /// Every (client_random, secret) logged under `label`, oldest first: the candidates
    /// when a connection is joined without its client_random.
    pub fn labelled(&self, label: Label) -> impl Iterator<Item = ([u8; 32], &[u8])> {
        self.order
            .iter()
            .filter(move |(_, l)| *l == label)
            .filter_map(|key| Some((key.0, self.secrets.get(key)?.as_slice())))
    }

    /// Number of distinct lines held (what [`KeyLog::to_text`] would write).
    pub fn len(&self) -> usize {
        self.order.len() + self.other.len()
    }

    /// True when no line has been added.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key log text back, one line per secret in the order first added (lower-case hex,
    /// comments dropped), e.g. for a pcapng Decryption Secrets Block.
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        for key in &self.order {
            if let Some(secret) = self.secrets.get(key) {
                text.push_str(key.1.as_str());
                text.push(' ');
                text.push_str(&encode_hex(&key.0));
                text.push(' ');
                text.push_str(&encode_hex(secret));
                text.push('\n');
            }
        }
        for line in &self.other {
            text.push_str(line);
            text.push('\n');
        }
        text
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks_exact(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

/// Lower-case hex of `bytes`.
pub(crate) fn encode_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const RANDOM: &str = "cb34ecb1e78163ba1c38c6dacb196a6dffa21a8d9912ec18a2ef6283024dece7";
    const SECRET32: &str = "b3eddb126e067f35a780b3abf45e2d8f3b1a950738f52e9600746a0e27a55a21";

    fn random() -> [u8; 32] {
        decode_hex(RANDOM).unwrap().try_into().unwrap()
    }

    #[test]
    fn good_lines_are_found_by_label_and_client_random() {
        let mut log = KeyLog::new();
        let master = "ab".repeat(48);
        log.add_line(&format!(
            "CLIENT_HANDSHAKE_TRAFFIC_SECRET {RANDOM} {SECRET32}"
        ))
        .unwrap();
        // Upper-case hex, CRLF line ending and extra spaces are what real files contain.
        log.add_line(&format!(
            "  CLIENT_RANDOM   {}  {}\r",
            RANDOM.to_uppercase(),
            master
        ))
        .unwrap();
        assert_eq!(log.len(), 2);
        assert_eq!(
            log.secret(Label::ClientHandshakeTrafficSecret, &random()),
            Some(decode_hex(SECRET32).unwrap().as_slice())
        );
        assert_eq!(
            log.secret(Label::ClientRandom, &random()),
            Some(vec![0xab; 48].as_slice())
        );
        assert_eq!(log.secret(Label::ServerTrafficSecret0, &random()), None);
        assert_eq!(log.secret(Label::ClientRandom, &[0; 32]), None);
    }

    #[test]
    fn comments_and_blank_lines_are_no_ops() {
        let mut log = KeyLog::new();
        assert_eq!(log.add_line("# SSL/TLS secrets log file"), Ok(()));
        assert_eq!(log.add_line(""), Ok(()));
        assert_eq!(log.add_line("   \t "), Ok(()));
        assert!(log.is_empty());
    }

    #[test]
    fn malformed_lines_say_what_is_wrong() {
        let mut log = KeyLog::new();
        assert_eq!(
            log.add_line("CLIENT_RANDOM abc"),
            Err(KeyLogError::FieldCount(2))
        );
        assert_eq!(
            log.add_line(&format!("CLIENT_RANDOM {RANDOM} {SECRET32} extra")),
            Err(KeyLogError::FieldCount(4))
        );
        assert_eq!(
            log.add_line(&format!("client_random {RANDOM} {SECRET32}")),
            Err(KeyLogError::BadLabel("client_random".into()))
        );
        assert_eq!(
            log.add_line(&format!(
                "SERVER_TRAFFIC_SECRET_0 {RANDOM} {}zz",
                &SECRET32[2..]
            )),
            Err(KeyLogError::NotHex { field: "secret" })
        );
        assert_eq!(
            log.add_line(&format!(
                "SERVER_TRAFFIC_SECRET_0 g{} {SECRET32}",
                &RANDOM[1..]
            )),
            Err(KeyLogError::NotHex {
                field: "client_random"
            })
        );
        // Odd number of digits.
        assert_eq!(
            log.add_line(&format!("SERVER_TRAFFIC_SECRET_0 {}a {SECRET32}", RANDOM)),
            Err(KeyLogError::NotHex {
                field: "client_random"
            })
        );
        assert_eq!(
            log.add_line(&format!(
                "SERVER_TRAFFIC_SECRET_0 {} {SECRET32}",
                &RANDOM[2..]
            )),
            Err(KeyLogError::WrongLength {
                field: "client_random",
                got: 31,
                expected: "32"
            })
        );
        // A 32-byte value is not a TLS 1.2 master secret.
        assert_eq!(
            log.add_line(&format!("CLIENT_RANDOM {RANDOM} {SECRET32}")),
            Err(KeyLogError::WrongLength {
                field: "secret",
                got: 32,
                expected: "48"
            })
        );
        assert_eq!(
            log.add_line(&format!(
                "CLIENT_TRAFFIC_SECRET_0 {RANDOM} {}",
                &SECRET32[2..]
            )),
            Err(KeyLogError::WrongLength {
                field: "secret",
                got: 31,
                expected: "32 or 48"
            })
        );
        assert!(log.is_empty());
    }

    #[test]
    fn unknown_labels_are_kept_without_error() {
        let mut log = KeyLog::new();
        assert_eq!(log.add_line("ECH_SECRET 00ff 0123456789"), Ok(()));
        assert_eq!(log.add_line("ECH_SECRET 00ff 0123456789"), Ok(()));
        assert_eq!(log.len(), 1);
        assert_eq!(log.to_text(), "ECH_SECRET 00ff 0123456789\n");
    }

    #[test]
    fn add_text_counts_malformed_lines_and_keeps_the_rest() {
        let mut log = KeyLog::new();
        let text = format!(
            "# header\n\nCLIENT_TRAFFIC_SECRET_0 {RANDOM} {SECRET32}\nnonsense\nCLIENT_RANDOM {RANDOM} 00\nSERVER_TRAFFIC_SECRET_0 {RANDOM} {SECRET32}\n"
        );
        assert_eq!(log.add_text(&text), 2);
        assert_eq!(log.len(), 2);
    }

    #[test]
    fn to_text_round_trips_and_replaces_duplicates() {
        let mut log = KeyLog::new();
        let other = "cd".repeat(32);
        log.add_line(&format!("SERVER_HANDSHAKE_TRAFFIC_SECRET {RANDOM} {other}"))
            .unwrap();
        log.add_line(&format!("CLIENT_TRAFFIC_SECRET_0 {RANDOM} {SECRET32}"))
            .unwrap();
        log.add_line(&format!(
            "SERVER_HANDSHAKE_TRAFFIC_SECRET {RANDOM} {}",
            SECRET32.to_uppercase()
        ))
        .unwrap();
        let text = log.to_text();
        assert_eq!(
            text,
            format!(
                "SERVER_HANDSHAKE_TRAFFIC_SECRET {RANDOM} {SECRET32}\nCLIENT_TRAFFIC_SECRET_0 {RANDOM} {SECRET32}\n"
            )
        );
        let mut again = KeyLog::new();
        assert_eq!(again.add_text(&text), 0);
        assert_eq!(again.to_text(), text);
    }
}
