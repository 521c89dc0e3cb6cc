//! Trade persistence: the feed path offers batches of received trades without ever
//! waiting; a writer task turns them into MongoDB `insert_many` calls (unordered, so
//! one duplicate does not stop the rest), retries failures with backoff, and keeps
//! at most `buffer_trades` waiting — beyond that trades are counted, not stored.
//! A unique index on (experiment, session, seq) makes every write idempotent.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures::TryStreamExt;
use mongodb::bson::{Document, doc};
use mongodb::options::IndexOptions;
use mongodb::{Client, Collection, IndexModel};
use serde::{Deserialize, Serialize};
use ticklab_wire::{Price, Quantity, Side, Symbol, Trade};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::TraderMetrics;

/// One received trade, as stored and as `GET /trades` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredTrade {
    pub session: String,
    pub seq: u64,
    pub symbol: Symbol,
    pub price: Price,
    pub quantity: Quantity,
    pub side: Side,
    pub trade_id: u64,
    pub sent_at_ns: u64,
    pub received_at_ns: u64,
    /// `receivedAtNs - sentAtNs` in µs; for recovered trades it includes recovery.
    pub latency_micros: f64,
    /// Came through retransmission rather than the live feed.
    pub recovered: bool,
}

/// A trade as the feed path keeps it: plain data, no allocation, so recording it
/// costs a copy. The session is attached per batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReceivedTrade {
    pub seq: u64,
    pub trade: Trade,
    pub received_at_ns: u64,
    pub recovered: bool,
}

/// Memory one trade waiting for the database takes, for sizing the trader's memory
/// from `persistence.bufferTrades`: the trade, and as much again for the slack of
/// the batches' vectors (they grow by doubling).
pub const BYTES_PER_QUEUED_TRADE: u64 = 2 * std::mem::size_of::<ReceivedTrade>() as u64;

/// Trades of one session handed to the writer together.
#[derive(Clone, Debug)]
pub struct TradeBatch {
    pub session: Arc<str>,
    pub trades: Vec<ReceivedTrade>,
}

impl StoredTrade {
    pub fn from_received(session: &str, r: &ReceivedTrade) -> Self {
        Self::new(session, r.seq, &r.trade, r.received_at_ns, r.recovered)
    }

    pub fn new(
        session: &str,
        seq: u64,
        trade: &Trade,
        received_at_ns: u64,
        recovered: bool,
    ) -> Self {
        Self {
            session: session.to_string(),
            seq,
            symbol: trade.symbol,
            price: trade.price,
            quantity: trade.quantity,
            side: trade.side,
            trade_id: trade.trade_id,
            sent_at_ns: trade.send_ts_ns,
            received_at_ns,
            latency_micros: received_at_ns.saturating_sub(trade.send_ts_ns) as f64 / 1000.0,
            recovered,
        }
    }

    fn to_document(&self, experiment: &str) -> Document {
        // BSON has no unsigned integers; every value here is far below i64::MAX.
        let i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        doc! {
            "experiment": experiment,
            "session": &self.session,
            "seq": i(self.seq),
            "symbol": self.symbol.as_str(),
            "price": self.price.to_string(),
            "quantity": self.quantity.to_string(),
            "side": match self.side { Side::Buy => "buy", Side::Sell => "sell" },
            "tradeId": i(self.trade_id),
            "sentAtNs": i(self.sent_at_ns),
            "receivedAtNs": i(self.received_at_ns),
            "latencyMicros": self.latency_micros,
            "recovered": self.recovered,
        }
    }

