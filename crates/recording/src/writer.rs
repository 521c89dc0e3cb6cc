//! The recorder's file writer: feed packets into rotating pcap or JSON-lines files,
//! each listed in the directory's `index.json`. Rotation by size and age keeps files
//! manageable; buffering keeps up with the feed; a killed recorder loses at most the
//! unflushed buffer and leaves a torn tail that [`Index::load_or_rebuild`] repairs.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{BufWriter, ErrorKind, Write};
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pcap_file::pcap::PcapHeader;
use pcap_file::{DataLink, Endianness, TsResolution};
use ticklab_wire::{FeedPacket, Message, PacketKind};

use crate::frame::write_udp_frame;
pub use crate::index::Format;
use crate::index::{FileEntry, Index, PCAP_HEADER_LEN, PCAP_RECORD_HEADER_LEN, PCAP_SNAPLEN};
use crate::jsonl::TradeLine;
use crate::utc::compact_utc;
use crate::{RecordingError, Result, io_err};

/// Lock file inside the directory: one writer per directory, because a second one
/// would "repair" (truncate) the files the first is appending to.
pub const LOCK_FILE: &str = ".lock";

/// Buffer size of the open file: large enough that a burst of packets costs one
/// write(2), small enough that the loss on SIGKILL (at most this much) stays small.
const BUFFER: usize = 256 * 1024;

/// Where and how to record.
#[derive(Clone, Debug)]
pub struct WriterConfig {
    /// Directory of the files and `index.json`; created if missing.
    pub dir: PathBuf,
    /// First part of every file name: 1–64 of `A-Z a-z 0-9 . _ -`.
    pub prefix: String,
    pub format: Format,
    /// A file is closed before a record would take it past this size (a single
    /// record larger than this still gets a file of its own).
    pub max_bytes: u64,
    /// A file is closed once it has been open this long (on a write or a `tick`).
    pub max_age: Duration,
}

impl WriterConfig {
    /// Prefix `feed`, 1 GiB files, one hour per file.
    pub fn new(dir: impl Into<PathBuf>, format: Format) -> Self {
        Self {
            dir: dir.into(),
            prefix: "feed".into(),
            format,
            max_bytes: 1 << 30,
            max_age: Duration::from_secs(3_600),
        }
    }
}

/// The file being written.
struct OpenFile {
    out: BufWriter<File>,
    path: PathBuf,
    /// Caller's clock when the file was opened; the age check's origin.
    opened_ns: u64,
}

/// Writes feed packets into rotating files, keeping `index.json` current.
///
/// Times are the caller's: nanoseconds since the Unix epoch on the realtime clock,
/// passed to [`RecordingWriter::write_packet`] (the packet's receive time) and
/// [`RecordingWriter::tick`], so rotation is deterministic and testable.
///
/// The last entry of [`RecordingWriter::index`] is the open file while one is open
/// (`complete == false`); its counts include records still in the buffer.
pub struct RecordingWriter {
    config: WriterConfig,
    max_age_ns: u64,
    index: Index,
    current: Option<OpenFile>,
    /// Unrecoverable ranges reported before this writer opened its first file.
    pending_missing: Vec<[u64; 2]>,
    /// Whether this writer has opened a file: until then the index's last entry
    /// belongs to an earlier run.
    opened_any: bool,
    next_counter: u64,
    index_dirty: bool,
    packets_written: u64,
    bytes_written: u64,
    scratch: Vec<u8>,
    lines: Vec<(TradeLine, u64)>,
    /// Held for the writer's lifetime; the OS releases the lock when it closes.
    _lock: File,
}

