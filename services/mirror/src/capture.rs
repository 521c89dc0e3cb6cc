//! The mirror's loop: an AF_PACKET socket on every interface (frames with their
//! kernel receive or send timestamps, their interface and direction), the
//! session's filter and truncation, and one VXLAN datagram per kept frame to the
//! capture service. Runs on its own thread; the packet socket is read in batches
//! (`recvmmsg`), and the kernel's drop count comes with every batch.

use std::io::IoSliceMut;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    AddressFamily, ControlMessageOwned, LinkAddr, MsgFlags, MultiHeaders, SockFlag, SockProtocol,
    SockType, recvmmsg, setsockopt, socket, sockopt,
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
    last_kernel_drops: u32,
    datagram: Vec<u8>,
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
        // A count of frames dropped for want of buffer, with every batch.
        let _ = setsockopt(&packets, sockopt::RxqOvfl, &1);
        let index = |name: &str| {
            nix::net::if_::if_nametoindex(name).map_err(|_| Error::Interface(name.to_string()))
        };
        let interface = config.interface.as_deref().map(index).transpose()?;
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
            metrics,
            last_kernel_drops: 0,
            datagram: Vec::with_capacity(FRAME_BUFFER),
        })
    }

    /// Captures until `stop`. A packet socket that fails is the end of the mirror.
    pub fn run(mut self, stop: &CancellationToken) -> Result<()> {
        let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; FRAME_BUFFER]).collect();
        let mut headers =
            MultiHeaders::<LinkAddr>::preallocate(BATCH, Some(nix::cmsg_space!(TimeSpec, u32)));
        let mut batch: Vec<(usize, Option<LinkAddr>, Option<u64>)> = Vec::with_capacity(BATCH);
        while !stop.is_cancelled() {
            let mut fds = [PollFd::new(self.packets.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(100u8)) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(Error::Socket(e)),
            }
            loop {
                batch.clear();
                let mut drops = None;
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
                                        match c {
                                            ControlMessageOwned::ScmTimestampns(t) => {
                                                ts = Some(timespec_ns(&t));
                                            }
                                            ControlMessageOwned::RxqOvfl(n) => drops = Some(n),
                                            _ => {}
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
                if let Some(n) = drops {
                    self.metrics
                        .kernel_drops
                        .inc_by(u64::from(n.wrapping_sub(self.last_kernel_drops)));
                    self.last_kernel_drops = n;
                }
                if batch.is_empty() {
                    break;
                }
                let now = ticklab_capture_now();
                for (buf, (len, addr, ts)) in bufs.iter().zip(&batch) {
                    let frame = buf.get(..*len).unwrap_or(&[]);
                    self.frame(frame, addr.as_ref(), ts.unwrap_or(now));
                }
                if batch.len() < BATCH {
                    break;
                }
            }
        }
        Ok(())
    }

    fn count(&self, outcome: &str) {
        self.metrics.frames.with_label_values(&[outcome]).inc();
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
        self.datagram.clear();
        let trailer = Trailer {
            captured_at_ns: ts_ns,
            original_len: u32::try_from(frame.len()).unwrap_or(u32::MAX),
            direction,
        };
        if vxlan::encode(self.vni, &frame[..keep], Some(&trailer), &mut self.datagram).is_err() {
            return self.count("send_error");
        }
        match self.out.send(&self.datagram) {
            Ok(_) => {
                self.count("mirrored");
                self.metrics.bytes.inc_by(self.datagram.len() as u64);
                self.metrics.last_mirrored.set(ts_ns as f64 / 1e9);
            }
            // ECONNREFUSED: the capture is not up (yet); ENOBUFS/EAGAIN: a burst.
            // Counted; the frame is lost to the capture, as AWS drops under load.
            Err(_) => self.count("send_error"),
        }
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
