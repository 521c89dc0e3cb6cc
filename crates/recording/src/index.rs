//! The catalogue of a recording directory: `index.json`, one [`FileEntry`] per
//! recording file (sequence range, counts, times, ranges the recorder could not
//! obtain). The files are the ground truth; the index is rebuilt from them after a
//! crash, torn tails repaired first, and rendered by `ticklab recordings ls`.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, ErrorKind, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use ticklab_wire::{FeedPacket, Message, PacketKind};

use crate::jsonl::TradeLine;
use crate::utc::rfc3339_ms;
use crate::{RecordingError, Result, io_err, link};

/// Name of the index file inside a recording directory.
pub const INDEX_FILE: &str = "index.json";
/// Version written into `index.json`; bump on incompatible changes.
pub const INDEX_VERSION: u32 = 1;

/// Bytes of a pcap global header.
pub(crate) const PCAP_HEADER_LEN: u64 = 24;
/// Bytes of a pcap record header.
pub(crate) const PCAP_RECORD_HEADER_LEN: u64 = 16;
/// Snap length of the files the writer produces (the classic tcpdump value).
pub const PCAP_SNAPLEN: u32 = 65_535;

/// A recording file's format, chosen by the writer and told by the file extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// pcap, nanosecond timestamps, Ethernet frames (see [`crate::frame`]).
    Pcap,
    /// JSON lines, one trade per line (see [`crate::jsonl`]).
    Jsonl,
}

impl Format {
    /// The file extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Pcap => "pcap",
            Format::Jsonl => "jsonl",
        }
    }

    fn from_file_name(name: &str) -> Option<Self> {
        let (_, ext) = name.rsplit_once('.')?;
        match ext {
            "pcap" => Some(Format::Pcap),
            "jsonl" => Some(Format::Jsonl),
            _ => None,
        }
    }
}

/// What one recording file holds.
///
/// A "packet" is a record of the file: a frame in a pcap (feed data, heartbeats,
/// end-of-session and payloads that are not feed packets alike, so it matches what
/// tshark counts), a trade line in a JSON-lines file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileEntry {
    /// File name inside the directory.
    pub name: String,
    pub format: Format,
    /// Lowest sequence number of any data packet's first message.
    pub first_seq: Option<u64>,
    /// Highest sequence number of any message (seq + count − 1 of a data packet).
    pub last_seq: Option<u64>,
    /// Records in the file.
    pub packets: u64,
    /// Trade messages in the file.
    pub trades: u64,
    /// Records whose payload is not a ticklab feed packet (pcap) or not a trade line.
    #[serde(default)]
    pub other_packets: u64,
    /// File size in bytes, headers included.
    pub bytes: u64,
    /// Receive time of the first record, ns since the Unix epoch.
    pub start_ns: Option<u64>,
    /// Receive time of the last record.
    pub end_ns: Option<u64>,
    /// Inclusive sequence ranges the recorder could not obtain, sorted and merged.
    #[serde(default)]
    pub missing: Vec<[u64; 2]>,
    /// Session names seen, in order of first appearance.
    #[serde(default)]
    pub sessions: Vec<String>,
    /// False while the writer still has the file open.
    pub complete: bool,
}

impl FileEntry {
    pub(crate) fn new(name: String, format: Format) -> Self {
        Self {
            name,
            format,
            first_seq: None,
            last_seq: None,
            packets: 0,
            trades: 0,
            other_packets: 0,
            bytes: 0,
            start_ns: None,
            end_ns: None,
            missing: Vec::new(),
            sessions: Vec::new(),
            complete: false,
        }
    }

    fn add_time(&mut self, ts_ns: u64) {
        if self.start_ns.is_none() {
            self.start_ns = Some(ts_ns);
        }
        self.end_ns = Some(ts_ns);
    }

    fn add_session(&mut self, session: String) {
        if !self.sessions.contains(&session) {
            self.sessions.push(session);
        }
    }

    fn add_seq_range(&mut self, first: u64, last: u64) {
        self.first_seq = Some(self.first_seq.map_or(first, |f| f.min(first)));
        self.last_seq = Some(self.last_seq.map_or(last, |l| l.max(last)));
    }

