//! Every `nginx.ingress.kubernetes.io/*` key ingress-nginx documents (its
//! `docs/user-guide/nginx-configuration/annotations.md`, plus the keys its code reads that the
//! table omits), with what xdp-ingress does with it. Data, not code: the translator reports from
//! it, and `migrate-report` will read it as it is.

/// What xdp-ingress does with an annotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Support {
    /// Behaves as in ingress-nginx, with its defaults.
    Supported,
    /// Works, with the difference the note says.
    Partly,
    /// Not implemented: listed, reported, and the Ingress is served without it.
    Ignored,
    /// A snippet of nginx configuration or a Lua hook: never executed, reported.
    NeverExecuted,
}

/// One annotation key and its status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The key without the `nginx.ingress.kubernetes.io/` prefix.
    pub key: &'static str,
    /// What xdp-ingress does with it.
    pub support: Support,
    /// How it differs, or why it is ignored; empty when it behaves as in ingress-nginx.
    pub note: &'static str,
}

const fn e(key: &'static str, support: Support, note: &'static str) -> Entry {
    Entry { key, support, note }
}

use Support::{Ignored, NeverExecuted, Partly, Supported};

const LATER: &str = "not implemented yet (planned, issue 14)";
const SNIPPET: &str = "nginx configuration is never executed";

