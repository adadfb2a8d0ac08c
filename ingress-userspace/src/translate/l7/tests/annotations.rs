//! ingress-nginx annotations through the translator: each supported key with its default, a
//! non-default value and a bad value (a problem at its field, and the Ingress's routes failing
//! with the reason), the keys reported as ignored or never executed, and the rules they add;
//! CORS and source ranges in `access`; body size, timeouts, retries and rate limits in `limits`.

use super::*;
use crate::translate::l7::{annotations::catalogue, Filter};

mod access;
mod auth;
mod limits;
mod traffic;

/// An Ingress of our default class with `annotations` (keys without the prefix).
fn annotated(name: &str, annotations: &[(&str, &str)], spec: &str) -> String {
    let annotations: Vec<String> = annotations
        .iter()
        .map(|(k, v)| format!("\"nginx.ingress.kubernetes.io/{k}\": {v:?}"))
        .collect();
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: {name}, namespace: demo, annotations: {{{}}}}}\nspec:\n{spec}\n",
        annotations.join(", ")
    )
}

/// A path rule with the path quoted (regexes are no plain YAML scalars).
fn qpath(p: &str, path_type: &str, service: &str) -> String {
    path(&format!("{p:?}"), path_type, service, 80)
}

fn one_path(host: &str, p: &str, path_type: &str, service: &str) -> String {
    rules(&[rule(host, &[qpath(p, path_type, service)])])
}

/// The translation of `docs` (after the default class), problems without unknown Services.
fn translate_docs(docs: &[String]) -> (L7Plan, Vec<Problem>) {
    let yaml = [vec![DEFAULT_CLASS.to_string()], docs.to_vec()]
        .concat()
        .concat();
    let (plan, problems) = run(&yaml);
    (plan, without_unknown_services(problems))
}

/// The route a request matches.
fn route<'a>(plan: &'a L7Plan, host: &str, path: &str) -> &'a Route {
    plan.routes.route(host, path).expect("routed")
}

fn filter_names(route: &Route) -> Vec<&'static str> {
    route.filters.iter().map(Filter::name).collect()
}

#[test]
fn redirects_default_codes_custom_codes_and_temporal_wins() {
    let spec = |host: &str| one_path(host, "/", "Prefix", "web");
    let (plan, problems) = translate_docs(&[
        annotated(
            "perm",
            &[("permanent-redirect", "https://example.org/new")],
            &spec("a.example"),
        ),
        annotated(
            "perm308",
            &[
                ("permanent-redirect", "https://example.org/"),
                ("permanent-redirect-code", "308"),
            ],
            &spec("b.example"),
        ),
        annotated(
            "both",
            &[
                ("permanent-redirect", "https://example.org/p"),
                ("temporal-redirect", "https://example.org/t"),
                ("temporal-redirect-code", "307"),
            ],
            &spec("c.example"),
        ),
        annotated(
            "out-of-range",
            &[
                ("permanent-redirect", "https://example.org/"),
                ("permanent-redirect-code", "200"),
            ],
            &spec("d.example"),
        ),
    ]);
    let redirect = |host: &str| match &route(&plan, host, "/x").filters[..] {
        [Filter::Redirect { status, location }] => {
            (status.as_u16(), location.to_str().unwrap().to_string())
        }
        other => panic!("{host}: {other:?}"),
    };
    assert_eq!(
        redirect("a.example"),
        (301, "https://example.org/new".into())
    );
    assert_eq!(redirect("b.example"), (308, "https://example.org/".into()));
    assert_eq!(redirect("c.example"), (307, "https://example.org/t".into()));
    assert_eq!(redirect("d.example"), (301, "https://example.org/".into()));
    assert_eq!(
        fields(&problems),
        vec![
            "Ingress demo/out-of-range metadata.annotations[\"nginx.ingress.kubernetes.io/permanent-redirect-code\"]"
        ],
        "{problems:?}"
    );
}

