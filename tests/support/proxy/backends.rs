//! In-process backends on 127.0.0.1:0: an HTTP/1.1 server (hyper) answering with its name and
//! the request it saw, and a WebSocket echo server (tokio-tungstenite).
//!
//! The HTTP backend's paths:
//! - `/sleep/<ms>`: waits, then answers like any other path;
//! - `/held/<rest>`: waits until the backend's [`Gate`] opens (at once without one), then
//!   answers like `/<rest>`;
//! - `/held-body/<bytes>`: like `/download/<bytes>`, but stops after the first half of the body
//!   until the [`Gate`] opens, so the response head is already out while it is held;
//! - `/download/<bytes>`: that many bytes of [`pattern`], streamed (Content-Length set);
//! - `/upload`: reads the body and answers `{"backend", "bytes", "fnv"}` (FNV-1a of the body);
//! - `/hop-response`: the usual answer plus hop-by-hop response headers;
//! - anything else: `{"backend", "method", "path", "version", "headers", "body_bytes"}`, after
//!   reading the whole body.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::Duration,
};

use anyhow::Result;
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, StreamBody};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_tungstenite::tungstenite::Message;

/// Period of [`pattern`]: a prime, so chunk boundaries never line up with it.
const PATTERN_PERIOD: usize = 65_521;

fn pattern_table() -> &'static [u8] {
    static TABLE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut x: u32 = 0x9e37_79b9;
        let mut table: Vec<u8> = (0..PATTERN_PERIOD)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x >> 24) as u8
            })
            .collect();
        // Two periods, so any window of up to one period is one contiguous slice.
        table.extend_from_within(..);
        table
    })
}

/// The bytes of the test pattern from `offset`, `len` of them (at most one period at a time).
pub fn pattern(offset: u64, len: usize) -> &'static [u8] {
    assert!(len <= PATTERN_PERIOD);
    let start = (offset % PATTERN_PERIOD as u64) as usize;
    &pattern_table()[start..start + len]
}

/// FNV-1a, 64 bits, over a stream.
#[derive(Clone, Copy, Debug)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    /// Adds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// The FNV of `len` bytes of [`pattern`] from offset 0.
    pub fn of_pattern(len: u64) -> u64 {
        let mut fnv = Fnv::default();
        let mut offset = 0;
        while offset < len {
            let n = (len - offset).min(CHUNK as u64) as usize;
            fnv.update(pattern(offset, n));
            offset += n as u64;
        }
        fnv.0
    }
}

/// Chunk size of streamed bodies.
pub const CHUNK: usize = 60 * 1024;

/// A body of `len` bytes of [`pattern`], produced as it is read (nothing buffered).
pub struct PatternBody {
    offset: u64,
    len: u64,
}

impl PatternBody {
    /// `len` bytes.
    pub fn new(len: u64) -> Self {
        Self { offset: 0, len }
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.offset >= self.len {
            return Poll::Ready(None);
        }
        let n = (self.len - self.offset).min(CHUNK as u64) as usize;
        let chunk = Bytes::from_static(pattern(self.offset, n));
        self.offset += n as u64;
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.offset >= self.len
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len - self.offset)
    }
}

type BackendBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(bytes: impl Into<Bytes>) -> BackendBody {
    http_body_util::Full::new(bytes.into()).boxed()
}

/// Holds the answers to `/held/...` and `/held-body/...` until opened: requests stay in flight
/// for exactly as long as a test needs, without guessing a delay.
#[derive(Clone, Debug, Default)]
pub struct Gate(Arc<GateState>);

#[derive(Debug, Default)]
struct GateState {
    open: AtomicBool,
    arrived: AtomicUsize,
}

impl Gate {
    /// A closed gate.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many answers reached the gate so far (held, or let through once open).
    pub fn arrived(&self) -> usize {
        self.0.arrived.load(Ordering::SeqCst)
    }

    /// Lets every held answer (and every later one) through.
    pub fn open(&self) {
        self.0.open.store(true, Ordering::SeqCst);
    }

