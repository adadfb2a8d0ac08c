//! TLS passthrough (`ssl-passthrough`): on the HTTPS listener, a connection whose ClientHello
//! names a passthrough host is spliced, byte for byte and unterminated, to an endpoint of that
//! host's backend; any other goes on to rustls as before.
//!
//! - **Reading the name.** Only while the routing table has a passthrough host (otherwise the
//!   listener does exactly what it did before). The first record is *peeked* (see
//!   `client_hello`), so no byte is consumed: the endpoint, or rustls, reads the ClientHello
//!   from the socket itself. The only allocation is the peek buffer (one record at most),
//!   dropped before the splice. The lookup is one hash probe by exact, lower-cased name
//!   (`PassthroughTable`, swapped with the router), on a stack copy of the name.
//! - **Deadline.** The ClientHello must arrive within `--client-header-timeout` of the accept,
//!   and a terminated connection's handshake must finish within the same deadline, as before.
//! - **Endpoints.** Picked like a request's (two random choices by what is outstanding: here
//!   the open passthrough connections count), within `--upstream-connect-timeout`, up to three
//!   endpoints; one that refuses is marked down like for HTTP. No endpoint: the client's
//!   connection is closed (inside TLS there is nothing we could answer).
//! - **Splice.** `copy_bidirectional`: each direction ends with a half-close of the other side
//!   and the other direction goes on. The connection keeps its listener slot (it counts against
//!   `--max-connections`, and is never shed: it is not idle in any way we can see), and is
//!   closed after `--client-idle-timeout` without a byte either way. On drain it goes on until
//!   it has been quiet for [`DRAIN_QUIET`] (a request and its answer inside the tunnel finish),
//!   or the drain's own deadline. A new routing table changes nothing for it: it holds its
//!   endpoint, not the table.

mod client_hello;

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use prometheus_client::{
    encoding::{DescriptorEncoder, NoLabelSet},
    metrics::MetricType,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use super::{
    head_guard::clock_ms,
    lifetime::ConnectionSlot,
    server::Shared,
    upstream::{Backend, Endpoint},
};

use client_hello::Hello;

/// How long a passthrough connection must be quiet, once the proxy drains, before it is closed.
pub(crate) const DRAIN_QUIET: Duration = Duration::from_secs(1);

/// Endpoints tried for one connection before it is given up.
const CONNECT_TRIES: usize = 3;

/// The longest host name (RFC 1035); a longer SNI names no host of ours.
const MAX_HOST: usize = 253;

/// Passthrough counters (`xdp_ingress_passthrough_*`).
#[derive(Debug, Default)]
pub(crate) struct PassthroughCounters {
    /// Connections spliced to an endpoint.
    spliced: AtomicU64,
    /// Connections to a passthrough host whose backend had no endpoint.
    no_endpoint: AtomicU64,
    /// Connections closed because no endpoint accepted a connection.
    connect_failed: AtomicU64,
    /// Spliced connections that have ended.
    closed: AtomicU64,
    /// Spliced connections closed after `--client-idle-timeout` without a byte.
    idle_closed: AtomicU64,
    /// Bytes from clients to endpoints.
    bytes_in: AtomicU64,
    /// Bytes from endpoints to clients.
    bytes_out: AtomicU64,
}

/// What the HTTPS listener does with a connection.
pub(super) enum Route {
    /// Splice it to this backend.
    Pass(Arc<Backend>),
    /// Terminate TLS as usual.
    Terminate,
    /// The client closed (or failed) before a whole first record: nothing to do.
    Closed,
}

/// Reads `stream`'s ClientHello (peeked, not consumed) and looks its server name up among the
/// passthrough hosts. Call only when the table has some.
pub(super) async fn route(shared: &Shared, stream: &TcpStream) -> Route {
    let mut buf = Vec::new();
    let name = match client_hello::peek(stream, &mut buf).await {
        Ok(Some(Hello::Sni(name))) => name,
        Ok(Some(Hello::NoSni | Hello::Opaque)) => return Route::Terminate,
        Ok(None) | Err(_) => return Route::Closed,
    };
    // SNI as ingress-nginx compares it: the exact name, here without case or a trailing dot.
    let name = name.strip_suffix(b".").unwrap_or(name);
    let mut lower = [0u8; MAX_HOST];
    let Some(lower) = lower.get_mut(..name.len()) else {
        return Route::Terminate;
    };
    for (to, from) in lower.iter_mut().zip(name) {
        *to = from.to_ascii_lowercase();
    }
    let Ok(host) = std::str::from_utf8(lower) else {
        return Route::Terminate;
    };
    match shared.router.load().passthrough(host) {
        Some(backend) => Route::Pass(backend.clone()),
        None => Route::Terminate,
    }
}

/// Splices `client` to an endpoint of `backend` until both sides are done, the connection has
/// been idle for the idle timeout, or the drain ends it. Holds `slot` (its place on the
/// listener) throughout.
pub(super) async fn serve(
    shared: Arc<Shared>,
    mut client: TcpStream,
    backend: Arc<Backend>,
    slot: ConnectionSlot,
) {
    let _slot = slot;
    let counters = &shared.counters.passthrough;
    // Held from the start: the drain waits for this connection as for any other.
    let mut draining = shared.drain.subscribe();
    if backend.endpoints.is_empty() {
        counters.no_endpoint.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let Some((mut upstream, endpoint)) =
        connect(&backend, shared.settings.upstream_connect_timeout).await
    else {
        counters.connect_failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let _ = upstream.set_nodelay(true);
    // The open connection counts on its endpoint, so balancing sees it.
    let _outstanding = endpoint.start_request();
    counters.spliced.fetch_add(1, Ordering::Relaxed);
    let last_active = AtomicU64::new(clock_ms());
    let mut from_client = Metered {
        inner: &mut client,
        last_active: &last_active,
        bytes: &counters.bytes_in,
    };
    let mut from_upstream = Metered {
        inner: &mut upstream,
        last_active: &last_active,
        bytes: &counters.bytes_out,
    };
    let copy = tokio::io::copy_bidirectional(&mut from_client, &mut from_upstream);
    tokio::pin!(copy);
    let mut quiet_limit = shared.settings.client_idle_timeout;
    let idle = tokio::time::sleep(quiet_limit);
    tokio::pin!(idle);
    let mut drained = false;
    loop {
        tokio::select! {
            _ = &mut copy => break,
            _ = draining.changed(), if !drained => {
                drained = true;
                quiet_limit = quiet_limit.min(DRAIN_QUIET);
                idle.as_mut().reset(tokio::time::Instant::now());
            }
            _ = &mut idle => {
                let quiet = Duration::from_millis(
                    clock_ms().saturating_sub(last_active.load(Ordering::Relaxed)),
                );
                if quiet >= quiet_limit {
                    if !drained {
                        counters.idle_closed.fetch_add(1, Ordering::Relaxed);
                    }
                    break;
                }
                idle.as_mut().reset(tokio::time::Instant::now() + (quiet_limit - quiet));
            }
        }
    }
    counters.closed.fetch_add(1, Ordering::Relaxed);
}

/// A TCP connection to an endpoint of `backend`: up to [`CONNECT_TRIES`] endpoints, each
/// refusal or timeout marking that one down (and counted on the backend), as for requests.
async fn connect(backend: &Backend, timeout: Duration) -> Option<(TcpStream, Arc<Endpoint>)> {
    let mut failed: Option<Arc<Endpoint>> = None;
    for _ in 0..CONNECT_TRIES {
        let endpoint = backend.pick(failed.as_ref())?.clone();
        let addr: SocketAddr = endpoint.addr;
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                endpoint.mark_up();
                return Some((stream, endpoint));
            }
            Ok(Err(_)) | Err(_) => {
                endpoint.mark_down();
                backend.metrics.connect_error();
                failed = Some(endpoint);
            }
        }
    }
    None
}

/// One side of the splice: counts the bytes read from it and notes when anything moved.
struct Metered<'a> {
    inner: &'a mut TcpStream,
    last_active: &'a AtomicU64,
    bytes: &'a AtomicU64,
}

