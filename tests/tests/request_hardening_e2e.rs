//! Requests that once got past the routing rules or the head guard, against the real agent
//! (L7-only on loopback): dot segments and encoded dots, upgrades that turn a connection into a
//! tunnel, and the protocol details a backend could be confused by. Each case failed on the
//! proxy before these fixes.
//!
//! The Ingress: host `h.example`, `Prefix /public` → an HTTP backend that echoes what it saw,
//! `Prefix /raw` → a raw backend that records request heads and switches protocols when asked.
//! Nothing routes `/admin`.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{anyhow, ensure, Context as _, Result};
use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};
use xdp_ingress_tests::proxy::{
    backends::HttpBackend,
    clients::{collect, raw_exchange, read_response},
    manifests::{backend_service, ingress, our_class, rule, Manifests},
    TestProxy,
};
use xdp_ingress_tests::{ensure_eq, ensure_ne};

const HOST: &str = "h.example";

/// How long to wait for something that should happen at once (a loaded machine's bound).
const PROMPT: Duration = Duration::from_secs(10);

async fn start(extra: &[&str]) -> Result<(TestProxy, HttpBackend, RawBackend)> {
    let backend = HttpBackend::start("public").await?;
    let raw = RawBackend::start().await?;
    let manifests = Manifests::new()?;
    manifests.write("class.yaml", &[our_class()])?;
    let mut services = backend_service("public", &[backend.addr]);
    services.extend(backend_service("raw", &[raw.addr]));
    manifests.write("services.yaml", &services)?;
    manifests.write(
        "ingress.yaml",
        &[ingress(
            "site",
            &[rule(
                Some(HOST),
                &[("/public", "Prefix", "public"), ("/raw", "Prefix", "raw")],
            )],
        )],
    )?;
    Ok((TestProxy::start(manifests, extra)?, backend, raw))
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n").into_bytes()
}

/// A request carrying both `Content-Length` and `Transfer-Encoding`.
fn both_lengths(line_end: &str) -> Vec<u8> {
    let e = line_end;
    format!(
        "POST /public/both HTTP/1.1{e}Host: {HOST}{e}Content-Length: 4{e}\
         Transfer-Encoding: chunked{e}{e}0\r\n\r\n"
    )
    .into_bytes()
}

fn upgrade_request(protocol: &str) -> Vec<u8> {
    format!(
        "GET /raw/up HTTP/1.1\r\nHost: {HOST}\r\nConnection: Upgrade, HTTP2-Settings\r\n\
         Upgrade: {protocol}\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
    )
    .into_bytes()
}

/// Writes `bytes` on `stream` and reads one response.
async fn ask(stream: &mut TcpStream, bytes: &[u8]) -> Result<(u16, String)> {
    stream.write_all(bytes).await?;
    tokio::time::timeout(PROMPT, read_response(stream))
        .await
        .map_err(|_| anyhow!("no answer within {PROMPT:?}"))?
}

