//! `LatencyExperiment` (`lexp`): what the exchange publishes, what the trader does,
//! where they run and what counts as success. The operator reconciles it into pods;
//! `ticklab run` reads the very same YAML and runs it on loopback.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::instruments::Instrument;
use crate::results::ExperimentResults;

/// A latency experiment: a simulated exchange streams trades to a trader, which
/// measures one-way feed latency and tick-to-trade and reports loss.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "ticklab.dev",
    version = "v1alpha1",
    kind = "LatencyExperiment",
    plural = "latencyexperiments",
    shortname = "lexp",
    namespaced,
    status = "LatencyExperimentStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Transport","type":"string","jsonPath":".spec.exchange.transport"}"#,
    printcolumn = r#"{"name":"p99 µs","type":"number","jsonPath":".status.results.feedLatency.p99Micros"}"#,
    printcolumn = r#"{"name":"Verdict","type":"string","jsonPath":".status.results.sloVerdict"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    // The name prefixes the children's names ("NAME-exchange-feed" is a Service,
    // which must be a DNS-1035 label of at most 63 characters).
    validation = Rule::new("size(self.metadata.name) <= 40").message("metadata.name must be at most 40 characters: it prefixes the names of the experiment's pods and Services"),
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name must start with a letter and hold only lowercase letters, digits and '-': it names the experiment's Services")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LatencyExperimentSpec {
    /// What the simulated exchange publishes and how.
    pub exchange: ExchangeSpec,
    /// What the trader does with the feed.
    #[serde(default)]
    pub trader: TraderSpec,
    /// Where the exchange and trader pods run relative to each other (in a cluster).
    #[serde(default)]
    pub placement: Placement,
    /// How long the experiment runs, e.g. "10s", "5m", "1h30m". Absent: until deleted
    /// (in local mode, until Ctrl-C).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message("duration must be longer than zero"))]
    pub duration: Option<String>,
    /// Service-level objective the results are judged against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo: Option<SloSpec>,
    /// TLS (rustls) on every TCP channel: the TCP feed, the WebSocket feed (wss), the
    /// binary TCP order channel and the HTTP order API (https). The UDP feed and the
    /// UDP retransmission server stay plain, as exchanges' multicast is. Absent:
    /// everything plain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
}

/// The exchange's feed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("has(self.replay) || size(self.symbols) > 0").message("needs at least one instrument unless exchange.replay is set").field_path(".symbols"),
    validation = Rule::new("has(self.replay) || self.ratePerSecond > 0").message("must be at least 1 unless exchange.replay is set").field_path(".ratePerSecond")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExchangeSpec {
    /// Instruments to trade, from ticklab's catalogue (currency pairs and crypto).
    /// Required unless `replay` is set (a replay trades what was recorded).
    #[serde(default)]
    #[schemars(length(max = 14))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub symbols: Vec<Instrument>,
    /// Average trades per second over all symbols (Poisson arrivals), 1 to 50
    /// million. Required unless `replay` is set.
    #[serde(default)]
    #[schemars(range(min = 0, max = 50_000_000))]
    pub rate_per_second: u64,
    /// Seed of the trade generator: the same seed gives the same trades.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Short bursts at a multiple of the base rate, as real markets have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub microbursts: Option<MicroburstSpec>,
    /// How the feed travels from exchange to trader.
    #[serde(default)]
    pub transport: Transport,
    /// Largest feed packet in bytes (header included); 1472 fills a 1500-byte
    /// Ethernet MTU with IPv4 and UDP headers.
    #[serde(default = "default_max_packet_bytes")]
    #[schemars(range(min = 128, max = 65507))]
    pub max_packet_bytes: u32,
    /// Messages the retransmission server keeps for gap recovery.
    #[serde(default = "default_retransmission_buffer")]
    #[schemars(range(min = 1024, max = 100_000_000))]
    pub retransmission_buffer: u32,
    /// Deliberate faults, to see loss detection and recovery at work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faults: Option<FaultSpec>,
    /// Publish a recording instead of generated trades.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<ReplaySpec>,
}

