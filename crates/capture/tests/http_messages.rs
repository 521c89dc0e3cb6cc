//! HTTP decoding checked against byte streams written by an independent implementation
//! (hyper 1): a hyper client and server exchange orders over an in-memory pipe whose
//! writes are recorded, and hyper's own parse of each direction is the oracle. The
//! streams are fed in random chunkings, with gaps, and pipelined.

// Test helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::header::HeaderValue;
use hyper::{HeaderMap, Request, Response};
use hyper_util::rt::TokioIo;
use proptest::prelude::*;
use ticklab_capture::http::{HttpDecoder, HttpEvent, HttpLimits, HttpRole};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};

/// A pipe end that records what is written to it: the bytes of one direction.
struct Tap {
    inner: DuplexStream,
    log: Arc<Mutex<Vec<u8>>>,
}

impl AsyncRead for Tap {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tap {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.log.lock().unwrap().extend_from_slice(&buf[..n]);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A body of unknown length (so hyper sends it chunked) with trailers.
struct Chunks {
    parts: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(p) = self.parts.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(p))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }
}

fn chunked(parts: &[&str]) -> BoxBody<Bytes, Infallible> {
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", HeaderValue::from_static("abc"));
    Chunks {
        parts: parts.iter().map(|p| Bytes::from(p.to_string())).collect(),
        trailers: Some(trailers),
    }
    .boxed()
}

fn full(body: impl Into<Bytes>) -> BoxBody<Bytes, Infallible> {
    Full::new(body.into()).boxed()
}

fn empty() -> BoxBody<Bytes, Infallible> {
    Empty::new().boxed()
}

/// A large JSON-like body (no CR, LF or method names in it).
fn big_body() -> String {
    (0..20_000).map(|i| format!("{{\"n\":{i}}}")).collect()
}

/// A message as hyper saw it, or as the decoder reports it, without times.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Msg {
    Request(String, String, Vec<u8>),
    Response(u16, Vec<u8>),
    Error(&'static str),
}

fn msg(e: &HttpEvent) -> Msg {
    match e {
        HttpEvent::Request {
            method, path, body, ..
        } => Msg::Request(method.clone(), path.clone(), body.clone()),
        HttpEvent::Response { status, body, .. } => Msg::Response(*status, body.clone()),
        HttpEvent::Error(e) => Msg::Error(e.kind()),
    }
}

fn times(e: &HttpEvent) -> (u64, u64) {
    match e {
        HttpEvent::Request {
            ts_ns,
            first_byte_ts_ns,
            ..
        }
        | HttpEvent::Response {
            ts_ns,
            first_byte_ts_ns,
            ..
        } => (*ts_ns, *first_byte_ts_ns),
        HttpEvent::Error(_) => (0, 0),
    }
}

/// One recorded exchange: the bytes of each direction and what hyper parsed of them.
struct Exchange {
    requests: Vec<u8>,
    responses: Vec<u8>,
    /// As the hyper server parsed the requests.
    server_saw: Vec<Msg>,
    /// As the hyper client parsed the responses.
    client_saw: Vec<Msg>,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

/// The hyper server: records each request as it parsed it, answers by path.
fn serve(io: Tap, saw: Arc<Mutex<Vec<Msg>>>) -> impl std::future::Future<Output = ()> + 'static {
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let saw = saw.clone();
        async move {
            let method = req.method().to_string();
            let target = req.uri().path_and_query().unwrap().to_string();
            // Polling the body makes hyper send 100 Continue when it was asked for.
            let body = req.into_body().collect().await.unwrap().to_bytes();
            saw.lock()
                .unwrap()
                .push(Msg::Request(method, target.clone(), body.to_vec()));
            let ack = format!("{{\"ack\":{}}}", body.len());
            let response = match target.as_str() {
                "/orders?stream=1" => Response::builder()
                    .header("trailer", "x-checksum")
                    .body(chunked(&["{\"ack\":", "\"chunked\"", "}"])),
                "/status" => Response::builder().status(204).body(empty()),
                "/cached" => Response::builder().status(304).body(empty()),
                "/big" => Response::builder().body(full(big_body())),
                "/orders/expect" => Response::builder().status(201).body(full(ack)),
                _ => Response::builder()
                    .header("content-type", "application/json")
                    .body(full(ack)),
            };
            Ok::<_, Infallible>(response.unwrap())
        }
    });
    async move {
        let _ = hyper::server::conn::http1::Builder::new()
            .pipeline_flush(true)
            .serve_connection(TokioIo::new(io), service)
            .await;
    }
}

