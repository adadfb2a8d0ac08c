//! End-to-end tests of the limits on a client connection's life (issue 12): the HTTP/2 idle
//! timeout (GOAWAY), the first request within the header timeout, the send timeout (HTTP/1.1
//! client that stops reading, HTTP/2 stream with a zero window), the request body timeout
//! (408), and the connection cap with the open-file limit set by `prlimit`.
//!
//! The real agent binary (`$XDP_INGRESS_BIN` or `target/<profile>/xdp-ingress`), L7-only on
//! loopback; HTTP/2 clients are raw sockets with hand-made frames, so a test controls exactly
//! what the client sends and withholds.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{anyhow, ensure, Context as _, Result};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use xdp_ingress_tests::{
    agent::{self, Agent, AgentProcess},
    proxy::{
        backends::{Gate, HttpBackend},
        clients, eventually,
        manifests::{Manifests, TempDir},
        single_host, TestProxy,
    },
};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const SETTINGS: u8 = 0x4;
const HEADERS: u8 = 0x1;
const GOAWAY: u8 = 0x7;
const PING: u8 = 0x6;
const END_STREAM_AND_HEADERS: u8 = 0x5;

/// One HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut bytes = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    bytes.extend_from_slice(&stream.to_be_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

/// The preface and a SETTINGS frame with `settings` (id, value).
fn h2_start(settings: &[(u16, u32)]) -> Vec<u8> {
    let mut payload = Vec::new();
    for (id, value) in settings {
        payload.extend_from_slice(&id.to_be_bytes());
        payload.extend_from_slice(&value.to_be_bytes());
    }
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(SETTINGS, 0, 0, &payload));
    bytes
}

/// HEADERS (END_STREAM, END_HEADERS) for `GET http://host/path` on `stream`: HPACK by hand,
/// indexed `:method GET` and `:scheme http`, literal `:path` and `:authority` (no Huffman).
fn h2_get(stream: u32, host: &str, path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86];
    for (name_index, value) in [(0x04u8, path), (0x01, host)] {
        block.push(name_index);
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    frame(HEADERS, END_STREAM_AND_HEADERS, stream, &block)
}

/// Reads until the proxy closes (EOF or reset) within `within`; the bytes read. `Err` when the
/// connection is still open then.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Result<Vec<u8>> {
    let mut received = Vec::new();
    let mut buffer = vec![0u8; 256 * 1024];
    let read_all = async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    };
    tokio::time::timeout(within, read_all)
        .await
        .map_err(|_| anyhow!("still open after {within:?}"))?;
    Ok(received)
}

/// The frame types in `bytes` (server frames, after no preface).
fn frame_types(bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    let mut at = 0;
    while at + 9 <= bytes.len() {
        let len = (usize::from(bytes[at]) << 16)
            | (usize::from(bytes[at + 1]) << 8)
            | usize::from(bytes[at + 2]);
        types.push(bytes[at + 3]);
        at += 9 + len;
    }
    types
}

/// An h2c connection that carried one request and then has no stream is sent GOAWAY and
/// closed after `--client-idle-timeout`; one busy with a stream is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_h2c_connection_gets_goaway_after_the_idle_timeout() -> Result<()> {
    let web = HttpBackend::start("web").await?;
    let proxy = TestProxy::start(
        single_host("shop", "shop.example", &web)?,
        &["--client-idle-timeout", "2s"],
    )?;
    let mut idle = TcpStream::connect(proxy.http).await?;
    let mut request = h2_start(&[]);
    request.extend(h2_get(1, "shop.example", "/a"));
    idle.write_all(&request).await?;
    let started = Instant::now();
    let received = read_until_closed(&mut idle, Duration::from_secs(15))
        .await
        .context("an idle h2c connection outlived its 2 s idle timeout")?;
    let types = frame_types(&received);
    ensure!(
        types.contains(&HEADERS),
        "the request was not answered: frames {types:?}"
    );
    ensure!(
        types.last() == Some(&GOAWAY),
        "the idle connection must end with GOAWAY, frames {types:?}"
    );
    ensure!(
        started.elapsed() >= Duration::from_millis(1500),
        "closed after {:?}, before the idle timeout",
        started.elapsed()
    );
    Ok(())
}

