//! Handshake messages: cutting the handshake byte stream of one direction into messages
//! (they may span records, and records may hold several), and parsing the two hellos,
//! which carry everything a passive decryptor needs: randoms, suite, and version.

/// Largest hello body kept for parsing. Real hellos are a few KiB even with post-quantum key
/// shares; the cap keeps a hostile length field from buffering 16 MiB.
const MAX_KEPT_BODY: usize = 64 * 1024;

pub(crate) const CLIENT_HELLO: u8 = 1;
pub(crate) const SERVER_HELLO: u8 = 2;
pub(crate) const FINISHED: u8 = 20;
pub(crate) const KEY_UPDATE: u8 = 24;

/// SHA-256("HelloRetryRequest"): the ServerHello.random that marks a HelloRetryRequest
/// (RFC 8446 §4.1.3).
pub(crate) const HELLO_RETRY_RANDOM: [u8; 32] = [
    0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91,
    0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
];

/// One complete handshake message. Only hello bodies are kept; for the rest the type is
/// all the state machine needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Message {
    pub(crate) msg_type: u8,
    pub(crate) body: Vec<u8>,
    /// The body was a hello too large to keep.
    pub(crate) too_large: bool,
}

/// Reassembles handshake messages from the handshake content of successive records.
#[derive(Debug, Default)]
pub(crate) struct Reader {
    header: [u8; 4],
    header_len: usize,
    /// Body bytes still to come for the current message.
    remaining: usize,
    keep: bool,
    too_large: bool,
    body: Vec<u8>,
}

impl Reader {
    /// True between messages (no partial header or body pending).
    #[cfg(test)]
    pub(crate) fn is_idle(&self) -> bool {
        self.header_len == 0
    }

    /// Consumes handshake content, appending each message completed by it to `out`.
    pub(crate) fn push(&mut self, mut data: &[u8], out: &mut Vec<Message>) {
        loop {
            if self.header_len < 4 {
                let take = (4 - self.header_len).min(data.len());
                self.header[self.header_len..self.header_len + take].copy_from_slice(&data[..take]);
                self.header_len += take;
                data = &data[take..];
                if self.header_len < 4 {
                    return;
                }
                let len = usize::from(self.header[1]) << 16
                    | usize::from(self.header[2]) << 8
                    | usize::from(self.header[3]);
                self.remaining = len;
                let hello = matches!(self.header[0], CLIENT_HELLO | SERVER_HELLO);
                self.keep = hello && len <= MAX_KEPT_BODY;
                self.too_large = hello && !self.keep;
                self.body.clear();
            }
            let take = self.remaining.min(data.len());
            if self.keep {
                self.body.extend_from_slice(&data[..take]);
            }
            self.remaining -= take;
            data = &data[take..];
            if self.remaining > 0 {
                return;
            }
            out.push(Message {
                msg_type: self.header[0],
                body: std::mem::take(&mut self.body),
                too_large: self.too_large,
            });
            self.header_len = 0;
            if data.is_empty() {
                return;
            }
        }
    }
}

/// A bounds-checked reader over a message body.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.0.split_at_checked(n)?;
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
    fn random(&mut self) -> Option<[u8; 32]> {
        self.take(32)?.try_into().ok()
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Iterates (type, data) over an extensions block; `None` if it is malformed.
fn extensions(block: &[u8]) -> Option<Vec<(u16, &[u8])>> {
    let mut c = Cursor(block);
    let mut out = Vec::new();
    while !c.is_empty() {
        let kind = c.u16()?;
        let data = c.vec16()?;
        out.push((kind, data));
    }
    Some(out)
}

const EXT_SERVER_NAME: u16 = 0;
const EXT_EARLY_DATA: u16 = 42;
const EXT_SUPPORTED_VERSIONS: u16 = 43;

/// What a passive decryptor needs from a ClientHello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClientHello {
    pub(crate) random: [u8; 32],
    pub(crate) cipher_suites: Vec<u16>,
    pub(crate) server_name: Option<String>,
    /// The client offered 0-RTT data.
    pub(crate) early_data: bool,
}

