//! Listeners, connections and the request path.
//!
//! Per request: one atomic load of the routing table, a lookup that allocates nothing, header
//! rewriting, an endpoint chosen by two random choices, a pooled (or new) connection, and the
//! response streamed back. Errors the proxy produces itself are short plain-text answers:
//! 400 (malformed request, smuggling attempt), 404 (no rule), 413 (body limit), 431 (header
//! limit, by hyper), 502 (connect failure), 503 (no endpoints, with why), 504 (response timeout).
//!
//! Per connection: an HTTP/1.1 keep-alive connection quiet for [`PARK_AFTER`] is *parked*: its
//! hyper connection (with its two 8 KiB buffers) ends at a message boundary (see `head_guard`)
//! and its task ends too: a plain connection waits for the client's next bytes in the
//! [`ParkingLot`] as a bare descriptor, a TLS one in its task holding only the stream. Then a
//! new hyper connection takes over. A busy connection is never parked.

use std::{
    borrow::Cow,
    convert::Infallible,
    fmt,
    net::SocketAddr,
    pin::Pin,
    sync::{atomic::Ordering, Arc},
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{
    header, uri::PathAndQuery, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
};
use http_body::{Body, Frame, SizeHint};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use prometheus_client::{collector::Collector, encoding::DescriptorEncoder};
use tokio::net::{TcpListener, TcpStream};

use crate::translate::l7::{BackendId, L7Plan};

use super::{
    access_log::{AccessLog, AccessRecord},
    head_guard::{clock_ms, Handoff, HeadGuard, Http1State},
    headers::{self, ConnectionHeaders, RequestIds},
    lifetime::{ConnectionLife, ConnectionSlot, ListenerSlots, SendTimeout, SheddingTicket},
    metrics::{self, ProxyCounters, ProxyScrape, RequestMetrics},
    parking::{Parked, ParkingLot},
    path,
    router::{EndpointRegistry, Router},
    tls::{CertBook, CertExpiry, CertProblem, TlsError},
    upstream::{
        Backend, BodyTimeout, BodyTooLarge, ClientBodyError, Endpoint, Outstanding, Sender,
        UpstreamBody, UpstreamResponseBody,
    },
};

/// How long an HTTP/1.1 connection must be quiet (nothing in flight, between messages) before it
/// is parked. Short, so idle keep-alive connections cost little; long enough that a client
/// sending request after request never pays for a new hyper connection.
pub const PARK_AFTER: Duration = Duration::from_secs(1);

/// Listeners, timeouts and limits (the `run` flags).
#[derive(Clone, Debug)]
pub struct ProxySettings {
    /// Plain HTTP listener (`None`: off).
    pub http_listen: Option<SocketAddr>,
    /// HTTPS listener (`None`: off).
    pub https_listen: Option<SocketAddr>,
    /// Connecting to an endpoint; then 502.
    pub upstream_connect_timeout: Duration,
    /// From the request sent to the response head; then 504.
    pub upstream_response_timeout: Duration,
    /// Pooled upstream connections idle longer are closed.
    pub upstream_idle_timeout: Duration,
    /// A client must send a complete request head (and finish a TLS handshake) within this,
    /// once it has started one.
    pub client_header_timeout: Duration,
    /// An HTTP/1.1 keep-alive connection waiting for its next request, or an HTTP/2 connection
    /// without a stream, is closed after this (HTTP/2: GOAWAY first).
    pub client_idle_timeout: Duration,
    /// A write to the client that makes no progress for this closes the connection (and so its
    /// upstream connections); also HTTP/2 responses waiting this long for the client's window.
    pub client_send_timeout: Duration,
    /// A request body that brings no bytes for this while the proxy waits for it ends the
    /// request (408 when the endpoint has not answered yet).
    pub client_body_timeout: Duration,
    /// Connections per listener (parked ones included); at the cap, the idle connection that
    /// waited longest is closed for a new one, else the new one is refused.
    pub max_connections: usize,
    /// Largest request head, in bytes; larger gets 431.
    pub max_header_bytes: usize,
    /// Largest request body, in bytes; larger gets 413. `None`: unlimited.
    pub max_body_bytes: Option<u64>,
    /// Write one access-log line per request.
    pub access_log: bool,
    /// Keep `%2F` and `%5C` in request paths (see [`path`](super::path)); else 400.
    pub allow_encoded_slashes: bool,
    /// Pass request headers whose names contain `_`; else they are dropped.
    pub allow_underscores_in_headers: bool,
    /// Upgrade protocols passed to endpoints (lower-case; `h2c` never is).
    pub upgrades: Vec<String>,
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self {
            http_listen: Some(SocketAddr::from(([0, 0, 0, 0], 80))),
            https_listen: Some(SocketAddr::from(([0, 0, 0, 0], 443))),
            upstream_connect_timeout: Duration::from_secs(5),
            upstream_response_timeout: Duration::from_secs(60),
            upstream_idle_timeout: Duration::from_secs(30),
            client_header_timeout: Duration::from_secs(10),
            client_idle_timeout: Duration::from_secs(60),
            client_send_timeout: Duration::from_secs(60),
            client_body_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_header_bytes: 32 * 1024,
            max_body_bytes: None,
            access_log: false,
            allow_encoded_slashes: false,
            allow_underscores_in_headers: false,
            upgrades: vec!["websocket".to_string()],
        }
    }
}

/// Errors starting the proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS setup failed.
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    /// A rustls configuration error.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The access log writer could not start.
    #[error("starting the access log: {0}")]
    AccessLog(std::io::Error),
}

/// What applying a plan did.
#[derive(Debug)]
pub struct ApplyReport {
    /// Backends in the new table.
    pub backends: usize,
    /// Certificates that could not be used (the previous one stays where there was one).
    pub certificate_problems: Vec<CertProblem>,
    /// Time to build and swap the table and the certificates.
    pub elapsed: Duration,
}

