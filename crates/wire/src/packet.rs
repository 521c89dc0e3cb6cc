//! MoldUDP64-style packets: a 20-byte header (10-byte session, sequence number of
//! the first message, message count) followed by `count` blocks of a 2-byte length
//! and a message. Each message consumes one sequence number.
//!
//! As in MoldUDP64, count 0 is a heartbeat and 0xFFFF ends the session; in both the
//! sequence number is the next one the exchange will use. ticklab adds 0xFFFE, sent
//! only by the retransmission server: "the 8-byte count of messages from `seq` on is
//! no longer held", so a receiver can declare them lost at once instead of timing out.

use crate::message::{Message, Reader, Trade};
use crate::types::Session;
use crate::{Result, WireError};

pub const HEADER_LEN: usize = 20;
const HEARTBEAT: u16 = 0;
const UNAVAILABLE: u16 = 0xFFFE;
const END_OF_SESSION: u16 = 0xFFFF;
/// Largest message count of a data packet (the top two values are reserved).
pub const MAX_MESSAGES: u16 = 0xFFFD;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketHeader {
    pub session: Session,
    /// Sequence number of the first message (data), or the next sequence number
    /// (heartbeat, end of session), or the first unavailable one.
    pub seq: u64,
    pub count: u16,
}

impl PacketHeader {
    pub fn parse(buf: &[u8]) -> Result<Self> {
        let mut r = Reader::new(buf, "packet header");
        Ok(Self {
            session: Session(r.array()?),
            seq: r.u64()?,
            count: r.u16()?,
        })
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.session.0);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.count.to_be_bytes());
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketKind {
    /// `count` messages starting at `seq`.
    Data,
    /// Nothing new; `seq` is the next sequence number.
    Heartbeat,
    /// The feed is over; `seq` is one past the last message ever sent.
    EndOfSession,
    /// Retransmission reply: `count` messages from `seq` on are gone for good.
    Unavailable { count: u64 },
}

/// A validated packet borrowed from a receive buffer.
#[derive(Clone, Copy, Debug)]
pub struct FeedPacket<'a> {
    pub header: PacketHeader,
    pub kind: PacketKind,
    blocks: &'a [u8],
}

impl<'a> FeedPacket<'a> {
    /// Checks the header and that exactly `count` well-framed blocks follow. The
    /// messages themselves are decoded lazily by [`FeedPacket::messages`].
    pub fn parse(buf: &'a [u8]) -> Result<Self> {
        let header = PacketHeader::parse(buf)?;
        let body = buf.get(HEADER_LEN..).unwrap_or(&[]);
        let kind = match header.count {
            HEARTBEAT => PacketKind::Heartbeat,
            END_OF_SESSION => PacketKind::EndOfSession,
            UNAVAILABLE => {
                let mut r = Reader::new(body, "unavailable count");
                let count = r.u64()?;
                if !r.remaining().is_empty() {
                    return Err(WireError::TrailingBytes(r.remaining().len()));
                }
                return Ok(Self {
                    header,
                    kind: PacketKind::Unavailable { count },
                    blocks: &[],
                });
            }
            _ => PacketKind::Data,
        };
        if kind != PacketKind::Data {
            if !body.is_empty() {
                return Err(WireError::TrailingBytes(body.len()));
            }
            return Ok(Self {
                header,
                kind,
                blocks: &[],
            });
        }
        let mut r = Reader::new(body, "message block");
        let mut found = 0usize;
        while !r.remaining().is_empty() {
            let len = usize::from(r.u16()?);
            r.take(len)?;
            found += 1;
        }
        if found != usize::from(header.count) {
            return Err(WireError::CountMismatch {
                declared: header.count,
                found,
            });
        }
        Ok(Self {
            header,
            kind,
            blocks: body,
        })
    }

