//! End-to-end tests of the L7 Ingress proxy: the real `xdp-ingress` binary run L7-only (no
//! `--interface`, so no privileges) on loopback ports it picks, manifests written by each test to
//! a temporary directory, backends served in-process, and real clients (hyper, rustls, curl,
//! tokio-tungstenite, raw TCP).
//!
//! The binary is `$XDP_INGRESS_BIN` or `target/<profile>/xdp-ingress`: build it first with
//! `cargo build -p ingress-userspace`.

use xdp_ingress_tests::proxy;

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{anyhow, bail, ensure as check, Context as _, Result};
use futures_util::{SinkExt as _, StreamExt as _};
use http::{HeaderValue, StatusCode, Version};
use http_body_util::BodyExt as _;
use hyper_util::rt::{TokioExecutor, TokioIo};
use proxy::{
    backends::{Backend, Fnv, Gate, PatternBody, RefusingPort, WsBackend, CHUNK},
    clients::{self, curl, get, pooled, raw_exchange, request, send_h1, tls_connect, Tls},
    ensure, eventually,
    manifests::{
        backend_service, endpoint_slice, ingress, ingress_class, ingress_with, our_class, rule,
        service, tls_secret, with_annotation, with_default_backend, with_tls, Manifests, OUR_CLASS,
    },
    TestProxy,
};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::Message;
use xdp_ingress_tests::agent;

/// Services for `backends`, one each, named after the backend.
fn services_for(backends: &[&Backend]) -> Vec<Value> {
    backends
        .iter()
        .flat_map(|b| backend_service(&b.name, &[b.addr]))
        .collect()
}

/// Our IngressClass, `backend`'s Service and EndpointSlice, and one Ingress `name` sending
/// everything for `host` to it.
fn single_host(name: &str, host: &str, backend: &Backend) -> Result<Manifests> {
    let manifests = Manifests::new()?;
    manifests.write("class.yaml", &[our_class()])?;
    manifests.write("services.yaml", &services_for(&[backend]))?;
    manifests.write(
        &format!("{name}.yaml"),
        &[ingress(
            name,
            &[rule(Some(host), &[("/", "Prefix", &backend.name)])],
        )],
    )?;
    Ok(manifests)
}

/// Asserts the answer came from `backend` with 200.
fn assert_served(reply: &clients::Reply, backend: &str, what: &str) {
    assert_eq!(reply.status, StatusCode::OK, "{what}: {:?}", reply.text());
    assert_eq!(
        reply.backend().as_deref(),
        Some(backend),
        "{what}: {:?}",
        reply.text()
    );
}

/// Scenario 1: host and path rules (exact host, wildcard host, Exact and Prefix paths), 404
/// without a match, then a default backend; over hyper HTTP/1.1 and curl (HTTP/1.1, h2c with
/// prior knowledge, h2 and HTTP/1.1 over TLS).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_and_path_over_http1_h2c_and_h2() -> Result<()> {
    let exact = Backend::start("exact").await?;
    let root = Backend::start("root").await?;
    let api = Backend::start("api").await?;
    let wild = Backend::start("wild").await?;
    let fallback = Backend::start("fallback").await?;
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
        let reply = get(&client, proxy.http, host, path).await?;
        assert_served(&reply, backend, &format!("{host}{path}"));
        assert_eq!(reply.version, Version::HTTP_11);
    }
    assert!(
        api.saw("/api/v1/items?x=1"),
        "the path and query reach the backend unchanged: {:?}",
        api.seen()
    );
    for (host, path) in [
        ("unknown.example", "/"),
        ("wild.example", "/"),
        ("a.b.wild.example", "/"),
        ("", "/api"),
    ] {
        let reply = get(&client, proxy.http, host, path).await?;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{host}{path}");
        assert!(
            reply.text().contains("no Ingress rule matches"),
            "404 says why: {:?}",
            reply.text()
        );
    }

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
        assert_eq!(http_version, version, "curl {args:?}");
        let json: Value = serde_json::from_str(&body).with_context(|| body.clone())?;
        assert_eq!(json["backend"], backend, "curl {args:?}: {body}");
        // The backend always gets HTTP/1.1, with the client's host.
        assert_eq!(json["version"], "HTTP/1.1", "curl {args:?}: {body}");
        let host = json["headers"]["host"][0].as_str().unwrap_or("");
        assert!(host.starts_with("app.example"), "curl {args:?}: {body}");
    }

    // A default backend catches what no rule matches; rules still win.
    proxy.manifests.write(
        "fallback.yaml",
        &[ingress_with("fallback", Some(OUR_CLASS), &[], |i| {
            with_default_backend(i, "fallback")
        })],
    )?;
    eventually("the default backend serves unknown hosts", || async {
        let reply = get(&client, proxy.http, "unknown.example", "/x").await?;
        ensure(reply.backend().as_deref() == Some("fallback"), || {
            format!("{} {:?}", reply.status, reply.text())
        })
    })
    .await?;
    for (host, path, backend) in [
        ("a.b.wild.example", "/", "fallback"),
        ("app.example", "/api/x", "api"),
        ("a.wild.example", "/", "wild"),
    ] {
        let reply = get(&client, proxy.http, host, path).await?;
        assert_served(
            &reply,
            backend,
            &format!("{host}{path} with a default backend"),
        );
    }
    Ok(())
}

