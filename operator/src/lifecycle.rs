//! The experiment's lifecycle as a pure function: from the previous status, what the
//! cluster reports about the children, and the clock, decide the phase, the
//! conditions, whether the workloads should run, and when to look again.
//! Pending -> Running when every workload is available; Running -> Completed once
//! `spec.duration` has elapsed since the run started and the trader says the feed
//! ended and nothing is missing (the exchange publishes for exactly `spec.duration`
//! from the trader's subscription, so its results then cover the whole run), or,
//! failing that, when the trader cannot be read or a grace period has passed, with a
//! reason that says the results may be incomplete. A spec change starts a new run.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use ticklab_crd::{LatencyExperiment, LatencyExperimentStatus, Phase, SloVerdict};

use crate::children::Workload;

/// What the cluster says about the experiment's children.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    pub exchange_available: bool,
    pub trader_available: bool,
    /// None when the experiment uses no operator-managed MongoDB.
    pub mongodb_ready: Option<bool>,
    /// A reason the run cannot succeed (a Deployment past its progress deadline, a
    /// missing Secret), as (reason, message).
    pub failure: Option<(String, String)>,
    /// The trader's account of the run: read once `spec.duration` has elapsed.
    pub trader: TraderProgress,
}

/// Whether the trader's results are final.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum TraderProgress {
    /// Not asked (the run is not due to end).
    #[default]
    NotRead,
    /// Still receiving the feed or recovering gaps.
    Running,
    /// The feed ended and nothing is missing: the results are final.
    Settled,
    /// `/stats` could not be read, and why.
    Unreachable(String),
}

impl Observed {
    fn all_available(&self) -> bool {
        self.exchange_available && self.trader_available && self.mongodb_ready.unwrap_or(true)
    }
}

/// What to do and report.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub phase: Phase,
    pub workload: Workload,
    /// When the current run started (first seen Running for this generation).
    pub started_at: Option<Timestamp>,
    /// True when this reconcile ends the run: read the final results before scaling
    /// the workloads down.
    pub completes_now: bool,
    /// Why the run completed, as (reason, message), when it completes now.
    pub completion: Option<(&'static str, String)>,
    /// Look again after this long even without a change.
    pub requeue: Duration,
}

/// How often the results poller reads each running experiment's trader.
pub const RESULTS_INTERVAL: Duration = Duration::from_secs(5);
/// How long past `spec.duration` the run waits for the trader to report its results
/// final: the feed ended, its gaps recovered, and its MongoDB write queue drained
/// (the feed starts at the trader's subscription, a little before the operator sees
/// both workloads available, so the feed has usually ended; a database slower than
/// the feed can take a while to catch up on the buffered trades).
pub const SETTLE_GRACE: Duration = Duration::from_secs(90);
/// The `Completed` reason of a run whose results the trader called final.
pub const RESULTS_FINAL: &str = "FeedEnded";
/// How often the trader is asked while the run waits for it to settle.
pub const SETTLE_POLL: Duration = Duration::from_secs(1);
/// A slow safety net for phases that only change through watched events.
pub const IDLE_RECHECK: Duration = Duration::from_secs(300);

