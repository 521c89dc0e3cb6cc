//! The capture's Prometheus metrics (prefix `ticklab_capture_`): frames by timing,
//! decoded packets, errors by kind, messages by kind, and latency from the wire as
//! histograms with the same buckets as the trader's (so a panel can set the
//! wire's feed latency beside the trader's own). Counters follow the analyzer's
//! report at each publish; histograms get every sample as it is decoded.

use std::collections::BTreeMap;

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry,
};
use ticklab_capture::analyzer::WireReport;
use ticklab_capture::wire::Observation;

#[derive(Clone)]
pub struct CaptureMetrics {
    pub frames: IntCounterVec,
    pub decoded: IntCounter,
    pub truncated: IntCounter,
    pub other: IntCounter,
    pub errors: IntCounterVec,
    pub messages: IntCounterVec,
    pub kernel_drops: IntCounter,
    pub keylog_lines: Gauge,
    pub tls_records: IntCounter,
    pub last_frame: Gauge,
    pub feed_latency: Histogram,
    pub tick_to_trade: Histogram,
    pub round_trip: Histogram,
    pub app_wire_difference: GaugeVec,
    pub poll_failures: IntCounterVec,
    /// Trader receive stamps gone from its API before the capture read them.
    pub app_stamps_missed: IntCounter,
    /// Trader receive stamps whose trade the capture never saw on the wire.
    pub app_stamps_unmatched: IntCounter,
    /// The mirrors' own counts, as they report them, by pod.
    pub mirror_frames: IntCounterVec,
    pub mirror_kernel_drops: IntCounterVec,
    pub mirror_truncated: IntCounterVec,
    pub mirror_last_report: GaugeVec,
}

/// Counter values last published, to turn the analyzer's totals into increments.
#[derive(Default)]
pub struct Published {
    values: BTreeMap<String, u64>,
}

impl Published {
    fn delta(&mut self, key: &str, now: u64) -> u64 {
        let before = self.values.insert(key.to_string(), now).unwrap_or(0);
        now.saturating_sub(before)
    }
}

/// Error kinds shown at zero from the start, so an alert on their rate has a series.
pub const ERROR_KINDS: [&str; 6] = [
    "truncated_headers",
    "malformed_headers",
    "tcp_gap",
    "tls_decrypt",
    "tls_no_key",
    "vxlan_header",
];

