//! The order client: takes the strategy's intents off a queue, sends them to the
//! exchange (binary TCP or HTTP JSON), and books what comes back — tick-to-trade at
//! send time, round trip at acknowledgement, positions and cash at each fill.
//! With TLS both channels go through the trader's rustls client ([`crate::tls`]):
//! the binary channel directly, HTTPS through reqwest given that same configuration.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde::Deserialize;
use ticklab_crd::OrderTransport;
use ticklab_wire::{Ack, AckStatus, Fill, Message, Order, Side, Symbol, now_unix_nanos};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

use crate::latency::LatencyHistogram;
use crate::metrics::TraderMetrics;
use crate::strategy::OrderIntent;
use crate::tls::{TlsClient, is_handshake_error};

/// Orders sent and what became of them, shared with `/stats`.
#[derive(Default)]
pub struct OrderLedger {
    pub sent: u64,
    pub filled: u64,
    pub expired: u64,
    pub rejected: u64,
    /// Transport failures: the order may or may not have reached the exchange.
    pub failed: u64,
    /// Intents dropped because the order queue was full.
    pub skipped: u64,
    pub tick_to_trade: LatencyHistogram,
    pub round_trip: LatencyHistogram,
    /// Per symbol: position (base units) and cash (quote units).
    pub positions: HashMap<Symbol, (f64, f64)>,
}

impl OrderLedger {
    fn book_fill(&mut self, fill: &Fill) {
        let qty = fill.quantity.as_f64();
        let value = qty * fill.price.as_f64();
        let entry = self.positions.entry(fill.symbol).or_default();
        match fill.side {
            Side::Buy => {
                entry.0 += qty;
                entry.1 -= value;
            }
            Side::Sell => {
                entry.0 -= qty;
                entry.1 += value;
            }
        }
    }

    /// Profit and loss in US dollars: per symbol, cash plus position marked at its
    /// last price, in the quote currency, converted to USD through the last price of
    /// USDxxx or xxxUSD. A symbol whose quote cannot be converted (no such pair in
    /// the experiment) or has no price yet is left out.
    pub fn pnl_usd(&self, last_price: impl Fn(&str) -> Option<f64>) -> f64 {
        self.positions
            .iter()
            .filter_map(|(symbol, (pos, cash))| {
                let name = symbol.as_str();
                let mark = last_price(name)?;
                let in_quote = cash + pos * mark;
                let quote = name.get(3..6)?;
                if quote == "USD" {
                    Some(in_quote)
                } else if let Some(p) = last_price(&format!("USD{quote}")) {
                    Some(in_quote / p)
                } else {
                    last_price(&format!("{quote}USD")).map(|p| in_quote * p)
                }
            })
            .sum()
    }
}

/// Where orders go.
#[derive(Clone, Debug)]
pub struct OrderTarget {
    pub transport: OrderTransport,
    /// "host:port" of the binary order port.
    pub tcp: String,
    /// Base URL of the HTTP order API, e.g. "http://127.0.0.1:8080", or
    /// "https://…" with TLS.
    pub http: String,
    /// TLS on both channels: the same client (and key log) as the feed's.
    pub tls: Option<Arc<TlsClient>>,
}

/// The HTTP order client and the URL it posts to.
pub struct HttpOrders {
    client: reqwest::Client,
    url: String,
}

impl OrderTarget {
    /// The HTTP client for `POST /orders`: over TLS with the trader's own rustls
    /// configuration, so reqwest trusts only the experiment's CA and logs its keys
    /// with every other connection's. With a `serverName` other than the URL's host,
    /// the URL names the certificate's name and every lookup resolves to the
    /// configured host, so the name verified and the address reached both hold.
    pub fn http_orders(&self) -> Result<HttpOrders, String> {
        let base = self.http.trim_end_matches('/');
        let mut url =
            reqwest::Url::parse(base).map_err(|e| format!("order API URL {base:?}: {e}"))?;
        let mut builder = reqwest::Client::builder()
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(5));
        if let Some(tls) = &self.tls {
            builder = builder.use_preconfigured_tls((*tls.client_config()).clone());
            let host = url.host_str().unwrap_or_default().to_string();
            let named = tls
                .server_name()
                .filter(|name| *name != host && name.parse::<std::net::IpAddr>().is_err());
            if let Some(name) = named {
                let port = url.port_or_known_default().unwrap_or(443);
                url.set_host(Some(&name))
                    .map_err(|e| format!("tls.serverName {name:?}: {e}"))?;
                let _ = url.set_port(Some(port));
                builder = builder.dns_resolver(Arc::new(ConfiguredAddress {
                    host_port: format!("{host}:{port}"),
                }));
            }
        }
        let client = builder
            .build()
            .map_err(|e| format!("cannot build the HTTP order client: {e}"))?;
        Ok(HttpOrders {
            client,
            url: format!("{}/orders", url.as_str().trim_end_matches('/')),
        })
    }
}

/// Resolves every name to the configured address of the exchange's order API (see
/// [`OrderTarget::http_orders`]); looked up at each connection, so a Service that
/// appears after the trader started is found.
struct ConfiguredAddress {
    host_port: String,
}