    /// Number of messages (0 unless this is a data packet).
    pub fn message_count(&self) -> u16 {
        match self.kind {
            PacketKind::Data => self.header.count,
            _ => 0,
        }
    }

    /// Sequence number after this packet's last message.
    pub fn next_seq(&self) -> u64 {
        self.header
            .seq
            .saturating_add(u64::from(self.message_count()))
    }

    /// The messages with their sequence numbers; a malformed message is an `Err`
    /// item, the others still decode.
    pub fn messages(&self) -> Messages<'a> {
        Messages {
            reader: Reader::new(self.blocks, "message block"),
            seq: self.header.seq,
        }
    }
}

pub struct Messages<'a> {
    reader: Reader<'a>,
    seq: u64,
}

impl Iterator for Messages<'_> {
    type Item = (u64, Result<Message>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.reader.remaining().is_empty() {
            return None;
        }
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        // parse() already proved the framing, so these reads cannot fail; if they
        // somehow did, report and stop rather than loop.
        let block = self
            .reader
            .u16()
            .and_then(|len| self.reader.take(usize::from(len)));
        match block {
            Ok(bytes) => Some((seq, Message::decode(bytes))),
            Err(e) => {
                self.reader = Reader::new(&[], "message block");
                Some((seq, Err(e)))
            }
        }
    }
}

/// Writes one data packet into a caller-owned buffer, message by message, refusing
/// messages that would overflow `max_len` (so a UDP packet fits the path MTU).
pub struct PacketBuilder<'a> {
    out: &'a mut Vec<u8>,
    start: usize,
    count: u16,
    max_len: usize,
}

impl<'a> PacketBuilder<'a> {
    /// Starts a packet at the end of `out`.
    pub fn new(out: &'a mut Vec<u8>, session: Session, first_seq: u64, max_len: usize) -> Self {
        let start = out.len();
        PacketHeader {
            session,
            seq: first_seq,
            count: 0,
        }
        .encode(out);
        Self {
            out,
            start,
            count: 0,
            max_len: max_len.max(HEADER_LEN + 2 + Trade::LEN),
        }
    }

    fn room_for(&self, len: usize) -> bool {
        self.count < MAX_MESSAGES && self.len() + 2 + len <= self.max_len
    }

    /// Appends a message; false (and nothing written) when it does not fit.
    pub fn push(&mut self, message: &Message) -> bool {
        let len = message.encoded_len();
        if !self.room_for(len) {
            return false;
        }
        self.out.extend_from_slice(&(len as u16).to_be_bytes());
        message.encode(self.out);
        self.count += 1;
        true
    }

    /// [`PacketBuilder::push`] for trades, without the enum dispatch.
    #[inline]
    pub fn push_trade(&mut self, trade: &Trade) -> bool {
        if !self.room_for(Trade::LEN) {
            return false;
        }
        self.out
            .extend_from_slice(&(Trade::LEN as u16).to_be_bytes());
        trade.encode(self.out);
        self.count += 1;
        true
    }

    /// Whether another trade would still fit.
    pub fn has_room_for_trade(&self) -> bool {
        self.room_for(Trade::LEN)
    }

    pub fn count(&self) -> u16 {
        self.count
    }

