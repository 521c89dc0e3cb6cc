//! Replay: the exchange publishes a recording instead of generated trades. Each
//! recorded packet keeps its messages and its place in the schedule; it gets a new
//! sequence number (so loops continue the session) and fresh send timestamps (so
//! the trader measures this run's latency, not the recording's).
//!
//! Pacing: packet i is due at `anchor + (ts_i - ts_0) / speed`, an absolute deadline
//! anchored to the first packet, never a chain of relative sleeps, so errors do not
//! accumulate; the thread sleeps with `clock_nanosleep(TIMER_ABSTIME)` until shortly
//! before the deadline and spins the rest. How late each packet left against its
//! deadline is measured and reported ([`ReplayReport`]) and exported as a histogram.

use std::sync::Arc;

use hdrhistogram::Histogram as Hdr;
use nix::sys::socket::{MultiHeaders, SockaddrStorage};
use nix::sys::time::TimeSpec;
use nix::time::{ClockId, ClockNanosleepFlags, clock_gettime, clock_nanosleep};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use ticklab_wire::packet::HEADER_LEN;
use ticklab_wire::{FeedPacket, Message, PacketBuilder, now_unix_nanos};
use tokio_util::sync::CancellationToken;

use crate::publisher::Publisher;

/// Speeds a replay accepts (the range); `None` means top speed.
pub const MIN_SPEED: f64 = 0.1;
pub const MAX_SPEED: f64 = 100.0;
/// The OS sleep ends this long before a deadline; the rest is spun.
const SPIN_NS: u64 = 50_000;
/// Largest datagram a replayed packet may become (recorded packets keep their size).
const MAX_REPLAY_PACKET: usize = 65_507;
/// Packets sent in one `sendmmsg` when several are due.
const BATCH: usize = 32;

/// What to replay and how.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplayConfig {
    /// A pcap, pcapng or JSON-lines file: a path, or an http:// URL (a recorder's
    /// `/files/NAME`).
    pub source: String,
    /// Speed multiplier (0.1–100); absent: top speed, no schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed: Option<f64>,
    /// Start again from the first packet after the last, until the duration ends.
    #[serde(default, rename = "loop")]
    pub looped: bool,
}

impl ReplayConfig {
    /// The speed is within range (the CLI and the CRD check it too).
    pub fn validate(&self) -> Result<(), String> {
        match self.speed {
            Some(s) if !(MIN_SPEED..=MAX_SPEED).contains(&s) || !s.is_finite() => Err(format!(
                "replay speed {s} is out of range: use {MIN_SPEED} to {MAX_SPEED}, or top speed"
            )),
            _ => Ok(()),
        }
    }
}

/// The replay's own account: how faithfully it kept the schedule, and the
/// recording's latency to compare the replayed run against.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReplayReport {
    pub source: String,
    /// `None`: top speed.
    pub speed: Option<f64>,
    pub looped: bool,
    /// Feed packets in the recording, and records skipped as not feed packets.
    pub recorded_packets: u64,
    pub skipped_records: u64,
    pub packets_sent: u64,
    pub messages_sent: u64,
    /// Completed passes over the recording.
    pub loops: u64,
    /// The recording's span (first to last packet) and the replay's wall time.
    pub recording_span_ns: u64,
    pub elapsed_ns: u64,
    /// Lateness against the schedule, in nanoseconds (absent at top speed).
    pub lateness: Option<Percentiles>,
    /// One-way latency in the recording itself (capture time minus send time).
    pub original_latency: Option<Percentiles>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Percentiles {
    pub count: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
}

impl Percentiles {
    pub fn of(h: &Hdr<u64>) -> Option<Self> {
        (!h.is_empty()).then(|| Self {
            count: h.len(),
            p50_ns: h.value_at_quantile(0.5),
            p90_ns: h.value_at_quantile(0.9),
            p99_ns: h.value_at_quantile(0.99),
            p999_ns: h.value_at_quantile(0.999),
            max_ns: h.max(),
        })
    }

    pub fn from_values(values: &[u64]) -> Option<Self> {
        let mut h = Hdr::<u64>::new_with_bounds(1, 3_600_000_000_000, 3).ok()?;
        for &v in values {
            h.saturating_record(v);
        }
        Self::of(&h)
    }
}

impl Percentiles {
    /// In microseconds, as experiment results carry them.
    pub fn micros(&self) -> ticklab_crd::results::Percentiles {
        let us = |ns: u64| ns as f64 / 1000.0;
        ticklab_crd::results::Percentiles {
            count: self.count,
            p50_micros: us(self.p50_ns),
            p90_micros: us(self.p90_ns),
            p99_micros: us(self.p99_ns),
            p999_micros: us(self.p999_ns),
            max_micros: us(self.max_ns),
        }
    }
}

