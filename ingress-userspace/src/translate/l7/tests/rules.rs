//! Precedence and conflicts between rules, the default backend, and every bad input reported at
//! its field while the rest routes.

use super::*;

#[test]
fn same_host_merges_paths_and_the_oldest_wins_a_conflict() {
    let yaml = [
        DEFAULT_CLASS.to_string(),
        ingress(
            "demo",
            "newer",
            NEW,
            &rules(&[rule(
                "Shop.Example",
                &[
                    path("/web", "Prefix", "web", 80),
                    path("/api/", "Prefix", "api-v2", 80),
                ],
            )]),
        ),
        ingress(
            "demo",
            "older",
            OLD,
            &rules(&[rule("shop.example", &[path("/api", "Prefix", "api", 80)])]),
        ),
    ]
    .concat();
    let (plan, problems) = run(&yaml);
    let problems = without_unknown_services(problems);
    assert_eq!(
        target(&plan, "shop.example", "/web/x").unwrap(),
        "newer>web:80"
    );
    assert_eq!(
        target(&plan, "SHOP.example", "/api/v1").unwrap(),
        "older>api:80"
    );
    assert_eq!(
        fields(&problems),
        vec!["Ingress demo/newer spec.rules[0].http.paths[1]"]
    );
    assert!(
        problems[0].message.contains("Ingress demo/older"),
        "{}",
        problems[0].message
    );
    assert!(
        !plan.backends.iter().any(|b| b.service.name == "api-v2"),
        "a losing path gets no backend"
    );
}

#[test]
fn equal_timestamps_then_namespace_and_name_and_missing_timestamps_last() {
    let api = |service: &str| rules(&[rule("h.example", &[path("/", "Prefix", service, 80)])]);
    let yaml = [
        DEFAULT_CLASS.to_string(),
        ingress("b", "first", None, &api("no-timestamp")),
        ingress("b", "a", OLD, &api("b-a")),
        ingress("a", "z", OLD, &api("a-z")),
    ]
    .concat();
    let (plan, problems) = run(&yaml);
    let problems = without_unknown_services(problems);
    assert_eq!(target(&plan, "h.example", "/").unwrap(), "z>a-z:80");
    assert_eq!(
        fields(&problems),
        vec![
            "Ingress b/a spec.rules[0].http.paths[0]",
            "Ingress b/first spec.rules[0].http.paths[0]"
        ]
    );
    // Tie-break order also orders the TLS plans and nothing else depends on map order.
    assert_eq!(
        plan.ingresses,
        vec![name("a", "z"), name("b", "a"), name("b", "first")]
    );
}

#[test]
fn the_same_rule_twice_in_one_ingress_and_prefix_types_collide() {
    let yaml = DEFAULT_CLASS.to_string()
        + &ingress(
            "demo",
            "dup",
            OLD,
            &rules(&[
                rule(
                    "h.example",
                    &[
                        path("/foo", "Prefix", "one", 80),
                        path("/foo/", "Prefix", "two", 80),
                        path("/foo", "Exact", "exact", 80),
                    ],
                ),
                rule(
                    "h.example",
                    &[path("/foo", "ImplementationSpecific", "three", 80)],
                ),
            ]),
        );
    let (plan, problems) = run(&yaml);
    let problems = without_unknown_services(problems);
    assert_eq!(
        fields(&problems),
        vec![
            "Ingress demo/dup spec.rules[0].http.paths[1]",
            "Ingress demo/dup spec.rules[1].http.paths[0]"
        ]
    );
    assert!(problems[0]
        .message
        .contains("spec.rules[0].http.paths[0] of this Ingress"));
    assert_eq!(target(&plan, "h.example", "/foo/x").unwrap(), "dup>one:80");
    assert_eq!(target(&plan, "h.example", "/foo").unwrap(), "dup>exact:80");
}

