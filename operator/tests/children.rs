//! The child builder from YAML fixtures, without a cluster: names, owner references,
//! the rendered service configurations, MongoDB managed or external, placement,
//! scaling down, the restricted pod security every pod meets, the operator's default
//! external MongoDB, the NetworkPolicy that isolates an experiment, and TLS: the
//! rendered TLS configuration, the Secret mounted read-only, the private key kept out
//! of the trader's pod, and the generated certificate's names (checked by real
//! handshakes under each name).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PodSpec, PodTemplateSpec};
use std::collections::BTreeMap;
use ticklab_crd::{LatencyExperiment, TlsVersion, Transport};
use ticklab_exchange::ExchangeConfig;

use ticklab_crd::SecretKeySelector;
use ticklab_operator::children::{
    self, CONFIG_HASH_ANNOTATION, ChildSettings, Children, IsolationSettings, Workload,
};
use ticklab_trader::TraderConfig;

fn fixture(name: &str) -> LatencyExperiment {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    // The operator receives objects the API server has validated; fixtures go through
    // the same validation so a broken fixture cannot pass silently.
    ticklab_crd::load_experiment(std::path::Path::new(&path))
        .map(|_| ())
        .unwrap();
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn build(e: &LatencyExperiment, workload: Workload) -> Children {
    children::build(e, &ChildSettings::default(), workload, "s3cret").unwrap()
}

fn pod(d: &Deployment) -> &PodSpec {
    d.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
}

fn config_hash(d: &Deployment) -> String {
    d.spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .as_ref()
        .unwrap()[CONFIG_HASH_ANNOTATION]
        .clone()
}

fn configs(c: &Children) -> (ExchangeConfig, TraderConfig) {
    let data = c.config.data.as_ref().unwrap();
    (
        serde_yaml::from_str(&data["exchange.yaml"]).unwrap(),
        serde_yaml::from_str(&data["trader.yaml"]).unwrap(),
    )
}

#[test]
fn udp_experiment_with_managed_mongodb() {
    let e = fixture("udp-managed-mongodb.yaml");
    let c = build(&e, Workload::Running);
    let mongodb = c.mongodb.as_ref().expect("managed MongoDB");

    // Every child: named after the experiment, in its namespace, owned by it.
    let metas = [
        &c.config.metadata,
        &c.exchange.metadata,
        &c.trader.metadata,
        &c.exchange_service.metadata,
        &c.trader_service.metadata,
        &mongodb.secret.metadata,
        &mongodb.service.metadata,
        &mongodb.statefulset.metadata,
    ];
    for meta in metas {
        assert!(
            meta.name.as_ref().unwrap().starts_with("udp-lab-"),
            "{:?}",
            meta.name
        );
        assert_eq!(meta.namespace.as_deref(), Some("desk-a"));
        let owners = meta.owner_references.as_ref().unwrap();
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].kind, "LatencyExperiment");
        assert_eq!(owners[0].uid, "1d1f0b7e-0000-4000-8000-000000000001");
        assert_eq!(owners[0].controller, Some(true));
        assert_eq!(
            meta.labels.as_ref().unwrap()["app.kubernetes.io/managed-by"],
            "ticklab-operator"
        );
    }

    let (exchange, trader) = configs(&c);
    assert_eq!(exchange.spec, e.spec.exchange);
    assert_eq!(
        exchange.duration,
        Some(Duration::from_secs(30)),
        "the exchange publishes for spec.duration from the trader's subscription"
    );
    // Every service listens on every address, IPv6 and IPv4 ([::] is dual-stack).
    for addr in [
        exchange.feed_listen,
        exchange.retransmit_listen,
        exchange.order_tcp_listen,
        exchange.order_http_listen,
        exchange.admin_listen,
        trader.feed_udp_listen,
        trader.api_listen,
    ] {
        assert!(addr.is_ipv6() && addr.ip().is_unspecified(), "{addr}");
    }
    assert!(
        trader.mongodb_wait_seconds > 0,
        "the trader waits for a MongoDB that starts after it"
    );
    assert_eq!(
        exchange.feed_udp_target.as_deref(),
        Some("udp-lab-trader.desk-a.svc:9100")
    );
    assert_eq!(trader.retransmit_server, "udp-lab-exchange.desk-a.svc:9001");
    assert_eq!(trader.transport, Transport::Udp);
    assert_eq!(trader.slo, e.spec.slo);
    assert_eq!(
        trader.mongodb_uri, None,
        "the URI is a secret: never in the ConfigMap"
    );

    // The trader reads the URI from the generated Secret.
    let env = pod(&c.trader).containers[0].env.as_ref().unwrap();
    let from = env[0]
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .as_ref()
        .unwrap();
    assert_eq!(
        (env[0].name.as_str(), from.name.as_str(), from.key.as_str()),
        ("MONGODB_URI", "udp-lab-mongodb", "uri")
    );
    let uri = &mongodb.secret.string_data.as_ref().unwrap()["uri"];
    assert!(
        uri.contains(":s3cret@udp-lab-mongodb.desk-a.svc:27017/"),
        "{uri}"
    );

    // Same node by default: the trader is pulled onto the exchange's node.
    let affinity = pod(&c.trader).affinity.as_ref().unwrap();
    assert!(affinity.pod_affinity.is_some() && affinity.pod_anti_affinity.is_none());

    // The Services select the pods their Deployments run.
    let selector = c
        .trader_service
        .spec
        .as_ref()
        .unwrap()
        .selector
        .as_ref()
        .unwrap();
    let pod_labels = c
        .trader
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .as_ref()
        .unwrap();
    assert!(selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)));
    let udp = c
        .trader_service
        .spec
        .as_ref()
        .unwrap()
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .find(|p| p.port == 9100)
        .unwrap();
    assert_eq!(udp.protocol.as_deref(), Some("UDP"));
}

