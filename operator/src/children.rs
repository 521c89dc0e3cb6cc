//! The desired children of a LatencyExperiment, built from its spec without a client:
//! a ConfigMap with the rendered service configurations, exchange and trader
//! Deployments and Services, (unless an external MongoDB is named) a MongoDB
//! StatefulSet, headless Service and credentials Secret, (with `spec.tls` and no
//! Secret named) the generated self-signed certificate's Secret, and (when the
//! operator is told to) a NetworkPolicy that isolates the experiment's pods from
//! every other workload. Pure, so tests drive it from YAML fixtures; the reconciler applies what
//! it returns with server-side apply.

use std::collections::BTreeMap;
use std::net::{Ipv6Addr, SocketAddr};

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, StatefulSet,
    StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort,
    EmptyDirVolumeSource, EnvVar, EnvVarSource, ExecAction, HTTPGetAction, KeyToPath, PodAffinity,
    PodAffinityTerm, PodAntiAffinity, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, Secret, SecretKeySelector, SecretVolumeSource,
    SecurityContext, Service, ServicePort, ServiceSpec, TCPSocketAction, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use sha2::{Digest, Sha256};
use ticklab_crd::{Instrument, LatencyExperiment, LatencyExperimentSpec, Placement, Transport};
use ticklab_exchange::ExchangeConfig;
use ticklab_exchange::replay::ReplayConfig;
use ticklab_exchange::tls::{CertificatePair, ServerTlsConfig};
use ticklab_trader::TraderConfig;
use ticklab_trader::tls::ClientTlsConfig;

/// Ports the services listen on inside their pods (and their Services expose).
pub mod ports {
    /// Exchange: TCP or WebSocket feed.
    pub const FEED: u16 = 9000;
    /// Exchange: UDP retransmission server.
    pub const RETRANSMIT: u16 = 9001;
    /// Exchange: binary order port.
    pub const ORDER_TCP: u16 = 9002;
    /// Exchange: HTTP order API.
    pub const ORDER_HTTP: u16 = 9003;
    /// Exchange: `/metrics`, `/healthz`, `/readyz`.
    pub const EXCHANGE_ADMIN: u16 = 9090;
    /// Trader: UDP feed.
    pub const TRADER_FEED: u16 = 9100;
    /// Trader: REST (`/stats`, `/trades`) and admin endpoints.
    pub const TRADER_API: u16 = 9190;
    /// MongoDB.
    pub const MONGODB: u16 = 27017;
}

/// Label every child carries; the operator watches only objects with it.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "ticklab-operator";
/// Label naming the experiment a child belongs to.
pub const EXPERIMENT_LABEL: &str = "ticklab.dev/experiment";
/// Pod-template annotation holding a hash of the rendered configuration, so a spec
/// change rolls the pods even though the ConfigMap keeps its name.
pub const CONFIG_HASH_ANNOTATION: &str = "ticklab.dev/config-hash";

/// Labels of the operator's own pods (the Helm chart sets them): experiment
/// NetworkPolicies let exactly these pods read the trader's results.
pub const OPERATOR_POD_LABELS: [(&str, &str); 2] = [
    ("app.kubernetes.io/name", "ticklab"),
    ("app.kubernetes.io/component", "operator"),
];

/// What the operator's own settings contribute to the children.
#[derive(Clone, Debug)]
pub struct ChildSettings {
    /// The ticklab image (holds the `ticklab` binary with `exchange` and `trader`).
    pub image: String,
    /// Image pull policy for the ticklab image ("IfNotPresent" for kind-loaded images).
    pub image_pull_policy: String,
    /// MongoDB image for operator-managed databases.
    pub mongodb_image: String,
    /// The Secret (looked up in each experiment's namespace) holding the URI of an
    /// external MongoDB, for experiments that persist trades without naming their
    /// own: the operator then runs no MongoDB for them.
    pub default_mongodb_secret: Option<ticklab_crd::SecretKeySelector>,
    /// Isolate each experiment's pods with a NetworkPolicy.
    pub network_policy: Option<IsolationSettings>,
}

impl Default for ChildSettings {
    fn default() -> Self {
        Self {
            // No registry publishes ticklab's image: users build it under this name
            // (scripts/image.sh, scripts/kind-load.sh) or push it and say where.
            image: format!("localhost/ticklab:{}", env!("CARGO_PKG_VERSION")),
            image_pull_policy: "IfNotPresent".into(),
            mongodb_image: "mongo:7.0".into(),
            default_mongodb_secret: None,
            network_policy: None,
        }
    }
}

/// Who, besides the experiment's own pods, may reach them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IsolationSettings {
    /// Namespace of the operator's pods (they read the trader's results).
    pub operator_namespace: String,
    /// Labels of the namespaces whose pods may scrape the admin ports (Prometheus);
    /// empty: every namespace may.
    pub metrics_namespace_labels: BTreeMap<String, String>,
}