/// A connection that never sends a request (nothing at all, or only the h2c preface and
/// SETTINGS) is closed once `--client-header-timeout` has passed since it was accepted, long
/// before the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_a_first_request_are_closed_after_the_header_timeout() -> Result<()> {
    let web = HttpBackend::start("web").await?;
    let proxy = TestProxy::start(
        single_host("shop", "shop.example", &web)?,
        &["--client-header-timeout", "2s"],
    )?;
    let mut silent = TcpStream::connect(proxy.http).await?;
    let mut preface_only = TcpStream::connect(proxy.http).await?;
    preface_only.write_all(&h2_start(&[])).await?;
    let mut silent_tls = TcpStream::connect(proxy.https).await?;
    for (name, stream) in [
        ("silent plain", &mut silent),
        ("h2c preface only", &mut preface_only),
        ("silent TLS", &mut silent_tls),
    ] {
        read_until_closed(stream, Duration::from_secs(15))
            .await
            .with_context(|| format!("{name}: no request in 2 s, yet not closed"))?;
    }
    Ok(())
}

/// A request head or TLS handshake that has started must finish within `--client-header-timeout`
/// (slowloris), on a keep-alive connection after a first request too, while the idle timeout is
/// much longer: a half-sent head on the plain listener, a ClientHello cut short on the TLS one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_started_head_or_handshake_must_finish_within_the_header_timeout() -> Result<()> {
    let web = HttpBackend::start("web").await?;
    let proxy = TestProxy::start(
        single_host("shop", "shop.example", &web)?,
        &[
            "--client-header-timeout",
            "2s",
            "--client-idle-timeout",
            "60s",
        ],
    )?;
    let mut half_head = TcpStream::connect(proxy.http).await?;
    half_head
        .write_all(b"GET /a HTTP/1.1\r\nHost: shop.example\r\n\r\nGET /b HTTP/1.1\r\nHo")
        .await?;
    // A TLS record header announcing a 512-byte handshake message, and 4 bytes of it.
    let mut half_hello = TcpStream::connect(proxy.https).await?;
    half_hello
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc])
        .await?;
    let started = Instant::now();
    for (name, stream) in [
        ("half-sent second head", &mut half_head),
        ("ClientHello cut short", &mut half_hello),
    ] {
        read_until_closed(stream, Duration::from_secs(15))
            .await
            .with_context(|| format!("{name}: not closed 15 s after it stalled"))?;
    }
    ensure!(
        started.elapsed() >= Duration::from_millis(1500),
        "closed after {:?}, before the header timeout",
        started.elapsed()
    );
    Ok(())
}

/// An HTTP/2 peer that stops answering is found by PINGs: with a request in flight (its
/// backend holds the answer, so neither the idle nor the send timeout applies) and a client that
/// never acknowledges a PING, the proxy sends PINGs and closes the connection once one goes
/// unanswered for `--client-header-timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_find_a_dead_http2_peer_with_a_request_in_flight() -> Result<()> {
    let gate = Gate::new();
    let web = HttpBackend::start_gated("web", gate.clone()).await?;
    let proxy = TestProxy::start(
        single_host("shop", "shop.example", &web)?,
        &[
            "--client-idle-timeout",
            "4s",
            "--client-header-timeout",
            "2s",
        ],
    )?;
    let mut dead = TcpStream::connect(proxy.http).await?;
    let mut request = h2_start(&[]);
    request.extend(h2_get(1, "shop.example", "/held/x"));
    dead.write_all(&request).await?;
    eventually("the request held at the backend", || async {
        ensure!(gate.arrived() == 1, "not yet");
        Ok(())
    })
    .await?;
    let received = read_until_closed(&mut dead, Duration::from_secs(20))
        .await
        .context("a peer that never answers PINGs kept its connection")?;
    let types = frame_types(&received);
    gate.open();
    ensure!(types.contains(&PING), "no PING sent: frames {types:?}");
    ensure!(
        !types.contains(&HEADERS),
        "the held request was answered: frames {types:?}"
    );
    Ok(())
}

/// Out of descriptors before the connection cap (`prlimit --nofile=64:64`, so there is no
/// hard limit to raise, and a cap far above it): an accept that fails with EMFILE closes the
/// connection idle longest and backs off, so a new client still gets through and the agent does
/// not spin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_an_idle_connection_makes_room() -> Result<()> {
    let web = HttpBackend::start("web").await?;
    let manifests = single_host("shop", "shop.example", &web)?;
    let (_scripts, agent, http) = start_with_open_files(
        &manifests,
        "64:64",
        &["--workers", "2", "--max-connections", "1000"],
    )?;
    let pid = agent.pid();
    // More idle h2c connections than descriptors: the later ones wait in the backlog.
    let mut idle = Vec::new();
    for _ in 0..80 {
        idle.push(idle_h2c(http).await?);
    }
    legit_request_gets_through(http, "a request with every descriptor taken")
        .await
        .with_context(|| agent.output().join("\n"))?;
    ensure!(
        agent
            .output()
            .iter()
            .any(|line| line.contains("accept failed; backing off")),
        "the descriptors never ran out: {}",
        agent.output().join("\n")
    );
    stays_quiet_with_a_client_knocking(http, pid, "out of descriptors").await
}

