//! The seeded trade generator. Two independent streams from one seed: *what* trades
//! (per-symbol random walks rounded to tick size, log-normal sizes rounded to lots,
//! random aggressor side) and *when* (a Poisson process at the configured rate,
//! multiplied inside microburst windows). The same seed gives the same trades
//! however fast the publisher runs.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp1, StandardNormal};
use ticklab_crd::{Instrument, MicroburstSpec};
use ticklab_wire::{Price, Quantity, Side, Symbol, Trade, types::SCALE};

struct SymbolState {
    symbol: Symbol,
    /// Current price in ticks.
    price_ticks: i64,
    /// Tick size in units of 1e-8.
    tick_units: i64,
    step_volatility: f64,
    typical_quantity: f64,
    lot_units: u64,
}

/// What the next trade is.
pub struct TradeGenerator {
    rng: SmallRng,
    symbols: Vec<SymbolState>,
    next_trade_id: u64,
}

impl TradeGenerator {
    pub fn new(seed: u64, instruments: &[Instrument]) -> Self {
        let symbols = instruments
            .iter()
            .filter_map(|i| {
                let p = i.profile();
                let symbol = Symbol::new(p.symbol).ok()?;
                let tick_units = ((p.tick_size * SCALE as f64).round() as i64).max(1);
                Some(SymbolState {
                    symbol,
                    price_ticks: ((p.start_price * SCALE as f64) / tick_units as f64).round()
                        as i64,
                    tick_units,
                    step_volatility: p.step_volatility,
                    typical_quantity: p.typical_quantity,
                    lot_units: ((p.lot_size * SCALE as f64).round() as u64).max(1),
                })
            })
            .collect();
        Self {
            rng: SmallRng::seed_from_u64(seed),
            symbols,
            next_trade_id: 1,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }

    pub fn symbols(&self) -> Vec<Symbol> {
        self.symbols.iter().map(|s| s.symbol).collect()
    }

    /// The next trade and the index of its symbol; `send_ts_ns` is left 0 for the
    /// publisher to stamp.
    #[inline]
    pub fn next_trade(&mut self) -> (usize, Trade) {
        let n = self.symbols.len().max(1);
        let index = self.rng.random_range(0..n);
        let z: f64 = StandardNormal.sample(&mut self.rng);
        let size_z: f64 = StandardNormal.sample(&mut self.rng);
        let buy = self.rng.random_bool(0.5);
        let trade_id = self.next_trade_id;
        self.next_trade_id += 1;
        // `start` refuses an experiment without symbols, so `index < n == len`.
        let s = &mut self.symbols[index];
        // Relative move of one trade, in ticks; a walk that would reach zero stays
        // at one tick, prices are never zero or negative.
        let step_ticks = (z * s.step_volatility * s.price_ticks as f64).round() as i64;
        s.price_ticks = (s.price_ticks + step_ticks).max(1);
        let quantity = s.typical_quantity * (0.6 * size_z).exp();
        let lots = ((quantity * SCALE as f64) / s.lot_units as f64)
            .round()
            .max(1.0) as u64;
        let trade = Trade {
            symbol: s.symbol,
            price: Price(s.price_ticks.saturating_mul(s.tick_units)),
            quantity: Quantity(lots.saturating_mul(s.lot_units)),
            side: if buy { Side::Buy } else { Side::Sell },
            trade_id,
            send_ts_ns: 0,
        };
        (index, trade)
    }
}

/// When the next trade is due: a Poisson process whose rate is multiplied inside
/// microburst windows. Exact for piecewise-constant rates: at a window boundary the
/// wait is drawn again at the new rate (the exponential is memoryless).
pub struct ArrivalClock {
    rng: SmallRng,
    rate_per_ns: f64,
    burst: Option<(f64, f64, f64)>,
    t_ns: f64,
}

impl ArrivalClock {
    pub fn new(seed: u64, rate_per_second: u64, bursts: Option<&MicroburstSpec>) -> Self {
        Self {
            // A different stream from the trade generator's, derived from the seed.
            rng: SmallRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15),
            rate_per_ns: rate_per_second.max(1) as f64 / 1e9,
            burst: bursts.map(|b| {
                (
                    f64::from(b.every_millis) * 1e6,
                    f64::from(b.duration_millis) * 1e6,
                    f64::from(b.multiplier.max(1)),
                )
            }),
            t_ns: 0.0,
        }
    }

