//! A guard on HTTP/1.1 client connections that reads request heads as they arrive, before hyper
//! parses them, for two things hyper does not do the way we need:
//!
//! - **Slow heads (slowloris).** A head that has started must be complete within
//!   `--client-header-timeout`, else the connection is closed. hyper's own header timer also runs
//!   while a keep-alive connection sits idle between requests, so it serves as the (longer) idle
//!   timeout instead, and the two limits stay separate.
//! - **Request smuggling.** hyper settles a request that carries both `Content-Length` and
//!   `Transfer-Encoding` by the latter (RFC 9112 §6.3) and drops `Content-Length` before the
//!   request reaches us, so the conflict is invisible in the parsed request. We reject such
//!   requests outright (RFC 9112 allows it): the guard records the index of the first request
//!   that carries both, and the request path, counting its requests, answers that one with 400
//!   and `Connection: close`. (Differing duplicate `Content-Length`s hyper already refuses.)
//!
//! The guard follows message framing so it only looks at heads: `Content-Length` bodies are
//! skipped by count, chunked bodies by their chunk sizes. A head ends at an empty line, with or
//! without CR, as hyper (httparse) reads it. After an upgrade request (an `Upgrade` header, or
//! `CONNECT`) it waits for the proxy's answer to it ([`Http1State::answered`]): a `101` means the
//! connection now speaks another protocol and the guard steps aside for good; any other answer
//! (the proxy refused the upgrade, or the endpoint did) means the connection is still HTTP/1.1, and
//! the guard keeps following it, timeouts and smuggling checks included. It also stops looking on
//! an HTTP/2 preface or on anything it cannot parse; hyper then decides on its own.
//!
//! Following the framing also tells when a connection sits exactly between two messages, which
//! is what **parking** needs: hyper keeps an 8 KiB read and an 8 KiB write buffer for every
//! HTTP/1.1 connection, also while it idles between requests, and cannot release them. When the
//! server sees a connection quiet (no request in flight, the guard between messages, for
//! `PARK_AFTER`), it sets [`Http1State::set_park`]: the guard then ends hyper's connection with a
//! clean end-of-stream at a message boundary, does not close the socket on hyper's shutdown, and
//! hands the stream back when hyper drops it. The server waits for the client's next bytes
//! holding nothing but the socket, then gives the stream to a new hyper connection.

use std::{
    future::Future as _,
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// No request has been flagged.
const NONE: u64 = u64::MAX;

/// One client connection's HTTP/1.1 state: written by its head guard (message boundaries, the
/// request flagged for smuggling, stepping aside), by its requests (in flight, answered) and by
/// its connection task (parking), and read by all three to decide when to park.
#[derive(Debug)]
pub(crate) struct Http1State {
    /// The index of the request that carried both `Content-Length` and `Transfer-Encoding`.
    flagged: AtomicU64,
    next_request: AtomicU64,
    /// Requests handed to the service whose response body has not been dropped yet.
    in_flight: AtomicU32,
    /// When the last response ended (milliseconds on [`clock_ms`]).
    quiet_since: AtomicU64,
    /// The guard is between two messages: no head, body or chunk partly read.
    at_boundary: AtomicBool,
    /// Set by the connection task: end hyper's connection at the boundary and hand the stream
    /// back.
    park: AtomicBool,
    /// The guard stepped aside (HTTP/2, an upgrade, an unparsable head): never parked.
    passthrough: AtomicBool,
    /// The last HTTP/1.1 request answered: its index << 1, plus 1 if the answer was `101`.
    answered: AtomicU64,
}

/// What the request path learns about a request from the guard, in request order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RequestTurn {
    /// The request's index on its connection (counted across parkings).
    pub index: u64,
    /// It carried both `Content-Length` and `Transfer-Encoding`.
    pub smuggling: bool,
}

