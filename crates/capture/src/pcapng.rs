//! The capture's own files: pcapng with nanosecond timestamps, one Ethernet
//! interface, each frame's direction in its flags, rotated by size and age, and the
//! TLS key log embedded as a Decryption Secrets Block so Wireshark opens a file
//! decrypted with no key file beside it.
//!
//! Keys reach the capture after the handshakes they decrypt (the trader hands them
//! over a little later), and Wireshark applies a secrets block only to the packets
//! after it. So frames go to `NAME.part` as they come, and when the file rotates
//! or closes it is written out whole: header, interface, every key known by then,
//! then the frames. Until then only the `.part` file exists.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use pcap_file::DataLink;
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::pcapng::blocks::Block;
use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::blocks::unknown::UnknownBlock;

use crate::vxlan::Direction;

/// pcapng block type of a Decryption Secrets Block, and its TLS key log type.
const DECRYPTION_SECRETS: u32 = 0x0000_000A;
const TLS_KEY_LOG: u32 = 0x544c_534b;

/// When to start a new file.
#[derive(Clone, Copy, Debug)]
pub struct Rotation {
    pub max_bytes: u64,
    pub max_age: Duration,
}

pub struct PcapngFiles {
    directory: PathBuf,
    rotation: Rotation,
    current: Option<Part>,
    /// Files written out whole, oldest first.
    finished: Vec<PathBuf>,
    sequence: u64,
}

struct Part {
    path: PathBuf,
    writer: PcapNgWriter<BufWriter<File>>,
    bytes: u64,
    opened_ns: u64,
    frames: u64,
}

impl PcapngFiles {
    /// Files go to `directory` (created if needed). A `.part` file left by a run
    /// that did not close is kept as it is: its frames are readable by any pcapng
    /// reader except for the keys.
    pub fn new(directory: &Path, rotation: Rotation) -> io::Result<Self> {
        fs::create_dir_all(directory)?;
        Ok(Self {
            directory: directory.to_path_buf(),
            rotation,
            current: None,
            finished: Vec::new(),
            sequence: 0,
        })
    }

    pub fn finished(&self) -> &[PathBuf] {
        &self.finished
    }

    /// Appends one frame captured at `ts_ns` (`original_len`: before truncation).
    /// `key_log` gives the key log so far, asked for only when this frame rotates
    /// the file.
    pub fn write(
        &mut self,
        ts_ns: u64,
        frame: &[u8],
        original_len: u32,
        direction: Option<Direction>,
        key_log: impl FnOnce() -> String,
    ) -> io::Result<()> {
        if let Some(part) = &self.current
            && (part.bytes >= self.rotation.max_bytes
                || ts_ns.saturating_sub(part.opened_ns) >= self.rotation.max_age.as_nanos() as u64)
        {
            self.close(&key_log())?;
        }
        if self.current.is_none() {
            self.current = Some(self.open(ts_ns)?);
        }
        let Some(part) = &mut self.current else {
            return Ok(());
        };
        let mut options = Vec::new();
        if let Some(d) = direction {
            // epb_flags bits 0-1: 01 inbound, 10 outbound.
            options.push(EnhancedPacketOption::Flags(match d {
                Direction::Ingress => 1,
                Direction::Egress => 2,
            }));
        }
        let block = EnhancedPacketBlock {
            interface_id: 0,
            timestamp: Duration::from_nanos(ts_ns),
            original_len: original_len.max(frame.len() as u32),
            data: frame.into(),
            options,
        };
        let n = part.writer.write_pcapng_block(block).map_err(to_io)?;
        part.bytes += n as u64;
        part.frames += 1;
        Ok(())
    }

    /// Writes the current file out whole with `key_log` embedded.
    pub fn close(&mut self, key_log: &str) -> io::Result<Option<PathBuf>> {
        let Some(part) = self.current.take() else {
            return Ok(None);
        };
        let mut inner = part.writer.into_inner();
        inner.flush()?;
        drop(inner);
        let final_path = part.path.with_extension("");
        write_whole(&part.path, &final_path, key_log)?;
        fs::remove_file(&part.path)?;
        self.finished.push(final_path.clone());
        Ok(Some(final_path))
    }

    fn open(&mut self, ts_ns: u64) -> io::Result<Part> {
        self.sequence += 1;
        let name = format!(
            "capture-{}-{:04}.pcapng.part",
            ts_ns / 1_000_000_000,
            self.sequence
        );
        let path = self.directory.join(name);
        let file = BufWriter::new(File::create(&path)?);
        // A file of its own (readable should the capture die before closing it);
        // at close its frames follow a header, interface and the keys.
        let mut writer = PcapNgWriter::new(file).map_err(to_io)?;
        writer.write_pcapng_block(interface()).map_err(to_io)?;
        Ok(Part {
            path,
            writer,
            bytes: 0,
            opened_ns: ts_ns,
            frames: 0,
        })
    }
}

