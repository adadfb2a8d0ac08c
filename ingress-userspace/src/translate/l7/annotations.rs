//! ingress-nginx's annotations (`nginx.ingress.kubernetes.io/*`) of one Ingress, read once into
//! [`IngressAnnotations`] with ingress-nginx's defaults, and reported against the
//! [`catalogue`]: a key that is ignored, never executed or unknown is a problem naming it, and
//! the Ingress keeps its routes; a value that does not parse is a problem naming it too, and
//! every route of that Ingress answers 503 with the reason (serving it without the setting
//! would do something its author did not ask for, such as skipping a redirect).
//!
//! Values are parsed as ingress-nginx's parsers do (Go's `strconv.ParseBool` for booleans, an
//! integer for codes, a URL with an http(s) scheme for redirects); where ingress-nginx silently
//! falls back to a default (a redirect code outside 300–308), so do we, and say so.

mod auth;
pub mod catalogue;
mod cors;
mod limits;

#[cfg(test)]
pub(super) use limits::parse_size;
mod traffic;

use std::{collections::BTreeMap, sync::Arc};

use bytes::Bytes;
use http::{HeaderValue, StatusCode, Uri};

use super::{
    balance::Balance,
    class::OurIngress,
    routes::{CanaryRule, Cidr, CorsPolicy},
    rules::check_host,
};
use crate::model::Problem;

pub(super) use auth::{resolve_basic, BasicAuthSource};
use catalogue::{lookup, Support};

/// The prefix of every ingress-nginx annotation.
pub const PREFIX: &str = "nginx.ingress.kubernetes.io/";

/// The annotations of one Ingress that shape its routes, with ingress-nginx's defaults.
#[derive(Clone, Debug)]
pub(super) struct IngressAnnotations {
    /// `use-regex`: every path of this Ingress's hosts is a regex.
    pub(super) use_regex: bool,
    /// `rewrite-target`, in the regex crate's replacement syntax (`$1` → `${1}`).
    pub(super) rewrite_target: Option<String>,
    /// `rewrite-target` as written (ingress-nginx does not rewrite a path equal to it).
    pub(super) rewrite_target_text: Option<String>,
    /// `x-forwarded-prefix`.
    pub(super) x_forwarded_prefix: Option<HeaderValue>,
    /// `app-root`.
    pub(super) app_root: Option<String>,
    /// `temporal-redirect` (with its code), else `permanent-redirect` (with its code).
    pub(super) redirect: Option<(StatusCode, HeaderValue)>,
    /// `ssl-redirect` (default true).
    pub(super) ssl_redirect: bool,
    /// `force-ssl-redirect` (default false).
    pub(super) force_ssl_redirect: bool,
    /// `preserve-trailing-slash` (default false).
    pub(super) preserve_trailing_slash: bool,
    /// `from-to-www-redirect` (default false).
    pub(super) from_to_www: bool,
    /// `server-alias`: more host names for this Ingress's hosts, lower-case.
    pub(super) server_aliases: Vec<String>,
    /// `default-backend`: a Service of the Ingress's namespace.
    pub(super) default_backend: Option<String>,
    /// `enable-cors` and its settings.
    pub(super) cors: Option<Arc<CorsPolicy>>,
    /// `allowlist-source-range` (or its older name `whitelist-source-range`).
    pub(super) allow: Vec<Cidr>,
    /// `denylist-source-range`.
    pub(super) deny: Vec<Cidr>,
    /// Body size, timeouts, retries, rate and connection limits.
    pub(super) limits: limits::Limits,
    /// `ssl-passthrough` (default false; see `passthrough`).
    pub(super) ssl_passthrough: bool,
    /// `auth-type: basic`, its Secret not yet looked up (see [`resolve_basic`]).
    pub(super) basic_auth: Option<BasicAuthSource>,
    /// `auth-type: basic` with its users, once [`resolve_basic`] found them.
    pub(super) basic: Option<Arc<super::routes::auth::BasicAuth>>,
    /// `auth-url` and its settings.
    pub(super) external_auth: Option<Arc<super::routes::auth::ExternalAuth>>,
    /// `upstream-vhost`.
    pub(super) upstream_vhost: Option<HeaderValue>,
    /// The 503 text when a value did not parse: the Ingress's routes answer it.
    pub(super) invalid: Option<Bytes>,
    /// The status of the HTTPS and www redirects (the ConfigMap's `http-redirect-code`).
    pub(super) http_redirect_code: StatusCode,
    /// `Strict-Transport-Security` for HTTPS responses of hosts with a certificate (the
    /// ConfigMap's `hsts*`); `None`: not sent.
    pub(super) hsts: Option<HeaderValue>,
    /// `canary: "true"`: the rule that sends requests to this Ingress's backends instead of
    /// the main Ingress's (its routes are merged into the main one's, not served alone).
    pub(super) canary: Option<CanaryRule>,
    /// `upstream-hash-by` or `affinity: cookie`: how its backends pick endpoints.
    pub(super) balance: Balance,
}

