//! The LatencyExperiment controller: observe the children, decide the phase
//! (`lifecycle`), build the desired children (`children`), apply them with
//! server-side apply, read results from the trader, and write the status.
//! Triggered by spec changes (generation), by changes to owned children, and by
//! timers while a run is in progress.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{Controller, WatchStreamExt, predicates, reflector, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use ticklab_crd::{
    Endpoints, ExperimentResults, LatencyExperiment, LatencyExperimentStatus, Phase,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::children::{
    self, BuildError, ChildSettings, MANAGED_BY, MANAGED_BY_LABEL, MongoDb, Names, TlsMaterial,
};
use crate::lifecycle::{self, Observed, TraderProgress};
use crate::metrics::OperatorMetrics;
use crate::results::ResultsReader;

/// The field manager of everything the operator applies.
pub const FIELD_MANAGER: &str = "ticklab-operator";
const CONTROLLER: &str = "latencyexperiment";

/// Shared by every reconcile and the admin server.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: OperatorMetrics,
    pub settings: ChildSettings,
    pub results: ResultsReader,
}

impl Context {
    pub fn new(
        client: Client,
        metrics: OperatorMetrics,
        settings: ChildSettings,
        results: ResultsReader,
        instance: Option<String>,
    ) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            settings,
            results,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec breaks a rule the CRD's schema states; only a spec change helps.
    #[error("invalid experiment: {field}: {problem}")]
    InvalidSpec { field: String, problem: String },
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("cannot apply {kind} {name}: {source}")]
    Apply {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    #[error("cannot generate the exchange's TLS certificate: {0}")]
    Certificate(#[source] ticklab_exchange::tls::GenerateError),
}

/// Every value of [`Error::kind`]: the failure metric starts each at zero.
pub const ERROR_KINDS: [&str; 5] = ["invalid_spec", "build", "conflict", "api", "transport"];

impl Error {
    /// Low-cardinality label for the failure metric (one of [`ERROR_KINDS`]).
    pub fn kind(&self) -> &'static str {
        let kube_kind = |error: &kube::Error| match error {
            kube::Error::Api(status) if status.code == 409 => "conflict",
            kube::Error::Api(_) => "api",
            _ => "transport",
        };
        match self {
            Error::InvalidSpec { .. } => "invalid_spec",
            Error::Build(_) | Error::Certificate(_) => "build",
            Error::Apply { source, .. } => kube_kind(source),
            Error::Kube(error) => kube_kind(error),
        }
    }
}

/// Runs the controller until `shutdown` is cancelled. `namespace`: watch one
/// namespace, or all when None.
pub async fn run(ctx: Arc<Context>, namespace: Option<String>, shutdown: CancellationToken) {
    let client = ctx.client.clone();
    fn api<K>(client: &Client, namespace: &Option<String>) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
    {
        match namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let experiments: Api<LatencyExperiment> = api(&client, &namespace);
    // Reconcile on spec changes only: the operator's own status writes (results
    // every few seconds) must not trigger another reconcile.
    let (reader, writer) = reflector::store();
    let poller = tokio::spawn(poll_results(ctx.clone(), reader.clone(), shutdown.clone()));
    let trigger = watcher(experiments, watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default());
    // Only the operator's children: watching every Deployment in the cluster
    // would cost memory and wake-ups for nothing.
    let children = watcher::Config::default()
        .labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"))
        .any_semantic();
    let mut controller = Controller::for_stream(trigger, reader)
        .owns(api::<Deployment>(&client, &namespace), children.clone())
        .owns(api::<StatefulSet>(&client, &namespace), children.clone())
        .owns(api::<Service>(&client, &namespace), children.clone())
        .owns(api::<ConfigMap>(&client, &namespace), children.clone());
    // Watched only when the operator makes them: without isolation it needs no
    // permission on NetworkPolicies at all.
    if ctx.settings.network_policy.is_some() {
        controller = controller.owns(api::<NetworkPolicy>(&client, &namespace), children.clone());
    }
    controller
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                warn!(%error, "reconcile failed");
            }
        })
        .await;
    poller.abort();
}

