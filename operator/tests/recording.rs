//! RecordingSessions against the real control plane (scripts/control-plane.sh; the
//! pods land on kwok's fake nodes, so no recorder really runs there): a session that
//! names a missing experiment says so and gets its recorder once the experiment is
//! created; and the toggle travels edit → watch → operator → `PUT /recording` to a
//! real recorder (in this process, reached through `--recorder-url`) without
//! touching the recorder's pod template, its answers coming back as the status.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Service};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::{Value, json};
use support::{Operator, event_reasons, wait_for, with_temp_ns};
use ticklab_crd::recording_session::RecordingState;
use ticklab_crd::{LatencyExperiment, RecordingSession};
use tokio_util::sync::CancellationToken;

fn session(name: &str, experiment: &str, enabled: bool) -> RecordingSession {
    serde_json::from_value(json!({
        "apiVersion": "ticklab.dev/v1alpha1",
        "kind": "RecordingSession",
        "metadata": {"name": name},
        "spec": {"experiment": experiment, "enabled": enabled, "storage": "3Gi",
                 "rotation": {"maxSeconds": 30}},
    }))
    .unwrap()
}

fn experiment(name: &str) -> LatencyExperiment {
    serde_json::from_value(json!({
        "apiVersion": "ticklab.dev/v1alpha1",
        "kind": "LatencyExperiment",
        "metadata": {"name": name},
        "spec": {"exchange": {"symbols": ["EURUSD"], "ratePerSecond": 1000},
                 "trader": {"persistence": {"enabled": false}}},
    }))
    .unwrap()
}