/// What every connection and request shares.
struct Shared {
    router: ArcSwap<Router>,
    settings: ProxySettings,
    request_ids: RequestIds,
    access_log: Option<AccessLog>,
    http: auto::Builder<TokioExecutor>,
    tls: tokio_rustls::TlsAcceptor,
    /// Sent once on drain; every listener and connection holds a receiver.
    drain: tokio::sync::watch::Sender<()>,
    /// Counters that belong to no backend (shared with every connection's send timer).
    counters: Arc<ProxyCounters>,
    /// Where quiet plain connections wait (`None`: no epoll set could be made; then they wait in
    /// their tasks, as TLS connections do).
    parking: Option<ParkingLot>,
}

/// The proxy: apply plans to it, serve with it.
pub struct Proxy {
    shared: Arc<Shared>,
    registry: EndpointRegistry,
    certs: CertBook,
}

impl Proxy {
    /// A proxy with an empty routing table and the self-signed certificate.
    pub fn new(settings: ProxySettings) -> Result<Self, ProxyError> {
        let provider = super::tls::crypto_provider();
        let certs = CertBook::new(provider.clone())?;
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(certs.resolver());
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mut http = auto::Builder::new(TokioExecutor::new());
        http.http1()
            .timer(TokioTimer::new())
            // hyper's header timer also runs while a connection waits for its next request, so
            // it is the idle timeout; slow heads are cut by the head guard's shorter timer.
            .header_read_timeout(
                settings
                    .client_idle_timeout
                    .max(settings.client_header_timeout),
            )
            .max_buf_size(settings.max_header_bytes.max(8192));
        http.http2()
            .timer(TokioTimer::new())
            // PINGs find dead peers of connections that wait (for an endpoint, say) without
            // writing, where the send timeout cannot see them.
            .keep_alive_interval(settings.client_idle_timeout.max(Duration::from_secs(2)) / 2)
            .keep_alive_timeout(settings.client_header_timeout)
            .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX));
        let access_log = if settings.access_log {
            Some(AccessLog::start(Box::new(std::io::stdout())).map_err(ProxyError::AccessLog)?)
        } else {
            None
        };
        Ok(Self {
            shared: Arc::new(Shared {
                router: ArcSwap::from_pointee(Router::default()),
                settings,
                request_ids: RequestIds::default(),
                access_log,
                http,
                tls: tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
                drain: tokio::sync::watch::channel(()).0,
                counters: Arc::default(),
                parking: match ParkingLot::new() {
                    Ok(lot) => Some(lot),
                    Err(error) => {
                        tracing::warn!(%error, "no parking lot; quiet connections park in their tasks");
                        None
                    }
                },
            }),
            registry: EndpointRegistry::default(),
            certs,
        })
    }

    /// Swaps in the routing table and certificates of `plan`. Requests in flight finish on the
    /// table they started with; connections stay open.
    pub fn apply(&mut self, plan: &L7Plan) -> ApplyReport {
        let started = Instant::now();
        let router = self.registry.router(plan);
        let backends = router.backend_count();
        let certificate_problems = self.certs.apply(&plan.tls, plan.default_tls.as_ref());
        self.shared.router.store(Arc::new(router));
        ApplyReport {
            backends,
            certificate_problems,
            elapsed: started.elapsed(),
        }
    }

    /// Swaps in a router whose backends `changed` follow `plan` (their endpoints changed; the
    /// routes did not). Cheaper than [`Proxy::apply`]: nothing else is rebuilt.
    pub fn apply_endpoints(&mut self, plan: &L7Plan, changed: &[BackendId]) -> ApplyReport {
        let started = Instant::now();
        let current = self.shared.router.load_full();
        let router = self.registry.with_new_endpoints(&current, plan, changed);
        let backends = router.backend_count();
        self.shared.router.store(Arc::new(router));
        ApplyReport {
            backends,
            certificate_problems: Vec::new(),
            elapsed: started.elapsed(),
        }
    }

    /// Binds the configured listeners and serves them on the current runtime until it stops.
    /// Returns the bound addresses (port 0 resolved), plain first.
    pub async fn listen(&self) -> Result<BoundListeners, ProxyError> {
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ProxyError::Bind { addr, source })
        };
        let mut bound = BoundListeners::default();
        let max = self.shared.settings.max_connections;
        if let Some(addr) = self.shared.settings.http_listen {
            let listener = bind(addr).await?;
            bound.http = listener.local_addr().ok();
            let slots = ListenerSlots::new(bound.http.map_or(0, |a| a.port()), max);
            tokio::spawn(accept_loop(self.shared.clone(), listener, false, slots));
        }
        if let Some(addr) = self.shared.settings.https_listen {
            let listener = bind(addr).await?;
            bound.https = listener.local_addr().ok();
            let slots = ListenerSlots::new(bound.https.map_or(0, |a| a.port()), max);
            tokio::spawn(accept_loop(self.shared.clone(), listener, true, slots));
        }
        tokio::spawn(return_parked_memory(self.shared.clone()));
        tokio::spawn(run_parking_lot(self.shared.clone()));
        Ok(bound)
    }

    /// Stops accepting, lets every connection finish what it is doing (see `serve_until_parked`),
    /// and returns when all have closed or `timeout` has passed; returns how many were still
    /// open then.
    pub async fn drain(&self, timeout: Duration) -> usize {
        let _ = self.shared.drain.send(());
        let _ = tokio::time::timeout(timeout, self.shared.drain.closed()).await;
        self.shared.drain.receiver_count()
    }

    /// Access-log lines dropped because the writer fell behind.
    pub fn access_log_dropped(&self) -> u64 {
        self.shared
            .access_log
            .as_ref()
            .map_or(0, AccessLog::dropped)
    }

    /// The leaf certificates' notAfter per Secret in use (for `inspect certs`).
    pub fn cert_expiry(&self) -> Arc<Vec<(crate::model::ObjectName, i64)>> {
        self.certs.expiry().load_full()
    }

    /// The proxy's `/metrics` collector: it reads the router current at scrape time.
    pub fn collector(&self) -> ProxyCollector {
        ProxyCollector {
            shared: self.shared.clone(),
            cert_expiry: self.certs.expiry(),
        }
    }
}

