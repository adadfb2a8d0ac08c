//! How far a request body has gone to its endpoint, for nginx's `proxy_send_timeout` (between
//! two successive writes to the endpoint) and `proxy_read_timeout` (from the request sent to the
//! response head). hyper writes the body from the connection's own task, asking the body for a
//! frame each time it has written the last one: a body not asked for longer than the send
//! timeout, while it has data, is an endpoint that stopped reading. A body waiting for the
//! client is the client's delay (`--client-body-timeout`), not the endpoint's.
//!
//! Shared between the body (in hyper's connection task) and the request waiting for the head:
//! made only for requests with a body (one small allocation); a request without one is sent
//! with its head, and only the read timeout applies.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use tokio::time::{Duration, Instant};

/// The body has frames for the endpoint (or has not been asked for yet).
const SENDING: u8 = 0;
/// The body waits for the client.
const WAITING_FOR_CLIENT: u8 = 1;
/// The body went out whole.
const DONE: u8 = 2;

/// The body's state and when it last changed.
#[derive(Debug)]
pub(crate) struct SendProgress {
    base: Instant,
    /// Milliseconds since `base` of the last change.
    since_ms: AtomicU64,
    state: AtomicU8,
}

impl SendProgress {
    pub(crate) fn new() -> Self {
        Self {
            base: Instant::now(),
            since_ms: AtomicU64::new(0),
            state: AtomicU8::new(SENDING),
        }
    }

    fn set(&self, state: u8) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.since_ms.store(ms, Ordering::Relaxed);
        self.state.store(state, Ordering::Release);
    }

    /// hyper took a frame: it will write it, and ask again once written.
    pub(crate) fn sent_frame(&self) {
        self.set(SENDING);
    }

    /// hyper asked for a frame and the client has not sent it yet.
    pub(crate) fn waiting_for_client(&self) {
        if self.state.load(Ordering::Relaxed) != WAITING_FOR_CLIENT {
            self.set(WAITING_FOR_CLIENT);
        }
    }

    /// The last frame went out.
    pub(crate) fn done(&self) {
        self.set(DONE);
    }

    /// When the endpoint will have taken too long: `send` after the last frame taken while the
    /// body is sending, `read` after it went out whole; `None` while the client is awaited.
    pub(crate) fn deadline(&self, send: Duration, read: Duration) -> Option<Instant> {
        let state = self.state.load(Ordering::Acquire);
        let since = self.base + Duration::from_millis(self.since_ms.load(Ordering::Relaxed));
        match state {
            SENDING => Some(since + send),
            DONE => Some(since + read),
            _ => None,
        }
    }
}
