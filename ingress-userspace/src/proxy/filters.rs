//! Runs a route's request filters (see `translate::l7::routes::Route`) on one request, in order:
//! a filter either answers (a redirect, the 503 of a broken Ingress), or changes what the
//! backend gets (the path, a header) and lets the next one run. Everything fixed was prepared
//! with the plan (compiled regexes, header values, status codes); only what depends on the
//! request is built here, and only by the filter that needs it: a redirect's `Location`, a
//! rewritten path. A route without filters costs one empty loop. What a filter adds to the
//! response (CORS headers) is carried to the response as a [`ResponseEdit`].

pub(super) mod auth;

use std::{net::IpAddr, sync::Arc};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode, Uri};

use crate::translate::l7::{routes::auth::ExternalAuth, CorsPolicy, Filter, Route};

use super::body::ProxyBody;

/// What the filters need to know of the request.
pub(super) struct RequestView<'a> {
    /// Whether it came over TLS.
    pub(super) https: bool,
    /// Whether the client used HTTPS as far as redirects go (ingress-nginx's
    /// `$pass_access_scheme`): `https`, or a trusted `X-Forwarded-Proto`.
    pub(super) access_https: bool,
    /// The host as the client sent it (port included, if any).
    pub(super) host: &'a str,
    /// The normalised path routing used.
    pub(super) path: &'a str,
    /// The request target as sent (for nginx's `$request_uri`: path and query).
    pub(super) uri: &'a Uri,
    /// Its method.
    pub(super) method: &'a Method,
    /// The client's address.
    pub(super) client: IpAddr,
}

impl RequestView<'_> {
    fn scheme(&self) -> &'static str {
        if self.https {
            "https"
        } else {
            "http"
        }
    }

    /// nginx's `$request_uri`: the path and query as the client sent them.
    fn request_uri(&self) -> &str {
        self.uri.path_and_query().map_or("/", |pq| pq.as_str())
    }
}

/// What the filters decided.
pub(super) enum Decision {
    /// Forward; `Some` target: the new request target (path and query) for the backend.
    Forward(Option<String>, Option<ResponseEdit>),
    /// Answer this instead (boxed: answering is the rare case, and the decision stays small).
    Answer(Box<Response<ProxyBody>>),
    /// Forward after the auth checks that need to wait (a hash the cache did not know, an
    /// auth service).
    Authorize(Box<Authorize>),
}

/// A forward that waits on auth.
pub(super) struct Authorize {
    /// As in [`Decision::Forward`].
    pub(super) target: Option<String>,
    /// As in [`Decision::Forward`].
    pub(super) edit: Option<ResponseEdit>,
    /// Credentials the cache did not know: verify before forwarding.
    pub(super) basic: Option<auth::PendingBasic>,
    /// `auth-url`: ask it before forwarding.
    pub(super) external: Option<Arc<ExternalAuth>>,
    /// Basic auth checked the `Authorization` header: it goes to `auth-url` but not to the
    /// backend, so it is removed after the sub-request.
    pub(super) strip_authorization: bool,
}

/// The route's `upstream-vhost`, if any (a reference count, no copy).
pub(super) fn upstream_vhost(route: &Route) -> Option<HeaderValue> {
    route.filters.iter().find_map(|filter| match filter {
        Filter::UpstreamVhost(host) => Some(host.clone()),
        _ => None,
    })
}