    /// Accounts one pcap record of `record_len` bytes whose UDP payload is
    /// `payload` (`None` when the frame carries no complete UDP payload). The writer
    /// and the rebuild both come through here, so they cannot disagree.
    pub(crate) fn add_pcap_record(&mut self, ts_ns: u64, record_len: u64, payload: Option<&[u8]>) {
        self.packets += 1;
        self.bytes += record_len;
        self.add_time(ts_ns);
        let Some(packet) = payload.and_then(|p| FeedPacket::parse(p).ok()) else {
            self.other_packets += 1;
            return;
        };
        self.add_session(packet.header.session.as_str());
        if packet.kind == PacketKind::Data && packet.header.count > 0 {
            let first = packet.header.seq;
            let last = first.saturating_add(u64::from(packet.header.count) - 1);
            self.add_seq_range(first, last);
            let trades = packet
                .messages()
                .filter(|(_, m)| matches!(m, Ok(Message::Trade(_))))
                .count();
            self.trades += trades as u64;
        }
    }

    /// Accounts one JSON line of `line_len` bytes (newline included).
    pub(crate) fn add_trade_line(&mut self, line: &TradeLine, line_len: u64) {
        self.packets += 1;
        self.trades += 1;
        self.bytes += line_len;
        self.add_time(line.recv_ts_ns);
        self.add_session(line.session.clone());
        self.add_seq_range(line.seq, line.seq);
    }

    /// Adds the inclusive range `first..=last` to `missing`, keeping it sorted and
    /// merging overlapping or adjacent ranges.
    pub fn add_missing(&mut self, first: u64, last: u64) {
        let (first, last) = (first.min(last), first.max(last));
        self.missing.push([first, last]);
        self.missing.sort_unstable();
        let mut merged: Vec<[u64; 2]> = Vec::with_capacity(self.missing.len());
        for [a, b] in self.missing.drain(..) {
            match merged.last_mut() {
                Some(prev) if a <= prev[1].saturating_add(1) => prev[1] = prev[1].max(b),
                _ => merged.push([a, b]),
            }
        }
        self.missing = merged;
    }

    /// How many sequence numbers `missing` covers.
    pub fn missing_count(&self) -> u64 {
        self.missing
            .iter()
            .map(|[a, b]| b.saturating_sub(*a).saturating_add(1))
            .fold(0, u64::saturating_add)
    }
}

/// Sums over all files of an index.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub files: usize,
    pub packets: u64,
    pub trades: u64,
    pub bytes: u64,
    pub missing: u64,
}

/// The catalogue of one recording directory, oldest file first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    pub version: u32,
    pub files: Vec<FileEntry>,
    /// Files whose torn tail [`Index::load_or_rebuild`] cut off: (name, bytes
    /// dropped). Not stored; for the caller to log.
    #[serde(skip)]
    pub repaired: Vec<(String, u64)>,
    /// Files (or an unreadable `index.json`) left alone because they are not
    /// recordings this crate can account for: (name, why). Not stored.
    #[serde(skip)]
    pub ignored: Vec<(String, String)>,
}

impl Index {
    pub(crate) fn empty() -> Self {
        Self {
            version: INDEX_VERSION,
            ..Self::default()
        }
    }