impl CaptureMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        use ticklab_admin::register as reg;
        let counter = |name: &str, help: &str| reg(registry, IntCounter::new(name, help)?);
        let histogram = |name: &str, help: &str| {
            reg(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new(name, help)
                        .buckets(ticklab_admin::latency_buckets_seconds()),
                )?,
            )
        };
        let frames = reg(
            registry,
            IntCounterVec::new(
                Opts::new(
                    "ticklab_capture_frames_total",
                    "Mirrored frames received, by where their time comes from: interface (stamped at the pod by ticklab's mirror) or arrival (plain VXLAN, as AWS sends it)",
                ),
                &["timing"],
            )?,
        )?;
        let errors = reg(
            registry,
            IntCounterVec::new(
                Opts::new(
                    "ticklab_capture_decode_errors_total",
                    "Decode errors by kind (never fatal: the frame is decoded as far as it goes)",
                ),
                &["kind"],
            )?,
        )?;
        let messages = reg(
            registry,
            IntCounterVec::new(
                Opts::new(
                    "ticklab_capture_messages_total",
                    "Messages decoded from the wire, by kind: trade (live), trade_recovered, trade_duplicate, order, order_matched (its tick was seen), ack, fill",
                ),
                &["kind"],
            )?,
        )?;
        let poll_failures = reg(
            registry,
            IntCounterVec::new(
                Opts::new(
                    "ticklab_capture_trader_poll_failures_total",
                    "Failed polls of the trader's API, by what was asked: keylog, stamps",
                ),
                &["what"],
            )?,
        )?;
        for what in ["keylog", "stamps"] {
            poll_failures.with_label_values(&[what]);
        }
        for timing in ["interface", "arrival"] {
            frames.with_label_values(&[timing]);
        }
        for kind in ERROR_KINDS {
            errors.with_label_values(&[kind]);
        }
        let per_pod = |name: &str, help: &str, labels: &[&str]| {
            reg(registry, IntCounterVec::new(Opts::new(name, help), labels)?)
        };
        Ok(Self {
            mirror_frames: per_pod(
                "ticklab_mirror_frames_total",
                "Frames the mirror in each pod captured, by outcome (mirrored, filtered, own, duplicate, not_target, send_error), as the mirror reports them to its capture",
                &["mirror_pod", "outcome"],
            )?,
            mirror_kernel_drops: per_pod(
                "ticklab_mirror_kernel_drops_total",
                "Frames the kernel dropped before the mirror in each pod read them",
                &["mirror_pod"],
            )?,
            mirror_truncated: per_pod(
                "ticklab_mirror_truncated_frames_total",
                "Frames the mirror in each pod cut to the session's packet length",
                &["mirror_pod"],
            )?,
            mirror_last_report: reg(
                registry,
                GaugeVec::new(
                    Opts::new(
                        "ticklab_mirror_last_report_timestamp_seconds",
                        "When the mirror in each pod last reported (Unix seconds)",
                    ),
                    &["mirror_pod"],
                )?,
            )?,
            poll_failures,
            app_stamps_missed: reg(
                registry,
                IntCounter::new(
                    "ticklab_capture_app_stamps_missed_total",
                    "Trader receive stamps that left the trader's API before the capture read them: trades with no wire-against-app figure",
                )?,
            )?,
            app_stamps_unmatched: reg(
                registry,
                IntCounter::new(
                    "ticklab_capture_app_stamps_unmatched_total",
                    "Trader receive stamps whose trade the capture did not see on the wire within 10 s (the frame was not mirrored or not decoded)",
                )?,
            )?,
            frames,
            decoded: counter(
                "ticklab_capture_packets_decoded_total",
                "Frames that carried ticklab traffic (feed, orders, their handshakes)",
            )?,
            truncated: counter(
                "ticklab_capture_truncated_frames_total",
                "Frames the mirror cut short (decoded as far as they went)",
            )?,
            other: counter(
                "ticklab_capture_other_frames_total",
                "Frames of other traffic (ARP, DNS, MongoDB, probes)",
            )?,
            errors,
            messages,
            kernel_drops: counter(
                "ticklab_capture_kernel_drops_total",
                "Mirrored datagrams the kernel dropped before the capture read them",
            )?,
            keylog_lines: reg(
                registry,
                Gauge::new("ticklab_capture_keylog_lines", "TLS key log lines known")?,
            )?,
            tls_records: counter(
                "ticklab_capture_tls_records_decrypted_total",
                "TLS application data records decrypted",
            )?,
            last_frame: reg(
                registry,
                Gauge::new(
                    "ticklab_capture_last_frame_timestamp_seconds",
                    "Time of the last mirrored frame received (Unix seconds; a mirror that stopped shows as a value that no longer moves)",
                )?,
            )?,
            feed_latency: histogram(
                "ticklab_capture_feed_latency_seconds",
                "One-way feed latency from the wire: a live trade seen at the mirrored interface minus the exchange's send stamp",
            )?,
            tick_to_trade: histogram(
                "ticklab_capture_tick_to_trade_seconds",
                "Tick-to-trade from the wire: an order leaving minus the tick it names arriving",
            )?,
            round_trip: histogram(
                "ticklab_capture_order_round_trip_seconds",
                "Order round trip from the wire: its ack seen minus the order seen",
            )?,
            app_wire_difference: reg(
                registry,
                GaugeVec::new(
                    Opts::new(
                        "ticklab_capture_app_wire_difference_seconds",
                        "For the same message, how much later the later of the wire and the trader is: order, seen leaving minus the trader's send stamp; trade, the trader's receive stamp minus seen arriving (sampled from its GET /trades). By message and quantile",
                    ),
                    &["message", "quantile"],
                )?,
            )?,
        })
    }

    /// One decoded message: its samples go into the histograms.
    pub fn observe(&self, o: &Observation) {
        let s = |ns: u64| ns as f64 / 1e9;
        match o {
            Observation::Trade {
                sent_at_ns,
                wire_at_ns,
                recovered: false,
                ..
            } if wire_at_ns >= sent_at_ns => self.feed_latency.observe(s(wire_at_ns - sent_at_ns)),
            Observation::Order {
                wire_at_ns,
                tick_wire_at_ns: Some(tick),
                ..
            } => self
                .tick_to_trade
                .observe(s(wire_at_ns.saturating_sub(*tick))),
            Observation::Ack {
                round_trip_ns: Some(ns),
                ..
            } => self.round_trip.observe(s(*ns)),
            _ => {}
        }
    }

    /// A mirror's report: its counters follow the totals it sends (a restarted
    /// mirror starts again from zero: its totals are taken as new).
    pub fn mirror_reported(
        &self,
        stats: &ticklab_mirror::MirrorStats,
        last: &mut std::collections::HashMap<String, ticklab_mirror::MirrorReport>,
    ) {
        let before = last.get(&stats.pod).cloned().unwrap_or_default();
        let r = &stats.report;
        let restarted = r.captured < before.captured;
        let delta = |now: u64, then: u64| {
            if restarted {
                now
            } else {
                now.saturating_sub(then)
            }
        };
        let pod = stats.pod.as_str();
        for (outcome, now, then) in [
            ("mirrored", r.mirrored, before.mirrored),
            ("filtered", r.filtered, before.filtered),
            ("own", r.own, before.own),
            ("duplicate", r.duplicate, before.duplicate),
            ("not_target", r.not_target, before.not_target),
            ("send_error", r.send_errors, before.send_errors),
        ] {
            self.mirror_frames
                .with_label_values(&[pod, outcome])
                .inc_by(delta(now, then));
        }
        self.mirror_kernel_drops
            .with_label_values(&[pod])
            .inc_by(delta(r.kernel_drops, before.kernel_drops));
        self.mirror_truncated
            .with_label_values(&[pod])
            .inc_by(delta(r.truncated, before.truncated));
        self.mirror_last_report.with_label_values(&[pod]).set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        );
        last.insert(stats.pod.clone(), r.clone());
    }

    /// Counters and gauges from the analyzer's totals.
    pub fn publish(&self, r: &WireReport, last: &mut Published) {
        self.frames
            .with_label_values(&["interface"])
            .inc_by(last.delta("frames_interface", r.frames_timed_at_interface));
        self.frames
            .with_label_values(&["arrival"])
            .inc_by(last.delta("frames_arrival", r.frames_timed_on_arrival));
        self.decoded
            .inc_by(last.delta("decoded", r.packets_decoded));
        self.truncated.inc_by(last.delta("truncated", r.truncated));
        self.other.inc_by(last.delta("other", r.other));
        self.tls_records
            .inc_by(last.delta("tls_records", r.tls.records_decrypted));
        self.keylog_lines.set(r.tls.key_log_lines as f64);
        for (kind, n) in &r.decode_errors {
            let d = last.delta(&format!("error:{kind}"), *n);
            self.errors.with_label_values(&[kind]).inc_by(d);
        }
        let m = &r.messages;
        for (kind, n) in [
            ("trade", m.trades),
            ("trade_recovered", m.trades_recovered),
            ("trade_duplicate", m.trades_duplicate),
            ("order", m.orders),
            ("order_matched", m.orders_matched),
            ("ack", m.acks),
            ("fill", m.fills),
        ] {
            let d = last.delta(&format!("message:{kind}"), n);
            self.messages.with_label_values(&[kind]).inc_by(d);
        }
        for (message, summary) in [
            ("order", &r.order_wire_minus_app),
            ("trade", &r.trade_app_minus_wire),
        ] {
            if let Some(s) = summary {
                for (q, v) in [("0.5", s.p50_micros), ("0.99", s.p99_micros)] {
                    self.app_wire_difference
                        .with_label_values(&[message, q])
                        .set(v / 1e6);
                }
            }
        }
    }
}
