//! `proxy-body-size`, the upstream timeouts and `proxy-next-upstream`: what the client gets
//! (413, 504, the backend that answered) and what the backends saw, for ingress-nginx's
//! defaults and for annotated values. Backends that misbehave on purpose (one that answers a
//! fixed status, one that never reads the body, a port whose accept queue is full) are written
//! here; timeouts are asserted by outcome with wide margins (a 1 s timeout against a 3 s delay),
//! never by measuring time.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use anyhow::{ensure, Result};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{io::AsyncReadExt as _, net::TcpListener, task::JoinHandle};
use xdp_ingress_tests::{
    ensure_eq,
    proxy::{
        backends::{Gate, HttpBackend, RefusingPort},
        clients::{empty, get, pooled, raw_exchange, request, send_h1},
        ensure_served,
        manifests::{backend_service, rule},
    },
};

use super::{annotated, start};

/// An HTTP/1.1 backend answering every request `status` with its name, counting them.
struct StatusBackend {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    accept: JoinHandle<()>,
}

impl StatusBackend {
    async fn start(name: &'static str, status: StatusCode) -> Result<Self> {
        Self::slow(name, status, std::time::Duration::ZERO).await
    }

    /// Like [`StatusBackend::start`], answering after `delay`.
    async fn slow(
        name: &'static str,
        status: StatusCode,
        delay: std::time::Duration,
    ) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let hits = counted.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let hits = hits.clone();
                        async move {
                            hits.fetch_add(1, Ordering::SeqCst);
                            let _ = request.into_body().collect().await;
                            tokio::time::sleep(delay).await;
                            let mut response = Response::new(Full::new(Bytes::from(name)));
                            *response.status_mut() = status;
                            response
                                .headers_mut()
                                .insert("x-backend", http::HeaderValue::from_static(name));
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self { addr, hits, accept })
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for StatusBackend {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// A POST of `len` bytes with `Content-Length`, head only when `head_only`.
fn post_with_length(host: &str, len: usize, head_only: bool) -> Vec<u8> {
    let mut bytes =
        format!("POST /upload HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len}\r\n\r\n")
            .into_bytes();
    if !head_only {
        bytes.extend(std::iter::repeat_n(b'x', len));
    }
    bytes
}

/// A chunked POST of `chunks` chunks of 500 bytes.
fn chunked_post(host: &str, chunks: usize) -> Vec<u8> {
    let mut bytes =
        format!("POST /upload HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n")
            .into_bytes();
    for _ in 0..chunks {
        bytes.extend_from_slice(b"1f4\r\n");
        bytes.extend(std::iter::repeat_n(b'y', 500));
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(b"0\r\n\r\n");
    bytes
}

/// The body size the backend reported for an `/upload`.
fn uploaded(text: &str) -> Option<u64> {
    let body = &text[text.find("\r\n\r\n")? + 4..];
    serde_json::from_str::<serde_json::Value>(body).ok()?["bytes"].as_u64()
}

/// ingress-nginx's default limit (1m), a smaller one (8k) and none (0): a declared length over
/// the limit is refused 413 before the backend hears of the request; a chunked body is counted
/// as it streams and refused when it passes the limit; a body at the limit goes through whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_body_size_limits_declared_and_chunked_bodies() -> Result<()> {
    let web = HttpBackend::start("web").await?;
    let host = |name: &'static str| [rule(Some(name), &[("/", "Prefix", "web")])];
    let proxy = start(
        &[&web],
        &[],
        &[
            annotated("default", &host("default.example"), &[]),
            annotated(
                "small",
                &host("small.example"),
                &[("proxy-body-size", "8k"), ("client-body-buffer-size", "1k")],
            ),
            annotated(
                "unlimited",
                &host("unlimited.example"),
                &[("proxy-body-size", "0")],
            ),
        ],
    )?;
    const MIB: usize = 1024 * 1024;

    // Declared over the limit: 413 from the head alone; the backend never sees the request.
    for (host, len) in [
        ("default.example", MIB + 1),
        ("small.example", 8 * 1024 + 1),
    ] {
        let (status, text) = raw_exchange(proxy.http, &post_with_length(host, len, true)).await?;
        ensure_eq!(status, 413, "{host}, Content-Length {len}: {text}");
        ensure!(text.contains("exceeds the limit"), "{text}");
    }
    ensure!(
        web.seen().is_empty(),
        "refused before the backend: {:?}",
        web.seen()
    );

    // At the limit, and without one: the whole body reaches the backend.
    for (host, len) in [
        ("default.example", MIB),
        ("small.example", 8 * 1024),
        ("unlimited.example", 2 * MIB + 1),
    ] {
        let (status, text) = raw_exchange(proxy.http, &post_with_length(host, len, false)).await?;
        ensure_eq!(status, 200, "{host}, Content-Length {len}");
        ensure_eq!(
            uploaded(&text),
            Some(len as u64),
            "{host}: bytes the backend got"
        );
    }

    // Chunked: 10 000 bytes pass the 8k limit while streaming (413); 8 000 bytes go through.
    let (status, text) = raw_exchange(proxy.http, &chunked_post("small.example", 20)).await?;
    ensure_eq!(status, 413, "chunked 10000 bytes over 8k: {text}");
    let (status, text) = raw_exchange(proxy.http, &chunked_post("small.example", 16)).await?;
    ensure_eq!(status, 200, "chunked 8000 bytes under 8k: {text}");
    ensure_eq!(uploaded(&text), Some(8000));
    let (status, text) = raw_exchange(proxy.http, &chunked_post("default.example", 40)).await?;
    ensure_eq!(status, 200, "chunked 20000 bytes under 1m: {text}");
    ensure_eq!(uploaded(&text), Some(20_000));
    Ok(())
}

/// `proxy-read-timeout`: a backend slower than it answers 504 (as nginx does), a faster one is
/// served, and the default (60 s) waits; between two reads of the body, too: a body that stops
/// for longer is cut, not completed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_read_timeout_answers_504_and_cuts_stalled_bodies() -> Result<()> {
    let gate = Gate::new();
    let web = HttpBackend::start_gated("web", gate.clone()).await?;
    let host = |name: &'static str| [rule(Some(name), &[("/", "Prefix", "web")])];
    let proxy = start(
        &[&web],
        &[],
        &[
            annotated("default", &host("default.example"), &[]),
            annotated(
                "quick",
                &host("quick.example"),
                &[("proxy-read-timeout", "1")],
            ),
        ],
    )?;
    let client = pooled();
    let reply = get(&client, proxy.http, "quick.example", "/sleep/3000").await?;
    ensure_eq!(
        reply.status,
        StatusCode::GATEWAY_TIMEOUT,
        "{:?}",
        reply.text()
    );
    ensure!(
        reply.text().contains("did not answer in time"),
        "{:?}",
        reply.text()
    );
    ensure_served(
        &get(&client, proxy.http, "quick.example", "/sleep/100").await?,
        "web",
        "quicker than the timeout",
    )?;
    ensure_served(
        &get(&client, proxy.http, "default.example", "/sleep/3000").await?,
        "web",
        "the default read timeout is 60 s",
    )?;

    // The head and half the body, then nothing (the gate stays closed): cut after 1 s.
    let reply = send_h1(
        proxy.http,
        request("quick.example", "/held-body/200000").body(empty())?,
    )
    .await;
    ensure!(
        reply.is_err(),
        "a body that stalls past the read timeout is cut, not completed: {:?}",
        reply.map(|r| (r.status, r.body.len()))
    );
    gate.open();
    let reply = send_h1(
        proxy.http,
        request("quick.example", "/held-body/200000").body(empty())?,
    )
    .await?;
    ensure_eq!(reply.body.len(), 200_000, "an open gate: the whole body");
    Ok(())
}

/// `proxy-send-timeout`: an endpoint that takes the head and then reads nothing of a large body
/// is given up after the timeout with 504.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_send_timeout_answers_504_when_the_endpoint_stops_reading() -> Result<()> {
    // Reads the request head, then holds the connection without reading.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let deaf = listener.local_addr()?;
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut head = [0u8; 1024];
            let _ = stream.read(&mut head).await;
            held.push(stream);
        }
    });
    let proxy = start(
        &[],
        &backend_service("deaf", &[deaf]),
        &[annotated(
            "deaf",
            &[rule(Some("deaf.example"), &[("/", "Prefix", "deaf")])],
            &[
                ("proxy-body-size", "0"),
                ("proxy-send-timeout", "1"),
                ("proxy-read-timeout", "30"),
            ],
        )],
    )?;
    // 64 MiB: far more than the socket buffers between the proxy and the endpoint hold.
    let body = xdp_ingress_tests::proxy::backends::PatternBody::new(64 << 20);
    let reply = send_h1(
        proxy.http,
        Request::post("/upload")
            .header(http::header::HOST, "deaf.example")
            .header(http::header::CONTENT_LENGTH, 64u64 << 20)
            .body(body)?,
    )
    .await?;
    ensure_eq!(
        reply.status,
        StatusCode::GATEWAY_TIMEOUT,
        "{:?}",
        reply.text()
    );
    holder.abort();
    Ok(())
}