impl ReplayReport {
    /// The part that goes into an experiment's results.
    pub fn results(&self) -> ticklab_crd::results::ReplayResults {
        ticklab_crd::results::ReplayResults {
            speed: self.speed,
            loops: self.loops,
            packets: self.packets_sent,
            messages: self.messages_sent,
            lateness: self.lateness.as_ref().map(Percentiles::micros),
            recording_feed_latency: self.original_latency.as_ref().map(Percentiles::micros),
        }
    }
}

/// A recording loaded and ready to replay.
pub struct LoadedReplay {
    pub config: ReplayConfig,
    pub packets: Vec<ticklab_recording::RecordedPacket>,
    pub skipped_records: u64,
    pub original_latency: Option<Percentiles>,
}

/// Reads the source: a file, or a download from a recorder.
pub async fn load(config: &ReplayConfig) -> Result<LoadedReplay, String> {
    config.validate()?;
    let source = &config.source;
    let feed = if source.starts_with("http://") || source.starts_with("https://") {
        let response = reqwest::get(source)
            .await
            .map_err(|e| format!("cannot download the recording {source}: {e}"))?;
        if !response.status().is_success() {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            return Err(format!(
                "cannot download the recording {source}: {status} {body}"
            ));
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| format!("cannot download the recording {source}: {e}"))?;
        let name = source.rsplit('/').next().unwrap_or(source).to_string();
        tokio::task::spawn_blocking(move || ticklab_recording::load_feed_bytes(&name, &bytes))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?
    } else {
        let path = std::path::PathBuf::from(source);
        tokio::task::spawn_blocking(move || ticklab_recording::load_feed(&path))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?
    };
    let original_latency = Percentiles::from_values(&ticklab_recording::original_latency(&feed));
    let skipped_records = feed.skipped.values().sum();
    Ok(LoadedReplay {
        config: config.clone(),
        packets: feed.packets,
        skipped_records,
        original_latency,
    })
}

/// The symbols the recording trades, in order of first appearance (the order API
/// fills orders against their last replayed prices).
pub fn symbols(packets: &[ticklab_recording::RecordedPacket]) -> Vec<ticklab_wire::Symbol> {
    let mut symbols = Vec::new();
    for packet in packets {
        let Ok(packet) = FeedPacket::parse(&packet.payload) else {
            continue;
        };
        for (_, message) in packet.messages() {
            if let Ok(Message::Trade(trade)) = message
                && !symbols.contains(&trade.symbol)
            {
                symbols.push(trade.symbol);
            }
        }
    }
    symbols
}

/// `GET /replay` on the admin port: the replay's report (final once the feed has
/// ended), read by the operator into the experiment's results; 404 when the feed
/// is not a replay.
pub fn report_router(report: Option<Arc<Mutex<ReplayReport>>>) -> axum::Router {
    axum::Router::new().route(
        "/replay",
        axum::routing::get(move || {
            let report = report.clone();
            async move {
                use axum::response::IntoResponse;
                match report {
                    Some(r) => axum::Json(r.lock().clone()).into_response(),
                    None => ticklab_admin::json_error(
                        axum::http::StatusCode::NOT_FOUND,
                        "this exchange generates its feed; it replays no recording",
                    ),
                }
            }
        }),
    )
}

fn monotonic_ns() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        (t.tv_sec() as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(t.tv_nsec() as u64)
    })
}

/// Waits for the monotonic time `deadline_ns`: an absolute OS sleep to just before
/// it, then a spin. Returns early when `stop` is cancelled (checked per sleep).
fn wait_until(deadline_ns: u64, stop: &CancellationToken) {
    loop {
        let now = monotonic_ns();
        if now >= deadline_ns || stop.is_cancelled() {
            return;
        }
        let left = deadline_ns - now;
        if left > SPIN_NS {
            // Wake at most every 50 ms to notice `stop`.
            let wake = (deadline_ns - SPIN_NS).min(now + 50_000_000);
            let ts = TimeSpec::new((wake / 1_000_000_000) as i64, (wake % 1_000_000_000) as i64);
            let _ = clock_nanosleep(
                ClockId::CLOCK_MONOTONIC,
                ClockNanosleepFlags::TIMER_ABSTIME,
                &ts,
            );
        } else {
            std::hint::spin_loop();
        }
    }
}

/// Rewrites a recorded packet for this run: new first sequence number, trades
/// stamped `stamp`. Returns the message count (0 when the payload is not data).
fn restamp(payload: &[u8], out: &mut Vec<u8>, publisher: &Publisher, seq: u64, stamp: u64) -> u16 {
    let Ok(packet) = FeedPacket::parse(payload) else {
        return 0;
    };
    let mut builder = PacketBuilder::new(out, publisher.session, seq, MAX_REPLAY_PACKET);
    for (_, message) in packet.messages() {
        let Ok(mut message) = message else { continue };
        if let Message::Trade(trade) = &mut message {
            trade.send_ts_ns = stamp;
            publisher.prices.set_symbol(trade.symbol, trade.price);
        }
        if !builder.push(&message) {
            break;
        }
    }
    builder.finish()
}

