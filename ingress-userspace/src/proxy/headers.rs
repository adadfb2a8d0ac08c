//! Header rules between client and upstream: hop-by-hop headers removed both ways, the
//! `X-Forwarded-*` family and `X-Real-IP` set, `X-Request-ID` added when absent, `Host` kept.
//!
//! Values that depend only on the connection (the client's address, the scheme, the listener's
//! port) are built once per connection in [`ConnectionHeaders`]; per request only the
//! `X-Forwarded-For` append and a missing request id allocate.

use std::{
    net::IpAddr,
    sync::atomic::{AtomicU64, Ordering},
};

use http::{
    header::{self, HeaderName, HeaderValue},
    HeaderMap,
};

/// `X-Forwarded-For`.
pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub(crate) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `X-Forwarded-Port`.
pub(crate) static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
/// `X-Real-IP`.
pub(crate) static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
/// `X-Request-ID`.
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// What a connection adds to each of its requests, computed when it is accepted.
#[derive(Clone, Debug)]
pub(crate) struct ConnectionHeaders {
    /// The client's address (for `X-Real-IP` and the `X-Forwarded-For` append).
    pub client_ip: HeaderValue,
    /// `http` or `https`.
    pub proto: HeaderValue,
    /// The port the client connected to.
    pub port: HeaderValue,
}

impl ConnectionHeaders {
    /// Headers for a connection from `client` to a listener on `port`.
    pub(crate) fn new(client: IpAddr, tls: bool, port: u16) -> Self {
        Self {
            client_ip: HeaderValue::from_str(&client.to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            proto: HeaderValue::from_static(if tls { "https" } else { "http" }),
            port: HeaderValue::from(port),
        }
    }
}

/// Whether the request asks for a protocol upgrade (WebSocket): `Connection: upgrade` and an
/// `Upgrade` header, on HTTP/1.1.
pub(crate) fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| connection_tokens(v).any(|t| t.eq_ignore_ascii_case("upgrade")))
}

/// Whether every protocol the request's `Upgrade` header offers (or the one a `101` answer names)
/// is in `allowed` (lower-case names, version suffixes such as `/13` ignored). `h2c` never is:
/// after it the connection would be HTTP/2 that no routing rule sees.
pub(crate) fn upgrade_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let mut offered = headers
        .get_all(header::UPGRADE)
        .iter()
        .flat_map(connection_tokens)
        .peekable();
    offered.peek().is_some()
        && offered.all(|token| {
            let name = token.split_once('/').map_or(token, |(name, _)| name).trim();
            !name.eq_ignore_ascii_case("h2c")
                && allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
        })
}

/// Joins several `cookie` fields into one with `; ` (RFC 9113 §8.2.3): HTTP/2 clients may split
/// cookies into fields, HTTP/1.1 endpoints expect one `Cookie` line.
pub(crate) fn join_cookies(headers: &mut HeaderMap) {
    let mut fields = headers.get_all(header::COOKIE).iter();
    if fields.nth(1).is_none() {
        return;
    }
    let mut joined = Vec::new();
    for value in headers.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(value.as_bytes());
    }
    // Joined valid field values with `; ` between them are a valid value.
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

/// Removes request headers whose names contain `_`, as nginx does by default
/// (`underscores_in_headers off`): endpoints that read `_` as `-` (CGI-style frameworks) would
/// take a client's `X_Real_IP` for the `X-Real-IP` the proxy sets. Allocates only when there is
/// one.
pub(crate) fn remove_underscore_headers(headers: &mut HeaderMap) {
    if !headers.keys().any(|name| name.as_str().contains('_')) {
        return;
    }
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().contains('_'))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

