//! Retransmission requests, exactly MoldUDP64's: session, first sequence number and
//! message count, sent over UDP to the exchange's retransmission server, which
//! answers with ordinary data packets (or an "unavailable" packet, see [`crate::packet`]).

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
}
