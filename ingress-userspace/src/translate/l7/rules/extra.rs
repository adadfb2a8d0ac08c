//! The rules ingress-nginx's annotations add beside an Ingress's own: the `app-root` redirect of
//! `/` (a server-level `if` in nginx, so it comes before every path of the host), the same rules
//! under each `server-alias`, the `from-to-www-redirect` host, and the `default-backend`
//! Service for paths of the Ingress's hosts that no rule matches. Each follows ingress-nginx:
//! a name some rule already serves keeps its rules, and the annotation is reported as ignored
//! there.

use std::collections::BTreeSet;

use super::{hosts_of, Annotated, Context, ServiceRef};
use crate::{
    model::{ObjectName, Problem},
    translate::l7::{
        annotations::{field, IngressAnnotations},
        class::OurIngress,
        routes::{Filter, Route},
        BackendId, PathRule, PathType, ServicePortRef,
    },
};

type Rule = (Option<String>, PathRule<Route>);

/// `default-backend`, resolved to a backend: the Service's first port, as in ingress-nginx.
pub(super) fn default_backend(
    ingress: &OurIngress<'_>,
    annotations: &IngressAnnotations,
    context: &mut Context<'_, '_>,
    problems: &mut Vec<Problem>,
) -> Option<BackendId> {
    let service = annotations.default_backend.as_ref()?;
    let name = ObjectName {
        namespace: ingress.name.namespace.clone(),
        name: service.clone(),
    };
    let first_port = context
        .objects
        .services
        .get(&name)
        .and_then(|s| s.object.spec.as_ref())
        .and_then(|spec| spec.ports.as_ref())
        .and_then(|ports| ports.first())
        .and_then(|port| u16::try_from(port.port).ok());
    // An unknown Service is reported by `intern` (its port then does not matter).
    let service = ServiceRef {
        name: service.clone(),
        port: ServicePortRef::Number(first_port.unwrap_or(80)),
    };
    Some(
        context
            .backends
            .intern(ingress, &service, &field("default-backend"), problems),
    )
}

/// `rules` with the annotations' rules added: `app-root` first, then the Ingresses' rules, the
/// aliases, the www redirects and the default-backend catch-alls.
pub(super) fn add(
    annotated: &[Annotated<'_, '_>],
    regex_hosts: &BTreeSet<String>,
    rules: Vec<Rule>,
    problems: &mut Vec<Problem>,
) -> Vec<Rule> {
    let mut all = app_roots(annotated);
    all.extend(rules);
    aliases(annotated, &mut all, problems);
    www_redirects(annotated, &mut all, problems);
    default_backends(annotated, regex_hosts, &mut all);
    all
}

fn valid(annotated: &Annotated<'_, '_>) -> bool {
    annotated.annotations.invalid.is_none()
}

/// `app-root`: an Exact `/` rule per host of the Ingress, the first Ingress of a host winning.
fn app_roots(annotated: &[Annotated<'_, '_>]) -> Vec<Rule> {
    let mut done = BTreeSet::new();
    let mut rules = Vec::new();
    for a in annotated.iter().filter(|a| valid(a)) {
        let Some(path) = &a.annotations.app_root else {
            continue;
        };
        for host in hosts_of(a.ingress) {
            if done.insert(host.clone()) {
                let route = Route::answering(
                    Filter::AppRoot { path: path.clone() },
                    Some(a.ingress.name.clone()),
                );
                rules.push((host, exact_root(route)));
            }
        }
    }
    rules
}

fn exact_root(route: Route) -> PathRule<Route> {
    PathRule {
        path: "/".into(),
        path_type: PathType::Exact,
        backend: route,
    }
}

/// Every host some rule names.
fn served(rules: &[Rule]) -> BTreeSet<Option<String>> {
    rules.iter().map(|(host, _)| host.clone()).collect()
}

/// `server-alias`: each alias gets a copy of every rule of each host of the Ingress.
fn aliases(annotated: &[Annotated<'_, '_>], rules: &mut Vec<Rule>, problems: &mut Vec<Problem>) {
    let mut taken = served(rules);
    for a in annotated.iter().filter(|a| valid(a)) {
        for alias in &a.annotations.server_aliases {
            if !taken.insert(Some(alias.clone())) {
                problems.push(a.ingress.problem(
                    field("server-alias"),
                    format!(
                        "{alias} is already a host of some rule or alias; this alias is ignored"
                    ),
                ));
                continue;
            }
            let copies: Vec<Rule> = hosts_of(a.ingress)
                .into_iter()
                .flatten()
                .flat_map(|host| {
                    rules
                        .iter()
                        .filter(move |(h, _)| h.as_deref() == Some(host.as_str()))
                        .map(|(_, rule)| (Some(alias.clone()), rule.clone()))
                        .collect::<Vec<_>>()
                })
                .collect();
            rules.extend(copies);
        }
    }
}

/// `from-to-www-redirect`: `www.<host>` redirects to `<host>`, or `<host>` to `www.<host>` when
/// the rule's host is the www one; not where some rule already serves the other name.
fn www_redirects(
    annotated: &[Annotated<'_, '_>],
    rules: &mut Vec<Rule>,
    problems: &mut Vec<Problem>,
) {
    let mut taken = served(rules);
    for a in annotated
        .iter()
        .filter(|a| valid(a) && a.annotations.from_to_www)
    {
        for host in hosts_of(a.ingress).into_iter().flatten() {
            if host.starts_with("*.") {
                continue;
            }
            let from = match host.strip_prefix("www.") {
                Some(bare) => bare.to_string(),
                None => format!("www.{host}"),
            };
            if !taken.insert(Some(from.clone())) {
                problems.push(a.ingress.problem(
                    field("from-to-www-redirect"),
                    format!(
                        "{from} is a host of some rule; it is served, not redirected to {host}"
                    ),
                ));
                continue;
            }
            let route = Route::answering(
                Filter::HostRedirect {
                    status: a.annotations.http_redirect_code,
                    host,
                },
                Some(a.ingress.name.clone()),
            );
            let rule = PathRule {
                path: "/".into(),
                path_type: PathType::Prefix,
                backend: route,
            };
            rules.push((Some(from), rule));
        }
    }
}

/// `default-backend`: a `/` rule of lowest precedence per host of the Ingress (a `/` rule of
/// the host, added earlier, wins).
fn default_backends(
    annotated: &[Annotated<'_, '_>],
    regex_hosts: &BTreeSet<String>,
    rules: &mut Vec<Rule>,
) {
    for a in annotated.iter().filter(|a| valid(a)) {
        let Some(fallback) = a.fallback else {
            continue;
        };
        // The Ingress's body size, timeouts and retries apply to its fallback too.
        let mut route = Route::to(fallback, Some(a.ingress.name.clone()));
        if let Some(policy) = &a.annotations.limits.policy {
            route.policy = policy.clone();
        }
        for host in hosts_of(a.ingress) {
            let regex = regex_hosts.contains(host.as_deref().unwrap_or_default());
            let rule = PathRule {
                path: "/".into(),
                path_type: if regex {
                    PathType::Regex
                } else {
                    PathType::Prefix
                },
                backend: route.clone(),
            };
            rules.push((host, rule));
        }
    }
}
