//! What a matched rule leads to: one [`Route`], the same shape for every source (Ingress with
//! its annotations now, Gateway API's HTTPRoute next): an ordered list of request [`Filter`]s,
//! then weighted backends. Everything a filter needs per request is prepared here, once per
//! plan: compiled regexes, rendered header values and status codes, the fixed parts of
//! redirect targets. The proxy interprets the list in order; it parses nothing.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use regex::Regex;

use crate::model::ObjectName;

use super::{
    super::BackendId,
    auth::{BasicAuth, ExternalAuth},
    limits::{ConnectionLimiter, RateLimiter, UpstreamPolicy},
    Canary, Cidr,
};

/// A backend of a route and its share of the route's requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightedBackend {
    /// Index into the plan's backends.
    pub backend: BackendId,
    /// Relative weight (an Ingress rule gives one backend of weight 1).
    pub weight: u32,
}

/// Where a matched rule leads: filters in order, then the backends.
#[derive(Clone, Debug)]
pub struct Route {
    /// The Ingress (or, later, HTTPRoute) the rule comes from; `None` for rules the translator
    /// makes itself.
    pub source: Option<ObjectName>,
    /// Request filters, run in order; the first that answers ends the chain.
    pub filters: Vec<Filter>,
    /// Weighted backends; empty when a filter always answers (a host redirect).
    pub backends: Vec<WeightedBackend>,
    /// Used instead when the backends have no endpoint (`default-backend` annotation).
    pub fallback: Option<BackendId>,
    /// Body size, upstream timeouts and retries (`proxy-*` annotations).
    pub policy: Arc<UpstreamPolicy>,
    /// `limit-connections`: requests in progress per client address.
    pub connection_limit: Option<Arc<ConnectionLimiter>>,
    /// A second backend set and the rule that sends requests there (a canary Ingress).
    pub canary: Option<Box<Canary>>,
    /// The path the primary set's affinity cookie is set for (`session-cookie-path`, else the
    /// rule's path); `None` without cookie affinity.
    pub cookie_path: Option<Arc<str>>,
    /// The labels of its ingress-nginx-compatible request series (`--metrics-compat nginx`);
    /// `None` for routes the translator makes itself (their requests count unrouted).
    pub series: Option<Arc<super::series::RouteSeries>>,
}

impl Route {
    /// A route to one backend, without filters.
    pub fn to(backend: BackendId, source: Option<ObjectName>) -> Self {
        Self {
            source,
            filters: Vec::new(),
            backends: vec![WeightedBackend { backend, weight: 1 }],
            fallback: None,
            policy: UpstreamPolicy::shared_default(),
            connection_limit: None,
            canary: None,
            cookie_path: None,
            series: None,
        }
    }

    /// A route that only answers (a redirect of a host no rule serves).
    pub fn answering(filter: Filter, source: Option<ObjectName>) -> Self {
        Self {
            source,
            filters: vec![filter],
            backends: Vec::new(),
            fallback: None,
            policy: UpstreamPolicy::shared_default(),
            connection_limit: None,
            canary: None,
            cookie_path: None,
            series: None,
        }
    }

    /// The first backend (the one an Ingress rule names).
    pub fn backend(&self) -> Option<BackendId> {
        self.backends.first().map(|b| b.backend)
    }
}

impl Filter {
    /// Its name, for `inspect routes`.
    pub fn name(&self) -> &'static str {
        match self {
            Filter::Fail(_) => "fail",
            Filter::Redirect { .. } => "redirect",
            Filter::AppRoot { .. } => "app-root",
            Filter::HttpsRedirect { .. } => "https-redirect",
            Filter::HostRedirect { .. } => "host-redirect",
            Filter::Rewrite { .. } => "rewrite",
            Filter::SetHeader { .. } => "set-header",
            Filter::Cors(_) => "cors",
            Filter::SourceRange { .. } => "source-range",
            Filter::RateLimit(_) => "rate-limit",
            Filter::Hsts(_) => "hsts",
            Filter::BasicAuth(_) => "basic-auth",
            Filter::ExternalAuth(_) => "external-auth",
            Filter::UpstreamVhost(_) => "upstream-vhost",
        }
    }
}

