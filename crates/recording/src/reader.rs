//! Replay's input: any pcap or pcapng capture (or a JSON-lines recording) turned
//! into the ticklab data packets it holds, in sequence order, de-duplicated, with a
//! non-decreasing send schedule. Everything else in the file is counted by reason,
//! so an empty result can say why.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use pcap_file::pcap::PcapReader;
use pcap_file::pcapng::PcapNgReader;
use pcap_file::pcapng::blocks::Block;
use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
use pcap_file::{Endianness, TsResolution};
use ticklab_wire::{FeedPacket, Message, PacketKind, Session};

use crate::jsonl::TradeLine;
use crate::link::{self, reason};
use crate::{RecordingError, Result, io_err};

pub use crate::link::reason as skip_reason;

/// One feed data packet and when to send it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedPacket {
    /// Capture time in ns since the Unix epoch, lowered where needed so the
    /// schedule never goes backwards (see [`load_feed`]).
    pub ts_ns: u64,
    /// The UDP payload: a ticklab data packet, exactly as received.
    pub payload: Vec<u8>,
}

/// What [`load_feed`] found in a file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadedFeed {
    /// Data packets ordered by (session in order of first appearance, sequence).
    pub packets: Vec<RecordedPacket>,
    /// Records not kept, by reason (the keys are [`skip_reason`] constants).
    pub skipped: BTreeMap<&'static str, u64>,
    /// Records (frames, or JSON lines) in the file.
    pub total_records: u64,
}

/// Reads `path` for replay. Accepted, told apart by their first bytes:
///
/// - pcap, microsecond or nanosecond magic, either byte order;
/// - pcapng, every section and interface, `if_tsresol` (default microseconds) and
///   `if_tsoffset` honoured;
/// - a JSON-lines recording of [`crate::RecordingWriter`]: one data packet per
///   trade, sent at its receive time.
///
/// Link types: Ethernet (802.1Q/QinQ tags), Linux cooked SLL and SLL2, raw IP
/// (101, 228, 229), BSD loopback; IPv4 and IPv6. A UDP payload is kept when it is a
/// ticklab data packet with at least one message. Exact duplicates by (session,
/// sequence) keep the first copy in file order.
///
/// Packets are put in sequence order, not file order: a packet the recorder got
/// from the retransmission server sits in the file after packets that follow it
/// in sequence. Its capture time is therefore later than theirs, and replaying on
/// raw times would either reorder it or make the schedule go backwards. Each
/// packet's time becomes the minimum of its own and every later packet's (a
/// suffix minimum): the schedule is non-decreasing, and a recovered packet goes
/// out just before the packets that follow it, as the exchange first sent it.
///
/// Errors name the file: it cannot be opened, is not a capture, or holds no feed
/// packet (the message then counts what it held instead). A record that cannot be
/// read stops reading (no later record can be located in a pcap after a bad one);
/// what was read before is kept and the stop is counted in `skipped`.
pub fn load_feed(path: impl AsRef<Path>) -> Result<LoadedFeed> {
    let path = path.as_ref();
    let mut file = File::open(path).map_err(io_err("open", path))?;
    let mut magic = [0u8; 4];
    let n = read_up_to(&mut file, &mut magic).map_err(io_err("read", path))?;
    file.seek(SeekFrom::Start(0))
        .map_err(io_err("seek", path))?;
    load(path, &magic[..n], file)
}

/// [`load_feed`] for a capture already in memory (a download); `name` stands for
/// the file in error messages.
pub fn load_feed_bytes(name: &str, bytes: &[u8]) -> Result<LoadedFeed> {
    load(Path::new(name), bytes.get(..4).unwrap_or(bytes), bytes)
}

fn load<R: Read>(path: &Path, magic: &[u8], input: R) -> Result<LoadedFeed> {
    let mut collector = Collector::default();
    let format_err = |problem: String| RecordingError::Format {
        path: path.to_path_buf(),
        problem,
    };
    let magic_word = <[u8; 4]>::try_from(magic).map(u32::from_be_bytes).ok();
    match magic_word {
        _ if magic.is_empty() => return Err(format_err("empty file".into())),
        Some(0xA1B2_C3D4 | 0xA1B2_3C4D | 0xD4C3_B2A1 | 0x4D3C_B2A1 | 0x0A0D_0D0A) => {
            walk_capture(magic, input, &mut collector).map_err(format_err)?
        }
        _ if magic.trim_ascii_start().first() == Some(&b'{') => {
            read_jsonl(path, input, &mut collector)?
        }
        _ => {
            return Err(format_err(format!(
                "not a pcap, pcapng or JSON-lines file (starts with {magic:02x?})"
            )));
        }
    }
    collector.finish(path)
}

