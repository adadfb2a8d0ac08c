//! Ingress rules into path rules: every host, path, path type and backend checked, each bad one
//! skipped with a problem naming its field, and conflicts settled by precedence, with the route
//! table's own notion of "the same rule".

use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::api::networking::v1::{HTTPIngressPath, IngressBackend, IngressRule};

use super::{backends::Backends, class::OurIngress, BackendId, PathRule, PathType, ServicePortRef};
use crate::model::{ObjectName, Problem};

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
}

impl MatchKey {
    fn of(path: &str, path_type: PathType) -> Self {
        match path_type {
            PathType::Exact => MatchKey::Exact(path.to_string()),
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
}

/// Every valid path of our Ingresses, in precedence order, conflicts removed and reported.
pub(super) fn path_rules(
    ours: &[OurIngress<'_>],
    backends: &mut Backends<'_>,
    problems: &mut Vec<Problem>,
) -> Vec<(Option<String>, PathRule<BackendId>)> {
    let mut rules = Rules::default();
    for ingress in ours {
        let ingress_rules = ingress.spec().and_then(|s| s.rules.as_ref());
        for (i, rule) in ingress_rules.into_iter().flatten().enumerate() {
            match check_host(rule.host.as_deref()) {
                Ok(host) => rules.add_rule(ingress, i, &host, rule, backends, problems),
                Err(message) => {
                    problems.push(ingress.problem(format!("spec.rules[{i}].host"), message))
                }
            }
        }
    }
    rules.rules
}

/// The path rules accepted so far, and who claimed each host+path.
#[derive(Default)]
struct Rules {
    claimed: BTreeMap<(String, MatchKey), Claim>,
    rules: Vec<(Option<String>, PathRule<BackendId>)>,
}

impl Rules {
    /// The paths of `spec.rules[i]`, whose host is valid.
    fn add_rule(
        &mut self,
        ingress: &OurIngress<'_>,
        i: usize,
        host: &Option<String>,
        rule: &IngressRule,
        backends: &mut Backends<'_>,
        problems: &mut Vec<Problem>,
    ) {
        // `http: None` is valid: a rule with no paths (used for TLS hosts, say).
        let paths = rule.http.as_ref().map(|h| h.paths.as_slice());
        for (j, path) in paths.into_iter().flatten().enumerate() {
            let field = format!("spec.rules[{i}].http.paths[{j}]");
            match check_path(path, &field) {
                Ok(checked) => self.add_path(ingress, field, host, checked, backends, problems),
                Err((field, message)) => problems.push(ingress.problem(field, message)),
            }
        }
    }

    /// One valid path (at `field`), unless an earlier rule already has its host and path.
    fn add_path(
        &mut self,
        ingress: &OurIngress<'_>,
        field: String,
        host: &Option<String>,
        checked: CheckedPath,
        backends: &mut Backends<'_>,
        problems: &mut Vec<Problem>,
    ) {
        let key = (
            host.clone().unwrap_or_default(),
            MatchKey::of(&checked.path, checked.path_type),
        );
        if let Some(winner) = self.claimed.get(&key) {
            problems.push(conflict(ingress, &field, host, &checked, winner));
            return;
        }
        let backend_field = format!("{field}.backend");
        let backend = backends.intern(ingress, &checked.service, &backend_field, problems);
        let claim = Claim {
            ingress: ingress.name.clone(),
            field,
        };
        self.claimed.insert(key, claim);
        let rule = PathRule {
            path: checked.path,
            path_type: checked.path_type,
            backend,
        };
        self.rules.push((host.clone(), rule));
    }
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
) -> Option<BackendId> {
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
    chosen.map(|(_, id)| id)
}
