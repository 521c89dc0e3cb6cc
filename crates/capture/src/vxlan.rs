//! VXLAN (RFC 7348) as AWS VPC Traffic Mirroring sends it, plus the one addition
//! ticklab's mirror sidecar makes: a trailer after the inner frame carrying the time
//! the frame was captured at the pod, so latency is measured where the pod's traffic
//! is and not where the mirror copy arrives.
//!
//! Outer UDP payload, byte by byte:
//!
//! ```text
//!  0      flags: 0x08 (I: the VNI is valid); other bits reserved
//!  1..4   reserved
//!  4..7   VNI (24 bits, big-endian): the mirror session
//!  7      reserved; ticklab's mirror sets it to 0x54 ('T') when a trailer follows
//!  8..    the inner Ethernet frame, truncated to the session's packet length
//!  [last 16 bytes, only when byte 7 is 'T'] the ticklab mirror trailer:
//!         captured_at_ns  u64  CLOCK_REALTIME of the kernel's capture timestamp
//!         original_len    u32  the frame's length before truncation
//!         direction       u8   1 = received by the pod (ingress), 2 = sent (egress)
//!         version         u8   1
//!         magic           "TM"
//! ```
//!
//! RFC 7348 asks receivers to ignore reserved bits, so any VXLAN decoder (Wireshark
//! included) still reads these packets: the trailer shows as bytes after the inner IP
//! packet, which Ethernet decoders treat as padding. Plain VXLAN (real AWS mirroring)
//! has no trailer; its frames are timed on arrival.

use thiserror::Error;

/// The IANA port of VXLAN, the one AWS mirroring sends to.
pub const PORT: u16 = 4789;
/// Bytes of the VXLAN header.
pub const HEADER_LEN: usize = 8;
/// Bytes of ticklab's mirror trailer.
pub const TRAILER_LEN: usize = 16;
/// Largest VNI (24 bits).
pub const MAX_VNI: u32 = 0x00FF_FFFF;

const FLAG_VNI: u8 = 0x08;
const TRAILER_HINT: u8 = b'T';
const TRAILER_VERSION: u8 = 1;
const TRAILER_MAGIC: [u8; 2] = *b"TM";

/// Which way a mirrored frame went, seen from the mirrored pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

/// What ticklab's mirror adds to a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trailer {
    pub captured_at_ns: u64,
    pub original_len: u32,
    pub direction: Direction,
}

/// One decapsulated frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Encapsulated<'a> {
    pub vni: u32,
    /// The inner Ethernet frame as mirrored (maybe truncated).
    pub frame: &'a [u8],
    /// Present when the frame came from ticklab's mirror.
    pub trailer: Option<Trailer>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum VxlanError {
    #[error("VXLAN packet of {0} bytes is shorter than its 8-byte header")]
    Short(usize),
    #[error("VXLAN flags {0:#04x} lack the I bit (no valid VNI)")]
    NoVni(u8),
    #[error("VXLAN VNI {0} exceeds 24 bits")]
    VniRange(u32),
    #[error("frame of {0} bytes with VXLAN ({1} bytes with the trailer) exceeds a UDP datagram")]
    TooLarge(usize, usize),
    #[error("byte 7 announces a ticklab mirror trailer but none follows")]
    Trailer,
}

impl VxlanError {
    /// Stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            VxlanError::Short(_) | VxlanError::NoVni(_) => "vxlan_header",
            VxlanError::Trailer => "vxlan_trailer",
            VxlanError::VniRange(_) | VxlanError::TooLarge(..) => "vxlan_encode",
        }
    }
}

/// Splits a UDP payload received on port 4789 into VNI, inner frame and trailer.
/// A trailer announced but malformed is an error (the packet's frame boundary is
/// then unknown): the caller counts it, and may still decode the frame without it.
pub fn decode(payload: &[u8]) -> Result<Encapsulated<'_>, VxlanError> {
    let header: &[u8; HEADER_LEN] = payload
        .first_chunk()
        .ok_or(VxlanError::Short(payload.len()))?;
    if header[0] & FLAG_VNI == 0 {
        return Err(VxlanError::NoVni(header[0]));
    }
    let vni = u32::from_be_bytes([0, header[4], header[5], header[6]]);
    let rest = &payload[HEADER_LEN..];
    if header[7] != TRAILER_HINT {
        return Ok(Encapsulated {
            vni,
            frame: rest,
            trailer: None,
        });
    }
    let (frame, trailer) = rest
        .split_last_chunk::<TRAILER_LEN>()
        .ok_or(VxlanError::Trailer)?;
    if trailer[14..] != TRAILER_MAGIC || trailer[13] != TRAILER_VERSION {
        return Err(VxlanError::Trailer);
    }
    let direction = match trailer[12] {
        1 => Direction::Ingress,
        2 => Direction::Egress,
        _ => return Err(VxlanError::Trailer),
    };
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&trailer[..8]);
    let mut len = [0u8; 4];
    len.copy_from_slice(&trailer[8..12]);
    Ok(Encapsulated {
        vni,
        frame,
        trailer: Some(Trailer {
            captured_at_ns: u64::from_be_bytes(ts),
            original_len: u32::from_be_bytes(len),
            direction,
        }),
    })
}