pub(crate) fn parse_client_hello(body: &[u8]) -> Result<ClientHello, &'static str> {
    let mut c = Cursor(body);
    let short = "ClientHello is truncated";
    c.u16().ok_or(short)?; // legacy_version: the real offer is in supported_versions
    let random = c.random().ok_or(short)?;
    c.vec8().ok_or(short)?; // legacy_session_id
    let suites = c.vec16().ok_or(short)?;
    if suites.len() % 2 != 0 {
        return Err("ClientHello cipher_suites has an odd length");
    }
    let cipher_suites = suites
        .chunks_exact(2)
        .map(|p| u16::from_be_bytes([p[0], p[1]]))
        .collect();
    c.vec8().ok_or(short)?; // legacy_compression_methods: only the server's choice matters
    let mut hello = ClientHello {
        random,
        cipher_suites,
        server_name: None,
        early_data: false,
    };
    if c.is_empty() {
        return Ok(hello); // no extensions at all: legal before TLS 1.3
    }
    let exts = c.vec16().ok_or(short)?;
    for (kind, data) in extensions(exts).ok_or("ClientHello extensions are malformed")? {
        match kind {
            EXT_SERVER_NAME => hello.server_name = parse_server_name(data),
            EXT_EARLY_DATA => hello.early_data = true,
            _ => {}
        }
    }
    Ok(hello)
}

/// The first host_name of a server_name extension (RFC 6066 §3).
fn parse_server_name(data: &[u8]) -> Option<String> {
    let mut list = Cursor(Cursor(data).vec16()?);
    while !list.is_empty() {
        let kind = list.u8()?;
        let name = list.vec16()?;
        if kind == 0 {
            return std::str::from_utf8(name).ok().map(str::to_owned);
        }
    }
    None
}

/// What a passive decryptor needs from a ServerHello (or HelloRetryRequest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerHello {
    pub(crate) random: [u8; 32],
    pub(crate) cipher_suite: u16,
    pub(crate) compression: u8,
    /// The version the server chose: supported_versions if present, else legacy_version.
    pub(crate) version: u16,
    pub(crate) hello_retry: bool,
}

