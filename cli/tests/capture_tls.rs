//! The wire under TLS: `ticklab run` with a wss feed, HTTPS orders, the trader's
//! key log, and a MirrorSession, which mirrors the trader over loopback into the
//! capture (the capture takes the keys from the trader's `GET /keylog`). Every
//! trade and order the trader saw must be decoded from the decrypted wire, each
//! order matched to its tick; and tshark, reading the capture's own pcapng (the key
//! log embedded as a Decryption Secrets Block) and again with the key log file,
//! must decrypt exactly as many application data records and find exactly the
//! orders. Needs root (the mirror's packet socket) and tshark.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use serde_json::Value;

const EXPERIMENT: &str = r#"apiVersion: ticklab.dev/v1alpha1
kind: LatencyExperiment
metadata:
  name: wired
spec:
  exchange:
    symbols: [BTCUSD, ETHUSD]
    ratePerSecond: 5000
    seed: 7
    transport: websocket
  trader:
    orderTransport: http
    strategy: {thresholdBps: 2, maxOrdersPerSecond: 500}
  tls: {keyLog: true}
  duration: 2s
---
apiVersion: ticklab.dev/v1alpha1
kind: MirrorSession
metadata:
  name: wired
spec:
  experiment: wired
"#;

/// Counts of each TLS content type tshark decrypted, and of HTTP POSTs.
fn tshark(file: &Path, ports: &[String], key_log: Option<&Path>) -> (u64, u64) {
    let mut args: Vec<String> = vec!["-r".into(), file.display().to_string()];
    if let Some(k) = key_log {
        args.push("-o".into());
        args.push(format!("tls.keylog_file:{}", k.display()));
    }
    for port in ports {
        args.push("-d".into());
        args.push(format!("tcp.port=={port},tls"));
    }
    let fields = Command::new("tshark")
        .args(&args)
        .args([
            "-T",
            "fields",
            "-e",
            "tls.record.content_type",
            "-E",
            "occurrence=a",
        ])
        .output()
        .expect("tshark is not installed (scripts/tools/apt-packages.sh installs it)");
    assert!(
        fields.status.success(),
        "{}",
        String::from_utf8_lossy(&fields.stderr)
    );
    let application_data = String::from_utf8_lossy(&fields.stdout)
        .split([',', '\n'])
        .filter(|t| *t == "23")
        .count() as u64;
    let posts = Command::new("tshark")
        .args(&args)
        .args([
            "-Y",
            "http.request.method == \"POST\"",
            "-T",
            "fields",
            "-e",
            "frame.number",
        ])
        .output()
        .unwrap();
    let posts = String::from_utf8_lossy(&posts.stdout).lines().count() as u64;
    (application_data, posts)
}

