//! The RecordingSession controller. Each reconcile is a pipeline: validate (the
//! names must fit the children's; no request needed) → dereference (the experiment,
//! from a watched cache) → build the desired children ([`super::build`], no client)
//! → apply them in order (ConfigMap and NetworkPolicy, PersistentVolumeClaim,
//! Service, Deployment) → send the toggle to the recorder (`PUT /recording`, which
//! answers with its status) → write the status ([`super::status`]).
//!
//! Triggered by spec edits (generation: the toggle travels edit → watch → reconcile
//! → PUT), by changes to the recorder's children, by the experiment appearing, and
//! every 2 s while the session exists, to keep the status current (sooner while the
//! recorder is still switching). The timed reconciles skip the apply stage unless
//! something changed (spec, a child, the experiment), so a session costs the API
//! server a status write when the figures moved, not five applies every 2 s.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Controller, WatchStreamExt, predicates, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use ticklab_crd::{LatencyExperiment, RecordingSession, RecordingSessionStatus};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::build::{
    self, BuildError, COMPONENT, RECORDER_PORT, RecorderChildren, RecordingSettings,
};
use super::recorder_api::RecorderApi;
use super::status::{self, Observed, Workload};
use crate::children::{MANAGED_BY, MANAGED_BY_LABEL};
use crate::controller::{Child, server_side_apply};
use crate::controller::{ERROR_KINDS, FIELD_MANAGER};

/// The `controller` label of the operator's metrics.
pub const CONTROLLER: &str = "recordingsession";
/// How often the status is refreshed from the recorder.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(2);
/// How soon it is refreshed while the recorder has not yet reached the toggle's
/// state (a pause drains for up to 1.5 s).
pub const SWITCHING_INTERVAL: Duration = Duration::from_millis(50);
/// How often an unchanged session's children are applied again anyway (a repair
/// for anything the triggers missed).
const REAPPLY_EVERY: Duration = Duration::from_secs(300);
/// How often a session whose experiment does not exist is looked at again (the
/// experiment's creation triggers a reconcile at once; this is the fallback).
const MISSING_EXPERIMENT_RECHECK: Duration = Duration::from_secs(30);

/// Shared by every reconcile of RecordingSessions.
pub struct Context {
    /// Client, events, metrics and the children's settings, shared with the
    /// LatencyExperiment controller.
    pub shared: Arc<crate::controller::Context>,
    pub recording: RecordingSettings,
    pub recorder_api: RecorderApi,
    /// The experiments, as watched (dereferenced without a request).
    experiments: reflector::Store<LatencyExperiment>,
    /// The sessions, as watched (to forget what belonged to deleted ones).
    sessions: reflector::Store<RecordingSession>,
    /// Sessions (by uid) whose children changed since they were last applied.
    changed: Mutex<HashSet<String>>,
    /// What was last applied for each session (by uid).
    applied: Mutex<HashMap<String, Applied>>,
}

#[derive(Clone, Debug)]
struct Applied {
    generation: Option<i64>,
    at: Instant,
    workload: Workload,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec breaks a rule the schema cannot state; only a spec change helps.
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
    #[error("observe: cannot read {kind} {name}: {source}")]
    Read {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("status: cannot write the status of RecordingSession {name}: {source}")]
    Status {
        name: String,
        #[source]
        source: kube::Error,
    },
}

impl Error {
    /// Low-cardinality label for the failure metric (one of [`ERROR_KINDS`], the
    /// LatencyExperiment controller's).
    pub fn kind(&self) -> &'static str {
        let kube_kind = |error: &kube::Error| match error {
            kube::Error::Api(status) if status.code == 409 => "conflict",
            kube::Error::Api(_) => "api",
            _ => "transport",
        };
        match self {
            Error::InvalidSpec { .. } => "invalid_spec",
            Error::Build(BuildError::Invalid { .. }) => "invalid_spec",
            Error::Build(_) => "build",
            Error::Apply { source, .. }
            | Error::Read { source, .. }
            | Error::Status { source, .. } => kube_kind(source),
        }
    }
}

