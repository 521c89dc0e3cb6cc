//! `ticklab` end to end, as a user runs it: real binaries, real sockets on loopback,
//! experiment files written to a temporary directory. Runs are short (about a second
//! of feed each) and checked on counts, never on timing.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use assert_cmd::Command;
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

fn ticklab() -> Command {
    Command::cargo_bin("ticklab").unwrap()
}

/// Runs a file with `--output json` and returns the report.
fn run_json(file: &Path, extra: &[&str]) -> Value {
    let out = ticklab()
        .arg("run")
        .arg(file)
        .args(["--output", "json"])
        .args(extra)
        .timeout(std::time::Duration::from_secs(60))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"))
}

fn u(v: &Value, key: &str) -> u64 {
    v["results"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("no {key} in {v}"))
}

/// Every trade sent was delivered exactly once: received or recovered, none lost.
fn assert_exactly_once(report: &Value) {
    let sent = u(report, "sent");
    assert!(sent > 1000, "too few trades to mean anything: {report}");
    assert_eq!(
        report["exchange"]["tradesPublished"].as_u64().unwrap(),
        sent,
        "{report}"
    );
    assert_eq!(
        u(report, "received") + u(report, "recovered"),
        sent,
        "{report}"
    );
    assert_eq!(u(report, "lost"), 0, "{report}");
    assert_eq!(u(report, "malformed"), 0, "{report}");
    let latency = &report["results"]["feedLatency"];
    assert_eq!(
        latency["count"].as_u64().unwrap(),
        u(report, "received"),
        "{report}"
    );
    assert!(latency["p50Micros"].as_f64().unwrap() <= latency["p99Micros"].as_f64().unwrap());
}

/// Datagrams the kernel has dropped on receive in this network namespace so far:
/// UDP receive errors (a full socket buffer) and full per-CPU backlogs. On loopback
/// they are the only way a datagram goes missing, and they happen when a receiver
/// is descheduled long enough, which a loaded machine does. The counters are
/// shared with whatever else runs, so a rise only says "maybe ours".
fn kernel_udp_drops() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap();
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next().unwrap(), udp.next().unwrap());
    let in_errors: u64 = names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "InErrors")
        .map(|(_, value)| value.parse().unwrap())
        .unwrap();
    let backlog: u64 = std::fs::read_to_string("/proc/net/softnet_stat")
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|hex| u64::from_str_radix(hex, 16).unwrap())
        .sum();
    in_errors + backlog
}

#[test]
fn every_transport_delivers_every_trade_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    for transport in ["udp", "tcp", "websocket"] {
        let file = experiment(
            dir.path(),
            &format!("exactly-once-{transport}"),
            &format!(
                "  exchange:\n    symbols: [EURUSD, BTCUSD]\n    ratePerSecond: 20000\n    transport: {transport}\n  duration: 1s\n"
            ),
        );
        let drops_before = kernel_udp_drops();
        let report = run_json(&file, &[]);
        let kernel_dropped = kernel_udp_drops().saturating_sub(drops_before);
        assert_eq!(report["transport"], transport);
        assert_exactly_once(&report);
        // A UDP datagram the kernel dropped under load is a gap the trader must
        // recover (exactly once still holds); with no such drop there is none.
        if transport != "udp" || kernel_dropped == 0 {
            assert_eq!(u(&report, "gaps"), 0, "{transport}: {report}");
        }
        let source = report["results"]["timestampSource"].as_str().unwrap();
        assert_eq!(source, if transport == "udp" { "kernel" } else { "user" });
        // The strategy trades on the feed; every order got an answer.
        assert!(u(&report, "orders") > 0, "{transport}: {report}");
    }
}

#[test]
fn dropped_packets_are_detected_and_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let file = experiment(
        dir.path(),
        "lossy",
        "  exchange:\n    symbols: [EURUSD, USDJPY, ETHUSD]\n    ratePerSecond: 30000\n    faults:\n      dropPercent: 5\n  duration: 1s\n",
    );
    let drops_before = kernel_udp_drops();
    let report = run_json(&file, &[]);
    let kernel_dropped = kernel_udp_drops().saturating_sub(drops_before);
    assert_exactly_once(&report);
    let dropped = report["exchange"]["packetsDroppedByFault"]
        .as_u64()
        .unwrap();
    assert!(dropped > 0, "{report}");
    assert!(
        u(&report, "gaps") > 0 && u(&report, "recovered") > 0,
        "{report}"
    );
    // Each gap is a run of dropped packets: by the fault, or by a kernel that ran
    // out of buffer while the trader was descheduled.
    assert!(
        u(&report, "gaps") <= dropped + kernel_dropped,
        "{kernel_dropped} dropped by the kernel: {report}"
    );
}

#[test]
fn orders_over_http_are_answered() {
    let dir = tempfile::tempdir().unwrap();
    let file = experiment(
        dir.path(),
        "http-orders",
        "  exchange:\n    symbols: [BTCUSD]\n    ratePerSecond: 20000\n  trader:\n    orderTransport: http\n    strategy:\n      thresholdBps: 1\n  duration: 1s\n",
    );
    let report = run_json(&file, &[]);
    let orders = u(&report, "orders");
    assert!(orders > 0, "{report}");
    assert!(
        report["results"]["tickToTrade"]["count"].as_u64().unwrap() == orders,
        "{report}"
    );
    assert!(
        report["results"]["orderRoundTrip"]["count"]
            .as_u64()
            .unwrap()
            > 0,
        "{report}"
    );
    assert_eq!(
        report["exchange"]["ordersReceived"].as_u64().unwrap(),
        orders,
        "{report}"
    );
}

