//! TCP and WebSocket feed transports (tokio): the same packets arrive framed on a
//! byte stream, timestamped in user space on arrival (the kernel's timestamps are not
//! exposed through tokio's reads). Gaps can still happen — the exchange drops packets
//! for a subscriber that lags — and are recovered over UDP like the UDP feed's.
//! With TLS, the TCP feed and the WebSocket feed (wss) run over the trader's one
//! rustls client ([`crate::tls`]).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use ticklab_wire::now_unix_nanos;
use tokio::net::{TcpStream, UdpSocket};
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

use super::processor::FeedProcessor;
use crate::gap_tracker::Via;
use crate::tls::{TlsClient, is_handshake_error};

/// Where a stream feed comes from.
#[derive(Clone, Debug)]
pub enum StreamSource {
    /// "host:port" of the exchange's TCP feed.
    Tcp(String),
    /// "ws://host:port/feed", or "wss://host:port/feed" with TLS.
    WebSocket(String),
}

type PacketStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

async fn connect(source: &StreamSource, tls: Option<&TlsClient>) -> std::io::Result<PacketStream> {
    match source {
        StreamSource::Tcp(addr) => {
            let codec = LengthDelimitedCodec::builder()
                .length_field_length(2)
                .max_frame_length(ticklab_wire::frame::MAX_FRAME)
                .new_codec();
            let frames = |r: std::io::Result<bytes::BytesMut>| r.map(|b| b.freeze());
            match tls {
                None => {
                    let stream = TcpStream::connect(addr).await?;
                    stream.set_nodelay(true)?;
                    Ok(Box::pin(FramedRead::new(stream, codec).map(frames)))
                }
                Some(tls) => {
                    let stream = tls.connect(addr).await?;
                    Ok(Box::pin(FramedRead::new(stream, codec).map(frames)))
                }
            }
        }
        StreamSource::WebSocket(url) => match tls {
            None => {
                let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
                    .await
                    .map_err(std::io::Error::other)?;
                Ok(binary_messages(ws))
            }
            Some(tls) => {
                // The TLS connection first (the trader's own rustls client, so its
                // secrets are logged like every other connection's), then the
                // WebSocket handshake over it.
                let uri: tokio_tungstenite::tungstenite::http::Uri =
                    url.parse().map_err(std::io::Error::other)?;
                let host = uri.host().unwrap_or_default();
                let port = uri.port_u16().unwrap_or(443);
                let stream = tls.connect(&format!("{host}:{port}")).await?;
                let (ws, _) = tokio_tungstenite::client_async(url.as_str(), stream)
                    .await
                    .map_err(std::io::Error::other)?;
                Ok(binary_messages(ws))
            }
        },
    }
}

/// The feed packets of a WebSocket: its binary messages.
fn binary_messages<S>(ws: tokio_tungstenite::WebSocketStream<S>) -> PacketStream
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    Box::pin(ws.filter_map(|m| async move {
        use tokio_tungstenite::tungstenite::Message;
        match m {
            Ok(Message::Binary(b)) => Some(Ok(b)),
            Ok(Message::Close(_)) => None,
            Ok(_) => None,
            Err(e) => Some(Err(std::io::Error::other(e))),
        }
    }))
}

/// Receives until `shutdown`; reconnects when the stream breaks before the session
/// ended. Returns the processor with its final counts.
pub async fn run_stream_feed(
    source: StreamSource,
    tls: Option<Arc<TlsClient>>,
    recovery: UdpSocket,
    mut processor: FeedProcessor,
    shutdown: CancellationToken,
) -> FeedProcessor {
    let mut reply = vec![0u8; 65_536];
    let mut request = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut stream: Option<PacketStream> = None;
    let mut retry_at = tokio::time::Instant::now();
    // A refused certificate will not fix itself: said once at warn, then at debug.
    let mut tls_warned = false;

    loop {
        if stream.is_none() && tokio::time::Instant::now() >= retry_at && !processor.session_ended()
        {
            match connect(&source, tls.as_deref()).await {
                Ok(s) => {
                    tracing::info!(?source, tls = tls.is_some(), "feed connected");
                    stream = Some(s);
                }
                Err(e) if is_handshake_error(&e) && !tls_warned => {
                    tracing::warn!(?source, error = %e, "TLS handshake with the exchange failed; retrying");
                    tls_warned = true;
                    retry_at = tokio::time::Instant::now() + Duration::from_millis(100);
                }
                Err(e) => {
                    tracing::debug!(?source, error = %e, "feed not reachable yet; retrying");
                    retry_at = tokio::time::Instant::now() + Duration::from_millis(100);
                }
            }
        }
        let next_frame = async {
            match stream.as_mut() {
                Some(s) => s.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            frame = next_frame => match frame {
                Some(Ok(bytes)) => processor.on_packet(&bytes, now_unix_nanos(), Via::Live),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "feed stream failed");
                    stream = None;
                }
                None => {
                    tracing::info!("feed stream closed by the exchange");
                    stream = None;
                }
            },
            received = recovery.recv(&mut reply) => {
                if let Ok(len) = received {
                    let bytes = reply.get(..len).unwrap_or(&[]);
                    processor.on_packet(bytes, now_unix_nanos(), Via::Retransmission);
                }
            }
            _ = tick.tick() => {
                for req in processor.due_requests(now_unix_nanos()) {
                    request.clear();
                    req.encode(&mut request);
                    if let Err(e) = recovery.send(&request).await {
                        tracing::warn!(error = %e, "retransmission request not sent");
                    }
                }
                processor.maybe_flush();
            }
        }
    }
    processor.finish();
    processor
}
