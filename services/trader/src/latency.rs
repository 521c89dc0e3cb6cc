//! Latency distributions in nanoseconds (HdrHistogram, 3 significant digits, 1 ns to
//! 100 s), and their conversion to the microsecond percentiles every report shows.

use hdrhistogram::Histogram;
use ticklab_crd::LatencySummary;

/// Highest value tracked; larger samples are clamped (and still counted).
const MAX_NS: u64 = 100_000_000_000;

#[derive(Clone, Debug)]
pub struct LatencyHistogram {
    inner: Histogram<u64>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyHistogram {
    pub fn new() -> Self {
        // Constant bounds hdrhistogram always accepts (low >= 1, high >= 2 * low,
        // 3 significant figures <= 5), so this cannot fail.
        #[allow(clippy::expect_used)]
        let inner = Histogram::new_with_bounds(1, MAX_NS, 3).expect("constant bounds are valid");
        Self { inner }
    }

    #[inline]
    pub fn record_ns(&mut self, ns: u64) {
        let _ = self.inner.record(ns.clamp(1, MAX_NS));
    }

    pub fn add(&mut self, other: &LatencyHistogram) {
        let _ = self.inner.add(&other.inner);
    }

    pub fn reset(&mut self) {
        self.inner.reset();
    }

    pub fn count(&self) -> u64 {
        self.inner.len()
    }

    pub fn quantile_ns(&self, q: f64) -> u64 {
        self.inner.value_at_quantile(q)
    }

    /// Percentiles in µs; `None` without samples.
    pub fn summary(&self) -> Option<LatencySummary> {
        if self.inner.is_empty() {
            return None;
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Some(LatencySummary {
            count: self.inner.len(),
            min_micros: us(self.inner.min()),
            p50_micros: us(self.inner.value_at_quantile(0.50)),
            p90_micros: us(self.inner.value_at_quantile(0.90)),
            p99_micros: us(self.inner.value_at_quantile(0.99)),
            p999_micros: us(self.inner.value_at_quantile(0.999)),
            max_micros: us(self.inner.max()),
            mean_micros: (self.inner.mean() / 1000.0 * 1000.0).round() / 1000.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_in_micros() {
        let mut h = LatencyHistogram::new();
        for ns in 1..=1000u64 {
            h.record_ns(ns * 1000);
        }
        let s = h.summary().unwrap();
        assert_eq!(s.count, 1000);
        assert!((s.p50_micros - 500.0).abs() < 1.0, "{s:?}");
        assert!((s.p99_micros - 990.0).abs() < 1.0, "{s:?}");
        assert!((s.max_micros - 1000.0).abs() < 1.0, "{s:?}");
        assert!(LatencyHistogram::new().summary().is_none());
    }

    #[test]
    fn huge_and_zero_samples_are_clamped_not_dropped() {
        let mut h = LatencyHistogram::new();
        h.record_ns(0);
        h.record_ns(u64::MAX);
        assert_eq!(h.count(), 2);
    }
}

/// The feed path's two distributions: to the kernel's receive timestamp, and to
/// user-space receipt.
#[derive(Clone, Debug, Default)]
pub struct LatencyPair {
    pub feed: LatencyHistogram,
    pub user: LatencyHistogram,
}

/// Keeps histogram merging off the feed path. Adding or clearing a histogram walks
/// all its counters (hundreds of kilobytes), long enough to delay packets behind
/// it; so the feed thread only swaps its filled pair for an empty one, and this
/// thread adds the filled one into the shared totals, clears it and hands it back.
pub struct LatencyMerger {
    full: Option<std::sync::mpsc::Sender<Box<LatencyPair>>>,
    empty: std::sync::mpsc::Receiver<Box<LatencyPair>>,
    thread: Option<std::thread::JoinHandle<()>>,
    merge: std::sync::Arc<dyn Fn(&LatencyPair) + Send + Sync>,
}

impl LatencyMerger {
    pub fn spawn(merge: impl Fn(&LatencyPair) + Send + Sync + 'static) -> std::io::Result<Self> {
        let merge: std::sync::Arc<dyn Fn(&LatencyPair) + Send + Sync> = std::sync::Arc::new(merge);
        let (full_tx, full_rx) = std::sync::mpsc::channel::<Box<LatencyPair>>();
        let (empty_tx, empty_rx) = std::sync::mpsc::channel();
        // Two spares: one being filled by the feed while another is merged.
        for _ in 0..2 {
            let _ = empty_tx.send(Box::default());
        }
        let worker_merge = merge.clone();
        let thread = std::thread::Builder::new()
            .name("latency-merge".into())
            .spawn(move || {
                for mut pair in full_rx {
                    worker_merge(&pair);
                    pair.feed.reset();
                    pair.user.reset();
                    if empty_tx.send(pair).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Self {
            full: Some(full_tx),
            empty: empty_rx,
            thread: Some(thread),
            merge,
        })
    }

    /// Hands `local` over for merging and gives the caller an empty pair; O(1). When
    /// no empty pair is back yet, `local` simply keeps accumulating.
    pub fn swap(&self, local: &mut Box<LatencyPair>) {
        if let (Ok(mut empty), Some(full)) = (self.empty.try_recv(), &self.full) {
            std::mem::swap(local, &mut empty);
            let _ = full.send(empty);
        }
    }

    /// Merges everything synchronously (the feed is over): waits for the thread to
    /// finish what it has, then merges `local` in this thread.
    pub fn finish(&mut self, local: &mut LatencyPair) {
        self.full = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (self.merge)(local);
        local.feed.reset();
        local.user.reset();
    }
}
