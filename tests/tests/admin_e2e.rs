//! End-to-end tests of the admin listener (`--admin-listen`) and the metrics listener
//! (`--metrics-listen`): the real `xdp-ingress` binary run L7-only on loopback ports it picks, as
//! in the `proxy_*` tests, talked to with raw TCP so the tests see exactly when a connection closes.
//!
//! - idle connections are closed after `--client-idle-timeout`, a request head that has started
//!   is cut after `--client-header-timeout`;
//! - at most 64 connections are open at once: past that, the oldest without a request in flight
//!   is closed for the newcomer;
//! - an admin listener on `[::]` serves `/debug` to 127.0.0.1 (an IPv4-mapped peer);
//! - `--metrics-listen` serves `/metrics` (and the probes) and no `/debug`;
//! - out of file descriptors, the accept loop backs off instead of spinning on the pending
//!   connection, and serves it once descriptors are free again.
//!
//! The binary is `$XDP_INGRESS_BIN` or `target/<profile>/xdp-ingress`.

use std::{net::SocketAddr, time::Duration};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use xdp_ingress_tests::proxy::{
    clients::{read_response, EXCHANGE_TIMEOUT},
    manifests::{our_class, Manifests},
    TestProxy,
};

/// The agent's cap on concurrent connections per admin or metrics listener.
const MAX_CONNECTIONS: usize = 64;

/// Generous bound for a connection the agent should close (the timeouts the tests set are 1-2 s).
const CLOSE_WITHIN: Duration = Duration::from_secs(20);

/// A manifest directory with only our IngressClass: the agent runs with an empty routing table.
fn manifests() -> Result<Manifests> {
    let manifests = Manifests::new()?;
    manifests.write("class.yaml", &[our_class()])?;
    Ok(manifests)
}

/// `GET path` on `stream` (keep-alive); the status and the whole response text.
async fn get_on(stream: &mut TcpStream, path: &str) -> Result<(u16, String)> {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n").as_bytes())
        .await?;
    tokio::time::timeout(EXCHANGE_TIMEOUT, read_response(stream))
        .await
        .map_err(|_| anyhow!("GET {path}: no answer in {EXCHANGE_TIMEOUT:?}"))?
}

/// `GET path` on a connection of its own.
async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    get_on(&mut stream, path).await
}

/// Reads until the peer closes the connection (end of stream or reset); fails if it is still
/// open after `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration, what: &str) -> Result<()> {
    let mut buffer = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await
    .map_err(|_| anyhow!("{what}: still open after {within:?}"))
}

/// Whether the connection is still open: nothing (no end of stream, no reset) arrives within a
/// short look. A connection the agent closed shows its end of stream at once.
async fn still_open(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    tokio::time::timeout(Duration::from_millis(200), stream.read(&mut byte))
        .await
        .is_err()
}

/// An admin connection that never sends anything, and one that has been answered and sits idle
/// (keep-alive), are both closed after `--client-idle-timeout`; before the fix they stayed open
/// for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_admin_connections_are_closed_after_the_idle_timeout() -> Result<()> {
    let proxy = TestProxy::start_with_admin(
        manifests()?,
        &[
            "--client-header-timeout",
            "1s",
            "--client-idle-timeout",
            "2s",
        ],
    )?;
    let admin = proxy.admin.context("no admin listener")?;
    let mut silent = TcpStream::connect(admin).await?;
    let mut answered = TcpStream::connect(admin).await?;
    let (status, text) = get_on(&mut answered, "/healthz").await?;
    ensure!(status == 200, "/healthz: {text}");
    ensure!(
        !text.to_ascii_lowercase().contains("connection: close"),
        "the answer must keep the connection open: {text}"
    );
    closed_within(
        &mut silent,
        CLOSE_WITHIN,
        "a connection that never sent a byte",
    )
    .await
    .with_context(|| proxy.log())?;
    closed_within(&mut answered, CLOSE_WITHIN, "an idle keep-alive connection")
        .await
        .with_context(|| proxy.log())?;
    Ok(())
}