/// Scenario 2: the certificate presented per SNI (exact, wildcard, unknown → self-signed
/// default), ALPN, TLS 1.2 and 1.3, a rotated Secret picked up without restart, a broken one
/// keeping the previous certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_certificates_by_sni_alpn_versions_and_rotation() -> Result<()> {
    let web = Backend::start("web").await?;
    let generate = |name: &str| rcgen::generate_simple_self_signed(vec![name.to_string()]);
    let shop = generate("shop.example")?;
    let blog = generate("blog.example")?;
    let wild = generate("*.apps.example")?;
    let secrets = |shop: &rcgen::CertifiedKey| -> Vec<Value> {
        vec![
            tls_secret("shop-tls", &shop.cert.pem(), &shop.key_pair.serialize_pem()),
            tls_secret("blog-tls", &blog.cert.pem(), &blog.key_pair.serialize_pem()),
            tls_secret("wild-tls", &wild.cert.pem(), &wild.key_pair.serialize_pem()),
        ]
    };
    let manifests = Manifests::new()?;
    manifests.write("class.yaml", &[our_class()])?;
    manifests.write("services.yaml", &services_for(&[&web]))?;
    manifests.write("secrets.yaml", &secrets(&shop))?;
    let mut sites = ingress(
        "sites",
        &[
            rule(Some("shop.example"), &[("/", "Prefix", "web")]),
            rule(Some("blog.example"), &[("/", "Prefix", "web")]),
            rule(Some("*.apps.example"), &[("/", "Prefix", "web")]),
        ],
    );
    with_tls(&mut sites, &["shop.example"], "shop-tls");
    with_tls(&mut sites, &["blog.example"], "blog-tls");
    with_tls(&mut sites, &["*.apps.example"], "wild-tls");
    manifests.write("sites.yaml", &[sites])?;
    let proxy = TestProxy::start(manifests, &[])?;
    let both: &[&[u8]] = &[b"h2", b"http/1.1"];

    let presented = |sni: &'static str| async move {
        Ok::<_, anyhow::Error>(tls_connect(proxy.https, sni, Tls::Any, both).await?.1)
    };
    let ours = [
        shop.cert.der().to_vec(),
        blog.cert.der().to_vec(),
        wild.cert.der().to_vec(),
    ];
    assert_eq!(presented("shop.example").await?.certificate, ours[0]);
    assert_eq!(presented("SHOP.example").await?.certificate, ours[0]);
    assert_eq!(presented("blog.example").await?.certificate, ours[1]);
    assert_eq!(presented("x.apps.example").await?.certificate, ours[2]);
    let default = presented("unknown.example").await?.certificate;
    assert!(
        !ours.contains(&default),
        "an unknown name gets the default certificate"
    );
    assert_eq!(
        presented("a.b.apps.example").await?.certificate,
        default,
        "the wildcard covers one label only"
    );

    for (offered, expected) in [
        (both, &b"h2"[..]),
        (&[&b"http/1.1"[..]][..], &b"http/1.1"[..]),
        (&[&b"h2"[..]][..], &b"h2"[..]),
    ] {
        let (_, handshake) = tls_connect(proxy.https, "shop.example", Tls::Any, offered).await?;
        assert_eq!(
            handshake.alpn.as_deref(),
            Some(expected),
            "ALPN {offered:?}"
        );
    }
    for (versions, expected) in [
        (Tls::V12, rustls::ProtocolVersion::TLSv1_2),
        (Tls::V13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        for sni in ["shop.example", "x.apps.example", "unknown.example"] {
            let (_, handshake) = tls_connect(proxy.https, sni, versions, both).await?;
            assert_eq!(handshake.version, Some(expected), "{sni}");
        }
        let (_, handshake) = tls_connect(proxy.https, "blog.example", versions, both).await?;
        assert_eq!(handshake.certificate, ours[1], "{versions:?}");
    }
    for alpn in [both, &[&b"http/1.1"[..]][..]] {
        let reply = clients::https_get(proxy.https, "shop.example", "/tls", alpn).await?;
        assert_served(&reply, "web", &format!("HTTPS with ALPN {alpn:?}"));
    }

    // Rotation: a new certificate in the Secret is served to new handshakes, no restart.
    let rotated = generate("shop.example")?;
    proxy.manifests.write("secrets.yaml", &secrets(&rotated))?;
    let rotated_der = rotated.cert.der().to_vec();
    eventually("the rotated certificate is presented", || async {
        let certificate = presented("shop.example").await?.certificate;
        ensure(certificate == rotated_der, || "still the old one".into())
    })
    .await?;
    assert_eq!(presented("blog.example").await?.certificate, ours[1]);

    // A broken Secret: reported, and the previous (rotated) certificate stays.
    let mut broken = secrets(&rotated);
    broken[0] = tls_secret("shop-tls", "this is not PEM", "neither is this");
    proxy.manifests.write("secrets.yaml", &broken)?;
    let refused = proxy
        .wait_for_log(&["certificate", "default/shop-tls"])
        .await?;
    assert!(refused.contains("previous certificate stays"), "{refused}");
    assert_eq!(presented("shop.example").await?.certificate, rotated_der);
    assert_eq!(presented("blog.example").await?.certificate, ours[1]);
    let reply = clients::https_get(proxy.https, "shop.example", "/after", both).await?;
    assert_served(&reply, "web", "HTTPS after a broken Secret");
    Ok(())
}

