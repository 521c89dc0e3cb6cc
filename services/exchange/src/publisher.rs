//! The feed publisher: one dedicated thread, the exchange's hot path. Each turn it
//! takes the trades that are due, packs them many to a packet (stamping each packet's
//! trades with the time just before it is encoded), stores the packets in the
//! retransmission ring under one lock, drops some on purpose when faults are
//! configured, and sends the rest: UDP with `sendmmsg`, up to 32 datagrams per
//! system call; streams through the subscribers' broadcast channel. Recorders'
//! copies ([`crate::tap`]) go out after the live send, with their own fault draws.

use std::io::IoSlice;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use nix::sys::socket::{ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, sendmmsg};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use ticklab_wire::packet::{HEADER_LEN, encode_end_of_session, encode_heartbeat};
use ticklab_wire::{PacketBuilder, Session, now_unix_nanos};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::ExchangeStats;
use crate::generator::{ArrivalClock, TradeGenerator};
use crate::metrics::ExchangeMetrics;
use crate::orders::LastPrices;
use crate::ring::RetransmitRing;
use crate::tap::Taps;

/// Packets per turn (and per `sendmmsg`).
const BATCH_PACKETS: usize = 32;
/// An idle feed sends a heartbeat this often, so receivers see tail gaps.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

pub enum FeedSink {
    /// A connected UDP socket.
    Udp(UdpSocket),
    /// TCP and WebSocket subscribers.
    Streams(broadcast::Sender<Bytes>),
}

