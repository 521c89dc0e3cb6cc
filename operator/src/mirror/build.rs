//! The desired objects of a MirrorSession, built from its spec without a client:
//! the capture service (ConfigMap, Service with UDP 4789 for VXLAN and its admin
//! port, Deployment, and a NetworkPolicy when the operator isolates experiments),
//! named `{session}-capture` and owned by the session; and, in sidecar mode, the
//! mirror as an ephemeral container for each target pod.
//!
//! Why an ephemeral container: adding a container to the trader's Deployment
//! would restart the trader mid-experiment, and a mirror must not disturb what it
//! measures; a node agent would need privileges on every node. An ephemeral
//! container joins the running pod and needs only NET_RAW; it cannot be removed,
//! so it ends by itself when its session's capture disappears.

use std::collections::BTreeMap;
use std::net::{Ipv6Addr, SocketAddr};

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EphemeralContainer,
    HTTPGetAction, PodSpec, PodTemplateSpec, Probe, SeccompProfile, SecurityContext, Service,
    ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use sha2::{Digest, Sha256};
use ticklab_capture_service::CaptureConfig;
use ticklab_crd::MirrorSession;
use ticklab_crd::mirror_session::{MirrorMode, MirrorTarget};
use ticklab_mirror::MirrorConfig;

use crate::children::{
    self, CONFIG_HASH_ANNOTATION, ChildSettings, Memory, ports, resources,
    restricted_container_security, restricted_pod_security,
};

/// The VXLAN port (IANA, and what AWS mirroring sends to).
pub const VXLAN_PORT: u16 = 4789;
/// The capture's HTTP port: `/report`, `/metrics`, `/healthz`, `/readyz`.
pub const CAPTURE_PORT: u16 = 9290;
/// The mirror's admin port inside the target pod (not exposed).
pub const MIRROR_ADMIN_PORT: u16 = 9291;
/// `app.kubernetes.io/component` of capture children.
pub const COMPONENT: &str = "capture";
/// Label naming the MirrorSession a child belongs to.
pub const MIRROR_LABEL: &str = "ticklab.dev/mirror";
/// Longest session name: `{session}-capture` must stay a DNS label.
pub const MAX_SESSION_NAME: usize = 63 - "-capture".len();
/// The uid the capture runs as (the image's nonroot user).
const CAPTURE_UID: i64 = 65532;

#[derive(Clone, Debug)]
pub struct CaptureChildren {
    pub config: ConfigMap,
    pub network_policy: Option<NetworkPolicy>,
    pub service: Service,
    pub deployment: Deployment,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("mirror session has no {0} (not stored by the API server?)")]
    MissingMetadata(&'static str),
    #[error("{field}: {problem}")]
    Invalid { field: String, problem: String },
    #[error("cannot render a configuration: {0}")]
    Render(String),
}

pub fn child_name(session: &str) -> String {
    format!("{session}-capture")
}

/// Name of the mirror's ephemeral container in a target pod.
pub fn mirror_container_name(session: &str) -> String {
    // Container names are DNS labels: 63 at most.
    let mut name = format!("mirror-{session}");
    name.truncate(63);
    name
}

/// Checks what the schema cannot. `Err((field, problem))`.
pub fn validate(session: &MirrorSession) -> Result<(), (String, String)> {
    let name = session.metadata.name.as_deref().unwrap_or_default();
    if name.len() > MAX_SESSION_NAME {
        return Err((
            "metadata.name".into(),
            format!(
                "{} characters; a MirrorSession name may have at most {MAX_SESSION_NAME} \
                 (its capture's Service is named {name}-capture, a DNS label)",
                name.len()
            ),
        ));
    }
    let experiment = &session.spec.experiment;
    let label_value = experiment.len() <= 63
        && experiment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !label_value {
        return Err((
            "spec.experiment".into(),
            format!("{experiment:?} is not the name of a LatencyExperiment"),
        ));
    }
    Ok(())
}

/// Labels of the capture's pod and children: the experiment's (so the
/// experiment's NetworkPolicy lets it reach the trader's API) and the session's.
pub fn capture_labels(session: &str, experiment: &str) -> BTreeMap<String, String> {
    let mut labels = children::labels(experiment, COMPONENT);
    labels.insert(MIRROR_LABEL.into(), session.into());
    labels
}

