//! Passive decryption of captured TLS 1.2 and 1.3 connections with the secrets a client
//! logged in the NSS key log format (SSLKEYLOGFILE, RFC 9850), for ticklab's capture service:
//! it feeds both reassembled TCP byte streams of a connection and gets the plaintext back.
//!
//! The capture service owns one [`TlsConnection`] per TCP connection and one shared
//! [`KeyLog`]. Bytes go in per direction, in stream order, in chunks of any size, each with
//! the capture timestamp of its segment; [`TlsEvent`]s come out: decrypted application data
//! stamped with the time the record was complete on the wire, handshake milestones, and
//! errors (as events, each with a stable metric label from [`TlsError::kind`]). Key log lines
//! may arrive after the records they decrypt: such records are held (bounded by
//! [`Limits::max_held_bytes`]) and decrypted by [`TlsConnection::retry`] once the lines are in,
//! still stamped with the time they were captured. [`TlsConnection::gap`] reports lost bytes
//! (the direction stops being framed), and [`TlsConnection::close`] gives up on whatever
//! still waits when the connection is done with.
//!
//! Supported: TLS 1.3 with `TLS_AES_128_GCM_SHA256`, `TLS_AES_256_GCM_SHA384` and
//! `TLS_CHACHA20_POLY1305_SHA256` (HelloRetryRequest, KeyUpdate, 0-RTT early data), and
//! TLS 1.2 with the AES-GCM and ChaCha20-Poly1305 suites. Everything else (CBC suites,
//! TLS 1.0/1.1, SSLv2 hellos, compression) is reported as [`TlsError::Unsupported`].
//!
//! ```
//! use ticklab_tls_decrypt::{Direction, KeyLog, Limits, TlsConnection, TlsEvent};
//!
//! let mut keys = KeyLog::new();
//! let mut conn = TlsConnection::new(Limits::default());
//! let mut events = Vec::new();
//! conn.feed(Direction::ClientToServer, 1_000, b"\x16\x03\x01", &keys, &mut events);
//! // ... more bytes of both directions; later the key log lines arrive:
//! keys.add_text("# nothing yet\n");
//! conn.retry(&keys, &mut events);
//! for event in events {
//!     if let TlsEvent::ApplicationData { dir, ts_ns, data } = event {
//!         println!("{dir:?} {ts_ns} {} bytes", data.len());
//!     }
//! }
//! ```

#![warn(missing_docs)]

mod connection;
mod crypto;
mod error;
mod handshake;
mod join;
mod keylog;
mod suites;
#[cfg(test)]
mod tests;

pub use connection::{
    ConnectionSummary, Direction, DirectionSummary, Limits, TlsConnection, TlsEvent,
    find_record_boundary,
};
pub use error::TlsError;
pub use keylog::{KeyLog, KeyLogError, Label};
pub use suites::{TlsVersion, cipher_suite_name};