/// Where an experiment's trades go.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MongoDb<'a> {
    /// Persistence is off.
    None,
    /// The operator runs a MongoDB for the experiment.
    Managed,
    /// An external MongoDB whose URI is in this Secret of the experiment's namespace.
    External {
        secret: &'a ticklab_crd::SecretKeySelector,
        /// Where the Secret was named, for messages: the spec field or the flag.
        named_by: &'static str,
    },
}

/// The experiment's own `externalUriSecret` wins over the operator's default.
pub fn mongodb_for<'a>(
    spec: &'a LatencyExperimentSpec,
    settings: &'a ChildSettings,
) -> MongoDb<'a> {
    let persistence = &spec.trader.persistence;
    if !persistence.enabled {
        return MongoDb::None;
    }
    match (
        &persistence.external_uri_secret,
        &settings.default_mongodb_secret,
    ) {
        (Some(secret), _) => MongoDb::External {
            secret,
            named_by: "spec.trader.persistence.externalUriSecret",
        },
        (None, Some(secret)) => MongoDb::External {
            secret,
            named_by: "the operator's default MongoDB Secret (--mongodb-uri-secret)",
        },
        (None, None) => MongoDb::Managed,
    }
}

/// Whether the workloads should run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Exchange and trader at one replica each.
    Running,
    /// The experiment's duration elapsed: exchange and trader scaled to zero (their
    /// results stay in the status; MongoDB keeps the stored trades).
    Stopped,
}

/// Where the TLS Secret is mounted in the exchange's and the trader's pods (beside
/// the configuration, not inside its read-only ConfigMap volume).
pub const TLS_MOUNT: &str = "/etc/ticklab-tls";
/// Keys of a Secret of type kubernetes.io/tls.
pub const TLS_CERT_KEY: &str = "tls.crt";
pub const TLS_KEY_KEY: &str = "tls.key";
pub const TLS_CA_KEY: &str = "ca.crt";

/// What the reconciler read back or generated for an experiment with `spec.tls`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsMaterial {
    /// The key of the Secret the trader trusts: [`TLS_CA_KEY`] when the Secret has
    /// one, else the certificate itself ([`TLS_CERT_KEY`], always present).
    pub trust_key: &'static str,
    /// Without `tls.secretName`: the self-signed pair of the Secret `NAME-tls`,
    /// generated once and read back at every later reconcile (never rotated by one).
    pub generated: Option<CertificatePair>,
}

impl Default for TlsMaterial {
    fn default() -> Self {
        Self {
            trust_key: TLS_CERT_KEY,
            generated: None,
        }
    }
}

/// Everything an experiment owns, in the order it is applied.
#[derive(Clone, Debug)]
pub struct Children {
    pub config: ConfigMap,
    /// The generated certificate's Secret (`spec.tls` without `secretName`).
    pub tls_secret: Option<Secret>,
    pub mongodb: Option<MongoChildren>,
    pub exchange_service: Service,
    pub trader_service: Service,
    pub exchange: Deployment,
    pub trader: Deployment,
    pub network_policy: Option<NetworkPolicy>,
}

/// The operator-managed MongoDB.
#[derive(Clone, Debug)]
pub struct MongoChildren {
    pub secret: Secret,
    pub service: Service,
    pub statefulset: StatefulSet,
}