/// Scenario 3: forwarding headers set, hop-by-hop headers removed both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_and_hop_by_hop_headers() -> Result<()> {
    let web = Backend::start("web").await?;
    let manifests = single_host("hdr", "hdr.example", &web)?;
    let proxy = TestProxy::start(manifests, &[])?;
    let http_port = proxy.http.port().to_string();
    let https_port = proxy.https.port().to_string();
    let one = |v: &str| vec![v.to_string()];

    // Plain HTTP/1.1 with hop-by-hop headers and an existing X-Forwarded-For.
    let reply = send_h1(
        proxy.http,
        request("hdr.example", "/headers")
            .header("x-forwarded-for", "203.0.113.9")
            .header("connection", "keep-alive, X-Hop-A")
            .header("x-hop-a", "listed in Connection")
            .header("keep-alive", "timeout=5")
            .header("proxy-connection", "keep-alive")
            .header("te", "trailers")
            .header("trailer", "x-checksum")
            .header("x-kept", "yes")
            .body(clients::empty())?,
    )
    .await?;
    assert_served(&reply, "web", "plain request");
    assert_eq!(
        reply.seen_header("x-forwarded-for")?,
        one("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(reply.seen_header("x-real-ip")?, one("127.0.0.1"));
    assert_eq!(reply.seen_header("x-forwarded-proto")?, one("http"));
    assert_eq!(reply.seen_header("x-forwarded-host")?, one("hdr.example"));
    assert_eq!(reply.seen_header("x-forwarded-port")?, one(&http_port));
    assert_eq!(reply.seen_header("host")?, one("hdr.example"));
    assert_eq!(reply.seen_header("x-kept")?, one("yes"));
    let ids = reply.seen_header("x-request-id")?;
    assert!(
        ids.len() == 1 && ids[0].len() >= 16,
        "an X-Request-ID is added: {ids:?}"
    );
    for hop in [
        "x-hop-a",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    ] {
        assert_eq!(
            reply.seen_header(hop)?,
            Vec::<String>::new(),
            "{hop} must not reach the backend: {}",
            reply.text()
        );
    }
    let connection = reply.seen_header("connection")?;
    assert!(
        connection
            .iter()
            .all(|v| !v.to_ascii_lowercase().contains("x-hop-a")),
        "the client's Connection header must not reach the backend: {connection:?}"
    );
    let second = send_h1(
        proxy.http,
        request("hdr.example", "/headers").body(clients::empty())?,
    )
    .await?;
    assert_ne!(
        second.seen_header("x-request-id")?,
        ids,
        "request ids differ per request"
    );

    // An existing X-Request-ID is kept; a Host with a port reaches the backend unchanged.
    let host_with_port = format!("HDR.example:{http_port}");
    let reply = send_h1(
        proxy.http,
        request(&host_with_port, "/headers")
            .header("x-request-id", "client-chosen-id-42")
            .body(clients::empty())?,
    )
    .await?;
    assert_served(&reply, "web", "request with an id");
    assert_eq!(
        reply.seen_header("x-request-id")?,
        one("client-chosen-id-42")
    );
    assert_eq!(reply.seen_header("host")?, one(&host_with_port));
    assert_eq!(reply.seen_header("x-forwarded-host")?, one(&host_with_port));
    assert_eq!(reply.seen_header("x-forwarded-for")?, one("127.0.0.1"));

    // Over TLS: HTTP/1.1 and HTTP/2 (whose :authority becomes Host).
    for alpn in [&[&b"http/1.1"[..]][..], &[&b"h2"[..]][..]] {
        let reply = clients::https_get(proxy.https, "hdr.example", "/tls-headers", alpn).await?;
        assert_served(&reply, "web", &format!("TLS {alpn:?}"));
        assert_eq!(reply.seen_header("x-forwarded-proto")?, one("https"));
        assert_eq!(reply.seen_header("x-forwarded-port")?, one(&https_port));
        assert_eq!(reply.seen_header("host")?, one("hdr.example"), "{alpn:?}");
        assert_eq!(reply.seen_header("x-forwarded-host")?, one("hdr.example"));
        assert_eq!(reply.seen_header("x-real-ip")?, one("127.0.0.1"));
    }

    // Hop-by-hop headers of the backend's response do not reach the client.
    let reply = send_h1(
        proxy.http,
        request("hdr.example", "/hop-response").body(clients::empty())?,
    )
    .await?;
    assert_served(&reply, "web", "hop-by-hop response");
    assert_eq!(
        reply.headers.get("x-backend-kept"),
        Some(&HeaderValue::from_static("yes"))
    );
    for hop in [
        "x-backend-hop",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
    ] {
        assert!(
            !reply.headers.contains_key(hop),
            "{hop} must not reach the client: {:?}",
            reply.headers
        );
    }
    for value in reply.headers.get_all("connection") {
        assert!(
            !value
                .to_str()
                .unwrap_or("")
                .to_ascii_lowercase()
                .contains("x-backend-hop"),
            "the backend's Connection header must not reach the client: {:?}",
            reply.headers
        );
    }
    Ok(())
}

/// Opens a WebSocket to `ws.example/echo` through the proxy's plain listener.
async fn websocket(
    proxy: std::net::SocketAddr,
) -> Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>> {
    let stream = tokio::net::TcpStream::connect(proxy).await?;
    let (socket, response) = tokio::time::timeout(
        clients::EXCHANGE_TIMEOUT,
        tokio_tungstenite::client_async("ws://ws.example/echo", stream),
    )
    .await
    .map_err(|_| anyhow!("WebSocket handshake timed out"))??;
    check!(
        response.status() == StatusCode::SWITCHING_PROTOCOLS,
        "{response:?}"
    );
    Ok(socket)
}

/// Sends `message` and expects `expected` back.
async fn ws_round_trip(
    socket: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    message: Message,
    expected: Message,
) -> Result<()> {
    socket.send(message).await?;
    let reply = tokio::time::timeout(clients::EXCHANGE_TIMEOUT, socket.next())
        .await
        .map_err(|_| anyhow!("no WebSocket reply"))?
        .context("WebSocket closed")??;
    check!(reply == expected, "got {reply:?}, expected {expected:?}");
    Ok(())
}

/// Scenario 4: a WebSocket through the proxy, messages both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_proxy() -> Result<()> {
    let ws = WsBackend::start("ws").await?;
    let manifests = Manifests::new()?;
    manifests.write("class.yaml", &[our_class()])?;
    manifests.write("services.yaml", &backend_service("ws", &[ws.addr]))?;
    manifests.write(
        "ws.yaml",
        &[ingress(
            "ws",
            &[rule(Some("ws.example"), &[("/echo", "Prefix", "ws")])],
        )],
    )?;
    let proxy = TestProxy::start(manifests, &[])?;
    let mut socket = websocket(proxy.http).await?;
    for i in 0..20 {
        ws_round_trip(
            &mut socket,
            Message::text(format!("hello {i}")),
            Message::text(format!("ws:hello {i}")),
        )
        .await?;
    }
    for i in 0..5u8 {
        let data: Vec<u8> = (0..100_000u32).map(|n| (n as u8) ^ i).collect();
        ws_round_trip(
            &mut socket,
            Message::binary(data.clone()),
            Message::binary(data),
        )
        .await?;
    }
    // Several messages in flight at once.
    for i in 0..10 {
        socket.send(Message::text(format!("burst {i}"))).await?;
    }
    for i in 0..10 {
        let reply = socket.next().await.context("closed")??;
        assert_eq!(reply, Message::text(format!("ws:burst {i}")));
    }
    socket.close(None).await?;
    Ok(())
}

/// Scenario 5: 100 MiB up and 100 MiB down, checked byte for byte (FNV-1a), while the agent's
/// peak memory stays bounded: the bodies are streamed, not buffered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways_in_bounded_memory() -> Result<()> {
    const SIZE: u64 = 100 * 1024 * 1024;
    const ALLOWED_GROWTH_KIB: u64 = 40 * 1024;
    let bulk = Backend::start("bulk").await?;
    let manifests = single_host("bulk", "bulk.example", &bulk)?;
    let proxy = TestProxy::start(manifests, &[])?;
    let expected_fnv = tokio::task::spawn_blocking(move || Fnv::of_pattern(SIZE)).await?;

    let upload = |len: u64| {
        let proxy = proxy.http;
        async move {
            let request = http::Request::post("/upload")
                .header(http::header::HOST, "bulk.example")
                .header(http::header::CONTENT_LENGTH, len)
                .body(PatternBody::new(len))?;
            let reply = tokio::time::timeout(Duration::from_secs(120), send_h1(proxy, request))
                .await
                .map_err(|_| anyhow!("upload of {len} bytes timed out"))??;
            check!(reply.status == StatusCode::OK, "{:?}", reply.text());
            let json = reply.json()?;
            Ok::<_, anyhow::Error>((json["bytes"].as_u64(), json["fnv"].as_u64()))
        }
    };
    let download = |len: u64| {
        let proxy = proxy.http;
        async move {
            let stream = tokio::net::TcpStream::connect(proxy).await?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            let response = sender
                .send_request(
                    request("bulk.example", &format!("/download/{len}")).body(clients::empty())?,
                )
                .await?;
            check!(response.status() == StatusCode::OK, "{response:?}");
            let mut body = response.into_body();
            let mut bytes = 0u64;
            let mut fnv = Fnv::default();
            while let Some(frame) = tokio::time::timeout(Duration::from_secs(20), body.frame())
                .await
                .map_err(|_| anyhow!("download stalled at {bytes} bytes"))?
            {
                if let Some(data) = frame?.data_ref() {
                    bytes += data.len() as u64;
                    fnv.update(data);
                }
            }
            Ok::<_, anyhow::Error>((bytes, fnv.0))
        }
    };

    // Warm up (pools, buffers, allocator arenas), then take the baseline.
    upload(4 * 1024 * 1024).await?;
    download(4 * 1024 * 1024).await?;
    let (baseline_hwm, baseline_rss) = proxy.memory_kib()?;

    let (bytes, fnv) = upload(SIZE).await?;
    assert_eq!(bytes, Some(SIZE), "upload: bytes the backend received");
    assert_eq!(fnv, Some(expected_fnv), "upload: checksum at the backend");
    let (bytes, fnv) = download(SIZE).await?;
    assert_eq!(bytes, SIZE, "download: bytes the client received");
    assert_eq!(fnv, expected_fnv, "download: checksum at the client");

    let (hwm, rss) = proxy.memory_kib()?;
    eprintln!("agent memory: VmHWM {baseline_hwm} → {hwm} KiB, VmRSS {baseline_rss} → {rss} KiB");
    assert!(
        hwm < baseline_hwm + ALLOWED_GROWTH_KIB,
        "the agent's peak memory grew from {baseline_hwm} KiB to {hwm} KiB (RSS {baseline_rss} \
         → {rss} KiB) for 2 × 100 MiB: bodies are buffered, not streamed"
    );
    Ok(())
}

