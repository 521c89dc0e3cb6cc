//! Latency as the wire shows it, from decoded messages and the time each was seen at
//! the mirrored interface: one-way feed latency (capture time of a trade against
//! the exchange's send stamp), tick-to-trade (an order leaving against the tick it
//! names arriving), and, for the same message, the wire against what the trader
//! reported (its send stamp on the order; its receive stamp on a trade, given by
//! the caller from the trader's own records).

use std::collections::{BTreeMap, HashMap};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use ticklab_crd::LatencySummary;
use ticklab_crd::mirror_session::DifferenceSummary;
use ticklab_wire::{Ack, Order, Session, Trade};

/// Where a frame's time comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Timing {
    /// Stamped where the traffic is: by the kernel at the mirrored pod's interface
    /// (ticklab's mirror), or by the tool that captured a file of plain frames.
    Interface,
    /// Stamped on arrival at the capture (plain VXLAN, as AWS sends it): includes
    /// the mirror path's own delay.
    Arrival,
}

/// Ticks remembered for matching orders to them: an order naming a tick older than
/// this many sequence numbers is counted unmatched.
pub const TICK_MEMORY: usize = 1 << 20;
/// Orders remembered for matching their acks.
const ORDERS_IN_FLIGHT: usize = 1 << 16;

/// A per-message record, for callers that want them (a JSON-lines output, tests
/// comparing the wire with the trader's own figures).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Observation {
    #[serde(rename_all = "camelCase")]
    Trade {
        session: String,
        seq: u64,
        trade_id: u64,
        sent_at_ns: u64,
        wire_at_ns: u64,
        recovered: bool,
    },
    #[serde(rename_all = "camelCase")]
    Order {
        client_order_id: u64,
        trigger_seq: u64,
        sent_at_ns: u64,
        wire_at_ns: u64,
        /// When the tick it names was seen, if it was.
        tick_wire_at_ns: Option<u64>,
    },
    #[serde(rename_all = "camelCase")]
    Ack {
        client_order_id: u64,
        wire_at_ns: u64,
        /// Since its order was seen, if it was.
        round_trip_ns: Option<u64>,
    },
}

/// Latency distributions in nanoseconds, 1 ns to 100 s, 3 significant digits.
#[derive(Clone, Debug)]
pub struct Distribution(Histogram<u64>);

const MAX_NS: u64 = 100_000_000_000;

impl Default for Distribution {
    fn default() -> Self {
        // Constant bounds hdrhistogram accepts (low >= 1, high >= 2 * low, sigfig
        // <= 5): this cannot fail.
        #[allow(clippy::expect_used)]
        let h = Histogram::new_with_bounds(1, MAX_NS, 3).expect("constant bounds are valid");
        Self(h)
    }
}

impl Distribution {
    pub fn record(&mut self, ns: u64) {
        let _ = self.0.record(ns.clamp(1, MAX_NS));
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    pub fn add(&mut self, other: &Distribution) {
        let _ = self.0.add(&other.0);
    }

    /// The percentiles every ticklab report shows; None without samples.
    pub fn summary(&self) -> Option<LatencySummary> {
        let h = &self.0;
        if h.is_empty() {
            return None;
        }
        let us = |ns: u64| ns as f64 / 1_000.0;
        Some(LatencySummary {
            count: h.len(),
            min_micros: us(h.min()),
            p50_micros: us(h.value_at_quantile(0.5)),
            p90_micros: us(h.value_at_quantile(0.9)),
            p99_micros: us(h.value_at_quantile(0.99)),
            p999_micros: us(h.value_at_quantile(0.999)),
            max_micros: us(h.max()),
            mean_micros: h.mean() / 1_000.0,
        })
    }

    /// (upper bound in seconds, cumulative count) per bucket, for exporting the
    /// distribution as a Prometheus histogram with fixed bounds.
    pub fn cumulative(&self, bounds_seconds: &[f64]) -> Vec<u64> {
        bounds_seconds
            .iter()
            .map(|b| {
                let ns = (b * 1e9) as u64;
                self.0
                    .iter_recorded()
                    .filter(|v| v.value_iterated_to() <= ns)
                    .map(|v| v.count_at_value())
                    .sum()
            })
            .collect()
    }

    pub fn sum_seconds(&self) -> f64 {
        self.0.mean() * self.0.len() as f64 / 1e9
    }
}

/// Signed differences (wire minus app) can be either sign: kept as two
/// distributions of magnitudes and summarised as percentiles of the signed value.
#[derive(Clone, Debug, Default)]
pub struct SignedDistribution {
    positive: Distribution,
    negative: Distribution,
    zero: u64,
}

impl SignedDistribution {
    pub fn record(&mut self, ns: i64) {
        match ns.signum() {
            1 => self.positive.record(ns.unsigned_abs()),
            -1 => self.negative.record(ns.unsigned_abs()),
            _ => self.zero += 1,
        }
    }