fn connection_tokens(value: &HeaderValue) -> impl Iterator<Item = &str> {
    value
        .to_str()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes hop-by-hop headers: `Connection` and every header it lists, `Keep-Alive`,
/// `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding` (hyper frames each hop itself) and
/// `Upgrade`. With `upgrade`, `Upgrade` stays and `Connection: upgrade` is set, so the upgrade
/// reaches the other side.
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    if headers.contains_key(header::CONNECTION) {
        // The listed names are borrowed from the values; take the values out first.
        let listed: Vec<HeaderValue> = headers
            .get_all(header::CONNECTION)
            .iter()
            .cloned()
            .collect();
        headers.remove(header::CONNECTION);
        for value in &listed {
            for token in connection_tokens(value) {
                if upgrade && token.eq_ignore_ascii_case("upgrade") {
                    continue;
                }
                if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                    headers.remove(name);
                }
            }
        }
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(header::TE);
    headers.remove(header::TRAILER);
    headers.remove(header::TRANSFER_ENCODING);
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// Sets the forwarding headers on a request going upstream. `host` is the request's host as the
/// proxy routed it (Host header, or the URI's authority: HTTP/2 `:authority`, absolute-form);
/// it becomes `Host`, which for an ordinary HTTP/1.1 request is the Host the client sent.
pub(crate) fn set_forwarding_headers(
    headers: &mut HeaderMap,
    connection: &ConnectionHeaders,
    host: Option<&HeaderValue>,
    request_ids: &RequestIds,
) {
    let forwarded_for = match headers.get(&X_FORWARDED_FOR) {
        Some(existing) => {
            let mut value = Vec::with_capacity(existing.len() + 2 + connection.client_ip.len());
            value.extend_from_slice(existing.as_bytes());
            value.extend_from_slice(b", ");
            value.extend_from_slice(connection.client_ip.as_bytes());
            HeaderValue::from_maybe_shared(bytes::Bytes::from(value))
                .unwrap_or_else(|_| connection.client_ip.clone())
        }
        None => connection.client_ip.clone(),
    };
    headers.insert(X_FORWARDED_FOR.clone(), forwarded_for);
    headers.insert(X_REAL_IP.clone(), connection.client_ip.clone());
    headers.insert(X_FORWARDED_PROTO.clone(), connection.proto.clone());
    headers.insert(X_FORWARDED_PORT.clone(), connection.port.clone());
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST.clone(), host.clone());
        headers.insert(header::HOST, host.clone());
    }
    if !headers.contains_key(&X_REQUEST_ID) {
        headers.insert(X_REQUEST_ID.clone(), request_ids.next());
    }
}

/// What a client behind a trusted L7 load balancer sent (ingress-nginx's
/// `use-forwarded-headers: true`): its `X-Forwarded-Proto`, `-Host` and `-Port` reach the
/// backend as sent, and the client is the first address of `X-Forwarded-For` (nginx's realip
/// module with every address trusted and `real_ip_recursive on`).
pub(crate) struct TrustedForwarded {
    proto: Option<HeaderValue>,
    host: Option<HeaderValue>,
    port: Option<HeaderValue>,
    client: Option<HeaderValue>,
}

impl TrustedForwarded {
    /// Reads them from the client's request (reference-counted copies, no allocation).
    pub(crate) fn read(headers: &HeaderMap) -> Self {
        // `X-Real-IP` as nginx renders `$remote_addr` (one small allocation, only when trusted).
        let client = headers
            .get(&X_FORWARDED_FOR)
            .and_then(forwarded_client)
            .and_then(|ip| HeaderValue::from_str(&ip.to_string()).ok());
        Self {
            proto: headers.get(&X_FORWARDED_PROTO).cloned(),
            host: headers.get(&X_FORWARDED_HOST).cloned(),
            port: headers.get(&X_FORWARDED_PORT).cloned(),
            client,
        }
    }

    /// Puts them back over what [`set_forwarding_headers`] set.
    pub(crate) fn apply(self, headers: &mut HeaderMap) {
        for (name, value) in [
            (&X_FORWARDED_PROTO, self.proto),
            (&X_FORWARDED_HOST, self.host),
            (&X_FORWARDED_PORT, self.port),
            (&X_REAL_IP, self.client),
        ] {
            if let Some(value) = value {
                headers.insert(name.clone(), value);
            }
        }
    }
}

