//! The trader against a real MongoDB-wire server (FerretDB, started by
//! scripts/test.sh and named by TICKLAB_TEST_MONGODB_URI) and the real exchange:
//! every trade stored exactly once, `GET /trades` newest first, and a restarted
//! trader that recovers the whole session again creates no duplicate documents.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use ticklab_crd::{ExchangeSpec, Instrument, StrategySpec, TraderSpec, Transport};
use ticklab_exchange::ExchangeConfig;
use ticklab_trader::{TraderConfig, TraderHandle, start};
use tokio_util::sync::CancellationToken;

fn mongodb_uri() -> String {
    std::env::var("TICKLAB_TEST_MONGODB_URI").expect(
        "TICKLAB_TEST_MONGODB_URI is not set: run scripts/test.sh, which starts a MongoDB-wire server",
    )
}

fn exchange_spec(rate: u64) -> ExchangeSpec {
    serde_json::from_value(serde_json::json!({
        "symbols": ["EURUSD", "BTCUSD"],
        "ratePerSecond": rate,
        "seed": 7,
    }))
    .unwrap()
}

fn trader_config(
    experiment: &str,
    feed_port: u16,
    exchange: &ticklab_exchange::ExchangeAddrs,
) -> TraderConfig {
    TraderConfig {
        experiment: experiment.into(),
        symbols: vec![Instrument::EurUsd, Instrument::BtcUsd],
        spec: TraderSpec {
            strategy: StrategySpec {
                enabled: false,
                ..StrategySpec::default()
            },
            ..TraderSpec::default()
        },
        transport: Transport::Udp,
        feed_udp_listen: format!("127.0.0.1:{feed_port}").parse().unwrap(),
        feed_connect: String::new(),
        retransmit_server: exchange.retransmit.to_string(),
        order_tcp: exchange.order_tcp.to_string(),
        order_http: format!("http://{}", exchange.order_http),
        api_listen: "127.0.0.1:0".parse().unwrap(),
        mongodb_uri: Some(mongodb_uri()),
        mongodb_wait_seconds: 0,
        slo: None,
        // Five unanswered requests in a row declare a range lost; a loaded machine can
        // keep the exchange's retransmission thread off a core for longer than a few
        // tens of milliseconds, which is no loss.
        recovery_timeout_ms: 500,
        tls: None,
    }
}

/// Waits until `trader` has received trades from the live feed.
async fn wait_receiving(trader: &TraderHandle) {
    for _ in 0..1500 {
        if trader.results().received > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no trade received in 30 s: {:?}", trader.results());
}

async fn wait_persisted(trader: &TraderHandle, n: u64) {
    let store = trader.store.as_ref().unwrap();
    for _ in 0..3000 {
        if store.count().await.unwrap() >= n && store.queued() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "only {} of {n} trades persisted",
        store.count().await.unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trades_are_stored_once_served_newest_first_and_a_restart_adds_no_duplicates() {
    let experiment = format!("mongo-restart-{}", ticklab_wire::now_unix_nanos());
    // A free UDP port both trader incarnations bind in turn; the exchange sends there.
    let feed_port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let exchange_stop = CancellationToken::new();
    // No duration: the session is ended below once the second trader is receiving
    // it, so that trader joins mid-session however slowly everything starts.
    let mut config = ExchangeConfig::local(
        &experiment,
        exchange_spec(5_000),
        None,
        Some(format!("127.0.0.1:{feed_port}")),
    );
    config.spec.transport = Transport::Udp;
    let exchange =
        ticklab_exchange::start(config, prometheus::Registry::new(), exchange_stop.clone())
            .await
            .unwrap();

    // First trader: receives the first part of the session, then stops.
    let first_stop = CancellationToken::new();
    let first = start(
        trader_config(&experiment, feed_port, &exchange.addrs),
        prometheus::Registry::new(),
        first_stop.clone(),
    )
    .await
    .unwrap();
    wait_receiving(&first).await;
    first_stop.cancel();
    let first_results = first.join().await.unwrap();
    assert!(first_results.received > 0);
    let stored_by_first = first_results.persisted.unwrap();
    assert!(stored_by_first > 0);

    // Second trader on the same port: joins mid-session, recovers everything from
    // sequence 1 through retransmission, and writes it all again.
    let second_stop = CancellationToken::new();
    let second = start(
        trader_config(&experiment, feed_port, &exchange.addrs),
        prometheus::Registry::new(),
        second_stop.clone(),
    )
    .await
    .unwrap();
    wait_receiving(&second).await;
    exchange.end_feed();
    exchange.feed_finished().await;
    assert!(
        second.wait_settled(Duration::from_secs(10)).await,
        "{:?}",
        second.results()
    );
    let published = exchange.stats.snapshot().trades_published;
    wait_persisted(&second, published).await;

    let store = second.store.clone().unwrap();
    assert_eq!(
        store.count().await.unwrap(),
        published,
        "each trade stored exactly once"
    );
    let dups = store
        .counts
        .duplicates
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        dups >= stored_by_first,
        "the rewrite of the first part was deduplicated ({dups} < {stored_by_first})"
    );
    let results = second.results();
    assert_eq!(results.sent, published);
    assert_eq!(results.lost, 0, "{results:?}");
    assert!(results.recovered >= first_results.received, "{results:?}");

    // GET /trades?limit=50: the newest 50, newest first, from MongoDB.
    let body: serde_json::Value =
        reqwest::get(format!("http://{}/trades?limit=50", second.addrs.api))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(body["source"], "mongodb");
    let trades = body["trades"].as_array().unwrap();
    assert_eq!(trades.len(), 50);
    let received: Vec<u64> = trades
        .iter()
        .map(|t| t["receivedAtNs"].as_u64().unwrap())
        .collect();
    assert!(
        received.windows(2).all(|w| w[0] >= w[1]),
        "not newest first: {received:?}"
    );
    let newest_in_db = store.recent(1).await.unwrap()[0].received_at_ns;
    assert_eq!(received[0], newest_in_db);
    assert!(trades[0]["latencyMicros"].as_f64().is_some());
    assert!(trades[0]["price"].as_str().unwrap().parse::<f64>().unwrap() > 0.0);

    second_stop.cancel();
    second.join().await.unwrap();
    exchange_stop.cancel();
    exchange.join().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_a_clear_error() {
    let registry = prometheus::Registry::new();
    let metrics = ticklab_trader::metrics::TraderMetrics::register(&registry).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let uri = format!("mongodb://user:hunter2@127.0.0.1:{port}/?serverSelectionTimeoutMS=500");
    let err = ticklab_trader::store::TradeStore::connect(
        &uri,
        "x",
        10,
        metrics,
        CancellationToken::new(),
    )
    .await
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(!err.contains("hunter2"), "password leaked: {err}");
}