    pub fn count(&self) -> u64 {
        self.positive.count() + self.negative.count() + self.zero
    }

    /// Quantile `q` of the signed values, in ns.
    pub fn quantile_ns(&self, q: f64) -> f64 {
        let n = self.count();
        if n == 0 {
            return 0.0;
        }
        let rank = (q * n as f64).ceil().max(1.0) as u64;
        let neg = self.negative.count();
        if rank <= neg {
            // The rank-th smallest is the (neg - rank + 1)-th largest magnitude.
            let q = 1.0 - (rank - 1) as f64 / neg as f64;
            -(self.negative.0.value_at_quantile(q) as f64)
        } else if rank <= neg + self.zero {
            0.0
        } else {
            let q = (rank - neg - self.zero) as f64 / self.positive.count() as f64;
            self.positive.0.value_at_quantile(q) as f64
        }
    }

    pub fn summary(&self) -> Option<DifferenceSummary> {
        if self.count() == 0 {
            return None;
        }
        let us = |ns: f64| ns / 1_000.0;
        let (pos, neg) = (&self.positive.0, &self.negative.0);
        let sum = pos.mean() * pos.len() as f64 - neg.mean() * neg.len() as f64;
        Some(DifferenceSummary {
            count: self.count(),
            min_micros: us(self.quantile_ns(0.0)),
            p50_micros: us(self.quantile_ns(0.5)),
            p99_micros: us(self.quantile_ns(0.99)),
            max_micros: us(self.quantile_ns(1.0)),
            mean_micros: us(sum / self.count() as f64),
        })
    }
}

/// Message counts and latency from the wire.
#[derive(Clone, Debug, Default)]
pub struct WireLatency {
    /// One-way feed latency of live trades.
    pub feed: Distribution,
    /// Order leaving minus the tick it names arriving.
    pub tick_to_trade: Distribution,
    /// Ack seen minus its order seen.
    pub order_round_trip: Distribution,
    /// Order seen on the wire minus the trader's send stamp in it.
    pub order_wire_minus_app: SignedDistribution,
    /// Trader's receive stamp minus the trade seen on the wire (given by callers).
    pub trade_app_minus_wire: SignedDistribution,
    pub counts: MessageCounts,
    session: Option<Session>,
    /// seq % TICK_MEMORY -> (seq, wire time) of the current session's trades.
    ticks: Vec<(u64, u64)>,
    orders: HashMap<u64, u64>,
    /// Orders whose tick was not decoded yet, by the tick's sequence number.
    waiting: HashMap<u64, Vec<(Order, u64)>>,
    waiting_orders: usize,
    observations: Option<Vec<Observation>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageCounts {
    /// Trades seen for the first time on the live feed.
    pub trades: u64,
    /// Trades first seen in a retransmission reply.
    pub trades_recovered: u64,
    /// Trades seen again (retransmitted copies, duplicated mirror packets).
    pub trades_duplicate: u64,
    pub orders: u64,
    /// Orders whose tick was seen: tick-to-trade measured.
    pub orders_matched: u64,
    pub acks: u64,
    pub fills: u64,
    /// Feed sessions seen (a new one: the exchange restarted).
    pub sessions: u64,
    /// Samples where the wire time preceded the sender's stamp (clocks disagree).
    pub negative_latency: u64,
}

impl WireLatency {
    /// Keeps a record of every message for [`WireLatency::take_observations`].
    pub fn observe(&mut self) {
        self.observations.get_or_insert_with(Vec::new);
    }

