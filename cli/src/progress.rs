//! The live line `ticklab run` shows: elapsed time against the run length, trades
//! per second, and the latency percentiles so far. Drawn on stderr and hidden when
//! stderr is not a terminal, so piped output stays clean.

use std::cell::Cell;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ticklab_crd::ExperimentResults;

pub struct Progress {
    bar: ProgressBar,
    last: Cell<(u64, Duration)>,
}

impl Progress {
    pub fn new(duration: Option<Duration>, quiet: bool) -> Self {
        let bar = match duration {
            Some(d) => ProgressBar::new(d.as_millis() as u64),
            None => ProgressBar::new_spinner(),
        };
        if quiet {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        }
        let template = if duration.is_some() {
            "{spinner} {elapsed_precise} [{bar:24}] {msg}"
        } else {
            "{spinner} {elapsed_precise} {msg}"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.enable_steady_tick(Duration::from_millis(120));
        Self {
            bar,
            last: Cell::new((0, Duration::ZERO)),
        }
    }

    pub fn update(&self, r: &ExperimentResults, elapsed: Duration) {
        let (last_count, last_at) = self.last.get();
        let count = r.received + r.recovered;
        let dt = (elapsed - last_at).as_secs_f64();
        let rate = if dt > 0.0 {
            (count - last_count.min(count)) as f64 / dt
        } else {
            0.0
        };
        self.last.set((count, elapsed));
        self.bar.set_position(elapsed.as_millis() as u64);
        let latency = r.feed_latency.as_ref().map_or_else(
            || "waiting for trades".to_string(),
            |l| format!("p50 {:.1}µs p99 {:.1}µs", l.p50_micros, l.p99_micros),
        );
        self.bar.set_message(format!(
            "{} trades/s · {} received · {latency} · gaps {} lost {} · orders {}",
            human(rate),
            human(count as f64),
            r.gaps,
            r.lost,
            r.orders
        ));
    }

    pub fn set_message(&self, msg: &'static str) {
        self.bar.set_message(msg);
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// 1234567 -> "1.23M".
pub fn human(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}
