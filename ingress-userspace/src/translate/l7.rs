//! The L7 half of the translator: Ingresses (with their IngressClasses, Services, EndpointSlices
//! and TLS Secrets) in, an [`L7Plan`] out. Pure: no I/O, no clock.
//!
//! Choices, and why:
//! - **Ours**: `spec.ingressClassName`, else the deprecated `kubernetes.io/ingress.class`
//!   annotation, names an IngressClass whose `spec.controller` is ours; an Ingress naming no class
//!   is ours when one of our classes is annotated `ingressclass.kubernetes.io/is-default-class:
//!   "true"`. Other Ingresses are another controller's business: ignored without a problem.
//! - **Precedence**: oldest `creationTimestamp` first (missing last), then namespace/name. The
//!   route table keeps the first rule for a host+path, so the oldest Ingress wins a conflict, as
//!   with ingress-nginx; the loser is reported. Conflicts use the table's own notion of "same":
//!   Prefix `/foo` and `/foo/` are one rule, and `ImplementationSpecific` (matched as `Prefix`)
//!   collides with `Prefix`. Only the oldest `spec.defaultBackend` is used.
//! - **Bad input skips the least**: an invalid host skips its rule, a bad path, path type or
//!   backend skips that path, each with a problem naming the field; everything else serves. An
//!   empty `ImplementationSpecific` path means `/` (the API server allows it).
//! - **Backends** are per (Ingress, Service, port) and resolved here to ready IPv4 endpoints with
//!   the L4 rules (EndpointSlice label, port by name, `ready: false` excluded). An unresolvable
//!   backend keeps its route, so the proxy answers 503 saying why; an unknown Service or port, or a
//!   Service the proxy cannot reach (ExternalName, a non-TCP port), is also reported. No ready
//!   endpoint is a normal state: no problem.
//! - **TLS**: one [`TlsPlan`] per `spec.tls[]` entry with a `secretName`, in precedence order. An
//!   entry without `hosts` covers the hosts of the Ingress's own rules (as ingress-nginx does); if
//!   the rules name no host either, its host list stays empty and it covers no name. An entry
//!   without `secretName` gets no plan (those hosts get the default certificate). A missing or
//!   unusable Secret is reported and the plan carries the reason.

pub mod plan;
pub mod routes;

#[cfg(test)]
mod tests;

pub use plan::{BackendId, BackendPlan, L7Plan, PemPair, ServicePortRef, TlsPlan, Unavailable};
pub use routes::{PathRule, PathType, RouteTable};

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use k8s_openapi::{
    api::{
        discovery::v1::EndpointSlice,
        networking::v1::{HTTPIngressPath, Ingress, IngressBackend, IngressRule, IngressSpec},
    },
    apimachinery::pkg::apis::meta::v1::Time,
};

use super::l4::{compare_created, group_slices, resolve_backends, Protocol};
use crate::model::{ClusterObjects, ObjectName, Problem, Sourced, TLS_SECRET_TYPE};

/// The controller name our IngressClasses carry in `spec.controller`, unless configured.
pub const DEFAULT_CONTROLLER_NAME: &str = "xdp-ingress.dev/controller";
/// The deprecated per-Ingress class annotation, still honoured when `ingressClassName` is unset.
pub const INGRESS_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
/// The IngressClass annotation that makes it the class of Ingresses naming none.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";

/// What the L7 translation needs besides the objects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct L7Options {
    /// IngressClasses with this `spec.controller` are ours.
    pub controller_name: String,
    /// The certificate for names no Ingress covers (`--default-tls-secret`).
    pub default_tls_secret: Option<ObjectName>,
}

impl Default for L7Options {
    fn default() -> Self {
        Self {
            controller_name: DEFAULT_CONTROLLER_NAME.to_string(),
            default_tls_secret: None,
        }
    }
}

