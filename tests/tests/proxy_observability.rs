//! The L7 proxy end to end, what it tells about itself: `/metrics` by Ingress, Service and
//! status, and `xdp-ingress inspect routes|certs` against a running agent.
//!
//! The real `xdp-ingress` binary run L7-only (no `--interface`, so no privileges) on loopback
//! ports it picks, manifests written by each test to a temporary directory, backends served
//! in-process, and real clients (hyper, rustls, curl, tokio-tungstenite, raw TCP); the harness is
//! `xdp_ingress_tests::proxy`. The binary is `$XDP_INGRESS_BIN` or `target/<profile>/xdp-ingress`:
//! build it first with `cargo build -p ingress-userspace`.

use std::net::SocketAddr;

use anyhow::{anyhow, ensure, Context as _, Result};
use http::StatusCode;
use serde_json::Value;
use xdp_ingress_tests::ensure_eq;
use xdp_ingress_tests::{
    agent,
    proxy::{
        backends::HttpBackend,
        clients::{self, get, pooled},
        ensure_served, eventually,
        manifests::{
            backend_service, endpoint_slice, ingress, ingress_with, our_class, rule, service,
            tls_secret, with_default_backend, with_tls, Manifests, OUR_CLASS,
        },
        services_for, TestProxy,
    },
};

/// `/metrics` on the admin listener: requests by Ingress, Service, port and status class (200
/// from a backend, 503 from a backend without endpoints, 404 with no rule under empty labels),
/// the duration histogram's count, and the reload counters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_by_ingress_service_and_status() -> Result<()> {
    let web = HttpBackend::start("web").await?;
    let manifests = Manifests::new()?;
    manifests.write("class.yaml", &[our_class()])?;
    let mut services = services_for(&[&web]);
    services.push(service("unready"));
    services.push(endpoint_slice("unready", &[(web.addr, false)]));
    manifests.write("services.yaml", &services)?;
    manifests.write(
        "shop.yaml",
        &[ingress(
            "shop",
            &[rule(
                Some("shop.example"),
                &[("/", "Prefix", "web"), ("/unready", "Prefix", "unready")],
            )],
        )],
    )?;
    let proxy = TestProxy::start_with_admin(manifests, &[])?;
    let admin = proxy.admin.context("no admin listener")?;
    let client = pooled();
    for i in 0..3 {
        ensure_served(
            &get(&client, proxy.http, "shop.example", &format!("/{i}")).await?,
            "web",
            "routed",
        )?;
    }
    for _ in 0..2 {
        let reply = get(&client, proxy.http, "nowhere.example", "/").await?;
        ensure_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.text());
    }
    let reply = get(&client, proxy.http, "shop.example", "/unready").await?;
    ensure_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text()
    );

    let shop = r#"namespace="default",ingress="shop""#;
    let expected = [
        format!(r#"xdp_ingress_requests_total{{{shop},service="web",port="80",status="2xx"}} 3"#),
        format!(
            r#"xdp_ingress_requests_total{{{shop},service="unready",port="80",status="5xx"}} 1"#
        ),
        r#"xdp_ingress_requests_total{namespace="",ingress="",service="",port="",status="4xx"} 2"#
            .to_string(),
        format!(
            r#"xdp_ingress_request_duration_seconds_count{{{shop},service="web",port="80"}} 3"#
        ),
        r#"xdp_ingress_config_reloads_total{result="success"} 1"#.to_string(),
        "xdp_ingress_config_last_reload_successful 1".to_string(),
        "xdp_ingress_ingresses 1".to_string(),
        "xdp_ingress_l7_backends 2".to_string(),
        r#"xdp_ingress_tls_handshakes_total{result="success"} 0"#.to_string(),
    ];
    // A response is counted when its body is dropped, just after the client has it all.
    let text = eventually("the counts on /metrics", || async {
        let reply = get(&client, admin, "127.0.0.1", "/metrics").await?;
        ensure!(reply.status == StatusCode::OK, "status {}", reply.status);
        let text = reply.text();
        let missing: Vec<&String> = expected
            .iter()
            .filter(|line| !text.lines().any(|l| l == line.as_str()))
            .collect();
        ensure!(missing.is_empty(), "missing {missing:?} in:\n{text}");
        Ok(text)
    })
    .await
    .with_context(|| proxy.log())?;
    ensure!(
        text.contains("# TYPE xdp_ingress_request_duration_seconds histogram"),
        "{text}"
    );
    ensure!(text.ends_with("# EOF\n"), "{text}");
    // No datapath, so no L4 families.
    ensure!(!text.contains("xdp_ingress_datapath_packets"), "{text}");
    Ok(())
}