impl RecordingWriter {
    /// Opens `config.dir` for recording: takes the directory lock, repairs and
    /// re-indexes what an earlier run left (see [`Index::load_or_rebuild`]; what was
    /// repaired is in `index().repaired` for the caller to log) and saves the index.
    /// No file is created until the first packet.
    pub fn open(config: WriterConfig) -> Result<Self> {
        validate_prefix(&config.prefix)?;
        let dir = config.dir.clone();
        fs::create_dir_all(&dir).map_err(io_err("create directory", &dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err("open", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(RecordingError::Locked { path: lock_path });
            }
            Err(TryLockError::Error(e)) => return Err(io_err("lock", &lock_path)(e)),
        }

        let index = Index::load_or_rebuild(&dir)?;
        index.save(&dir)?;
        // Continue the counter after the highest one on disk, so names stay unique
        // even if the clock steps back across a restart.
        let next_counter = index
            .files
            .iter()
            .filter_map(|f| file_counter(&f.name))
            .max()
            .map_or(1, |c| c.saturating_add(1));
        let max_age_ns = u64::try_from(config.max_age.as_nanos()).unwrap_or(u64::MAX);
        Ok(Self {
            config,
            max_age_ns,
            index,
            current: None,
            pending_missing: Vec::new(),
            opened_any: false,
            next_counter,
            index_dirty: false,
            packets_written: 0,
            bytes_written: 0,
            scratch: Vec::with_capacity(2048),
            lines: Vec::new(),
            _lock: lock,
        })
    }

    /// Records one received UDP datagram; `payload` is what the socket returned.
    ///
    /// pcap: every payload is written as a frame from `src` to `dst` — data,
    /// heartbeats, end-of-session, and payloads that are not feed packets at all
    /// (counted as `other_packets`). JSON lines: one line per trade of a data
    /// packet; anything else writes nothing. Fails for a payload over 65507 bytes
    /// (nothing written) and on I/O errors.
    pub fn write_packet(
        &mut self,
        recv_ts_ns: u64,
        src: SocketAddrV4,
        dst: SocketAddrV4,
        payload: &[u8],
    ) -> Result<()> {
        self.close_if_old(recv_ts_ns)?;
        let written = match self.config.format {
            Format::Pcap => self.write_pcap(recv_ts_ns, src, dst, payload)?,
            Format::Jsonl => self.write_jsonl(recv_ts_ns, payload)?,
        };
        self.packets_written += 1;
        self.bytes_written += written;
        Ok(())
    }

    fn write_pcap(
        &mut self,
        ts_ns: u64,
        src: SocketAddrV4,
        dst: SocketAddrV4,
        payload: &[u8],
    ) -> Result<u64> {
        self.scratch.clear();
        write_udp_frame(&mut self.scratch, src, dst, payload)?;
        let orig_len = self.scratch.len();
        // Frames over the snap length are cut, as a capture would; only payloads
        // near the 65507-byte maximum come close, never a feed packet.
        let incl_len = orig_len.min(PCAP_SNAPLEN as usize);
        let record_len = PCAP_RECORD_HEADER_LEN + incl_len as u64;
        self.make_room(record_len, ts_ns)?;

        let mut header = [0u8; PCAP_RECORD_HEADER_LEN as usize];
        let secs = u32::try_from(ts_ns / 1_000_000_000).unwrap_or(u32::MAX);
        let nanos = (ts_ns % 1_000_000_000) as u32;
        header[0..4].copy_from_slice(&secs.to_le_bytes());
        header[4..8].copy_from_slice(&nanos.to_le_bytes());
        header[8..12].copy_from_slice(&(incl_len as u32).to_le_bytes());
        header[12..16].copy_from_slice(&(orig_len as u32).to_le_bytes());
        let frame = self.scratch.get(..incl_len).unwrap_or(&[]);
        append(&mut self.current, &[&header, frame])?;
        self.index_dirty = true;

        // A cut frame no longer holds the feed packet; count it as the rebuild
        // (which sees only the file) will.
        let stored = (incl_len == orig_len).then_some(payload);
        if let Some(entry) = self.index.files.last_mut() {
            entry.add_pcap_record(ts_ns, record_len, stored);
        }
        Ok(record_len)
    }

    fn write_jsonl(&mut self, ts_ns: u64, payload: &[u8]) -> Result<u64> {
        let Ok(packet) = FeedPacket::parse(payload) else {
            return Ok(0);
        };
        if packet.kind != PacketKind::Data {
            return Ok(0);
        }
        self.scratch.clear();
        self.lines.clear();
        for (seq, message) in packet.messages() {
            let Ok(Message::Trade(trade)) = message else {
                continue;
            };
            let line = TradeLine::new(packet.header.session, seq, &trade, ts_ns);
            let start = self.scratch.len();
            serde_json::to_writer(&mut self.scratch, &line).map_err(|e| {
                RecordingError::Format {
                    path: self.config.dir.clone(),
                    problem: format!("cannot serialise a trade line: {e}"),
                }
            })?;
            self.scratch.push(b'\n');
            let len = (self.scratch.len() - start) as u64;
            self.lines.push((line, len));
        }
        if self.lines.is_empty() {
            return Ok(0);
        }
        let total = self.scratch.len() as u64;
        self.make_room(total, ts_ns)?;
        append(&mut self.current, &[&self.scratch])?;
        self.index_dirty = true;
        if let Some(entry) = self.index.files.last_mut() {
            for (line, len) in &self.lines {
                entry.add_trade_line(line, *len);
            }
        }
        Ok(total)
    }

    /// Closes the open file if a record of `len` bytes would take it past
    /// `max_bytes`, then makes sure a file is open.
    fn make_room(&mut self, len: u64, now_ns: u64) -> Result<()> {
        if self.current.is_some()
            && let Some(entry) = self.index.files.last()
            && entry.packets > 0
            && entry.bytes.saturating_add(len) > self.config.max_bytes
        {
            self.close_current()?;
        }
        if self.current.is_none() {
            self.open_new(now_ns)?;
        }
        Ok(())
    }

    fn open_new(&mut self, now_ns: u64) -> Result<()> {
        let dir = self.config.dir.clone();
        let ext = self.config.format.extension();
        let stamp = compact_utc(now_ns);
        let (name, path, file) = loop {
            let counter = self.next_counter;
            self.next_counter = self.next_counter.saturating_add(1);
            let name = format!("{}-{stamp}-{counter:06}.{ext}", self.config.prefix);
            let path = dir.join(&name);
            // create_new: never overwrite a recording, whatever the clock did.
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => break (name, path, file),
                Err(e) if e.kind() == ErrorKind::AlreadyExists && counter < u64::MAX => continue,
                Err(e) => return Err(io_err("create", &path)(e)),
            }
        };
        let mut out = BufWriter::with_capacity(BUFFER, file);
        let mut entry = FileEntry::new(name, self.config.format);
        if self.config.format == Format::Pcap {
            // Flushed at once: a file that exists is a valid (maybe empty) capture.
            out.write_all(&pcap_header())
                .and_then(|()| out.flush())
                .map_err(io_err("write", &path))?;
            entry.bytes = PCAP_HEADER_LEN;
        }
        for [a, b] in std::mem::take(&mut self.pending_missing) {
            entry.add_missing(a, b);
        }
        self.index.files.push(entry);
        self.opened_any = true;
        self.current = Some(OpenFile {
            out,
            path,
            opened_ns: now_ns,
        });
        self.save_index()
    }

