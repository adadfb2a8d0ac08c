//! The L7 proxy end to end, routing: which backend serves a request (host and path rules,
//! the IngressClass, passive health) and the answers the proxy gives itself.
//!
//! The real `xdp-ingress` binary run L7-only (no `--interface`, so no privileges) on loopback
//! ports it picks, manifests written by each test to a temporary directory, backends served
//! in-process, and real clients (hyper, rustls, curl, tokio-tungstenite, raw TCP); the harness is
//! `xdp_ingress_tests::proxy`. The binary is `$XDP_INGRESS_BIN` or `target/<profile>/xdp-ingress`:
//! build it first with `cargo build -p ingress-userspace`.

use std::net::SocketAddr;

use anyhow::{ensure, Context as _, Result};
use http::{StatusCode, Version};
use serde_json::Value;
use xdp_ingress_tests::ensure_eq;
use xdp_ingress_tests::proxy::{
    self,
    backends::{HttpBackend, RefusingPort},
    clients::{self, curl, get, pooled, raw_exchange, request, send_h1, Pooled},
    ensure_served, eventually,
    manifests::{
        backend_service, endpoint_slice, ingress, ingress_class, ingress_with, our_class, rule,
        service, with_annotation, with_default_backend, Manifests, OUR_CLASS,
    },
    services_for, TestProxy,
};

/// Scenario 1: host and path rules (exact host, wildcard host, Exact and Prefix paths), 404
/// without a match, then a default backend; over hyper HTTP/1.1 and curl (HTTP/1.1, h2c with
/// prior knowledge, h2 and HTTP/1.1 over TLS).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_and_path_over_http1_h2c_and_h2() -> Result<()> {
    let exact = HttpBackend::start("exact").await?;
    let root = HttpBackend::start("root").await?;
    let api = HttpBackend::start("api").await?;
    let wild = HttpBackend::start("wild").await?;
    let fallback = HttpBackend::start("fallback").await?;
    let manifests = Manifests::new()?;
    manifests.write("class.yaml", &[our_class()])?;
    manifests.write(
        "services.yaml",
        &services_for(&[&exact, &root, &api, &wild, &fallback]),
    )?;
    manifests.write(
        "app.yaml",
        &[ingress(
            "app",
            &[
                rule(
                    Some("app.example"),
                    &[
                        ("/exact", "Exact", "exact"),
                        ("/", "Prefix", "root"),
                        ("/api", "Prefix", "api"),
                    ],
                ),
                rule(Some("*.wild.example"), &[("/", "Prefix", "wild")]),
            ],
        )],
    )?;
    let proxy = TestProxy::start(manifests, &[])?;
    let client = pooled();

    hosts_and_paths_route_over_http1(&client, &proxy, &api).await?;
    no_rule_answers_404(&client, &proxy).await?;
    curl_routes_over_http1_h2c_and_h2(&proxy).await?;
    default_backend_catches_what_no_rule_matches(&client, &proxy).await?;
    Ok(())
}

/// Exact and wildcard hosts (any case, with the port), Exact and Prefix paths, over hyper's
/// HTTP/1.1; the path and query reach the backend unchanged.
async fn hosts_and_paths_route_over_http1(
    client: &Pooled,
    proxy: &TestProxy,
    api: &HttpBackend,
) -> Result<()> {
    let http_port = proxy.http.port();
    let app_with_port = format!("APP.example:{http_port}");
    for (host, path, backend) in [
        ("app.example", "/exact", "exact"),
        ("app.example", "/exact/", "root"),
        ("app.example", "/exact/more", "root"),
        ("app.example", "/", "root"),
        ("app.example", "/api", "api"),
        ("app.example", "/api/", "api"),
        ("app.example", "/api/v1/items?x=1", "api"),
        ("app.example", "/apiary", "root"),
        (app_with_port.as_str(), "/api/x", "api"),
        ("a.wild.example", "/anything", "wild"),
        ("B.Wild.Example", "/", "wild"),
    ] {
        let reply = get(client, proxy.http, host, path).await?;
        ensure_served(&reply, backend, &format!("{host}{path}"))?;
        ensure_eq!(reply.version, Version::HTTP_11);
    }
    ensure!(
        api.saw("/api/v1/items?x=1"),
        "the path and query reach the backend unchanged: {:?}",
        api.seen()
    );
    Ok(())
}