/// Encodes the proxy's counters for `/metrics` (see [`metrics::encode`]).
pub struct ProxyCollector {
    shared: Arc<Shared>,
    cert_expiry: CertExpiry,
}

impl fmt::Debug for ProxyCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyCollector").finish_non_exhaustive()
    }
}

impl Collector for ProxyCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let router = self.shared.router.load();
        let cert_expiry = self.cert_expiry.load();
        metrics::encode(
            &ProxyScrape {
                backends: router.backends(),
                counters: &self.shared.counters,
                cert_expiry: &cert_expiry,
                access_log_dropped: self.shared.access_log.as_ref().map(AccessLog::dropped),
            },
            &mut encoder,
        )
    }
}

/// The addresses the proxy listens on.
#[derive(Clone, Copy, Debug, Default)]
pub struct BoundListeners {
    /// Plain HTTP.
    pub http: Option<SocketAddr>,
    /// HTTPS.
    pub https: Option<SocketAddr>,
}

/// Longest pause between accepts that keep failing.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: bool,
    slots: Arc<ListenerSlots>,
) {
    let port = slots.port;
    let mut draining = shared.drain.subscribe();
    let mut backoff = Duration::ZERO;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            // Draining: stop accepting; the listener closes when this returns.
            _ = draining.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors: the pending connection stays in the backlog, so retrying
                // at once would spin. Close an idle connection (its descriptor is the room the
                // next accept needs) and back off, longer while it keeps failing.
                let out_of_fds = matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
                if out_of_fds {
                    make_room(&shared, &slots, None);
                }
                if backoff.is_zero() {
                    tracing::warn!(%error, port, "accept failed; backing off");
                }
                backoff = (backoff * 2).clamp(Duration::from_millis(10), ACCEPT_BACKOFF_MAX);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = draining.changed() => return,
                }
                continue;
            }
        };
        backoff = Duration::ZERO;
        if slots.full() && !make_room(&shared, &slots, Some(port)) {
            // Full and nothing idle: the newcomer goes (closing it at once costs the least).
            shared.counters.refused.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let slot = slots.take();
        if tls {
            tokio::spawn(serve_tls(shared.clone(), stream, peer, slot));
        } else {
            tokio::spawn(serve_plain(shared.clone(), stream, peer, slot));
        }
    }
}

/// Closes the idle connection that has waited longest: a parked one (on listener `port`; any
/// with `None`), else one idle in its task (which closes itself when told). `false`: none idle.
fn make_room(shared: &Shared, slots: &ListenerSlots, port: Option<u16>) -> bool {
    if let Some(lot) = &shared.parking {
        if lot.close_oldest(port) {
            shared.counters.shed_idle.fetch_add(1, Ordering::Relaxed);
            return true;
        }
    }
    // Counted by the connection as it goes.
    slots.shed_one_waiting()
}

/// What a connection's requests need to know about it.
struct ConnectionInfo {
    peer: SocketAddr,
    /// The listener's port.
    port: u16,
    headers: ConnectionHeaders,
    smuggling: Arc<Http1State>,
    /// What its requests report for its idle, stall and first-request limits.
    life: ConnectionLife,
}

/// What every connection starts with: its per-request context and the smuggling verdicts its
/// head guard will fill.
fn connection_context(
    peer: SocketAddr,
    port: u16,
    tls: bool,
) -> (Arc<ConnectionInfo>, Arc<Http1State>) {
    let smuggling = Arc::new(Http1State::default());
    let info = Arc::new(ConnectionInfo {
        peer,
        port,
        headers: ConnectionHeaders::new(peer.ip(), tls, port),
        smuggling: smuggling.clone(),
        life: ConnectionLife::default(),
    });
    (info, smuggling)
}

// Plain and TLS connections are separate tasks: an idle plain connection's task then does not
// carry room for a TLS session in its future.
async fn serve_plain(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    slot: ConnectionSlot,
) {
    let _ = stream.set_nodelay(true);
    let (info, smuggling) = connection_context(peer, slot.listener().port, false);
    serve_http(shared, stream, info, smuggling, 0, slot).await;
}

/// Takes connections out of the parking lot when their clients send again (each gets a new
/// connection task), closes those past their idle timeout, and empties the lot on drain.
async fn run_parking_lot(shared: Arc<Shared>) {
    let Some(lot) = &shared.parking else {
        return;
    };
    let watch = match lot.watch() {
        Ok(watch) => watch,
        Err(error) => {
            tracing::warn!(%error, "cannot watch the parking lot; closing what gets parked");
            lot.close_all();
            return;
        }
    };
    let mut draining = shared.drain.subscribe();
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut woken = Vec::new();
    loop {
        tokio::select! {
            result = lot.woken(&watch, &mut woken) => {
                if let Err(error) = result {
                    tracing::warn!(%error, "parking lot: epoll_wait failed; closing what is parked");
                    lot.close_all();
                    return;
                }
                for parked in woken.drain(..) {
                    tokio::spawn(resume_parked(shared.clone(), parked));
                }
            }
            _ = sweep.tick() => {
                lot.close_expired(Instant::now());
            }
            _ = draining.changed() => {
                lot.close_all();
                return;
            }
        }
    }
}