/// Runs `xdp-ingress inspect <what> --admin <admin>` (with `--json` when asked) and returns its
/// standard output; fails unless it exits 0.
async fn inspect(admin: std::net::SocketAddr, what: &str, json: bool) -> Result<String> {
    let mut command = tokio::process::Command::new(agent::binary()?);
    command.args(["inspect", what, "--admin", &admin.to_string()]);
    if json {
        command.arg("--json");
    }
    let output = tokio::time::timeout(
        clients::EXCHANGE_TIMEOUT,
        command.kill_on_drop(true).output(),
    )
    .await
    .map_err(|_| anyhow!("inspect {what} timed out"))?
    .context("running xdp-ingress inspect")?;
    ensure!(
        output.status.success(),
        "inspect {what} (json: {json}): {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

/// `inspect <what> --json`, parsed.
async fn inspect_json(admin: std::net::SocketAddr, what: &str) -> Result<Value> {
    let text = inspect(admin, what, true).await?;
    serde_json::from_str(&text).with_context(|| format!("inspect {what} --json: {text}"))
}

/// The routes view with each backend's endpoints sorted (their order is not part of the view).
fn sorted_endpoints(mut view: Value) -> Value {
    let mut backends: Vec<&mut Value> = Vec::new();
    if let Some(routes) = view["routes"].as_array_mut() {
        backends.extend(routes.iter_mut().map(|r| &mut r["backend"]));
    }
    for backend in backends {
        if let Some(endpoints) = backend["endpoints"].as_array_mut() {
            endpoints.sort_by_key(|e| e.to_string());
        }
    }
    if let Some(endpoints) = view["default_backend"]["endpoints"].as_array_mut() {
        endpoints.sort_by_key(|e| e.to_string());
    }
    view
}

/// `xdp-ingress inspect routes|certs` against a running agent: the JSON form shows every rule
/// (exact and wildcard hosts, Exact and Prefix paths, in match order) with its Ingress, Service,
/// port and the backends' real addresses, a Service without endpoints as unavailable, and the
/// default backend; the certificates with their hosts, Secret, Ingress and the notAfter the
/// test put in the certificate, the default certificate, and an Ingress's missing Secret with a
/// problem. The table form prints one line per route and per certificate. A path added to a
/// manifest shows after the reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_routes_and_certs_of_a_running_agent() -> Result<()> {
    let backends = ShopBackends::start().await?;
    let proxy = TestProxy::start_with_admin(
        inspect_manifests(&backends)?,
        &["--default-tls-secret", "default/shop-tls"],
    )?;
    let admin = proxy.admin.context("no admin listener")?;
    let mut routes = backends.routes();

    routes_json_shows_every_rule_in_match_order(admin, &backends, &routes).await?;
    let certs = certs_json_shows_each_certificate_and_the_missing_secret(admin).await?;
    routes_table_has_one_line_per_route(admin, &backends, &routes).await?;
    certs_table_has_one_line_per_certificate(admin, &certs).await?;
    added_path_shows_after_the_reload(&proxy, admin, &backends, &mut routes).await?;
    Ok(())
}

/// The notAfter the test puts in the certificate of shop-tls: 2033-07-15T00:00:00Z.
const NOT_AFTER: i64 = 2_004_998_400;

/// The backends of the inspect scenario (web has two endpoints).
struct ShopBackends {
    web_a: HttpBackend,
    web_b: HttpBackend,
    api: HttpBackend,
    checkout: HttpBackend,
    apps: HttpBackend,
    fallback: HttpBackend,
}

impl ShopBackends {
    async fn start() -> Result<Self> {
        Ok(Self {
            web_a: HttpBackend::start("web-a").await?,
            web_b: HttpBackend::start("web-b").await?,
            api: HttpBackend::start("api").await?,
            checkout: HttpBackend::start("checkout").await?,
            apps: HttpBackend::start("apps").await?,
            fallback: HttpBackend::start("fallback").await?,
        })
    }

    /// The routes `inspect routes --json` should show, in match order: exact hosts, then
    /// wildcards; Exact paths by name, then Prefix longest first.
    fn routes(&self) -> Vec<Value> {
        let unavailable = serde_json::json!({
            "ingress": "default/shop",
            "service": "default/empty",
            "port": "80",
            "endpoints": [],
            "unavailable": "NoReadyEndpoints",
        });
        vec![
            route(
                "shop.example",
                "/checkout",
                "Exact",
                backend("shop", "checkout", &[&self.checkout]),
            ),
            route("shop.example", "/soon", "Exact", unavailable),
            route(
                "shop.example",
                "/api",
                "Prefix",
                backend("shop", "api", &[&self.api]),
            ),
            route(
                "shop.example",
                "/",
                "Prefix",
                backend("shop", "web", &[&self.web_a, &self.web_b]),
            ),
            route(
                "*.apps.example",
                "/",
                "Prefix",
                backend("apps", "apps", &[&self.apps]),
            ),
        ]
    }

    /// The whole routes view: `routes` and the default backend.
    fn view(&self, routes: &[Value]) -> Value {
        serde_json::json!({
            "routes": routes,
            "default_backend": backend("fallback", "fallback", &[&self.fallback]),
        })
    }
}

/// A backend as the routes view shows it, endpoints sorted as `sorted_endpoints` sorts them.
fn backend(ingress: &str, service: &str, endpoints: &[&HttpBackend]) -> Value {
    let mut endpoints: Vec<String> = endpoints.iter().map(|b| b.addr.to_string()).collect();
    endpoints.sort_by_key(|e| Value::from(e.as_str()).to_string());
    serde_json::json!({
        "ingress": format!("default/{ingress}"),
        "service": format!("default/{service}"),
        "port": "80",
        "endpoints": endpoints,
        "unavailable": null,
    })
}

/// A route as the routes view shows it.
fn route(host: &str, path: &str, path_type: &str, backend: Value) -> Value {
    serde_json::json!({"host": host, "path": path, "path_type": path_type, "backend": backend})
}

/// Ingress shop (TLS from shop-tls; `extra` is one more path), with the paths of the expected
/// routes.
fn shop_ingress(extra: Option<(&'static str, &'static str, &'static str)>) -> Value {
    let mut paths = vec![
        ("/checkout", "Exact", "checkout"),
        ("/", "Prefix", "web"),
        ("/api", "Prefix", "api"),
        ("/soon", "Exact", "empty"),
    ];
    paths.extend(extra);
    let mut shop = ingress("shop", &[rule(Some("shop.example"), &paths)]);
    with_tls(&mut shop, &["shop.example"], "shop-tls");
    shop
}

/// The Services (empty has no endpoints), Secret shop-tls with a certificate valid until
/// `NOT_AFTER`, Ingress shop, Ingress apps (a wildcard host whose TLS Secret is missing) and a
/// default backend.
fn inspect_manifests(backends: &ShopBackends) -> Result<Manifests> {
    let mut params = rcgen::CertificateParams::new(vec!["shop.example".to_string()])?;
    params.not_after = rcgen::date_time_ymd(2033, 7, 15);
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;

    let manifests = Manifests::new()?;
    manifests.write("class.yaml", &[our_class()])?;
    let mut services = backend_service("web", &[backends.web_a.addr, backends.web_b.addr]);
    services.extend(services_for(&[
        &backends.api,
        &backends.checkout,
        &backends.apps,
        &backends.fallback,
    ]));
    // A Service without endpoints: its route is shown as unavailable.
    services.push(service("empty"));
    manifests.write("services.yaml", &services)?;
    manifests.write(
        "secrets.yaml",
        &[tls_secret("shop-tls", &cert.pem(), &key.serialize_pem())],
    )?;
    manifests.write("shop.yaml", &[shop_ingress(None)])?;
    let mut apps_ingress = ingress(
        "apps",
        &[rule(Some("*.apps.example"), &[("/", "Prefix", "apps")])],
    );
    with_tls(&mut apps_ingress, &["*.apps.example"], "missing-tls");
    manifests.write(
        "others.yaml",
        &[
            apps_ingress,
            ingress_with("fallback", Some(OUR_CLASS), &[], |i| {
                with_default_backend(i, "fallback")
            }),
        ],
    )?;
    Ok(manifests)
}

/// `inspect routes --json` shows every rule in match order and the default backend.
async fn routes_json_shows_every_rule_in_match_order(
    admin: SocketAddr,
    backends: &ShopBackends,
    routes: &[Value],
) -> Result<()> {
    let view = sorted_endpoints(inspect_json(admin, "routes").await?);
    ensure_eq!(
        view,
        backends.view(routes),
        "inspect routes --json:\n{}",
        serde_json::to_string_pretty(&view)?
    );
    Ok(())
}

/// `inspect certs --json` shows shop-tls for its host and Ingress, the default certificate last,
/// and the missing Secret with a problem; returns the certificates.
async fn certs_json_shows_each_certificate_and_the_missing_secret(
    admin: SocketAddr,
) -> Result<Vec<Value>> {
    let certs = inspect_json(admin, "certs").await?;
    let certs = certs.as_array().context("certs is not an array")?;
    let shop_cert = serde_json::json!({
        "hosts": ["shop.example"],
        "secret": "default/shop-tls",
        "ingress": "default/shop",
        "default": false,
        "problem": null,
        "not_after": NOT_AFTER,
    });
    let default_cert = serde_json::json!({
        "hosts": [],
        "secret": "default/shop-tls",
        "ingress": null,
        "default": true,
        "problem": null,
        "not_after": NOT_AFTER,
    });
    ensure!(certs.len() == 3, "three certificates: {certs:#?}");
    ensure!(certs.contains(&shop_cert), "{certs:#?}");
    // The default certificate comes last: it is the fallback after every name.
    ensure_eq!(certs[2], default_cert, "{certs:#?}");
    let missing = certs
        .iter()
        .find(|c| c["secret"] == "default/missing-tls")
        .with_context(|| format!("no entry for the missing Secret: {certs:#?}"))?;
    ensure_eq!(missing["hosts"], serde_json::json!(["*.apps.example"]));
    ensure_eq!(missing["ingress"], "default/apps");
    ensure_eq!(missing["default"], false);
    ensure_eq!(missing["not_after"], Value::Null);
    let problem = missing["problem"].as_str().unwrap_or_default();
    ensure!(
        problem.contains("no Secret default/missing-tls"),
        "the missing Secret is reported: {missing}"
    );
    Ok(certs.clone())
}

/// The routes table: a header, one line per route (host, path, type, Ingress, Service:port),
/// one for the default backend.
async fn routes_table_has_one_line_per_route(
    admin: SocketAddr,
    backends: &ShopBackends,
    routes: &[Value],
) -> Result<()> {
    let table = inspect(admin, "routes", false).await?;
    let lines: Vec<&str> = table.lines().collect();
    ensure!(lines.len() == 1 + routes.len() + 1, "{table}");
    ensure!(lines[0].starts_with("HOST"), "{table}");
    for (line, route) in lines[1..].iter().zip(routes) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let service_port = format!(
            "{}:80",
            route["backend"]["service"].as_str().unwrap_or_default()
        );
        let want = [
            route["host"].as_str().unwrap_or_default(),
            route["path"].as_str().unwrap_or_default(),
            route["path_type"].as_str().unwrap_or_default(),
            route["backend"]["ingress"].as_str().unwrap_or_default(),
            service_port.as_str(),
        ];
        ensure!(words.get(..5) == Some(&want[..]), "{line:?} for {route}");
    }
    let default_line = lines[lines.len() - 1];
    ensure!(
        default_line.starts_with("(default)")
            && default_line.contains("default/fallback:80")
            && default_line.contains(&backends.fallback.addr.to_string()),
        "{table}"
    );
    Ok(())
}

/// The certs table: a header and one line per certificate, the default one with its notAfter,
/// the missing Secret as unusable.
async fn certs_table_has_one_line_per_certificate(
    admin: SocketAddr,
    certs: &[Value],
) -> Result<()> {
    let table = inspect(admin, "certs", false).await?;
    ensure!(table.lines().count() == 1 + certs.len(), "{table}");
    ensure!(
        table.lines().any(|l| l.starts_with("(default)")
            && l.contains("default/shop-tls")
            && l.contains(&NOT_AFTER.to_string())),
        "{table}"
    );
    ensure!(
        table
            .lines()
            .any(|l| l.contains("default/missing-tls") && l.contains("unusable:")),
        "{table}"
    );
    Ok(())
}

/// A path added to a manifest shows in `inspect routes --json` after the reload, in match order.
async fn added_path_shows_after_the_reload(
    proxy: &TestProxy,
    admin: SocketAddr,
    backends: &ShopBackends,
    routes: &mut Vec<Value>,
) -> Result<()> {
    proxy
        .manifests
        .write("shop.yaml", &[shop_ingress(Some(("/new", "Exact", "api")))])?;
    routes.insert(
        1,
        route(
            "shop.example",
            "/new",
            "Exact",
            backend("shop", "api", &[&backends.api]),
        ),
    );
    let want = backends.view(routes);
    eventually("inspect routes shows the new path", || async {
        let view = sorted_endpoints(inspect_json(admin, "routes").await?);
        ensure!(
            view == want,
            "expected the new path, seen {}",
            serde_json::to_string_pretty(&view).unwrap_or_default()
        );
        Ok(())
    })
    .await
    .with_context(|| proxy.log())?;
    Ok(())
}