/// `proxy-next-upstream`: by default (`error timeout`) a 503 of one endpoint reaches the
/// client; with `http_503` the request goes to the next endpoint (a GET; a POST only with
/// `non_idempotent`, and never one whose body was streamed); `-tries: 1` tries one; a refused
/// connection goes to the next endpoint by default, and with `off` it does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_next_upstream_tries_the_next_endpoint_as_nginx() -> Result<()> {
    let failing = StatusBackend::start("failing", StatusCode::SERVICE_UNAVAILABLE).await?;
    let good = StatusBackend::start("good", StatusCode::OK).await?;
    // One refusing port per Service: an endpoint that refused is skipped for a while (passive
    // health), and endpoints are shared by address.
    let (refusing, refusing_too) = (RefusingPort::new()?, RefusingPort::new()?);
    let mut services = backend_service("pair", &[failing.addr, good.addr]);
    services.extend(backend_service("half-dead", &[refusing.addr, good.addr]));
    services.extend(backend_service(
        "half-dead-too",
        &[refusing_too.addr, good.addr],
    ));
    let host =
        |name: &'static str, service: &'static str| [rule(Some(name), &[("/", "Prefix", service)])];
    let proxy = start(
        &[],
        &services,
        &[
            annotated("default", &host("default.example", "pair"), &[]),
            annotated(
                "retry",
                &host("retry.example", "pair"),
                &[("proxy-next-upstream", "error timeout http_503")],
            ),
            annotated(
                "retry-all",
                &host("retry-all.example", "pair"),
                &[("proxy-next-upstream", "http_503 non_idempotent")],
            ),
            annotated(
                "one-try",
                &host("one-try.example", "pair"),
                &[
                    ("proxy-next-upstream", "http_503"),
                    ("proxy-next-upstream-tries", "1"),
                ],
            ),
            annotated(
                "dead-default",
                &host("dead-default.example", "half-dead"),
                &[],
            ),
            annotated(
                "dead-off",
                &host("dead-off.example", "half-dead-too"),
                &[("proxy-next-upstream", "off")],
            ),
        ],
    )?;
    const N: usize = 12;
    // The answers of N requests to `host` by `method`, with a body or not: (200s, 503s, 502s).
    let send = |host: &'static str, method: &'static str, body: bool| async move {
        let mut counts = (0, 0, 0);
        for _ in 0..N {
            let builder = Request::builder()
                .method(method)
                .uri("/x")
                .header(http::header::HOST, host);
            let reply = if body {
                send_h1(
                    proxy.http,
                    builder.body(Full::new(Bytes::from_static(b"data")))?,
                )
                .await?
            } else {
                send_h1(proxy.http, builder.body(empty())?).await?
            };
            match reply.status.as_u16() {
                200 => counts.0 += 1,
                503 => counts.1 += 1,
                502 => counts.2 += 1,
                other => anyhow::bail!("{host} {method}: unexpected {other}"),
            }
        }
        Ok::<_, anyhow::Error>(counts)
    };

    let (ok, unavailable, _) = send("default.example", "GET", false).await?;
    ensure!(
        unavailable > 0 && ok > 0,
        "default: a 503 is passed on ({ok} ok, {unavailable} 503)"
    );
    let before = failing.hits();
    ensure_eq!(
        send("retry.example", "GET", false).await?,
        (N, 0, 0),
        "http_503: every GET ends at the good endpoint"
    );
    ensure!(
        failing.hits() > before,
        "the failing endpoint was tried first at times"
    );
    let (_, unavailable, _) = send("retry.example", "POST", false).await?;
    ensure!(
        unavailable > 0,
        "a POST is not sent again without non_idempotent"
    );
    ensure_eq!(
        send("retry-all.example", "POST", false).await?,
        (N, 0, 0),
        "non_idempotent: POSTs are sent again too"
    );
    let (_, unavailable, _) = send("retry-all.example", "PUT", true).await?;
    ensure!(
        unavailable > 0,
        "a request whose body was streamed is never sent again"
    );
    let (_, unavailable, _) = send("one-try.example", "GET", false).await?;
    ensure!(
        unavailable > 0,
        "proxy-next-upstream-tries 1: no second try"
    );
    ensure_eq!(
        send("dead-default.example", "GET", false).await?,
        (N, 0, 0),
        "error (default): a refused connection goes to the next endpoint"
    );
    let (_, _, bad_gateway) = send("dead-off.example", "GET", false).await?;
    ensure!(
        bad_gateway > 0,
        "off: a refused connection is the client's 502"
    );
    Ok(())
}