/// The agent started through `prlimit --nofile=<limits>` (which execs it, so the child's pid is
/// the agent's), and its HTTP listener; the returned directory holds the wrapper script.
fn start_with_open_files(
    manifests: &Manifests,
    limits: &str,
    extra: &[&str],
) -> Result<(TempDir, AgentProcess, SocketAddr)> {
    let scripts = TempDir::new("xdp-ingress-prlimit")?;
    let script = scripts.path().join("agent.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec prlimit --nofile={limits} {} \"$@\"\n",
            agent::binary()?.display()
        ),
    )?;
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let mut agent = Agent::manifests(manifests.path())
        .binary(&script)
        .l7_on_loopback()
        .args(extra)
        .start()?;
    let http = agent
        .wait_l7_listening(Duration::from_secs(30))?
        .http
        .context("no HTTP listener")?;
    Ok((scripts, agent, http))
}

/// An h2c connection that has carried one request and then idles.
async fn idle_h2c(http: std::net::SocketAddr) -> Result<TcpStream> {
    let mut stream = TcpStream::connect(http).await?;
    let mut request = h2_start(&[]);
    request.extend(h2_get(1, "shop.example", "/idle"));
    stream.write_all(&request).await?;
    Ok(stream)
}

/// A new client's request is answered (retried while the agent makes room).
async fn legit_request_gets_through(http: std::net::SocketAddr, what: &str) -> Result<()> {
    let reply = eventually(what, || async {
        let (status, text) = clients::raw_exchange(
            http,
            b"GET /legit HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n",
        )
        .await?;
        ensure!(status == 200, "{status}: {text}");
        Ok(text)
    })
    .await?;
    ensure!(reply.contains("/legit"), "{reply}");
    Ok(())
}

/// With a client knocking at a full agent, the agent uses well under a second of CPU in 3 s (a
/// spinning accept loop burns all of it).
async fn stays_quiet_with_a_client_knocking(
    http: std::net::SocketAddr,
    pid: u32,
    when: &str,
) -> Result<()> {
    let knocking = TcpStream::connect(http).await?;
    let before = cpu_ticks(pid)?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let used = cpu_ticks(pid)? - before;
    // SAFETY: sysconf without pointers.
    let per_second = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100);
    ensure!(
        used < per_second,
        "the agent used {used} ticks ({per_second}/s) in 3 s {when}"
    );
    drop(knocking);
    Ok(())
}

/// A client that stops reading a large response is disconnected after `--client-send-timeout`,
/// and its upstream connection is closed: over HTTP/1.1 (the socket's buffers fill up) and over
/// h2c with a stream window of 0 (the client reads, but lets nothing through).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_after_the_send_timeout() -> Result<()> {
    let web = HttpBackend::start("web").await?;
    let proxy = TestProxy::start(
        single_host("shop", "shop.example", &web)?,
        &["--client-send-timeout", "2s"],
    )?;
    // 1 GiB: far more than the sockets' buffers hold.
    let mut stalled = TcpStream::connect(proxy.http).await?;
    stalled
        .write_all(b"GET /download/1073741824 HTTP/1.1\r\nHost: shop.example\r\n\r\n")
        .await?;
    eventually("the download reaching the backend", || async {
        ensure!(web.open_connections() == 1, "not yet");
        Ok(())
    })
    .await?;
    let waited = Instant::now();
    while web.open_connections() != 0 {
        ensure!(
            waited.elapsed() < Duration::from_secs(15),
            "the upstream connection of a client that reads nothing is still open after 15 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    read_until_closed(&mut stalled, Duration::from_secs(15))
        .await
        .context("the client that read nothing is still connected")?;

    // h2c, INITIAL_WINDOW_SIZE 0 (setting 0x4): the response head comes, no DATA can.
    let mut zero_window = TcpStream::connect(proxy.http).await?;
    let mut request = h2_start(&[(0x4, 0)]);
    request.extend(h2_get(1, "shop.example", "/download/1073741824"));
    zero_window.write_all(&request).await?;
    let received = read_until_closed(&mut zero_window, Duration::from_secs(15))
        .await
        .context("an h2c stream with a zero window held its connection for 15 s")?;
    let types = frame_types(&received);
    ensure!(
        types.contains(&HEADERS),
        "the response head should have come: {types:?}"
    );
    eventually("the upstream connection closed", || async {
        ensure!(
            web.open_connections() == 0,
            "{} upstream connection(s) open",
            web.open_connections()
        );
        Ok(())
    })
    .await?;
    Ok(())
}

/// A request body that stops arriving ends the request with 408 after
/// `--client-body-timeout`, not with 504 after the upstream response timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_body_gets_408_after_the_body_timeout() -> Result<()> {
    let web = HttpBackend::start("web").await?;
    let proxy = TestProxy::start(
        single_host("shop", "shop.example", &web)?,
        &["--client-body-timeout", "2s"],
    )?;
    let mut slow = TcpStream::connect(proxy.http).await?;
    slow.write_all(
        b"POST /upload HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 100\r\n\r\n0123456789",
    )
    .await?;
    let (status, text) =
        tokio::time::timeout(Duration::from_secs(15), clients::read_response(&mut slow))
            .await
            .map_err(|_| anyhow!("no answer 15 s into a stalled body"))??;
    ensure!(status == 408, "a stalled body must get 408, got: {text}");
    ensure!(
        text.to_ascii_lowercase().contains("connection: close"),
        "408 must close the connection: {text}"
    );
    Ok(())
}

