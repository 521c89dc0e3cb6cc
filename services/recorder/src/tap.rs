//! The recording thread: one UDP socket connected to the exchange's retransmission
//! server carries the tap requests, the tapped feed copies and the retransmission
//! replies. Each turn it receives a batch (`recvmmsg`, kernel timestamps), follows
//! the toggle, asks for what is missing and writes what is new, in arrival order.
//!
//! Off is not instant on purpose: the recorder first recovers what the recorded span
//! still misses (a bounded drain), so a recording period holds every sequence number
//! from its first packet to its last, or lists the ones it could not get.

use std::io::IoSliceMut;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::Ordering;
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, setsockopt, sockopt,
};
use nix::sys::time::TimeSpec;
use ticklab_recording::{Format, RecordingError, RecordingWriter, WriterConfig};
use ticklab_wire::gap_tracker::{GapTracker, RecoveryPolicy, Verdict, Via};
use ticklab_wire::{FeedPacket, PacketKind, RetransmitRequest, Session, now_unix_nanos};
use tokio_util::sync::CancellationToken;

use crate::{Error, RecorderConfig, RecorderState, Result, Shared};

const BATCH: usize = 64;
const MAX_DATAGRAM: usize = 65_536;
const RECV_BUFFER: usize = 16 * 1024 * 1024;
/// Tap renewal: well inside the exchange's lease, so one lost request costs nothing.
const TAP_EVERY_NS: u64 = 500_000_000;
/// Files are flushed, and the index and metrics published, this often.
const FLUSH_EVERY_NS: u64 = 100_000_000;
/// Longest an off switch waits for the recorded span's missing messages.
const DRAIN_NS: u64 = 1_500_000_000;

/// Opens the recording directory: files torn by a kill are cut back to their last
/// complete record, the index is rebuilt from the files, and a new file follows.
pub fn open_writer(config: &RecorderConfig) -> Result<RecordingWriter> {
    let writer = RecordingWriter::open(WriterConfig {
        dir: config.directory.clone(),
        prefix: config.recording.clone(),
        format: match config.format {
            ticklab_crd::recording_session::RecordingFormat::Pcap => Format::Pcap,
            ticklab_crd::recording_session::RecordingFormat::Jsonl => Format::Jsonl,
        },
        max_bytes: u64::from(config.rotation.max_megabytes) * 1024 * 1024,
        max_age: Duration::from_secs(u64::from(config.rotation.max_seconds)),
    })
    .map_err(|source| Error::Directory {
        dir: config.directory.clone(),
        source,
    })?;
    for repaired in &writer.index().repaired {
        tracing::warn!(
            ?repaired,
            "a file torn by a kill was cut back to its last complete record"
        );
    }
    Ok(writer)
}

/// A socket connected to the retransmission server, with a large receive buffer
/// and kernel receive timestamps.
pub async fn connect(target: &str) -> Result<UdpSocket> {
    let problem = |e: &dyn std::fmt::Display| Error::Exchange {
        target: target.to_string(),
        problem: e.to_string(),
    };
    let addr = tokio::net::lookup_host(target)
        .await
        .map_err(|e| problem(&e))?
        .next()
        .ok_or_else(|| problem(&"no address"))?;
    let socket = ticklab_admin::net::connected_udp_socket(addr, |socket| {
        if setsockopt(socket, sockopt::RcvBufForce, &RECV_BUFFER).is_err() {
            let _ = socket.set_recv_buffer_size(RECV_BUFFER);
        }
        Ok(())
    })
    .map_err(|e| problem(&e))?;
    let _ = setsockopt(&socket, sockopt::ReceiveTimestampns, &true);
    // Counts datagrams the kernel drops for want of buffer (a cmsg per receive).
    let _ = setsockopt(&socket, sockopt::RxqOvfl, &1);
    socket.set_nonblocking(true).map_err(|e| problem(&e))?;
    Ok(socket.into())
}

/// The recorded span's bookkeeping: one feed session at a time.
struct Span {
    session: Session,
    tracker: GapTracker,
}