/// A port whose accept queue is full with a connection nobody accepts: the kernel drops every
/// new SYN, so connecting to it times out.
struct Blackhole {
    addr: SocketAddr,
    _listener: TcpListener,
    _queued: tokio::net::TcpStream,
}

impl Blackhole {
    async fn new() -> Result<Self> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind("127.0.0.1:0".parse()?)?;
        let listener = socket.listen(0)?;
        let addr = listener.local_addr()?;
        let queued = tokio::net::TcpStream::connect(addr).await?;
        let probe = tokio::time::timeout(
            std::time::Duration::from_millis(300),
            tokio::net::TcpStream::connect(addr),
        );
        ensure!(
            probe.await.is_err(),
            "the backlog trick does not hold SYNs here"
        );
        Ok(Self {
            addr,
            _listener: listener,
            _queued: queued,
        })
    }
}

/// `proxy-connect-timeout`: an endpoint that never completes the handshake answers 504 (nginx's
/// answer to an upstream timeout) after the route's timeout; with the default (5 s) it answers
/// 504 too, after the annotated one (both sent at once: an order, with 4 s between them, not a
/// measured time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_connect_timeout_answers_504_per_route() -> Result<()> {
    let (quick, patient) = (Blackhole::new().await?, Blackhole::new().await?);
    let mut services = backend_service("quick", &[quick.addr]);
    services.extend(backend_service("patient", &[patient.addr]));
    let proxy = start(
        &[],
        &services,
        &[
            annotated(
                "quick",
                &[rule(Some("quick.example"), &[("/", "Prefix", "quick")])],
                &[("proxy-connect-timeout", "1")],
            ),
            annotated(
                "patient",
                &[rule(Some("patient.example"), &[("/", "Prefix", "patient")])],
                &[],
            ),
        ],
    )?;
    let addr = proxy.http;
    let patient = tokio::spawn(async move { get(&pooled(), addr, "patient.example", "/").await });
    let quick = get(&pooled(), addr, "quick.example", "/").await?;
    ensure_eq!(
        quick.status,
        StatusCode::GATEWAY_TIMEOUT,
        "{:?}",
        quick.text()
    );
    ensure!(
        !patient.is_finished(),
        "the default connect timeout (5 s) is longer than the annotated 1 s"
    );
    let patient = patient.await??;
    ensure_eq!(
        patient.status,
        StatusCode::GATEWAY_TIMEOUT,
        "{:?}",
        patient.text()
    );
    Ok(())
}

