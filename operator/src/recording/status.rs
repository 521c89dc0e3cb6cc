//! A RecordingSession's status from what the controller observed: whether the
//! experiment exists, the recorder Deployment, and what the recorder answered. Pure,
//! so the conditions and the copy of the recorder's index are tested without a
//! cluster. What the recorder last said is kept while it cannot be reached.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use ticklab_crd::recording_session::{
    MAX_STATUS_FILES, RecordedFile, RecordingSessionStatus, RecordingState, SequenceRange,
};
use ticklab_recorder::{RecorderState, RecorderStatus};
use ticklab_recording::FileEntry;

/// Condition types this controller writes.
pub const EXPERIMENT_FOUND: &str = "ExperimentFound";
pub const READY: &str = "Ready";
pub const RECORDING: &str = "Recording";

/// The recorder Deployment as observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Not created (yet).
    Missing,
    /// Created, no available replica yet.
    Starting,
    /// One replica available.
    Available,
    /// Past its progress deadline (the reason the Deployment gives).
    Stuck(String),
}

/// What one reconcile saw.
#[derive(Clone, Debug)]
pub struct Observed<'a> {
    pub experiment: &'a str,
    pub namespace: &'a str,
    pub experiment_found: bool,
    pub workload: Workload,
    /// The recorder's answer to the toggle, or why there is none.
    pub recorder: Result<&'a RecorderStatus, String>,
}

/// The state the status shows for what the recorder reports: a recorder draining
/// after "off" still records what the span misses.
pub fn state_of(state: RecorderState) -> RecordingState {
    match state {
        RecorderState::Recording | RecorderState::Draining => RecordingState::Recording,
        RecorderState::Paused => RecordingState::Paused,
    }
}

/// True when the recorder is where the toggle wants it (so the status need not be
/// refreshed soon).
pub fn settled(enabled: bool, status: &RecorderStatus) -> bool {
    matches!(
        (enabled, status.state),
        (true, RecorderState::Recording) | (false, RecorderState::Paused)
    )
}

/// The recorder's index entry as the status lists it; None for a file that holds
/// no feed data yet (no sequence range to show).
pub fn recorded_file(entry: &FileEntry) -> Option<RecordedFile> {
    let time = |ns: Option<u64>| {
        ns.and_then(|ns| Timestamp::from_nanosecond(i128::from(ns)).ok())
            .map(|t| t.to_string())
    };
    Some(RecordedFile {
        name: entry.name.clone(),
        first_seq: entry.first_seq?,
        last_seq: entry.last_seq?,
        bytes: entry.bytes,
        packets: entry.packets,
        start_time: time(entry.start_ns),
        end_time: time(entry.end_ns),
        missing: entry
            .missing
            .iter()
            .map(|[first, last]| SequenceRange {
                first: *first,
                last: *last,
            })
            .collect(),
        complete: entry.complete,
    })
}

/// The status for `observed`; `previous` supplies transition times and what the
/// recorder last said when it does not answer now.
pub fn status(
    enabled: bool,
    generation: Option<i64>,
    endpoint: String,
    observed: &Observed<'_>,
    previous: &RecordingSessionStatus,
    now: Timestamp,
) -> RecordingSessionStatus {
    let mut status = RecordingSessionStatus {
        observed_generation: generation,
        endpoint: Some(endpoint),
        ..previous.clone()
    };
    if let Ok(recorder) = observed.recorder {
        let files: Vec<RecordedFile> = recorder
            .index
            .files
            .iter()
            .filter_map(recorded_file)
            .collect();
        status.state = Some(state_of(recorder.state));
        status.packets = recorder.packets;
        status.bytes = recorder.bytes;
        status.file_count = recorder.index.files.len() as u64;
        status.files = files[files.len().saturating_sub(MAX_STATUS_FILES)..].to_vec();
    }

    let condition = |type_: &str, value: &str, reason: &str, message: String| {
        let since = previous
            .conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == value)
            .map_or_else(|| Time(now), |c| c.last_transition_time.clone());
        Condition {
            type_: type_.to_string(),
            status: value.to_string(),
            reason: reason.to_string(),
            message,
            last_transition_time: since,
            observed_generation: generation,
        }
    };
    let experiment = observed.experiment;
    let found = if observed.experiment_found {
        condition(
            EXPERIMENT_FOUND,
            "True",
            "ExperimentFound",
            format!("recording the feed of LatencyExperiment {experiment:?}"),
        )
    } else {
        condition(
            EXPERIMENT_FOUND,
            "False",
            "ExperimentNotFound",
            format!(
                "LatencyExperiment {experiment:?} does not exist in namespace {}: \
                 the recorder is created when it does",
                observed.namespace
            ),
        )
    };
    let ready = match (&observed.recorder, &observed.workload) {
        (Ok(_), _) => condition(
            READY,
            "True",
            "RecorderReady",
            "the recorder answers and follows spec.enabled".into(),
        ),
        (Err(_), Workload::Missing) if !observed.experiment_found => condition(
            READY,
            "False",
            "ExperimentNotFound",
            format!("no recorder until LatencyExperiment {experiment:?} exists"),
        ),
        (Err(error), Workload::Stuck(reason)) => condition(
            READY,
            "False",
            "RecorderStuck",
            format!("the recorder Deployment is not progressing ({reason}); {error}"),
        ),
        (Err(error), Workload::Missing | Workload::Starting) => condition(
            READY,
            "False",
            "RecorderStarting",
            format!("the recorder is not available yet; {error}"),
        ),
        (Err(error), Workload::Available) => {
            condition(READY, "False", "RecorderUnreachable", error.clone())
        }
    };
    let recording = match observed.recorder {
        Ok(recorder) => {
            let (value, reason, mut message) = match (recorder.state, enabled) {
                (RecorderState::Recording, _) => ("True", "Recording", "recording".to_string()),
                (RecorderState::Draining, _) => (
                    "True",
                    "Draining",
                    "stopping: recovering what the recorded span still misses".to_string(),
                ),
                (RecorderState::Paused, true) => (
                    "False",
                    "Starting",
                    "paused, about to record (spec.enabled is true)".to_string(),
                ),
                (RecorderState::Paused, false) => (
                    "False",
                    "Paused",
                    "paused (spec.enabled is false); files already written are kept".to_string(),
                ),
            };
            if recorder.write_errors > 0 {
                message.push_str(&format!(
                    "; {} write errors{}",
                    recorder.write_errors,
                    recorder
                        .last_error
                        .as_ref()
                        .map(|e| format!(", last: {e}"))
                        .unwrap_or_default()
                ));
            }
            if recorder.unrecoverable > 0 {
                message.push_str(&format!(
                    "; {} sequence numbers could not be recovered (listed as missing in the files)",
                    recorder.unrecoverable
                ));
            }
            condition(RECORDING, value, reason, message)
        }
        Err(_) => condition(
            RECORDING,
            "Unknown",
            "RecorderUnreachable",
            "the recorder does not answer; state, counts and files are as it last reported".into(),
        ),
    };
    status.conditions = vec![found, ready, recording];
    status
}
