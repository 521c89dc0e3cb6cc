//! The messages packets carry: trades on the feed; orders from the trader and
//! acknowledgements and fills from the exchange on the order channel.
//!
//! Each message starts with a one-byte type and has a fixed size, big-endian fields.
//! An order carries the sequence number of the tick that triggered it so tick-to-trade
//! can be matched on the wire, and every message carries the sender's timestamp.

use serde::{Deserialize, Serialize};

use crate::types::{Price, Quantity, Side, Symbol};
use crate::{Result, WireError};

/// A trade printed by the exchange: the feed's only payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Trade {
    pub symbol: Symbol,
    pub price: Price,
    pub quantity: Quantity,
    /// Aggressor side.
    pub side: Side,
    pub trade_id: u64,
    /// Exchange clock when the packet carrying this trade was handed to the socket.
    pub send_ts_ns: u64,
}

/// An immediate-or-cancel limit order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    pub client_order_id: u64,
    pub symbol: Symbol,
    pub side: Side,
    pub limit_price: Price,
    pub quantity: Quantity,
    /// Feed sequence number of the tick that made the strategy send this order.
    pub trigger_seq: u64,
    /// Trader clock when the order was handed to the socket.
    pub send_ts_ns: u64,
}

/// What became of an order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckStatus {
    /// Accepted and (fully) filled; a [`Fill`] follows.
    Accepted,
    /// Accepted, but the limit did not cross the market: nothing filled (IOC).
    Expired,
    /// Refused (unknown symbol, zero quantity).
    Rejected,
}

impl AckStatus {
    fn to_wire(self) -> u8 {
        match self {
            AckStatus::Accepted => b'A',
            AckStatus::Expired => b'E',
            AckStatus::Rejected => b'R',
        }
    }
    fn from_wire(b: u8) -> Result<Self> {
        match b {
            b'A' => Ok(AckStatus::Accepted),
            b'E' => Ok(AckStatus::Expired),
            b'R' => Ok(AckStatus::Rejected),
            other => Err(WireError::BadAckStatus(other)),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ack {
    pub client_order_id: u64,
    pub exchange_order_id: u64,
    pub status: AckStatus,
    /// Exchange clock when the order was received.
    pub exchange_ts_ns: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fill {
    pub client_order_id: u64,
    pub exchange_order_id: u64,
    pub symbol: Symbol,
    pub side: Side,
    pub price: Price,
    pub quantity: Quantity,
    /// Exchange clock when the fill happened.
    pub exchange_ts_ns: u64,
}

/// Any message of the format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message {
    Trade(Trade),
    Order(Order),
    Ack(Ack),
    Fill(Fill),
}

impl Trade {
    pub const TYPE: u8 = b'T';
    pub const LEN: usize = 42;
}
impl Order {
    pub const TYPE: u8 = b'O';
    pub const LEN: usize = 50;
}
impl Ack {
    pub const TYPE: u8 = b'A';
    pub const LEN: usize = 26;
}
impl Fill {
    pub const TYPE: u8 = b'F';
    pub const LEN: usize = 50;
}

impl Message {
    /// Encoded size in bytes, without the block length prefix.
    pub fn encoded_len(&self) -> usize {
        match self {
            Message::Trade(_) => Trade::LEN,
            Message::Order(_) => Order::LEN,
            Message::Ack(_) => Ack::LEN,
            Message::Fill(_) => Fill::LEN,
        }
    }

    /// Appends the encoded message (no length prefix) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Message::Trade(t) => t.encode(out),
            Message::Order(o) => {
                out.push(Order::TYPE);
                out.extend_from_slice(&o.client_order_id.to_be_bytes());
                out.extend_from_slice(&o.symbol.to_wire());
                out.push(o.side.to_wire());
                out.extend_from_slice(&o.limit_price.0.to_be_bytes());
                out.extend_from_slice(&o.quantity.0.to_be_bytes());
                out.extend_from_slice(&o.trigger_seq.to_be_bytes());
                out.extend_from_slice(&o.send_ts_ns.to_be_bytes());
            }
            Message::Ack(a) => {
                out.push(Ack::TYPE);
                out.extend_from_slice(&a.client_order_id.to_be_bytes());
                out.extend_from_slice(&a.exchange_order_id.to_be_bytes());
                out.push(a.status.to_wire());
                out.extend_from_slice(&a.exchange_ts_ns.to_be_bytes());
            }
            Message::Fill(f) => {
                out.push(Fill::TYPE);
                out.extend_from_slice(&f.client_order_id.to_be_bytes());
                out.extend_from_slice(&f.exchange_order_id.to_be_bytes());
                out.extend_from_slice(&f.symbol.to_wire());
                out.push(f.side.to_wire());
                out.extend_from_slice(&f.price.0.to_be_bytes());
                out.extend_from_slice(&f.quantity.0.to_be_bytes());
                out.extend_from_slice(&f.exchange_ts_ns.to_be_bytes());
            }
        }
    }

    /// Decodes one message; `bytes` must be exactly the message (the block length
    /// prefix already removed).
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes, "message");
        let kind = r.u8()?;
        let expected = match kind {
            Trade::TYPE => Trade::LEN,
            Order::TYPE => Order::LEN,
            Ack::TYPE => Ack::LEN,
            Fill::TYPE => Fill::LEN,
            other => return Err(WireError::UnknownMessageType(other)),
        };
        if bytes.len() != expected {
            return Err(WireError::BadMessageLength {
                kind: kind as char,
                expected,
                got: bytes.len(),
            });
        }
        Ok(match kind {
            Trade::TYPE => Message::Trade(Trade {
                symbol: Symbol::from_wire(r.array()?)?,
                price: Price(r.i64()?),
                quantity: Quantity(r.u64()?),
                side: Side::from_wire(r.u8()?)?,
                trade_id: r.u64()?,
                send_ts_ns: r.u64()?,
            }),
            Order::TYPE => Message::Order(Order {
                client_order_id: r.u64()?,
                symbol: Symbol::from_wire(r.array()?)?,
                side: Side::from_wire(r.u8()?)?,
                limit_price: Price(r.i64()?),
                quantity: Quantity(r.u64()?),
                trigger_seq: r.u64()?,
                send_ts_ns: r.u64()?,
            }),
            Ack::TYPE => Message::Ack(Ack {
                client_order_id: r.u64()?,
                exchange_order_id: r.u64()?,
                status: AckStatus::from_wire(r.u8()?)?,
                exchange_ts_ns: r.u64()?,
            }),
            _ => Message::Fill(Fill {
                client_order_id: r.u64()?,
                exchange_order_id: r.u64()?,
                symbol: Symbol::from_wire(r.array()?)?,
                side: Side::from_wire(r.u8()?)?,
                price: Price(r.i64()?),
                quantity: Quantity(r.u64()?),
                exchange_ts_ns: r.u64()?,
            }),
        })
    }
}