/// Memory (MiB) a container requests and is limited to.
fn memory_mib(spec: &PodSpec) -> (u64, u64) {
    let resources = spec.containers[0].resources.as_ref().unwrap();
    let mib = |q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity| {
        q.0.strip_suffix("Mi").unwrap().parse::<u64>().unwrap()
    };
    (
        mib(&resources.requests.as_ref().unwrap()["memory"]),
        mib(&resources.limits.as_ref().unwrap()["memory"]),
    )
}

#[test]
fn memory_follows_the_buffers_the_spec_sizes() {
    let mut e = fixture("udp-managed-mongodb.yaml");
    let small = build(&e, Workload::Running);
    let (exchange_request, exchange_limit) = memory_mib(pod(&small.exchange));
    let (trader_request, trader_limit) = memory_mib(pod(&small.trader));
    // The largest ring the CRD allows: 100 million messages of 65 bytes.
    e.spec.exchange.retransmission_buffer = 100_000_000;
    e.spec.trader.persistence.buffer_trades = 10_000_000;
    let large = build(&e, Workload::Running);
    let (big_request, big_limit) = memory_mib(pod(&large.exchange));
    assert!(
        big_limit >= exchange_limit + 6000 && big_request >= exchange_request + 6000,
        "a 6.5 GB ring gets the memory it needs: {exchange_limit} -> {big_limit} MiB"
    );
    let (big_request, big_limit) = memory_mib(pod(&large.trader));
    assert!(
        big_limit > trader_limit + 500 && big_request > trader_request + 500,
        "10 million queued trades get room: {trader_limit} -> {big_limit} MiB"
    );
    // Without persistence nothing is queued for the database.
    e.spec.trader.persistence.enabled = false;
    let none = build(&e, Workload::Running);
    assert!(memory_mib(pod(&none.trader)).1 < trader_limit);
}

/// The official mongo image sets itself up on 127.0.0.1 first: liveness must not
/// be a TCP probe on the pod's address (it would kill mongod mid-setup).
#[test]
fn managed_mongodb_is_not_killed_during_its_first_start() {
    let c = build(&fixture("udp-managed-mongodb.yaml"), Workload::Running);
    let statefulset = &c.mongodb.as_ref().unwrap().statefulset;
    let container = &statefulset
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0];
    let startup = container.startup_probe.as_ref().expect("a startup probe");
    let liveness = container.liveness_probe.as_ref().unwrap();
    for probe in [startup, liveness] {
        assert!(probe.tcp_socket.is_none() && probe.http_get.is_none());
        let command = probe.exec.as_ref().unwrap().command.as_ref().unwrap();
        assert_eq!(command[0], "mongosh", "{command:?}");
    }
    let budget = startup.period_seconds.unwrap() * startup.failure_threshold.unwrap();
    assert!(budget >= 120, "a slow first start has {budget}s");
    let readiness = container.readiness_probe.as_ref().unwrap();
    assert!(
        readiness.tcp_socket.is_some(),
        "ready only once mongod listens on the pod's address"
    );
}

