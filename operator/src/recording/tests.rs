//! The recorder's children and status without a cluster: names, owner references,
//! labels, the volume, the rendered configuration, a toggle that leaves the pod
//! template alone, pod security, isolation, and the status copied from what a
//! recorder answers.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int;
use k8s_openapi::jiff::Timestamp;
use serde_json::json;
use ticklab_crd::RecordingSession;
use ticklab_crd::recording_session::{RecordingState, SequenceRange};
use ticklab_recorder::{RecorderConfig, RecorderStatus};

use super::build::{self, RecorderChildren, RecordingSettings};
use super::status::{self, Observed, Workload};
use crate::children::{self, ChildSettings, IsolationSettings};

const SESSION: &str = r#"
apiVersion: ticklab.dev/v1alpha1
kind: RecordingSession
metadata:
  name: desk-tape
  namespace: trading
  uid: 6d1c4e1e-0000-4000-8000-000000000001
  generation: 3
spec:
  experiment: desk
  enabled: true
  format: pcap
  rotation: {maxMegabytes: 64, maxSeconds: 600}
  storage: 2Gi
"#;

fn session() -> RecordingSession {
    serde_yaml::from_str(SESSION).unwrap()
}

fn build(s: &RecordingSession) -> RecorderChildren {
    build::build(s, &ChildSettings::default(), &RecordingSettings::default()).unwrap()
}

fn pod(d: &Deployment) -> &PodSpec {
    d.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
}

fn isolated() -> ChildSettings {
    ChildSettings {
        network_policy: Some(IsolationSettings {
            operator_namespace: "ticklab-system".into(),
            metrics_namespace_labels: BTreeMap::from([(
                "kubernetes.io/metadata.name".to_string(),
                "monitoring".to_string(),
            )]),
        }),
        ..ChildSettings::default()
    }
}

fn subset(small: &BTreeMap<String, String>, big: &BTreeMap<String, String>) -> bool {
    small.iter().all(|(k, v)| big.get(k) == Some(v))
}

#[test]
fn every_child_is_named_after_the_session_owned_by_it_and_labelled_for_the_experiment() {
    let c = build(&session());
    assert!(
        c.network_policy.is_none(),
        "off unless the operator isolates"
    );
    let metas = [
        &c.config.metadata,
        &c.volume.metadata,
        &c.service.metadata,
        &c.deployment.metadata,
    ];
    for meta in metas {
        assert_eq!(meta.name.as_deref(), Some("desk-tape-recorder"));
        assert_eq!(meta.namespace.as_deref(), Some("trading"));
        let owner = &meta.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.kind, "RecordingSession");
        assert_eq!(owner.name, "desk-tape");
        assert_eq!(owner.uid, "6d1c4e1e-0000-4000-8000-000000000001");
        assert_eq!(owner.controller, Some(true));
        // No blockOwnerDeletion: the chart grants no right on sessions' finalizers.
        assert_eq!(owner.block_owner_deletion, None);
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels["app.kubernetes.io/component"], "recorder");
        assert_eq!(labels["ticklab.dev/experiment"], "desk");
        assert_eq!(labels["ticklab.dev/recording"], "desk-tape");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "ticklab-operator");
    }

    // The Deployment and the Service select this session's pod and nothing else,
    // and the pod carries what the chart's PodMonitor selects on.
    let spec = c.deployment.spec.as_ref().unwrap();
    let selector = spec.selector.match_labels.clone().unwrap();
    assert_eq!(selector["ticklab.dev/recording"], "desk-tape");
    let pod_labels = spec.template.metadata.clone().unwrap().labels.unwrap();
    assert!(subset(&selector, &pod_labels));
    assert_eq!(
        c.service.spec.as_ref().unwrap().selector.as_ref(),
        Some(&selector)
    );
    assert_eq!(
        pod_labels["app.kubernetes.io/managed-by"],
        "ticklab-operator"
    );
    assert_eq!(pod_labels["app.kubernetes.io/component"], "recorder");
    let port = &pod(&c.deployment).containers[0].ports.as_ref().unwrap()[0];
    assert_eq!(
        (port.name.as_deref(), port.container_port),
        (Some("admin"), 8080)
    );
    let service_port = &c.service.spec.as_ref().unwrap().ports.as_ref().unwrap()[0];
    assert_eq!(service_port.port, 8080);
    assert_eq!(service_port.target_port, Some(Int(8080)));
}

