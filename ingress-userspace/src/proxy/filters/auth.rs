//! The auth filters' request-time half: `auth-type: basic` (credentials checked against the
//! plan's users, through its verified-credentials cache; a miss runs the slow hash on tokio's
//! blocking pool, never on a worker) and `auth-url` (one sub-request per request, as
//! ingress-nginx's `auth_request` location sends it, on a process-wide pooled HTTP client).
//!
//! Statuses as nginx gives them: no or wrong credentials → 401 with the realm's challenge; the
//! auth service's 2xx passes (its `auth-response-headers` go to the backend), 401 and 403 are
//! the client's answer (a 401 becomes a 302 to `auth-signin` when set), anything else,
//! including no answer, → 500.

use std::{sync::OnceLock, time::Duration};

use base64::{engine::general_purpose::STANDARD, Engine as _};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Empty;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use ring::hmac;

use super::{redirect, text, ProxyBody};
use crate::translate::l7::routes::auth::{BasicAuth, ExternalAuth, SigninPart};

/// Credentials that were not in the cache: verified off the request path.
pub(in crate::proxy) struct PendingBasic {
    auth: std::sync::Arc<BasicAuth>,
    user: String,
    password: Vec<u8>,
    tag: hmac::Tag,
}

/// Checks the `Authorization` header: `Ok(None)` when the cache knows it, `Ok(Some)` when it
/// must be verified, `Err` with the 401 when it cannot be right. The header stays for an
/// `auth-url` sub-request; the caller removes it before the backend gets the request (nginx:
/// `proxy_set_header Authorization ""`).
pub(super) fn basic(
    auth: &std::sync::Arc<BasicAuth>,
    headers: &HeaderMap,
) -> Result<Option<PendingBasic>, Box<Response<ProxyBody>>> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(Box::new(unauthorized(auth)));
    };
    let tag = auth.tag(value.as_bytes());
    if auth.is_verified(&tag) {
        return Ok(None);
    }
    let decoded = value
        .as_bytes()
        .split_at_checked(6)
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case(b"basic "))
        .and_then(|(_, rest)| STANDARD.decode(rest.trim_ascii()).ok());
    let Some(decoded) = decoded else {
        return Err(Box::new(unauthorized(auth)));
    };
    let Some(colon) = decoded.iter().position(|b| *b == b':') else {
        return Err(Box::new(unauthorized(auth)));
    };
    let Ok(user) = std::str::from_utf8(&decoded[..colon]) else {
        return Err(Box::new(unauthorized(auth)));
    };
    if !auth.users.contains_key(user) {
        return Err(Box::new(unauthorized(auth)));
    }
    Ok(Some(PendingBasic {
        auth: auth.clone(),
        user: user.to_string(),
        password: decoded[colon + 1..].to_vec(),
        tag,
    }))
}

impl PendingBasic {
    /// Verifies the password on the blocking pool (bcrypt takes milliseconds); `Err`: the 401.
    pub(in crate::proxy) async fn verify(self) -> Result<(), Box<Response<ProxyBody>>> {
        let auth = self.auth.clone();
        let checked = tokio::task::spawn_blocking(move || {
            let ok = self.auth.check(&self.user, &self.password);
            (ok, self.tag)
        })
        .await;
        match checked {
            Ok((true, tag)) => {
                auth.remember(tag);
                Ok(())
            }
            _ => Err(Box::new(unauthorized(&auth))),
        }
    }
}

fn unauthorized(auth: &BasicAuth) -> Response<ProxyBody> {
    let mut response = text(
        StatusCode::UNAUTHORIZED,
        Bytes::from_static(b"401 Unauthorized: valid credentials are required\n"),
    );
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, auth.challenge.clone());
    response
}

/// What the external auth sub-request needs of the original request.
pub(in crate::proxy) struct Original<'a> {
    /// `http` or `https`.
    pub(in crate::proxy) scheme: &'static str,
    /// The host as the client sent it.
    pub(in crate::proxy) host: &'a str,
    /// nginx's `$request_uri`.
    pub(in crate::proxy) request_uri: &'a str,
    /// The method.
    pub(in crate::proxy) method: &'a Method,
    /// The client's address as a header value.
    pub(in crate::proxy) client_ip: &'a HeaderValue,
}

/// The process's client for auth services: pooled keep-alive connections shared by every
/// Ingress (a plan change keeps them).
fn client() -> &'static Client<HttpConnector, Empty<Bytes>> {
    static CLIENT: OnceLock<Client<HttpConnector, Empty<Bytes>>> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        Client::builder(TokioExecutor::new()).build(connector)
    })
}

/// Hop-by-hop headers and the body's framing: not forwarded to the auth service.
const NOT_SENT: [HeaderName; 8] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::CONTENT_LENGTH,
    header::HOST,
];

