//! Ingress rules into path rules: every host, path, path type and backend checked, each bad one
//! skipped with a problem naming its field, and conflicts settled by precedence, with the route
//! table's own notion of "the same rule". Each rule's [`Route`] carries the filters its
//! Ingress's annotations ask for (see `annotations` and `rules/extra` for the rules the
//! annotations add: `app-root`, `server-alias`, `from-to-www-redirect`, `default-backend`).

mod canary;
mod extra;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use k8s_openapi::api::networking::v1::{HTTPIngressPath, IngressBackend, IngressRule};

use super::{
    annotations::{self, IngressAnnotations},
    backends::Backends,
    class::OurIngress,
    passthrough::{passthrough_table, PassthroughInput, PassthroughTable},
    routes::{
        path_regex,
        series::{RouteSeries, SeriesKey},
        Filter, Route, REGEX_SIZE_LIMIT,
    },
    BackendId, PathRule, PathType, ServicePortRef, TlsPlan,
};
use crate::model::{ClusterObjects, ObjectName, Problem};

/// A Service backend as an Ingress names it.
pub(super) struct ServiceRef {
    pub(super) name: String,
    pub(super) port: ServicePortRef,
}

/// A rule's path, checked.
struct CheckedPath {
    path: String,
    path_type: PathType,
    service: ServiceRef,
}

/// What makes two rules of one host the same rule in the [`RouteTable`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum MatchKey {
    Exact(String),
    /// Path elements: the table drops empty ones, so `/foo` and `/foo/` are one rule.
    Prefix(Vec<String>),
    /// The regex as written.
    Regex(String),
}

impl MatchKey {
    fn of(path: &str, path_type: PathType) -> Self {
        match path_type {
            PathType::Exact => MatchKey::Exact(path.to_string()),
            PathType::Regex => MatchKey::Regex(path.to_string()),
            PathType::Prefix | PathType::ImplementationSpecific => MatchKey::Prefix(
                path.split('/')
                    .filter(|e| !e.is_empty())
                    .map(str::to_string)
                    .collect(),
            ),
        }
    }
}

/// Where a routed path came from, to name the winner of a conflict.
struct Claim {
    ingress: ObjectName,
    field: String,
    /// Its rule's index in [`Rules::rules`] (a canary joins that route).
    index: usize,
}

/// What the rules of our Ingresses are translated with.
pub(super) struct Context<'a, 'b> {
    pub(super) objects: &'a ClusterObjects,
    pub(super) backends: &'b mut Backends<'a>,
    /// Certificates (for `ssl-redirect`: only hosts with one redirect).
    pub(super) tls: &'b [TlsPlan],
    /// `--enable-ssl-passthrough`.
    pub(super) ssl_passthrough: bool,
    /// Out: the `ssl-passthrough` hosts, chosen with the rules.
    pub(super) passthrough: PassthroughTable,
}

/// One Ingress and what its annotations say.
struct Annotated<'a, 'b> {
    ingress: &'b OurIngress<'a>,
    annotations: IngressAnnotations,
    /// Its `default-backend`, resolved.
    fallback: Option<BackendId>,
}