/// Scenario 6: the proxy's own answers (404, 413, 431, 502, 503, 504, 400), and the backend
/// never sees the requests refused before forwarding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_codes_the_proxy_answers_itself() -> Result<()> {
    let web = Backend::start("web").await?;
    let refusing = RefusingPort::new()?;
    let dead = refusing.addr;
    let manifests = Manifests::new()?;
    manifests.write("class.yaml", &[our_class()])?;
    let mut services = services_for(&[&web]);
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
    let proxy = TestProxy::start(
        manifests,
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
    let expect = |reply: &clients::Reply, status: u16, says: &str, what: &str| {
        assert_eq!(reply.status.as_u16(), status, "{what}: {:?}", reply.text());
        assert!(
            reply.text().contains(says),
            "{what}: the body should say {says:?}: {:?}",
            reply.text()
        );
        assert!(
            reply
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/plain")),
            "{what}: plain text: {:?}",
            reply.headers
        );
    };

    let reply = get(&client, proxy.http, "nowhere.example", "/").await?;
    expect(&reply, 404, "no Ingress rule matches", "no rule");
    let reply = get(&client, proxy.http, "status.example", "/dead/x").await?;
    expect(&reply, 502, "502 Bad Gateway", "nothing listening");
    assert!(reply.text().contains(&dead.to_string()), "{}", reply.text());
    let reply = get(&client, proxy.http, "status.example", "/unready").await?;
    expect(&reply, 503, "has no ready endpoints", "no ready endpoint");
    let reply = get(&client, proxy.http, "status.example", "/ghost").await?;
    expect(&reply, 503, "does not exist", "unknown Service");
    let reply = get(&client, proxy.http, "status.example", "/sleep/3000").await?;
    expect(&reply, 504, "did not answer in time", "slow backend");
    assert_served(
        &get(&client, proxy.http, "status.example", "/after-504").await?,
        "web",
        "after a 504",
    );

    // Body limit: by Content-Length (refused before forwarding) and by a chunked body.
    let mut over =
        b"POST /cl-canary HTTP/1.1\r\nHost: status.example\r\nContent-Length: 2000\r\n\r\n"
            .to_vec();
    over.extend(std::iter::repeat_n(b'x', 2000));
    let (status, text) = raw_exchange(proxy.http, &over).await?;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("exceeds the limit"), "{text}");
    let chunked = |chunks: usize| {
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
    };
    let (status, text) = raw_exchange(proxy.http, &chunked(6)).await?;
    assert_eq!(status, 413, "chunked body of 3000 bytes: {text}");
    assert!(text.contains("exceeds the limit"), "{text}");
    let (status, text) = raw_exchange(proxy.http, &chunked(2)).await?;
    assert_eq!(
        status, 200,
        "chunked body of 1000 bytes is within the limit: {text}"
    );
    assert!(text.contains("\"body_bytes\":1000"), "{text}");

    // Header limit.
    let big = "a".repeat(16 * 1024);
    let reply = send_h1(
        proxy.http,
        request("status.example", "/big-header-canary")
            .header("x-big", big.as_str())
            .body(clients::empty())?,
    )
    .await?;
    assert_eq!(reply.status.as_u16(), 431, "{:?}", reply.text());
    let fits = "a".repeat(6 * 1024);
    let reply = send_h1(
        proxy.http,
        request("status.example", "/fitting-header")
            .header("x-big", fits.as_str())
            .body(clients::empty())?,
    )
    .await?;
    assert_served(&reply, "web", "a 6 KiB header under an 8 KiB limit");

    // Content-Length and Transfer-Encoding together (a smuggling attempt), malformed requests.
    let smuggling =
        b"POST /smuggle-canary HTTP/1.1\r\nHost: status.example\r\nContent-Length: 61\r\n\
                      Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled-canary HTTP/1.1\r\n\
                      Host: status.example\r\n\r\n";
    let (status, text) = raw_exchange(proxy.http, smuggling).await?;
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains("both Content-Length and Transfer-Encoding"),
        "{text}"
    );
    for malformed in [
        &b"GET /malformed-canary HTTP/1.1\r\nHost: status.example\r\nNo colon here\r\n\r\n"[..],
        &b"GET /malformed-canary2 HTTP/1.1\r\nHost: status.example\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxy"[..],
        &b"\x01\x02 garbage that is no request\r\n\r\n"[..],
    ] {
        let (status, text) = raw_exchange(proxy.http, malformed).await?;
        assert_eq!(
            status,
            400,
            "{:?}: {text}",
            String::from_utf8_lossy(malformed)
        );
    }

    // A last request reaches the backend after all of the above: had any refused request been
    // forwarded, the backend would have seen it before this one.
    assert_served(
        &get(&client, proxy.http, "status.example", "/last").await?,
        "web",
        "the last request",
    );
    let seen = web.seen();
    for canary in [
        "/cl-canary",
        "/big-header-canary",
        "/smuggle-canary",
        "/smuggled-canary",
        "/malformed-canary",
        "/malformed-canary2",
    ] {
        assert!(
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
    let alive = Backend::start("alive").await?;
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
        assert_served(&reply, "alive", &format!("request {i}"));
    }
    // New client connections too (the proxy's choice does not depend on the client's).
    for i in 0..10 {
        let reply = send_h1(
            proxy.http,
            request("pair.example", &format!("/fresh{i}")).body(clients::empty())?,
        )
        .await?;
        assert_served(&reply, "alive", &format!("fresh connection {i}"));
    }
    Ok(())
}

