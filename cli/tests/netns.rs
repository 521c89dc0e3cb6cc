//! The services as they run in pods, across a real network path: the exchange and
//! the trader (`ticklab exchange` / `ticklab trader`, from rendered configuration
//! files) in two network namespaces joined by a veth pair, with an nftables rule in
//! the exchange's namespace dropping 3% of feed datagrams at random. Every trade must
//! still arrive exactly once, through gap detection and retransmission. Needs root
//! (CI and scripts/test.sh run as root); addresses are from 198.18.0.0/15, the
//! benchmarking range, and exist only inside the namespaces this test creates.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

struct Namespaces {
    exchange: String,
    trader: String,
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in [&self.exchange, &self.trader] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("iproute2 (ip) is not installed");
    assert!(
        out.status.success(),
        "ip {}: {} (this test needs root: scripts/test.sh runs as root in CI)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn in_ns(ns: &str, program: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, program]).args(args);
    c
}

fn spawn_service(ns: &str, service: &str, config: &Path, results: &Path, log: &Path) -> Child {
    in_ns(
        ns,
        env!("CARGO_BIN_EXE_ticklab"),
        &[
            service,
            "--config",
            config.to_str().unwrap(),
            "--results-file",
            results.to_str().unwrap(),
        ],
    )
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(log).unwrap())
    .spawn()
    .unwrap()
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("service did not stop on SIGTERM");
}