/// Decides the next phase.
pub fn decide(experiment: &LatencyExperiment, observed: &Observed, now: Timestamp) -> Decision {
    let status = experiment.status.clone().unwrap_or_default();
    let same_run = status.observed_generation == experiment.metadata.generation;
    let previous = if same_run { status.phase } else { None };
    let started_at = if same_run {
        status.started_at.as_ref().map(|t| t.0)
    } else {
        None
    };
    let duration = experiment.spec.run_duration();

    let decision = |phase, workload, started_at, requeue| Decision {
        phase,
        workload,
        started_at,
        completes_now: false,
        completion: None,
        requeue,
    };
    if previous == Some(Phase::Completed) {
        return decision(
            Phase::Completed,
            Workload::Stopped,
            started_at,
            IDLE_RECHECK,
        );
    }
    if observed.failure.is_some() {
        // A missing Secret may be created, a stuck rollout may recover.
        return decision(
            Phase::Failed,
            Workload::Running,
            started_at,
            Duration::from_secs(30),
        );
    }
    let running = observed.all_available() || previous == Some(Phase::Running);
    if !running {
        return decision(Phase::Pending, Workload::Running, None, IDLE_RECHECK);
    }
    let started = started_at.unwrap_or(now);
    let Some(duration) = duration else {
        // A one-pass replay ends with its recording: complete once the trader has
        // it all. Anything else without a duration runs until deleted.
        if ends_with_its_recording(experiment) && observed.trader == TraderProgress::Settled {
            return Decision {
                phase: Phase::Completed,
                workload: Workload::Stopped,
                started_at: Some(started),
                completes_now: true,
                completion: Some((
                    RESULTS_FINAL,
                    "the recording was replayed to its end and the trader received or \
                     recovered everything it could: the results are final"
                        .to_string(),
                )),
                requeue: IDLE_RECHECK,
            };
        }
        let requeue = if ends_with_its_recording(experiment) {
            SETTLE_POLL
        } else {
            IDLE_RECHECK
        };
        return decision(Phase::Running, Workload::Running, Some(started), requeue);
    };
    let elapsed = Duration::try_from(now.duration_since(started)).unwrap_or_default();
    if elapsed < duration {
        // Wake up when the run is due to end; results are polled separately.
        return decision(
            Phase::Running,
            Workload::Running,
            Some(started),
            IDLE_RECHECK.min(duration - elapsed),
        );
    }
    let completion = match &observed.trader {
        TraderProgress::Settled => Some((
            RESULTS_FINAL,
            "the exchange published for spec.duration and the trader received or recovered \
             everything it could: the results are final"
                .to_string(),
        )),
        TraderProgress::Unreachable(why) => Some((
            "ResultsUnavailable",
            format!(
                "spec.duration has elapsed but the trader's results cannot be read ({why}); \
                 the status keeps the last results read, which may be incomplete"
            ),
        )),
        TraderProgress::Running | TraderProgress::NotRead if elapsed >= duration + SETTLE_GRACE => {
            Some((
                "SettleTimeout",
                format!(
                    "{}s after spec.duration the trader had still not received the end of \
                     the feed, recovered every gap and written every trade to MongoDB; the \
                     results are as they stood then",
                    SETTLE_GRACE.as_secs()
                ),
            ))
        }
        TraderProgress::Running | TraderProgress::NotRead => None,
    };
    match completion {
        Some(completion) => Decision {
            phase: Phase::Completed,
            workload: Workload::Stopped,
            started_at: Some(started),
            completes_now: true,
            completion: Some(completion),
            requeue: IDLE_RECHECK,
        },
        None => decision(
            Phase::Running,
            Workload::Running,
            Some(started),
            SETTLE_POLL,
        ),
    }
}

/// Whether the run is due to end: the trader's account decides how (read it first).
pub fn due_to_end(experiment: &LatencyExperiment, now: Timestamp) -> bool {
    let Some(status) = &experiment.status else {
        return false;
    };
    if status.observed_generation != experiment.metadata.generation
        || status.phase != Some(Phase::Running)
    {
        return false;
    }
    match (experiment.spec.run_duration(), &status.started_at) {
        (Some(duration), Some(started)) => {
            Duration::try_from(now.duration_since(started.0)).unwrap_or_default() >= duration
        }
        // Its end is the recording's: the trader's account says when it came.
        (None, Some(_)) => ends_with_its_recording(experiment),
        _ => false,
    }
}

/// A replay without a duration that is not looped ends when its recording does.
fn ends_with_its_recording(experiment: &LatencyExperiment) -> bool {
    experiment.spec.duration.is_none()
        && experiment
            .spec
            .exchange
            .replay
            .as_ref()
            .is_some_and(|r| !r.looped)
}

/// The condition types the reconciler owns; `SLOMet` belongs to the results poller.
pub const RECONCILER_CONDITIONS: [&str; 2] = ["Ready", "Completed"];

fn condition(
    previous: &[Condition],
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let since = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| Time(now), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message,
        last_transition_time: since,
        observed_generation: generation,
    }
}

/// The `SLOMet` condition for a results verdict.
pub fn slo_condition(
    previous: &[Condition],
    verdict: SloVerdict,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let met = verdict == SloVerdict::Met;
    condition(
        previous,
        "SLOMet",
        met,
        if met { "WithinBounds" } else { "Breached" },
        if met {
            "results are within spec.slo".to_string()
        } else {
            "results break spec.slo".to_string()
        },
        generation,
        now,
    )
}