impl Default for Http1State {
    fn default() -> Self {
        Self {
            flagged: AtomicU64::new(NONE),
            next_request: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            quiet_since: AtomicU64::new(clock_ms()),
            at_boundary: AtomicBool::new(true),
            park: AtomicBool::new(false),
            passthrough: AtomicBool::new(false),
            answered: AtomicU64::new(NONE),
        }
    }
}

/// Milliseconds since the first call: a clock for "quiet since" that fits an atomic.
pub(crate) fn clock_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

impl Http1State {
    /// A request reached the service.
    pub(crate) fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A response ended (its body was dropped: sent whole, or abandoned).
    pub(crate) fn request_done(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.quiet_since.store(clock_ms(), Ordering::Relaxed);
    }

    /// How long the connection has been between messages with nothing in flight; `None` while
    /// it is not.
    pub(crate) fn quiet_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Relaxed) != 0 || !self.at_boundary.load(Ordering::Relaxed)
        {
            return None;
        }
        let since = self.quiet_since.load(Ordering::Relaxed);
        Some(Duration::from_millis(clock_ms().saturating_sub(since)))
    }

    /// Asks the guard to end hyper's connection and hand the stream back (see the module
    /// documentation); `false` clears the request for the next round.
    pub(crate) fn set_park(&self, park: bool) {
        self.park.store(park, Ordering::Relaxed);
    }

    fn parking(&self) -> bool {
        self.park.load(Ordering::Relaxed)
    }

    /// Whether the guard has stepped aside for good (HTTP/2, an upgrade): such a connection is
    /// never parked.
    pub(crate) fn is_passthrough(&self) -> bool {
        self.passthrough.load(Ordering::Relaxed)
    }

    /// Called once per request, in order: its index, and whether it carried both
    /// `Content-Length` and `Transfer-Encoding`.
    pub(crate) fn next_request(&self) -> RequestTurn {
        let index = self.next_request.fetch_add(1, Ordering::Relaxed);
        RequestTurn {
            index,
            smuggling: self.flagged.load(Ordering::Acquire) == index,
        }
    }

    /// The request path answered HTTP/1.1 request `index`; `switched`: with `101 Switching
    /// Protocols`. Called before the answer is written, so the guard knows before the client
    /// can send anything in the new protocol.
    pub(crate) fn answered(&self, index: u64, switched: bool) {
        self.answered
            .store(index << 1 | u64::from(switched), Ordering::Release);
    }

    /// Whether upgrade request `index` has been answered: `Some(true)` with a switch.
    fn upgrade_outcome(&self, index: u64) -> Option<bool> {
        let answered = self.answered.load(Ordering::Acquire);
        if answered == NONE || answered >> 1 < index {
            return None;
        }
        // A later request answered means this one was not switched (a 101 ends HTTP/1.1).
        Some(answered >> 1 == index && answered & 1 == 1)
    }
}

#[derive(Debug)]
enum Framing {
    /// Reading a request head; the bytes so far.
    Head,
    /// Skipping a body of known length.
    Body(u64),
    /// A chunked body: reading a chunk-size line.
    ChunkSize,
    /// A chunked body: skipping chunk data, then its CRLF.
    ChunkData(u64),
    /// A chunked body: reading trailer lines up to the empty one.
    Trailers,
    /// No longer following the stream.
    Passthrough,
}

/// What a parked guard hands back: the stream and how many requests it has seen (the
/// connection's [`Http1State`] counts requests across hyper connections).
pub(crate) type Handoff<T> = tokio::sync::oneshot::Sender<(T, u64)>;