/// Asks the auth service about the request whose headers are `headers`: `Ok` with the
/// headers to pass on set in `headers`, or the answer for the client.
pub(in crate::proxy) async fn external(
    auth: &ExternalAuth,
    original: &Original<'_>,
    headers: &mut HeaderMap,
    timeout: Duration,
) -> Result<(), Box<Response<ProxyBody>>> {
    let mut sent = headers.clone();
    for name in &NOT_SENT {
        sent.remove(name);
    }
    sent.remove("keep-alive");
    sent.remove("proxy-connection");
    let set = |sent: &mut HeaderMap, name: &'static str, value: HeaderValue| {
        sent.insert(HeaderName::from_static(name), value);
    };
    let text_value = |text: &str| HeaderValue::from_str(text).ok();
    sent.insert(header::HOST, auth.host.clone());
    if let Some(url) = text_value(&format!(
        "{}://{}{}",
        original.scheme, original.host, original.request_uri
    )) {
        set(&mut sent, "x-original-url", url);
    }
    if let Some(method) = text_value(original.method.as_str()) {
        set(&mut sent, "x-original-method", method);
    }
    set(
        &mut sent,
        "x-sent-from",
        HeaderValue::from_static("nginx-ingress-controller"),
    );
    set(&mut sent, "x-real-ip", original.client_ip.clone());
    set(&mut sent, "x-forwarded-for", original.client_ip.clone());
    // Not in nginx's auth location (there the client's own pass through): what we know,
    // rather than what a client claims.
    set(
        &mut sent,
        "x-forwarded-proto",
        HeaderValue::from_static(original.scheme),
    );
    if let Some(host) = text_value(original.host) {
        set(&mut sent, "x-forwarded-host", host);
    }
    let request_uri = text_value(original.request_uri);
    let redirect_to = auth.request_redirect.clone().or(request_uri.clone());
    if let Some(value) = redirect_to {
        set(&mut sent, "x-auth-request-redirect", value);
    }
    if auth.method_given {
        if let Some(uri) = request_uri {
            set(&mut sent, "x-original-uri", uri);
        }
        set(
            &mut sent,
            "x-scheme",
            HeaderValue::from_static(original.scheme),
        );
    }
    let mut request = Request::new(Empty::new());
    *request.method_mut() = auth.method.clone();
    *request.uri_mut() = auth.url.clone();
    *request.headers_mut() = sent;
    let answer = tokio::time::timeout(timeout, client().request(request)).await;
    let response = match answer {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => {
            tracing::warn!(url = %auth.url, %error, "auth service unreachable");
            return Err(Box::new(server_error()));
        }
        Err(_) => {
            tracing::warn!(url = %auth.url, "auth service timed out");
            return Err(Box::new(server_error()));
        }
    };
    let status = response.status();
    if status.is_success() {
        for name in &auth.response_headers {
            // nginx: `proxy_set_header Name $authHeaderN`, which sends nothing when the auth
            // service sent nothing: a client cannot supply the header itself.
            match response.headers().get(name) {
                Some(value) => headers.insert(name.clone(), value.clone()),
                None => headers.remove(name),
            };
        }
        return Ok(());
    }
    match status {
        StatusCode::UNAUTHORIZED => match &auth.signin {
            Some(signin) => {
                let location = signin_url(&signin.parts, original);
                Err(Box::new(match HeaderValue::try_from(location) {
                    Ok(location) => redirect(StatusCode::FOUND, location),
                    Err(_) => server_error(),
                }))
            }
            None => {
                let mut answer = text(
                    StatusCode::UNAUTHORIZED,
                    Bytes::from_static(b"401 Unauthorized\n"),
                );
                if let Some(challenge) = response.headers().get(header::WWW_AUTHENTICATE) {
                    answer
                        .headers_mut()
                        .insert(header::WWW_AUTHENTICATE, challenge.clone());
                }
                Err(Box::new(answer))
            }
        },
        StatusCode::FORBIDDEN => Err(Box::new(text(
            StatusCode::FORBIDDEN,
            Bytes::from_static(b"403 Forbidden\n"),
        ))),
        other => {
            tracing::warn!(url = %auth.url, status = other.as_u16(), "auth service answered neither 2xx, 401 nor 403");
            Err(Box::new(server_error()))
        }
    }
}

fn server_error() -> Response<ProxyBody> {
    text(
        StatusCode::INTERNAL_SERVER_ERROR,
        Bytes::from_static(b"500 Internal Server Error: the auth service did not answer\n"),
    )
}

/// The sign-in URL with nginx's variables substituted.
fn signin_url(parts: &[SigninPart], original: &Original<'_>) -> String {
    let mut url = String::new();
    for part in parts {
        match part {
            SigninPart::Text(text) => url.push_str(text),
            SigninPart::EscapedRequestUri => escape_into(&mut url, original.request_uri),
            SigninPart::RequestUri => url.push_str(original.request_uri),
            SigninPart::Host => url.push_str(original.host),
            SigninPart::Scheme => url.push_str(original.scheme),
        }
    }
    url
}

/// set-misc's `set_escape_uri`: every byte but unreserved ones percent-encoded.
fn escape_into(out: &mut String, text: &str) {
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signin_urls_are_built_as_nginx_substitutes() {
        let ip = HeaderValue::from_static("192.0.2.1");
        let original = Original {
            scheme: "https",
            host: "app.example",
            request_uri: "/a b/c?x=1&y=2",
            method: &Method::GET,
            client_ip: &ip,
        };
        let parts = [
            SigninPart::Text("https://auth.example/start?rd=".into()),
            SigninPart::Scheme,
            SigninPart::Text("://".into()),
            SigninPart::Host,
            SigninPart::EscapedRequestUri,
        ];
        assert_eq!(
            signin_url(&parts, &original),
            "https://auth.example/start?rd=https://app.example%2Fa%20b%2Fc%3Fx%3D1%26y%3D2"
        );
    }
}