/// `timeout` (in the default `error timeout`) sends a GET whose endpoint did not answer within
/// the read timeout to the next endpoint; `proxy-next-upstream-timeout` stops that once its
/// budget is spent (here by the first try's own 1 s timeout), and the client gets the 504.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_next_upstream_timeout_bounds_the_tries() -> Result<()> {
    let slow =
        StatusBackend::slow("slow", StatusCode::OK, std::time::Duration::from_secs(4)).await?;
    let good = StatusBackend::start("good", StatusCode::OK).await?;
    let services = backend_service("pair", &[slow.addr, good.addr]);
    let host = |name: &'static str| [rule(Some(name), &[("/", "Prefix", "pair")])];
    let proxy = start(
        &[],
        &services,
        &[
            annotated(
                "retry",
                &host("retry.example"),
                &[("proxy-read-timeout", "1")],
            ),
            annotated(
                "budget",
                &host("budget.example"),
                &[
                    ("proxy-read-timeout", "1"),
                    ("proxy-next-upstream-timeout", "1"),
                ],
            ),
        ],
    )?;
    const N: usize = 4;
    let mut timed_out = 0;
    for i in 0..N {
        let reply = get(&pooled(), proxy.http, "retry.example", &format!("/{i}")).await?;
        ensure_eq!(
            reply.status,
            StatusCode::OK,
            "retry {i}: {:?}",
            reply.text()
        );
        ensure_eq!(reply.text(), "good", "retry {i}");
        let reply = get(&pooled(), proxy.http, "budget.example", &format!("/{i}")).await?;
        match reply.status {
            StatusCode::OK => ensure_eq!(reply.text(), "good"),
            StatusCode::GATEWAY_TIMEOUT => timed_out += 1,
            other => anyhow::bail!("budget {i}: {other}"),
        }
    }
    ensure!(
        slow.hits() >= 2,
        "the slow endpoint was tried ({})",
        slow.hits()
    );
    ensure!(
        timed_out > 0,
        "the spent budget leaves the 504 to the client"
    );
    Ok(())
}