/// Wraps a client connection; see the module documentation.
#[derive(Debug)]
pub(crate) struct HeadGuard<T> {
    /// Always `Some` until a parked guard hands it back on drop.
    inner: Option<T>,
    handoff: Option<Handoff<T>>,
    /// This guard ended hyper's connection for parking: its shutdown keeps the socket, its drop
    /// hands the stream back. Any other end (an error, `Connection: close`) closes as usual.
    parked_eof: bool,
    framing: Framing,
    /// Bytes of the head or line being read.
    pending: Vec<u8>,
    max_head: usize,
    requests_seen: u64,
    state: Arc<Http1State>,
    /// The index of an upgrade request not answered yet (see `switched_protocols`).
    awaiting_upgrade: Option<u64>,
    header_timeout: Duration,
    /// Running while a head is incomplete; boxed because only slow heads need it.
    head_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> HeadGuard<T> {
    /// Guards `inner`; heads larger than `max_head` are left to hyper (which answers 431); a
    /// started head must complete within `header_timeout`.
    pub(crate) fn new(
        inner: T,
        max_head: usize,
        header_timeout: Duration,
        state: Arc<Http1State>,
    ) -> Self {
        Self::resume(inner, max_head, header_timeout, state, 0, None)
    }

    /// Like [`HeadGuard::new`], for a stream that has seen `requests_seen` requests already;
    /// `handoff` receives the stream back if the guard is parked.
    pub(crate) fn resume(
        inner: T,
        max_head: usize,
        header_timeout: Duration,
        state: Arc<Http1State>,
        requests_seen: u64,
        handoff: Option<Handoff<T>>,
    ) -> Self {
        state.at_boundary.store(true, Ordering::Relaxed);
        Self {
            inner: Some(inner),
            handoff,
            parked_eof: false,
            framing: Framing::Head,
            pending: Vec::new(),
            max_head,
            requests_seen,
            state,
            awaiting_upgrade: None,
            header_timeout,
            head_deadline: None,
        }
    }

    /// Whether a head has started and not ended.
    fn head_incomplete(&self) -> bool {
        matches!(self.framing, Framing::Head) && !self.pending.is_empty()
    }

    /// Whether the stream is between two messages.
    fn between_messages(&self) -> bool {
        matches!(self.framing, Framing::Head) && self.pending.is_empty()
    }

    /// Follows the framing over newly read bytes.
    fn observe(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match self.framing {
                Framing::Passthrough => return,
                Framing::Body(remaining) => {
                    let take = remaining.min(bytes.len() as u64);
                    bytes = &bytes[take as usize..];
                    self.framing = if remaining == take {
                        Framing::Head
                    } else {
                        Framing::Body(remaining - take)
                    };
                }
                Framing::ChunkData(remaining) => {
                    // `remaining` includes the CRLF after the data.
                    let take = remaining.min(bytes.len() as u64);
                    bytes = &bytes[take as usize..];
                    self.framing = if remaining == take {
                        Framing::ChunkSize
                    } else {
                        Framing::ChunkData(remaining - take)
                    };
                }
                Framing::Head => bytes = self.read_head(bytes),
                Framing::ChunkSize | Framing::Trailers => bytes = self.read_line(bytes),
            }
        }
    }

    /// After an upgrade request: whether the proxy has switched the connection to another
    /// protocol (then the guard steps aside for good, and forgets a head timer that the new
    /// protocol's bytes may have started). Until the answer, bytes are read as HTTP/1.1, as if
    /// the upgrade were refused: a refusal then finds every verdict already in place, and a
    /// switch makes them moot (no HTTP/1.1 request follows a `101`).
    fn switched_protocols(&mut self) -> bool {
        let Some(index) = self.awaiting_upgrade else {
            return false;
        };
        match self.state.upgrade_outcome(index) {
            Some(true) => {
                self.awaiting_upgrade = None;
                self.framing = Framing::Passthrough;
                self.pending = Vec::new();
                self.head_deadline = None;
                true
            }
            Some(false) => {
                self.awaiting_upgrade = None;
                false
            }
            None => false,
        }
    }

