//! The experiment's lifecycle as a pure function: from the previous status, what the
//! cluster reports about the children, and the clock, decide the phase, the
//! conditions, whether the workloads should run, and when to look again.
//! Pending -> Running when every workload is available; Running -> Completed when
//! `spec.duration` has elapsed since the run started; a spec change starts a new run.

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
    /// Look again after this long even without a change.
    pub requeue: Duration,
}

/// How often the results poller reads each running experiment's trader.
pub const RESULTS_INTERVAL: Duration = Duration::from_secs(5);
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

    if previous == Some(Phase::Completed) {
        return Decision {
            phase: Phase::Completed,
            workload: Workload::Stopped,
            started_at,
            completes_now: false,
            requeue: IDLE_RECHECK,
        };
    }
    if observed.failure.is_some() {
        return Decision {
            phase: Phase::Failed,
            workload: Workload::Running,
            started_at,
            completes_now: false,
            // A missing Secret may be created, a stuck rollout may recover.
            requeue: Duration::from_secs(30),
        };
    }
    let running = observed.all_available() || previous == Some(Phase::Running);
    if !running {
        return Decision {
            phase: Phase::Pending,
            workload: Workload::Running,
            started_at: None,
            completes_now: false,
            requeue: IDLE_RECHECK,
        };
    }
    let started = started_at.unwrap_or(now);
    if let Some(duration) = duration {
        let elapsed = now.duration_since(started);
        let elapsed = Duration::try_from(elapsed).unwrap_or_default();
        if elapsed >= duration {
            return Decision {
                phase: Phase::Completed,
                workload: Workload::Stopped,
                started_at: Some(started),
                completes_now: true,
                requeue: IDLE_RECHECK,
            };
        }
        return Decision {
            phase: Phase::Running,
            workload: Workload::Running,
            started_at: Some(started),
            completes_now: false,
            // Wake up when the run ends; results are polled separately.
            requeue: IDLE_RECHECK.min(duration - elapsed),
        };
    }
    Decision {
        phase: Phase::Running,
        workload: Workload::Running,
        started_at: Some(started),
        completes_now: false,
        requeue: IDLE_RECHECK,
    }
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
    push(
        "Completed",
        decision.phase == Phase::Completed,
        if decision.phase == Phase::Completed {
            "DurationElapsed"
        } else {
            "Running"
        },
        match decision.phase {
            Phase::Completed => "spec.duration has elapsed".to_string(),
            _ => "the run has not ended".to_string(),
        },
    );
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
        }
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
    fn completes_when_duration_elapsed_and_stays_completed() {
        let mut e = experiment(SPEC);
        e.status = Some(LatencyExperimentStatus {
            phase: Some(Phase::Running),
            observed_generation: Some(1),
            started_at: Some(Time(t(0))),
            ..Default::default()
        });
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
        let d = decide(&e, &available(), t(10));
        assert_eq!(d.phase, Phase::Completed);
        assert_eq!(d.workload, Workload::Stopped);
        assert!(d.completes_now);

        e.status.as_mut().unwrap().phase = Some(Phase::Completed);
        let stopped = Observed::default();
        let d = decide(&e, &stopped, t(11));
        assert_eq!(
            (d.phase, d.workload, d.completes_now),
            (Phase::Completed, Workload::Stopped, false)
        );
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
