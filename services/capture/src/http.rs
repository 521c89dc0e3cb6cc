//! The capture's HTTP side, next to the admin endpoints: `GET /report` (what the
//! wire showed so far, JSON), `POST /keylog` (NSS key log lines, for a trader or a
//! person handing secrets over), `POST /mirror` (a mirror's counts),
//! `GET /files` and `GET /files/{name}` (the pcapng files written out whole). Errors are JSON with a 4xx status.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ticklab_admin::json_error;

use ticklab_mirror::MirrorStats;

use crate::{Input, Shared};

/// Largest key log text one POST may carry.
const MAX_KEYLOG_BYTES: usize = 4 << 20;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/report", get(report))
        .route(
            "/keylog",
            axum::routing::post(keylog).layer(DefaultBodyLimit::max(MAX_KEYLOG_BYTES)),
        )
        .route("/mirror", axum::routing::post(mirror_stats))
        .route("/files", get(files))
        .route("/files/{name}", get(file))
        .with_state(shared)
}

async fn report(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(shared.report.read().clone()).into_response()
}

async fn keylog(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let Ok(text) = String::from_utf8(body.to_vec()) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "the key log must be UTF-8 text (NSS key log lines)",
        );
    };
    if shared.input.lock().send(Input::KeyLog(text)).is_err() {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "the capture is stopping");
    }
    StatusCode::NO_CONTENT.into_response()
}

/// A mirror's counts (it has no port of its own to scrape): exported with the
/// capture's metrics, labelled with the mirror's pod.
async fn mirror_stats(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let stats: MirrorStats = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                &format!("not a mirror's report: {e}"),
            );
        }
    };
    if stats.pod.is_empty() || stats.pod.len() > 253 {
        return json_error(StatusCode::BAD_REQUEST, "pod must be 1 to 253 characters");
    }
    shared
        .metrics
        .mirror_reported(&stats, &mut shared.mirrors.lock());
    StatusCode::NO_CONTENT.into_response()
}

async fn files(State(shared): State<Arc<Shared>>) -> Response {
    let names: Vec<String> = shared
        .files
        .read()
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    axum::Json(serde_json::json!({ "files": names })).into_response()
}

async fn file(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    // Only files the capture wrote out, by exact name: no path reaches elsewhere.
    let path = shared
        .files
        .read()
        .iter()
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy() == name))
        .cloned();
    let Some(path) = path else {
        return json_error(
            StatusCode::NOT_FOUND,
            &format!("no capture file named {name:?}"),
        );
    };
    match tokio::fs::File::open(&path).await {
        Ok(f) => (
            [(header::CONTENT_TYPE, "application/vnd.tcpdump.pcap")],
            Body::from_stream(tokio_util::io::ReaderStream::new(f)),
        )
            .into_response(),
        Err(e) => json_error(StatusCode::NOT_FOUND, &format!("{name}: {e}")),
    }
}
