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

use crate::message::Reader;
use crate::types::Session;
use crate::{Result, WireError};

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

    /// Whether this request is a subscription rather than a request for messages.
    pub fn is_subscription(&self) -> bool {
        self.count == 0
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