#[test]
fn slo_breach_exits_three_and_table_output_reads_well() {
    let dir = tempfile::tempdir().unwrap();
    let file = experiment(
        dir.path(),
        "strict",
        "  exchange:\n    symbols: [EURUSD]\n    ratePerSecond: 5000\n  duration: 1s\n  slo:\n    p99Micros: 0.001\n",
    );
    let out = ticklab()
        .arg("run")
        .arg(&file)
        .arg("--quiet")
        .timeout(std::time::Duration::from_secs(60))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "one-way feed",
        "tick-to-trade",
        "p99.9",
        "SLO: BREACHED",
        "in memory only",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
}

/// Runs with bad input: one line on stderr naming the problem, nothing on stdout,
/// the given exit code.
fn assert_rejected(args: &[&str], code: i32, needles: &[&str]) {
    let out = ticklab()
        .args(args)
        .timeout(std::time::Duration::from_secs(30))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
    assert!(out.stdout.is_empty(), "{args:?} printed to stdout");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "{args:?}: not one line:\n{stderr}"
    );
    for n in needles {
        assert!(stderr.contains(n), "{args:?}: {n:?} not in {stderr:?}");
    }
}

#[test]
fn bad_input_gets_one_line_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let good = "  exchange:\n    symbols: [EURUSD]\n    ratePerSecond: 1000\n  duration: 1s\n";
    let cases = [
        (
            "unknown-field",
            good.replace("ratePerSecond", "ratePerSecnd"),
            vec!["ratePerSecnd"],
        ),
        (
            "rate-zero",
            good.replace("1000", "0"),
            vec!["spec.exchange.ratePerSecond", "0"],
        ),
        (
            "unknown-symbol",
            good.replace("EURUSD", "DOGEUSD"),
            vec!["spec.exchange.symbols", "DOGEUSD"],
        ),
        (
            "bad-duration",
            good.replace("1s", "soon"),
            vec!["spec.duration"],
        ),
        (
            "bad-transport",
            good.replace(
                "ratePerSecond: 1000",
                "ratePerSecond: 1000\n    transport: carrier-pigeon",
            ),
            vec!["transport", "carrier-pigeon"],
        ),
    ];
    for (name, body, needles) in cases {
        let file = experiment(dir.path(), name, &body);
        let path = file.to_str().unwrap();
        let mut needles = needles;
        needles.push(path);
        assert_rejected(&["run", path], 2, &needles);
        assert_rejected(&["validate", path], 2, &needles);
    }
    assert_rejected(
        &["run", "/nonexistent/experiment.yaml"],
        2,
        &["cannot read /nonexistent/experiment.yaml"],
    );
    let not_yaml = dir.path().join("garbage.yaml");
    std::fs::write(&not_yaml, "spec: [unclosed").unwrap();
    assert_rejected(&["run", not_yaml.to_str().unwrap()], 2, &["not valid YAML"]);
}

#[test]
fn port_in_use_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = experiment(
        dir.path(),
        "busy",
        "  exchange:\n    symbols: [EURUSD]\n    ratePerSecond: 1000\n  duration: 1s\n",
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    assert_rejected(
        &["run", file.to_str().unwrap(), "--trader-port", &port],
        1,
        &[&format!("127.0.0.1:{port}")],
    );
    assert_rejected(
        &["run", file.to_str().unwrap(), "--exchange-port", &port],
        1,
        &[&format!("127.0.0.1:{port}")],
    );
}

#[test]
fn every_example_manifest_is_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples");
    for entry in std::fs::read_dir(root).unwrap() {
        let path = entry.unwrap().path();
        ticklab().arg("validate").arg(&path).assert().success();
    }
}

#[test]
fn version_is_printed() {
    ticklab()
        .arg("--version")
        .assert()
        .success()
        .stdout(predicates::str::contains(env!("CARGO_PKG_VERSION")));
}

/// A child process killed when dropped, so a failing test leaves no run behind.
struct Running(Option<std::process::Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test]
async fn ctrl_c_ends_the_session_cleanly_and_still_reports() {
    let dir = tempfile::tempdir().unwrap();
    let file = experiment(
        dir.path(),
        "until-interrupted",
        "  exchange:\n    symbols: [EURUSD, USDJPY]\n    ratePerSecond: 5000\n",
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Running(Some(
        std::process::Command::new(assert_cmd::cargo::cargo_bin("ticklab"))
            .arg("run")
            .arg(&file)
            .args(["--output", "json", "--trader-port", &port.to_string()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    // Interrupted once trades flow (no duration: it would run forever), which the
    // trader's /stats shows; by then the signal handler, set up before anything
    // starts, is long in place. A fixed sleep can fall before either on a cold,
    // loaded machine.
    let stats = format!("http://127.0.0.1:{port}/stats");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let running = child.0.as_mut().unwrap();
        if let Some(status) = running.try_wait().unwrap() {
            let out = child.0.take().unwrap().wait_with_output().unwrap();
            panic!(
                "ticklab run exited ({status}) before trades flowed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let received = async {
            let stats: Value = reqwest::get(&stats).await.ok()?.json().await.ok()?;
            stats["received"].as_u64()
        }
        .await;
        if received.is_some_and(|n| n > 0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no trades received within 60 s (last /stats: {received:?})"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let child = child.0.take().unwrap();
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["interrupted"], true);
    assert!(u(&report, "sent") > 0, "{report}");
    assert_nothing_lost(&report);
}

/// After an interrupt the session is ended cleanly, so nothing is lost either.
fn assert_nothing_lost(report: &Value) {
    assert_eq!(u(report, "lost"), 0, "{report}");
    assert_eq!(
        u(report, "received") + u(report, "recovered"),
        u(report, "sent"),
        "{report}"
    );
}
