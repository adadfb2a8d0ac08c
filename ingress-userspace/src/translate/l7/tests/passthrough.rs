//! `ssl-passthrough` through the translator: the flag, the host's path `/` as the target, the
//! oldest Ingress of a host deciding, and every part that does not pass through reported.

use super::*;

/// An Ingress of our default class created at `created`, with `annotations` (keys without the
/// prefix) and `spec`.
fn ingress_at(
    name: &str,
    created: Option<&str>,
    annotations: &[(&str, &str)],
    spec: &str,
) -> String {
    let annotations: Vec<String> = annotations
        .iter()
        .map(|(k, v)| format!("\"nginx.ingress.kubernetes.io/{k}\": {v:?}"))
        .collect();
    let created = created
        .map(|t| format!(", creationTimestamp: \"{t}\""))
        .unwrap_or_default();
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: {name}, namespace: demo{created}, annotations: {{{}}}}}\nspec:\n{spec}\n",
        annotations.join(", ")
    )
}

fn translate_with(flag: bool, docs: &[String]) -> (L7Plan, Vec<Problem>) {
    let yaml = [vec![DEFAULT_CLASS.to_string()], docs.to_vec()]
        .concat()
        .concat();
    let options = L7Options {
        ssl_passthrough: flag,
        ..L7Options::default()
    };
    let (plan, problems) = translate(&objects(&yaml), &options);
    (plan, without_unknown_services(problems))
}

/// `host -> ingress>service:port` for every passthrough entry.
fn passthrough(plan: &L7Plan) -> Vec<String> {
    plan.passthrough
        .entries()
        .into_iter()
        .map(|(host, entry)| {
            let b = &plan.backends[entry.backend];
            format!(
                "{host} -> {} {}>{}:{}",
                entry.ingress.name, b.ingress.name, b.service.name, b.port
            )
        })
        .collect()
}

fn lines(problems: &[Problem]) -> Vec<String> {
    problems
        .iter()
        .map(|p| format!("{} {}: {}", p.object, p.field, p.message))
        .collect()
}

const PT: (&str, &str) = ("ssl-passthrough", "true");

#[test]
fn needs_the_flag_as_in_ingress_nginx() {
    let docs = [ingress_at(
        "vault",
        None,
        &[PT],
        &one(&rule(
            "vault.example",
            &[path("/", "Prefix", "vault", 8200)],
        )),
    )];
    let (plan, problems) = translate_with(false, &docs);
    assert!(plan.passthrough.is_empty());
    let messages = lines(&problems);
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert!(
        messages[0]
            .contains("metadata.annotations[\"nginx.ingress.kubernetes.io/ssl-passthrough\"]")
            && messages[0].contains("--enable-ssl-passthrough"),
        "{messages:?}"
    );
    // The rules still serve, terminated.
    assert_eq!(
        target(&plan, "vault.example", "/").as_deref(),
        Some("vault>vault:8200")
    );

    let (plan, problems) = translate_with(true, &docs);
    assert_eq!(
        passthrough(&plan),
        ["vault.example -> vault vault>vault:8200"]
    );
    assert!(problems.is_empty(), "{:?}", lines(&problems));
    // Plain HTTP keeps its route.
    assert_eq!(
        target(&plan, "vault.example", "/").as_deref(),
        Some("vault>vault:8200")
    );
}

fn one(rule: &str) -> String {
    rules(&[rule.to_string()])
}

#[test]
fn the_root_path_is_the_target_and_the_rest_is_reported() {
    let spec = one(&rule(
        "db.example",
        &[
            path("/api", "Prefix", "api", 80),
            path("/", "Prefix", "db", 443),
        ],
    ));
    let (plan, problems) = translate_with(
        true,
        &[ingress_at(
            "db",
            None,
            &[PT, ("force-ssl-redirect", "true"), ("use-regex", "false")],
            &spec,
        )],
    );
    assert_eq!(passthrough(&plan), ["db.example -> db db>db:443"]);
    let messages = lines(&problems);
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(
        messages
            .iter()
            .any(|m| m.contains("spec.rules[0].http.paths[0]")
                && m.contains("\"/api\" serves plain HTTP only")),
        "{messages:?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains("(force-ssl-redirect, use-regex) apply to plain HTTP")),
        "{messages:?}"
    );
}

