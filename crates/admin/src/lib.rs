//! The admin side every ticklab service shares: one HTTP port serving `/metrics`
//! (Prometheus text), `/healthz` and `/readyz`, onto which a service mounts its own
//! routes; JSON or human logs through `tracing`; and SIGTERM/Ctrl-C turned into a
//! cancellation token that every task of the service watches.

#![forbid(unsafe_code)]

pub mod net;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use prometheus;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("admin server failed: {0}")]
    Serve(#[source] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Shared by the admin routes and the service: the metric registry and the
/// readiness flag (set once the service can do its job).
#[derive(Clone, Default)]
pub struct AdminState {
    pub registry: Registry,
    ready: Arc<AtomicBool>,
}

impl AdminState {
    pub fn new(registry: Registry) -> Self {
        Self {
            registry,
            ready: Arc::default(),
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// `/metrics`, `/healthz`, `/readyz`; merge a service's own routes into it.
pub fn admin_router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let mut body = Vec::new();
    match TextEncoder::new().encode(&state.registry.gather(), &mut body) {
        Ok(()) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body).into_response(),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

async fn readyz(State(state): State<AdminState>) -> Response {
    if state.is_ready() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

/// The error body every ticklab HTTP endpoint answers with: `{"error": "..."}`.
pub fn json_error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

/// Binds `addr` (port 0 picks a free port), naming the address when that fails.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    net::tcp_listener(addr)
        .and_then(TcpListener::from_std)
        .map_err(|source| Error::Bind { addr, source })
}

/// Serves `router` until `shutdown` is cancelled, then finishes in-flight requests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .map_err(Error::Serve)
}

/// Registers a collector and hands it back (for metric structs built field by field).
pub fn register<T: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    collector: T,
) -> prometheus::Result<T> {
    registry.register(Box::new(collector.clone()))?;
    Ok(collector)
}

/// The registry of a service that belongs to one experiment (exchange, trader):
/// every series carries `experiment="NAME"`, so the metrics say whose they are
/// wherever they are scraped (a PodMonitor in a cluster, a plain Prometheus next to
/// `ticklab run`), and `ticklab_build_info` names the component and version.
pub fn experiment_registry(component: &str, experiment: &str) -> prometheus::Result<Registry> {
    let labels =
        std::collections::HashMap::from([("experiment".to_string(), experiment.to_string())]);
    let registry = Registry::new_custom(None, Some(labels))?;
    register_process_metrics(&registry, component)?;
    Ok(registry)
}

/// The registry of a service that serves one session of an experiment (the recorder
/// of a RecordingSession, the mirror and capture of a MirrorSession): `experiment`
/// plus the session's own label (`recording`, `mirror_session`) on every series.
pub fn session_registry(
    component: &str,
    experiment: &str,
    session_label: &str,
    session: &str,
) -> prometheus::Result<Registry> {
    let labels = std::collections::HashMap::from([
        ("experiment".to_string(), experiment.to_string()),
        (session_label.to_string(), session.to_string()),
    ]);
    let registry = Registry::new_custom(None, Some(labels))?;
    register_process_metrics(&registry, component)?;
    Ok(registry)
}

/// What every ticklab process exports about itself: `ticklab_build_info{component,
/// version} 1` (which build runs; a series that exists while the process is
/// scraped) and the standard `process_*` series (CPU seconds, resident memory, open
/// file descriptors) that health panels read.
pub fn register_process_metrics(registry: &Registry, component: &str) -> prometheus::Result<()> {
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    let info = prometheus::IntGaugeVec::new(
        prometheus::Opts::new(
            "ticklab_build_info",
            "Always 1: the ticklab component and version of this process.",
        ),
        &["component", "version"],
    )?;
    registry.register(Box::new(info.clone()))?;
    info.with_label_values(&[component, env!("CARGO_PKG_VERSION")])
        .set(1);
    Ok(())
}

/// Histogram buckets in seconds that resolve microseconds: 1 µs to ~4 s in steps of
/// about ×1.5 below 1 ms and ×2 above.
pub fn latency_buckets_seconds() -> Vec<f64> {
    let mut buckets = Vec::new();
    let mut micros = 1.0f64;
    while micros < 1000.0 {
        buckets.push(micros / 1e6);
        micros = (micros * 1.5).round().max(micros + 1.0);
    }
    while micros <= 4_000_000.0 {
        buckets.push(micros / 1e6);
        micros *= 2.0;
    }
    buckets
}

/// Log format: JSON lines for clusters, compact text for a terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

impl LogFormat {
    /// `TICKLAB_LOG_FORMAT=json|text`, else `default`.
    pub fn from_env_or(default: LogFormat) -> LogFormat {
        match std::env::var("TICKLAB_LOG_FORMAT").as_deref() {
            Ok("json") => LogFormat::Json,
            Ok("text") => LogFormat::Text,
            _ => default,
        }
    }
}

/// Installs the global subscriber; `RUST_LOG` filters (default `info`). Logs go to
/// stderr so stdout stays free for reports. Calling it twice is harmless.
pub fn init_tracing(format: LogFormat, default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.compact().try_init(),
    };
}

/// Cancels `token` on SIGTERM or Ctrl-C (whichever comes first). The handlers are
/// installed before this returns, so a signal that arrives at once (a pod deleted
/// as it starts) still shuts the service down cleanly instead of killing it.
/// Must be called inside a Tokio runtime.
pub fn cancel_on_signal(token: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let interrupt = signal(SignalKind::interrupt());
        tokio::spawn(async move {
            match (term, interrupt) {
                (Ok(mut term), Ok(mut interrupt)) => {
                    tokio::select! {
                        _ = term.recv() => {},
                        _ = interrupt.recv() => {},
                    }
                }
                (term, interrupt) => {
                    // Without handlers the default action (exit) stays: say so.
                    tracing::error!(
                        terminate = ?term.err(),
                        interrupt = ?interrupt.err(),
                        "cannot handle shutdown signals; they will end the process abruptly"
                    );
                    return;
                }
            }
            tracing::info!("shutdown signal received");
            token.cancel();
        });
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown signal received");
        token.cancel();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_resolve_microseconds_and_increase() {
        let b = latency_buckets_seconds();
        assert_eq!(b[0], 1e-6);
        assert!(b.windows(2).all(|w| w[0] < w[1]));
        assert!(b.iter().filter(|v| **v < 10e-6).count() >= 5);
        assert!(*b.last().unwrap() >= 1.0);
    }

    #[test]
    fn experiment_registry_labels_every_series_with_the_experiment() {
        let registry = experiment_registry("trader", "quickstart").unwrap();
        let counter = prometheus::IntCounter::new("ticklab_test_total", "test").unwrap();
        registry.register(Box::new(counter.clone())).unwrap();
        counter.inc();
        let mut text = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut text)
            .unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.contains(r#"ticklab_test_total{experiment="quickstart"} 1"#),
            "{text}"
        );
        let version = env!("CARGO_PKG_VERSION");
        assert!(
            text.contains(&format!(
                r#"ticklab_build_info{{component="trader",version="{version}",experiment="quickstart"}} 1"#
            )),
            "{text}"
        );
        assert!(
            text.contains(r#"process_resident_memory_bytes{experiment="quickstart"}"#),
            "{text}"
        );
    }

    #[tokio::test]
    async fn serves_health_readiness_and_metrics() {
        let registry = Registry::new();
        let counter = prometheus::IntCounter::new("ticklab_test_total", "test").unwrap();
        registry.register(Box::new(counter.clone())).unwrap();
        counter.inc();
        let state = AdminState::new(registry);
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let token = CancellationToken::new();
        let server = tokio::spawn(serve(listener, admin_router(state.clone()), token.clone()));
        let base = format!("http://{addr}");
        let get = |p: &str| reqwest::get(format!("{base}{p}"));
        assert_eq!(get("/healthz").await.unwrap().status(), 200);
        assert_eq!(get("/readyz").await.unwrap().status(), 503);
        state.set_ready(true);
        assert_eq!(get("/readyz").await.unwrap().status(), 200);
        let body = get("/metrics").await.unwrap().text().await.unwrap();
        assert!(body.contains("ticklab_test_total 1"), "{body}");
        token.cancel();
        server.await.unwrap().unwrap();
    }
}