#[test]
fn the_volume_has_the_sessions_size_and_the_operators_storage_class() {
    let c = build(&session());
    let spec = c.volume.spec.as_ref().unwrap();
    assert_eq!(
        spec.access_modes.as_deref(),
        Some(&["ReadWriteOnce".to_string()][..])
    );
    assert_eq!(
        spec.resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"].0,
        "2Gi"
    );
    assert_eq!(
        spec.storage_class_name, None,
        "unset: the cluster's default"
    );

    let fast = RecordingSettings {
        storage_class_name: Some("fast-ssd".into()),
    };
    let c = build::build(&session(), &ChildSettings::default(), &fast).unwrap();
    let spec = c.volume.spec.unwrap();
    assert_eq!(spec.storage_class_name.as_deref(), Some("fast-ssd"));

    // The pod mounts it where the configuration says the files go.
    let pod = pod(&c.deployment);
    let claim = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find_map(|v| v.persistent_volume_claim.as_ref())
        .unwrap();
    assert_eq!(claim.claim_name, "desk-tape-recorder");
    let mounts = pod.containers[0].volume_mounts.as_ref().unwrap();
    let recordings = mounts.iter().find(|m| m.name == "recordings").unwrap();
    assert_eq!(recordings.mount_path, "/recordings");
    assert_ne!(recordings.read_only, Some(true));
}

#[test]
fn the_config_map_holds_the_recorders_configuration_paused() {
    let c = build(&session());
    let data = c.config.data.as_ref().unwrap();
    let config: RecorderConfig = serde_yaml::from_str(&data["recorder.yaml"]).unwrap();
    assert_eq!(config.experiment, "desk");
    assert_eq!(config.recording, "desk-tape");
    assert_eq!(config.exchange_retransmit, "desk-exchange.trading.svc:9001");
    assert_eq!(config.directory, std::path::PathBuf::from("/recordings"));
    assert_eq!(config.rotation.max_megabytes, 64);
    assert_eq!(config.rotation.max_seconds, 600);
    assert!(
        !config.enabled,
        "the controller turns recording on over HTTP"
    );
    assert_eq!(config.listen.to_string(), "[::]:8080");
    // camelCase, as the recorder reads it.
    assert!(data["recorder.yaml"].contains("exchangeRetransmit:"));

    let container = &pod(&c.deployment).containers[0];
    assert_eq!(
        container.args.as_deref().unwrap(),
        ["recorder", "--config", "/etc/ticklab/recorder.yaml"]
    );
}

#[test]
fn toggling_changes_no_child_so_the_recorder_is_never_restarted() {
    let on = session();
    let mut off = session();
    off.spec.enabled = false;
    off.metadata.generation = Some(4);
    let (a, b) = (build(&on), build(&off));
    assert_eq!(a.deployment, b.deployment);
    assert_eq!(a.config, b.config);
    assert_eq!(a.service, b.service);
    assert_eq!(a.volume, b.volume);

    // A rotation change does roll the pod: the recorder reads it at start.
    let mut rotated = session();
    rotated.spec.rotation.max_seconds = 60;
    let hash = |c: &RecorderChildren| {
        c.deployment
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()[children::CONFIG_HASH_ANNOTATION]
            .clone()
    };
    assert_ne!(hash(&a), hash(&build(&rotated)));
}

