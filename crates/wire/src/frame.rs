//! Framing for byte streams (TCP feed, order channel): each packet or order-channel
//! message is preceded by its length as a big-endian u16, like SoupBinTCP. Async
//! services use `tokio_util`'s `LengthDelimitedCodec` with these parameters; this
//! module is the same rule for synchronous readers (tests, wire decoders).

use crate::{Result, WireError};

/// Bytes of the length prefix.
pub const LENGTH_PREFIX: usize = 2;
/// Largest frame body.
pub const MAX_FRAME: usize = u16::MAX as usize;

/// Appends `body` with its length prefix.
pub fn encode_frame(out: &mut Vec<u8>, body: &[u8]) -> Result<()> {
    let len = u16::try_from(body.len()).map_err(|_| WireError::FrameTooLarge(body.len()))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    Ok(())
}

/// Splits the first complete frame off `buf`: `Some((body, bytes consumed))`, or
/// `None` when more bytes are needed.
pub fn split_frame(buf: &[u8]) -> Option<(&[u8], usize)> {
    let prefix: [u8; 2] = buf.get(..LENGTH_PREFIX)?.try_into().ok()?;
    let len = usize::from(u16::from_be_bytes(prefix));
    let body = buf.get(LENGTH_PREFIX..LENGTH_PREFIX + len)?;
    Some((body, LENGTH_PREFIX + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_back() {
        let mut out = Vec::new();
        encode_frame(&mut out, b"hello").unwrap();
        encode_frame(&mut out, b"").unwrap();
        let (a, n) = split_frame(&out).unwrap();
        assert_eq!((a, n), (&b"hello"[..], 7));
        let (b, m) = split_frame(&out[n..]).unwrap();
        assert_eq!((b, m), (&b""[..], 2));
        assert!(split_frame(&out[..4]).is_none());
        assert!(encode_frame(&mut out, &vec![0; 70_000]).is_err());
    }
}
