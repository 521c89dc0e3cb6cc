//! A RecordingSession in real pods: the chart's operator runs a recorder for a UDP
//! experiment (its volume a hostPath PersistentVolume this test binds to the claim,
//! the cluster having no provisioner), and the toggle travels `kubectl patch` →
//! watch → operator → `PUT /recording`. On → off → on → off: while paused nothing
//! is recorded though the feed goes on, after resuming the count grows, every file
//! in the status is complete with no missing sequence numbers, and a file
//! downloaded through the recorder's Service holds as many frames (by tshark) as the
//! index says. Latencies are printed, never asserted.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::{Api, Client};
use serde_json::{Value, json};
use ticklab_crd::RecordingSession;
use ticklab_crd::recording_session::{RecordingSessionStatus, RecordingState};

use super::harness::{
    DumpLogsOnFailure, Steps, install_chart, kubectl_cmd, proxy_get, ready_pod, use_real_node,
};
use super::{REAL_NODE, apply, trader_stats, u, wait_running};
use crate::support::{
    condition as condition_of, run, run_with_input, wait_for, wait_phase, with_temp_ns,
};
use ticklab_crd::Phase;

/// The StorageClass name the chart is told to use; no such class exists: the
/// volume below is bound to the claim by hand (static provisioning).
const STORAGE_CLASS: &str = "ticklab-test-hostpath";
const SESSION: &str = "tape";
const CLAIM: &str = "tape-recorder";

/// A hostPath PersistentVolume reserved for the recorder's claim (claimRef), on a
/// directory of this machine (the real node's host) that the recorder's uid can
/// write (hostPath volumes ignore fsGroup). Both removed when dropped.
struct HostPathVolume {
    name: String,
    dir: tempfile::TempDir,
}

impl HostPathVolume {
    fn create(ns: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("ticklab-recordings-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let name = format!("{ns}-recordings");
        let volume = json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": name},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": STORAGE_CLASS,
                "claimRef": {"namespace": ns, "name": CLAIM},
                "hostPath": {"path": dir.path().display().to_string(), "type": "Directory"},
            },
        });
        run_with_input(
            kubectl_cmd().args(["apply", "-f", "-"]),
            Some(&volume.to_string()),
        );
        Self { name, dir }
    }
}

impl Drop for HostPathVolume {
    fn drop(&mut self) {
        let _ = kubectl_cmd()
            .args(["delete", "pv", &self.name, "--wait=false"])
            .output();
        if std::thread::panicking() {
            eprintln!(
                "--- recording directory {}: {:?}",
                self.dir.path().display(),
                std::fs::read_dir(self.dir.path())
                    .map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
            );
        }
    }
}

async fn status(client: &Client, ns: &str) -> Option<RecordingSessionStatus> {
    Api::<RecordingSession>::namespaced(client.clone(), ns)
        .get_opt(SESSION)
        .await
        .ok()??
        .status
}

fn condition(status: &RecordingSessionStatus, type_: &str) -> Option<String> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.clone())
}

/// `kubectl patch` of the toggle, as a user (or the console) flips it. Returns when
/// the API server has accepted the edit: the wall-clock time (the node is this
/// machine, so the recorder's packet timestamps are on the same clock), the instant
/// to measure from, and how long kubectl itself took (the edit landed somewhere
/// within it, so figures measured from its return are lower bounds).
fn toggle(ns: &str, enabled: bool) -> (SystemTime, Instant, Duration) {
    let started = Instant::now();
    run(kubectl_cmd().args([
        "-n",
        ns,
        "patch",
        "recordingsession",
        SESSION,
        "--type",
        "merge",
        "-p",
        &json!({"spec": {"enabled": enabled}}).to_string(),
    ]));
    (SystemTime::now(), Instant::now(), started.elapsed())
}

