//! One try of a request on one endpoint, with the route's timeouts (nginx's
//! `proxy_connect_timeout`, `proxy_send_timeout` between two writes of the request, and
//! `proxy_read_timeout` from the request sent to the response head), and what a try that failed
//! says about trying the next endpoint (nginx's `proxy_next_upstream` conditions). What can be
//! sent again after it reached an endpoint is a [`Replay`]: the head of a request without a
//! body (a streamed body is gone once sent).

use std::{future::Future, pin::pin};

use http::{Method, Request, Response};
use hyper::body::Incoming;
use tokio::time::{Duration, Instant};

use crate::translate::l7::routes::limits::NextUpstream;

use super::super::{
    metrics::RequestMetrics,
    refusal::Refusal,
    upstream::{ConnectError, Endpoint, SendProgress, Sender, UpstreamBody},
};

/// The route's timeouts for one request, resolved against the proxy's flags.
#[derive(Clone, Copy, Debug)]
pub(super) struct Timeouts {
    pub(super) connect: Duration,
    pub(super) send: Duration,
    pub(super) read: Duration,
    /// Pooled connections idle longer are not used.
    pub(super) idle: Duration,
}

/// What sending a request to one endpoint came to.
pub(super) enum Sent {
    /// The endpoint answered (the connection comes along, to be pooled again).
    Answered(Response<Incoming>, Sender),
    /// No connection could carry it; the request comes back unsent, with the refusal it
    /// would be and its `proxy_next_upstream` condition (error, or timeout connecting).
    Unsent(Request<UpstreamBody>, Refusal, NextUpstream),
    /// Sent, then failed: what to tell the client, and the condition it is for trying the next
    /// endpoint (`None`: the client's fault, never tried again).
    Failed(Refusal, Option<NextUpstream>),
}

/// The head of a request without a body, kept to send it again to another endpoint after one
/// failed it (only routes whose `proxy-next-upstream` can try again keep it).
pub(super) struct Replay {
    method: Method,
    uri: http::Uri,
    version: http::Version,
    headers: http::HeaderMap,
}

impl Replay {
    /// The head of `request`, when it can be sent again at all: no body, no upgrade, and an
    /// idempotent method unless `non_idempotent` is set (nginx's rule).
    pub(super) fn of(
        request: &Request<UpstreamBody>,
        next_upstream: NextUpstream,
        upgrade: bool,
    ) -> Option<Self> {
        let idempotent = !matches!(request.method().as_str(), "POST" | "LOCK" | "PATCH");
        let replayable = http_body::Body::is_end_stream(request.body())
            && !upgrade
            && (idempotent || next_upstream.has(NextUpstream::NON_IDEMPOTENT));
        replayable.then(|| Self {
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            headers: request.headers().clone(),
        })
    }

    /// The request again.
    pub(super) fn request(&self) -> Request<UpstreamBody> {
        let mut request = Request::new(UpstreamBody::empty());
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers.clone();
        request
    }
}

/// Sends `request` to `endpoint` over a pooled or new connection and waits for the response head
/// within the timeouts.
pub(super) async fn send(
    endpoint: &Endpoint,
    request: Request<UpstreamBody>,
    timeouts: Timeouts,
    progress: Option<&SendProgress>,
    metrics: &RequestMetrics,
) -> Sent {
    // Boxed: connecting is rare (most requests take a pooled connection), and inline its state
    // would add about 350 bytes to every request's future, which is moved and copied whole.
    let connect = || async {
        let connected = Box::pin(endpoint.connect(timeouts.connect)).await;
        if connected.is_err() {
            metrics.connect_error();
        }
        connected
    };
    let (mut sender, mut fresh) = match endpoint.pooled(timeouts.idle) {
        Some(sender) => (sender, false),
        None => match connect().await {
            Ok(sender) => (sender, true),
            Err(error) => return unsent(request, &error),
        },
    };
    let mut request = request;
    loop {
        if let Some(progress) = progress {
            progress.sent_frame();
        }
        let attempt = sender.try_send_request(request);
        let error = match wait_for_head(attempt, progress, timeouts).await {
            None => return Sent::Failed(Refusal::UpstreamTimeout, Some(NextUpstream::TIMEOUT)),
            Some(Ok(response)) => return Sent::Answered(response, sender),
            Some(Err(error)) => error,
        };
        let mut error = error;
        match error.take_message() {
            // A pooled connection closed before the request went out (the endpoint's keep-alive
            // timeout raced us): same endpoint, new connection.
            Some(unsent) if !fresh => {
                metrics.retry();
                match connect().await {
                    Ok(new_sender) => {
                        sender = new_sender;
                        fresh = true;
                        request = unsent;
                    }
                    Err(connect_error) => return self::unsent(unsent, &connect_error),
                }
            }
            Some(unsent) => {
                let why = error.into_error().to_string();
                return Sent::Unsent(unsent, Refusal::Unreachable(why), NextUpstream::ERROR);
            }
            None => {
                let error = error.into_error();
                let refusal = Refusal::from_send_error(&error);
                let condition = match &refusal {
                    Refusal::UpstreamFailed(_) if error.is_parse() => {
                        Some(NextUpstream::INVALID_HEADER)
                    }
                    Refusal::UpstreamFailed(_) => Some(NextUpstream::ERROR),
                    _ => None,
                };
                return Sent::Failed(refusal, condition);
            }
        }
    }
}

/// A connection that could not be had: 504 for a connect timeout (nginx's answer), else 502.
fn unsent(request: Request<UpstreamBody>, error: &ConnectError) -> Sent {
    match error {
        ConnectError::Timeout(_) => {
            Sent::Unsent(request, Refusal::UpstreamTimeout, NextUpstream::TIMEOUT)
        }
        other => Sent::Unsent(
            request,
            Refusal::Unreachable(other.to_string()),
            NextUpstream::ERROR,
        ),
    }
}

/// The response head, or `None` when the endpoint took too long: the send timeout while the
/// body is being written (from the last write), the read timeout once it is out (from then), or
/// for a request without a body, the read timeout from now. While the body waits for the
/// client, no endpoint timeout runs (the client's body timeout does).
async fn wait_for_head<F: Future>(
    attempt: F,
    progress: Option<&SendProgress>,
    timeouts: Timeouts,
) -> Option<F::Output> {
    let Some(progress) = progress else {
        return tokio::time::timeout(timeouts.read, attempt).await.ok();
    };
    let mut attempt = pin!(attempt);
    loop {
        let deadline = progress.deadline(timeouts.send, timeouts.read);
        // Waiting for the client: look again after a send timeout's worth.
        let wake = deadline.unwrap_or_else(|| Instant::now() + timeouts.send);
        tokio::select! {
            output = &mut attempt => return Some(output),
            () = tokio::time::sleep_until(wake) => {
                // The body may have moved meanwhile: only its current deadline counts.
                if progress
                    .deadline(timeouts.send, timeouts.read)
                    .is_some_and(|at| at <= Instant::now())
                {
                    return None;
                }
            }
        }
    }
}
