//! The report `ticklab run` ends with: feed counts, latency percentiles, orders and
//! PnL, persistence and the SLO verdict, as a table for people.

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{Cell, CellAlignment, Table};
use ticklab_crd::{LatencySummary, SloVerdict};

use crate::local_run::{RunReport, transport_name};

pub fn table(r: &RunReport) -> String {
    let res = &r.results;
    let mut out = String::new();
    out.push_str(&format!(
        "ticklab: {} — {} at {} trades/s for {:.1}s{}\n\n",
        r.experiment,
        transport_name(r.transport),
        r.rate_per_second,
        r.elapsed_seconds,
        if r.interrupted { " (interrupted)" } else { "" }
    ));

    let mut feed = Table::new();
    feed.load_preset(UTF8_FULL_CONDENSED).set_header(vec![
        "sent",
        "received",
        "gaps",
        "recovered",
        "lost",
        "duplicates",
        "malformed",
    ]);
    feed.add_row(
        [
            res.sent,
            res.received,
            res.gaps,
            res.recovered,
            res.lost,
            res.duplicates,
            res.malformed,
        ]
        .map(|v| Cell::new(v).set_alignment(CellAlignment::Right)),
    );
    out.push_str(&feed.to_string());
    out.push('\n');

    let mut lat = Table::new();
    lat.load_preset(UTF8_FULL_CONDENSED).set_header(vec![
        "latency (µs)",
        "samples",
        "p50",
        "p90",
        "p99",
        "p99.9",
        "max",
    ]);
    let rows: [(&str, &Option<LatencySummary>); 4] = [
        ("one-way feed", &res.feed_latency),
        ("  to user space", &res.feed_latency_user),
        ("tick-to-trade", &res.tick_to_trade),
        ("order round trip", &res.order_round_trip),
    ];
    for (label, summary) in rows {
        let mut row = vec![Cell::new(label)];
        match summary {
            Some(s) => {
                row.push(Cell::new(s.count).set_alignment(CellAlignment::Right));
                for v in [
                    s.p50_micros,
                    s.p90_micros,
                    s.p99_micros,
                    s.p999_micros,
                    s.max_micros,
                ] {
                    row.push(Cell::new(format!("{v:.1}")).set_alignment(CellAlignment::Right));
                }
            }
            None => {
                row.push(Cell::new("0").set_alignment(CellAlignment::Right));
                row.extend((0..5).map(|_| Cell::new("—").set_alignment(CellAlignment::Right)));
            }
        }
        lat.add_row(row);
    }
    out.push_str(&lat.to_string());
    out.push('\n');

    out.push_str(&format!(
        "orders {} · fills {} · skipped {} · PnL {:.2} USD · receive timestamps: {}\n",
        res.orders, res.fills, res.orders_skipped, res.pnl, res.timestamp_source
    ));
    match (r.persistence, res.persisted) {
        ("mongodb", Some(n)) => match res.not_persisted.filter(|&lost| lost > 0) {
            None => out.push_str(&format!("persisted to MongoDB: {n} trades\n")),
            Some(lost) => out.push_str(&format!(
                "persisted to MongoDB: {n} trades; {lost} NOT persisted (the database fell behind the feed or writes failed)\n"
            )),
        },
        _ => out.push_str("persistence: in memory only (no --mongodb-uri)\n"),
    }
    match res.slo_verdict {
        Some(SloVerdict::Met) => out.push_str("SLO: met\n"),
        Some(SloVerdict::Breached) => out.push_str("SLO: BREACHED\n"),
        None => {}
    }
    if let Some(replay) = &r.exchange.replay {
        out.push('\n');
        out.push_str(&replay_section(replay, res.feed_latency.as_ref()));
    }
    for rec in &r.recordings {
        out.push_str(&format!(
            "recorded {}: {} packets, {} bytes in {} file(s) under {} · {} recovered, {} unrecoverable{}\n",
            rec.name,
            rec.packets,
            rec.bytes,
            rec.files,
            rec.directory,
            rec.recovered,
            rec.unrecoverable,
            if rec.write_errors > 0 {
                format!(" · {} WRITE ERRORS", rec.write_errors)
            } else {
                String::new()
            }
        ));
    }
    if let Some(wire) = &r.wire {
        out.push('\n');
        out.push_str(&crate::wire::section(wire));
    }
    out
}

/// The replay's fidelity and the recording's latency beside this run's.
fn replay_section(
    replay: &ticklab_exchange::replay::ReplayReport,
    replayed: Option<&LatencySummary>,
) -> String {
    let mut out = format!(
        "replay of {} at {}{}: {} packets ({} messages) in {:.3}s over a recording of {:.3}s, {} pass(es), {} records skipped\n",
        replay.source,
        replay
            .speed
            .map_or_else(|| "top speed".to_string(), |s| format!("×{s}")),
        if replay.looped { ", looped" } else { "" },
        replay.packets_sent,
        replay.messages_sent,
        replay.elapsed_ns as f64 / 1e9,
        replay.recording_span_ns as f64 / 1e9,
        replay.loops,
        replay.skipped_records,
    );
    let us = |ns: u64| format!("{:.1}", ns as f64 / 1000.0);
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_header(vec!["µs", "samples", "p50", "p90", "p99", "p99.9", "max"]);
    let mut row = |label: &str, p: Option<&ticklab_exchange::replay::Percentiles>| {
        let mut cells = vec![Cell::new(label)];
        match p {
            Some(p) => {
                cells.push(Cell::new(p.count).set_alignment(CellAlignment::Right));
                for v in [p.p50_ns, p.p90_ns, p.p99_ns, p.p999_ns, p.max_ns] {
                    cells.push(Cell::new(us(v)).set_alignment(CellAlignment::Right));
                }
            }
            None => {
                cells.push(Cell::new("0").set_alignment(CellAlignment::Right));
                cells.extend((0..5).map(|_| Cell::new("—").set_alignment(CellAlignment::Right)));
            }
        }
        t.add_row(cells);
    };
    row("lateness against schedule", replay.lateness.as_ref());
    row("feed latency, recording", replay.original_latency.as_ref());
    let replayed = replayed.map(|s| ticklab_exchange::replay::Percentiles {
        count: s.count,
        p50_ns: (s.p50_micros * 1000.0) as u64,
        p90_ns: (s.p90_micros * 1000.0) as u64,
        p99_ns: (s.p99_micros * 1000.0) as u64,
        p999_ns: (s.p999_micros * 1000.0) as u64,
        max_ns: (s.max_micros * 1000.0) as u64,
    });
    row("feed latency, this replay", replayed.as_ref());
    out.push_str(&t.to_string());
    out.push('\n');
    out
}
