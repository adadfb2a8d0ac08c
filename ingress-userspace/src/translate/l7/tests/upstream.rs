//! `backend-protocol` and `proxy-ssl-*`: each value, the defaults, and bad values reported under
//! their annotation key with the Ingress's backends answering 503.

use super::*;

const SECRETS: &str = r#"
---
apiVersion: v1
kind: Secret
type: kubernetes.io/tls
metadata: {name: upstream-ca, namespace: demo}
stringData: {ca.crt: "CA PEM"}
---
apiVersion: v1
kind: Secret
type: kubernetes.io/tls
metadata: {name: mtls, namespace: other}
stringData: {ca.crt: "CA PEM", tls.crt: "CERT PEM", tls.key: "KEY PEM"}
---
apiVersion: v1
kind: Secret
type: kubernetes.io/tls
metadata: {name: half, namespace: demo}
stringData: {tls.crt: "CERT PEM"}
---
apiVersion: v1
kind: Secret
type: kubernetes.io/tls
metadata: {name: client-only, namespace: demo}
stringData: {tls.crt: "CERT PEM", tls.key: "KEY PEM"}
---
apiVersion: v1
kind: Secret
type: Opaque
metadata: {name: opaque-ca, namespace: demo}
stringData: {ca.crt: "OPAQUE CA PEM"}
"#;

/// One Ingress `ing` routing `h.example/` to Service `web`, with these nginx annotations.
fn annotated(annotations: &[(&str, &str)]) -> (L7Plan, Vec<Problem>) {
    let annotations: String = annotations
        .iter()
        .map(|(k, v)| format!("    nginx.ingress.kubernetes.io/{k}: \"{v}\"\n"))
        .collect();
    let yaml = format!(
        "{DEFAULT_CLASS}{SERVICES}{SECRETS}---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: ing\n  namespace: demo\n  annotations:\n{annotations}    unrelated: x\nspec:\n{}",
        rules(&[rule("h.example", &[path("/", "Prefix", "web", 80)])])
    );
    run(&yaml)
}

fn upstream(plan: &L7Plan) -> Result<UpstreamPlan, String> {
    let id = plan
        .routes
        .route("h.example", "/")
        .and_then(Route::backend)
        .expect("routed");
    plan.backends[id].upstream.clone()
}

fn tls_of(annotations: &[(&str, &str)]) -> UpstreamTlsPlan {
    let (plan, problems) = annotated(annotations);
    assert_eq!(problems, [], "{annotations:?}");
    upstream(&plan).unwrap().tls.expect("a TLS protocol")
}

#[test]
fn backend_protocol_values_and_default() {
    use BackendProtocol::*;
    for (value, protocol) in [
        (None, Http),
        (Some("HTTP"), Http),
        (Some("AUTO_HTTP"), Http),
        (Some("HTTPS"), Https),
        (Some("GRPC"), Grpc),
        (Some("grpcs"), Grpcs),
        (Some(" GRPC "), Grpc),
    ] {
        let annotations: Vec<(&str, &str)> =
            value.map(|v| ("backend-protocol", v)).into_iter().collect();
        let (plan, problems) = annotated(&annotations);
        assert_eq!(problems, [], "{value:?}");
        let upstream = upstream(&plan).unwrap();
        assert_eq!(upstream.protocol, protocol, "{value:?}");
        assert_eq!(upstream.tls.is_some(), protocol.is_tls(), "{value:?}");
    }
}

#[test]
fn tls_defaults_are_nginx_defaults_with_the_service_name() {
    let tls = tls_of(&[("backend-protocol", "HTTPS")]);
    assert_eq!(
        tls,
        UpstreamTlsPlan {
            server_name: "web.demo.svc".into(),
            send_sni: false,
            verify: false,
            trusted_ca: None,
            client_certificate: None,
            tls12: true,
            tls13: true,
        }
    );
    // proxy-ssl-* on a clear-text backend change nothing (nginx ignores them there too).
    let (plan, problems) =
        annotated(&[("proxy-ssl-verify", "on"), ("proxy-ssl-name", "x.example")]);
    assert_eq!(problems, []);
    assert_eq!(upstream(&plan), Ok(UpstreamPlan::default()));
}