struct Recorder<'a> {
    shared: &'a Shared,
    socket: UdpSocket,
    writer: RecordingWriter,
    /// Addresses written into the pcap frames (IPv4 only; others map to TEST-NET).
    src: SocketAddrV4,
    dst: SocketAddrV4,
    state: RecorderState,
    drain_until: u64,
    span: Option<Span>,
    policy: RecoveryPolicy,
    last_kernel_drops: u32,
    request: Vec<u8>,
    /// The next span starts at sequence number 1 (see `RecorderConfig::from_start`).
    from_start: bool,
}

/// Runs until `stop`; closes the file (and ends the tap) on the way out.
pub fn run(socket: UdpSocket, writer: RecordingWriter, shared: &Shared, stop: &CancellationToken) {
    let v4 = |a: std::io::Result<SocketAddr>, fallback: [u8; 4]| match a {
        Ok(SocketAddr::V4(a)) => a,
        Ok(SocketAddr::V6(a)) => SocketAddrV4::new(fallback.into(), a.port()),
        Err(_) => SocketAddrV4::new(fallback.into(), 0),
    };
    let mut recorder = Recorder {
        shared,
        src: v4(socket.peer_addr(), [192, 0, 2, 1]),
        dst: v4(socket.local_addr(), [192, 0, 2, 2]),
        socket,
        writer,
        state: RecorderState::Paused,
        drain_until: 0,
        span: None,
        policy: RecoveryPolicy {
            timeout_ns: 200_000_000,
            ..RecoveryPolicy::default()
        },
        last_kernel_drops: 0,
        request: Vec::with_capacity(RetransmitRequest::LEN),
        from_start: shared.config.from_start,
    };
    recorder.run(stop);
}