#[test]
fn tcp_experiment_with_external_mongodb_across_nodes() {
    let e = fixture("tcp-external-mongodb-cross-node.yaml");
    let c = build(&e, Workload::Running);
    assert!(
        c.mongodb.is_none(),
        "external MongoDB: the operator runs none"
    );
    let (exchange, trader) = configs(&c);
    assert_eq!(exchange.feed_udp_target, None);
    assert_eq!(trader.feed_connect, "tcp-lab-exchange.desk-b.svc:9000");
    assert_eq!(trader.order_http, "http://tcp-lab-exchange.desk-b.svc:9003");
    let env = pod(&c.trader).containers[0].env.as_ref().unwrap();
    let from = env[0]
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .as_ref()
        .unwrap();
    assert_eq!(
        (from.name.as_str(), from.key.as_str()),
        ("shared-mongodb", "connection-string")
    );
    let affinity = pod(&c.trader).affinity.as_ref().unwrap();
    let anti = affinity.pod_anti_affinity.as_ref().unwrap();
    let term = &anti
        .required_during_scheduling_ignored_during_execution
        .as_ref()
        .unwrap()[0];
    assert_eq!(term.topology_key, "kubernetes.io/hostname");
    assert_eq!(
        term.label_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()["app.kubernetes.io/component"],
        "exchange"
    );
}

#[test]
fn websocket_experiment_without_persistence() {
    let e = fixture("websocket-no-persistence.yaml");
    let c = build(&e, Workload::Running);
    assert!(c.mongodb.is_none());
    let (_, trader) = configs(&c);
    assert_eq!(
        trader.feed_connect,
        "ws://ws-lab-exchange.desk-c.svc:9000/feed"
    );
    assert!(
        pod(&c.trader).containers[0].env.is_none(),
        "no MongoDB, no URI"
    );
}

#[test]
fn spec_changes_change_the_config_hash_and_nothing_else_does() {
    let e = fixture("udp-managed-mongodb.yaml");
    let a = build(&e, Workload::Running);
    let again = build(&e, Workload::Running);
    assert_eq!(
        config_hash(&a.exchange),
        config_hash(&again.exchange),
        "deterministic"
    );
    assert_eq!(config_hash(&a.exchange), config_hash(&a.trader));
    let mut changed = e.clone();
    changed.spec.exchange.rate_per_second = 30_000;
    let b = build(&changed, Workload::Running);
    assert_ne!(
        config_hash(&a.exchange),
        config_hash(&b.exchange),
        "a new rate rolls the pods"
    );
    // The password is not part of the hash: it never changes for an experiment.
    let other_password =
        children::build(&e, &ChildSettings::default(), Workload::Running, "other").unwrap();
    assert_eq!(config_hash(&a.trader), config_hash(&other_password.trader));
}

#[test]
fn a_completed_run_scales_exchange_and_trader_to_zero() {
    let e = fixture("udp-managed-mongodb.yaml");
    let c = build(&e, Workload::Stopped);
    assert_eq!(c.exchange.spec.as_ref().unwrap().replicas, Some(0));
    assert_eq!(c.trader.spec.as_ref().unwrap().replicas, Some(0));
    let running = build(&e, Workload::Running);
    assert_eq!(running.trader.spec.as_ref().unwrap().replicas, Some(1));
    // MongoDB keeps the stored trades.
    assert_eq!(
        c.mongodb.unwrap().statefulset.spec.unwrap().replicas,
        Some(1)
    );
}

#[test]
fn every_pod_meets_the_restricted_pod_security_standard() {
    let e = fixture("udp-managed-mongodb.yaml");
    let c = build(&e, Workload::Running);
    let mongodb = c.mongodb.unwrap();
    let pods = [
        pod(&c.exchange).clone(),
        pod(&c.trader).clone(),
        mongodb.statefulset.spec.unwrap().template.spec.unwrap(),
    ];
    for p in pods {
        let psc = p.security_context.as_ref().unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(
            psc.seccomp_profile.as_ref().unwrap().type_,
            "RuntimeDefault"
        );
        for container in &p.containers {
            let sc = container.security_context.as_ref().unwrap();
            assert_eq!(
                sc.allow_privilege_escalation,
                Some(false),
                "{}",
                container.name
            );
            assert_eq!(
                sc.read_only_root_filesystem,
                Some(true),
                "{}",
                container.name
            );
            assert_eq!(
                sc.capabilities.as_ref().unwrap().drop.as_deref(),
                Some(&["ALL".to_string()][..])
            );
            assert!(sc.capabilities.as_ref().unwrap().add.is_none());
            assert!(container.resources.as_ref().unwrap().requests.is_some());
        }
    }
}

