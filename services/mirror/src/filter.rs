//! Mirror filter rules with AWS VPC Traffic Mirroring's semantics: the rules of the
//! packet's direction are tried in order, the first that matches decides (accept
//! mirrors, reject skips), and a packet no rule matches is not mirrored. A session
//! without rules mirrors everything.

use ticklab_capture::link::{Packet, Transport};
use ticklab_capture::vxlan::Direction as WireDirection;
use ticklab_crd::mirror_session::{Direction, FilterAction, FilterRule, Protocol};

/// The session's rules, ready to test packets against.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    rules: Vec<FilterRule>,
}

impl Filter {
    pub fn new(rules: Vec<FilterRule>) -> Self {
        Self { rules }
    }

    /// Whether `packet`, going `direction`, is mirrored. Frames that are not TCP or
    /// UDP over IP match only rules for all protocols without ports.
    pub fn accepts(&self, direction: WireDirection, packet: Option<&Packet<'_>>) -> bool {
        if self.rules.is_empty() {
            return true;
        }
        let direction = match direction {
            WireDirection::Ingress => Direction::Ingress,
            WireDirection::Egress => Direction::Egress,
        };
        let (protocol, src_port, dst_port) = match packet.map(|p| p.transport) {
            Some(Transport::Udp {
                src_port, dst_port, ..
            }) => (Some(Protocol::Udp), Some(src_port), Some(dst_port)),
            Some(Transport::Tcp {
                src_port, dst_port, ..
            }) => (Some(Protocol::Tcp), Some(src_port), Some(dst_port)),
            None => (None, None, None),
        };
        self.rules
            .iter()
            .filter(|r| r.direction == direction)
            .find(|r| {
                let protocol_ok = r.protocol == Protocol::All || Some(r.protocol) == protocol;
                let ports_ok = |wanted: &[u16], port: Option<u16>| {
                    wanted.is_empty() || port.is_some_and(|p| wanted.contains(&p))
                };
                protocol_ok && ports_ok(&r.ports, dst_port) && ports_ok(&r.source_ports, src_port)
            })
            .is_some_and(|r| r.action == FilterAction::Accept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;
    use ticklab_capture::link::{self, LinkType};

    fn rule(
        direction: Direction,
        action: FilterAction,
        protocol: Protocol,
        ports: &[u16],
    ) -> FilterRule {
        FilterRule {
            direction,
            action,
            protocol,
            ports: ports.to_vec(),
            source_ports: Vec::new(),
        }
    }

    fn udp(dst: u16) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(5000, dst)
            .write(&mut out, b"x")
            .unwrap();
        out
    }

    #[test]
    fn first_match_wins_and_no_match_is_not_mirrored() {
        use Direction::*;
        use FilterAction::*;
        let f = Filter::new(vec![
            rule(Ingress, Reject, Protocol::Udp, &[9001]),
            rule(Ingress, Accept, Protocol::Udp, &[]),
            rule(Egress, Accept, Protocol::Tcp, &[9002, 9003]),
        ]);
        let feed = udp(9100);
        let retransmit = udp(9001);
        let feed = link::decode(LinkType::Ethernet, &feed).unwrap();
        let retransmit = link::decode(LinkType::Ethernet, &retransmit).unwrap();
        assert!(f.accepts(WireDirection::Ingress, Some(&feed)));
        assert!(
            !f.accepts(WireDirection::Ingress, Some(&retransmit)),
            "the reject rule comes first"
        );
        assert!(
            !f.accepts(WireDirection::Egress, Some(&feed)),
            "no egress rule matches UDP"
        );
        assert!(
            !f.accepts(WireDirection::Ingress, None),
            "ARP matches no UDP rule"
        );
        assert!(
            Filter::default().accepts(WireDirection::Egress, None),
            "no rules: everything"
        );
    }
}