    /// Nanoseconds from the start of the feed to the next arrival.
    #[inline]
    pub fn next_arrival_ns(&mut self) -> u64 {
        loop {
            let (rate, window_end) = match self.burst {
                None => (self.rate_per_ns, f64::INFINITY),
                Some((every, duration, multiplier)) => {
                    let phase = self.t_ns % every;
                    let period_start = self.t_ns - phase;
                    if phase < duration {
                        (self.rate_per_ns * multiplier, period_start + duration)
                    } else {
                        (self.rate_per_ns, period_start + every)
                    }
                }
            };
            let wait: f64 = Exp1.sample(&mut self.rng);
            let next = self.t_ns + wait / rate;
            if next < window_end {
                self.t_ns = next;
                return next as u64;
            }
            self.t_ns = window_end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Instrument; 3] = [Instrument::EurUsd, Instrument::BtcUsd, Instrument::UsdJpy];

    #[test]
    fn same_seed_same_trades_different_seed_different_trades() {
        let a: Vec<Trade> = {
            let mut g = TradeGenerator::new(7, &ALL);
            (0..1000).map(|_| g.next_trade().1).collect()
        };
        let b: Vec<Trade> = {
            let mut g = TradeGenerator::new(7, &ALL);
            (0..1000).map(|_| g.next_trade().1).collect()
        };
        let c: Vec<Trade> = {
            let mut g = TradeGenerator::new(8, &ALL);
            (0..1000).map(|_| g.next_trade().1).collect()
        };
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn prices_stay_positive_on_tick_and_sizes_on_lot() {
        let mut g = TradeGenerator::new(1, &ALL);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200_000 {
            let (i, t) = g.next_trade();
            let p = ALL[i].profile();
            let tick = (p.tick_size * SCALE as f64).round() as i64;
            let lot = (p.lot_size * SCALE as f64).round() as u64;
            assert!(t.price.0 > 0);
            assert_eq!(t.price.0 % tick, 0, "{t:?}");
            assert!(t.quantity.0 >= lot && t.quantity.0 % lot == 0, "{t:?}");
            seen.insert(t.symbol);
            // Still in a plausible range after many steps.
            let ratio = t.price.as_f64() / p.start_price;
            assert!(ratio > 0.2 && ratio < 5.0, "{t:?}");
        }
        assert_eq!(seen.len(), 3);
    }

    #[test]
    fn poisson_arrivals_average_the_rate() {
        let mut c = ArrivalClock::new(3, 100_000, None);
        let mut n = 0u64;
        while c.next_arrival_ns() < 1_000_000_000 {
            n += 1;
        }
        // 100k expected, Poisson sd ~316: 1% is over 3 sd.
        assert!((99_000..=101_000).contains(&n), "{n}");
    }

    #[test]
    fn microbursts_raise_the_rate_inside_windows() {
        let burst = MicroburstSpec {
            every_millis: 100,
            duration_millis: 10,
            multiplier: 10,
        };
        let mut c = ArrivalClock::new(3, 10_000, Some(&burst));
        let (mut inside, mut outside) = (0u64, 0u64);
        loop {
            let t = c.next_arrival_ns();
            if t >= 10_000_000_000 {
                break;
            }
            if t % 100_000_000 < 10_000_000 {
                inside += 1;
            } else {
                outside += 1;
            }
        }
        // Per second: 10 ms x 100k/s x 10 windows = 10k inside, 90 ms x 10k/s x 10 = 9k outside.
        assert!((95_000..=105_000).contains(&inside), "{inside}");
        assert!((85_500..=94_500).contains(&outside), "{outside}");
    }

    #[test]
    fn same_seed_same_arrivals() {
        let mut a = ArrivalClock::new(5, 1000, None);
        let mut b = ArrivalClock::new(5, 1000, None);
        for _ in 0..100 {
            assert_eq!(a.next_arrival_ns(), b.next_arrival_ns());
        }
    }
}