/// Header, interface, secrets, then the frames of `part` (whose own header is
/// skipped).
fn write_whole(part: &Path, out: &Path, key_log: &str) -> io::Result<()> {
    let mut frames = Vec::new();
    File::open(part)?.read_to_end(&mut frames)?;
    // The part file starts with its own section header and interface blocks.
    let section = block_len(&frames, 0);
    let header_len = section + block_len(&frames, section);
    let tmp = out.with_extension("pcapng.tmp");
    let file = BufWriter::new(File::create(&tmp)?);
    let mut writer = PcapNgWriter::new(file).map_err(to_io)?;
    let endianness = writer.section().endianness;
    writer.write_pcapng_block(interface()).map_err(to_io)?;
    if !key_log.is_empty() {
        let u32_bytes = |v: u32| match endianness {
            pcap_file::Endianness::Big => v.to_be_bytes(),
            pcap_file::Endianness::Little => v.to_le_bytes(),
        };
        let mut body = Vec::with_capacity(8 + key_log.len() + 3);
        body.extend_from_slice(&u32_bytes(TLS_KEY_LOG));
        body.extend_from_slice(&u32_bytes(key_log.len() as u32));
        body.extend_from_slice(key_log.as_bytes());
        writer
            .write_block(&Block::Unknown(UnknownBlock::new(
                DECRYPTION_SECRETS,
                0,
                &body,
            )))
            .map_err(to_io)?;
    }
    let mut file = writer.into_inner();
    file.write_all(frames.get(header_len..).unwrap_or(&[]))?;
    file.flush()?;
    file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    fs::rename(&tmp, out)
}

/// The one interface: Ethernet frames with nanosecond timestamps.
fn interface() -> InterfaceDescriptionBlock<'static> {
    InterfaceDescriptionBlock {
        linktype: DataLink::ETHERNET,
        snaplen: 0,
        options: vec![
            InterfaceDescriptionOption::IfTsResol(9),
            InterfaceDescriptionOption::IfName("mirror".into()),
        ],
    }
}

/// Length of the block at `at` of a file this module wrote (the section's byte
/// order, read from its header's magic).
fn block_len(bytes: &[u8], at: usize) -> usize {
    let little = bytes.get(8..12) == Some(&[0x4D, 0x3C, 0x2B, 0x1A]);
    bytes
        .get(at + 4..at + 8)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map_or(0, |b| if little { u32::from_le_bytes(b) } else { u32::from_be_bytes(b) } as usize)
}

fn to_io(e: pcap_file::PcapError) -> io::Error {
    io::Error::other(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_rotate_and_carry_the_key_log() {
        let dir = std::env::temp_dir().join(format!("ticklab-pcapng-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut files = PcapngFiles::new(
            &dir,
            Rotation {
                max_bytes: 200,
                max_age: Duration::from_secs(3600),
            },
        )
        .unwrap();
        for i in 0..10u64 {
            files
                .write(
                    1_700_000_000_000_000_000 + i,
                    &[i as u8; 60],
                    1514,
                    Some(Direction::Egress),
                    || "CLIENT_RANDOM aa bb\n".to_string(),
                )
                .unwrap();
        }
        files.close("CLIENT_RANDOM aa bb\n").unwrap();
        assert!(files.finished().len() >= 3, "{:?}", files.finished());
        // Each file: readable, frames in order with ns timestamps, the secrets found.
        struct Seen(Vec<u64>, Vec<String>);
        impl ticklab_recording::reader::CaptureVisitor for Seen {
            fn frame(&mut self, linktype: u32, ts_ns: u64, _data: &[u8]) {
                assert_eq!(linktype, 1);
                self.0.push(ts_ns);
            }
            fn skip(&mut self, why: &'static str) {
                panic!("skipped: {why}");
            }
            fn secrets(&mut self, kind: u32, data: &[u8]) {
                assert_eq!(kind, TLS_KEY_LOG);
                self.1.push(String::from_utf8(data.to_vec()).unwrap());
            }
        }
        let mut seen = Seen(Vec::new(), Vec::new());
        for f in files.finished() {
            let bytes = fs::read(f).unwrap();
            ticklab_recording::reader::walk_capture(&bytes[..4], &bytes[..], &mut seen).unwrap();
        }
        assert_eq!(
            seen.0,
            (0..10)
                .map(|i| 1_700_000_000_000_000_000 + i)
                .collect::<Vec<_>>()
        );
        assert_eq!(seen.1.len(), files.finished().len());
        assert!(
            fs::read_dir(&dir).unwrap().all(|e| !e
                .unwrap()
                .path()
                .to_string_lossy()
                .ends_with(".part"))
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
