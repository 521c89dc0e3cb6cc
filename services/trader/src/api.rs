//! The trader's REST API, served on its admin port next to `/metrics`:
//! `GET /trades?limit=50` (the most recent trades with their latency, from MongoDB
//! when persistence is on, else from memory) and `GET /stats` (counts and latency
//! percentiles). Errors are JSON with a 4xx status.
//!
//! `GET /stamps?after=N`: the receive stamp of every live trade from cursor N on, at
//! most [`STAMPS_PAGE`] per answer, as JSON `{session, first, next, missed, stamps:
//! [[seq, receivedAtNs], ...]}`; `next` is the cursor of the next poll, `missed` the
//! stamps gone before they were read. A capture polls it to set the trader's clock
//! beside the wire's for every trade, not a sample.
//!
//! `GET /keylog?since=N` (with `spec.tls.keyLog`): the trader's TLS key log, NSS
//! key log format (SSLKEYLOGFILE), as `text/plain`, one line per secret, from line
//! index N (default 0) on, at most [`KEYLOG_PAGE_LINES`] lines per answer. The
//! header `X-Keylog-Next` is the index after the last line returned: the `since` of
//! the next poll (a capture service polls this to decrypt the trader's traffic, and
//! asks again at once while a full page came back). `X-Keylog-First` is the oldest
//! index still held (the log keeps the newest lines, bounded). Without key logging:
//! 404 with a JSON error. Anyone who can reach this port can decrypt the trader's
//! TLS traffic with it: it is for a lab.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use ticklab_admin::json_error;
use ticklab_crd::ExperimentResults;

use crate::state::{RECENT_TRADES, TraderShared};
use crate::store::{StoredTrade, TradeStore};
use crate::tls::SessionKeyLog;

/// Most receive stamps one `GET /stamps` returns.
pub const STAMPS_PAGE: usize = 50_000;

/// Most key log lines one `GET /keylog` returns.
pub const KEYLOG_PAGE_LINES: usize = 10_000;

#[derive(Clone)]
pub struct ApiState {
    pub shared: Arc<TraderShared>,
    /// Set once MongoDB answered (with persistence, `shared.store` holds the counts
    /// from the start).
    pub store: Arc<OnceLock<TradeStore>>,
    /// The TLS key log, when the experiment asks for one.
    pub key_log: Option<Arc<SessionKeyLog>>,
}

pub fn api_router(state: ApiState) -> Router {
    Router::new()
        .route("/trades", get(trades))
        .route("/stats", get(stats))
        .route("/keylog", get(keylog))
        .route("/stamps", get(stamps))
        .with_state(state)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TradesView {
    /// "mongodb" or "memory".
    source: &'static str,
    trades: Vec<StoredTrade>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StampsView {
    session: Option<String>,
    first: u64,
    next: u64,
    missed: u64,
    stamps: Vec<(u64, u64)>,
}

#[tracing::instrument(skip_all)]
async fn stamps(
    State(state): State<ApiState>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let after = match params.get("after").map(|v| v.parse::<u64>()) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "after must be a cursor (a non-negative integer) from the last answer's next, got {:?}",
                    params.get("after").map(String::as_str).unwrap_or_default()
                ),
            );
        }
    };
    let feed = state.shared.feed.lock();
    let (first, stamps) = feed.stamps.page(after, STAMPS_PAGE);
    let view = StampsView {
        session: feed.stamps.session.clone(),
        first,
        next: first + stamps.len() as u64,
        missed: if after <= feed.stamps.next() {
            first.saturating_sub(after)
        } else {
            0
        },
        stamps,
    };
    drop(feed);
    axum::Json(view).into_response()
}

#[tracing::instrument(skip_all)]
async fn trades(
    State(state): State<ApiState>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let limit = match params.get("limit").map(|v| v.parse::<usize>()) {
        None => 50,
        Some(Ok(n)) if (1..=RECENT_TRADES).contains(&n) => n,
        Some(_) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "limit must be an integer from 1 to {RECENT_TRADES}, got {:?}",
                    params.get("limit").map(String::as_str).unwrap_or_default()
                ),
            );
        }
    };
    if state.shared.store.is_some() && state.store.get().is_none() {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the trader is still waiting for MongoDB; no trades yet",
        );
    }
    if let Some(store) = state.store.get() {
        // limit <= RECENT_TRADES, far inside i64.
        return match store.recent(limit as i64).await {
            Ok(trades) => axum::Json(TradesView {
                source: "mongodb",
                trades,
            })
            .into_response(),
            Err(e) => json_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        };
    }
    let feed = state.shared.feed.lock();
    let session = feed.session.as_deref().unwrap_or_default();
    let trades = feed
        .recent
        .iter()
        .rev()
        .take(limit)
        .map(|t| StoredTrade::from_received(session, t))
        .collect();
    axum::Json(TradesView {
        source: "memory",
        trades,
    })
    .into_response()
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StatsView {
    experiment: String,
    session: Option<String>,
    /// Trades currently missing and being recovered.
    missing: u64,
    /// Trades waiting to be written to MongoDB.
    persist_queued: u64,
    /// The results are final: the session has ended, nothing is missing, and every
    /// received trade has been written to MongoDB or counted as not persisted.
    settled: bool,
    #[serde(flatten)]
    results: ExperimentResults,
}

#[tracing::instrument(skip_all)]
async fn stats(State(state): State<ApiState>) -> Response {
    let results = state.shared.results();
    let (session, missing) = {
        let feed = state.shared.feed.lock();
        (feed.session.clone(), feed.missing)
    };
    let persist_queued = state.store.get().map_or(0, |store| store.queued() as u64);
    let feed_settled = *state.shared.settled.borrow();
    axum::Json(StatsView {
        experiment: state.shared.experiment.clone(),
        session,
        missing,
        persist_queued,
        settled: feed_settled && persist_queued == 0,
        results,
    })
    .into_response()
}

#[tracing::instrument(skip_all)]
async fn keylog(
    State(state): State<ApiState>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let Some(key_log) = &state.key_log else {
        return json_error(
            StatusCode::NOT_FOUND,
            "no TLS key log: the experiment does not set spec.tls.keyLog",
        );
    };
    let since = match params.get("since").map(|v| v.parse::<u64>()) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "since must be a line index (an integer from 0), got {:?}",
                    params.get("since").map(String::as_str).unwrap_or_default()
                ),
            );
        }
    };
    let page = key_log.read_from(since, KEYLOG_PAGE_LINES);
    let mut body = String::with_capacity(page.lines.iter().map(|l| l.len() + 1).sum());
    for line in &page.lines {
        body.push_str(line);
        body.push('\n');
    }
    (
        [
            (
                axum::http::header::CONTENT_TYPE,
                "text/plain; charset=utf-8".to_string(),
            ),
            (
                axum::http::HeaderName::from_static("x-keylog-next"),
                page.next.to_string(),
            ),
            (
                axum::http::HeaderName::from_static("x-keylog-first"),
                page.first.to_string(),
            ),
        ],
        body,
    )
        .into_response()
}
