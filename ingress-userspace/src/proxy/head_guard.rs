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
//! skipped by count, chunked bodies by their chunk sizes. It stops looking (passes bytes through)
//! after an upgrade request, on an HTTP/2 preface, or on anything it cannot parse; hyper then
//! decides on its own, as before.
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

    /// Called once per request, in order: whether this request carried both `Content-Length` and
    /// `Transfer-Encoding`.
    pub fn next_request_is_smuggling(&self) -> bool {
        let index = self.next_request.fetch_add(1, Ordering::Relaxed);
        self.flagged.load(Ordering::Acquire) == index
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

    fn read_head<'a>(&mut self, bytes: &'a [u8]) -> &'a [u8] {
        // The usual case: a whole head in one read, parsed where it lies.
        if self.pending.is_empty() {
            if let Some(end) = find(bytes, b"\r\n\r\n").map(|i| i + 4) {
                self.framing = self.classify_head(&bytes[..end]);
                return &bytes[end..];
            }
        }
        // Look for the end of the head across the old and the new bytes.
        let old = self.pending.len();
        let window_start = old.saturating_sub(3);
        self.pending.extend_from_slice(bytes);
        let Some(end) =
            find(&self.pending[window_start..], b"\r\n\r\n").map(|i| window_start + i + 4)
        else {
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
        let mut upgrade = request.method == Some("CONNECT");
        for header in request.headers.iter() {
            if header.name.eq_ignore_ascii_case("content-length") {
                content_length = std::str::from_utf8(header.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .or(Some(u64::MAX));
            } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                transfer_encoding = true;
            } else if header.name.eq_ignore_ascii_case("upgrade") {
                upgrade = true;
            }
        }
        if transfer_encoding && content_length.is_some() {
            self.verdicts.flagged.store(index, Ordering::Release);
            // The request is refused and the connection closed; nothing after it matters.
            return Framing::Passthrough;
        }
        match (upgrade, transfer_encoding, content_length) {
            (true, _, _) => Framing::Passthrough,
            (_, true, _) => Framing::ChunkSize,
            (_, _, Some(u64::MAX)) => Framing::Passthrough,
            (_, _, Some(0)) | (_, _, None) => Framing::Head,
            (_, _, Some(length)) => Framing::Body(length),
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

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
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
        if this.handoff.is_some() && this.verdicts.parking() && this.between_messages() {
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
                this.observe(&buf.filled()[before..]);
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
            .map(|_| guard.verdicts.next_request_is_smuggling())
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

    #[test]
    fn stops_following_after_an_upgrade_or_h2() {
        let mut g = guard();
        g.observe(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        );
        g.observe(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(verdicts(&g, 2), [false, false]);
        let mut h2 = guard();
        h2.observe(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        assert!(matches!(h2.framing, Framing::Passthrough));
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
}