/// Why children cannot be built from an experiment.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("experiment has no {0} (not stored by the API server?)")]
    MissingMetadata(&'static str),
    #[error("cannot render the service configuration: {0}")]
    Render(#[from] serde_yaml::Error),
}

/// Child names, derived from the experiment's name (at most 40 characters by a CEL
/// rule, so every name stays a valid DNS label).
pub struct Names {
    pub config: String,
    pub exchange: String,
    pub trader: String,
    pub mongodb: String,
    pub network_policy: String,
    /// The generated certificate's Secret.
    pub tls: String,
}

impl Names {
    pub fn of(experiment: &str) -> Self {
        Self {
            config: format!("{experiment}-config"),
            exchange: format!("{experiment}-exchange"),
            trader: format!("{experiment}-trader"),
            mongodb: format!("{experiment}-mongodb"),
            network_policy: format!("{experiment}-isolation"),
            tls: format!("{experiment}-tls"),
        }
    }
}

/// Builds the desired children. `mongodb_password` is the generated password of the
/// managed MongoDB: the reconciler reads it back from the existing Secret, so it is
/// generated once per experiment and never rotated by a reconcile. With `spec.tls`,
/// the trader trusts the certificate itself and no generated Secret is built (see
/// [`build_with_tls`]).
pub fn build(
    experiment: &LatencyExperiment,
    settings: &ChildSettings,
    workload: Workload,
    mongodb_password: &str,
) -> Result<Children, BuildError> {
    build_with_tls(
        experiment,
        settings,
        workload,
        mongodb_password,
        &TlsMaterial::default(),
    )
}

/// [`build`], with what the reconciler knows of the experiment's TLS Secret: which
/// key the trader trusts, and the generated pair when the operator makes the Secret.
pub fn build_with_tls(
    experiment: &LatencyExperiment,
    settings: &ChildSettings,
    workload: Workload,
    mongodb_password: &str,
    tls: &TlsMaterial,
) -> Result<Children, BuildError> {
    let name = experiment
        .metadata
        .name
        .as_deref()
        .ok_or(BuildError::MissingMetadata("name"))?;
    let namespace = experiment
        .metadata
        .namespace
        .as_deref()
        .ok_or(BuildError::MissingMetadata("namespace"))?;
    let owner = experiment
        .controller_owner_ref(&())
        .ok_or(BuildError::MissingMetadata("uid"))?;
    let names = Names::of(name);
    let spec = &experiment.spec;
    let mongodb_source = mongodb_for(spec, settings);

    let exchange_yaml = serde_yaml::to_string(&exchange_config(experiment, name, namespace))?;
    let trader_yaml = serde_yaml::to_string(&trader_config(experiment, name, namespace))?;
    let config_hash = {
        let mut hash = Sha256::new();
        hash.update(exchange_yaml.as_bytes());
        hash.update([0]);
        hash.update(trader_yaml.as_bytes());
        // A regenerated certificate (its Secret was emptied) restarts both pods: each
        // reads the certificate once, at start.
        if let Some(pair) = &tls.generated {
            hash.update([0]);
            hash.update(pair.cert_pem.as_bytes());
        }
        let digest = hash.finalize();
        digest[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let meta = |child: &str, component: &str| ObjectMeta {
        name: Some(child.to_string()),
        namespace: Some(namespace.to_string()),
        labels: Some(labels(name, component)),
        owner_references: Some(vec![owner.clone()]),
        ..Default::default()
    };

    let config = ConfigMap {
        metadata: meta(&names.config, "config"),
        data: Some(BTreeMap::from([
            ("exchange.yaml".to_string(), exchange_yaml),
            ("trader.yaml".to_string(), trader_yaml),
        ])),
        ..Default::default()
    };

    let replicas = match workload {
        Workload::Running => 1,
        Workload::Stopped => 0,
    };

    let exchange_ports = vec![
        port("feed", ports::FEED, "TCP"),
        port("retransmit", ports::RETRANSMIT, "UDP"),
        port("orders", ports::ORDER_TCP, "TCP"),
        port("orders-http", ports::ORDER_HTTP, "TCP"),
        port("admin", ports::EXCHANGE_ADMIN, "TCP"),
    ];
    let trader_ports = vec![
        port("feed", ports::TRADER_FEED, "UDP"),
        port("api", ports::TRADER_API, "TCP"),
    ];

    // The exchange gets the certificate and its key; the trader only what it trusts
    // (the private key never reaches the trader's pod).
    let tls_secret_name = tls_secret_name(experiment, &names);
    let exchange_tls = tls_secret_name.map(|secret| {
        tls_volume(
            secret,
            &[(TLS_CERT_KEY, TLS_CERT_KEY), (TLS_KEY_KEY, TLS_KEY_KEY)],
        )
    });
    let trader_tls =
        tls_secret_name.map(|secret| tls_volume(secret, &[(tls.trust_key, TLS_CA_KEY)]));

    let exchange = service_deployment(ServiceDeployment {
        meta: meta(&names.exchange, "exchange"),
        experiment: name,
        component: "exchange",
        settings,
        replicas,
        config_map: &names.config,
        config_hash: &config_hash,
        ports: &exchange_ports,
        admin_port: ports::EXCHANGE_ADMIN,
        env: vec![],
        affinity: None,
        memory: Memory::exchange(spec),
        tls: exchange_tls,
    });

    let trader_env = match mongodb_source {
        MongoDb::None => vec![],
        MongoDb::Managed => vec![env_from_secret("MONGODB_URI", &names.mongodb, "uri")],
        MongoDb::External { secret, .. } => {
            vec![env_from_secret("MONGODB_URI", &secret.name, &secret.key)]
        }
    };
    let trader = service_deployment(ServiceDeployment {
        meta: meta(&names.trader, "trader"),
        experiment: name,
        component: "trader",
        settings,
        replicas,
        config_map: &names.config,
        config_hash: &config_hash,
        ports: &trader_ports,
        admin_port: ports::TRADER_API,
        env: trader_env,
        affinity: Some(placement_affinity(name, spec.placement)),
        memory: Memory::trader(spec),
        tls: trader_tls,
    });

    let exchange_service = service(
        meta(&names.exchange, "exchange"),
        name,
        "exchange",
        &exchange_ports,
        false,
    );
    let trader_service = service(
        meta(&names.trader, "trader"),
        name,
        "trader",
        &trader_ports,
        false,
    );

    let network_policy = settings.network_policy.as_ref().map(|isolation| {
        isolation_policy(meta(&names.network_policy, "isolation"), name, isolation)
    });

    let mongodb = (mongodb_source == MongoDb::Managed).then(|| MongoChildren {
        secret: mongodb_secret(
            meta(&names.mongodb, "mongodb"),
            &names.mongodb,
            namespace,
            mongodb_password,
        ),
        service: service(
            meta(&names.mongodb, "mongodb"),
            name,
            "mongodb",
            &[port("mongodb", ports::MONGODB, "TCP")],
            true,
        ),
        statefulset: mongodb_statefulset(
            meta(&names.mongodb, "mongodb"),
            name,
            &names.mongodb,
            settings,
        ),
    });

    let tls_secret = match (&spec.tls, &tls.generated) {
        (Some(t), Some(pair)) if t.secret_name.is_none() => {
            Some(generated_tls_secret(meta(&names.tls, "tls"), pair))
        }
        _ => None,
    };

    Ok(Children {
        config,
        tls_secret,
        mongodb,
        exchange_service,
        trader_service,
        exchange,
        trader,
        network_policy,
    })
}

/// Ingress to the experiment's pods only from: the experiment's own pods (feed,
/// retransmission, orders, MongoDB; a recorder of the experiment carries its label,
/// so its taps and recovery requests reach the exchange's retransmission port, and
/// the tapped copies come back as replies on the same 5-tuple, which conntrack
/// admits), the operator's pods (the trader's results, a replaying exchange's
/// report on its admin port), and the metrics scrapers'
/// namespaces (admin ports only). Nothing from another experiment reaches them, as
/// dev, QA and prod were kept apart in the system ticklab grew from. Egress stays
/// open: DNS, the API server and external MongoDB live at addresses a policy cannot
/// name portably.
fn isolation_policy(
    meta: ObjectMeta,
    experiment: &str,
    isolation: &IsolationSettings,
) -> NetworkPolicy {
    let experiment_pods = experiment_pod_selector(experiment);
    NetworkPolicy {
        metadata: meta,
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(experiment_pods.clone()),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    from: Some(vec![NetworkPolicyPeer {
                        pod_selector: Some(experiment_pods),
                        ..Default::default()
                    }]),
                    ports: None,
                },
                NetworkPolicyIngressRule {
                    from: Some(vec![operator_peer(isolation)]),
                    ports: Some(vec![
                        tcp_port(ports::TRADER_API),
                        tcp_port(ports::EXCHANGE_ADMIN),
                    ]),
                },
                NetworkPolicyIngressRule {
                    from: Some(vec![scrapers_peer(isolation)]),
                    ports: Some(vec![
                        tcp_port(ports::EXCHANGE_ADMIN),
                        tcp_port(ports::TRADER_API),
                    ]),
                },
            ]),
            ..Default::default()
        }),
    }
}

