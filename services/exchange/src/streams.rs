//! TCP and WebSocket feed subscribers. The publisher puts each packet on a broadcast
//! channel; one task per subscriber forwards it (TCP: length-prefixed; WebSocket: one
//! binary message per packet). A subscriber that falls behind the channel misses
//! packets — counted here, and recovered by the trader through retransmission — so
//! one slow reader never slows the feed. With TLS, a subscriber counts (and can
//! start the feed) only once its handshake has completed.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use bytes::Bytes;
use futures::SinkExt;
use tokio::net::TcpListener;
use tokio::sync::{Notify, broadcast};
use tokio_util::codec::{FramedWrite, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

use crate::ExchangeStats;
use crate::metrics::ExchangeMetrics;
use crate::tls::{TlsAcceptor, secure};

#[derive(Clone)]
pub struct Subscribers {
    pub packets: broadcast::Sender<Bytes>,
    pub stats: Arc<ExchangeStats>,
    pub metrics: ExchangeMetrics,
    /// Woken when the first subscriber arrives (the feed's clock starts then).
    pub first: Arc<Notify>,
    pub stop: CancellationToken,
}

impl Subscribers {
    fn joined(&self) {
        let before = self.stats.subscribers.fetch_add(1, Ordering::AcqRel);
        self.metrics.subscribers.inc();
        if before == 0 {
            self.first.notify_one();
        }
    }

    fn left(&self) {
        self.stats.subscribers.fetch_sub(1, Ordering::AcqRel);
        self.metrics.subscribers.dec();
    }

    fn lagged(&self, n: u64) {
        self.stats.packets_lagged.fetch_add(n, Ordering::Relaxed);
        self.metrics
            .packets_dropped
            .with_label_values(&["lagging_subscriber"])
            .inc_by(n);
    }
}

/// Accepts TCP subscribers until stopped; through TLS when `tls` is set.
pub async fn serve_tcp(listener: TcpListener, tls: Option<TlsAcceptor>, subs: Subscribers) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = subs.stop.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => { tracing::warn!(error = %e, "feed accept failed"); continue }
            },
        };
        let _ = stream.set_nodelay(true);
        let subs = subs.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let Some(stream) = secure(tls.as_ref(), stream, peer).await else {
                return;
            };
            // Subscribed from here: the packets published during a handshake are not
            // this subscriber's (the feed starts at the first subscriber anyway).
            let mut rx = subs.packets.subscribe();
            subs.joined();
            tracing::info!(%peer, "TCP feed subscriber connected");
            let codec = LengthDelimitedCodec::builder()
                .length_field_length(2)
                .max_frame_length(ticklab_wire::frame::MAX_FRAME)
                .new_codec();
            let mut sink = FramedWrite::new(stream, codec);
            pump(&subs, &mut rx, &mut sink, |p| p).await;
            subs.left();
        });
    }
}

/// The WebSocket feed: `GET /feed` upgrades; each packet is one binary message.
pub fn ws_router(subs: Subscribers) -> Router {
    Router::new().route("/feed", get(upgrade)).with_state(subs)
}

async fn upgrade(State(subs): State<Subscribers>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| forward(socket, subs))
}

async fn forward(mut socket: WebSocket, subs: Subscribers) {
    let mut rx = subs.packets.subscribe();
    subs.joined();
    pump(&subs, &mut rx, &mut socket, WsMessage::Binary).await;
    let _ = socket.send(WsMessage::Close(None)).await;
    subs.left();
}

/// Forwards packets to one subscriber until it goes away or the exchange stops;
/// packets it was too slow for are counted as lagged.
async fn pump<S, T>(
    subs: &Subscribers,
    rx: &mut broadcast::Receiver<Bytes>,
    sink: &mut S,
    wrap: fn(Bytes) -> T,
) where
    S: futures::Sink<T> + Unpin,
{
    loop {
        let packet = tokio::select! {
            _ = subs.stop.cancelled() => return,
            p = rx.recv() => p,
        };
        match packet {
            Ok(p) => {
                if sink.send(wrap(p)).await.is_err() {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => subs.lagged(n),
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
