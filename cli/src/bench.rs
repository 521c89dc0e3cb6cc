//! `ticklab bench`: the measurements BENCHMARKS.md records, run in-process on
//! loopback. `feed` finds the highest trade rate the UDP feed carries with no gap;
//! `latency` gives one-way percentiles at fixed rates; `mongodb` compares the
//! trader's writer with a plain `insert_many` loop. `bench/run.sh` runs them next to
//! sockperf. Figures are printed, never asserted.

use std::time::{Duration, Instant};

use anyhow::Context;
use futures::TryStreamExt as _;
use serde::Serialize;
use ticklab_crd::{
    ExchangeSpec, Instrument, LatencyExperimentSpec, PersistenceSpec, StrategySpec, TraderSpec,
    Transport,
};

use crate::local_run::{LocalPair, PairOptions};

#[derive(clap::Subcommand, Clone)]
pub enum BenchCommand {
    /// Highest trades/s and packets/s over loopback UDP with zero gaps.
    Feed {
        /// Rates to try, trades/s.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "500000,1000000,2000000,3000000,4000000,5000000,6000000,8000000"
        )]
        rates: Vec<u64>,
        /// Seconds per rate.
        #[arg(long, default_value_t = 3)]
        seconds: u64,
        /// Largest packet in bytes.
        #[arg(long, default_value_t = 1472)]
        packet_bytes: u32,
        #[arg(long)]
        json: bool,
    },
    /// One-way latency percentiles at fixed rates over loopback UDP.
    Latency {
        #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
        rates: Vec<u64>,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// The trader spins on its feed socket (`spec.trader.busyPoll`).
        #[arg(long)]
        busy_poll: bool,
        #[arg(long)]
        json: bool,
    },
    /// The trader's MongoDB writer against a plain insert_many loop.
    Mongodb {
        #[arg(long, env = "MONGODB_URI", hide_env_values = true)]
        mongodb_uri: String,
        /// Trades to write with each.
        #[arg(long, default_value_t = 200_000)]
        trades: u64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct FeedRow {
    pub requested_rate: u64,
    pub published: u64,
    pub trades_per_second: f64,
    pub packets_per_second: f64,
    pub received: u64,
    pub gaps: u64,
    pub recovered: u64,
    pub lost: u64,
    pub p50_micros: f64,
    pub p99_micros: f64,
    pub p999_micros: f64,
    /// The same to user-space receipt (includes the trader thread's wake-up).
    pub user_p50_micros: f64,
    pub user_p99_micros: f64,
    pub user_p999_micros: f64,
}

fn spec(rate: u64, packet_bytes: u32, seconds: u64, busy_poll: bool) -> LatencyExperimentSpec {
    LatencyExperimentSpec {
        exchange: ExchangeSpec {
            symbols: vec![
                Instrument::EurUsd,
                Instrument::GbpUsd,
                Instrument::UsdJpy,
                Instrument::BtcUsd,
                Instrument::EthUsd,
            ],
            rate_per_second: rate,
            seed: 1,
            microbursts: None,
            transport: Transport::Udp,
            max_packet_bytes: packet_bytes,
            retransmission_buffer: 16 * 1024 * 1024,
            faults: None,
            replay: None,
        },
        trader: TraderSpec {
            strategy: StrategySpec {
                enabled: false,
                ..StrategySpec::default()
            },
            persistence: PersistenceSpec {
                enabled: false,
                ..PersistenceSpec::default()
            },
            busy_poll,
            ..TraderSpec::default()
        },
        placement: Default::default(),
        duration: Some(format!("{seconds}s")),
        slo: None,
        tls: None,
    }
}

async fn run_rate(
    rate: u64,
    packet_bytes: u32,
    seconds: u64,
    busy_poll: bool,
) -> anyhow::Result<FeedRow> {
    let duration = Duration::from_secs(seconds);
    let pair = LocalPair::start(
        "bench",
        &spec(rate, packet_bytes, seconds, busy_poll),
        &PairOptions {
            ports: None,
            duration: Some(duration),
            mongodb_uri: None,
            trader_port: 0,
            exchange_port: 0,
            replay: None,
        },
    )
    .await?;
    let started = Instant::now();
    pair.exchange.feed_finished().await;
    let elapsed = started.elapsed().as_secs_f64().max(1e-3);
    pair.trader.wait_settled(Duration::from_secs(5)).await;
    let (results, exchange) = pair.stop().await?;
    let latency = results.feed_latency.clone().unwrap_or_default();
    let user = results.feed_latency_user.clone().unwrap_or_default();
    Ok(FeedRow {
        requested_rate: rate,
        published: exchange.trades_published,
        trades_per_second: exchange.trades_published as f64 / elapsed,
        packets_per_second: exchange.packets_sent as f64 / elapsed,
        received: results.received,
        gaps: results.gaps,
        recovered: results.recovered,
        lost: results.lost,
        p50_micros: latency.p50_micros,
        p99_micros: latency.p99_micros,
        p999_micros: latency.p999_micros,
        user_p50_micros: user.p50_micros,
        user_p99_micros: user.p99_micros,
        user_p999_micros: user.p999_micros,
    })
}

pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Feed {
            rates,
            seconds,
            packet_bytes,
            json,
        } => {
            let mut rows = Vec::new();
            for rate in rates {
                let row = run_rate(rate, packet_bytes, seconds, false).await?;
                if !json {
                    print_feed_row(&row, rows.is_empty());
                }
                rows.push(row);
            }
            let best = rows
                .iter()
                .filter(|r| r.gaps == 0 && r.lost == 0)
                .max_by(|a, b| a.trades_per_second.total_cmp(&b.trades_per_second));
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "rows": rows, "maxZeroLoss": best })
                    )?
                );
            } else if let Some(b) = best {
                println!(
                    "\nmax with zero gaps: {:.0} trades/s, {:.0} packets/s ({} B packets)",
                    b.trades_per_second, b.packets_per_second, packet_bytes
                );
            } else {
                println!("\nno rate ran without gaps");
            }
        }
        BenchCommand::Latency {
            rates,
            seconds,
            busy_poll,
            json,
        } => {
            let mut rows = Vec::new();
            for rate in rates {
                let row = run_rate(rate, 1472, seconds, busy_poll).await?;
                if !json {
                    print_feed_row(&row, rows.is_empty());
                }
                rows.push(row);
            }
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "rows": rows }))?
                );
            }
        }
        BenchCommand::Mongodb {
            mongodb_uri,
            trades,
            json,
        } => {
            let writer = bench_writer(&mongodb_uri, trades).await?;
            let plain_indexed = bench_plain(&mongodb_uri, trades, true).await?;
            let plain_bare = bench_plain(&mongodb_uri, trades, false).await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "trades": trades,
                        "writerPerSecond": writer,
                        "insertManySameIndexesPerSecond": plain_indexed,
                        "insertManyNoIndexesPerSecond": plain_bare,
                    })
                );
            } else {
                println!("MongoDB writes of {trades} trades:");
                println!(
                    "  ticklab trader writer (unique + recent indexes): {writer:>10.0} trades/s"
                );
                println!(
                    "  plain insert_many loop, same indexes           : {plain_indexed:>10.0} trades/s"
                );
                println!(
                    "  plain insert_many loop, no secondary index      : {plain_bare:>10.0} trades/s"
                );
            }
        }
    }
    Ok(())
}

