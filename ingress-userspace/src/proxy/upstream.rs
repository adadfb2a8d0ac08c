//! Upstream side: one [`Endpoint`] per backend address with its keep-alive pool, passive health
//! and outstanding-request count, and the [`Backend`] that balances over endpoints.
//!
//! Endpoints are shared by every routing table that names their address (and the same way of
//! connecting, see `transport`), so a new table keeps the pools (and their open connections) of
//! the old one. An HTTP/1.1 connection (hyper's low-level client) goes back to its pool when the
//! response body has been read to the end; a response dropped half-read closes it. An HTTP/2
//! connection (gRPC backends) is one per endpoint, shared by all its requests as streams.

mod balance;
pub(crate) mod grpc;
mod progress;
mod response_body;
mod transport;

pub(crate) use progress::SendProgress;
pub(crate) use response_body::UpstreamResponseBody;

pub(crate) use balance::{random, Balancer, NewSession, Prepared, RequestKeys};
pub(crate) use transport::{unusable_upstream_tls, Sender, Transport};

use std::{
    future::Future as _,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::{body::Incoming, client::conn::http2};

use super::metrics::{BackendKey, BackendSeries, RequestMetrics};

/// How long an endpoint that refused a connection is skipped.
pub(crate) const PASSIVE_HEALTH_BACKOFF: Duration = Duration::from_secs(10);

/// Most idle connections kept per endpoint.
const MAX_IDLE_PER_ENDPOINT: usize = 256;

/// The request body sent upstream: the client's body, counted against the body size limit,
/// and failing when the client sends nothing for the body timeout while we wait for it.
pub(crate) struct UpstreamBody {
    inner: Option<Incoming>,
    remaining: u64,
    timeout: Duration,
    /// Runs while we wait for the client; boxed and made on the first wait only (most bodies
    /// arrive with their head), then reused.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    waiting: bool,
    /// Where the body is, for the send and read timeouts (requests with a body only).
    progress: Option<Arc<SendProgress>>,
}

/// The client's body exceeded `--max-body-bytes`.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than the limit")]
pub(crate) struct BodyTooLarge;

/// The client's body could not be read (malformed chunked framing, the client went away): the
/// client's error, answered 400, not the endpoint's.
#[derive(Debug, thiserror::Error)]
#[error("reading the request body: {0}")]
pub(crate) struct ClientBodyError(#[source] hyper::Error);

/// The client sent no body bytes for `--client-body-timeout` while we waited for them.
#[derive(Debug, thiserror::Error)]
#[error("the client sent no request body bytes within the body timeout")]
pub(crate) struct BodyTimeout;

impl UpstreamBody {
    /// The client's body, failing once more than `limit` bytes went through, or when the
    /// client sends nothing for `timeout` while the body is waited for.
    pub(crate) fn new(inner: Incoming, limit: u64, timeout: Duration) -> Self {
        Self {
            inner: Some(inner),
            remaining: limit,
            timeout,
            deadline: None,
            waiting: false,
            progress: None,
        }
    }

    /// No body: a request sent again to another endpoint (only those without one are).
    pub(crate) fn empty() -> Self {
        Self {
            inner: None,
            remaining: 0,
            timeout: Duration::ZERO,
            deadline: None,
            waiting: false,
            progress: None,
        }
    }

    /// Tracks how far the body has gone (see [`SendProgress`]); `None` without a body.
    pub(crate) fn track(&mut self) -> Option<Arc<SendProgress>> {
        if self.is_end_stream() {
            return None;
        }
        let progress = Arc::new(SendProgress::new());
        self.progress = Some(progress.clone());
        Some(progress)
    }

    /// Nothing came: starts the timer on the first wait, fails when it runs out. The timer
    /// only runs from a wait to the next frame, so an upstream that reads slowly (and so asks
    /// for the body late) never counts against the client.
    fn wait_for_client(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if !self.waiting {
            self.waiting = true;
            let Some(at) = tokio::time::Instant::now().checked_add(self.timeout) else {
                return Poll::Pending;
            };
            match &mut self.deadline {
                Some(deadline) => deadline.as_mut().reset(at),
                None => self.deadline = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
        let expired = self
            .deadline
            .as_mut()
            .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
        if expired {
            return Poll::Ready(Some(Err(Box::new(BodyTimeout))));
        }
        Poll::Pending
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        if polled.is_ready() {
            self.waiting = false;
        }
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > self.remaining {
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                    self.remaining -= len;
                }
                if let Some(progress) = &self.progress {
                    if self.inner.as_ref().is_none_or(Body::is_end_stream) {
                        progress.done();
                    } else {
                        progress.sent_frame();
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                Poll::Ready(Some(Err(Box::new(ClientBodyError(error)))))
            }
            Poll::Ready(None) => {
                if let Some(progress) = &self.progress {
                    progress.done();
                }
                Poll::Ready(None)
            }
            Poll::Pending => {
                if let Some(progress) = &self.progress {
                    progress.waiting_for_client();
                }
                self.wait_for_client(cx)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

/// One endpoint address, reached one way: its idle connections, health and load.
#[derive(Debug)]
pub(crate) struct Endpoint {
    /// Where it is.
    pub addr: SocketAddr,
    /// How connections to it are made.
    transport: Arc<Transport>,
    /// HTTP/1.1: idle connections, with when they went idle.
    idle: Mutex<Vec<(Sender, Instant)>>,
    /// HTTP/2: the connection every request shares, and when a request last took it.
    shared: Mutex<Option<(http2::SendRequest<UpstreamBody>, Instant)>>,
    /// Milliseconds since `epoch` until which the endpoint is skipped (0: healthy).
    down_until_ms: AtomicU64,
    epoch: Instant,
    outstanding: AtomicUsize,
}

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    /// Connecting took longer than the connect timeout.
    #[error("connecting to {0} timed out")]
    Timeout(SocketAddr),
    /// The endpoint refused or the network failed.
    #[error("connecting to {addr}: {source}")]
    Io {
        /// The endpoint.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS handshake failed (the certificate did not verify, no common version...).
    #[error("TLS handshake with {addr}: {source}")]
    Tls {
        /// The endpoint.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP handshake failed.
    #[error("HTTP handshake with {addr}: {source}")]
    Handshake {
        /// The endpoint.
        addr: SocketAddr,
        /// Why.
        source: hyper::Error,
    },
}

impl Endpoint {
    /// A healthy HTTP/1.1 endpoint with no connections.
    #[cfg(test)]
    pub(crate) fn new(addr: SocketAddr) -> Self {
        Self::with_transport(addr, Arc::default())
    }

    /// A healthy endpoint with no connections, reached through `transport`.
    pub(crate) fn with_transport(addr: SocketAddr, transport: Arc<Transport>) -> Self {
        Self {
            addr,
            transport,
            idle: Mutex::new(Vec::new()),
            shared: Mutex::new(None),
            down_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            outstanding: AtomicUsize::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether passive health currently skips this endpoint.
    pub(crate) fn is_down(&self) -> bool {
        let until = self.down_until_ms.load(Ordering::Relaxed);
        until != 0 && self.now_ms() < until
    }

    /// Skip this endpoint for [`PASSIVE_HEALTH_BACKOFF`].
    pub(crate) fn mark_down(&self) {
        let until = self.now_ms() + PASSIVE_HEALTH_BACKOFF.as_millis() as u64;
        self.down_until_ms.store(until.max(1), Ordering::Relaxed);
    }

    /// A connection succeeded: no longer skipped.
    pub(crate) fn mark_up(&self) {
        if self.down_until_ms.load(Ordering::Relaxed) != 0 {
            self.down_until_ms.store(0, Ordering::Relaxed);
        }
    }

    /// Requests sent and not yet answered to the end.
    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// An idle pooled connection that is still open and younger than `max_idle`; for HTTP/2,
    /// the shared connection while it is open and was used within `max_idle` (one left idle
    /// longer is let go, as an idle HTTP/1.1 one would be: it closes when its streams end).
    pub(crate) fn pooled(&self, max_idle: Duration) -> Option<Sender> {
        if self.transport.is_http2() {
            let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            let (sender, used) = shared.as_mut()?;
            if sender.is_closed() || used.elapsed() >= max_idle {
                *shared = None;
                return None;
            }
            *used = Instant::now();
            return Some(Sender::Http2(sender.clone()));
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((sender, since)) = idle.pop() {
            if !sender.is_closed() && since.elapsed() < max_idle {
                return Some(sender);
            }
        }
        None
    }

    /// A new connection (TCP, TLS if the transport has it, then the HTTP handshake), its driver
    /// spawned on the runtime. An HTTP/2 one becomes the endpoint's shared connection.
    pub(crate) async fn connect(&self, timeout: Duration) -> Result<Sender, ConnectError> {
        let addr = self.addr;
        let stream = match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await
        {
            Err(_) => {
                self.mark_down();
                return Err(ConnectError::Timeout(addr));
            }
            Ok(Err(source)) => {
                self.mark_down();
                return Err(ConnectError::Io { addr, source });
            }
            Ok(Ok(stream)) => stream,
        };
        self.mark_up();
        // Small requests and responses must not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let sender = self.transport.handshake(stream, addr).await?;
        if let Sender::Http2(shared) = &sender {
            *self.shared.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((shared.clone(), Instant::now()));
        }
        Ok(sender)
    }

    /// Returns a connection whose response was read to the end (HTTP/2 ones stay shared).
    fn release(&self, sender: Sender) {
        if sender.is_closed() || matches!(sender, Sender::Http2(_)) {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE_PER_ENDPOINT {
            idle.push((sender, Instant::now()));
        }
    }

    /// Counts a request as outstanding until the guard drops.
    pub(crate) fn start_request(self: &Arc<Self>) -> Outstanding {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        Outstanding(self.clone())
    }
}

/// An outstanding request on an endpoint; dropping it ends the count.
#[derive(Debug)]
pub(crate) struct Outstanding(Arc<Endpoint>);

impl Outstanding {
    /// The endpoint.
    pub(crate) fn endpoint(&self) -> &Arc<Endpoint> {
        &self.0
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The endpoints of one backend and the balancing between them.
#[derive(Debug)]
pub(crate) struct Backend {
    /// Ready endpoints, in address order.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// The 503 body when there are none, saying why.
    pub unavailable: Option<Bytes>,
    /// The labels of its series on `/metrics` (`None`: a backend built outside a plan).
    pub key: Option<BackendKey>,
    /// Its request counters; a reload hands the same counters to the backend that replaces it.
    pub metrics: Arc<RequestMetrics>,
    /// How its endpoints are reached (all of them the same way).
    pub transport: Arc<Transport>,
    /// How an endpoint is chosen (`upstream-hash-by`, cookie affinity, else two choices).
    pub balancer: Balancer,
    next: AtomicUsize,
}

impl Backend {
    /// A backend over `endpoints`; `unavailable` explains an empty list.
    pub(crate) fn new(endpoints: Vec<Arc<Endpoint>>, unavailable: Option<Bytes>) -> Self {
        Self {
            endpoints,
            unavailable,
            key: None,
            metrics: Arc::default(),
            transport: Arc::default(),
            balancer: Balancer::LeastRequests,
            next: AtomicUsize::new(0),
        }
    }

    /// The same backend, choosing endpoints as `balance` says; `name` identifies it in
    /// session cookies.
    pub(crate) fn with_balance(
        mut self,
        balance: &crate::translate::l7::Balance,
        name: &str,
    ) -> Self {
        self.balancer = Balancer::new(balance, &self.endpoints, name);
        self
    }

    /// The endpoint for this try of a request (`prepared` by its balancer), and the session
    /// it starts, if it starts one.
    pub(crate) fn choose(
        &self,
        prepared: &Prepared,
        exclude: Option<&Arc<Endpoint>>,
    ) -> Option<(&Arc<Endpoint>, Option<NewSession>)> {
        self.balancer
            .choose(prepared, &self.endpoints, exclude, || self.pick(exclude))
    }

    /// The same backend, its endpoints reached through `transport`.
    pub(crate) fn with_transport(mut self, transport: Arc<Transport>) -> Self {
        self.transport = transport;
        self
    }

    /// The same backend, labelled `key` on `/metrics` and counting into `metrics`.
    pub(crate) fn with_metrics(mut self, key: BackendKey, metrics: Arc<RequestMetrics>) -> Self {
        self.key = Some(key);
        self.metrics = metrics;
        self
    }

    /// Power of two choices on outstanding requests: two candidates from a rotating position
    /// (so ties spread like round-robin), the one with fewer outstanding requests wins; endpoints
    /// that recently refused connections are passed over while others are healthy. `exclude` is
    /// an endpoint that just failed for this request.
    pub(crate) fn pick(&self, exclude: Option<&Arc<Endpoint>>) -> Option<&Arc<Endpoint>> {
        let n = self.endpoints.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let usable =
            |e: &&Arc<Endpoint>| !e.is_down() && exclude.is_none_or(|x| !Arc::ptr_eq(x, e));
        // The first two usable endpoints from `start`, and a second probe half-way round so two
        // neighbours do not always compete.
        let first = (0..n)
            .map(|i| &self.endpoints[(start + i) % n])
            .find(usable);
        let second = (0..n)
            .map(|i| &self.endpoints[(start + n / 2 + 1 + i) % n])
            .find(usable);
        match (first, second) {
            (Some(a), Some(b)) => Some(if b.outstanding() < a.outstanding() {
                b
            } else {
                a
            }),
            (Some(a), None) | (None, Some(a)) => Some(a),
            // Everything is marked down: try anyway rather than fail without trying (the marks
            // may be stale), still avoiding the endpoint that just failed when there is another.
            (None, None) => (0..n)
                .map(|i| &self.endpoints[(start + i) % n])
                .find(|e| exclude.is_none_or(|x| !Arc::ptr_eq(x, e)))
                .or_else(|| self.endpoints.get(start % n)),
        }
    }
}

impl BackendSeries for Backend {
    fn series_key(&self) -> Option<&BackendKey> {
        self.key.as_ref()
    }

    fn request_metrics(&self) -> &RequestMetrics {
        &self.metrics
    }
}

#[cfg(test)]
mod tests;
