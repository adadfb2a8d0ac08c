//! The L7 proxy end to end, parking: quiet keep-alive connections give up their buffers and
//! keep serving, and still end at the idle timeout and on drain.
//!
//! The real `xdp-ingress` binary run L7-only (no `--interface`, so no privileges) on loopback
//! ports it picks, manifests written by each test to a temporary directory, backends served
//! in-process, and real clients (hyper, rustls, curl, tokio-tungstenite, raw TCP); the harness is
//! `xdp_ingress_tests::proxy`. The binary is `$XDP_INGRESS_BIN` or `target/<profile>/xdp-ingress`:
//! build it first with `cargo build -p ingress-userspace`.

use std::time::Duration;

use anyhow::{anyhow, ensure, Context as _, Result};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use xdp_ingress_tests::proxy::{
    backends::{Gate, HttpBackend},
    clients::{self, get, pooled, tls_connect, Tls},
    eventually, has_exited, read_within, sigterm, single_host, TestProxy,
};

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
    let web = HttpBackend::start_gated("web", gate.clone()).await?;
    let manifests = single_host("shop", "shop.example", &web)?;
    let proxy = TestProxy::start_with_admin(manifests, &[])?;
    let admin = proxy.admin.context("no admin listener")?;
    let get_a = b"GET /a HTTP/1.1\r\nHost: shop.example\r\n\r\n";

    // Quiet after one request: to be parked.
    let mut idle = tokio::net::TcpStream::connect(proxy.http).await?;
    let (status, text) = exchange(&mut idle, get_a).await?;
    ensure!(
        status == 200 && text.contains("web"),
        "first request: {text}"
    );
    let (mut tls, _) = tls_connect(proxy.https, "shop.example", Tls::Any, &[b"http/1.1"]).await?;
    let (status, text) = exchange(&mut tls, get_a).await?;
    ensure!(
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
        ensure!(gate.arrived() == 1, "not yet");
        Ok(())
    })
    .await?;

    // The two quiet connections are parked; the three busy ones are not.
    eventually("two connections parked", || async {
        let parked = parked_total(admin).await?;
        ensure!(parked == 2, "{parked} parked");
        Ok(())
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ensure!(
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
    ensure!(status == 200 && text.contains("/b"), "slow head: {text}");
    let (status, text) = exchange(&mut slow_body, b"67890").await?;
    ensure!(status == 200 && text.contains("/c"), "slow body: {text}");
    gate.open();
    let (status, text) = tokio::time::timeout(
        Duration::from_secs(10),
        clients::read_response(&mut slow_response),
    )
    .await
    .map_err(|_| anyhow!("held response: no answer"))??;
    ensure!(
        status == 200 && text.contains("/d"),
        "held response: {text}"
    );

    // The parked connections serve again on the same socket, one request and then two
    // pipelined in one write.
    let (status, text) = exchange(&mut idle, get_a).await?;
    ensure!(
        status == 200 && text.contains("web"),
        "after parking: {text}"
    );
    let (status, text) = exchange(&mut tls, get_a).await?;
    ensure!(
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
            ensure!(n > 0, "closed after {answers:?}");
            answers.push_str(&String::from_utf8_lossy(&buffer[..n]));
        }
        Ok::<_, anyhow::Error>(())
    };
    tokio::time::timeout(Duration::from_secs(10), collect)
        .await
        .map_err(|_| anyhow!("pipelined: no two answers"))??;
    let (p1, p2) = (answers.find("/p1"), answers.find("/p2"));
    ensure!(
        p1.is_some() && p1 < p2,
        "pipelined answers out of order: {answers}"
    );
    eventually("a connection parked a second time", || async {
        let parked = parked_total(admin).await?;
        ensure!(parked >= 3, "{parked} parked");
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
    let web = HttpBackend::start_gated("web", gate.clone()).await?;

    // Idle timeout 3 s: parked after 1 s quiet, closed 3 s after the response.
    let proxy = TestProxy::start_with_admin(
        single_host("shop", "shop.example", &web)?,
        &["--client-idle-timeout", "3s"],
    )?;
    let admin = proxy.admin.context("no admin listener")?;
    let mut plain = tokio::net::TcpStream::connect(proxy.http).await?;
    let (status, text) = exchange(&mut plain, get_a).await?;
    ensure!(status == 200, "plain request: {text}");
    let (mut tls, _) = tls_connect(proxy.https, "shop.example", Tls::Any, &[b"http/1.1"]).await?;
    let (status, text) = exchange(&mut tls, get_a).await?;
    ensure!(status == 200, "TLS request: {text}");
    eventually("both connections parked", || async {
        let parked = parked_total(admin).await?;
        ensure!(parked == 2, "{parked} parked");
        Ok(())
    })
    .await?;
    let read = read_within(&mut plain, Duration::from_secs(15))
        .await
        .map_err(|_| anyhow!("the parked plain connection outlived its 3 s idle timeout"))?;
    ensure!(
        matches!(read, Ok(0)),
        "the parked plain connection must end with a FIN, got {read:?}"
    );
    let read = read_within(&mut tls, Duration::from_secs(15))
        .await
        .map_err(|_| anyhow!("the parked TLS connection outlived its 3 s idle timeout"))?;
    ensure!(
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
    ensure!(status == 200, "request before parking: {text}");
    let mut held = tokio::net::TcpStream::connect(proxy.http).await?;
    held.write_all(b"GET /held/x HTTP/1.1\r\nHost: shop.example\r\n\r\n")
        .await?;
    eventually(
        "the held request at the backend and the other connection parked",
        || async {
            ensure!(gate.arrived() == 1, "held request not there yet");
            let parked = parked_total(admin).await?;
            ensure!(parked == 1, "{parked} parked");
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
    ensure!(
        matches!(read, Ok(0)),
        "the parked connection must end with a FIN at the drain, got {read:?}"
    );
    ensure!(
        !has_exited(pid)?,
        "the agent exited with a request in flight: {}",
        proxy.log()
    );
    gate.open();
    let (status, text) =
        tokio::time::timeout(Duration::from_secs(10), clients::read_response(&mut held))
            .await
            .map_err(|_| anyhow!("held request: no answer after the drain"))??;
    ensure!(
        status == 200 && text.contains("/held/x"),
        "held request: {text}"
    );
    Ok(())
}