/// Ingress to one recorder's pods (`recorder_pods`), on its HTTP port (`port`:
/// files, the toggle, `/metrics`) only, from: the exchanges of the namespace (a
/// replaying experiment's exchange downloads a recorded file, and the replaying
/// experiment is usually another one than the recorded), the operator's pods (the
/// toggle and the status) and the metrics scrapers' namespaces. The recorder's own
/// traffic to its exchange needs no rule here (see [`isolation_policy`]). A policy of
/// its own, owned by the RecordingSession, keeps the recorder isolated while its
/// experiment (and with it the experiment's policy) does not exist.
pub fn recorder_isolation_policy(
    meta: ObjectMeta,
    recorder_pods: BTreeMap<String, String>,
    port: u16,
    isolation: &IsolationSettings,
) -> NetworkPolicy {
    let exchanges = LabelSelector {
        match_labels: Some(BTreeMap::from([
            (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
            (
                "app.kubernetes.io/component".to_string(),
                "exchange".to_string(),
            ),
        ])),
        ..Default::default()
    };
    NetworkPolicy {
        metadata: meta,
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(recorder_pods),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![
                    NetworkPolicyPeer {
                        pod_selector: Some(exchanges),
                        ..Default::default()
                    },
                    operator_peer(isolation),
                    scrapers_peer(isolation),
                ]),
                ports: Some(vec![tcp_port(port)]),
            }]),
            ..Default::default()
        }),
    }
}

/// Every pod of the experiment: exchange, trader, MongoDB and its recorders.
fn experiment_pod_selector(experiment: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some(BTreeMap::from([(
            EXPERIMENT_LABEL.to_string(),
            experiment.to_string(),
        )])),
        ..Default::default()
    }
}

fn tcp_port(port: u16) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(i32::from(port))),
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