    /// The entry of file `name`.
    pub fn find(&self, name: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.name == name)
    }

    pub fn totals(&self) -> Totals {
        self.files.iter().fold(
            Totals {
                files: self.files.len(),
                ..Totals::default()
            },
            |t, f| Totals {
                files: t.files,
                packets: t.packets + f.packets,
                trades: t.trades + f.trades,
                bytes: t.bytes + f.bytes,
                missing: t.missing.saturating_add(f.missing_count()),
            },
        )
    }

    /// On recorder start: repairs every `*.pcap` / `*.jsonl` in `dir` (cuts a torn
    /// last record off) and recomputes its entry from the contents, carrying over
    /// `missing` ranges from the old `index.json` (the only thing the files cannot
    /// tell). All entries come back complete: a writer always starts a new file.
    ///
    /// This truncates files: call it only when no writer is active on `dir`
    /// ([`crate::RecordingWriter::open`] holds a lock for that). Read-only callers
    /// use [`Index::read`].
    pub fn load_or_rebuild(dir: &Path) -> Result<Index> {
        Self::rebuild(dir, true)
    }

    /// For `recordings ls`: `index.json` as stored, or, when there is none, the
    /// entries computed from the files without modifying them.
    pub fn read(dir: &Path) -> Result<Index> {
        match read_index_file(dir)? {
            Some(Ok(index)) => Ok(index),
            Some(Err(problem)) => Err(RecordingError::Format {
                path: dir.join(INDEX_FILE),
                problem,
            }),
            None => Self::rebuild(dir, false),
        }
    }

    fn rebuild(dir: &Path, repair: bool) -> Result<Index> {
        let mut index = Index::empty();
        let mut previous_missing: HashMap<String, Vec<[u64; 2]>> = HashMap::new();
        match read_index_file(dir)? {
            Some(Ok(old)) => {
                for entry in old.files {
                    previous_missing.insert(entry.name, entry.missing);
                }
            }
            Some(Err(problem)) => index.ignored.push((
                INDEX_FILE.to_string(),
                format!("{problem}; its missing ranges are lost"),
            )),
            None => {}
        }

        let mut names = Vec::new();
        let listing = fs::read_dir(dir).map_err(io_err("list", dir))?;
        for item in listing {
            let item = item.map_err(io_err("list", dir))?;
            let is_file = item.file_type().map(|t| t.is_file()).unwrap_or(false);
            let Ok(name) = item.file_name().into_string() else {
                continue;
            };
            if is_file && !name.starts_with('.') && Format::from_file_name(&name).is_some() {
                names.push(name);
            }
        }
        // Writer names start with the prefix and a fixed-width UTC time, so name
        // order is time order.
        names.sort();

        for name in names {
            let Some(format) = Format::from_file_name(&name) else {
                continue;
            };
            let path = dir.join(&name);
            let scanned = match format {
                Format::Pcap => scan_pcap(&path, &name, repair)?,
                Format::Jsonl => scan_jsonl(&path, &name, repair)?,
            };
            match scanned {
                Scan::Entry { mut entry, dropped } => {
                    if dropped > 0 && repair {
                        index.repaired.push((name.clone(), dropped));
                    }
                    entry.missing = previous_missing.remove(&name).unwrap_or_default();
                    entry.complete = true;
                    index.files.push(entry);
                }
                Scan::NotOurs(why) => index.ignored.push((name, why)),
            }
        }
        Ok(index)
    }

    /// Writes `dir/index.json` atomically: a temporary file, fsync, rename, then an
    /// fsync of the directory, so a crash leaves either the old or the new index.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let tmp = dir.join(".index.json.tmp");
        let path = dir.join(INDEX_FILE);
        let file = File::create(&tmp).map_err(io_err("create", &tmp))?;
        let mut out = BufWriter::new(file);
        serde_json::to_writer_pretty(&mut out, self).map_err(|e| RecordingError::Format {
            path: tmp.clone(),
            problem: format!("cannot serialise the index: {e}"),
        })?;
        out.write_all(b"\n").map_err(io_err("write", &tmp))?;
        let file = out
            .into_inner()
            .map_err(|e| io_err("write", &tmp)(e.into_error()))?;
        file.sync_all().map_err(io_err("fsync", &tmp))?;
        fs::rename(&tmp, &path).map_err(io_err("rename into place", &path))?;
        // The rename is durable only once the directory is synced. Not every
        // platform can fsync a directory; the index is then as durable as it gets.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// `Some(Err(problem))` when `index.json` exists but does not parse.
fn read_index_file(dir: &Path) -> Result<Option<Result<Index, String>>> {
    let path = dir.join(INDEX_FILE);
    match fs::read(&path) {
        Ok(bytes) => Ok(Some(
            serde_json::from_slice::<Index>(&bytes)
                .map_err(|e| format!("unreadable {INDEX_FILE}: {e}")),
        )),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", &path)(e)),
    }
}

enum Scan {
    /// The recomputed entry and how many torn bytes were (or would be) cut off.
    Entry { entry: FileEntry, dropped: u64 },
    /// Not a file this crate can account for.
    NotOurs(String),
}

/// Byte order and timestamp unit of a pcap file, from its magic number.
#[derive(Clone, Copy)]
pub(crate) struct PcapKind {
    pub big_endian: bool,
    pub nanos: bool,
}

impl PcapKind {
    pub(crate) fn from_magic(magic: [u8; 4]) -> Option<Self> {
        match u32::from_be_bytes(magic) {
            0xA1B2_C3D4 => Some(Self {
                big_endian: true,
                nanos: false,
            }),
            0xA1B2_3C4D => Some(Self {
                big_endian: true,
                nanos: true,
            }),
            0xD4C3_B2A1 => Some(Self {
                big_endian: false,
                nanos: false,
            }),
            0x4D3C_B2A1 => Some(Self {
                big_endian: false,
                nanos: true,
            }),
            _ => None,
        }
    }

