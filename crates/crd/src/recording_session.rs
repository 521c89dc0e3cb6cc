//! `RecordingSession` (`rec`): records an experiment's feed to rotating files that
//! Wireshark and tcpdump open. Editing `spec.enabled` starts and stops recording
//! without losing what was recorded; the status indexes the files by sequence range.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A recording of one experiment's feed.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "ticklab.dev",
    version = "v1alpha1",
    kind = "RecordingSession",
    plural = "recordingsessions",
    shortname = "rec",
    namespaced,
    status = "RecordingSessionStatus",
    printcolumn = r#"{"name":"Experiment","type":"string","jsonPath":".spec.experiment"}"#,
    printcolumn = r#"{"name":"Enabled","type":"boolean","jsonPath":".spec.enabled"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Packets","type":"integer","jsonPath":".status.packets"}"#,
    printcolumn = r#"{"name":"Bytes","type":"integer","jsonPath":".status.bytes"}"#,
    printcolumn = r#"{"name":"Files","type":"integer","jsonPath":".status.fileCount"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RecordingSessionSpec {
    /// Name of the LatencyExperiment (same namespace) whose feed is recorded.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("experiment is immutable: create a new RecordingSession to record another experiment"))]
    pub experiment: String,
    /// The toggle: true records, false pauses. Files already written are kept.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// File format.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("format is immutable: one session's files share one format"))]
    pub format: RecordingFormat,
    /// When to start a new file.
    #[serde(default)]
    pub rotation: Rotation,
    /// Size of the volume that holds the files, as a Kubernetes quantity ("1Gi").
    #[serde(default = "default_storage")]
    #[schemars(regex(pattern = r"^[0-9]+(Ki|Mi|Gi|Ti)?$"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("storage is immutable: the volume is provisioned at creation"))]
    pub storage: String,
}

/// How recorded packets are written.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum RecordingFormat {
    /// pcap with nanosecond timestamps: opens in Wireshark and tcpdump, replays.
    #[default]
    Pcap,
    /// One JSON object per trade.
    Jsonl,
}

/// File rotation; a new file starts when either bound is reached.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rotation {
    /// Largest file in mebibytes.
    #[serde(default = "default_max_megabytes")]
    #[schemars(range(min = 1, max = 65536))]
    pub max_megabytes: u32,
    /// Longest a file stays open, in seconds.
    #[serde(default = "default_max_seconds")]
    #[schemars(range(min = 1, max = 86400))]
    pub max_seconds: u32,
}

impl Default for Rotation {
    fn default() -> Self {
        Self {
            max_megabytes: default_max_megabytes(),
            max_seconds: default_max_seconds(),
        }
    }
}

/// Observed state of a recording, copied from the recorder every few seconds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct RecordingSessionStatus {
    /// Recording or Paused, as the recorder last reported it (a recorder finishing
    /// the recovery of a span it was told to stop shows as Recording until done).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<RecordingState>,
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// ExperimentFound, Ready (the recorder is available and answers) and Recording,
    /// keyed by type.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Packets the recorder has written since it started (each file's own count is
    /// in `files`, which survive a restart of the recorder).
    #[serde(default)]
    pub packets: u64,
    /// Bytes the recorder has written since it started.
    #[serde(default)]
    pub bytes: u64,
    /// How many files the recorder holds (`files` lists the newest 200).
    #[serde(default)]
    pub file_count: u64,
    /// The files, oldest first, with the feed sequence numbers each holds.
    #[serde(default)]
    pub files: Vec<RecordedFile>,
    /// The recorder's HTTP address inside the cluster: `GET /files`,
    /// `GET /files/NAME` (through `kubectl port-forward` from outside).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

/// Most files listed in the status: the status is one object in etcd, and a long
/// recording rotating every few minutes would otherwise outgrow it.
pub const MAX_STATUS_FILES: usize = 200;

/// Recording or paused.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RecordingState {
    Recording,
    Paused,
}

/// One recorded file.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordedFile {
    /// File name on the recorder (also its download path).
    pub name: String,
    /// First feed sequence number in the file.
    pub first_seq: u64,
    /// Last feed sequence number in the file.
    pub last_seq: u64,
    /// Size in bytes.
    pub bytes: u64,
    /// Packets (pcap records, as tshark counts them) or trade lines in the file.
    #[serde(default)]
    pub packets: u64,
    /// Receive time of the first packet (RFC 3339, nanoseconds, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// Receive time of the last packet (RFC 3339, nanoseconds, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<String>,
    /// Sequence numbers between `firstSeq` and `lastSeq` the recorder could not get
    /// (neither tapped nor recovered); empty when nothing is missing.
    #[serde(default)]
    pub missing: Vec<SequenceRange>,
    /// False while the recorder still writes to the file.
    #[serde(default)]
    pub complete: bool,
}

/// An inclusive range of feed sequence numbers.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SequenceRange {
    /// First sequence number of the range.
    pub first: u64,
    /// Last sequence number of the range (inclusive).
    pub last: u64,
}

fn default_true() -> bool {
    true
}
fn default_storage() -> String {
    "1Gi".into()
}
fn default_max_megabytes() -> u32 {
    256
}
fn default_max_seconds() -> u32 {
    3600
}