pub fn selector_labels(session: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "ticklab".to_string()),
        (
            "app.kubernetes.io/component".to_string(),
            COMPONENT.to_string(),
        ),
        (MIRROR_LABEL.to_string(), session.to_string()),
    ])
}

/// Labels selecting the pods a session mirrors.
pub fn target_selector(session: &MirrorSession) -> String {
    let component = match session.spec.target {
        MirrorTarget::Trader => "trader",
        MirrorTarget::Exchange => "exchange",
    };
    format!(
        "app.kubernetes.io/instance={},app.kubernetes.io/component={component},{}={}",
        session.spec.experiment,
        children::MANAGED_BY_LABEL,
        children::MANAGED_BY
    )
}

/// The capture's configuration as its pod reads it.
pub fn capture_config(session: &MirrorSession, name: &str, namespace: &str) -> CaptureConfig {
    let experiment = &session.spec.experiment;
    let names = children::Names::of(experiment);
    CaptureConfig {
        session: name.to_string(),
        experiment: experiment.clone(),
        listen: SocketAddr::from((Ipv6Addr::UNSPECIFIED, VXLAN_PORT)),
        admin_listen: SocketAddr::from((Ipv6Addr::UNSPECIFIED, CAPTURE_PORT)),
        vni: Some(session.spec.vni),
        retransmit_ports: vec![ports::RETRANSMIT],
        server_ports: vec![ports::FEED, ports::ORDER_TCP, ports::ORDER_HTTP],
        trader_api: Some(format!(
            "http://{}.{namespace}.svc:{}",
            names.trader,
            ports::TRADER_API
        )),
        key_log_file: None,
        pcapng: None,
        messages_file: None,
    }
}

/// The mirror's configuration, for the target pods.
pub fn mirror_config(session: &MirrorSession, name: &str, namespace: &str) -> MirrorConfig {
    MirrorConfig {
        session: name.to_string(),
        experiment: session.spec.experiment.clone(),
        capture: format!("{}.{namespace}.svc:{VXLAN_PORT}", child_name(name)),
        vni: session.spec.vni,
        interface: None,
        filter: session.spec.filter.clone(),
        packet_length: session.spec.packet_length,
        local_ports: Vec::new(),
        peer_ports: Vec::new(),
        // Inside the pod only (an ephemeral container has no ports): IPv4 loopback,
        // which every pod has.
        admin_listen: SocketAddr::from(([127, 0, 0, 1], MIRROR_ADMIN_PORT)),
        stop_when_capture_gone: true,
        report_url: Some(format!(
            "http://{}.{namespace}.svc:{CAPTURE_PORT}/mirror",
            child_name(name)
        )),
    }
}

fn owned_meta(session: &MirrorSession) -> Result<(String, String, ObjectMeta), BuildError> {
    let name = session
        .metadata
        .name
        .clone()
        .ok_or(BuildError::MissingMetadata("name"))?;
    let namespace = session
        .metadata
        .namespace
        .clone()
        .ok_or(BuildError::MissingMetadata("namespace"))?;
    let owner = session
        .controller_owner_ref(&())
        .ok_or(BuildError::MissingMetadata("uid"))?;
    let meta = ObjectMeta {
        name: Some(child_name(&name)),
        namespace: Some(namespace.clone()),
        labels: Some(capture_labels(&name, &session.spec.experiment)),
        owner_references: Some(vec![owner]),
        ..Default::default()
    };
    Ok((name, namespace, meta))
}

