//! The endpoint's response body on its way to the client: its connection pooled again when it
//! was read to the end, a gRPC call's deadline (`grpc-timeout`), and the route's read timeout
//! between two reads (`proxy-read-timeout`).

use std::{
    future::Future as _,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::{grpc, BoxError, Outstanding, Sender};

/// A response body from upstream. When it has been read to the end, its connection goes back to
/// the endpoint's pool and the request stops counting as outstanding.
pub(crate) struct UpstreamResponseBody {
    inner: Incoming,
    connection: Option<Sender>,
    outstanding: Option<Outstanding>,
    /// A gRPC call's deadline (`grpc-timeout`): when it passes before the body ends, the body
    /// ends there with `grpc-status: 4` in trailers.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The deadline passed: nothing more is read.
    cut: bool,
    /// `proxy-read-timeout` between two reads of the body (`None`: none, upgraded bodies).
    read_timeout: Option<Duration>,
    /// Runs from a read that found nothing to the next frame; made on the first such wait.
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
    idle_armed: bool,
}

/// The endpoint sent nothing of its response body for the read timeout.
#[derive(Debug, thiserror::Error)]
#[error("the upstream sent nothing of the response body within the read timeout")]
pub(crate) struct ReadTimeout;

impl UpstreamResponseBody {
    /// Wraps `inner`; `connection` is pooled again at the end (`None` for upgraded connections).
    pub(crate) fn new(
        inner: Incoming,
        connection: Option<Sender>,
        outstanding: Outstanding,
    ) -> Self {
        let mut body = Self {
            inner,
            connection,
            outstanding: Some(outstanding),
            deadline: None,
            cut: false,
            read_timeout: None,
            idle: None,
            idle_armed: false,
        };
        if body.inner.is_end_stream() {
            body.finish();
        }
        body
    }

    /// The same body, cut at `deadline` with `grpc-status: 4` (a gRPC call's `grpc-timeout`).
    pub(crate) fn with_deadline(mut self, deadline: Option<tokio::time::Instant>) -> Self {
        if let Some(at) = deadline.filter(|_| !self.inner.is_end_stream()) {
            self.deadline = Some(Box::pin(tokio::time::sleep_until(at)));
        }
        self
    }

    /// The same body, cut with an error when the endpoint sends nothing for `timeout` while
    /// it is waited for (nginx's `proxy_read_timeout` between two reads).
    pub(crate) fn with_read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = Some(timeout);
        self
    }

    /// Nothing came: arms the read timer on the first wait, tells whether it ran out.
    fn read_timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(timeout) = self.read_timeout else {
            return false;
        };
        if !self.idle_armed {
            self.idle_armed = true;
            let Some(at) = tokio::time::Instant::now().checked_add(timeout) else {
                return false;
            };
            match &mut self.idle {
                Some(idle) => idle.as_mut().reset(at),
                None => self.idle = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
        self.idle
            .as_mut()
            .is_some_and(|idle| idle.as_mut().poll(cx).is_ready())
    }

    fn finish(&mut self) {
        if let Some(outstanding) = self.outstanding.take() {
            if let Some(connection) = self.connection.take() {
                outstanding.endpoint().release(connection);
            }
        }
    }
}

impl Body for UpstreamResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.cut {
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if polled.is_pending() {
            let expired = self
                .deadline
                .as_mut()
                .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
            if expired {
                // The stream is reset when the body drops; the connection is not reused.
                self.cut = true;
                self.connection = None;
                self.outstanding = None;
                return Poll::Ready(Some(Ok(Frame::trailers(grpc::status_trailers(
                    grpc::GrpcStatus::DeadlineExceeded,
                    "xdp-ingress: the call's deadline (grpc-timeout) passed before the upstream finished",
                )))));
            }
            if self.read_timed_out(cx) {
                // The client sees the response cut (as nginx leaves it once the head is out).
                self.cut = true;
                self.connection = None;
                self.outstanding = None;
                return Poll::Ready(Some(Err(Box::new(ReadTimeout))));
            }
        } else {
            self.idle_armed = false;
        }
        match &polled {
            Poll::Ready(None) => self.finish(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.finish(),
            Poll::Ready(Some(Err(_))) => {
                // A broken response: the connection is not reused.
                self.connection = None;
                self.outstanding = None;
            }
            _ => {}
        }
        polled.map(|frame| frame.map(|result| result.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.cut || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