impl FeedSink {
    /// Sends the packets; returns how many went out.
    pub fn send_packets(
        &self,
        buf: &[u8],
        packets: &[(usize, usize, u64)],
        headers: &mut MultiHeaders<SockaddrStorage>,
    ) -> u64 {
        match self {
            FeedSink::Streams(tx) => {
                for &(off, len, _) in packets {
                    if let Some(p) = buf.get(off..off + len) {
                        // No subscriber yet is not an error: the ring still has it.
                        let _ = tx.send(Bytes::copy_from_slice(p));
                    }
                }
                packets.len() as u64
            }
            FeedSink::Udp(socket) => {
                let mut remaining = packets;
                let mut sent = 0u64;
                let addrs: [Option<SockaddrStorage>; BATCH_PACKETS] = [None; BATCH_PACKETS];
                while !remaining.is_empty() {
                    let slices: Vec<[IoSlice<'_>; 1]> = remaining
                        .iter()
                        .map(|&(off, len, _)| {
                            [IoSlice::new(buf.get(off..off + len).unwrap_or(&[]))]
                        })
                        .collect();
                    let no_cmsgs: [ControlMessage<'_>; 0] = [];
                    let result = sendmmsg(
                        socket.as_raw_fd(),
                        headers,
                        slices.iter(),
                        &addrs[..remaining.len()],
                        no_cmsgs,
                        MsgFlags::empty(),
                    );
                    match result.map(|r| r.count()) {
                        Ok(0) => break,
                        Ok(n) => {
                            sent += n as u64;
                            remaining = remaining.get(n..).unwrap_or(&[]);
                        }
                        Err(nix::errno::Errno::EINTR) => continue,
                        Err(e) => {
                            // ECONNREFUSED: nobody listens yet (the receiver is
                            // starting or restarting); the ring keeps the packets.
                            tracing::debug!(error = %e, "sendmmsg failed");
                            break;
                        }
                    }
                }
                sent
            }
        }
    }
}

pub struct Publisher {
    pub generator: TradeGenerator,
    pub clock: ArrivalClock,
    pub session: Session,
    pub max_packet_bytes: usize,
    pub sink: FeedSink,
    pub ring: Arc<RetransmitRing>,
    pub prices: Arc<LastPrices>,
    pub stats: Arc<ExchangeStats>,
    pub metrics: ExchangeMetrics,
    /// Fraction of packets not sent (fault injection), with its own seeded RNG so
    /// the trades are the same with or without faults.
    pub drop_fraction: f64,
    pub fault_rng: SmallRng,
    pub tap_fault_rng: SmallRng,
    /// Recorders' copies; injected faults drop copies too, drawn independently.
    pub taps: Arc<Taps>,
    pub duration: Option<Duration>,
    pub finished: watch::Sender<bool>,
}

impl Publisher {
    pub fn fault_rng(seed: u64) -> SmallRng {
        SmallRng::seed_from_u64(seed ^ 0xd1b5_4a32_d192_ed03)
    }

    /// The recorders' fault draws: separate, so a recorder joining or leaving
    /// does not change which live packets a fault drops.
    pub fn tap_fault_rng(seed: u64) -> SmallRng {
        SmallRng::seed_from_u64(seed ^ 0x94d0_49bb_1331_11eb)
    }

    /// Publishes until the duration elapses or `stop`, then ends the session.
    pub fn run(mut self, stop: CancellationToken) {
        // Sleeps end within a microsecond instead of the default 50 µs slack, so
        // arrivals keep their schedule without spinning long (best effort).
        let _ = nix::sys::prctl::set_timerslack(1_000);
        let start = Instant::now();
        let end_ns = self.duration.map(|d| d.as_nanos() as u64);
        let mut next_arrival = self.clock.next_arrival_ns();
        let mut seq: u64 = 1;
        let mut buf: Vec<u8> = Vec::with_capacity(BATCH_PACKETS * self.max_packet_bytes);
        // (offset, length, first sequence number) of each packet in `buf`.
        let mut packets: Vec<(usize, usize, u64)> = Vec::with_capacity(BATCH_PACKETS);
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH_PACKETS, None);
        let mut last_send = Instant::now();

        loop {
            if stop.is_cancelled() {
                break;
            }
            let now_ns = start.elapsed().as_nanos() as u64;
            let horizon = end_ns.map_or(now_ns, |e| now_ns.min(e));
            if end_ns.is_some_and(|e| next_arrival >= e && now_ns >= e) {
                break;
            }
            if next_arrival > horizon {
                if last_send.elapsed() >= HEARTBEAT_EVERY {
                    buf.clear();
                    encode_heartbeat(&mut buf, self.session, seq);
                    self.send_control(&buf);
                    last_send = Instant::now();
                }
                wait_until(start, next_arrival.min(end_ns.unwrap_or(u64::MAX)), &stop);
                continue;
            }

            // Pack every due trade, up to a batch of packets.
            buf.clear();
            packets.clear();
            let mut trades = 0u64;
            while packets.len() < BATCH_PACKETS && next_arrival <= horizon {
                let offset = buf.len();
                let stamp = now_unix_nanos();
                let mut builder =
                    PacketBuilder::new(&mut buf, self.session, seq, self.max_packet_bytes);
                while next_arrival <= horizon && builder.has_room_for_trade() {
                    let (index, mut trade) = self.generator.next_trade();
                    trade.send_ts_ns = stamp;
                    builder.push_trade(&trade);
                    self.prices.set(index, trade.price);
                    next_arrival = self.clock.next_arrival_ns();
                }
                let count = u64::from(builder.finish());
                packets.push((offset, buf.len() - offset, seq));
                seq += count;
                trades += count;
            }
            self.ring
                .store_packets(packets.iter().map(|&(off, len, first)| {
                    (first, buf.get(off + HEADER_LEN..off + len).unwrap_or(&[]))
                }));
            let tap_copies = (!self.taps.is_empty()).then(|| packets.clone());
            let before = packets.len();
            if self.drop_fraction > 0.0 {
                let (rng, p) = (&mut self.fault_rng, self.drop_fraction);
                packets.retain(|_| !rng.random_bool(p));
            }
            let dropped = (before - packets.len()) as u64;
            let sent = self.sink.send_packets(&buf, &packets, &mut headers);
            last_send = Instant::now();
            if let Some(copies) = tap_copies {
                self.copy_to_taps(&buf, copies);
            }

            self.count_published(sent, trades, seq);
            self.stats
                .packets_dropped_by_fault
                .fetch_add(dropped, Ordering::Relaxed);
            if dropped > 0 {
                self.metrics
                    .packets_dropped
                    .with_label_values(&["fault"])
                    .inc_by(dropped);
            }
        }

        tracing::info!(
            session = %self.session,
            trades = seq - 1,
            elapsed = ?start.elapsed(),
            "feed ended"
        );
        self.end_session(seq);
    }

    /// Counts a published batch: `sent` packets delivered, `trades` in the batch,
    /// `next_seq` the next sequence number.
    pub(crate) fn count_published(&self, sent: u64, trades: u64, next_seq: u64) {
        self.stats
            .trades_published
            .fetch_add(trades, Ordering::Relaxed);
        self.stats.packets_sent.fetch_add(sent, Ordering::Relaxed);
        self.stats.next_seq.store(next_seq, Ordering::Relaxed);
        self.metrics.trades_published.inc_by(trades);
        self.metrics.packets_sent.inc_by(sent);
    }

    /// Ends the session: end-of-session sent (repeated for UDP, whose datagrams may
    /// be lost), then `finished` set.
    pub(crate) fn end_session(&mut self, seq: u64) {
        let mut buf = Vec::with_capacity(HEADER_LEN);
        encode_end_of_session(&mut buf, self.session, seq);
        let repeats = if matches!(self.sink, FeedSink::Udp(_)) {
            3
        } else {
            1
        };
        for _ in 0..repeats {
            self.send_control(&buf);
            std::thread::sleep(Duration::from_millis(1));
        }
        self.stats.next_seq.store(seq, Ordering::Relaxed);
        self.finished.send_replace(true);
    }

    /// Sends the recorders their copies, minus the injected faults' share.
    pub(crate) fn copy_to_taps(&mut self, buf: &[u8], mut copies: Vec<(usize, usize, u64)>) {
        let before = copies.len();
        if self.drop_fraction > 0.0 {
            let (rng, p) = (&mut self.tap_fault_rng, self.drop_fraction);
            copies.retain(|_| !rng.random_bool(p));
        }
        let dropped = (before - copies.len()) as u64;
        let outcome = self.taps.copy(
            copies
                .iter()
                .map(|&(off, len, _)| buf.get(off..off + len).unwrap_or(&[])),
        );
        self.count_tap_copies(outcome, dropped);
    }

    fn count_tap_copies(&self, outcome: crate::tap::CopyOutcome, dropped: u64) {
        self.stats
            .tap_packets_sent
            .fetch_add(outcome.sent, Ordering::Relaxed);
        self.stats
            .tap_packets_failed
            .fetch_add(outcome.failed, Ordering::Relaxed);
        let count = |outcome: &str, n: u64| {
            if n > 0 {
                self.metrics
                    .tap_packets
                    .with_label_values(&[outcome])
                    .inc_by(n);
            }
        };
        count("sent", outcome.sent);
        count("failed", outcome.failed);
        count("fault", dropped);
    }

    fn send_control(&self, packet: &[u8]) {
        match &self.sink {
            FeedSink::Udp(socket) => {
                let _ = socket.send(packet);
            }
            FeedSink::Streams(tx) => {
                let _ = tx.send(Bytes::copy_from_slice(packet));
            }
        }
        if !self.taps.is_empty() {
            let outcome = self.taps.copy(std::iter::once(packet));
            self.count_tap_copies(outcome, 0);
        }
    }
}

/// Sleeps until `target_ns` after `start` (or `stop`): the OS sleep for the bulk of
/// the wait, then a short spin, so arrivals are honoured to a few microseconds
/// without burning a core at low rates.
fn wait_until(start: Instant, target_ns: u64, stop: &CancellationToken) {
    const SPIN: u64 = 10_000;
    loop {
        let now = start.elapsed().as_nanos() as u64;
        if now >= target_ns || stop.is_cancelled() {
            return;
        }
        let left = target_ns - now;
        if left > SPIN {
            std::thread::sleep(Duration::from_nanos((left - SPIN).min(50_000_000)));
        } else {
            std::hint::spin_loop();
        }
    }
}
