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
//! `CONNECT`) it waits for the proxy's answer to it ([`HeadVerdicts::answered`]): a `101` means the
//! connection now speaks another protocol and the guard steps aside for good; any other answer
//! (the proxy refused the upgrade, or the endpoint did) means the connection is still HTTP/1.1, and
//! the guard keeps following it, timeouts and smuggling checks included. It also stops looking on
//! an HTTP/2 preface or on anything it cannot parse; hyper then decides on its own.
//!
//! Following the framing also tells when a connection sits exactly between two messages, which
//! is what **parking** needs: hyper keeps an 8 KiB read and an 8 KiB write buffer for every
//! HTTP/1.1 connection, also while it idles between requests, and cannot release them. When the
//! server sees a connection quiet (no request in flight, the guard between messages, for
//! `PARK_AFTER`), it sets [`HeadVerdicts::park`]: the guard then ends hyper's connection with a
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

/// Shared between the guard (writer) and the connection's requests (readers), and the state
/// parking decides on.
#[derive(Debug)]
pub struct HeadVerdicts {
    flagged: AtomicU64,
    next_request: AtomicU64,
    /// Requests handed to the service whose response body has not been dropped yet.
    in_flight: AtomicU32,
    /// When the last response ended (milliseconds on [`clock_ms`]).
    quiet_since: AtomicU64,
    /// The guard is between two messages: no head, body or chunk partly read.
    at_boundary: AtomicBool,
    /// Set by the server: end hyper's connection at the boundary and hand the stream back.
    park: AtomicBool,
    /// The guard stepped aside (HTTP/2, an upgrade, an unparsable head): never parked.
    passthrough: AtomicBool,
    /// The last HTTP/1.1 request answered: its index << 1, plus 1 if the answer was `101`.
    answered: AtomicU64,
}

/// What the request path learns about a request from the guard, in request order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestTurn {
    /// The request's index on its connection (counted across parkings).
    pub index: u64,
    /// It carried both `Content-Length` and `Transfer-Encoding`.
    pub smuggling: bool,
}

impl Default for HeadVerdicts {
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
pub fn clock_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

impl HeadVerdicts {
    /// A request reached the service.
    pub fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A response ended (its body was dropped: sent whole, or abandoned).
    pub fn request_done(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.quiet_since.store(clock_ms(), Ordering::Relaxed);
    }

