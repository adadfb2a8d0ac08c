//! The answers the proxy gives itself. Every reason a request is not forwarded, or not
//! successfully, is a [`Refusal`], and [`Refusal::into_response`] is the one place that turns it
//! into a status, a short plain-text body and headers: the request path only says what went
//! wrong. The texts are part of the proxy's behaviour (clients, operators and tests read them).
//! hyper answers two cases itself, before a request reaches us: 400 for a malformed request and
//! 431 for a head above `--max-header-bytes`.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use super::{
    body::ProxyBody,
    path::PathError,
    upstream::{BodyTimeout, BodyTooLarge, ClientBodyError},
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
    /// No response head within `--upstream-response-timeout`.
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
        let (status, text) = match self {
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
        };
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
}

fn fixed(text: &'static str) -> Bytes {
    Bytes::from_static(text.as_bytes())
}

#[cfg(test)]
mod tests {
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
}
