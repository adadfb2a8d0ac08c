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

use std::{
    future::Future as _,
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// No request has been flagged.
const NONE: u64 = u64::MAX;

/// Shared between the guard (writer) and the connection's requests (readers).
#[derive(Debug)]
pub struct HeadVerdicts {
    flagged: AtomicU64,
    next_request: AtomicU64,
}

impl Default for HeadVerdicts {
    fn default() -> Self {
        Self {
            flagged: AtomicU64::new(NONE),
            next_request: AtomicU64::new(0),
        }
    }
}

impl HeadVerdicts {
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

/// Wraps a client connection; see the module documentation.
#[derive(Debug)]
pub struct HeadGuard<T> {
    inner: T,
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
        Self {
            inner,
            framing: Framing::Head,
            pending: Vec::new(),
            max_head,
            requests_seen: 0,
            verdicts,
            header_timeout,
            head_deadline: None,
        }
    }

    /// Whether a head has started and not ended.
    fn head_incomplete(&self) -> bool {
        matches!(self.framing, Framing::Head) && !self.pending.is_empty()
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

impl<T: AsyncRead + Unpin> AsyncRead for HeadGuard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        match polled {
            Poll::Ready(Ok(())) if !matches!(this.framing, Framing::Passthrough) => {
                this.observe(&buf.filled()[before..]);
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
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
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
}
