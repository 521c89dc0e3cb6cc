//! The operator's Prometheus metrics: reconciliations, failures by error kind (never
//! by object: cardinality stays flat however many experiments exist), reconcile
//! duration, leadership, phase transitions, and how many experiments are in each
//! phase (the leader's view).

use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use ticklab_crd::Phase;

#[derive(Clone)]
pub struct OperatorMetrics {
    pub reconciliations: IntCounterVec,
    pub failures: IntCounterVec,
    pub duration: HistogramVec,
    pub leader: IntGauge,
    pub phase_transitions: IntCounterVec,
    pub experiments: IntGaugeVec,
}

/// The `phase` label value of a phase, the same in every series that carries one.
pub fn phase_label(phase: Phase) -> String {
    format!("{phase:?}")
}

/// Every phase, for gauges that must show zeros rather than missing series.
pub const PHASES: [Phase; 4] = [
    Phase::Pending,
    Phase::Running,
    Phase::Completed,
    Phase::Failed,
];

impl OperatorMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let reconciliations = IntCounterVec::new(
            Opts::new(
                "ticklab_operator_reconciliations_total",
                "Reconcile runs, by controller.",
            ),
            &["controller"],
        )?;
        let failures = IntCounterVec::new(
            Opts::new(
                "ticklab_operator_reconcile_failures_total",
                "Reconcile runs that ended in an error, by controller and error kind.",
            ),
            &["controller", "error"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "ticklab_operator_reconcile_duration_seconds",
                "Time one reconcile run takes, by controller.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["controller"],
        )?;
        let leader = IntGauge::new(
            "ticklab_operator_leader",
            "1 while this replica holds the leader Lease and reconciles, else 0.",
        )?;
        let phase_transitions = IntCounterVec::new(
            Opts::new(
                "ticklab_operator_phase_transitions_total",
                "Experiments entering a phase (Pending, Running, Completed, Failed).",
            ),
            &["phase"],
        )?;
        registry.register(Box::new(reconciliations.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        let experiments = IntGaugeVec::new(
            Opts::new(
                "ticklab_operator_experiments",
                "LatencyExperiments by phase, as the leading replica sees them (no phase yet: Pending).",
            ),
            &["phase"],
        )?;
        registry.register(Box::new(phase_transitions.clone()))?;
        registry.register(Box::new(experiments.clone()))?;
        ticklab_admin::register_process_metrics(registry, "operator")?;
        // Series exist at zero from the start: "no reconciles yet" reads as 0, not
        // as an absent series.
        reconciliations.with_label_values(&["latencyexperiment"]);
        duration.with_label_values(&["latencyexperiment"]);
        for kind in crate::controller::ERROR_KINDS {
            failures.with_label_values(&["latencyexperiment", kind]);
        }
        for phase in PHASES {
            experiments.with_label_values(&[&phase_label(phase)]);
            phase_transitions.with_label_values(&[&phase_label(phase)]);
        }
        Ok(Self {
            reconciliations,
            failures,
            duration,
            leader,
            phase_transitions,
            experiments,
        })
    }
}