fn print_feed_row(r: &FeedRow, header: bool) {
    if header {
        println!(
            "{:>9} {:>10} {:>10} {:>10} {:>5} {:>9} {:>5} | {:>24} | {:>24}",
            "rate",
            "trades/s",
            "packets/s",
            "published",
            "gaps",
            "recovered",
            "lost",
            "kernel rx: p50/p99/p99.9",
            "user rx: p50/p99/p99.9"
        );
    }
    let triple = |a: f64, b: f64, c: f64| format!("{a:.1} / {b:.1} / {c:.1} µs");
    println!(
        "{:>9} {:>10.0} {:>10.0} {:>10} {:>5} {:>9} {:>5} | {:>24} | {:>24}",
        r.requested_rate,
        r.trades_per_second,
        r.packets_per_second,
        r.published,
        r.gaps,
        r.recovered,
        r.lost,
        triple(r.p50_micros, r.p99_micros, r.p999_micros),
        triple(r.user_p50_micros, r.user_p99_micros, r.user_p999_micros),
    );
}

fn bench_symbols() -> Vec<ticklab_wire::Symbol> {
    [Instrument::EurUsd, Instrument::BtcUsd, Instrument::UsdJpy]
        .iter()
        .filter_map(|i| ticklab_wire::Symbol::new(i.symbol()).ok())
        .collect()
}

