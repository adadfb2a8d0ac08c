//! `--metrics-compat nginx`: real requests through the proxy (routed to a main backend and to a
//! canary, a routed 503, an unmatched 404; GET and POST), then `/metrics` scraped: ingress-nginx's
//! families with its types and label names, label values from the routing table (the rule's
//! host and path, not the request's), unmatched requests under empty labels. Without the flag,
//! no `nginx_` family.

use anyhow::{ensure, Context as _, Result};
use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::Full;
use xdp_ingress_tests::{
    ensure_eq,
    proxy::{
        backends::HttpBackend,
        clients::{collect, get, pooled, Pooled, Reply, EXCHANGE_TIMEOUT},
        eventually,
        manifests::{our_class, rule, service, tls_secret, with_tls, Manifests},
        services_for, TestProxy,
    },
};

use super::annotated;

async fn send(
    client: &Pooled,
    proxy: std::net::SocketAddr,
    method: Method,
    host: &str,
    path: &str,
    canary: bool,
) -> Result<Reply> {
    let mut request = Request::builder()
        .method(method)
        .uri(format!("http://{proxy}{path}"))
        .header(header::HOST, host);
    if canary {
        request = request.header("X-Canary", "always");
    }
    let response = tokio::time::timeout(
        EXCHANGE_TIMEOUT,
        client.request(request.body(Full::new(Bytes::from_static(b"hello")))?),
    )
    .await
    .context("no answer in time")??;
    collect(response).await
}