/// Publishes `replay` through `publisher`'s sink until the recording ends (or, looped,
/// until the duration or `stop`), then ends the session. Returns its report.
pub fn run(
    mut publisher: Publisher,
    replay: LoadedReplay,
    report: Arc<Mutex<ReplayReport>>,
    stop: CancellationToken,
) {
    let _ = nix::sys::prctl::set_timerslack(1_000);
    let speed = replay.config.speed;
    let packets = &replay.packets;
    let first_ts = packets.first().map_or(0, |p| p.ts_ns);
    let span = packets
        .last()
        .map_or(0, |p| p.ts_ns.saturating_sub(first_ts));
    // A loop's seam gets the recording's mean gap, so passes do not collide.
    let mean_gap = span / (packets.len().max(2) as u64 - 1);
    let scaled = |ns: u64| speed.map_or(0, |s| (ns as f64 / s) as u64);
    let pass_ns = scaled(span + mean_gap);
    let end_ns = publisher.duration.map(|d| d.as_nanos() as u64);

    let mut lateness = Hdr::<u64>::new_with_bounds(1, 3_600_000_000_000, 3).ok();
    let mut buf: Vec<u8> = Vec::with_capacity(BATCH * 2048);
    let mut batch: Vec<(usize, usize, u64)> = Vec::with_capacity(BATCH);
    let mut deadlines: Vec<u64> = Vec::with_capacity(BATCH);
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut seq: u64 = 1;
    let mut messages = 0u64;
    let mut sent = 0u64;
    let mut loops = 0u64;
    let anchor = monotonic_ns();
    {
        let mut r = report.lock();
        r.source = replay.config.source.clone();
        r.speed = speed;
        r.looped = replay.config.looped;
        r.recorded_packets = packets.len() as u64;
        r.skipped_records = replay.skipped_records;
        r.recording_span_ns = span;
        r.original_latency = replay.original_latency.clone();
    }
    'passes: loop {
        let pass_anchor = anchor + loops * pass_ns;
        let mut i = 0;
        while i < packets.len() {
            if stop.is_cancelled() {
                break 'passes;
            }
            let deadline_of =
                |k: usize| pass_anchor + scaled(packets.get(k).map_or(0, |p| p.ts_ns - first_ts));
            if end_ns.is_some_and(|e| deadline_of(i).saturating_sub(anchor) >= e) {
                break 'passes;
            }
            if speed.is_some() {
                wait_until(deadline_of(i), &stop);
            }
            // Everything due now goes in one batch.
            buf.clear();
            batch.clear();
            deadlines.clear();
            let now = monotonic_ns();
            let stamp = now_unix_nanos();
            while i < packets.len()
                && batch.len() < BATCH
                && (speed.is_none() || deadline_of(i) <= now)
            {
                let offset = buf.len();
                let count = restamp(&packets[i].payload, &mut buf, &publisher, seq, stamp);
                if count > 0 {
                    batch.push((offset, buf.len() - offset, seq));
                    deadlines.push(deadline_of(i));
                    seq += u64::from(count);
                    messages += u64::from(count);
                } else {
                    buf.truncate(offset);
                }
                i += 1;
            }
            publisher
                .ring
                .store_packets(batch.iter().map(|&(off, len, first)| {
                    (first, buf.get(off + HEADER_LEN..off + len).unwrap_or(&[]))
                }));
            let sent_now = publisher.sink.send_packets(&buf, &batch, &mut headers);
            let left = monotonic_ns();
            if let (Some(h), Some(_)) = (&mut lateness, speed) {
                for &d in &deadlines {
                    let late = left.saturating_sub(d);
                    h.saturating_record(late);
                    publisher.metrics.replay_lateness.observe(late as f64 / 1e9);
                }
            }
            sent += sent_now;
            publisher.count_published(sent_now, messages, seq);
            publisher.metrics.replay_packets.inc_by(sent_now);
            messages = 0;
            let tap_copies = batch.clone();
            publisher.copy_to_taps(&buf, tap_copies);
        }
        loops += 1;
        publisher.metrics.replay_loops.inc();
        {
            let mut r = report.lock();
            r.loops = loops;
            r.packets_sent = sent;
            r.messages_sent = seq - 1;
        }
        if !replay.config.looped || packets.is_empty() {
            break;
        }
    }
    {
        let mut r = report.lock();
        r.packets_sent = sent;
        r.messages_sent = seq - 1;
        r.loops = loops;
        r.elapsed_ns = monotonic_ns().saturating_sub(anchor);
        r.lateness = lateness.as_ref().and_then(Percentiles::of);
    }
    tracing::info!(packets = sent, messages = seq - 1, loops, "replay ended");
    publisher.end_session(seq);
}