impl Trade {
    /// Hot-path encoder: the feed publisher calls this millions of times a second.
    #[inline]
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut raw = [0u8; Trade::LEN];
        raw[0] = Trade::TYPE;
        raw[1..9].copy_from_slice(&self.symbol.to_wire());
        raw[9..17].copy_from_slice(&self.price.0.to_be_bytes());
        raw[17..25].copy_from_slice(&self.quantity.0.to_be_bytes());
        raw[25] = self.side.to_wire();
        raw[26..34].copy_from_slice(&self.trade_id.to_be_bytes());
        raw[34..42].copy_from_slice(&self.send_ts_ns.to_be_bytes());
        out.extend_from_slice(&raw);
    }
}

/// Bounds-checked big-endian reader: every read returns `Truncated` instead of
/// panicking, which is what lets decoders take arbitrary bytes.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, what }
    }

    pub(crate) fn remaining(&self) -> &'a [u8] {
        self.buf
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(WireError::Truncated {
                what: self.what,
                need: n,
                have: self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    pub(crate) fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    pub(crate) fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_be_bytes(self.array()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trade() -> Trade {
        Trade {
            symbol: Symbol::new("BTCUSD").unwrap(),
            price: Price(6_012_345_000_000),
            quantity: Quantity(25_000_000),
            side: Side::Sell,
            trade_id: 77,
            send_ts_ns: 1_700_000_000_123_456_789,
        }
    }

    #[test]
    fn trade_layout_is_fixed() {
        let mut out = Vec::new();
        Message::Trade(trade()).encode(&mut out);
        assert_eq!(out.len(), Trade::LEN);
        assert_eq!(out[0], b'T');
        assert_eq!(&out[1..9], b"BTCUSD  ");
        assert_eq!(out[25], b'S');
        assert_eq!(Message::decode(&out).unwrap(), Message::Trade(trade()));
    }

    #[test]
    fn decode_names_what_is_wrong() {
        assert_eq!(
            Message::decode(&[b'Z', 0, 0]),
            Err(WireError::UnknownMessageType(b'Z'))
        );
        assert!(matches!(
            Message::decode(&[b'T', 0, 0]),
            Err(WireError::BadMessageLength { kind: 'T', .. })
        ));
        let mut out = Vec::new();
        Message::Trade(trade()).encode(&mut out);
        out[25] = b'X';
        assert_eq!(Message::decode(&out), Err(WireError::BadSide(b'X')));
        assert!(Message::decode(&[]).is_err());
    }
}