/// Per trade: the packet's (scheduled) time minus the trade's send time, when not
/// negative. On a recording that is the one-way latency the recorder saw, to
/// compare with what a replayed run measures.
pub fn original_latency(feed: &LoadedFeed) -> Vec<u64> {
    let mut out = Vec::new();
    for packet in &feed.packets {
        let Ok(parsed) = FeedPacket::parse(&packet.payload) else {
            continue;
        };
        for (_, message) in parsed.messages() {
            if let Ok(Message::Trade(trade)) = message
                && packet.ts_ns >= trade.send_ts_ns
            {
                out.push(packet.ts_ns - trade.send_ts_ns);
            }
        }
    }
    out
}

/// Fills `buf` as far as the file allows (a file may be shorter than a magic).
fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

struct Candidate {
    session_rank: usize,
    seq: u64,
    ts_ns: u64,
    payload: Vec<u8>,
}

/// What a walk through a capture file hands over, record by record.
pub trait CaptureVisitor {
    /// One frame of pcap link type `linktype`, captured at `ts_ns` (Unix ns).
    fn frame(&mut self, linktype: u32, ts_ns: u64, data: &[u8]);
    /// A record that could not be used, and why (a [`skip_reason`]).
    fn skip(&mut self, why: &'static str);
    /// A pcapng Decryption Secrets Block: its secrets type (0x544c534b "TLSK" for a
    /// TLS key log) and data.
    fn secrets(&mut self, _kind: u32, _data: &[u8]) {}
}

/// Secrets type of a TLS key log in a pcapng Decryption Secrets Block.
pub const SECRETS_TLS_KEY_LOG: u32 = 0x544c_534b;
/// pcapng block type of a Decryption Secrets Block.
pub const DECRYPTION_SECRETS_BLOCK: u32 = 0x0000_000A;

/// Walks a pcap or pcapng stream (told apart by `magic`, its first four bytes, which
/// `input` must still start with), every section and interface, handing each frame
/// to `visitor` with its time in ns (pcap µs or ns; pcapng `if_tsresol` and
/// `if_tsoffset` honoured). A record that cannot be read stops the walk (no later
/// record can be located after a bad one) and is reported through `skip`. Errors
/// name what is wrong with the file as a whole.
pub fn walk_capture<R: Read>(
    magic: &[u8],
    input: R,
    visitor: &mut impl CaptureVisitor,
) -> Result<(), String> {
    match <[u8; 4]>::try_from(magic).map(u32::from_be_bytes).ok() {
        Some(0xA1B2_C3D4 | 0xA1B2_3C4D | 0xD4C3_B2A1 | 0x4D3C_B2A1) => read_pcap(input, visitor),
        Some(0x0A0D_0D0A) => read_pcapng(input, visitor),
        _ => Err(format!(
            "not a pcap or pcapng file (starts with {magic:02x?})"
        )),
    }
}

#[derive(Default)]
struct Collector {
    candidates: Vec<Candidate>,
    sessions: Vec<Session>,
    skipped: BTreeMap<&'static str, u64>,
    total_records: u64,
}

impl CaptureVisitor for Collector {
    fn skip(&mut self, why: &'static str) {
        if why == reason::NO_INTERFACE {
            // A packet record, if one that cannot be read.
            self.total_records += 1;
        }
        *self.skipped.entry(why).or_insert(0) += 1;
    }

    /// One captured frame of link type `linktype`.
    fn frame(&mut self, linktype: u32, ts_ns: u64, data: &[u8]) {
        self.total_records += 1;
        match link::udp_payload(linktype, data) {
            Ok(payload) => self.payload(ts_ns, payload),
            Err(why) => self.skip(why),
        }
    }
}

impl Collector {
    fn payload(&mut self, ts_ns: u64, payload: &[u8]) {
        let packet = match FeedPacket::parse(payload) {
            Ok(p) => p,
            Err(_) => return self.skip(reason::NOT_FEED),
        };
        if packet.kind != PacketKind::Data || packet.header.count == 0 {
            return self.skip(reason::CONTROL);
        }
        let session = packet.header.session;
        let session_rank = match self.sessions.iter().position(|s| *s == session) {
            Some(rank) => rank,
            None => {
                self.sessions.push(session);
                self.sessions.len() - 1
            }
        };
        self.candidates.push(Candidate {
            session_rank,
            seq: packet.header.seq,
            ts_ns,
            payload: payload.to_vec(),
        });
    }