#[test]
fn oldest_default_backend_wins() {
    let default = |service: &str| {
        format!("  defaultBackend: {{service: {{name: {service}, port: {{number: 80}}}}}}\n")
    };
    let yaml = [
        DEFAULT_CLASS.to_string(),
        ingress("demo", "newer", NEW, &default("newer-default")),
        ingress(
            "demo",
            "older",
            OLD,
            &(default("older-default")
                + &rules(&[rule("a.example", &[path("/a", "Exact", "a", 80)])])),
        ),
    ]
    .concat();
    let (plan, problems) = run(&yaml);
    let problems = without_unknown_services(problems);
    assert_eq!(target(&plan, "a.example", "/a").unwrap(), "older>a:80");
    assert_eq!(
        target(&plan, "a.example", "/b").unwrap(),
        "older>older-default:80"
    );
    assert_eq!(
        target(&plan, "other.example", "/").unwrap(),
        "older>older-default:80"
    );
    assert_eq!(
        fields(&problems),
        vec!["Ingress demo/newer spec.defaultBackend"]
    );
    assert!(problems[0].message.contains("demo/older"));
}

#[test]
fn no_default_backend_means_no_route() {
    let yaml = DEFAULT_CLASS.to_string()
        + &ingress(
            "demo",
            "a",
            OLD,
            &rules(&[rule("a.example", &[path("/a", "Exact", "a", 80)])]),
        );
    let (plan, _) = run(&yaml);
    assert_eq!(target(&plan, "a.example", "/b"), None);
}

#[test]
fn every_bad_input_is_reported_at_its_field_and_the_rest_routes() {
    let raw = |text: &str| format!("      - {text}\n");
    let backend = "backend: {service: {name: web, port: {number: 80}}}";
    let spec = rules(&[
        rule(
            "good.example",
            &[
                path("/ok", "Prefix", "web", 80),
                raw(&format!("{{path: relative, pathType: Prefix, {backend}}}")),
                raw(&format!("{{path: /x, pathType: Regex, {backend}}}")),
                raw(&format!("{{path: /y, {backend}}}")),
                raw("{path: /both, pathType: Prefix, backend: {service: {name: web, port: {number: 80, name: http}}}}"),
                raw("{path: /neither, pathType: Prefix, backend: {service: {name: web, port: {}}}}"),
                raw("{path: /resource, pathType: Prefix, backend: {resource: {kind: StorageBucket, name: b}}}"),
                raw("{path: /zero, pathType: Prefix, backend: {service: {name: web, port: {number: 0}}}}"),
                raw("{path: /nobackend, pathType: Prefix}"),
                raw(&format!("{{pathType: Exact, {backend}}}")),
                raw(&format!("{{path: impl, pathType: ImplementationSpecific, {backend}}}")),
            ],
        ),
        rule("good.example:80", &[path("/", "Prefix", "web", 80)]),
        rule("*.*.example", &[path("/", "Prefix", "web", 80)]),
        rule("foo*.example", &[path("/", "Prefix", "web", 80)]),
        rule("10.0.0.1", &[path("/", "Prefix", "web", 80)]),
        rule("under_score.example", &[path("/", "Prefix", "web", 80)]),
        "  - host: no-http.example\n".to_string(),
        rule("*.wild.example", &[path("/", "Prefix", "web", 80)]),
    ]);
    let yaml = DEFAULT_CLASS.to_string() + &ingress("demo", "bad", OLD, &spec);
    let (plan, problems) = run(&yaml);
    let p = "Ingress demo/bad spec.rules[0].http.paths";
    let mut expected: Vec<String> = vec![
        // The Service `web` does not exist: reported once, where it is first used.
        format!("{p}[0].backend.service.name"),
        format!("{p}[1].path"),
        format!("{p}[2].pathType"),
        format!("{p}[3].pathType"),
        format!("{p}[4].backend.service.port"),
        format!("{p}[5].backend.service.port"),
        format!("{p}[6].backend.resource"),
        format!("{p}[7].backend.service.port.number"),
        format!("{p}[8].backend"),
        format!("{p}[9].path"),
        format!("{p}[10].path"),
    ];
    expected.extend((1..=5).map(|i| format!("Ingress demo/bad spec.rules[{i}].host")));
    assert_eq!(fields(&problems), expected, "{problems:#?}");
    assert!(problems
        .iter()
        .any(|p| p.field.ends_with("rules[4].host") && p.message.contains("IP address")));
    assert_eq!(
        target(&plan, "good.example", "/ok/1").unwrap(),
        "bad>web:80"
    );
    assert_eq!(target(&plan, "a.wild.example", "/").unwrap(), "bad>web:80");
    assert_eq!(target(&plan, "good.example", "/x"), None);
    assert_eq!(plan.backends.len(), 1, "the invalid paths got no backend");
}
