//! A client connection's life after accept: hyper serving it (HTTP/1.1 with keep-alive, or
//! HTTP/2), the limits hyper has no timer for, and parking.
//!
//! An HTTP/1.1 keep-alive connection quiet for [`PARK_AFTER`] is *parked*: its hyper connection
//! (with its two 8 KiB buffers) ends at a message boundary (see `head_guard`) and its task ends
//! too: a plain connection waits for the client's next bytes in the parking lot (`parking`) as a
//! bare descriptor, a TLS one in its task holding only the stream. Then a new hyper connection
//! takes over. A busy connection is never parked.

use std::{
    net::SocketAddr,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{
    forward::handle,
    head_guard::{clock_ms, Handoff, HeadGuard, Http1State},
    headers::ConnectionHeaders,
    lifetime::{ConnectionLife, ConnectionSlot, SendTimeout, SheddingTicket},
    parking::Parked,
    server::Shared,
};

/// How long an HTTP/1.1 connection must be quiet (nothing in flight, between messages) before it
/// is parked. Short, so idle keep-alive connections cost little; long enough that a client
/// sending request after request never pays for a new hyper connection.
pub(crate) const PARK_AFTER: Duration = Duration::from_secs(1);

/// What a connection's requests need to know about it.
pub(super) struct ConnectionInfo {
    pub(super) peer: SocketAddr,
    /// The listener's port.
    port: u16,
    pub(super) headers: ConnectionHeaders,
    /// Shared with the connection's head guard and task: in-flight requests, smuggling flags,
    /// parking.
    pub(super) http1_state: Arc<Http1State>,
    /// What its requests report for its idle, stall and first-request limits.
    pub(super) life: ConnectionLife,
}

/// What every connection starts with: what its requests share ([`ConnectionInfo`]) and the
/// HTTP/1.1 state its head guard and its task share.
pub(super) fn connection_context(
    peer: SocketAddr,
    port: u16,
    tls: bool,
) -> (Arc<ConnectionInfo>, Arc<Http1State>) {
    let http1_state = Arc::new(Http1State::default());
    let info = Arc::new(ConnectionInfo {
        peer,
        port,
        headers: ConnectionHeaders::new(peer.ip(), tls, port),
        http1_state: http1_state.clone(),
        life: ConnectionLife::default(),
    });
    (info, http1_state)
}

/// Takes connections out of the parking lot when their clients send again (each gets a new
/// connection task), closes those past their idle timeout, and empties the lot on drain.
pub(super) async fn run_parking_lot(shared: Arc<Shared>) {
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
    let (info, http1_state) = connection_context(parked.peer, parked.port, false);
    serve_http(
        shared,
        stream,
        info,
        http1_state,
        parked.requests_seen,
        parked.slot,
    )
    .await;
}

/// After connections were parked, hands the freed buffers back to the system: glibc's malloc
/// keeps freed memory in its arenas (only the top of each heap shrinks by itself), so without
/// this the process would stay at its busiest size. Once a second at most, and only when
/// something was parked; with musl (the image) freed memory goes back on its own.
pub(super) async fn return_parked_memory(shared: Arc<Shared>) {
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
pub(crate) trait Parkable:
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
pub(super) async fn serve_http<S: Parkable>(
    shared: Arc<Shared>,
    mut stream: S,
    info: Arc<ConnectionInfo>,
    http1_state: Arc<Http1State>,
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
            &http1_state,
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
        let quiet = http1_state.quiet_for().unwrap_or(PARK_AFTER);
        (stream, requests_seen) = (returned, seen);
        http1_state.set_park(false);
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
    http1_state: &Arc<Http1State>,
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
            http1_state.clone(),
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
                    http1_state.set_park(false);
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
                } else if http1_state.is_passthrough() {
                    // An upgrade, or an HTTP/2 preface with no request yet: only the first
                    // request's deadline applies (hyper's timers keep the rest).
                    checking = awaiting_first;
                } else {
                    match http1_state.quiet_for() {
                        Some(quiet) if quiet >= PARK_AFTER => {
                            // The guard answers hyper's next read with end-of-stream: polling
                            // the connection again (the next turn of this loop) lets hyper see
                            // it.
                            http1_state.set_park(true);
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
    http1_state.set_park(false);
    connection.as_mut().graceful_shutdown();
    let _ = connection.await;
    false
}
