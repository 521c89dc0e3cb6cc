//! `ticklab run` over TLS, as a user runs it (the real binary, loopback), checked by
//! independent tools: tcpdump captures the loopback traffic of a run with a wss feed
//! and HTTPS orders, and tshark decrypts the capture with the key log the run wrote
//! (`SSLKEYLOGFILE`): it must find the feed's WebSocket binary messages and exactly
//! as many HTTP order POSTs as the report says were sent, and nothing without the key
//! log. Needs root (to capture) and Debian's tcpdump and tshark, which
//! scripts/tools/apt-packages.sh installs (CI runs as root). Counts, never timing.
#![allow(clippy::unwrap_used)]

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn experiment(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!("apiVersion: ticklab.dev/v1alpha1\nkind: LatencyExperiment\nmetadata:\n  name: {name}\nspec:\n{body}"),
    )
    .unwrap();
    path
}

/// `ticklab run FILE --output json` with `env`; the report.
fn run_json(file: &Path, env: &[(&str, &Path)]) -> Value {
    let mut command = assert_cmd::Command::cargo_bin("ticklab").unwrap();
    command
        .arg("run")
        .arg(file)
        .args(["--output", "json"])
        .env_remove("SSLKEYLOGFILE")
        .timeout(Duration::from_secs(60));
    for (key, value) in env {
        command.env(key, value);
    }
    let out = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"))
}

fn n(v: &Value, path: &[&str]) -> u64 {
    path.iter()
        .fold(v, |v, key| &v[*key])
        .as_u64()
        .unwrap_or_else(|| panic!("no {} in {v}", path.join(".")))
}

fn port(v: &Value, endpoint: &str) -> u16 {
    let addr: std::net::SocketAddr = v["endpoints"][endpoint]
        .as_str()
        .unwrap_or_else(|| panic!("no endpoints.{endpoint} in {v}"))
        .parse()
        .unwrap();
    addr.port()
}

/// Every trade delivered once, every order answered by the exchange.
fn assert_trades_and_orders(report: &Value) {
    let sent = n(report, &["results", "sent"]);
    assert!(sent > 1000, "too few trades to mean anything: {report}");
    assert_eq!(
        n(report, &["exchange", "tradesPublished"]),
        sent,
        "{report}"
    );
    assert_eq!(
        n(report, &["results", "received"]) + n(report, &["results", "recovered"]),
        sent,
        "{report}"
    );
    assert_eq!(n(report, &["results", "lost"]), 0, "{report}");
    let orders = n(report, &["results", "orders"]);
    assert!(orders > 0, "no orders: {report}");
    assert_eq!(
        n(report, &["exchange", "ordersReceived"]),
        orders,
        "{report}"
    );
    assert_eq!(n(report, &["tls", "handshakeFailures"]), 0, "{report}");
}

/// tcpdump writing loopback TCP to a file, stopped (SIGINT, so the file is complete)
/// by [`Capture::stop`] or killed when dropped.
struct Capture(Option<Child>, std::sync::mpsc::Receiver<String>);

