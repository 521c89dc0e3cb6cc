//! The feed handler's core, shared by every transport: decodes packets, classifies
//! each trade through the gap tracker (exactly once), records one-way latency, runs
//! the strategy, and hands trades to the store and the recent-trades view. It owns
//! all its state, so the transport loop calls it without locks; shared views are
//! refreshed by `flush`, a few times a second.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::local::LocalHistogram;
use ticklab_crd::Instrument;
use ticklab_wire::{FeedPacket, Message, PacketKind, RetransmitRequest, Session, Symbol, Trade};
use tokio::sync::mpsc;

use crate::gap_tracker::{GapCounts, GapTracker, RecoveryPolicy, Verdict, Via};
use crate::latency::{LatencyMerger, LatencyPair};
use crate::metrics::TraderMetrics;
use crate::state::{RECENT_TRADES, TraderShared};
use crate::store::{ReceivedTrade, TradeBatch, TradeStore};
use crate::strategy::{MomentumStrategy, OrderIntent};

/// How often views and metrics are refreshed from the feed path.
const FLUSH_EVERY: Duration = Duration::from_millis(50);

pub struct FeedProcessor {
    gaps: GapTracker,
    session: Option<Session>,
    session_name: Arc<str>,
    policy: RecoveryPolicy,
    strategy: MomentumStrategy,
    orders: mpsc::Sender<OrderIntent>,
    orders_skipped: u64,
    store: Option<TradeStore>,
    batch: Vec<ReceivedTrade>,
    recent: VecDeque<ReceivedTrade>,
    /// Receive stamps of live trades since the last flush, for `GET /stamps`.
    stamps: Vec<(u64, u64)>,
    last_prices: Vec<(Symbol, i64)>,
    /// One-way latency since the last flush; `user` only with kernel timestamps.
    latency: Box<LatencyPair>,
    merger: LatencyMerger,
    user_rx_ns: Option<u64>,
    prom_latency: LocalHistogram,
    malformed: u64,
    timestamp_source: &'static str,
    flushed: GapCounts,
    flushed_malformed: u64,
    /// Totals of earlier sessions (the exchange restarted).
    carry: GapCounts,
    carry_sent: u64,
    retransmit_requests: u64,
    last_flush: Instant,
    shared: Arc<TraderShared>,
    metrics: TraderMetrics,
}

impl FeedProcessor {
    pub fn new(
        symbols: &[Instrument],
        strategy: MomentumStrategy,
        orders: mpsc::Sender<OrderIntent>,
        store: Option<TradeStore>,
        shared: Arc<TraderShared>,
        metrics: TraderMetrics,
    ) -> std::io::Result<Self> {
        let into = shared.clone();
        let merger = LatencyMerger::spawn(move |pair| {
            let mut total = into.latency.lock();
            total.feed.add(&pair.feed);
            total.user.add(&pair.user);
        })?;
        let last_prices = symbols
            .iter()
            .filter_map(|i| Symbol::new(i.symbol()).ok().map(|s| (s, 0)))
            .collect();
        Ok(Self {
            gaps: GapTracker::new(1),
            session: None,
            session_name: Arc::from(""),
            policy: RecoveryPolicy::default(),
            strategy,
            orders,
            orders_skipped: 0,
            store,
            batch: Vec::new(),
            recent: VecDeque::with_capacity(RECENT_TRADES),
            stamps: Vec::new(),
            last_prices,
            latency: Box::default(),
            merger,
            user_rx_ns: None,
            prom_latency: metrics.feed_latency.local(),
            malformed: 0,
            timestamp_source: "user",
            flushed: GapCounts::default(),
            flushed_malformed: 0,
            carry: GapCounts::default(),
            carry_sent: 0,
            retransmit_requests: 0,
            last_flush: Instant::now(),
            shared,
            metrics,
        })
    }

    /// Counts a feed subscription the UDP loop sent (or failed to send).
    pub fn subscription_sent(&self, ok: bool) {
        self.metrics
            .subscriptions
            .with_label_values(&[if ok { "sent" } else { "failed" }])
            .inc();
    }

    pub fn set_timestamp_source(&mut self, source: &'static str) {
        self.timestamp_source = source;
    }

    pub fn set_recovery_policy(&mut self, policy: RecoveryPolicy) {
        self.policy = policy;
    }

    pub fn is_settled(&self) -> bool {
        self.gaps.is_settled()
    }

    /// The exchange has announced the end of the session.
    pub fn session_ended(&self) -> bool {
        self.gaps.end_of_session().is_some()
    }

