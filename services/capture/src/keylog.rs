//! What the capture gets from the trader's API: its TLS key log (`GET /keylog`,
//! polled from where the last answer ended, so each line comes once) and its own
//! receive stamp of every live trade (`GET /stamps`, also from a cursor), to set
//! beside the wire's for the same trade. A trader that is not up yet, or has no key
//! log, is polled again later; failures are counted, never fatal.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::{Input, Shared};

const KEYLOG_EVERY: Duration = Duration::from_millis(200);
/// The trader keeps about a second of stamps at its highest rates.
const STAMPS_EVERY: Duration = Duration::from_millis(200);

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StampsView {
    session: Option<String>,
    next: u64,
    missed: u64,
    stamps: Vec<(u64, u64)>,
}

pub async fn poll_trader(api: String, shared: Arc<Shared>, stop: CancellationToken) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap_or_default();
    let base = api.trim_end_matches('/').to_string();
    let mut next_line: u64 = 0;
    let mut next_stamp: u64 = 0;
    let mut keylog = tokio::time::interval(KEYLOG_EVERY);
    let mut stamps = tokio::time::interval(STAMPS_EVERY);
    for t in [&mut keylog, &mut stamps] {
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
            _ = stamps.tick() => {
                while poll_stamps(&http, &base, &mut next_stamp, &shared).await {}
            }
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

/// One `GET /stamps` from the cursor on; whether stamps came back (ask again: a page
/// may have more behind it).
async fn poll_stamps(http: &reqwest::Client, base: &str, next: &mut u64, shared: &Shared) -> bool {
    let view = match http.get(format!("{base}/stamps?after={next}")).send().await {
        Ok(r) if r.status().is_success() => r.json::<StampsView>().await.ok(),
        _ => None,
    };
    let Some(view) = view else {
        shared
            .metrics
            .poll_failures
            .with_label_values(&["stamps"])
            .inc();
        return false;
    };
    shared.metrics.app_stamps_missed.inc_by(view.missed);
    *next = view.next;
    let more = !view.stamps.is_empty();
    if let Some(session) = view.session
        && !view.stamps.is_empty()
    {
        let _ = shared.input.lock().send(Input::AppReceived {
            session,
            stamps: view.stamps,
        });
    }
    more
}
