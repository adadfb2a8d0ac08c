//! `enable-cors` with the `cors-*` keys, and the source-range keys: defaults, values, bad
//! values.

use super::*;

/// The CORS policy of the route of `h.example/`, as `(origin regex, header lines)`.
fn cors_of(annotations: &[(&str, &str)]) -> (Option<String>, Vec<String>, Vec<Problem>) {
    let (plan, problems) = translate_docs(&[annotated(
        "x",
        annotations,
        &one_path("h.example", "/", "Prefix", "web"),
    )]);
    match &route(&plan, "h.example", "/").filters[..] {
        [Filter::Cors(policy)] => (
            policy.origins.as_ref().map(|r| r.as_str().to_string()),
            policy
                .headers
                .iter()
                .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
                .collect(),
            problems,
        ),
        [Filter::Fail(_)] => (None, vec!["fail".into()], problems),
        other => panic!("{other:?}"),
    }
}

#[test]
fn cors_defaults_custom_values_and_bad_values() {
    let (origins, headers, problems) = cors_of(&[("enable-cors", "true")]);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(origins, None, "any origin by default");
    assert_eq!(
        headers,
        [
            "access-control-allow-credentials: true",
            "access-control-allow-methods: GET, PUT, POST, DELETE, PATCH, OPTIONS",
            "access-control-allow-headers: DNT,Keep-Alive,User-Agent,X-Requested-With,If-Modified-Since,Cache-Control,Content-Type,Range,Authorization",
            "access-control-max-age: 1728000",
        ]
    );
    let (origins, headers, problems) = cors_of(&[
        ("enable-cors", "true"),
        (
            "cors-allow-origin",
            "https://app.example:4443, http://*.example.org",
        ),
        ("cors-allow-credentials", "false"),
        ("cors-allow-methods", "GET, POST"),
        ("cors-allow-headers", "X-Custom, Content-Type"),
        ("cors-expose-headers", "*, X-Total"),
        ("cors-max-age", "600"),
    ]);
    assert!(problems.is_empty(), "{problems:?}");
    // The policy's regex is built case-insensitive; `as_str` does not carry the flag.
    let origins = regex::RegexBuilder::new(&origins.unwrap())
        .case_insensitive(true)
        .build()
        .unwrap();
    for (origin, allowed) in [
        ("https://app.example:4443", true),
        ("HTTPS://APP.example:4443", true),
        ("https://app.example", false),
        ("http://a.example.org", true),
        ("http://a.b.example.org", false),
        ("http://example.org", false),
        ("https://app.example:4443.evil", false),
    ] {
        assert_eq!(origins.is_match(origin), allowed, "{origin}");
    }
    assert_eq!(
        headers,
        [
            "access-control-allow-methods: GET, POST",
            "access-control-allow-headers: X-Custom, Content-Type",
            "access-control-expose-headers: *, X-Total",
            "access-control-max-age: 600",
        ]
    );
    for (key, value) in [
        ("cors-allow-origin", "example.org"),
        ("cors-allow-methods", "GET;DROP"),
        ("cors-max-age", "a day"),
        ("cors-allow-credentials", "sure"),
    ] {
        let (_, headers, problems) = cors_of(&[("enable-cors", "true"), (key, value)]);
        assert_eq!(headers, ["fail"], "{key}");
        assert_eq!(problems.len(), 1, "{key}: {problems:?}");
        assert!(problems[0].field.contains(key), "{key}: {problems:?}");
    }
    // Without enable-cors, the other keys do nothing.
    let (plan, problems) = translate_docs(&[annotated(
        "x",
        &[("cors-allow-origin", "https://app.example")],
        &one_path("h.example", "/", "Prefix", "web"),
    )]);
    assert!(problems.is_empty(), "{problems:?}");
    assert!(route(&plan, "h.example", "/").filters.is_empty());
}

#[test]
fn source_ranges_allow_deny_the_old_name_and_bad_ranges() {
    let ranges = |annotations: &[(&str, &str)]| {
        let (plan, problems) = translate_docs(&[annotated(
            "x",
            annotations,
            &one_path("h.example", "/", "Prefix", "web"),
        )]);
        let filters = match &route(&plan, "h.example", "/").filters[..] {
            [Filter::SourceRange { deny, allow }] => {
                let show = |r: &[crate::translate::l7::Cidr]| {
                    r.iter().map(ToString::to_string).collect::<Vec<_>>()
                };
                format!("deny {:?} allow {:?}", show(deny), show(allow))
            }
            [] => "none".to_string(),
            [Filter::Fail(_)] => "fail".to_string(),
            other => panic!("{other:?}"),
        };
        (filters, fields(&problems))
    };
    assert_eq!(ranges(&[]), ("none".into(), vec![]));
    assert_eq!(
        ranges(&[("whitelist-source-range", "192.0.2.0/24, 198.51.100.7")]),
        (
            r#"deny [] allow ["192.0.2.0/24", "198.51.100.7/32"]"#.into(),
            vec![]
        )
    );
    assert_eq!(
        ranges(&[
            ("whitelist-source-range", "192.0.2.0/24"),
            ("allowlist-source-range", "203.0.113.0/24"),
            ("denylist-source-range", "2001:db8::/32"),
        ]),
        (
            r#"deny ["2001:db8::/32"] allow ["203.0.113.0/24"]"#.into(),
            vec![]
        ),
        "the new name wins over the old"
    );
    assert_eq!(
        ranges(&[("denylist-source-range", "192.0.2.0/33")]),
        (
            "fail".into(),
            vec![
                "Ingress demo/x metadata.annotations[\"nginx.ingress.kubernetes.io/denylist-source-range\"]"
                    .to_string()
            ]
        )
    );
}
