//! What an experiment measured, in one shape for every consumer: the trader's
//! `/stats`, the `LatencyExperiment` status, and `ticklab run`'s report.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::latency_experiment::SloSpec;

/// Counts and latency percentiles of one experiment.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ExperimentResults {
    /// Trades the exchange published (as far as the trader has learnt from sequence
    /// numbers, heartbeats and the end-of-session packet).
    pub sent: u64,
    /// Trades that arrived on the feed itself.
    pub received: u64,
    /// Gaps detected (a gap is one run of missing sequence numbers).
    pub gaps: u64,
    /// Trades missing from the feed and then recovered through retransmission.
    pub recovered: u64,
    /// Trades never received: unrecoverable, or still missing when the run ended.
    pub lost: u64,
    /// Copies of trades already received (dropped).
    #[serde(default)]
    pub duplicates: u64,
    /// Packets or messages that failed to decode (dropped and counted).
    #[serde(default)]
    pub malformed: u64,
    /// One-way feed latency: exchange send timestamp to trader receive timestamp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feed_latency: Option<LatencySummary>,
    /// One-way latency to the moment the trader's thread had the packet in user
    /// space (includes its wake-up); present when kernel timestamps are used, and
    /// the figure to compare with user-space tools such as sockperf.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feed_latency_user: Option<LatencySummary>,
    /// Tick-to-trade: trader receive timestamp of a tick to its order leaving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tick_to_trade: Option<LatencySummary>,
    /// Order round trip: order sent to acknowledgement received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_round_trip: Option<LatencySummary>,
    /// Where receive timestamps come from: "kernel" (SO_TIMESTAMPNS) or "user".
    #[serde(default)]
    pub timestamp_source: String,
    /// Orders sent.
    pub orders: u64,
    /// Orders filled.
    pub fills: u64,
    /// Orders the strategy wanted but did not send (order queue full, or no
    /// connection to the exchange at that moment).
    #[serde(default)]
    pub orders_skipped: u64,
    /// Mark-to-market profit and loss in US dollars (quotes converted at the last
    /// prices of the experiment's own USD pairs).
    pub pnl: f64,
    /// Trades stored in MongoDB (absent without persistence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persisted: Option<u64>,
    /// Trades received but not stored in MongoDB: the write buffer was full (the
    /// database was slower than the feed) or writes kept failing. Counted, never
    /// silent (absent without persistence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_persisted: Option<u64>,
    /// Met, Breached, or absent when no SLO is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo_verdict: Option<SloVerdict>,
    /// When the feed was a replayed recording: how faithfully it was replayed, and
    /// the recording's own latency beside this run's `feedLatency`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<ReplayResults>,
}

/// A replay's account, from the exchange that replayed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ReplayResults {
    /// Speed multiplier; absent: top speed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed: Option<f64>,
    /// Passes over the recording.
    pub loops: u64,
    /// Packets replayed.
    pub packets: u64,
    /// Messages (trades) replayed.
    pub messages: u64,
    /// How late packets left against their schedule (absent at top speed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lateness: Option<Percentiles>,
    /// One-way feed latency in the recording itself (its capture time minus each
    /// trade's send time), to compare with this run's `feedLatency`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording_feed_latency: Option<Percentiles>,
}

/// Percentiles in microseconds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Median, µs.
    pub p50_micros: f64,
    /// 90th percentile, µs.
    pub p90_micros: f64,
    /// 99th percentile, µs.
    pub p99_micros: f64,
    /// 99.9th percentile, µs.
    pub p999_micros: f64,
    /// Largest sample, µs.
    pub max_micros: f64,
}

/// Percentiles of one latency distribution, in microseconds with nanosecond digits.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct LatencySummary {
    /// Samples.
    pub count: u64,
    /// Smallest sample, µs.
    pub min_micros: f64,
    /// Median, µs.
    pub p50_micros: f64,
    /// 90th percentile, µs.
    pub p90_micros: f64,
    /// 99th percentile, µs.
    pub p99_micros: f64,
    /// 99.9th percentile, µs.
    pub p999_micros: f64,
    /// Largest sample, µs.
    pub max_micros: f64,
    /// Mean, µs.
    pub mean_micros: f64,
}

/// Outcome against the experiment's SLO.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SloVerdict {
    Met,
    Breached,
}

impl ExperimentResults {
    /// Lost trades as a percent of sent (0 when nothing was sent).
    pub fn loss_percent(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            self.lost as f64 * 100.0 / self.sent as f64
        }
    }

    /// Judges the results against `slo`: breached as soon as any bound is exceeded.
    pub fn judge(&self, slo: &SloSpec) -> SloVerdict {
        let latency_ok = match (slo.p99_micros, &self.feed_latency) {
            (Some(bound), Some(l)) => l.p99_micros <= bound,
            // No samples yet: nothing breached the bound.
            (Some(_), None) => true,
            (None, _) => true,
        };
        let loss_ok = slo
            .max_loss_percent
            .is_none_or(|bound| self.loss_percent() <= bound);
        if latency_ok && loss_ok {
            SloVerdict::Met
        } else {
            SloVerdict::Breached
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_follows_bounds() {
        let mut r = ExperimentResults {
            sent: 1000,
            lost: 5,
            feed_latency: Some(LatencySummary {
                p99_micros: 40.0,
                ..Default::default()
            }),
            ..Default::default()
        };
        let slo = SloSpec {
            p99_micros: Some(50.0),
            max_loss_percent: Some(1.0),
        };
        assert_eq!(r.judge(&slo), SloVerdict::Met);
        r.lost = 20;
        assert_eq!(r.judge(&slo), SloVerdict::Breached);
        r.lost = 0;
        r.feed_latency.as_mut().unwrap().p99_micros = 60.0;
        assert_eq!(r.judge(&slo), SloVerdict::Breached);
    }
}