/// A parked connection whose client sent again (or closed): a new connection task for it.
async fn resume_parked(shared: Arc<Shared>, parked: Parked) {
    let Ok(stream) = TcpStream::from_std(parked.stream) else {
        return;
    };
    let (info, smuggling) = connection_context(parked.peer, parked.port, false);
    serve_http(
        shared,
        stream,
        info,
        smuggling,
        parked.requests_seen,
        parked.slot,
    )
    .await;
}

async fn serve_tls(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr, slot: ConnectionSlot) {
    let _ = stream.set_nodelay(true);
    let (info, smuggling) = connection_context(peer, slot.listener().port, true);
    let settings = &shared.settings;
    let handshake = shared.tls.accept(stream);
    let counters = &shared.counters;
    let stream = match tokio::time::timeout(settings.client_header_timeout, handshake).await {
        Ok(Ok(stream)) => {
            counters.tls_handshakes.fetch_add(1, Ordering::Relaxed);
            stream
        }
        // Failed and timed-out handshakes are the client's problem; nothing to answer.
        Ok(Err(_)) | Err(_) => {
            counters
                .tls_handshake_failures
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    serve_http(shared, stream, info, smuggling, 0, slot).await;
}

/// After connections were parked, hands the freed buffers back to the system: glibc's malloc
/// keeps freed memory in its arenas (only the top of each heap shrinks by itself), so without
/// this the process would stay at its busiest size. Once a second at most, and only when
/// something was parked; with musl (the image) freed memory goes back on its own.
async fn return_parked_memory(shared: Arc<Shared>) {
    let mut draining = shared.drain.subscribe();
    let mut trimmed_at = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = draining.changed() => return,
        }
        let parked = shared.counters.parked.load(Ordering::Relaxed);
        if parked != trimmed_at {
            trimmed_at = parked;
            // It walks every arena under its lock: off the runtime's workers.
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            let _ = tokio::task::spawn_blocking(|| {
                // SAFETY: FFI call without pointers; glibc's malloc_trim is thread-safe.
                unsafe {
                    libc::malloc_trim(0);
                }
            })
            .await;
        }
    }
}

/// A client stream that can wait for its next bytes without reading them (a parked connection
/// holds no buffer).
pub trait Parkable:
    Sized + tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static
{
    /// Resolves when the client has sent something (or closed).
    fn readable(&self) -> impl std::future::Future<Output = std::io::Result<()>> + Send;

    /// The bare socket, if the stream keeps no state above it (then it can wait in the
    /// parking lot).
    fn into_socket(self) -> Result<TcpStream, Self>;
}

impl Parkable for TcpStream {
    fn readable(&self) -> impl std::future::Future<Output = std::io::Result<()>> + Send {
        TcpStream::readable(self)
    }

    fn into_socket(self) -> Result<TcpStream, Self> {
        Ok(self)
    }
}

impl Parkable for tokio_rustls::server::TlsStream<TcpStream> {
    // hyper read until rustls had no plaintext left before it went idle, so anything new arrives
    // through the socket.
    fn readable(&self) -> impl std::future::Future<Output = std::io::Result<()>> + Send {
        self.get_ref().0.readable()
    }

    fn into_socket(self) -> Result<TcpStream, Self> {
        Err(self)
    }
}