#[test]
fn proxy_ssl_annotations_are_read() {
    let tls = tls_of(&[
        ("backend-protocol", "GRPCS"),
        ("proxy-ssl-secret", "other/mtls"),
        ("proxy-ssl-verify", "on"),
        ("proxy-ssl-name", "API.internal.example"),
        ("proxy-ssl-server-name", "on"),
        ("proxy-ssl-protocols", "TLSv1.1 TLSv1.3"),
    ]);
    assert_eq!(tls.server_name, "api.internal.example");
    assert!(tls.send_sni && tls.verify);
    assert_eq!(tls.trusted_ca.as_deref(), Some(&b"CA PEM"[..]));
    let client = tls.client_certificate.expect("client certificate");
    assert_eq!(client.certificate_chain, b"CERT PEM");
    assert_eq!(client.private_key, b"KEY PEM");
    assert_eq!((tls.tls12, tls.tls13), (false, true));

    // A name alone is in the Ingress's namespace; a Secret with only a client certificate
    // serves when nothing is verified; an IP address is a valid name.
    let tls = tls_of(&[
        ("backend-protocol", "HTTPS"),
        ("proxy-ssl-secret", "client-only"),
        ("proxy-ssl-name", "192.0.2.7"),
        ("proxy-ssl-verify", "off"),
        ("proxy-ssl-server-name", "off"),
    ]);
    assert!(tls.client_certificate.is_some() && tls.trusted_ca.is_none());
    assert_eq!(tls.server_name, "192.0.2.7");
    assert!(!tls.send_sni && !tls.verify);

    // A generic (Opaque) Secret holding only ca.crt, as ingress-nginx accepts: verification
    // against it, no client certificate.
    let tls = tls_of(&[
        ("backend-protocol", "HTTPS"),
        ("proxy-ssl-secret", "demo/opaque-ca"),
        ("proxy-ssl-verify", "on"),
    ]);
    assert_eq!(tls.trusted_ca.as_deref(), Some(&b"OPAQUE CA PEM"[..]));
    assert!(tls.verify && tls.client_certificate.is_none());
}

#[test]
fn bad_values_are_reported_under_their_key_and_the_route_answers_503() {
    let key = |k: &str| {
        format!("Ingress demo/ing metadata.annotations[\"nginx.ingress.kubernetes.io/{k}\"]")
    };
    // (annotations, the key reported, a part of the message)
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: &[Case<'_>] = &[
        (
            &[("backend-protocol", "FCGI")],
            "backend-protocol",
            "not supported",
        ),
        (
            &[("backend-protocol", "HTTP3")],
            "backend-protocol",
            "not one of",
        ),
        (
            &[("backend-protocol", "HTTPS"), ("proxy-ssl-verify", "yes")],
            "proxy-ssl-verify",
            "neither",
        ),
        (
            &[("proxy-ssl-server-name", "true")],
            "proxy-ssl-server-name",
            "neither",
        ),
        (
            &[("proxy-ssl-name", "bad name!")],
            "proxy-ssl-name",
            "not a DNS name",
        ),
        (
            &[("proxy-ssl-protocols", "TLSv1 TLSv1.1")],
            "proxy-ssl-protocols",
            "neither TLSv1.2",
        ),
        (
            &[("proxy-ssl-protocols", "TLSv1.4")],
            "proxy-ssl-protocols",
            "not a TLS version",
        ),
        (
            &[("proxy-ssl-secret", "demo/missing")],
            "proxy-ssl-secret",
            "no Secret demo/missing",
        ),
        (
            &[("proxy-ssl-secret", "a/b/c")],
            "proxy-ssl-secret",
            "not \"namespace/name\"",
        ),
        (
            &[("proxy-ssl-secret", "demo/half")],
            "proxy-ssl-secret",
            "no tls.key",
        ),
        (
            &[("backend-protocol", "HTTPS"), ("proxy-ssl-verify", "on")],
            "proxy-ssl-verify",
            "needs",
        ),
        (
            &[
                ("backend-protocol", "HTTPS"),
                ("proxy-ssl-verify", "on"),
                ("proxy-ssl-secret", "demo/client-only"),
            ],
            "proxy-ssl-secret",
            "has no ca.crt",
        ),
    ];
    for (annotations, bad, message) in cases {
        let (plan, problems) = annotated(annotations);
        assert_eq!(fields(&problems), [key(bad)], "{annotations:?}");
        assert!(problems[0].message.contains(message), "{problems:?}");
        let id = plan
            .routes
            .route("h.example", "/")
            .and_then(Route::backend)
            .unwrap();
        let backend = &plan.backends[id];
        let answer = backend.unavailable_message().expect("503");
        assert!(
            answer.starts_with("503 Service Unavailable: annotation nginx.ingress.kubernetes.io/")
                && answer.contains(message),
            "{answer}"
        );
        // The endpoints are still resolved: fixing the annotation is all it takes.
        assert!(backend.endpoints.is_ok());
    }
}