impl AsyncRead for Metered<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut *self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.bytes.fetch_add(read as u64, Ordering::Relaxed);
            self.last_active.store(clock_ms(), Ordering::Relaxed);
        }
        polled
    }
}

impl AsyncWrite for Metered<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut *self.inner).poll_write(cx, buf);
        // A peer that reads slowly is not idle while its bytes leave.
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.last_active.store(clock_ms(), Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

/// Writes the passthrough metric families (see `docs/metrics.md`).
pub(crate) fn encode(
    counters: &PassthroughCounters,
    encoder: &mut DescriptorEncoder,
) -> std::fmt::Result {
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let mut family = encoder.encode_descriptor(
        "xdp_ingress_passthrough_connections",
        "TLS connections whose SNI named an ssl-passthrough host, by result: spliced (to an \
         endpoint, unterminated), no_endpoint (its backend had none), connect_failed (no \
         endpoint accepted)",
        None,
        MetricType::Counter,
    )?;
    for (result, counter) in [
        ("spliced", &counters.spliced),
        ("no_endpoint", &counters.no_endpoint),
        ("connect_failed", &counters.connect_failed),
    ] {
        family
            .encode_family(&[("result", result)])?
            .encode_counter::<NoLabelSet, _, u64>(&load(counter), None)?;
    }
    let open = load(&counters.spliced).saturating_sub(load(&counters.closed));
    encoder
        .encode_descriptor(
            "xdp_ingress_passthrough_connections_open",
            "Passthrough connections spliced now",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&(open as i64))?;
    encoder
        .encode_descriptor(
            "xdp_ingress_passthrough_idle_closed",
            "Passthrough connections closed after --client-idle-timeout without a byte",
            None,
            MetricType::Counter,
        )?
        .encode_counter::<NoLabelSet, _, u64>(&load(&counters.idle_closed), None)?;
    let mut family = encoder.encode_descriptor(
        "xdp_ingress_passthrough_bytes",
        "Bytes spliced by passthrough connections, by direction (in: client to endpoint, out: \
         endpoint to client), counted as they move",
        None,
        MetricType::Counter,
    )?;
    for (direction, counter) in [("in", &counters.bytes_in), ("out", &counters.bytes_out)] {
        family
            .encode_family(&[("direction", direction)])?
            .encode_counter::<NoLabelSet, _, u64>(&load(counter), None)?;
    }
    Ok(())
}