/// Runs `route`'s filters on the request; header changes go into `headers`.
pub(super) fn run(route: &Route, request: &RequestView<'_>, headers: &mut HeaderMap) -> Decision {
    let mut target = None;
    let mut edit = None;
    let mut pending: Option<Box<Authorize>> = None;
    let mut basic_auth = false;
    for filter in &route.filters {
        match filter {
            Filter::BasicAuth(basic) => {
                basic_auth = true;
                match auth::basic(basic, headers) {
                    Ok(None) => {}
                    Ok(Some(unverified)) => waits(&mut pending).basic = Some(unverified),
                    Err(answer) => return Decision::Answer(answer),
                }
            }
            Filter::ExternalAuth(external) => waits(&mut pending).external = Some(external.clone()),
            // Read by the request path itself (`upstream_vhost`): nothing to decide here.
            Filter::UpstreamVhost(_) => {}
            Filter::Cors(policy) => {
                let Some(origin) = allowed_origin(policy, headers) else {
                    continue;
                };
                if request.method == Method::OPTIONS {
                    return Decision::Answer(Box::new(preflight(policy, origin)));
                }
                edit.get_or_insert_with(ResponseEdit::default).cors =
                    Some((policy.clone(), origin));
            }
            Filter::Fail(why) => return Decision::Answer(Box::new(unavailable(why.clone()))),
            Filter::Redirect { status, location } => {
                return Decision::Answer(Box::new(redirect(*status, location.clone())));
            }
            Filter::AppRoot { path } => {
                let location = format!("{}://{}{path}", request.scheme(), request.host);
                return answer_redirect(StatusCode::FOUND, location);
            }
            Filter::HttpsRedirect {
                status,
                strip_trailing_slash,
            } => {
                if request.access_https || request.host.is_empty() {
                    continue;
                }
                let uri = trimmed(request.request_uri(), *strip_trailing_slash);
                let location = format!("https://{}{uri}", strip_port(request.host));
                return answer_redirect(*status, location);
            }
            Filter::HostRedirect { status, host } => {
                let port = port_of(request.host).map_or(String::new(), |p| format!(":{p}"));
                let uri = trimmed(request.request_uri(), true);
                let location = format!("{}://{host}{port}{uri}", request.scheme());
                return answer_redirect(*status, location);
            }
            Filter::Rewrite {
                regex,
                target: with,
            } => {
                if let Some(captures) = regex.captures(request.path) {
                    let mut path = String::with_capacity(with.len() + request.path.len());
                    if !with.starts_with('/') {
                        path.push('/');
                    }
                    captures.expand(with, &mut path);
                    target = Some(with_query(path, request.uri.query()));
                }
            }
            Filter::SourceRange { deny, allow } => {
                let client = request.client;
                let denied = deny.iter().any(|range| range.contains(client))
                    || (!allow.is_empty() && !allow.iter().any(|range| range.contains(client)));
                if denied {
                    return Decision::Answer(Box::new(text(
                        StatusCode::FORBIDDEN,
                        Bytes::from_static(b"403 Forbidden: the client address is not allowed\n"),
                    )));
                }
            }
            Filter::RateLimit(limiter) => {
                if !limiter.admit(request.client) {
                    return Decision::Answer(Box::new(limited(limiter.status, "request rate")));
                }
            }
            Filter::SetHeader { name, value } => {
                headers.insert(name.clone(), value.clone());
            }
            Filter::Hsts(value) => {
                // ingress-nginx: the connection's scheme, whatever `X-Forwarded-Proto` says.
                if request.https {
                    edit.get_or_insert_with(ResponseEdit::default).hsts = Some(value.clone());
                }
            }
        }
    }
    if basic_auth {
        match pending.as_mut().filter(|p| p.external.is_some()) {
            Some(authorize) => authorize.strip_authorization = true,
            None => {
                headers.remove(http::header::AUTHORIZATION);
            }
        }
    }
    match pending {
        Some(mut authorize) => {
            authorize.target = target;
            authorize.edit = edit;
            Decision::Authorize(authorize)
        }
        None => Decision::Forward(target, edit),
    }
}

/// The pending checks, made at the first filter that needs them.
fn waits(pending: &mut Option<Box<Authorize>>) -> &mut Authorize {
    pending.get_or_insert_with(|| {
        Box::new(Authorize {
            target: None,
            edit: None,
            basic: None,
            external: None,
            strip_authorization: false,
        })
    })
}

/// Headers filters add to the backend's response.
#[derive(Default)]
pub(super) struct ResponseEdit {
    /// The CORS policy and the `Access-Control-Allow-Origin` value.
    cors: Option<(Arc<CorsPolicy>, HeaderValue)>,
    /// `Strict-Transport-Security`.
    hsts: Option<HeaderValue>,
}

impl ResponseEdit {
    /// Sets the headers on `response`, replacing the backend's (nginx's `more_set_headers`).
    pub(super) fn apply<B>(self, response: &mut Response<B>) {
        if let Some((cors, origin)) = self.cors {
            set_cors(response.headers_mut(), &cors, origin);
        }
        if let Some(value) = self.hsts {
            response
                .headers_mut()
                .insert(header::STRICT_TRANSPORT_SECURITY, value);
        }
    }
}