    pub(crate) fn u32_at(self, buf: &[u8], at: usize) -> u32 {
        let mut b = [0u8; 4];
        if let Some(src) = buf.get(at..at + 4) {
            b.copy_from_slice(src);
        }
        if self.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    }

    /// Nanoseconds since the epoch of a record's (seconds, fraction) pair.
    pub(crate) fn ts_ns(self, secs: u32, frac: u32) -> u64 {
        let frac_ns = if self.nanos {
            u64::from(frac)
        } else {
            u64::from(frac) * 1_000
        };
        u64::from(secs) * 1_000_000_000 + frac_ns
    }
}

/// Cuts `path` to `len` bytes and syncs, so the repair survives a power loss.
fn truncate(path: &Path, len: u64) -> Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err("open for repair", path))?;
    file.set_len(len).map_err(io_err("truncate", path))?;
    file.sync_all().map_err(io_err("fsync", path))
}

/// Walks a pcap's 16-byte record headers. A header whose captured length exceeds
/// the snap length or the bytes left ends the walk: that record (and anything
/// after it) is the torn tail a killed writer leaves.
fn scan_pcap(path: &Path, name: &str, repair: bool) -> Result<Scan> {
    let file = File::open(path).map_err(io_err("open", path))?;
    let len = file.metadata().map_err(io_err("stat", path))?.len();
    let mut input = BufReader::with_capacity(1 << 16, file);
    let mut entry = FileEntry::new(name.to_string(), Format::Pcap);

    if len < PCAP_HEADER_LEN {
        // A writer killed right after creating the file: nothing was recorded.
        // Give it a fresh header so it is a valid, empty capture again.
        if repair {
            let header = crate::writer::pcap_header();
            fs::write(path, header).map_err(io_err("rewrite header of", path))?;
        }
        entry.bytes = PCAP_HEADER_LEN;
        return Ok(Scan::Entry {
            entry,
            dropped: len,
        });
    }
    let mut header = [0u8; PCAP_HEADER_LEN as usize];
    input
        .read_exact(&mut header)
        .map_err(io_err("read", path))?;
    let Some(kind) = PcapKind::from_magic([header[0], header[1], header[2], header[3]]) else {
        return Ok(Scan::NotOurs("not a pcap file (bad magic number)".into()));
    };
    let snaplen = match kind.u32_at(&header, 16) {
        0 => u32::MAX,
        n => n,
    };
    let linktype = kind.u32_at(&header, 20);
    entry.bytes = PCAP_HEADER_LEN;

    let mut offset = PCAP_HEADER_LEN;
    let mut data = Vec::new();
    let mut record = [0u8; PCAP_RECORD_HEADER_LEN as usize];
    while len - offset >= PCAP_RECORD_HEADER_LEN {
        input
            .read_exact(&mut record)
            .map_err(io_err("read", path))?;
        let incl_len = kind.u32_at(&record, 8);
        let left = len - offset - PCAP_RECORD_HEADER_LEN;
        if incl_len > snaplen || u64::from(incl_len) > left {
            break;
        }
        data.resize(incl_len as usize, 0);
        input.read_exact(&mut data).map_err(io_err("read", path))?;
        let ts = kind.ts_ns(kind.u32_at(&record, 0), kind.u32_at(&record, 4));
        let payload = link::udp_payload(linktype, &data).ok();
        let record_len = PCAP_RECORD_HEADER_LEN + u64::from(incl_len);
        entry.add_pcap_record(ts, record_len, payload);
        offset += record_len;
    }
    let dropped = len - offset;
    if dropped > 0 && repair {
        truncate(path, offset)?;
    }
    entry.bytes = offset;
    Ok(Scan::Entry { entry, dropped })
}

/// Reads a JSON-lines file line by line; whatever follows the last newline is a
/// torn line.
fn scan_jsonl(path: &Path, name: &str, repair: bool) -> Result<Scan> {
    let file = File::open(path).map_err(io_err("open", path))?;
    let len = file.metadata().map_err(io_err("stat", path))?.len();
    let mut input = BufReader::with_capacity(1 << 16, file);
    let mut entry = FileEntry::new(name.to_string(), Format::Jsonl);
    let mut offset = 0u64;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = input
            .read_until(b'\n', &mut line)
            .map_err(io_err("read", path))?;
        if n == 0 || line.last() != Some(&b'\n') {
            break;
        }
        offset += n as u64;
        match TradeLine::parse(&line) {
            Some(trade) => entry.add_trade_line(&trade, n as u64),
            None if line.trim_ascii().is_empty() => entry.bytes += n as u64,
            None => {
                entry.other_packets += 1;
                entry.bytes += n as u64;
            }
        }
    }
    let dropped = len.saturating_sub(offset);
    if dropped > 0 && repair {
        truncate(path, offset)?;
    }
    entry.bytes = offset;
    Ok(Scan::Entry { entry, dropped })
}