/// Objects in, plan out, with every problem found in our Ingresses.
pub fn translate(objects: &ClusterObjects, options: &L7Options) -> (L7Plan, Vec<Problem>) {
    let mut problems = Vec::new();
    let ours = our_ingresses(objects, &options.controller_name);
    let mut backends = Backends::new(objects);
    let rules = path_rules(&ours, &mut backends, &mut problems);
    let default_backend = default_backend(&ours, &mut backends, &mut problems);
    let routes = Arc::new(RouteTable::new(
        rules
            .iter()
            .map(|(host, rule)| (host.as_deref(), rule.clone())),
        default_backend,
    ));
    let tls = ours
        .iter()
        .flat_map(|ingress| tls_plans(ingress, objects, &mut problems))
        .collect();
    let default_tls = options
        .default_tls_secret
        .as_ref()
        .map(|secret| default_tls(objects, secret, &mut problems));
    let mut ingresses: Vec<ObjectName> = ours.iter().map(|i| i.name.clone()).collect();
    ingresses.sort();
    let plan = L7Plan {
        routes,
        backends: backends.plans,
        tls,
        default_tls,
        ingresses,
    };
    (plan, problems)
}

/// One of our Ingresses.
struct OurIngress<'a> {
    name: &'a ObjectName,
    ingress: &'a Sourced<Ingress>,
}

impl OurIngress<'_> {
    fn created(&self) -> Option<&Time> {
        self.ingress.object.metadata.creation_timestamp.as_ref()
    }

    fn spec(&self) -> Option<&IngressSpec> {
        self.ingress.object.spec.as_ref()
    }

    fn problem(&self, field: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            origin: self.ingress.origin.to_string(),
            object: format!("Ingress {}", self.name),
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Our Ingresses, in precedence order.
fn our_ingresses<'a>(objects: &'a ClusterObjects, controller: &str) -> Vec<OurIngress<'a>> {
    let mut our_classes = BTreeSet::new();
    let mut default_is_ours = false;
    for (name, class) in &objects.ingress_classes {
        let class = &class.object;
        if class.spec.as_ref().and_then(|s| s.controller.as_deref()) != Some(controller) {
            continue;
        }
        our_classes.insert(name.as_str());
        let annotations = class.metadata.annotations.as_ref();
        default_is_ours |= annotations
            .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
            .is_some_and(|v| v == "true");
    }
    let mut ours: Vec<OurIngress<'_>> = objects
        .ingresses
        .iter()
        .filter(|(_, ingress)| match class_of(&ingress.object) {
            Some(class) => our_classes.contains(class),
            None => default_is_ours,
        })
        .map(|(name, ingress)| OurIngress { name, ingress })
        .collect();
    tracing::debug!(
        ours = ours.len(),
        ignored = objects.ingresses.len() - ours.len(),
        "Ingresses selected by class"
    );
    ours.sort_by(|a, b| compare_created(a.created(), b.created()).then_with(|| a.name.cmp(b.name)));
    ours
}

/// The class an Ingress asks for: `spec.ingressClassName`, else the deprecated annotation.
fn class_of(ingress: &Ingress) -> Option<&str> {
    let from_spec = ingress
        .spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.as_deref());
    let annotations = ingress.metadata.annotations.as_ref();
    let from_annotation = annotations
        .and_then(|a| a.get(INGRESS_CLASS_ANNOTATION))
        .map(String::as_str);
    from_spec
        .filter(|c| !c.is_empty())
        .or(from_annotation.filter(|c| !c.is_empty()))
}