/// The operator's pods, in the operator's namespace.
pub(crate) fn operator_peer(isolation: &IsolationSettings) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                "kubernetes.io/metadata.name".to_string(),
                isolation.operator_namespace.clone(),
            )])),
            ..Default::default()
        }),
        pod_selector: Some(LabelSelector {
            match_labels: Some(
                OPERATOR_POD_LABELS
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Every pod of the namespaces allowed to scrape metrics.
pub(crate) fn scrapers_peer(isolation: &IsolationSettings) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        // An empty selector matches every namespace.
        namespace_selector: Some(LabelSelector {
            match_labels: (!isolation.metrics_namespace_labels.is_empty())
                .then(|| isolation.metrics_namespace_labels.clone()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The Secret holding the exchange's certificate, with `spec.tls`: the one named, or
/// the generated `NAME-tls`.
pub fn tls_secret_name<'a>(experiment: &'a LatencyExperiment, names: &'a Names) -> Option<&'a str> {
    let tls = experiment.spec.tls.as_ref()?;
    Some(tls.secret_name.as_deref().unwrap_or(&names.tls))
}

/// The names a client may use for the exchange's Service, which the generated
/// certificate carries: the short name (same namespace), with the namespace, and the
/// two fully qualified forms.
pub fn tls_dns_names(experiment: &str, namespace: &str) -> Vec<String> {
    let service = Names::of(experiment).exchange;
    vec![
        service.clone(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// The TLS Secret's `keys` (key in the Secret, file name) as files under
/// [`TLS_MOUNT`], readable by the pod's group only (the pods run with that group as
/// fsGroup), mounted read-only.
fn tls_volume(secret: &str, keys: &[(&str, &str)]) -> (Volume, VolumeMount) {
    let volume = Volume {
        name: "tls".into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_string()),
            items: Some(
                keys.iter()
                    .map(|(key, path)| KeyToPath {
                        key: key.to_string(),
                        path: path.to_string(),
                        ..Default::default()
                    })
                    .collect(),
            ),
            default_mode: Some(0o440),
            optional: Some(false),
        }),
        ..Default::default()
    };
    let mount = VolumeMount {
        name: "tls".into(),
        mount_path: TLS_MOUNT.into(),
        read_only: Some(true),
        ..Default::default()
    };
    (volume, mount)
}

/// The generated certificate as a Secret of type kubernetes.io/tls (no `ca.crt`:
/// the certificate is its own issuer, and the trader trusts it directly).
fn generated_tls_secret(meta: ObjectMeta, pair: &CertificatePair) -> Secret {
    Secret {
        metadata: meta,
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            (
                TLS_CERT_KEY.to_string(),
                ByteString(pair.cert_pem.clone().into_bytes()),
            ),
            (
                TLS_KEY_KEY.to_string(),
                ByteString(pair.key_pem.clone().into_bytes()),
            ),
        ])),
        ..Default::default()
    }
}

/// An environment variable read from a Secret's key (required to exist).
fn env_from_secret(var: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: var.to_string(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_string(),
                key: key.to_string(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Labels of every child of experiment `name`; `component` tells them apart.
pub fn labels(name: &str, component: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(name, component);
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    labels.insert("app.kubernetes.io/part-of".into(), "ticklab".into());
    labels
}

fn selector_labels(name: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "ticklab".to_string()),
        ("app.kubernetes.io/instance".to_string(), name.to_string()),
        (
            "app.kubernetes.io/component".to_string(),
            component.to_string(),
        ),
        (EXPERIMENT_LABEL.to_string(), name.to_string()),
    ])
}

fn service_host(service: &str, namespace: &str) -> String {
    format!("{service}.{namespace}.svc")
}

/// Every address of the pod, IPv6 and IPv4 alike (`[::]` listens dual-stack, and
/// falls back to IPv4 where the node has no IPv6): the same configuration works in
/// IPv4, dual-stack and IPv6-only clusters.
fn any_addr(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))
}

/// The exchange's configuration as its pod reads it. It publishes for exactly
/// `spec.duration` from the trader's subscription, then ends the session and keeps
/// serving retransmissions and orders until the operator scales it down, so the
/// trader's results cover the whole run and nothing from before it.
pub fn exchange_config(
    experiment: &LatencyExperiment,
    name: &str,
    namespace: &str,
) -> ExchangeConfig {
    let names = Names::of(name);
    let spec = &experiment.spec;
    ExchangeConfig {
        experiment: name.to_string(),
        spec: spec.exchange.clone(),
        duration: spec.run_duration(),
        feed_udp_target: (spec.exchange.transport == Transport::Udp).then(|| {
            format!(
                "{}:{}",
                service_host(&names.trader, namespace),
                ports::TRADER_FEED
            )
        }),
        feed_listen: any_addr(ports::FEED),
        retransmit_listen: any_addr(ports::RETRANSMIT),
        order_tcp_listen: any_addr(ports::ORDER_TCP),
        order_http_listen: any_addr(ports::ORDER_HTTP),
        admin_listen: any_addr(ports::EXCHANGE_ADMIN),
        tls: spec.tls.as_ref().map(|tls| ServerTlsConfig {
            cert_pem_path: format!("{TLS_MOUNT}/{TLS_CERT_KEY}").into(),
            key_pem_path: format!("{TLS_MOUNT}/{TLS_KEY_KEY}").into(),
            min_version: tls.min_version,
        }),
        replay: spec.exchange.replay.as_ref().map(|r| ReplayConfig {
            // Downloaded from the session's recorder when the exchange starts.
            source: format!(
                "http://{}:{}/files/{}",
                service_host(&format!("{}-recorder", r.recording), namespace),
                crate::recording::build::RECORDER_PORT,
                r.file
            ),
            speed: (!r.top_speed).then(|| r.speed.unwrap_or(1.0)),
            looped: r.looped,
        }),
    }
}

/// The trader's configuration as its pod reads it; the MongoDB URI comes from a
/// Secret through the environment, never from the ConfigMap.
pub fn trader_config(experiment: &LatencyExperiment, name: &str, namespace: &str) -> TraderConfig {
    let names = Names::of(name);
    let spec = &experiment.spec;
    let exchange = service_host(&names.exchange, namespace);
    let secure = spec.tls.is_some();
    let (ws, http) = if secure {
        ("wss", "https")
    } else {
        ("ws", "http")
    };
    TraderConfig {
        experiment: name.to_string(),
        // A replay trades whatever was recorded: the trader knows every instrument.
        symbols: if spec.exchange.replay.is_some() && spec.exchange.symbols.is_empty() {
            Instrument::ALL.to_vec()
        } else {
            spec.exchange.symbols.clone()
        },
        spec: spec.trader.clone(),
        transport: spec.exchange.transport,
        feed_udp_listen: any_addr(ports::TRADER_FEED),
        feed_connect: match spec.exchange.transport {
            Transport::Udp => String::new(),
            Transport::Tcp => format!("{exchange}:{}", ports::FEED),
            Transport::Websocket => format!("{ws}://{exchange}:{}/feed", ports::FEED),
        },
        retransmit_server: format!("{exchange}:{}", ports::RETRANSMIT),
        order_tcp: format!("{exchange}:{}", ports::ORDER_TCP),
        order_http: format!("{http}://{exchange}:{}", ports::ORDER_HTTP),
        api_listen: any_addr(ports::TRADER_API),
        mongodb_uri: None,
        // A managed MongoDB's first start can take a minute or two; waiting beats
        // a crash loop whose back-off outlasts it.
        mongodb_wait_seconds: 600,
        slo: spec.slo.clone(),
        recovery_timeout_ms: ticklab_trader::DEFAULT_RECOVERY_TIMEOUT_MS,
        tls: spec.tls.as_ref().map(|tls| ClientTlsConfig {
            ca_pem_path: format!("{TLS_MOUNT}/{TLS_CA_KEY}").into(),
            // The name the certificate carries (generated: one of its SANs), for
            // every connection, whatever address form is configured.
            server_name: Some(exchange.clone()),
            // Kept in memory for GET /keylog: the root filesystem is read-only, and
            // the capture service reads the key log from the trader's API.
            key_log_file: None,
            key_log: tls.key_log,
            min_version: tls.min_version,
        }),
    }
}

fn port(name: &str, number: u16, protocol: &str) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_string()),
        container_port: i32::from(number),
        protocol: Some(protocol.to_string()),
        ..Default::default()
    }
}