/// The `ticklab recordings ls DIR` table: one row per file and a totals line.
pub fn format_table(index: &Index) -> String {
    const HEADERS: [&str; 8] = [
        "NAME",
        "FIRST-SEQ",
        "LAST-SEQ",
        "PACKETS",
        "BYTES",
        "START",
        "END",
        "MISSING",
    ];
    let opt = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    let time = |v: Option<u64>| v.map_or_else(|| "-".to_string(), rfc3339_ms);
    let mut rows: Vec<[String; 8]> = index
        .files
        .iter()
        .map(|f| {
            let name = if f.complete {
                f.name.clone()
            } else {
                format!("{} (open)", f.name)
            };
            [
                name,
                opt(f.first_seq),
                opt(f.last_seq),
                f.packets.to_string(),
                f.bytes.to_string(),
                time(f.start_ns),
                time(f.end_ns),
                missing_text(&f.missing),
            ]
        })
        .collect();
    rows.insert(0, HEADERS.map(String::from));

    let mut widths = [0usize; 8];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    // Numbers right-aligned, text left-aligned.
    let right = [false, true, true, true, true, false, false, false];
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .zip(right)
            .map(|((cell, w), r)| {
                if r {
                    format!("{cell:>w$}")
                } else {
                    format!("{cell:<w$}")
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    let t = index.totals();
    out.push_str(&format!(
        "total: {} files, {} packets, {} trades, {} bytes, {} sequence numbers missing\n",
        t.files, t.packets, t.trades, t.bytes, t.missing
    ));
    out
}

/// `-`, or up to three ranges (`5-9,12`) and how many more there are.
fn missing_text(missing: &[[u64; 2]]) -> String {
    if missing.is_empty() {
        return "-".into();
    }
    let shown: Vec<String> = missing
        .iter()
        .take(3)
        .map(|[a, b]| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect();
    let mut text = shown.join(",");
    if missing.len() > 3 {
        text.push_str(&format!(",+{} more", missing.len() - 3));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_ranges_merge() {
        let mut e = FileEntry::new("x".into(), Format::Pcap);
        e.add_missing(10, 12);
        e.add_missing(1, 2);
        e.add_missing(13, 15);
        e.add_missing(5, 3);
        e.add_missing(11, 11);
        assert_eq!(e.missing, vec![[1, 5], [10, 15]]);
        assert_eq!(e.missing_count(), 11);
        e.add_missing(0, u64::MAX);
        assert_eq!(e.missing, vec![[0, u64::MAX]]);
        assert_eq!(e.missing_count(), u64::MAX);
    }

    #[test]
    fn table_has_headers_rows_and_totals() {
        let mut index = Index::empty();
        let mut e = FileEntry::new("feed-1.pcap".into(), Format::Pcap);
        e.first_seq = Some(1);
        e.last_seq = Some(100);
        e.packets = 10;
        e.trades = 100;
        e.bytes = 5000;
        e.start_ns = Some(1_714_566_896_789_000_123);
        e.end_ns = Some(1_714_566_897_000_000_000);
        e.missing = vec![[5, 9], [12, 12], [20, 21], [30, 30]];
        e.complete = true;
        index.files.push(e);
        index
            .files
            .push(FileEntry::new("feed-2.pcap".into(), Format::Pcap));
        let table = format_table(&index);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(lines[0].starts_with("NAME"));
        assert!(lines[0].contains("FIRST-SEQ  LAST-SEQ  PACKETS  BYTES  START"));
        assert!(lines[1].contains("2024-05-01T12:34:56.789Z"));
        assert!(lines[1].contains("5-9,12,20-21,+1 more"));
        assert!(lines[2].contains("feed-2.pcap (open)"));
        assert_eq!(
            lines[3],
            "total: 2 files, 10 packets, 100 trades, 5000 bytes, 9 sequence numbers missing"
        );
    }
}