/// The catalogue, grouped as ingress-nginx's documentation groups them.
pub const CATALOGUE: &[Entry] = &[
    // Paths, rewrites and redirects.
    e("use-regex", Supported, ""),
    e(
        "rewrite-target",
        Partly,
        "captures $1..$9 as nginx; other nginx variables ($scheme, $host...) are taken literally",
    ),
    e(
        "x-forwarded-prefix",
        Supported,
        "as in ingress-nginx, sent only when rewrite-target rewrites the path",
    ),
    e("app-root", Supported, ""),
    e("permanent-redirect", Supported, ""),
    e("permanent-redirect-code", Supported, ""),
    e("temporal-redirect", Supported, ""),
    e("temporal-redirect-code", Supported, ""),
    e("relative-redirects", Ignored, LATER),
    e(
        "ssl-redirect",
        Supported,
        "on by default for hosts with a usable certificate (308); never for rule paths under \
         /.well-known/acme-challenge",
    ),
    e("force-ssl-redirect", Supported, ""),
    e("preserve-trailing-slash", Supported, ""),
    e(
        "from-to-www-redirect",
        Partly,
        "keeps the port the client sent instead of nginx's HTTPS listen port",
    ),
    e("server-alias", Supported, ""),
    e(
        "default-backend",
        Partly,
        "used when the rule's Service has no ready endpoint and for unmatched paths of the \
         Ingress's hosts; custom-http-errors is not supported",
    ),
    e("custom-http-errors", Ignored, LATER),
    e(
        "enable-rewrite-log",
        Ignored,
        "nginx's rewrite log has no equivalent",
    ),
    // Backends (helper C's part of issue 14).
    e(
        "backend-protocol",
        Partly,
        "HTTP, HTTPS, GRPC, GRPCS as nginx; AUTO_HTTP is always HTTP (nginx follows the \
         client's scheme); FCGI and AJP are refused (503) where nginx falls back to HTTP",
    ),
    e(
        "proxy-ssl-secret",
        Supported,
        "a kubernetes.io/tls Secret, or an Opaque one with ca.crt (and optionally tls.crt and \
         tls.key), as ingress-nginx",
    ),
    e("proxy-ssl-verify", Supported, ""),
    e(
        "proxy-ssl-name",
        Partly,
        "without it the name checked is <service>.<namespace>.svc, where nginx checks \
         upstream_balancer",
    ),
    e("proxy-ssl-server-name", Supported, ""),
    e(
        "proxy-ssl-ciphers",
        Ignored,
        "rustls chooses its cipher suites",
    ),
    e(
        "proxy-ssl-protocols",
        Partly,
        "TLSv1.2 and TLSv1.3 are honoured; older versions are skipped (rustls does not speak \
         them)",
    ),
    e(
        "proxy-ssl-verify-depth",
        Ignored,
        "rustls verifies the whole chain",
    ),
    e(
        "service-upstream",
        Supported,
        "the ClusterIP and Service port are the one endpoint; a Service without ClusterIP uses its endpoints",
    ),
    e("upstream-vhost", Supported, ""),
    e("upstream-hash-by", Supported, ""),
    e(
        "upstream-hash-by-subset",
        Ignored,
        "upstream-hash-by hashes over all endpoints (no subsets)",
    ),
    e(
        "upstream-hash-by-subset-size",
        Ignored,
        "upstream-hash-by hashes over all endpoints (no subsets)",
    ),
    e(
        "load-balance",
        Ignored,
        "the proxy balances by two random choices",
    ),
    e(
        "proxy-http-version",
        Ignored,
        "the proxy speaks HTTP/1.1 to backends",
    ),
    // Limits and timeouts.
    e(
        "proxy-body-size",
        Supported,
        "413 before the backend gets more than the limit, with or without Content-Length; \
         --max-body-bytes, when set, is a ceiling over every route",
    ),
    e(
        "client-body-buffer-size",
        Partly,
        "the size is checked, and changes nothing: bodies are streamed to the backend, never \
         buffered in memory or spooled to disk",
    ),
    e("proxy-connect-timeout", Supported, ""),
    e(
        "proxy-send-timeout",
        Supported,
        "measured between the backend's reads of successive body chunks, until the response head",
    ),
    e(
        "proxy-read-timeout",
        Supported,
        "a timeout after the response head started aborts the response (the client sees it cut)",
    ),
    e(
        "proxy-next-upstream",
        Partly,
        "a request whose body has started streaming is never sent again (nginx buffers bodies \
         and can); a retry avoids the endpoint that just failed, not all earlier ones",
    ),
    e("proxy-next-upstream-timeout", Supported, ""),
    e(
        "proxy-next-upstream-tries",
        Supported,
        "0 (no limit) tries each endpoint at most once",
    ),
    e("proxy-request-buffering", Ignored, "requests are streamed"),
    e("proxy-buffering", Ignored, "responses are streamed"),
    e("proxy-buffers-number", Ignored, "responses are streamed"),
    e("proxy-buffer-size", Ignored, "responses are streamed"),
    e(
        "proxy-max-temp-file-size",
        Ignored,
        "responses are streamed",
    ),
    e("proxy-cookie-domain", Ignored, LATER),
    e("proxy-cookie-path", Ignored, LATER),
    e("proxy-redirect-from", Ignored, LATER),
    e("proxy-redirect-to", Ignored, LATER),
    e(
        "connection-proxy-header",
        Ignored,
        "hop-by-hop headers are the proxy's own",
    ),
    e("custom-headers", Ignored, LATER),
    // Access.
    e("whitelist-source-range", Supported, ""),
    e("allowlist-source-range", Supported, ""),
    e("denylist-source-range", Supported, ""),
    e(
        "limit-connections",
        Supported,
        "counts requests in progress per client address (what nginx's limit_conn counts for \
         HTTP); 503",
    ),
    e(
        "limit-rps",
        Partly,
        "nginx's limit_req per client address (burst = rate x multiplier, nodelay, 503); the \
         counts restart when the routing table is rebuilt",
    ),
    e(
        "limit-rpm",
        Partly,
        "as limit-rps, per minute; the counts restart when the routing table is rebuilt",
    ),
    e("limit-burst-multiplier", Supported, ""),
    e(
        "limit-rate",
        Ignored,
        "response bandwidth limits are not implemented",
    ),
    e(
        "limit-rate-after",
        Ignored,
        "response bandwidth limits are not implemented",
    ),
    e("limit-whitelist", Supported, ""),
    e("limit-allowlist", Supported, ""),
    e(
        "global-rate-limit",
        Ignored,
        "needs memcached; not implemented",
    ),
    e(
        "global-rate-limit-window",
        Ignored,
        "needs memcached; not implemented",
    ),
    e(
        "global-rate-limit-key",
        Ignored,
        "needs memcached; not implemented",
    ),
    e(
        "global-rate-limit-ignored-cidrs",
        Ignored,
        "needs memcached; not implemented",
    ),
    e(
        "auth-type",
        Partly,
        "basic only: digest makes the Ingress's routes answer 503 (never served unprotected)",
    ),
    e("auth-secret", Supported, ""),
    e("auth-secret-type", Supported, ""),
    e("auth-realm", Supported, ""),
    e(
        "auth-url",
        Partly,
        "http:// auth services only (https:// answers 503); the auth answer's Set-Cookie is not \
         added to the client's response; X-Forwarded-Proto/Host are the proxy's, not the client's",
    ),
    e("auth-method", Supported, ""),
    e(
        "auth-signin",
        Partly,
        "nginx variables: $escaped_request_uri, $request_uri, $host, $http_host, $scheme, $pass_access_scheme",
    ),
    e("auth-signin-redirect-param", Supported, ""),
    e("auth-response-headers", Supported, ""),
    e("auth-request-redirect", Supported, ""),
    e("auth-proxy-set-headers", Ignored, LATER),
    e("auth-cache-key", Ignored, LATER),
    e("auth-cache-duration", Ignored, LATER),
    e("auth-always-set-cookie", Ignored, LATER),
    e("auth-keepalive", Ignored, LATER),
    e("auth-keepalive-requests", Ignored, LATER),
    e("auth-keepalive-timeout", Ignored, LATER),
    e("auth-keepalive-share-vars", Ignored, LATER),
    e("enable-global-auth", Ignored, LATER),
    e(
        "auth-tls-secret",
        Ignored,
        "client certificates are not implemented",
    ),
    e(
        "auth-tls-verify-depth",
        Ignored,
        "client certificates are not implemented",
    ),
    e(
        "auth-tls-verify-client",
        Ignored,
        "client certificates are not implemented",
    ),
    e(
        "auth-tls-error-page",
        Ignored,
        "client certificates are not implemented",
    ),
    e(
        "auth-tls-pass-certificate-to-upstream",
        Ignored,
        "client certificates are not implemented",
    ),
    e(
        "auth-tls-match-cn",
        Ignored,
        "client certificates are not implemented",
    ),
    e("satisfy", Ignored, LATER),
    // Traffic.
    e("canary", Supported, ""),
    e("canary-by-header", Supported, ""),
    e("canary-by-header-value", Supported, ""),
    e("canary-by-header-pattern", Supported, ""),
    e("canary-by-cookie", Supported, ""),
    e("canary-weight", Supported, ""),
    e("canary-weight-total", Supported, ""),
    e("affinity", Supported, ""),
    e("affinity-mode", Supported, ""),
    e("affinity-canary-behavior", Supported, ""),
    e("session-cookie-name", Supported, ""),
    e("session-cookie-path", Supported, ""),
    e("session-cookie-domain", Supported, ""),
    e("session-cookie-max-age", Supported, ""),
    e("session-cookie-expires", Supported, ""),
    e("session-cookie-secure", Supported, ""),
    e("session-cookie-samesite", Supported, ""),
    e("session-cookie-conditional-samesite-none", Supported, ""),
    e("session-cookie-change-on-failure", Supported, ""),
    e("mirror-target", Ignored, LATER),
    e("mirror-host", Ignored, LATER),
    e("mirror-request-body", Ignored, LATER),
    // CORS.
    e("enable-cors", Supported, ""),
    e("cors-allow-origin", Supported, ""),
    e("cors-allow-methods", Supported, ""),
    e("cors-allow-headers", Supported, ""),
    e("cors-expose-headers", Supported, ""),
    e("cors-allow-credentials", Supported, ""),
    e("cors-max-age", Supported, ""),
    // TLS.
    e(
        "ssl-passthrough",
        Partly,
        "with --enable-ssl-passthrough, as nginx: TLS connections whose SNI names the host go \
         unterminated to the backend of its path /, but to the Service's ready endpoints (nginx: \
         its ClusterIP); only with a path /",
    ),
    e("ssl-ciphers", Ignored, "rustls chooses its cipher suites"),
    e(
        "ssl-prefer-server-ciphers",
        Ignored,
        "rustls chooses its cipher suites",
    ),
    e(
        "http2-push-preload",
        Ignored,
        "HTTP/2 server push is obsolete",
    ),
    // Observability and modules nginx has and the proxy does not.
    e(
        "enable-access-log",
        Ignored,
        "the access log is global (--access-log)",
    ),
    e("enable-opentracing", Ignored, "tracing is not implemented"),
    e(
        "opentracing-trust-incoming-span",
        Ignored,
        "tracing is not implemented",
    ),
    e(
        "enable-opentelemetry",
        Ignored,
        "tracing is not implemented",
    ),
    e(
        "opentelemetry-trust-incoming-span",
        Ignored,
        "tracing is not implemented",
    ),
    e(
        "opentelemetry-operation-name",
        Ignored,
        "tracing is not implemented",
    ),
    e("enable-influxdb", Ignored, "nginx module; no equivalent"),
    e(
        "influxdb-measurement",
        Ignored,
        "nginx module; no equivalent",
    ),
    e("influxdb-port", Ignored, "nginx module; no equivalent"),
    e("influxdb-host", Ignored, "nginx module; no equivalent"),
    e(
        "influxdb-server-name",
        Ignored,
        "nginx module; no equivalent",
    ),
    e("enable-modsecurity", Ignored, "no web application firewall"),
    e(
        "enable-owasp-core-rules",
        Ignored,
        "no web application firewall",
    ),
    e(
        "modsecurity-transaction-id",
        Ignored,
        "no web application firewall",
    ),
    // Snippets: never executed.
    e("configuration-snippet", NeverExecuted, SNIPPET),
    e("server-snippet", NeverExecuted, SNIPPET),
    e("auth-snippet", NeverExecuted, SNIPPET),
    e("stream-snippet", NeverExecuted, SNIPPET),
    e("modsecurity-snippet", NeverExecuted, SNIPPET),
];

/// The catalogue's entry for `key` (without the prefix).
pub fn lookup(key: &str) -> Option<&'static Entry> {
    CATALOGUE.iter().find(|entry| entry.key == key)
}
