//! The mirror's loop: an AF_PACKET socket, bound to the configured interface or on
//! every interface (frames with their kernel receive or send timestamps, their
//! interface and direction), the session's filter and truncation, and one VXLAN
//! datagram per kept frame to the capture service. Runs on its own thread; the packet
//! socket is read in batches (`recvmmsg`), each batch's datagrams leave in one
//! `sendmmsg`, and the kernel's drop count is read after every wake-up.

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    AddressFamily, ControlMessageOwned, LinkAddr, MsgFlags, MultiHeaders, SockFlag, SockProtocol,
    SockType, SockaddrStorage, recvmmsg, sendmmsg, setsockopt, socket, sockopt,
};
use nix::sys::time::TimeSpec;
use ticklab_capture::link::{self, LinkType, Packet, Transport};
use ticklab_capture::vxlan::{self, Direction, Trailer};
use tokio_util::sync::CancellationToken;

use crate::filter::Filter;
use crate::metrics::MirrorMetrics;
use crate::{Error, MirrorConfig, Result};

/// Frames read per `recvmmsg`.
const BATCH: usize = 64;
/// A frame buffer: the largest GSO/GRO super-frame a veth hands over (64 KiB of IP
/// plus the Ethernet header), so no capture is cut by the mirror's own buffer.
const FRAME_BUFFER: usize = 65_536 + 64;
/// Largest frame that fits one VXLAN datagram with the trailer.
const MAX_FRAME: usize = 65_507 - vxlan::HEADER_LEN - vxlan::TRAILER_LEN;
/// Receive buffer asked of the kernel: bursts of a fast feed must not overflow it.
const RECV_BUFFER: usize = 16 << 20;
/// `sll_pkttype` of a frame this host sent (linux/if_packet.h PACKET_OUTGOING).
const PACKET_OUTGOING: u8 = 4;

pub struct Mirror {
    packets: OwnedFd,
    out: UdpSocket,
    target: SocketAddr,
    /// Only this interface; None: every interface but loopback.
    interface: Option<u32>,
    loopback: Option<u32>,
    filter: Filter,
    packet_length: usize,
    vni: u32,
    local_ports: Vec<u16>,
    peer_ports: Vec<u16>,
    metrics: MirrorMetrics,
    /// The frames counter of each outcome, looked up once.
    outcomes: HashMap<&'static str, prometheus::IntCounter>,
    /// VXLAN datagrams of the current batch, sent together; `queued` of them are in use.
    outbox: Vec<Vec<u8>>,
    queued: usize,
    /// Capture time of the newest frame queued.
    newest_ns: u64,
}

impl Mirror {
    pub fn open(config: &MirrorConfig, target: SocketAddr, metrics: MirrorMetrics) -> Result<Self> {
        let packets = socket(
            AddressFamily::Packet,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            SockProtocol::EthAll,
        )
        .map_err(Error::Socket)?;
        if setsockopt(&packets, sockopt::RcvBufForce, &RECV_BUFFER).is_err() {
            // Without CAP_NET_ADMIN the limit is net.core.rmem_max: take what it allows.
            let _ = setsockopt(&packets, sockopt::RcvBuf, &RECV_BUFFER);
        }
        setsockopt(&packets, sockopt::ReceiveTimestampns, &true).map_err(Error::Socket)?;
        // Packet sockets never send SO_RXQ_OVFL's drop count: the kernel's count comes
        // from PACKET_STATISTICS, read (and reset) after every wake-up.
        ticklab_packet_socket::take_stats(packets.as_fd()).map_err(io_error)?;
        let index = |name: &str| {
            nix::net::if_::if_nametoindex(name).map_err(|_| Error::Interface(name.to_string()))
        };
        let interface = config.interface.as_deref().map(index).transpose()?;
        if let Some(ifindex) = interface {
            // Only that interface's frames are copied to the socket at all.
            ticklab_packet_socket::bind_to_interface(packets.as_fd(), ifindex).map_err(io_error)?;
        }
        let loopback = index("lo").ok();
        let out = ticklab_admin::net::connected_udp_socket(target, |_| Ok(())).map_err(|e| {
            Error::Capture {
                target: target.to_string(),
                problem: e.to_string(),
            }
        })?;
        Ok(Self {
            packets,
            out: out.into(),
            target,
            interface,
            loopback,
            filter: Filter::new(config.filter.clone()),
            packet_length: config.packet_length.map_or(usize::MAX, |n| n as usize),
            vni: config.vni,
            local_ports: config.local_ports.clone(),
            peer_ports: config.peer_ports.clone(),
            outcomes: crate::metrics::OUTCOMES
                .iter()
                .map(|o| (*o, metrics.frames.with_label_values(&[*o])))
                .collect(),
            metrics,
            outbox: (0..BATCH).map(|_| Vec::with_capacity(2048)).collect(),
            queued: 0,
            newest_ns: 0,
        })
    }