    fn from_document(d: &Document) -> Option<Self> {
        let u = |k: &str| d.get_i64(k).ok().and_then(|v| u64::try_from(v).ok());
        let decimal = |k: &str| d.get_str(k).ok().and_then(ticklab_wire::types::parse_fixed);
        Some(Self {
            session: d.get_str("session").ok()?.to_string(),
            seq: u("seq")?,
            symbol: Symbol::new(d.get_str("symbol").ok()?).ok()?,
            price: Price(i64::try_from(decimal("price")?).ok()?),
            quantity: Quantity(u64::try_from(decimal("quantity")?).ok()?),
            side: match d.get_str("side").ok()? {
                "buy" => Side::Buy,
                _ => Side::Sell,
            },
            trade_id: u("tradeId")?,
            sent_at_ns: u("sentAtNs")?,
            received_at_ns: u("receivedAtNs")?,
            latency_micros: d.get_f64("latencyMicros").ok()?,
            recovered: d.get_bool("recovered").ok()?,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot use MongoDB at {uri}: {source}")]
    Connect {
        uri: String,
        #[source]
        source: mongodb::error::Error,
    },
    #[error("MongoDB query failed: {0}")]
    Query(#[source] mongodb::error::Error),
}

/// Counts the writer keeps (also exported as metrics).
#[derive(Default, Debug)]
pub struct StoreCounts {
    pub persisted: AtomicU64,
    pub duplicates: AtomicU64,
    pub dropped: AtomicU64,
    pub errors: AtomicU64,
}

/// The feed path's handle: cheap to clone, never blocks.
#[derive(Clone)]
pub struct TradeStore {
    tx: mpsc::UnboundedSender<TradeBatch>,
    queued: Arc<AtomicUsize>,
    capacity: usize,
    pub counts: Arc<StoreCounts>,
    collection: Collection<Document>,
    experiment: Arc<str>,
    metrics: TraderMetrics,
}

const COLLECTION: &str = "trades";
/// Documents per insert_many: large enough to amortise the round trip.
const WRITE_BATCH: usize = 5_000;

impl TradeStore {
    /// Connects, checks the server answers, creates the indexes and starts the
    /// writer task, which drains the queue until `shutdown`.
    pub async fn connect(
        uri: &str,
        experiment: &str,
        capacity: usize,
        metrics: TraderMetrics,
        shutdown: CancellationToken,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), StoreError> {
        Self::connect_with_counts(uri, experiment, capacity, metrics, Arc::default(), shutdown)
            .await
    }

    /// [`Self::connect`], counting into `counts` (made before the database answers,
    /// so the trader can report them from the start).
    pub async fn connect_with_counts(
        uri: &str,
        experiment: &str,
        capacity: usize,
        metrics: TraderMetrics,
        counts: Arc<StoreCounts>,
        shutdown: CancellationToken,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), StoreError> {
        let connect_err = |source| StoreError::Connect {
            uri: redact(uri),
            source,
        };
        let mut options = mongodb::options::ClientOptions::parse(uri)
            .await
            .map_err(connect_err)?;
        if options.server_selection_timeout.is_none() {
            options.server_selection_timeout = Some(Duration::from_secs(5));
        }
        options
            .app_name
            .get_or_insert_with(|| "ticklab-trader".to_string());
        let client = Client::with_options(options).map_err(connect_err)?;
        let db = client
            .default_database()
            .unwrap_or_else(|| client.database("ticklab"));
        db.run_command(doc! { "ping": 1 })
            .await
            .map_err(connect_err)?;
        let collection = db.collection::<Document>(COLLECTION);
        collection
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "experiment": 1, "session": 1, "seq": 1 })
                    .options(
                        IndexOptions::builder()
                            .unique(true)
                            .name("trade_identity".to_string())
                            .build(),
                    )
                    .build(),
            )
            .await
            .map_err(connect_err)?;
        collection
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "experiment": 1, "receivedAtNs": -1 })
                    .options(IndexOptions::builder().name("recent".to_string()).build())
                    .build(),
            )
            .await
            .map_err(connect_err)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let store = Self {
            tx,
            queued: Arc::default(),
            capacity: capacity.max(1),
            counts,
            collection,
            experiment: experiment.into(),
            metrics,
        };
        let writer = tokio::spawn(store.clone().write_loop(rx, shutdown));
        Ok((store, writer))
    }

    /// Queues a batch for writing; when the buffer is full the batch is counted as
    /// dropped instead (the feed must never wait for the database).
    pub fn offer(&self, batch: TradeBatch) {
        let n = batch.trades.len();
        if n == 0 {
            return;
        }
        let queued = self.queued.fetch_add(n, Ordering::AcqRel) + n;
        if queued > self.capacity || self.tx.send(batch).is_err() {
            self.queued.fetch_sub(n, Ordering::AcqRel);
            self.counts.dropped.fetch_add(n as u64, Ordering::Relaxed);
            self.metrics.persist_dropped.inc_by(n as u64);
        }
    }

    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// The newest `limit` trades of this experiment, newest first.
    pub async fn recent(&self, limit: i64) -> Result<Vec<StoredTrade>, StoreError> {
        let cursor = self
            .collection
            .find(doc! { "experiment": &*self.experiment })
            .sort(doc! { "receivedAtNs": -1, "seq": -1 })
            .limit(limit)
            .await
            .map_err(StoreError::Query)?;
        let docs: Vec<Document> = cursor.try_collect().await.map_err(StoreError::Query)?;
        Ok(docs.iter().filter_map(StoredTrade::from_document).collect())
    }

    /// Documents stored for this experiment.
    pub async fn count(&self) -> Result<u64, StoreError> {
        self.collection
            .count_documents(doc! { "experiment": &*self.experiment })
            .await
            .map_err(StoreError::Query)
    }

    async fn write_loop(
        self,
        mut rx: mpsc::UnboundedReceiver<TradeBatch>,
        shutdown: CancellationToken,
    ) {
        let mut pending: Vec<Document> = Vec::with_capacity(WRITE_BATCH);
        loop {
            let first = tokio::select! {
                biased;
                _ = shutdown.cancelled() => None,
                batch = rx.recv() => batch,
            };
            let Some(batch) = first else { break };
            self.append(&mut pending, &batch);
            while pending.len() < WRITE_BATCH {
                match rx.try_recv() {
                    Ok(b) => self.append(&mut pending, &b),
                    Err(_) => break,
                }
            }
            self.flush_with_retries(&mut pending, u32::MAX, &shutdown)
                .await;
        }
        // Shutting down: write what is already queued, with a few tries, then stop.
        // (In a cluster the operator waits for the queue to drain before it scales
        // the trader down; a drain cut short by SIGKILL is what the status then
        // reports as neither persisted nor counted.)
        rx.close();
        let queued = self.queued();
        if queued > 0 {
            tracing::info!(queued, "shutting down: writing the trades still queued");
        }
        let calm = CancellationToken::new();
        while let Ok(b) = rx.try_recv() {
            self.append(&mut pending, &b);
            if pending.len() >= WRITE_BATCH {
                self.flush_with_retries(&mut pending, 3, &calm).await;
            }
        }
        self.flush_with_retries(&mut pending, 3, &calm).await;
    }

    fn append(&self, pending: &mut Vec<Document>, batch: &TradeBatch) {
        pending.extend(
            batch.trades.iter().map(|t| {
                StoredTrade::from_received(&batch.session, t).to_document(&self.experiment)
            }),
        );
    }

    /// Writes `pending`, retrying failures with exponential backoff (capped at 2 s)
    /// up to `max_attempts`, or until `stop` (then `pending` keeps what is unwritten).
    async fn flush_with_retries(
        &self,
        pending: &mut Vec<Document>,
        max_attempts: u32,
        stop: &CancellationToken,
    ) {
        let mut backoff = Duration::from_millis(50);
        let mut attempt = 0u32;
        while !pending.is_empty() {
            attempt += 1;
            match self.insert(pending).await {
                Ok(()) => {
                    self.release(pending.len());
                    pending.clear();
                }
                Err(e) => {
                    self.counts.errors.fetch_add(1, Ordering::Relaxed);
                    self.metrics.persist_errors.inc();
                    tracing::warn!(error = %e, attempt, batch = pending.len(), "MongoDB write failed; will retry");
                    if attempt >= max_attempts {
                        let n = pending.len();
                        self.counts.dropped.fetch_add(n as u64, Ordering::Relaxed);
                        self.metrics.persist_dropped.inc_by(n as u64);
                        self.release(n);
                        pending.clear();
                        return;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {},
                        _ = stop.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    fn release(&self, n: usize) {
        let left = self.queued.fetch_sub(n, Ordering::AcqRel).saturating_sub(n);
        self.metrics.persist_queue.set(left as i64);
    }

    /// One unordered insert; duplicate-key errors (the trade is already stored) are
    /// success for idempotency, any other error fails the batch for a retry.
    async fn insert(&self, docs: &[Document]) -> Result<(), mongodb::error::Error> {
        let n = docs.len() as u64;
        match self.collection.insert_many(docs).ordered(false).await {
            Ok(r) => {
                self.count_persisted(r.inserted_ids.len() as u64);
                Ok(())
            }
            Err(e) => match duplicate_only(&e) {
                Some(dups) => {
                    self.counts.duplicates.fetch_add(dups, Ordering::Relaxed);
                    self.count_persisted(n.saturating_sub(dups));
                    Ok(())
                }
                None => Err(e),
            },
        }
    }

    fn count_persisted(&self, n: u64) {
        self.counts.persisted.fetch_add(n, Ordering::Relaxed);
        self.metrics.persisted.inc_by(n);
    }
}

/// When every write error of an insert_many is a duplicate key (11000), how many.
fn duplicate_only(e: &mongodb::error::Error) -> Option<u64> {
    use mongodb::error::ErrorKind;
    match e.kind.as_ref() {
        ErrorKind::InsertMany(ime) => {
            if ime.write_concern_error.is_some() {
                return None;
            }
            let errors = ime.write_errors.as_ref()?;
            errors
                .iter()
                .all(|w| w.code == 11000)
                .then_some(errors.len() as u64)
        }
        _ => None,
    }
}

/// Hides a password in a connection string before it reaches a log or an error.
pub fn redact(uri: &str) -> String {
    match (uri.find("://"), uri.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &uri[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &uri[..scheme + 3], &uri[at..]),
                None => uri.to_string(),
            }
        }
        _ => uri.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("mongodb://u:secret@h:27017/db"),
            "mongodb://u:***@h:27017/db"
        );
        assert_eq!(redact("mongodb://h:27017/"), "mongodb://h:27017/");
    }

    #[test]
    fn documents_round_trip() {
        let trade = Trade {
            symbol: Symbol::new("ETHUSD").unwrap(),
            price: Price(300_012_000_000),
            quantity: Quantity(150_000_000),
            side: Side::Sell,
            trade_id: 9,
            send_ts_ns: 1_000,
        };
        let t = StoredTrade::new("S", 5, &trade, 3_500, true);
        assert_eq!(t.latency_micros, 2.5);
        let d = t.to_document("exp");
        assert_eq!(d.get_str("experiment").unwrap(), "exp");
        assert_eq!(d.get_str("price").unwrap(), "3000.12");
        assert_eq!(StoredTrade::from_document(&d), Some(t));
    }
}