    /// Handles one packet received at `rx_ns` (realtime clock, ns, taken in user
    /// space).
    pub fn on_packet(&mut self, bytes: &[u8], rx_ns: u64, via: Via) {
        self.on_packet_at(bytes, None, rx_ns, via);
    }

    /// Handles one packet with the kernel's receive timestamp, when the socket gave
    /// one, and the time this thread got it. Latency is measured from the kernel's
    /// stamp; the user-space one is kept as a second distribution, which is what a
    /// user-space tool such as sockperf measures (it includes the wake-up).
    pub fn on_packet_at(
        &mut self,
        bytes: &[u8],
        kernel_rx_ns: Option<u64>,
        user_rx_ns: u64,
        via: Via,
    ) {
        self.user_rx_ns = kernel_rx_ns.map(|_| user_rx_ns);
        let rx_ns = kernel_rx_ns.unwrap_or(user_rx_ns);
        let packet = match FeedPacket::parse(bytes) {
            Ok(p) => p,
            Err(e) => {
                self.malformed += 1;
                tracing::debug!(error = %e, len = bytes.len(), "malformed feed packet");
                return;
            }
        };
        if !self.adopt_session(packet.header.session, via) {
            return;
        }
        let seq = packet.header.seq;
        match packet.kind {
            PacketKind::Heartbeat => self.gaps.announce_next(seq),
            PacketKind::EndOfSession => self.gaps.end(seq),
            PacketKind::Unavailable { count } => {
                if via == Via::Retransmission {
                    self.gaps.mark_unavailable(seq, count);
                }
            }
            PacketKind::Data => {
                let count = u64::from(packet.message_count());
                let in_order =
                    via == Via::Live && self.gaps.accept_in_order_packet(seq, count).is_some();
                for (msg_seq, message) in packet.messages() {
                    let trade = match message {
                        Ok(Message::Trade(t)) => t,
                        Ok(_) | Err(_) => {
                            // A non-trade message has no place on the feed.
                            self.malformed += 1;
                            continue;
                        }
                    };
                    let verdict = if in_order {
                        Verdict::New
                    } else {
                        self.gaps.accept(msg_seq, via)
                    };
                    if verdict != Verdict::Duplicate {
                        self.deliver(msg_seq, &trade, rx_ns, via);
                    }
                }
                self.hand_off_batch();
            }
        }
    }

    /// First session seen is adopted; a live packet of another session means the
    /// exchange restarted: the old session is closed (what is missing is lost) and
    /// tracking starts over. Retransmissions of another session are ignored.
    fn adopt_session(&mut self, session: Session, via: Via) -> bool {
        match self.session {
            Some(current) if current == session => true,
            Some(_) if via == Via::Retransmission => false,
            Some(old) => {
                tracing::warn!(old = %old, new = %session, "feed session changed; starting over");
                self.gaps.finish();
                self.publish_counts();
                let carried = self.gaps.counts();
                self.carry_sent += self.gaps.known_sent();
                self.gaps = GapTracker::new(1);
                self.flushed = GapCounts::default();
                // Keep the totals of the old session in the published counts.
                self.carry = add_counts(self.carry, carried);
                self.session = Some(session);
                self.session_name = Arc::from(session.as_str());
                true
            }
            None => {
                self.session = Some(session);
                self.session_name = Arc::from(session.as_str());
                true
            }
        }
    }

    #[inline]
    fn deliver(&mut self, seq: u64, trade: &Trade, rx_ns: u64, via: Via) {
        let recovered = via == Via::Retransmission;
        if !recovered {
            let latency = rx_ns.saturating_sub(trade.send_ts_ns);
            self.latency.feed.record_ns(latency);
            self.prom_latency.observe(latency as f64 / 1e9);
            if let Some(user) = self.user_rx_ns {
                self.latency
                    .user
                    .record_ns(user.saturating_sub(trade.send_ts_ns));
            }
        }
        if let Some(slot) = self
            .last_prices
            .iter_mut()
            .find(|(s, _)| *s == trade.symbol)
        {
            slot.1 = trade.price.0;
        }
        if let Some(intent) = self.strategy.on_trade(seq, trade, rx_ns)
            && self.orders.try_send(intent).is_err()
        {
            self.orders_skipped += 1;
        }
        let record = ReceivedTrade {
            seq,
            trade: *trade,
            received_at_ns: rx_ns,
            recovered,
        };
        if self.recent.len() == RECENT_TRADES {
            self.recent.pop_front();
        }
        if self.store.is_some() {
            self.batch.push(record);
        }
        self.recent.push_back(record);
        if !recovered {
            self.stamps.push((seq, rx_ns));
        }
    }

