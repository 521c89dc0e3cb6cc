//! What the capture gets from the trader's API: its TLS key log (`GET /keylog`,
//! polled from where the last answer ended, so each line comes once) and its own
//! receive stamps of recent trades (`GET /trades`), to set beside the wire's for
//! the same trades. A trader that is not up yet, or has no key log, is polled
//! again later; failures are counted, never fatal.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::{Input, Shared};

const KEYLOG_EVERY: Duration = Duration::from_millis(200);
const TRADES_EVERY: Duration = Duration::from_millis(500);
/// Trades asked for per poll (the trader keeps its most recent 1000).
const TRADES_PER_POLL: usize = 1000;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TradesView {
    trades: Vec<StoredTrade>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredTrade {
    session: String,
    seq: u64,
    received_at_ns: u64,
    #[serde(default)]
    recovered: bool,
}

pub async fn poll_trader(api: String, shared: Arc<Shared>, stop: CancellationToken) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap_or_default();
    let base = api.trim_end_matches('/').to_string();
    let mut next_line: u64 = 0;
    let mut keylog = tokio::time::interval(KEYLOG_EVERY);
    let mut trades = tokio::time::interval(TRADES_EVERY);
    for t in [&mut keylog, &mut trades] {
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = keylog.tick() => {
                // Ask again at once while full pages come back.
                while let Some(more) = poll_keylog(&http, &base, &mut next_line, &shared).await {
                    if !more { break; }
                }
            }
            _ = trades.tick() => poll_trades(&http, &base, &shared).await,
        }
    }
}

/// One `GET /keylog`; Some(whether there may be more), None on failure.
async fn poll_keylog(
    http: &reqwest::Client,
    base: &str,
    next_line: &mut u64,
    shared: &Shared,
) -> Option<bool> {
    let failed = |what: &str| {
        shared
            .metrics
            .poll_failures
            .with_label_values(&[what])
            .inc()
    };
    let response = match http
        .get(format!("{base}/keylog?since={next_line}"))
        .send()
        .await
    {
        Ok(r) => r,
        Err(_) => {
            failed("keylog");
            return None;
        }
    };
    // 404: the experiment logs no keys; nothing to decrypt with, not a failure.
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        return None;
    }
    if !response.status().is_success() {
        failed("keylog");
        return None;
    }
    let next = response
        .headers()
        .get("x-keylog-next")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let text = match response.text().await {
        Ok(t) => t,
        Err(_) => {
            failed("keylog");
            return None;
        }
    };
    let Some(next) = next else {
        failed("keylog");
        return None;
    };
    let more = next > *next_line && !text.is_empty();
    *next_line = next;
    if !text.is_empty() {
        let _ = shared.input.lock().send(Input::KeyLog(text));
    }
    Some(more)
}

async fn poll_trades(http: &reqwest::Client, base: &str, shared: &Shared) {
    let view = match http
        .get(format!("{base}/trades?limit={TRADES_PER_POLL}"))
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => r.json::<TradesView>().await.ok(),
        _ => None,
    };
    let Some(view) = view else {
        shared
            .metrics
            .poll_failures
            .with_label_values(&["trades"])
            .inc();
        return;
    };
    let stamps: Vec<(String, u64, u64)> = view
        .trades
        .into_iter()
        // A recovered trade's receive stamp is its recovery, not its arrival.
        .filter(|t| !t.recovered)
        .map(|t| (t.session, t.seq, t.received_at_ns))
        .collect();
    if !stamps.is_empty() {
        let _ = shared.input.lock().send(Input::AppReceived(stamps));
    }
}
