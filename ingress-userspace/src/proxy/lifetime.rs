//! Bounds on a client connection's life that hyper does not keep by itself: the write-progress
//! (send) timeout on the client stream, HTTP/2 idleness and stalls, and the per-listener
//! connection cap with its shedding of idle connections.
//!
//! - [`SendTimeout`] wraps the client stream under hyper (above the head guard, so parking and
//!   framing are untouched): a write or flush that stays pending for `--client-send-timeout`
//!   fails, hyper closes the connection and drops the response body, which closes its upstream
//!   connection. A separate wrapper rather than a timer in the head guard: the guard steps
//!   aside for HTTP/2 and upgrades, the send timeout must not.
//! - [`ConnectionLife`] is what a connection's requests report (seen a request at all, open
//!   HTTP/2 streams, HTTP/2 responses waiting for the client's flow-control window), read by the
//!   connection's task to close an HTTP/2 connection that is idle, stalled, or never sent a
//!   request.
//! - [`ListenerSlots`] counts a listener's connections (parked ones included: each holds a
//!   descriptor) against `--max-connections`, and lets the accept loop ask the idle connection
//!   that has waited longest to close ([`tokio::sync::Notify`] wakes waiters first in, first
//!   out).

use std::{
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{head_guard::clock_ms, metrics::ProxyCounters};

/// The client stream with a write-progress timeout; see the module documentation.
#[derive(Debug)]
pub(crate) struct SendTimeout<T> {
    inner: T,
    timeout: Duration,
    /// Runs while a write is pending; boxed and made on the first stall only (most clients
    /// read as fast as we write), then reused.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    armed: bool,
    counters: Arc<ProxyCounters>,
}

impl<T> SendTimeout<T> {
    /// Wraps `inner`; a write pending for `timeout` fails with `TimedOut` and is counted in
    /// `counters`.
    pub(crate) fn new(inner: T, timeout: Duration, counters: Arc<ProxyCounters>) -> Self {
        Self {
            inner,
            timeout,
            deadline: None,
            armed: false,
            counters,
        }
    }

    /// Called with the inner stream's answer: progress disarms the timer, a stall arms it (once)
    /// and fails when it runs out.
    fn watch<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        if polled.is_ready() {
            self.armed = false;
            return polled;
        }
        if !self.armed {
            self.armed = true;
            let at = tokio::time::Instant::now() + self.timeout;
            match &mut self.deadline {
                Some(deadline) => deadline.as_mut().reset(at),
                None => self.deadline = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
        if let Some(deadline) = &mut self.deadline {
            if deadline.as_mut().poll(cx).is_ready() {
                self.armed = false;
                self.counters
                    .client_timeouts
                    .send
                    .fetch_add(1, Ordering::Relaxed);
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client read nothing within --client-send-timeout",
                )));
            }
        }
        Poll::Pending
    }
}

use std::future::Future as _;

impl<T: AsyncRead + Unpin> AsyncRead for SendTimeout<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SendTimeout<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, polled)
    }
}

/// What a connection's requests tell its task (see the module documentation). Milliseconds
/// are on [`clock_ms`].
#[derive(Debug, Default)]
pub(crate) struct ConnectionLife {
    /// A request reached the service on this connection.
    seen_request: AtomicBool,
    /// An HTTP/2 request did.
    http2: AtomicBool,
    /// HTTP/2 requests whose response body has not been dropped yet.
    h2_streams: AtomicU32,
    /// When the last HTTP/2 stream ended (0: none ended yet; then the connection's start).
    h2_quiet_since: AtomicU64,
    /// HTTP/2 response bodies that handed hyper data and were not asked for more since: hyper
    /// waits for the client's flow-control window.
    h2_waiting: AtomicU32,
    /// When the waiting last made progress (a waiting body asked again, or the first one
    /// started waiting).
    h2_progress: AtomicU64,
}