    /// Bytes written so far, header included.
    pub fn len(&self) -> usize {
        self.out.len() - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Patches the message count into the header; returns it.
    pub fn finish(self) -> u16 {
        let count = self.count.to_be_bytes();
        let at = self.start + 18;
        if let Some(slot) = self.out.get_mut(at..at + 2) {
            slot.copy_from_slice(&count);
        }
        self.count
    }
}

/// Appends a heartbeat announcing `next_seq`.
pub fn encode_heartbeat(out: &mut Vec<u8>, session: Session, next_seq: u64) {
    PacketHeader {
        session,
        seq: next_seq,
        count: HEARTBEAT,
    }
    .encode(out);
}

/// Appends an end-of-session packet; `next_seq` is one past the last message sent.
pub fn encode_end_of_session(out: &mut Vec<u8>, session: Session, next_seq: u64) {
    PacketHeader {
        session,
        seq: next_seq,
        count: END_OF_SESSION,
    }
    .encode(out);
}

/// Appends a retransmission reply saying `count` messages from `first_seq` are gone.
pub fn encode_unavailable(out: &mut Vec<u8>, session: Session, first_seq: u64, count: u64) {
    PacketHeader {
        session,
        seq: first_seq,
        count: UNAVAILABLE,
    }
    .encode(out);
    out.extend_from_slice(&count.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Price, Quantity, Side, Symbol};

    fn trade(id: u64) -> Trade {
        Trade {
            symbol: Symbol::new("EURUSD").unwrap(),
            price: Price(108_000_000 + id as i64),
            quantity: Quantity(100_000_000),
            side: Side::Buy,
            trade_id: id,
            send_ts_ns: 1,
        }
    }

    #[test]
    fn builder_fills_to_mtu_and_parses_back() {
        let mut buf = Vec::new();
        let session = Session::from_name("S1");
        let mut b = PacketBuilder::new(&mut buf, session, 1000, 1472);
        let mut n = 0;
        while b.push_trade(&trade(n)) {
            n += 1;
        }
        assert_eq!(n as usize, (1472 - HEADER_LEN) / (2 + Trade::LEN));
        assert_eq!(b.finish() as u64, n);
        assert!(buf.len() <= 1472);
        let p = FeedPacket::parse(&buf).unwrap();
        assert_eq!(p.kind, PacketKind::Data);
        assert_eq!(p.header.seq, 1000);
        assert_eq!(p.next_seq(), 1000 + n);
        let seqs: Vec<u64> = p
            .messages()
            .map(|(s, m)| {
                assert!(m.is_ok());
                s
            })
            .collect();
        assert_eq!(seqs, (1000..1000 + n).collect::<Vec<_>>());
    }

    #[test]
    fn control_packets_parse() {
        let s = Session::from_name("S1");
        let mut buf = Vec::new();
        encode_heartbeat(&mut buf, s, 42);
        let p = FeedPacket::parse(&buf).unwrap();
        assert_eq!(
            (p.kind, p.header.seq, p.next_seq()),
            (PacketKind::Heartbeat, 42, 42)
        );

        buf.clear();
        encode_end_of_session(&mut buf, s, 99);
        assert_eq!(
            FeedPacket::parse(&buf).unwrap().kind,
            PacketKind::EndOfSession
        );

        buf.clear();
        encode_unavailable(&mut buf, s, 5, 10);
        let p = FeedPacket::parse(&buf).unwrap();
        assert_eq!(p.kind, PacketKind::Unavailable { count: 10 });
        assert_eq!(p.header.seq, 5);
    }

    #[test]
    fn malformed_packets_are_errors() {
        let s = Session::from_name("S1");
        let mut buf = Vec::new();
        let mut b = PacketBuilder::new(&mut buf, s, 1, 1472);
        b.push_trade(&trade(1));
        b.push_trade(&trade(2));
        b.finish();
        // Declared count larger than what follows.
        let mut wrong = buf.clone();
        wrong[19] = 3;
        assert!(matches!(
            FeedPacket::parse(&wrong),
            Err(WireError::CountMismatch { .. })
        ));
        // Cut in the middle of a message.
        assert!(matches!(
            FeedPacket::parse(&buf[..buf.len() - 5]),
            Err(WireError::Truncated { .. })
        ));
        // Short header.
        assert!(FeedPacket::parse(&buf[..10]).is_err());
        // Heartbeat with a body.
        let mut hb = Vec::new();
        encode_heartbeat(&mut hb, s, 1);
        hb.push(0);
        assert_eq!(
            FeedPacket::parse(&hb).unwrap_err(),
            WireError::TrailingBytes(1)
        );
    }
}