#[test]
fn without_a_root_path_wildcard_or_host_nothing_passes_through() {
    let docs = [
        ingress_at(
            "api-only",
            None,
            &[PT],
            &one(&rule("api.example", &[path("/api", "Prefix", "api", 443)])),
        ),
        ingress_at(
            "wild",
            None,
            &[PT],
            &one(&rule("*.wild.example", &[path("/", "Prefix", "w", 443)])),
        ),
        ingress_at(
            "hostless",
            None,
            &[PT],
            "  rules:\n  - http:\n      paths:\n      - {path: /, pathType: Prefix, backend: {service: {name: h, port: {number: 443}}}}\n",
        ),
    ];
    let (plan, problems) = translate_with(true, &docs);
    assert!(plan.passthrough.is_empty(), "{:?}", passthrough(&plan));
    let messages = lines(&problems);
    assert!(
        messages
            .iter()
            .any(|m| m.contains("api-only") && m.contains("api.example has no path \"/\"")),
        "{messages:?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains("wild spec.rules[0].host") && m.contains("matches names exactly")),
        "{messages:?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains("hostless spec.rules[0].host") && m.contains("needs a host")),
        "{messages:?}"
    );
}

#[test]
fn the_oldest_ingress_of_a_host_decides() {
    let root = |service: &str| one(&rule("shop.example", &[path("/", "Prefix", service, 443)]));
    // An older plain Ingress: the younger one's annotation is ignored for the host.
    let (plan, problems) = translate_with(
        true,
        &[
            ingress_at("plain", OLD, &[], &root("web")),
            ingress_at(
                "passing",
                NEW,
                &[PT],
                &one(&rule("shop.example", &[path("/tls", "Prefix", "tls", 443)])),
            ),
        ],
    );
    assert!(plan.passthrough.is_empty(), "{:?}", passthrough(&plan));
    let messages = lines(&problems);
    assert!(
        messages.iter().any(|m| m.contains("Ingress demo/passing")
            && m.contains("ignored for shop.example: Ingress demo/plain defines the host first")),
        "{messages:?}"
    );

    // An older passthrough Ingress: the host passes through; a younger TLS Ingress of the host
    // is told its rules serve plain HTTP only. The path `/` may come from any Ingress of the
    // host, by precedence (here the younger one: the older routes /admin only).
    let (plan, problems) = translate_with(
        true,
        &[
            ingress_at(
                "passing",
                OLD,
                &[PT],
                &one(&rule(
                    "shop.example",
                    &[path("/admin", "Prefix", "admin", 443)],
                )),
            ),
            ingress_at(
                "plain",
                NEW,
                &[],
                &format!(
                    "{}  tls:\n  - hosts: [shop.example]\n    secretName: shop-tls\n",
                    root("web")
                ),
            ),
        ],
    );
    assert_eq!(
        passthrough(&plan),
        ["shop.example -> passing plain>web:443"]
    );
    let messages = lines(&problems);
    assert!(
        messages
            .iter()
            .any(|m| m.contains("Ingress demo/plain spec.rules[0].host")
                && m.contains(
                    "pass through unterminated (ssl-passthrough of Ingress demo/passing"
                )),
        "{messages:?}"
    );
}

#[test]
fn a_bad_value_fails_the_ingress_and_passes_nothing() {
    let (plan, problems) = translate_with(
        true,
        &[ingress_at(
            "vault",
            None,
            &[("ssl-passthrough", "yes")],
            &one(&rule(
                "vault.example",
                &[path("/", "Prefix", "vault", 8200)],
            )),
        )],
    );
    assert!(plan.passthrough.is_empty());
    assert_eq!(fields(&problems), [
        "Ingress demo/vault metadata.annotations[\"nginx.ingress.kubernetes.io/ssl-passthrough\"]"
    ]);
    let route = plan.routes.route("vault.example", "/").unwrap();
    assert!(matches!(route.filters.as_slice(), [Filter::Fail(_)]));
}
