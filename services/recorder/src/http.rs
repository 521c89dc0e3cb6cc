//! The recorder's HTTP API: `GET /recording` (state, counts, index), `PUT /recording`
//! with `{"enabled": bool}` (the toggle the operator flips), `GET /files` (the
//! index) and `GET /files/{name}` (one file, streamed, for `kubectl port-forward`
//! and Wireshark or for a replaying exchange). Only indexed names are served.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use ticklab_admin::json_error;

use crate::Shared;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/recording", get(status).put(toggle))
        .route("/files", get(files))
        .route("/files/{name}", get(download))
        .with_state(shared)
}

async fn status(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(shared.status()).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Toggle {
    enabled: bool,
}

async fn toggle(
    State(shared): State<Arc<Shared>>,
    body: Result<axum::Json<Toggle>, JsonRejection>,
) -> Response {
    match body {
        Ok(axum::Json(Toggle { enabled })) => {
            if shared.control.enabled() != enabled {
                tracing::info!(enabled, "recording toggled");
            }
            shared.control.set(enabled);
            axum::Json(shared.status()).into_response()
        }
        Err(rejection) => json_error(
            StatusCode::BAD_REQUEST,
            &format!(
                "expected {{\"enabled\": true|false}}: {}",
                rejection.body_text()
            ),
        ),
    }
}

async fn files(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(shared.index.read().clone()).into_response()
}

async fn download(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    let known = shared.index.read().files.iter().any(|f| f.name == name);
    // The index is the allow-list: no path from a request reaches the file system.
    if !known {
        return json_error(
            StatusCode::NOT_FOUND,
            &format!("no recorded file named {name:?}; GET /files lists them"),
        );
    }
    let path = shared.config.directory.join(&name);
    match tokio::fs::File::open(&path).await {
        Ok(file) => {
            let content_type = if name.ends_with(".pcap") {
                "application/vnd.tcpdump.pcap"
            } else {
                "application/x-ndjson"
            };
            let stream = tokio_util::io::ReaderStream::new(file);
            (
                [
                    (header::CONTENT_TYPE, content_type.to_string()),
                    (
                        header::CONTENT_DISPOSITION,
                        format!("attachment; filename=\"{name}\""),
                    ),
                ],
                Body::from_stream(stream),
            )
                .into_response()
        }
        Err(e) => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot open {name}: {e}"),
        ),
    }
}