impl Default for IngressAnnotations {
    fn default() -> Self {
        Self {
            use_regex: false,
            rewrite_target: None,
            rewrite_target_text: None,
            x_forwarded_prefix: None,
            app_root: None,
            redirect: None,
            ssl_redirect: true,
            force_ssl_redirect: false,
            preserve_trailing_slash: false,
            from_to_www: false,
            server_aliases: Vec::new(),
            default_backend: None,
            cors: None,
            allow: Vec::new(),
            deny: Vec::new(),
            limits: limits::Limits::default(),
            ssl_passthrough: false,
            basic_auth: None,
            basic: None,
            external_auth: None,
            upstream_vhost: None,
            invalid: None,
            http_redirect_code: StatusCode::PERMANENT_REDIRECT,
            hsts: None,
            canary: None,
            balance: Balance::LeastRequests,
        }
    }
}

impl IngressAnnotations {
    /// Whether this Ingress turns its hosts to regex mode (ingress-nginx: `use-regex`, or any
    /// `rewrite-target`).
    pub(super) fn wants_regex(&self) -> bool {
        self.invalid.is_none() && (self.use_regex || self.rewrite_target.is_some())
    }
}

/// The field of annotation `key` (without the prefix), as problems name it.
pub fn field(key: &str) -> String {
    format!("metadata.annotations[\"{PREFIX}{key}\"]")
}

/// The problems of `ingress`'s annotations as the translator reports them (ignored, never
/// executed, unknown and bad ones), for `migrate-report`.
pub fn problems_of(
    name: &crate::model::ObjectName,
    ingress: &crate::model::Sourced<k8s_openapi::api::networking::v1::Ingress>,
) -> Vec<Problem> {
    let mut problems = Vec::new();
    let defaults = super::NginxDefaults::default();
    parse(
        &OurIngress {
            name,
            ingress,
            defaults: &defaults,
        },
        &mut problems,
    );
    problems
}

/// Reads `ingress`'s annotations; every ignored, unknown or bad one is reported.
pub(super) fn parse(ingress: &OurIngress<'_>, problems: &mut Vec<Problem>) -> IngressAnnotations {
    let mut reader = Reader {
        ingress,
        problems,
        values: BTreeMap::new(),
        bad: Vec::new(),
    };
    if let Some(all) = ingress.ingress.object.metadata.annotations.as_ref() {
        for (key, value) in all {
            if let Some(key) = key.strip_prefix(PREFIX) {
                reader.classify(key, value);
            }
        }
    }
    reader.read()
}

struct Reader<'a, 'p> {
    ingress: &'a OurIngress<'a>,
    problems: &'p mut Vec<Problem>,
    /// The supported keys present, and their values.
    values: BTreeMap<&'a str, &'a str>,
    /// `key: why` of each value that did not parse.
    bad: Vec<String>,
}