fn service(
    meta: ObjectMeta,
    experiment: &str,
    component: &str,
    ports: &[ContainerPort],
    headless: bool,
) -> Service {
    Service {
        metadata: meta,
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(experiment, component)),
            cluster_ip: headless.then(|| "None".to_string()),
            ports: Some(
                ports
                    .iter()
                    .map(|p| ServicePort {
                        name: p.name.clone(),
                        port: p.container_port,
                        target_port: Some(IntOrString::Int(p.container_port)),
                        protocol: p.protocol.clone(),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

struct ServiceDeployment<'a> {
    meta: ObjectMeta,
    experiment: &'a str,
    component: &'a str,
    settings: &'a ChildSettings,
    replicas: i32,
    config_map: &'a str,
    config_hash: &'a str,
    ports: &'a [ContainerPort],
    admin_port: u16,
    env: Vec<EnvVar>,
    affinity: Option<Affinity>,
    memory: Memory,
    /// The TLS Secret's volume and its read-only mount.
    tls: Option<(Volume, VolumeMount)>,
}

/// A Deployment running `ticklab <component> --config /etc/ticklab/<component>.yaml`.
fn service_deployment(d: ServiceDeployment<'_>) -> Deployment {
    let selector = selector_labels(d.experiment, d.component);
    let mut pod_labels = labels(d.experiment, d.component);
    pod_labels.extend(selector.clone());
    let probe = |path: &str| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::Int(i32::from(d.admin_port)),
            ..Default::default()
        }),
        period_seconds: Some(5),
        ..Default::default()
    };
    let (tls_volume, tls_mount) = d.tls.unzip();
    Deployment {
        metadata: d.meta,
        spec: Some(DeploymentSpec {
            replicas: Some(d.replicas),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..Default::default()
            },
            // One feed session at a time: a new pod starts only after the old one
            // stopped, so two exchanges never publish to one trader.
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".into()),
                ..Default::default()
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(BTreeMap::from([(
                        CONFIG_HASH_ANNOTATION.to_string(),
                        d.config_hash.to_string(),
                    )])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    affinity: d.affinity,
                    security_context: Some(restricted_pod_security(65532)),
                    containers: vec![Container {
                        name: d.component.to_string(),
                        image: Some(d.settings.image.clone()),
                        image_pull_policy: Some(d.settings.image_pull_policy.clone()),
                        args: Some(vec![
                            d.component.to_string(),
                            "--config".into(),
                            format!("/etc/ticklab/{}.yaml", d.component),
                        ]),
                        ports: Some(d.ports.to_vec()),
                        env: (!d.env.is_empty()).then_some(d.env),
                        readiness_probe: Some(probe("/readyz")),
                        liveness_probe: Some(probe("/healthz")),
                        resources: Some(resources("250m", d.memory)),
                        security_context: Some(restricted_container_security()),
                        volume_mounts: Some(
                            std::iter::once(VolumeMount {
                                name: "config".into(),
                                mount_path: "/etc/ticklab".into(),
                                read_only: Some(true),
                                ..Default::default()
                            })
                            .chain(tls_mount)
                            .collect(),
                        ),
                        ..Default::default()
                    }],
                    volumes: Some(
                        std::iter::once(Volume {
                            name: "config".into(),
                            config_map: Some(ConfigMapVolumeSource {
                                name: d.config_map.to_string(),
                                ..Default::default()
                            }),
                            ..Default::default()
                        })
                        .chain(tls_volume)
                        .collect(),
                    ),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Same node: the trader must land on the exchange's node. Different nodes: it must
/// not. Required, not preferred: a result labelled cross-node must be cross-node.
fn placement_affinity(experiment: &str, placement: Placement) -> Affinity {
    let term = PodAffinityTerm {
        label_selector: Some(LabelSelector {
            match_labels: Some(selector_labels(experiment, "exchange")),
            ..Default::default()
        }),
        topology_key: "kubernetes.io/hostname".into(),
        ..Default::default()
    };
    match placement {
        Placement::SameNode => Affinity {
            pod_affinity: Some(PodAffinity {
                required_during_scheduling_ignored_during_execution: Some(vec![term]),
                ..Default::default()
            }),
            ..Default::default()
        },
        Placement::DifferentNodes => Affinity {
            pod_anti_affinity: Some(PodAntiAffinity {
                required_during_scheduling_ignored_during_execution: Some(vec![term]),
                ..Default::default()
            }),
            ..Default::default()
        },
    }
}

pub(crate) fn restricted_pod_security(uid: i64) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(uid),
        run_as_group: Some(uid),
        fs_group: Some(uid),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(crate) fn restricted_container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A container's memory request and limit in MiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Memory {
    pub request_mib: u64,
    pub limit_mib: u64,
}

/// What a replaying exchange reserves for its recording in memory.
pub const REPLAY_MEMORY_BYTES: u64 = 512 * 1024 * 1024;

impl Memory {
    /// A fixed base plus buffers the spec sizes: the buffers count in full in both
    /// the request (they fill up during a run; the scheduler must find room for
    /// them) and the limit (a ring of gigabytes must not be OOM-killed).
    fn with_buffers(request_mib: u64, limit_mib: u64, buffer_bytes: u64) -> Self {
        let buffers = buffer_bytes.div_ceil(1024 * 1024);
        Self {
            request_mib: request_mib + buffers,
            limit_mib: limit_mib + buffers,
        }
    }

    /// The exchange: its retransmission ring holds `retransmissionBuffer` messages;
    /// a replay holds its recording in memory too, a file of at most the default
    /// rotation size (256 MiB) plus a packet's bookkeeping, sized for here.
    pub fn exchange(spec: &LatencyExperimentSpec) -> Self {
        let ring = u64::from(spec.exchange.retransmission_buffer)
            * ticklab_exchange::ring::BYTES_PER_MESSAGE;
        let recording = if spec.exchange.replay.is_some() {
            REPLAY_MEMORY_BYTES
        } else {
            0
        };
        Self::with_buffers(64, 256, ring + recording)
    }

    /// The trader: up to `persistence.bufferTrades` trades wait for MongoDB.
    pub fn trader(spec: &LatencyExperimentSpec) -> Self {
        let persistence = &spec.trader.persistence;
        let queue = if persistence.enabled {
            u64::from(persistence.buffer_trades) * ticklab_trader::store::BYTES_PER_QUEUED_TRADE
        } else {
            0
        };
        Self::with_buffers(96, 512, queue)
    }
}

pub(crate) fn resources(cpu: &str, memory: Memory) -> ResourceRequirements {
    let mib = |n: u64| Quantity(format!("{n}Mi"));
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.to_string())),
            ("memory".to_string(), mib(memory.request_mib)),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_string(),
            mib(memory.limit_mib),
        )])),
        ..Default::default()
    }
}