impl Capture {
    fn start(file: &Path) -> Self {
        let mut child = Command::new("tcpdump")
            // Packet-buffered (-U) so the file grows as packets come; immediate mode
            // (libpcap otherwise hands packets over in blocks, and those of a block
            // not yet full when tcpdump stops are never written); a 64 MiB buffer, so
            // a busy machine does not make the kernel drop any; whole packets; no
            // privilege drop (-Z root), so it may write into a private temp dir.
            .args(["-i", "lo", "--immediate-mode", "-B", "65536", "-U", "-s", "0", "-Z", "root", "-w"])
            .arg(file)
            .arg("tcp")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump is not installed: scripts/tools/apt-packages.sh installs it (apt-get install -y tcpdump)");
        // Ready once it says it listens; its stderr is drained from then on.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut said = Vec::new();
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) if line.contains("listening on") => break,
                Ok(line) => said.push(line),
                Err(_) => {
                    if let Some(status) = child.try_wait().unwrap() {
                        panic!(
                            "tcpdump exited ({status}) before capturing (this test needs root):\n{}",
                            said.join("\n")
                        );
                    }
                    assert!(Instant::now() < deadline, "tcpdump never started listening");
                }
            }
        }
        Self(Some(child), rx)
    }

    fn stop(mut self) {
        let child = self.0.take().unwrap();
        let status = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "tcpdump: {:?}", out.status);
        // Its last words count what the kernel dropped: any, and no count can match.
        // (The reader thread ends at its stderr's end, shortly after the exit.)
        let mut said = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match self.1.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => said.push(line),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
        let dropped = said
            .iter()
            .find_map(|l| l.strip_suffix(" packets dropped by kernel"));
        assert_eq!(
            dropped,
            Some("0"),
            "tcpdump lost packets:\n{}",
            said.join("\n")
        );
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The values of `field` in the packets tshark shows for `filter`, decoding the
/// `tls_ports` as TLS (with `key_log`, decrypted). Every value of a packet holding
/// several PDUs counts. `complete`: the capture is finished, so tshark must succeed.
fn tshark(
    pcap: &Path,
    key_log: Option<&Path>,
    tls_ports: &[u16],
    filter: &str,
    field: &str,
    complete: bool,
) -> Vec<String> {
    let mut command = Command::new("tshark");
    command.arg("-n").arg("-r").arg(pcap);
    if let Some(key_log) = key_log {
        command
            .arg("-o")
            .arg(format!("tls.keylog_file:{}", key_log.display()));
    }
    for port in tls_ports {
        command.args(["-d", &format!("tcp.port=={port},tls")]);
    }
    // Only the run's own connections: other tests talk over loopback at the same
    // time (HTTP among them), and tcpdump sees all of it.
    let ports: Vec<String> = tls_ports.iter().map(u16::to_string).collect();
    let filter = format!("({filter}) && tcp.port in {{{}}}", ports.join(", "));
    let out = command
        .args(["-Y", &filter, "-T", "fields", "-e", field])
        .output()
        .expect("tshark is not installed: scripts/tools/apt-packages.sh installs it (apt-get install -y tshark)");
    // A capture still being written may end inside a packet: tshark says so and
    // stops there, which a later poll gets past.
    assert!(
        out.status.success() || !complete,
        "tshark {filter}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .flat_map(|l| l.split(','))
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn a_wss_feed_and_https_orders_are_decrypted_by_tshark_with_the_runs_key_log() {
    let dir = tempfile::tempdir().unwrap();
    let file = experiment(
        dir.path(),
        "tls-wss",
        "  exchange:\n    symbols: [EURUSD, BTCUSD]\n    ratePerSecond: 5000\n    transport: websocket\n  trader:\n    orderTransport: http\n    strategy: {thresholdBps: 1}\n    persistence: {enabled: false}\n  tls:\n    keyLog: true\n  duration: 1s\n",
    );
    let key_log = dir.path().join("keys.log");
    let pcap = dir.path().join("run.pcap");
    let capture = Capture::start(&pcap);
    let report = run_json(&file, &[("SSLKEYLOGFILE", &key_log)]);

    assert_trades_and_orders(&report);
    assert_eq!(report["transport"], "websocket");
    // The feed and at least one HTTPS connection.
    assert!(n(&report, &["tls", "handshakes"]) >= 2, "{report}");
    assert_eq!(report["tls"]["keyLogFile"], key_log.display().to_string());
    let lines = std::fs::read_to_string(&key_log).unwrap();
    assert_eq!(
        lines.lines().count() as u64,
        n(&report, &["tls", "keyLogLines"]),
        "{lines}"
    );
    for line in lines.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields.len(), 3, "{line}");
        assert_eq!(fields[1].len(), 64, "{line}");
    }

    // tshark, with the key log, sees inside both channels. Polled until the capture
    // holds every order (tcpdump writes what the kernel handed it, which may trail
    // the run's end), then stopped so the file is complete.
    let ports = [port(&report, "feed"), port(&report, "orderHttp")];
    let orders = n(&report, &["results", "orders"]);
    let posts = || {
        tshark(
            &pcap,
            Some(&key_log),
            &ports,
            "http.request.method == \"POST\"",
            "http.request.uri",
            false,
        )
        .len() as u64
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while posts() < orders {
        assert!(
            Instant::now() < deadline,
            "tshark decrypted {} of {orders} order POSTs",
            posts()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    capture.stop();

    let uris = tshark(
        &pcap,
        Some(&key_log),
        &ports,
        "http.request.method == \"POST\"",
        "http.request.uri",
        true,
    );
    assert_eq!(uris.len() as u64, orders, "{uris:?}");
    assert!(uris.iter().all(|u| u == "/orders"), "{uris:?}");
    let opcodes = tshark(
        &pcap,
        Some(&key_log),
        &ports,
        "websocket",
        "websocket.opcode",
        true,
    );
    let binary = opcodes.iter().filter(|o| *o == "2").count() as u64;
    assert!(
        binary > 0,
        "no WebSocket binary message decrypted: {opcodes:?}"
    );
    // Every feed packet the exchange delivered is one message (the end of session
    // and any heartbeat add to them): tshark decrypted the whole feed, not a part.
    let delivered =
        n(&report, &["exchange", "packetsSent"]) - n(&report, &["exchange", "packetsLagged"]);
    assert!(
        binary >= delivered,
        "{binary} binary messages decrypted, {delivered} packets delivered: {report}"
    );
    // Without the key log the same capture shows neither: the channels are encrypted.
    assert!(
        tshark(
            &pcap,
            None,
            &ports,
            "websocket || http",
            "frame.number",
            true
        )
        .is_empty()
    );
}

#[test]
fn a_tls_tcp_feed_with_tls_tcp_orders_delivers_every_trade_without_a_key_log() {
    let dir = tempfile::tempdir().unwrap();
    let file = experiment(
        dir.path(),
        "tls-tcp",
        "  exchange:\n    symbols: [EURUSD, USDJPY]\n    ratePerSecond: 5000\n    transport: tcp\n  trader:\n    strategy: {thresholdBps: 1}\n    persistence: {enabled: false}\n  tls:\n    minVersion: \"1.3\"\n  duration: 1s\n",
    );
    let report = run_json(&file, &[]);
    assert_trades_and_orders(&report);
    assert_eq!(report["transport"], "tcp");
    // The feed and the order connection.
    assert_eq!(n(&report, &["tls", "handshakes"]), 2, "{report}");
    assert_eq!(report["tls"]["minVersion"], "1.3");
    assert!(report["tls"].get("keyLogLines").is_none(), "{report}");
}