    fn finish(mut self, path: &Path) -> Result<LoadedFeed> {
        // Stable: among duplicates the first in file order stays first.
        self.candidates.sort_by_key(|c| (c.session_rank, c.seq));
        let mut packets: Vec<RecordedPacket> = Vec::with_capacity(self.candidates.len());
        let mut last_key = None;
        let mut duplicates = 0u64;
        for c in self.candidates {
            let key = (c.session_rank, c.seq);
            if last_key == Some(key) {
                duplicates += 1;
                continue;
            }
            last_key = Some(key);
            packets.push(RecordedPacket {
                ts_ns: c.ts_ns,
                payload: c.payload,
            });
        }
        if duplicates > 0 {
            self.skipped.insert(reason::DUPLICATE, duplicates);
        }
        // Suffix minimum; see load_feed for why.
        let mut min = u64::MAX;
        for p in packets.iter_mut().rev() {
            min = min.min(p.ts_ns);
            p.ts_ns = min;
        }
        if packets.is_empty() {
            let mut summary = format!("{} records read", self.total_records);
            for (why, n) in &self.skipped {
                summary.push_str(&format!(", {n} {why}"));
            }
            return Err(RecordingError::NoFeedPackets {
                path: PathBuf::from(path),
                summary,
            });
        }
        Ok(LoadedFeed {
            packets,
            skipped: self.skipped,
            total_records: self.total_records,
        })
    }
}

fn read_pcap<R: Read>(input: R, collector: &mut impl CaptureVisitor) -> Result<(), String> {
    let mut reader = PcapReader::new(input).map_err(|e| format!("unreadable pcap header: {e}"))?;
    let header = reader.header();
    let linktype = u32::from(header.datalink);
    let frac_to_ns: u64 = match header.ts_resolution {
        TsResolution::MicroSecond => 1_000,
        TsResolution::NanoSecond => 1,
    };
    // Raw records: the checked PcapPacket refuses orig_len > snaplen, which is
    // exactly what a capture with a short snap length holds.
    while let Some(record) = reader.next_raw_packet() {
        match record {
            Ok(raw) => {
                let ts =
                    u64::from(raw.ts_sec) * 1_000_000_000 + u64::from(raw.ts_frac) * frac_to_ns;
                collector.frame(linktype, ts, &raw.data);
            }
            Err(_) => {
                collector.skip(reason::CORRUPT);
                break;
            }
        }
    }
    Ok(())
}

/// What a pcapng interface description says about its packets.
struct Interface {
    linktype: u32,
    tsresol: u8,
    tsoffset_s: i64,
}

fn read_pcapng<R: Read>(input: R, collector: &mut impl CaptureVisitor) -> Result<(), String> {
    let mut reader =
        PcapNgReader::new(input).map_err(|e| format!("unreadable pcapng section header: {e}"))?;
    let mut big_endian = reader.section().endianness == Endianness::Big;
    let mut interfaces: Vec<Interface> = Vec::new();
    // Time of the last record, for simple packet blocks (which have none).
    let mut last_ts_ns = 0;
    while let Some(block) = reader.next_block() {
        let block = match block {
            Ok(b) => b,
            Err(_) => {
                collector.skip(reason::CORRUPT);
                break;
            }
        };
        match block {
            Block::SectionHeader(shb) => {
                // Interface ids are per section.
                interfaces.clear();
                big_endian = shb.endianness == Endianness::Big;
            }
            Block::InterfaceDescription(idb) => {
                let mut iface = Interface {
                    linktype: u32::from(idb.linktype),
                    tsresol: 6,
                    tsoffset_s: 0,
                };
                for option in &idb.options {
                    match option {
                        InterfaceDescriptionOption::IfTsResol(r) => iface.tsresol = *r,
                        InterfaceDescriptionOption::IfTsOffset(o) => {
                            iface.tsoffset_s = *o as i64;
                        }
                        _ => {}
                    }
                }
                interfaces.push(iface);
            }
            Block::EnhancedPacket(epb) => {
                // pcap-file hands the raw 64-bit timestamp over as nanoseconds
                // whatever the interface's resolution; convert it here.
                let units = u64::try_from(epb.timestamp.as_nanos()).unwrap_or(u64::MAX);
                last_ts_ns =
                    packet_block(collector, &interfaces, epb.interface_id, units, &epb.data)
                        .unwrap_or(last_ts_ns);
            }
            Block::Packet(pb) => {
                // The obsolete packet block is read as one u64; the format stores
                // the high word first in the section's byte order.
                let units = if big_endian {
                    pb.timestamp
                } else {
                    pb.timestamp.rotate_left(32)
                };
                last_ts_ns = packet_block(
                    collector,
                    &interfaces,
                    u32::from(pb.interface_id),
                    units,
                    &pb.data,
                )
                .unwrap_or(last_ts_ns);
            }
            Block::SimplePacket(spb) => match interfaces.first() {
                // No timestamp of its own: it goes with the record before it.
                Some(iface) => collector.frame(iface.linktype, last_ts_ns, &spb.data),
                None => collector.skip(reason::NO_INTERFACE),
            },
            Block::Unknown(block) if block.type_ == DECRYPTION_SECRETS_BLOCK => {
                // Secrets type, secrets length, then the secrets (padded).
                let body = &block.value;
                let word = |at: usize| {
                    body.get(at..at + 4)
                        .and_then(|b| <[u8; 4]>::try_from(b).ok())
                        .map(|b| {
                            if big_endian {
                                u32::from_be_bytes(b)
                            } else {
                                u32::from_le_bytes(b)
                            }
                        })
                };
                match (word(0), word(4)) {
                    (Some(kind), Some(len)) => match body.get(8..8 + len as usize) {
                        Some(data) => collector.secrets(kind, data),
                        None => collector.skip(reason::CORRUPT),
                    },
                    _ => collector.skip(reason::CORRUPT),
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Hands over one packet block's frame; returns its time.
fn packet_block(
    collector: &mut impl CaptureVisitor,
    interfaces: &[Interface],
    interface_id: u32,
    units: u64,
    data: &[u8],
) -> Option<u64> {
    match interfaces.get(interface_id as usize) {
        Some(iface) => {
            let ts = units_to_ns(units, iface.tsresol)
                .saturating_add_signed(iface.tsoffset_s.saturating_mul(1_000_000_000));
            collector.frame(iface.linktype, ts, data);
            Some(ts)
        }
        None => {
            collector.skip(reason::NO_INTERFACE);
            None
        }
    }
}

/// pcapng `if_tsresol`: high bit clear, units of 10^-n s; set, 2^-n s.
fn units_to_ns(units: u64, tsresol: u8) -> u64 {
    let exp = u32::from(tsresol & 0x7f);
    if tsresol & 0x80 == 0 {
        if exp <= 9 {
            units.saturating_mul(10u64.pow(9 - exp))
        } else {
            10u64.checked_pow(exp - 9).map_or(0, |d| units / d)
        }
    } else {
        let ns = (u128::from(units) * 1_000_000_000)
            .checked_shr(exp)
            .unwrap_or(0);
        u64::try_from(ns).unwrap_or(u64::MAX)
    }
}

fn read_jsonl<R: Read>(path: &Path, input: R, collector: &mut Collector) -> Result<()> {
    let mut input = BufReader::new(input);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = input
            .read_until(b'\n', &mut line)
            .map_err(io_err("read", path))?;
        if n == 0 {
            break;
        }
        if line.trim_ascii().is_empty() {
            continue;
        }
        collector.total_records += 1;
        // A torn last line (no newline) simply fails to parse.
        match TradeLine::parse(&line) {
            Some(trade) => collector.payload(trade.recv_ts_ns, &trade.to_packet()),
            None => collector.skip(reason::BAD_LINE),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsresol_conversions() {
        assert_eq!(units_to_ns(5, 6), 5_000);
        assert_eq!(units_to_ns(5, 9), 5);
        assert_eq!(units_to_ns(5_000, 12), 5);
        assert_eq!(units_to_ns(5, 0), 5_000_000_000);
        assert_eq!(units_to_ns(1 << 20, 0x80 | 20), 1_000_000_000);
        assert_eq!(units_to_ns(u64::MAX, 0), u64::MAX);
        assert_eq!(units_to_ns(u64::MAX, 127), 0);
        assert_eq!(units_to_ns(u64::MAX, 0xff), 0);
    }
}