pub(crate) fn parse_server_hello(body: &[u8]) -> Result<ServerHello, &'static str> {
    let mut c = Cursor(body);
    let short = "ServerHello is truncated";
    let legacy_version = c.u16().ok_or(short)?;
    let random = c.random().ok_or(short)?;
    c.vec8().ok_or(short)?; // legacy_session_id_echo
    let cipher_suite = c.u16().ok_or(short)?;
    let compression = c.u8().ok_or(short)?;
    let mut version = legacy_version;
    if !c.is_empty() {
        let exts = c.vec16().ok_or(short)?;
        for (kind, data) in extensions(exts).ok_or("ServerHello extensions are malformed")? {
            if kind == EXT_SUPPORTED_VERSIONS {
                let mut d = Cursor(data);
                version = d
                    .u16()
                    .ok_or("ServerHello supported_versions is truncated")?;
            }
        }
    }
    Ok(ServerHello {
        random,
        cipher_suite,
        compression,
        version,
        hello_retry: random == HELLO_RETRY_RANDOM,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::crypto::tests::hex;
    use sha2::Digest;

    /// RFC 8448 §3 ClientHello and ServerHello handshake messages.
    pub(crate) const RFC8448_CH: &str = "
        01 00 00 c0 03 03 cb 34 ec b1 e7 81 63 ba 1c 38 c6 da cb 19 6a 6d ff a2
        1a 8d 99 12 ec 18 a2 ef 62 83 02 4d ec e7 00 00 06 13 01 13 03 13 02 01
        00 00 91 00 00 00 0b 00 09 00 00 06 73 65 72 76 65 72 ff 01 00 01 00 00
        0a 00 14 00 12 00 1d 00 17 00 18 00 19 01 00 01 01 01 02 01 03 01 04 00
        23 00 00 00 33 00 26 00 24 00 1d 00 20 99 38 1d e5 60 e4 bd 43 d2 3d 8e
        43 5a 7d ba fe b3 c0 6e 51 c1 3c ae 4d 54 13 69 1e 52 9a af 2c 00 2b 00
        03 02 03 04 00 0d 00 20 00 1e 04 03 05 03 06 03 02 03 08 04 08 05 08 06
        04 01 05 01 06 01 02 01 04 02 05 02 06 02 02 02 00 2d 00 02 01 01 00 1c
        00 02 40 01";
    const RFC8448_SH: &str = "
        02 00 00 56 03 03 a6 af 06 a4 12 18 60 dc 5e 6e 60 24 9c d3 4c 95 93 0c
        8a c5 cb 14 34 da c1 55 77 2e d3 e2 69 28 00 13 01 00 00 2e 00 33 00 24
        00 1d 00 20 c9 82 88 76 11 20 95 fe 66 76 2b db f7 c6 72 e1 56 d6 cc 25
        3b 83 3d f1 dd 69 b1 b0 4e 75 1f 0f 00 2b 00 02 03 04";

    fn messages(chunks: &[&[u8]]) -> Vec<Message> {
        let mut reader = Reader::default();
        let mut out = Vec::new();
        for chunk in chunks {
            reader.push(chunk, &mut out);
        }
        assert!(reader.is_idle());
        out
    }

    #[test]
    fn rfc8448_hellos_parse() {
        let ch = hex(RFC8448_CH);
        let msgs = messages(&[&ch]);
        assert_eq!(msgs.len(), 1);
        let hello = parse_client_hello(&msgs[0].body).unwrap();
        assert_eq!(
            hello.random.to_vec(),
            hex("cb34ecb1e78163ba1c38c6dacb196a6dffa21a8d9912ec18a2ef6283024dece7")
        );
        assert_eq!(hello.cipher_suites, vec![0x1301, 0x1303, 0x1302]);
        assert_eq!(hello.server_name.as_deref(), Some("server"));
        assert!(!hello.early_data);

        let sh = hex(RFC8448_SH);
        let msgs = messages(&[&sh]);
        let hello = parse_server_hello(&msgs[0].body).unwrap();
        assert_eq!(hello.version, 0x0304);
        assert_eq!(hello.cipher_suite, 0x1301);
        assert_eq!(hello.compression, 0);
        assert!(!hello.hello_retry);
    }

    #[test]
    fn messages_span_and_share_chunks() {
        let ch = hex(RFC8448_CH);
        let sh = hex(RFC8448_SH);
        let finished = [20u8, 0, 0, 2, 0xaa, 0xbb];
        let empty = [4u8, 0, 0, 0];
        let mut all = ch.clone();
        all.extend_from_slice(&finished);
        all.extend_from_slice(&empty);
        all.extend_from_slice(&sh);
        let whole = messages(&[&all]);
        for cut in [1, 2, 3, 4, 5, 100, ch.len(), ch.len() + 3, all.len() - 1] {
            let (a, b) = all.split_at(cut);
            assert_eq!(messages(&[a, b]), whole, "cut at {cut}");
        }
        let bytewise: Vec<&[u8]> = all.chunks(1).collect();
        assert_eq!(messages(&bytewise), whole);
        let types: Vec<u8> = whole.iter().map(|m| m.msg_type).collect();
        assert_eq!(types, vec![1, 20, 4, 2]);
        // Only hello bodies are kept.
        assert!(whole[1].body.is_empty());
    }

    #[test]
    fn oversized_hellos_are_flagged_not_buffered() {
        let mut reader = Reader::default();
        let mut out = Vec::new();
        reader.push(&[1, 0x10, 0, 0], &mut out);
        reader.push(&vec![0; 0x10_0000], &mut out);
        assert_eq!(out.len(), 1);
        assert!(out[0].too_large);
        assert!(out[0].body.is_empty());
    }

    #[test]
    fn truncated_hellos_are_errors() {
        let ch = hex(RFC8448_CH);
        let body = &ch[4..];
        for len in 0..body.len() {
            // Every prefix either fails or (when it ends at a field boundary before the
            // extensions) parses; none panics.
            let _ = parse_client_hello(&body[..len]);
        }
        assert!(parse_client_hello(&body[..40]).is_err());
        let sh = hex(RFC8448_SH);
        for len in 0..sh.len() - 4 {
            let _ = parse_server_hello(&sh[4..4 + len]);
        }
        assert!(parse_server_hello(&sh[4..30]).is_err());
    }

    #[test]
    fn hello_retry_random_is_sha256_of_its_name() {
        let digest = sha2::Sha256::digest(b"HelloRetryRequest");
        assert_eq!(digest.as_slice(), HELLO_RETRY_RANDOM.as_slice());
    }
}
