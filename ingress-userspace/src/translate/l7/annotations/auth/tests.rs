use super::*;

#[test]
fn signin_gets_the_redirect_parameter_as_ingress_nginx_adds_it() {
    let parts = |text: &str| signin(text, "rd").unwrap().parts;
    let added = |start: &str| {
        vec![
            SigninPart::Text(format!("{start}rd=")),
            SigninPart::Scheme,
            SigninPart::Text("://".into()),
            SigninPart::Host,
            SigninPart::EscapedRequestUri,
        ]
    };
    assert_eq!(
        parts("https://auth.example/start"),
        added("https://auth.example/start?")
    );
    assert_eq!(
        parts("https://auth.example/start?a=1"),
        added("https://auth.example/start?a=1&")
    );
    // Already there: kept as written, its variables substituted per request.
    assert_eq!(
        parts("https://auth.example/start?rd=$escaped_request_uri"),
        vec![
            SigninPart::Text("https://auth.example/start?rd=".into()),
            SigninPart::EscapedRequestUri
        ]
    );
    assert!(signin("/relative", "rd").is_err());
    assert!(signin("https://a.example/?x=$unknown_var", "rd").is_err());
    assert!(signin("https://a.example/?x=$", "rd").is_err());
}

#[test]
fn secret_names() {
    assert_eq!(
        secret_name("users", "shop"),
        Some(ObjectName {
            namespace: "shop".into(),
            name: "users".into()
        })
    );
    assert_eq!(
        secret_name("auth/users", "shop"),
        Some(ObjectName {
            namespace: "auth".into(),
            name: "users".into()
        })
    );
    for bad in ["", "/users", "auth/", "Users", "a/b/c"] {
        assert_eq!(secret_name(bad, "shop"), None, "{bad:?}");
    }
}
