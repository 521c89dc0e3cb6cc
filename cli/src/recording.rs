//! Recording and replay on this machine: the recorders `ticklab run` starts for the
//! RecordingSessions in its file, `ticklab replay FILE` (a recording replayed into a
//! local trader) and `ticklab recordings ls DIR` (a recording directory's index).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use ticklab_crd::RecordingSession;
use ticklab_exchange::replay::{MAX_SPEED, MIN_SPEED, ReplayConfig};
use ticklab_recorder::{RecorderConfig, RecorderHandle, RecorderStatus};
use tokio_util::sync::CancellationToken;

/// Recorders of one local run.
pub struct LocalRecorders {
    recorders: Vec<(RecorderHandle, PathBuf)>,
    stop: CancellationToken,
}

/// How long a recorder may take, after the feed ended, to recover its last gaps.
const SETTLE: Duration = Duration::from_secs(3);

impl LocalRecorders {
    /// Starts a recorder per session, each writing into `root/NAME/`, tapping the
    /// exchange at `retransmit`.
    pub async fn start(
        experiment: &str,
        sessions: &[RecordingSession],
        root: &Path,
        retransmit: SocketAddr,
        first_port: u16,
    ) -> anyhow::Result<Self> {
        let stop = CancellationToken::new();
        let mut recorders = Vec::new();
        for (i, session) in sessions.iter().enumerate() {
            let name = session.metadata.name.clone().unwrap_or_default();
            let directory = root.join(&name);
            let config = RecorderConfig {
                experiment: experiment.to_string(),
                recording: name.clone(),
                exchange_retransmit: retransmit.to_string(),
                directory: directory.clone(),
                format: session.spec.format,
                rotation: session.spec.rotation.clone(),
                enabled: session.spec.enabled,
                listen: ([127, 0, 0, 1], if i == 0 { first_port } else { 0 }).into(),
                // The exchange's session starts with this run: record it all.
                from_start: true,
            };
            let registry = ticklab_recorder::metrics::registry(experiment, &name)?;
            let handle = ticklab_recorder::start(config, registry, stop.child_token())
                .await
                .with_context(|| format!("recorder {name}"))?;
            recorders.push((handle, directory));
        }
        Ok(Self { recorders, stop })
    }

    pub fn is_empty(&self) -> bool {
        self.recorders.is_empty()
    }

    /// Lets each recorder recover what it still misses (bounded), then stops them.
    pub async fn stop(self) -> anyhow::Result<Vec<(RecorderStatus, PathBuf)>> {
        let deadline = Instant::now() + SETTLE;
        for (handle, _) in &self.recorders {
            while handle.shared.status().behind > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        self.stop.cancel();
        let mut out = Vec::new();
        for (handle, dir) in self.recorders {
            out.push((handle.join().await.context("recorder")?, dir));
        }
        Ok(out)
    }
}

/// `--speed`: within the range the CRD allows.
pub fn parse_speed(text: &str) -> Result<f64, String> {
    let speed: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if !(MIN_SPEED..=MAX_SPEED).contains(&speed) {
        return Err(format!(
            "{speed} is out of range: use {MIN_SPEED} to {MAX_SPEED}, or --top-speed"
        ));
    }
    Ok(speed)
}

/// The replay a local run's experiment asks for: `exchange.replay` names a
/// RecordingSession and a file, found under `root/RECORDING/FILE`.
pub fn replay_of(spec: &ticklab_crd::LatencyExperimentSpec, root: &Path) -> Option<ReplayConfig> {
    spec.exchange.replay.as_ref().map(|r| ReplayConfig {
        source: root.join(&r.recording).join(&r.file).display().to_string(),
        speed: if r.top_speed {
            None
        } else {
            Some(r.speed.unwrap_or(1.0))
        },
        looped: r.looped,
    })
}

/// `ticklab recordings ls DIR`: the index as stored, or computed from the files
/// (read only) when there is none (a directory copied without it).
pub fn list(dir: &Path) -> anyhow::Result<String> {
    if !dir.is_dir() {
        anyhow::bail!("{} is not a directory", dir.display());
    }
    let index = ticklab_recording::Index::read(dir)
        .with_context(|| format!("cannot read the recordings in {}", dir.display()))?;
    Ok(ticklab_recording::format_table(&index))
}