/// Invalid objects wait for a change; transient errors retry with a delay.
pub fn error_policy(
    experiment: Arc<LatencyExperiment>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    ctx.metrics
        .failures
        .with_label_values(&[CONTROLLER, error.kind()])
        .inc();
    warn!(experiment = %experiment.name_any(), namespace = ?experiment.namespace(), %error, "reconcile error");
    match error {
        Error::InvalidSpec { .. } => Action::await_change(),
        _ => Action::requeue(Duration::from_secs(5)),
    }
}

#[tracing::instrument(skip_all, fields(experiment = %experiment.name_any(), namespace = ?experiment.namespace()))]
pub async fn reconcile(
    experiment: Arc<LatencyExperiment>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let started = Instant::now();
    ctx.metrics
        .reconciliations
        .with_label_values(&[CONTROLLER])
        .inc();
    let result = reconcile_inner(&experiment, &ctx).await;
    ctx.metrics
        .duration
        .with_label_values(&[CONTROLLER])
        .observe(started.elapsed().as_secs_f64());
    result
}

async fn reconcile_inner(experiment: &LatencyExperiment, ctx: &Context) -> Result<Action, Error> {
    if experiment.metadata.deletion_timestamp.is_some() {
        // Children go with it through their owner references.
        return Ok(Action::await_change());
    }
    let name = experiment.name_any();
    let namespace = experiment.namespace().unwrap_or_default();
    let previous = experiment.status.clone().unwrap_or_default();
    let now = Timestamp::now();

    if let Err((field, problem)) = ticklab_crd::validate_experiment(experiment) {
        let status = LatencyExperimentStatus {
            phase: Some(Phase::Failed),
            observed_generation: experiment.metadata.generation,
            conditions: vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                type_: "Ready".into(),
                status: "False".into(),
                reason: "InvalidSpec".into(),
                message: format!("{field}: {problem}"),
                last_transition_time: Time(now),
                observed_generation: experiment.metadata.generation,
            }],
            ..Default::default()
        };
        patch_status(ctx, experiment, &status).await?;
        publish(
            ctx,
            experiment,
            EventType::Warning,
            "InvalidSpec",
            format!("{field}: {problem}"),
        )
        .await;
        return Err(Error::InvalidSpec { field, problem });
    }

    let names = Names::of(&name);
    let mongodb_source = children::mongodb_for(&experiment.spec, &ctx.settings);
    let managed_mongodb = mongodb_source == MongoDb::Managed;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut observed = Observed::default();

    // Everything the decision needs, read in one round trip.
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
    let statefulsets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &namespace);
    let external = match mongodb_source {
        MongoDb::External { secret, named_by } => Some((secret, named_by)),
        MongoDb::None | MongoDb::Managed => None,
    };
    let tls_secret_name = children::tls_secret_name(experiment, &names).map(str::to_string);
    let (managed_secret, external_secret, tls_secret, exchange, trader, mongodb) = tokio::try_join!(
        async {
            match managed_mongodb {
                true => secrets.get_opt(&names.mongodb).await,
                false => Ok(None),
            }
        },
        async {
            match external {
                Some((external, _)) => secrets.get_opt(&external.name).await,
                None => Ok(None),
            }
        },
        async {
            match &tls_secret_name {
                Some(secret) => secrets.get_opt(secret).await,
                None => Ok(None),
            }
        },
        deployments.get_opt(&names.exchange),
        deployments.get_opt(&names.trader),
        async {
            match managed_mongodb {
                true => statefulsets.get_opt(&names.mongodb).await,
                false => Ok(None),
            }
        },
    )?;

    let mongodb_password = managed_secret
        .as_ref()
        .and_then(|secret| secret.data.as_ref())
        .and_then(|d| d.get("password"))
        .and_then(|p| String::from_utf8(p.0.clone()).ok())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| {
            if managed_mongodb {
                generate_password()
            } else {
                String::new()
            }
        });
    if let Some((external, named_by)) = external {
        match &external_secret {
            None => {
                observed.failure = Some((
                    "SecretNotFound".into(),
                    format!(
                        "{named_by}: Secret {:?} does not exist in namespace {namespace}",
                        external.name
                    ),
                ));
            }
            Some(secret) if !has_key(secret, &external.key) => {
                observed.failure = Some((
                    "SecretKeyNotFound".into(),
                    format!(
                        "{named_by}: Secret {:?} has no key {:?}",
                        external.name, external.key
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    let (tls_material, tls_problem) = tls_material(experiment, &names, tls_secret.as_ref())?;
    if observed.failure.is_none() {
        observed.failure = tls_problem;
    }
    if observed.failure.is_none()
        && let Some(replay) = &experiment.spec.exchange.replay
    {
        observed.failure = replay_source_problem(ctx, &namespace, replay).await?;
    }
    observed.exchange_available = deployment_available(exchange.as_ref());
    observed.trader_available = deployment_available(trader.as_ref());
    if observed.failure.is_none() {
        observed.failure = [("exchange", &exchange), ("trader", &trader)]
            .into_iter()
            .find_map(|(what, d)| deployment_stuck(what, d.as_ref()));
    }
    if managed_mongodb {
        let ready = mongodb
            .and_then(|s| s.status)
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0);
        observed.mongodb_ready = Some(ready >= 1);
    }

    // Once the run is due to end, the trader's account decides how it ends.
    let mut final_stats = None;
    if lifecycle::due_to_end(experiment, now) {
        observed.trader = match ctx.results.read_stats(&name, &namespace).await {
            Ok(stats) => {
                let progress = if stats.settled {
                    TraderProgress::Settled
                } else {
                    TraderProgress::Running
                };
                final_stats = Some(stats);
                progress
            }
            Err(error) => TraderProgress::Unreachable(error.to_string()),
        };
    }
    let decision = lifecycle::decide(experiment, &observed, now);

    // The results poller keeps results fresh while the run goes on; the final
    // figures, read above, are written as the run ends, before the trader is
    // scaled down.
    let same_run = previous.observed_generation == experiment.metadata.generation;
    if decision.completes_now {
        match &final_stats {
            Some(stats) => write_results(ctx, experiment, &stats.results, Write::Final).await?,
            None => warn!("final results not available; keeping the last ones read"),
        }
    }

    let desired = children::build_with_tls(
        experiment,
        &ctx.settings,
        decision.workload,
        &mongodb_password,
        &tls_material,
    )?;
    apply_children(ctx, &namespace, &desired).await?;

    // The part of the status this reconciler owns (results and SLOMet belong to
    // the results writer's field manager).
    let status = LatencyExperimentStatus {
        phase: Some(decision.phase),
        observed_generation: experiment.metadata.generation,
        conditions: lifecycle::conditions(
            &previous,
            &decision,
            &observed,
            experiment.metadata.generation,
            now,
        ),
        started_at: decision.started_at.map(Time),
        endpoints: Some(Endpoints {
            trader: Some(format!(
                "http://{}.{namespace}.svc:{}",
                names.trader,
                children::ports::TRADER_API
            )),
            exchange: Some(format!(
                "{}://{}.{namespace}.svc:{}",
                if experiment.spec.tls.is_some() {
                    "https"
                } else {
                    "http"
                },
                names.exchange,
                children::ports::ORDER_HTTP
            )),
        }),
        results: None,
    };
    let previous_owned = LatencyExperimentStatus {
        conditions: previous
            .conditions
            .iter()
            .filter(|c| lifecycle::RECONCILER_CONDITIONS.contains(&c.type_.as_str()))
            .cloned()
            .collect(),
        results: None,
        ..previous.clone()
    };
    if status != previous_owned {
        patch_status(ctx, experiment, &status).await?;
    }

    let previous_phase = if same_run { previous.phase } else { None };
    if previous_phase != Some(decision.phase) {
        ctx.metrics
            .phase_transitions
            .with_label_values(&[&crate::metrics::phase_label(decision.phase)])
            .inc();
        let (kind, note) = match decision.phase {
            Phase::Pending => (EventType::Normal, "children created; waiting for the workloads to become available".to_string()),
            Phase::Running => (EventType::Normal, "exchange and trader are available; the run has started".to_string()),
            Phase::Completed => match &decision.completion {
                Some((reason, message)) if *reason != lifecycle::RESULTS_FINAL => (
                    EventType::Warning,
                    format!("{message}; workloads scaled to zero"),
                ),
                _ => (
                    EventType::Normal,
                    "the run ended and its results are final; workloads scaled to zero, results kept in status".to_string(),
                ),
            },
            Phase::Failed => (
                EventType::Warning,
                observed.failure.as_ref().map_or_else(|| "failed".to_string(), |(_, m)| m.clone()),
            ),
        };
        publish(
            ctx,
            experiment,
            kind,
            &format!("{:?}", decision.phase),
            note,
        )
        .await;
        info!(phase = ?decision.phase, "phase changed");
    }
    Ok(Action::requeue(decision.requeue))
}

/// Field manager of `status.results` and the `SLOMet` condition, apart from the
/// reconciler's, so neither writer's apply removes the other's fields.
pub const RESULTS_FIELD_MANAGER: &str = "ticklab-operator-results";

/// Writes results (and the SLO verdict as the `SLOMet` condition) into the status.
/// How results are written: the reconciler's final ones unconditionally, the
/// poller's only onto the version of the experiment it read (so a poll that raced
/// with the completion never replaces the final results).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Write {
    Final,
    IfUnchanged,
}

async fn write_results(
    ctx: &Context,
    experiment: &LatencyExperiment,
    results: &ExperimentResults,
    write: Write,
) -> Result<(), kube::Error> {
    let mut results = results.clone();
    if experiment.spec.exchange.replay.is_some() && results.replay.is_none() {
        // A replay's fidelity and the recording's latency, beside this run's, from
        // the replaying exchange. Every write carries them (the poller's too, or it
        // would drop them); when the exchange cannot be read, the last ones stand.
        results.replay = match ctx
            .results
            .read_replay(
                &experiment.name_any(),
                &experiment.namespace().unwrap_or_default(),
            )
            .await
        {
            Ok(report) => Some(report.results()),
            Err(why) => {
                debug!(%why, "the replay's report is not available");
                experiment
                    .status
                    .as_ref()
                    .and_then(|s| s.results.as_ref())
                    .and_then(|r| r.replay.clone())
            }
        };
    }
    let results = &results;
    let previous = experiment
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let conditions: Vec<_> = results
        .slo_verdict
        .map(|verdict| {
            lifecycle::slo_condition(
                previous,
                verdict,
                experiment.metadata.generation,
                Timestamp::now(),
            )
        })
        .into_iter()
        .collect();
    let precondition = match write {
        Write::Final => None,
        Write::IfUnchanged => experiment.resource_version(),
    };
    apply_status_at(
        ctx,
        experiment,
        RESULTS_FIELD_MANAGER,
        &serde_json::json!({"results": results, "conditions": conditions}),
        precondition,
    )
    .await
}

/// Every few seconds, reads the trader's results of each Running experiment and
/// writes them when they changed. Kept out of the reconciler: refreshing figures
/// is not reconciling, and re-applying every child of every experiment every few
/// seconds would load the API server for nothing.
async fn poll_results(
    ctx: Arc<Context>,
    store: reflector::Store<LatencyExperiment>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(lifecycle::RESULTS_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let experiments = store.state();
        count_phases(&ctx.metrics, &experiments);
        let running: Vec<Arc<LatencyExperiment>> = experiments
            .into_iter()
            .filter(|e| e.status.as_ref().and_then(|s| s.phase) == Some(Phase::Running))
            .collect();
        futures::stream::iter(running)
            .for_each_concurrent(16, |experiment| {
                let ctx = ctx.clone();
                async move {
                    let name = experiment.name_any();
                    let namespace = experiment.namespace().unwrap_or_default();
                    let results = match ctx.results.read(&name, &namespace).await {
                        Ok(results) => results,
                        Err(error) => {
                            debug!(%name, %namespace, %error, "results not available");
                            return;
                        }
                    };
                    if experiment.status.as_ref().and_then(|s| s.results.as_ref()) == Some(&results)
                    {
                        return;
                    }
                    match write_results(&ctx, &experiment, &results, Write::IfUnchanged).await {
                        Ok(()) => {}
                        // The experiment changed since the store saw it (it may have
                        // completed, with final results): the next tick decides.
                        Err(kube::Error::Api(e)) if e.code == 409 => {
                            debug!(%name, %namespace, "experiment changed; results not written");
                        }
                        Err(error) => warn!(%name, %namespace, %error, "cannot write results"),
                    }
                }
            })
            .await;
    }
}

/// Sets `ticklab_operator_experiments{phase}` from the watched experiments.
fn count_phases(metrics: &OperatorMetrics, experiments: &[Arc<LatencyExperiment>]) {
    for phase in crate::metrics::PHASES {
        let count = experiments
            .iter()
            .filter(|e| {
                e.status
                    .as_ref()
                    .and_then(|s| s.phase)
                    .unwrap_or(Phase::Pending)
                    == phase
            })
            .count();
        metrics
            .experiments
            .with_label_values(&[&crate::metrics::phase_label(phase)])
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
}

/// Why a replay cannot start, if it cannot: its RecordingSession or file is missing.
/// The exchange downloads the file from the session's recorder at start.
async fn replay_source_problem(
    ctx: &Context,
    namespace: &str,
    replay: &ticklab_crd::ReplaySpec,
) -> Result<Option<(String, String)>, Error> {
    let sessions: Api<ticklab_crd::RecordingSession> =
        Api::namespaced(ctx.client.clone(), namespace);
    let Some(session) = sessions.get_opt(&replay.recording).await? else {
        return Ok(Some((
            "ReplaySourceNotFound".into(),
            format!(
                "exchange.replay.recording: RecordingSession {:?} does not exist in namespace {namespace}",
                replay.recording
            ),
        )));
    };
    let files: Vec<String> = session
        .status
        .map(|s| s.files.into_iter().map(|f| f.name).collect())
        .unwrap_or_default();
    if files.contains(&replay.file) {
        return Ok(None);
    }
    Ok(Some((
        "ReplaySourceNotFound".into(),
        format!(
            "exchange.replay.file: RecordingSession {:?} has no file {:?} (it lists {})",
            replay.recording,
            replay.file,
            if files.is_empty() {
                "none yet".to_string()
            } else {
                files.join(", ")
            }
        ),
    )))
}

/// What the children need of the experiment's TLS Secret, and what keeps the run
/// from starting, if anything. A named Secret must exist with `tls.crt` and
/// `tls.key` (a missing one is a condition naming the Secret and key, as for an
/// external MongoDB's Secret); the trader trusts its `ca.crt` when it has one. With
/// no Secret named, the generated pair is read back from `NAME-tls` when that holds
/// one, and generated (once) otherwise.
#[allow(clippy::type_complexity)]
pub fn tls_material(
    experiment: &LatencyExperiment,
    names: &Names,
    secret: Option<&Secret>,
) -> Result<(TlsMaterial, Option<(String, String)>), Error> {
    let Some(tls) = &experiment.spec.tls else {
        return Ok((TlsMaterial::default(), None));
    };
    let namespace = experiment.namespace().unwrap_or_default();
    if let Some(named) = &tls.secret_name {
        let problem = match secret {
            None => Some((
                "SecretNotFound".to_string(),
                format!(
                    "spec.tls.secretName: Secret {named:?} does not exist in namespace {namespace}"
                ),
            )),
            Some(secret) => [children::TLS_CERT_KEY, children::TLS_KEY_KEY]
                .into_iter()
                .find(|key| !has_key(secret, key))
                .map(|key| {
                    (
                        "SecretKeyNotFound".to_string(),
                        format!("spec.tls.secretName: Secret {named:?} has no key {key:?}"),
                    )
                }),
        };
        let trust_key = if secret.is_some_and(|s| has_key(s, children::TLS_CA_KEY)) {
            children::TLS_CA_KEY
        } else {
            children::TLS_CERT_KEY
        };
        return Ok((
            TlsMaterial {
                trust_key,
                generated: None,
            },
            problem,
        ));
    }
    let text = |key: &str| {
        secret
            .and_then(|s| s.data.as_ref())
            .and_then(|d| d.get(key))
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
            .filter(|v| !v.is_empty())
    };
    let pair = match (text(children::TLS_CERT_KEY), text(children::TLS_KEY_KEY)) {
        (Some(cert_pem), Some(key_pem)) => {
            ticklab_exchange::tls::CertificatePair { cert_pem, key_pem }
        }
        _ => {
            info!(secret = %names.tls, "generating the exchange's self-signed TLS certificate");
            ticklab_exchange::tls::self_signed(&children::tls_dns_names(
                &experiment.name_any(),
                &namespace,
            ))
            .map_err(Error::Certificate)?
        }
    };
    Ok((
        TlsMaterial {
            trust_key: children::TLS_CERT_KEY,
            generated: Some(pair),
        },
        None,
    ))
}

fn generate_password() -> String {
    use rand::Rng;
    use rand::distr::Alphanumeric;
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

fn has_key(secret: &Secret, key: &str) -> bool {
    secret.data.as_ref().is_some_and(|d| d.contains_key(key))
        || secret
            .string_data
            .as_ref()
            .is_some_and(|d| d.contains_key(key))
}

fn deployment_available(deployment: Option<&Deployment>) -> bool {
    deployment
        .and_then(|d| d.status.as_ref())
        .and_then(|s| s.available_replicas)
        .is_some_and(|n| n >= 1)
}

/// A Deployment past its progress deadline will not become available by waiting.
fn deployment_stuck(what: &str, deployment: Option<&Deployment>) -> Option<(String, String)> {
    let conditions = deployment?.status.as_ref()?.conditions.as_ref()?;
    conditions
        .iter()
        .find(|c| c.type_ == "Progressing" && c.status == "False")
        .map(|c| {
            (
                c.reason
                    .clone()
                    .unwrap_or_else(|| "ProgressDeadlineExceeded".into()),
                format!("{what}: {}", c.message.clone().unwrap_or_default()),
            )
        })
}

/// What the operator applies: a namespaced Kubernetes object it can serialize
/// (shared by the experiment and recording controllers).
pub(crate) trait Child:
    Resource<Scope = NamespaceResourceScope, DynamicType = ()>
    + k8s_openapi::Resource
    + Clone
    + Serialize
    + DeserializeOwned
    + std::fmt::Debug
{
}

impl<K> Child for K where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + k8s_openapi::Resource
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug
{
}

/// Server-side apply of one object as the operator's field manager; returns it as
/// stored. Shared by the experiment and recording controllers.
pub(crate) async fn server_side_apply<K: Child>(
    client: &Client,
    namespace: &str,
    object: &K,
) -> Result<K, kube::Error> {
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    api.patch(
        &object.meta().name.clone().unwrap_or_default(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
}

/// Server-side apply of one child; the error names it.
async fn apply<K: Child>(ctx: &Context, namespace: &str, object: &K) -> Result<(), Error> {
    let name = object.meta().name.clone().unwrap_or_default();
    server_side_apply(&ctx.client, namespace, object)
        .await
        .map(|_| ())
        .map_err(|source| Error::Apply {
            kind: <K as k8s_openapi::Resource>::KIND,
            name,
            source,
        })
}

/// Applies the children in the order they depend on each other, each stage at once:
/// configuration (ConfigMap, MongoDB credentials, the generated TLS certificate) and
/// the isolation policy first,
/// then the Services (a workload resolves its peers' names as it starts: the
/// exchange's UDP feed target is the trader's Service), then MongoDB, then the
/// exchange and trader. A failed stage stops the rest, so no workload ever starts
/// without its configuration.
async fn apply_children(
    ctx: &Context,
    namespace: &str,
    desired: &children::Children,
) -> Result<(), Error> {
    let mongodb = desired.mongodb.as_ref();
    tokio::try_join!(
        apply(ctx, namespace, &desired.config),
        apply_if_wanted(ctx, namespace, desired.tls_secret.as_ref()),
        apply_if_wanted(ctx, namespace, mongodb.map(|m| &m.secret)),
        apply_if_wanted(ctx, namespace, desired.network_policy.as_ref()),
    )?;
    tokio::try_join!(
        apply(ctx, namespace, &desired.exchange_service),
        apply(ctx, namespace, &desired.trader_service),
        apply_if_wanted(ctx, namespace, mongodb.map(|m| &m.service)),
    )?;
    apply_if_wanted(ctx, namespace, mongodb.map(|m| &m.statefulset)).await?;
    tokio::try_join!(
        apply(ctx, namespace, &desired.exchange),
        apply(ctx, namespace, &desired.trader),
    )?;
    Ok(())
}

/// [`apply`] for a child the spec may not want (managed MongoDB, isolation).
async fn apply_if_wanted<K: Child>(
    ctx: &Context,
    namespace: &str,
    object: Option<&K>,
) -> Result<(), Error> {
    match object {
        Some(object) => apply(ctx, namespace, object).await,
        None => Ok(()),
    }
}

async fn patch_status(
    ctx: &Context,
    experiment: &LatencyExperiment,
    status: &LatencyExperimentStatus,
) -> Result<(), kube::Error> {
    apply_status(ctx, experiment, FIELD_MANAGER, status).await
}

/// Server-side apply of `status` as `field_manager`: the reconciler and the results
/// writer each own their part of the status.
async fn apply_status(
    ctx: &Context,
    experiment: &LatencyExperiment,
    field_manager: &str,
    status: &impl Serialize,
) -> Result<(), kube::Error> {
    apply_status_at(ctx, experiment, field_manager, status, None).await
}

/// Server-side apply of status fields; with `resource_version`, only onto that
/// version of the object (409 Conflict otherwise).
async fn apply_status_at(
    ctx: &Context,
    experiment: &LatencyExperiment,
    field_manager: &str,
    status: &impl Serialize,
    resource_version: Option<String>,
) -> Result<(), kube::Error> {
    let api: Api<LatencyExperiment> = Api::namespaced(
        ctx.client.clone(),
        &experiment.namespace().unwrap_or_default(),
    );
    let mut patch = serde_json::json!({
        "apiVersion": LatencyExperiment::api_version(&()),
        "kind": LatencyExperiment::kind(&()),
        "status": status,
    });
    if let Some(version) = resource_version {
        patch["metadata"] = serde_json::json!({ "resourceVersion": version });
    }
    api.patch_status(
        &experiment.name_any(),
        &PatchParams::apply(field_manager).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map(|_| ())
}

async fn publish(
    ctx: &Context,
    experiment: &LatencyExperiment,
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
        .recorder
        .publish(&event, &experiment.object_ref(&()))
        .await
    {
        warn!(%error, "cannot record an event");
    }
}