/// Runs the controller until `shutdown` is cancelled. `namespace`: watch one
/// namespace, or all when None.
pub async fn run(
    shared: Arc<crate::controller::Context>,
    recording: RecordingSettings,
    recorder_api: RecorderApi,
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

    // Sessions: reconciled on spec changes only; the status this controller writes
    // every few seconds must not trigger another reconcile.
    let (sessions, sessions_writer) = reflector::store();
    let trigger = watcher(
        api::<RecordingSession>(&client, &namespace),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .reflect(sessions_writer)
    .applied_objects()
    .predicate_filter(predicates::generation, Default::default());
    // Experiments: cached for the dereference; a new one triggers the sessions that
    // name it (their status changes do not).
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
        recording,
        recorder_api,
        experiments,
        sessions: sessions.clone(),
        changed: Mutex::new(HashSet::new()),
        applied: Mutex::new(HashMap::new()),
    });
    // Only the recorders' children: the experiments' are not this controller's.
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
        ))
        .owns_stream(child_changes(
            api::<PersistentVolumeClaim>(&client, &namespace),
            &children,
            &ctx,
        ));
    // Watched only when the operator makes them (it then has the permission).
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
                warn!(%error, "recording reconcile failed");
            }
        })
        .await;
}

/// A watch of one kind of recorder child that notes, before the controller maps a
/// child to its session, that the session's children changed: its next reconcile
/// applies them again.
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
            let owners = child.meta().owner_references.iter().flatten();
            for owner in owners.filter(|o| o.controller == Some(true)) {
                if owner.kind == RecordingSession::kind(&()) {
                    lock(&ctx.changed).insert(owner.uid.clone());
                }
            }
        })
}

/// Invalid sessions wait for a change; transient errors retry after a delay.
pub fn error_policy(session: Arc<RecordingSession>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.shared
        .metrics
        .failures
        .with_label_values(&[CONTROLLER, error.kind()])
        .inc();
    warn!(recording = %session.name_any(), namespace = ?session.namespace(), %error, "reconcile error");
    match error.kind() {
        "invalid_spec" => Action::await_change(),
        _ => Action::requeue(Duration::from_secs(5)),
    }
}