/// Every valid path of our Ingresses, in precedence order, conflicts removed and reported,
/// with the rules the annotations add.
pub(super) fn path_rules(
    ours: &[OurIngress<'_>],
    context: &mut Context<'_, '_>,
    auth_secrets: &mut Vec<ObjectName>,
    problems: &mut Vec<Problem>,
) -> Vec<(Option<String>, PathRule<Route>)> {
    let annotated: Vec<Annotated<'_, '_>> = ours
        .iter()
        .map(|ingress| {
            let mut annotations = annotations::parse(ingress, problems);
            if let Some(source) = &annotations.basic_auth {
                auth_secrets.push(source.secret.clone());
                if annotations.invalid.is_none() {
                    match annotations::resolve_basic(ingress, source, context.objects, problems) {
                        Ok(basic) => annotations.basic = Some(basic),
                        Err(why) => annotations.invalid = Some(why.into()),
                    }
                }
            }
            let fallback = extra::default_backend(ingress, &annotations, context, problems);
            Annotated {
                ingress,
                annotations,
                fallback,
            }
        })
        .collect();
    let mut rules = Rules {
        regex_hosts: regex_hosts(&annotated),
        ..Rules::default()
    };
    // Canary Ingresses join the routes of the others (below), never make their own.
    for ingress in annotated.iter().filter(|a| a.annotations.canary.is_none()) {
        let ingress_rules = ingress.ingress.spec().and_then(|s| s.rules.as_ref());
        for (i, rule) in ingress_rules.into_iter().flatten().enumerate() {
            match check_host(rule.host.as_deref()) {
                Ok(host) => rules.add_rule(ingress, i, &host, rule, context, problems),
                Err(message) => problems.push(
                    ingress
                        .ingress
                        .problem(format!("spec.rules[{i}].host"), message),
                ),
            }
        }
    }
    let inputs: Vec<PassthroughInput<'_, '_>> = annotated
        .iter()
        .map(|a| PassthroughInput {
            ingress: a.ingress,
            wanted: a.annotations.ssl_passthrough,
            hosts: rule_hosts(a.ingress),
        })
        .collect();
    context.passthrough =
        passthrough_table(&inputs, &rules.rules, context.ssl_passthrough, problems);
    for ingress in annotated.iter().filter(|a| a.annotations.canary.is_some()) {
        canary::merge(ingress, &mut rules, context, problems);
    }
    extra::add(&annotated, &rules.regex_hosts, rules.rules, problems)
}

/// The valid host of each rule of an Ingress, with the rule's index.
fn rule_hosts(ingress: &OurIngress<'_>) -> Vec<(usize, Option<String>)> {
    let rules = ingress.spec().and_then(|s| s.rules.as_ref());
    rules
        .into_iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, rule)| Some((i, check_host(rule.host.as_deref()).ok()?)))
        .collect()
}

/// The hosts (`""`: rules without one) where some Ingress asks for regex paths: there, every
/// path of every Ingress is a regex, as in ingress-nginx.
fn regex_hosts(annotated: &[Annotated<'_, '_>]) -> BTreeSet<String> {
    annotated
        .iter()
        .filter(|a| a.annotations.wants_regex())
        .flat_map(|a| hosts_of(a.ingress))
        .map(Option::unwrap_or_default)
        .collect()
}

/// The valid hosts of an Ingress's rules, in order, without repeats.
fn hosts_of(ingress: &OurIngress<'_>) -> Vec<Option<String>> {
    let mut hosts = Vec::new();
    let rules = ingress.spec().and_then(|s| s.rules.as_ref());
    for rule in rules.into_iter().flatten() {
        if let Ok(host) = check_host(rule.host.as_deref()) {
            if !hosts.contains(&host) {
                hosts.push(host);
            }
        }
    }
    hosts
}

/// The path rules accepted so far, and who claimed each host+path.
#[derive(Default)]
struct Rules {
    claimed: BTreeMap<(String, MatchKey), Claim>,
    rules: Vec<(Option<String>, PathRule<Route>)>,
    regex_hosts: BTreeSet<String>,
}

impl Rules {
    /// The paths of `spec.rules[i]`, whose host is valid.
    fn add_rule(
        &mut self,
        ingress: &Annotated<'_, '_>,
        i: usize,
        host: &Option<String>,
        rule: &IngressRule,
        context: &mut Context<'_, '_>,
        problems: &mut Vec<Problem>,
    ) {
        // `http: None` is valid: a rule with no paths (used for TLS hosts, say).
        let paths = rule.http.as_ref().map(|h| h.paths.as_slice());
        for (j, path) in paths.into_iter().flatten().enumerate() {
            let field = format!("spec.rules[{i}].http.paths[{j}]");
            match check_path(path, &field) {
                Ok(checked) => self.add_path(ingress, field, host, checked, context, problems),
                Err((field, message)) => problems.push(ingress.ingress.problem(field, message)),
            }
        }
    }