const MONGODB_USER: &str = "ticklab";

fn mongodb_secret(meta: ObjectMeta, service: &str, namespace: &str, password: &str) -> Secret {
    let uri = format!(
        "mongodb://{MONGODB_USER}:{password}@{}:{}/ticklab?authSource=admin",
        service_host(service, namespace),
        ports::MONGODB
    );
    Secret {
        metadata: meta,
        type_: Some("Opaque".into()),
        string_data: Some(BTreeMap::from([
            ("username".to_string(), MONGODB_USER.to_string()),
            ("password".to_string(), password.to_string()),
            ("uri".to_string(), uri),
        ])),
        ..Default::default()
    }
}

/// One MongoDB with its data in an emptyDir: an experiment's trades live as long as
/// the experiment (point `externalUriSecret` at a durable database to keep them).
fn mongodb_statefulset(
    meta: ObjectMeta,
    experiment: &str,
    name: &str,
    settings: &ChildSettings,
) -> StatefulSet {
    let selector = selector_labels(experiment, "mongodb");
    let mut pod_labels = labels(experiment, "mongodb");
    pod_labels.extend(selector.clone());
    let from_secret = |var: &str, key: &str| env_from_secret(var, name, key);
    // The image's entrypoint first runs mongod on 127.0.0.1 alone to create the
    // user, then restarts it on every address. A TCP probe on the pod's address fails
    // all that time; as a liveness probe it would kill mongod mid-setup, and the
    // restarted container (same emptyDir) would skip user creation: the trader could
    // never authenticate. So: alive is "mongod answers a ping on localhost" (true
    // during setup too), with a startup budget for a slow first start; ready is "it
    // accepts connections on the pod's address", which only the final mongod does.
    let ping = || Probe {
        exec: Some(ExecAction {
            command: Some(
                [
                    "mongosh",
                    "--quiet",
                    "--norc",
                    "--eval",
                    "db.adminCommand('ping').ok",
                ]
                .map(String::from)
                .to_vec(),
            ),
        }),
        timeout_seconds: Some(5),
        ..Default::default()
    };
    let startup_probe = Probe {
        period_seconds: Some(2),
        failure_threshold: Some(90),
        ..ping()
    };
    let liveness_probe = Probe {
        period_seconds: Some(10),
        failure_threshold: Some(6),
        ..ping()
    };
    let readiness_probe = Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::Int(i32::from(ports::MONGODB)),
            ..Default::default()
        }),
        period_seconds: Some(2),
        ..Default::default()
    };
    let empty_dir = |name: &str| Volume {
        name: name.to_string(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    };
    let mount = |name: &str, path: &str| VolumeMount {
        name: name.to_string(),
        mount_path: path.to_string(),
        ..Default::default()
    };
    StatefulSet {
        metadata: meta,
        spec: Some(StatefulSetSpec {
            replicas: Some(1),
            service_name: Some(name.to_string()),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..Default::default()
            },
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some("Delete".into()),
                    when_scaled: Some("Delete".into()),
                },
            ),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    // The official image's mongodb user.
                    security_context: Some(restricted_pod_security(999)),
                    containers: vec![Container {
                        name: "mongodb".into(),
                        image: Some(settings.mongodb_image.clone()),
                        image_pull_policy: Some("IfNotPresent".into()),
                        ports: Some(vec![port("mongodb", ports::MONGODB, "TCP")]),
                        env: Some(vec![
                            from_secret("MONGO_INITDB_ROOT_USERNAME", "username"),
                            from_secret("MONGO_INITDB_ROOT_PASSWORD", "password"),
                        ]),
                        startup_probe: Some(startup_probe),
                        liveness_probe: Some(liveness_probe),
                        readiness_probe: Some(readiness_probe),
                        resources: Some(resources(
                            "250m",
                            Memory {
                                request_mib: 256,
                                limit_mib: 1024,
                            },
                        )),
                        security_context: Some(restricted_container_security()),
                        volume_mounts: Some(vec![
                            mount("data", "/data/db"),
                            mount("configdb", "/data/configdb"),
                            mount("tmp", "/tmp"),
                        ]),
                        ..Default::default()
                    }],
                    volumes: Some(vec![
                        empty_dir("data"),
                        empty_dir("configdb"),
                        empty_dir("tmp"),
                    ]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}
