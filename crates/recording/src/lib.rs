//! The file layer of ticklab's recorder and of replay: feed packets written to
//! rotating pcap or JSON-lines files with an `index.json` beside them, torn tails
//! repaired after a crash, and any pcap/pcapng capture read back for replay.
//!
//! - [`frame`] wraps a UDP payload in Ethernet II / IPv4 / UDP so capture tools
//!   decode recordings like a live capture.
//! - [`writer`] is the recorder's side: [`RecordingWriter`] with size and age
//!   rotation, buffered writes and unrecoverable-range bookkeeping.
//! - [`index`] is the directory's catalogue: [`Index`], rebuilt from the files on
//!   restart, and the `recordings ls` table.
//! - [`reader`] is replay's side: [`load_feed`] turns a capture into an ordered,
//!   de-duplicated schedule of feed packets.
//! - [`jsonl`] is the JSON-lines record shared by the writer, the index and the reader.
//!
//! All I/O is synchronous std I/O; decoders never panic on any input.

#![forbid(unsafe_code)]

pub mod frame;
pub mod index;
pub mod jsonl;
mod link;
pub mod reader;
mod utc;
pub mod writer;

use std::path::{Path, PathBuf};

pub use frame::udp_frame;
pub use index::{FileEntry, Index, Totals, format_table};
pub use reader::{LoadedFeed, RecordedPacket, load_feed, load_feed_bytes, original_latency};
pub use utc::{compact_utc, rfc3339_ms};
pub use writer::{Format, RecordingWriter, WriterConfig};

/// Everything that can go wrong with recording files; every variant that concerns
/// a file names it.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    /// An operating-system call on a file failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file's contents are not what its name or magic number promises.
    #[error("{}: {problem}", path.display())]
    Format { path: PathBuf, problem: String },
    /// A capture was read but none of its records is a ticklab data packet.
    #[error("{} holds no ticklab feed packets: {summary}", path.display())]
    NoFeedPackets { path: PathBuf, summary: String },
    /// Another process holds the directory's lock file.
    #[error("{} is locked: another recorder is writing to this directory", path.display())]
    Locked { path: PathBuf },
    /// A UDP payload larger than IPv4 can carry in one datagram.
    #[error("UDP payload of {0} bytes exceeds the IPv4 maximum of 65507 bytes")]
    PayloadTooLarge(usize),
    /// A file name prefix that would not give safe, sortable file names.
    #[error("invalid file prefix {0:?}: use 1-64 characters of A-Z a-z 0-9 . _ -")]
    BadPrefix(String),
}

pub type Result<T, E = RecordingError> = std::result::Result<T, E>;

/// Wraps an `io::Error` with the operation and the file it concerns.
pub(crate) fn io_err(
    op: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> RecordingError {
    let path = path.to_path_buf();
    move |source| RecordingError::Io { op, path, source }
}
