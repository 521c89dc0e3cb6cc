//! The order API: immediate-or-cancel limit orders matched against each symbol's
//! last trade price — buys fill at the last price when their limit is at or above
//! it, sells when at or below; otherwise they expire. Two entry points share the
//! matcher: a binary TCP port (length-prefixed wire messages, Ack then Fill) and
//! `POST /orders` (JSON), either of them over TLS when the experiment asks for it.
//! Malformed input is an error answer, never a panic.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::{SinkExt, StreamExt};
use serde::Serialize;
use ticklab_admin::json_error;
use ticklab_wire::{Ack, AckStatus, Fill, Message, Order, Price, Symbol, now_unix_nanos};
use tokio::net::TcpListener;
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

use crate::ExchangeStats;
use crate::metrics::ExchangeMetrics;
use crate::ring::RetransmitRing;
use crate::tls::{TlsAcceptor, secure};

/// Last trade price per symbol, written by the publisher, read by the matcher.
pub struct LastPrices {
    symbols: Vec<Symbol>,
    prices: Vec<AtomicI64>,
}

impl LastPrices {
    pub fn new(symbols: Vec<Symbol>) -> Self {
        let prices = symbols.iter().map(|_| AtomicI64::new(0)).collect();
        Self { symbols, prices }
    }

    /// Sets `symbol`'s price (replay, where trades come without an index); a
    /// symbol the exchange does not list is ignored.
    pub fn set_symbol(&self, symbol: Symbol, price: Price) {
        if let Some(index) = self.symbols.iter().position(|s| *s == symbol) {
            self.set(index, price);
        }
    }

    #[inline]
    pub fn set(&self, index: usize, price: Price) {
        if let Some(slot) = self.prices.get(index) {
            slot.store(price.0, Ordering::Relaxed);
        }
    }

    fn get(&self, symbol: Symbol) -> Option<i64> {
        let i = self.symbols.iter().position(|s| *s == symbol)?;
        let p = self.prices.get(i)?.load(Ordering::Relaxed);
        (p > 0).then_some(p)
    }
}

#[derive(Clone)]
pub struct Matcher {
    pub prices: Arc<LastPrices>,
    pub ring: Arc<RetransmitRing>,
    pub stats: Arc<ExchangeStats>,
    pub metrics: ExchangeMetrics,
    next_id: Arc<AtomicU64>,
}

impl Matcher {
    pub fn new(
        prices: Arc<LastPrices>,
        ring: Arc<RetransmitRing>,
        stats: Arc<ExchangeStats>,
        metrics: ExchangeMetrics,
    ) -> Self {
        Self {
            prices,
            ring,
            stats,
            metrics,
            next_id: Arc::new(AtomicU64::new(1)),
        }
    }

    pub fn execute(&self, order: &Order) -> (Ack, Option<Fill>) {
        let received = now_unix_nanos();
        self.stats.orders_received.fetch_add(1, Ordering::Relaxed);
        if let Some(tick_sent) = self.ring.trade_send_ts(order.trigger_seq) {
            self.metrics
                .order_reaction
                .observe(received.saturating_sub(tick_sent) as f64 / 1e9);
        }
        let exchange_order_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let last = self.prices.get(order.symbol);
        let status = match last {
            _ if order.quantity.0 == 0 || order.limit_price.0 <= 0 => AckStatus::Rejected,
            None => AckStatus::Rejected,
            Some(last) => {
                let crosses = match order.side {
                    ticklab_wire::Side::Buy => order.limit_price.0 >= last,
                    ticklab_wire::Side::Sell => order.limit_price.0 <= last,
                };
                if crosses {
                    AckStatus::Accepted
                } else {
                    AckStatus::Expired
                }
            }
        };
        let (label, counter) = match status {
            AckStatus::Accepted => ("accepted", &self.stats.orders_filled),
            AckStatus::Expired => ("expired", &self.stats.orders_expired),
            AckStatus::Rejected => ("rejected", &self.stats.orders_rejected),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.metrics.orders.with_label_values(&[label]).inc();
        let ack = Ack {
            client_order_id: order.client_order_id,
            exchange_order_id,
            status,
            exchange_ts_ns: received,
        };
        let fill = (status == AckStatus::Accepted).then(|| Fill {
            client_order_id: order.client_order_id,
            exchange_order_id,
            symbol: order.symbol,
            side: order.side,
            price: Price(last.unwrap_or(order.limit_price.0)),
            quantity: order.quantity,
            exchange_ts_ns: now_unix_nanos(),
        });
        (ack, fill)
    }
}

/// Binary order port: one task per connection (its TLS handshake included), until
/// `stop`.
pub async fn serve_tcp(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    matcher: Matcher,
    stop: CancellationToken,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => { tracing::warn!(error = %e, "order port accept failed"); continue }
            },
        };
        let _ = stream.set_nodelay(true);
        let matcher = matcher.clone();
        let stop = stop.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let Some(stream) = secure(tls.as_ref(), stream, peer).await else {
                return;
            };
            let codec = LengthDelimitedCodec::builder()
                .length_field_length(2)
                .max_frame_length(ticklab_wire::frame::MAX_FRAME)
                .new_codec();
            let mut framed = Framed::new(stream, codec);
            let mut out = Vec::with_capacity(64);
            loop {
                let frame = tokio::select! {
                    _ = stop.cancelled() => return,
                    f = framed.next() => f,
                };
                let order = match frame {
                    Some(Ok(bytes)) => match Message::decode(&bytes) {
                        Ok(Message::Order(o)) => o,
                        other => {
                            tracing::warn!(%peer, ?other, "not an order; closing the connection");
                            matcher
                                .stats
                                .malformed_requests
                                .fetch_add(1, Ordering::Relaxed);
                            matcher.metrics.malformed_requests.inc();
                            return;
                        }
                    },
                    Some(Err(e)) => {
                        tracing::warn!(%peer, error = %e, "order connection failed");
                        return;
                    }
                    None => return,
                };
                let (ack, fill) = matcher.execute(&order);
                for message in std::iter::once(Message::Ack(ack)).chain(fill.map(Message::Fill)) {
                    out.clear();
                    message.encode(&mut out);
                    if framed
                        .send(bytes::Bytes::copy_from_slice(&out))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        });
    }
}

#[derive(Serialize)]
struct OrderReply {
    ack: Ack,
    fill: Option<Fill>,
}

/// `POST /orders` (JSON) and JSON 404s.
pub fn http_router(matcher: Matcher) -> Router {
    Router::new()
        .route("/orders", post(post_order))
        .fallback(|| async {
            json_error(
                StatusCode::NOT_FOUND,
                "no such endpoint; orders go to POST /orders",
            )
        })
        .with_state(matcher)
}

#[tracing::instrument(skip_all)]
async fn post_order(
    State(matcher): State<Matcher>,
    body: Result<axum::Json<Order>, JsonRejection>,
) -> Response {
    match body {
        Ok(axum::Json(order)) => {
            let (ack, fill) = matcher.execute(&order);
            axum::Json(OrderReply { ack, fill }).into_response()
        }
        Err(rejection) => {
            matcher
                .stats
                .malformed_requests
                .fetch_add(1, Ordering::Relaxed);
            matcher.metrics.malformed_requests.inc();
            json_error(
                rejection.status(),
                &format!("invalid order: {}", rejection.body_text()),
            )
        }
    }
}
