//! `auth-type: basic` (its Secret looked up, bad values, a missing Secret or key), `auth-url`
//! and its companions, `upstream-vhost` and `service-upstream`: filters, problems, backends.

use super::*;

const USERS: &str = "---\napiVersion: v1\nkind: Secret\nmetadata: {name: users, namespace: demo}\ntype: Opaque\nstringData:\n  auth: |\n    # comment\n    alice:$apr1$lZL6V/ci$eIMz/iKDkbtys/uU7LEK00\n    bob:{SHA}lwP+QnDZZeQ+bmQbA4P37mDtFVo=\n\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: map, namespace: demo}\ntype: Opaque\nstringData:\n  map-user: \"{PLAIN}x\"\n";

/// The filters of `h.example/` and the problems, with the `users` Secret present.
fn with(annotations: &[(&str, &str)]) -> (Vec<Filter>, Vec<Problem>) {
    let (plan, problems) = translate_docs(&[
        USERS.to_string(),
        annotated(
            "x",
            annotations,
            &one_path("h.example", "/", "Prefix", "web"),
        ),
    ]);
    (route(&plan, "h.example", "/").filters.clone(), problems)
}

fn failure(filters: &[Filter]) -> String {
    match filters {
        [Filter::Fail(why)] => String::from_utf8_lossy(why).into_owned(),
        other => panic!("not a failing route: {other:?}"),
    }
}

#[test]
fn basic_auth_reads_the_secret_with_realm_and_both_secret_types() {
    let (filters, problems) = with(&[
        ("auth-type", "basic"),
        ("auth-secret", "users"),
        ("auth-realm", "Staff"),
    ]);
    assert!(problems.is_empty(), "{problems:?}");
    let [Filter::BasicAuth(basic)] = &filters[..] else {
        panic!("{filters:?}")
    };
    assert_eq!(basic.challenge, "Basic realm=\"Staff\"");
    let mut users: Vec<&str> = basic.users.keys().map(String::as_str).collect();
    users.sort();
    assert_eq!(users, ["alice", "bob"]);
    assert!(basic.check("alice", b"password"));
    assert!(basic.check("bob", b"sha1-pass"));
    assert!(!basic.check("bob", b"password"));
    // auth-map: every key is a user, and a `namespace/name` Secret.
    let (filters, problems) = with(&[
        ("auth-type", "basic"),
        ("auth-secret", "demo/map"),
        ("auth-secret-type", "auth-map"),
    ]);
    assert!(problems.is_empty(), "{problems:?}");
    let [Filter::BasicAuth(basic)] = &filters[..] else {
        panic!("{filters:?}")
    };
    assert_eq!(basic.challenge, "Basic realm=\"\"");
    assert!(basic.check("map-user", b"x"));
}

#[test]
fn auth_that_cannot_be_set_up_fails_closed_and_names_the_field() {
    // (annotations, the key the problem names, what it says)
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: &[Case<'_>] = &[
        (
            &[("auth-type", "basic"), ("auth-secret", "nobody")],
            "auth-secret",
            "no Secret demo/nobody",
        ),
        (&[("auth-type", "basic")], "auth-secret", "needs the Secret"),
        (
            &[("auth-type", "digest"), ("auth-secret", "users")],
            "auth-type",
            "digest",
        ),
        (
            &[("auth-type", "ntlm"), ("auth-secret", "users")],
            "auth-type",
            "not an authentication type",
        ),
        (
            &[
                ("auth-type", "basic"),
                ("auth-secret", "users"),
                ("auth-secret-type", "file"),
            ],
            "auth-secret-type",
            "neither",
        ),
        (
            &[
                ("auth-type", "basic"),
                ("auth-secret", "users"),
                ("auth-realm", "a\"b"),
            ],
            "auth-realm",
            "cannot be sent",
        ),
        (
            &[("auth-url", "ftp://auth.example/")],
            "auth-url",
            "not an http:// URL",
        ),
        (
            &[("auth-url", "https://auth.example/")],
            "auth-url",
            "https",
        ),
        (
            &[
                ("auth-url", "http://auth.example/"),
                ("auth-method", "FETCH"),
            ],
            "auth-method",
            "not an HTTP method",
        ),
        (
            &[
                ("auth-url", "http://auth.example/"),
                ("auth-response-headers", "X-Ok, Bad Header"),
            ],
            "auth-response-headers",
            "not a header name",
        ),
        (
            &[
                ("auth-url", "http://auth.example/"),
                ("auth-signin", "/login"),
            ],
            "auth-signin",
            "not an absolute",
        ),
        (
            &[("upstream-vhost", "a b")],
            "upstream-vhost",
            "not a host name",
        ),
        (
            &[("service-upstream", "yes")],
            "service-upstream",
            "not a boolean",
        ),
    ];
    for (annotations, key, why) in cases {
        let (filters, problems) = with(annotations);
        let message = failure(&filters);
        assert!(message.contains(why), "{annotations:?}: {message}");
        assert!(
            problems.iter().any(|p| p.field
                == format!("metadata.annotations[\"nginx.ingress.kubernetes.io/{key}\"]")
                && p.message.contains(why)),
            "{annotations:?}: {problems:?}"
        );
    }
    // A Secret without the `auth` key, or with a line that is no hash.
    let (plan, problems) = translate_docs(&[
        "---\napiVersion: v1\nkind: Secret\nmetadata: {name: empty, namespace: demo}\ntype: Opaque\nstringData: {other: x}\n".to_string(),
        "---\napiVersion: v1\nkind: Secret\nmetadata: {name: bad, namespace: demo}\ntype: Opaque\nstringData: {auth: \"eve:not-a-hash\"}\n".to_string(),
        annotated("a", &[("auth-type", "basic"), ("auth-secret", "empty")], &one_path("a.example", "/", "Prefix", "web")),
        annotated("b", &[("auth-type", "basic"), ("auth-secret", "bad")], &one_path("b.example", "/", "Prefix", "web")),
    ]);
    assert!(failure(&route(&plan, "a.example", "/").filters).contains("has no key \"auth\""));
    assert!(failure(&route(&plan, "b.example", "/").filters).contains("user \"eve\""));
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert_eq!(
        plan.auth_secrets,
        [name("demo", "empty"), name("demo", "bad")]
    );
}