/// One step of a route's request chain.
#[derive(Clone, Debug)]
pub enum Filter {
    /// Answer 503 with this text: the route's source is broken (an annotation value that does
    /// not parse), and serving it without that setting could expose what it protects.
    Fail(Bytes),
    /// Answer `status` with this fixed `Location` (`permanent-redirect`, `temporal-redirect`).
    Redirect {
        /// 3xx.
        status: StatusCode,
        /// The target, as given.
        location: HeaderValue,
    },
    /// `app-root`: `302` to `<scheme>://<Host as sent><path>`.
    AppRoot {
        /// The application's root path.
        path: String,
    },
    /// Plain-HTTP requests answer `status` to `https://<host without port><request URI>`
    /// (`ssl-redirect` on a host with a certificate, `force-ssl-redirect`).
    HttpsRedirect {
        /// `308` unless configured.
        status: StatusCode,
        /// Drop one trailing `/` of the request URI, as ingress-nginx does unless
        /// `preserve-trailing-slash` is set.
        strip_trailing_slash: bool,
    },
    /// `from-to-www-redirect`: answer `status` to `<scheme>://<host>[:port]<request URI>`
    /// (one trailing `/` dropped).
    HostRedirect {
        /// `308`.
        status: StatusCode,
        /// The host to send clients to.
        host: String,
    },
    /// `rewrite-target`: when `regex` matches the path, the path sent to the backend becomes
    /// `target` with `$n` replaced by capture `n` (nginx `rewrite ... break`; the query is kept).
    Rewrite {
        /// The rule's path as a case-insensitive regex.
        regex: Regex,
        /// The target with nginx's `$n` written for the regex crate (`${n}`).
        target: String,
    },
    /// `enable-cors`: for an allowed `Origin`, a preflight (`OPTIONS`) is answered 204 with the
    /// CORS headers, and other responses get them; other origins pass untouched.
    Cors(Arc<CorsPolicy>),
    /// `denylist-source-range`, then `whitelist-source-range` (`allowlist-source-range`):
    /// a client address in `deny`, or outside a non-empty `allow`, is answered 403.
    SourceRange {
        /// Refused ranges.
        deny: Vec<Cidr>,
        /// Allowed ranges; empty: every address not denied.
        allow: Vec<Cidr>,
    },
    /// `limit-rps` / `limit-rpm`: a client address over its rate (and burst) is answered the
    /// limiter's status (503); exempt ranges pass.
    RateLimit(Arc<RateLimiter>),
    /// `Strict-Transport-Security: <value>` on the backend's responses to HTTPS requests,
    /// replacing the backend's (ingress-nginx's `hsts` settings, `more_set_headers`).
    Hsts(HeaderValue),
    /// `auth-type: basic`: a request without valid credentials is answered 401 with the
    /// challenge; the `Authorization` header is not sent to the backend.
    BasicAuth(Arc<BasicAuth>),
    /// `auth-url`: the request is allowed by a sub-request to an auth service (run by the
    /// proxy after the other filters; see `proxy::filters::auth`).
    ExternalAuth(Arc<ExternalAuth>),
    /// `upstream-vhost`: the `Host` the backend gets (after the forwarding headers are set;
    /// `X-Forwarded-Host` keeps the client's).
    UpstreamVhost(HeaderValue),
    /// Set a request header for the backend (`x-forwarded-prefix`).
    SetHeader {
        /// The header.
        name: HeaderName,
        /// Its value.
        value: HeaderValue,
    },
}

/// ingress-nginx's CORS settings, rendered.
#[derive(Clone, Debug)]
pub struct CorsPolicy {
    /// `None`: any origin (`*`, sent as `Access-Control-Allow-Origin: *`); else the allowed
    /// origins as one case-insensitive, anchored regex (the request's `Origin` is echoed).
    pub origins: Option<Regex>,
    /// Every other header of the answer, in order (credentials, methods, headers, exposed
    /// headers, max age).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}