#[tracing::instrument(skip_all, fields(recording = %session.name_any(), namespace = ?session.namespace()))]
pub async fn reconcile(session: Arc<RecordingSession>, ctx: Arc<Context>) -> Result<Action, Error> {
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

async fn reconcile_inner(session: &RecordingSession, ctx: &Context) -> Result<Action, Error> {
    if session.metadata.deletion_timestamp.is_some() {
        // Children (the volume too) go with it through their owner references.
        return Ok(Action::await_change());
    }
    let name = session.name_any();
    let namespace = session.namespace().unwrap_or_default();
    let uid = session.uid().unwrap_or_default();
    let generation = session.metadata.generation;
    let previous = session.status.clone().unwrap_or_default();
    let experiment = session.spec.experiment.as_str();
    let child = build::child_name(&name);
    let endpoint = format!("http://{child}.{namespace}.svc:{RECORDER_PORT}");

    // Validate.
    if let Err((field, problem)) = build::validate(session) {
        let status = RecordingSessionStatus {
            observed_generation: generation,
            conditions: vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                type_: status::READY.into(),
                status: "False".into(),
                reason: "InvalidSpec".into(),
                message: format!("{field}: {problem}"),
                last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    Timestamp::now(),
                ),
                observed_generation: generation,
            }],
            ..previous.clone()
        };
        let reported = previous.observed_generation == generation
            && previous
                .conditions
                .iter()
                .any(|c| c.reason == "InvalidSpec");
        if !reported {
            write_status(ctx, session, &status).await?;
            publish(
                ctx,
                session,
                EventType::Warning,
                "InvalidSpec",
                format!("{field}: {problem}"),
            )
            .await;
        }
        return Err(Error::InvalidSpec { field, problem });
    }

    // Dereference: the experiment, from the watch cache (waiting for its first
    // list, so a restarting operator never reports a present experiment missing).
    let _ = ctx.experiments.wait_until_ready().await;
    let experiment_found = ctx
        .experiments
        .get(&ObjectRef::new(experiment).within(&namespace))
        .is_some();

    // The toggle, on every reconcile (idempotent): a restarted recorder starts
    // paused (its configuration says so) and is set right at once. Sent while the
    // children are applied, not after: an edit of spec.enabled bumps the generation,
    // and the recorder that exists need not wait for five applies to follow it.
    let enabled = session.spec.enabled;
    let toggle = async {
        ctx.recorder_api
            .set_enabled(&name, &namespace, enabled)
            .await
            .map_err(|e| e.to_string())
    };
    let (workload, answer) = if experiment_found {
        // Build and apply, unless this is a timed refresh and nothing changed.
        let last = lock(&ctx.applied).get(&uid).cloned();
        let changed = lock(&ctx.changed).remove(&uid);
        match last {
            Some(last)
                if !changed
                    && last.generation == generation
                    && last.at.elapsed() < REAPPLY_EVERY =>
            {
                (last.workload, toggle.await)
            }
            _ => {
                let desired = build::build(session, &ctx.shared.settings, &ctx.recording)?;
                let (deployment, answer) =
                    tokio::join!(apply_children(ctx, &namespace, &desired), toggle);
                let workload = workload_of(Some(&deployment?));
                lock(&ctx.applied).insert(
                    uid.clone(),
                    Applied {
                        generation,
                        at: Instant::now(),
                        workload: workload.clone(),
                    },
                );
                forget_deleted(ctx);
                (workload, answer)
            }
        }
    } else {
        // Existing children are kept: the recorder idles, its files stay readable,
        // and it is only asked for its status.
        lock(&ctx.applied).remove(&uid);
        let deployments: Api<Deployment> = Api::namespaced(ctx.shared.client.clone(), &namespace);
        let deployment = deployments
            .get_opt(&child)
            .await
            .map_err(|source| Error::Read {
                kind: "Deployment",
                name: child.clone(),
                source,
            })?;
        let workload = workload_of(deployment.as_ref());
        let answer = match workload {
            Workload::Missing => Err("no recorder".to_string()),
            _ => ctx
                .recorder_api
                .status(&name, &namespace)
                .await
                .map_err(|e| e.to_string()),
        };
        (workload, answer)
    };
    let observed = Observed {
        experiment,
        namespace: &namespace,
        experiment_found,
        workload,
        recorder: answer.as_ref().map_err(Clone::clone),
    };
    let status = status::status(
        enabled,
        generation,
        endpoint,
        &observed,
        &previous,
        Timestamp::now(),
    );
    if status != previous {
        write_status(ctx, session, &status).await?;
        announce(ctx, session, &previous, &status).await;
    }

    Ok(match &answer {
        _ if !experiment_found => Action::requeue(MISSING_EXPERIMENT_RECHECK),
        Ok(recorder) if !status::settled(enabled, recorder) => Action::requeue(SWITCHING_INTERVAL),
        _ => Action::requeue(STATUS_INTERVAL),
    })
}

/// Locks a map shared by reconciles; a reconcile that panicked holding it left it
/// consistent (each update is one insert or remove).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Drops what is remembered of sessions that no longer exist.
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