#[test]
fn a_bad_value_fails_that_ingress_only_and_names_the_field() {
    let (plan, problems) = translate_docs(&[
        annotated(
            "bad",
            &[
                ("permanent-redirect", "not a url"),
                ("ssl-redirect", "maybe"),
            ],
            &one_path("shared.example", "/bad", "Prefix", "web"),
        ),
        annotated(
            "good",
            &[],
            &one_path("shared.example", "/good", "Prefix", "web"),
        ),
    ]);
    match &route(&plan, "shared.example", "/bad").filters[..] {
        [Filter::Fail(why)] => {
            let why = std::str::from_utf8(why).unwrap();
            assert!(
                why.starts_with("503 Service Unavailable: Ingress demo/bad"),
                "{why}"
            );
            assert!(why.contains("permanent-redirect: \"not a url\""), "{why}");
            assert!(
                why.contains("ssl-redirect: \"maybe\" is not a boolean"),
                "{why}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(route(&plan, "shared.example", "/good").filters.is_empty());
    assert_eq!(
        fields(&problems),
        vec![
            "Ingress demo/bad metadata.annotations[\"nginx.ingress.kubernetes.io/ssl-redirect\"]",
            "Ingress demo/bad metadata.annotations[\"nginx.ingress.kubernetes.io/permanent-redirect\"]",
        ]
    );
    assert!(
        problems[0].message.contains("answer 503"),
        "{}",
        problems[0].message
    );
}

#[test]
fn bad_values_of_every_parsed_key() {
    for (key, value) in [
        ("use-regex", "yes"),
        ("force-ssl-redirect", "on"),
        ("from-to-www-redirect", "2"),
        ("preserve-trailing-slash", "no"),
        ("permanent-redirect", "ftp://example.org/"),
        ("temporal-redirect", "/relative"),
        ("permanent-redirect-code", "three hundred"),
        ("app-root", "app"),
        ("x-forwarded-prefix", "no-slash"),
        ("rewrite-target", "/a; return 200"),
        ("rewrite-target", "relative"),
        ("server-alias", "bad_name.example"),
        ("default-backend", "Not/A/Service"),
    ] {
        let (plan, problems) = translate_docs(&[annotated(
            "x",
            &[(key, value)],
            &one_path("h.example", "/", "Prefix", "web"),
        )]);
        assert!(
            matches!(
                route(&plan, "h.example", "/").filters[..],
                [Filter::Fail(_)]
            ),
            "{key}: {value}"
        );
        assert_eq!(
            fields(&problems),
            vec![format!(
                "Ingress demo/x metadata.annotations[\"nginx.ingress.kubernetes.io/{key}\"]"
            )],
            "{key}: {value}"
        );
    }
}

#[test]
fn unsupported_snippets_and_unknown_keys_are_reported_and_routes_stay() {
    let (plan, problems) = translate_docs(&[annotated(
        "x",
        &[
            ("configuration-snippet", "more_set_headers \"A: b\";"),
            ("lua-resty-waf-snippet", "x"),
            ("limit-rate", "100"),
            ("no-such-annotation", "1"),
        ],
        &one_path("h.example", "/", "Prefix", "web"),
    )]);
    assert!(route(&plan, "h.example", "/").filters.is_empty());
    let messages: Vec<(String, String)> = problems
        .iter()
        .map(|p| (p.field.clone(), p.message.clone()))
        .collect();
    assert_eq!(messages.len(), 4, "{messages:?}");
    let about = |key: &str| {
        messages
            .iter()
            .find(|(field, _)| field.contains(&format!("/{key}\"")))
            .map(|(_, m)| m.clone())
            .unwrap_or_else(|| panic!("{key} not reported: {messages:?}"))
    };
    assert!(about("configuration-snippet").starts_with("never executed"));
    assert!(about("lua-resty-waf-snippet").starts_with("never executed"));
    assert!(about("limit-rate").starts_with("not supported by xdp-ingress, ignored"));
    assert!(about("no-such-annotation").starts_with("unknown ingress-nginx annotation"));
}

#[test]
fn catalogue_has_each_key_once_and_every_snippet_never_executed() {
    let mut keys: Vec<&str> = catalogue::CATALOGUE.iter().map(|e| e.key).collect();
    let count = keys.len();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), count, "duplicate keys");
    for entry in catalogue::CATALOGUE {
        assert_eq!(
            entry.key.ends_with("-snippet"),
            entry.support == catalogue::Support::NeverExecuted,
            "{}",
            entry.key
        );
        assert!(
            entry.support == catalogue::Support::Supported || !entry.note.is_empty(),
            "{} needs a note",
            entry.key
        );
    }
}

#[test]
fn use_regex_turns_every_path_of_the_host_regex_on_every_ingress() {
    let (plan, problems) = translate_docs(&[
        annotated(
            "regex",
            &[("use-regex", "true")],
            &one_path("r.example", "/api/v[0-9]+", "ImplementationSpecific", "api"),
        ),
        annotated(
            "plain",
            &[],
            &rules(&[
                rule("r.example", &[qpath("/static", "Exact", "static")]),
                rule("other.example", &[qpath("/static", "Exact", "static")]),
            ]),
        ),
    ]);
    assert!(problems.is_empty(), "{problems:?}");
    let to = |host: &str, path: &str| target(&plan, host, path);
    assert_eq!(to("r.example", "/API/V2/items").unwrap(), "regex>api:80");
    assert_eq!(
        to("r.example", "/api/v/items"),
        None,
        "the regex must match"
    );
    // The other Ingress's Exact path became a case-insensitive prefix regex on this host...
    assert_eq!(to("r.example", "/Static/more").unwrap(), "plain>static:80");
    // ...and stays Exact on a host without regexes.
    assert_eq!(to("other.example", "/static/more"), None);
    assert_eq!(to("other.example", "/static").unwrap(), "plain>static:80");
}

#[test]
fn regex_paths_longest_text_first_and_first_match_wins() {
    let (plan, _) = translate_docs(&[annotated(
        "x",
        &[("use-regex", "true")],
        &rules(&[rule(
            "r.example",
            &[
                qpath("/", "Prefix", "root"),
                qpath("/a.*", "Prefix", "short"),
                qpath("/a/b/c.*", "Prefix", "long"),
                qpath("/ab", "Prefix", "ab"),
            ],
        )]),
    )]);
    let to = |path: &str| target(&plan, "r.example", path).unwrap();
    assert_eq!(to("/a/b/c/d"), "x>long:80");
    // "/a.*" (4 characters) is tried before "/ab" (3), and matches "/abc".
    assert_eq!(to("/abc"), "x>short:80");
    assert_eq!(to("/zzz"), "x>root:80");
}

#[test]
fn a_path_that_is_no_regex_answers_503_and_is_reported() {
    let (plan, problems) = translate_docs(&[annotated(
        "x",
        &[("use-regex", "true")],
        &rules(&[rule(
            "r.example",
            &[
                qpath("/(unclosed", "Prefix", "web"),
                qpath("/ok", "Prefix", "web"),
            ],
        )]),
    )]);
    assert_eq!(
        fields(&problems),
        vec!["Ingress demo/x spec.rules[0].http.paths[0].path"]
    );
    assert!(
        problems[0].message.contains("not a valid regex"),
        "{}",
        problems[0].message
    );
    assert!(matches!(
        route(&plan, "r.example", "/(unclosed/x").filters[..],
        [Filter::Fail(_)]
    ));
    assert!(route(&plan, "r.example", "/ok").filters.is_empty());
}

#[test]
fn rewrite_target_implies_regex_and_carries_the_prefix_header() {
    let (plan, problems) = translate_docs(&[annotated(
        "x",
        &[
            ("rewrite-target", "/$2"),
            ("x-forwarded-prefix", "/something"),
        ],
        &one_path(
            "r.example",
            "/something(/|$)(.*)",
            "ImplementationSpecific",
            "web",
        ),
    )]);
    assert!(problems.is_empty(), "{problems:?}");
    let route = route(&plan, "r.example", "/something/new");
    assert_eq!(filter_names(route), ["rewrite", "set-header"]);
    let Filter::Rewrite { regex, target } = &route.filters[0] else {
        panic!()
    };
    assert_eq!(target, "/${2}");
    let mut out = String::new();
    regex
        .captures("/SOMETHING/new")
        .unwrap()
        .expand(target, &mut out);
    assert_eq!(out, "/new");
}

#[test]
fn ssl_redirect_on_hosts_with_a_certificate_unless_disabled_and_forced_anywhere() {
    let secret = r#"
---
apiVersion: v1
kind: Secret
metadata: {name: cert, namespace: demo}
type: kubernetes.io/tls
stringData: {tls.crt: "x", tls.key: "y"}
"#;
    let tls = "  tls:\n  - {hosts: [tls.example], secretName: cert}\n";
    let (plan, _) = translate_docs(&[
        secret.to_string(),
        annotated(
            "on",
            &[],
            &format!("{tls}{}", one_path("tls.example", "/", "Prefix", "web")),
        ),
        annotated(
            "plain",
            &[],
            &one_path("plain.example", "/", "Prefix", "web"),
        ),
        annotated(
            "off",
            &[("ssl-redirect", "false")],
            &format!("{tls}{}", one_path("tls.example", "/off", "Prefix", "web")),
        ),
        annotated(
            "forced",
            &[
                ("force-ssl-redirect", "true"),
                ("preserve-trailing-slash", "true"),
            ],
            &one_path("forced.example", "/", "Prefix", "web"),
        ),
    ]);
    // HSTS (ingress-nginx's default) on hosts with a certificate is checked in `nginx_config`.
    let https = |host: &str, path: &str| {
        let filters: Vec<&Filter> = route(&plan, host, path)
            .filters
            .iter()
            .filter(|f| !matches!(f, Filter::Hsts(_)))
            .collect();
        match &filters[..] {
            [Filter::HttpsRedirect {
                status,
                strip_trailing_slash,
            }] => Some((status.as_u16(), *strip_trailing_slash)),
            [] => None,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(https("tls.example", "/"), Some((308, true)));
    assert_eq!(https("plain.example", "/"), None);
    assert_eq!(https("tls.example", "/off"), None);
    assert_eq!(https("forced.example", "/"), Some((308, false)));
    // cert-manager's HTTP-01 solver: never redirected, even when forced.
    let (plan, _) = translate_docs(&[
        secret.to_string(),
        annotated(
            "solver",
            &[("force-ssl-redirect", "true")],
            &format!(
                "{tls}{}",
                one_path(
                    "tls.example",
                    "/.well-known/acme-challenge/token",
                    "Exact",
                    "solver"
                )
            ),
        ),
    ]);
    let solver = route(&plan, "tls.example", "/.well-known/acme-challenge/token");
    assert_eq!(filter_names(solver), ["hsts"], "no redirect");
}

#[test]
fn app_root_alias_www_and_default_backend_add_rules() {
    let services = r#"
---
apiVersion: v1
kind: Service
metadata: {name: fallback, namespace: demo}
spec:
  ports: [{port: 8081}, {port: 9090}]
"#;
    let (plan, problems) = translate_docs(&[
        services.to_string(),
        annotated(
            "x",
            &[
                ("app-root", "/app1"),
                ("server-alias", "alias.example, taken.example"),
                ("from-to-www-redirect", "true"),
                ("default-backend", "fallback"),
            ],
            &one_path("site.example", "/app1", "Prefix", "web"),
        ),
        annotated(
            "taken",
            &[],
            &one_path("taken.example", "/", "Prefix", "web"),
        ),
    ]);
    assert_eq!(
        fields(&problems),
        vec!["Ingress demo/x metadata.annotations[\"nginx.ingress.kubernetes.io/server-alias\"]"],
        "{problems:?}"
    );
    // app-root: only `/` itself.
    assert_eq!(
        filter_names(route(&plan, "site.example", "/")),
        ["app-root"]
    );
    assert_eq!(
        target(&plan, "site.example", "/app1/x").unwrap(),
        "x>web:80"
    );
    // The default backend takes what no rule matches, on the Service's first port...
    assert_eq!(
        target(&plan, "site.example", "/other").unwrap(),
        "x>fallback:8081"
    );
    // ...and is the rule's fallback.
    let fallback = route(&plan, "site.example", "/app1").fallback.unwrap();
    assert_eq!(plan.backends[fallback].service.name, "fallback");
    // The alias serves the same rules.
    assert_eq!(
        filter_names(route(&plan, "alias.example", "/")),
        ["app-root"]
    );
    assert_eq!(target(&plan, "alias.example", "/app1").unwrap(), "x>web:80");
    assert_eq!(
        target(&plan, "taken.example", "/app1").unwrap(),
        "taken>web:80"
    );
    // www.site.example redirects to site.example.
    match &route(&plan, "www.site.example", "/any").filters[..] {
        [Filter::HostRedirect { status, host }] => {
            assert_eq!((status.as_u16(), host.as_str()), (308, "site.example"));
        }
        other => panic!("{other:?}"),
    }
}