/// Waits for `state` in the status, and returns it with the time it took (polled
/// every 10 ms: the shared poller's 100 ms would blur the figure).
async fn wait_state(
    client: &Client,
    ns: &str,
    state: RecordingState,
    since: Instant,
) -> (RecordingSessionStatus, Duration) {
    let deadline = since + Duration::from_secs(30);
    loop {
        if let Some(s) = status(client, ns).await
            && s.state == Some(state)
        {
            return (s, since.elapsed());
        }
        assert!(
            Instant::now() < deadline,
            "timed out after 30 s waiting for the session's state {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The recorder's own `GET /recording`, through the API server's service proxy.
async fn recorder_packets(client: &Client, ns: &str) -> u64 {
    let body = proxy_get(client, ns, CLAIM, 8080, "/recording")
        .await
        .unwrap();
    u(&body, "packets")
}

/// Waits until the trader has received `more` trades beyond `after` (the feed goes
/// on), and returns its count.
async fn feed_moved(client: &Client, ns: &str, after: u64, more: u64) -> u64 {
    wait_for(
        "the feed to go on at the trader",
        Duration::from_secs(30),
        || async {
            let received = u(&trader_stats(client, ns, "taped").await?, "received");
            (received >= after + more).then_some(received)
        },
    )
    .await
}

/// Milliseconds from `edit` to an RFC 3339 time in the index (negative: before).
fn ms_after(edit: SystemTime, rfc3339: Option<&str>) -> Option<f64> {
    let at: Timestamp = rfc3339?.parse().ok()?;
    let edit = Timestamp::try_from(edit).ok()?;
    Some(at.duration_since(edit).as_secs_f64() * 1000.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_toggled_off_and_on_in_real_pods_holds_what_its_index_says() {
    let _node = REAL_NODE.lock().await;
    with_temp_ns("real-rec", |client, ns| async move {
        let _logs = DumpLogsOnFailure(ns.clone());
        let mut steps = Steps::new();
        use_real_node(&client, &ns).await;
        // No FerretDB: the experiment stores no trades.
        let _release = install_chart(&ns, &[format!("recording.storageClassName={STORAGE_CLASS}")]);
        steps.done("helm install --wait (operator Ready)");
        let volume = HostPathVolume::create(&ns);

        // UDP with 0.5% of the packets (and of the recorder's copies) dropped on
        // purpose: the recorder recovers what it misses from the retransmission
        // server. Long enough to outlast the toggles below.
        apply(
            &ns,
            &json!({
                "apiVersion": "ticklab.dev/v1alpha1", "kind": "LatencyExperiment",
                "metadata": {"name": "taped"},
                "spec": {
                    "exchange": {"symbols": ["EURUSD", "BTCUSD"], "ratePerSecond": 5000,
                                 "seed": 7, "transport": "udp", "faults": {"dropPercent": 0.5}},
                    "trader": {"persistence": {"enabled": false}},
                    "duration": "60s",
                },
            }),
        );
        wait_running(&client, &ns, "taped", "exchange").await;
        wait_running(&client, &ns, "taped", "trader").await;
        steps.done("experiment running");
        apply(
            &ns,
            &json!({
                "apiVersion": "ticklab.dev/v1alpha1", "kind": "RecordingSession",
                "metadata": {"name": SESSION},
                "spec": {"experiment": "taped", "enabled": true, "storage": "1Gi",
                         "rotation": {"maxMegabytes": 64, "maxSeconds": 600}},
            }),
        );
        let recorder_pod: Pod = ready_pod(
            &client,
            &ns,
            &format!("ticklab.dev/recording={SESSION}"),
            Duration::from_secs(120),
        )
        .await;
        assert_eq!(
            recorder_pod.spec.as_ref().unwrap().node_name.as_deref(),
            Some(super::harness::NODE)
        );
        let first = wait_for("recorded packets in the status", Duration::from_secs(60), || async {
            let s = status(&client, &ns).await?;
            (s.state == Some(RecordingState::Recording)
                && condition(&s, "Ready")? == "True"
                && s.packets > 0)
                .then_some(s)
        })
        .await;
        assert_eq!(condition(&first, "ExperimentFound").as_deref(), Some("True"));
        // The chart isolates experiments by default: the recorder has its own
        // policy, and the operator reached the recorder through it all the same.
        let policies: Api<k8s_openapi::api::networking::v1::NetworkPolicy> =
            Api::namespaced(client.clone(), &ns);
        assert!(policies.get_opt(CLAIM).await.unwrap().is_some());
        steps.done("recorder Ready and recording");

        // Off: the state turns Paused, and the count stays put while the feed goes
        // on (three reads, each after the trader got 2000 more trades).
        let (paused_at, clock, kubectl_pause) = toggle(&ns, false);
        let (paused, to_paused) = wait_state(&client, &ns, RecordingState::Paused, clock).await;
        steps.done("paused");
        let held = recorder_packets(&client, &ns).await;
        assert!(held >= paused.packets, "{held} < {}", paused.packets);
        let mut received = u(&trader_stats(&client, &ns, "taped").await.unwrap(), "received");
        for _ in 0..3 {
            received = feed_moved(&client, &ns, received, 2000).await;
            assert_eq!(recorder_packets(&client, &ns).await, held, "recorded while paused");
            assert_eq!(status(&client, &ns).await.unwrap().packets, held);
        }
        steps.done("nothing recorded while paused");

        // On again: recording resumes and the count grows.
        let (resumed_at, clock, kubectl_resume) = toggle(&ns, true);
        let (_, to_recording) = wait_state(&client, &ns, RecordingState::Recording, clock).await;
        wait_for("the count to grow after resuming", Duration::from_secs(30), || async {
            (status(&client, &ns).await?.packets > held).then_some(())
        })
        .await;
        let to_growing = clock.elapsed();
        steps.done("resumed, count growing");
        feed_moved(&client, &ns, received, 5000).await;

        // Off once more, so every file is closed, then the index in the status.
        let (stopped_at, clock, _) = toggle(&ns, false);
        let (_, to_stopped) = wait_state(&client, &ns, RecordingState::Paused, clock).await;
        let done = wait_for("every file in the status closed", Duration::from_secs(30), || async {
            let s = status(&client, &ns).await?;
            (s.state == Some(RecordingState::Paused)
                && s.files.len() >= 2
                && s.files.iter().all(|f| f.complete))
                .then_some(s)
        })
        .await;
        steps.done("stopped, files closed");
        for file in &done.files {
            assert!(file.missing.is_empty(), "sequence numbers missing: {file:?}");
            assert!(file.last_seq >= file.first_seq, "{file:?}");
            assert!(file.packets > 0, "{file:?}");
        }
        assert_eq!(
            done.files.iter().map(|f| f.packets).sum::<u64>(),
            done.packets,
            "the files hold every packet counted: {done:?}"
        );
        // The pause left a gap between the two recorded periods.
        assert!(done.files[1].first_seq > done.files[0].last_seq, "{:?}", done.files);
        assert_eq!(done.file_count as usize, done.files.len());

        // The recorder never restarted: the toggle is not in its pod template.
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let now = pods.get(recorder_pod.metadata.name.as_deref().unwrap()).await.unwrap();
        assert_eq!(now.metadata.uid, recorder_pod.metadata.uid);
        let restarts = now.status.unwrap().container_statuses.unwrap()[0].restart_count;
        assert_eq!(restarts, 0);

        // Each file, downloaded through the recorder's Service, holds as many frames
        // as its index entry says (tshark reads them all).
        for file in &done.files {
            let path = format!("/api/v1/namespaces/{ns}/services/{CLAIM}:8080/proxy/files/{}", file.name);
            let output = kubectl_cmd().args(["get", "--raw", &path]).output().unwrap();
            assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
            let local = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(local.path(), &output.stdout).unwrap();
            assert_eq!(output.stdout.len() as u64, file.bytes, "{file:?}");
            let frames = run(std::process::Command::new("tshark")
                .arg("-r")
                .arg(local.path())
                .args(["-T", "fields", "-e", "frame.number"]));
            assert_eq!(frames.lines().count() as u64, file.packets, "tshark on {}", file.name);
        }
        steps.done("files downloaded and read by tshark");

        // The first file replayed at ×10 into a live trader by another experiment:
        // its exchange downloads the file from the recorder; the run completes when
        // the recording has arrived, every message of it, with the replay's account.
        let file = &done.files[0];
        apply(
            &ns,
            &json!({
                "apiVersion": "ticklab.dev/v1alpha1", "kind": "LatencyExperiment",
                "metadata": {"name": "replayed"},
                "spec": {
                    "exchange": {"transport": "udp",
                                 "replay": {"recording": SESSION, "file": file.name, "speed": 10}},
                    "trader": {"persistence": {"enabled": false}},
                },
            }),
        );
        let replayed = wait_phase(&client, &ns, "replayed", Phase::Completed, Duration::from_secs(180)).await;
        let status = replayed.status.unwrap();
        assert_eq!(condition_of(&status, "Completed").reason, "FeedEnded", "{status:?}");
        let results = status.results.unwrap();
        let messages = file.last_seq - file.first_seq + 1;
        assert_eq!(results.sent, messages, "{results:?}");
        assert_eq!(results.lost, 0, "{results:?}");
        assert_eq!(results.received + results.recovered, messages, "{results:?}");
        let replay = results.replay.expect("the replay's account in the results");
        assert_eq!(replay.messages, messages, "{replay:?}");
        assert_eq!(replay.lateness.as_ref().unwrap().count, replay.packets, "{replay:?}");
        assert!(replay.recording_feed_latency.is_some(), "{replay:?}");
        steps.done("a recorded file replayed at x10 in real pods");

        let report = json!({
            "kubectl patch itself (ms; the figures below start at its return)":
                [kubectl_pause.as_millis(), kubectl_resume.as_millis()],
            "edit → status Paused (ms)": to_paused.as_millis(),
            "edit → status Recording (ms)": to_recording.as_millis(),
            "edit → status count growing (ms)": to_growing.as_millis(),
            "edit → status Paused, second pause (ms)": to_stopped.as_millis(),
            "pause edit → last packet of the first period (ms)": ms_after(paused_at, done.files[0].end_time.as_deref()),
            "resume edit → first packet of the second period (ms)": ms_after(resumed_at, done.files[1].start_time.as_deref()),
            "second pause edit → last packet (ms)": ms_after(stopped_at, done.files.last().unwrap().end_time.as_deref()),
            "files": done.files.iter().map(|f| json!([f.name, f.first_seq, f.last_seq, f.packets])).collect::<Vec<Value>>(),
        });
        eprintln!(
            "recording on the real node:\n{}\n{}",
            serde_json::to_string_pretty(&report).unwrap(),
            steps.report()
        );
        drop(volume);
    })
    .await;
}