/// A recorded feed replayed into the trader: a file of a RecordingSession, fetched
/// from its recorder, at a speed multiplier or at top speed, optionally looped.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("!(has(self.speed) && has(self.topSpeed) && self.topSpeed)").message("replay takes speed or topSpeed, not both"))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplaySpec {
    /// The RecordingSession (same namespace) whose recorder holds the file.
    #[schemars(length(min = 1, max = 253))]
    pub recording: String,
    /// The file, as the session's status lists it.
    #[schemars(length(min = 1, max = 253))]
    pub file: String,
    /// Speed multiplier against the recording's own timing, 0.1 to 100 (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.1, max = 100.0))]
    pub speed: Option<f64>,
    /// As fast as possible, no schedule.
    #[serde(default)]
    pub top_speed: bool,
    /// Start again after the last packet, until `spec.duration` ends.
    #[serde(default, rename = "loop")]
    pub looped: bool,
}

/// Bursts of trades at a multiple of the base rate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("self.durationMillis < self.everyMillis").message("microbursts.durationMillis must be shorter than everyMillis").field_path(".durationMillis"))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MicroburstSpec {
    /// Milliseconds from the start of one burst to the start of the next.
    #[schemars(range(min = 1, max = 3_600_000))]
    pub every_millis: u32,
    /// Milliseconds a burst lasts (less than `everyMillis`).
    #[schemars(range(min = 1, max = 3_600_000))]
    pub duration_millis: u32,
    /// Rate during a burst as a multiple of `ratePerSecond`.
    #[schemars(range(min = 1, max = 1000))]
    pub multiplier: u32,
}

/// Faults the exchange injects into its own feed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultSpec {
    /// Percent of feed packets not sent (they stay available for retransmission),
    /// chosen by the seeded generator, 0–100.
    #[serde(default)]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub drop_percent: f64,
}

/// Feed transport.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// MoldUDP64-style datagrams, many trades per packet; gaps recovered through the
    /// retransmission server.
    #[default]
    Udp,
    /// The same packets over one TCP connection, length-prefixed.
    Tcp,
    /// The same packets as binary WebSocket messages.
    Websocket,
}

/// The trader.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TraderSpec {
    /// Turns ticks into orders.
    #[serde(default)]
    pub strategy: StrategySpec,
    /// How orders reach the exchange.
    #[serde(default)]
    pub order_transport: OrderTransport,
    /// Storing received trades in MongoDB.
    #[serde(default)]
    pub persistence: PersistenceSpec,
    /// Spin on the UDP feed socket instead of sleeping until a packet arrives:
    /// lower, steadier receive latency for one core kept busy (what latency-bound
    /// trading systems do).
    #[serde(default)]
    pub busy_poll: bool,
}

/// A momentum strategy: when a symbol's price moves at least `thresholdBps` from the
/// price at its last order, send an order in the direction of the move.
// The API server compares an integer against a fractional `minimum` after
// truncating the bound (0 passes `minimum: 0.01`); the CEL rule closes that gap.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("self.thresholdBps >= 0.01").message("strategy.thresholdBps must be at least 0.01").field_path(".thresholdBps"))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StrategySpec {
    /// Whether the trader sends orders at all.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Price move, in basis points, that triggers an order.
    #[serde(default = "default_threshold_bps")]
    #[schemars(range(min = 0.01, max = 10000.0))]
    pub threshold_bps: f64,
    /// Upper bound on orders per second, so a fast feed cannot flood the exchange.
    #[serde(default = "default_max_orders")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub max_orders_per_second: u32,
}

impl Default for StrategySpec {
    fn default() -> Self {
        Self {
            enabled: true,
            threshold_bps: default_threshold_bps(),
            max_orders_per_second: default_max_orders(),
        }
    }
}

/// Order channel transport.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum OrderTransport {
    /// Binary orders over one TCP connection.
    #[default]
    Tcp,
    /// JSON over HTTP/1.1 (`POST /orders`), as many retail APIs.
    Http,
}

