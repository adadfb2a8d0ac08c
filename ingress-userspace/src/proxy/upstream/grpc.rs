//! What gRPC (and HTTP/2 to backends) asks of the request path: recognising a gRPC request,
//! shaping a request for an HTTP/2 endpoint (`:scheme`, `:authority`, `te: trailers`), the
//! `grpc-timeout` deadline, and the `grpc-status` / `grpc-message` the proxy writes itself.
//! Only gRPC requests and requests to HTTP/2 backends pay for any of it.

use std::time::Duration;

use bytes::{BufMut as _, Bytes, BytesMut};
use http::{
    header, request::Parts, uri::Authority, HeaderMap, HeaderName, HeaderValue, Uri, Version,
};

/// `grpc-status`.
pub(crate) const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// `grpc-message`.
pub(crate) const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
/// `grpc-timeout`.
const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// gRPC status codes the proxy answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GrpcStatus {
    /// 2: a failure with no better code.
    Unknown = 2,
    /// 4: the deadline expired (`grpc-timeout`, or the upstream response timeout).
    DeadlineExceeded = 4,
    /// 8: the request body exceeds the limit.
    ResourceExhausted = 8,
    /// 12: no route for the method (HTTP 404 in gRPC's mapping).
    Unimplemented = 12,
    /// 13: a broken request (HTTP 400 in gRPC's mapping).
    Internal = 13,
    /// 14: no endpoint, or none could be reached.
    Unavailable = 14,
}

/// Whether a request (or response) carries gRPC: `content-type: application/grpc` or
/// `application/grpc+proto` etc. (not gRPC-Web, which HTTP/1.1 can carry).
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .map(HeaderValue::as_bytes)
        .is_some_and(|value| {
            value.starts_with(b"application/grpc")
                && matches!(value.get(16), None | Some(b'+' | b';'))
        })
}

/// The request's `grpc-timeout` (`1..=8` digits and a unit, H M S m u n), if valid. An invalid
/// one is ignored, as gRPC servers do.
pub(crate) fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(GRPC_TIMEOUT)?.as_bytes();
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let amount: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(amount.saturating_mul(3600)),
        b'M' => Duration::from_secs(amount.saturating_mul(60)),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Makes `parts` (already origin-form, hop-by-hop headers removed) an HTTP/2 request: an
/// absolute URI with `scheme` and the request's `host` as `:authority` (h2 requires
/// `:scheme`), and `te: trailers`, which gRPC servers may insist on and nginx's `grpc_pass`
/// always sends.
pub(crate) fn http2_request(
    parts: &mut Parts,
    scheme: http::uri::Scheme,
    host: Option<&HeaderValue>,
) {
    parts.version = Version::HTTP_2;
    let authority = host.and_then(|h| Authority::try_from(h.as_bytes()).ok());
    if let Some(authority) = authority {
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.scheme = Some(scheme);
        uri.authority = Some(authority);
        // Valid: an origin-form path and query with a scheme and an authority.
        if let Ok(absolute) = Uri::from_parts(uri) {
            parts.uri = absolute;
        }
        // `:authority` says it; a second, possibly different, Host is not sent.
        parts.headers.remove(header::HOST);
    }
    parts
        .headers
        .insert(header::TE, HeaderValue::from_static("trailers"));
}

/// `text` as a `grpc-message` value: percent-encoded outside printable ASCII, and `%`, as the
/// gRPC HTTP/2 protocol asks.
pub(crate) fn grpc_message(text: &str) -> HeaderValue {
    let text = text.trim();
    let mut encoded = BytesMut::with_capacity(text.len());
    for &byte in text.as_bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            encoded.put_u8(byte);
        } else {
            encoded.put_slice(format!("%{byte:02X}").as_bytes());
        }
    }
    // Only printable ASCII is left.
    HeaderValue::from_maybe_shared(Bytes::from(encoded))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The trailers of a response the proxy cut short: `grpc-status` and `grpc-message`.
pub(crate) fn status_trailers(status: GrpcStatus, message: &str) -> HeaderMap {
    let mut trailers = HeaderMap::with_capacity(2);
    trailers.insert(GRPC_STATUS, HeaderValue::from(status as u16));
    trailers.insert(GRPC_MESSAGE, grpc_message(message));
    trailers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn recognises_grpc_content_types_only() {
        for (value, grpc) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("application/grpc;charset=utf-8", true),
            ("application/grpc-web", false),
            ("application/grpcx", false),
            ("application/json", false),
        ] {
            assert_eq!(
                is_grpc(&headers(&[("content-type", value)])),
                grpc,
                "{value}"
            );
        }
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn parses_grpc_timeout_units_and_ignores_bad_values() {
        let timeout = |v: &'static str| grpc_timeout(&headers(&[("grpc-timeout", v)]));
        assert_eq!(timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(timeout("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "S", "123456789S", "10", "10s", "-1S", "1.5S"] {
            assert_eq!(timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(grpc_message(" no endpoint: 50% \n"), "no endpoint: 50%25");
        assert_eq!(grpc_message("café"), "caf%C3%A9");
    }

    #[test]
    fn http2_requests_get_scheme_authority_and_te() {
        let (mut parts, ()) = http::Request::builder()
            .uri("/pkg.Svc/Method?x=1")
            .header("host", "grpc.example:8080")
            .body(())
            .unwrap()
            .into_parts();
        http2_request(
            &mut parts,
            http::uri::Scheme::HTTPS,
            Some(&HeaderValue::from_static("grpc.example:8080")),
        );
        assert_eq!(parts.uri, "https://grpc.example:8080/pkg.Svc/Method?x=1");
        assert_eq!(parts.version, Version::HTTP_2);
        assert_eq!(parts.headers.get(header::HOST), None);
        assert_eq!(parts.headers[header::TE], "trailers");
    }
}
