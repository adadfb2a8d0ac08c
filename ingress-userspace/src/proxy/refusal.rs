//! The answers the proxy gives itself. Every reason a request is not forwarded, or not
//! successfully, is a [`Refusal`], and [`Refusal::into_response`] is the one place that turns it
//! into a status, a short plain-text body and headers: the request path only says what went
//! wrong. The texts are part of the proxy's behaviour (clients, operators and tests read them).
//! hyper answers two cases itself, before a request reaches us: 400 for a malformed request and
//! 431 for a head above `--max-header-bytes`.
//!
//! A gRPC client reads no HTTP status or body: for gRPC requests (HTTP/2, `application/grpc`)
//! [`Refusal::into_grpc_response`] gives the same refusal as a trailers-only gRPC response
//! (HTTP 200, `grpc-status` and `grpc-message` in the only HEADERS frame), with the codes of
//! gRPC's HTTP-to-gRPC mapping (503/502 → 14 UNAVAILABLE, 404 → 12 UNIMPLEMENTED, 400 → 13
//! INTERNAL) and 4 DEADLINE_EXCEEDED for both timeouts, as Envoy answers.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use super::{
    body::ProxyBody,
    path::PathError,
    upstream::{
        grpc::{self, GrpcStatus},
        BodyTimeout, BodyTooLarge, ClientBodyError,
    },
};

/// Why the proxy answers a request itself.
#[derive(Debug)]
pub(super) enum Refusal {
    /// The head carried both `Content-Length` and `Transfer-Encoding` (the head guard saw it).
    Smuggling,
    /// An Ingress routes requests; it is no forward proxy (nginx answers 405 too).
    Connect,
    /// A path that cannot be normalised safely (see `path`).
    BadPath(PathError),
    /// HTTP/1.1 must send Host (RFC 9112 §3.2).
    NoHost,
    InvalidHost,
    NoRoute,
    /// The backend has no endpoints: why, as the translator recorded it.
    NoEndpoints(Option<Bytes>),
    /// The body exceeds `--max-body-bytes`, declared or counted.
    TooLarge,
    /// The normalised path and the query make no valid request target.
    InvalidPath,
    /// No endpoint could be connected: the last error.
    Unreachable(String),
    /// The endpoint took too long: connecting, taking the request body (`proxy-send-timeout`)
    /// or answering (`proxy-read-timeout`, `--upstream-response-timeout`).
    UpstreamTimeout,
    /// The client's body could not be read (broken chunked framing, the client gone): the
    /// client's error, not the endpoint's.
    ClientBody(String),
    /// The client's body stopped arriving for `--client-body-timeout`.
    BodyTimeout,
    /// The exchange with the endpoint failed after sending: its chain of causes.
    UpstreamFailed(String),
    /// A `101` to a request we did not upgrade, or naming a protocol that is not allowed.
    UnaskedSwitch,
    /// gRPC over HTTP/1.x to a gRPC backend: gRPC needs HTTP/2 end to end (its status travels in
    /// trailers, which HTTP/1.1 clients do not read). 505: the server refuses the request's
    /// major HTTP version (RFC 9110 §15.6.6); 426 would need an `Upgrade` we do not offer.
    GrpcOverHttp1,
    /// The call's `grpc-timeout` passed before the upstream answered.
    DeadlineExceeded,
}

impl Refusal {
    /// 413 when our body limit stopped the upload, 408 when the client's body stalled, a 400 when
    /// it could not be read, else 502 naming the cause.
    pub(super) fn from_send_error(error: &hyper::Error) -> Self {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
        let mut causes = Vec::new();
        while let Some(cause) = source {
            if cause.is::<BodyTooLarge>() {
                return Self::TooLarge;
            }
            if let Some(client_error) = cause.downcast_ref::<ClientBodyError>() {
                return Self::ClientBody(client_error.to_string());
            }
            if cause.is::<BodyTimeout>() {
                return Self::BodyTimeout;
            }
            causes.push(cause.to_string());
            source = cause.source();
        }
        Self::UpstreamFailed(causes.join(": "))
    }

