//! `canary` and its rules, `affinity: cookie` with `session-cookie-*`, `upstream-hash-by`:
//! what the routes and backends carry, how canaries join main routes, and what is reported.

use super::*;
use crate::translate::l7::{
    routes::{HeaderTest, Verdict},
    AffinityMode, Balance, HashPart,
};

fn main_and_canary(canary: &[(&str, &str)]) -> (L7Plan, Vec<Problem>) {
    let mut annotations = vec![("canary", "true")];
    annotations.extend_from_slice(canary);
    translate_docs(&[
        annotated("main", &[], &one_path("shop.example", "/", "Prefix", "web")),
        annotated(
            "preview",
            &annotations,
            &one_path("shop.example", "/", "Prefix", "web-v2"),
        ),
    ])
}

fn service_of(plan: &L7Plan, id: usize) -> String {
    plan.backends[id].service.name.clone()
}

#[test]
fn a_canary_joins_the_main_route_with_its_rule() {
    let (plan, problems) = main_and_canary(&[
        ("canary-by-header", "X-Canary"),
        ("canary-by-cookie", "canary"),
        ("canary-weight", "30"),
    ]);
    assert!(problems.is_empty(), "{problems:?}");
    let route = route(&plan, "shop.example", "/");
    assert_eq!(service_of(&plan, route.backend().unwrap()), "web");
    let canary = route.canary.as_ref().expect("a canary");
    assert_eq!(service_of(&plan, canary.backends[0].backend), "web-v2");
    assert_eq!(canary.source.as_ref().unwrap().name, "preview");
    let rule = &canary.rule;
    assert_eq!(rule.header.as_ref().unwrap().name, "x-canary");
    assert!(matches!(
        rule.header.as_ref().unwrap().test,
        HeaderTest::AlwaysNever
    ));
    assert_eq!(rule.cookie.as_deref(), Some("canary"));
    assert_eq!((rule.weight, rule.weight_total), (30, 100));
    assert!(rule.sticky);
    // Only one route: the canary made none of its own.
    assert_eq!(plan.routes.entries().len(), 1);
}

#[test]
fn canary_values_patterns_and_totals() {
    let (plan, _) = main_and_canary(&[
        ("canary-by-header", "x-v"),
        ("canary-by-header-value", "2"),
        ("canary-by-header-pattern", "^2"),
        ("canary-weight", "5"),
        ("canary-weight-total", "1000"),
    ]);
    let rule = &route(&plan, "shop.example", "/")
        .canary
        .as_ref()
        .unwrap()
        .rule;
    // The value wins over the pattern, as in ingress-nginx.
    assert!(matches!(&rule.header.as_ref().unwrap().test, HeaderTest::Value(v) if v == b"2"));
    assert_eq!((rule.weight, rule.weight_total), (5, 1000));
    // A total below 100 is 100 (ingress-nginx's Lua).
    let (plan, _) = main_and_canary(&[("canary-weight", "5"), ("canary-weight-total", "10")]);
    let rule = &route(&plan, "shop.example", "/")
        .canary
        .as_ref()
        .unwrap()
        .rule;
    assert_eq!(rule.weight_total, 100);
    let (plan, _) = main_and_canary(&[
        ("canary-by-header", "x-v"),
        ("canary-by-header-pattern", "^(beta|rc)$"),
    ]);
    let rule = &route(&plan, "shop.example", "/")
        .canary
        .as_ref()
        .unwrap()
        .rule;
    let mut headers = http::HeaderMap::new();
    headers.insert("x-v", http::HeaderValue::from_static("rc"));
    assert_eq!(rule.decide(&headers, |_| 100), Verdict::Canary);
}