#[test]
fn the_recorder_runs_restricted_alone_and_probed() {
    let c = build(&session());
    let spec = c.deployment.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(1));
    assert_eq!(
        spec.strategy.as_ref().unwrap().type_.as_deref(),
        Some("Recreate"),
        "a ReadWriteOnce volume: the old pod goes first"
    );
    let pod = pod(&c.deployment);
    assert_eq!(pod.automount_service_account_token, Some(false));
    let security = pod.security_context.as_ref().unwrap();
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(
        security.fs_group,
        Some(65532),
        "the volume is writable for it"
    );
    assert_eq!(
        security.seccomp_profile.as_ref().unwrap().type_,
        "RuntimeDefault"
    );
    let container = &pod.containers[0];
    let cs = container.security_context.as_ref().unwrap();
    assert_eq!(cs.allow_privilege_escalation, Some(false));
    assert_eq!(cs.read_only_root_filesystem, Some(true));
    assert_eq!(
        cs.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_string()][..])
    );
    let path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        let get = p.as_ref().unwrap().http_get.clone().unwrap();
        (get.path.unwrap(), get.port)
    };
    assert_eq!(
        path(&container.readiness_probe),
        ("/readyz".into(), Int(8080))
    );
    assert_eq!(
        path(&container.liveness_probe),
        ("/healthz".into(), Int(8080))
    );
    let resources = container.resources.as_ref().unwrap();
    assert!(resources.requests.as_ref().unwrap().contains_key("memory"));
    assert!(resources.limits.as_ref().unwrap().contains_key("memory"));
}

#[test]
fn isolation_admits_exchanges_the_operator_and_scrapers_to_the_recorders_port() {
    let c = build::build(&session(), &isolated(), &RecordingSettings::default()).unwrap();
    let policy = c.network_policy.unwrap();
    assert_eq!(policy.metadata.name.as_deref(), Some("desk-tape-recorder"));
    assert_eq!(
        policy.metadata.owner_references.as_ref().unwrap()[0].kind,
        "RecordingSession"
    );
    let spec = policy.spec.unwrap();
    let pod_labels = c
        .deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .clone()
        .unwrap()
        .labels
        .unwrap();
    let selected = spec.pod_selector.unwrap().match_labels.unwrap();
    assert!(subset(&selected, &pod_labels));
    assert_eq!(selected["ticklab.dev/recording"], "desk-tape");

    let rules = spec.ingress.unwrap();
    assert_eq!(rules.len(), 1);
    let ports: Vec<_> = rules[0]
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| (p.port.clone().unwrap(), p.protocol.clone().unwrap()))
        .collect();
    assert_eq!(ports, vec![(Int(8080), "TCP".to_string())]);
    let from = rules[0].from.as_ref().unwrap();
    assert_eq!(from.len(), 3);
    // Any ticklab exchange of the namespace (a replaying one downloads a file; it
    // belongs to another experiment than the recorded one).
    assert!(from[0].namespace_selector.is_none());
    assert_eq!(
        from[0]
            .pod_selector
            .as_ref()
            .unwrap()
            .match_labels
            .clone()
            .unwrap(),
        BTreeMap::from([
            (
                "app.kubernetes.io/component".to_string(),
                "exchange".to_string()
            ),
            (
                "app.kubernetes.io/managed-by".to_string(),
                "ticklab-operator".to_string()
            ),
        ])
    );
    // The operator's pods, in its namespace.
    assert_eq!(
        from[1]
            .namespace_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()["kubernetes.io/metadata.name"],
        "ticklab-system"
    );
    assert!(from[1].pod_selector.is_some());
    // The scrapers' namespaces.
    assert_eq!(
        from[2]
            .namespace_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()["kubernetes.io/metadata.name"],
        "monitoring"
    );

    // The experiment's own policy admits the recorder's pod at every port of the
    // experiment's pods: its taps and recovery requests reach the exchange's
    // retransmission port (UDP); the copies come back as replies.
    let experiment: ticklab_crd::LatencyExperiment = serde_yaml::from_str(
        "apiVersion: ticklab.dev/v1alpha1\nkind: LatencyExperiment\nmetadata: {name: desk, namespace: trading, uid: u1}\nspec: {exchange: {symbols: [EURUSD], ratePerSecond: 1000}}\n",
    )
    .unwrap();
    let e = children::build(&experiment, &isolated(), children::Workload::Running, "").unwrap();
    let experiment_policy = e.network_policy.unwrap().spec.unwrap();
    assert!(subset(
        experiment_policy
            .pod_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap(),
        &pod_labels
    ));
    let own = &experiment_policy.ingress.as_ref().unwrap()[0];
    assert!(
        own.ports.is_none(),
        "every port, UDP retransmission included"
    );
    assert!(subset(
        own.from.as_ref().unwrap()[0]
            .pod_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap(),
        &pod_labels
    ));
}