/// Orders the exchange has executed so far (every outcome), from its /metrics.
fn exchange_orders(ns: &str) -> Option<u64> {
    let out = in_ns(ns, "curl", &["-sf", "http://198.18.0.1:9101/metrics"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let metrics = String::from_utf8(out.stdout).ok()?;
    let mut total = 0;
    for line in metrics.lines() {
        if let Some(rest) = line.strip_prefix("ticklab_exchange_orders_total{") {
            total += rest.rsplit(' ').next()?.parse::<u64>().ok()?;
        }
    }
    Some(total)
}

#[test]
fn lossy_network_path_between_namespaces_loses_nothing() {
    let id = std::process::id() % 100_000;
    let ns = Namespaces {
        exchange: format!("tlx{id}"),
        trader: format!("tlt{id}"),
    };
    let (va, vb) = (format!("tlx{id}a"), format!("tlt{id}b"));
    ip(&["netns", "add", &ns.exchange]);
    ip(&["netns", "add", &ns.trader]);
    ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb]);
    ip(&["link", "set", &va, "netns", &ns.exchange]);
    ip(&["link", "set", &vb, "netns", &ns.trader]);
    ip(&[
        "-n",
        &ns.exchange,
        "addr",
        "add",
        "198.18.0.1/30",
        "dev",
        &va,
    ]);
    ip(&["-n", &ns.trader, "addr", "add", "198.18.0.2/30", "dev", &vb]);
    for (n, dev) in [(&ns.exchange, &va), (&ns.trader, &vb)] {
        ip(&["-n", n, "link", "set", dev, "up"]);
        ip(&["-n", n, "link", "set", "lo", "up"]);
    }
    // The network loses 3% of the feed's datagrams, chosen at random by the kernel.
    let nft = |args: &[&str]| {
        let out = in_ns(&ns.exchange, "nft", args)
            .output()
            .expect("nftables (nft) is not installed");
        assert!(
            out.status.success(),
            "nft {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    nft(&["add", "table", "inet", "lossy"]);
    nft(&[
        "add",
        "chain",
        "inet",
        "lossy",
        "out",
        "{ type filter hook output priority 0; }",
    ]);
    nft(&[
        "add", "rule", "inet", "lossy", "out", "udp", "dport", "9000", "numgen", "random", "mod",
        "100", "<", "3", "drop",
    ]);

    let dir = tempfile::tempdir().unwrap();
    // The retransmission timeout is generous: five unanswered requests in a row
    // declare a range lost, and a loaded machine can keep the exchange's
    // retransmission thread or the trader's feed thread off a core for tens of
    // milliseconds, which is no loss. The rule drops feed datagrams only, not
    // requests nor answers, so the longer wait is almost never taken.
    let trader_config = dir.path().join("trader.yaml");
    std::fs::write(
        &trader_config,
        r#"experiment: netns
symbols: [EURUSD, BTCUSD, USDJPY]
spec:
  strategy: {thresholdBps: 2, maxOrdersPerSecond: 500}
  orderTransport: tcp
  persistence: {enabled: false}
transport: udp
feedUdpListen: 198.18.0.2:9000
retransmitServer: 198.18.0.1:9001
orderTcp: 198.18.0.1:9002
orderHttp: http://198.18.0.1:9003
apiListen: 198.18.0.2:9100
recoveryTimeoutMs: 500
"#,
    )
    .unwrap();
    let exchange_config = dir.path().join("exchange.yaml");
    std::fs::write(
        &exchange_config,
        r#"experiment: netns
spec:
  symbols: [EURUSD, BTCUSD, USDJPY]
  ratePerSecond: 40000
  seed: 5
durationMillis: 1500
feedUdpTarget: 198.18.0.2:9000
feedListen: 198.18.0.1:9004
retransmitListen: 198.18.0.1:9001
orderTcpListen: 198.18.0.1:9002
orderHttpListen: 198.18.0.1:9003
adminListen: 198.18.0.1:9101
"#,
    )
    .unwrap();
    let (trader_results, exchange_results) = (
        dir.path().join("trader.json"),
        dir.path().join("exchange.json"),
    );
    let trader = spawn_service(
        &ns.trader,
        "trader",
        &trader_config,
        &trader_results,
        &dir.path().join("trader.log"),
    );
    let exchange = spawn_service(
        &ns.exchange,
        "exchange",
        &exchange_config,
        &exchange_results,
        &dir.path().join("exchange.log"),
    );

    // Wait until the trader says the session ended and nothing is missing, and the
    // exchange has executed every order the trader sent: orders still on the way
    // when the services are stopped would make the final counts disagree.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = Value::Null;
    let mut executed = None;
    while Instant::now() < deadline {
        let out = in_ns(&ns.trader, "curl", &["-sf", "http://198.18.0.2:9100/stats"])
            .output()
            .expect("curl is not installed");
        if let Ok(v) = serde_json::from_slice::<Value>(&out.stdout) {
            last = v;
        }
        if last["settled"] == true {
            executed = exchange_orders(&ns.exchange);
            if executed.is_some() && executed == last["orders"].as_u64() {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop(trader);
    stop(exchange);
    let logs = || {
        format!(
            "trader log:\n{}\nexchange log:\n{}",
            std::fs::read_to_string(dir.path().join("trader.log")).unwrap_or_default(),
            std::fs::read_to_string(dir.path().join("exchange.log")).unwrap_or_default()
        )
    };
    assert_eq!(
        last["settled"],
        true,
        "trader never settled: {last}\n{}",
        logs()
    );
    assert_eq!(
        executed,
        last["orders"].as_u64(),
        "orders executed by the exchange vs sent by the trader: {last}\n{}",
        logs()
    );
    let t: Value =
        serde_json::from_str(&std::fs::read_to_string(&trader_results).unwrap()).unwrap();
    let e: Value =
        serde_json::from_str(&std::fs::read_to_string(&exchange_results).unwrap()).unwrap();
    let n = |v: &Value, k: &str| {
        v[k].as_u64()
            .unwrap_or_else(|| panic!("{k} missing in {v}"))
    };
    let published = n(&e, "tradesPublished");
    assert!(published > 10_000, "{e}");
    assert_eq!(n(&t, "sent"), published, "{t}\n{e}");
    assert_eq!(n(&t, "lost"), 0, "{t}");
    assert_eq!(n(&t, "received") + n(&t, "recovered"), published, "{t}");
    assert!(
        n(&t, "gaps") > 0 && n(&t, "recovered") > 0,
        "the network lost nothing? {t}"
    );
    assert_eq!(t["timestampSource"], "kernel");
    assert!(
        n(&t, "orders") > 0 && n(&e, "ordersReceived") == n(&t, "orders"),
        "{t}\n{e}"
    );
    assert!(n(&e, "retransmitRequests") > 0, "{e}");
}
