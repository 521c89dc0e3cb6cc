//! UDP feed transport on a dedicated thread: `recvmmsg` takes up to 64 datagrams per
//! system call, each with the kernel's receive timestamp (SO_TIMESTAMPNS), so
//! one-way latency excludes the time this thread takes to wake up. The same loop
//! sends retransmission requests and reads their replies, keeping the processor
//! single-threaded, and subscribes to the feed through the retransmission server
//! (the exchange publishes only once a trader has subscribed), renewing the
//! subscription every second so a restarted exchange finds its trader again.

use std::io::IoSliceMut;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, setsockopt, sockopt,
};
use nix::sys::time::TimeSpec;
use ticklab_wire::{RetransmitRequest, now_unix_nanos};
use tokio_util::sync::CancellationToken;

use super::processor::FeedProcessor;
use crate::gap_tracker::Via;

/// Datagrams per `recvmmsg`.
const BATCH: usize = 64;
/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65_536;
/// Receive buffer asked of the kernel: absorbs microbursts while the thread is busy.
const RECV_BUFFER: usize = 16 * 1024 * 1024;
/// How often the trader renews its feed subscription, in nanoseconds.
const SUBSCRIBE_EVERY_NS: u64 = 1_000_000_000;

/// Asks for a [`RECV_BUFFER`] receive buffer: past `net.core.rmem_max` where the
/// process may (CAP_NET_ADMIN, as root on a workstation), else as much as the kernel
/// grants. The feed socket needs it for microbursts, the recovery socket for the
/// bursts of packets a long retransmission request brings back.
pub fn large_receive_buffer(socket: &socket2::Socket) -> std::io::Result<()> {
    if setsockopt(socket, sockopt::RcvBufForce, &RECV_BUFFER).is_err() {
        socket.set_recv_buffer_size(RECV_BUFFER)?;
    }
    Ok(())
}

/// The bound feed socket and what the kernel granted.
pub struct FeedSocket {
    pub socket: UdpSocket,
    /// Kernel receive timestamps (SO_TIMESTAMPNS) are on.
    pub kernel_timestamps: bool,
    /// Usable receive buffer in bytes. Linux caps a request at `net.core.rmem_max`
    /// (a pod cannot raise that sysctl), so this may be far below [`RECV_BUFFER`]:
    /// a small buffer overflows in microbursts and shows as gaps, hence reported.
    pub receive_buffer: usize,
}

/// Binds the feed socket (dual-stack for `[::]`) with a large receive buffer and
/// kernel timestamps on.
pub fn bind_feed_socket(addr: SocketAddr) -> std::io::Result<FeedSocket> {
    let socket = ticklab_admin::net::bind_udp_socket(addr, large_receive_buffer)?;
    // The kernel reports twice what it grants for data (the rest is bookkeeping).
    let receive_buffer = socket2::SockRef::from(&socket).recv_buffer_size()? / 2;
    if receive_buffer < RECV_BUFFER {
        tracing::warn!(
            granted_bytes = receive_buffer,
            requested_bytes = RECV_BUFFER,
            "the UDP feed's receive buffer is capped by the node's net.core.rmem_max: \
             microbursts may overflow it and show as gaps (raise the sysctl on the node)"
        );
    }
    let kernel_timestamps = setsockopt(&socket, sockopt::ReceiveTimestampns, &true).is_ok();
    socket.set_nonblocking(true)?;
    Ok(FeedSocket {
        socket,
        kernel_timestamps,
        receive_buffer,
    })
}

