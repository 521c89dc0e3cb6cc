//! The JSON-lines recording format: one object per trade, for tools that want text
//! (jq, pandas, a database import) rather than packets. Prices and quantities are
//! the wire types' exact decimal strings, so nothing is rounded through a float.
//!
//! ```json
//! {"session":"quick","seq":42,"tradeId":7,"symbol":"EURUSD","price":"1.08345","quantity":"0.5","side":"buy","sendTsNs":1714566896789000123,"recvTsNs":1714566896789002456}
//! ```

use serde::{Deserialize, Serialize};
use ticklab_wire::packet::PacketBuilder;
use ticklab_wire::{Price, Quantity, Session, Side, Symbol, Trade};

/// One line of a `.jsonl` recording.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TradeLine {
    /// The MoldUDP64 session name, trailing padding removed.
    pub session: String,
    /// The trade's feed sequence number.
    pub seq: u64,
    pub trade_id: u64,
    pub symbol: Symbol,
    pub price: Price,
    pub quantity: Quantity,
    pub side: Side,
    /// Exchange clock when the packet was sent.
    pub send_ts_ns: u64,
    /// Recorder clock when the packet was received.
    pub recv_ts_ns: u64,
}

impl TradeLine {
    pub fn new(session: Session, seq: u64, trade: &Trade, recv_ts_ns: u64) -> Self {
        Self {
            session: session.as_str(),
            seq,
            trade_id: trade.trade_id,
            symbol: trade.symbol,
            price: trade.price,
            quantity: trade.quantity,
            side: trade.side,
            send_ts_ns: trade.send_ts_ns,
            recv_ts_ns,
        }
    }

    pub fn trade(&self) -> Trade {
        Trade {
            symbol: self.symbol,
            price: self.price,
            quantity: self.quantity,
            side: self.side,
            trade_id: self.trade_id,
            send_ts_ns: self.send_ts_ns,
        }
    }

    /// The data packet carrying just this trade, as replay sends it. The session
    /// name is space-padded back to its 10 wire bytes.
    pub fn to_packet(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        let mut builder =
            PacketBuilder::new(&mut out, Session::from_name(&self.session), self.seq, 1472);
        builder.push_trade(&self.trade());
        builder.finish();
        out
    }

    /// Parses one line (with or without its newline); `None` when it is not a
    /// trade line.
    pub fn parse(line: &[u8]) -> Option<Self> {
        serde_json::from_slice(line).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ticklab_wire::FeedPacket;
    use ticklab_wire::Message;

    #[test]
    fn line_round_trips_exactly() {
        let trade = Trade {
            symbol: Symbol::new("BTCUSD").unwrap(),
            price: Price(6_000_012_345_678),
            quantity: Quantity(1),
            side: Side::Sell,
            trade_id: 9,
            send_ts_ns: 100,
        };
        let line = TradeLine::new(Session::from_name("quick"), 42, &trade, 150);
        let text = serde_json::to_string(&line).unwrap();
        assert_eq!(
            text,
            r#"{"session":"quick","seq":42,"tradeId":9,"symbol":"BTCUSD","price":"60000.12345678","quantity":"0.00000001","side":"sell","sendTsNs":100,"recvTsNs":150}"#
        );
        let back = TradeLine::parse(text.as_bytes()).unwrap();
        assert_eq!(back, line);
        let packet = back.to_packet();
        let parsed = FeedPacket::parse(&packet).unwrap();
        assert_eq!(parsed.header.seq, 42);
        assert_eq!(parsed.header.session, Session::from_name("quick"));
        let messages: Vec<_> = parsed.messages().collect();
        assert_eq!(messages, vec![(42, Ok(Message::Trade(trade)))]);
        assert!(TradeLine::parse(b"{\"session\":").is_none());
    }
}
