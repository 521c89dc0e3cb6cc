//! The desired children of a RecordingSession, built from its spec without a client:
//! a ConfigMap with the recorder's configuration, a PersistentVolumeClaim for the
//! files, a Service for its HTTP port, the recorder Deployment and (when the
//! operator isolates experiments) a NetworkPolicy. All named `{session}-recorder`,
//! owned by the session, labelled as a component of the experiment.
//!
//! The rendered configuration always says `enabled: false`: the toggle is not part of
//! the pod template, so flipping `spec.enabled` never restarts the recorder; the
//! controller sets it over HTTP instead.

use std::collections::BTreeMap;
use std::net::{Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, HTTPGetAction,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, Service, ServicePort, ServiceSpec, Volume,
    VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use sha2::{Digest, Sha256};
use ticklab_crd::RecordingSession;
use ticklab_recorder::RecorderConfig;

use crate::children::{
    self, CONFIG_HASH_ANNOTATION, ChildSettings, Memory, ports, resources,
    restricted_container_security, restricted_pod_security,
};

/// The recorder's one port: files, the toggle, `/metrics`, `/healthz`, `/readyz`.
/// Named `admin` so the chart's PodMonitor scrapes it like the exchange's.
pub const RECORDER_PORT: u16 = 8080;
/// Where the volume is mounted in the recorder's pod.
pub const RECORDINGS_DIR: &str = "/recordings";
/// The `app.kubernetes.io/component` of recorder children.
pub const COMPONENT: &str = "recorder";
/// Label naming the RecordingSession a child belongs to (two sessions may record one
/// experiment; this keeps their pods apart).
pub const RECORDING_LABEL: &str = "ticklab.dev/recording";
/// Longest session name: `{session}-recorder` must stay a DNS label (63) for the
/// Service.
pub const MAX_SESSION_NAME: usize = 63 - "-recorder".len();
/// The uid the recorder runs as (the image's nonroot user); the volume is made
/// writable for it through `fsGroup`.
const RECORDER_UID: i64 = 65532;

/// What the operator's settings contribute to recorders, beside [`ChildSettings`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordingSettings {
    /// StorageClass of the recorders' volumes; None: the cluster's default class.
    pub storage_class_name: Option<String>,
}

/// Everything a session owns, in the order it is applied.
#[derive(Clone, Debug)]
pub struct RecorderChildren {
    pub config: ConfigMap,
    pub network_policy: Option<NetworkPolicy>,
    pub volume: PersistentVolumeClaim,
    pub service: Service,
    pub deployment: Deployment,
}

/// Why a session's children cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("recording session has no {0} (not stored by the API server?)")]
    MissingMetadata(&'static str),
    #[error("{field}: {problem}")]
    Invalid { field: String, problem: String },
    #[error("cannot render the recorder's configuration: {0}")]
    Render(#[from] serde_yaml::Error),
}

/// Name of every child of session `session`.
pub fn child_name(session: &str) -> String {
    format!("{session}-recorder")
}

/// Checks what the schema cannot: names that must fit in child names and labels.
/// `Err((field, problem))` names the field.
pub fn validate(session: &RecordingSession) -> Result<(), (String, String)> {
    let name = session.metadata.name.as_deref().unwrap_or_default();
    if name.len() > MAX_SESSION_NAME {
        return Err((
            "metadata.name".into(),
            format!(
                "{} characters; a RecordingSession name may have at most {MAX_SESSION_NAME} \
                 (its recorder's Service is named {name}-recorder, a DNS label)",
                name.len()
            ),
        ));
    }
    let experiment = &session.spec.experiment;
    // Experiment names are at most 40 characters (a CEL rule on LatencyExperiment);
    // a longer one can never be found, and would not fit a label value.
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

/// Labels of the recorder's pods and children: the experiment's component labels
/// (the chart's PodMonitor and the experiment's NetworkPolicy select on them) and
/// the session's.
pub fn recorder_labels(session: &str, experiment: &str) -> BTreeMap<String, String> {
    let mut labels = children::labels(experiment, COMPONENT);
    labels.insert(RECORDING_LABEL.into(), session.into());
    labels
}

/// The labels that select one session's recorder pod (Deployment, Service,
/// NetworkPolicy): unique per session.
pub fn selector_labels(session: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "ticklab".to_string()),
        (
            "app.kubernetes.io/component".to_string(),
            COMPONENT.to_string(),
        ),
        (RECORDING_LABEL.to_string(), session.to_string()),
    ])
}

/// The recorder's configuration as its pod reads it. `enabled` is always false:
/// the controller turns recording on over HTTP, so the pod template never changes
/// with the toggle.
pub fn recorder_config(session: &RecordingSession, name: &str, namespace: &str) -> RecorderConfig {
    let spec = &session.spec;
    RecorderConfig {
        experiment: spec.experiment.clone(),
        recording: name.to_string(),
        exchange_retransmit: format!(
            "{}-exchange.{namespace}.svc:{}",
            spec.experiment,
            ports::RETRANSMIT
        ),
        directory: PathBuf::from(RECORDINGS_DIR),
        format: spec.format,
        rotation: spec.rotation.clone(),
        enabled: false,
        listen: SocketAddr::from((Ipv6Addr::UNSPECIFIED, RECORDER_PORT)),
        // The experiment runs already (or starts on its own): a recording period
        // starts at the first packet the recorder receives.
        from_start: false,
    }
}