/// A hyper client sends orders (Content-Length, chunked with trailers, Expect:
/// 100-continue), GETs answered 204, 304 and a large body, on one keep-alive
/// connection to a hyper server; both directions are recorded.
fn exchange() -> &'static Exchange {
    static EXCHANGE: OnceLock<Exchange> = OnceLock::new();
    EXCHANGE.get_or_init(|| {
        runtime().block_on(async {
            let (a, b) = tokio::io::duplex(1 << 16);
            let req_log = Arc::new(Mutex::new(Vec::new()));
            let resp_log = Arc::new(Mutex::new(Vec::new()));
            let server_saw = Arc::new(Mutex::new(Vec::new()));
            let server = tokio::spawn(serve(
                Tap {
                    inner: b,
                    log: resp_log.clone(),
                },
                server_saw.clone(),
            ));
            let client_io = Tap {
                inner: a,
                log: req_log.clone(),
            };
            let (mut sender, conn) = hyper::client::conn::http1::handshake::<
                _,
                BoxBody<Bytes, Infallible>,
            >(TokioIo::new(client_io))
            .await
            .unwrap();
            let conn = tokio::spawn(conn);
            let order = "{\"side\":\"buy\",\"qty\":10,\"px\":101.5}";
            let requests = vec![
                Request::post("/orders")
                    .header("content-type", "application/json")
                    .body(full(order)),
                Request::post("/orders?stream=1")
                    .header("te", "trailers")
                    .header("trailer", "x-checksum")
                    .body(chunked(&["{\"side\":", "\"sell\",", "\"qty\":3}"])),
                Request::get("/status").body(empty()),
                Request::post("/orders/expect")
                    .header("expect", "100-continue")
                    .body(full(order)),
                Request::get("/cached").body(empty()),
                Request::get("/big").body(empty()),
                Request::post("/orders").body(full(order)),
            ];
            let mut client_saw = Vec::new();
            for req in requests {
                sender.ready().await.unwrap();
                let resp = sender.send_request(req.unwrap()).await.unwrap();
                let status = resp.status().as_u16();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                client_saw.push(Msg::Response(status, body.to_vec()));
            }
            drop(sender);
            let _ = conn.await;
            server.await.unwrap();
            let server_saw = server_saw.lock().unwrap().clone();
            let requests = req_log.lock().unwrap().clone();
            let responses = resp_log.lock().unwrap().clone();
            Exchange {
                requests,
                responses,
                server_saw,
                client_saw,
            }
        })
    })
}

fn decoder(role: HttpRole) -> HttpDecoder {
    HttpDecoder::new(role, HttpLimits::default())
}

/// Cut points (sorted, unique, within 0..=len, 0 and len included).
fn points(len: usize, cuts: &[usize]) -> Vec<usize> {
    let mut p: Vec<usize> = cuts.iter().map(|c| c % (len + 1)).collect();
    p.push(0);
    p.push(len);
    p.sort_unstable();
    p.dedup();
    p
}