impl<'a> Reader<'a, '_> {
    /// Keeps a supported key's value; reports any other key.
    fn classify(&mut self, key: &'a str, value: &'a str) {
        let message = match lookup(key) {
            Some(entry) => match entry.support {
                Support::Supported | Support::Partly => {
                    self.values.insert(key, value);
                    return;
                }
                Support::Ignored => {
                    format!("not supported by xdp-ingress, ignored: {}", entry.note)
                }
                Support::NeverExecuted => {
                    format!(
                        "never executed ({}); the Ingress is served without it",
                        entry.note
                    )
                }
            },
            None if key.ends_with("-snippet") => {
                "never executed (nginx configuration is never executed); the Ingress is served \
                 without it"
                    .to_string()
            }
            None => "unknown ingress-nginx annotation, ignored".to_string(),
        };
        self.problems
            .push(self.ingress.warning(field(key), message));
    }

    fn get(&self, key: &str) -> Option<&'a str> {
        self.values.get(key).copied()
    }

    fn fail(&mut self, key: &str, why: String) {
        self.problems.push(self.ingress.problem(
            field(key),
            format!("{why}; this Ingress's routes answer 503 until it is fixed"),
        ));
        self.bad.push(format!("{PREFIX}{key}: {why}"));
    }

    /// A boolean as Go's `strconv.ParseBool` reads it; `default` when absent.
    fn bool(&mut self, key: &str, default: bool) -> bool {
        let Some(value) = self.get(key) else {
            return default;
        };
        match value.trim() {
            "1" | "t" | "T" | "true" | "TRUE" | "True" => true,
            "0" | "f" | "F" | "false" | "FALSE" | "False" => false,
            other => {
                self.fail(
                    key,
                    format!("{other:?} is not a boolean (\"true\" or \"false\")"),
                );
                default
            }
        }
    }

    /// A redirect code: 300–308 as ingress-nginx accepts, else its `default` (reported).
    fn code(&mut self, key: &str, default: StatusCode) -> StatusCode {
        let Some(value) = self.get(key) else {
            return default;
        };
        match value.trim().parse::<u16>() {
            Ok(code @ 300..=308) => StatusCode::from_u16(code).unwrap_or(default),
            Ok(code) => {
                self.problems.push(self.ingress.warning(
                    field(key),
                    format!(
                        "{code} is not a redirect code (300-308); {} is used, as ingress-nginx does",
                        default.as_u16()
                    ),
                ));
                default
            }
            Err(_) => {
                self.fail(key, format!("{value:?} is not a number"));
                default
            }
        }
    }

    /// A redirect target: an absolute http(s) URL, as ingress-nginx checks it.
    fn url(&mut self, key: &str) -> Option<HeaderValue> {
        let value = self.get(key)?.trim();
        if value.is_empty() {
            return None;
        }
        let scheme_ok = value
            .parse::<Uri>()
            .ok()
            .and_then(|uri| uri.scheme_str().map(str::to_ascii_lowercase))
            .is_some_and(|scheme| scheme == "http" || scheme == "https");
        match HeaderValue::from_str(value) {
            Ok(location) if scheme_ok => Some(location),
            _ => {
                self.fail(
                    key,
                    format!("{value:?} is not an absolute http:// or https:// URL"),
                );
                None
            }
        }
    }

    /// A comma-separated list of addresses and CIDR ranges; empty when absent.
    fn ranges(&mut self, key: &str) -> Vec<Cidr> {
        let Some(value) = self.get(key) else {
            return Vec::new();
        };
        let mut ranges = Vec::new();
        for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            match item.parse::<Cidr>() {
                Ok(range) => ranges.push(range),
                Err(error) => {
                    self.fail(key, error.to_string());
                    return Vec::new();
                }
            }
        }
        ranges
    }

    /// An absolute path (`app-root`, `x-forwarded-prefix`).
    fn path(&mut self, key: &str) -> Option<String> {
        let value = self.get(key)?.trim();
        if value.is_empty() {
            return None;
        }
        let valid = value.starts_with('/')
            && value.parse::<http::uri::PathAndQuery>().is_ok()
            && HeaderValue::from_str(value).is_ok();
        if !valid {
            self.fail(key, format!("{value:?} is not an absolute path"));
            return None;
        }
        Some(value.to_string())
    }

    fn read(mut self) -> IngressAnnotations {
        // First: on a canary, the other annotations are dropped (and reported) before use.
        let canary = self.canary_first();
        let mut out = IngressAnnotations {
            use_regex: self.bool("use-regex", false),
            ssl_redirect: self.bool("ssl-redirect", self.ingress.defaults.ssl_redirect),
            force_ssl_redirect: self.bool(
                "force-ssl-redirect",
                self.ingress.defaults.force_ssl_redirect,
            ),
            preserve_trailing_slash: self.bool("preserve-trailing-slash", false),
            from_to_www: self.bool("from-to-www-redirect", false),
            ssl_passthrough: self.bool(super::passthrough::KEY, false),
            http_redirect_code: self.ingress.defaults.http_redirect_code,
            hsts: self.ingress.defaults.hsts.clone(),
            ..IngressAnnotations::default()
        };
        if let Some(target) = self.get("rewrite-target").map(str::trim) {
            match rewrite_target(target) {
                Ok(converted) => {
                    out.rewrite_target = Some(converted);
                    out.rewrite_target_text = Some(target.to_string());
                }
                Err(why) => self.fail("rewrite-target", why),
            }
        }
        out.x_forwarded_prefix = self
            .path("x-forwarded-prefix")
            .and_then(|p| HeaderValue::from_str(&p).ok());
        out.app_root = self.path("app-root");
        // Temporal wins over permanent, as in ingress-nginx.
        let permanent_code = self.code("permanent-redirect-code", StatusCode::MOVED_PERMANENTLY);
        let temporal_code = self.code("temporal-redirect-code", StatusCode::FOUND);
        let permanent = self.url("permanent-redirect");
        let temporal = self.url("temporal-redirect");
        out.redirect = match (temporal, permanent) {
            (Some(temporal), _) => Some((temporal_code, temporal)),
            (None, Some(permanent)) => Some((permanent_code, permanent)),
            (None, None) => None,
        };
        if let Some(aliases) = self.get("server-alias") {
            for alias in aliases.split(',').map(str::trim).filter(|a| !a.is_empty()) {
                match check_host(Some(alias)) {
                    Ok(Some(alias)) => out.server_aliases.push(alias),
                    Ok(None) => {}
                    Err(why) => self.fail("server-alias", why),
                }
            }
        }
        if let Some(service) = self.get("default-backend").map(str::trim) {
            if is_dns_label(service) {
                out.default_backend = Some(service.to_string());
            } else {
                self.fail(
                    "default-backend",
                    format!("{service:?} is not a Service name (of the Ingress's namespace)"),
                );
            }
        }
        out.cors = self.cors();
        // ingress-nginx reads the new name first, the old one as its alias.
        // Neither: the ConfigMap's `whitelist-source-range`, as ingress-nginx.
        out.allow = match (
            self.get("allowlist-source-range"),
            self.get("whitelist-source-range"),
        ) {
            (Some(_), _) => self.ranges("allowlist-source-range"),
            (None, Some(_)) => self.ranges("whitelist-source-range"),
            (None, None) => self.ingress.defaults.allow_source_ranges.clone(),
        };
        out.deny = self.ranges("denylist-source-range");
        out.limits = self.limits();
        if canary {
            out.canary = Some(self.canary_rule());
        }
        out.balance = self.balance();
        out.basic_auth = self.basic_auth();
        out.external_auth = self.external_auth();
        out.upstream_vhost = self.upstream_vhost();
        // Read for its problems only: the backends read it (`backends::service_upstream`).
        self.bool("service-upstream", false);
        if !self.bad.is_empty() {
            out.invalid = Some(Bytes::from(format!(
                "503 Service Unavailable: Ingress {} has invalid annotations: {}\n",
                self.ingress.name,
                self.bad.join("; ")
            )));
        }
        out
    }
}

/// nginx's `rewrite` replacement in the regex crate's syntax: `$1`..`$9` become `${1}`..`${9}`,
/// any other `$` is taken literally. It must make a path: start with `/` or a capture.
fn rewrite_target(target: &str) -> Result<String, String> {
    if target.is_empty() {
        return Err("empty".into());
    }
    if !(target.starts_with('/') || target.starts_with('$')) {
        return Err(format!(
            "{target:?} must be a path (start with '/' or a capture such as $1)"
        ));
    }
    if target.bytes().any(|b| {
        b.is_ascii_whitespace() || b.is_ascii_control() || b == b';' || b == b'{' || b == b'}'
    }) {
        return Err(format!(
            "{target:?} contains whitespace, ';', '{{' or '}}', which a path cannot"
        ));
    }
    let mut out = String::with_capacity(target.len() + 8);
    let mut chars = target.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('$', Some(d)) if d.is_ascii_digit() => {
                out.push_str("${");
                out.push(*d);
                out.push('}');
                chars.next();
            }
            ('$', _) => out.push_str("$$"),
            (c, _) => out.push(c),
        }
    }
    Ok(out)
}

/// An RFC 1123 label, as Service names are.
fn is_dns_label(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}
