//! `MirrorSession` (`mirror`): mirrors a pod's traffic to the capture service, as AWS
//! VPC Traffic Mirroring does (VXLAN on UDP 4789), either emulated in the cluster by
//! a sidecar or received from a real VPC mirror session; the capture decodes the
//! feed and order messages and measures latency from the wire.

use std::collections::BTreeMap;

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
    /// Which packets to mirror, like AWS mirror filter rules: the rules of a packet's
    /// direction are tried in order, the first that matches decides (accept mirrors,
    /// reject skips), and a packet no rule matches is not mirrored. Empty: mirror
    /// everything. As AWS: at most 10 rules per direction.
    #[serde(default)]
    #[schemars(length(max = 20))]
    #[x_kube(validation = Rule::new("self.filter(r, r.direction == 'ingress').size() <= 10 && self.filter(r, r.direction == 'egress').size() <= 10").message("filter: at most 10 rules per direction (the AWS limit)"))]
    pub filter: Vec<FilterRule>,
    /// Bytes of each packet to mirror, counted after the VXLAN header (AWS
    /// PacketLength): 1 to 8500, as AWS allows for Network Load Balancer targets.
    /// Unset: whole packets (up to what the path's MTU carries). A truncated packet
    /// keeps its original IP and UDP/TCP lengths; the capture decodes it as far as
    /// it goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 8500))]
    pub packet_length: Option<u32>,
    /// VXLAN network identifier of the mirrored traffic (AWS VirtualNetworkId,
    /// 0 to 16777215): the capture decodes only this network's frames.
    #[serde(default = "default_vni")]
    #[schemars(range(min = 0, max = 16_777_215))]
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
    /// Source ports; empty matches all.
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub source_ports: Vec<u16>,
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
    /// ExperimentFound, Ready (the capture runs), Mirroring (frames flow), keyed by
    /// type.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Where mirrors send VXLAN: "host:4789" (for mode vpc, the target to configure
    /// in AWS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_endpoint: Option<String>,
    /// Pods the mirror container runs in (mode sidecar).
    #[serde(default)]
    pub mirrored_pods: Vec<String>,
    /// Frames the capture received from the mirror.
    #[serde(default)]
    pub packets_mirrored: u64,
    /// Frames decoded down to ticklab's feed and order traffic.
    #[serde(default)]
    pub packets_decoded: u64,
    /// Frames cut short by the packet length (decoded as far as they went).
    #[serde(default)]
    pub packets_truncated: u64,
    /// Decode errors, all kinds (counted, never fatal).
    #[serde(default)]
    pub decode_errors: u64,
    /// Decode errors by kind.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub decode_errors_by_kind: BTreeMap<String, u64>,
    /// Trades seen on the wire on the live feed.
    #[serde(default)]
    pub trades: u64,
    /// Trades first seen in a retransmission reply (recovered by the trader).
    #[serde(default)]
    pub trades_recovered: u64,
    /// Orders seen leaving the trader.
    #[serde(default)]
    pub orders: u64,
    /// Orders matched to the tick they name (tick-to-trade measured).
    #[serde(default)]
    pub orders_matched: u64,
    /// TLS application records decrypted with the trader's key log.
    #[serde(default)]
    pub tls_records_decrypted: u64,
    /// Where the figures' times come from: "interface" (stamped at the pod by the
    /// mirror), "arrival" (plain VXLAN, as AWS sends it: includes the mirror path),
    /// or "mixed".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timing: Option<String>,
    /// One-way feed latency measured from the wire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feed_latency: Option<LatencySummary>,
    /// Tick-to-trade measured from the wire (order packet time minus tick packet time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tick_to_trade: Option<LatencySummary>,
    /// Order seen on the wire minus the trader's own send stamp in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_wire_minus_app: Option<DifferenceSummary>,
    /// The trader's receive stamp minus the trade seen on the wire (sampled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trade_app_minus_wire: Option<DifferenceSummary>,
}

/// Percentiles of a signed difference between two clocks' views of the same
/// messages, in microseconds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct DifferenceSummary {
    /// Messages compared.
    pub count: u64,
    /// Smallest difference, µs (negative: the first clock was later).
    pub min_micros: f64,
    /// Median, µs.
    pub p50_micros: f64,
    /// 99th percentile, µs.
    pub p99_micros: f64,
    /// Largest difference, µs.
    pub max_micros: f64,
    /// Mean, µs.
    pub mean_micros: f64,
}

fn default_vni() -> u32 {
    42
}
