//! Helpers shared by the integration tests: feed packets, and the capture tools
//! (tshark, tcpdump, editcap) that check the files from the outside.
#![allow(clippy::unwrap_used, dead_code)]

use std::net::SocketAddrV4;
use std::path::Path;
use std::process::Command;

use ticklab_wire::packet::{PacketBuilder, encode_end_of_session, encode_heartbeat};
use ticklab_wire::{Price, Quantity, Session, Side, Symbol, Trade};

pub const T0: u64 = 1_714_566_896_000_000_000;

pub fn src() -> SocketAddrV4 {
    "10.1.0.1:40000".parse().unwrap()
}

pub fn dst() -> SocketAddrV4 {
    "239.1.2.3:5000".parse().unwrap()
}

pub fn trade(id: u64, send_ts_ns: u64) -> Trade {
    Trade {
        symbol: Symbol::new(if id.is_multiple_of(2) {
            "EURUSD"
        } else {
            "BTCUSD"
        })
        .unwrap(),
        price: Price(108_345_000 + id as i64 * 7),
        quantity: Quantity(50_000_000 + id),
        side: if id.is_multiple_of(3) {
            Side::Sell
        } else {
            Side::Buy
        },
        trade_id: id,
        send_ts_ns,
    }
}

pub fn data_packet(session: &str, seq: u64, trades: &[Trade]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut b = PacketBuilder::new(&mut out, Session::from_name(session), seq, 1472);
    for t in trades {
        assert!(b.push_trade(t));
    }
    b.finish();
    out
}

pub fn heartbeat(session: &str, next_seq: u64) -> Vec<u8> {
    let mut out = Vec::new();
    encode_heartbeat(&mut out, Session::from_name(session), next_seq);
    out
}

pub fn end_of_session(session: &str, next_seq: u64) -> Vec<u8> {
    let mut out = Vec::new();
    encode_end_of_session(&mut out, Session::from_name(session), next_seq);
    out
}

/// A feed of `n` data packets of session "S1" from seq 1, 1–3 trades each, with
/// receive times that are not whole microseconds (so µs and ns files differ).
/// Returns (recv_ts_ns, payload).
pub fn feed(n: u64) -> Vec<(u64, Vec<u8>)> {
    let mut seq = 1;
    let mut id = 1;
    (0..n)
        .map(|i| {
            let ts = T0 + i * 1_234_567;
            let trades: Vec<Trade> = (0..1 + i % 3)
                .map(|_| {
                    id += 1;
                    trade(id, ts - 2_500)
                })
                .collect();
            let p = data_packet("S1", seq, &trades);
            seq += trades.len() as u64;
            (ts, p)
        })
        .collect()
}

/// Runs a capture tool; a missing tool fails the test with how to install it.
pub fn run_tool(tool: &str, args: &[&str]) -> String {
    let output = match Command::new(tool).args(args).output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "{tool} is not installed; these tests need it: apt-get install tshark tcpdump \
             (editcap comes with tshark's wireshark-common)"
        ),
        Err(e) => panic!("cannot run {tool}: {e}"),
    };
    assert!(
        output.status.success(),
        "{tool} {args:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

pub fn tshark_fields(file: &Path, fields: &[&str]) -> Vec<Vec<String>> {
    let mut args = vec![
        "-r",
        file.to_str().unwrap(),
        "-o",
        "ip.check_checksum:TRUE",
        "-o",
        "udp.check_checksum:TRUE",
        "-T",
        "fields",
    ];
    for f in fields {
        args.push("-e");
        args.push(f);
    }
    run_tool("tshark", &args)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split('\t').map(String::from).collect())
        .collect()
}