    /// Waits until the gate is open. A short poll rather than a notification: the wait sits in
    /// response bodies, which must be `Sync`, and a few milliseconds of latency do not matter.
    async fn pass(&self) {
        self.0.arrived.fetch_add(1, Ordering::SeqCst);
        while !self.0.open.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// An HTTP/1.1 backend.
pub struct HttpBackend {
    /// Its name, in every answer.
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    open: Arc<AtomicUsize>,
    accept: JoinHandle<()>,
}

impl HttpBackend {
    /// Listens on 127.0.0.1:0 and serves until dropped.
    pub async fn start(name: &str) -> Result<Self> {
        Self::start_inner(name, None).await
    }

    /// Like [`HttpBackend::start`], with `gate` holding `/held/...` and `/held-body/...` answers.
    pub async fn start_gated(name: &str, gate: Gate) -> Result<Self> {
        Self::start_inner(name, Some(gate)).await
    }

    async fn start_inner(name: &str, gate: Option<Gate>) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let open = Arc::new(AtomicUsize::new(0));
        let counted = open.clone();
        let shared = (Arc::<str>::from(name), seen.clone(), gate);
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let shared = shared.clone();
                let open = counted.clone();
                open.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let (name, seen, gate) = shared.clone();
                        async move { Ok::<_, Infallible>(answer(&name, &seen, gate, request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Ok(Self {
            name: name.to_string(),
            addr,
            seen,
            open,
            accept,
        })
    }

    /// Connections from the proxy open now.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Paths (with query) of every request it received, in order.
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Whether a request for a path containing `fragment` arrived.
    pub fn saw(&self, fragment: &str) -> bool {
        self.seen().iter().any(|p| p.contains(fragment))
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn answer(
    name: &str,
    seen: &Mutex<Vec<String>>,
    gate: Option<Gate>,
    request: Request<Incoming>,
) -> Response<BackendBody> {
    let path = request
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_string(), |pq| pq.as_str().to_string());
    if let Ok(mut seen) = seen.lock() {
        seen.push(path.clone());
    }
    let mut uri_path = request.uri().path().to_string();
    if let Some(rest) = uri_path.strip_prefix("/held/") {
        if let Some(gate) = &gate {
            gate.pass().await;
        }
        uri_path = format!("/{rest}");
    }
    if let Some(len) = uri_path.strip_prefix("/held-body/") {
        let len: u64 = len.parse().unwrap_or(0);
        let mut response = Response::new(held_body(len, gate));
        response
            .headers_mut()
            .insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
        return response;
    }
    if let Some(ms) = uri_path.strip_prefix("/sleep/") {
        let ms: u64 = ms.parse().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(len) = uri_path.strip_prefix("/download/") {
        let len: u64 = len.parse().unwrap_or(0);
        let mut response = Response::new(PatternBody::new(len).boxed());
        response
            .headers_mut()
            .insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
        response
            .headers_mut()
            .insert("x-backend", HeaderValue::from_str(name).expect("name"));
        return response;
    }
    let method = request.method().to_string();
    let version = format!("{:?}", request.version());
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (key, value) in request.headers() {
        headers
            .entry(key.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    // Read the whole body (counted and hashed, not kept).
    let mut body = request.into_body();
    let mut bytes = 0u64;
    let mut fnv = Fnv::default();
    let mut body_error = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    bytes += data.len() as u64;
                    fnv.update(data);
                }
            }
            Err(error) => {
                body_error = Some(error.to_string());
                break;
            }
        }
    }
    let value = if uri_path == "/upload" {
        json!({"backend": name, "bytes": bytes, "fnv": fnv.0, "error": body_error})
    } else {
        json!({
            "backend": name,
            "method": method,
            "path": path,
            "version": version,
            "headers": headers,
            "body_bytes": bytes,
            "error": body_error,
        })
    };
    let mut response = Response::new(full(value.to_string()));
    let response_headers = response.headers_mut();
    response_headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response_headers.insert("x-backend", HeaderValue::from_str(name).expect("name"));
    if uri_path == "/hop-response" {
        for (key, value) in [
            ("connection", "X-Backend-Hop"),
            ("x-backend-hop", "secret"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("x-backend-kept", "yes"),
        ] {
            response_headers.insert(key, HeaderValue::from_static(value));
        }
    }
    if body_error.is_some() {
        *response.status_mut() = StatusCode::BAD_REQUEST;
    }
    response
}

/// `len` bytes of [`pattern`]: the first half at once, the rest once `gate` is open.
fn held_body(len: u64, gate: Option<Gate>) -> BackendBody {
    let half = len / 2;
    let frames = futures_util::stream::unfold((0u64, gate), move |(offset, mut gate)| async move {
        if offset >= len {
            return None;
        }
        if offset >= half {
            if let Some(gate) = gate.take() {
                gate.pass().await;
            }
        }
        // Chunks end at the half, so the first half is all out before the wait.
        let end = if offset < half { half } else { len };
        let n = (end - offset).min(CHUNK as u64) as usize;
        let frame = Frame::data(Bytes::from_static(pattern(offset, n)));
        Some((Ok::<_, Infallible>(frame), (offset + n as u64, gate)))
    });
    BodyExt::boxed(StreamBody::new(frames))
}

/// A WebSocket backend: answers each text message `m` with `<name>:<m>` and echoes binary ones.
pub struct WsBackend {
    /// Where it listens.
    pub addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl WsBackend {
    /// Listens on 127.0.0.1:0 and serves until dropped.
    pub async fn start(name: &str) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let name = Arc::<str>::from(name);
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let name = name.clone();
                tokio::spawn(async move {
                    let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    while let Some(Ok(message)) = socket.next().await {
                        let reply = match message {
                            Message::Text(text) => Message::text(format!("{name}:{text}")),
                            Message::Binary(data) => Message::Binary(data),
                            Message::Close(_) => break,
                            _ => continue,
                        };
                        if socket.send(reply).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Ok(Self { addr, accept })
    }
}

impl Drop for WsBackend {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// A loopback port that refuses connections for as long as this lives: bound but not listening,
/// so no one else (the agent's own port-0 listeners included) can take it meanwhile. A port
/// merely freed again could be handed to the agent's listener, which would then proxy to itself.
pub struct RefusingPort {
    /// The address to connect to.
    pub addr: SocketAddr,
    _socket: tokio::net::TcpSocket,
}

impl RefusingPort {
    /// Binds one.
    pub fn new() -> Result<Self> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        Ok(Self {
            addr: socket.local_addr()?,
            _socket: socket,
        })
    }
}
