//! ticklab's feed packets and order-channel messages, read leniently: a packet the
//! mirror cut short yields every message that was captured whole, and says how many
//! it lost, instead of being rejected.

use ticklab_wire::packet::HEADER_LEN;
use ticklab_wire::{FeedPacket, Message, PacketHeader, PacketKind, WireError};

/// What a (possibly truncated) feed packet holds.
#[derive(Clone, Debug, PartialEq)]
pub struct FeedView {
    pub header: PacketHeader,
    pub kind: PacketKind,
    /// Messages captured whole, with their sequence numbers.
    pub messages: Vec<(u64, Message)>,
    /// Messages the header announces but the capture cut off.
    pub cut_off: u16,
    /// Messages that were there but did not decode.
    pub malformed: u16,
}

/// Reads a feed packet. `original_len` is what the sender sent: when the capture
/// holds less, the packet is read as far as it goes.
pub fn feed_packet(payload: &[u8], original_len: usize) -> Result<FeedView, WireError> {
    match FeedPacket::parse(payload) {
        Ok(packet) => {
            let mut view = FeedView {
                header: packet.header,
                kind: packet.kind,
                messages: Vec::with_capacity(usize::from(packet.message_count())),
                cut_off: 0,
                malformed: 0,
            };
            for (seq, message) in packet.messages() {
                match message {
                    Ok(m) => view.messages.push((seq, m)),
                    Err(_) => view.malformed += 1,
                }
            }
            Ok(view)
        }
        Err(error) if payload.len() < original_len => truncated(payload).ok_or(error),
        Err(error) => Err(error),
    }
}

/// A data packet cut short: the header, then blocks while whole ones remain.
fn truncated(payload: &[u8]) -> Option<FeedView> {
    let header = PacketHeader::parse(payload).ok()?;
    if header.count >= 0xFFFE {
        return None;
    }
    let mut view = FeedView {
        header,
        kind: if header.count == 0 {
            PacketKind::Heartbeat
        } else {
            PacketKind::Data
        },
        messages: Vec::new(),
        cut_off: 0,
        malformed: 0,
    };
    let mut rest = payload.get(HEADER_LEN..)?;
    let mut seq = header.seq;
    let mut read = 0u16;
    while read < header.count {
        let Some((len, body)) = rest.split_first_chunk::<2>() else {
            break;
        };
        let Some(block) = body.get(..usize::from(u16::from_be_bytes(*len))) else {
            break;
        };
        match Message::decode(block) {
            Ok(m) => view.messages.push((seq, m)),
            Err(_) => view.malformed += 1,
        }
        rest = &body[block.len()..];
        seq = seq.wrapping_add(1);
        read += 1;
    }
    view.cut_off = header.count - read;
    Some(view)
}

/// One message of the binary order channel (length prefix already removed): an
/// order from the trader, an ack or a fill from the exchange.
pub fn order_channel(body: &[u8]) -> Result<Message, WireError> {
    Message::decode(body)
}

/// Whether a length-prefixed frame body on a TCP connection is an order-channel
/// message rather than a feed packet: those have fixed sizes no feed packet has
/// (a feed packet is 20 bytes of header plus 44 per trade, or 20/28 for control).
pub fn is_order_channel_size(len: usize) -> bool {
    matches!(len, 26 | 50)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ticklab_wire::{PacketBuilder, Price, Quantity, Session, Side, Symbol, Trade};

    fn packet(n: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let mut b = PacketBuilder::new(&mut out, Session::from_name("s"), 100, 1400);
        for i in 0..n {
            assert!(b.push(&Message::Trade(Trade {
                symbol: Symbol::new("BTCUSD").unwrap(),
                price: Price(1),
                quantity: Quantity(2),
                side: Side::Buy,
                trade_id: i,
                send_ts_ns: 5,
            })));
        }
        b.finish();
        out
    }

    #[test]
    fn whole_and_cut_packets() {
        let p = packet(5);
        let v = feed_packet(&p, p.len()).unwrap();
        assert_eq!(v.messages.len(), 5);
        assert_eq!(v.messages[4].0, 104);
        // Cut in the middle of the fourth message: three decode, two are lost.
        let cut = &p[..HEADER_LEN + 3 * 44 + 10];
        let v = feed_packet(cut, p.len()).unwrap();
        assert_eq!((v.messages.len(), v.cut_off), (3, 2));
        // The same bytes, not truncated by the capture: malformed.
        assert!(feed_packet(cut, cut.len()).is_err());
        assert!(feed_packet(&p[..5], p.len()).is_err());
    }
}
