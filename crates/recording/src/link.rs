//! From a captured frame to its UDP payload, for every link type replay accepts:
//! Ethernet (with 802.1Q / QinQ tags), Linux cooked SLL and SLL2, raw IPv4/IPv6 and
//! BSD loopback. A frame that carries no usable UDP payload gets a reason, so a
//! reader can say what it skipped.

use etherparse::err::packet::SliceError;
use etherparse::{EtherType, SlicedPacket, TransportSlice};

/// Skip reasons, used as keys of [`crate::LoadedFeed::skipped`].
pub mod reason {
    pub const NOT_UDP: &str = "not UDP";
    pub const TRUNCATED: &str = "truncated";
    pub const FRAGMENT: &str = "IP fragment";
    pub const MALFORMED: &str = "malformed headers";
    pub const UNSUPPORTED_LINK: &str = "unsupported link type";
    pub const NOT_FEED: &str = "not a feed packet";
    pub const CONTROL: &str = "heartbeat/control";
    pub const DUPLICATE: &str = "duplicate";
    pub const CORRUPT: &str = "unreadable record (reading stopped)";
    pub const NO_INTERFACE: &str = "undeclared pcapng interface";
    pub const BAD_LINE: &str = "not a trade line";
}

// LINKTYPE_* values (tcpdump.org/linktypes.html).
const NULL: u32 = 0;
const ETHERNET: u32 = 1;
const RAW_OPENBSD: u32 = 12;
const RAW_BSDOS: u32 = 14;
const RAW: u32 = 101;
const LOOP: u32 = 108;
const LINUX_SLL: u32 = 113;
const IPV4: u32 = 228;
const IPV6: u32 = 229;
const LINUX_SLL2: u32 = 276;

/// Bytes of a Linux cooked v2 header; its first two bytes are the EtherType.
const SLL2_LEN: usize = 20;
/// Bytes of the BSD loopback address-family header.
const LOOPBACK_LEN: usize = 4;

/// The UDP payload of `data`, a frame of link type `linktype`, or why there is none.
pub(crate) fn udp_payload(linktype: u32, data: &[u8]) -> Result<&[u8], &'static str> {
    let sliced = match linktype {
        ETHERNET => SlicedPacket::from_ethernet(data),
        LINUX_SLL => SlicedPacket::from_linux_sll(data),
        LINUX_SLL2 => {
            let (Some(proto), Some(rest)) = (data.get(..2), data.get(SLL2_LEN..)) else {
                return Err(reason::TRUNCATED);
            };
            let ether_type = EtherType(u16::from_be_bytes([proto[0], proto[1]]));
            SlicedPacket::from_ether_type(ether_type, rest)
        }
        RAW | RAW_OPENBSD | RAW_BSDOS | IPV4 | IPV6 => SlicedPacket::from_ip(data),
        // The family word is in the capturing host's byte order (NULL) or network
        // order (LOOP); the IP version nibble says the same, whatever the order.
        NULL | LOOP => match data.get(LOOPBACK_LEN..) {
            Some(rest) => SlicedPacket::from_ip(rest),
            None => return Err(reason::TRUNCATED),
        },
        _ => return Err(reason::UNSUPPORTED_LINK),
    };
    let sliced = sliced.map_err(|e| match e {
        SliceError::Len(_) => reason::TRUNCATED,
        SliceError::Tcp(_) => reason::NOT_UDP,
        _ => reason::MALFORMED,
    })?;
    if sliced.is_ip_payload_fragmented() {
        return Err(reason::FRAGMENT);
    }
    match sliced.transport {
        Some(TransportSlice::Udp(udp)) => Ok(udp.payload()),
        _ => Err(reason::NOT_UDP),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn ipv4_udp(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(1, 2)
            .write(&mut out, payload)
            .unwrap();
        out
    }

    #[test]
    fn every_link_type_yields_the_payload() {
        let payload = b"payload";
        let ip = ipv4_udp(payload);

        let mut eth = Vec::new();
        PacketBuilder::ethernet2([2; 6], [4; 6])
            .double_vlan(
                etherparse::VlanId::try_new(10).unwrap(),
                etherparse::VlanId::try_new(20).unwrap(),
            )
            .ipv6([1; 16], [2; 16], 64)
            .udp(1, 2)
            .write(&mut eth, payload)
            .unwrap();
        assert_eq!(udp_payload(ETHERNET, &eth), Ok(&payload[..]));

        let mut sll = vec![0, 0, 0, 1, 0, 6, 1, 2, 3, 4, 5, 6, 0, 0, 0x08, 0x00];
        sll.extend_from_slice(&ip);
        assert_eq!(udp_payload(LINUX_SLL, &sll), Ok(&payload[..]));

        let mut sll2 = vec![0x08, 0x00, 0, 0, 0, 0, 0, 2, 0, 1, 0, 6];
        sll2.extend_from_slice(&[1, 2, 3, 4, 5, 6, 0, 0]);
        sll2.extend_from_slice(&ip);
        assert_eq!(udp_payload(LINUX_SLL2, &sll2), Ok(&payload[..]));

        for raw in [RAW, IPV4, RAW_OPENBSD] {
            assert_eq!(udp_payload(raw, &ip), Ok(&payload[..]));
        }
        let mut null = vec![2, 0, 0, 0];
        null.extend_from_slice(&ip);
        assert_eq!(udp_payload(NULL, &null), Ok(&payload[..]));

        assert_eq!(
            udp_payload(ETHERNET, &eth[..eth.len() - 1]),
            Err(reason::TRUNCATED)
        );
        assert_eq!(udp_payload(147, &eth), Err(reason::UNSUPPORTED_LINK));
        assert_eq!(udp_payload(LINUX_SLL2, &sll2[..5]), Err(reason::TRUNCATED));
    }

    #[test]
    fn tcp_and_fragments_are_skipped() {
        let mut tcp = Vec::new();
        PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(1, 2, 0, 1000)
            .write(&mut tcp, b"x")
            .unwrap();
        assert_eq!(udp_payload(RAW, &tcp), Err(reason::NOT_UDP));

        let mut frag = ipv4_udp(b"0123456789");
        // Set "more fragments" in the flags/fragment-offset word, fix the checksum.
        frag[6] |= 0x20;
        frag[10] = 0;
        frag[11] = 0;
        let header = etherparse::Ipv4HeaderSlice::from_slice(&frag)
            .unwrap()
            .to_header();
        let sum = header.calc_header_checksum().to_be_bytes();
        frag[10..12].copy_from_slice(&sum);
        assert_eq!(udp_payload(RAW, &frag), Err(reason::FRAGMENT));
    }
}
