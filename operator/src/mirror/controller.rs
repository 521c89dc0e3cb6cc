//! The MirrorSession controller. Each reconcile is a pipeline: validate (names that
//! must fit the children's) → dereference (the experiment, from a watched cache) →
//! build the capture's children ([`super::build`], no client) → apply them in order
//! (ConfigMap and NetworkPolicy, Service, Deployment) → add the mirror to each
//! target pod that lacks it (sidecar mode; an ephemeral container, so the pod keeps
//! running) → read the capture's report → write the status ([`super::status`]).
//!
//! Triggered by spec edits, by changes to the capture's children, by the experiment
//! appearing, and every 2 s while the session exists (new target pods, fresh
//! figures). The timed reconciles skip the apply stage unless something changed.
//! Deleting the session deletes the capture (owner references); the mirrors, which
//! an API call cannot remove from a pod, end when the capture's name stops
//! resolving.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Controller, WatchStreamExt, predicates, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use ticklab_crd::mirror_session::MirrorMode;
use ticklab_crd::{LatencyExperiment, MirrorSession, MirrorSessionStatus};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::build::{self, BuildError, COMPONENT, CaptureChildren, VXLAN_PORT};
use super::capture_api::CaptureApi;
use super::status::{self, Mirrors, Observed};
use crate::children::{MANAGED_BY, MANAGED_BY_LABEL};
use crate::controller::{Child, ERROR_KINDS, FIELD_MANAGER, server_side_apply};
use crate::recording::controller::workload_of;

/// The `controller` label of the operator's metrics.
pub const CONTROLLER: &str = "mirrorsession";
/// How often the status is refreshed (and target pods looked at).
pub const STATUS_INTERVAL: Duration = Duration::from_secs(2);
/// How often unchanged children are applied again anyway.
const REAPPLY_EVERY: Duration = Duration::from_secs(300);
const MISSING_EXPERIMENT_RECHECK: Duration = Duration::from_secs(30);

pub struct Context {
    pub shared: Arc<crate::controller::Context>,
    pub capture_api: CaptureApi,
    experiments: reflector::Store<LatencyExperiment>,
    sessions: reflector::Store<MirrorSession>,
    /// Sessions (by uid) whose children changed since they were last applied.
    changed: Mutex<HashSet<String>>,
    /// Generation last applied and when, by session uid.
    applied: Mutex<HashMap<String, (Option<i64>, Instant)>>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("validate: {field}: {problem}")]
    InvalidSpec { field: String, problem: String },
    #[error("build: {0}")]
    Build(#[from] BuildError),
    #[error("apply: cannot apply {kind} {name}: {source}")]
    Apply {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("observe: cannot read {kind}: {source}")]
    Read {
        kind: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("status: cannot write the status of MirrorSession {name}: {source}")]
    Status {
        name: String,
        #[source]
        source: kube::Error,
    },
}

