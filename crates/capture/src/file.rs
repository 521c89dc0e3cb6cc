//! Capture files through the analyzer: a pcap or pcapng of plain frames (tcpdump at
//! the trader's interface, or the capture service's own files) or of VXLAN
//! datagrams (what a capture host received from a mirror: UDP to port 4789 is
//! decapsulated). Keys come from a key log file, from the file's Decryption
//! Secrets Blocks, or both.

use std::path::Path;

use crate::analyzer::{Analyzer, AnalyzerConfig, WireReport};
use crate::link::{self, LinkType, Transport};
use crate::vxlan;
use crate::wire::{Observation, Timing};
use ticklab_recording::reader::{CaptureVisitor, SECRETS_TLS_KEY_LOG, walk_capture};

/// What decoding a file found.
pub struct Decoded {
    pub report: WireReport,
    /// Every message, when asked for.
    pub observations: Vec<Observation>,
    /// Records the file holds that could not be read (a truncated file's tail).
    pub unreadable: u64,
}

/// Decodes `path` with `config`, using `key_log` (NSS text) besides any secrets the
/// file embeds. Errors name the file and what is wrong with it as a whole; what is
/// wrong with single frames is counted in the report.
pub fn decode_file(
    path: &Path,
    key_log: Option<&str>,
    config: AnalyzerConfig,
) -> Result<Decoded, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    decode_bytes(&bytes, key_log, config).map_err(|e| format!("{}: {e}", path.display()))
}

pub fn decode_bytes(
    bytes: &[u8],
    key_log: Option<&str>,
    config: AnalyzerConfig,
) -> Result<Decoded, String> {
    let observe = config.observe;
    let mut visitor = Visitor {
        analyzer: Analyzer::new(config),
        observations: Vec::new(),
        observe,
        unreadable: 0,
    };
    if let Some(text) = key_log {
        visitor.analyzer.add_key_log(text);
    }
    let magic = bytes.get(..4).unwrap_or(bytes);
    walk_capture(magic, bytes, &mut visitor)?;
    visitor.analyzer.flush();
    visitor.drain();
    Ok(Decoded {
        report: visitor.analyzer.report(),
        observations: visitor.observations,
        unreadable: visitor.unreadable,
    })
}

struct Visitor {
    analyzer: Analyzer,
    observations: Vec<Observation>,
    observe: bool,
    unreadable: u64,
}

impl Visitor {
    fn drain(&mut self) {
        let o = self.analyzer.take_observations();
        if self.observe {
            self.observations.extend(o);
        }
    }
}

impl CaptureVisitor for Visitor {
    fn frame(&mut self, linktype: u32, ts_ns: u64, data: &[u8]) {
        let Some(link) = LinkType::from_pcap(linktype) else {
            self.analyzer.unsupported_link();
            return;
        };
        // Mirrored traffic as the capture host saw it: decapsulate.
        if let Ok(packet) = link::decode(link, data)
            && let Transport::Udp {
                dst_port: vxlan::PORT,
                payload,
                ..
            } = packet.transport
        {
            self.analyzer.vxlan(ts_ns, payload);
        } else {
            self.analyzer.frame(ts_ns, Timing::Interface, link, data);
        }
        if self.observe {
            self.drain();
        } else {
            // Nobody reads them: drop as we go rather than hold them all.
            let _ = self.analyzer.take_observations();
        }
    }

    fn skip(&mut self, _why: &'static str) {
        self.unreadable += 1;
    }

    fn secrets(&mut self, kind: u32, data: &[u8]) {
        if kind == SECRETS_TLS_KEY_LOG {
            self.analyzer.add_key_log(&String::from_utf8_lossy(data));
        }
    }
}
