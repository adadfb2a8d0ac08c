//! Accepting connections: one accept loop per listener, its connection cap, and the TLS
//! handshake. At the cap, or out of file descriptors, the idle connection that has waited longest
//! makes room, so a client holding idle connections cannot lock others out; failing accepts back
//! off rather than spin. A connection leaves here as a stream for `connection::serve_http`.

use std::{
    net::SocketAddr,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use tokio::net::{TcpListener, TcpStream};

use super::{
    connection::{connection_context, serve_http},
    lifetime::{ConnectionSlot, ListenerSlots},
    passthrough,
    server::Shared,
};

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

pub(super) async fn accept_loop(
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

// Plain and TLS connections are separate tasks: an idle plain connection's task then does not
// carry room for a TLS session in its future.
async fn serve_plain(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    slot: ConnectionSlot,
) {
    let _ = stream.set_nodelay(true);
    let (info, http1_state) = connection_context(peer, slot.listener().port, false);
    serve_http(shared, stream, info, http1_state, 0, slot).await;
}

async fn serve_tls(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr, slot: ConnectionSlot) {
    let _ = stream.set_nodelay(true);
    let counters = &shared.counters;
    // One deadline for the ClientHello and the whole handshake, as for the handshake alone.
    let deadline = tokio::time::Instant::now() + shared.settings.client_header_timeout;
    if shared.router.load().has_passthrough() {
        let route = tokio::time::timeout_at(deadline, passthrough::route(&shared, &stream)).await;
        match route {
            Ok(passthrough::Route::Pass(backend)) => {
                passthrough::serve(shared, stream, backend, slot).await;
                return;
            }
            Ok(passthrough::Route::Terminate) => {}
            // What a handshake that failed or timed out was before: the client's problem.
            Ok(passthrough::Route::Closed) | Err(_) => {
                counters
                    .tls_handshake_failures
                    .fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
    let (info, http1_state) = connection_context(peer, slot.listener().port, true);
    let handshake = shared.tls.accept(stream);
    let stream = match tokio::time::timeout_at(deadline, handshake).await {
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
    serve_http(shared, stream, info, http1_state, 0, slot).await;
}