#[test]
fn each_ingress_reports_once_and_keeps_its_own_settings() {
    let spec = rules(&[rule(
        "h.example",
        &[
            path("/", "Prefix", "web", 80),
            path("/idle", "Prefix", "idle", 80),
        ],
    )]);
    let bad = format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: bad\n  namespace: demo\n  annotations: {{nginx.ingress.kubernetes.io/backend-protocol: SPDY}}\nspec:\n{}",
        rules(&[rule("b.example", &[path("/", "Prefix", "web", 80), path("/idle", "Prefix", "idle", 80)])])
    );
    let yaml = [
        DEFAULT_CLASS,
        SERVICES,
        &ingress("demo", "good", OLD, &spec),
        &bad,
    ]
    .concat();
    let (plan, problems) = run(&yaml);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    for path in ["/", "/idle"] {
        let good = &plan.backends[plan
            .routes
            .route("h.example", path)
            .and_then(Route::backend)
            .unwrap()];
        assert_eq!(good.upstream, Ok(UpstreamPlan::default()));
        let bad = &plan.backends[plan
            .routes
            .route("b.example", path)
            .and_then(Route::backend)
            .unwrap()];
        assert!(bad.upstream.is_err());
    }
}

#[test]
fn plans_describe_themselves_for_validate() {
    let describe = |annotations: &[(&str, &str)]| {
        let (plan, _) = annotated(annotations);
        upstream(&plan).unwrap().describe()
    };
    assert_eq!(describe(&[("backend-protocol", "GRPC")]), "GRPC");
    assert_eq!(
        describe(&[("backend-protocol", "HTTPS")]),
        "HTTPS, no verification, name web.demo.svc, SNI off"
    );
    assert_eq!(
        describe(&[
            ("backend-protocol", "GRPCS"),
            ("proxy-ssl-secret", "other/mtls"),
            ("proxy-ssl-verify", "on"),
            ("proxy-ssl-server-name", "on"),
        ]),
        "GRPCS, verify web.demo.svc, SNI on, client certificate"
    );
}

#[test]
fn the_named_secret_is_in_the_plan_even_when_missing_so_the_source_keeps_it() {
    let secret = |annotations: &[(&str, &str)]| {
        let (plan, _) = annotated(annotations);
        let id = plan
            .routes
            .route("h.example", "/")
            .and_then(Route::backend)
            .unwrap();
        plan.backends[id].upstream_secret.clone()
    };
    assert_eq!(secret(&[]), None);
    assert_eq!(
        secret(&[("proxy-ssl-secret", "demo/missing")]),
        Some(name("demo", "missing"))
    );
    assert_eq!(
        secret(&[("proxy-ssl-secret", "upstream-ca")]),
        Some(name("demo", "upstream-ca"))
    );
    assert_eq!(secret(&[("proxy-ssl-secret", "a/b/c")]), None);
}