pub(crate) fn workload_of(deployment: Option<&Deployment>) -> Workload {
    let Some(deployment) = deployment else {
        return Workload::Missing;
    };
    let status = deployment.status.as_ref();
    if status
        .and_then(|s| s.available_replicas)
        .is_some_and(|n| n >= 1)
    {
        return Workload::Available;
    }
    let stuck = status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.type_ == "Progressing" && c.status == "False");
    match stuck {
        Some(c) => Workload::Stuck(
            c.message
                .clone()
                .or_else(|| c.reason.clone())
                .unwrap_or_else(|| "ProgressDeadlineExceeded".into()),
        ),
        None => Workload::Starting,
    }
}

/// Events for the transitions a user cares about: the experiment missing, the
/// recorder ready, recording started and paused.
async fn announce(
    ctx: &Context,
    session: &RecordingSession,
    previous: &RecordingSessionStatus,
    status: &RecordingSessionStatus,
) {
    let find = |s: &RecordingSessionStatus, type_: &str| {
        s.conditions
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    };
    for type_ in [status::EXPERIMENT_FOUND, status::READY] {
        let before = find(previous, type_).map(|(s, r, _)| (s, r));
        if let Some((value, reason, message)) = find(status, type_)
            && before != Some((value.clone(), reason.clone()))
        {
            let kind = if value == "True" {
                EventType::Normal
            } else {
                EventType::Warning
            };
            // The first "starting" is expected, not worth a warning.
            if reason != "RecorderStarting" {
                publish(ctx, session, kind, &reason, message).await;
            }
        }
    }
    if previous.state != status.state
        && let Some(state) = status.state
    {
        info!(?state, packets = status.packets, "recorder state changed");
        publish(
            ctx,
            session,
            EventType::Normal,
            &format!("{state:?}"),
            format!(
                "the recorder is {} ({} packets recorded so far)",
                format!("{state:?}").to_lowercase(),
                status.packets
            ),
        )
        .await;
    }
}

async fn publish(
    ctx: &Context,
    session: &RecordingSession,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    // Events are for people; failing to record one must not fail the reconcile.
    if let Err(error) = ctx
        .shared
        .recorder
        .publish(&event, &session.object_ref(&()))
        .await
    {
        warn!(%error, "cannot record an event");
    }
}

/// Server-side apply of the status, as the operator's field manager.
async fn write_status(
    ctx: &Context,
    session: &RecordingSession,
    status: &RecordingSessionStatus,
) -> Result<(), Error> {
    let name = session.name_any();
    let api: Api<RecordingSession> = Api::namespaced(
        ctx.shared.client.clone(),
        &session.namespace().unwrap_or_default(),
    );
    let patch = serde_json::json!({
        "apiVersion": RecordingSession::api_version(&()),
        "kind": RecordingSession::kind(&()),
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

/// Server-side apply of one child; returns it as stored, the error names it.
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

/// Applies the children in the order they depend on each other, a failed stage
/// stopping the rest: the configuration (and the isolation policy) first, then the
/// volume, the Service, and the Deployment that needs all three. The volume is only
/// created, never re-applied: a claim's spec is immutable once bound, and a changed
/// storage class setting must not fail every reconcile of existing sessions.
/// Returns the Deployment as stored (its status says whether the recorder is up).
async fn apply_children(
    ctx: &Context,
    namespace: &str,
    desired: &RecorderChildren,
) -> Result<Deployment, Error> {
    tokio::try_join!(apply(ctx, namespace, &desired.config), async {
        match &desired.network_policy {
            Some(policy) => apply(ctx, namespace, policy).await.map(|_| ()),
            None => Ok(()),
        }
    })?;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.shared.client.clone(), namespace);
    let claim = desired.volume.name_any();
    let existing = claims.get_opt(&claim).await.map_err(|source| Error::Read {
        kind: "PersistentVolumeClaim",
        name: claim.clone(),
        source,
    })?;
    if existing.is_none() {
        apply(ctx, namespace, &desired.volume).await?;
    }
    apply(ctx, namespace, &desired.service).await?;
    apply(ctx, namespace, &desired.deployment).await
}