/// Without a matching rule: 404, saying why.
async fn no_rule_answers_404(client: &Pooled, proxy: &TestProxy) -> Result<()> {
    for (host, path) in [
        ("unknown.example", "/"),
        ("wild.example", "/"),
        ("a.b.wild.example", "/"),
        ("", "/api"),
    ] {
        let reply = get(client, proxy.http, host, path).await?;
        ensure_eq!(reply.status, StatusCode::NOT_FOUND, "{host}{path}");
        ensure!(
            reply.text().contains("no Ingress rule matches"),
            "404 says why: {:?}",
            reply.text()
        );
    }

    Ok(())
}

/// curl over HTTP/1.1, h2c with prior knowledge, h2 and HTTP/1.1 over TLS: routed alike, the
/// backend always gets HTTP/1.1 with the client's host.
async fn curl_routes_over_http1_h2c_and_h2(proxy: &TestProxy) -> Result<()> {
    let http_port = proxy.http.port();
    let http_url = |path: &str| format!("http://app.example:{http_port}{path}");
    let https_port = proxy.https.port();
    let https_url = |path: &str| format!("https://app.example:{https_port}{path}");
    let resolve_http = format!("app.example:{http_port}:127.0.0.1");
    let resolve_https = format!("app.example:{https_port}:127.0.0.1");
    let cases: [(Vec<&str>, String, &str, &str); 4] = [
        (
            vec!["--http1.1", "--resolve", &resolve_http],
            http_url("/api/curl"),
            "api",
            "1.1",
        ),
        (
            vec!["--http2-prior-knowledge", "--resolve", &resolve_http],
            http_url("/exact"),
            "exact",
            "2",
        ),
        (
            vec!["-k", "--resolve", &resolve_https],
            https_url("/api/tls"),
            "api",
            "2",
        ),
        (
            vec!["-k", "--http1.1", "--resolve", &resolve_https],
            https_url("/other"),
            "root",
            "1.1",
        ),
    ];
    for (flags, url, backend, version) in cases {
        let mut args = flags.clone();
        args.push(&url);
        let (body, http_version) = curl(&args).await?;
        ensure_eq!(http_version, version, "curl {args:?}");
        let json: Value = serde_json::from_str(&body).with_context(|| body.clone())?;
        ensure_eq!(json["backend"], backend, "curl {args:?}: {body}");
        // The backend always gets HTTP/1.1, with the client's host.
        ensure_eq!(json["version"], "HTTP/1.1", "curl {args:?}: {body}");
        let host = json["headers"]["host"][0].as_str().unwrap_or("");
        ensure!(host.starts_with("app.example"), "curl {args:?}: {body}");
    }

    Ok(())
}

/// A default backend catches what no rule matches; rules still win.
async fn default_backend_catches_what_no_rule_matches(
    client: &Pooled,
    proxy: &TestProxy,
) -> Result<()> {
    proxy.manifests.write(
        "fallback.yaml",
        &[ingress_with("fallback", Some(OUR_CLASS), &[], |i| {
            with_default_backend(i, "fallback")
        })],
    )?;
    eventually("the default backend serves unknown hosts", || async {
        let reply = get(client, proxy.http, "unknown.example", "/x").await?;
        ensure!(
            reply.backend().as_deref() == Some("fallback"),
            "expected fallback, seen {} {:?}",
            reply.status,
            reply.text()
        );
        Ok(())
    })
    .await?;
    for (host, path, backend) in [
        ("a.b.wild.example", "/", "fallback"),
        ("app.example", "/api/x", "api"),
        ("a.wild.example", "/", "wild"),
    ] {
        let reply = get(client, proxy.http, host, path).await?;
        ensure_served(
            &reply,
            backend,
            &format!("{host}{path} with a default backend"),
        )?;
    }
    Ok(())
}