    /// One valid path (at `field`), unless an earlier rule already has its host and path.
    fn add_path(
        &mut self,
        annotated: &Annotated<'_, '_>,
        field: String,
        host: &Option<String>,
        mut checked: CheckedPath,
        context: &mut Context<'_, '_>,
        problems: &mut Vec<Problem>,
    ) {
        let ingress = annotated.ingress;
        let host_key = host.clone().unwrap_or_default();
        let mut broken_regex = None;
        if self.regex_hosts.contains(&host_key) {
            checked.path_type = PathType::Regex;
            if let Err(error) = path_regex(&checked.path) {
                let why = regex_error(&checked.path, &error);
                problems.push(ingress.problem(
                    format!("{field}.path"),
                    format!(
                        "{why} (the paths of this host are regexes: an Ingress of it sets \
                         use-regex or rewrite-target); this path answers 503"
                    ),
                ));
                broken_regex = Some(why);
            }
        }
        let key = (host_key, MatchKey::of(&checked.path, checked.path_type));
        if let Some(winner) = self.claimed.get(&key) {
            problems.push(conflict(ingress, &field, host, &checked, winner));
            return;
        }
        let backend_field = format!("{field}.backend");
        let backend = context
            .backends
            .intern(ingress, &checked.service, &backend_field, problems);
        context.backends.plans[backend].balance = annotated.annotations.balance.clone();
        let claim = Claim {
            ingress: ingress.name.clone(),
            field,
            index: self.rules.len(),
        };
        self.claimed.insert(key, claim);
        let mut route = Route::to(backend, Some(ingress.name.clone()));
        route.fallback = annotated.fallback;
        let limits = &annotated.annotations.limits;
        if let Some(policy) = &limits.policy {
            route.policy = policy.clone();
        }
        route.connection_limit = limits.connections.clone();
        route.cookie_path = canary::cookie_path(&annotated.annotations, &checked.path);
        route.series = Some(RouteSeries::new(SeriesKey {
            host: host.clone().unwrap_or_default(),
            path: checked.path.clone(),
            ingress: ingress.name.clone(),
            service: context.backends.plans[backend].service.name.clone(),
            canary: String::new(),
        }));
        route.filters = match broken_regex {
            Some(why) => vec![Filter::Fail(
                format!("503 Service Unavailable: Ingress {}: {why}\n", ingress.name).into(),
            )],
            None => filters(
                &annotated.annotations,
                host.as_deref(),
                &checked.path,
                context.tls,
            ),
        };
        let rule = PathRule {
            path: checked.path,
            path_type: checked.path_type,
            backend: route,
        };
        self.rules.push((host.clone(), rule));
    }
}

/// Rule paths under this prefix are never redirected to HTTPS.
const ACME_CHALLENGE: &str = "/.well-known/acme-challenge";

/// Why `path` is no regex, in a line.
fn regex_error(path: &str, error: &regex::Error) -> String {
    match error {
        regex::Error::CompiledTooBig(_) => format!(
            "path {path:?} is a regex larger than the limit ({REGEX_SIZE_LIMIT} bytes compiled)"
        ),
        other => {
            let detail = other.to_string();
            let last = detail.lines().last().unwrap_or_default().trim();
            format!("path {path:?} is not a valid regex: {last}")
        }
    }
}