/// Builds the desired children of `session`.
pub fn build(
    session: &RecordingSession,
    settings: &ChildSettings,
    recording: &RecordingSettings,
) -> Result<RecorderChildren, BuildError> {
    let name = session
        .metadata
        .name
        .as_deref()
        .ok_or(BuildError::MissingMetadata("name"))?;
    let namespace = session
        .metadata
        .namespace
        .as_deref()
        .ok_or(BuildError::MissingMetadata("namespace"))?;
    let owner = session
        .controller_owner_ref(&())
        .ok_or(BuildError::MissingMetadata("uid"))?;
    validate(session).map_err(|(field, problem)| BuildError::Invalid { field, problem })?;
    let experiment = session.spec.experiment.as_str();
    let child = child_name(name);
    let meta = ObjectMeta {
        name: Some(child.clone()),
        namespace: Some(namespace.to_string()),
        labels: Some(recorder_labels(name, experiment)),
        owner_references: Some(vec![owner]),
        ..Default::default()
    };

    let config_yaml = serde_yaml::to_string(&recorder_config(session, name, namespace))?;
    let config_hash = {
        let digest = Sha256::digest(config_yaml.as_bytes());
        digest[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let config = ConfigMap {
        metadata: meta.clone(),
        data: Some(BTreeMap::from([("recorder.yaml".to_string(), config_yaml)])),
        ..Default::default()
    };

    let volume = PersistentVolumeClaim {
        metadata: meta.clone(),
        spec: Some(PersistentVolumeClaimSpec {
            // One writer; Recreate below makes sure the old pod let go of it.
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: recording.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(session.spec.storage.clone()),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };

    let admin = ContainerPort {
        name: Some("admin".into()),
        container_port: i32::from(RECORDER_PORT),
        protocol: Some("TCP".into()),
        ..Default::default()
    };
    let service = Service {
        metadata: meta.clone(),
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(name)),
            ports: Some(vec![ServicePort {
                name: admin.name.clone(),
                port: admin.container_port,
                target_port: Some(IntOrString::Int(admin.container_port)),
                protocol: admin.protocol.clone(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };

    let network_policy = settings.network_policy.as_ref().map(|isolation| {
        children::recorder_isolation_policy(
            meta.clone(),
            selector_labels(name),
            RECORDER_PORT,
            isolation,
        )
    });

    let deployment = recorder_deployment(RecorderDeployment {
        meta,
        session: name,
        experiment,
        settings,
        config_map: &child,
        claim: &child,
        config_hash: &config_hash,
        port: admin,
    });

    Ok(RecorderChildren {
        config,
        network_policy,
        volume,
        service,
        deployment,
    })
}

struct RecorderDeployment<'a> {
    meta: ObjectMeta,
    session: &'a str,
    experiment: &'a str,
    settings: &'a ChildSettings,
    config_map: &'a str,
    claim: &'a str,
    config_hash: &'a str,
    port: ContainerPort,
}

/// One recorder pod running `ticklab recorder --config /etc/ticklab/recorder.yaml`,
/// the files on the session's volume.
fn recorder_deployment(d: RecorderDeployment<'_>) -> Deployment {
    let selector = selector_labels(d.session);
    let probe = |path: &str| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::Int(i32::from(RECORDER_PORT)),
            ..Default::default()
        }),
        period_seconds: Some(5),
        ..Default::default()
    };
    let mount = |name: &str, path: &str, read_only: bool| VolumeMount {
        name: name.to_string(),
        mount_path: path.to_string(),
        read_only: read_only.then_some(true),
        ..Default::default()
    };
    Deployment {
        metadata: d.meta,
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..Default::default()
            },
            // A ReadWriteOnce volume and a directory lock: the old recorder must be
            // gone before a new one opens the files.
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".into()),
                ..Default::default()
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(recorder_labels(d.session, d.experiment)),
                    annotations: Some(BTreeMap::from([(
                        CONFIG_HASH_ANNOTATION.to_string(),
                        d.config_hash.to_string(),
                    )])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    // fsGroup makes the volume writable for the nonroot user; only
                    // when its root does not match already, so a large volume is
                    // not walked at every start.
                    security_context: Some(PodSecurityContext {
                        fs_group_change_policy: Some("OnRootMismatch".into()),
                        ..restricted_pod_security(RECORDER_UID)
                    }),
                    containers: vec![Container {
                        name: COMPONENT.into(),
                        image: Some(d.settings.image.clone()),
                        image_pull_policy: Some(d.settings.image_pull_policy.clone()),
                        args: Some(vec![
                            COMPONENT.into(),
                            "--config".into(),
                            "/etc/ticklab/recorder.yaml".into(),
                        ]),
                        ports: Some(vec![d.port]),
                        readiness_probe: Some(probe("/readyz")),
                        liveness_probe: Some(probe("/healthz")),
                        // A 16 MiB socket buffer and a batch of 64 datagrams; the
                        // files go to the volume, not to memory.
                        resources: Some(resources(
                            "100m",
                            Memory {
                                request_mib: 64,
                                limit_mib: 256,
                            },
                        )),
                        security_context: Some(restricted_container_security()),
                        volume_mounts: Some(vec![
                            mount("config", "/etc/ticklab", true),
                            mount("recordings", RECORDINGS_DIR, false),
                        ]),
                        ..Default::default()
                    }],
                    volumes: Some(vec![
                        Volume {
                            name: "config".into(),
                            config_map: Some(ConfigMapVolumeSource {
                                name: d.config_map.to_string(),
                                ..Default::default()
                            }),
                            ..Default::default()
                        },
                        Volume {
                            name: "recordings".into(),
                            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                                claim_name: d.claim.to_string(),
                                read_only: None,
                            }),
                            ..Default::default()
                        },
                    ]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}