/// The condition of `type_` in a session's status, as (status, reason, message).
fn condition(s: &RecordingSession, type_: &str) -> Option<(String, String, String)> {
    s.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Prints the sessions and the recorder children of `ns` when the test fails (the
/// shared dump does not list these kinds).
struct DumpSessionsOnFailure(String);

impl Drop for DumpSessionsOnFailure {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let Some(kubectl) = support::kubectl() else {
            return;
        };
        if let Ok(output) = std::process::Command::new(kubectl)
            .args(["--kubeconfig", support::kubeconfig().to_str().unwrap()])
            .args([
                "-n",
                &self.0,
                "get",
                "recordingsessions,persistentvolumeclaims",
            ])
            .args(["-o", "yaml"])
            .output()
        {
            eprintln!(
                "--- recording sessions and volumes in {}:\n{}{}",
                self.0,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

async fn get_session(client: &Client, ns: &str, name: &str) -> Option<RecordingSession> {
    Api::<RecordingSession>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .ok()
        .flatten()
}

/// Names of the objects of kind `K` in `ns` labelled as `session`'s.
async fn recorder_children<K>(client: &Client, ns: &str, session: &str) -> Vec<(String, String)>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default().labels(&format!("ticklab.dev/recording={session}")))
        .await
        .unwrap()
        .items
        .iter()
        .map(|o| {
            let owner = o
                .owner_references()
                .iter()
                .find(|r| r.controller == Some(true))
                .map(|r| format!("{}/{}", r.kind, r.uid))
                .unwrap_or_default();
            (o.name_any(), owner)
        })
        .collect()
}

#[tokio::test]
async fn a_session_naming_a_missing_experiment_says_so_and_records_once_it_exists() {
    with_temp_ns("rec-missing", |client, ns| async move {
        let _dump = DumpSessionsOnFailure(ns.clone());
        let _operator = Operator::start(&ns, "rec-missing", &["--recording-storage-class", "tape"]);
        let sessions: Api<RecordingSession> = Api::namespaced(client.clone(), &ns);
        let created = sessions
            .create(&PostParams::default(), &session("tape", "later", true))
            .await
            .unwrap();
        let uid = created.uid().unwrap();

        let waiting = wait_for(
            "ExperimentFound=False on the session",
            Duration::from_secs(30),
            || async {
                let s = get_session(&client, &ns, "tape").await?;
                let (status, ..) = condition(&s, "ExperimentFound")?;
                (status == "False").then_some(s)
            },
        )
        .await;
        let (_, reason, message) = condition(&waiting, "ExperimentFound").unwrap();
        assert_eq!(reason, "ExperimentNotFound");
        assert!(
            message.contains("\"later\"") && message.contains(&ns),
            "the message names the experiment and the namespace: {message}"
        );
        let (ready, ready_reason, _) = condition(&waiting, "Ready").unwrap();
        assert_eq!(
            (ready.as_str(), ready_reason.as_str()),
            ("False", "ExperimentNotFound")
        );
        assert_eq!(
            waiting.status.as_ref().unwrap().observed_generation,
            created.metadata.generation
        );
        // No children while there is nothing to record.
        assert!(
            recorder_children::<Deployment>(&client, &ns, "tape")
                .await
                .is_empty()
        );
        assert!(
            recorder_children::<ConfigMap>(&client, &ns, "tape")
                .await
                .is_empty()
        );
        wait_for(
            "an ExperimentNotFound event",
            Duration::from_secs(10),
            || async {
                event_reasons(&client, &ns, "tape")
                    .await
                    .iter()
                    .any(|r| r == "ExperimentNotFound")
                    .then_some(())
            },
        )
        .await;

        // The experiment appears: the watch on experiments wakes the session at once
        // (its own recheck is 30 s away).
        Api::<LatencyExperiment>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &experiment("later"))
            .await
            .unwrap();
        let owned_by_session = vec![(
            "tape-recorder".to_string(),
            format!("RecordingSession/{uid}"),
        )];
        wait_for(
            "the recorder's children",
            Duration::from_secs(20),
            || async {
                let all = [
                    recorder_children::<ConfigMap>(&client, &ns, "tape").await,
                    recorder_children::<PersistentVolumeClaim>(&client, &ns, "tape").await,
                    recorder_children::<Service>(&client, &ns, "tape").await,
                    recorder_children::<Deployment>(&client, &ns, "tape").await,
                ];
                all.iter().all(|c| *c == owned_by_session).then_some(())
            },
        )
        .await;
        let found = wait_for("ExperimentFound=True", Duration::from_secs(20), || async {
            let s = get_session(&client, &ns, "tape").await?;
            (condition(&s, "ExperimentFound")?.0 == "True").then_some(s)
        })
        .await;
        assert!(
            found.status.as_ref().unwrap().endpoint.as_deref()
                == Some(&format!("http://tape-recorder.{ns}.svc:8080")[..]),
            "{:?}",
            found.status
        );

        // The children as built: the volume from the session's size and the
        // operator's storage class, the recorder tapping the experiment's exchange.
        let claim = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
            .get("tape-recorder")
            .await
            .unwrap();
        let spec = claim.spec.unwrap();
        assert_eq!(spec.storage_class_name.as_deref(), Some("tape"));
        assert_eq!(
            spec.resources.unwrap().requests.unwrap()["storage"].0,
            "3Gi"
        );
        let config = Api::<ConfigMap>::namespaced(client.clone(), &ns)
            .get("tape-recorder")
            .await
            .unwrap();
        let yaml = &config.data.unwrap()["recorder.yaml"];
        let rendered: ticklab_recorder::RecorderConfig = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(
            rendered.exchange_retransmit,
            format!("later-exchange.{ns}.svc:9001")
        );
        // No recorder answers on kwok's nodes: Ready says so, with the HTTP error.
        let unreachable = wait_for(
            "Ready=False naming the recorder's address",
            Duration::from_secs(20),
            || async {
                let s = get_session(&client, &ns, "tape").await?;
                let (status, reason, message) = condition(&s, "Ready")?;
                (status == "False" && reason != "ExperimentNotFound").then_some(message)
            },
        )
        .await;
        assert!(
            unreachable.contains(&format!("tape-recorder.{ns}.svc:8080")),
            "{unreachable}"
        );
    })
    .await;
}

/// A real recorder on loopback, its exchange absent (its taps go nowhere), standing
/// in for the recorder pod kwok cannot run.
async fn local_recorder(dir: &std::path::Path) -> ticklab_recorder::RecorderHandle {
    let config = ticklab_recorder::RecorderConfig {
        experiment: "lab".into(),
        recording: "tape".into(),
        exchange_retransmit: format!("127.0.0.1:{}", support::free_port()),
        directory: dir.to_path_buf(),
        format: Default::default(),
        rotation: Default::default(),
        // As the operator renders it: paused until told.
        enabled: false,
        listen: "127.0.0.1:0".parse().unwrap(),
        from_start: false,
    };
    ticklab_recorder::start(
        config,
        prometheus::Registry::new(),
        CancellationToken::new(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn the_toggle_reaches_the_recorder_and_its_state_comes_back_without_a_restart() {
    with_temp_ns("rec-toggle", |client, ns| async move {
        let _dump = DumpSessionsOnFailure(ns.clone());
        let dir = tempfile::tempdir().unwrap();
        let recorder = local_recorder(dir.path()).await;
        let url = format!("http://{}/recording", recorder.addr);
        let operator = Operator::start(&ns, "rec-toggle", &["--recorder-url", &url]);
        Api::<LatencyExperiment>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &experiment("lab"))
            .await
            .unwrap();
        let sessions: Api<RecordingSession> = Api::namespaced(client.clone(), &ns);
        sessions
            .create(&PostParams::default(), &session("tape", "lab", true))
            .await
            .unwrap();

        let state = |want: RecordingState| {
            let client = client.clone();
            let ns = ns.clone();
            move || {
                let client = client.clone();
                let ns = ns.clone();
                async move {
                    let s = get_session(&client, &ns, "tape").await?;
                    (s.status.as_ref()?.state == Some(want)).then_some(s)
                }
            }
        };
        let recording = wait_for("state Recording", Duration::from_secs(30), state(RecordingState::Recording)).await;
        assert!(recorder.shared.control.enabled(), "the operator turned the recorder on");
        assert_eq!(condition(&recording, "Ready").unwrap().0, "True");
        assert_eq!(condition(&recording, "Recording").unwrap().0, "True");
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let template = |d: Deployment| {
            (
                d.metadata.generation,
                serde_json::to_value(d.spec.unwrap().template).unwrap(),
            )
        };
        let before = template(deployments.get("tape-recorder").await.unwrap());

        // Off, then on again: each edit reaches the recorder, and the status follows.
        let mut timings = BTreeMap::new();
        for (enabled, want) in [(false, RecordingState::Paused), (true, RecordingState::Recording)] {
            let edited = Instant::now();
            sessions
                .patch(
                    "tape",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"enabled": enabled}})),
                )
                .await
                .unwrap();
            // Polled every millisecond (the shared poller's 100 ms would hide the
            // figure this prints).
            let deadline = edited + Duration::from_secs(10);
            while recorder.shared.control.enabled() != enabled {
                assert!(Instant::now() < deadline, "the recorder's toggle never reached {enabled}");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let at_recorder = edited.elapsed();
            let s = wait_for(&format!("state {want:?} in the status"), Duration::from_secs(10), state(want)).await;
            timings.insert(
                format!("{want:?}"),
                format!("edit → recorder {at_recorder:.1?}, edit → status {:.1?}", edited.elapsed()),
            );
            let (status, reason, _) = condition(&s, "Recording").unwrap();
            assert_eq!(status == "True", enabled, "{reason}");
            assert_eq!(s.status.as_ref().unwrap().observed_generation, s.metadata.generation);
        }
        eprintln!("toggle through the operator (local recorder): {timings:#?}");

        // The recorder's pod template never changed: toggling restarts nothing.
        let after = template(deployments.get("tape-recorder").await.unwrap());
        assert_eq!(before, after);
        let reasons = event_reasons(&client, &ns, "tape").await;
        assert!(
            reasons.iter().any(|r| r == "Paused") && reasons.iter().any(|r| r == "Recording"),
            "{reasons:?}"
        );
        assert!(
            operator.wait_metric(
                r#"ticklab_operator_reconciliations_total{controller="recordingsession"}"#,
                Duration::from_secs(10),
            )
            .await
                > 0.0
        );
        let failures: Value = json!(
            operator
                .metric(r#"ticklab_operator_reconcile_failures_total{controller="recordingsession",error="api"}"#)
                .await
        );
        assert_eq!(failures, json!(0.0), "no API errors");
    })
    .await;
}