/// CPU time (user + system) of process `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // After the name: state is field 3, utime 14 and stime 15 (1-based, as in proc(5)).
    let field = |n: usize| -> Result<u64> {
        fields
            .get(n - 3)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no field {n} in /proc/{pid}/stat"))
    };
    Ok(field(14)? + field(15)?)
}

/// Started under `prlimit --nofile=100:160`: the agent raises its soft limit to the hard one,
/// derives 24 connections per listener ((160 - 64) / 2 / 2), and at that cap closes the idle
/// connection waiting longest for each new one, so a legitimate request still gets through
/// while idle h2c connections hold every place; the agent does not spin meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_the_oldest_idle_connection_is_shed() -> Result<()> {
    let web = HttpBackend::start("web").await?;
    let manifests = single_host("shop", "shop.example", &web)?;
    let (_scripts, agent, http) = start_with_open_files(
        &manifests,
        "100:160",
        &["--debounce-ms", "20", "--workers", "2"],
    )?;
    let pid = agent.pid();
    let log = || agent.output().join("\n");

    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    let open_files = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .context("no open-file limit")?
        .split_whitespace()
        .skip(3)
        .take(2)
        .collect::<Vec<_>>();
    ensure!(
        open_files == ["160", "160"],
        "the soft open-file limit must be raised to the hard one: {open_files:?}"
    );
    ensure!(
        log().contains("max_connections=24"),
        "the derived cap: {}",
        log()
    );

    // 30 idle h2c connections, one request each: more than the cap. A connection counts as
    // idle from its first check after its last stream (within a second; the agent shows no
    // event for it, so the test waits that long): the oldest one gets 2 s ahead of the others,
    // and the cap's 24 are all idle before the 6 beyond it arrive (else, on a loaded machine,
    // a newcomer finds nothing idle yet and is the one refused).
    let mut idle = Vec::new();
    for n in 0..30 {
        if n == 1 {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        if n == 24 {
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        idle.push(idle_h2c(http).await?);
    }
    // A new client gets through: the connection idle longest makes room (a connection that
    // is refused while the others are still busy with their request is tried again).
    legit_request_gets_through(http, "a request at the connection cap")
        .await
        .with_context(log)?;
    // The oldest idle connection is gone, the newest is still open.
    read_until_closed(&mut idle[0], Duration::from_secs(10))
        .await
        .context("the oldest idle connection was not shed")?;
    let mut byte = [0u8; 1];
    let newest = idle.last_mut().context("no connection")?;
    // Whatever the proxy sent it (SETTINGS, the answer) is read; then it stays open.
    let ended = tokio::time::timeout(Duration::from_millis(500), async {
        loop {
            if newest.read(&mut byte).await.unwrap_or(0) == 0 {
                return;
            }
        }
    })
    .await;
    ensure!(ended.is_err(), "the newest idle connection must stay open");

    // At the cap, with a client knocking, the agent stays quiet: well under a second of CPU in
    // 3 s (a spinning accept loop burns all of it).
    stays_quiet_with_a_client_knocking(http, pid, "at the connection cap").await
}