/// Builds the capture's children.
pub fn build(
    session: &MirrorSession,
    settings: &ChildSettings,
) -> Result<CaptureChildren, BuildError> {
    validate(session).map_err(|(field, problem)| BuildError::Invalid { field, problem })?;
    let (name, namespace, meta) = owned_meta(session)?;
    let config_yaml = serde_yaml::to_string(&capture_config(session, &name, &namespace))
        .map_err(|e| BuildError::Render(e.to_string()))?;
    let config_hash: String = Sha256::digest(config_yaml.as_bytes())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let config = ConfigMap {
        metadata: meta.clone(),
        data: Some(BTreeMap::from([("capture.yaml".to_string(), config_yaml)])),
        ..Default::default()
    };
    let vxlan = ContainerPort {
        name: Some("vxlan".into()),
        container_port: i32::from(VXLAN_PORT),
        protocol: Some("UDP".into()),
        ..Default::default()
    };
    let admin = ContainerPort {
        name: Some("admin".into()),
        container_port: i32::from(CAPTURE_PORT),
        protocol: Some("TCP".into()),
        ..Default::default()
    };
    let vpc = session.spec.mode == MirrorMode::Vpc;
    let service = Service {
        metadata: ObjectMeta {
            // In vpc mode the capture is AWS mirroring's target: a Network Load
            // Balancer (UDP) in front of the pod, as the AWS Load Balancer Controller
            // makes it from these annotations.
            annotations: vpc.then(|| {
                BTreeMap::from([
                    (
                        "service.beta.kubernetes.io/aws-load-balancer-type".to_string(),
                        "external".to_string(),
                    ),
                    (
                        "service.beta.kubernetes.io/aws-load-balancer-nlb-target-type".to_string(),
                        "ip".to_string(),
                    ),
                    (
                        "service.beta.kubernetes.io/aws-load-balancer-scheme".to_string(),
                        "internal".to_string(),
                    ),
                ])
            }),
            ..meta.clone()
        },
        spec: Some(ServiceSpec {
            type_: vpc.then(|| "LoadBalancer".to_string()),
            selector: Some(selector_labels(&name)),
            ports: Some(
                [&vxlan, &admin]
                    .into_iter()
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
    };
    let network_policy = settings.network_policy.as_ref().map(|isolation| {
        capture_isolation_policy(
            meta.clone(),
            &name,
            &session.spec.experiment,
            vpc,
            isolation,
        )
    });
    let deployment = capture_deployment(
        meta,
        &name,
        &session.spec.experiment,
        settings,
        &config_hash,
        vec![vxlan, admin],
    );
    Ok(CaptureChildren {
        config,
        network_policy,
        service,
        deployment,
    })
}

/// Ingress to the capture: VXLAN from the experiment's pods (the mirror runs in
/// them) or, in vpc mode, from anywhere (AWS delivers from the mirrored ENIs); its
/// HTTP port from the operator and the metrics scrapers.
fn capture_isolation_policy(
    meta: ObjectMeta,
    session: &str,
    experiment: &str,
    vpc: bool,
    isolation: &children::IsolationSettings,
) -> NetworkPolicy {
    let port = |p: u16, protocol: &str| NetworkPolicyPort {
        port: Some(IntOrString::Int(i32::from(p))),
        protocol: Some(protocol.into()),
        ..Default::default()
    };
    let vxlan_from = if vpc {
        NetworkPolicyPeer {
            ip_block: Some(IPBlock {
                cidr: "0.0.0.0/0".into(),
                except: None,
            }),
            ..Default::default()
        }
    } else {
        NetworkPolicyPeer {
            pod_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    children::EXPERIMENT_LABEL.to_string(),
                    experiment.to_string(),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }
    };
    NetworkPolicy {
        metadata: meta,
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector_labels(session)),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    from: Some(vec![vxlan_from]),
                    ports: Some(vec![port(VXLAN_PORT, "UDP")]),
                },
                NetworkPolicyIngressRule {
                    from: Some(vec![
                        children::operator_peer(isolation),
                        children::scrapers_peer(isolation),
                    ]),
                    ports: Some(vec![port(CAPTURE_PORT, "TCP")]),
                },
            ]),
            ..Default::default()
        }),
    }
}