#[test]
fn wss_and_https_are_decrypted_on_the_wire_and_tshark_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wired.yaml");
    std::fs::write(&file, EXPERIMENT).unwrap();
    let (captures, key_log) = (dir.path().join("captures"), dir.path().join("keys.log"));
    let out = Command::new(env!("CARGO_BIN_EXE_ticklab"))
        .arg("run")
        .arg(&file)
        .args(["--output", "json", "--quiet"])
        .arg("--keylog")
        .arg(&key_log)
        .arg("--capture-dir")
        .arg(&captures)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ticklab run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let n = |path: &[&str]| {
        path.iter()
            .fold(&report, |v, k| &v[*k])
            .as_u64()
            .unwrap_or_else(|| panic!("{path:?} in {report:#}"))
    };
    let wire = &report["wire"];
    let context = format!("{report:#}");

    assert!(n(&["results", "received"]) > 0, "{context}");
    assert_eq!(
        n(&["wire", "messages", "trades"]),
        n(&["results", "received"]),
        "{context}"
    );
    assert_eq!(
        n(&["wire", "messages", "orders"]),
        n(&["results", "orders"]),
        "{context}"
    );
    assert_eq!(
        n(&["wire", "messages", "ordersMatched"]),
        n(&["wire", "messages", "orders"]),
        "{context}"
    );
    assert_eq!(
        n(&["wire", "messages", "acks"]),
        n(&["wire", "messages", "orders"]),
        "{context}"
    );
    assert_eq!(wire["decodeErrors"], serde_json::json!({}), "{context}");
    // Every trade's receive stamp set beside its wire time, not a sample.
    assert_eq!(
        n(&["wire", "tradeAppMinusWire", "count"]),
        n(&["results", "received"]),
        "{context}"
    );
    assert_eq!(
        n(&["wire", "tls", "connections"]),
        2,
        "the wss feed and the HTTPS order connection: {context}"
    );
    let decrypted = n(&["wire", "tls", "recordsDecrypted"]);
    assert!(decrypted > 0, "{context}");

    let files: Vec<_> = std::fs::read_dir(&captures)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "one pcapng, written out whole: {files:?}");
    assert_eq!(files[0].extension().unwrap(), "pcapng");
    let ports: Vec<String> = ["feed", "orderHttp"]
        .iter()
        .map(|k| {
            report["endpoints"][*k]
                .as_str()
                .unwrap()
                .rsplit(':')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    // The keys embedded in the file are enough; the key log file gives the same.
    for key_log in [None, Some(key_log.as_path())] {
        let (records, posts) = tshark(&files[0], &ports, key_log);
        assert_eq!(
            records, decrypted,
            "application data records tshark decrypted (key log file: {key_log:?}): {context}"
        );
        assert_eq!(
            posts,
            n(&["results", "orders"]),
            "orders tshark found: {context}"
        );
    }

    // A mirror that joins when the connections are long open (as in a cluster, where the
    // mirror is added to a running trader): the same file from its middle on. Neither
    // connection's handshake is in it, so the keys and record numbers are found by trial.
    let frames = n(&["wire", "frames"]);
    let cut = dir.path().join("joined.pcapng");
    let edit = Command::new("editcap")
        .args(["-r"])
        .arg(&files[0])
        .arg(&cut)
        .arg(format!("{}-{frames}", frames / 2))
        .output()
        .unwrap();
    assert!(edit.status.success(), "editcap: {edit:?}");
    let mut decode = Command::new(env!("CARGO_BIN_EXE_ticklab"));
    decode.arg("decode").arg(&cut).arg("--json");
    for port in &ports {
        decode.args(["--server-port", port]);
    }
    let out = decode.output().unwrap();
    assert!(out.status.success(), "decode: {out:?}");
    let joined: Value = serde_json::from_slice(&out.stdout).unwrap();
    let j = |path: &[&str]| {
        path.iter()
            .fold(&joined, |v, k| &v[*k])
            .as_u64()
            .unwrap_or_else(|| panic!("{path:?} in {joined:#}"))
    };
    let context = format!("{joined:#}");
    assert_eq!(j(&["connectionsJoined"]), 2, "{context}");
    assert_eq!(j(&["tls", "connections"]), 2, "{context}");
    // Both directions of the order connection and the feed's server side.
    assert!(j(&["tls", "joined"]) >= 2, "{context}");
    let trades = j(&["messages", "trades"]);
    assert!(
        trades > 0 && trades < n(&["wire", "messages", "trades"]),
        "{context}"
    );
    assert!(j(&["messages", "orders"]) > 0, "{context}");
    assert!(j(&["messages", "acks"]) > 0, "{context}");
    // Nothing fails to decrypt or to frame once joined (only the cut itself is skipped).
    let errors = joined["decodeErrors"].as_object().unwrap();
    assert!(errors.keys().all(|k| k == "tcp_gap"), "{context}");
}

#[test]
fn mirror_sessions_a_local_run_cannot_serve_are_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    for (name, session, expect) in [
        (
            "other",
            "spec:\n  experiment: elsewhere\n",
            "mirrors experiment \"elsewhere\", which is not in the file",
        ),
        (
            "vpc",
            "spec:\n  experiment: wired\n  mode: vpc\n",
            "mode vpc",
        ),
    ] {
        let file = dir.path().join(format!("{name}.yaml"));
        let text = EXPERIMENT.replace("spec:\n  experiment: wired\n", session);
        std::fs::write(&file, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_ticklab"))
            .arg("run")
            .arg(&file)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{name}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{name}: {stderr}");
        assert!(stderr.contains(expect), "{name}: {stderr}");
    }
}