    pub fn take_observations(&mut self) -> Vec<Observation> {
        self.observations
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// A trade seen at `wire_ns`; `recovered` when it came in a retransmission.
    pub fn trade(
        &mut self,
        wire_ns: u64,
        session: Session,
        seq: u64,
        trade: &Trade,
        recovered: bool,
    ) {
        if self.session != Some(session) {
            // Orders waiting for ticks of the session before are not this one's;
            // orders decoded before the first trade wait for it.
            if self.session.is_some() {
                self.give_up_waiting();
            }
            self.session = Some(session);
            self.counts.sessions += 1;
            self.ticks.clear();
        }
        if self.ticks.is_empty() {
            self.ticks = vec![(u64::MAX, 0); TICK_MEMORY];
        }
        let slot = &mut self.ticks[(seq % TICK_MEMORY as u64) as usize];
        if slot.0 == seq {
            self.counts.trades_duplicate += 1;
            return;
        }
        *slot = (seq, wire_ns);
        if recovered {
            // Its delay includes detection and recovery: not the feed's latency.
            self.counts.trades_recovered += 1;
        } else {
            self.counts.trades += 1;
            match wire_ns.checked_sub(trade.send_ts_ns) {
                Some(ns) => self.feed.record(ns),
                None => self.counts.negative_latency += 1,
            }
        }
        if let Some(o) = &mut self.observations {
            o.push(Observation::Trade {
                session: session.as_str(),
                seq,
                trade_id: trade.trade_id,
                sent_at_ns: trade.send_ts_ns,
                wire_at_ns: wire_ns,
                recovered,
            });
        }
        if let Some(orders) = self.waiting.remove(&seq) {
            self.waiting_orders -= orders.len();
            for (order, order_ns) in orders {
                self.matched(&order, order_ns, Some(wire_ns));
            }
        }
    }

    /// The feed session trades are being matched in (the latest seen).
    pub fn session(&self) -> Option<Session> {
        self.session
    }

    /// When the tick `seq` of the current session was seen.
    pub fn tick_seen(&self, seq: u64) -> Option<u64> {
        let (s, ts) = *self.ticks.get((seq % TICK_MEMORY as u64) as usize)?;
        (s == seq).then_some(ts)
    }

    /// An order seen leaving at `wire_ns` (its first byte).
    /// An order seen leaving at `wire_ns` (its first byte). Its tick may not be
    /// decoded yet (the feed's TLS records can wait for their keys longer than the
    /// order channel's): it then waits for the tick, and is matched when it comes.
    pub fn order(&mut self, wire_ns: u64, order: &Order) {
        self.counts.orders += 1;
        self.order_wire_minus_app
            .record(wire_ns as i64 - order.send_ts_ns as i64);
        if self.orders.len() >= ORDERS_IN_FLIGHT {
            // Acks lost to the capture: forget the oldest half rather than grow.
            let mut ids: Vec<u64> = self.orders.keys().copied().collect();
            ids.sort_unstable();
            for id in &ids[..ids.len() / 2] {
                self.orders.remove(id);
            }
        }
        self.orders.insert(order.client_order_id, wire_ns);
        match self.tick_seen(order.trigger_seq) {
            Some(tick) => self.matched(order, wire_ns, Some(tick)),
            None => {
                if self.waiting_orders >= ORDERS_IN_FLIGHT {
                    self.give_up_waiting();
                }
                self.waiting_orders += 1;
                self.waiting
                    .entry(order.trigger_seq)
                    .or_default()
                    .push((*order, wire_ns));
            }
        }
    }

    /// An order's tick found (or given up on: None).
    fn matched(&mut self, order: &Order, wire_ns: u64, tick: Option<u64>) {
        if let Some(tick) = tick {
            self.counts.orders_matched += 1;
            self.tick_to_trade.record(wire_ns.saturating_sub(tick));
        }
        if let Some(o) = &mut self.observations {
            o.push(Observation::Order {
                client_order_id: order.client_order_id,
                trigger_seq: order.trigger_seq,
                sent_at_ns: order.send_ts_ns,
                wire_at_ns: wire_ns,
                tick_wire_at_ns: tick,
            });
        }
    }

    /// Orders still waiting for their tick are reported unmatched (end of the
    /// capture, a new feed session, or too many waiting).
    pub fn give_up_waiting(&mut self) {
        let waiting = std::mem::take(&mut self.waiting);
        self.waiting_orders = 0;
        for (order, wire_ns) in waiting.into_values().flatten() {
            self.matched(&order, wire_ns, None);
        }
    }

    pub fn ack(&mut self, wire_ns: u64, ack: &Ack) {
        self.counts.acks += 1;
        let round_trip = self
            .orders
            .remove(&ack.client_order_id)
            .map(|sent| wire_ns.saturating_sub(sent));
        if let Some(ns) = round_trip {
            self.order_round_trip.record(ns);
        }
        if let Some(o) = &mut self.observations {
            o.push(Observation::Ack {
                client_order_id: ack.client_order_id,
                wire_at_ns: wire_ns,
                round_trip_ns: round_trip,
            });
        }
    }

    pub fn fill(&mut self) {
        self.counts.fills += 1;
    }
}

/// Decode errors by kind (stable snake_case labels).
pub type ErrorCounts = BTreeMap<String, u64>;

#[cfg(test)]
mod tests {
    use super::*;
    use ticklab_wire::{Price, Quantity, Side, Symbol};

