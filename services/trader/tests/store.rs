//! The MongoDB writer on its own, against the MongoDB-wire server scripts/test.sh
//! starts (TICKLAB_TEST_MONGODB_URI): idempotent writes, newest-first reads, and a
//! full buffer that drops and counts instead of blocking.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ticklab_trader::metrics::TraderMetrics;
use ticklab_trader::store::{ReceivedTrade, TradeBatch, TradeStore};
use ticklab_wire::{Price, Quantity, Side, Symbol, Trade};
use tokio_util::sync::CancellationToken;

fn mongodb_uri() -> String {
    std::env::var("TICKLAB_TEST_MONGODB_URI").expect(
        "TICKLAB_TEST_MONGODB_URI is not set: run scripts/test.sh, which starts a MongoDB-wire server",
    )
}

fn batch(session: &str, seqs: std::ops::Range<u64>) -> TradeBatch {
    TradeBatch {
        session: Arc::from(session),
        trades: seqs
            .map(|seq| ReceivedTrade {
                seq,
                trade: Trade {
                    symbol: Symbol::new("EURUSD").unwrap(),
                    price: Price(108_000_000 + seq as i64),
                    quantity: Quantity(1_000_000_000),
                    side: Side::Buy,
                    trade_id: seq,
                    send_ts_ns: 1_000_000 + seq * 1000,
                },
                received_at_ns: 1_000_500 + seq * 1000,
                recovered: false,
            })
            .collect(),
    }
}

async fn connect(
    experiment: &str,
    capacity: usize,
) -> (TradeStore, tokio::task::JoinHandle<()>, CancellationToken) {
    let registry = prometheus::Registry::new();
    let metrics = TraderMetrics::register(&registry).unwrap();
    let stop = CancellationToken::new();
    let (store, writer) =
        TradeStore::connect(&mongodb_uri(), experiment, capacity, metrics, stop.clone())
            .await
            .unwrap();
    (store, writer, stop)
}

async fn wait_count(store: &TradeStore, n: u64) {
    for _ in 0..1500 {
        if store.count().await.unwrap() == n && store.queued() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "count stayed at {} (want {n})",
        store.count().await.unwrap()
    );
}

#[tokio::test]
async fn writes_are_idempotent_and_read_newest_first() {
    let experiment = format!("store-{}", ticklab_wire::now_unix_nanos());
    let (store, writer, stop) = connect(&experiment, 100_000).await;
    store.offer(batch("S1", 1..301));
    wait_count(&store, 300).await;
    // The same trades again (a restarted trader recovering a session), and more.
    store.offer(batch("S1", 1..301));
    store.offer(batch("S1", 301..401));
    // Same sequence numbers in another session are different trades.
    store.offer(batch("S2", 1..11));
    wait_count(&store, 410).await;
    assert_eq!(store.counts.persisted.load(Ordering::Relaxed), 410);
    assert_eq!(store.counts.duplicates.load(Ordering::Relaxed), 300);

    let recent = store.recent(50).await.unwrap();
    assert_eq!(recent.len(), 50);
    let seqs: Vec<u64> = recent
        .iter()
        .filter(|t| t.session == "S1")
        .map(|t| t.seq)
        .take(3)
        .collect();
    assert_eq!(seqs, vec![400, 399, 398]);
    assert!(
        recent
            .windows(2)
            .all(|w| w[0].received_at_ns >= w[1].received_at_ns)
    );
    assert_eq!(recent[0].latency_micros, 0.5);
    stop.cancel();
    writer.await.unwrap();
}

#[tokio::test]
async fn a_full_buffer_drops_and_counts_instead_of_blocking() {
    let experiment = format!("store-full-{}", ticklab_wire::now_unix_nanos());
    let (store, writer, stop) = connect(&experiment, 1_000).await;
    // Far more than the buffer holds, offered at once: offer() must return at
    // once every time, and what does not fit is counted as dropped.
    for i in 0..100u64 {
        store.offer(batch("S", i * 100 + 1..(i + 1) * 100 + 1));
    }
    assert!(
        store.counts.dropped.load(Ordering::Relaxed) > 0,
        "nothing dropped"
    );
    // What was taken is written (polled, not slept on), then the writer stops. A
    // write that keeps failing is counted as dropped too, so the count is read once
    // the writer is done, not before.
    for _ in 0..1500 {
        if store.queued() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        store.queued(),
        0,
        "the writer did not drain its buffer in 30 s"
    );
    stop.cancel();
    writer.await.unwrap();
    let dropped = store.counts.dropped.load(Ordering::Relaxed);
    let stored = store.count().await.unwrap();
    assert_eq!(
        stored + dropped,
        10_000,
        "every trade is either stored or counted as dropped"
    );
}