/// HTTP over an accepted (and, for HTTPS, decrypted) stream: the head guard, then hyper; an
/// HTTP/1.1 connection quiet for [`PARK_AFTER`] is parked until the client sends again. `slot`
/// is the connection's place on its listener, held for as long as the socket is open.
async fn serve_http<S: Parkable>(
    shared: Arc<Shared>,
    mut stream: S,
    info: Arc<ConnectionInfo>,
    smuggling: Arc<Http1State>,
    mut requests_seen: u64,
    slot: ConnectionSlot,
) {
    let settings = &shared.settings;
    // A new connection must bring its first request within the header timeout, parked or not.
    let started_ms = clock_ms();
    let fresh = requests_seen == 0;
    // Holding the receiver is what the drain waits for.
    let mut draining = shared.drain.subscribe();
    loop {
        let (handoff, mut handed_back) = tokio::sync::oneshot::channel();
        let parked = serve_until_parked(
            &shared,
            &info,
            &smuggling,
            &mut draining,
            stream,
            requests_seen,
            handoff,
            &slot,
        )
        .await;
        if !parked {
            return;
        }
        let Ok((returned, seen)) = handed_back.try_recv() else {
            return;
        };
        // Quiet since the last response: the idle timeout counts from there.
        let quiet = smuggling.quiet_for().unwrap_or(PARK_AFTER);
        (stream, requests_seen) = (returned, seen);
        smuggling.set_park(false);
        shared.counters.parked.fetch_add(1, Ordering::Relaxed);
        // Parked: only the socket. hyper's idle timer is gone with it, so the idle timeout is
        // kept by the parking lot, or here.
        let mut idle_left = settings.client_idle_timeout.saturating_sub(quiet);
        if fresh && requests_seen == 0 {
            // Never sent a request (a silent connection is parked too).
            let age = Duration::from_millis(clock_ms().saturating_sub(started_ms));
            idle_left = idle_left.min(settings.client_header_timeout.saturating_sub(age));
        }
        if let Some(lot) = &shared.parking {
            match stream.into_socket() {
                Ok(socket) => {
                    // This task ends; the lot starts a new one when the client sends.
                    if let Err(error) =
                        lot.park(socket, info.peer, info.port, requests_seen, idle_left, slot)
                    {
                        tracing::debug!(%error, "parking failed; connection closed");
                    }
                    return;
                }
                Err(stateful) => stream = stateful,
            }
        }
        let mut ticket = SheddingTicket::new(slot.listener());
        ticket.set_idle(true);
        tokio::select! {
            readable = stream.readable() => {
                if readable.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep(idle_left) => return,
            _ = draining.changed() => return,
            _ = ticket.picked() => {
                shared.counters.shed_idle.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

/// One hyper connection over `stream`, until it ends (the client closed, an error, the drain,
/// a lifetime limit) or is parked (then the guard sends the stream to `handoff` and this returns
/// true). When the proxy drains, the connection is asked to finish gracefully (HTTP/1.1: after
/// the request in flight; HTTP/2: GOAWAY, then the open streams). A connection that cannot
/// finish parking (a client that stopped reading while hyper still flushes) is closed after
/// `--client-header-timeout`, as hyper's own timers would have closed it.
///
/// The same timer keeps the limits hyper has no timer for: a fresh connection's first request
/// within `--client-header-timeout`; an HTTP/2 connection without streams for
/// `--client-idle-timeout` gets GOAWAY; HTTP/2 responses waiting for the client's window for
/// `--client-send-timeout` close the connection. It wakes once a [`PARK_AFTER`] while requests
/// are in flight and at the next deadline when idle.
#[allow(clippy::too_many_arguments)]
async fn serve_until_parked<S: Parkable>(
    shared: &Arc<Shared>,
    info: &Arc<ConnectionInfo>,
    smuggling: &Arc<Http1State>,
    draining: &mut tokio::sync::watch::Receiver<()>,
    stream: S,
    requests_seen: u64,
    handoff: Handoff<S>,
    slot: &ConnectionSlot,
) -> bool {
    let settings = &shared.settings;
    let started_ms = clock_ms();
    let fresh = requests_seen == 0;
    let stream = SendTimeout::new(
        HeadGuard::resume(
            stream,
            settings.max_header_bytes,
            settings.client_header_timeout,
            smuggling.clone(),
            requests_seen,
            Some(handoff),
        ),
        settings.client_send_timeout,
        shared.counters.clone(),
    );
    let service_shared = shared.clone();
    let service_info = info.clone();
    let service = service_fn(move |request| {
        // Boxed: the request's future is about 2.7 KiB, and HTTP/2 gives every stream a task
        // of its own, which moves the future several times on its way in and writes its
        // whole cell twice on the way out; behind a box those moves are 8 bytes. Measured
        // with h2load (-c50 -m10): about 10 % less CPU per request; HTTP/1.1 unchanged.
        Box::pin(handle(
            service_shared.clone(),
            service_info.clone(),
            request,
        ))
    });
    // Boxed: a parked connection's task then carries no room for hyper's state.
    let mut connection = Box::pin(
        shared
            .http
            .serve_connection_with_upgrades(TokioIo::new(stream), service),
    );
    let first_check = if fresh {
        PARK_AFTER.min(settings.client_header_timeout)
    } else {
        PARK_AFTER
    };
    let mut check = Box::pin(tokio::time::sleep(first_check));
    let mut ticket = SheddingTicket::new(slot.listener());
    let counters = &shared.counters;
    let life = &info.life;
    let mut parking = false;
    let mut checking = true;
    loop {
        tokio::select! {
            _ = connection.as_mut() => return parking,
            _ = draining.changed() => break,
            _ = ticket.picked() => {
                let still_idle = if life.is_http2() {
                    life.h2_streams() == 0
                } else {
                    !life.seen_request()
                };
                if still_idle {
                    // At the listener's cap and idle longest: room for a new connection.
                    counters.shed_idle.fetch_add(1, Ordering::Relaxed);
                    return false;
                }
                // A request arrived since the last check: not idle; the next one goes.
                ticket.pass_on();
            }
            _ = check.as_mut(), if checking => {
                if parking {
                    // hyper is still flushing to a client that does not read: give up on it.
                    smuggling.set_park(false);
                    return false;
                }
                let age = Duration::from_millis(clock_ms().saturating_sub(started_ms));
                let awaiting_first = fresh && !life.seen_request();
                if awaiting_first && age >= settings.client_header_timeout {
                    counters.client_timeouts.first_request.fetch_add(1, Ordering::Relaxed);
                    return false;
                }
                let mut next = PARK_AFTER;
                let mut idle = awaiting_first;
                if life.is_http2() {
                    if life.h2_stalled_for().is_some_and(|t| t >= settings.client_send_timeout) {
                        // The client keeps its windows shut: nothing more will get through.
                        counters.client_timeouts.send.fetch_add(1, Ordering::Relaxed);
                        return false;
                    }
                    match life.h2_quiet_for(started_ms) {
                        Some(quiet) if quiet >= settings.client_idle_timeout => {
                            counters.client_timeouts.idle_h2.fetch_add(1, Ordering::Relaxed);
                            // GOAWAY, then close (below, as on drain).
                            break;
                        }
                        Some(quiet) => {
                            idle = true;
                            next = settings.client_idle_timeout - quiet;
                        }
                        None => {}
                    }
                } else if smuggling.is_passthrough() {
                    // An upgrade, or an HTTP/2 preface with no request yet: only the first
                    // request's deadline applies (hyper's timers keep the rest).
                    checking = awaiting_first;
                } else {
                    match smuggling.quiet_for() {
                        Some(quiet) if quiet >= PARK_AFTER => {
                            // The guard answers hyper's next read with end-of-stream: polling
                            // the connection again (the next turn of this loop) lets hyper see
                            // it.
                            smuggling.set_park(true);
                            parking = true;
                            next = settings.client_header_timeout;
                        }
                        quiet => {
                            next = PARK_AFTER
                                .saturating_sub(quiet.unwrap_or_default())
                                .max(PARK_AFTER / 4);
                        }
                    }
                }
                if awaiting_first {
                    checking = true;
                    next = next.min(settings.client_header_timeout.saturating_sub(age));
                }
                ticket.set_idle(idle && !parking);
                check.as_mut().reset(tokio::time::Instant::now() + next);
            }
        }
    }
    smuggling.set_park(false);
    connection.as_mut().graceful_shutdown();
    let _ = connection.await;
    false
}

/// A response body: the endpoint's, or one the proxy wrote; counted for the access log, and
/// in its backend's request metrics when it drops (after its last byte, or when abandoned).
pub struct ProxyBody {
    kind: BodyKind,
    record: Option<Box<AccessRecord>>,
    tally: Option<Tally>,
    /// The client connection the response goes to: its request ends when this body drops.
    connection: Option<Arc<ConnectionInfo>>,
    /// An HTTP/2 response (its stream is counted in the connection's `life`).
    http2: bool,
    /// HTTP/2: handed hyper data and not asked for more since (waiting for the client's window).
    h2_waiting: bool,
}

/// Where a response is counted, and what with.
struct Tally {
    counter: Counted,
    status: u16,
    started: Instant,
}

/// The counters a response goes to. The routed case keeps the request's own reference to its
/// backend rather than cloning the counters' `Arc`: two atomic operations fewer per request.
enum Counted {
    Backend(Arc<Backend>),
    Unrouted(Arc<RequestMetrics>),
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        if let Some(connection) = &self.connection {
            if !self.http2 {
                connection.smuggling.request_done();
            } else {
                if self.h2_waiting {
                    connection.life.h2_asked_again();
                }
                connection.life.h2_stream_done();
            }
        }
        if let Some(tally) = &self.tally {
            let metrics = match &tally.counter {
                Counted::Backend(backend) => &backend.metrics,
                Counted::Unrouted(metrics) => metrics,
            };
            metrics.record(tally.status, tally.started.elapsed());
        }
    }
}

enum BodyKind {
    Full(Option<Bytes>),
    Upstream(UpstreamResponseBody),
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.h2_waiting {
            this.h2_waiting = false;
            if let Some(connection) = &this.connection {
                connection.life.h2_asked_again();
            }
        }
        let polled = match &mut this.kind {
            BodyKind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            BodyKind::Upstream(body) => Pin::new(body).poll_frame(cx),
        };
        if this.http2 {
            if let (Some(connection), Poll::Ready(Some(Ok(frame)))) = (&this.connection, &polled) {
                if frame.data_ref().is_some_and(|data| !data.is_empty()) {
                    connection.life.h2_handed_data();
                    this.h2_waiting = true;
                }
            }
        }
        if let (Some(record), Poll::Ready(Some(Ok(frame)))) = (&mut this.record, &polled) {
            if let Some(data) = frame.data_ref() {
                record.bytes += data.len() as u64;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            BodyKind::Full(bytes) => bytes.is_none(),
            BodyKind::Upstream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            BodyKind::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len()) as u64)
            }
            BodyKind::Upstream(body) => body.size_hint(),
        }
    }
}

/// A plain-text answer from the proxy itself.
fn answer(status: StatusCode, body: impl Into<Bytes>) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody {
        kind: BodyKind::Full(Some(body.into())),
        record: None,
        tally: None,
        connection: None,
        http2: false,
        h2_waiting: false,
    });
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