    /// HdrHistogram keeps 3 significant digits: equal within 0.1 %.
    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= b.abs() * 1e-3 + 1e-9
    }

    fn trade(sent: u64) -> Trade {
        Trade {
            symbol: Symbol::new("ETHUSD").unwrap(),
            price: Price(1),
            quantity: Quantity(1),
            side: Side::Sell,
            trade_id: 1,
            send_ts_ns: sent,
        }
    }

    fn order(id: u64, trigger: u64, sent: u64) -> Order {
        Order {
            client_order_id: id,
            symbol: Symbol::new("ETHUSD").unwrap(),
            side: Side::Buy,
            limit_price: Price(1),
            quantity: Quantity(1),
            trigger_seq: trigger,
            send_ts_ns: sent,
        }
    }

    #[test]
    fn feed_tick_to_trade_and_duplicates() {
        let mut w = WireLatency::default();
        w.observe();
        let s = Session::from_name("a");
        w.trade(1_010_000, s, 7, &trade(1_000_000), false);
        w.trade(1_020_000, s, 7, &trade(1_000_000), true);
        w.trade(2_000_000, s, 8, &trade(1_000_000), true);
        assert_eq!(w.counts.trades, 1);
        assert_eq!(w.counts.trades_duplicate, 1);
        assert_eq!(w.counts.trades_recovered, 1);
        assert!(close(w.feed.summary().unwrap().p50_micros, 10.0));

        w.order(1_015_000, &order(1, 7, 1_014_000));
        w.order(1_015_000, &order(2, 99, 1_016_000));
        assert_eq!(w.counts.orders_matched, 1);
        assert!(close(w.tick_to_trade.summary().unwrap().max_micros, 5.0));
        let d = w.order_wire_minus_app.summary().unwrap();
        assert!(close(d.min_micros, -1.0) && close(d.max_micros, 1.0));
        w.ack(
            1_035_000,
            &Ack {
                client_order_id: 1,
                exchange_order_id: 1,
                status: ticklab_wire::AckStatus::Accepted,
                exchange_ts_ns: 0,
            },
        );
        assert!(close(
            w.order_round_trip.summary().unwrap().p50_micros,
            20.0
        ));
        // Order 2 waits for tick 99 (not decoded yet): no record of it so far.
        assert_eq!(
            w.take_observations().len(),
            4,
            "the duplicate is not recorded"
        );
        // Tick 99 decoded later (its records waited for keys): order 2 is matched
        // with the tick's wire time, whatever the decoding order.
        w.trade(1_012_000, s, 99, &trade(1_000_000), false);
        assert_eq!(w.counts.orders_matched, 2);
        assert!(close(w.tick_to_trade.summary().unwrap().max_micros, 5.0));
        let o = w.take_observations();
        assert!(
            matches!(
                o.last(),
                Some(Observation::Order {
                    client_order_id: 2,
                    tick_wire_at_ns: Some(1_012_000),
                    ..
                })
            ),
            "{o:?}"
        );

        // An order whose tick never comes is reported unmatched when given up on...
        w.order(1_050_000, &order(3, 500, 1_049_000));
        // ...as a new session starts over: its seq 7 is not the old one's.
        w.trade(
            3_000_000,
            Session::from_name("b"),
            7,
            &trade(2_999_000),
            false,
        );
        assert_eq!(w.counts.sessions, 2);
        assert_eq!(w.counts.trades, 3);
        assert_eq!(w.counts.orders_matched, 2);
        assert!(w.take_observations().iter().any(|o| matches!(
            o,
            Observation::Order {
                client_order_id: 3,
                tick_wire_at_ns: None,
                ..
            }
        )));
    }

    #[test]
    fn signed_quantiles() {
        let mut d = SignedDistribution::default();
        for v in [-3000, -1000, 0, 2000, 4000] {
            d.record(v);
        }
        let s = d.summary().unwrap();
        assert!(close(s.min_micros, -3.0) && s.p50_micros == 0.0 && close(s.max_micros, 4.0));
        assert!((s.mean_micros - 0.4).abs() < 1e-9);
    }
}