/// TLS between the trader and the exchange.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsSpec {
    /// A Secret of type kubernetes.io/tls in the experiment's namespace whose
    /// certificate (`tls.crt`, `tls.key`) the exchange serves; the trader trusts the
    /// Secret's `ca.crt` if it has one, else `tls.crt` itself. Absent: the operator
    /// generates a self-signed certificate for the names of the exchange's Service
    /// into the Secret `NAME-tls` (once, kept, owned by the experiment); `ticklab run`
    /// generates one for 127.0.0.1 and localhost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[schemars(regex(
        pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
    ))]
    pub secret_name: Option<String>,
    /// The trader logs its TLS session secrets in the NSS key log format
    /// (SSLKEYLOGFILE), served at `GET /keylog` on its API port (and written to
    /// `ticklab run --keylog FILE`), so a capture of its traffic can be decrypted.
    /// Whoever has the key log can read the traffic: a lab setting, never production.
    #[serde(default)]
    pub key_log: bool,
    /// Lowest TLS version both sides accept: "1.2" (the default; 1.2 and 1.3 both
    /// work, and rustls negotiates 1.3) or "1.3".
    #[serde(default)]
    pub min_version: TlsVersion,
}

/// A TLS protocol version.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum TlsVersion {
    /// TLS 1.2 (RFC 5246).
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3 (RFC 8446).
    #[serde(rename = "1.3")]
    Tls13,
}

/// Persistence of received trades.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("self.enabled || !has(self.externalUriSecret)").message("persistence.externalUriSecret is set but persistence is disabled").field_path(".externalUriSecret"))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PersistenceSpec {
    /// Store every received trade in MongoDB (batched, idempotent, off the feed path).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Use an external MongoDB whose URI is in this Secret instead of the one the
    /// operator runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_uri_secret: Option<SecretKeySelector>,
    /// Largest number of trades waiting for the database; beyond it trades are
    /// counted as not persisted rather than slowing the feed.
    #[serde(default = "default_write_buffer")]
    #[schemars(range(min = 1000, max = 10_000_000))]
    pub buffer_trades: u32,
}

impl Default for PersistenceSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            external_uri_secret: None,
            buffer_trades: default_write_buffer(),
        }
    }
}

/// A key of a Secret in the experiment's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeySelector {
    /// Secret name.
    pub name: String,
    /// Key inside the Secret.
    pub key: String,
}

/// Relative placement of exchange and trader pods.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub enum Placement {
    /// Same node: traffic stays on the node's virtual network.
    #[default]
    SameNode,
    /// Different nodes: traffic crosses the real network.
    DifferentNodes,
}

/// What a successful run must achieve.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.p99Micros) || has(self.maxLossPercent)").message("slo needs p99Micros or maxLossPercent (or both)"))]
#[x_kube(validation = Rule::new("!has(self.p99Micros) || self.p99Micros > 0.0").message("slo.p99Micros must be greater than zero").field_path(".p99Micros"))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SloSpec {
    /// Upper bound on the 99th percentile of one-way feed latency, in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.001))]
    pub p99_micros: Option<f64>,
    /// Upper bound on lost trades (never received nor recovered), percent 0–100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub max_loss_percent: Option<f64>,
}

/// Observed state of an experiment.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct LatencyExperimentStatus {
    /// Pending, Running, Completed or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing, Degraded, SLOMet and such, keyed by type.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// When the current run started: the first moment every workload was available
    /// for this generation of the spec. `duration` counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// Where to reach the experiment's services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Endpoints>,
    /// What was measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results: Option<ExperimentResults>,
}

/// Lifecycle phase.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    Pending,
    Running,
    Completed,
    Failed,
}

/// Addresses of an experiment's services.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Endpoints {
    /// Trader REST API (`/trades`, `/stats`) and metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trader: Option<String>,
    /// Exchange order API and metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange: Option<String>,
}

fn default_seed() -> u64 {
    1
}
fn default_max_packet_bytes() -> u32 {
    1472
}
fn default_retransmission_buffer() -> u32 {
    1_048_576
}
fn default_true() -> bool {
    true
}
fn default_threshold_bps() -> f64 {
    5.0
}
fn default_max_orders() -> u32 {
    200
}
fn default_write_buffer() -> u32 {
    200_000
}
