//! The response body the proxy hands hyper, whoever wrote it: the endpoint's, streamed, or the
//! proxy's own text. It is also where a request ends: when hyper drops it (after its last byte,
//! or abandoned), the response is counted in its backend's metrics and the client connection
//! learns that the request is over (parking, HTTP/2 idle and stall timers), and the access-log
//! record, which counted the bytes, is written.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::translate::l7::routes::series::{Observation, SeriesCounters};

use super::{
    access_log::AccessRecord,
    connection::ConnectionInfo,
    limits::ConnectionSlot,
    metrics::RequestMetrics,
    upstream::{Backend, UpstreamResponseBody},
};

/// A response body: the endpoint's, or one the proxy wrote; counted for the access log, and
/// in its backend's request metrics when it drops (after its last byte, or when abandoned).
pub(crate) struct ProxyBody {
    kind: BodyKind,
    pub(super) record: Option<Box<AccessRecord>>,
    pub(super) tally: Option<Tally>,
    /// The request's place in its client's `limit-connections`, freed when the body drops.
    pub(super) slot: Option<ConnectionSlot>,
    /// The client connection the response goes to: its request ends when this body drops.
    connection: Option<Arc<ConnectionInfo>>,
    /// An HTTP/2 response (its stream is counted in the connection's `life`).
    http2: bool,
    /// HTTP/2: handed hyper data and not asked for more since (waiting for the client's window).
    h2_waiting: bool,
}

/// Where a response is counted, and what with.
pub(super) struct Tally {
    pub(super) counter: Counted,
    pub(super) status: u16,
    pub(super) started: Instant,
    /// `--metrics-compat nginx` only: the request as ingress-nginx's families count it.
    pub(super) nginx: Option<NginxTally>,
}

/// A request in ingress-nginx's families: everything but the response's body bytes and end is
/// known when the response starts; the counters are its route's series (or the unrouted ones).
pub(super) struct NginxTally {
    pub(super) counters: Arc<SeriesCounters>,
    pub(super) canary: bool,
    pub(super) method: usize,
    pub(super) request_bytes: u64,
    /// The response's status line and headers (as HTTP/1.1 would write them), then its body
    /// bytes as they go out.
    pub(super) response_bytes: u64,
    /// When the request was sent to an endpoint that answered.
    pub(super) upstream_started: Option<Instant>,
    /// From then to the endpoint's response head.
    pub(super) upstream_latency: Option<std::time::Duration>,
}

impl NginxTally {
    /// Notes the endpoint's response head as received now (when an endpoint answered).
    pub(super) fn with_head_received(mut self) -> Self {
        self.upstream_latency = self.upstream_started.map(|started| started.elapsed());
        self
    }
}

/// The counters a response goes to. The routed case keeps the request's own reference to its
/// backend rather than cloning the counters' `Arc`: two atomic operations fewer per request.
pub(super) enum Counted {
    Backend(Arc<Backend>),
    Unrouted(Arc<RequestMetrics>),
}

enum BodyKind {
    Full(Option<Bytes>),
    Upstream(UpstreamResponseBody),
}

impl ProxyBody {
    fn new(kind: BodyKind) -> Self {
        Self {
            kind,
            record: None,
            tally: None,
            slot: None,
            connection: None,
            http2: false,
            h2_waiting: false,
        }
    }

    /// A body the proxy wrote itself.
    pub(super) fn full(bytes: Bytes) -> Self {
        Self::new(BodyKind::Full(Some(bytes)))
    }

    /// No body (a `101` answer: the bytes that follow belong to the new protocol).
    pub(super) fn empty() -> Self {
        Self::new(BodyKind::Full(None))
    }

    /// The endpoint's body, streamed.
    pub(super) fn upstream(body: UpstreamResponseBody) -> Self {
        Self::new(BodyKind::Upstream(body))
    }

    /// Ties the body to the client connection its request came on: the request ends (for
    /// parking, or as an HTTP/2 stream) when the body drops.
    pub(super) fn end_request_on_drop(&mut self, connection: Arc<ConnectionInfo>, http2: bool) {
        if http2 && !self.is_end_stream() {
            // hyper asks an HTTP/2 body for data only when the client's window has room: until it
            // asks, the response waits for the client (with a window of 0, for ever).
            connection.life.h2_handed_data();
            self.h2_waiting = true;
        }
        self.http2 = http2;
        self.connection = Some(connection);
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        if let Some(connection) = &self.connection {
            if !self.http2 {
                connection.http1_state.request_done();
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
            let elapsed = tally.started.elapsed();
            metrics.record(tally.status, elapsed);
            if let Some(nginx) = &tally.nginx {
                nginx.counters.record(&Observation {
                    canary: nginx.canary,
                    method: nginx.method,
                    status: tally.status,
                    duration: elapsed,
                    upstream: nginx.upstream_started.map(|started| started.elapsed()),
                    upstream_latency: nginx.upstream_latency,
                    request_bytes: nginx.request_bytes,
                    response_bytes: nginx.response_bytes,
                });
            }
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

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
        if let (
            Some(Tally {
                nginx: Some(nginx), ..
            }),
            Poll::Ready(Some(Ok(frame))),
        ) = (&mut this.tally, &polled)
        {
            if let Some(data) = frame.data_ref() {
                nginx.response_bytes += data.len() as u64;
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
