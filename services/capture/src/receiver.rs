//! The capture's receiving thread: VXLAN datagrams in batches (`recvmmsg`, kernel
//! arrival timestamps, the kernel's drop count), each through the analyzer, the
//! pcapng files and the messages file; key log text and the trader's receive
//! stamps come in over a channel. Every 100 ms it publishes the report and the
//! metrics, and forgets connections idle for a minute.

use std::fs::File;
use std::io::{BufWriter, IoSliceMut, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::sync::mpsc::{Receiver as Inbox, TryRecvError};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, setsockopt, sockopt,
};
use nix::sys::time::TimeSpec;
use ticklab_capture::analyzer::{Analyzer, AnalyzerConfig};
use ticklab_capture::pcapng::{PcapngFiles, Rotation};
use ticklab_capture::vxlan;
use tokio_util::sync::CancellationToken;

use crate::metrics::Published;
use crate::{Error, Input, Result, Shared};

const BATCH: usize = 64;
/// A VXLAN datagram: up to 64 KiB of UDP payload.
const DATAGRAM: usize = 65_536;
const RECV_BUFFER: usize = 32 << 20;
const PUBLISH_EVERY: Duration = Duration::from_millis(100);
/// Connections with no frame for this long (capture time) are flushed and dropped.
const IDLE_NS: u64 = 60_000_000_000;

/// The VXLAN socket: a large receive buffer, kernel timestamps, drop counts.
pub fn bind(addr: SocketAddr) -> Result<UdpSocket> {
    let socket = ticklab_admin::net::bind_udp_socket(addr, |s| {
        if setsockopt(s, sockopt::RcvBufForce, &RECV_BUFFER).is_err() {
            let _ = s.set_recv_buffer_size(RECV_BUFFER);
        }
        Ok(())
    })
    .map_err(|source| Error::Listen { addr, source })?;
    let _ = setsockopt(&socket, sockopt::ReceiveTimestampns, &true);
    let _ = setsockopt(&socket, sockopt::RxqOvfl, &1);
    socket
        .set_nonblocking(true)
        .map_err(|source| Error::Listen { addr, source })?;
    Ok(socket)
}

pub struct Receiver {
    socket: UdpSocket,
    shared: Arc<Shared>,
    inbox: Inbox<Input>,
    analyzer: Analyzer,
    pcapng: Option<PcapngFiles>,
    messages: Option<BufWriter<File>>,
    published: Published,
    last_kernel_drops: u32,
    /// Trader receive stamps waiting for their trade's wire time.
    stamps: StampQueue,
}

/// The trader's receive stamps set beside the wire's time of the same trade. A stamp can
/// come before its trade is decoded (the mirror path and the capture's batching lag the
/// trader's API), so it waits, bounded in time and count; what never meets its trade
/// (the capture missed the frame) is counted, not silently dropped.
#[derive(Default)]
struct StampQueue {
    session: Option<String>,
    /// (sequence number, receive ns, when it came), in the order the trader delivered.
    waiting: std::collections::VecDeque<(u64, u64, Instant)>,
    /// Highest sequence number taken in for `session` (the last stamps of a local run
    /// are handed over again whole).
    taken_upto: Option<u64>,
}

/// How long a stamp waits for its trade's wire time, and how many may wait.
const STAMP_WAIT: Duration = Duration::from_secs(10);
const STAMPS_WAITING: usize = 1 << 20;

impl Receiver {
    pub fn new(socket: UdpSocket, shared: Arc<Shared>, inbox: Inbox<Input>) -> Result<Self> {
        let config = &shared.config;
        let analyzer = Analyzer::new(AnalyzerConfig {
            retransmit_ports: config.retransmit_ports.clone(),
            server_ports: config.server_ports.clone(),
            vni: config.vni,
            observe: true,
            ..AnalyzerConfig::default()
        });
        let pcapng = match &config.pcapng {
            Some(p) => Some(
                PcapngFiles::new(
                    &p.directory,
                    Rotation {
                        max_bytes: p.rotate_megabytes.saturating_mul(1 << 20),
                        max_age: Duration::from_secs(p.rotate_seconds),
                    },
                )
                .map_err(|source| Error::Output {
                    path: p.directory.clone(),
                    source,
                })?,
            ),
            None => None,
        };
        let messages = match &config.messages_file {
            Some(path) => Some(BufWriter::new(File::create(path).map_err(|source| {
                Error::Output {
                    path: path.clone(),
                    source,
                }
            })?)),
            None => None,
        };
        Ok(Self {
            socket,
            shared,
            inbox,
            analyzer,
            pcapng,
            messages,
            published: Published::default(),
            last_kernel_drops: 0,
            stamps: StampQueue::default(),
        })
    }

