//! The L7 proxy end to end, changes and shutdown: manifest reloads under load lose no request,
//! and SIGTERM drains the requests in flight while refusing new connections.
//!
//! The real `xdp-ingress` binary run L7-only (no `--interface`, so no privileges) on loopback
//! ports it picks, manifests written by each test to a temporary directory, backends served
//! in-process, and real clients (hyper, rustls, curl, tokio-tungstenite, raw TCP); the harness is
//! `xdp_ingress_tests::proxy`. The binary is `$XDP_INGRESS_BIN` or `target/<profile>/xdp-ingress`:
//! build it first with `cargo build -p ingress-userspace`.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use http::{StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::{io::AsyncWriteExt as _, net::TcpStream, task::JoinHandle};
use tokio_tungstenite::{tungstenite::Message, WebSocketStream};
use xdp_ingress_tests::ensure_eq;
use xdp_ingress_tests::proxy::{
    backends::{Fnv, Gate, HttpBackend, WsBackend, CHUNK},
    clients::{self, get, pooled, request, send_h1, Pooled, Reply},
    ensure_served, eventually, has_exited,
    manifests::{backend_service, ingress, our_class, rule, Manifests},
    read_within, services_for, sigterm, single_host, websocket, ws_round_trip, TestProxy,
};

/// The WebSocket the support crate's `websocket` opens.
type WebSocket = WebSocketStream<TcpStream>;

/// Scenario 8: ten manifest rewrites while clients keep sending, each over one keep-alive
/// connection for the whole test: no request fails, no connection is closed, and a WebSocket
/// opened before the changes still echoes after them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_lose_no_request() -> Result<()> {
    let a = HttpBackend::start("a").await?;
    let b = HttpBackend::start("b").await?;
    let ws = WsBackend::start("ws").await?;
    let proxy = TestProxy::start(load_manifests(&a, &b, &ws)?, &[])?;
    let mut socket = websocket(proxy.http).await?;
    ws_round_trip(
        &mut socket,
        Message::text("before"),
        Message::text("ws:before"),
    )
    .await?;

    let load = Load::start(proxy.http).await?;
    let checker = pooled();
    for change in 1..=10 {
        change_is_served(&proxy, &checker, change).await?;
        load_spans_the_change(&load, change).await?;
    }
    no_request_failed_and_both_backends_served(load, &a, &b).await?;
    websocket_opened_before_still_echoes(&mut socket).await?;
    socket.close(None).await?;
    Ok(())
}

/// Keep-alive connections of the load, one per client.
const CLIENTS: usize = 4;
/// Requests the load sends over the ten changes, at least.
const MIN_REQUESTS: u64 = 2000;

/// Ingress main at `version`: `load.example` `/api` and `/v{version}` to `target`, and the
/// WebSocket echo.
fn main_ingress(target: &str, version: usize) -> Value {
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
}

/// The class, Services a, b and ws, and Ingress main at version 0 sending to a.
fn load_manifests(a: &HttpBackend, b: &HttpBackend, ws: &WsBackend) -> Result<Manifests> {
    let manifests = Manifests::new()?;
    manifests.write("class.yaml", &[our_class()])?;
    let mut services = services_for(&[a, b]);
    services.extend(backend_service("ws", &[ws.addr]));
    manifests.write("services.yaml", &services)?;
    manifests.write("main.yaml", &[main_ingress("a", 0)])?;
    Ok(manifests)
}

/// Clients sending to `load.example/api` until stopped, counting requests and connections ended.
struct Load {
    stop: Arc<AtomicBool>,
    total: Arc<AtomicU64>,
    ended: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<Vec<String>>>,
}