fn sample_trade(seq: u64, symbols: &[ticklab_wire::Symbol]) -> ticklab_wire::Trade {
    ticklab_wire::Trade {
        symbol: symbols[seq as usize % symbols.len()],
        price: ticklab_wire::Price(108_000_000 + (seq % 1000) as i64),
        quantity: ticklab_wire::Quantity(100_000_000),
        side: if seq.is_multiple_of(2) {
            ticklab_wire::Side::Buy
        } else {
            ticklab_wire::Side::Sell
        },
        trade_id: seq,
        send_ts_ns: ticklab_wire::now_unix_nanos(),
    }
}

/// Offers `n` trades to the trader's writer in feed-sized batches and times until
/// all are persisted.
async fn bench_writer(uri: &str, n: u64) -> anyhow::Result<f64> {
    let registry = prometheus::Registry::new();
    let metrics = ticklab_trader::metrics::TraderMetrics::register(&registry)?;
    let stop = tokio_util::sync::CancellationToken::new();
    let experiment = format!("bench-writer-{}", ticklab_wire::now_unix_nanos());
    let (store, writer) = ticklab_trader::store::TradeStore::connect(
        uri,
        &experiment,
        n as usize + 1,
        metrics,
        stop.clone(),
    )
    .await?;
    let symbols = bench_symbols();
    let started = Instant::now();
    let session: std::sync::Arc<str> = std::sync::Arc::from("BENCH");
    let mut seq = 1;
    while seq <= n {
        // Feed-sized batches: one packet's worth of trades each.
        let trades: Vec<_> = (seq..(seq + 33).min(n + 1))
            .map(|s| ticklab_trader::store::ReceivedTrade {
                seq: s,
                trade: sample_trade(s, &symbols),
                received_at_ns: ticklab_wire::now_unix_nanos(),
                recovered: false,
            })
            .collect();
        seq += trades.len() as u64;
        store.offer(ticklab_trader::store::TradeBatch {
            session: session.clone(),
            trades,
        });
    }
    while store
        .counts
        .persisted
        .load(std::sync::atomic::Ordering::Relaxed)
        + store
            .counts
            .duplicates
            .load(std::sync::atomic::Ordering::Relaxed)
        < n
    {
        if store
            .counts
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
        {
            anyhow::bail!("the writer dropped trades during the benchmark");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    stop.cancel();
    writer.await?;
    Ok(rate)
}

/// The reference: documents of the same shape, `insert_many` in batches of 5000,
/// one after another; with the writer's indexes, or with none.
async fn bench_plain(uri: &str, n: u64, indexed: bool) -> anyhow::Result<f64> {
    use mongodb::bson::doc;
    let client = mongodb::Client::with_uri_str(uri)
        .await
        .context("MongoDB")?;
    let db = client
        .default_database()
        .unwrap_or_else(|| client.database("ticklab"));
    let coll = db.collection::<mongodb::bson::Document>("bench_plain");
    let _ = coll.drop().await;
    if indexed {
        use mongodb::IndexModel;
        use mongodb::options::IndexOptions;
        coll.create_index(
            IndexModel::builder()
                .keys(doc! { "experiment": 1, "session": 1, "seq": 1 })
                .options(IndexOptions::builder().unique(true).build())
                .build(),
        )
        .await?;
        coll.create_index(
            IndexModel::builder()
                .keys(doc! { "experiment": 1, "receivedAtNs": -1 })
                .build(),
        )
        .await?;
    }
    let symbols = bench_symbols();
    let started = Instant::now();
    let mut seq = 1u64;
    while seq <= n {
        let end = (seq + 5000).min(n + 1);
        let docs: Vec<_> = (seq..end)
            .map(|s| {
                let t = sample_trade(s, &symbols);
                doc! {
                    "experiment": "bench-plain", "session": "BENCH", "seq": s as i64,
                    "symbol": t.symbol.as_str(), "price": t.price.to_string(),
                    "quantity": t.quantity.to_string(), "side": "buy", "tradeId": s as i64,
                    "sentAtNs": t.send_ts_ns as i64, "receivedAtNs": t.send_ts_ns as i64,
                    "latencyMicros": 1.0, "recovered": false,
                }
            })
            .collect();
        coll.insert_many(docs).await?;
        seq = end;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let count = coll.count_documents(doc! {}).await?;
    anyhow::ensure!(count == n, "plain loop stored {count} of {n}");
    let _ = coll
        .find(doc! {})
        .limit(1)
        .await?
        .try_collect::<Vec<_>>()
        .await;
    let _ = coll.drop().await;
    Ok(rate)
}
