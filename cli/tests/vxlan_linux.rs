//! VXLAN made by an independent implementation: the Linux kernel's `vxlan` device.
//! The exchange and the trader talk over a VXLAN overlay between two network
//! namespaces; tcpdump records the underlay (whole packets, and a second capture
//! cut to 200 bytes as a mirror's packet length would), and `ticklab decode` reads
//! both files. The whole capture must account for every trade and order the trader
//! saw, timed on arrival (plain VXLAN has no timestamp); the cut one must decode
//! what its bytes hold, count the rest as cut off, and never fail. Needs root.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", args[0]));
    assert!(
        out.status.success(),
        "{}: {} (this test needs root: scripts/test.sh runs as root in CI)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn in_ns(ns: &str, program: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, program]).args(args);
    c
}

fn spawn_service(ns: &str, service: &str, dir: &Path) -> Child {
    let arg = |ext: &str| {
        dir.join(format!("{service}.{ext}"))
            .to_str()
            .unwrap()
            .to_string()
    };
    in_ns(
        ns,
        env!("CARGO_BIN_EXE_ticklab"),
        &[
            service,
            "--config",
            &arg("yaml"),
            "--results-file",
            &arg("json"),
        ],
    )
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(dir.join(format!("{service}.log"))).unwrap())
    .spawn()
    .unwrap()
}

/// SIGTERM (tcpdump: SIGINT, which makes it write out what it holds) and wait.
fn stop(mut child: Child, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("a process did not stop on {signal}");
}