impl Error {
    pub fn kind(&self) -> &'static str {
        let kube_kind = |error: &kube::Error| match error {
            kube::Error::Api(status) if status.code == 409 => "conflict",
            kube::Error::Api(_) => "api",
            _ => "transport",
        };
        match self {
            Error::InvalidSpec { .. } | Error::Build(BuildError::Invalid { .. }) => "invalid_spec",
            Error::Build(_) => "build",
            Error::Apply { source, .. }
            | Error::Read { source, .. }
            | Error::Status { source, .. } => kube_kind(source),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs the controller until `shutdown` is cancelled.
pub async fn run(
    shared: Arc<crate::controller::Context>,
    capture_api: CaptureApi,
    namespace: Option<String>,
    shutdown: CancellationToken,
) {
    let client = shared.client.clone();
    fn api<K>(client: &Client, namespace: &Option<String>) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
    {
        match namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let metrics = &shared.metrics;
    metrics.reconciliations.with_label_values(&[CONTROLLER]);
    metrics.duration.with_label_values(&[CONTROLLER]);
    for kind in ERROR_KINDS {
        metrics.failures.with_label_values(&[CONTROLLER, kind]);
    }
    let (sessions, sessions_writer) = reflector::store();
    let trigger = watcher(
        api::<MirrorSession>(&client, &namespace),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .reflect(sessions_writer)
    .applied_objects()
    .predicate_filter(predicates::generation, Default::default());
    let (experiments, experiments_writer) = reflector::store();
    let experiment_events = watcher(
        api::<LatencyExperiment>(&client, &namespace),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .reflect(experiments_writer)
    .touched_objects()
    .predicate_filter(predicates::generation, Default::default());
    let naming = sessions.clone();
    let sessions_of = move |experiment: LatencyExperiment| {
        let name = experiment.name_any();
        let namespace = experiment.namespace();
        naming
            .state()
            .into_iter()
            .filter(|s| s.spec.experiment == name && s.namespace() == namespace)
            .map(|s| ObjectRef::from_obj(&*s))
            .collect::<Vec<_>>()
    };
    let ctx = Arc::new(Context {
        shared: shared.clone(),
        capture_api,
        experiments,
        sessions: sessions.clone(),
        changed: Mutex::new(HashSet::new()),
        applied: Mutex::new(HashMap::new()),
    });
    let children = watcher::Config::default()
        .labels(&format!(
            "{MANAGED_BY_LABEL}={MANAGED_BY},app.kubernetes.io/component={COMPONENT}"
        ))
        .any_semantic();
    let mut controller = Controller::for_stream(trigger, sessions)
        .watches_stream(experiment_events, sessions_of)
        .owns_stream(child_changes(
            api::<Deployment>(&client, &namespace),
            &children,
            &ctx,
        ))
        .owns_stream(child_changes(
            api::<Service>(&client, &namespace),
            &children,
            &ctx,
        ))
        .owns_stream(child_changes(
            api::<ConfigMap>(&client, &namespace),
            &children,
            &ctx,
        ));
    if shared.settings.network_policy.is_some() {
        controller = controller.owns_stream(child_changes(
            api::<NetworkPolicy>(&client, &namespace),
            &children,
            &ctx,
        ));
    }
    controller
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                warn!(%error, "mirror reconcile failed");
            }
        })
        .await;
}

/// A watch of one kind of capture child that marks its session's children as
/// changed (its next reconcile applies them again).
fn child_changes<K>(
    api: Api<K>,
    config: &watcher::Config,
    ctx: &Arc<Context>,
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let ctx = ctx.clone();
    watcher(api, config.clone())
        .default_backoff()
        .touched_objects()
        .inspect_ok(move |child| {
            for owner in child.meta().owner_references.iter().flatten() {
                if owner.controller == Some(true) && owner.kind == MirrorSession::kind(&()) {
                    lock(&ctx.changed).insert(owner.uid.clone());
                }
            }
        })
}

pub fn error_policy(session: Arc<MirrorSession>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.shared
        .metrics
        .failures
        .with_label_values(&[CONTROLLER, error.kind()])
        .inc();
    warn!(mirror = %session.name_any(), namespace = ?session.namespace(), %error, "reconcile error");
    match error.kind() {
        "invalid_spec" => Action::await_change(),
        _ => Action::requeue(Duration::from_secs(5)),
    }
}

#[tracing::instrument(skip_all, fields(mirror = %session.name_any(), namespace = ?session.namespace()))]
pub async fn reconcile(session: Arc<MirrorSession>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let metrics = &ctx.shared.metrics;
    metrics
        .reconciliations
        .with_label_values(&[CONTROLLER])
        .inc();
    let result = reconcile_inner(&session, &ctx).await;
    metrics
        .duration
        .with_label_values(&[CONTROLLER])
        .observe(started.elapsed().as_secs_f64());
    result
}

async fn reconcile_inner(session: &MirrorSession, ctx: &Context) -> Result<Action, Error> {
    if session.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let name = session.name_any();
    let namespace = session.namespace().unwrap_or_default();
    let uid = session.uid().unwrap_or_default();
    let generation = session.metadata.generation;
    let previous = session.status.clone().unwrap_or_default();

    // Validate.
    if let Err((field, problem)) = build::validate(session) {
        let status = MirrorSessionStatus {
            observed_generation: generation,
            conditions: vec![Condition {
                type_: status::READY.into(),
                status: "False".into(),
                reason: "InvalidSpec".into(),
                message: format!("{field}: {problem}"),
                last_transition_time: Time(Timestamp::now()),
                observed_generation: generation,
            }],
            ..previous.clone()
        };
        if previous
            .conditions
            .iter()
            .all(|c| c.reason != "InvalidSpec")
        {
            write_status(ctx, session, &status).await?;
        }
        return Err(Error::InvalidSpec { field, problem });
    }

    // Dereference the experiment from the watch cache.
    let _ = ctx.experiments.wait_until_ready().await;
    let experiment_found = ctx
        .experiments
        .get(&ObjectRef::new(&session.spec.experiment).within(&namespace))
        .is_some();

    // Build and apply the capture (unless nothing changed since the last apply).
    let deployments: Api<Deployment> = Api::namespaced(ctx.shared.client.clone(), &namespace);
    let deployment = if experiment_found {
        let last = lock(&ctx.applied).get(&uid).copied();
        let changed = lock(&ctx.changed).remove(&uid);
        let fresh = last.is_some_and(|(g, at)| g == generation && at.elapsed() < REAPPLY_EVERY);
        if changed || !fresh {
            let desired = build::build(session, &ctx.shared.settings)?;
            let deployment = apply_children(ctx, &namespace, &desired).await?;
            lock(&ctx.applied).insert(uid.clone(), (generation, Instant::now()));
            forget_deleted(ctx);
            Some(deployment)
        } else {
            read_deployment(&deployments, &build::child_name(&name)).await?
        }
    } else {
        lock(&ctx.applied).remove(&uid);
        read_deployment(&deployments, &build::child_name(&name)).await?
    };
    let workload = workload_of(deployment.as_ref());

    // The mirrors, in sidecar mode, once the capture exists to send to.
    let mirrors = match session.spec.mode {
        MirrorMode::Vpc => None,
        MirrorMode::Sidecar if experiment_found => {
            Some(attach_mirrors(ctx, session, &namespace).await?)
        }
        MirrorMode::Sidecar => Some(Mirrors::default()),
    };

    let report = ctx.capture_api.report(&name, &namespace).await;
    let endpoint = format!("{}.{namespace}.svc:{VXLAN_PORT}", build::child_name(&name));
    let observed = Observed {
        experiment: &session.spec.experiment,
        namespace: &namespace,
        experiment_found,
        workload,
        mirrors,
        capture: report.as_ref().map_err(Clone::clone),
        endpoint,
    };
    let status = status::status(generation, &observed, &previous, Timestamp::now());
    if status != previous {
        write_status(ctx, session, &status).await?;
    }
    Ok(if experiment_found {
        Action::requeue(STATUS_INTERVAL)
    } else {
        Action::requeue(MISSING_EXPERIMENT_RECHECK)
    })
}

async fn read_deployment(api: &Api<Deployment>, name: &str) -> Result<Option<Deployment>, Error> {
    api.get_opt(name).await.map_err(|source| Error::Read {
        kind: "Deployment",
        source,
    })
}

/// Adds the mirror to every running target pod that lacks it, and says where it
/// runs. A refusal (Pod Security admission, RBAC) is reported, not retried in a
/// loop: the next timed reconcile tries again, so fixing the namespace's label is
/// picked up.
async fn attach_mirrors(
    ctx: &Context,
    session: &MirrorSession,
    namespace: &str,
) -> Result<Mirrors, Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.shared.client.clone(), namespace);
    let list = pods
        .list(&ListParams::default().labels(&build::target_selector(session)))
        .await
        .map_err(|source| Error::Read {
            kind: "Pod",
            source,
        })?;
    let container = build::mirror_container(session, &ctx.shared.settings)?;
    let mut mirrors = Mirrors::default();
    for pod in list.items {
        let pod_name = pod.name_any();
        let Some(pod_status) = pod.status.as_ref() else {
            continue;
        };
        if pod_status.phase.as_deref() != Some("Running")
            || pod.metadata.deletion_timestamp.is_some()
        {
            continue;
        }
        mirrors.targets.push(pod_name.clone());
        let present = pod
            .spec
            .as_ref()
            .and_then(|s| s.ephemeral_containers.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.name == container.name));
        if present {
            let running = pod_status
                .ephemeral_container_statuses
                .iter()
                .flatten()
                .any(|s| {
                    s.name == container.name
                        && s.state.as_ref().is_some_and(|st| st.running.is_some())
                });
            if running {
                mirrors.running.push(pod_name);
            }
            continue;
        }
        let patch = serde_json::json!({"spec": {"ephemeralContainers": [container]}});
        match pods
            .patch_subresource(
                "ephemeralcontainers",
                &pod_name,
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await
        {
            Ok(_) => info!(pod = %pod_name, "mirror added"),
            Err(kube::Error::Api(e)) if (400..500).contains(&e.code) => {
                mirrors.refused = Some(status::refusal(e.code, &e.message));
            }
            Err(source) => {
                return Err(Error::Apply {
                    kind: "Pod",
                    name: pod_name,
                    source,
                });
            }
        }
    }
    Ok(mirrors)
}