#[test]
fn external_auth_and_upstream_vhost() {
    let (filters, problems) = with(&[
        ("auth-url", "http://auth.example:9000/check?x=1"),
        ("auth-response-headers", "X-User, X-Email"),
        ("auth-signin", "https://login.example/start"),
        ("auth-signin-redirect-param", "next"),
        ("upstream-vhost", "internal.example"),
    ]);
    assert!(problems.is_empty(), "{problems:?}");
    let [Filter::ExternalAuth(external), Filter::UpstreamVhost(vhost)] = &filters[..] else {
        panic!("{filters:?}")
    };
    assert_eq!(external.url, "http://auth.example:9000/check?x=1");
    assert_eq!(external.host, "auth.example:9000");
    assert_eq!(external.method, http::Method::GET);
    assert!(!external.method_given);
    assert_eq!(external.response_headers, ["x-user", "x-email"]);
    let signin = external.signin.as_ref().unwrap();
    assert_eq!(
        signin.parts[0],
        crate::translate::l7::routes::auth::SigninPart::Text(
            "https://login.example/start?next=".into()
        )
    );
    assert_eq!(vhost, "internal.example");
}

#[test]
fn service_upstream_is_the_cluster_ip_and_service_port() {
    let service = "---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: demo}\nspec:\n  clusterIP: 10.96.0.10\n  ports: [{name: http, port: 80, targetPort: 8080}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1, namespace: demo, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints: [{addresses: [192.0.2.1], conditions: {ready: true}}]\n";
    let headless = service
        .replace("clusterIP: 10.96.0.10", "clusterIP: None")
        .replace("name: web,", "name: hl,")
        .replace("service-name: web", "service-name: hl")
        .replace("name: web-1", "name: hl-1");
    let (plan, problems) = translate_docs(&[
        service.to_string(),
        headless,
        annotated(
            "a",
            &[("service-upstream", "true")],
            &one_path("a.example", "/", "Prefix", "web"),
        ),
        annotated("b", &[], &one_path("b.example", "/", "Prefix", "web")),
        annotated(
            "c",
            &[("service-upstream", "true")],
            &one_path("c.example", "/", "Prefix", "hl"),
        ),
    ]);
    let endpoints = |host: &str| {
        let id = route(&plan, host, "/").backend().unwrap();
        plan.backends[id].endpoints.clone().unwrap()
    };
    assert_eq!(endpoints("a.example"), ["10.96.0.10:80".parse().unwrap()]);
    assert_eq!(endpoints("b.example"), ["192.0.2.1:8080".parse().unwrap()]);
    assert_eq!(
        endpoints("c.example"),
        ["192.0.2.1:8080".parse().unwrap()],
        "headless: endpoints"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.object == "Ingress demo/c" && p.message.contains("no ClusterIP")),
        "{problems:?}"
    );
    assert_eq!(problems.len(), 1, "{problems:?}");
}