    /// After these, nothing sensible can follow on the connection: the answer carries
    /// `Connection: close`, and hyper closes it.
    fn closes_connection(&self) -> bool {
        // A smuggling attempt's framing cannot be trusted; after CONNECT a client may already
        // be sending tunnel bytes; a body that lost its framing cannot be skipped; the rest of a
        // stalled body may still come.
        matches!(
            self,
            Self::Smuggling | Self::Connect | Self::ClientBody(_) | Self::BodyTimeout
        )
    }

    /// The answer: status, `Content-Type: text/plain; charset=utf-8`, the text, and
    /// `Connection: close` where the connection cannot go on.
    pub(super) fn into_response(self) -> Response<ProxyBody> {
        let close = self.closes_connection();
        let (status, text) = self.answer();
        let mut response = Response::new(ProxyBody::full(text));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }

    /// The status and the text.
    fn answer(self) -> (StatusCode, Bytes) {
        match self {
            Self::Smuggling => (
                StatusCode::BAD_REQUEST,
                fixed("400 Bad Request: both Content-Length and Transfer-Encoding\n"),
            ),
            Self::Connect => (
                StatusCode::METHOD_NOT_ALLOWED,
                fixed("405 Method Not Allowed: CONNECT is not proxied\n"),
            ),
            Self::BadPath(error) => (
                StatusCode::BAD_REQUEST,
                Bytes::from(format!("400 Bad Request: {error}\n")),
            ),
            Self::NoHost => (StatusCode::BAD_REQUEST, fixed("400 Bad Request: no Host\n")),
            Self::InvalidHost => (
                StatusCode::BAD_REQUEST,
                fixed("400 Bad Request: invalid Host\n"),
            ),
            Self::NoRoute => (
                StatusCode::NOT_FOUND,
                fixed("404 Not Found: no Ingress rule matches this host and path\n"),
            ),
            Self::NoEndpoints(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                why.unwrap_or_else(|| fixed("503 Service Unavailable\n")),
            ),
            Self::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                fixed("413 Content Too Large: the request body exceeds the limit\n"),
            ),
            Self::InvalidPath => (
                StatusCode::BAD_REQUEST,
                fixed("400 Bad Request: invalid path\n"),
            ),
            Self::Unreachable(why) | Self::UpstreamFailed(why) => (
                StatusCode::BAD_GATEWAY,
                Bytes::from(format!("502 Bad Gateway: {why}\n")),
            ),
            Self::UpstreamTimeout => (
                StatusCode::GATEWAY_TIMEOUT,
                fixed("504 Gateway Timeout: the upstream did not answer in time\n"),
            ),
            Self::ClientBody(why) => (
                StatusCode::BAD_REQUEST,
                Bytes::from(format!("400 Bad Request: {why}\n")),
            ),
            Self::BodyTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                fixed("408 Request Timeout: the request body stopped arriving\n"),
            ),
            Self::UnaskedSwitch => (
                StatusCode::BAD_GATEWAY,
                fixed(
                    "502 Bad Gateway: the upstream switched to a protocol that was not asked for\n",
                ),
            ),
            Self::GrpcOverHttp1 => (
                StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                fixed("505 HTTP Version Not Supported: gRPC needs HTTP/2 to this backend\n"),
            ),
            Self::DeadlineExceeded => (
                StatusCode::GATEWAY_TIMEOUT,
                fixed("504 Gateway Timeout: the call's deadline (grpc-timeout) passed before the upstream answered\n"),
            ),
        }
    }
}

