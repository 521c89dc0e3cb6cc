//! The trader's Prometheus metrics. Counters are fed in batches from the feed path
//! (deltas at each flush), histograms through thread-local buffers, so the hot path
//! never touches a shared atomic per trade.

use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};
use ticklab_admin::latency_buckets_seconds;
use ticklab_crd::SloSpec;

#[derive(Clone)]
pub struct TraderMetrics {
    pub feed_latency: Histogram,
    pub tick_to_trade: Histogram,
    pub order_round_trip: Histogram,
    pub received: IntCounter,
    pub recovered: IntCounter,
    pub late: IntCounter,
    pub lost: IntCounter,
    pub gaps: IntCounter,
    pub duplicates: IntCounter,
    pub malformed: IntCounter,
    pub retransmit_requests: IntCounter,
    pub sent: IntGauge,
    pub orders: IntCounterVec,
    pub persisted: IntCounter,
    pub persist_dropped: IntCounter,
    pub persist_errors: IntCounter,
    pub persist_queue: IntGauge,
    pub subscriptions: IntCounterVec,
    pub feed_receive_buffer: IntGauge,
    pub tls_handshake_failures: IntCounter,
    pub keylog_lines: IntCounter,
    pub keylog_dropped: IntCounter,
    pub keylog_write_errors: IntCounter,
}

impl TraderMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let histogram = |name: &str, help: &str| -> prometheus::Result<Histogram> {
            let h = Histogram::with_opts(
                HistogramOpts::new(name, help).buckets(latency_buckets_seconds()),
            )?;
            registry.register(Box::new(h.clone()))?;
            Ok(h)
        };
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGauge> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let orders = IntCounterVec::new(
            Opts::new(
                "ticklab_trader_orders_total",
                "Orders by outcome: sent, filled, expired, rejected, failed (transport error), skipped (order queue full)",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(orders.clone()))?;
        let subscriptions = IntCounterVec::new(
            Opts::new(
                "ticklab_trader_feed_subscriptions_total",
                "UDP feed subscriptions (keep-alives) sent to the exchange, by outcome: sent, failed (the exchange is not reachable yet)",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(subscriptions.clone()))?;
        Ok(Self {
            feed_latency: histogram(
                "ticklab_trader_feed_latency_seconds",
                "One-way feed latency: exchange send timestamp to trader receive timestamp",
            )?,
            tick_to_trade: histogram(
                "ticklab_trader_tick_to_trade_seconds",
                "Receive timestamp of the triggering tick to the order leaving the trader",
            )?,
            order_round_trip: histogram(
                "ticklab_trader_order_round_trip_seconds",
                "Order sent to acknowledgement received",
            )?,
            received: counter(
                "ticklab_trader_trades_received_total",
                "Trades received on the feed",
            )?,
            recovered: counter(
                "ticklab_trader_trades_recovered_total",
                "Missing trades recovered through retransmission",
            )?,
            late: counter(
                "ticklab_trader_trades_late_total",
                "Missing trades that arrived late on the feed (reordering)",
            )?,
            lost: counter(
                "ticklab_trader_trades_lost_total",
                "Trades given up as lost (unrecoverable or still missing at the end)",
            )?,
            gaps: counter(
                "ticklab_trader_gaps_total",
                "Runs of missing sequence numbers detected",
            )?,
            duplicates: counter(
                "ticklab_trader_duplicates_total",
                "Copies of already delivered trades (dropped)",
            )?,
            malformed: counter(
                "ticklab_trader_malformed_total",
                "Packets or messages that failed to decode (dropped)",
            )?,
            retransmit_requests: counter(
                "ticklab_trader_retransmit_requests_total",
                "Retransmission requests sent",
            )?,
            sent: gauge(
                "ticklab_trader_exchange_sent",
                "Trades the exchange has sent, as known from sequence numbers",
            )?,
            orders,
            persisted: counter(
                "ticklab_trader_persisted_total",
                "Trades written to MongoDB",
            )?,
            persist_dropped: counter(
                "ticklab_trader_persist_dropped_total",
                "Trades not persisted because the write buffer was full",
            )?,
            persist_errors: counter(
                "ticklab_trader_persist_errors_total",
                "Failed MongoDB writes (retried)",
            )?,
            persist_queue: gauge(
                "ticklab_trader_persist_queue",
                "Trades waiting to be written to MongoDB",
            )?,
            subscriptions,
            feed_receive_buffer: gauge(
                "ticklab_trader_feed_receive_buffer_bytes",
                "Receive buffer the kernel granted the UDP feed socket (it caps requests at net.core.rmem_max)",
            )?,
            tls_handshake_failures: counter(
                "ticklab_trader_tls_handshake_failures_total",
                "TLS handshakes with the exchange that failed (certificate not trusted, name mismatch, version refused)",
            )?,
            keylog_lines: counter(
                "ticklab_trader_keylog_lines_total",
                "TLS key log lines written (NSS key log format; with spec.tls.keyLog)",
            )?,
            keylog_dropped: counter(
                "ticklab_trader_keylog_dropped_total",
                "Key log lines dropped from memory (GET /keylog) because the in-memory log was full",
            )?,
            keylog_write_errors: counter(
                "ticklab_trader_keylog_write_errors_total",
                "Key log lines that could not be written to the key log file",
            )?,
        })
    }
}

/// Exports the experiment's SLO bounds next to what is measured, so alerts and
/// dashboards judge each experiment by its own SLO. Set once and never changed, so
/// nothing keeps them; a bound the SLO does not set stays unregistered: an absent
/// series, not a fake zero.
pub fn register_slo(registry: &Registry, slo: Option<&SloSpec>) -> prometheus::Result<()> {
    let Some(slo) = slo else { return Ok(()) };
    let bounds = [
        (
            "ticklab_trader_slo_p99_seconds",
            "The experiment's SLO bound on p99 one-way feed latency (absent without one)",
            slo.p99_micros.map(|micros| micros / 1e6),
        ),
        (
            "ticklab_trader_slo_max_loss_ratio",
            "The experiment's SLO bound on lost / sent trades, 0-1 (absent without one)",
            slo.max_loss_percent.map(|percent| percent / 100.0),
        ),
    ];
    for (name, help, value) in bounds {
        if let Some(value) = value {
            let gauge = Gauge::new(name, help)?;
            gauge.set(value);
            registry.register(Box::new(gauge))?;
        }
    }
    Ok(())
}