    /// Captures until `stop`. A packet socket that fails is the end of the mirror.
    pub fn run(mut self, stop: &CancellationToken) -> Result<()> {
        let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; FRAME_BUFFER]).collect();
        let mut headers =
            MultiHeaders::<LinkAddr>::preallocate(BATCH, Some(nix::cmsg_space!(TimeSpec)));
        let mut batch: Vec<(usize, Option<LinkAddr>, Option<u64>)> = Vec::with_capacity(BATCH);
        while !stop.is_cancelled() {
            let mut fds = [PollFd::new(self.packets.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(100u8)) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(Error::Socket(e)),
            }
            loop {
                batch.clear();
                {
                    let mut iovs: Vec<[IoSliceMut<'_>; 1]> =
                        bufs.iter_mut().map(|b| [IoSliceMut::new(b)]).collect();
                    match recvmmsg(
                        self.packets.as_raw_fd(),
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
                                        if let ControlMessageOwned::ScmTimestampns(t) = c {
                                            ts = Some(timespec_ns(&t));
                                        }
                                    }
                                }
                                batch.push((msg.bytes, msg.address, ts));
                            }
                        }
                        Err(Errno::EAGAIN | Errno::EINTR) => {}
                        Err(e) => return Err(Error::Socket(e)),
                    }
                }
                if batch.is_empty() {
                    break;
                }
                let now = ticklab_capture_now();
                for (buf, (len, addr, ts)) in bufs.iter().zip(&batch) {
                    let frame = buf.get(..*len).unwrap_or(&[]);
                    self.frame(frame, addr.as_ref(), ts.unwrap_or(now));
                }
                self.send_queued();
                if batch.len() < BATCH {
                    break;
                }
            }
            self.count_kernel_drops()?;
        }
        self.count_kernel_drops()
    }

    /// Adds the frames the kernel dropped since the last read (the socket's buffer was
    /// full) to the metric.
    fn count_kernel_drops(&self) -> Result<()> {
        let stats = ticklab_packet_socket::take_stats(self.packets.as_fd()).map_err(io_error)?;
        self.metrics.kernel_drops.inc_by(u64::from(stats.drops));
        Ok(())
    }

    fn count(&self, outcome: &str) {
        match self.outcomes.get(outcome) {
            Some(counter) => counter.inc(),
            None => self.metrics.frames.with_label_values(&[outcome]).inc(),
        }
    }

    /// Sends the batch's datagrams in one `sendmmsg` (more if the kernel takes part of
    /// them); what cannot be sent is counted as `send_error`.
    fn send_queued(&mut self) {
        let queued = std::mem::take(&mut self.queued);
        if queued == 0 {
            return;
        }
        let slices: Vec<[IoSlice<'_>; 1]> = self.outbox[..queued]
            .iter()
            .map(|d| [IoSlice::new(d)])
            .collect();
        let addrs: Vec<Option<SockaddrStorage>> = vec![None; queued];
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(queued, None);
        let mut sent = 0;
        let mut failed = Vec::new();
        while sent < queued {
            match sendmmsg(
                self.out.as_raw_fd(),
                &mut headers,
                &slices[sent..],
                &addrs[sent..],
                [],
                MsgFlags::empty(),
            ) {
                Ok(results) => {
                    let n = results.count();
                    if n == 0 {
                        break;
                    }
                    sent += n;
                }
                // ECONNREFUSED: the capture is not up (yet); ENOBUFS/EAGAIN: a burst.
                // The first datagram failed: counted, and the rest tried again.
                Err(Errno::EINTR) => {}
                Err(_) => {
                    failed.push(sent);
                    sent += 1;
                }
            }
        }
        drop(slices);
        let (ok, bytes) = self.outbox[..sent]
            .iter()
            .enumerate()
            .filter(|(i, _)| !failed.contains(i))
            .fold((0u64, 0u64), |(n, b), (_, d)| (n + 1, b + d.len() as u64));
        for _ in &failed {
            self.count("send_error");
        }
        if let Some(c) = self.outcomes.get("mirrored") {
            c.inc_by(ok);
        }
        self.metrics.bytes.inc_by(bytes);
        if ok > 0 {
            self.metrics.last_mirrored.set(self.newest_ns as f64 / 1e9);
        }
        for _ in sent..queued {
            self.count("send_error");
        }
    }

    fn frame(&mut self, frame: &[u8], addr: Option<&LinkAddr>, ts_ns: u64) {
        let Some(addr) = addr else {
            return self.count("not_target");
        };
        let ifindex = u32::try_from(addr.ifindex()).unwrap_or(u32::MAX);
        let on_loopback = Some(ifindex) == self.loopback;
        let wanted = match self.interface {
            Some(i) => i == ifindex,
            None => !on_loopback,
        };
        if !wanted {
            return self.count("not_target");
        }
        let packet = link::decode(LinkType::Ethernet, frame).ok();
        if packet.as_ref().is_some_and(|p| self.is_own(p)) {
            return self.count("own");
        }
        let direction = if on_loopback {
            // Each loopback packet is seen leaving and arriving: keep one copy.
            if addr.pkttype() != PACKET_OUTGOING {
                return self.count("duplicate");
            }
            match packet.as_ref().and_then(|p| self.loopback_direction(p)) {
                Some(d) => d,
                None => return self.count("not_target"),
            }
        } else if addr.pkttype() == PACKET_OUTGOING {
            Direction::Egress
        } else {
            Direction::Ingress
        };
        if !self.filter.accepts(direction, packet.as_ref()) {
            return self.count("filtered");
        }
        let keep = frame.len().min(self.packet_length).min(MAX_FRAME);
        if keep < frame.len() {
            self.metrics.truncated.inc();
        }
        let trailer = Trailer {
            captured_at_ns: ts_ns,
            original_len: u32::try_from(frame.len()).unwrap_or(u32::MAX),
            direction,
        };
        // One datagram per frame read, and a batch holds at most BATCH frames.
        let Some(datagram) = self.outbox.get_mut(self.queued) else {
            return self.count("send_error");
        };
        datagram.clear();
        if vxlan::encode(self.vni, &frame[..keep], Some(&trailer), datagram).is_err() {
            return self.count("send_error");
        }
        self.queued += 1;
        self.newest_ns = self.newest_ns.max(ts_ns);
    }

    /// The mirror's own VXLAN datagrams (and anything else it sends to the capture).
    fn is_own(&self, packet: &Packet<'_>) -> bool {
        matches!(packet.transport, Transport::Udp { dst_port, .. }
            if dst_port == self.target.port() && packet.dst == self.target.ip())
    }

    /// Direction of a loopback packet from the mirrored process's ports.
    fn loopback_direction(&self, packet: &Packet<'_>) -> Option<Direction> {
        let (src, dst) = match packet.transport {
            Transport::Udp {
                src_port, dst_port, ..
            }
            | Transport::Tcp {
                src_port, dst_port, ..
            } => (src_port, dst_port),
        };
        if self.local_ports.contains(&dst) || self.peer_ports.contains(&src) {
            Some(Direction::Ingress)
        } else if self.local_ports.contains(&src) || self.peer_ports.contains(&dst) {
            Some(Direction::Egress)
        } else {
            None
        }
    }
}

fn timespec_ns(t: &TimeSpec) -> u64 {
    (t.tv_sec() as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec() as u64)
}

fn ticklab_capture_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A failed `getsockopt` as the socket error the mirror reports.
fn io_error(e: std::io::Error) -> Error {
    Error::Socket(Errno::from_raw(e.raw_os_error().unwrap_or(nix::libc::EIO)))
}