impl reqwest::dns::Resolve for ConfiguredAddress {
    fn resolve(&self, _name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let target = self.host_port.clone();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host(target).await?.collect();
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Runs until `shutdown` or until the intent queue closes.
pub async fn run_order_client(
    target: OrderTarget,
    mut intents: mpsc::Receiver<OrderIntent>,
    ledger: Arc<Mutex<OrderLedger>>,
    metrics: TraderMetrics,
    shutdown: CancellationToken,
) {
    let mut client = OrderClient {
        ledger,
        metrics,
        next_id: 1,
        pending: HashMap::new(),
    };
    match target.transport {
        OrderTransport::Tcp => {
            client
                .run_tcp(&target.tcp, target.tls.as_deref(), &mut intents, &shutdown)
                .await
        }
        OrderTransport::Http => match target.http_orders() {
            Ok(http) => client.run_http(&http, &mut intents, &shutdown).await,
            // `start` built it once already: this cannot fail with the same input.
            Err(error) => tracing::error!(%error, "no HTTP order client; no orders will be sent"),
        },
    }
}

struct OrderClient {
    ledger: Arc<Mutex<OrderLedger>>,
    metrics: TraderMetrics,
    next_id: u64,
    /// client order id -> send timestamp, for the round trip.
    pending: HashMap<u64, u64>,
}

impl OrderClient {
    fn order_from(&mut self, intent: &OrderIntent) -> Order {
        let id = self.next_id;
        self.next_id += 1;
        Order {
            client_order_id: id,
            symbol: intent.symbol,
            side: intent.side,
            limit_price: intent.limit_price,
            quantity: intent.quantity,
            trigger_seq: intent.trigger_seq,
            send_ts_ns: now_unix_nanos(),
        }
    }

    fn book_sent(&mut self, order: &Order, intent: &OrderIntent) {
        let t2t = order.send_ts_ns.saturating_sub(intent.tick_rx_ns);
        self.metrics.tick_to_trade.observe(t2t as f64 / 1e9);
        self.metrics.orders.with_label_values(&["sent"]).inc();
        self.pending.insert(order.client_order_id, order.send_ts_ns);
        let mut ledger = self.ledger.lock();
        ledger.sent += 1;
        ledger.tick_to_trade.record_ns(t2t);
    }

    fn book_ack(&mut self, ack: &Ack, received_ns: u64) {
        let outcome = match ack.status {
            AckStatus::Accepted => "filled",
            AckStatus::Expired => "expired",
            AckStatus::Rejected => "rejected",
        };
        self.metrics.orders.with_label_values(&[outcome]).inc();
        let round_trip = self
            .pending
            .remove(&ack.client_order_id)
            .map(|sent| received_ns.saturating_sub(sent));
        let mut ledger = self.ledger.lock();
        match ack.status {
            // Counted as filled when the fill arrives.
            AckStatus::Accepted => {}
            AckStatus::Expired => ledger.expired += 1,
            AckStatus::Rejected => ledger.rejected += 1,
        }
        if let Some(rt) = round_trip {
            self.metrics.order_round_trip.observe(rt as f64 / 1e9);
            ledger.round_trip.record_ns(rt);
        }
    }

    fn book_fill(&mut self, fill: &Fill) {
        let mut ledger = self.ledger.lock();
        ledger.filled += 1;
        ledger.book_fill(fill);
    }

    fn book_skipped(&mut self) {
        self.metrics.orders.with_label_values(&["skipped"]).inc();
        self.ledger.lock().skipped += 1;
    }

    fn book_failure(&mut self, n: u64) {
        self.metrics.orders.with_label_values(&["failed"]).inc_by(n);
        self.ledger.lock().failed += n;
    }

    async fn run_tcp(
        &mut self,
        addr: &str,
        tls: Option<&TlsClient>,
        intents: &mut mpsc::Receiver<OrderIntent>,
        shutdown: &CancellationToken,
    ) {
        let codec = || {
            LengthDelimitedCodec::builder()
                .length_field_length(2)
                .max_frame_length(ticklab_wire::frame::MAX_FRAME)
                .new_codec()
        };
        let connect = async || match tls {
            None => {
                let stream = TcpStream::connect(addr).await?;
                let _ = stream.set_nodelay(true);
                Ok(Either::Left(stream))
            }
            Some(tls) => tls.connect(addr).await.map(Either::Right),
        };
        // A refused certificate will not fix itself: said once at warn.
        let mut tls_warned = false;
        'connect: loop {
            let stream: std::io::Result<Either<_, _>> = tokio::select! {
                _ = shutdown.cancelled() => return,
                s = connect() => s,
            };
            let stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    if is_handshake_error(&e) && !tls_warned {
                        tls_warned = true;
                        tracing::warn!(%addr, error = %e, "TLS handshake with the order port failed; retrying");
                    } else {
                        tracing::debug!(%addr, error = %e, "order port unreachable; retrying");
                    }
                    // A tick's order is worth sending only now: while there is no
                    // connection, intents are counted as skipped, not queued to go
                    // out stale (which would also distort tick-to-trade).
                    let retry = tokio::time::sleep(Duration::from_millis(20));
                    tokio::pin!(retry);
                    loop {
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = &mut retry => continue 'connect,
                            intent = intents.recv() => match intent {
                                Some(_) => self.book_skipped(),
                                None => return,
                            },
                        }
                    }
                }
            };
            let mut framed = Framed::new(stream, codec());
            let mut buf = Vec::with_capacity(Order::LEN);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    intent = intents.recv() => {
                        let Some(intent) = intent else { return };
                        let order = self.order_from(&intent);
                        buf.clear();
                        Message::Order(order).encode(&mut buf);
                        let sent = framed.send(bytes::Bytes::copy_from_slice(&buf)).await;
                        if let Err(e) = sent {
                            tracing::warn!(error = %e, "order connection failed; reconnecting");
                            self.book_failure(1);
                            continue 'connect;
                        }
                        self.book_sent(&order, &intent);
                    }
                    frame = framed.next() => {
                        let received_ns = now_unix_nanos();
                        match frame {
                            Some(Ok(bytes)) => match Message::decode(&bytes) {
                                Ok(Message::Ack(ack)) => self.book_ack(&ack, received_ns),
                                Ok(Message::Fill(fill)) => self.book_fill(&fill),
                                Ok(other) => tracing::warn!(?other, "unexpected message on the order channel"),
                                Err(e) => tracing::warn!(error = %e, "malformed order-channel message"),
                            },
                            Some(Err(e)) => {
                                tracing::warn!(error = %e, "order connection failed; reconnecting");
                                continue 'connect;
                            }
                            None => {
                                tracing::warn!("exchange closed the order connection; reconnecting");
                                let unanswered = self.pending.len() as u64;
                                self.pending.clear();
                                self.book_failure(unanswered);
                                continue 'connect;
                            }
                        }
                    }
                }
            }
        }
    }

    async fn run_http(
        &mut self,
        http: &HttpOrders,
        intents: &mut mpsc::Receiver<OrderIntent>,
        shutdown: &CancellationToken,
    ) {
        let HttpOrders { client: http, url } = http;
        loop {
            let intent = tokio::select! {
                _ = shutdown.cancelled() => return,
                i = intents.recv() => match i { Some(i) => i, None => return },
            };
            let order = self.order_from(&intent);
            // Sequential on purpose: one keep-alive connection, as a simple HTTP
            // trading client; queueing behind a slow answer shows in tick-to-trade.
            let request = http.post(url).json(&order);
            self.book_sent(&order, &intent);
            let reply = async {
                let response = request.send().await?.error_for_status()?;
                response.json::<HttpOrderReply>().await
            }
            .await;
            let received_ns = now_unix_nanos();
            match reply {
                Ok(reply) => {
                    self.book_ack(&reply.ack, received_ns);
                    if let Some(fill) = reply.fill {
                        self.book_fill(&fill);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, %url, "HTTP order failed");
                    self.pending.remove(&order.client_order_id);
                    self.book_failure(1);
                }
            }
        }
    }
}

