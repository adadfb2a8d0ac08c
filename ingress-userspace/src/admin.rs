//! The admin listener (`--admin-listen`, default 127.0.0.1:9900) and the optional metrics
//! listener (`--metrics-listen`). `/healthz` answers 200 while the process serves; `/readyz`
//! answers 200 only once the first full sync of the objects is in the maps and the proxy, 503
//! before; both are served on either listener. `/metrics` serves the Prometheus metrics
//! ([`metrics`], listed in `docs/metrics.md`) on the metrics listener when there is one, else on
//! the admin listener. `/debug/services`, `/debug/routes` and `/debug/certs` serve the JSON views
//! `xdp-ingress inspect` shows ([`crate::inspect`]), on the admin listener and to loopback
//! clients only.
//!
//! Both listeners are reachable by whatever reaches their port (the DaemonSet's probes need
//! that), so each connection is bounded: a started request head must end within
//! `--client-header-timeout` (the proxy's head guard), an idle connection closes after
//! `--client-idle-timeout`, at most [`MAX_CONNECTIONS`] are open per listener (a newcomer closes
//! the oldest one with no request in flight), and a failing accept (out of file descriptors)
//! backs off instead of retrying at once.

pub(crate) mod metrics;

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc, Mutex, PoisonError,
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot, Notify},
};

use self::metrics::Metrics;
use crate::{
    inspect::{ViewKind, ViewRequest},
    proxy::head_guard::{HeadGuard, Http1State},
};

/// How long a `/debug/...` request waits for the runner (busy applying a change).
const VIEW_TIMEOUT: Duration = Duration::from_secs(5);

/// The OpenMetrics text format, which Prometheus scrapes natively.
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Connections open at once on one listener. Prometheus, the kubelet's probes and `inspect`
/// need a handful; past the cap a newcomer closes the oldest idle connection rather than being
/// refused, so a client holding idle connections cannot starve the probes (and get the pod
/// restarted).
pub(crate) const MAX_CONNECTIONS: usize = 64;

