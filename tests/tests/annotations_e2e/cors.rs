//! `enable-cors` and the `cors-*` annotations: preflights answered by the proxy (204, the
//! CORS headers), other responses carrying them (replacing the backend's), and origins that are
//! not allowed passing untouched to the backend.

use anyhow::{ensure, Result};
use http::{Method, Request, StatusCode};
use xdp_ingress_tests::{
    ensure_eq,
    proxy::{
        backends::HttpBackend,
        clients::{empty, send_h1, Reply},
        ensure_served,
        manifests::rule,
    },
};

use super::{annotated, start};

fn header(reply: &Reply, name: &str) -> Option<String> {
    reply
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

async fn send(
    proxy: std::net::SocketAddr,
    method: Method,
    host: &str,
    origin: Option<&str>,
) -> Result<Reply> {
    let mut request = Request::builder()
        .method(method)
        .uri("/items?x=1")
        .header(http::header::HOST, host);
    if let Some(origin) = origin {
        request = request.header(http::header::ORIGIN, origin);
    }
    send_h1(proxy, request.body(empty())?).await
}

/// ingress-nginx's defaults: any origin (`*`), credentials, its method and header lists, 20
/// days; a preflight is answered 204 without reaching the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_defaults_answer_preflights_and_decorate_responses() -> Result<()> {
    let web = HttpBackend::start("web").await?;
    let proxy = start(
        &[&web],
        &[],
        &[annotated(
            "cors",
            &[rule(Some("cors.example"), &[("/", "Prefix", "web")])],
            &[("enable-cors", "true")],
        )],
    )?;
    let preflight = send(
        proxy.http,
        Method::OPTIONS,
        "cors.example",
        Some("https://a.example"),
    )
    .await?;
    ensure_eq!(preflight.status, StatusCode::NO_CONTENT);
    for (name, value) in [
        ("access-control-allow-origin", "*"),
        ("access-control-allow-credentials", "true"),
        ("access-control-allow-methods", "GET, PUT, POST, DELETE, PATCH, OPTIONS"),
        (
            "access-control-allow-headers",
            "DNT,Keep-Alive,User-Agent,X-Requested-With,If-Modified-Since,Cache-Control,Content-Type,Range,Authorization",
        ),
        ("access-control-max-age", "1728000"),
    ] {
        ensure_eq!(header(&preflight, name).as_deref(), Some(value), "{name}");
    }
    ensure!(preflight.body.is_empty(), "{:?}", preflight.text());
    ensure!(
        web.seen().is_empty(),
        "a preflight is the proxy's: {:?}",
        web.seen()
    );
    let get = send(proxy.http, Method::GET, "cors.example", None).await?;
    ensure_served(&get, "web", "GET")?;
    ensure_eq!(
        header(&get, "access-control-allow-origin").as_deref(),
        Some("*")
    );
    ensure_eq!(
        header(&get, "access-control-max-age").as_deref(),
        Some("1728000")
    );
    Ok(())
}

/// An origin list (one with a wildcard label), no credentials, custom lists and max age: an
/// allowed `Origin` is echoed; another gets no CORS header and its preflight goes to the
/// backend; an Ingress without `enable-cors` adds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_origin_list_echoes_allowed_origins_only() -> Result<()> {
    let web = HttpBackend::start("web").await?;
    let proxy = start(
        &[&web],
        &[],
        &[
            annotated(
                "cors",
                &[rule(Some("cors.example"), &[("/", "Prefix", "web")])],
                &[
                    ("enable-cors", "true"),
                    (
                        "cors-allow-origin",
                        "https://app.example:4443, https://*.example.org",
                    ),
                    ("cors-allow-credentials", "false"),
                    ("cors-allow-methods", "GET, POST"),
                    ("cors-allow-headers", "X-Custom"),
                    ("cors-expose-headers", "X-Total"),
                    ("cors-max-age", "600"),
                ],
            ),
            annotated(
                "plain",
                &[rule(Some("plain.example"), &[("/", "Prefix", "web")])],
                &[],
            ),
        ],
    )?;
    for origin in ["https://app.example:4443", "https://shop.example.org"] {
        let preflight = send(proxy.http, Method::OPTIONS, "cors.example", Some(origin)).await?;
        ensure_eq!(preflight.status, StatusCode::NO_CONTENT, "{origin}");
        for (name, value) in [
            ("access-control-allow-origin", Some(origin)),
            ("access-control-allow-credentials", None),
            ("access-control-allow-methods", Some("GET, POST")),
            ("access-control-allow-headers", Some("X-Custom")),
            ("access-control-expose-headers", Some("X-Total")),
            ("access-control-max-age", Some("600")),
        ] {
            ensure_eq!(
                header(&preflight, name).as_deref(),
                value,
                "{origin} {name}"
            );
        }
        let get = send(proxy.http, Method::GET, "cors.example", Some(origin)).await?;
        ensure_served(&get, "web", origin)?;
        ensure_eq!(
            header(&get, "access-control-allow-origin").as_deref(),
            Some(origin)
        );
    }
    ensure!(
        web.seen().len() == 2,
        "only the GETs reached the backend: {:?}",
        web.seen()
    );
    for (method, host, origin) in [
        (Method::GET, "cors.example", "https://evil.example"),
        (Method::OPTIONS, "cors.example", "https://a.b.example.org"),
        (Method::OPTIONS, "plain.example", "https://app.example:4443"),
    ] {
        let reply = send(proxy.http, method.clone(), host, Some(origin)).await?;
        ensure_served(&reply, "web", &format!("{method} {host} {origin}"))?;
        ensure_eq!(
            header(&reply, "access-control-allow-origin"),
            None,
            "{host} {origin}"
        );
    }
    Ok(())
}
