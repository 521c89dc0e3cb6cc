//! Recording taps: recorders that asked the retransmission server for a copy of
//! the feed (`RequestKind::Tap`). The publisher hands every packet it publishes to
//! [`Taps::copy`] after the live send, so a recorder never delays the feed's receiver;
//! the copies leave through the retransmission socket, so a recorder reads live
//! copies and retransmission replies from one connected socket.

use std::io::IoSlice;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::socket::{ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, sendmmsg};
use parking_lot::Mutex;
use prometheus::IntGauge;
use ticklab_wire::retransmit::TAP_LEASE_SECS;

/// Most datagrams per `sendmmsg` (the publisher's batch is 32 packets).
const BATCH: usize = 64;

pub struct Taps {
    socket: UdpSocket,
    /// Each tap's address and when its lease ends.
    taps: Mutex<Vec<(SocketAddr, Instant)>>,
    /// `taps.len()`, read without the lock on every publish.
    active: AtomicUsize,
    lease: Duration,
    /// `ticklab_exchange_recording_taps`.
    gauge: IntGauge,
}

/// What one [`Taps::copy`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CopyOutcome {
    pub sent: u64,
    pub failed: u64,
}

impl Taps {
    /// Copies go out through `socket` (a clone of the retransmission socket).
    pub fn new(socket: UdpSocket, gauge: IntGauge) -> Self {
        Self {
            socket,
            taps: Mutex::new(Vec::new()),
            active: AtomicUsize::new(0),
            lease: Duration::from_secs(TAP_LEASE_SECS),
            gauge,
        }
    }

    fn set_active(&self, n: usize) {
        self.active.store(n, Ordering::Release);
        self.gauge.set(n as i64);
    }

    /// Starts or renews `addr`'s tap; true when it is new.
    pub fn renew(&self, addr: SocketAddr) -> bool {
        let until = Instant::now() + self.lease;
        let mut taps = self.taps.lock();
        let new = match taps.iter_mut().find(|(a, _)| *a == addr) {
            Some(tap) => {
                tap.1 = until;
                false
            }
            None => {
                taps.push((addr, until));
                true
            }
        };
        self.set_active(taps.len());
        new
    }

    /// Ends `addr`'s tap; true when it had one.
    pub fn remove(&self, addr: SocketAddr) -> bool {
        let mut taps = self.taps.lock();
        let before = taps.len();
        taps.retain(|(a, _)| *a != addr);
        self.set_active(taps.len());
        taps.len() < before
    }

    pub fn is_empty(&self) -> bool {
        self.active.load(Ordering::Acquire) == 0
    }

    /// The live taps' addresses (expired ones are dropped first).
    fn live(&self) -> Vec<SocketAddr> {
        let now = Instant::now();
        let mut taps = self.taps.lock();
        let before = taps.len();
        taps.retain(|(_, until)| *until > now);
        if taps.len() < before {
            tracing::info!(taps = taps.len(), "a recording tap expired");
        }
        self.set_active(taps.len());
        taps.iter().map(|(a, _)| *a).collect()
    }

    /// Sends a copy of each packet to every tap. Cheap when there is none.
    pub fn copy<'a>(&self, packets: impl Iterator<Item = &'a [u8]> + Clone) -> CopyOutcome {
        let mut outcome = CopyOutcome::default();
        if self.is_empty() {
            return outcome;
        }
        let no_cmsgs: [ControlMessage<'_>; 0] = [];
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
        for addr in self.live() {
            let to = SockaddrStorage::from(addr);
            let all: Vec<&[u8]> = packets.clone().collect();
            for chunk in all.chunks(BATCH) {
                let slices: Vec<[IoSlice<'_>; 1]> =
                    chunk.iter().map(|p| [IoSlice::new(p)]).collect();
                let addrs: Vec<Option<SockaddrStorage>> = vec![Some(to); chunk.len()];
                let mut remaining = &slices[..];
                let mut remaining_addrs = &addrs[..];
                while !remaining.is_empty() {
                    match sendmmsg(
                        self.socket.as_raw_fd(),
                        &mut headers,
                        remaining.iter(),
                        remaining_addrs,
                        no_cmsgs,
                        MsgFlags::empty(),
                    )
                    .map(|r| r.count())
                    {
                        Ok(0) => break,
                        Ok(n) => {
                            outcome.sent += n as u64;
                            remaining = remaining.get(n..).unwrap_or(&[]);
                            remaining_addrs = remaining_addrs.get(n..).unwrap_or(&[]);
                        }
                        Err(nix::errno::Errno::EINTR) => continue,
                        Err(_) => {
                            // The recorder is gone or restarting; its gap recovery
                            // (or the index's missing ranges) accounts for these.
                            outcome.failed += remaining.len() as u64;
                            break;
                        }
                    }
                }
            }
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_reach_every_tap_until_removed() {
        let out = UdpSocket::bind("127.0.0.1:0").unwrap();
        let gauge = IntGauge::new("taps", "taps").unwrap();
        let taps = Taps::new(out, gauge.clone());
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        for s in [&a, &b] {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        }
        assert_eq!(taps.copy([&b"x"[..]].into_iter()), CopyOutcome::default());
        assert!(taps.renew(a.local_addr().unwrap()));
        assert!(!taps.renew(a.local_addr().unwrap()));
        assert!(taps.renew(b.local_addr().unwrap()));
        assert_eq!(gauge.get(), 2);
        let packets: [&[u8]; 2] = [b"one", b"two"];
        assert_eq!(taps.copy(packets.into_iter()).sent, 4);
        let mut buf = [0u8; 16];
        for s in [&a, &b] {
            for want in [&b"one"[..], b"two"] {
                let n = s.recv(&mut buf).unwrap();
                assert_eq!(&buf[..n], want);
            }
        }
        assert!(taps.remove(a.local_addr().unwrap()));
        assert_eq!(taps.copy(packets.into_iter()).sent, 2);
        assert!(taps.remove(b.local_addr().unwrap()));
        assert!(taps.is_empty());
    }
}