    fn read_head<'a>(&mut self, mut bytes: &'a [u8]) -> &'a [u8] {
        if self.pending.is_empty() {
            // Empty lines before a request line are ignored (RFC 9112 §2.2), by hyper too.
            let blank = bytes
                .iter()
                .take_while(|&&b| b == b'\r' || b == b'\n')
                .count();
            bytes = &bytes[blank..];
            // The usual case: a whole head in one read, parsed where it lies.
            if let Some(end) = head_end(bytes) {
                self.framing = self.classify_head(&bytes[..end]);
                return &bytes[end..];
            }
            if bytes.is_empty() {
                return bytes;
            }
        }
        // Look for the end of the head across the old and the new bytes.
        let old = self.pending.len();
        let window_start = old.saturating_sub(2);
        self.pending.extend_from_slice(bytes);
        let Some(end) = head_end(&self.pending[window_start..]).map(|i| window_start + i) else {
            if self.pending.len() > self.max_head {
                self.framing = Framing::Passthrough;
            }
            return &[];
        };
        let consumed_from_new = end - old;
        let mut pending = std::mem::take(&mut self.pending);
        self.framing = self.classify_head(&pending[..end]);
        pending.clear();
        self.pending = pending;
        &bytes[consumed_from_new..]
    }

    fn classify_head(&mut self, head: &[u8]) -> Framing {
        if head.starts_with(b"PRI * HTTP/2.0") {
            return Framing::Passthrough;
        }
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut request = httparse::Request::new(&mut headers);
        if !matches!(request.parse(head), Ok(httparse::Status::Complete(_))) {
            return Framing::Passthrough;
        }
        let index = self.requests_seen;
        self.requests_seen += 1;
        let mut content_length = None;
        let mut transfer_encoding = false;
        // What hyper treats as a wish to upgrade; only a `101` answer makes it one.
        let mut upgrade = request.method == Some("CONNECT");
        let http11 = request.version == Some(1);
        for header in request.headers.iter() {
            if header.name.eq_ignore_ascii_case("content-length") {
                content_length = std::str::from_utf8(header.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .or(Some(u64::MAX));
            } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                transfer_encoding = true;
            } else if header.name.eq_ignore_ascii_case("upgrade") {
                upgrade |= http11;
            }
        }
        if transfer_encoding && content_length.is_some() {
            self.state.flagged.store(index, Ordering::Release);
            // The request is refused and the connection closed; nothing after it matters.
            return Framing::Passthrough;
        }
        match (transfer_encoding, content_length) {
            // The request path never switches a request with a body (see `forward`).
            (true, _) => Framing::ChunkSize,
            (_, Some(u64::MAX)) => Framing::Passthrough,
            (_, Some(0)) | (_, None) => {
                if upgrade {
                    self.awaiting_upgrade = Some(index);
                }
                Framing::Head
            }
            (_, Some(length)) => Framing::Body(length),
        }
    }

    /// A chunk-size line or a trailer line.
    fn read_line<'a>(&mut self, bytes: &'a [u8]) -> &'a [u8] {
        let Some(newline) = bytes.iter().position(|&b| b == b'\n') else {
            self.pending.extend_from_slice(bytes);
            if self.pending.len() > self.max_head {
                self.framing = Framing::Passthrough;
            }
            return &[];
        };
        self.pending.extend_from_slice(&bytes[..=newline]);
        let line = trim_line(&self.pending);
        self.framing = match self.framing {
            Framing::ChunkSize => {
                let size = line.split(|&b| b == b';').next().unwrap_or(b"");
                match std::str::from_utf8(size)
                    .ok()
                    .and_then(|s| u64::from_str_radix(s.trim(), 16).ok())
                {
                    Some(0) => Framing::Trailers,
                    Some(size) => Framing::ChunkData(size.saturating_add(2)),
                    None => Framing::Passthrough,
                }
            }
            _ if line.is_empty() => Framing::Head,
            _ => Framing::Trailers,
        };
        self.pending.clear();
        &bytes[newline + 1..]
    }
}

