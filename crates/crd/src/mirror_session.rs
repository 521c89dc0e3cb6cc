//! `MirrorSession` (`mirror`): mirrors a pod's traffic to the capture service, as AWS
//! VPC Traffic Mirroring does (VXLAN on UDP 4789), either emulated in the cluster by
//! a sidecar or received from a real VPC mirror session; the capture decodes the
//! feed and order messages and measures latency from the wire.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::results::LatencySummary;

/// Traffic mirroring from an experiment's pods to the capture service.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "ticklab.dev",
    version = "v1alpha1",
    kind = "MirrorSession",
    plural = "mirrorsessions",
    shortname = "mirror",
    namespaced,
    status = "MirrorSessionStatus",
    printcolumn = r#"{"name":"Experiment","type":"string","jsonPath":".spec.experiment"}"#,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Decoded","type":"integer","jsonPath":".status.packetsDecoded"}"#,
    printcolumn = r#"{"name":"p99 µs","type":"number","jsonPath":".status.feedLatency.p99Micros"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MirrorSessionSpec {
    /// Name of the LatencyExperiment (same namespace) whose pods are mirrored.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("experiment is immutable: create a new MirrorSession to mirror another experiment"))]
    pub experiment: String,
    /// Which of the experiment's pods to mirror.
    #[serde(default)]
    pub target: MirrorTarget,
    /// Which packets to mirror, like AWS mirror filter rules: the first matching rule
    /// decides; no rule matching means not mirrored. Empty: mirror everything.
    #[serde(default)]
    #[schemars(length(max = 10))]
    pub filter: Vec<FilterRule>,
    /// Bytes of each packet to mirror (truncation); 0 mirrors whole packets.
    #[serde(default)]
    #[schemars(range(min = 0, max = 65535))]
    pub packet_length: u32,
    /// VXLAN network identifier of the mirrored traffic.
    #[serde(default = "default_vni")]
    #[schemars(range(min = 1, max = 16_777_215))]
    pub vni: u32,
    /// Emulate mirroring in the cluster, or receive real AWS VPC Traffic Mirroring.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("mode is immutable: sidecar and vpc sessions are set up differently"))]
    pub mode: MirrorMode,
}

/// Pods to mirror.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum MirrorTarget {
    #[default]
    Trader,
    Exchange,
}

/// One mirror filter rule.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterRule {
    /// Traffic direction, as seen from the mirrored pod.
    pub direction: Direction,
    /// Accept mirrors matching packets, reject skips them.
    #[serde(default)]
    pub action: FilterAction,
    /// Transport protocol.
    #[serde(default)]
    pub protocol: Protocol,
    /// Destination ports; empty matches all.
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub ports: Vec<u16>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum FilterAction {
    #[default]
    Accept,
    Reject,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    All,
    Udp,
    Tcp,
}

/// How mirrored packets reach the capture service.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum MirrorMode {
    /// A mirror container in the target pod captures its interface and forwards
    /// VXLAN-encapsulated frames, keeping the capture timestamp.
    #[default]
    Sidecar,
    /// The capture service receives real AWS VPC Traffic Mirroring (UDP 4789).
    Vpc,
}

/// Observed state of a mirror session.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct MirrorSessionStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Mirroring and such, keyed by type.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Packets received from the mirror.
    #[serde(default)]
    pub packets_mirrored: u64,
    /// Packets decoded down to feed or order messages.
    #[serde(default)]
    pub packets_decoded: u64,
    /// Packets that failed to decode (counted and dropped).
    #[serde(default)]
    pub decode_errors: u64,
    /// One-way feed latency measured from the wire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feed_latency: Option<LatencySummary>,
    /// Tick-to-trade measured from the wire (order packet time minus tick packet time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tick_to_trade: Option<LatencySummary>,
}

fn default_vni() -> u32 {
    42
}
