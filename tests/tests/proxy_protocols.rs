//! The L7 proxy end to end, what crosses it: TLS (certificates by SNI, ALPN, versions,
//! rotation), forwarding and hop-by-hop headers, WebSocket upgrades, streamed large bodies.
//!
//! The real `xdp-ingress` binary run L7-only (no `--interface`, so no privileges) on loopback
//! ports it picks, manifests written by each test to a temporary directory, backends served
//! in-process, and real clients (hyper, rustls, curl, tokio-tungstenite, raw TCP); the harness is
//! `xdp_ingress_tests::proxy`. The binary is `$XDP_INGRESS_BIN` or `target/<profile>/xdp-ingress`:
//! build it first with `cargo build -p ingress-userspace`.

use std::time::Duration;

use anyhow::{anyhow, ensure, Context as _, Result};
use futures_util::{SinkExt as _, StreamExt as _};
use http::{HeaderValue, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use xdp_ingress_tests::proxy::{
    backends::{Fnv, HttpBackend, PatternBody, WsBackend},
    clients::{self, request, send_h1, tls_connect, Tls},
    ensure_served, eventually,
    manifests::{
        backend_service, ingress, our_class, rule, tls_secret, with_annotation, with_tls, Manifests,
    },
    services_for, single_host, websocket, ws_round_trip, TestProxy,
};
use xdp_ingress_tests::{ensure_eq, ensure_ne};

/// Scenario 2: the certificate presented per SNI (exact, wildcard, unknown → self-signed
/// default), ALPN, TLS 1.2 and 1.3, a rotated Secret picked up without restart, a broken one
/// keeping the previous certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_certificates_by_sni_alpn_versions_and_rotation() -> Result<()> {
    let web = HttpBackend::start("web").await?;
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
    ensure_eq!(presented("shop.example").await?.certificate, ours[0]);
    ensure_eq!(presented("SHOP.example").await?.certificate, ours[0]);
    ensure_eq!(presented("blog.example").await?.certificate, ours[1]);
    ensure_eq!(presented("x.apps.example").await?.certificate, ours[2]);
    let default = presented("unknown.example").await?.certificate;
    ensure!(
        !ours.contains(&default),
        "an unknown name gets the default certificate"
    );
    ensure_eq!(
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
        ensure_eq!(
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
            ensure_eq!(handshake.version, Some(expected), "{sni}");
        }
        let (_, handshake) = tls_connect(proxy.https, "blog.example", versions, both).await?;
        ensure_eq!(handshake.certificate, ours[1], "{versions:?}");
    }
    for alpn in [both, &[&b"http/1.1"[..]][..]] {
        let reply = clients::https_get(proxy.https, "shop.example", "/tls", alpn).await?;
        ensure_served(&reply, "web", &format!("HTTPS with ALPN {alpn:?}"))?;
    }

    // Rotation: a new certificate in the Secret is served to new handshakes, no restart.
    let rotated = generate("shop.example")?;
    proxy.manifests.write("secrets.yaml", &secrets(&rotated))?;
    let rotated_der = rotated.cert.der().to_vec();
    eventually("the rotated certificate is presented", || async {
        let certificate = presented("shop.example").await?.certificate;
        ensure!(
            certificate == rotated_der,
            "expected the rotated certificate, seen the old one"
        );
        Ok(())
    })
    .await?;
    ensure_eq!(presented("blog.example").await?.certificate, ours[1]);

    // A broken Secret: reported, and the previous (rotated) certificate stays.
    let mut broken = secrets(&rotated);
    broken[0] = tls_secret("shop-tls", "this is not PEM", "neither is this");
    proxy.manifests.write("secrets.yaml", &broken)?;
    let refused = proxy
        .wait_for_log(&["certificate", "default/shop-tls"])
        .await?;
    ensure!(refused.contains("previous certificate stays"), "{refused}");
    ensure_eq!(presented("shop.example").await?.certificate, rotated_der);
    ensure_eq!(presented("blog.example").await?.certificate, ours[1]);
    let reply = clients::https_get(proxy.https, "shop.example", "/after", both).await?;
    ensure_served(&reply, "web", "HTTPS after a broken Secret")?;
    Ok(())
}

/// Scenario 3: forwarding headers set, hop-by-hop headers removed both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_and_hop_by_hop_headers() -> Result<()> {
    let web = HttpBackend::start("web").await?;
    let manifests = single_host("hdr", "hdr.example", &web)?;
    let proxy = TestProxy::start(manifests, &[])?;

    let ids = forwarding_set_and_hop_by_hop_removed_on_the_way_in(&proxy).await?;
    request_ids_differ_per_request(&proxy, &ids).await?;
    client_request_id_and_host_with_port_kept(&proxy).await?;
    forwarding_headers_over_tls(&proxy).await?;
    hop_by_hop_removed_on_the_way_out(&proxy).await?;
    Ok(())
}

/// One header value, as the backend reports what it saw.
fn one(v: &str) -> Vec<String> {
    vec![v.to_string()]
}