/// Reads a response head (up to the empty line) and nothing more.
async fn read_head(stream: &mut TcpStream) -> Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(PROMPT, stream.read(&mut byte))
            .await
            .map_err(|_| anyhow!("no response head within {PROMPT:?}"))??;
        anyhow::ensure!(n == 1, "closed after {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// Reads until the proxy closes the connection; how long that took.
async fn closed_within(stream: &mut TcpStream, bound: Duration) -> Result<Duration> {
    let started = tokio::time::Instant::now();
    let mut buffer = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(started + bound, stream.read(&mut buffer)).await {
            Err(_) => return Err(anyhow!("still open after {bound:?}")),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

fn body_json(text: &str) -> Result<Value> {
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .context("no body")?;
    serde_json::from_str(body).with_context(|| format!("not JSON: {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_path_is_decided_once_for_routing_and_for_the_endpoint() -> Result<()> {
    let (proxy, backend, _raw) = start(&[]).await?;
    // (request target, status, the path the endpoint sees)
    let cases: &[(&str, u16, Option<&str>)] = &[
        ("/public/../admin", 404, None),
        ("/public/%2e%2e/admin", 404, None),
        ("/public/%2E%2E/admin", 404, None),
        ("/public/.%2e/admin", 404, None),
        ("/public/./../admin", 404, None),
        ("/public//../../admin", 400, None),
        (
            "/public/./a/../b?q=%2e%2e/x",
            200,
            Some("/public/b?q=%2e%2e/x"),
        ),
        ("//public//a", 200, Some("/public/a")),
        ("/public/%61%7e", 200, Some("/public/a~")),
        ("/public/a%20b", 200, Some("/public/a%20b")),
        ("/public/..;/admin", 400, None),
        ("/public%2F..%2Fadmin", 400, None),
        ("/public/%2e%2e%2fadmin", 400, None),
        ("/../public/a", 400, None),
        ("/public/a%zz", 400, None),
        ("/public\\..\\admin", 400, None),
        ("/public/caf\u{e9}/./x", 200, Some("/public/caf\u{e9}/x")),
    ];
    for &(target, status, seen) in cases {
        let (code, text) = raw_exchange(proxy.http, &get(target)).await?;
        ensure_eq!(code, status, "{target}: {text}");
        if let Some(seen) = seen {
            ensure_eq!(body_json(&text)?["path"], seen, "{target}");
        }
    }
    // HTTP/2: the same decision on `:path`.
    let stream = TcpStream::connect(proxy.http).await?;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    for (target, status) in [
        ("/public/../admin", StatusCode::NOT_FOUND),
        ("/public/%2e%2e/admin", StatusCode::NOT_FOUND),
        ("/public/x/..", StatusCode::OK),
    ] {
        let request = Request::get(format!("http://{HOST}{target}")).body(Empty::<Bytes>::new())?;
        let reply = collect(sender.send_request(request).await?).await?;
        ensure_eq!(reply.status, status, "h2 {target}: {}", reply.text());
    }
    let seen = backend.seen();
    ensure!(
        seen.iter()
            .all(|path| !path.contains("admin") && !path.contains("..")),
        "the endpoint saw {seen:?}"
    );
    ensure!(seen.contains(&"/public/".to_string()), "{seen:?}");
    // Opting in keeps encoded slashes, encoded, inside a segment.
    drop(proxy);
    let (proxy, backend, _raw) = start(&["--allow-encoded-slashes"]).await?;
    let (code, text) = raw_exchange(proxy.http, &get("/public/group%2fproject/./x")).await?;
    ensure_eq!(code, 200, "{text}");
    ensure_eq!(body_json(&text)?["path"], "/public/group%2Fproject/x");
    let (code, _) = raw_exchange(proxy.http, &get("/public%2F..%2Fadmin")).await?;
    ensure_eq!(
        code,
        404,
        "a first segment `public%2F..%2Fadmin` is no `/public`"
    );
    drop(backend);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_allowed_upgrades_switch_and_a_refused_one_leaves_the_rules_in_charge() -> Result<()> {
    let (proxy, _backend, raw) = start(&["--client-header-timeout", "1s"]).await?;
    for protocol in ["h2c", "foo", "websocket, h2c"] {
        let mut stream = TcpStream::connect(proxy.http).await?;
        let (code, text) = ask(&mut stream, &upgrade_request(protocol)).await?;
        ensure_eq!(
            code,
            200,
            "Upgrade: {protocol}: passed as a plain request: {text}"
        );
        let head = raw
            .heads()
            .last()
            .cloned()
            .unwrap_or_default()
            .to_lowercase();
        ensure!(
            !head.contains("upgrade") && !head.contains("http2-settings"),
            "Upgrade: {protocol}: the endpoint saw {head:?}"
        );
        // Still HTTP/1.1 under the rules: no tunnel to the endpoint.
        let (code, text) = ask(&mut stream, &get("/admin/secret")).await?;
        ensure_eq!(code, 404, "after Upgrade: {protocol}: {text}");
        let (code, text) = ask(&mut stream, &both_lengths("\r\n")).await?;
        ensure_eq!(code, 400, "after Upgrade: {protocol}: {text}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_refused_upgrade_the_header_timeout_still_applies() -> Result<()> {
    let (proxy, _backend, _raw) = start(&["--client-header-timeout", "1s"]).await?;
    let mut stream = TcpStream::connect(proxy.http).await?;
    let (code, _) = ask(&mut stream, &upgrade_request("h2c")).await?;
    ensure_eq!(code, 200);
    stream.write_all(b"GET /raw/slow HT").await?;
    let took = closed_within(&mut stream, PROMPT).await?;
    ensure!(took >= Duration::from_millis(900), "closed after {took:?}");

    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_switches_and_its_tunnel_outlives_the_header_timeout() -> Result<()> {
    let (proxy, _backend, _raw) = start(&["--client-header-timeout", "1s"]).await?;
    let mut stream = TcpStream::connect(proxy.http).await?;
    stream
        .write_all(
            format!(
                "GET /raw/ws HTTP/1.1\r\nHost: {HOST}\r\nConnection: Upgrade\r\n\
                 Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
    let head = read_head(&mut stream).await?;
    ensure!(head.starts_with("HTTP/1.1 101 "), "{head}");
    // Bytes that would be a stalled HTTP head, then a pause past the header timeout.
    stream.write_all(b"GET / HT").await?;
    let mut reply = [0u8; 64];
    let n = tokio::time::timeout(PROMPT, stream.read(&mut reply)).await??;
    ensure_eq!(&reply[..n], b"tunnel: GET / HT");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stream.write_all(b"ping").await?;
    let n = tokio::time::timeout(PROMPT, stream.read(&mut reply)).await??;
    ensure_eq!(
        &reply[..n],
        b"tunnel: ping",
        "the tunnel outlived the header timeout"
    );

    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unasked_switch_is_a_bad_gateway_and_connect_is_refused() -> Result<()> {
    let (proxy, _backend, _raw) = start(&[]).await?;
    // A 101 nobody asked for would make the connection a tunnel.
    let (code, text) = raw_exchange(proxy.http, &get("/raw/force-101")).await?;
    ensure_eq!(code, 502, "{text}");
    // CONNECT is not proxied.
    let (code, text) = raw_exchange(
        proxy.http,
        format!("CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\n\r\n").as_bytes(),
    )
    .await?;
    ensure_eq!(code, 405, "{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_cookie_fields_reach_the_endpoint_as_one_line() -> Result<()> {
    let (proxy, _backend, _raw) = start(&[]).await?;
    // HTTP/2 cookie fields reach an HTTP/1.1 endpoint as one line (RFC 9113 §8.2.3).
    let stream = TcpStream::connect(proxy.http).await?;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let mut request =
        Request::get(format!("http://{HOST}/public/cookies")).body(Empty::<Bytes>::new())?;
    request.headers_mut().append(header::COOKIE, "a=1".parse()?);
    request.headers_mut().append(header::COOKIE, "b=2".parse()?);
    let reply = collect(sender.send_request(request).await?).await?;
    ensure_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    ensure_eq!(reply.seen_header("cookie")?, ["a=1; b=2"]);

    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_names_with_underscores_are_dropped() -> Result<()> {
    let (proxy, _backend, _raw) = start(&[]).await?;
    let (code, text) = raw_exchange(
        proxy.http,
        format!(
            "GET /public/u HTTP/1.1\r\nHost: {HOST}\r\nX_Real_IP: 203.0.113.66\r\n\
             Transfer_Encoding: chunked\r\nX-Kept: yes\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    ensure_eq!(code, 200, "{text}");
    let headers = &body_json(&text)?["headers"];
    ensure!(headers.get("x_real_ip").is_none(), "{headers}");
    ensure!(headers.get("transfer_encoding").is_none(), "{headers}");
    ensure_eq!(headers["x-kept"][0], "yes");
    ensure_ne!(headers["x-real-ip"][0], "203.0.113.66");

    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunked_body_is_the_clients_error() -> Result<()> {
    let (proxy, _backend, _raw) = start(&[]).await?;
    let (code, text) = raw_exchange(
        proxy.http,
        format!(
            "POST /public/upload HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n\
             zz\r\nhello\r\n0\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    ensure_eq!(code, 400, "{text}");

    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_line_feed_heads_are_guarded_like_crlf_ones() -> Result<()> {
    let (proxy, backend, _raw) = start(&[]).await?;
    // Pipelined: the second head carries both lengths.
    let mut stream = TcpStream::connect(proxy.http).await?;
    let mut pipelined = format!("GET /public/first HTTP/1.1\nHost: {HOST}\n\n").into_bytes();
    pipelined.extend_from_slice(&both_lengths("\n"));
    stream.write_all(&pipelined).await?;
    let mut answers = Vec::new();
    tokio::time::timeout(PROMPT, stream.read_to_end(&mut answers))
        .await
        .map_err(|_| anyhow!("the connection stayed open"))??;
    let answers = String::from_utf8_lossy(&answers);
    let statuses: Vec<&str> = answers
        .match_indices("HTTP/1.1 ")
        .map(|(at, _)| &answers[at + 9..at + 12])
        .collect();
    ensure_eq!(statuses, ["200", "400"], "{answers}");
    ensure!(
        !backend.saw("/public/both"),
        "the request with both lengths reached the endpoint"
    );
    Ok(())
}

/// A raw HTTP/1.1 backend that records every request head exactly as it arrived, and switches
/// protocols whenever asked: it answers `101` to any request with an `Upgrade` header (echoing
/// its protocol), and to `GET /raw/force-101` without one. After a `101` it answers every read
/// with `tunnel: <bytes>`. Other requests get `200` with the body `raw ok` (request bodies are
/// not expected).
pub struct RawBackend {
    /// Where it listens.
    pub addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    accept: JoinHandle<()>,
}

impl RawBackend {
    /// Starts it on 127.0.0.1:0.
    pub async fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let heads = Arc::new(Mutex::new(Vec::new()));
        let recorded = heads.clone();
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(raw_connection(stream, recorded.clone()));
            }
        });
        Ok(Self {
            addr,
            heads,
            accept,
        })
    }

    /// Every request head received so far, as text.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().map(|h| h.clone()).unwrap_or_default()
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn raw_connection(mut stream: TcpStream, heads: Arc<Mutex<Vec<String>>>) {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") else {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&received[..end + 4]).into_owned();
        received.drain(..end + 4);
        if let Ok(mut heads) = heads.lock() {
            heads.push(head.clone());
        }
        let upgrade = head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("upgrade")
                .then(|| value.trim().to_string())
        });
        let upgrade = upgrade.or_else(|| {
            head.starts_with("GET /raw/force-101 ")
                .then(|| "h2c".to_string())
        });
        let Some(protocol) = upgrade else {
            let answer = "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nraw ok";
            if stream.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
            continue;
        };
        let answer = format!(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {protocol}\r\n\r\n"
        );
        if stream.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
        // The other protocol: whatever arrives is answered, never parsed as HTTP.
        loop {
            if !received.is_empty() {
                let reply = [b"tunnel: ".as_slice(), &received].concat();
                received.clear();
                if stream.write_all(&reply).await.is_err() {
                    return;
                }
            }
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    }
}