    /// Receives until `stop`, then flushes the decoders and closes the files.
    pub fn run(mut self, stop: &CancellationToken) -> Result<()> {
        let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; DATAGRAM]).collect();
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(
            BATCH,
            Some(nix::cmsg_space!(TimeSpec, u32)),
        );
        let mut batch: Vec<(usize, Option<u64>)> = Vec::with_capacity(BATCH);
        let mut next_publish = Instant::now();
        while !stop.is_cancelled() {
            let mut fds = [PollFd::new(self.socket.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(50u8)) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(Error::ThreadDied(format!("poll failed: {e}"))),
            }
            self.inputs();
            loop {
                batch.clear();
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
                                batch.push((msg.bytes, ts));
                            }
                        }
                        Err(Errno::EAGAIN | Errno::EINTR) => {}
                        Err(e) => return Err(Error::ThreadDied(format!("recvmmsg failed: {e}"))),
                    }
                }
                if let Some(n) = drops {
                    let new = n.wrapping_sub(self.last_kernel_drops);
                    self.last_kernel_drops = n;
                    self.shared.metrics.kernel_drops.inc_by(u64::from(new));
                }
                if batch.is_empty() {
                    break;
                }
                let now = now_ns();
                for (buf, &(len, ts)) in bufs.iter().zip(&batch) {
                    self.datagram(buf.get(..len).unwrap_or(&[]), ts.unwrap_or(now));
                }
                self.observations();
                if batch.len() < BATCH {
                    break;
                }
            }
            if Instant::now() >= next_publish {
                next_publish = Instant::now() + PUBLISH_EVERY;
                self.analyzer.expire(now_ns(), IDLE_NS);
                self.compare_stamps(false);
                self.publish();
            }
        }
        // Segments still held are decoded first, so the last stamps find their trades.
        self.analyzer.flush();
        self.inputs();
        self.compare_stamps(true);
        self.observations();
        if let Some(files) = &mut self.pcapng {
            let keys = self.analyzer.key_log().to_text();
            if let Err(e) = files.close(&keys) {
                tracing::error!(error = %e, "cannot write the last pcapng file");
            }
        }
        if let Some(m) = &mut self.messages {
            let _ = m.flush();
        }
        self.publish();
        Ok(())
    }

    fn datagram(&mut self, payload: &[u8], arrival_ns: u64) {
        self.shared.metrics.last_frame.set(arrival_ns as f64 / 1e9);
        self.analyzer.vxlan(arrival_ns, payload);
        if let Some(files) = &mut self.pcapng
            && let Ok(e) = vxlan::decode(payload)
            && self.shared.config.vni.is_none_or(|v| v == e.vni)
        {
            let (ts, original, direction) = match e.trailer {
                Some(t) => (t.captured_at_ns, t.original_len, Some(t.direction)),
                None => (arrival_ns, e.frame.len() as u32, None),
            };
            let analyzer = &self.analyzer;
            if let Err(err) = files.write(ts, e.frame, original, direction, || {
                analyzer.key_log().to_text()
            }) {
                tracing::warn!(error = %err, "cannot write a pcapng frame");
                self.shared
                    .metrics
                    .errors
                    .with_label_values(&["pcapng_write"])
                    .inc();
            }
            let finished = files.finished().to_vec();
            if finished.len() != self.shared.files.read().len() {
                *self.shared.files.write() = finished;
            }
        }
    }

    fn observations(&mut self) {
        for o in self.analyzer.take_observations() {
            self.shared.metrics.observe(&o);
            if let Some(m) = &mut self.messages
                && let Ok(line) = serde_json::to_string(&o)
            {
                let _ = writeln!(m, "{line}");
            }
        }
    }

    fn take_stamps(&mut self, session: String, stamps: Vec<(u64, u64)>) {
        let q = &mut self.stamps;
        if q.session.as_ref() != Some(&session) {
            // A new feed session: stamps of the old one can no longer meet their trades.
            let stale = q.waiting.len() as u64;
            self.shared.metrics.app_stamps_unmatched.inc_by(stale);
            q.waiting.clear();
            q.session = Some(session);
            q.taken_upto = None;
        }
        let now = Instant::now();
        for (seq, app_ns) in stamps {
            if q.taken_upto.is_some_and(|upto| seq <= upto) {
                continue;
            }
            q.taken_upto = Some(seq);
            if q.waiting.len() == STAMPS_WAITING {
                q.waiting.pop_front();
                self.shared.metrics.app_stamps_unmatched.inc();
            }
            q.waiting.push_back((seq, app_ns, now));
        }
    }

    /// Compares the waiting stamps whose trades have been seen on the wire; drops those
    /// that waited too long (or all that are left, `last`), counting them.
    fn compare_stamps(&mut self, last: bool) {
        let current = self.analyzer.latency().session().map(|s| s.as_str());
        let same_session = current.is_some() && current == self.stamps.session;
        let now = Instant::now();
        let mut unmatched = 0u64;
        let mut matched = Vec::new();
        self.stamps.waiting.retain(|&(seq, app_ns, came)| {
            if same_session && let Some(wire) = self.analyzer.latency().tick_seen(seq) {
                matched.push((app_ns, wire));
                return false;
            }
            if last || now.duration_since(came) > STAMP_WAIT {
                unmatched += 1;
                return false;
            }
            true
        });
        for (app_ns, wire) in matched {
            self.analyzer.app_received(app_ns, wire);
        }
        self.shared.metrics.app_stamps_unmatched.inc_by(unmatched);
    }

    fn inputs(&mut self) {
        loop {
            match self.inbox.try_recv() {
                Ok(Input::KeyLog(text)) => {
                    self.analyzer.add_key_log(&text);
                    self.observations();
                }
                Ok(Input::AppReceived { session, stamps }) => {
                    self.take_stamps(session, stamps);
                    self.compare_stamps(false);
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return,
            }
        }
    }

    fn publish(&mut self) {
        let report = self.analyzer.report();
        self.shared.metrics.publish(&report, &mut self.published);
        *self.shared.report.write() = report;
    }
}

fn timespec_ns(t: &TimeSpec) -> u64 {
    (t.tv_sec() as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec() as u64)
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