#[test]
fn a_canary_ignores_other_annotations_and_keeps_its_own_upstream_ones() {
    let (plan, problems) = main_and_canary(&[
        ("canary-weight", "50"),
        ("backend-protocol", "GRPC"),
        ("permanent-redirect", "https://example.org/"),
        ("affinity", "cookie"),
        ("upstream-hash-by", "$request_uri"),
    ]);
    let route = route(&plan, "shop.example", "/");
    assert!(
        route.filters.is_empty(),
        "the canary's redirect is not used"
    );
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "metadata.annotations[\"nginx.ingress.kubernetes.io/backend-protocol\"]",
            "metadata.annotations[\"nginx.ingress.kubernetes.io/permanent-redirect\"]"
        ],
        "{problems:?}"
    );
    assert!(problems[0].message.contains("canary"), "{problems:?}");
    // The canary's own balancing: upstream-hash-by wins over affinity, as in ingress-nginx.
    let canary = route.canary.as_ref().unwrap();
    // ...but the main Ingress's protocol.
    let protocol = |id: usize| plan.backends[id].upstream.as_ref().unwrap().protocol;
    assert_eq!(protocol(canary.backends[0].backend), BackendProtocol::Http);
    assert!(matches!(
        &plan.backends[canary.backends[0].backend].balance,
        Balance::Hash(key) if key.parts == [HashPart::RequestUri]
    ));
    assert!(matches!(
        plan.backends[route.backend().unwrap()].balance,
        Balance::LeastRequests
    ));
}

#[test]
fn a_canary_takes_the_main_affinity_unless_legacy() {
    let main_sticky = [("affinity", "cookie"), ("session-cookie-name", "main")];
    let canary = |behavior: &'static str| {
        let mut annotations = vec![
            ("canary", "true"),
            ("affinity", "cookie"),
            ("session-cookie-name", "own"),
            ("session-cookie-path", "/own"),
        ];
        if !behavior.is_empty() {
            annotations.push(("affinity-canary-behavior", behavior));
        }
        annotated(
            "preview",
            &annotations,
            &one_path("shop.example", "/", "Prefix", "web-v2"),
        )
    };
    let main = annotated(
        "main",
        &main_sticky,
        &one_path("shop.example", "/", "Prefix", "web"),
    );
    let cookie_of = |plan: &L7Plan| {
        let canary = route(plan, "shop.example", "/").canary.as_ref().unwrap();
        let Balance::Cookie(affinity) = &plan.backends[canary.backends[0].backend].balance else {
            panic!("cookie affinity");
        };
        (
            affinity.name.clone(),
            canary.cookie_path.as_deref().map(str::to_string),
        )
    };
    let (plan, _) = translate_docs(&[main.clone(), canary("")]);
    assert_eq!(cookie_of(&plan), ("main".into(), Some("/".into())));
    assert!(
        route(&plan, "shop.example", "/")
            .canary
            .as_ref()
            .unwrap()
            .rule
            .sticky
    );
    let (plan, _) = translate_docs(&[main, canary("legacy")]);
    assert_eq!(cookie_of(&plan), ("own".into(), Some("/own".into())));
    assert!(
        !route(&plan, "shop.example", "/")
            .canary
            .as_ref()
            .unwrap()
            .rule
            .sticky
    );
}

#[test]
fn a_canary_without_main_a_second_canary_and_a_broken_canary_are_reported() {
    let (plan, problems) = translate_docs(&[
        annotated("main", &[], &one_path("shop.example", "/", "Prefix", "web")),
        annotated(
            "first",
            &[("canary", "true"), ("canary-weight", "10")],
            &one_path("shop.example", "/", "Prefix", "web-v2"),
        ),
        annotated(
            "second",
            &[("canary", "true")],
            &one_path("shop.example", "/", "Prefix", "web-v3"),
        ),
        annotated(
            "orphan",
            &[("canary", "true")],
            &one_path("shop.example", "/other", "Prefix", "web-v2"),
        ),
        annotated(
            "broken",
            &[("canary", "true"), ("canary-weight", "lots")],
            &one_path("api.example", "/", "Prefix", "web-v2"),
        ),
        annotated("api", &[], &one_path("api.example", "/", "Prefix", "api")),
        annotated(
            "stray",
            &[("canary-weight", "10")],
            &one_path("stray.example", "/", "Prefix", "web"),
        ),
    ]);
    let canary = route(&plan, "shop.example", "/").canary.as_ref().unwrap();
    assert_eq!(canary.source.as_ref().unwrap().name, "first");
    let about = |name: &str| -> Vec<String> {
        problems
            .iter()
            .filter(|p| p.object == format!("Ingress demo/{name}"))
            .map(|p| format!("{}: {}", p.field, p.message))
            .collect()
    };
    assert!(
        about("second")[0].contains("already has a canary (Ingress demo/first)"),
        "{problems:?}"
    );
    assert!(
        about("orphan")[0].contains("no other Ingress routes it"),
        "{problems:?}"
    );
    assert!(
        plan.routes
            .route("shop.example", "/other")
            .unwrap()
            .source
            .as_ref()
            .unwrap()
            .name
            == "main",
        "the orphan's path falls to the main / rule"
    );
    assert_eq!(about("broken").len(), 2, "{problems:?}");
    assert!(route(&plan, "api.example", "/").canary.is_none());
    assert!(
        route(&plan, "api.example", "/").filters.is_empty(),
        "main unaffected"
    );
    assert!(about("stray")[0].contains("does not set"), "{problems:?}");
    assert!(route(&plan, "stray.example", "/").canary.is_none());
}