#[test]
fn names_that_cannot_make_valid_children_are_refused_naming_the_field() {
    let mut long = session();
    long.metadata.name = Some("r".repeat(55));
    let (field, problem) = build::validate(&long).unwrap_err();
    assert_eq!(field, "metadata.name");
    assert!(problem.contains("at most 54"), "{problem}");
    long.metadata.name = Some("r".repeat(54));
    assert!(build::validate(&long).is_ok());

    let mut odd = session();
    odd.spec.experiment = "desk/../x".into();
    let (field, _) = build::validate(&odd).unwrap_err();
    assert_eq!(field, "spec.experiment");
    assert!(matches!(
        build::build(
            &odd,
            &ChildSettings::default(),
            &RecordingSettings::default()
        ),
        Err(build::BuildError::Invalid { .. })
    ));
}

/// What a recorder's `GET /recording` says: one closed file with a gap it could not
/// fill, one open file, one without feed data yet.
fn recorder_answer(state: &str) -> RecorderStatus {
    serde_json::from_value(json!({
        "experiment": "desk", "recording": "desk-tape", "enabled": true, "state": state,
        "packets": 1500, "bytes": 200000, "recovered": 4, "unrecoverable": 2,
        "duplicates": 0, "ignoredWhilePaused": 0, "malformed": 0, "kernelDrops": 0,
        "writeErrors": 0, "behind": 0,
        "index": {"version": 1, "files": [
            {"name": "desk-tape-1.pcap", "format": "pcap", "firstSeq": 1, "lastSeq": 1000,
             "packets": 1000, "trades": 3000, "bytes": 150000,
             "startNs": 1_764_000_000_123_456_789_u64, "endNs": 1_764_000_010_000_000_000_u64,
             "missing": [[400, 401]], "sessions": ["s1"], "complete": true},
            {"name": "desk-tape-2.pcap", "format": "pcap", "firstSeq": 1001, "lastSeq": 1500,
             "packets": 500, "trades": 1500, "bytes": 50000,
             "startNs": 1_764_000_020_000_000_000_u64, "endNs": 1_764_000_025_000_000_000_u64,
             "missing": [], "sessions": ["s1"], "complete": false},
            {"name": "desk-tape-3.pcap", "format": "pcap", "firstSeq": null, "lastSeq": null,
             "packets": 0, "trades": 0, "bytes": 24, "startNs": null, "endNs": null,
             "missing": [], "sessions": [], "complete": false}
        ]}
    }))
    .unwrap()
}

fn condition<'a>(conditions: &'a [Condition], type_: &str) -> &'a Condition {
    conditions.iter().find(|c| c.type_ == type_).unwrap()
}

