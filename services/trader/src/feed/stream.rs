//! TCP and WebSocket feed transports (tokio): the same packets arrive framed on a
//! byte stream, timestamped in user space on arrival (the kernel's timestamps are not
//! exposed through tokio's reads). Gaps can still happen — the exchange drops packets
//! for a subscriber that lags — and are recovered over UDP like the UDP feed's.

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use ticklab_wire::now_unix_nanos;
use tokio::net::{TcpStream, UdpSocket};
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

use super::processor::FeedProcessor;
use crate::gap_tracker::Via;

/// Where a stream feed comes from.
#[derive(Clone, Debug)]
pub enum StreamSource {
    /// "host:port" of the exchange's TCP feed.
    Tcp(String),
    /// "ws://host:port/feed".
    WebSocket(String),
}

type PacketStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

async fn connect(source: &StreamSource) -> std::io::Result<PacketStream> {
    match source {
        StreamSource::Tcp(addr) => {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let codec = LengthDelimitedCodec::builder()
                .length_field_length(2)
                .max_frame_length(ticklab_wire::frame::MAX_FRAME)
                .new_codec();
            Ok(Box::pin(
                FramedRead::new(stream, codec).map(|r| r.map(|b| b.freeze())),
            ))
        }
        StreamSource::WebSocket(url) => {
            let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
                .await
                .map_err(std::io::Error::other)?;
            Ok(Box::pin(ws.filter_map(|m| async move {
                use tokio_tungstenite::tungstenite::Message;
                match m {
                    Ok(Message::Binary(b)) => Some(Ok(b)),
                    Ok(Message::Close(_)) => None,
                    Ok(_) => None,
                    Err(e) => Some(Err(std::io::Error::other(e))),
                }
            })))
        }
    }
}

/// Receives until `shutdown`; reconnects when the stream breaks before the session
/// ended. Returns the processor with its final counts.
pub async fn run_stream_feed(
    source: StreamSource,
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

    loop {
        if stream.is_none() && tokio::time::Instant::now() >= retry_at && !processor.session_ended()
        {
            match connect(&source).await {
                Ok(s) => {
                    tracing::info!(?source, "feed connected");
                    stream = Some(s);
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
