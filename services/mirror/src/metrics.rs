//! The mirror's Prometheus metrics (prefix `ticklab_mirror_`): frames captured and
//! what became of them, bytes sent, kernel drops, and the time of the last frame
//! mirrored (a mirror that stopped shows as a timestamp that no longer moves).

use prometheus::{Gauge, IntCounter, IntCounterVec, Opts, Registry};

use crate::MirrorReport;

#[derive(Clone)]
pub struct MirrorMetrics {
    /// By outcome: mirrored, filtered (no rule accepted it), own (the mirror's own
    /// VXLAN traffic), duplicate (loopback's second copy), send_error.
    pub frames: IntCounterVec,
    pub truncated: IntCounter,
    pub bytes: IntCounter,
    pub kernel_drops: IntCounter,
    pub last_mirrored: Gauge,
}

pub const OUTCOMES: [&str; 6] = [
    "mirrored",
    "filtered",
    "own",
    "duplicate",
    "not_target",
    "send_error",
];

impl MirrorMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        use ticklab_admin::register as reg;
        let frames = reg(
            registry,
            IntCounterVec::new(
                Opts::new(
                    "ticklab_mirror_frames_total",
                    "Frames captured at the mirrored interface, by outcome: mirrored, filtered (the session's rules did not accept it), own (the mirror's VXLAN), duplicate (loopback's second copy), not_target (another interface, or on loopback another process), send_error",
                ),
                &["outcome"],
            )?,
        )?;
        for outcome in OUTCOMES {
            frames.with_label_values(&[outcome]);
        }
        Ok(Self {
            frames,
            truncated: reg(
                registry,
                IntCounter::new(
                    "ticklab_mirror_truncated_frames_total",
                    "Mirrored frames cut to the session's packet length",
                )?,
            )?,
            bytes: reg(
                registry,
                IntCounter::new(
                    "ticklab_mirror_bytes_total",
                    "VXLAN payload bytes sent to the capture service",
                )?,
            )?,
            kernel_drops: reg(
                registry,
                IntCounter::new(
                    "ticklab_mirror_kernel_drops_total",
                    "Frames the kernel dropped before the mirror read them (socket buffer full)",
                )?,
            )?,
            last_mirrored: reg(
                registry,
                Gauge::new(
                    "ticklab_mirror_last_frame_timestamp_seconds",
                    "Capture time of the last frame mirrored (Unix seconds)",
                )?,
            )?,
        })
    }

    pub fn report(&self) -> MirrorReport {
        let n = |o: &str| self.frames.with_label_values(&[o]).get();
        MirrorReport {
            captured: OUTCOMES.iter().map(|o| n(o)).sum(),
            mirrored: n("mirrored"),
            filtered: n("filtered"),
            own: n("own"),
            duplicate: n("duplicate"),
            not_target: n("not_target"),
            truncated: self.truncated.get(),
            send_errors: n("send_error"),
            kernel_drops: self.kernel_drops.get(),
        }
    }
}