async fn handle(
    shared: Arc<Shared>,
    connection: Arc<ConnectionInfo>,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    // HTTP/1.x requests are counted for parking; HTTP/2 connections are never parked, their
    // streams are counted for the idle timeout.
    let http1 = request.version() <= Version::HTTP_11;
    if http1 {
        connection.smuggling.request_started();
    }
    connection.life.request_started(!http1);
    let started = Instant::now();
    let record = shared.access_log.as_ref().map(|log| {
        Box::new(AccessRecord {
            log: log.clone(),
            time: SystemTime::now(),
            started,
            client: connection.peer,
            method: request.method().clone(),
            host: request_host(&request)
                .and_then(|h| h.to_str().ok().map(str::to_string))
                .unwrap_or_default(),
            path: request
                .uri()
                .path_and_query()
                .map_or_else(|| "/".to_string(), |pq| pq.as_str().to_string()),
            version: request.version(),
            status: 0,
            bytes: 0,
            upstream: None,
        })
    });
    let turn = connection.smuggling.next_request();
    let mut routed = None;
    let (mut response, upstream) =
        proxy_request(&shared, &connection, request, turn.smuggling, &mut routed).await;
    if http1 {
        // Before hyper writes the answer: the head guard learns whether the connection switched
        // protocols before any byte of the new protocol can arrive.
        let switched = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        connection.smuggling.answered(turn.index, switched);
    }
    let counter = match routed {
        Some(backend) => Counted::Backend(backend),
        None => Counted::Unrouted(shared.counters.unrouted.clone()),
    };
    response.body_mut().tally = Some(Tally {
        counter,
        status: response.status().as_u16(),
        started,
    });
    if let Some(mut record) = record {
        record.status = response.status().as_u16();
        record.upstream = upstream;
        response.body_mut().record = Some(record);
    }
    if response.status() == StatusCode::REQUEST_TIMEOUT {
        // Only the body timeout answers 408.
        shared
            .counters
            .client_timeouts
            .body
            .fetch_add(1, Ordering::Relaxed);
    }
    // The request's own reference: the request ends (for parking, or as an HTTP/2 stream) when
    // the body is dropped.
    let body = response.body_mut();
    if !http1 && !body.is_end_stream() {
        // hyper asks an HTTP/2 body for data only when the client's window has room: until it
        // asks, the response waits for the client (with a window of 0, for ever).
        connection.life.h2_handed_data();
        body.h2_waiting = true;
    }
    body.http2 = !http1;
    body.connection = Some(connection);
    Ok(response)
}

/// The request's host: the target URI's authority when it has one (HTTP/2 `:authority`, or an
/// absolute-form HTTP/1.1 target, which RFC 9112 §3.2.2 says outranks Host), else the Host
/// header. Routing and the Host the endpoint sees both use it, so they cannot disagree.
fn request_host<B>(request: &Request<B>) -> Option<HeaderValue> {
    if let Some(authority) = request.uri().authority() {
        if let Ok(value) = HeaderValue::from_str(authority.as_str()) {
            return Some(value);
        }
    }
    request.headers().get(header::HOST).cloned()
}

