//! Retransmission requests, exactly MoldUDP64's: session, first sequence number and
//! message count, sent over UDP to the exchange's retransmission server, which
//! answers with ordinary data packets (or an "unavailable" packet, see [`crate::packet`]).
//!
//! ticklab gives the one request MoldUDP64 leaves meaningless — zero messages — a
//! meaning: a *subscription*. The trader sends one to the same server when it is
//! ready to receive, and again every second as a keep-alive; the exchange's UDP
//! feed starts at the first one, so no trade is published before a receiver exists
//! (and a restarted exchange finds its receiver within a second). The session field
//! of a subscription is ignored: the trader cannot know it yet.
//!
//! Two more zero-count requests serve a recorder: a *tap* (sequence number
//! `u64::MAX`) asks for a copy of every feed packet, whatever the feed's transport,
//! sent as UDP datagrams to the requester for [`TAP_LEASE_SECS`] seconds, renewed by
//! repeating it; an *untap* (`u64::MAX - 1`) ends the copy at once. Neither starts
//! the feed: a recorder alone has nothing to record.

use crate::message::Reader;
use crate::types::Session;
use crate::{Result, WireError};

/// How long a tap lasts without renewal.
pub const TAP_LEASE_SECS: u64 = 3;
const TAP_SEQ: u64 = u64::MAX;
const UNTAP_SEQ: u64 = u64::MAX - 1;

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// Start (or keep) the feed: a trader is ready.
    Subscribe,
    /// Copy every feed packet to the requester for a lease.
    Tap,
    /// Stop copying feed packets to the requester.
    Untap,
    /// Send `count` messages from `seq` again.
    Messages,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetransmitRequest {
    pub session: Session,
    pub seq: u64,
    pub count: u16,
}

impl RetransmitRequest {
    pub const LEN: usize = 20;

    /// A subscription (see the module documentation).
    pub fn subscription() -> Self {
        Self {
            session: Session::from_name(""),
            seq: 0,
            count: 0,
        }
    }

    /// A tap (see the module documentation).
    pub fn tap() -> Self {
        Self {
            seq: TAP_SEQ,
            ..Self::subscription()
        }
    }

    /// An untap (see the module documentation).
    pub fn untap() -> Self {
        Self {
            seq: UNTAP_SEQ,
            ..Self::subscription()
        }
    }

    /// Whether this request is a subscription, tap or untap rather than a request
    /// for messages.
    pub fn is_subscription(&self) -> bool {
        self.count == 0
    }

    pub fn kind(&self) -> RequestKind {
        match (self.count, self.seq) {
            (0, TAP_SEQ) => RequestKind::Tap,
            (0, UNTAP_SEQ) => RequestKind::Untap,
            (0, _) => RequestKind::Subscribe,
            _ => RequestKind::Messages,
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.session.0);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.count.to_be_bytes());
    }

    pub fn decode(buf: &[u8]) -> Result<Self> {
        let mut r = Reader::new(buf, "retransmit request");
        let request = Self {
            session: Session(r.array()?),
            seq: r.u64()?,
            count: r.u16()?,
        };
        if !r.remaining().is_empty() {
            return Err(WireError::TrailingBytes(r.remaining().len()));
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_reject_garbage() {
        let req = RetransmitRequest {
            session: Session::from_name("X"),
            seq: 123,
            count: 7,
        };
        let mut buf = Vec::new();
        req.encode(&mut buf);
        assert_eq!(buf.len(), RetransmitRequest::LEN);
        assert_eq!(RetransmitRequest::decode(&buf).unwrap(), req);
        assert!(RetransmitRequest::decode(&buf[..19]).is_err());
        buf.push(1);
        assert!(RetransmitRequest::decode(&buf).is_err());
    }

    #[test]
    fn taps_and_untaps_are_told_apart_from_subscriptions() {
        for (request, kind) in [
            (RetransmitRequest::subscription(), RequestKind::Subscribe),
            (RetransmitRequest::tap(), RequestKind::Tap),
            (RetransmitRequest::untap(), RequestKind::Untap),
        ] {
            let mut buf = Vec::new();
            request.encode(&mut buf);
            let decoded = RetransmitRequest::decode(&buf).unwrap();
            assert_eq!(decoded.kind(), kind);
            assert!(decoded.is_subscription());
        }
        let messages = RetransmitRequest {
            session: Session::from_name("X"),
            seq: u64::MAX,
            count: 1,
        };
        assert_eq!(messages.kind(), RequestKind::Messages);
    }

    #[test]
    fn a_subscription_is_a_request_for_nothing() {
        let mut buf = Vec::new();
        RetransmitRequest::subscription().encode(&mut buf);
        assert_eq!(buf.len(), RetransmitRequest::LEN);
        let decoded = RetransmitRequest::decode(&buf).unwrap();
        assert!(decoded.is_subscription());
        let request = RetransmitRequest {
            session: Session::from_name("X"),
            seq: 1,
            count: 1,
        };
        assert!(!request.is_subscription());
    }
}