#[test]
fn the_status_copies_the_recorders_state_counts_and_index() {
    let answer = recorder_answer("Draining");
    let observed = Observed {
        experiment: "desk",
        namespace: "trading",
        experiment_found: true,
        workload: Workload::Available,
        recorder: Ok(&answer),
    };
    let now = Timestamp::now();
    let s = status::status(
        false,
        Some(4),
        "http://desk-tape-recorder.trading.svc:8080".into(),
        &observed,
        &Default::default(),
        now,
    );
    assert_eq!(
        s.state,
        Some(RecordingState::Recording),
        "draining shows as recording"
    );
    assert_eq!((s.packets, s.bytes, s.file_count), (1500, 200000, 3));
    assert_eq!(s.observed_generation, Some(4));
    assert_eq!(
        s.files.len(),
        2,
        "the file without feed data is counted, not listed"
    );
    let first = &s.files[0];
    assert_eq!(
        (first.first_seq, first.last_seq, first.packets),
        (1, 1000, 1000)
    );
    assert_eq!(
        first.start_time.as_deref(),
        Some("2025-11-24T16:00:00.123456789Z")
    );
    assert_eq!(first.end_time.as_deref(), Some("2025-11-24T16:00:10Z"));
    assert_eq!(
        first.missing,
        vec![SequenceRange {
            first: 400,
            last: 401
        }]
    );
    assert!(first.complete && !s.files[1].complete);

    assert_eq!(condition(&s.conditions, "ExperimentFound").status, "True");
    assert_eq!(condition(&s.conditions, "Ready").status, "True");
    let recording = condition(&s.conditions, "Recording");
    assert_eq!(
        (recording.status.as_str(), recording.reason.as_str()),
        ("True", "Draining")
    );
    assert!(
        recording
            .message
            .contains("2 sequence numbers could not be recovered")
    );
    assert!(
        !status::settled(false, &answer),
        "still switching: refresh soon"
    );

    // Paused; the transition time of a condition that held is kept.
    let paused = recorder_answer("Paused");
    let later = Observed {
        recorder: Ok(&paused),
        ..observed.clone()
    };
    let s2 = status::status(
        false,
        Some(4),
        "e".into(),
        &later,
        &s,
        now + std::time::Duration::from_secs(5),
    );
    assert_eq!(s2.state, Some(RecordingState::Paused));
    let recording = condition(&s2.conditions, "Recording");
    assert_eq!(
        (recording.status.as_str(), recording.reason.as_str()),
        ("False", "Paused")
    );
    assert_eq!(
        condition(&s2.conditions, "Ready").last_transition_time,
        condition(&s.conditions, "Ready").last_transition_time
    );
    assert!(status::settled(false, &paused));
}

#[test]
fn an_unreachable_recorder_keeps_the_last_figures_and_says_why() {
    let answer = recorder_answer("Recording");
    let reachable = Observed {
        experiment: "desk",
        namespace: "trading",
        experiment_found: true,
        workload: Workload::Available,
        recorder: Ok(&answer),
    };
    let before = status::status(
        true,
        Some(3),
        "e".into(),
        &reachable,
        &Default::default(),
        Timestamp::now(),
    );
    let unreachable = Observed {
        recorder: Err("cannot reach the recorder at http://x: connection refused".into()),
        ..reachable.clone()
    };
    let s = status::status(
        true,
        Some(3),
        "e".into(),
        &unreachable,
        &before,
        Timestamp::now(),
    );
    assert_eq!((s.packets, s.files.len()), (1500, 2));
    assert_eq!(s.state, Some(RecordingState::Recording));
    let ready = condition(&s.conditions, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "RecorderUnreachable")
    );
    assert!(
        ready.message.contains("connection refused"),
        "{}",
        ready.message
    );
    assert_eq!(condition(&s.conditions, "Recording").status, "Unknown");

    let starting = Observed {
        workload: Workload::Starting,
        ..unreachable.clone()
    };
    let s = status::status(
        true,
        Some(3),
        "e".into(),
        &starting,
        &before,
        Timestamp::now(),
    );
    assert_eq!(condition(&s.conditions, "Ready").reason, "RecorderStarting");
}

#[test]
fn a_missing_experiment_is_named_in_the_status() {
    let observed = Observed {
        experiment: "later",
        namespace: "trading",
        experiment_found: false,
        workload: Workload::Missing,
        recorder: Err("no recorder".into()),
    };
    let s = status::status(
        true,
        Some(1),
        "e".into(),
        &observed,
        &Default::default(),
        Timestamp::now(),
    );
    let found = condition(&s.conditions, "ExperimentFound");
    assert_eq!(
        (found.status.as_str(), found.reason.as_str()),
        ("False", "ExperimentNotFound")
    );
    assert!(
        found.message.contains("\"later\"") && found.message.contains("trading"),
        "{}",
        found.message
    );
    let ready = condition(&s.conditions, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "ExperimentNotFound")
    );
    assert_eq!(s.state, None);
}