/// Body of the exchange's answer to `POST /orders`.
#[derive(Deserialize)]
struct HttpOrderReply {
    ack: Ack,
    fill: Option<Fill>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use ticklab_wire::{Price, Quantity};

    #[test]
    fn fills_move_position_cash_and_pnl() {
        let mut l = OrderLedger::default();
        let eur = Symbol::new("EURUSD").unwrap();
        let fill = |side, price| Fill {
            client_order_id: 1,
            exchange_order_id: 1,
            symbol: eur,
            side,
            price: Price::from_f64(price),
            quantity: Quantity::from_f64(1000.0),
            exchange_ts_ns: 0,
        };
        l.book_fill(&fill(Side::Buy, 1.1));
        l.book_fill(&fill(Side::Sell, 1.2));
        let (pos, cash) = l.positions[&eur];
        assert_eq!(pos, 0.0);
        assert!((cash - 100.0).abs() < 1e-9);
        l.book_fill(&fill(Side::Buy, 1.0));
        let pnl = l.pnl_usd(|_| Some(1.05));
        assert!((pnl - 150.0).abs() < 1e-6, "{pnl}");

        // A yen-quoted position is converted at USDJPY.
        let mut l = OrderLedger::default();
        let jpy = Symbol::new("USDJPY").unwrap();
        l.book_fill(&Fill {
            symbol: jpy,
            ..fill(Side::Buy, 150.0)
        });
        let pnl = l.pnl_usd(|s| (s == "USDJPY").then_some(151.5));
        assert!((pnl - 1000.0 * 1.5 / 151.5).abs() < 1e-6, "{pnl}");
        // Nothing to convert with: left out rather than summed in yen.
        let mut l = OrderLedger::default();
        l.book_fill(&Fill {
            symbol: Symbol::new("EURJPY").unwrap(),
            ..fill(Side::Buy, 160.0)
        });
        assert_eq!(l.pnl_usd(|s| (s == "EURJPY").then_some(161.0)), 0.0);
    }
}