/// The reconciler's conditions after `decision`, keeping each condition's
/// lastTransitionTime while its status does not change.
pub fn conditions(
    previous: &LatencyExperimentStatus,
    decision: &Decision,
    observed: &Observed,
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    let mut out = Vec::new();
    let mut push = |type_: &str, ok: bool, reason: &str, message: String| {
        out.push(condition(
            &previous.conditions,
            type_,
            ok,
            reason,
            message,
            generation,
            now,
        ));
    };
    let (ready, reason, message) = match (&observed.failure, decision.phase) {
        (Some((reason, message)), _) => (false, reason.as_str(), message.clone()),
        (None, Phase::Completed) => (
            false,
            "Completed",
            "the run ended; exchange and trader are scaled to zero".to_string(),
        ),
        (None, _) if observed.all_available() => (
            true,
            "WorkloadsAvailable",
            "exchange and trader are available".to_string(),
        ),
        (None, _) => (false, "WorkloadsStarting", waiting_for(observed)),
    };
    push("Ready", ready, reason, message);
    let previous_completed = previous
        .conditions
        .iter()
        .find(|c| c.type_ == "Completed" && c.status == "True");
    match (&decision.completion, decision.phase, previous_completed) {
        (Some((reason, message)), _, _) => push("Completed", true, reason, message.clone()),
        // Completed before: keep saying why.
        (None, Phase::Completed, Some(before)) => out.push(before.clone()),
        (None, Phase::Completed, None) => push(
            "Completed",
            true,
            "DurationElapsed",
            "spec.duration has elapsed".to_string(),
        ),
        (None, _, _) => push(
            "Completed",
            false,
            "Running",
            "the run has not ended".to_string(),
        ),
    }
    out
}