/// A request head that has started must end within `--client-header-timeout`; an idle
/// connection opened at the same time is not cut by that timer (the idle timeout is long).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_admin_request_head_is_cut_after_the_header_timeout() -> Result<()> {
    let proxy = TestProxy::start_with_admin(
        manifests()?,
        &[
            "--client-header-timeout",
            "1s",
            "--client-idle-timeout",
            "120s",
        ],
    )?;
    let admin = proxy.admin.context("no admin listener")?;
    let mut idle = TcpStream::connect(admin).await?;
    let mut slow = TcpStream::connect(admin).await?;
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHo").await?;
    closed_within(
        &mut slow,
        CLOSE_WITHIN,
        "a connection with half a request head",
    )
    .await
    .with_context(|| proxy.log())?;
    ensure!(
        still_open(&mut idle).await,
        "the idle connection was closed with the slow head, by the header timeout"
    );
    let (status, text) = get_on(&mut idle, "/healthz").await?;
    ensure!(status == 200, "/healthz on the idle connection: {text}");
    Ok(())
}

/// With the cap's worth of idle connections open, new connections are still served: each one
/// closes the oldest idle connection. After 100 connections exactly the 36 oldest are closed and
/// the newest 64 stay open. Before the fix all 100 stayed open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_connections_are_capped_by_closing_the_oldest_idle_one() -> Result<()> {
    const OPENED: usize = 100;
    let proxy = TestProxy::start_with_admin(manifests()?, &[])?;
    let admin = proxy.admin.context("no admin listener")?;
    let mut connections = Vec::with_capacity(OPENED);
    for _ in 0..OPENED - 1 {
        connections.push(TcpStream::connect(admin).await?);
    }
    // The agent accepts in connection order; once the last one is answered, all were accepted.
    let mut last = TcpStream::connect(admin).await?;
    let (status, text) = get_on(&mut last, "/readyz").await?;
    ensure!(
        status == 200,
        "/readyz with {OPENED} connections open: {text}"
    );
    connections.push(last);
    let shed = OPENED - MAX_CONNECTIONS;
    for (i, connection) in connections.iter_mut().enumerate().take(shed) {
        closed_within(
            connection,
            CLOSE_WITHIN,
            &format!("connection {i} of {OPENED}"),
        )
        .await
        .with_context(|| proxy.log())?;
    }
    // All looked at together: one short look in all.
    let mut looks = tokio::task::JoinSet::new();
    for (i, mut connection) in connections.into_iter().enumerate().skip(shed) {
        looks.spawn(async move { (i, still_open(&mut connection).await) });
    }
    let mut closed = Vec::new();
    while let Some(look) = looks.join_next().await {
        let (i, open) = look?;
        if !open {
            closed.push(i);
        }
    }
    closed.sort_unstable();
    ensure!(
        closed.is_empty(),
        "the newest {MAX_CONNECTIONS} connections must stay open; closed: {closed:?}"
    );
    Ok(())
}

/// An admin listener on `[::]` sees 127.0.0.1 as `::ffff:127.0.0.1`, which is loopback too:
/// `/debug/routes` answers 200 (403 before the fix), and `inspect routes` works against it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_listener_on_the_ipv6_wildcard_serves_debug_to_ipv4_loopback() -> Result<()> {
    let proxy = TestProxy::start_with_admin_at(manifests()?, "[::]:0", &[])?;
    let admin = proxy.admin.context("no admin listener")?;
    ensure!(admin.ip().is_unspecified() && admin.is_ipv6(), "{admin}");
    for client in ["127.0.0.1", "::1"] {
        let addr = SocketAddr::new(client.parse()?, admin.port());
        let (status, text) = get(addr, "/debug/routes").await?;
        ensure!(status == 200, "/debug/routes from {client}: {text}");
    }
    let output = tokio::process::Command::new(xdp_ingress_tests::agent::binary()?)
        .args(["inspect", "routes", "--json", "--admin"])
        .arg(SocketAddr::from(([127, 0, 0, 1], admin.port())).to_string())
        .output()
        .await?;
    ensure!(
        output.status.success(),
        "inspect routes: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// `--metrics-listen` serves `/metrics` and the probes, not `/debug`; the admin listener then
/// keeps the probes and `/debug` and points `/metrics` to the other listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_listen_serves_metrics_without_debug() -> Result<()> {
    let proxy = TestProxy::start_with_admin(manifests()?, &["--metrics-listen", "127.0.0.1:0"])?;
    let admin = proxy.admin.context("no admin listener")?;
    let metrics = proxy
        .agent
        .logged_addr("metrics listening")?
        .with_context(|| format!("no metrics listener logged:\n{}", proxy.log()))?;
    ensure!(metrics != admin, "one address for both: {metrics}");

    let (status, text) = get(metrics, "/metrics").await?;
    ensure!(status == 200, "/metrics on the metrics listener: {text}");
    ensure!(
        text.contains("application/openmetrics-text") && text.contains("# EOF"),
        "/metrics is not OpenMetrics: {text}"
    );
    for path in ["/healthz", "/readyz"] {
        let (status, text) = get(metrics, path).await?;
        ensure!(status == 200, "{path} on the metrics listener: {text}");
    }
    for path in ["/debug/routes", "/debug/certs", "/debug/services"] {
        let (status, text) = get(metrics, path).await?;
        ensure!(status == 404, "{path} on the metrics listener: {text}");
    }

    let (status, text) = get(admin, "/debug/routes").await?;
    ensure!(status == 200, "/debug/routes on the admin listener: {text}");
    let (status, text) = get(admin, "/metrics").await?;
    ensure!(
        status == 404 && text.contains("--metrics-listen"),
        "/metrics on the admin listener: {text}"
    );
    Ok(())
}