#[test]
fn the_operators_default_external_mongodb_replaces_the_managed_one() {
    let settings = ChildSettings {
        default_mongodb_secret: Some(SecretKeySelector {
            name: "team-mongodb".into(),
            key: "uri".into(),
        }),
        ..ChildSettings::default()
    };
    let uri_secret = |c: &Children| {
        let env = pod(&c.trader).containers[0].env.clone().unwrap();
        let from = env[0].value_from.clone().unwrap().secret_key_ref.unwrap();
        (from.name, from.key)
    };
    // No externalUriSecret in the spec: the default is used, no MongoDB is run.
    let e = fixture("udp-managed-mongodb.yaml");
    let c = children::build(&e, &settings, Workload::Running, "").unwrap();
    assert!(c.mongodb.is_none());
    assert_eq!(uri_secret(&c), ("team-mongodb".into(), "uri".into()));
    // The experiment's own Secret wins over the default.
    let e = fixture("tcp-external-mongodb-cross-node.yaml");
    let c = children::build(&e, &settings, Workload::Running, "").unwrap();
    assert_eq!(
        uri_secret(&c),
        ("shared-mongodb".into(), "connection-string".into())
    );
    // Persistence off: no MongoDB at all, default or not.
    let e = fixture("websocket-no-persistence.yaml");
    let c = children::build(&e, &settings, Workload::Running, "").unwrap();
    assert!(c.mongodb.is_none() && pod(&c.trader).containers[0].env.is_none());
}

#[test]
fn isolation_admits_only_the_experiment_the_operator_and_scrapers() {
    let e = fixture("udp-managed-mongodb.yaml");
    assert!(
        build(&e, Workload::Running).network_policy.is_none(),
        "off unless the operator is told"
    );
    let settings = ChildSettings {
        network_policy: Some(IsolationSettings {
            operator_namespace: "ticklab-system".into(),
            metrics_namespace_labels: BTreeMap::from([(
                "kubernetes.io/metadata.name".to_string(),
                "monitoring".to_string(),
            )]),
        }),
        ..ChildSettings::default()
    };
    let c = children::build(&e, &settings, Workload::Running, "s3cret").unwrap();
    let policy = c.network_policy.clone().unwrap();
    assert_eq!(policy.metadata.name.as_deref(), Some("udp-lab-isolation"));
    assert_eq!(
        policy.metadata.owner_references.as_ref().unwrap()[0].kind,
        "LatencyExperiment"
    );
    let spec = policy.spec.unwrap();
    assert_eq!(
        spec.policy_types.as_deref(),
        Some(&["Ingress".to_string()][..])
    );

    // The policy covers every pod of the experiment, MongoDB's included.
    let selects = |labels: &BTreeMap<String, String>| {
        spec.pod_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    };
    let template_labels = |t: &PodTemplateSpec| t.metadata.clone().unwrap().labels.unwrap();
    let mongodb = c.mongodb.as_ref().unwrap();
    for template in [
        &c.exchange.spec.as_ref().unwrap().template,
        &c.trader.spec.as_ref().unwrap().template,
        &mongodb.statefulset.spec.as_ref().unwrap().template,
    ] {
        assert!(selects(&template_labels(template)));
    }

    let rules = spec.ingress.unwrap();
    assert_eq!(rules.len(), 3, "{rules:?}");
    // 1: the experiment's own pods, every port (feed, retransmission, orders, MongoDB).
    let own = &rules[0];
    assert!(own.ports.is_none());
    let peer = &own.from.as_ref().unwrap()[0];
    assert!(peer.namespace_selector.is_none(), "same namespace only");
    assert_eq!(
        peer.pod_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()["ticklab.dev/experiment"],
        "udp-lab"
    );
    // 2: the operator's pods in its namespace, the trader's results port only.
    let operator = &rules[1];
    let peer = &operator.from.as_ref().unwrap()[0];
    assert_eq!(
        peer.namespace_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()["kubernetes.io/metadata.name"],
        "ticklab-system"
    );
    let operator_labels = peer
        .pod_selector
        .as_ref()
        .unwrap()
        .match_labels
        .clone()
        .unwrap();
    assert_eq!(
        operator_labels,
        children::OPERATOR_POD_LABELS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>()
    );
    let ports = |rule: &k8s_openapi::api::networking::v1::NetworkPolicyIngressRule| {
        rule.ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| p.port.clone().unwrap())
            .collect::<Vec<_>>()
    };
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int;
    assert_eq!(
        ports(operator),
        vec![Int(9190), Int(9090)],
        "trader results, replay report"
    );
    // 3: scrapers from the monitoring namespaces, the admin ports only.
    let scrapers = &rules[2];
    assert_eq!(ports(scrapers), vec![Int(9090), Int(9190)]);
    let peer = &scrapers.from.as_ref().unwrap()[0];
    assert!(peer.pod_selector.is_none());
    assert_eq!(
        peer.namespace_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()["kubernetes.io/metadata.name"],
        "monitoring"
    );
}

