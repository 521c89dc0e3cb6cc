//! The recorder's Prometheus metrics (prefix `ticklab_recorder_`); the series carry
//! `experiment` and `recording` from the registry. Updated at each flush (every
//! 100 ms) from the thread's counters, never per packet.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// The recorder's registry: every series carries `experiment` and `recording`,
/// plus the process metrics every ticklab component exports.
pub fn registry(experiment: &str, recording: &str) -> prometheus::Result<Registry> {
    ticklab_admin::session_registry("recorder", experiment, "recording", recording)
}

#[derive(Clone)]
pub struct RecorderMetrics {
    pub recording: IntGauge,
    pub packets: IntCounter,
    pub bytes: IntCounter,
    pub files: IntGauge,
    pub gap_messages: IntCounterVec,
    pub behind: IntGauge,
    pub write_errors: IntCounter,
    pub kernel_drops: IntCounter,
    pub malformed: IntCounter,
}

impl RecorderMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        use ticklab_admin::register as reg;
        let counter = |name: &str, help: &str| reg(registry, IntCounter::new(name, help)?);
        let gauge = |name: &str, help: &str| reg(registry, IntGauge::new(name, help)?);
        Ok(Self {
            recording: gauge(
                "ticklab_recorder_recording",
                "1 while recording, 0 while paused",
            )?,
            packets: counter(
                "ticklab_recorder_packets_total",
                "Feed packets written to files",
            )?,
            bytes: counter("ticklab_recorder_bytes_total", "Bytes written to files")?,
            files: gauge("ticklab_recorder_files", "Files in the recording's index")?,
            gap_messages: reg(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "ticklab_recorder_gap_messages_total",
                        "Sequence numbers missing from what the recorder received: recovered, or unrecoverable (listed as missing in the index)",
                    ),
                    &["outcome"],
                )?,
            )?,
            behind: gauge(
                "ticklab_recorder_behind_messages",
                "Messages announced by the feed and not yet written in order (awaiting recovery)",
            )?,
            write_errors: counter(
                "ticklab_recorder_write_errors_total",
                "Failed writes of files or of the index",
            )?,
            kernel_drops: counter(
                "ticklab_recorder_kernel_drops_total",
                "Datagrams the kernel dropped because the recorder's socket buffer was full",
            )?,
            malformed: counter(
                "ticklab_recorder_malformed_packets_total",
                "Datagrams that are not feed packets",
            )?,
        })
    }
}