/// Receives until `shutdown`, then gives up on what is still missing and returns
/// the processor with its final counts.
pub fn run_udp_feed(
    feed: UdpSocket,
    recovery: UdpSocket,
    mut processor: FeedProcessor,
    busy_poll: bool,
    shutdown: CancellationToken,
) -> FeedProcessor {
    // Sleeping in poll() costs a wake-up per packet; spinning costs a core.
    let wait = if busy_poll {
        PollTimeout::ZERO
    } else {
        PollTimeout::from(2u8)
    };
    let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; MAX_DATAGRAM]).collect();
    let mut headers =
        MultiHeaders::<SockaddrStorage>::preallocate(BATCH, Some(nix::cmsg_space!(TimeSpec)));
    let mut meta: Vec<(usize, Option<u64>)> = Vec::with_capacity(BATCH);
    let mut reply = vec![0u8; MAX_DATAGRAM];
    let mut request = Vec::with_capacity(ticklab_wire::RetransmitRequest::LEN);
    let mut subscription = Vec::with_capacity(ticklab_wire::RetransmitRequest::LEN);
    RetransmitRequest::subscription().encode(&mut subscription);
    let mut next_subscription = 0;
    let mut subscription_failed = false;
    let _ = recovery.set_nonblocking(true);

    while !shutdown.is_cancelled() {
        let (feed_ready, recovery_ready) = {
            let mut fds = [
                PollFd::new(feed.as_fd(), PollFlags::POLLIN),
                PollFd::new(recovery.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, wait) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => {
                    tracing::error!(error = %e, "poll failed; feed handler stops");
                    break;
                }
            }
            let ready = |fd: &PollFd| fd.revents().is_some_and(|r| r.contains(PollFlags::POLLIN));
            (ready(&fds[0]), ready(&fds[1]))
        };

        if feed_ready {
            loop {
                meta.clear();
                {
                    let mut iovs: Vec<[IoSliceMut<'_>; 1]> =
                        bufs.iter_mut().map(|b| [IoSliceMut::new(b)]).collect();
                    match recvmmsg(
                        feed.as_raw_fd(),
                        &mut headers,
                        iovs.iter_mut(),
                        MsgFlags::MSG_DONTWAIT,
                        None,
                    ) {
                        Ok(received) => {
                            for msg in received {
                                let ts = msg.cmsgs().ok().and_then(|mut cmsgs| {
                                    cmsgs.find_map(|c| match c {
                                        ControlMessageOwned::ScmTimestampns(ts) => {
                                            Some(timespec_ns(&ts))
                                        }
                                        _ => None,
                                    })
                                });
                                meta.push((msg.bytes, ts));
                            }
                        }
                        Err(Errno::EAGAIN | Errno::EINTR) => {}
                        Err(e) => tracing::warn!(error = %e, "recvmmsg failed"),
                    }
                }
                if meta.is_empty() {
                    break;
                }
                let fallback = now_unix_nanos();
                for (buf, (len, ts)) in bufs.iter().zip(&meta) {
                    let bytes = buf.get(..*len).unwrap_or(&[]);
                    processor.on_packet_at(bytes, *ts, fallback, Via::Live);
                }
                if meta.len() < BATCH {
                    break;
                }
            }
        }

        if recovery_ready {
            while let Ok(len) = recovery.recv(&mut reply) {
                let bytes = reply.get(..len).unwrap_or(&[]);
                processor.on_packet(bytes, now_unix_nanos(), Via::Retransmission);
            }
        }

        // One clock read for both timers of this turn.
        let now = now_unix_nanos();
        if now >= next_subscription {
            next_subscription = now + SUBSCRIBE_EVERY_NS;
            subscription_failed =
                subscribe(&recovery, &subscription, &processor, subscription_failed);
        }
        for req in processor.due_requests(now) {
            request.clear();
            req.encode(&mut request);
            if let Err(e) = recovery.send(&request) {
                tracing::warn!(error = %e, "retransmission request not sent");
            }
        }
        processor.maybe_flush();
    }
    processor.finish();
    processor
}

/// Sends a subscription (a keep-alive once the feed runs); returns whether it
/// failed. Refused while the exchange is not up yet (the ICMP error of the previous
/// send): normal at start, counted, logged once an outage.
fn subscribe(
    recovery: &UdpSocket,
    subscription: &[u8],
    processor: &FeedProcessor,
    failed_before: bool,
) -> bool {
    match recovery.send(subscription) {
        Ok(_) => {
            processor.subscription_sent(true);
            false
        }
        Err(error) => {
            processor.subscription_sent(false);
            if !failed_before {
                tracing::info!(%error, "cannot subscribe to the feed yet; retrying every second");
            }
            true
        }
    }
}

fn timespec_ns(ts: &TimeSpec) -> u64 {
    let secs = u64::try_from(ts.tv_sec()).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec()).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}