impl Load {
    /// Starts [`CLIENTS`] clients, each on one keep-alive connection; each collects its failures.
    async fn start(addr: SocketAddr) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let total = Arc::new(AtomicU64::new(0));
        let ended = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for task in 0..CLIENTS {
            let (stop, total, ended) = (stop.clone(), total.clone(), ended.clone());
            // One keep-alive connection per client for the whole test, not a pool that would
            // reconnect quietly: a reload that closed connections fails the test.
            let stream = tokio::net::TcpStream::connect(addr).await?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            tasks.push(tokio::spawn(async move {
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
        Ok(Self {
            stop,
            total,
            ended,
            tasks,
        })
    }
}

/// Change `change` (main to b on odd changes, to a on even ones; Ingress extra present on odd
/// ones, removed on even ones) is served: `/v{change}` by the target, `extra.example` 200 or 404.
async fn change_is_served(proxy: &TestProxy, checker: &Pooled, change: usize) -> Result<()> {
    let target = if change % 2 == 1 { "b" } else { "a" };
    proxy
        .manifests
        .write("main.yaml", &[main_ingress(target, change)])?;
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
        let reply = get(checker, proxy.http, "load.example", &format!("/v{change}")).await?;
        ensure!(
            reply.backend().as_deref() == Some(target),
            "/v{change}: expected {target}, seen {} {:?}",
            reply.status,
            reply.text()
        );
        let reply = get(checker, proxy.http, "extra.example", "/").await?;
        let expected = if extra_present {
            StatusCode::OK
        } else {
            StatusCode::NOT_FOUND
        };
        ensure!(
            reply.status == expected,
            "extra.example: expected {expected}, seen {} {:?}",
            reply.status,
            reply.text()
        );
        Ok(())
    })
    .await
    .with_context(|| proxy.log())?;
    Ok(())
}

/// The load sends a good number of requests on change `change`'s table before the next change
/// (so the load spans every reload), and no keep-alive connection was closed.
async fn load_spans_the_change(load: &Load, change: usize) -> Result<()> {
    let since = load.total.load(Ordering::Relaxed);
    eventually(&format!("requests after change {change}"), || async {
        let closed = load.ended.load(Ordering::Relaxed);
        ensure!(closed == 0, "expected none closed, seen {closed} keep-alive connection(s) closed by change {change}");
        let n = load.total.load(Ordering::Relaxed);
        ensure!(n >= since + MIN_REQUESTS / 10, "{} requests since change {change}", n - since);
        Ok(())
    })
    .await?;
    Ok(())
}

/// Once the load stops: no request of it failed, and both a and b served some.
async fn no_request_failed_and_both_backends_served(
    load: Load,
    a: &HttpBackend,
    b: &HttpBackend,
) -> Result<()> {
    load.stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for task in load.tasks {
        failures.extend(task.await?);
    }
    let n = load.total.load(Ordering::Relaxed);
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
    ensure!(served_a > 0 && served_b > 0, "a {served_a}, b {served_b}");
    Ok(())
}

/// The WebSocket opened before the reloads still echoes after them.
async fn websocket_opened_before_still_echoes(socket: &mut WebSocket) -> Result<()> {
    for i in 0..5 {
        ws_round_trip(
            socket,
            Message::text(format!("after {i}")),
            Message::text(format!("ws:after {i}")),
        )
        .await
        .context("the WebSocket opened before the reloads")?;
    }
    Ok(())
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
    let gate = Gate::new();
    let web = HttpBackend::start_gated("web", gate.clone()).await?;
    let manifests = single_host("drain", "drain.example", &web)?;
    let proxy = TestProxy::start(manifests, &["--drain-timeout", "10s"])?;

    let mut idle = idle_keep_alive_connection(proxy.http).await?;
    // A connection that has not sent a byte yet.
    let mut silent = tokio::net::TcpStream::connect(proxy.http).await?;
    let held = Held::send(proxy.http).await?;
    every_held_request_reaches_the_backend(&proxy, &gate).await?;

    let pid = proxy.agent.pid();
    let signalled = std::time::Instant::now();
    sigterm(pid)?;
    proxy.wait_for_log(&["SIGTERM"]).await?;

    new_connections_are_refused(&proxy).await?;
    idle_connections_are_closed(&mut idle, &mut silent).await?;
    still_draining_with_requests_held(&proxy, pid, &held)?;

    gate.open();
    held_requests_complete(held).await?;
    exits_drained_in_time(proxy, pid, signalled).await?;
    Ok(())
}

/// The drain timeout the agent is started with.
const DRAIN: Duration = Duration::from_secs(10);
/// HTTP/1.1 requests held waiting for their response head.
const HELD_H1: usize = 3;
/// The held body: several chunks per half, so the held half really is a body cut in the middle.
const BODY: u64 = 6 * CHUNK as u64;

/// An idle keep-alive connection: one request answered without `Connection: close`, then
/// nothing.
async fn idle_keep_alive_connection(proxy: SocketAddr) -> Result<tokio::net::TcpStream> {
    let mut idle = tokio::net::TcpStream::connect(proxy).await?;
    idle.write_all(b"GET /idle HTTP/1.1\r\nHost: drain.example\r\n\r\n")
        .await?;
    let (status, text) =
        tokio::time::timeout(clients::EXCHANGE_TIMEOUT, clients::read_response(&mut idle))
            .await
            .map_err(|_| anyhow!("no answer on the keep-alive connection"))??;
    ensure!(status == 200, "keep-alive request: {text}");
    ensure!(
        !text.to_ascii_lowercase().contains("connection: close"),
        "the first answer must keep the connection open: {text}"
    );
    Ok(idle)
}

/// The requests the gated backend holds in flight.
struct Held {
    /// [`HELD_H1`] HTTP/1.1 requests and one h2c request, waiting for their response head, by
    /// path.
    requests: Vec<(String, JoinHandle<Result<Reply>>)>,
    /// The `/held-body` response, its head and first half of the body out.
    streaming: JoinHandle<Result<Reply>>,
}

impl Held {
    /// Sends the held requests; the `/held-body` response head must arrive with 200.
    async fn send(proxy: SocketAddr) -> Result<Self> {
        let mut requests = Vec::new();
        for i in 0..HELD_H1 {
            let path = format!("/held/h1-{i}");
            requests.push((
                path.clone(),
                tokio::spawn(async move {
                    send_h1(
                        proxy,
                        request("drain.example", &path).body(clients::empty())?,
                    )
                    .await
                }),
            ));
        }
        let h2c = {
            let stream = tokio::net::TcpStream::connect(proxy).await?;
            let (mut sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                    .await?;
            tokio::spawn(connection);
            let request =
                http::Request::get("http://drain.example/held/h2c").body(clients::empty())?;
            tokio::spawn(async move { clients::collect(sender.send_request(request).await?).await })
        };
        requests.push(("/held/h2c".to_string(), h2c));
        let streaming = {
            let stream = tokio::net::TcpStream::connect(proxy).await?;
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
            ensure!(response.status() == StatusCode::OK, "{response:?}");
            tokio::spawn(clients::collect(response))
        };
        Ok(Self {
            requests,
            streaming,
        })
    }
}

/// Every held request has reached the backend (and the held body its half): all are in flight
/// in the proxy now.
async fn every_held_request_reaches_the_backend(proxy: &TestProxy, gate: &Gate) -> Result<()> {
    let expected_arrivals = HELD_H1 + 2;
    eventually("every held request reaches the backend", || async {
        ensure!(
            gate.arrived() == expected_arrivals,
            "expected {expected_arrivals} arrived, seen {}",
            gate.arrived()
        );
        Ok(())
    })
    .await
    .with_context(|| proxy.log())?;
    Ok(())
}

/// New connections are refused on both listeners. A connect that still gets through (it raced
/// the listener's close) is dropped at once and tried again.
async fn new_connections_are_refused(proxy: &TestProxy) -> Result<()> {
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
    Ok(())
}

/// The idle keep-alive connection ends with a FIN and the silent one is closed (FIN or reset),
/// within half the drain timeout.
async fn idle_connections_are_closed(
    idle: &mut tokio::net::TcpStream,
    silent: &mut tokio::net::TcpStream,
) -> Result<()> {
    // Idle connections are closed by the drain itself: the held requests keep the agent from
    // exiting, so a close seen now cannot be the process going away. The bound is below the
    // drain timeout, after which everything would be closed anyway.
    let read = read_within(idle, DRAIN / 2)
        .await
        .map_err(|_| anyhow!("the idle keep-alive connection is still open after SIGTERM"))?;
    ensure!(
        matches!(read, Ok(0)),
        "the idle keep-alive connection must end with a FIN, got {read:?}"
    );
    let read = read_within(silent, DRAIN / 2)
        .await
        .map_err(|_| anyhow!("the silent connection is still open after SIGTERM"))?;
    ensure!(
        matches!(&read, Ok(0)) || read.is_err(),
        "the silent connection must be closed, got {read:?}"
    );
    Ok(())
}

/// While the requests are held: the drain has not timed out, the agent has not exited, and no
/// held request has finished.
fn still_draining_with_requests_held(proxy: &TestProxy, pid: u32, held: &Held) -> Result<()> {
    ensure!(
        proxy
            .agent
            .output()
            .iter()
            .all(|l| !l.contains("drain timeout")),
        "the drain timed out while the test was checking: {}",
        proxy.log()
    );
    ensure!(
        !has_exited(pid)?,
        "the agent exited with requests in flight: {}",
        proxy.log()
    );
    ensure!(
        held.requests.iter().all(|(_, task)| !task.is_finished()) && !held.streaming.is_finished(),
        "a held request finished before the gate opened"
    );
    Ok(())
}

/// Once the gate opens, every held request completes with 200 from web (h2c over HTTP/2), and
/// the held body arrives whole, byte for byte.
async fn held_requests_complete(held: Held) -> Result<()> {
    for (path, task) in held.requests {
        let reply = task
            .await?
            .with_context(|| format!("{path} after SIGTERM"))?;
        ensure_served(&reply, "web", &format!("{path} in flight at SIGTERM"))?;
        let json = reply.json()?;
        ensure_eq!(json["path"], path.as_str(), "{}", reply.text());
        if path.ends_with("h2c") {
            ensure_eq!(reply.version, Version::HTTP_2, "{path}");
        }
    }
    let reply = held.streaming.await?.context("/held-body after SIGTERM")?;
    ensure_eq!(reply.status, StatusCode::OK);
    ensure_eq!(reply.body.len() as u64, BODY, "the whole held body");
    let mut fnv = Fnv::default();
    fnv.update(&reply.body);
    ensure_eq!(fnv.0, Fnv::of_pattern(BODY), "the held body's bytes");
    Ok(())
}

/// The agent exits on its own, 0 and with "proxy drained" (not "drain timeout"), within the
/// drain timeout plus a margin of SIGTERM.
async fn exits_drained_in_time(proxy: TestProxy, pid: u32, signalled: Instant) -> Result<()> {
    // Exits on its own once the last connection closed; the bound is generous on purpose.
    let bound = DRAIN + Duration::from_secs(10);
    while !has_exited(pid)? {
        ensure!(
            signalled.elapsed() < bound,
            "the agent did not exit within {bound:?} of SIGTERM: {}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, output) = proxy.agent.terminate(Duration::from_secs(5))?;
    let output = output.join("\n");
    ensure!(status.success(), "exit {status}: {output}");
    ensure!(output.contains("proxy drained"), "{output}");
    ensure!(!output.contains("drain timeout"), "{output}");
    Ok(())
}