fn capture_deployment(
    meta: ObjectMeta,
    session: &str,
    experiment: &str,
    settings: &ChildSettings,
    config_hash: &str,
    ports: Vec<ContainerPort>,
) -> Deployment {
    let probe = |path: &str| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::Int(i32::from(CAPTURE_PORT)),
            ..Default::default()
        }),
        period_seconds: Some(5),
        ..Default::default()
    };
    Deployment {
        metadata: meta,
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(selector_labels(session)),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(capture_labels(session, experiment)),
                    annotations: Some(BTreeMap::from([(
                        CONFIG_HASH_ANNOTATION.to_string(),
                        config_hash.to_string(),
                    )])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(restricted_pod_security(CAPTURE_UID)),
                    containers: vec![Container {
                        name: COMPONENT.into(),
                        image: Some(settings.image.clone()),
                        image_pull_policy: Some(settings.image_pull_policy.clone()),
                        args: Some(vec![
                            COMPONENT.into(),
                            "--config".into(),
                            "/etc/ticklab/capture.yaml".into(),
                        ]),
                        ports: Some(ports),
                        readiness_probe: Some(probe("/readyz")),
                        liveness_probe: Some(probe("/healthz")),
                        // A 32 MiB socket buffer, 64 datagram buffers, the TCP
                        // streams' out-of-order bytes and the tick memory.
                        resources: Some(resources(
                            "200m",
                            Memory {
                                request_mib: 128,
                                limit_mib: 512,
                            },
                        )),
                        security_context: Some(restricted_container_security()),
                        volume_mounts: Some(vec![VolumeMount {
                            name: "config".into(),
                            mount_path: "/etc/ticklab".into(),
                            read_only: Some(true),
                            ..Default::default()
                        }]),
                        ..Default::default()
                    }],
                    volumes: Some(vec![Volume {
                        name: "config".into(),
                        config_map: Some(ConfigMapVolumeSource {
                            name: child_name(session),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The mirror for a target pod: `ticklab mirror` with its configuration in one
/// argument (an ephemeral container cannot mount a new volume), as root with only
/// NET_RAW (a packet socket needs the capability in the effective set, which
/// Kubernetes grants only to root), nothing else.
pub fn mirror_container(
    session: &MirrorSession,
    settings: &ChildSettings,
) -> Result<EphemeralContainer, BuildError> {
    let (name, namespace, _) = owned_meta(session)?;
    let json = serde_json::to_string(&mirror_config(session, &name, &namespace))
        .map_err(|e| BuildError::Render(e.to_string()))?;
    Ok(EphemeralContainer {
        name: mirror_container_name(&name),
        image: Some(settings.image.clone()),
        image_pull_policy: Some(settings.image_pull_policy.clone()),
        args: Some(vec!["mirror".into(), "--config-json".into(), json]),
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_non_root: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_RAW".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::children::IsolationSettings;

    fn session(mode: &str) -> MirrorSession {
        serde_yaml::from_str(&format!(
            r#"
apiVersion: ticklab.dev/v1alpha1
kind: MirrorSession
metadata: {{name: wire, namespace: desk, uid: 1b4e28ba-2fa1-11d2-883f-0016d3cca427}}
spec:
  experiment: lab
  mode: {mode}
  vni: 7
  packetLength: 256
  filter:
    - {{direction: ingress, protocol: udp, ports: [9100]}}
"#
        ))
        .unwrap()
    }

    fn isolated() -> ChildSettings {
        ChildSettings {
            network_policy: Some(IsolationSettings {
                operator_namespace: "ticklab-system".into(),
                metrics_namespace_labels: BTreeMap::new(),
            }),
            ..ChildSettings::default()
        }
    }

    #[test]
    fn the_capture_is_named_owned_configured_and_restricted() {
        let c = build(&session("sidecar"), &isolated()).unwrap();
        for meta in [
            &c.config.metadata,
            &c.service.metadata,
            &c.deployment.metadata,
        ] {
            assert_eq!(meta.name.as_deref(), Some("wire-capture"));
            let owner = &meta.owner_references.as_ref().unwrap()[0];
            assert_eq!(
                (owner.kind.as_str(), owner.controller),
                ("MirrorSession", Some(true))
            );
            // The experiment's label: its NetworkPolicy lets the capture reach the
            // trader's API.
            assert_eq!(
                meta.labels.as_ref().unwrap()[children::EXPERIMENT_LABEL],
                "lab"
            );
        }
        let config: CaptureConfig =
            serde_yaml::from_str(&c.config.data.as_ref().unwrap()["capture.yaml"]).unwrap();
        assert_eq!(config.vni, Some(7));
        assert_eq!(config.listen.port(), VXLAN_PORT);
        assert_eq!(
            config.trader_api.as_deref(),
            Some("http://lab-trader.desk.svc:9190")
        );
        let spec = c.service.spec.as_ref().unwrap();
        assert_eq!(spec.type_, None, "sidecar mode: a ClusterIP Service");
        let ports: Vec<_> = spec
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| (p.port, p.protocol.clone().unwrap()))
            .collect();
        assert_eq!(
            ports,
            [(4789, "UDP".to_string()), (9290, "TCP".to_string())]
        );
        let pod = c.deployment.spec.unwrap().template.spec.unwrap();
        let container = &pod.containers[0];
        assert_eq!(
            container.security_context,
            Some(restricted_container_security())
        );
        assert_eq!(pod.security_context.unwrap().run_as_non_root, Some(true));
        // Isolation: VXLAN from the experiment's pods only, the admin port for the
        // operator and the scrapers.
        let policy = c.network_policy.unwrap().spec.unwrap();
        let ingress = policy.ingress.unwrap();
        let vxlan_from = ingress[0].from.as_ref().unwrap()[0]
            .pod_selector
            .as_ref()
            .unwrap();
        assert_eq!(
            vxlan_from.match_labels.as_ref().unwrap()[children::EXPERIMENT_LABEL],
            "lab"
        );
        assert_eq!(
            ingress[0].ports.as_ref().unwrap()[0].protocol.as_deref(),
            Some("UDP")
        );
    }

    #[test]
    fn the_mirror_gets_net_raw_and_nothing_else_and_follows_its_session() {
        let m = mirror_container(&session("sidecar"), &ChildSettings::default()).unwrap();
        assert!(m.name.starts_with("mirror-wire") && m.name.len() <= 63);
        let security = m.security_context.unwrap();
        let caps = security.capabilities.unwrap();
        assert_eq!(
            (caps.add.unwrap(), caps.drop.unwrap()),
            (vec!["NET_RAW".to_string()], vec!["ALL".to_string()])
        );
        assert_eq!(security.allow_privilege_escalation, Some(false));
        assert_eq!(security.read_only_root_filesystem, Some(true));
        let args = m.args.unwrap();
        let config: MirrorConfig = serde_json::from_str(&args[2]).unwrap();
        assert_eq!(config.capture, "wire-capture.desk.svc:4789");
        assert_eq!((config.vni, config.packet_length), (7, Some(256)));
        assert_eq!(config.filter.len(), 1);
        assert!(config.stop_when_capture_gone);
        // A long session name still gives a valid container name.
        let mut long = session("sidecar");
        long.metadata.name = Some("w".repeat(MAX_SESSION_NAME));
        assert!(mirror_container_name(long.metadata.name.as_deref().unwrap()).len() <= 63);
    }

    #[test]
    fn vpc_mode_is_a_load_balancer_open_to_the_vpc() {
        let c = build(&session("vpc"), &isolated()).unwrap();
        let service = c.service;
        assert_eq!(service.spec.unwrap().type_.as_deref(), Some("LoadBalancer"));
        assert!(
            service
                .metadata
                .annotations
                .unwrap()
                .contains_key("service.beta.kubernetes.io/aws-load-balancer-type")
        );
        let policy = c.network_policy.unwrap().spec.unwrap();
        let from = &policy.ingress.unwrap()[0].from.clone().unwrap()[0];
        assert_eq!(from.ip_block.as_ref().unwrap().cidr, "0.0.0.0/0");
    }

    #[test]
    fn names_that_cannot_fit_are_refused() {
        let mut s = session("sidecar");
        s.metadata.name = Some("x".repeat(MAX_SESSION_NAME + 1));
        assert!(matches!(
            build(&s, &ChildSettings::default()),
            Err(BuildError::Invalid { .. })
        ));
        let mut s = session("sidecar");
        s.spec.experiment = "not/a/name".into();
        assert_eq!(validate(&s).unwrap_err().0, "spec.experiment");
    }
}