/// Scenario 6: the proxy's own answers (404, 413, 431, 502, 503, 504, 400), and the backend
/// never sees the requests refused before forwarding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_codes_the_proxy_answers_itself() -> Result<()> {
    let web = HttpBackend::start("web").await?;
    let refusing = RefusingPort::new()?;
    let dead = refusing.addr;
    let proxy = TestProxy::start(
        status_manifests(&web, dead)?,
        &[
            "--max-body-bytes",
            "1000",
            "--max-header-bytes",
            "8192",
            "--upstream-response-timeout",
            "500ms",
        ],
    )?;
    let client = pooled();

    no_route_and_failed_upstreams_answered_in_plain_text(&client, &proxy, dead).await?;
    body_over_the_limit_answers_413(&proxy).await?;
    header_over_the_limit_answers_431(&proxy).await?;
    smuggling_and_malformed_requests_answer_400(&proxy).await?;
    refused_requests_never_reach_the_backend(&client, &proxy, &web).await?;
    Ok(())
}

/// Service web, Service dead (nothing listens at `dead`), Service unready (its one endpoint not
/// ready), and an Ingress for status.example sending a path to each of them and to a Service
/// that does not exist.
fn status_manifests(web: &HttpBackend, dead: SocketAddr) -> Result<Manifests> {
    let manifests = Manifests::new()?;
    manifests.write("class.yaml", &[our_class()])?;
    let mut services = services_for(&[web]);
    services.extend(backend_service("dead", &[dead]));
    services.push(service("unready"));
    services.push(endpoint_slice("unready", &[(web.addr, false)]));
    manifests.write("services.yaml", &services)?;
    manifests.write(
        "status.yaml",
        &[ingress(
            "status",
            &[rule(
                Some("status.example"),
                &[
                    ("/", "Prefix", "web"),
                    ("/dead", "Prefix", "dead"),
                    ("/unready", "Prefix", "unready"),
                    ("/ghost", "Prefix", "ghost"),
                ],
            )],
        )],
    )?;
    Ok(manifests)
}

/// The proxy's own answer has `status`, says `says` and is plain text.
fn ensure_plain_answer(reply: &clients::Reply, status: u16, says: &str, what: &str) -> Result<()> {
    ensure_eq!(reply.status.as_u16(), status, "{what}: {:?}", reply.text());
    ensure!(
        reply.text().contains(says),
        "{what}: the body should say {says:?}: {:?}",
        reply.text()
    );
    ensure!(
        reply
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/plain")),
        "{what}: plain text: {:?}",
        reply.headers
    );
    Ok(())
}

/// No rule: 404; nothing listening: 502 naming the address; no ready endpoint and an unknown
/// Service: 503; a slow backend: 504, and the next request is served again.
async fn no_route_and_failed_upstreams_answered_in_plain_text(
    client: &Pooled,
    proxy: &TestProxy,
    dead: SocketAddr,
) -> Result<()> {
    let reply = get(client, proxy.http, "nowhere.example", "/").await?;
    ensure_plain_answer(&reply, 404, "no Ingress rule matches", "no rule")?;
    let reply = get(client, proxy.http, "status.example", "/dead/x").await?;
    ensure_plain_answer(&reply, 502, "502 Bad Gateway", "nothing listening")?;
    ensure!(reply.text().contains(&dead.to_string()), "{}", reply.text());
    let reply = get(client, proxy.http, "status.example", "/unready").await?;
    ensure_plain_answer(&reply, 503, "has no ready endpoints", "no ready endpoint")?;
    let reply = get(client, proxy.http, "status.example", "/ghost").await?;
    ensure_plain_answer(&reply, 503, "does not exist", "unknown Service")?;
    let reply = get(client, proxy.http, "status.example", "/sleep/3000").await?;
    ensure_plain_answer(&reply, 504, "did not answer in time", "slow backend")?;
    ensure_served(
        &get(client, proxy.http, "status.example", "/after-504").await?,
        "web",
        "after a 504",
    )?;
    Ok(())
}