/// A Service backend as an Ingress names it.
struct ServiceRef {
    name: String,
    port: ServicePortRef,
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
fn path_rules(
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
fn check_host(host: Option<&str>) -> Result<Option<String>, String> {
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
fn default_backend(
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

/// The backends routes point at, one per (Ingress, Service, port), resolved to endpoints.
struct Backends<'a> {
    objects: &'a ClusterObjects,
    slices: BTreeMap<ObjectName, Vec<&'a EndpointSlice>>,
    ids: BTreeMap<(ObjectName, ObjectName, ServicePortRef), BackendId>,
    plans: Vec<BackendPlan>,
}

impl<'a> Backends<'a> {
    fn new(objects: &'a ClusterObjects) -> Self {
        Self {
            objects,
            slices: group_slices(objects),
            ids: BTreeMap::new(),
            plans: Vec::new(),
        }
    }

    /// The id of `ingress`'s backend `service` (named at `field`), resolving it the first time;
    /// a backend that cannot work is reported once, at its first use.
    fn intern(
        &mut self,
        ingress: &OurIngress<'_>,
        service: &ServiceRef,
        field: &str,
        problems: &mut Vec<Problem>,
    ) -> BackendId {
        let service_name = ObjectName {
            namespace: ingress.name.namespace.clone(),
            name: service.name.clone(),
        };
        let key = (ingress.name.clone(), service_name, service.port.clone());
        if let Some(id) = self.ids.get(&key) {
            return *id;
        }
        let (ingress_name, service_name, port) = key.clone();
        let endpoints = self.resolve(&service_name, &port);
        if let Err(why) = &endpoints {
            if let Some((subfield, message)) = unavailable_problem(why, &service_name, &port) {
                problems.push(ingress.problem(format!("{field}.{subfield}"), message));
            }
        }
        let id = self.plans.len();
        self.plans.push(BackendPlan {
            ingress: ingress_name,
            service: service_name,
            port,
            endpoints,
        });
        self.ids.insert(key, id);
        id
    }

    /// Ready IPv4 endpoints of the Service port, sorted, or why there are none.
    fn resolve(
        &self,
        name: &ObjectName,
        port: &ServicePortRef,
    ) -> Result<Vec<SocketAddr>, Unavailable> {
        let service = self
            .objects
            .services
            .get(name)
            .ok_or(Unavailable::UnknownService)?;
        let spec = service.object.spec.as_ref();
        if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
            return Err(Unavailable::UnsupportedService(
                "ExternalName Services are not supported".into(),
            ));
        }
        let ports = spec.and_then(|s| s.ports.as_ref());
        let service_port = ports
            .into_iter()
            .flatten()
            .find(|p| match port {
                ServicePortRef::Number(n) => p.port == i32::from(*n),
                ServicePortRef::Name(name) => p.name.as_deref() == Some(name.as_str()),
            })
            .ok_or(Unavailable::UnknownPort)?;
        let protocol = service_port.protocol.as_deref().unwrap_or("TCP");
        if protocol != "TCP" {
            return Err(Unavailable::UnsupportedService(format!(
                "port {port} is {protocol}; HTTP needs TCP"
            )));
        }
        let slices = self.slices.get(name).map(Vec::as_slice).unwrap_or(&[]);
        let port_name = service_port.name.as_deref().unwrap_or("");
        // A BTreeSet of (address, port): already sorted as SocketAddrs sort.
        let (endpoints, _) = resolve_backends(slices, port_name, Protocol::Tcp);
        if endpoints.is_empty() {
            return Err(Unavailable::NoReadyEndpoints);
        }
        Ok(endpoints
            .iter()
            .map(|e| SocketAddr::from((e.addr, e.port)))
            .collect())
    }
}

/// Incremental: re-resolves the endpoints of the plan's backends whose Service is in `services`
/// (their EndpointSlices changed). Returns the ids whose endpoints changed; the routes and
/// everything else stay as they are.
pub fn refresh_endpoints(
    objects: &ClusterObjects,
    plan: &mut L7Plan,
    services: &BTreeSet<ObjectName>,
) -> Vec<BackendId> {
    let affected: Vec<BackendId> = plan
        .backends
        .iter()
        .enumerate()
        .filter(|(_, backend)| services.contains(&backend.service))
        .map(|(id, _)| id)
        .collect();
    if affected.is_empty() {
        return Vec::new();
    }
    // Only the slices of the affected Services (one pass, no full grouping).
    let mut slices: BTreeMap<ObjectName, Vec<&EndpointSlice>> = BTreeMap::new();
    for (name, slice) in &objects.endpoint_slices {
        let service = slice
            .object
            .metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get(super::l4::SERVICE_NAME_LABEL));
        if let Some(service) = service {
            let service = ObjectName {
                namespace: name.namespace.clone(),
                name: service.clone(),
            };
            if services.contains(&service) {
                slices.entry(service).or_default().push(&slice.object);
            }
        }
    }
    let resolver = Backends {
        objects,
        slices,
        ids: BTreeMap::new(),
        plans: Vec::new(),
    };
    let mut changed = Vec::new();
    for id in affected {
        let backend = &mut plan.backends[id];
        let endpoints = resolver.resolve(&backend.service, &backend.port);
        if endpoints != backend.endpoints {
            backend.endpoints = endpoints;
            changed.push(id);
        }
    }
    changed
}

/// The problem to report for an unresolvable backend (sub-field of the backend, message); `None`
/// for states that are normal (no ready endpoints yet).
fn unavailable_problem(
    why: &Unavailable,
    service: &ObjectName,
    port: &ServicePortRef,
) -> Option<(&'static str, String)> {
    let answered = "requests routed here get 503";
    match why {
        Unavailable::NoReadyEndpoints => None,
        Unavailable::UnknownService => Some((
            "service.name",
            format!("Service {service} does not exist; {answered}"),
        )),
        Unavailable::UnknownPort => Some((
            "service.port",
            format!("Service {service} has no port {port}; {answered}"),
        )),
        Unavailable::UnsupportedService(reason) => Some((
            "service.name",
            format!("Service {service}: {reason}; {answered}"),
        )),
    }
}

/// The TLS plans of one Ingress's `spec.tls`, in order.
fn tls_plans(
    ingress: &OurIngress<'_>,
    objects: &ClusterObjects,
    problems: &mut Vec<Problem>,
) -> Vec<TlsPlan> {
    let entries = ingress.spec().and_then(|s| s.tls.as_ref());
    let mut plans = Vec::new();
    for (i, entry) in entries.into_iter().flatten().enumerate() {
        let Some(secret_name) = entry.secret_name.as_deref().filter(|s| !s.is_empty()) else {
            // Valid: these hosts are served with the default certificate.
            continue;
        };
        let secret = ObjectName {
            namespace: ingress.name.namespace.clone(),
            name: secret_name.to_string(),
        };
        let listed = entry.hosts.as_ref().filter(|h| !h.is_empty());
        let hosts = match listed {
            Some(hosts) => hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            None => rule_hosts(ingress),
        };
        let pem = secret_pem(objects, &secret);
        if let Err(message) = &pem {
            problems.push(ingress.problem(format!("spec.tls[{i}].secretName"), message.clone()));
        }
        plans.push(TlsPlan {
            hosts,
            secret,
            ingress: Some(ingress.name.clone()),
            pem,
        });
    }
    plans
}

/// The distinct valid hosts of an Ingress's rules, lower-case, in rule order.
fn rule_hosts(ingress: &OurIngress<'_>) -> Vec<String> {
    let rules = ingress.spec().and_then(|s| s.rules.as_ref());
    let mut hosts: Vec<String> = Vec::new();
    for rule in rules.into_iter().flatten() {
        if let Ok(Some(host)) = check_host(rule.host.as_deref()) {
            if !hosts.contains(&host) {
                hosts.push(host);
            }
        }
    }
    hosts
}

/// `tls.crt` and `tls.key` of a TLS Secret, or why they cannot be had.
fn secret_pem(objects: &ClusterObjects, name: &ObjectName) -> Result<PemPair, String> {
    let secret = objects
        .secrets
        .get(name)
        .ok_or_else(|| format!("no Secret {name} of type {TLS_SECRET_TYPE}"))?;
    let secret = &secret.object;
    let secret_type = secret.type_.as_deref().unwrap_or("Opaque");
    if secret_type != TLS_SECRET_TYPE {
        return Err(format!(
            "Secret {name} is of type {secret_type}, not {TLS_SECRET_TYPE}"
        ));
    }
    let get = |key: &str| {
        let data = secret.data.as_ref();
        data.and_then(|d| d.get(key))
            .filter(|value| !value.0.is_empty())
            .map(|value| value.0.clone())
            .ok_or_else(|| format!("Secret {name} has no {key}"))
    };
    Ok(PemPair {
        certificate_chain: get("tls.crt")?,
        private_key: get("tls.key")?,
    })
}

/// The plan for `--default-tls-secret`; a problem if the Secret cannot be used.
fn default_tls(
    objects: &ClusterObjects,
    secret: &ObjectName,
    problems: &mut Vec<Problem>,
) -> TlsPlan {
    let pem = secret_pem(objects, secret);
    if let Err(message) = &pem {
        let origin = objects.secrets.get(secret).map_or_else(
            || "--default-tls-secret".to_string(),
            |s| s.origin.to_string(),
        );
        problems.push(Problem {
            origin,
            object: format!("Secret {secret}"),
            field: String::new(),
            message: message.clone(),
        });
    }
    TlsPlan {
        hosts: Vec::new(),
        secret: secret.clone(),
        ingress: None,
        pem,
    }
}
