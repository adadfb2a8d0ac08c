//! Canary Ingresses (`canary: "true"`), as ingress-nginx merges them: each path of a canary
//! joins the route some other Ingress already has for the same host and path (the table's
//! notion of "same"), as that route's canary backend with the canary's rule; the route's
//! filters stay the main Ingress's. A canary path no other Ingress routes is not served and
//! reported (ingress-nginx: "unable to find real backend ... Deleting"); a second canary for
//! a route is reported and ignored (ingress-nginx uses the first alternative backend only).
//! A canary whose annotations do not parse is not merged at all: the main route keeps
//! serving, without a canary nobody asked for in that form. Session affinity follows
//! ingress-nginx's `affinity-canary-behavior` (see `merge`).

use std::sync::Arc;

use super::{check_host, check_path, Annotated, Context, MatchKey, Rules};
use crate::{
    model::Problem,
    translate::l7::{
        annotations::IngressAnnotations,
        balance::Balance,
        routes::{series::RouteSeries, Canary, WeightedBackend},
        PathType,
    },
};

/// The path a route's affinity cookie is set for: `session-cookie-path`, else the rule's own
/// path (nginx's `$location_path`); `None` without cookie affinity.
pub(super) fn cookie_path(annotations: &IngressAnnotations, rule_path: &str) -> Option<Arc<str>> {
    match &annotations.balance {
        Balance::Cookie(affinity) => Some(affinity.path.as_deref().unwrap_or(rule_path).into()),
        _ => None,
    }
}

/// Adds every path of the canary Ingress `annotated` to the route it shadows.
pub(super) fn merge(
    annotated: &Annotated<'_, '_>,
    rules: &mut Rules,
    context: &mut Context<'_, '_>,
    problems: &mut Vec<Problem>,
) {
    let ingress = annotated.ingress;
    let Some(rule) = &annotated.annotations.canary else {
        return;
    };
    if annotated.annotations.invalid.is_some() {
        problems.push(ingress.problem(
            "metadata.annotations",
            "this canary Ingress has invalid annotations (reported above); it is not added to \
             any route until they are fixed, and the main Ingresses serve alone",
        ));
        return;
    }
    if ingress
        .spec()
        .and_then(|s| s.default_backend.as_ref())
        .is_some()
    {
        problems.push(ingress.problem(
            "spec.defaultBackend",
            "ignored on a canary Ingress: a canary only shadows the paths of a main Ingress",
        ));
    }
    let ingress_rules = ingress.spec().and_then(|s| s.rules.as_ref());
    for (i, ingress_rule) in ingress_rules.into_iter().flatten().enumerate() {
        let host = match check_host(ingress_rule.host.as_deref()) {
            Ok(host) => host,
            Err(message) => {
                problems.push(ingress.problem(format!("spec.rules[{i}].host"), message));
                continue;
            }
        };
        let host_key = host.clone().unwrap_or_default();
        let paths = ingress_rule.http.as_ref().map(|h| h.paths.as_slice());
        for (j, path) in paths.into_iter().flatten().enumerate() {
            let field = format!("spec.rules[{i}].http.paths[{j}]");
            let mut checked = match check_path(path, &field) {
                Ok(checked) => checked,
                Err((field, message)) => {
                    problems.push(ingress.problem(field, message));
                    continue;
                }
            };
            if rules.regex_hosts.contains(&host_key) {
                checked.path_type = PathType::Regex;
            }
            let key = (
                host_key.clone(),
                MatchKey::of(&checked.path, checked.path_type),
            );
            let shown_host = host.as_deref().unwrap_or("every host");
            let Some(claim) = rules.claimed.get(&key) else {
                problems.push(ingress.problem(
                    field,
                    format!(
                        "canary for {shown_host} path {} ({:?}), but no other Ingress routes \
                         it: a canary only adds to a main Ingress's route, so this path is not \
                         served",
                        checked.path, checked.path_type
                    ),
                ));
                continue;
            };
            let Some((_, main)) = rules.rules.get_mut(claim.index) else {
                continue;
            };
            if let Some(existing) = &main.backend.canary {
                let by = existing
                    .source
                    .as_ref()
                    .map_or_else(String::new, |s| format!(" (Ingress {s})"));
                problems.push(ingress.problem(
                    field,
                    format!(
                        "{shown_host} path {} already has a canary{by}, which takes precedence; \
                         this one is ignored",
                        checked.path
                    ),
                ));
                continue;
            }
            let backend = context.backends.intern(
                ingress,
                &checked.service,
                &format!("{field}.backend"),
                problems,
            );
            // ingress-nginx (`mergeAlternativeBackend`): unless `affinity-canary-behavior:
            // legacy`, the canary's backend takes the main backend's session affinity, so a
            // session keeps one cookie whichever side serves it; its own affinity annotations
            // then do not count (its `upstream-hash-by` does, without affinity from the main).
            let main_plan = main
                .backend
                .backend()
                .and_then(|id| context.backends.plans.get(id));
            let main_balance = main_plan
                .map(|plan| plan.balance.clone())
                .unwrap_or_default();
            // The protocol and TLS towards the endpoints are the location's in nginx, so the
            // main Ingress's (`backend-protocol`, `proxy-ssl-*` on the canary are ignored).
            let main_upstream =
                main_plan.map(|plan| (plan.upstream.clone(), plan.upstream_secret.clone()));
            if let Some((upstream, secret)) = main_upstream {
                context.backends.plans[backend].upstream = upstream;
                context.backends.plans[backend].upstream_secret = secret;
            }
            let (balance, path) = match (rule.sticky, main_balance) {
                (true, Balance::Cookie(affinity)) => {
                    (Balance::Cookie(affinity), main.backend.cookie_path.clone())
                }
                (true, _) => match &annotated.annotations.balance {
                    Balance::Hash(key) => (Balance::Hash(key.clone()), None),
                    _ => (Balance::LeastRequests, None),
                },
                (false, _) => (
                    annotated.annotations.balance.clone(),
                    cookie_path(&annotated.annotations, &checked.path),
                ),
            };
            context.backends.plans[backend].balance = balance;
            // The `canary` label of the requests it takes: its upstream's name in nginx.
            if let Some(series) = &mut main.backend.series {
                let plan = &context.backends.plans[backend];
                let mut key = series.key.clone();
                key.canary = format!(
                    "{}-{}-{}",
                    plan.service.namespace, plan.service.name, plan.port
                );
                *series = RouteSeries::new(key);
            }
            main.backend.canary = Some(Box::new(Canary {
                source: Some(ingress.name.clone()),
                backends: vec![WeightedBackend { backend, weight: 1 }],
                rule: rule.clone(),
                cookie_path: path,
            }));
        }
    }
}