/// Scenario 8: ten manifest rewrites while clients keep sending, each over one keep-alive
/// connection for the whole test: no request fails, no connection is closed, and a WebSocket
/// opened before the changes still echoes after them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_lose_no_request() -> Result<()> {
    const CLIENTS: usize = 4;
    const MIN_REQUESTS: u64 = 2000;
    let a = Backend::start("a").await?;
    let b = Backend::start("b").await?;
    let ws = WsBackend::start("ws").await?;
    let manifests = Manifests::new()?;
    manifests.write("class.yaml", &[our_class()])?;
    let mut services = services_for(&[&a, &b]);
    services.extend(backend_service("ws", &[ws.addr]));
    manifests.write("services.yaml", &services)?;
    let main = |target: &str, version: usize| {
        let versioned = format!("/v{version}");
        ingress(
            "main",
            &[
                rule(
                    Some("load.example"),
                    &[("/api", "Prefix", target), (&versioned, "Exact", target)],
                ),
                rule(Some("ws.example"), &[("/echo", "Prefix", "ws")]),
            ],
        )
    };
    manifests.write("main.yaml", &[main("a", 0)])?;
    let proxy = TestProxy::start(manifests, &[])?;
    let mut socket = websocket(proxy.http).await?;
    ws_round_trip(
        &mut socket,
        Message::text("before"),
        Message::text("ws:before"),
    )
    .await?;

    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let ended = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for task in 0..CLIENTS {
        let (stop, total, ended, addr) = (stop.clone(), total.clone(), ended.clone(), proxy.http);
        // One keep-alive connection per client for the whole test, not a pool that would
        // reconnect quietly: a reload that closed connections fails the test.
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        load.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let path = format!("/api/t{task}/{n}");
                if let Err(error) = sender.ready().await {
                    failures.push(format!(
                        "the keep-alive connection ended after {n}: {error}"
                    ));
                    ended.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                let sent = async {
                    let request = request("load.example", &path).body(clients::empty())?;
                    clients::collect(sender.send_request(request).await?).await
                };
                match sent.await {
                    Ok(reply) if reply.status == StatusCode::OK => {}
                    Ok(reply) => {
                        failures.push(format!("{path}: {} {:?}", reply.status, reply.text()))
                    }
                    Err(error) => failures.push(format!("{path}: {error:#}")),
                }
                n += 1;
                total.fetch_add(1, Ordering::Relaxed);
            }
            failures
        }));
    }

    let checker = pooled();
    for change in 1..=10 {
        let target = if change % 2 == 1 { "b" } else { "a" };
        proxy
            .manifests
            .write("main.yaml", &[main(target, change)])?;
        let extra_present = change % 2 == 1;
        if extra_present {
            proxy.manifests.write(
                "extra.yaml",
                &[ingress(
                    "extra",
                    &[rule(Some("extra.example"), &[("/", "Prefix", "a")])],
                )],
            )?;
        } else {
            proxy.manifests.remove("extra.yaml")?;
        }
        eventually(&format!("change {change} is served"), || async {
            let reply = get(&checker, proxy.http, "load.example", &format!("/v{change}")).await?;
            ensure(reply.backend().as_deref() == Some(target), || {
                format!("/v{change}: {} {:?}", reply.status, reply.text())
            })?;
            let reply = get(&checker, proxy.http, "extra.example", "/").await?;
            let expected = if extra_present {
                StatusCode::OK
            } else {
                StatusCode::NOT_FOUND
            };
            ensure(reply.status == expected, || {
                format!("extra.example: {} {:?}", reply.status, reply.text())
            })
        })
        .await
        .with_context(|| proxy.log())?;
        // Let the clients send a good number of requests on this table before the next change,
        // so the load spans every reload.
        let since = total.load(Ordering::Relaxed);
        eventually(&format!("requests after change {change}"), || async {
            let closed = ended.load(Ordering::Relaxed);
            ensure(closed == 0, || {
                format!("{closed} keep-alive connection(s) closed by change {change}")
            })?;
            let n = total.load(Ordering::Relaxed);
            ensure(n >= since + MIN_REQUESTS / 10, || {
                format!("{} requests since change {change}", n - since)
            })
        })
        .await?;
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for task in load {
        failures.extend(task.await?);
    }
    let n = total.load(Ordering::Relaxed);
    if !failures.is_empty() {
        bail!(
            "{} of {n} requests failed across 10 reloads, first ones: {:#?}",
            failures.len(),
            &failures[..failures.len().min(10)]
        );
    }
    let (served_a, served_b) = (a.seen().len(), b.seen().len());
    eprintln!(
        "{n} requests across 10 reloads on {CLIENTS} keep-alive connections, none failed or \
         reconnected (a served {served_a}, b {served_b})"
    );
    assert!(served_a > 0 && served_b > 0, "a {served_a}, b {served_b}");

    for i in 0..5 {
        ws_round_trip(
            &mut socket,
            Message::text(format!("after {i}")),
            Message::text(format!("ws:after {i}")),
        )
        .await
        .context("the WebSocket opened before the reloads")?;
    }
    socket.close(None).await?;
    Ok(())
}

/// Scenario 9: only Ingresses of our IngressClass are served: by `ingressClassName` or the
/// deprecated annotation; another controller's class and no class (with no default class) are
/// not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_class_selection() -> Result<()> {
    let web = Backend::start("web").await?;
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
            assert_served(&reply, "web", host);
        } else {
            assert_eq!(
                reply.status,
                StatusCode::NOT_FOUND,
                "{host}: {:?}",
                reply.text()
            );
        }
    }
    Ok(())
}

/// `/metrics` on the admin listener: requests by Ingress, Service, port and status class (200
/// from a backend, 503 from a backend without endpoints, 404 with no rule under empty labels),
/// the duration histogram's count, and the reload counters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_by_ingress_service_and_status() -> Result<()> {
    let web = Backend::start("web").await?;
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
        assert_served(
            &get(&client, proxy.http, "shop.example", &format!("/{i}")).await?,
            "web",
            "routed",
        );
    }
    for _ in 0..2 {
        let reply = get(&client, proxy.http, "nowhere.example", "/").await?;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.text());
    }
    let reply = get(&client, proxy.http, "shop.example", "/unready").await?;
    assert_eq!(
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
        check!(reply.status == StatusCode::OK, "status {}", reply.status);
        let text = reply.text();
        let missing: Vec<&String> = expected
            .iter()
            .filter(|line| !text.lines().any(|l| l == line.as_str()))
            .collect();
        check!(missing.is_empty(), "missing {missing:?} in:\n{text}");
        Ok(text)
    })
    .await
    .with_context(|| proxy.log())?;
    assert!(
        text.contains("# TYPE xdp_ingress_request_duration_seconds histogram"),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
    // No datapath, so no L4 families.
    assert!(!text.contains("xdp_ingress_datapath_packets"), "{text}");
    Ok(())
}

