//! Recording and replay on this machine, as a user runs them: `ticklab run` with
//! RecordingSessions records every trade (pcap and JSON lines) and tshark, tcpdump
//! and the index agree; `ticklab replay` delivers every recorded message at ×1, ×10
//! and top speed and reports its lateness; a recorder killed with SIGKILL leaves
//! readable files and goes on in a new one; the toggle pauses and resumes without
//! a gap; bad input gets one clear line and exit code 2.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn ticklab() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ticklab"))
}

fn tool(name: &str, args: &[&str]) -> String {
    let out = Command::new(name)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{name} is not installed ({e}): scripts/test.sh installs it"));
    assert!(
        out.status.success(),
        "{name} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Sequence numbers of the data packets in a pcap, as tshark decodes it.
fn tshark_seqs(file: &Path) -> (u64, BTreeSet<u64>) {
    let text = tool(
        "tshark",
        &[
            "-r",
            file.to_str().unwrap(),
            "-T",
            "fields",
            "-e",
            "udp.payload",
        ],
    );
    let mut packets = 0;
    let mut seqs = BTreeSet::new();
    for line in text.lines() {
        packets += 1;
        let hex: String = line.chars().filter(|c| c.is_ascii_hexdigit()).collect();
        let bytes: Vec<u8> = (0..hex.len() / 2)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        if bytes.len() < 20 {
            continue;
        }
        let seq = u64::from_be_bytes(bytes[10..18].try_into().unwrap());
        let count = u16::from_be_bytes(bytes[18..20].try_into().unwrap());
        if count != 0 && count < 0xFFFE {
            seqs.extend(seq..seq + u64::from(count));
        }
    }
    (packets, seqs)
}

fn index(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap()
}

fn files(index: &Value) -> Vec<Value> {
    index["files"].as_array().unwrap().clone()
}

const EXPERIMENT: &str = r#"
apiVersion: ticklab.dev/v1alpha1
kind: LatencyExperiment
metadata:
  name: recorded
spec:
  exchange:
    symbols: [EURUSD, BTCUSD]
    ratePerSecond: 20000
    seed: 11
    faults:
      dropPercent: 3
  trader:
    persistence:
      enabled: false
  duration: 3s
---
apiVersion: ticklab.dev/v1alpha1
kind: RecordingSession
metadata:
  name: wire
spec:
  experiment: recorded
  format: pcap
  rotation:
    maxMegabytes: 1
---
apiVersion: ticklab.dev/v1alpha1
kind: RecordingSession
metadata:
  name: lines
spec:
  experiment: recorded
  format: jsonl
"#;

fn run_json(cmd: &mut Command) -> Value {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Records a run with two sessions; returns (recordings dir, trades published).
fn record(tmp: &Path) -> (PathBuf, u64) {
    let file = tmp.join("experiment.yaml");
    std::fs::write(&file, EXPERIMENT).unwrap();
    let dir = tmp.join("recordings");
    let report = run_json(ticklab().args([
        "run",
        file.to_str().unwrap(),
        "--recordings-dir",
        dir.to_str().unwrap(),
        "-o",
        "json",
        "--quiet",
    ]));
    let published = report["exchange"]["tradesPublished"].as_u64().unwrap();
    assert!(published > 10_000, "{report}");
    let recordings = report["recordings"].as_array().unwrap();
    assert_eq!(recordings.len(), 2, "{report}");
    for r in recordings {
        assert_eq!(r["unrecoverable"], 0, "{report}");
        assert_eq!(r["writeErrors"], 0, "{report}");
    }
    (dir, published)
}

#[test]
fn run_records_every_trade_and_the_tools_agree_then_replays_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, published) = record(tmp.path());

    // pcap: the index, tshark and tcpdump agree; every sequence number is there.
    let wire = dir.join("wire");
    let idx = index(&wire);
    let wire_files = files(&idx);
    assert!(wire_files.len() >= 2, "1 MiB rotation: {idx}");
    let mut all = BTreeSet::new();
    for f in &wire_files {
        assert_eq!(f["complete"], true, "{f}");
        assert_eq!(f["missing"], serde_json::json!([]), "{f}");
        let path = wire.join(f["name"].as_str().unwrap());
        let (packets, seqs) = tshark_seqs(&path);
        assert_eq!(packets, f["packets"].as_u64().unwrap(), "{f}");
        let tcpdump = tool("tcpdump", &["-nn", "-r", path.to_str().unwrap()]);
        assert_eq!(tcpdump.lines().count() as u64, packets, "{f}");
        if let (Some(first), Some(last)) = (seqs.first(), seqs.last()) {
            assert_eq!(*first, f["firstSeq"].as_u64().unwrap(), "{f}");
            assert_eq!(*last, f["lastSeq"].as_u64().unwrap(), "{f}");
        }
        all.extend(seqs);
    }
    let expected: BTreeSet<u64> = (1..=published).collect();
    assert_eq!(all.len(), expected.len(), "recorded vs published");
    assert!(
        all == expected,
        "some sequence numbers are missing from the pcap files"
    );

    // JSON lines: one line per trade, every sequence number once.
    let lines_dir = dir.join("lines");
    let mut seqs = Vec::new();
    for f in files(&index(&lines_dir)) {
        let text = std::fs::read_to_string(lines_dir.join(f["name"].as_str().unwrap())).unwrap();
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            seqs.push(v["seq"].as_u64().unwrap());
            assert!(v["sendTsNs"].as_u64().unwrap() > 0 && v["recvTsNs"].as_u64().unwrap() > 0);
        }
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=published).collect::<Vec<_>>());

    // `recordings ls` prints the index.
    let out = ticklab()
        .args(["recordings", "ls", wire.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    for f in &wire_files {
        assert!(table.contains(f["name"].as_str().unwrap()), "{table}");
    }

    // Looped (WebSocket): passes follow each other with sequence numbers going on,
    // until the duration; every message of every pass arrives.
    let first = wire.join(wire_files[0]["name"].as_str().unwrap());
    let in_file: u64 = wire_files[0]["trades"].as_u64().unwrap();
    let report = run_json(ticklab().args([
        "replay",
        first.to_str().unwrap(),
        "--speed",
        "4",
        "--loop",
        "--duration",
        "400ms",
        "--transport",
        "websocket",
        "-o",
        "json",
        "--quiet",
    ]));
    let replay = &report["exchange"]["replay"];
    assert!(replay["loops"].as_u64().unwrap() >= 2, "{report}");
    let sent = replay["messagesSent"].as_u64().unwrap();
    assert!(sent > in_file, "{report}");
    assert_eq!(
        report["results"]["sent"].as_u64().unwrap(),
        sent,
        "{report}"
    );
    assert_eq!(report["results"]["lost"], 0, "{report}");

    // Replay the first pcap file at ×10, ×1 (UDP) and top speed (TCP): every message
    // arrives, none lost, and the replay reports how late its packets left.
    for (speed, transport) in [("10", "udp"), ("1", "udp"), ("top", "tcp")] {
        let mut cmd = ticklab();
        cmd.args(["replay", first.to_str().unwrap(), "--transport", transport]);
        cmd.args(["-o", "json", "--quiet"]);
        if speed == "top" {
            cmd.arg("--top-speed");
        } else {
            cmd.args(["--speed", speed]);
        }
        let report = run_json(&mut cmd);
        let replay = &report["exchange"]["replay"];
        assert_eq!(
            replay["messagesSent"].as_u64().unwrap(),
            in_file,
            "{report}"
        );
        let results = &report["results"];
        assert_eq!(results["sent"].as_u64().unwrap(), in_file, "{report}");
        assert_eq!(results["lost"], 0, "{report}");
        assert_eq!(
            results["received"].as_u64().unwrap() + results["recovered"].as_u64().unwrap(),
            in_file,
            "{report}"
        );
        assert!(
            replay["originalLatency"]["count"].as_u64().unwrap() > 0,
            "{report}"
        );
        if speed == "top" {
            assert!(replay["lateness"].is_null(), "{report}");
        } else {
            assert_eq!(
                replay["lateness"]["count"].as_u64().unwrap(),
                replay["packetsSent"].as_u64().unwrap(),
                "every packet's lateness is measured: {report}"
            );
        }
    }
}

fn get(url: &str) -> Value {
    reqwest::blocking::get(url).unwrap().json().unwrap()
}

/// Polls `f` until it returns Some, or panics after `secs` naming `what`.
fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Exchange {
    config: PathBuf,
    child: Child,
    retransmit: String,
    feed: std::net::UdpSocket,
    /// `host:port` of its `/metrics`.
    admin: String,
}

impl Exchange {
    /// Trades published so far (its own counter).
    fn published(&self) -> Option<u64> {
        let text = reqwest::blocking::get(format!("http://{}/metrics", self.admin))
            .ok()?
            .text()
            .ok()?;
        text.lines()
            .find(|l| l.starts_with("ticklab_exchange_trades_published_total"))?
            .split_whitespace()
            .last()?
            .parse()
            .ok()
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port(udp: bool) -> u16 {
    if udp {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }
}

/// An exchange process publishing for a minute to a socket the test holds (and
/// never reads: the kernel drops what overflows), started by a subscription.
fn exchange(tmp: &Path) -> Exchange {
    let feed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let retransmit = format!("127.0.0.1:{}", free_port(true));
    let tcp = || format!("127.0.0.1:{}", free_port(false));
    let admin = tcp();
    let config = tmp.join("exchange.yaml");
    std::fs::write(
        &config,
        format!(
            "experiment: killed\nspec:\n  symbols: [EURUSD]\n  ratePerSecond: 20000\ndurationMillis: 60000\n\
             feedUdpTarget: {}\nfeedListen: {}\nretransmitListen: {retransmit}\norderTcpListen: {}\n\
             orderHttpListen: {}\nadminListen: {}\n",
            feed.local_addr().unwrap(),
            tcp(),
            tcp(),
            tcp(),
            admin
        ),
    )
    .unwrap();
    let child = ticklab()
        .args(["exchange", "--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Subscribe (as a trader would) until the feed flows.
    wait_for(20, "the exchange's feed", || {
        let mut req = Vec::new();
        ticklab_wire::RetransmitRequest::subscription().encode(&mut req);
        let _ = feed.send_to(&req, &retransmit);
        feed.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut buf = [0u8; 2048];
        feed.recv(&mut buf).ok()
    });
    Exchange {
        config,
        child,
        retransmit,
        feed,
        admin,
    }
}

struct Recorder {
    child: Child,
    url: String,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn recorder(tmp: &Path, dir: &Path, retransmit: &str) -> Recorder {
    let port = free_port(false);
    let config = tmp.join("recorder.yaml");
    std::fs::write(
        &config,
        format!(
            "experiment: killed\nrecording: rec\nexchangeRetransmit: {retransmit}\ndirectory: {}\n\
             listen: 127.0.0.1:{port}\n",
            dir.display()
        ),
    )
    .unwrap();
    let child = ticklab()
        .args(["recorder", "--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    Recorder { child, url }
}

fn status(url: &str) -> Option<Value> {
    reqwest::blocking::get(format!("{url}/recording"))
        .ok()?
        .json()
        .ok()
}

#[test]
fn a_recorder_killed_mid_file_leaves_it_readable_and_goes_on_in_a_new_one() {
    let tmp = tempfile::tempdir().unwrap();
    let ex = exchange(tmp.path());
    let dir = tmp.path().join("rec");
    let first = recorder(tmp.path(), &dir, &ex.retransmit);
    wait_for(30, "2000 recorded packets", || {
        status(&first.url).filter(|s| s["packets"].as_u64() > Some(2000))
    });
    let mut first = first;
    first.child.kill().unwrap(); // SIGKILL, mid-file
    first.child.wait().unwrap();
    let torn: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pcap"))
        .collect();
    assert_eq!(torn.len(), 1, "{torn:?}");
    // Readable up to its last complete record even before any repair.
    let feed = ticklab_recording::load_feed(&torn[0]).unwrap();
    assert!(!feed.packets.is_empty());

    let second = recorder(tmp.path(), &dir, &ex.retransmit);
    // The index (published every 100 ms) shows the new file once it has packets.
    let s = wait_for(
        30,
        "the restarted recorder to record into a new file",
        || {
            status(&second.url).filter(|s| {
                s["packets"].as_u64() > Some(500)
                    && s["index"]["files"].as_array().is_some_and(|f| f.len() >= 2)
            })
        },
    );
    let files_now = s["index"]["files"].as_array().unwrap().clone();
    assert_eq!(files_now[0]["complete"], true, "{s}");
    // A clean stop (SIGTERM) closes the second file; tshark reads both in full.
    let mut second = second;
    Command::new("kill")
        .args(["-TERM", &second.child.id().to_string()])
        .status()
        .unwrap();
    assert!(second.child.wait().unwrap().success());
    for f in files(&index(&dir)) {
        let path = dir.join(f["name"].as_str().unwrap());
        let (packets, _) = tshark_seqs(&path);
        assert_eq!(packets, f["packets"].as_u64().unwrap(), "{f}");
    }
    let _ = &ex.config;
    let _ = &ex.feed;
}

#[test]
fn the_toggle_pauses_and_resumes_without_a_gap_in_what_it_records() {
    let tmp = tempfile::tempdir().unwrap();
    let ex = exchange(tmp.path());
    let dir = tmp.path().join("toggled");
    let rec = recorder(tmp.path(), &dir, &ex.retransmit);
    let client = reqwest::blocking::Client::new();
    let toggle = |enabled: bool| {
        let r = client
            .put(format!("{}/recording", rec.url))
            .json(&serde_json::json!({ "enabled": enabled }))
            .send()
            .unwrap();
        assert!(r.status().is_success());
    };
    wait_for(30, "recording", || {
        status(&rec.url).filter(|s| s["packets"].as_u64() > Some(1000))
    });
    toggle(false);
    let paused = wait_for(10, "Paused", || {
        status(&rec.url).filter(|s| s["state"] == "Paused")
    });
    // Paused: nothing more is written while the feed goes on (the tap's copies
    // still in flight are counted as ignored, not written): three reads, each after
    // the exchange published 2000 more trades.
    let mut published = ex.published().unwrap();
    for _ in 0..3 {
        published = wait_for(10, "the exchange to publish more", || {
            ex.published().filter(|&p| p >= published + 2000)
        });
        let s = get(&format!("{}/recording", rec.url));
        assert_eq!(s["packets"], paused["packets"], "written while paused: {s}");
    }
    toggle(true);
    wait_for(10, "recording again", || {
        status(&rec.url)
            .filter(|s| s["packets"].as_u64() > paused["packets"].as_u64().map(|p| p + 500))
    });
    toggle(false);
    let end = wait_for(10, "Paused again", || {
        status(&rec.url).filter(|s| s["state"] == "Paused")
    });
    let periods = end["index"]["files"].as_array().unwrap();
    assert_eq!(periods.len(), 2, "one file per recording period: {end}");
    for f in periods {
        assert_eq!(f["missing"], serde_json::json!([]), "{f}");
        let (first, last) = (
            f["firstSeq"].as_u64().unwrap(),
            f["lastSeq"].as_u64().unwrap(),
        );
        assert_eq!(
            f["trades"].as_u64().unwrap(),
            last - first + 1,
            "no gap inside: {f}"
        );
        let (_, seqs) = tshark_seqs(&dir.join(f["name"].as_str().unwrap()));
        assert_eq!(seqs.len() as u64, last - first + 1, "{f}");
    }
    assert!(
        periods[1]["firstSeq"].as_u64() > periods[0]["lastSeq"].as_u64(),
        "nothing from the pause is recorded: {end}"
    );
}

fn fails_with(cmd: &mut Command, code: i32, needle: &str) {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
}

#[test]
fn bad_input_gets_a_clear_line_and_exit_code_2() {
    let tmp = tempfile::tempdir().unwrap();
    fails_with(
        ticklab().args(["replay", "/nonexistent/feed.pcap"]),
        2,
        "/nonexistent/feed.pcap: no such file",
    );
    for speed in ["0", "1000"] {
        fails_with(
            ticklab().args(["replay", "/dev/null", "--speed", speed]),
            2,
            "out of range",
        );
    }
    // A pcap of UDP datagrams that are not ticklab feed packets.
    let dir = tmp.path().join("other");
    let mut writer = ticklab_recording::RecordingWriter::open(
        ticklab_recording::WriterConfig::new(&dir, ticklab_recording::Format::Pcap),
    )
    .unwrap();
    let a: std::net::SocketAddrV4 = "10.0.0.1:53".parse().unwrap();
    for i in 0..10u8 {
        writer
            .write_packet(1_000 + u64::from(i), a, a, b"not a feed")
            .unwrap();
    }
    writer.pause().unwrap();
    let name = files(&index(&dir))[0]["name"].as_str().unwrap().to_string();
    fails_with(
        ticklab().args(["replay", dir.join(&name).to_str().unwrap()]),
        2,
        "holds no ticklab feed packets",
    );
    // A RecordingSession naming an experiment the file does not hold.
    let file = tmp.path().join("orphan.yaml");
    std::fs::write(
        &file,
        EXPERIMENT.replace("experiment: recorded", "experiment: elsewhere"),
    )
    .unwrap();
    fails_with(
        ticklab().args(["run", file.to_str().unwrap()]),
        2,
        "records experiment \"elsewhere\", which is not in the file",
    );
}
