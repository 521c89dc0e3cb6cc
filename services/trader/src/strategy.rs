//! The trader's strategy: momentum. When a symbol's price has moved at least the
//! threshold from where the trader last acted, it sends a marketable order in the
//! direction of the move. Runs on the feed path, so it is a few comparisons per tick;
//! a token bucket caps the order rate.

use ticklab_crd::{Instrument, StrategySpec};
use ticklab_wire::{Price, Quantity, Side, Symbol, Trade};

/// What the order client should send, and what caused it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OrderIntent {
    pub symbol: Symbol,
    pub side: Side,
    pub limit_price: Price,
    pub quantity: Quantity,
    /// Sequence number of the tick that triggered the order.
    pub trigger_seq: u64,
    /// Receive timestamp of that tick: tick-to-trade starts here.
    pub tick_rx_ns: u64,
}

/// How far through the market an order's limit goes (10 bps) so it fills against the
/// last price even if the market moves a little on the way.
const AGGRESSION_DIVISOR: i64 = 1000;

pub struct MomentumStrategy {
    enabled: bool,
    threshold: f64,
    /// Per symbol: where the trader last acted, and its order size.
    anchors: Vec<(Symbol, Option<i64>, Quantity)>,
    bucket: TokenBucket,
}

impl MomentumStrategy {
    pub fn new(spec: &StrategySpec, symbols: &[Instrument]) -> Self {
        let anchors = symbols
            .iter()
            .filter_map(|i| {
                let p = i.profile();
                Symbol::new(p.symbol)
                    .ok()
                    .map(|s| (s, None, Quantity::from_f64(p.typical_quantity)))
            })
            .collect();
        Self {
            enabled: spec.enabled,
            threshold: spec.threshold_bps / 10_000.0,
            anchors,
            bucket: TokenBucket::new(spec.max_orders_per_second),
        }
    }

    /// Looks at one tick; returns an order when the move is large enough and the rate
    /// limit allows.
    #[inline]
    pub fn on_trade(&mut self, seq: u64, trade: &Trade, rx_ns: u64) -> Option<OrderIntent> {
        if !self.enabled {
            return None;
        }
        let slot = self.anchors.iter_mut().find(|a| a.0 == trade.symbol)?;
        let price = trade.price.0;
        let Some(anchor) = slot.1 else {
            slot.1 = Some(price);
            return None;
        };
        if anchor <= 0 {
            slot.1 = Some(price);
            return None;
        }
        let moved = (price - anchor) as f64 / anchor as f64;
        if moved.abs() < self.threshold || !self.bucket.take(rx_ns) {
            return None;
        }
        slot.1 = Some(price);
        let side = if moved > 0.0 { Side::Buy } else { Side::Sell };
        let through = (price / AGGRESSION_DIVISOR).max(1);
        let limit = match side {
            Side::Buy => price.saturating_add(through),
            Side::Sell => price.saturating_sub(through).max(1),
        };
        Some(OrderIntent {
            symbol: trade.symbol,
            side,
            limit_price: Price(limit),
            quantity: slot.2,
            trigger_seq: seq,
            tick_rx_ns: rx_ns,
        })
    }
}

/// Orders per second, with a burst of at most one second's worth.
struct TokenBucket {
    per_second: f64,
    tokens: f64,
    last_ns: u64,
}

impl TokenBucket {
    fn new(per_second: u32) -> Self {
        let per_second = f64::from(per_second.max(1));
        Self {
            per_second,
            tokens: per_second,
            last_ns: 0,
        }
    }

    fn take(&mut self, now_ns: u64) -> bool {
        if self.last_ns != 0 && now_ns > self.last_ns {
            let elapsed = (now_ns - self.last_ns) as f64 / 1e9;
            self.tokens = (self.tokens + elapsed * self.per_second).min(self.per_second);
        }
        self.last_ns = self.last_ns.max(now_ns);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trade(price: i64) -> Trade {
        Trade {
            symbol: Symbol::new("EURUSD").unwrap(),
            price: Price(price),
            quantity: Quantity(1),
            side: Side::Buy,
            trade_id: 1,
            send_ts_ns: 0,
        }
    }

    fn strategy(max_orders: u32) -> MomentumStrategy {
        let spec = StrategySpec {
            enabled: true,
            threshold_bps: 10.0,
            max_orders_per_second: max_orders,
        };
        MomentumStrategy::new(&spec, &[Instrument::EurUsd])
    }

    #[test]
    fn orders_in_the_direction_of_a_large_move() {
        let mut s = strategy(100);
        assert_eq!(s.on_trade(1, &trade(100_000_000), 1), None);
        // 5 bps: below the 10 bps threshold.
        assert_eq!(s.on_trade(2, &trade(100_050_000), 2), None);
        let o = s.on_trade(3, &trade(100_100_000), 3).unwrap();
        assert_eq!((o.side, o.trigger_seq, o.tick_rx_ns), (Side::Buy, 3, 3));
        assert!(o.limit_price.0 > 100_100_000);
        assert_eq!(o.quantity, Quantity::from_f64(1_000_000.0));
        // The anchor moved with the order: the same price does not trigger again.
        assert_eq!(s.on_trade(4, &trade(100_100_000), 4), None);
        let o = s.on_trade(5, &trade(99_900_000), 5).unwrap();
        assert_eq!(o.side, Side::Sell);
        assert!(o.limit_price.0 < 99_900_000);
    }

    #[test]
    fn rate_limit_and_disable_and_unknown_symbols() {
        let mut s = strategy(1);
        s.on_trade(1, &trade(100_000_000), 1_000);
        assert!(s.on_trade(2, &trade(110_000_000), 2_000).is_some());
        assert!(
            s.on_trade(3, &trade(100_000_000), 3_000).is_none(),
            "bucket empty"
        );
        assert!(
            s.on_trade(4, &trade(100_000_000), 2_000_000_000).is_some(),
            "refilled"
        );

        let mut off = strategy(100);
        off.enabled = false;
        off.on_trade(1, &trade(100_000_000), 1);
        assert!(off.on_trade(2, &trade(200_000_000), 2).is_none());

        let mut s = strategy(100);
        let mut other = trade(1);
        other.symbol = Symbol::new("BTCUSD").unwrap();
        assert!(s.on_trade(1, &other, 1).is_none());
    }
}