fn waiting_for(observed: &Observed) -> String {
    let mut waiting = Vec::new();
    if !observed.exchange_available {
        waiting.push("exchange");
    }
    if !observed.trader_available {
        waiting.push("trader");
    }
    if observed.mongodb_ready == Some(false) {
        waiting.push("mongodb");
    }
    format!("waiting for {} to become available", waiting.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn experiment(yaml_spec: &str) -> LatencyExperiment {
        let yaml = format!(
            "apiVersion: ticklab.dev/v1alpha1\nkind: LatencyExperiment\nmetadata: {{name: e, namespace: n, generation: 1}}\nspec:\n{yaml_spec}"
        );
        serde_yaml::from_str(&yaml).unwrap()
    }

    fn available() -> Observed {
        Observed {
            exchange_available: true,
            trader_available: true,
            mongodb_ready: Some(true),
            failure: None,
            trader: TraderProgress::NotRead,
        }
    }

    /// The test experiment, Running since `started`.
    fn running_since(started: Timestamp) -> LatencyExperiment {
        let mut e = experiment(SPEC);
        e.status = Some(LatencyExperimentStatus {
            phase: Some(Phase::Running),
            observed_generation: Some(1),
            started_at: Some(Time(started)),
            ..Default::default()
        });
        e
    }

    const SPEC: &str = "  exchange: {symbols: [EURUSD], ratePerSecond: 1000}\n  duration: 10s\n";

    fn t(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    #[test]
    fn pending_until_every_workload_is_available() {
        let e = experiment(SPEC);
        let mut observed = available();
        observed.mongodb_ready = Some(false);
        let d = decide(&e, &observed, t(0));
        assert_eq!(d.phase, Phase::Pending);
        assert_eq!(d.workload, Workload::Running);
        let c = conditions(&Default::default(), &d, &observed, Some(1), t(0));
        assert!(c[0].message.contains("mongodb"), "{c:?}");
        let d = decide(&e, &available(), t(0));
        assert_eq!((d.phase, d.started_at), (Phase::Running, Some(t(0))));
    }

    #[test]
    fn a_one_pass_replay_completes_when_its_recording_has_arrived_a_looped_one_never() {
        for (looped, completes) in [(false, true), (true, false)] {
            let mut e = experiment(&format!(
                "  exchange: {{replay: {{recording: r, file: f.pcap, loop: {looped}}}}}\n"
            ));
            e.status = Some(LatencyExperimentStatus {
                phase: Some(Phase::Running),
                observed_generation: Some(1),
                started_at: Some(Time(t(0))),
                ..Default::default()
            });
            assert_eq!(due_to_end(&e, t(1)), completes);
            let d = decide(&e, &available(), t(1));
            assert_eq!(d.phase, Phase::Running);
            let mut settled = available();
            settled.trader = TraderProgress::Settled;
            let d = decide(&e, &settled, t(1000));
            let want = if completes {
                Phase::Completed
            } else {
                Phase::Running
            };
            assert_eq!(d.phase, want, "looped: {looped}");
        }
    }

    #[test]
    fn completes_when_duration_elapsed_and_stays_completed() {
        let mut e = running_since(t(0));
        let d = decide(&e, &available(), t(4));
        assert_eq!(d.phase, Phase::Running);
        assert_eq!(
            d.requeue,
            Duration::from_secs(6),
            "wakes up when the run ends"
        );
        let d = decide(&e, &available(), t(8));
        assert_eq!(
            d.requeue,
            Duration::from_secs(2),
            "wakes up when the run ends"
        );
        assert!(!due_to_end(&e, t(9)));
        assert!(due_to_end(&e, t(10)));
        let mut settled = available();
        settled.trader = TraderProgress::Settled;
        let d = decide(&e, &settled, t(10));
        assert_eq!(d.phase, Phase::Completed);
        assert_eq!(d.workload, Workload::Stopped);
        assert!(d.completes_now);
        let c = conditions(&Default::default(), &d, &settled, Some(1), t(10));
        assert_eq!(
            (c[1].status.as_str(), c[1].reason.as_str()),
            ("True", "FeedEnded")
        );

        e.status.as_mut().unwrap().phase = Some(Phase::Completed);
        let stopped = Observed::default();
        let d = decide(&e, &stopped, t(11));
        assert_eq!(
            (d.phase, d.workload, d.completes_now),
            (Phase::Completed, Workload::Stopped, false)
        );
    }

    #[test]
    fn waits_for_the_trader_to_settle_within_a_grace_period() {
        let mut e = running_since(t(0));
        let mut recovering = available();
        recovering.trader = TraderProgress::Running;
        let d = decide(&e, &recovering, t(12));
        assert_eq!((d.phase, d.requeue), (Phase::Running, SETTLE_POLL));
        let grace = i64::try_from(SETTLE_GRACE.as_secs()).unwrap();
        let d = decide(&e, &recovering, t(10 + grace));
        assert_eq!(d.phase, Phase::Completed);
        assert_eq!(d.completion.as_ref().unwrap().0, "SettleTimeout");

        // Unreachable: nothing to wait for; complete, and say the results may be
        // incomplete.
        let mut unreachable = available();
        unreachable.trader = TraderProgress::Unreachable("connection refused".into());
        let d = decide(&e, &unreachable, t(10));
        assert_eq!(d.phase, Phase::Completed);
        let (reason, message) = d.completion.clone().unwrap();
        assert_eq!(reason, "ResultsUnavailable");
        assert!(message.contains("connection refused"), "{message}");

        // Once completed, the reason stays.
        let first = conditions(&Default::default(), &d, &unreachable, Some(1), t(10));
        e.status.as_mut().unwrap().phase = Some(Phase::Completed);
        e.status.as_mut().unwrap().conditions = first.clone();
        let later = decide(&e, &Observed::default(), t(100));
        let again = conditions(
            e.status.as_ref().unwrap(),
            &later,
            &Observed::default(),
            Some(1),
            t(100),
        );
        assert_eq!(again[1], first[1]);
    }

    #[test]
    fn a_spec_change_starts_a_new_run() {
        let mut e = experiment(SPEC);
        e.status = Some(LatencyExperimentStatus {
            phase: Some(Phase::Completed),
            observed_generation: Some(1),
            started_at: Some(Time(t(0))),
            ..Default::default()
        });
        e.metadata.generation = Some(2);
        let d = decide(&e, &Observed::default(), t(100));
        assert_eq!(
            (d.phase, d.workload, d.started_at),
            (Phase::Pending, Workload::Running, None)
        );
    }

    #[test]
    fn a_failure_fails_the_run_and_names_the_reason() {
        let e = experiment(SPEC);
        let mut observed = available();
        observed.failure = Some(("SecretNotFound".into(), "secret db not found".into()));
        let d = decide(&e, &observed, t(0));
        assert_eq!(d.phase, Phase::Failed);
        let c = conditions(&Default::default(), &d, &observed, Some(1), t(0));
        assert_eq!(
            (c[0].reason.as_str(), c[0].status.as_str()),
            ("SecretNotFound", "False")
        );
    }

    #[test]
    fn transition_times_survive_while_a_condition_holds() {
        let e = experiment(SPEC);
        let d = decide(&e, &available(), t(0));
        let mut first = conditions(&Default::default(), &d, &available(), Some(1), t(0));
        first.push(slo_condition(&[], SloVerdict::Met, Some(1), t(0)));
        let previous = LatencyExperimentStatus {
            conditions: first.clone(),
            ..Default::default()
        };
        let again = conditions(&previous, &d, &available(), Some(1), t(50));
        assert_eq!(again[0].last_transition_time, first[0].last_transition_time);
        let met = slo_condition(&previous.conditions, SloVerdict::Met, Some(1), t(50));
        assert_eq!(met.last_transition_time.0, t(0));
        let slo = slo_condition(&previous.conditions, SloVerdict::Breached, Some(1), t(50));
        assert_eq!(
            (slo.status.as_str(), slo.last_transition_time.0),
            ("False", t(50))
        );
    }

    #[test]
    fn without_duration_it_runs_until_deleted() {
        let e = experiment("  exchange: {symbols: [EURUSD], ratePerSecond: 1000}\n");
        let d = decide(&e, &available(), t(1_000_000));
        assert_eq!(d.phase, Phase::Running);
    }
}