impl Recorder<'_> {
    fn run(&mut self, stop: &CancellationToken) {
        let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; MAX_DATAGRAM]).collect();
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(
            BATCH,
            Some(nix::cmsg_space!(TimeSpec, u32)),
        );
        let mut meta: Vec<(usize, Option<u64>)> = Vec::with_capacity(BATCH);
        let mut next_tap = 0;
        let mut next_flush = 0;
        while !stop.is_cancelled() {
            {
                let mut fds = [PollFd::new(self.socket.as_fd(), PollFlags::POLLIN)];
                match poll(&mut fds, PollTimeout::from(2u8)) {
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "poll failed; the recorder stops");
                        break;
                    }
                }
            }
            loop {
                meta.clear();
                let mut drops = None;
                {
                    let mut iovs: Vec<[IoSliceMut<'_>; 1]> =
                        bufs.iter_mut().map(|b| [IoSliceMut::new(b)]).collect();
                    match recvmmsg(
                        self.socket.as_raw_fd(),
                        &mut headers,
                        iovs.iter_mut(),
                        MsgFlags::MSG_DONTWAIT,
                        None,
                    ) {
                        Ok(received) => {
                            for msg in received {
                                let mut ts = None;
                                if let Ok(cmsgs) = msg.cmsgs() {
                                    for c in cmsgs {
                                        match c {
                                            ControlMessageOwned::ScmTimestampns(t) => {
                                                ts = Some(timespec_ns(&t));
                                            }
                                            ControlMessageOwned::RxqOvfl(n) => drops = Some(n),
                                            _ => {}
                                        }
                                    }
                                }
                                meta.push((msg.bytes, ts));
                            }
                        }
                        Err(Errno::EAGAIN | Errno::EINTR) => {}
                        // ECONNREFUSED: the exchange is not up (yet); the tap retries.
                        Err(Errno::ECONNREFUSED) => {}
                        Err(e) => tracing::warn!(error = %e, "recvmmsg failed"),
                    }
                }
                if let Some(n) = drops {
                    let new = n.wrapping_sub(self.last_kernel_drops);
                    self.last_kernel_drops = n;
                    self.shared
                        .stats
                        .kernel_drops
                        .fetch_add(u64::from(new), Ordering::Relaxed);
                }
                if meta.is_empty() {
                    break;
                }
                let fallback = now_unix_nanos();
                for (buf, &(len, ts)) in bufs.iter().zip(&meta) {
                    self.on_datagram(buf.get(..len).unwrap_or(&[]), ts.unwrap_or(fallback));
                }
                if meta.len() < BATCH {
                    break;
                }
            }

            let now = now_unix_nanos();
            self.follow_toggle(now, &mut next_tap);
            self.recover(now);
            if let Err(e) = self.writer.tick(now) {
                self.write_failed(&e);
            }
            if now >= next_flush {
                next_flush = now + FLUSH_EVERY_NS;
                self.flush();
            }
        }
        // Shutting down: what is still missing stays missing, the file closes.
        self.end_span();
        if let Err(e) = self.writer.pause() {
            self.write_failed(&e);
        }
        self.send(RetransmitRequest::untap());
        self.set_state(RecorderState::Paused);
        self.flush();
    }

    /// Starts, renews, drains or ends recording as the toggle says.
    fn follow_toggle(&mut self, now: u64, next_tap: &mut u64) {
        let wanted = self.shared.control.enabled();
        match (self.state, wanted) {
            (RecorderState::Paused | RecorderState::Draining, true) => {
                if self.state == RecorderState::Paused {
                    tracing::info!("recording");
                }
                self.set_state(RecorderState::Recording);
                *next_tap = now;
            }
            (RecorderState::Recording, false) => {
                self.send(RetransmitRequest::untap());
                self.drain_until = now + DRAIN_NS;
                self.set_state(RecorderState::Draining);
            }
            (RecorderState::Draining, false) => {
                let settled = self
                    .span
                    .as_ref()
                    .is_none_or(|s| s.tracker.missing_count() == 0);
                if settled || now >= self.drain_until {
                    self.end_span();
                    if let Err(e) = self.writer.pause() {
                        self.write_failed(&e);
                    }
                    // The closed file's final entry is published before the state
                    // says Paused: whoever sees Paused sees the complete index.
                    self.flush();
                    self.set_state(RecorderState::Paused);
                    tracing::info!("recording paused");
                }
            }
            _ => {}
        }
        if self.state == RecorderState::Recording && now >= *next_tap {
            *next_tap = now + TAP_EVERY_NS;
            self.send(RetransmitRequest::tap());
        }
    }

    /// Asks for what the span misses and lists what it gave up on.
    fn recover(&mut self, now: u64) {
        let Some(span) = &mut self.span else { return };
        let due = span.tracker.due_requests(now, &self.policy);
        let session = span.session;
        for (start, end) in due {
            let count = u16::try_from(end - start).unwrap_or(u16::MAX);
            self.send(RetransmitRequest {
                session,
                seq: start,
                count,
            });
        }
        self.note_given_up();
    }

    fn note_given_up(&mut self) {
        let Some(span) = &mut self.span else { return };
        for (start, end) in span.tracker.take_given_up() {
            self.shared
                .stats
                .unrecoverable
                .fetch_add(end - start, Ordering::Relaxed);
            tracing::warn!(
                first = start,
                last = end - 1,
                "sequence numbers could not be recovered"
            );
            self.writer.mark_unrecoverable(start, end - start);
        }
    }

    /// Ends the recorded span: whatever it still misses is given up and listed.
    fn end_span(&mut self) {
        if let Some(span) = &mut self.span {
            span.tracker.finish();
        }
        self.note_given_up();
        self.span = None;
    }

    fn on_datagram(&mut self, bytes: &[u8], rx_ns: u64) {
        let stats = &self.shared.stats;
        if self.state == RecorderState::Paused {
            stats.ignored_while_paused.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let Ok(packet) = FeedPacket::parse(bytes) else {
            stats.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let header = packet.header;
        if self
            .span
            .as_ref()
            .is_some_and(|s| s.session != header.session)
        {
            tracing::info!(session = %header.session, "the exchange started a new session");
            self.end_span();
        }
        let draining = self.state == RecorderState::Draining;
        let write = match packet.kind {
            PacketKind::Data => {
                let count = u64::from(packet.message_count());
                if draining && self.span.is_none() {
                    false
                } else {
                    let first = if std::mem::take(&mut self.from_start) {
                        1
                    } else {
                        header.seq
                    };
                    let span = self.span.get_or_insert_with(|| Span {
                        session: header.session,
                        tracker: GapTracker::new(first).logging_given_up(),
                    });
                    let before = span.tracker.counts();
                    let mut wanted = false;
                    if draining {
                        // Off: only messages the span misses are still welcome.
                        for seq in header.seq..header.seq + count {
                            if seq < span.tracker.next_expected() {
                                wanted |= span.tracker.accept(seq, Via::Retransmission)
                                    == Verdict::Filled;
                            }
                        }
                    } else if span
                        .tracker
                        .accept_in_order_packet(header.seq, count)
                        .is_some()
                    {
                        wanted = true;
                    } else {
                        for seq in header.seq..header.seq + count {
                            wanted |=
                                span.tracker.accept(seq, Via::Retransmission) != Verdict::Duplicate;
                        }
                    }
                    let after = span.tracker.counts();
                    stats
                        .recovered
                        .fetch_add(after.recovered - before.recovered, Ordering::Relaxed);
                    if !wanted {
                        stats.duplicates.fetch_add(1, Ordering::Relaxed);
                    }
                    wanted
                }
            }
            PacketKind::Heartbeat | PacketKind::EndOfSession => {
                if let Some(span) = &mut self.span {
                    if packet.kind == PacketKind::EndOfSession {
                        span.tracker.end(header.seq);
                    } else if !draining {
                        span.tracker.announce_next(header.seq);
                    }
                }
                !draining
            }
            PacketKind::Unavailable { count } => {
                if let Some(span) = &mut self.span {
                    span.tracker.mark_unavailable(header.seq, count);
                }
                self.note_given_up();
                false
            }
        };
        if write {
            match self.writer.write_packet(rx_ns, self.src, self.dst, bytes) {
                Ok(()) => {
                    stats.packets.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => self.write_failed(&e),
            }
        }
    }

    fn send(&mut self, request: RetransmitRequest) {
        self.request.clear();
        request.encode(&mut self.request);
        // Refused while the exchange is down: the next renewal retries.
        if let Err(error) = self.socket.send(&self.request) {
            tracing::debug!(%error, "request to the retransmission server not sent");
        }
    }

    fn set_state(&mut self, state: RecorderState) {
        self.state = state;
        *self.shared.state.lock() = state;
        self.shared
            .metrics
            .recording
            .set(i64::from(state != RecorderState::Paused));
    }

    fn write_failed(&self, error: &RecordingError) {
        self.shared
            .stats
            .write_errors
            .fetch_add(1, Ordering::Relaxed);
        tracing::error!(%error, "recording write failed");
        *self.shared.last_error.lock() = Some(error.to_string());
    }

    /// Flushes the file, publishes the index, the counters and the metrics.
    fn flush(&mut self) {
        match self.writer.flush() {
            Ok(()) => {}
            Err(e) => self.write_failed(&e),
        }
        let shared = self.shared;
        let stats = &shared.stats;
        let behind = self.span.as_ref().map_or(0, |s| s.tracker.missing_count());
        stats.behind.store(behind, Ordering::Relaxed);
        stats
            .bytes
            .store(self.writer.bytes_written(), Ordering::Relaxed);
        *shared.index.write() = self.writer.index().clone();
        let m = &shared.metrics;
        let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let catch_up = |c: &prometheus::IntCounter, total: u64| {
            let seen = c.get();
            if total > seen {
                c.inc_by(total - seen);
            }
        };
        catch_up(&m.packets, l(&stats.packets));
        catch_up(&m.bytes, l(&stats.bytes));
        catch_up(&m.write_errors, l(&stats.write_errors));
        catch_up(&m.kernel_drops, l(&stats.kernel_drops));
        catch_up(&m.malformed, l(&stats.malformed));
        catch_up(
            &m.gap_messages.with_label_values(&["recovered"]),
            l(&stats.recovered),
        );
        catch_up(
            &m.gap_messages.with_label_values(&["unrecoverable"]),
            l(&stats.unrecoverable),
        );
        m.behind.set(i64::try_from(behind).unwrap_or(i64::MAX));
        m.files
            .set(i64::try_from(self.writer.index().files.len()).unwrap_or(i64::MAX));
    }
}

fn timespec_ns(ts: &TimeSpec) -> u64 {
    let secs = u64::try_from(ts.tv_sec()).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec()).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}