async fn proxy_request(
    shared: &Shared,
    connection: &ConnectionInfo,
    mut request: Request<Incoming>,
    smuggling: bool,
    routed: &mut Option<Arc<Backend>>,
) -> (Response<ProxyBody>, Option<SocketAddr>) {
    let settings = &shared.settings;
    if smuggling {
        let response = answer(
            StatusCode::BAD_REQUEST,
            "400 Bad Request: both Content-Length and Transfer-Encoding\n",
        );
        return (closing(response), None);
    }
    if request.method() == Method::CONNECT {
        // An Ingress routes requests; it is no forward proxy (nginx answers 405 too).
        let response = answer(
            StatusCode::METHOD_NOT_ALLOWED,
            "405 Method Not Allowed: CONNECT is not proxied\n",
        );
        return (closing(response), None);
    }
    // Routing and the endpoint see the same path (see `path`).
    // `Some` when normalising changed the path (rare: most paths are already normal).
    let rewritten_path = match path::normalize(request.uri().path(), settings.allow_encoded_slashes)
    {
        Ok(Cow::Borrowed(_)) => None,
        Ok(Cow::Owned(path)) => Some(path),
        Err(error) => {
            return (
                answer(
                    StatusCode::BAD_REQUEST,
                    format!("400 Bad Request: {error}\n"),
                ),
                None,
            )
        }
    };
    let host = request_host(&request);
    let host_text = match host.as_ref().map(HeaderValue::to_str) {
        Some(Ok(text)) => text,
        // HTTP/1.0 may omit Host; HTTP/1.1 must send it (RFC 9112 §3.2).
        None if request.version() != Version::HTTP_11 => "",
        None => {
            return (
                answer(StatusCode::BAD_REQUEST, "400 Bad Request: no Host\n"),
                None,
            )
        }
        Some(Err(_)) => {
            return (
                answer(StatusCode::BAD_REQUEST, "400 Bad Request: invalid Host\n"),
                None,
            )
        }
    };

    // The backend goes to the caller, which counts the response in its metrics.
    let backend: &Arc<Backend> = {
        let router = shared.router.load();
        let path = rewritten_path.as_deref().unwrap_or(request.uri().path());
        match router.route(host_text, path) {
            Some(backend) => routed.insert(backend.clone()),
            None => {
                return (
                    answer(
                        StatusCode::NOT_FOUND,
                        "404 Not Found: no Ingress rule matches this host and path\n",
                    ),
                    None,
                )
            }
        }
    };
    if backend.endpoints.is_empty() {
        let why = backend
            .unavailable
            .clone()
            .unwrap_or_else(|| Bytes::from_static(b"503 Service Unavailable\n"));
        return (answer(StatusCode::SERVICE_UNAVAILABLE, why), None);
    }
    let limit = settings.max_body_bytes.unwrap_or(u64::MAX);
    if let Some(length) = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if length > limit {
            return (too_large(), None);
        }
    }
    // Only allowed protocols, and never after a body: the head guard, which follows the
    // framing, steps aside only after a `101` to a request without one.
    let upgrade = request.version() == Version::HTTP_11
        && headers::is_upgrade_request(request.headers())
        && headers::upgrade_allowed(request.headers(), &settings.upgrades)
        && request.body().is_end_stream();
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
    let http2 = request.version() == Version::HTTP_2;
    let (mut parts, body) = request.into_parts();
    headers::remove_hop_by_hop(&mut parts.headers, upgrade);
    if !settings.allow_underscores_in_headers {
        headers::remove_underscore_headers(&mut parts.headers);
    }
    if http2 {
        headers::join_cookies(&mut parts.headers);
    }
    headers::set_forwarding_headers(
        &mut parts.headers,
        &connection.headers,
        host.as_ref(),
        &shared.request_ids,
    );
    // Endpoints get origin-form (`/path?query`) with the path routing used, whatever form the
    // client used.
    parts.uri = match (rewritten_path, parts.uri.path_and_query()) {
        (None, Some(path_and_query)) => Uri::from(path_and_query.clone()),
        (None, None) => Uri::from_static("/"),
        (Some(path), original) => {
            let target = match original.and_then(PathAndQuery::query) {
                Some(query) => format!("{path}?{query}"),
                None => path,
            };
            match PathAndQuery::try_from(target) {
                Ok(path_and_query) => Uri::from(path_and_query),
                Err(_) => {
                    return (
                        answer(StatusCode::BAD_REQUEST, "400 Bad Request: invalid path\n"),
                        None,
                    )
                }
            }
        }
    };
    parts.version = Version::HTTP_11;
    let mut upstream_request = Request::from_parts(
        parts,
        UpstreamBody::new(body, limit, settings.client_body_timeout),
    );

    let mut failed: Option<Arc<Endpoint>> = None;
    let mut last_error = String::new();
    // A request whose connection fails goes to another endpoint: it has not been sent yet.
    for _ in 0..backend.endpoints.len().clamp(1, 3) {
        let Some(endpoint) = backend.pick(failed.as_ref()).cloned() else {
            break;
        };
        if failed.is_some() {
            backend.metrics.retry();
        }
        let outstanding = endpoint.start_request();
        match send(&endpoint, upstream_request, settings, &backend.metrics).await {
            Sent::Unsent(unsent, why) => {
                upstream_request = unsent;
                last_error = why;
                failed = Some(endpoint);
            }
            Sent::Failed(response) => return (response, Some(endpoint.addr)),
            Sent::Answered(response, sender) => {
                let addr = endpoint.addr;
                return (
                    relay_response(response, sender, outstanding, client_upgrade, settings),
                    Some(addr),
                );
            }
        }
    }
    (
        answer(
            StatusCode::BAD_GATEWAY,
            format!("502 Bad Gateway: {last_error}\n"),
        ),
        None,
    )
}

