//! `ticklab decode FILE`: the wire latency report of a capture file (plain frames
//! or VXLAN-encapsulated ones, TLS decrypted with a key log), and the wire section
//! every report with a mirror prints.

use std::path::PathBuf;

use anyhow::Context;
use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{Cell, CellAlignment, Table};
use ticklab_capture::analyzer::{AnalyzerConfig, WireReport};
use ticklab_crd::LatencySummary;
use ticklab_crd::mirror_session::DifferenceSummary;

#[derive(clap::Args, Clone)]
pub struct DecodeArgs {
    /// A pcap or pcapng capture: frames captured at the trader (tcpdump -i IF), the
    /// capture service's files, or VXLAN datagrams a capture host received.
    pub file: PathBuf,
    /// TLS key log (NSS format, SSLKEYLOGFILE) to decrypt wss and HTTPS with; keys
    /// embedded in a pcapng file are used as well.
    #[arg(long)]
    pub keylog: Option<PathBuf>,
    /// Print the report as JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Write every decoded message (trades, orders, acks, with their wire times)
    /// as JSON lines to this file.
    #[arg(long)]
    pub messages: Option<PathBuf>,
    /// Source port of the exchange's retransmission server (its trades count as
    /// recovered, not live); repeatable.
    #[arg(long = "retransmit-port", default_values_t = AnalyzerConfig::default().retransmit_ports)]
    pub retransmit_ports: Vec<u16>,
    /// Server port, to tell client from server on connections whose start the
    /// capture missed; repeatable.
    #[arg(long = "server-port", default_values_t = AnalyzerConfig::default().server_ports)]
    pub server_ports: Vec<u16>,
    /// Decode only this VXLAN network.
    #[arg(long)]
    pub vni: Option<u32>,
}

pub fn decode(args: &DecodeArgs) -> anyhow::Result<String> {
    let key_log = match &args.keylog {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the key log {}", path.display()))?,
        ),
        None => None,
    };
    let config = AnalyzerConfig {
        retransmit_ports: args.retransmit_ports.clone(),
        server_ports: args.server_ports.clone(),
        vni: args.vni,
        observe: args.messages.is_some(),
        ..AnalyzerConfig::default()
    };
    let decoded = ticklab_capture::file::decode_file(&args.file, key_log.as_deref(), config)
        .map_err(anyhow::Error::msg)?;
    if let Some(path) = &args.messages {
        let mut out = String::new();
        for o in &decoded.observations {
            out.push_str(&serde_json::to_string(o)?);
            out.push('\n');
        }
        std::fs::write(path, out).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if args.json {
        return Ok(serde_json::to_string_pretty(&decoded.report)? + "\n");
    }
    let mut out = format!("ticklab decode: {}\n\n", args.file.display());
    if decoded.unreadable > 0 {
        out.push_str(&format!(
            "{} record(s) could not be read (a truncated file?): decoded up to there\n\n",
            decoded.unreadable
        ));
    }
    out.push_str(&section(&decoded.report));
    Ok(out)
}

/// The wire section: counts, errors by kind, latency from the wire, app beside wire.
pub fn section(r: &WireReport) -> String {
    let mut out = String::new();
    let right = |v: u64| Cell::new(v).set_alignment(CellAlignment::Right);
    let mut counts = Table::new();
    counts.load_preset(UTF8_FULL_CONDENSED).set_header(vec![
        "frames",
        "decoded",
        "truncated",
        "other",
        "errors",
        "trades",
        "recovered",
        "orders",
        "acks",
    ]);
    let m = &r.messages;
    counts.add_row(
        [
            r.frames,
            r.packets_decoded,
            r.truncated,
            r.other,
            r.errors(),
            m.trades,
            m.trades_recovered,
            m.orders,
            m.acks,
        ]
        .map(right),
    );
    out.push_str(&format!(
        "wire ({} timing: {}; {} TLS connection(s), {} record(s) decrypted)\n",
        r.timing,
        match r.timing.as_str() {
            "arrival" => "times are when the mirror copy arrived, mirror path included",
            "mixed" => "some frames stamped at the interface, some on arrival",
            _ => "frames stamped at the mirrored interface",
        },
        r.tls.connections,
        r.tls.records_decrypted
    ));
    out.push_str(&counts.to_string());
    out.push('\n');
    if !r.decode_errors.is_empty() {
        let mut errors = Table::new();
        errors
            .load_preset(UTF8_FULL_CONDENSED)
            .set_header(vec!["decode error", "count"]);
        for (kind, n) in &r.decode_errors {
            errors.add_row(vec![Cell::new(kind), right(*n)]);
        }
        out.push_str(&errors.to_string());
        out.push('\n');
    }
    let mut lat = Table::new();
    lat.load_preset(UTF8_FULL_CONDENSED).set_header(vec![
        "from the wire (µs)",
        "samples",
        "p50",
        "p90",
        "p99",
        "p99.9",
        "max",
    ]);
    let rows: [(&str, &Option<LatencySummary>); 3] = [
        ("one-way feed", &r.feed_latency),
        ("tick-to-trade", &r.tick_to_trade),
        ("order round trip", &r.order_round_trip),
    ];
    let us = |v: f64| Cell::new(format!("{v:.1}")).set_alignment(CellAlignment::Right);
    for (name, s) in rows {
        match s {
            Some(s) => lat.add_row(vec![
                Cell::new(name),
                right(s.count),
                us(s.p50_micros),
                us(s.p90_micros),
                us(s.p99_micros),
                us(s.p999_micros),
                us(s.max_micros),
            ]),
            None => lat.add_row(vec![Cell::new(name), right(0)]),
        };
    }
    out.push_str(&lat.to_string());
    out.push('\n');
    let signed: [(&str, &Option<DifferenceSummary>); 2] = [
        ("order: wire − trader's send stamp", &r.order_wire_minus_app),
        ("trade: trader's receive − wire", &r.trade_app_minus_wire),
    ];
    if signed.iter().any(|(_, s)| s.is_some()) {
        let mut diff = Table::new();
        diff.load_preset(UTF8_FULL_CONDENSED).set_header(vec![
            "same message (µs)",
            "samples",
            "min",
            "p50",
            "p99",
            "max",
        ]);
        for (name, s) in signed {
            if let Some(s) = s {
                diff.add_row(vec![
                    Cell::new(name),
                    right(s.count),
                    us(s.min_micros),
                    us(s.p50_micros),
                    us(s.p99_micros),
                    us(s.max_micros),
                ]);
            }
        }
        out.push_str(&diff.to_string());
        out.push('\n');
    }
    out
}