/// Body limit: 413 by Content-Length (refused before forwarding) and by a chunked body; a
/// chunked body within the limit is forwarded whole.
async fn body_over_the_limit_answers_413(proxy: &TestProxy) -> Result<()> {
    let mut over =
        b"POST /cl-canary HTTP/1.1\r\nHost: status.example\r\nContent-Length: 2000\r\n\r\n"
            .to_vec();
    over.extend(std::iter::repeat_n(b'x', 2000));
    let (status, text) = raw_exchange(proxy.http, &over).await?;
    ensure_eq!(status, 413, "{text}");
    ensure!(text.contains("exceeds the limit"), "{text}");
    let (status, text) = raw_exchange(proxy.http, &chunked_post(6)).await?;
    ensure_eq!(status, 413, "chunked body of 3000 bytes: {text}");
    ensure!(text.contains("exceeds the limit"), "{text}");
    let (status, text) = raw_exchange(proxy.http, &chunked_post(2)).await?;
    ensure_eq!(
        status,
        200,
        "chunked body of 1000 bytes is within the limit: {text}"
    );
    ensure!(text.contains("\"body_bytes\":1000"), "{text}");
    Ok(())
}

/// A chunked POST to status.example of `chunks` chunks of 500 bytes.
fn chunked_post(chunks: usize) -> Vec<u8> {
    let mut bytes =
        b"POST /chunked-canary HTTP/1.1\r\nHost: status.example\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    for _ in 0..chunks {
        bytes.extend_from_slice(b"1f4\r\n");
        bytes.extend(std::iter::repeat_n(b'y', 500));
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(b"0\r\n\r\n");
    bytes
}

/// Header limit: a 16 KiB header answers 431, a 6 KiB one under the 8 KiB limit is served.
async fn header_over_the_limit_answers_431(proxy: &TestProxy) -> Result<()> {
    let big = "a".repeat(16 * 1024);
    let reply = send_h1(
        proxy.http,
        request("status.example", "/big-header-canary")
            .header("x-big", big.as_str())
            .body(clients::empty())?,
    )
    .await?;
    ensure_eq!(reply.status.as_u16(), 431, "{:?}", reply.text());
    let fits = "a".repeat(6 * 1024);
    let reply = send_h1(
        proxy.http,
        request("status.example", "/fitting-header")
            .header("x-big", fits.as_str())
            .body(clients::empty())?,
    )
    .await?;
    ensure_served(&reply, "web", "a 6 KiB header under an 8 KiB limit")?;
    Ok(())
}

/// Content-Length and Transfer-Encoding together (a smuggling attempt) and malformed requests
/// answer 400.
async fn smuggling_and_malformed_requests_answer_400(proxy: &TestProxy) -> Result<()> {
    let smuggling =
        b"POST /smuggle-canary HTTP/1.1\r\nHost: status.example\r\nContent-Length: 61\r\n\
                      Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled-canary HTTP/1.1\r\n\
                      Host: status.example\r\n\r\n";
    let (status, text) = raw_exchange(proxy.http, smuggling).await?;
    ensure_eq!(status, 400, "{text}");
    ensure!(
        text.contains("both Content-Length and Transfer-Encoding"),
        "{text}"
    );
    for malformed in [
        &b"GET /malformed-canary HTTP/1.1\r\nHost: status.example\r\nNo colon here\r\n\r\n"[..],
        &b"GET /malformed-canary2 HTTP/1.1\r\nHost: status.example\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxy"[..],
        &b"\x01\x02 garbage that is no request\r\n\r\n"[..],
    ] {
        let (status, text) = raw_exchange(proxy.http, malformed).await?;
        ensure_eq!(
            status,
            400,
            "{:?}: {text}",
            String::from_utf8_lossy(malformed)
        );
    }
    Ok(())
}

