//! The retransmission server: a UDP socket on its own thread answering MoldUDP64
//! requests (session, first sequence number, count) from the ring with the original
//! messages — original bytes, original send timestamps — packed into packets like the
//! live feed's, plus an "unavailable" packet for whatever the ring no longer holds.
//! A request for zero messages is a trader's subscription: the first one starts the
//! UDP feed (see `ticklab_wire::retransmit`); a tap or untap starts or ends a
//! recorder's copy of the feed ([`crate::tap`]).

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::Notify;

use ticklab_wire::packet::{HEADER_LEN, PacketHeader, encode_unavailable};
use ticklab_wire::{RequestKind, RetransmitRequest, Session};
use tokio_util::sync::CancellationToken;

use crate::ExchangeStats;
use crate::metrics::ExchangeMetrics;
use crate::ring::RetransmitRing;
use crate::tap::Taps;

pub struct RetransmitServer {
    pub socket: UdpSocket,
    pub ring: Arc<RetransmitRing>,
    pub session: Session,
    pub max_packet_bytes: usize,
    pub stats: Arc<ExchangeStats>,
    pub metrics: ExchangeMetrics,
    /// Woken at the first subscription, for a UDP feed, which waits for it.
    pub subscribed: Option<Arc<Notify>>,
    /// Recorders' copies of the feed.
    pub taps: Arc<Taps>,
}

impl RetransmitServer {
    /// Serves until `stop`. Garbage requests are counted and ignored.
    pub fn run(self, stop: CancellationToken) {
        let _ = self
            .socket
            .set_read_timeout(Some(Duration::from_millis(50)));
        let mut buf = [0u8; 2048];
        let mut reply = Vec::with_capacity(self.max_packet_bytes);
        while !stop.is_cancelled() {
            let Ok((len, from)) = self.socket.recv_from(&mut buf) else {
                continue;
            };
            let request = match RetransmitRequest::decode(buf.get(..len).unwrap_or(&[])) {
                Ok(r) if r.kind() == RequestKind::Tap => {
                    if self.taps.renew(from) {
                        tracing::info!(%from, "a recorder taps the feed");
                    }
                    continue;
                }
                Ok(r) if r.kind() == RequestKind::Untap => {
                    if self.taps.remove(from) {
                        tracing::info!(%from, "a recorder stopped tapping the feed");
                    }
                    continue;
                }
                Ok(r) if r.is_subscription() => {
                    if self.stats.subscriptions.fetch_add(1, Ordering::AcqRel) == 0
                        && let Some(subscribed) = &self.subscribed
                    {
                        tracing::info!(%from, "first feed subscription: the feed starts");
                        subscribed.notify_one();
                    }
                    self.metrics.subscriptions.inc();
                    continue;
                }
                Ok(r) if r.session == self.session => r,
                Ok(_) | Err(_) => {
                    self.stats
                        .malformed_requests
                        .fetch_add(1, Ordering::Relaxed);
                    self.metrics.malformed_requests.inc();
                    continue;
                }
            };
            self.stats
                .retransmit_requests
                .fetch_add(1, Ordering::Relaxed);
            self.metrics.retransmit_requests.inc();
            let lookup = self.ring.lookup(request.seq, u64::from(request.count));
            if let Some((first, count)) = lookup.unavailable {
                reply.clear();
                encode_unavailable(&mut reply, self.session, first, count);
                let _ = self.socket.send_to(&reply, from);
                self.stats
                    .unavailable_replies
                    .fetch_add(1, Ordering::Relaxed);
                self.metrics.unavailable_replies.inc();
            }
            let mut seq = lookup.first_held;
            let mut messages = lookup.messages.iter().peekable();
            while messages.peek().is_some() {
                // A packet of as many held messages as fit.
                reply.clear();
                PacketHeader {
                    session: self.session,
                    seq,
                    count: 0,
                }
                .encode(&mut reply);
                let mut count: u16 = 0;
                while let Some(m) = messages.peek() {
                    if reply.len() + 2 + m.len() > self.max_packet_bytes && count > 0 {
                        break;
                    }
                    reply.extend_from_slice(&(m.len() as u16).to_be_bytes());
                    reply.extend_from_slice(m);
                    count += 1;
                    messages.next();
                }
                reply[HEADER_LEN - 2..HEADER_LEN].copy_from_slice(&count.to_be_bytes());
                let _ = self.socket.send_to(&reply, from);
                seq += u64::from(count);
                self.stats
                    .messages_retransmitted
                    .fetch_add(u64::from(count), Ordering::Relaxed);
                self.metrics.retransmitted_messages.inc_by(u64::from(count));
            }
        }
    }
}