/// An experiment from inline YAML, validated like the fixtures.
fn inline(yaml: &str) -> LatencyExperiment {
    ticklab_crd::parse_experiment(yaml, "inline").unwrap();
    serde_yaml::from_str(yaml).unwrap()
}

fn tls_experiment(tls: &str) -> LatencyExperiment {
    inline(&format!(
        "apiVersion: ticklab.dev/v1alpha1
kind: LatencyExperiment
metadata:
  name: tls-lab
  namespace: desk-t
  uid: 1d1f0b7e-0000-4000-8000-00000000000b
  generation: 1
spec:
  exchange:
    symbols: [EURUSD]
    ratePerSecond: 1000
    transport: websocket
  trader:
    orderTransport: http
    persistence: {{enabled: false}}
  tls: {tls}
"
    ))
}

/// The TLS volume of a pod: (Secret name, [(key, path)]), and its mount.
fn tls_volume(
    p: &PodSpec,
) -> (
    (String, Vec<(String, String)>),
    k8s_openapi::api::core::v1::VolumeMount,
) {
    let volume = p
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "tls")
        .expect("a tls volume");
    let secret = volume.secret.as_ref().unwrap();
    let items = secret
        .items
        .as_ref()
        .unwrap()
        .iter()
        .map(|i| (i.key.clone(), i.path.clone()))
        .collect();
    let mount = p.containers[0]
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.name == "tls")
        .expect("a tls mount")
        .clone();
    ((secret.secret_name.clone().unwrap(), items), mount)
}