/// The `Access-Control-Allow-Origin` value for this request, if its origin is allowed: `*`
/// for a policy allowing any, else the request's `Origin` when it matches.
fn allowed_origin(policy: &CorsPolicy, headers: &HeaderMap) -> Option<HeaderValue> {
    match &policy.origins {
        None => Some(HeaderValue::from_static("*")),
        Some(allowed) => headers
            .get(header::ORIGIN)
            .filter(|origin| origin.to_str().is_ok_and(|o| allowed.is_match(o)))
            .cloned(),
    }
}

fn set_cors(headers: &mut HeaderMap, policy: &CorsPolicy, origin: HeaderValue) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    for (name, value) in &policy.headers {
        headers.insert(name.clone(), value.clone());
    }
}

/// ingress-nginx's answer to an allowed preflight: 204, the CORS headers, an empty body.
fn preflight(policy: &CorsPolicy, origin: HeaderValue) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    set_cors(headers, policy, origin);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain charset=UTF-8"),
    );
    // nginx also sets `Content-Length: 0`; a 204 must not carry one (RFC 9110 §8.6), and
    // hyper drops it anyway.
    response
}

/// nginx's `rewrite`: the original query follows the new one, or becomes the query.
fn with_query(mut path: String, query: Option<&str>) -> String {
    if let Some(query) = query.filter(|q| !q.is_empty()) {
        path.push(if path.contains('?') { '&' } else { '?' });
        path.push_str(query);
    }
    path
}

/// ingress-nginx drops one trailing `/` of the request URI in its redirects.
fn trimmed(uri: &str, strip: bool) -> &str {
    match uri.strip_suffix('/') {
        Some(rest) if strip => rest,
        _ => uri,
    }
}

/// `example.com:8080` → `example.com`; `[2001:db8::1]:443` → `[2001:db8::1]`.
fn strip_port(host: &str) -> &str {
    match port_of(host) {
        Some(port) => &host[..host.len() - port.len() - 1],
        None => host,
    }
}

fn port_of(host: &str) -> Option<&str> {
    let (name, port) = host.rsplit_once(':')?;
    let bracketed_or_name = !name.contains(':') || name.ends_with(']');
    (bracketed_or_name && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
        .then_some(port)
}

fn answer_redirect(status: StatusCode, location: String) -> Decision {
    match HeaderValue::try_from(location) {
        Ok(location) => Decision::Answer(Box::new(redirect(status, location))),
        // Only a Host that is no valid header value could make it fail, and hyper refuses
        // those before they reach us; answer rather than forward unredirected.
        Err(_) => Decision::Answer(Box::new(text(
            StatusCode::BAD_REQUEST,
            Bytes::from_static(b"400 Bad Request: invalid Host\n"),
        ))),
    }
}

fn redirect(status: StatusCode, location: HeaderValue) -> Response<ProxyBody> {
    let body = format!(
        "{} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Redirect")
    );
    let mut response = text(status, Bytes::from(body));
    response.headers_mut().insert(header::LOCATION, location);
    response
}

/// The answer of a client over one of its limits (`what`: "request rate", "connection").
pub(super) fn limited(status: StatusCode, what: &str) -> Response<ProxyBody> {
    let body = format!(
        "{} {}: the client address is over its {what} limit\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Refused")
    );
    text(status, Bytes::from(body))
}

fn unavailable(why: Bytes) -> Response<ProxyBody> {
    text(StatusCode::SERVICE_UNAVAILABLE, why)
}

fn text(status: StatusCode, body: Bytes) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_trailing_slashes() {
        assert_eq!(strip_port("a.example:8080"), "a.example");
        assert_eq!(strip_port("a.example"), "a.example");
        assert_eq!(strip_port("[2001:db8::1]:443"), "[2001:db8::1]");
        assert_eq!(strip_port("[2001:db8::1]"), "[2001:db8::1]");
        assert_eq!(trimmed("/a/", true), "/a");
        assert_eq!(trimmed("/", true), "");
        assert_eq!(trimmed("/a/?x=1", true), "/a/?x=1");
        assert_eq!(trimmed("/a/", false), "/a/");
        assert_eq!(with_query("/b".into(), Some("x=1")), "/b?x=1");
        assert_eq!(with_query("/b?y=2".into(), Some("x=1")), "/b?y=2&x=1");
        assert_eq!(with_query("/b".into(), None), "/b");
    }
}