/// The request filters of a rule of `host` and `path` whose Ingress has `annotations`, in the
/// order nginx runs them: CORS and a fixed redirect (`if` and `return` in the location), the
/// HTTPS redirect (Lua, end of the rewrite phase), the rate limits (preaccess phase), the
/// source ranges (access phase), then the rewrite and the header for the backend.
fn filters(
    annotations: &IngressAnnotations,
    host: Option<&str>,
    path: &str,
    tls: &[TlsPlan],
) -> Vec<Filter> {
    if let Some(why) = &annotations.invalid {
        return vec![Filter::Fail(why.clone())];
    }
    let mut filters = Vec::new();
    // nginx: the CORS `if`s come first in the location, so a preflight is answered even where
    // a redirect would follow.
    if let Some(cors) = &annotations.cors {
        filters.push(Filter::Cors(cors.clone()));
    }
    if let Some((status, location)) = &annotations.redirect {
        filters.push(Filter::Redirect {
            status: *status,
            location: location.clone(),
        });
    }
    let has_certificate = host.is_some_and(|host| has_certificate(tls, host));
    // ingress-nginx's `no-tls-redirect-locations` default: ACME HTTP-01 challenges (cert-manager's
    // solver Ingresses) must be answered over plain HTTP, whatever the annotations say.
    let acme = path.starts_with(ACME_CHALLENGE);
    if !acme && (annotations.force_ssl_redirect || (annotations.ssl_redirect && has_certificate)) {
        filters.push(Filter::HttpsRedirect {
            status: annotations.http_redirect_code,
            strip_trailing_slash: !annotations.preserve_trailing_slash,
        });
    }
    // ingress-nginx's `hsts`: on the HTTPS responses of servers with a certificate.
    if let Some(value) = annotations.hsts.as_ref().filter(|_| has_certificate) {
        filters.push(Filter::Hsts(value.clone()));
    }
    // nginx's access phase (allow/deny) follows the rewrite phase (the redirects above).
    // nginx's preaccess phase (limit_req) runs before its access phase (allow / deny).
    for limiter in &annotations.limits.rates {
        filters.push(Filter::RateLimit(limiter.clone()));
    }
    if !annotations.deny.is_empty() || !annotations.allow.is_empty() {
        filters.push(Filter::SourceRange {
            deny: annotations.deny.clone(),
            allow: annotations.allow.clone(),
        });
    }
    // nginx's access phase again: auth_basic, then auth_request (`satisfy all`).
    if let Some(basic) = &annotations.basic {
        filters.push(Filter::BasicAuth(basic.clone()));
    }
    if let Some(external) = &annotations.external_auth {
        filters.push(Filter::ExternalAuth(external.clone()));
    }
    if let Some(host) = &annotations.upstream_vhost {
        filters.push(Filter::UpstreamVhost(host.clone()));
    }
    // ingress-nginx does not rewrite a path equal to the target.
    let rewrite = annotations
        .rewrite_target
        .as_ref()
        .filter(|_| annotations.rewrite_target_text.as_deref() != Some(path));
    if let Some(target) = rewrite {
        // nginx: `rewrite "(?i)<path>" <target> break;`, unanchored.
        let regex = regex::RegexBuilder::new(path)
            .case_insensitive(true)
            .size_limit(REGEX_SIZE_LIMIT)
            .build();
        if let Ok(regex) = regex {
            filters.push(Filter::Rewrite {
                regex,
                target: target.clone(),
            });
            if let Some(prefix) = &annotations.x_forwarded_prefix {
                filters.push(Filter::SetHeader {
                    name: http::HeaderName::from_static("x-forwarded-prefix"),
                    value: prefix.clone(),
                });
            }
        }
    }
    filters
}

/// Whether a usable certificate covers `host` (a rule's host: a name or `*.suffix`).
fn has_certificate(tls: &[TlsPlan], host: &str) -> bool {
    let covers = |name: &str| {
        name == host
            || name.strip_prefix("*.").is_some_and(|suffix| {
                host.split_once('.')
                    .is_some_and(|(label, rest)| rest == suffix && label != "*")
            })
    };
    tls.iter()
        .any(|plan| plan.pem.is_ok() && plan.hosts.iter().any(|name| covers(name)))
}

fn conflict(
    ingress: &OurIngress<'_>,
    field: &str,
    host: &Option<String>,
    path: &CheckedPath,
    winner: &Claim,
) -> Problem {
    let host = host.as_deref().unwrap_or("every host");
    let by = if winner.ingress == *ingress.name {
        format!("{} of this Ingress", winner.field)
    } else {
        format!(
            "Ingress {} ({}), which takes precedence (older, or as old and first by namespace/name)",
            winner.ingress, winner.field
        )
    };
    ingress.problem(
        field,
        format!(
            "{host} path {} ({:?}) is already routed by {by}; this path is ignored",
            path.path, path.path_type
        ),
    )
}

/// The rule's host, lower-cased; `Ok(None)`: the rule applies to every host.
pub(super) fn check_host(host: Option<&str>) -> Result<Option<String>, String> {
    let Some(host) = host.filter(|h| !h.is_empty()) else {
        return Ok(None);
    };
    let host = host.to_ascii_lowercase();
    let unbracketed = host.trim_start_matches('[').trim_end_matches(']');
    if unbracketed.parse::<IpAddr>().is_ok() {
        return Err(format!(
            "{host:?} is an IP address; the Ingress specification allows only DNS names"
        ));
    }
    if host.contains(':') {
        return Err(format!("{host:?} must not contain a port or ':'"));
    }
    let name = host.strip_prefix("*.").unwrap_or(&host);
    if name.contains('*') {
        return Err(format!(
            "{host:?}: a wildcard is allowed only as the whole first label, as in *.example.com"
        ));
    }
    if !is_dns_subdomain(name) {
        return Err(format!(
            "{host:?} is not a valid DNS name (RFC 1123: labels of a-z, 0-9 and '-')"
        ));
    }
    Ok(Some(host))
}