/// `response` with `Connection: close`: hyper closes the connection after it.
fn closing(mut response: Response<ProxyBody>) -> Response<ProxyBody> {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

fn too_large() -> Response<ProxyBody> {
    answer(
        StatusCode::PAYLOAD_TOO_LARGE,
        "413 Content Too Large: the request body exceeds the limit\n",
    )
}

/// What sending a request to one endpoint came to.
enum Sent {
    /// The endpoint answered (the connection comes along, to be pooled again).
    Answered(Response<Incoming>, Sender),
    /// No connection could carry it; the request comes back unsent, with why.
    Unsent(Request<UpstreamBody>, String),
    /// Sent, then failed: the answer to give the client.
    Failed(Response<ProxyBody>),
}

async fn send(
    endpoint: &Endpoint,
    request: Request<UpstreamBody>,
    settings: &ProxySettings,
    metrics: &RequestMetrics,
) -> Sent {
    // Boxed: connecting is rare (most requests take a pooled connection), and inline its state
    // would add about 350 bytes to every request's future, which is moved and copied whole.
    let connect = || async {
        let connected = Box::pin(endpoint.connect(settings.upstream_connect_timeout)).await;
        if connected.is_err() {
            metrics.connect_error();
        }
        connected
    };
    let (mut sender, mut fresh) = match endpoint.pooled(settings.upstream_idle_timeout) {
        Some(sender) => (sender, false),
        None => match connect().await {
            Ok(sender) => (sender, true),
            Err(error) => return Sent::Unsent(request, error.to_string()),
        },
    };
    let mut request = request;
    loop {
        let attempt = sender.try_send_request(request);
        let error = match tokio::time::timeout(settings.upstream_response_timeout, attempt).await {
            Err(_) => {
                return Sent::Failed(answer(
                    StatusCode::GATEWAY_TIMEOUT,
                    "504 Gateway Timeout: the upstream did not answer in time\n",
                ))
            }
            Ok(Ok(response)) => return Sent::Answered(response, sender),
            Ok(Err(error)) => error,
        };
        let mut error = error;
        match error.take_message() {
            // A pooled connection closed before the request went out (the endpoint's keep-alive
            // timeout raced us): same endpoint, new connection.
            Some(unsent) if !fresh => {
                metrics.retry();
                match connect().await {
                    Ok(new_sender) => {
                        sender = new_sender;
                        fresh = true;
                        request = unsent;
                    }
                    Err(connect_error) => return Sent::Unsent(unsent, connect_error.to_string()),
                }
            }
            Some(unsent) => return Sent::Unsent(unsent, error.into_error().to_string()),
            None => return Sent::Failed(send_error_answer(&error.into_error())),
        }
    }
}

/// 413 when our body limit stopped the upload, 408 when the client's body stalled, else 502
/// naming the cause.
fn send_error_answer(error: &hyper::Error) -> Response<ProxyBody> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    let mut causes = Vec::new();
    while let Some(cause) = source {
        if cause.is::<BodyTooLarge>() {
            return too_large();
        }
        if let Some(client_error) = cause.downcast_ref::<ClientBodyError>() {
            // Nothing sensible can follow a body that lost its framing.
            return closing(answer(
                StatusCode::BAD_REQUEST,
                format!("400 Bad Request: {client_error}\n"),
            ));
        }
        if cause.is::<BodyTimeout>() {
            // The rest of the body may still come; the connection cannot be reused.
            return closing(answer(
                StatusCode::REQUEST_TIMEOUT,
                "408 Request Timeout: the request body stopped arriving\n",
            ));
        }
        causes.push(cause.to_string());
        source = cause.source();
    }
    answer(
        StatusCode::BAD_GATEWAY,
        format!("502 Bad Gateway: {}\n", causes.join(": ")),
    )
}

/// The endpoint's response on its way to the client: hop-by-hop headers out, the body streamed
/// (its connection pooled again at the end), or for a `101 Switching Protocols` answer to an
/// upgrade request, both upgraded connections spliced together. A `101` to a request we did
/// not upgrade, or naming a protocol that is not allowed, is the endpoint's error (502): relayed,
/// it would turn the connection into a tunnel no routing rule sees.
fn relay_response(
    mut response: Response<Incoming>,
    sender: Sender,
    outstanding: Outstanding,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    settings: &ProxySettings,
) -> Response<ProxyBody> {
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade
            .filter(|_| headers::upgrade_allowed(response.headers(), &settings.upgrades))
        else {
            return answer(
                StatusCode::BAD_GATEWAY,
                "502 Bad Gateway: the upstream switched to a protocol that was not asked for\n",
            );
        };
        {
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            tokio::spawn(async move {
                // The tunnel counts as outstanding on its endpoint while it is open.
                let _outstanding = outstanding;
                if let (Ok(client), Ok(upstream)) = (client_upgrade.await, upstream_upgrade.await) {
                    let _ = tokio::io::copy_bidirectional(
                        &mut TokioIo::new(client),
                        &mut TokioIo::new(upstream),
                    )
                    .await;
                }
            });
            let (mut parts, _) = response.into_parts();
            headers::remove_hop_by_hop(&mut parts.headers, true);
            return Response::from_parts(
                parts,
                ProxyBody {
                    kind: BodyKind::Full(None),
                    record: None,
                    tally: None,
                    connection: None,
                    http2: false,
                    h2_waiting: false,
                },
            );
        }
    }
    let (mut parts, body) = response.into_parts();
    headers::remove_hop_by_hop(&mut parts.headers, false);
    Response::from_parts(
        parts,
        ProxyBody {
            kind: BodyKind::Upstream(UpstreamResponseBody::new(body, Some(sender), outstanding)),
            record: None,
            tally: None,
            connection: None,
            http2: false,
            h2_waiting: false,
        },
    )
}