    /// Flushes, fsyncs and marks the open file complete, then saves the index.
    fn close_current(&mut self) -> Result<()> {
        let Some(mut cur) = self.current.take() else {
            return Ok(());
        };
        self.index_dirty = true;
        cur.out.flush().map_err(io_err("write", &cur.path))?;
        cur.out
            .get_ref()
            .sync_all()
            .map_err(io_err("fsync", &cur.path))?;
        if let Some(entry) = self.index.files.last_mut() {
            entry.complete = true;
        }
        self.save_index()
    }

    fn close_if_old(&mut self, now_ns: u64) -> Result<()> {
        match &self.current {
            Some(cur) if now_ns.saturating_sub(cur.opened_ns) >= self.max_age_ns => {
                self.close_current()
            }
            _ => Ok(()),
        }
    }

    fn save_index(&mut self) -> Result<()> {
        self.index.save(&self.config.dir)?;
        self.index_dirty = false;
        Ok(())
    }

    /// Closes the open file if it has reached `max_age` at `now_ns`. Call it
    /// periodically (say every second) so an idle feed's file still closes.
    pub fn tick(&mut self, now_ns: u64) -> Result<()> {
        self.close_if_old(now_ns)
    }

    /// Hands buffered records to the OS (they then survive a SIGKILL, not a power
    /// loss) and saves the index if it changed. Call it every ~100 ms.
    pub fn flush(&mut self) -> Result<()> {
        if let Some(cur) = self.current.as_mut()
            && let Err(e) = cur.out.flush()
        {
            // BufWriter keeps what it could not write; writing on after a partial
            // flush could tear a record in the middle of the file.
            let path = cur.path.clone();
            self.current = None;
            return Err(io_err("write", &path)(e));
        }
        if self.index_dirty {
            self.save_index()?;
        }
        Ok(())
    }