/// The client a trusted `X-Forwarded-For` names: its first address.
pub(crate) fn forwarded_client(value: &HeaderValue) -> Option<IpAddr> {
    let first = value.to_str().ok()?.split(',').next()?.trim();
    first.parse().ok()
}

/// Whether a trusted `X-Forwarded-Proto` says HTTPS; `None` when absent.
pub(crate) fn forwarded_https(headers: &HeaderMap) -> Option<bool> {
    headers
        .get(&X_FORWARDED_PROTO)
        .map(|proto| proto.as_bytes().eq_ignore_ascii_case(b"https"))
}

/// Request ids: 32 hex digits, unique per process (a random start, then a counter mixed through
/// a bijective hash so consecutive ids do not look consecutive).
#[derive(Debug)]
pub(crate) struct RequestIds {
    seed: u64,
    counter: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        // The address of a stack value and the time are enough to tell processes apart; the ids
        // are for correlation, not secrets.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let local = 0u8;
        let seed = mix(now ^ (&local as *const u8 as u64) ^ u64::from(std::process::id()));
        Self {
            seed,
            counter: AtomicU64::new(0),
        }
    }
}

impl RequestIds {
    /// The next id.
    pub(crate) fn next(&self) -> HeaderValue {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let high = self.seed;
        let low = mix(n ^ self.seed.rotate_left(17));
        let text = format!("{high:016x}{low:016x}");
        HeaderValue::from_maybe_shared(bytes::Bytes::from(text))
            .unwrap_or_else(|_| HeaderValue::from_static("0"))
    }
}

/// splitmix64's finaliser: a bijection on u64.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_lists_are_removed() {
        let mut headers = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("connection", "foo"),
            ("x-secret", "1"),
            ("foo", "2"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-kept", "yes"),
            ("host", "example.com"),
        ]);
        remove_hop_by_hop(&mut headers, false);
        let mut names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["host", "x-kept"]);
    }

    #[test]
    fn upgrade_survives_when_upgrading() {
        let mut headers = map(&[
            ("connection", "Upgrade, x-other"),
            ("upgrade", "websocket"),
            ("x-other", "1"),
            ("sec-websocket-key", "abc"),
        ]);
        assert!(is_upgrade_request(&headers));
        remove_hop_by_hop(&mut headers, true);
        assert_eq!(headers["upgrade"], "websocket");
        assert_eq!(headers["connection"], "upgrade");
        assert!(!headers.contains_key("x-other"));
        assert_eq!(headers["sec-websocket-key"], "abc");
        assert!(!is_upgrade_request(&map(&[("upgrade", "websocket")])));
    }

    #[test]
    fn forwarding_headers() {
        let connection = ConnectionHeaders::new("192.0.2.7".parse().unwrap(), true, 8443);
        let ids = RequestIds::default();
        let host = HeaderValue::from_static("shop.example:8443");
        let mut headers = map(&[
            ("x-forwarded-for", "198.51.100.1"),
            ("x-real-ip", "spoofed"),
        ]);
        set_forwarding_headers(&mut headers, &connection, Some(&host), &ids);
        assert_eq!(headers["x-forwarded-for"], "198.51.100.1, 192.0.2.7");
        assert_eq!(headers["x-real-ip"], "192.0.2.7");
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(headers["x-forwarded-port"], "8443");
        assert_eq!(headers["x-forwarded-host"], "shop.example:8443");
        assert_eq!(
            headers["host"], "shop.example:8443",
            "HTTP/2 requests get a Host"
        );
        let id = headers["x-request-id"].to_str().unwrap().to_string();
        assert_eq!(id.len(), 32);

        let mut again = map(&[("x-request-id", "mine"), ("host", "a.example")]);
        let routed = HeaderValue::from_static("a.example");
        set_forwarding_headers(&mut again, &connection, Some(&routed), &ids);
        assert_eq!(again["x-request-id"], "mine", "an existing id is kept");
        assert_eq!(
            again["host"], "a.example",
            "Host reaches the backend unchanged"
        );

        assert_ne!(ids.next(), ids.next());
    }
}