#[test]
fn cookie_affinity_defaults_and_values() {
    let spec = one_path("shop.example", "/app", "Prefix", "web");
    let (plan, problems) = translate_docs(&[annotated("sticky", &[("affinity", "cookie")], &spec)]);
    assert!(problems.is_empty(), "{problems:?}");
    let sticky = route_of(&plan);
    assert_eq!(
        sticky.cookie_path.as_deref(),
        Some("/app"),
        "the rule's path"
    );
    let Balance::Cookie(affinity) = &plan.backends[sticky.backend().unwrap()].balance else {
        panic!("cookie affinity");
    };
    assert_eq!(affinity.name, "INGRESSCOOKIE");
    assert_eq!(affinity.mode, AffinityMode::Balanced);
    assert_eq!(
        (
            affinity.max_age,
            affinity.expires,
            affinity.secure,
            affinity.samesite
        ),
        (None, None, None, None)
    );
    assert!(!affinity.change_on_failure);

    let (plan, problems) = translate_docs(&[annotated(
        "sticky",
        &[
            ("affinity", "cookie"),
            ("affinity-mode", "persistent"),
            ("session-cookie-name", "route"),
            ("session-cookie-path", "/"),
            ("session-cookie-max-age", "172800"),
            ("session-cookie-expires", "172800"),
            ("session-cookie-secure", "true"),
            ("session-cookie-samesite", "Strict"),
            ("session-cookie-change-on-failure", "true"),
        ],
        &spec,
    )]);
    assert!(problems.is_empty(), "{problems:?}");
    let sticky = route_of(&plan);
    assert_eq!(sticky.cookie_path.as_deref(), Some("/"));
    let Balance::Cookie(affinity) = &plan.backends[sticky.backend().unwrap()].balance else {
        panic!("cookie affinity");
    };
    assert_eq!(affinity.name, "route");
    assert_eq!(affinity.mode, AffinityMode::Persistent);
    assert_eq!(
        (
            affinity.max_age,
            affinity.expires,
            affinity.secure,
            affinity.samesite
        ),
        (Some(172_800), Some(172_800), Some(true), Some("Strict"))
    );
    assert!(affinity.change_on_failure);

    // Bad values: the route fails with the reason.
    let (plan, problems) = translate_docs(&[annotated(
        "sticky",
        &[("affinity", "cookie"), ("session-cookie-max-age", "2d")],
        &spec,
    )]);
    assert!(
        problems[0].field.contains("session-cookie-max-age"),
        "{problems:?}"
    );
    assert_eq!(filter_names(route_of(&plan)), ["fail"]);
}

fn route_of(plan: &L7Plan) -> &Route {
    route(plan, "shop.example", "/app")
}

#[test]
fn upstream_hash_by_compiles_its_variables_or_fails() {
    let spec = one_path("shop.example", "/app", "Prefix", "web");
    let (plan, problems) = translate_docs(&[annotated(
        "hashed",
        &[("upstream-hash-by", "$http_x_user-$arg_id")],
        &spec,
    )]);
    assert!(problems.is_empty(), "{problems:?}");
    let Balance::Hash(key) = &plan.backends[route_of(&plan).backend().unwrap()].balance else {
        panic!("hash");
    };
    assert_eq!(key.parts.len(), 3);
    let (plan, problems) = translate_docs(&[annotated(
        "hashed",
        &[("upstream-hash-by", "$no_such_variable")],
        &spec,
    )]);
    assert!(
        problems[0].message.contains("unknown variable"),
        "{problems:?}"
    );
    assert_eq!(filter_names(route_of(&plan)), ["fail"]);
}