    /// Records that sequence numbers `seq..seq+count` could not be obtained (the
    /// retransmission server no longer had them). Goes into the open file's entry,
    /// or, while none is open, the last file this writer wrote; before its first
    /// file, into that file. Saved with the next flush, open or close.
    pub fn mark_unrecoverable(&mut self, seq: u64, count: u64) {
        if count == 0 {
            return;
        }
        let last = seq.saturating_add(count - 1);
        match self.index.files.last_mut() {
            Some(entry) if self.opened_any => {
                entry.add_missing(seq, last);
                self.index_dirty = true;
            }
            _ => self.pending_missing.push([seq, last]),
        }
    }

    /// Closes the open file, so files map to recording periods; the next packet
    /// opens a new one.
    pub fn pause(&mut self) -> Result<()> {
        self.close_current()
    }

    /// Closes the open file and saves the index.
    pub fn close(mut self) -> Result<()> {
        self.close_current()?;
        if self.index_dirty {
            self.save_index()?;
        }
        Ok(())
    }

    /// The directory's catalogue, the open file's entry last.
    pub fn index(&self) -> &Index {
        &self.index
    }

    /// The file being written, if any.
    pub fn current_file(&self) -> Option<&Path> {
        self.current.as_ref().map(|c| c.path.as_path())
    }

    /// Packets given to `write_packet` (successfully) since `open`.
    pub fn packets_written(&self) -> u64 {
        self.packets_written
    }

    /// Record bytes written since `open` (file headers not included).
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    pub fn config(&self) -> &WriterConfig {
        &self.config
    }
}

impl Drop for RecordingWriter {
    /// A writer dropped without `close` (an early return, a panic elsewhere) still
    /// flushes and indexes its file; errors cannot be reported here, and a torn
    /// file is repaired on the next start anyway.
    fn drop(&mut self) {
        let _ = self.close_current();
    }
}

/// Writes the parts of one record to the open file. On failure the file is
/// abandoned (left `complete: false`, repaired on the next start) rather than
/// written on after a partial record, which would make everything behind it
/// unreadable.
fn append(current: &mut Option<OpenFile>, parts: &[&[u8]]) -> Result<()> {
    let Some(cur) = current.as_mut() else {
        return Ok(());
    };
    if let Err(e) = parts.iter().try_for_each(|p| cur.out.write_all(p)) {
        let path = cur.path.clone();
        *current = None;
        return Err(io_err("write", &path)(e));
    }
    Ok(())
}

/// The 24-byte global header of the writer's files: nanosecond magic, Ethernet,
/// snap length 65535, little-endian on every host (so files are byte-identical
/// wherever they were recorded).
pub(crate) fn pcap_header() -> Vec<u8> {
    let header = PcapHeader {
        snaplen: PCAP_SNAPLEN,
        datalink: DataLink::ETHERNET,
        ts_resolution: TsResolution::NanoSecond,
        endianness: Endianness::Little,
        ..PcapHeader::default()
    };
    let mut out = Vec::with_capacity(PCAP_HEADER_LEN as usize);
    // Writing into a Vec cannot fail.
    let _ = header.write_to(&mut out);
    out
}

fn validate_prefix(prefix: &str) -> Result<()> {
    let ok = (1..=64).contains(&prefix.len())
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(RecordingError::BadPrefix(prefix.to_string()))
    }
}

/// The counter of a writer file name (`prefix-time-000042.pcap` → 42).
fn file_counter(name: &str) -> Option<u64> {
    let (stem, _) = name.rsplit_once('.')?;
    let (_, counter) = stem.rsplit_once('-')?;
    counter.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_nanosecond_ethernet_little_endian() {
        let h = pcap_header();
        assert_eq!(h.len(), 24);
        assert_eq!(&h[..4], &0xA1B2_3C4Du32.to_le_bytes());
        assert_eq!(&h[16..20], &65_535u32.to_le_bytes());
        assert_eq!(&h[20..24], &1u32.to_le_bytes());
    }

    #[test]
    fn names_and_prefixes() {
        assert_eq!(
            file_counter("feed-20240501T000000.000000000Z-000042.pcap"),
            Some(42)
        );
        assert_eq!(file_counter("other.pcap"), None);
        assert!(validate_prefix("feed-a_1.x").is_ok());
        for bad in ["", "a/b", "a b", "..\u{e9}"] {
            assert!(validate_prefix(bad).is_err(), "{bad}");
        }
    }
}