/// The frame of a payload whose announced trailer is broken, for decoding what can
/// be decoded: everything after the header, timed on arrival.
pub fn frame_without_trailer(payload: &[u8]) -> Option<(u32, &[u8])> {
    let header: &[u8; HEADER_LEN] = payload.first_chunk()?;
    let vni = u32::from_be_bytes([0, header[4], header[5], header[6]]);
    Some((vni, &payload[HEADER_LEN..]))
}

/// Appends the UDP payload carrying `frame` (already truncated by the caller) to
/// `out`: the VXLAN header, the frame, and the trailer when given.
pub fn encode(
    vni: u32,
    frame: &[u8],
    trailer: Option<&Trailer>,
    out: &mut Vec<u8>,
) -> Result<(), VxlanError> {
    if vni > MAX_VNI {
        return Err(VxlanError::VniRange(vni));
    }
    let total = HEADER_LEN + frame.len() + trailer.map_or(0, |_| TRAILER_LEN);
    // 65,535 minus the IPv4 and UDP headers.
    if total > 65_507 {
        return Err(VxlanError::TooLarge(frame.len(), total));
    }
    let vni = vni.to_be_bytes();
    out.extend_from_slice(&[
        FLAG_VNI,
        0,
        0,
        0,
        vni[1],
        vni[2],
        vni[3],
        if trailer.is_some() { TRAILER_HINT } else { 0 },
    ]);
    out.extend_from_slice(frame);
    if let Some(t) = trailer {
        out.extend_from_slice(&t.captured_at_ns.to_be_bytes());
        out.extend_from_slice(&t.original_len.to_be_bytes());
        out.push(match t.direction {
            Direction::Ingress => 1,
            Direction::Egress => 2,
        });
        out.push(TRAILER_VERSION);
        out.extend_from_slice(&TRAILER_MAGIC);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_aws_vxlan_has_no_trailer() {
        // As AWS sends it: I flag, VNI 0x123456, all reserved bits zero.
        let mut p = vec![0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0];
        p.extend_from_slice(b"frame bytes");
        let e = decode(&p).unwrap();
        assert_eq!(e.vni, 0x12_3456);
        assert_eq!(e.frame, b"frame bytes");
        assert_eq!(e.trailer, None);
    }

    #[test]
    fn trailer_round_trips() {
        let t = Trailer {
            captured_at_ns: 1_790_000_000_123_456_789,
            original_len: 1514,
            direction: Direction::Egress,
        };
        let mut out = Vec::new();
        encode(16_777_215, b"truncated frame", Some(&t), &mut out).unwrap();
        let e = decode(&out).unwrap();
        assert_eq!(
            (e.vni, e.frame, e.trailer),
            (16_777_215, &b"truncated frame"[..], Some(t))
        );
        // Without a trailer the reserved byte stays zero, as RFC 7348 wants.
        out.clear();
        encode(7, b"x", None, &mut out).unwrap();
        assert_eq!(out[7], 0);
        assert_eq!(decode(&out).unwrap().trailer, None);
    }

    #[test]
    fn bad_headers_are_errors_not_panics() {
        assert_eq!(decode(&[0x08, 0, 0]), Err(VxlanError::Short(3)));
        assert_eq!(decode(&[0, 0, 0, 0, 0, 0, 1, 0]), Err(VxlanError::NoVni(0)));
        // Announced trailer, too short or with the wrong magic.
        assert_eq!(
            decode(&[0x08, 0, 0, 0, 0, 0, 1, b'T', 1, 2]),
            Err(VxlanError::Trailer)
        );
        let mut p = vec![0x08, 0, 0, 0, 0, 0, 1, b'T'];
        p.extend_from_slice(&[0; 16]);
        assert_eq!(decode(&p), Err(VxlanError::Trailer));
        assert_eq!(frame_without_trailer(&p).unwrap().1.len(), 16);
        assert_eq!(
            encode(MAX_VNI + 1, b"", None, &mut Vec::new()),
            Err(VxlanError::VniRange(MAX_VNI + 1))
        );
    }
}