/// RFC 1123 subdomain, lower-case, as Kubernetes validates it.
fn is_dns_subdomain(name: &str) -> bool {
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    name.len() <= 253 && name.split('.').all(label_ok)
}

/// Checks one `spec.rules[i].http.paths[j]` (at `field`); on error, the offending field.
fn check_path(path: &HTTPIngressPath, field: &str) -> Result<CheckedPath, (String, String)> {
    let path_type = match path.path_type.as_str() {
        "Exact" => PathType::Exact,
        "Prefix" => PathType::Prefix,
        "ImplementationSpecific" => PathType::ImplementationSpecific,
        "" => {
            return Err((
                format!("{field}.pathType"),
                "missing (Exact, Prefix or ImplementationSpecific)".into(),
            ))
        }
        other => {
            return Err((
                format!("{field}.pathType"),
                format!("unknown path type {other:?} (Exact, Prefix or ImplementationSpecific)"),
            ))
        }
    };
    let text = path.path.as_deref().unwrap_or("");
    let text = match (text, path_type) {
        ("", PathType::ImplementationSpecific) => "/",
        _ => text,
    };
    if !text.starts_with('/') {
        return Err((
            format!("{field}.path"),
            format!("{text:?} must be an absolute path (start with '/')"),
        ));
    }
    let service = check_backend(&path.backend, &format!("{field}.backend"))?;
    Ok(CheckedPath {
        path: text.to_string(),
        path_type,
        service,
    })
}

/// Checks an Ingress backend (at `field`): a Service and exactly one of port number and name.
fn check_backend(backend: &IngressBackend, field: &str) -> Result<ServiceRef, (String, String)> {
    if backend.resource.is_some() {
        return Err((
            format!("{field}.resource"),
            "resource backends are not supported; use a Service backend".into(),
        ));
    }
    let Some(service) = backend.service.as_ref() else {
        return Err((field.to_string(), "missing: names no Service".into()));
    };
    if service.name.is_empty() {
        return Err((format!("{field}.service.name"), "missing".into()));
    }
    let port_field = format!("{field}.service.port");
    let port = service.port.as_ref();
    let number = port.and_then(|p| p.number);
    let name = port
        .and_then(|p| p.name.as_deref())
        .filter(|n| !n.is_empty());
    let port = match (number, name) {
        (Some(number), None) => match u16::try_from(number) {
            Ok(n) if n != 0 => ServicePortRef::Number(n),
            _ => {
                return Err((
                    format!("{port_field}.number"),
                    format!("{number} is not a valid port (1-65535)"),
                ))
            }
        },
        (None, Some(name)) => ServicePortRef::Name(name.to_string()),
        (Some(_), Some(_)) => {
            return Err((
                port_field,
                "sets both number and name; set exactly one".into(),
            ))
        }
        (None, None) => {
            return Err((port_field, "missing: set number or name".into()));
        }
    };
    Ok(ServiceRef {
        name: service.name.clone(),
        port,
    })
}

/// The default backend: the oldest of our Ingresses' valid `spec.defaultBackend`s.
pub(super) fn default_backend(
    ours: &[OurIngress<'_>],
    backends: &mut Backends<'_>,
    problems: &mut Vec<Problem>,
) -> Option<Route> {
    const FIELD: &str = "spec.defaultBackend";
    let mut chosen: Option<(&ObjectName, BackendId)> = None;
    for ingress in ours {
        let Some(backend) = ingress.spec().and_then(|s| s.default_backend.as_ref()) else {
            continue;
        };
        if let Some((winner, _)) = chosen {
            problems.push(ingress.problem(
                FIELD,
                format!(
                    "Ingress {winner} already sets the default backend and takes precedence \
                     (older, or as old and first by namespace/name); this one is ignored"
                ),
            ));
            continue;
        }
        match check_backend(backend, FIELD) {
            Ok(service) => {
                let id = backends.intern(ingress, &service, FIELD, problems);
                chosen = Some((ingress.name, id));
            }
            Err((field, message)) => problems.push(ingress.problem(field, message)),
        }
    }
    chosen.map(|(ingress, id)| Route::to(id, Some(ingress.clone())))
}