/// Plain HTTP/1.1 with hop-by-hop headers and an existing X-Forwarded-For: the forwarding
/// headers and an X-Request-ID are set, the rest kept, the hop-by-hop ones (also those the
/// client's Connection names) removed. Returns the request id the backend saw.
async fn forwarding_set_and_hop_by_hop_removed_on_the_way_in(
    proxy: &TestProxy,
) -> Result<Vec<String>> {
    let http_port = proxy.http.port().to_string();
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
    ensure_served(&reply, "web", "plain request")?;
    ensure_eq!(
        reply.seen_header("x-forwarded-for")?,
        one("203.0.113.9, 127.0.0.1")
    );
    ensure_eq!(reply.seen_header("x-real-ip")?, one("127.0.0.1"));
    ensure_eq!(reply.seen_header("x-forwarded-proto")?, one("http"));
    ensure_eq!(reply.seen_header("x-forwarded-host")?, one("hdr.example"));
    ensure_eq!(reply.seen_header("x-forwarded-port")?, one(&http_port));
    ensure_eq!(reply.seen_header("host")?, one("hdr.example"));
    ensure_eq!(reply.seen_header("x-kept")?, one("yes"));
    let ids = reply.seen_header("x-request-id")?;
    ensure!(
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
        ensure_eq!(
            reply.seen_header(hop)?,
            Vec::<String>::new(),
            "{hop} must not reach the backend: {}",
            reply.text()
        );
    }
    let connection = reply.seen_header("connection")?;
    ensure!(
        connection
            .iter()
            .all(|v| !v.to_ascii_lowercase().contains("x-hop-a")),
        "the client's Connection header must not reach the backend: {connection:?}"
    );
    Ok(ids)
}

/// A second request gets an X-Request-ID other than `ids`.
async fn request_ids_differ_per_request(proxy: &TestProxy, ids: &[String]) -> Result<()> {
    let second = send_h1(
        proxy.http,
        request("hdr.example", "/headers").body(clients::empty())?,
    )
    .await?;
    ensure_ne!(
        second.seen_header("x-request-id")?,
        ids,
        "request ids differ per request"
    );
    Ok(())
}

/// An existing X-Request-ID is kept; a Host with a port reaches the backend unchanged.
async fn client_request_id_and_host_with_port_kept(proxy: &TestProxy) -> Result<()> {
    let http_port = proxy.http.port().to_string();
    let host_with_port = format!("HDR.example:{http_port}");
    let reply = send_h1(
        proxy.http,
        request(&host_with_port, "/headers")
            .header("x-request-id", "client-chosen-id-42")
            .body(clients::empty())?,
    )
    .await?;
    ensure_served(&reply, "web", "request with an id")?;
    ensure_eq!(
        reply.seen_header("x-request-id")?,
        one("client-chosen-id-42")
    );
    ensure_eq!(reply.seen_header("host")?, one(&host_with_port));
    ensure_eq!(reply.seen_header("x-forwarded-host")?, one(&host_with_port));
    ensure_eq!(reply.seen_header("x-forwarded-for")?, one("127.0.0.1"));
    Ok(())
}

/// Over TLS, HTTP/1.1 and HTTP/2 (whose :authority becomes Host): the forwarding headers say
/// https and the HTTPS port.
async fn forwarding_headers_over_tls(proxy: &TestProxy) -> Result<()> {
    let https_port = proxy.https.port().to_string();
    for alpn in [&[&b"http/1.1"[..]][..], &[&b"h2"[..]][..]] {
        let reply = clients::https_get(proxy.https, "hdr.example", "/tls-headers", alpn).await?;
        ensure_served(&reply, "web", &format!("TLS {alpn:?}"))?;
        ensure_eq!(reply.seen_header("x-forwarded-proto")?, one("https"));
        ensure_eq!(reply.seen_header("x-forwarded-port")?, one(&https_port));
        ensure_eq!(reply.seen_header("host")?, one("hdr.example"), "{alpn:?}");
        ensure_eq!(reply.seen_header("x-forwarded-host")?, one("hdr.example"));
        ensure_eq!(reply.seen_header("x-real-ip")?, one("127.0.0.1"));
    }
    Ok(())
}

/// Hop-by-hop headers of the backend's response (also those its Connection names) do not reach
/// the client; the others do.
async fn hop_by_hop_removed_on_the_way_out(proxy: &TestProxy) -> Result<()> {
    let reply = send_h1(
        proxy.http,
        request("hdr.example", "/hop-response").body(clients::empty())?,
    )
    .await?;
    ensure_served(&reply, "web", "hop-by-hop response")?;
    ensure_eq!(
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
        ensure!(
            !reply.headers.contains_key(hop),
            "{hop} must not reach the client: {:?}",
            reply.headers
        );
    }
    for value in reply.headers.get_all("connection") {
        ensure!(
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
        ensure_eq!(reply, Message::text(format!("ws:burst {i}")));
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
    let bulk = HttpBackend::start("bulk").await?;
    let manifests = single_host("bulk", "bulk.example", &bulk)?;
    // Without ingress-nginx's default body limit (1m): the point here is streaming.
    let mut unlimited = ingress(
        "bulk",
        &[rule(Some("bulk.example"), &[("/", "Prefix", "bulk")])],
    );
    with_annotation(
        &mut unlimited,
        "nginx.ingress.kubernetes.io/proxy-body-size",
        "0",
    );
    manifests.write("bulk.yaml", &[unlimited])?;
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
            ensure!(reply.status == StatusCode::OK, "{:?}", reply.text());
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
            ensure!(response.status() == StatusCode::OK, "{response:?}");
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
    ensure_eq!(bytes, Some(SIZE), "upload: bytes the backend received");
    ensure_eq!(fnv, Some(expected_fnv), "upload: checksum at the backend");
    let (bytes, fnv) = download(SIZE).await?;
    ensure_eq!(bytes, SIZE, "download: bytes the client received");
    ensure_eq!(fnv, expected_fnv, "download: checksum at the client");

    let (hwm, rss) = proxy.memory_kib()?;
    eprintln!("agent memory: VmHWM {baseline_hwm} → {hwm} KiB, VmRSS {baseline_rss} → {rss} KiB");
    ensure!(
        hwm < baseline_hwm + ALLOWED_GROWTH_KIB,
        "the agent's peak memory grew from {baseline_hwm} KiB to {hwm} KiB (RSS {baseline_rss} \
         → {rss} KiB) for 2 × 100 MiB: bodies are buffered, not streamed"
    );
    Ok(())
}