/// Feeds `bytes` cut at `points`, chunk i at time i; chunks listed in `lost` are
/// replaced by a gap.
fn feed(d: &mut HttpDecoder, bytes: &[u8], points: &[usize], lost: &[usize]) -> Vec<HttpEvent> {
    let mut out = Vec::new();
    for (i, w) in points.windows(2).enumerate() {
        if lost.contains(&i) {
            d.gap(&mut out);
        } else {
            d.feed(i as u64, &bytes[w[0]..w[1]], &mut out);
        }
    }
    out
}

/// Fed one byte at a time with its offset as the time: per message, the offsets of
/// its first and last bytes.
fn byte_offsets(role: HttpRole, bytes: &[u8]) -> Vec<(u64, u64)> {
    let mut d = decoder(role);
    let mut out = Vec::new();
    for (i, b) in bytes.iter().enumerate() {
        d.feed(i as u64, std::slice::from_ref(b), &mut out);
    }
    out.iter()
        .map(|e| {
            let (last, first) = times(e);
            (first, last)
        })
        .collect()
}

#[test]
fn hyper_exchange_decodes_as_hyper_parsed_it() {
    let x = exchange();
    assert_eq!(x.server_saw.len(), 7);
    // hyper wrote what this test is about: chunked bodies with trailers both ways,
    // an interim 100 Continue.
    let requests = String::from_utf8_lossy(&x.requests);
    let responses = String::from_utf8_lossy(&x.responses);
    assert!(requests.contains("transfer-encoding: chunked"));
    assert!(requests.contains("x-checksum: abc"));
    assert!(responses.contains("x-checksum: abc"));
    assert!(responses.contains("HTTP/1.1 100 Continue\r\n\r\n"));

    let mut d = decoder(HttpRole::Requests);
    let out = feed(&mut d, &x.requests, &[0, x.requests.len()], &[]);
    assert_eq!(out.iter().map(msg).collect::<Vec<_>>(), x.server_saw);

    let mut d = decoder(HttpRole::Responses);
    let out = feed(&mut d, &x.responses, &[0, x.responses.len()], &[]);
    assert_eq!(out.iter().map(msg).collect::<Vec<_>>(), x.client_saw);
    assert_eq!(d.stats().interim_responses, 1);
    assert_eq!(d.stats().errors, 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any chunking decodes to what hyper parsed; each message carries the chunk of
    /// its first byte and of its last byte.
    #[test]
    fn random_chunkings(cuts in prop::collection::vec(any::<usize>(), 0..80), requests in any::<bool>()) {
        let x = exchange();
        let (role, bytes, want) = if requests {
            (HttpRole::Requests, &x.requests, &x.server_saw)
        } else {
            (HttpRole::Responses, &x.responses, &x.client_saw)
        };
        let pts = points(bytes.len(), &cuts);
        let mut d = decoder(role);
        let out = feed(&mut d, bytes, &pts, &[]);
        prop_assert_eq!(&out.iter().map(msg).collect::<Vec<_>>(), want);
        let chunk_of = |o: u64| (pts.partition_point(|&p| p as u64 <= o) - 1) as u64;
        for (e, (first, last)) in out.iter().zip(byte_offsets(role, bytes)) {
            prop_assert_eq!(times(e), (chunk_of(last), chunk_of(first)));
        }
    }

    /// One chunk lost: messages entirely before it decode, one gap error, then from
    /// the first message starting at the chunk after the gap, at a line start or at a
    /// chunk start, every message decodes again.
    #[test]
    fn gap_then_resync(cuts in prop::collection::vec(any::<usize>(), 1..60), which in any::<prop::sample::Index>(), requests in any::<bool>()) {
        let x = exchange();
        let (role, bytes, want) = if requests {
            (HttpRole::Requests, &x.requests, &x.server_saw)
        } else {
            (HttpRole::Responses, &x.responses, &x.client_saw)
        };
        let pts = points(bytes.len(), &cuts);
        let lost = which.index(pts.len() - 1);
        let (a, b) = (pts[lost], pts[lost + 1]);
        let mut d = decoder(role);
        let out = feed(&mut d, bytes, &pts, &[lost]);

        // Message starts: the decoded ones, and the interim response's.
        let offsets = byte_offsets(role, bytes);
        let mut starts: Vec<usize> = offsets.iter().map(|&(f, _)| f as usize).collect();
        if let Some(p) = bytes.windows(12).position(|w| w == b"HTTP/1.1 100") {
            starts.push(p);
        }
        starts.sort_unstable();
        let sync = starts
            .iter()
            .copied()
            .find(|&s| s >= b && (pts.contains(&s) || bytes[s - 1] == b'\n'));
        let mut expected = Vec::new();
        for (m, &(_, last)) in want.iter().zip(&offsets) {
            if (last as usize) < a {
                expected.push(m.clone());
            }
        }
        expected.push(Msg::Error("http_gap"));
        for (m, &(first, _)) in want.iter().zip(&offsets) {
            if sync.is_some_and(|s| first as usize >= s) {
                expected.push(m.clone());
            }
        }
        prop_assert_eq!(out.iter().map(msg).collect::<Vec<_>>(), expected);
        prop_assert_eq!(d.stats().resyncs, u64::from(sync.is_some()));
    }
}

/// Pipelined requests written at once to a hyper server: the request stream (one
/// chunk) and hyper's responses decode to what hyper parsed and answered.
#[test]
fn pipelined_requests_to_hyper() {
    let body = "{\"side\":\"buy\",\"qty\":1}";
    let mut raw = Vec::new();
    for i in 0..5 {
        raw.extend_from_slice(
            format!(
                "POST /orders HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        if i == 2 {
            raw.extend_from_slice(b"GET /status HTTP/1.1\r\nhost: x\r\n\r\n");
        }
    }
    raw.extend_from_slice(b"GET /cached HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    let (responses, server_saw) = runtime().block_on(async {
        let (mut a, b) = tokio::io::duplex(1 << 16);
        let log = Arc::new(Mutex::new(Vec::new()));
        let saw = Arc::new(Mutex::new(Vec::new()));
        let server = tokio::spawn(serve(
            Tap {
                inner: b,
                log: log.clone(),
            },
            saw.clone(),
        ));
        a.write_all(&raw).await.unwrap();
        let mut received = Vec::new();
        a.read_to_end(&mut received).await.unwrap();
        server.await.unwrap();
        let responses = log.lock().unwrap().clone();
        assert_eq!(received, responses);
        let saw = saw.lock().unwrap().clone();
        (responses, saw)
    });
    let mut d = decoder(HttpRole::Requests);
    let mut out = Vec::new();
    d.feed(7, &raw, &mut out);
    assert_eq!(out.iter().map(msg).collect::<Vec<_>>(), server_saw);
    assert_eq!(out.len(), 7);
    assert!(out.iter().all(|e| times(e) == (7, 7)));

    let mut d = decoder(HttpRole::Responses);
    let mut out = Vec::new();
    d.feed(9, &responses, &mut out);
    let statuses: Vec<u16> = out
        .iter()
        .map(|e| match e {
            HttpEvent::Response { status, .. } => *status,
            _ => 0,
        })
        .collect();
    assert_eq!(statuses, [200, 200, 200, 204, 200, 200, 304]);
    assert!(matches!(&out[0], HttpEvent::Response { body, .. } if body == b"{\"ack\":22}"));
}

/// The stream ends inside a message: reported once, as truncated.
#[test]
fn end_inside_a_message_is_truncated() {
    let x = exchange();
    let mut d = decoder(HttpRole::Requests);
    let mut out = Vec::new();
    let cut = x.requests.len() - 3;
    d.feed(1, &x.requests[..cut], &mut out);
    d.end(2, &mut out);
    assert_eq!(out.last().map(msg), Some(Msg::Error("http_truncated")));
    assert_eq!(out.len(), x.server_saw.len());
}
