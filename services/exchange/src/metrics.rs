//! The exchange's Prometheus metrics (prefix `ticklab_exchange_`). The publisher
//! updates them once per batch of packets, never per trade.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

#[derive(Clone)]
pub struct ExchangeMetrics {
    pub trades_published: IntCounter,
    pub packets_sent: IntCounter,
    pub packets_dropped: IntCounterVec,
    pub retransmit_requests: IntCounter,
    pub retransmitted_messages: IntCounter,
    pub unavailable_replies: IntCounter,
    pub malformed_requests: IntCounter,
    pub orders: IntCounterVec,
    pub subscribers: IntGauge,
    pub subscriptions: IntCounter,
    pub order_reaction: Histogram,
    pub taps: IntGauge,
    pub tap_packets: IntCounterVec,
    pub replay_lateness: Histogram,
    pub replay_packets: IntCounter,
    pub replay_loops: IntCounter,
    pub tls_handshakes: IntCounterVec,
    pub tls_handshake_failures: IntCounterVec,
}

impl ExchangeMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        use ticklab_admin::register as reg;
        let counter = |name: &str, help: &str| reg(registry, IntCounter::new(name, help)?);
        Ok(Self {
            trades_published: counter("ticklab_exchange_trades_published_total", "Trades published on the feed")?,
            packets_sent: counter("ticklab_exchange_packets_sent_total", "Feed packets sent (UDP datagrams or stream frames)")?,
            packets_dropped: reg(
                registry,
                IntCounterVec::new(
                    Opts::new("ticklab_exchange_packets_dropped_total", "Feed packets not delivered: fault (injected) or lagging_subscriber"),
                    &["reason"],
                )?,
            )?,
            retransmit_requests: counter("ticklab_exchange_retransmit_requests_total", "Retransmission requests served")?,
            retransmitted_messages: counter("ticklab_exchange_retransmitted_messages_total", "Messages sent again on request")?,
            unavailable_replies: counter(
                "ticklab_exchange_unavailable_replies_total",
                "Requests (partly) for messages no longer held",
            )?,
            malformed_requests: counter(
                "ticklab_exchange_malformed_requests_total",
                "Retransmission requests or order messages that failed to decode",
            )?,
            orders: reg(
                registry,
                IntCounterVec::new(
                    Opts::new("ticklab_exchange_orders_total", "Orders by outcome: accepted (filled), expired, rejected"),
                    &["status"],
                )?,
            )?,
            subscribers: reg(
                registry,
                IntGauge::new("ticklab_exchange_subscribers", "Connected TCP and WebSocket feed subscribers")?,
            )?,
            subscriptions: counter(
                "ticklab_exchange_subscriptions_total",
                "UDP feed subscriptions and keep-alives received from traders (the feed starts at the first)",
            )?,
            order_reaction: reg(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "ticklab_exchange_order_reaction_seconds",
                        "Order received minus send time of the tick that triggered it, as the exchange sees it",
                    )
                    .buckets(ticklab_admin::latency_buckets_seconds()),
                )?,
            )?,
            taps: reg(
                registry,
                IntGauge::new("ticklab_exchange_recording_taps", "Recorders receiving a copy of the feed")?,
            )?,
            tap_packets: reg(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "ticklab_exchange_tap_packets_total",
                        "Feed packet copies for recorders: sent, failed (recorder unreachable) or dropped by an injected fault",
                    ),
                    &["outcome"],
                )?,
            )?,
            replay_lateness: reg(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "ticklab_replay_lateness_seconds",
                        "How late each replayed packet left against its schedule (absolute deadlines from the first packet)",
                    )
                    .buckets(ticklab_admin::latency_buckets_seconds()),
                )?,
            )?,
            replay_packets: counter("ticklab_replay_packets_total", "Recorded packets replayed")?,
            replay_loops: counter("ticklab_replay_loops_total", "Completed passes over the recording")?,
            tls_handshakes: reg(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "ticklab_exchange_tls_handshakes_total",
                        "TLS handshakes completed, by channel: feed, orders (binary TCP), orders_http",
                    ),
                    &["channel"],
                )?,
            )?,
            tls_handshake_failures: reg(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "ticklab_exchange_tls_handshake_failures_total",
                        "TLS handshakes that failed or timed out (a plain-TCP client, a refused certificate), by channel",
                    ),
                    &["channel"],
                )?,
            )?,
        })
    }
}