    fn hand_off_batch(&mut self) {
        if let Some(store) = &self.store
            && !self.batch.is_empty()
        {
            store.offer(TradeBatch {
                session: self.session_name.clone(),
                trades: std::mem::take(&mut self.batch),
            });
        }
    }

    /// Retransmission requests to send now.
    pub fn due_requests(&mut self, now_ns: u64) -> Vec<RetransmitRequest> {
        let Some(session) = self.session else {
            return Vec::new();
        };
        let requests: Vec<RetransmitRequest> = self
            .gaps
            .due_requests(now_ns, &self.policy)
            .into_iter()
            .map(|(start, end)| RetransmitRequest {
                session,
                seq: start,
                // Chunks are at most policy.chunk (<= u16::MAX) long.
                count: u16::try_from(end - start).unwrap_or(u16::MAX),
            })
            .collect();
        self.retransmit_requests += requests.len() as u64;
        requests
    }

    /// Gives up on whatever is still missing (the run is over) and publishes
    /// everything, latency included, before returning.
    pub fn finish(&mut self) {
        self.gaps.finish();
        self.flush();
        self.merger.finish(&mut self.latency);
    }

    /// Refreshes shared views and metrics when `FLUSH_EVERY` has passed.
    #[inline]
    pub fn maybe_flush(&mut self) {
        if self.last_flush.elapsed() >= FLUSH_EVERY {
            self.flush();
        }
    }

    pub fn flush(&mut self) {
        self.last_flush = Instant::now();
        self.prom_latency.flush();
        self.publish_counts();
        let settled = self.gaps.is_settled();
        {
            let mut feed = self.shared.feed.lock();
            feed.session = self.session.map(|s| s.as_str());
            feed.counts = add_counts(self.carry, self.gaps.counts());
            feed.malformed = self.malformed;
            feed.sent = self.carry_sent + self.gaps.known_sent();
            feed.missing = self.gaps.missing_count();

            feed.recent.clone_from(&self.recent);
            let session = feed.session.clone();
            feed.stamps.publish(session, self.stamps.drain(..));
            feed.last_prices = self
                .last_prices
                .iter()
                .filter(|(_, p)| *p > 0)
                .map(|(s, p)| (*s, ticklab_wire::Price(*p).as_f64()))
                .collect();
            feed.timestamp_source = self.timestamp_source;
            feed.end_of_session = self.gaps.end_of_session().is_some();
        }
        self.merger.swap(&mut self.latency);
        if self.orders_skipped > 0 {
            self.metrics
                .orders
                .with_label_values(&["skipped"])
                .inc_by(self.orders_skipped);
            self.shared.orders.lock().skipped += self.orders_skipped;
            self.orders_skipped = 0;
        }
        self.shared.settled.send_if_modified(|s| {
            let changed = *s != settled;
            *s = settled;
            changed
        });
    }

    /// Adds the counter deltas since the last flush to the Prometheus counters.
    fn publish_counts(&mut self) {
        let now = self.gaps.counts();
        let before = self.flushed;
        let m = &self.metrics;
        m.received
            .inc_by(now.received.saturating_sub(before.received));
        m.recovered
            .inc_by(now.recovered.saturating_sub(before.recovered));
        m.late.inc_by(now.late.saturating_sub(before.late));
        m.lost.inc_by(now.lost.saturating_sub(before.lost));
        m.gaps.inc_by(now.gaps.saturating_sub(before.gaps));
        m.duplicates
            .inc_by(now.duplicates.saturating_sub(before.duplicates));
        m.malformed.inc_by(self.malformed - self.flushed_malformed);
        m.retransmit_requests.inc_by(self.retransmit_requests);
        self.retransmit_requests = 0;
        m.sent
            .set(i64::try_from(self.carry_sent + self.gaps.known_sent()).unwrap_or(i64::MAX));
        self.flushed = now;
        self.flushed_malformed = self.malformed;
    }
}

fn add_counts(a: GapCounts, b: GapCounts) -> GapCounts {
    GapCounts {
        received: a.received + b.received,
        recovered: a.recovered + b.recovered,
        late: a.late + b.late,
        lost: a.lost + b.lost,
        duplicates: a.duplicates + b.duplicates,
        gaps: a.gaps + b.gaps,
    }
}