/// Sends SIGTERM to the agent, our child (alive: the caller holds a request in it).
fn sigterm(pid: u32) -> Result<()> {
    // SAFETY: plain FFI call on our own child's pid.
    if unsafe { libc::kill(pid as i32, libc::SIGTERM) } != 0 {
        bail!("SIGTERM to {pid}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// One read of at most a byte, which must return within `within` (`Err(Elapsed)` otherwise):
/// how a test waits for the proxy to close a connection.
async fn read_within<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    within: Duration,
) -> Result<std::io::Result<usize>, tokio::time::error::Elapsed> {
    let mut byte = [0u8; 1];
    tokio::time::timeout(within, stream.read(&mut byte)).await
}

/// Whether process `pid` (our child, not yet reaped) has exited: it is a zombie in
/// /proc/PID/stat. Reading the state instead of reaping leaves the exit status to
/// `AgentProcess::terminate`, which then signals a process that is already gone.
fn has_exited(pid: u32) -> Result<bool> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name in parentheses may hold spaces; the state follows the last ')'.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .with_context(|| format!("no state in /proc/{pid}/stat: {stat:?}"))?;
    Ok(state == "Z" || state == "X")
}

/// Drain on SIGTERM, with requests held in flight by the backend until the test lets them go:
/// three HTTP/1.1 requests waiting for their response head, one h2c request, and one HTTP/1.1
/// response whose head and first half of the body are already out. After SIGTERM, while those
/// are still held: both listeners refuse new connections; an idle keep-alive connection (one
/// request done) is closed by the proxy with a FIN, and a connection that never sent a byte is
/// closed too (FIN or reset), long before the drain timeout; the agent is still running. Once
/// released, every held request completes with 200 and its whole body, and the agent exits 0
/// with "proxy drained" (not "drain timeout") within the drain timeout plus a margin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_requests_in_flight_and_refuses_new_connections() -> Result<()> {
    const DRAIN: Duration = Duration::from_secs(10);
    const HELD_H1: usize = 3;
    // Several chunks per half, so the held half really is a body cut in the middle.
    const BODY: u64 = 6 * CHUNK as u64;
    let gate = Gate::new();
    let web = Backend::start_gated("web", gate.clone()).await?;
    let manifests = single_host("drain", "drain.example", &web)?;
    let proxy = TestProxy::start(manifests, &["--drain-timeout", "10s"])?;

    // An idle keep-alive connection: one request answered, then nothing.
    let mut idle = tokio::net::TcpStream::connect(proxy.http).await?;
    idle.write_all(b"GET /idle HTTP/1.1\r\nHost: drain.example\r\n\r\n")
        .await?;
    let (status, text) =
        tokio::time::timeout(clients::EXCHANGE_TIMEOUT, clients::read_response(&mut idle))
            .await
            .map_err(|_| anyhow!("no answer on the keep-alive connection"))??;
    check!(status == 200, "keep-alive request: {text}");
    check!(
        !text.to_ascii_lowercase().contains("connection: close"),
        "the first answer must keep the connection open: {text}"
    );
    // A connection that has not sent a byte yet.
    let mut silent = tokio::net::TcpStream::connect(proxy.http).await?;

    let mut held = Vec::new();
    for i in 0..HELD_H1 {
        let path = format!("/held/h1-{i}");
        let addr = proxy.http;
        held.push((
            path.clone(),
            tokio::spawn(async move {
                send_h1(
                    addr,
                    request("drain.example", &path).body(clients::empty())?,
                )
                .await
            }),
        ));
    }
    let h2c = {
        let stream = tokio::net::TcpStream::connect(proxy.http).await?;
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await?;
        tokio::spawn(connection);
        let request = http::Request::get("http://drain.example/held/h2c").body(clients::empty())?;
        tokio::spawn(async move { clients::collect(sender.send_request(request).await?).await })
    };
    held.push(("/held/h2c".to_string(), h2c));
    let streaming = {
        let stream = tokio::net::TcpStream::connect(proxy.http).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let request =
            request("drain.example", &format!("/held-body/{BODY}")).body(clients::empty())?;
        // The head arrives while the second half of the body is held.
        let response =
            tokio::time::timeout(clients::EXCHANGE_TIMEOUT, sender.send_request(request))
                .await
                .map_err(|_| anyhow!("no response head for /held-body"))??;
        check!(response.status() == StatusCode::OK, "{response:?}");
        tokio::spawn(clients::collect(response))
    };
    // Every held request has reached the backend (and the held body its half): all are in
    // flight in the proxy now.
    let expected_arrivals = HELD_H1 + 2;
    eventually("every held request reaches the backend", || async {
        ensure(gate.arrived() == expected_arrivals, || {
            format!("{} of {expected_arrivals} arrived", gate.arrived())
        })
    })
    .await
    .with_context(|| proxy.log())?;

    let pid = proxy.agent.pid();
    let signalled = std::time::Instant::now();
    sigterm(pid)?;
    proxy.wait_for_log(&["SIGTERM"]).await?;

    // New connections are refused on both listeners. A connect that still gets through (it
    // raced the listener's close) is dropped at once and tried again.
    eventually("new connections are refused", || async {
        for addr in [proxy.http, proxy.https] {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(_) => bail!("{addr} still accepts connections"),
                Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => {}
                Err(error) => bail!("connecting to {addr}: {error}"),
            }
        }
        Ok(())
    })
    .await
    .with_context(|| proxy.log())?;

    // Idle connections are closed by the drain itself: the held requests keep the agent from
    // exiting, so a close seen now cannot be the process going away. The bound is below the
    // drain timeout, after which everything would be closed anyway.
    let read = read_within(&mut idle, DRAIN / 2)
        .await
        .map_err(|_| anyhow!("the idle keep-alive connection is still open after SIGTERM"))?;
    check!(
        matches!(read, Ok(0)),
        "the idle keep-alive connection must end with a FIN, got {read:?}"
    );
    let read = read_within(&mut silent, DRAIN / 2)
        .await
        .map_err(|_| anyhow!("the silent connection is still open after SIGTERM"))?;
    check!(
        matches!(&read, Ok(0)) || read.is_err(),
        "the silent connection must be closed, got {read:?}"
    );
    check!(
        proxy
            .agent
            .output()
            .iter()
            .all(|l| !l.contains("drain timeout")),
        "the drain timed out while the test was checking: {}",
        proxy.log()
    );
    check!(
        !has_exited(pid)?,
        "the agent exited with requests in flight: {}",
        proxy.log()
    );
    check!(
        held.iter().all(|(_, task)| !task.is_finished()) && !streaming.is_finished(),
        "a held request finished before the gate opened"
    );

    gate.open();
    for (path, task) in held {
        let reply = task
            .await?
            .with_context(|| format!("{path} after SIGTERM"))?;
        assert_served(&reply, "web", &format!("{path} in flight at SIGTERM"));
        let json = reply.json()?;
        assert_eq!(json["path"], path.as_str(), "{}", reply.text());
        if path.ends_with("h2c") {
            assert_eq!(reply.version, Version::HTTP_2, "{path}");
        }
    }
    let reply = streaming.await?.context("/held-body after SIGTERM")?;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body.len() as u64, BODY, "the whole held body");
    let mut fnv = Fnv::default();
    fnv.update(&reply.body);
    assert_eq!(fnv.0, Fnv::of_pattern(BODY), "the held body's bytes");

    // Exits on its own once the last connection closed; the bound is generous on purpose.
    let bound = DRAIN + Duration::from_secs(10);
    while !has_exited(pid)? {
        check!(
            signalled.elapsed() < bound,
            "the agent did not exit within {bound:?} of SIGTERM: {}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, output) = proxy.agent.terminate(Duration::from_secs(5))?;
    let output = output.join("\n");
    check!(status.success(), "exit {status}: {output}");
    check!(output.contains("proxy drained"), "{output}");
    check!(!output.contains("drain timeout"), "{output}");
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
    check!(
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
    // 2033-07-15T00:00:00Z.
    const NOT_AFTER: i64 = 2_004_998_400;
    let web_a = Backend::start("web-a").await?;
    let web_b = Backend::start("web-b").await?;
    let api = Backend::start("api").await?;
    let checkout = Backend::start("checkout").await?;
    let apps = Backend::start("apps").await?;
    let fallback = Backend::start("fallback").await?;
    let mut params = rcgen::CertificateParams::new(vec!["shop.example".to_string()])?;
    params.not_after = rcgen::date_time_ymd(2033, 7, 15);
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;

    let manifests = Manifests::new()?;
    manifests.write("class.yaml", &[our_class()])?;
    let mut services = backend_service("web", &[web_a.addr, web_b.addr]);
    services.extend(services_for(&[&api, &checkout, &apps, &fallback]));
    // A Service without endpoints: its route is shown as unavailable.
    services.push(service("empty"));
    manifests.write("services.yaml", &services)?;
    manifests.write(
        "secrets.yaml",
        &[tls_secret("shop-tls", &cert.pem(), &key.serialize_pem())],
    )?;
    let shop = |extra: Option<(&'static str, &'static str, &'static str)>| {
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
    };
    manifests.write("shop.yaml", &[shop(None)])?;
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
    let proxy =
        TestProxy::start_with_admin(manifests, &["--default-tls-secret", "default/shop-tls"])?;
    let admin = proxy.admin.context("no admin listener")?;

    let backend = |ingress: &str, service: &str, endpoints: &[&Backend]| {
        let mut endpoints: Vec<String> = endpoints.iter().map(|b| b.addr.to_string()).collect();
        endpoints.sort_by_key(|e| Value::from(e.as_str()).to_string());
        serde_json::json!({
            "ingress": format!("default/{ingress}"),
            "service": format!("default/{service}"),
            "port": "80",
            "endpoints": endpoints,
            "unavailable": null,
        })
    };
    let route = |host: &str, path: &str, path_type: &str, backend: Value| serde_json::json!({"host": host, "path": path, "path_type": path_type, "backend": backend});
    let unavailable = serde_json::json!({
        "ingress": "default/shop",
        "service": "default/empty",
        "port": "80",
        "endpoints": [],
        "unavailable": "NoReadyEndpoints",
    });
    // Match order: exact hosts, then wildcards; Exact paths by name, then Prefix longest first.
    let mut routes = vec![
        route(
            "shop.example",
            "/checkout",
            "Exact",
            backend("shop", "checkout", &[&checkout]),
        ),
        route("shop.example", "/soon", "Exact", unavailable),
        route(
            "shop.example",
            "/api",
            "Prefix",
            backend("shop", "api", &[&api]),
        ),
        route(
            "shop.example",
            "/",
            "Prefix",
            backend("shop", "web", &[&web_a, &web_b]),
        ),
        route(
            "*.apps.example",
            "/",
            "Prefix",
            backend("apps", "apps", &[&apps]),
        ),
    ];
    let expected = |routes: &[Value]| {
        serde_json::json!({
            "routes": routes,
            "default_backend": backend("fallback", "fallback", &[&fallback]),
        })
    };
    let view = sorted_endpoints(inspect_json(admin, "routes").await?);
    assert_eq!(
        view,
        expected(&routes),
        "inspect routes --json:\n{}",
        serde_json::to_string_pretty(&view)?
    );

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
    check!(certs.len() == 3, "three certificates: {certs:#?}");
    assert!(certs.contains(&shop_cert), "{certs:#?}");
    // The default certificate comes last: it is the fallback after every name.
    assert_eq!(certs[2], default_cert, "{certs:#?}");
    let missing = certs
        .iter()
        .find(|c| c["secret"] == "default/missing-tls")
        .with_context(|| format!("no entry for the missing Secret: {certs:#?}"))?;
    assert_eq!(missing["hosts"], serde_json::json!(["*.apps.example"]));
    assert_eq!(missing["ingress"], "default/apps");
    assert_eq!(missing["default"], false);
    assert_eq!(missing["not_after"], Value::Null);
    let problem = missing["problem"].as_str().unwrap_or_default();
    assert!(
        problem.contains("no Secret default/missing-tls"),
        "the missing Secret is reported: {missing}"
    );

    // The table: a header, one line per route, one for the default backend.
    let table = inspect(admin, "routes", false).await?;
    let lines: Vec<&str> = table.lines().collect();
    check!(lines.len() == 1 + routes.len() + 1, "{table}");
    check!(lines[0].starts_with("HOST"), "{table}");
    for (line, route) in lines[1..].iter().zip(&routes) {
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
        check!(words.get(..5) == Some(&want[..]), "{line:?} for {route}");
    }
    let default_line = lines[lines.len() - 1];
    check!(
        default_line.starts_with("(default)")
            && default_line.contains("default/fallback:80")
            && default_line.contains(&fallback.addr.to_string()),
        "{table}"
    );
    let table = inspect(admin, "certs", false).await?;
    check!(table.lines().count() == 1 + certs.len(), "{table}");
    check!(
        table.lines().any(|l| l.starts_with("(default)")
            && l.contains("default/shop-tls")
            && l.contains(&NOT_AFTER.to_string())),
        "{table}"
    );
    check!(
        table
            .lines()
            .any(|l| l.contains("default/missing-tls") && l.contains("unusable:")),
        "{table}"
    );

    // A path added to a manifest shows after the reload.
    proxy
        .manifests
        .write("shop.yaml", &[shop(Some(("/new", "Exact", "api")))])?;
    routes.insert(
        1,
        route(
            "shop.example",
            "/new",
            "Exact",
            backend("shop", "api", &[&api]),
        ),
    );
    let want = expected(&routes);
    eventually("inspect routes shows the new path", || async {
        let view = sorted_endpoints(inspect_json(admin, "routes").await?);
        ensure(view == want, || {
            serde_json::to_string_pretty(&view).unwrap_or_default()
        })
    })
    .await
    .with_context(|| proxy.log())?;
    Ok(())
}

/// The number `xdp_ingress_connections_parked_total` shows on the admin listener.
async fn parked_total(admin: std::net::SocketAddr) -> Result<u64> {
    let reply = get(&pooled(), admin, "127.0.0.1", "/metrics").await?;
    let text = reply.text();
    text.lines()
        .find_map(|line| line.strip_prefix("xdp_ingress_connections_parked_total "))
        .and_then(|value| value.trim().parse().ok())
        .with_context(|| format!("no xdp_ingress_connections_parked_total in:\n{text}"))
}

/// Writes `bytes` on `stream` and reads one response (keep-alive: the stream stays usable).
async fn exchange<S>(stream: &mut S, bytes: &[u8]) -> Result<(u16, String)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    stream.write_all(bytes).await?;
    tokio::time::timeout(Duration::from_secs(10), clients::read_response(stream))
        .await
        .map_err(|_| anyhow!("no answer within 10 s"))?
}

/// An HTTP/1.1 keep-alive connection quiet for a second is parked (hyper's per-connection
/// buffers released; the task keeps only the socket) and serves its next request on the same
/// connection, plain and over TLS, pipelined too. A connection in the middle of a request head,
/// a request body or a response is never parked, and finishes normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_keep_alive_connections_are_parked_and_keep_serving() -> Result<()> {
    let gate = Gate::new();
    let web = Backend::start_gated("web", gate.clone()).await?;
    let manifests = single_host("shop", "shop.example", &web)?;
    let proxy = TestProxy::start_with_admin(manifests, &[])?;
    let admin = proxy.admin.context("no admin listener")?;
    let get_a = b"GET /a HTTP/1.1\r\nHost: shop.example\r\n\r\n";

    // Quiet after one request: to be parked.
    let mut idle = tokio::net::TcpStream::connect(proxy.http).await?;
    let (status, text) = exchange(&mut idle, get_a).await?;
    check!(
        status == 200 && text.contains("web"),
        "first request: {text}"
    );
    let (mut tls, _) = tls_connect(proxy.https, "shop.example", Tls::Any, &[b"http/1.1"]).await?;
    let (status, text) = exchange(&mut tls, get_a).await?;
    check!(
        status == 200 && text.contains("web"),
        "first TLS request: {text}"
    );
    // Busy, each in its own way, across the same time: never to be parked.
    let mut slow_head = tokio::net::TcpStream::connect(proxy.http).await?;
    slow_head
        .write_all(b"GET /b HTTP/1.1\r\nHost: shop.exa")
        .await?;
    let mut slow_body = tokio::net::TcpStream::connect(proxy.http).await?;
    slow_body
        .write_all(b"POST /c HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 10\r\n\r\n12345")
        .await?;
    let mut slow_response = tokio::net::TcpStream::connect(proxy.http).await?;
    slow_response
        .write_all(b"GET /held/d HTTP/1.1\r\nHost: shop.example\r\n\r\n")
        .await?;
    eventually("the held request reaching the backend", || async {
        check!(gate.arrived() == 1, "not yet");
        Ok(())
    })
    .await?;

    // The two quiet connections are parked; the three busy ones are not.
    eventually("two connections parked", || async {
        let parked = parked_total(admin).await?;
        check!(parked == 2, "{parked} parked");
        Ok(())
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    check!(
        parked_total(admin).await? == 2,
        "a connection busy with a head, a body or a response was parked"
    );

    // Each finishes as if nothing happened.
    slow_head.write_all(b"mple\r\n\r\n").await?;
    let (status, text) = tokio::time::timeout(
        Duration::from_secs(10),
        clients::read_response(&mut slow_head),
    )
    .await
    .map_err(|_| anyhow!("slow head: no answer"))??;
    check!(status == 200 && text.contains("/b"), "slow head: {text}");
    let (status, text) = exchange(&mut slow_body, b"67890").await?;
    check!(status == 200 && text.contains("/c"), "slow body: {text}");
    gate.open();
    let (status, text) = tokio::time::timeout(
        Duration::from_secs(10),
        clients::read_response(&mut slow_response),
    )
    .await
    .map_err(|_| anyhow!("held response: no answer"))??;
    check!(
        status == 200 && text.contains("/d"),
        "held response: {text}"
    );

    // The parked connections serve again on the same socket, one request and then two
    // pipelined in one write.
    let (status, text) = exchange(&mut idle, get_a).await?;
    check!(
        status == 200 && text.contains("web"),
        "after parking: {text}"
    );
    let (status, text) = exchange(&mut tls, get_a).await?;
    check!(
        status == 200 && text.contains("web"),
        "TLS after parking: {text}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pipelined = b"GET /p1 HTTP/1.1\r\nHost: shop.example\r\n\r\nGET /p2 HTTP/1.1\r\nHost: shop.example\r\n\r\n";
    // Both answers may come in one read: collect until the second one is there.
    idle.write_all(pipelined).await?;
    let mut answers = String::new();
    let collect = async {
        let mut buffer = [0u8; 16 * 1024];
        while answers.matches("HTTP/1.1 200").count() < 2 || !answers.contains("/p2") {
            let n = idle.read(&mut buffer).await?;
            check!(n > 0, "closed after {answers:?}");
            answers.push_str(&String::from_utf8_lossy(&buffer[..n]));
        }
        Ok::<_, anyhow::Error>(())
    };
    tokio::time::timeout(Duration::from_secs(10), collect)
        .await
        .map_err(|_| anyhow!("pipelined: no two answers"))??;
    let (p1, p2) = (answers.find("/p1"), answers.find("/p2"));
    check!(
        p1.is_some() && p1 < p2,
        "pipelined answers out of order: {answers}"
    );
    eventually("a connection parked a second time", || async {
        let parked = parked_total(admin).await?;
        check!(parked >= 3, "{parked} parked");
        Ok(())
    })
    .await?;
    Ok(())
}

/// Parked connections still end when they should: at the client idle timeout (a plain one in the
/// parking lot, a TLS one in its task), and at once when the proxy drains, while a request in
/// flight keeps the agent running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_connections_close_at_the_idle_timeout_and_on_drain() -> Result<()> {
    let get_a = b"GET /a HTTP/1.1\r\nHost: shop.example\r\n\r\n";
    let gate = Gate::new();
    let web = Backend::start_gated("web", gate.clone()).await?;

    // Idle timeout 3 s: parked after 1 s quiet, closed 3 s after the response.
    let proxy = TestProxy::start_with_admin(
        single_host("shop", "shop.example", &web)?,
        &["--client-idle-timeout", "3s"],
    )?;
    let admin = proxy.admin.context("no admin listener")?;
    let mut plain = tokio::net::TcpStream::connect(proxy.http).await?;
    let (status, text) = exchange(&mut plain, get_a).await?;
    check!(status == 200, "plain request: {text}");
    let (mut tls, _) = tls_connect(proxy.https, "shop.example", Tls::Any, &[b"http/1.1"]).await?;
    let (status, text) = exchange(&mut tls, get_a).await?;
    check!(status == 200, "TLS request: {text}");
    eventually("both connections parked", || async {
        let parked = parked_total(admin).await?;
        check!(parked == 2, "{parked} parked");
        Ok(())
    })
    .await?;
    let read = read_within(&mut plain, Duration::from_secs(15))
        .await
        .map_err(|_| anyhow!("the parked plain connection outlived its 3 s idle timeout"))?;
    check!(
        matches!(read, Ok(0)),
        "the parked plain connection must end with a FIN, got {read:?}"
    );
    let read = read_within(&mut tls, Duration::from_secs(15))
        .await
        .map_err(|_| anyhow!("the parked TLS connection outlived its 3 s idle timeout"))?;
    check!(
        matches!(&read, Ok(0))
            || read
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::UnexpectedEof),
        "the parked TLS connection must be closed, got {read:?}"
    );
    drop(proxy);

    // Drain: with the default idle timeout (60 s), a parked connection is closed at SIGTERM.
    let proxy = TestProxy::start_with_admin(single_host("shop", "shop.example", &web)?, &[])?;
    let admin = proxy.admin.context("no admin listener")?;
    let mut parked = tokio::net::TcpStream::connect(proxy.http).await?;
    let (status, text) = exchange(&mut parked, get_a).await?;
    check!(status == 200, "request before parking: {text}");
    let mut held = tokio::net::TcpStream::connect(proxy.http).await?;
    held.write_all(b"GET /held/x HTTP/1.1\r\nHost: shop.example\r\n\r\n")
        .await?;
    eventually(
        "the held request at the backend and the other connection parked",
        || async {
            check!(gate.arrived() == 1, "held request not there yet");
            let parked = parked_total(admin).await?;
            check!(parked == 1, "{parked} parked");
            Ok(())
        },
    )
    .await?;
    let pid = proxy.agent.pid();
    sigterm(pid)?;
    proxy.wait_for_log(&["SIGTERM"]).await?;
    let read = read_within(&mut parked, Duration::from_secs(5))
        .await
        .map_err(|_| anyhow!("the parked connection is still open after SIGTERM"))?;
    check!(
        matches!(read, Ok(0)),
        "the parked connection must end with a FIN at the drain, got {read:?}"
    );
    check!(
        !has_exited(pid)?,
        "the agent exited with a request in flight: {}",
        proxy.log()
    );
    gate.open();
    let (status, text) =
        tokio::time::timeout(Duration::from_secs(10), clients::read_response(&mut held))
            .await
            .map_err(|_| anyhow!("held request: no answer after the drain"))??;
    check!(
        status == 200 && text.contains("/held/x"),
        "held request: {text}"
    );
    Ok(())
}
