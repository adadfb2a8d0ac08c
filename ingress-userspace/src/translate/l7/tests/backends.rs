//! Backends resolved to ready endpoints, or the reason why not; one backend per Ingress,
//! Service and port.

use super::*;

fn named_port_path(path: &str, service: &str, port: &str) -> String {
    format!(
        "      - {{path: {path}, pathType: Prefix, backend: {{service: {{name: {service}, port: {{name: {port}}}}}}}}}\n"
    )
}

fn endpoints(plan: &L7Plan, host: &str, path: &str) -> Result<Vec<SocketAddr>, Unavailable> {
    let id = plan
        .routes
        .route(host, path)
        .and_then(Route::backend)
        .expect("routed");
    plan.backends[id].endpoints.clone()
}

#[test]
fn backends_resolve_to_ready_endpoints_or_say_why_not() {
    let spec = rules(&[rule(
        "h.example",
        &[
            path("/number", "Prefix", "web", 80),
            named_port_path("/name", "web", "http"),
            path("/no-service", "Prefix", "gone", 80),
            path("/no-port", "Prefix", "web", 81),
            named_port_path("/no-port-name", "web", "https"),
            path("/idle", "Prefix", "idle", 80),
            path("/external", "Prefix", "external", 80),
            named_port_path("/udp", "web", "dns"),
        ],
    )]);
    let yaml = [DEFAULT_CLASS, SERVICES, &ingress("demo", "ing", OLD, &spec)].concat();
    let (plan, problems) = run(&yaml);
    let web: Vec<SocketAddr> = ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    // Two slices summed and sorted; the not-ready endpoint and the IPv6 slice left out.
    assert_eq!(endpoints(&plan, "h.example", "/number"), Ok(web.clone()));
    assert_eq!(endpoints(&plan, "h.example", "/name"), Ok(web));
    use Unavailable::*;
    assert_eq!(
        endpoints(&plan, "h.example", "/no-service"),
        Err(UnknownService)
    );
    assert_eq!(endpoints(&plan, "h.example", "/no-port"), Err(UnknownPort));
    assert_eq!(
        endpoints(&plan, "h.example", "/no-port-name"),
        Err(UnknownPort)
    );
    assert_eq!(
        endpoints(&plan, "h.example", "/idle"),
        Err(NoReadyEndpoints)
    );
    assert_eq!(
        endpoints(&plan, "h.example", "/external"),
        Err(UnsupportedService(
            "ExternalName Services are not supported".into()
        ))
    );
    assert!(matches!(
        endpoints(&plan, "h.example", "/udp"),
        Err(UnsupportedService(_))
    ));
    let p = "Ingress demo/ing spec.rules[0].http.paths";
    assert_eq!(
        fields(&problems),
        vec![
            format!("{p}[2].backend.service.name"),
            format!("{p}[3].backend.service.port"),
            format!("{p}[4].backend.service.port"),
            format!("{p}[6].backend.service.name"),
            format!("{p}[7].backend.service.name"),
        ],
        "no ready endpoints is not a problem: {problems:#?}"
    );
    let unavailable = &plan.backends[plan
        .routes
        .route("h.example", "/no-port")
        .and_then(Route::backend)
        .unwrap()];
    assert_eq!(
        unavailable.unavailable_message().unwrap(),
        "503 Service Unavailable: service demo/web has no port 81\n"
    );
}

#[test]
fn one_backend_per_ingress_service_and_port() {
    let paths = |prefix: &str| {
        rules(&[rule(
            &format!("{prefix}.example"),
            &[
                path("/a", "Prefix", "web", 80),
                path("/b", "Prefix", "web", 80),
                named_port_path("/c", "web", "http"),
            ],
        )])
    };
    let yaml = [
        DEFAULT_CLASS,
        SERVICES,
        &ingress("demo", "one", OLD, &paths("one")),
        &ingress("demo", "two", NEW, &paths("two")),
    ]
    .concat();
    let (plan, problems) = run(&yaml);
    assert!(problems.is_empty(), "{problems:?}");
    let ids = |host: &str| {
        ["/a", "/b", "/c"].map(|p| plan.routes.route(host, p).and_then(Route::backend).unwrap())
    };
    assert_eq!(ids("one.example"), [0, 0, 1]);
    assert_eq!(ids("two.example"), [2, 2, 3]);
    assert_eq!(plan.backends.len(), 4);
    assert_eq!(plan.backends[1].port, ServicePortRef::Name("http".into()));
}