#[test]
fn tls_with_a_named_secret_is_rendered_and_mounted_and_the_key_stays_with_the_exchange() {
    let e = tls_experiment("{secretName: feed-cert, keyLog: true, minVersion: \"1.3\"}");
    let material = children::TlsMaterial {
        trust_key: children::TLS_CA_KEY,
        generated: None,
    };
    let c = children::build_with_tls(
        &e,
        &ChildSettings::default(),
        Workload::Running,
        "",
        &material,
    )
    .unwrap();
    assert!(c.tls_secret.is_none(), "the named Secret is the user's");
    let (exchange, trader) = configs(&c);

    let server = exchange.tls.expect("exchange TLS");
    assert_eq!(
        (server.cert_pem_path.to_str(), server.key_pem_path.to_str()),
        (
            Some("/etc/ticklab-tls/tls.crt"),
            Some("/etc/ticklab-tls/tls.key")
        )
    );
    assert_eq!(server.min_version, TlsVersion::Tls13);
    let client = trader.tls.expect("trader TLS");
    assert_eq!(client.ca_pem_path.to_str(), Some("/etc/ticklab-tls/ca.crt"));
    // The exchange Service's name, which the generated certificate carries too.
    assert_eq!(
        client.server_name.as_deref(),
        Some("tls-lab-exchange.desk-t.svc")
    );
    assert!(client.key_log);
    assert_eq!(client.key_log_file, None, "read-only root filesystem");
    assert_eq!(client.min_version, TlsVersion::Tls13);
    assert_eq!(
        trader.feed_connect,
        "wss://tls-lab-exchange.desk-t.svc:9000/feed"
    );
    assert_eq!(
        trader.order_http,
        "https://tls-lab-exchange.desk-t.svc:9003"
    );

    // The exchange mounts the certificate and its key, read-only.
    let ((secret, items), mount) = tls_volume(pod(&c.exchange));
    assert_eq!(secret, "feed-cert");
    assert_eq!(
        items,
        [
            ("tls.crt".to_string(), "tls.crt".to_string()),
            ("tls.key".to_string(), "tls.key".to_string())
        ]
    );
    assert_eq!(mount.mount_path, "/etc/ticklab-tls");
    assert_eq!(mount.read_only, Some(true));
    // The trader mounts what it trusts (the Secret's ca.crt here), read-only, and
    // nothing of its pod mentions the private key.
    let ((secret, items), mount) = tls_volume(pod(&c.trader));
    assert_eq!(secret, "feed-cert");
    assert_eq!(items, [("ca.crt".to_string(), "ca.crt".to_string())]);
    assert_eq!(mount.read_only, Some(true));
    let trader_pod = serde_json::to_string(pod(&c.trader)).unwrap();
    assert!(!trader_pod.contains("tls.key"), "{trader_pod}");
    let secret_mode = pod(&c.trader)
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "tls")
        .unwrap()
        .secret
        .as_ref()
        .unwrap()
        .default_mode;
    assert_eq!(secret_mode, Some(0o440));

    // A Secret without ca.crt: the trader trusts the certificate itself.
    let c = children::build_with_tls(
        &e,
        &ChildSettings::default(),
        Workload::Running,
        "",
        &children::TlsMaterial::default(),
    )
    .unwrap();
    let ((_, items), _) = tls_volume(pod(&c.trader));
    assert_eq!(items, [("tls.crt".to_string(), "ca.crt".to_string())]);

    // Without spec.tls: no volume, no TLS, plain schemes.
    let plain = fixture("websocket-no-persistence.yaml");
    let c = build(&plain, Workload::Running);
    let (exchange, trader) = configs(&c);
    assert!(exchange.tls.is_none() && trader.tls.is_none());
    for p in [pod(&c.exchange), pod(&c.trader)] {
        assert!(p.volumes.as_ref().unwrap().iter().all(|v| v.name != "tls"));
    }
}