fn decode(file: &Path) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_ticklab"))
        .args([
            "decode",
            file.to_str().unwrap(),
            "--json",
            "--vni",
            "4242",
            "--retransmit-port",
            "9001",
            "--server-port",
            "9002",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ticklab decode: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn vxlan_from_the_linux_kernel_is_decoded_whole_and_cut() {
    let id = std::process::id() % 100_000;
    let (a, b) = (format!("tva{id}"), format!("tvb{id}"));
    let _namespaces = Namespaces(vec![a.clone(), b.clone()]);
    let (va, vb) = (format!("tva{id}u"), format!("tvb{id}u"));
    for n in [&a, &b] {
        run(&["ip", "netns", "add", n]);
        run(&["ip", "-n", n, "link", "set", "lo", "up"]);
    }
    run(&[
        "ip", "link", "add", &va, "type", "veth", "peer", "name", &vb,
    ]);
    run(&["ip", "link", "set", &va, "netns", &a]);
    run(&["ip", "link", "set", &vb, "netns", &b]);
    for (n, dev, under, local, remote, over) in [
        (
            &a,
            &va,
            "198.18.2.1/30",
            "198.18.2.1",
            "198.18.2.2",
            "198.18.3.1/24",
        ),
        (
            &b,
            &vb,
            "198.18.2.2/30",
            "198.18.2.2",
            "198.18.2.1",
            "198.18.3.2/24",
        ),
    ] {
        run(&["ip", "-n", n, "addr", "add", under, "dev", dev]);
        run(&["ip", "-n", n, "link", "set", dev, "up"]);
        run(&[
            "ip", "-n", n, "link", "add", "vx0", "type", "vxlan", "id", "4242", "local", local,
            "remote", remote, "dstport", "4789", "dev", dev,
        ]);
        run(&["ip", "-n", n, "addr", "add", over, "dev", "vx0"]);
        run(&["ip", "-n", n, "link", "set", "vx0", "up"]);
    }

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("trader.yaml"),
        r#"experiment: vxlan
symbols: [EURUSD, BTCUSD, USDJPY]
spec:
  strategy: {thresholdBps: 2, maxOrdersPerSecond: 500}
  orderTransport: tcp
  persistence: {enabled: false}
transport: udp
feedUdpListen: 198.18.3.2:9000
retransmitServer: 198.18.3.1:9001
orderTcp: 198.18.3.1:9002
orderHttp: http://198.18.3.1:9003
apiListen: 198.18.3.2:9100
recoveryTimeoutMs: 500
"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("exchange.yaml"),
        r#"experiment: vxlan
spec:
  symbols: [EURUSD, BTCUSD, USDJPY]
  ratePerSecond: 10000
  seed: 3
  maxPacketBytes: 1200
durationMillis: 1500
feedUdpTarget: 198.18.3.2:9000
feedListen: 198.18.3.1:9004
retransmitListen: 198.18.3.1:9001
orderTcpListen: 198.18.3.1:9002
orderHttpListen: 198.18.3.1:9003
adminListen: 198.18.3.1:9101
"#,
    )
    .unwrap();

    // Two recordings of the underlay: whole, and cut to 200 bytes per packet.
    let (whole, cut) = (dir.path().join("whole.pcap"), dir.path().join("cut.pcap"));
    let tcpdump = |file: &Path, snap: &str, log: &str| {
        // Immediate mode: without it, libpcap hands packets over in blocks, and
        // the packets of a block not yet full when tcpdump stops are never written.
        in_ns(
            &b,
            "tcpdump",
            &[
                "-i",
                &vb,
                "--immediate-mode",
                "-B",
                "65536",
                "-U",
                "-s",
                snap,
                "-w",
                file.to_str().unwrap(),
                "udp",
                "port",
                "4789",
            ],
        )
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join(log)).unwrap())
        .spawn()
        .expect("tcpdump is not installed")
    };
    let dump_whole = tcpdump(&whole, "0", "whole.log");
    let dump_cut = tcpdump(&cut, "200", "cut.log");
    let deadline = Instant::now() + Duration::from_secs(20);
    let listening = |log: &str| {
        std::fs::read_to_string(dir.path().join(log))
            .unwrap_or_default()
            .contains("listening on")
    };
    while Instant::now() < deadline && !(listening("whole.log") && listening("cut.log")) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        listening("whole.log") && listening("cut.log"),
        "tcpdump did not start"
    );

    let trader = spawn_service(&b, "trader", dir.path());
    let exchange = spawn_service(&a, "exchange", dir.path());
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut stats = Value::Null;
    while Instant::now() < deadline {
        let out = in_ns(&b, "curl", &["-sf", "http://198.18.3.2:9100/stats"])
            .output()
            .unwrap();
        if let Ok(v) = serde_json::from_slice::<Value>(&out.stdout) {
            stats = v;
        }
        if stats["settled"] == true {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop(exchange, "-TERM");
    stop(trader, "-TERM");
    stop(dump_whole, "-INT");
    stop(dump_cut, "-INT");
    let logs = || {
        ["trader", "exchange", "whole", "cut"]
            .map(|s| {
                format!(
                    "--- {s}:\n{}",
                    std::fs::read_to_string(dir.path().join(format!("{s}.log")))
                        .unwrap_or_default()
                )
            })
            .join("\n")
    };
    assert_eq!(
        stats["settled"],
        true,
        "trader never settled: {stats}\n{}",
        logs()
    );
    let t: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("trader.json")).unwrap())
            .unwrap();
    let n = |v: &Value, path: &[&str]| {
        path.iter()
            .fold(v, |v, k| &v[*k])
            .as_u64()
            .unwrap_or_else(|| panic!("{path:?} in {v}"))
    };
    // tcpdump says how many packets the kernel dropped before it read them: then
    // the counts cannot match, and the capture, not the decoder, is at fault.
    for log in ["whole.log", "cut.log"] {
        let text = std::fs::read_to_string(dir.path().join(log)).unwrap_or_default();
        let dropped = text
            .lines()
            .find_map(|l| l.strip_suffix(" packets dropped by kernel"));
        assert_eq!(
            dropped,
            Some("0"),
            "tcpdump ({log}) lost packets, so no count can match:\n{}",
            logs()
        );
    }

    let w = decode(&whole);
    let context = format!("trader: {t}\nwhole: {w:#}\n{}", logs());
    assert_eq!(
        n(&w, &["messages", "trades"]),
        n(&t, &["received"]),
        "{context}"
    );
    assert_eq!(
        n(&w, &["messages", "tradesRecovered"]),
        n(&t, &["recovered"]),
        "{context}"
    );
    assert_eq!(
        n(&w, &["messages", "orders"]),
        n(&t, &["orders"]),
        "{context}"
    );
    assert_eq!(
        n(&w, &["messages", "ordersMatched"]),
        n(&t, &["orders"]),
        "{context}"
    );
    assert_eq!(
        w["timing"], "arrival",
        "plain VXLAN is timed on arrival: {context}"
    );
    assert_eq!(w["decodeErrors"], serde_json::json!({}), "{context}");
    assert_eq!(n(&w, &["truncated"]), 0, "{context}");

    // Cut to 200 bytes: 14 + 20 + 8 outer and 8 VXLAN leave 150 of the inner
    // frame; after its 14 + 20 + 8 come 108 bytes of each feed datagram: the
    // 20-byte header and the first two trades (44 bytes each with their length).
    let c = decode(&cut);
    let context = format!("trader: {t}\ncut: {c:#}\n{}", logs());
    assert!(n(&c, &["truncated"]) > 0, "{context}");
    let (cut_trades, whole_trades) = (
        n(&c, &["messages", "trades"]),
        n(&w, &["messages", "trades"]),
    );
    assert!(cut_trades > 0 && cut_trades < whole_trades, "{context}");
    assert!(n(&c, &["decodeErrors", "feed_cut_off"]) > 0, "{context}");
}
