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

/// The feed handler's published view, as of its last flush.
#[derive(Default)]
pub struct FeedSnapshot {
    pub session: Option<String>,
    pub counts: GapCounts,
    pub malformed: u64,
    pub sent: u64,
    pub missing: u64,
    pub recent: VecDeque<ReceivedTrade>,
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