#[test]
fn a_missing_named_secret_or_key_is_a_condition_naming_both() {
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;
    use ticklab_operator::controller::tls_material;
    let e = tls_experiment("{secretName: feed-cert}");
    let names = children::Names::of("tls-lab");
    let secret = |keys: &[&str]| Secret {
        data: Some(
            keys.iter()
                .map(|k| (k.to_string(), ByteString(b"pem".to_vec())))
                .collect(),
        ),
        ..Default::default()
    };

    let (_, problem) = tls_material(&e, &names, None).unwrap();
    let (reason, message) = problem.unwrap();
    assert_eq!(reason, "SecretNotFound");
    assert!(
        message.contains("\"feed-cert\"") && message.contains("desk-t"),
        "{message}"
    );
    assert!(message.starts_with("spec.tls.secretName"), "{message}");

    let (_, problem) = tls_material(&e, &names, Some(&secret(&["tls.crt"]))).unwrap();
    let (reason, message) = problem.unwrap();
    assert_eq!(reason, "SecretKeyNotFound");
    assert!(
        message.contains("\"feed-cert\"") && message.contains("\"tls.key\""),
        "{message}"
    );

    let (material, problem) =
        tls_material(&e, &names, Some(&secret(&["tls.crt", "tls.key"]))).unwrap();
    assert!(problem.is_none());
    assert_eq!(material.trust_key, "tls.crt");
    let (material, _) =
        tls_material(&e, &names, Some(&secret(&["tls.crt", "tls.key", "ca.crt"]))).unwrap();
    assert_eq!(material.trust_key, "ca.crt");
    assert!(material.generated.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generated_secret_is_kept_and_its_certificate_answers_to_every_service_name() {
    use k8s_openapi::ByteString;
    use ticklab_operator::controller::tls_material;
    let e = tls_experiment("{keyLog: true}");
    let names = children::Names::of("tls-lab");

    // No Secret yet: one is generated.
    let (material, problem) = tls_material(&e, &names, None).unwrap();
    assert!(problem.is_none());
    assert_eq!(material.trust_key, "tls.crt");
    let pair = material.generated.clone().unwrap();
    let c = children::build_with_tls(
        &e,
        &ChildSettings::default(),
        Workload::Running,
        "",
        &material,
    )
    .unwrap();
    let secret = c.tls_secret.clone().expect("the generated Secret");
    assert_eq!(secret.metadata.name.as_deref(), Some("tls-lab-tls"));
    assert_eq!(secret.metadata.namespace.as_deref(), Some("desk-t"));
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    let owners = secret.metadata.owner_references.as_ref().unwrap();
    assert_eq!(owners[0].uid, "1d1f0b7e-0000-4000-8000-00000000000b");
    let data = secret.data.as_ref().unwrap();
    assert_eq!(data.keys().collect::<Vec<_>>(), ["tls.crt", "tls.key"]);
    // Both pods mount it; the trader trusts its certificate and never gets its key.
    assert_eq!(tls_volume(pod(&c.exchange)).0.0, "tls-lab-tls");
    assert_eq!(
        tls_volume(pod(&c.trader)).0,
        (
            "tls-lab-tls".to_string(),
            vec![("tls.crt".to_string(), "ca.crt".to_string())]
        )
    );

    // The next reconcile reads it back: the same pair, not a new one.
    let (again, _) = tls_material(&e, &names, Some(&secret)).unwrap();
    assert_eq!(again.generated.as_ref(), Some(&pair));
    // An emptied Secret is generated anew.
    let mut emptied = secret.clone();
    emptied
        .data
        .as_mut()
        .unwrap()
        .insert("tls.key".into(), ByteString(Vec::new()));
    let (fresh, _) = tls_material(&e, &names, Some(&emptied)).unwrap();
    assert_ne!(fresh.generated.as_ref(), Some(&pair));
    // ... and rolls both pods, which read the certificate once, at start.
    let renewed =
        children::build_with_tls(&e, &ChildSettings::default(), Workload::Running, "", &fresh)
            .unwrap();
    assert_ne!(config_hash(&c.exchange), config_hash(&renewed.exchange));
    assert_ne!(config_hash(&c.trader), config_hash(&renewed.trader));

    // The certificate's names: a real handshake with the exchange's TLS side and the
    // trader's TLS client, under each of the Service's names (the trader's
    // configured server name among them), succeeds; under another name it fails.
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("tls.crt");
    let key = dir.path().join("tls.key");
    std::fs::write(&cert, &data["tls.crt"].0).unwrap();
    std::fs::write(&key, &data["tls.key"].0).unwrap();
    let server = ticklab_exchange::tls::server_config(&ticklab_exchange::tls::ServerTlsConfig {
        cert_pem_path: cert.clone(),
        key_pem_path: key,
        min_version: TlsVersion::Tls12,
    })
    .unwrap();
    let exchange_metrics =
        ticklab_exchange::metrics::ExchangeMetrics::register(&prometheus::Registry::new()).unwrap();
    let stats = std::sync::Arc::new(ticklab_exchange::ExchangeStats::default());
    let acceptor =
        ticklab_exchange::tls::TlsAcceptor::new(server, "feed", &exchange_metrics, stats.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, peer)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Some(mut tls) = acceptor.handshake(tcp, peer).await {
                    let mut sink = Vec::new();
                    let _ = tokio::io::AsyncReadExt::read_to_end(&mut tls, &mut sink).await;
                }
            });
        }
    });
    let (_, trader) = configs(&c);
    let configured = trader.tls.unwrap().server_name.unwrap();
    let sans = children::tls_dns_names("tls-lab", "desk-t");
    assert_eq!(
        sans,
        [
            "tls-lab-exchange",
            "tls-lab-exchange.desk-t",
            "tls-lab-exchange.desk-t.svc",
            "tls-lab-exchange.desk-t.svc.cluster.local"
        ]
    );
    assert!(sans.contains(&configured));
    let trader_metrics =
        ticklab_trader::metrics::TraderMetrics::register(&prometheus::Registry::new()).unwrap();
    let handshake = |name: &str| {
        let client = ticklab_trader::tls::TlsClient::new(
            &ticklab_trader::tls::ClientTlsConfig {
                ca_pem_path: cert.clone(),
                server_name: Some(name.to_string()),
                key_log_file: None,
                key_log: false,
                min_version: TlsVersion::Tls12,
            },
            None,
            &trader_metrics,
        )
        .unwrap();
        async move { client.connect(&addr.to_string()).await.map(|_| ()) }
    };
    for name in &sans {
        handshake(name)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let other = handshake("other-exchange.desk-t.svc").await.unwrap_err();
    assert!(ticklab_trader::tls::is_handshake_error(&other), "{other}");
}