fn trim_line(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Where a head ends: after the first empty line, whose line ends may be CRLF or a bare LF (as
/// httparse accepts them), so the guard and hyper see the same messages.
fn head_end(bytes: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(newline) = bytes[from..].iter().position(|&b| b == b'\n') {
        let at = from + newline;
        match (bytes.get(at + 1), bytes.get(at + 2)) {
            (Some(b'\n'), _) => return Some(at + 2),
            (Some(b'\r'), Some(b'\n')) => return Some(at + 3),
            _ => from = at + 1,
        }
    }
    None
}

impl<T> Drop for HeadGuard<T> {
    fn drop(&mut self) {
        if !self.parked_eof {
            return;
        }
        if let (Some(inner), Some(handoff)) = (self.inner.take(), self.handoff.take()) {
            // The server may have gone (drain); the stream then closes here.
            let _ = handoff.send((inner, self.requests_seen));
        }
    }
}

/// The inner stream, or the error a guard gives after handing it back (never reached: hyper
/// does not use its I/O after dropping it).
fn inner_of<T>(inner: &mut Option<T>) -> io::Result<&mut T> {
    inner
        .as_mut()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "stream handed back"))
}

impl<T: AsyncRead + Unpin> AsyncRead for HeadGuard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        // Parking: an end-of-stream where the next request would start. hyper, idle, ends the
        // connection cleanly; the client's next bytes stay in the socket for the next round.
        if this.handoff.is_some()
            && this.state.parking()
            && this.between_messages()
            && this.awaiting_upgrade.is_none()
        {
            this.parked_eof = true;
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = match inner_of(&mut this.inner) {
            Ok(inner) => Pin::new(inner).poll_read(cx, buf),
            Err(error) => return Poll::Ready(Err(error)),
        };
        match polled {
            Poll::Ready(Ok(())) if !matches!(this.framing, Framing::Passthrough) => {
                if !this.switched_protocols() {
                    this.observe(&buf.filled()[before..]);
                }
                let between = this.between_messages();
                if this.state.at_boundary.load(Ordering::Relaxed) != between {
                    this.state.at_boundary.store(between, Ordering::Relaxed);
                }
                if matches!(this.framing, Framing::Passthrough) {
                    this.state.passthrough.store(true, Ordering::Relaxed);
                }
                if !this.head_incomplete() {
                    this.head_deadline = None;
                } else if this.head_deadline.is_none() {
                    this.head_deadline = Some(Box::pin(tokio::time::sleep(this.header_timeout)));
                }
                polled
            }
            Poll::Pending => {
                if this.switched_protocols() {
                    this.state.passthrough.store(true, Ordering::Relaxed);
                }
                if let Some(deadline) = this.head_deadline.as_mut() {
                    if deadline.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "request head not complete within the client header timeout",
                        )));
                    }
                }
                Poll::Pending
            }
            Poll::Ready(Ok(())) => {
                // Passthrough (HTTP/2, an upgrade): never between messages again; never parked.
                if !this.state.is_passthrough() {
                    this.state.at_boundary.store(false, Ordering::Relaxed);
                    this.state.passthrough.store(true, Ordering::Relaxed);
                }
                this.head_deadline = None;
                polled
            }
            Poll::Ready(Err(_)) => polled,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for HeadGuard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match inner_of(&mut self.inner) {
            Ok(inner) => Pin::new(inner).poll_write(cx, data),
            Err(error) => Poll::Ready(Err(error)),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match inner_of(&mut self.inner) {
            Ok(inner) => Pin::new(inner).poll_flush(cx),
            Err(error) => Poll::Ready(Err(error)),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let parking = self.parked_eof;
        match inner_of(&mut self.inner) {
            // Parked: flush what hyper wrote, keep the connection open for the next round.
            Ok(inner) if parking => Pin::new(inner).poll_flush(cx),
            Ok(inner) => Pin::new(inner).poll_shutdown(cx),
            Err(error) => Poll::Ready(Err(error)),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match inner_of(&mut self.inner) {
            Ok(inner) => Pin::new(inner).poll_write_vectored(cx, bufs),
            Err(error) => Poll::Ready(Err(error)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(T::is_write_vectored)
    }
}

#[cfg(test)]
mod tests;
