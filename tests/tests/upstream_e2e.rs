//! What the README promises about the proxy's upstream side, against the real agent (L7-only on
//! loopback): `--upstream-connect-timeout` (an endpoint that does not answer is skipped for 10 s
//! and another is tried, up to 3, then 502) and `--upstream-idle-timeout` (an idle pooled
//! connection is not reused).

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use xdp_ingress_tests::proxy::{
    backends::{HttpBackend, RefusingPort},
    clients::{get, pooled},
    manifests::{backend_service, ingress, our_class, rule, Manifests},
    TestProxy,
};
use xdp_ingress_tests::{ensure_eq, ensure_ne};

const HOST: &str = "up.example";

/// One Service `pool` over `endpoints`, all of it routed for [`HOST`].
fn manifests(endpoints: &[SocketAddr]) -> Result<Manifests> {
    let manifests = Manifests::new()?;
    manifests.write("class.yaml", &[our_class()])?;
    manifests.write("services.yaml", &backend_service("pool", endpoints))?;
    manifests.write(
        "ingress.yaml",
        &[ingress(
            "up",
            &[rule(Some(HOST), &[("/", "Prefix", "pool")])],
        )],
    )?;
    Ok(manifests)
}

/// The value of the `pool` Service's sample of `name` on the admin listener.
async fn pool_counter(admin: SocketAddr, name: &str) -> Result<u64> {
    let reply = get(&pooled(), admin, "admin", "/metrics").await?;
    let text = reply.text();
    let line = text
        .lines()
        .find(|line| line.starts_with(name) && line.contains(r#"service="pool""#))
        .with_context(|| format!("no {name} for the pool Service in:\n{text}"))?;
    line.rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no value in {line:?}"))
}

/// An address that never answers a SYN: a listener whose accept queue (backlog 0) is already
/// full with a connection nobody accepts, so the kernel drops every new SYN.
struct Blackhole {
    addr: SocketAddr,
    _listener: TcpListener,
    _queued: TcpStream,
}

impl Blackhole {
    async fn new() -> Result<Self> {
        let socket = TcpSocket::new_v4()?;
        socket.bind("127.0.0.1:0".parse()?)?;
        let listener = socket.listen(0)?;
        let addr = listener.local_addr()?;
        let queued = TcpStream::connect(addr).await?;
        // Make sure the queue is full: a second connect must not complete.
        let probe = tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr));
        anyhow::ensure!(
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_times_out_is_skipped_and_another_serves() -> Result<()> {
    let blackhole = Blackhole::new().await?;
    let good = HttpBackend::start("good").await?;
    let proxy = TestProxy::start_with_admin(
        manifests(&[blackhole.addr, good.addr])?,
        &["--upstream-connect-timeout", "300ms"],
    )?;
    let admin = proxy.admin.context("no admin listener")?;
    let client = pooled();
    // Two endpoints: without the skip, every other request would try the silent one again.
    for i in 0..10 {
        let reply = get(&client, proxy.http, HOST, &format!("/{i}")).await?;
        ensure_eq!(
            reply.status,
            StatusCode::OK,
            "request {i}: {}",
            reply.text()
        );
        ensure_eq!(reply.backend().as_deref(), Some("good"), "request {i}");
    }
    let errors = pool_counter(admin, "xdp_ingress_upstream_connect_errors_total").await?;
    let retries = pool_counter(admin, "xdp_ingress_upstream_retries_total").await?;
    ensure_eq!(
        (errors, retries),
        (1, 1),
        "the silent endpoint was tried once, then skipped; its request went to the other"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_endpoints_are_tried_then_502() -> Result<()> {
    let refusing = (0..4)
        .map(|_| RefusingPort::new())
        .collect::<Result<Vec<_>>>()?;
    let addrs: Vec<SocketAddr> = refusing.iter().map(|r| r.addr).collect();
    let proxy = TestProxy::start_with_admin(manifests(&addrs)?, &[])?;
    let admin = proxy.admin.context("no admin listener")?;
    let reply = get(&pooled(), proxy.http, HOST, "/").await?;
    ensure_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
    let errors = pool_counter(admin, "xdp_ingress_upstream_connect_errors_total").await?;
    ensure_eq!(
        errors,
        3,
        "four endpoints refuse: three are tried, then 502"
    );
    Ok(())
}

/// A backend answering every request with the client port of the connection it came on.
async fn port_echo() -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let accept = tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(move |_request| async move {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(
                        peer.port().to_string(),
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((addr, accept))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_idle_past_the_timeout_is_not_reused() -> Result<()> {
    let (backend, _accept) = port_echo().await?;
    let proxy = TestProxy::start(manifests(&[backend])?, &["--upstream-idle-timeout", "1s"])?;
    let client = pooled();
    let ports = Arc::new(Mutex::new(Vec::new()));
    let ask = async |pause: Duration| -> Result<()> {
        tokio::time::sleep(pause).await;
        let reply = get(&client, proxy.http, HOST, "/").await?;
        ensure_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        ports
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .push(reply.text());
        Ok(())
    };
    ask(Duration::ZERO).await?;
    ask(Duration::from_millis(100)).await?;
    ask(Duration::from_millis(1500)).await?;
    let ports = ports.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    ensure_eq!(
        ports[0],
        ports[1],
        "reused within the idle timeout: {ports:?}"
    );
    ensure_ne!(ports[1], ports[2], "a new connection after it: {ports:?}");
    Ok(())
}
