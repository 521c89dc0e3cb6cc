//! From a captured frame to its addresses and TCP or UDP payload, leniently: a frame
//! cut short by the mirror's packet length still yields the headers and the bytes
//! that were captured, with the length the sender meant, so the layers above can
//! count the missing tail instead of losing the whole packet.

use std::net::IpAddr;

use etherparse::{EtherType, LaxNetSlice, LaxSlicedPacket, LenSource, TransportSlice};
use thiserror::Error;

/// How frames of a capture start (pcap LINKTYPE_*; VXLAN always carries Ethernet).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkType {
    Ethernet,
    /// Linux cooked capture v1 (tcpdump -i any).
    LinuxSll,
    /// Linux cooked capture v2.
    LinuxSll2,
    /// A bare IPv4 or IPv6 packet.
    RawIp,
    /// BSD loopback: a 4-byte address family, then IP.
    Loopback,
}

impl LinkType {
    /// The link type of a pcap/pcapng LINKTYPE value, when ticklab reads it.
    pub fn from_pcap(linktype: u32) -> Option<Self> {
        Some(match linktype {
            1 => LinkType::Ethernet,
            113 => LinkType::LinuxSll,
            276 => LinkType::LinuxSll2,
            12 | 14 | 101 | 228 | 229 => LinkType::RawIp,
            0 | 108 => LinkType::Loopback,
            _ => return None,
        })
    }
}

/// TCP header flags the reassembly needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpFlags {
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport<'a> {
    Udp {
        src_port: u16,
        dst_port: u16,
        /// The payload bytes captured.
        payload: &'a [u8],
        /// Payload bytes the sender sent (more than captured when truncated).
        original_len: usize,
    },
    Tcp {
        src_port: u16,
        dst_port: u16,
        seq: u32,
        flags: TcpFlags,
        payload: &'a [u8],
        original_len: usize,
    },
}

/// One decoded frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet<'a> {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// VLAN IDs from outermost, when the frame had 802.1Q tags.
    pub vlans: [Option<u16>; 2],
    pub transport: Transport<'a>,
}