/// Our class, `web` and `v2` with endpoints, `down` without, and the Ingresses: `shop` sends
/// `shop.example/api` (Prefix) to web and `/down` to down; `shop-canary` sends the header's
/// requests to v2; `certs` serves `tls.example` with Secret `cert`.
async fn start_shop(extra: &[&str]) -> Result<(TestProxy, HttpBackend, HttpBackend)> {
    let web = HttpBackend::start("web").await?;
    let v2 = HttpBackend::start("v2").await?;
    let manifests = Manifests::new()?;
    manifests.write("class.yaml", &[our_class()])?;
    let mut services = services_for(&[&web, &v2]);
    services.push(service("down"));
    let cert = rcgen::generate_simple_self_signed(vec!["tls.example".to_string()])?;
    services.push(tls_secret(
        "cert",
        &cert.cert.pem(),
        &cert.key_pair.serialize_pem(),
    ));
    let mut certs = annotated(
        "certs",
        &[rule(Some("tls.example"), &[("/", "Prefix", "web")])],
        &[],
    );
    with_tls(&mut certs, &["tls.example"], "cert");
    manifests.write("services.yaml", &services)?;
    manifests.write(
        "ingresses.yaml",
        &[
            annotated(
                "shop",
                &[rule(
                    Some("shop.example"),
                    &[("/api", "Prefix", "web"), ("/down", "Prefix", "down")],
                )],
                &[],
            ),
            annotated(
                "shop-canary",
                &[rule(Some("shop.example"), &[("/api", "Prefix", "v2")])],
                &[("canary", "true"), ("canary-by-header", "X-Canary")],
            ),
            certs,
        ],
    )?;
    let proxy = TestProxy::start_with_admin(manifests, extra)?;
    Ok((proxy, web, v2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_families_label_requests_from_the_routing_table() -> Result<()> {
    let (proxy, _web, _v2) = start_shop(&["--metrics-compat", "nginx"]).await?;
    let admin = proxy.admin.context("no admin listener")?;
    let client = pooled();
    let http = proxy.http;
    for (method, host, path, canary, status) in [
        (
            Method::GET,
            "shop.example",
            "/api/items?id=1",
            false,
            StatusCode::OK,
        ),
        (
            Method::GET,
            "shop.example",
            "/api/other",
            false,
            StatusCode::OK,
        ),
        (
            Method::POST,
            "shop.example",
            "/api/items",
            false,
            StatusCode::OK,
        ),
        (
            Method::GET,
            "shop.example",
            "/api/items",
            true,
            StatusCode::OK,
        ),
        (
            Method::GET,
            "shop.example",
            "/down/x",
            false,
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        (
            Method::GET,
            "elsewhere.example",
            "/secret-path",
            false,
            StatusCode::NOT_FOUND,
        ),
    ] {
        let reply = send(&client, http, method.clone(), host, path, canary).await?;
        ensure_eq!(
            reply.status,
            status,
            "{method} {host}{path}: {}",
            reply.text()
        );
        if status == StatusCode::OK {
            let expected = if canary { "v2" } else { "web" };
            ensure_eq!(reply.backend().as_deref(), Some(expected), "{host}{path}");
        }
    }

    let ns = std::env::var("POD_NAMESPACE").unwrap_or_default();
    let pod = std::env::var("POD_NAME").unwrap_or_default();
    let c = format!(
        r#"controller_class="xdp-ingress.dev/controller",controller_namespace="{ns}",controller_pod="{pod}""#
    );
    let routed = |canary: &str, method: &str, path: &str, service: &str, status: u16| {
        format!(
            r#"canary="{canary}",{c},host="shop.example",ingress="shop",method="{method}",namespace="default",path="{path}",service="{service}",status="{status}""#
        )
    };
    let expected = [
        // Two requests with different raw paths: one series, the rule's path.
        format!(
            "nginx_ingress_controller_requests{{{}}} 2",
            routed("", "GET", "/api", "web", 200)
        ),
        format!(
            "nginx_ingress_controller_requests{{{}}} 1",
            routed("", "POST", "/api", "web", 200)
        ),
        // The canary's request: the main Service, the canary's upstream name.
        format!(
            "nginx_ingress_controller_requests{{{}}} 1",
            routed("default-v2-80", "GET", "/api", "web", 200)
        ),
        format!(
            "nginx_ingress_controller_requests{{{}}} 1",
            routed("", "GET", "/down", "down", 503)
        ),
        // Unmatched: empty labels, never the request's host or path.
        format!(
            r#"nginx_ingress_controller_requests{{canary="",{c},host="",ingress="",method="GET",namespace="",path="",service="",status="404"}} 1"#
        ),
        format!(
            "nginx_ingress_controller_request_duration_seconds_count{{{}}} 2",
            routed("", "GET", "/api", "web", 200)
        ),
        format!(
            "nginx_ingress_controller_response_duration_seconds_count{{{}}} 1",
            routed("", "POST", "/api", "web", 200)
        ),
        format!(
            r#"nginx_ingress_controller_ingress_upstream_latency_seconds_count{{canary="",{c},ingress="shop",namespace="default",service="web"}} 3"#
        ),
        format!(r#"nginx_ingress_controller_config_last_reload_successful{{{c}}} 1"#),
    ];
    // The response ends (and is counted) when the body drops, just after the client has it.
    let text = eventually("the nginx families on /metrics", || async {
        let text = get(&client, admin, "127.0.0.1", "/metrics").await?.text();
        for line in &expected {
            ensure!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
        Ok(text)
    })
    .await
    .with_context(|| proxy.log())?;

    for (family, kind) in [
        ("requests", "unknown"),
        ("request_duration_seconds", "histogram"),
        ("response_duration_seconds", "histogram"),
        ("request_size", "histogram"),
        ("response_size", "histogram"),
        ("bytes_sent", "histogram"),
        ("ingress_upstream_latency_seconds", "summary"),
        ("ssl_expire_time_seconds", "gauge"),
        ("config_last_reload_successful", "gauge"),
    ] {
        let line = format!("# TYPE nginx_ingress_controller_{family} {kind}");
        ensure!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
    }
    // The request and response sizes: the POST declared a 5-byte body, and every response
    // has a status line and headers, so no size is 0 and every sample is in the +Inf bucket.
    let post_size = format!(
        "nginx_ingress_controller_request_size_count{{{}}} 1",
        routed("", "POST", "/api", "web", 200)
    );
    ensure!(text.lines().any(|l| l == post_size), "no {post_size:?}");
    let zero_size = format!(
        "nginx_ingress_controller_response_size_sum{{{}}} 0.0",
        routed("", "GET", "/api", "web", 200)
    );
    ensure!(!text.lines().any(|l| l == zero_size), "{zero_size:?}");
    // The TLS host's certificate: notAfter in the future (rcgen's default is far out).
    let expiry = format!(
        r#"nginx_ingress_controller_ssl_expire_time_seconds{{class="xdp-ingress.dev/controller",host="tls.example",namespace="{ns}",secret_name="cert"}} "#
    );
    let not_after: i64 = text
        .lines()
        .find_map(|l| l.strip_prefix(expiry.as_str()))
        .with_context(|| format!("no {expiry:?} in:\n{text}"))?
        .parse()?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    ensure!(not_after > now.as_secs() as i64, "{not_after}");
    ensure!(
        !text.contains("secret-path") && !text.contains("elsewhere.example"),
        "raw request values in labels:\n{text}"
    );
    // The 404 and 503 got no endpoint's answer: no upstream time for them.
    let upstream_counts: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("nginx_ingress_controller_response_duration_seconds_count"))
        .collect();
    ensure_eq!(upstream_counts.len(), 3, "{text}");
    ensure!(
        upstream_counts
            .iter()
            .all(|l| !l.contains(r#"status="503""#) && !l.contains(r#"status="404""#)),
        "upstream time for requests no endpoint answered:\n{text}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_flag_no_nginx_family() -> Result<()> {
    let (proxy, _web, _v2) = start_shop(&[]).await?;
    let admin = proxy.admin.context("no admin listener")?;
    let client = pooled();
    let reply = get(&client, proxy.http, "shop.example", "/api/items").await?;
    ensure_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    // Our own request counter shows the request; no nginx family appears.
    let text = eventually("the request on /metrics", || async {
        let text = get(&client, admin, "127.0.0.1", "/metrics").await?.text();
        ensure!(
            text.contains(r#"xdp_ingress_requests_total{namespace="default",ingress="shop",service="web",port="80",status="2xx"} 1"#),
            "request not counted:\n{text}"
        );
        Ok(text)
    })
    .await
    .with_context(|| proxy.log())?;
    ensure!(!text.contains("nginx_ingress_controller"), "{text}");
    Ok(())
}