impl Refusal {
    /// The answer to a gRPC request: a trailers-only response (HTTP 200, no body) whose
    /// `grpc-status` follows gRPC's mapping of the HTTP status we would have answered, and
    /// whose `grpc-message` is the same text; with that HTTP status, which metrics and the
    /// access log count.
    pub(super) fn into_grpc_response(self) -> (Response<ProxyBody>, StatusCode) {
        let deadline = matches!(
            self,
            Self::UpstreamTimeout | Self::DeadlineExceeded | Self::BodyTimeout
        );
        let (http_status, text) = self.answer();
        let status = match http_status {
            _ if deadline => GrpcStatus::DeadlineExceeded,
            StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::BAD_GATEWAY
            | StatusCode::GATEWAY_TIMEOUT
            | StatusCode::TOO_MANY_REQUESTS => GrpcStatus::Unavailable,
            StatusCode::NOT_FOUND => GrpcStatus::Unimplemented,
            StatusCode::PAYLOAD_TOO_LARGE => GrpcStatus::ResourceExhausted,
            StatusCode::BAD_REQUEST => GrpcStatus::Internal,
            _ => GrpcStatus::Unknown,
        };
        let message = grpc::grpc_message(&String::from_utf8_lossy(&text));
        let mut response = Response::new(ProxyBody::empty());
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert(grpc::GRPC_STATUS, HeaderValue::from(status as u16));
        headers.insert(grpc::GRPC_MESSAGE, message);
        (response, http_status)
    }
}

fn fixed(text: &'static str) -> Bytes {
    Bytes::from_static(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use http_body::Body as _;
    use http_body_util::BodyExt;

    use super::*;

    #[tokio::test]
    async fn every_text_starts_with_its_status_and_only_broken_framing_closes() {
        let refusals = [
            Refusal::Smuggling,
            Refusal::Connect,
            Refusal::NoHost,
            Refusal::InvalidHost,
            Refusal::NoRoute,
            Refusal::NoEndpoints(None),
            Refusal::TooLarge,
            Refusal::InvalidPath,
            Refusal::Unreachable("connection refused".into()),
            Refusal::UpstreamTimeout,
            Refusal::ClientBody("broken chunk".into()),
            Refusal::BodyTimeout,
            Refusal::UpstreamFailed("connection reset".into()),
            Refusal::UnaskedSwitch,
            Refusal::GrpcOverHttp1,
            Refusal::DeadlineExceeded,
        ];
        for refusal in refusals {
            let name = format!("{refusal:?}");
            let closes = refusal.closes_connection();
            let response = refusal.into_response();
            let status = response.status();
            assert_eq!(
                response.headers()[header::CONTENT_TYPE],
                "text/plain; charset=utf-8",
                "{name}"
            );
            assert_eq!(
                response.headers().get(header::CONNECTION).is_some(),
                closes,
                "{name}"
            );
            let text = response.into_body().collect().await.map(|b| b.to_bytes());
            let text = text.unwrap_or_default();
            assert!(
                text.starts_with(status.as_str().as_bytes()) && text.ends_with(b"\n"),
                "{name}: {text:?}"
            );
        }
    }

    #[tokio::test]
    async fn grpc_refusals_are_trailers_only_with_the_mapped_status() {
        for (refusal, code) in [
            (Refusal::NoEndpoints(None), "14"),
            (Refusal::Unreachable("connection refused".into()), "14"),
            (Refusal::UpstreamFailed("reset".into()), "14"),
            (Refusal::UpstreamTimeout, "4"),
            (Refusal::DeadlineExceeded, "4"),
            (Refusal::NoRoute, "12"),
            (Refusal::TooLarge, "8"),
            (Refusal::InvalidHost, "13"),
        ] {
            let name = format!("{refusal:?}");
            let (response, counted_as) = refusal.into_grpc_response();
            assert!(
                counted_as.as_u16() >= 400,
                "{name}: counted as {counted_as}"
            );
            assert_eq!(response.status(), StatusCode::OK, "{name}");
            let headers = response.headers();
            assert_eq!(headers[header::CONTENT_TYPE], "application/grpc", "{name}");
            assert_eq!(headers["grpc-status"], code, "{name}");
            let message = headers["grpc-message"].to_str().unwrap().to_string();
            assert!(
                !message.is_empty() && !message.ends_with('\n'),
                "{name}: {message}"
            );
            assert!(response.body().is_end_stream(), "{name}: no body");
        }
    }
}