/// The agent's CPU time (user and system) so far, from /proc/PID/stat.
fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i - 3)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("field {i} of /proc/{pid}/stat: {stat:?}"))
    };
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let per_second = u64::try_from(per_second).context("sysconf(_SC_CLK_TCK)")?;
    Ok(Duration::from_millis(
        (ticks(14)? + ticks(15)?) * 1000 / per_second.max(1),
    ))
}

/// Sets process `pid`'s soft RLIMIT_NOFILE; returns the previous limits.
fn set_nofile(pid: u32, soft: u64) -> Result<libc::rlimit> {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: reading the limit into a local struct.
    if unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) } != 0 {
        bail!("prlimit({pid}): {}", std::io::Error::last_os_error());
    }
    let new = libc::rlimit {
        rlim_cur: soft,
        rlim_max: old.rlim_max,
    };
    restore_nofile(pid, new)?;
    Ok(old)
}

fn restore_nofile(pid: u32, limit: libc::rlimit) -> Result<()> {
    // SAFETY: `limit` is a valid struct; the old limits are not asked for.
    if unsafe {
        libc::prlimit(
            pid as i32,
            libc::RLIMIT_NOFILE,
            &limit,
            std::ptr::null_mut(),
        )
    } != 0
    {
        bail!("prlimit({pid}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// With no file descriptor to spare, a connection waiting in the admin listener's backlog makes
/// every accept fail with EMFILE. The accept loop must back off: over 3 s the agent uses well
/// under a third of a CPU (it spun at a whole CPU before the fix), logs the failure, and once
/// descriptors are free again the waiting connection is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_accept_loop_backs_off_when_out_of_file_descriptors() -> Result<()> {
    const WINDOW: Duration = Duration::from_secs(3);
    let proxy = TestProxy::start_with_admin(manifests()?, &[])?;
    let admin = proxy.admin.context("no admin listener")?;
    let pid = proxy.agent.pid();
    // A soft limit of 0: the agent keeps the descriptors it has, and no new one can be made.
    let old = set_nofile(pid, 0)?;
    let outcome = async {
        let mut waiting = TcpStream::connect(admin).await?;
        waiting
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n")
            .await?;
        let before = cpu_time(pid)?;
        tokio::time::sleep(WINDOW).await;
        let used = cpu_time(pid)?.saturating_sub(before);
        Ok::<_, anyhow::Error>((waiting, used))
    }
    .await;
    restore_nofile(pid, old)?;
    let (mut waiting, used) = outcome?;
    eprintln!("the agent used {used:?} of CPU in {WINDOW:?} while it could not accept");
    ensure!(
        used < WINDOW / 3,
        "the agent used {used:?} of CPU in {WINDOW:?} while it could not accept"
    );
    ensure!(
        proxy
            .agent
            .output()
            .iter()
            .any(|line| line.contains("accept failed") && line.contains("Too many open files")),
        "no log line about the failed accept:\n{}",
        proxy.log()
    );
    let (status, text) = tokio::time::timeout(EXCHANGE_TIMEOUT, read_response(&mut waiting))
        .await
        .map_err(|_| anyhow!("the waiting connection was not answered after the limit rose"))??;
    ensure!(status == 200, "/healthz on the waiting connection: {text}");
    Ok(())
}