impl Packet<'_> {
    /// Whether the capture holds less than the sender sent.
    pub fn truncated(&self) -> bool {
        match self.transport {
            Transport::Udp {
                payload,
                original_len,
                ..
            }
            | Transport::Tcp {
                payload,
                original_len,
                ..
            } => payload.len() < original_len,
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum LinkError {
    #[error("frame too short for its {0} header")]
    Truncated(&'static str),
    #[error("malformed {0} header")]
    Malformed(&'static str),
    #[error("IP fragment (not reassembled)")]
    Fragment,
    #[error("not TCP or UDP (IP protocol {0})")]
    OtherProtocol(u8),
    #[error("not IP (EtherType {0:#06x})")]
    NotIp(u16),
}

impl LinkError {
    /// Stable label for metrics. Frames that are not TCP/UDP over IP (ARP, ICMP) are
    /// not errors: they are counted apart, as "other".
    pub fn kind(&self) -> &'static str {
        match self {
            LinkError::Truncated(_) => "truncated_headers",
            LinkError::Malformed(_) => "malformed_headers",
            LinkError::Fragment => "ip_fragment",
            LinkError::OtherProtocol(_) | LinkError::NotIp(_) => "other",
        }
    }

    pub fn is_error(&self) -> bool {
        self.kind() != "other"
    }
}

const SLL2_LEN: usize = 20;
const LOOPBACK_LEN: usize = 4;

/// Decodes one frame of link type `link`.
pub fn decode(link: LinkType, frame: &[u8]) -> Result<Packet<'_>, LinkError> {
    let sliced = match link {
        LinkType::Ethernet => {
            LaxSlicedPacket::from_ethernet(frame).map_err(|_| LinkError::Truncated("Ethernet"))?
        }
        LinkType::LinuxSll => {
            // 16 bytes: packet type, ARPHRD, address length, 8 address bytes, protocol.
            let (Some(proto), Some(rest)) = (frame.get(14..16), frame.get(16..)) else {
                return Err(LinkError::Truncated("Linux cooked"));
            };
            LaxSlicedPacket::from_ether_type(
                EtherType(u16::from_be_bytes([proto[0], proto[1]])),
                rest,
            )
        }
        LinkType::LinuxSll2 => {
            let (Some(proto), Some(rest)) = (frame.get(..2), frame.get(SLL2_LEN..)) else {
                return Err(LinkError::Truncated("Linux cooked v2"));
            };
            LaxSlicedPacket::from_ether_type(
                EtherType(u16::from_be_bytes([proto[0], proto[1]])),
                rest,
            )
        }
        LinkType::RawIp => from_ip(frame)?,
        LinkType::Loopback => from_ip(
            frame
                .get(LOOPBACK_LEN..)
                .ok_or(LinkError::Truncated("loopback"))?,
        )?,
    };
    packet(&sliced)
}

fn from_ip(bytes: &[u8]) -> Result<LaxSlicedPacket<'_>, LinkError> {
    LaxSlicedPacket::from_ip(bytes).map_err(|e| match e {
        etherparse::err::ip::LaxHeaderSliceError::Len(_) => LinkError::Truncated("IP"),
        etherparse::err::ip::LaxHeaderSliceError::Content(_) => LinkError::Malformed("IP"),
    })
}

fn packet<'a>(sliced: &LaxSlicedPacket<'a>) -> Result<Packet<'a>, LinkError> {
    let mut vlans = [None; 2];
    for (slot, id) in vlans.iter_mut().zip(sliced.vlan_ids()) {
        *slot = Some(id.value());
    }
    let (src, dst, ip_payload, declared) = match &sliced.net {
        Some(LaxNetSlice::Ipv4(v4)) => {
            let h = v4.header();
            // What the IP header says the payload is, whatever was captured.
            let declared = usize::from(h.total_len()).saturating_sub(h.slice().len());
            (
                IpAddr::from(h.source()),
                IpAddr::from(h.destination()),
                v4.payload(),
                declared,
            )
        }
        Some(LaxNetSlice::Ipv6(v6)) => {
            let h = v6.header();
            let exts = v6.extensions().slice().len();
            let declared = usize::from(h.payload_length()).saturating_sub(exts);
            (
                IpAddr::from(h.source_addr()),
                IpAddr::from(h.destination_addr()),
                v6.payload(),
                declared,
            )
        }
        Some(_) => return Err(LinkError::NotIp(0)),
        None => {
            return Err(match &sliced.stop_err {
                Some((etherparse::err::packet::SliceError::Len(_), _)) => {
                    LinkError::Truncated("IP")
                }
                Some(_) => LinkError::Malformed("IP"),
                None => LinkError::NotIp(sliced.ether_payload().map_or(0, |p| p.ether_type.0)),
            });
        }
    };
    if ip_payload.fragmented {
        return Err(LinkError::Fragment);
    }
    // Cut short: the header's length is what was sent. A length taken from the slice
    // for another reason (a total length below the header's, a jumbo IPv6 packet):
    // trust the captured bytes.
    let declared = if ip_payload.incomplete {
        declared.max(ip_payload.payload.len())
    } else if ip_payload.len_source == LenSource::Slice {
        ip_payload.payload.len()
    } else {
        declared.max(ip_payload.payload.len())
    };
    match &sliced.transport {
        Some(TransportSlice::Udp(udp)) => Ok(Packet {
            src,
            dst,
            vlans,
            transport: Transport::Udp {
                src_port: udp.source_port(),
                dst_port: udp.destination_port(),
                payload: udp.payload(),
                original_len: declared.saturating_sub(8).max(udp.payload().len()),
            },
        }),
        Some(TransportSlice::Tcp(tcp)) => {
            let header = tcp.header_slice().len();
            Ok(Packet {
                src,
                dst,
                vlans,
                transport: Transport::Tcp {
                    src_port: tcp.source_port(),
                    dst_port: tcp.destination_port(),
                    seq: tcp.sequence_number(),
                    flags: TcpFlags {
                        syn: tcp.syn(),
                        ack: tcp.ack(),
                        fin: tcp.fin(),
                        rst: tcp.rst(),
                    },
                    payload: tcp.payload(),
                    original_len: declared.saturating_sub(header).max(tcp.payload().len()),
                },
            })
        }
        Some(_) => Err(LinkError::OtherProtocol(ip_payload.ip_number.0)),
        None => Err(match ip_payload.ip_number.0 {
            // TCP or UDP whose header was cut: a truncation, not another protocol.
            6 | 17 => LinkError::Truncated(if ip_payload.ip_number.0 == 6 {
                "TCP"
            } else {
                "UDP"
            }),
            other => LinkError::OtherProtocol(other),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn eth_tcp(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ethernet2([2; 6], [4; 6])
            .single_vlan(etherparse::VlanId::try_new(100).unwrap())
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(40000, 9003, 4_000_000_000, 1000)
            .syn()
            .write(&mut out, payload)
            .unwrap();
        out
    }

    #[test]
    fn tcp_over_vlan() {
        let f = eth_tcp(b"hello");
        let p = decode(LinkType::Ethernet, &f).unwrap();
        assert_eq!(p.vlans, [Some(100), None]);
        assert_eq!(p.src, IpAddr::from([10, 0, 0, 1]));
        let Transport::Tcp {
            src_port,
            dst_port,
            seq,
            flags,
            payload,
            original_len,
        } = p.transport
        else {
            panic!("not tcp")
        };
        assert_eq!((src_port, dst_port, seq), (40000, 9003, 4_000_000_000));
        assert!(flags.syn && !flags.fin);
        assert_eq!((payload, original_len), (&b"hello"[..], 5));
        assert!(!p.truncated());
    }

    #[test]
    fn truncated_frames_keep_headers_and_the_meant_length() {
        let f = eth_tcp(&[7; 100]);
        // Cut 60 payload bytes off, as a mirror packet length would.
        let p = decode(LinkType::Ethernet, &f[..f.len() - 60]).unwrap();
        let Transport::Tcp {
            payload,
            original_len,
            ..
        } = p.transport
        else {
            panic!()
        };
        assert_eq!((payload.len(), original_len), (40, 100));
        assert!(p.truncated());

        let mut udp = Vec::new();
        PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv6([1; 16], [2; 16], 64)
            .udp(9001, 9100)
            .write(&mut udp, &[1; 300])
            .unwrap();
        let p = decode(LinkType::Ethernet, &udp[..udp.len() - 200]).unwrap();
        let Transport::Udp {
            payload,
            original_len,
            ..
        } = p.transport
        else {
            panic!()
        };
        assert_eq!((payload.len(), original_len), (100, 300));

        // Cut inside the TCP header: a truncation, not garbage.
        assert_eq!(
            decode(LinkType::Ethernet, &f[..14 + 4 + 20 + 10]),
            Err(LinkError::Truncated("TCP"))
        );
        assert_eq!(
            decode(LinkType::Ethernet, &f[..10]),
            Err(LinkError::Truncated("Ethernet"))
        );
    }

    #[test]
    fn other_link_types() {
        let mut ip = Vec::new();
        PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(1, 2)
            .write(&mut ip, b"x")
            .unwrap();
        assert!(decode(LinkType::RawIp, &ip).is_ok());
        let mut sll = vec![0, 0, 0, 1, 0, 6, 1, 2, 3, 4, 5, 6, 0, 0, 0x08, 0x00];
        sll.extend_from_slice(&ip);
        assert!(decode(LinkType::LinuxSll, &sll).is_ok());
        let mut null = vec![2, 0, 0, 0];
        null.extend_from_slice(&ip);
        assert!(decode(LinkType::Loopback, &null).is_ok());
        // ARP is not an error.
        let mut arp = vec![0xff; 12];
        arp.extend_from_slice(&[0x08, 0x06]);
        arp.extend_from_slice(&[0; 28]);
        let e = decode(LinkType::Ethernet, &arp).unwrap_err();
        assert!(!e.is_error(), "{e:?}");
    }
}
