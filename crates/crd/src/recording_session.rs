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
    printcolumn = r#"{"name":"Bytes","type":"integer","jsonPath":".status.bytes"}"#,
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

/// Observed state of a recording.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct RecordingSessionStatus {
    /// Recording or Paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<RecordingState>,
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Recording and such, keyed by type.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Packets recorded so far.
    #[serde(default)]
    pub packets: u64,
    /// Bytes recorded so far.
    #[serde(default)]
    pub bytes: u64,
    /// The files, oldest first, with the feed sequence numbers each holds.
    #[serde(default)]
    pub files: Vec<RecordedFile>,
}

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
