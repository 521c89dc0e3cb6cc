//! ticklab's one binary feed format, shared by every service.
//!
//! A [`packet`] is MoldUDP64-style: a session, the sequence number of its first
//! message and a message count, followed by length-prefixed [`message`]s (trades on
//! the feed; orders, acknowledgements and fills on the order channel). The same
//! packets travel over UDP datagrams, TCP and WebSocket ([`frame`] adds the length
//! prefix a byte stream needs), and [`retransmit`] asks for a sequence range again;
//! [`gap_tracker`] is the receivers' (trader, recorder) bookkeeping of what arrived.
//! Decoders never panic: malformed input is a [`WireError`].

#![forbid(unsafe_code)]

pub mod frame;
pub mod gap_tracker;
pub mod message;
pub mod packet;
pub mod retransmit;
pub mod types;

pub use message::{Ack, AckStatus, Fill, Message, Order, Trade};
pub use packet::{FeedPacket, PacketBuilder, PacketHeader, PacketKind};
pub use retransmit::{RequestKind, RetransmitRequest};
pub use types::{Price, Quantity, Session, Side, Symbol};

/// Everything that can be wrong with bytes that claim to be ticklab wire format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("truncated {what}: need {need} bytes, have {have}")]
    Truncated {
        what: &'static str,
        need: usize,
        have: usize,
    },
    #[error("unknown message type 0x{0:02x}")]
    UnknownMessageType(u8),
    #[error("message type {kind:?} must be {expected} bytes, got {got}")]
    BadMessageLength {
        kind: char,
        expected: usize,
        got: usize,
    },
    #[error("packet says {declared} messages but {found} follow")]
    CountMismatch { declared: u16, found: usize },
    #[error("{0} trailing bytes after the last message")]
    TrailingBytes(usize),
    #[error("invalid side byte 0x{0:02x} (want 'B' or 'S')")]
    BadSide(u8),
    #[error("invalid ack status byte 0x{0:02x}")]
    BadAckStatus(u8),
    #[error("symbol is not printable ASCII")]
    BadSymbol,
    #[error("frame of {0} bytes exceeds the limit")]
    FrameTooLarge(usize),
}

pub type Result<T, E = WireError> = std::result::Result<T, E>;

/// Nanoseconds since the Unix epoch on this host's realtime clock: the clock both
/// ends stamp with, so one-way latency is `receive - send` (same host, or hosts
/// synchronised by PTP/NTP).
pub fn now_unix_nanos() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
