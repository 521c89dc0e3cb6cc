//! How a run starts when the parts come up in any order, as they do in a cluster: a
//! trader that starts long after the exchange still gets the whole feed from the
//! first trade (the exchange waits for its subscription), and a trader whose
//! MongoDB is not up yet waits for it, alive and not ready, instead of exiting.
#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ticklab_crd::{Instrument, StrategySpec, TraderSpec, Transport};
use ticklab_exchange::{ExchangeAddrs, ExchangeConfig};
use ticklab_trader::TraderConfig;
use ticklab_wire::{RetransmitRequest, Session};
use tokio_util::sync::CancellationToken;

fn trader_config(feed: SocketAddr, api: SocketAddr, exchange: &ExchangeAddrs) -> TraderConfig {
    TraderConfig {
        experiment: "startup".into(),
        symbols: vec![Instrument::EurUsd, Instrument::BtcUsd],
        spec: TraderSpec {
            strategy: StrategySpec {
                enabled: false,
                ..StrategySpec::default()
            },
            ..TraderSpec::default()
        },
        transport: Transport::Udp,
        feed_udp_listen: feed,
        feed_connect: String::new(),
        retransmit_server: exchange.retransmit.to_string(),
        order_tcp: exchange.order_tcp.to_string(),
        order_http: format!("http://{}", exchange.order_http),
        api_listen: api,
        mongodb_uri: None,
        mongodb_wait_seconds: 0,
        slo: None,
        // A loaded machine can keep the exchange's retransmission thread off a core
        // for tens of milliseconds; that is no loss.
        recovery_timeout_ms: 500,
        tls: None,
    }
}

/// A port nothing listens on right now (bound, then released).
fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trader_that_starts_late_still_gets_the_whole_feed_from_the_first_trade() {
    let feed: SocketAddr = ([127, 0, 0, 1], free_udp_port()).into();
    let spec = serde_json::from_value(serde_json::json!({
        "symbols": ["EURUSD", "BTCUSD"], "ratePerSecond": 20000, "seed": 3,
        // A ring far smaller than what 20 000 trades/s publish while a trader is
        // not there yet: a feed that started without it could not be recovered.
        "retransmissionBuffer": 1024,
    }))
    .unwrap();
    let exchange_stop = CancellationToken::new();
    let exchange = ticklab_exchange::start(
        ExchangeConfig::local(
            "startup",
            spec,
            Some(Duration::from_millis(500)),
            Some(feed.to_string()),
        ),
        prometheus::Registry::new(),
        exchange_stop.clone(),
    )
    .await
    .unwrap();

    // The exchange is up and serving long before the trader exists: its
    // retransmission server has answered (counted) a request of another session.
    let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut request = Vec::new();
    RetransmitRequest {
        session: Session::from_name("OTHER"),
        seq: 1,
        count: 1,
    }
    .encode(&mut request);
    probe.send_to(&request, exchange.addrs.retransmit).unwrap();
    wait_for("the exchange to serve", Duration::from_secs(10), || {
        exchange.stats.malformed_requests.load(Ordering::Acquire) > 0
    })
    .await;
    // The scenario, not synchronisation: the trader arrives well after the
    // exchange (in a cluster, a minute later, once MongoDB is up); at 20 000
    // trades/s a feed running all along would have outrun the 1024-message ring.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let trader_stop = CancellationToken::new();
    let trader = ticklab_trader::start(
        trader_config(feed, "127.0.0.1:0".parse().unwrap(), &exchange.addrs),
        prometheus::Registry::new(),
        trader_stop.clone(),
    )
    .await
    .unwrap();
    exchange.feed_finished().await;
    assert!(
        trader.wait_settled(Duration::from_secs(30)).await,
        "the trader did not settle: {:?}",
        trader.results()
    );
    trader_stop.cancel();
    let results = trader.join().await.unwrap();
    exchange_stop.cancel();
    let report = exchange.join().await.unwrap();

    assert!(report.trades_published > 1000, "{report:?}");
    assert_eq!(results.sent, report.trades_published, "{results:?}");
    assert_eq!(results.lost, 0, "{results:?}");
    assert_eq!(
        results.received + results.recovered,
        report.trades_published,
        "{results:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trader_waits_for_mongodb_alive_and_not_ready() {
    let upstream = std::env::var("TICKLAB_TEST_MONGODB_URI").expect(
        "TICKLAB_TEST_MONGODB_URI is not set: run scripts/test.sh, which starts a MongoDB-wire server",
    );
    let upstream_addr = upstream
        .trim_start_matches("mongodb://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    // The database's address, where nothing listens until the test says so.
    let db_port = free_tcp_port();
    let api: SocketAddr = ([127, 0, 0, 1], free_tcp_port()).into();
    let exchange = ExchangeAddrs {
        feed: None,
        retransmit: "127.0.0.1:9".parse().unwrap(),
        order_tcp: "127.0.0.1:9".parse().unwrap(),
        order_http: "127.0.0.1:9".parse().unwrap(),
        admin: "127.0.0.1:9".parse().unwrap(),
    };
    let mut config = trader_config("127.0.0.1:0".parse().unwrap(), api, &exchange);
    config.mongodb_uri = Some(format!("mongodb://127.0.0.1:{db_port}/ticklab"));
    config.mongodb_wait_seconds = 120;
    config.spec.persistence.enabled = true;
    let stop = CancellationToken::new();
    let starting = tokio::spawn(ticklab_trader::start(
        config,
        prometheus::Registry::new(),
        stop.clone(),
    ));

    // Waiting: alive, not ready, and /trades says why.
    let http = reqwest::Client::new();
    let status = |path: &'static str| {
        let http = http.clone();
        async move {
            http.get(format!("http://{api}{path}"))
                .send()
                .await
                .ok()
                .map(|r| r.status().as_u16())
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while status("/healthz").await != Some(200) {
        assert!(
            Instant::now() < deadline,
            "no /healthz while waiting for MongoDB"
        );
        if starting.is_finished() {
            let outcome = starting.await.unwrap();
            panic!("the trader gave up: {:?}", outcome.err());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status("/readyz").await, Some(503));
    assert_eq!(status("/trades").await, Some(503));
    assert!(
        !starting.is_finished(),
        "start returned while MongoDB is down"
    );

    // The database comes up (a proxy to the test's MongoDB-wire server).
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", db_port))
        .await
        .unwrap();
    let proxy = tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            let upstream_addr = upstream_addr.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream_addr).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    let trader = tokio::time::timeout(Duration::from_secs(60), starting)
        .await
        .expect("the trader did not start once MongoDB was up")
        .unwrap()
        .unwrap();
    assert!(trader.store.is_some());
    let deadline = Instant::now() + Duration::from_secs(30);
    while status("/readyz").await != Some(200) {
        assert!(Instant::now() < deadline, "not ready with MongoDB up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    trader.join().await.unwrap();
    proxy.abort();
}