/// None of the refused requests was forwarded: a last request reaches the backend, which has
/// seen none of the canaries before it.
async fn refused_requests_never_reach_the_backend(
    client: &Pooled,
    proxy: &TestProxy,
    web: &HttpBackend,
) -> Result<()> {
    // Had any refused request been forwarded, the backend would have seen it before this one.
    ensure_served(
        &get(client, proxy.http, "status.example", "/last").await?,
        "web",
        "the last request",
    )?;
    let seen = web.seen();
    for canary in [
        "/cl-canary",
        "/big-header-canary",
        "/smuggle-canary",
        "/smuggled-canary",
        "/malformed-canary",
        "/malformed-canary2",
    ] {
        ensure!(
            !seen.iter().any(|p| p == canary),
            "the backend saw {canary}: {seen:?}"
        );
    }
    Ok(())
}

/// Scenario 7: passive health: one of two endpoints refuses connections, every request is
/// served by the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusing_endpoint_is_passed_over() -> Result<()> {
    let alive = HttpBackend::start("alive").await?;
    let refusing = RefusingPort::new()?;
    let dead = refusing.addr;
    let manifests = Manifests::new()?;
    manifests.write("class.yaml", &[our_class()])?;
    manifests.write(
        "services.yaml",
        &backend_service("pair", &[alive.addr, dead]),
    )?;
    manifests.write(
        "pair.yaml",
        &[ingress(
            "pair",
            &[rule(Some("pair.example"), &[("/", "Prefix", "pair")])],
        )],
    )?;
    let proxy = TestProxy::start(manifests, &[])?;
    let client = pooled();
    for i in 0..40 {
        let reply = get(&client, proxy.http, "pair.example", &format!("/r{i}")).await?;
        ensure_served(&reply, "alive", &format!("request {i}"))?;
    }
    // New client connections too (the proxy's choice does not depend on the client's).
    for i in 0..10 {
        let reply = send_h1(
            proxy.http,
            request("pair.example", &format!("/fresh{i}")).body(clients::empty())?,
        )
        .await?;
        ensure_served(&reply, "alive", &format!("fresh connection {i}"))?;
    }
    Ok(())
}

/// Scenario 9: only Ingresses of our IngressClass are served: by `ingressClassName` or the
/// deprecated annotation; another controller's class and no class (with no default class) are
/// not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_class_selection() -> Result<()> {
    let web = HttpBackend::start("web").await?;
    let manifests = Manifests::new()?;
    manifests.write(
        "classes.yaml",
        &[our_class(), ingress_class("other", "example.com/other")],
    )?;
    manifests.write("services.yaml", &services_for(&[&web]))?;
    fn site(host: &str) -> [proxy::manifests::Rule<'_>; 1] {
        [rule(Some(host), &[("/", "Prefix", "web")])]
    }
    let ingresses = vec![
        ingress("ours", &site("ours.example")),
        ingress_with("theirs", Some("other"), &site("theirs.example"), |_| {}),
        ingress_with("annotated", None, &site("annotated.example"), |i| {
            with_annotation(i, "kubernetes.io/ingress.class", OUR_CLASS)
        }),
        ingress_with(
            "annotated-other",
            None,
            &site("annotated-other.example"),
            |i| with_annotation(i, "kubernetes.io/ingress.class", "other"),
        ),
        ingress_with("classless", None, &site("classless.example"), |_| {}),
    ];
    manifests.write("ingresses.yaml", &ingresses)?;
    let proxy = TestProxy::start(manifests, &[])?;
    let client = pooled();
    for (host, served) in [
        ("ours.example", true),
        ("annotated.example", true),
        ("theirs.example", false),
        ("annotated-other.example", false),
        ("classless.example", false),
    ] {
        let reply = get(&client, proxy.http, host, "/").await?;
        if served {
            ensure_served(&reply, "web", host)?;
        } else {
            ensure_eq!(
                reply.status,
                StatusCode::NOT_FOUND,
                "{host}: {:?}",
                reply.text()
            );
        }
    }
    Ok(())
}