fn forget_deleted(ctx: &Context) {
    let live: HashSet<String> = ctx
        .sessions
        .state()
        .iter()
        .filter_map(|s| s.uid())
        .collect();
    lock(&ctx.applied).retain(|uid, _| live.contains(uid));
    lock(&ctx.changed).retain(|uid| live.contains(uid));
}

async fn write_status(
    ctx: &Context,
    session: &MirrorSession,
    status: &MirrorSessionStatus,
) -> Result<(), Error> {
    let name = session.name_any();
    let api: Api<MirrorSession> = Api::namespaced(
        ctx.shared.client.clone(),
        &session.namespace().unwrap_or_default(),
    );
    let patch = serde_json::json!({
        "apiVersion": MirrorSession::api_version(&()),
        "kind": MirrorSession::kind(&()),
        "status": status,
    });
    api.patch_status(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map(|_| ())
    .map_err(|source| Error::Status { name, source })
}

async fn apply<K: Child>(ctx: &Context, namespace: &str, object: &K) -> Result<K, Error> {
    let name = object.meta().name.clone().unwrap_or_default();
    server_side_apply(&ctx.shared.client, namespace, object)
        .await
        .map_err(|source| Error::Apply {
            kind: <K as k8s_openapi::Resource>::KIND,
            name,
            source,
        })
}

/// The configuration and isolation first, then the Service, then the Deployment
/// that needs them; a failed stage stops the rest. Returns the Deployment as stored.
async fn apply_children(
    ctx: &Context,
    namespace: &str,
    desired: &CaptureChildren,
) -> Result<Deployment, Error> {
    tokio::try_join!(apply(ctx, namespace, &desired.config), async {
        match &desired.network_policy {
            Some(policy) => apply(ctx, namespace, policy).await.map(|_| ()),
            None => Ok(()),
        }
    })?;
    apply(ctx, namespace, &desired.service).await?;
    apply(ctx, namespace, &desired.deployment).await
}