impl ConnectionLife {
    /// A request reached the service.
    pub(crate) fn request_started(&self, http2: bool) {
        if !self.seen_request.load(Ordering::Relaxed) {
            self.seen_request.store(true, Ordering::Relaxed);
        }
        if http2 {
            if !self.http2.load(Ordering::Relaxed) {
                self.http2.store(true, Ordering::Relaxed);
            }
            self.h2_streams.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether the connection is HTTP/2 (it has carried an HTTP/2 request).
    pub(crate) fn is_http2(&self) -> bool {
        self.http2.load(Ordering::Relaxed)
    }

    /// An HTTP/2 response ended (its body dropped).
    pub(crate) fn h2_stream_done(&self) {
        self.h2_quiet_since.store(clock_ms(), Ordering::Relaxed);
        self.h2_streams.fetch_sub(1, Ordering::Relaxed);
    }

    /// Whether any request reached the service.
    pub(crate) fn seen_request(&self) -> bool {
        self.seen_request.load(Ordering::Relaxed)
    }

    /// Open HTTP/2 streams (requests whose response has not ended).
    pub(crate) fn h2_streams(&self) -> u32 {
        self.h2_streams.load(Ordering::Relaxed)
    }

    /// How long the connection has had no open HTTP/2 stream, counted from `started_ms` when
    /// no stream has ended yet; `None` while one is open.
    pub(crate) fn h2_quiet_for(&self, started_ms: u64) -> Option<Duration> {
        if self.h2_streams() != 0 {
            return None;
        }
        let since = self.h2_quiet_since.load(Ordering::Relaxed).max(started_ms);
        Some(Duration::from_millis(clock_ms().saturating_sub(since)))
    }

    /// An HTTP/2 response body handed hyper a data frame: it now waits for the client's window
    /// (or for hyper to ask again at once, which [`ConnectionLife::h2_asked_again`] records).
    pub(crate) fn h2_handed_data(&self) {
        if self.h2_waiting.fetch_add(1, Ordering::Relaxed) == 0 {
            self.h2_progress.store(clock_ms(), Ordering::Relaxed);
        }
    }

    /// A waiting HTTP/2 response body was asked for more (or dropped): progress.
    pub(crate) fn h2_asked_again(&self) {
        self.h2_progress.store(clock_ms(), Ordering::Relaxed);
        self.h2_waiting.fetch_sub(1, Ordering::Relaxed);
    }

    /// How long HTTP/2 responses have waited for the client without any progress; `None` when
    /// none waits.
    pub(crate) fn h2_stalled_for(&self) -> Option<Duration> {
        if self.h2_waiting.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let since = self.h2_progress.load(Ordering::Relaxed);
        Some(Duration::from_millis(clock_ms().saturating_sub(since)))
    }
}

/// One listener's connections against its cap, and the idle ones that can be asked to go.
#[derive(Debug)]
pub(crate) struct ListenerSlots {
    /// The listener's port.
    pub port: u16,
    max: usize,
    open: AtomicUsize,
    /// Idle connections waiting in their tasks (HTTP/2 with no stream, or no request yet; TLS
    /// connections parked in their task) that listen to `shed`.
    idle_waiters: AtomicUsize,
    shed: tokio::sync::Notify,
}

impl ListenerSlots {
    /// A listener on `port` allowing `max` connections (at least 1).
    pub(crate) fn new(port: u16, max: usize) -> Arc<Self> {
        Arc::new(Self {
            port,
            max: max.max(1),
            open: AtomicUsize::new(0),
            idle_waiters: AtomicUsize::new(0),
            shed: tokio::sync::Notify::new(),
        })
    }

    /// Open connections (parked ones included).
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Whether the listener is at its cap.
    pub(crate) fn full(&self) -> bool {
        self.open() >= self.max
    }

    /// Counts a new connection until the slot drops.
    pub(crate) fn take(self: &Arc<Self>) -> ConnectionSlot {
        self.open.fetch_add(1, Ordering::Relaxed);
        ConnectionSlot(self.clone())
    }

    /// Asks the idle connection waiting in its task the longest to close; `false` when none
    /// waits.
    pub(crate) fn shed_one_waiting(&self) -> bool {
        // Only with a waiter: a notification nobody takes would be kept and shed the next
        // connection to go idle, however briefly.
        if self.idle_waiters.load(Ordering::Relaxed) == 0 {
            return false;
        }
        self.shed.notify_one();
        true
    }
}

/// A connection's place on its listener; dropping it frees the place.
#[derive(Debug)]
pub(crate) struct ConnectionSlot(Arc<ListenerSlots>);

impl ConnectionSlot {
    /// The listener.
    pub(crate) fn listener(&self) -> &Arc<ListenerSlots> {
        &self.0
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An idle connection's registration for shedding: while `enabled`, the listener's
/// [`ListenerSlots::shed_one_waiting`] may pick it. Keeps its place in the queue across polls,
/// so the connection idle longest goes first.
pub(crate) struct SheddingTicket<'a> {
    slots: &'a ListenerSlots,
    notified: Pin<Box<tokio::sync::futures::Notified<'a>>>,
    enabled: bool,
}

impl<'a> SheddingTicket<'a> {
    /// Not yet in the queue.
    pub(crate) fn new(slots: &'a ListenerSlots) -> Self {
        Self {
            slots,
            notified: Box::pin(slots.shed.notified()),
            enabled: false,
        }
    }

    /// Joins the queue (idle), or leaves it (busy).
    pub(crate) fn set_idle(&mut self, idle: bool) {
        if idle == self.enabled {
            return;
        }
        self.enabled = idle;
        if idle {
            self.notified.as_mut().enable();
            self.slots.idle_waiters.fetch_add(1, Ordering::Relaxed);
        } else {
            // A new, unpolled `Notified` is in no queue.
            self.notified.set(self.slots.shed.notified());
            self.slots.idle_waiters.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Whether it is in the queue.
    #[cfg(test)]
    pub(crate) fn is_idle(&self) -> bool {
        self.enabled
    }

    /// Resolves when the listener picked this connection to close (only while idle).
    pub(crate) async fn picked(&mut self) {
        if !self.enabled {
            return std::future::pending().await;
        }
        self.notified.as_mut().await;
        // Out of the queue now; a new ticket state for whoever decides next.
        self.enabled = false;
        self.slots.idle_waiters.fetch_sub(1, Ordering::Relaxed);
        self.notified.set(self.slots.shed.notified());
    }

    /// Picked while no longer idle: hands the request on to the next idle connection (and
    /// joins the queue again at its end if idle).
    pub(crate) fn pass_on(&self) {
        self.slots.shed.notify_one();
    }
}

impl Drop for SheddingTicket<'_> {
    fn drop(&mut self) {
        if self.enabled {
            self.slots.idle_waiters.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The default `--max-connections`: half the descriptors the process may open (the other half
/// for upstream connections, pooled ones, and the agent's own), less a reserve, split over the
/// listeners; at least 16.
pub(crate) fn default_max_connections(nofile: u64, listeners: usize) -> usize {
    let budget = nofile.saturating_sub(64) / 2 / listeners.max(1) as u64;
    usize::try_from(budget).unwrap_or(usize::MAX).max(16)
}

/// The process's soft `RLIMIT_NOFILE` (`None`: unreadable or unlimited).
pub(crate) fn nofile_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the valid struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    (limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard one (a proxy holds a descriptor per
/// connection; the usual soft default of 1,024 is far too low). Returns (before, after).
pub fn raise_nofile_limit() -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the valid struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit reads one valid rlimit; raising soft up to hard needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok((before, limit.rlim_cur))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_cap_follows_the_descriptor_limit() {
        assert_eq!(default_max_connections(1024, 2), 240);
        assert_eq!(default_max_connections(160, 2), 24);
        assert_eq!(default_max_connections(160, 1), 48);
        assert_eq!(default_max_connections(10, 2), 16);
    }

    #[tokio::test]
    async fn the_idle_connection_waiting_longest_is_shed_first() {
        let slots = ListenerSlots::new(80, 2);
        let first = slots.take();
        let _second = slots.take();
        assert!(slots.full());
        drop(first);
        assert!(!slots.full());
        assert!(!slots.shed_one_waiting(), "no idle waiter: nothing to ask");

        let mut old = SheddingTicket::new(&slots);
        let mut young = SheddingTicket::new(&slots);
        old.set_idle(true);
        young.set_idle(true);
        assert!(slots.shed_one_waiting());
        tokio::time::timeout(Duration::from_secs(1), old.picked())
            .await
            .expect("the older idle connection is picked");
        assert!(!old.is_idle());
        let young_picked = tokio::time::timeout(Duration::from_millis(50), young.picked()).await;
        assert!(young_picked.is_err(), "one request sheds one connection");
        // A busy connection leaves the queue and is not picked.
        young.set_idle(false);
        assert!(!slots.shed_one_waiting());
    }
}