    /// How long the connection has been between messages with nothing in flight; `None` while
    /// it is not.
    pub fn quiet_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Relaxed) != 0 || !self.at_boundary.load(Ordering::Relaxed)
        {
            return None;
        }
        let since = self.quiet_since.load(Ordering::Relaxed);
        Some(Duration::from_millis(clock_ms().saturating_sub(since)))
    }

    /// Asks the guard to end hyper's connection and hand the stream back (see the module
    /// documentation); `false` clears the request for the next round.
    pub fn set_park(&self, park: bool) {
        self.park.store(park, Ordering::Relaxed);
    }

    fn parking(&self) -> bool {
        self.park.load(Ordering::Relaxed)
    }

    /// Whether the guard has stepped aside for good (HTTP/2, an upgrade): such a connection is
    /// never parked.
    pub fn is_passthrough(&self) -> bool {
        self.passthrough.load(Ordering::Relaxed)
    }

    /// Called once per request, in order: its index, and whether it carried both
    /// `Content-Length` and `Transfer-Encoding`.
    pub fn next_request(&self) -> RequestTurn {
        let index = self.next_request.fetch_add(1, Ordering::Relaxed);
        RequestTurn {
            index,
            smuggling: self.flagged.load(Ordering::Acquire) == index,
        }
    }

    /// The request path answered HTTP/1.1 request `index`; `switched`: with `101 Switching
    /// Protocols`. Called before the answer is written, so the guard knows before the client
    /// can send anything in the new protocol.
    pub fn answered(&self, index: u64, switched: bool) {
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

/// What a parked guard hands back: the stream and how many requests it has seen (the smuggling
/// verdicts count requests per connection, across hyper connections).
pub type Handoff<T> = tokio::sync::oneshot::Sender<(T, u64)>;

/// Wraps a client connection; see the module documentation.
#[derive(Debug)]
pub struct HeadGuard<T> {
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
    verdicts: Arc<HeadVerdicts>,
    /// The index of an upgrade request not answered yet (see `switched_protocols`).
    awaiting_upgrade: Option<u64>,
    header_timeout: Duration,
    /// Running while a head is incomplete; boxed because only slow heads need it.
    head_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> HeadGuard<T> {
    /// Guards `inner`; heads larger than `max_head` are left to hyper (which answers 431); a
    /// started head must complete within `header_timeout`.
    pub fn new(
        inner: T,
        max_head: usize,
        header_timeout: Duration,
        verdicts: Arc<HeadVerdicts>,
    ) -> Self {
        Self::resume(inner, max_head, header_timeout, verdicts, 0, None)
    }

    /// Like [`HeadGuard::new`], for a stream that has seen `requests_seen` requests already;
    /// `handoff` receives the stream back if the guard is parked.
    pub fn resume(
        inner: T,
        max_head: usize,
        header_timeout: Duration,
        verdicts: Arc<HeadVerdicts>,
        requests_seen: u64,
        handoff: Option<Handoff<T>>,
    ) -> Self {
        verdicts.at_boundary.store(true, Ordering::Relaxed);
        Self {
            inner: Some(inner),
            handoff,
            parked_eof: false,
            framing: Framing::Head,
            pending: Vec::new(),
            max_head,
            requests_seen,
            verdicts,
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
        match self.verdicts.upgrade_outcome(index) {
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
            self.verdicts.flagged.store(index, Ordering::Release);
            // The request is refused and the connection closed; nothing after it matters.
            return Framing::Passthrough;
        }
        match (transfer_encoding, content_length) {
            // The request path never switches a request with a body (see `server`).
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
            && this.verdicts.parking()
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
                if this.verdicts.at_boundary.load(Ordering::Relaxed) != between {
                    this.verdicts.at_boundary.store(between, Ordering::Relaxed);
                }
                if matches!(this.framing, Framing::Passthrough) {
                    this.verdicts.passthrough.store(true, Ordering::Relaxed);
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
                    this.verdicts.passthrough.store(true, Ordering::Relaxed);
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
                if !this.verdicts.is_passthrough() {
                    this.verdicts.at_boundary.store(false, Ordering::Relaxed);
                    this.verdicts.passthrough.store(true, Ordering::Relaxed);
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
mod tests {
    use super::*;

    fn guard() -> HeadGuard<()> {
        HeadGuard::new(
            (),
            32 * 1024,
            Duration::from_secs(10),
            Arc::new(HeadVerdicts::default()),
        )
    }

    fn verdicts(guard: &HeadGuard<()>, requests: usize) -> Vec<bool> {
        (0..requests)
            .map(|_| guard.verdicts.next_request().smuggling)
            .collect()
    }

    #[test]
    fn flags_the_request_with_both_lengths_after_pipelined_bodies() {
        let stream: &[u8] = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
GET /b HTTP/1.1\r\nHost: x\r\n\r\n\
POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\nX-T: 1\r\n\r\n\
POST /d HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        // Fed whole and one byte at a time: the same verdicts.
        let mut whole = guard();
        whole.observe(stream);
        assert_eq!(verdicts(&whole, 4), [false, false, false, true]);
        let mut bytewise = guard();
        for byte in stream {
            bytewise.observe(std::slice::from_ref(byte));
        }
        assert_eq!(verdicts(&bytewise, 4), [false, false, false, true]);
    }

    #[test]
    fn body_text_that_looks_like_a_head_is_not_read_as_one() {
        let body = b"GET /x HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut stream = format!(
            "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        stream.extend_from_slice(body);
        stream.extend_from_slice(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut g = guard();
        g.observe(&stream);
        assert_eq!(verdicts(&g, 2), [false, false]);
    }

    /// A head that has started and stalls ends the connection after the header timeout; an idle
    /// connection (no head started) is left to the idle timeout.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_head_times_out_and_an_idle_connection_does_not() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (mut client, server) = tokio::io::duplex(1024);
        let mut guarded = HeadGuard::new(
            server,
            32 * 1024,
            Duration::from_secs(10),
            Arc::new(HeadVerdicts::default()),
        );
        let mut buf = [0u8; 1024];
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(guarded.read(&mut buf).await.unwrap(), 27);
        // Idle for longer than the header timeout: still open.
        let idle = tokio::time::timeout(Duration::from_secs(30), guarded.read(&mut buf)).await;
        assert!(
            idle.is_err(),
            "an idle connection is not the head timer's business"
        );
        client.write_all(b"GET / HT").await.unwrap();
        assert_eq!(guarded.read(&mut buf).await.unwrap(), 8);
        let started = tokio::time::Instant::now();
        let error = guarded.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed().as_secs(), 10);
    }

    const UPGRADE: &[u8] =
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n";
    const BOTH_LENGTHS: &[u8] =
        b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

    /// Feeds `bytes` through `poll_read`, as hyper would read them.
    async fn read_through(guard: &mut HeadGuard<tokio::io::DuplexStream>, bytes: &[u8]) {
        use tokio::io::AsyncReadExt as _;
        let mut buf = vec![0u8; bytes.len()];
        guard.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, bytes);
    }

    #[tokio::test]
    async fn a_refused_upgrade_leaves_the_guard_in_charge() {
        use tokio::io::AsyncWriteExt as _;
        // The request with both lengths pipelined before the answer, or sent after it.
        for pipelined in [true, false] {
            let verdicts = Arc::new(HeadVerdicts::default());
            let (mut client, server) = tokio::io::duplex(1024);
            let mut g = HeadGuard::new(server, 8192, Duration::from_secs(10), verdicts.clone());
            let mut first = UPGRADE.to_vec();
            if pipelined {
                first.extend_from_slice(BOTH_LENGTHS);
            }
            client.write_all(&first).await.unwrap();
            read_through(&mut g, &first).await;
            let upgrade = verdicts.next_request();
            verdicts.answered(upgrade.index, false);
            if !pipelined {
                client.write_all(BOTH_LENGTHS).await.unwrap();
                read_through(&mut g, BOTH_LENGTHS).await;
            }
            assert!(verdicts.next_request().smuggling, "pipelined: {pipelined}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_switched_connection_is_not_read_as_http() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let verdicts = Arc::new(HeadVerdicts::default());
        let (mut client, server) = tokio::io::duplex(1024);
        let mut g = HeadGuard::new(server, 8192, Duration::from_secs(10), verdicts.clone());
        client.write_all(UPGRADE).await.unwrap();
        read_through(&mut g, UPGRADE).await;
        let upgrade = verdicts.next_request();
        // The new protocol's first bytes arrive before the guard learns of the switch.
        client.write_all(b"GET / HT").await.unwrap();
        read_through(&mut g, b"GET / HT").await;
        verdicts.answered(upgrade.index, true);
        // Long past the header timeout: no error, the bytes pass.
        let mut buf = [0u8; 16];
        let idle = tokio::time::timeout(Duration::from_secs(30), g.read(&mut buf)).await;
        assert!(idle.is_err(), "no head timer on a switched connection");
        assert!(verdicts.is_passthrough());
        client.write_all(BOTH_LENGTHS).await.unwrap();
        read_through(&mut g, BOTH_LENGTHS).await;
    }

    #[test]
    fn h2_preface_is_passed_through() {
        let mut h2 = guard();
        h2.observe(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        assert!(matches!(h2.framing, Framing::Passthrough));
    }

    #[test]
    fn bare_lf_heads_end_where_hyper_ends_them() {
        let stream: &[u8] = b"\r\nGET /a HTTP/1.1\nHost: x\n\n\
POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 2\n\r\nhi\
POST /c HTTP/1.1\nHost: x\nContent-Length: 4\nTransfer-Encoding: chunked\n\n0\r\n\r\n";
        let mut whole = guard();
        whole.observe(stream);
        assert_eq!(verdicts(&whole, 3), [false, false, true]);
        let mut bytewise = guard();
        for byte in stream {
            bytewise.observe(std::slice::from_ref(byte));
        }
        assert_eq!(verdicts(&bytewise, 3), [false, false, true]);
    }

    #[tokio::test]
    async fn parking_ends_the_stream_only_between_messages_and_hands_it_back() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (mut client, server) = tokio::io::duplex(1024);
        let verdicts = Arc::new(HeadVerdicts::default());
        let (handoff, handed_back) = tokio::sync::oneshot::channel();
        let mut guarded = HeadGuard::resume(
            server,
            8192,
            Duration::from_secs(10),
            verdicts.clone(),
            4,
            Some(handoff),
        );
        let mut buf = [0u8; 256];
        client
            .write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nab")
            .await
            .unwrap();
        assert!(guarded.read(&mut buf).await.unwrap() > 0);
        verdicts.request_started();
        assert_eq!(verdicts.quiet_for(), None, "a request in flight");
        verdicts.set_park(true);
        // In the middle of a body, parking waits: the rest is read as usual.
        client.write_all(b"cd").await.unwrap();
        assert_eq!(guarded.read(&mut buf).await.unwrap(), 2);
        verdicts.request_done();
        assert!(
            verdicts.quiet_for().is_some(),
            "between messages, nothing in flight"
        );
        // Between messages: end-of-stream, and the next request stays in the stream.
        client
            .write_all(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(guarded.read(&mut buf).await.unwrap(), 0);
        // hyper's shutdown flushes but does not close.
        guarded.shutdown().await.unwrap();
        drop(guarded);
        let (mut stream, seen) = handed_back.await.unwrap();
        assert_eq!(seen, 5, "requests seen carry over");
        let n = stream.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"GET /next"), "{:?}", &buf[..n]);
        client.write_all(b"more").await.unwrap();
    }

    #[tokio::test]
    async fn a_guard_not_parked_closes_on_shutdown_and_hands_nothing_back() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (mut client, server) = tokio::io::duplex(1024);
        let (handoff, handed_back) = tokio::sync::oneshot::channel();
        let mut guarded = HeadGuard::resume(
            server,
            8192,
            Duration::from_secs(10),
            Arc::new(HeadVerdicts::default()),
            0,
            Some(handoff),
        );
        guarded.shutdown().await.unwrap();
        drop(guarded);
        assert!(handed_back.await.is_err());
        let mut buf = [0u8; 8];
        assert_eq!(client.read(&mut buf).await.unwrap(), 0, "closed");
    }

    /// One request of a fuzzed stream: how its lines end and how its body is framed.
    #[derive(Clone, Debug)]
    enum FuzzBody {
        None,
        Length(Vec<u8>),
        Chunked(Vec<Vec<u8>>),
        /// Both `Content-Length` and `Transfer-Encoding`: must be flagged.
        Both,
    }

    fn fuzz_request(bare_lf: bool, body: &FuzzBody) -> Vec<u8> {
        let eol: &[u8] = if bare_lf { b"\n" } else { b"\r\n" };
        let mut out = Vec::new();
        let mut line = |text: &[u8]| {
            out.extend_from_slice(text);
            out.extend_from_slice(eol);
        };
        line(b"POST /x HTTP/1.1");
        line(b"Host: x");
        match body {
            FuzzBody::None => {}
            FuzzBody::Length(bytes) => line(format!("Content-Length: {}", bytes.len()).as_bytes()),
            FuzzBody::Chunked(_) => line(b"Transfer-Encoding: chunked"),
            FuzzBody::Both => {
                line(b"Content-Length: 3");
                line(b"Transfer-Encoding: chunked");
            }
        }
        line(b"");
        match body {
            FuzzBody::None => {}
            // Body bytes that look like heads must not be read as heads.
            FuzzBody::Length(bytes) => out.extend_from_slice(bytes),
            FuzzBody::Chunked(chunks) => {
                for chunk in chunks.iter().filter(|c| !c.is_empty()) {
                    out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                    out.extend_from_slice(chunk);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n\r\n");
            }
            FuzzBody::Both => out.extend_from_slice(b"0\r\n\r\n"),
        }
        out
    }

    fn fuzz_stream() -> impl proptest::strategy::Strategy<Value = Vec<(bool, FuzzBody)>> {
        use proptest::prelude::*;
        let text = prop::collection::vec(
            prop::sample::select(b"GET / HTTP/1.1\r\n:0a".to_vec()),
            0..40,
        );
        let body = prop_oneof![
            Just(FuzzBody::None),
            text.clone().prop_map(FuzzBody::Length),
            prop::collection::vec(text, 0..4).prop_map(FuzzBody::Chunked),
            Just(FuzzBody::Both),
        ];
        prop::collection::vec((proptest::bool::ANY, body), 1..8)
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config {
            cases: 2048,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x5eed_0002),
            failure_persistence: None,
            ..proptest::test_runner::Config::default()
        })]

        /// However a stream of requests is cut into reads, the guard flags exactly the first
        /// request with both lengths, and sits between messages at the end when there is none.
        #[test]
        fn verdicts_do_not_depend_on_how_reads_are_cut(
            requests in fuzz_stream(),
            cuts in proptest::collection::vec(0usize..4096, 0..16),
        ) {
            let mut stream = Vec::new();
            for (bare_lf, body) in &requests {
                stream.extend_from_slice(&fuzz_request(*bare_lf, body));
            }
            let first_flagged = requests.iter().position(|(_, b)| matches!(b, FuzzBody::Both));
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
            cuts.push(stream.len());
            cuts.sort_unstable();
            let mut g = guard();
            let mut from = 0;
            for cut in cuts {
                g.observe(&stream[from..cut]);
                from = cut;
            }
            let seen = first_flagged.map_or(requests.len(), |i| i + 1);
            let expected: Vec<bool> = (0..seen).map(|i| Some(i) == first_flagged).collect();
            proptest::prop_assert_eq!(verdicts(&g, seen), expected);
            if first_flagged.is_none() {
                proptest::prop_assert!(g.between_messages(), "{:?}", g.framing);
            }
        }
    }
}
