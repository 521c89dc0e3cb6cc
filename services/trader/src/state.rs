//! What the trader's parts share: the feed handler publishes a snapshot here at each
//! flush, the order client keeps its ledger here, and `/stats`, the CLI report and
//! the operator read results from here.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use ticklab_crd::{ExperimentResults, SloSpec};
use ticklab_wire::Symbol;
use tokio::sync::watch;

use crate::gap_tracker::GapCounts;
use crate::latency::LatencyPair;
use crate::orders::OrderLedger;
use crate::store::{ReceivedTrade, StoreCounts};

/// Most recent trades kept in memory for `GET /trades` without MongoDB.
pub const RECENT_TRADES: usize = 1000;
/// Receive stamps kept for `GET /stamps`: a second of a 250 k trades/s feed, for a
/// reader that polls five times a second.
pub const STAMPS_KEPT: usize = 1 << 18;

/// The receive stamp of every live trade (recovered ones are not: their stamp is the
/// recovery), in the order they were delivered, behind a cursor so that a reader (the
/// capture setting each beside the wire's time for the same trade) gets each once.
#[derive(Default)]
pub struct ReceiveStamps {
    /// The feed session the stamps belong to.
    pub session: Option<String>,
    /// (sequence number, receive ns), oldest first.
    entries: VecDeque<(u64, u64)>,
    /// Cursor of `entries[0]`: stamps published before it, all sessions together.
    first: u64,
}

impl ReceiveStamps {
    /// Appends the stamps of the last flush; the oldest go past [`STAMPS_KEPT`]. A new
    /// session starts afresh (its sequence numbers are not the old one's), the cursor
    /// still moving on.
    pub fn publish(&mut self, session: Option<String>, new: impl IntoIterator<Item = (u64, u64)>) {
        if session != self.session {
            self.first += self.entries.len() as u64;
            self.entries.clear();
            self.session = session;
        }
        for entry in new {
            if self.entries.len() == STAMPS_KEPT {
                self.entries.pop_front();
                self.first += 1;
            }
            self.entries.push_back(entry);
        }
    }

    /// The cursor after the newest stamp.
    pub fn next(&self) -> u64 {
        self.first + self.entries.len() as u64
    }

    /// Up to `limit` stamps from cursor `after` on, and the cursor of the first one.
    /// Stamps gone before they were read start the page later (the difference is what
    /// the reader missed); a cursor past the end (from a trader that restarted) starts
    /// again at the oldest.
    pub fn page(&self, after: u64, limit: usize) -> (u64, Vec<(u64, u64)>) {
        let start = if after > self.next() {
            self.first
        } else {
            after.max(self.first)
        };
        // start - first <= entries.len(), a usize.
        let skip = usize::try_from(start - self.first).unwrap_or(usize::MAX);
        (
            start,
            self.entries
                .iter()
                .skip(skip)
                .take(limit)
                .copied()
                .collect(),
        )
    }
}

/// The feed handler's published view, as of its last flush.
#[derive(Default)]
pub struct FeedSnapshot {
    pub session: Option<String>,
    pub counts: GapCounts,
    pub malformed: u64,
    pub sent: u64,
    pub missing: u64,
    pub recent: VecDeque<ReceivedTrade>,
    pub stamps: ReceiveStamps,
    pub last_prices: Vec<(Symbol, f64)>,
    /// "kernel" or "user".
    pub timestamp_source: &'static str,
    pub end_of_session: bool,
}

pub struct TraderShared {
    pub experiment: String,
    pub slo: Option<SloSpec>,
    pub feed: Mutex<FeedSnapshot>,
    /// Cumulative one-way latency, under its own lock: merged in by a background
    /// thread, so the feed thread never waits for it.
    pub latency: Mutex<LatencyPair>,
    pub orders: Arc<Mutex<OrderLedger>>,
    pub store: Option<Arc<StoreCounts>>,
    /// True once the session ended and nothing is missing any more.
    pub settled: watch::Sender<bool>,
}

impl TraderShared {
    pub fn new(experiment: &str, slo: Option<SloSpec>) -> Self {
        Self {
            experiment: experiment.to_string(),
            slo,
            feed: Mutex::default(),
            latency: Mutex::default(),
            orders: Arc::default(),
            store: None,
            settled: watch::Sender::new(false),
        }
    }

    /// Everything measured so far, in the shape every report uses.
    pub fn results(&self) -> ExperimentResults {
        let (feed_latency, feed_latency_user) = {
            let l = self.latency.lock();
            (l.feed.summary(), l.user.summary())
        };
        let feed = self.feed.lock();
        let orders = self.orders.lock();
        let prices = feed.last_prices.clone();
        let pnl = orders.pnl_usd(|name| {
            prices
                .iter()
                .find(|(s, _)| s.as_str() == name)
                .map(|(_, v)| *v)
        });
        let mut results = ExperimentResults {
            sent: feed.sent,
            // Late (reordered) trades did arrive on the feed.
            received: feed.counts.received + feed.counts.late,
            gaps: feed.counts.gaps,
            recovered: feed.counts.recovered,
            lost: feed.counts.lost,
            duplicates: feed.counts.duplicates,
            malformed: feed.malformed,
            feed_latency,
            feed_latency_user,
            tick_to_trade: orders.tick_to_trade.summary(),
            order_round_trip: orders.round_trip.summary(),
            timestamp_source: feed.timestamp_source.to_string(),
            orders: orders.sent,
            fills: orders.filled,
            orders_skipped: orders.skipped,
            pnl: (pnl * 100.0).round() / 100.0,
            persisted: self
                .store
                .as_ref()
                .map(|c| c.persisted.load(std::sync::atomic::Ordering::Relaxed)),
            not_persisted: self
                .store
                .as_ref()
                .map(|c| c.dropped.load(std::sync::atomic::Ordering::Relaxed)),
            slo_verdict: None,
            replay: None,
        };
        if let Some(slo) = &self.slo {
            results.slo_verdict = Some(results.judge(slo));
        }
        results
    }

    /// Trades still missing (not yet recovered nor given up).
    pub fn missing(&self) -> u64 {
        self.feed.lock().missing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_paged_once_each_and_what_was_overwritten_shows_as_a_later_start() {
        let mut s = ReceiveStamps::default();
        s.publish(Some("a".into()), (1..=5).map(|i| (i, i * 10)));
        let (start, page) = s.page(0, 3);
        assert_eq!((start, page), (0, vec![(1, 10), (2, 20), (3, 30)]));
        let (start, page) = s.page(3, 100);
        assert_eq!((start, page.len()), (3, 2));
        assert!(s.page(5, 100).1.is_empty());
        // Past the bound the oldest go; a reader behind starts at the oldest kept.
        s.publish(
            Some("a".into()),
            (6..6 + STAMPS_KEPT as u64).map(|i| (i, i)),
        );
        let (start, page) = s.page(5, 1);
        assert_eq!(start, s.next() - STAMPS_KEPT as u64);
        assert_eq!(page[0].0, start + 1);
        // A new session starts afresh; old cursors still work.
        let next = s.next();
        s.publish(Some("b".into()), [(1, 1)]);
        assert_eq!(s.page(next, 10), (next, vec![(1, 1)]));
        // A cursor from before a trader restart (past the end) starts again.
        assert_eq!(s.page(next + 1_000, 10).0, next);
    }
}