/// Largest request head (the endpoints take no parameters; hyper's smallest buffer is 8 KiB).
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// The first wait after a failed accept, doubled on each failure in a row up to
/// [`ACCEPT_BACKOFF_MAX`]. Out of file descriptors, the connection stays in the backlog and
/// every retry fails at once: without a wait the loop spins on a whole CPU.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// The longest wait between accepts that fail.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Whether the agent is ready, shared with the admin listener.
#[derive(Clone, Debug, Default)]
pub(crate) struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Marks the agent ready.
    pub(crate) fn set_ready(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether the agent is ready.
    pub(crate) fn is_ready(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Which endpoints a listener serves (both serve `/healthz` and `/readyz`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// `--admin-listen`: `/debug/...` to loopback clients, and `/metrics` when `metrics` is set
    /// (no `--metrics-listen`).
    Admin {
        /// Whether `/metrics` is served here.
        metrics: bool,
    },
    /// `--metrics-listen`: `/metrics`, no `/debug`.
    Metrics,
}

/// Time limits on each admin or metrics connection: the proxy's client timeouts.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timeouts {
    /// A started request head must end within this (`--client-header-timeout`).
    pub header: Duration,
    /// A connection with no request for this long is closed (`--client-idle-timeout`).
    pub idle: Duration,
}

/// What the endpoints read.
#[derive(Clone, Debug)]
pub(crate) struct Endpoints {
    /// `/readyz`.
    pub readiness: Readiness,
    /// `/metrics`.
    pub metrics: Arc<Metrics>,
    /// `/debug/...`: asks the runner for a view.
    pub views: mpsc::Sender<ViewRequest>,
}

/// Binds `addr` and serves `role`'s endpoints on the current runtime; returns the bound address.
pub(crate) async fn serve(
    addr: SocketAddr,
    role: Role,
    timeouts: Timeouts,
    endpoints: Endpoints,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        // hyper's header timer also runs while a connection waits for its next request, so it
        // is the idle timeout; the head guard cuts a started head sooner (as on the proxy).
        .header_read_timeout(timeouts.idle.max(timeouts.header))
        .max_buf_size(MAX_HEAD_BYTES);
    let server = Arc::new(Server {
        role,
        header_timeout: timeouts.header,
        endpoints,
        http,
        connections: Mutex::new(Connections::default()),
    });
    tokio::spawn(accept_loop(listener, bound, server));
    Ok(bound)
}

/// One listener's settings and open connections.
struct Server {
    role: Role,
    header_timeout: Duration,
    endpoints: Endpoints,
    http: http1::Builder,
    connections: Mutex<Connections>,
}

impl Server {
    fn connections(&self) -> std::sync::MutexGuard<'_, Connections> {
        // Nothing panics while holding the lock; a poisoned registry is still consistent.
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// A connection as the registry sees it.
#[derive(Debug, Default)]
struct ConnectionState {
    /// Requests whose response has not been sent (or abandoned) yet.
    in_flight: AtomicU32,
    /// Notified when the connection is closed to make room for a newer one.
    shed: Notify,
}

/// The open connections of one listener, by accept order.
#[derive(Debug, Default)]
struct Connections {
    next_id: u64,
    open: BTreeMap<u64, Arc<ConnectionState>>,
}

impl Connections {
    /// Registers a new connection, closing the oldest one with no request in flight when
    /// `limit` are open already; `None` when all of them are busy (the newcomer is refused).
    fn admit(&mut self, limit: usize) -> Option<(u64, Arc<ConnectionState>)> {
        if self.open.len() >= limit {
            let oldest_idle = self
                .open
                .iter()
                .find(|(_, state)| state.in_flight.load(Ordering::Relaxed) == 0)
                .map(|(&id, _)| id)?;
            if let Some(state) = self.open.remove(&oldest_idle) {
                // A stored permit: the connection's task ends even if it is not waiting yet.
                state.shed.notify_one();
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let state = Arc::new(ConnectionState::default());
        self.open.insert(id, state.clone());
        Some((id, state))
    }

    fn remove(&mut self, id: u64) {
        self.open.remove(&id);
    }
}

/// Whether an accept error concerns only the connection it was about (which is then gone), so
/// the next accept can follow at once.
fn is_per_connection(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionRefused
    )
}

async fn accept_loop(listener: TcpListener, bound: SocketAddr, server: Arc<Server>) {
    // The wait after the last failure of the current run of failures.
    let mut backoff: Option<Duration> = None;
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                if backoff.take().is_some() {
                    tracing::info!(listener = %bound, "accepting again");
                }
                let admitted = server.connections().admit(MAX_CONNECTIONS);
                match admitted {
                    Some((id, state)) => {
                        tokio::spawn(serve_connection(server.clone(), stream, peer, id, state));
                    }
                    // Every connection has a request in flight: this one is closed at once.
                    None => drop(stream),
                }
            }
            Err(error) if is_per_connection(&error) => {}
            Err(error) => {
                // Logged once per run of failures: each retry would fail the same way.
                let wait = match backoff {
                    None => {
                        tracing::warn!(listener = %bound, %error, "accept failed; backing off");
                        ACCEPT_BACKOFF_MIN
                    }
                    Some(last) => (last * 2).min(ACCEPT_BACKOFF_MAX),
                };
                backoff = Some(wait);
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Removes a connection from its listener's registry when its task ends.
struct Registered {
    server: Arc<Server>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.server.connections().remove(self.id);
    }
}

async fn serve_connection(
    server: Arc<Server>,
    stream: TcpStream,
    peer: SocketAddr,
    id: u64,
    state: Arc<ConnectionState>,
) {
    let _registered = Registered {
        server: server.clone(),
        id,
    };
    // The guard's smuggling verdicts do not matter here: no request body is read or forwarded.
    let guarded = HeadGuard::new(
        stream,
        MAX_HEAD_BYTES,
        server.header_timeout,
        Arc::new(Http1State::default()),
    );
    let service = {
        let server = server.clone();
        let state = state.clone();
        service_fn(move |request| {
            let server = server.clone();
            let in_flight = InFlight::start(state.clone());
            async move {
                let response = answer(request, peer, &server).await;
                Ok::<_, Infallible>(response.map(|body| TrackedBody {
                    body,
                    _in_flight: in_flight,
                }))
            }
        })
    };
    let connection = server.http.serve_connection(TokioIo::new(guarded), service);
    tokio::select! {
        _ = connection => {}
        // Dropping the connection closes the socket.
        _ = state.shed.notified() => {}
    }
}

/// Counts a request in flight on its connection until dropped.
struct InFlight(Arc<ConnectionState>);

impl InFlight {
    fn start(state: Arc<ConnectionState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(state)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request in flight until hyper has sent it (or dropped it), so
/// a connection is never closed for a newcomer in the middle of a response.
struct TrackedBody {
    body: Full<Bytes>,
    /// Held only for its drop.
    _in_flight: InFlight,
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Whether `peer` may see `/debug`: a loopback address, also as an IPv4-mapped IPv6 address (an
/// admin listener on `[::]` sees 127.0.0.1 as `::ffff:127.0.0.1`).
fn is_loopback(peer: IpAddr) -> bool {
    peer.to_canonical().is_loopback()
}

/// A plain-text answer.
fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

async fn answer(
    request: Request<Incoming>,
    peer: SocketAddr,
    server: &Server,
) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    let serves_metrics = match server.role {
        Role::Admin { metrics } => metrics,
        Role::Metrics => true,
    };
    match path {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if server.endpoints.readiness.is_ready() => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not synced yet\n"),
        "/metrics" if serves_metrics => {
            let mut response = Response::new(Full::new(Bytes::from(
                server.endpoints.metrics.render().await,
            )));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(METRICS_CONTENT_TYPE),
            );
            response
        }
        "/metrics" => text(
            StatusCode::NOT_FOUND,
            "/metrics is served on the --metrics-listen address\n",
        ),
        _ => match (server.role, debug_view(path)) {
            (Role::Admin { .. }, Some(kind)) => debug(kind, peer, &server.endpoints.views).await,
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        },
    }
}

fn debug_view(path: &str) -> Option<ViewKind> {
    match path {
        "/debug/services" => Some(ViewKind::Services),
        "/debug/routes" => Some(ViewKind::Routes),
        "/debug/certs" => Some(ViewKind::Certs),
        _ => None,
    }
}

async fn debug(
    kind: ViewKind,
    peer: SocketAddr,
    views: &mpsc::Sender<ViewRequest>,
) -> Response<Full<Bytes>> {
    // The routing table names endpoints and Secrets: for `inspect` on the node (or in the pod),
    // not for whoever reaches the probe port.
    if !is_loopback(peer.ip()) {
        return text(
            StatusCode::FORBIDDEN,
            "/debug is served on loopback only (run xdp-ingress inspect on the node)\n",
        );
    }
    let (reply, answer) = oneshot::channel();
    // Both the queue and the answer are bounded in time: a runner busy with a long sync makes a
    // 503, not a pile of waiting requests.
    let view = tokio::time::timeout(VIEW_TIMEOUT, async {
        views.send((kind, reply)).await.ok()?;
        answer.await.ok()
    })
    .await
    .ok()
    .flatten();
    let mut response = match view {
        Some(view) => Response::new(Full::new(Bytes::from(view.to_string()))),
        None => text(StatusCode::SERVICE_UNAVAILABLE, "agent busy\n"),
    };
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_mapped_loopback_is_loopback() {
        for (peer, loopback) in [
            ("127.0.0.1", true),
            ("127.3.2.1", true),
            ("::1", true),
            ("::ffff:127.0.0.1", true),
            ("192.0.2.1", false),
            ("::ffff:192.0.2.1", false),
            ("2001:db8::1", false),
        ] {
            let ip: IpAddr = peer.parse().expect("a literal address");
            assert_eq!(is_loopback(ip), loopback, "{peer}");
        }
    }

    /// Whether the connection was told to close (its stored permit), without waiting.
    async fn was_shed(state: &ConnectionState) -> bool {
        tokio::time::timeout(Duration::ZERO, state.shed.notified())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_full_registry_sheds_the_oldest_idle_connection_or_refuses() {
        let mut connections = Connections::default();
        let (first, first_state) = connections.admit(3).expect("room");
        let (_, second_state) = connections.admit(3).expect("room");
        let (_, third_state) = connections.admit(3).expect("room");
        // The oldest has a request in flight: the next oldest goes.
        let busy = InFlight::start(first_state.clone());
        let (_, fourth_state) = connections.admit(3).expect("an idle one to shed");
        assert_eq!(connections.open.len(), 3);
        assert!(connections.open.contains_key(&first));
        assert!(was_shed(&second_state).await);
        assert!(!was_shed(&first_state).await);
        // All busy: the newcomer is refused and nobody is shed.
        let _third_busy = InFlight::start(third_state.clone());
        let _fourth_busy = InFlight::start(fourth_state.clone());
        assert!(connections.admit(3).is_none());
        assert_eq!(connections.open.len(), 3);
        assert!(!was_shed(&third_state).await && !was_shed(&fourth_state).await);
        // The request ends: the oldest is idle again and goes first.
        drop(busy);
        assert!(connections.admit(3).is_some());
        assert!(was_shed(&first_state).await);
        connections.remove(first);
        assert_eq!(connections.open.len(), 3);
    }
}
