//! Ethernet II / IPv4 / UDP framing of a received UDP payload. The recorder gets
//! payloads from a socket, without the headers; wrapping them in a complete frame
//! with valid checksums lets tcpdump, tshark and Wireshark decode recordings as UDP.

use std::net::SocketAddrV4;

use etherparse::PacketBuilder;

use crate::{RecordingError, Result};

/// Source MAC of every recorded frame: locally administered (bit 1 of the first
/// byte set), so it can never be mistaken for a real NIC's address.
pub const SRC_MAC: [u8; 6] = [0x02, 0x74, 0x6c, 0x00, 0x00, 0x01];
/// Destination MAC for unicast destinations (locally administered too).
pub const DST_MAC: [u8; 6] = [0x02, 0x74, 0x6c, 0x00, 0x00, 0x02];
/// Largest UDP payload of one IPv4 datagram: 65535 − 20 (IPv4) − 8 (UDP).
pub const MAX_UDP_PAYLOAD: usize = 65_507;
/// Bytes the frame adds in front of the payload: Ethernet 14 + IPv4 20 + UDP 8.
pub const FRAME_OVERHEAD: usize = 42;

/// TTL written into the IPv4 header; any value decodes, 64 is the Linux default.
const TTL: u8 = 64;

/// Returns a complete frame carrying `payload` from `src` to `dst`.
///
/// A multicast destination gets the matching 01:00:5e multicast MAC (as on the wire),
/// anything else [`DST_MAC`]. Fails only for payloads over [`MAX_UDP_PAYLOAD`].
pub fn udp_frame(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(FRAME_OVERHEAD + payload.len());
    write_udp_frame(&mut out, src, dst, payload)?;
    Ok(out)
}

/// [`udp_frame`] appending to a caller-owned buffer, so the recorder's hot path
/// reuses one allocation.
pub fn write_udp_frame(
    out: &mut Vec<u8>,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    payload: &[u8],
) -> Result<()> {
    if payload.len() > MAX_UDP_PAYLOAD {
        return Err(RecordingError::PayloadTooLarge(payload.len()));
    }
    let dst_mac = if dst.ip().is_multicast() {
        // RFC 1112: 01:00:5e followed by the low 23 bits of the group address.
        let o = dst.ip().octets();
        [0x01, 0x00, 0x5e, o[1] & 0x7f, o[2], o[3]]
    } else {
        DST_MAC
    };
    let builder = PacketBuilder::ethernet2(SRC_MAC, dst_mac)
        .ipv4(src.ip().octets(), dst.ip().octets(), TTL)
        .udp(src.port(), dst.port());
    // etherparse fills in the IPv4 total length and header checksum and the UDP
    // length and checksum (over the pseudo-header); writing to a Vec cannot fail
    // once the size was checked, but it reports an error rather than panicking.
    builder
        .write(out, payload)
        .map_err(|_| RecordingError::PayloadTooLarge(payload.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    #[test]
    fn frame_parses_back_with_valid_checksums() {
        let src = "10.0.0.1:4000".parse().unwrap();
        let dst = "10.0.0.2:5000".parse().unwrap();
        let payload = b"hello feed";
        let frame = udp_frame(src, dst, payload).unwrap();
        assert_eq!(frame.len(), FRAME_OVERHEAD + payload.len());
        let sliced = SlicedPacket::from_ethernet(&frame).unwrap();
        let Some(NetSlice::Ipv4(ip)) = &sliced.net else {
            panic!("not IPv4")
        };
        let header = ip.header().to_header();
        assert_eq!(header.header_checksum, header.calc_header_checksum());
        let Some(TransportSlice::Udp(udp)) = &sliced.transport else {
            panic!("not UDP")
        };
        assert_eq!(udp.payload(), payload);
        assert_eq!((udp.source_port(), udp.destination_port()), (4000, 5000));
        let checksum = udp
            .to_header()
            .calc_checksum_ipv4(&header, udp.payload())
            .unwrap();
        assert_eq!(udp.checksum(), checksum);
        assert_ne!(udp.checksum(), 0);
    }

    #[test]
    fn multicast_gets_multicast_mac_and_size_is_limited() {
        let src = "10.0.0.1:4000".parse().unwrap();
        let dst = "239.129.2.3:5000".parse().unwrap();
        let frame = udp_frame(src, dst, &[]).unwrap();
        assert_eq!(&frame[..6], &[0x01, 0x00, 0x5e, 0x01, 0x02, 0x03]);
        assert!(udp_frame(src, dst, &vec![0; MAX_UDP_PAYLOAD]).is_ok());
        assert!(matches!(
            udp_frame(src, dst, &vec![0; MAX_UDP_PAYLOAD + 1]),
            Err(RecordingError::PayloadTooLarge(65_508))
        ));
    }
}
