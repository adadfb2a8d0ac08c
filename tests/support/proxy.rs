//! The L7 proxy's end-to-end harness: the real agent binary, L7-only, on loopback ports it
//! picks, with a manifest directory the test writes; in-process backends; clients; and the
//! steps several test files share (a one-host manifest set, a WebSocket through the proxy, a
//! SIGTERM and the wait for the exit).

pub mod backends;
pub mod clients;
pub mod manifests;

use std::{future::Future, net::SocketAddr, time::Duration};

use anyhow::{anyhow, bail, Context as _, Result};
use futures_util::{SinkExt as _, StreamExt as _};
use http::StatusCode;
use serde_json::Value;
use tokio::io::AsyncReadExt as _;
use tokio_tungstenite::tungstenite::Message;

use crate::agent::{Agent, AgentProcess};

use backends::HttpBackend;
use manifests::{backend_service, ingress, our_class, rule, Manifests};

/// How long a change may take to show (a reload is milliseconds; this is for a loaded machine).
pub const SETTLE: Duration = Duration::from_secs(20);

/// A running agent and its manifests (removed after the agent is stopped: fields drop in order).
pub struct TestProxy {
    /// The agent.
    pub agent: AgentProcess,
    /// Its plain-HTTP listener.
    pub http: SocketAddr,
    /// Its HTTPS listener.
    pub https: SocketAddr,
    /// Its admin listener (`None` unless started with [`TestProxy::start_with_admin`]).
    pub admin: Option<SocketAddr>,
    /// What it reads.
    pub manifests: Manifests,
}

impl TestProxy {
    /// Starts the agent on `manifests` with `extra` flags; returns once it listens. The first
    /// routing table is in place before the agent listens, so the manifests written before
    /// are served from the first request on.
    pub fn start(manifests: Manifests, extra: &[&str]) -> Result<Self> {
        Self::start_inner(manifests, extra, None)
    }

    /// Like [`TestProxy::start`], with the admin listener (`/metrics`) on a loopback port.
    pub fn start_with_admin(manifests: Manifests, extra: &[&str]) -> Result<Self> {
        Self::start_with_admin_at(manifests, "127.0.0.1:0", extra)
    }

    /// Like [`TestProxy::start_with_admin`], with the admin listener on `admin` (`[::]:0`).
    pub fn start_with_admin_at(manifests: Manifests, admin: &str, extra: &[&str]) -> Result<Self> {
        Self::start_inner(manifests, extra, Some(admin))
    }

    fn start_inner(manifests: Manifests, extra: &[&str], admin: Option<&str>) -> Result<Self> {
        let mut agent = Agent::manifests(manifests.path()).l7_on_loopback();
        if let Some(admin) = admin {
            agent = agent.admin_listen(admin);
        }
        let mut agent = agent
            .args(["--debounce-ms", "20", "--workers", "2"])
            .args(extra)
            .start()?;
        let listeners = agent.wait_l7_listening(Duration::from_secs(30))?;
        let admin = if admin.is_some() {
            Some(agent.admin_addr()?.context("no admin listener logged")?)
        } else {
            None
        };
        Ok(Self {
            http: listeners.http.context("no HTTP listener logged")?,
            https: listeners.https.context("no HTTPS listener logged")?,
            admin,
            agent,
            manifests,
        })
    }

    /// The agent's output so far, for failure messages.
    pub fn log(&self) -> String {
        self.agent.output().join("\n")
    }

    /// The agent's peak and current resident memory, in KiB (VmHWM, VmRSS).
    pub fn memory_kib(&self) -> Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.agent.pid()))?;
        let field = |key: &str| -> Result<u64> {
            status
                .lines()
                .find_map(|line| line.strip_prefix(key))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kib| kib.parse().ok())
                .with_context(|| format!("no {key} in /proc/PID/status"))
        };
        Ok((field("VmHWM:")?, field("VmRSS:")?))
    }

    /// Waits until a log line contains every one of `words` (for changes with no visible effect
    /// on requests, such as a certificate that is refused).
    pub async fn wait_for_log(&self, words: &[&str]) -> Result<String> {
        eventually(&format!("a log line with {words:?}"), || async {
            self.agent
                .output()
                .into_iter()
                .find(|line| words.iter().all(|w| line.contains(w)))
                .context("not yet")
        })
        .await
        .with_context(|| self.log())
    }
}

/// Retries `attempt` until it succeeds or [`SETTLE`] passes; the readiness check for anything
/// a reload changes. Returns the last error on timeout.
pub async fn eventually<T, F, Fut>(what: &str, mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(error) if tokio::time::Instant::now() >= deadline => {
                return Err(error.context(format!("still not true after {SETTLE:?}: {what}")))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
}

/// Services for `backends`, one each, named after the backend.
pub fn services_for(backends: &[&HttpBackend]) -> Vec<Value> {
    backends
        .iter()
        .flat_map(|b| backend_service(&b.name, &[b.addr]))
        .collect()
}

/// Our IngressClass, `backend`'s Service and EndpointSlice, and one Ingress `name` sending
/// everything for `host` to it.
pub fn single_host(name: &str, host: &str, backend: &HttpBackend) -> Result<Manifests> {
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

/// `Ok` when the answer came from `backend` with 200.
pub fn ensure_served(reply: &clients::Reply, backend: &str, what: &str) -> Result<()> {
    crate::ensure_eq!(reply.status, StatusCode::OK, "{what}: {:?}", reply.text());
    crate::ensure_eq!(
        reply.backend().as_deref(),
        Some(backend),
        "{what}: {:?}",
        reply.text()
    );
    Ok(())
}

/// Opens a WebSocket to `ws.example/echo` through the proxy's plain listener.
pub async fn websocket(
    proxy: SocketAddr,
) -> Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>> {
    let stream = tokio::net::TcpStream::connect(proxy).await?;
    let (socket, response) = tokio::time::timeout(
        clients::EXCHANGE_TIMEOUT,
        tokio_tungstenite::client_async("ws://ws.example/echo", stream),
    )
    .await
    .map_err(|_| anyhow!("WebSocket handshake timed out"))??;
    anyhow::ensure!(
        response.status() == StatusCode::SWITCHING_PROTOCOLS,
        "{response:?}"
    );
    Ok(socket)
}

/// Sends `message` and expects `expected` back.
pub async fn ws_round_trip(
    socket: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    message: Message,
    expected: Message,
) -> Result<()> {
    socket.send(message).await?;
    let reply = tokio::time::timeout(clients::EXCHANGE_TIMEOUT, socket.next())
        .await
        .map_err(|_| anyhow!("no WebSocket reply"))?
        .context("WebSocket closed")??;
    anyhow::ensure!(reply == expected, "got {reply:?}, expected {expected:?}");
    Ok(())
}

/// Sends SIGTERM to the agent, our child (alive: the caller holds a request in it).
pub fn sigterm(pid: u32) -> Result<()> {
    // SAFETY: plain FFI call on our own child's pid.
    if unsafe { libc::kill(pid as i32, libc::SIGTERM) } != 0 {
        bail!("SIGTERM to {pid}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// One read of at most a byte, which must return within `within` (`Err(Elapsed)` otherwise):
/// how a test waits for the proxy to close a connection.
pub async fn read_within<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    within: Duration,
) -> Result<std::io::Result<usize>, tokio::time::error::Elapsed> {
    let mut byte = [0u8; 1];
    tokio::time::timeout(within, stream.read(&mut byte)).await
}

/// Whether process `pid` (our child, not yet reaped) has exited: it is a zombie in
/// /proc/PID/stat. Reading the state instead of reaping leaves the exit status to
/// `AgentProcess::terminate`, which then signals a process that is already gone.
pub fn has_exited(pid: u32) -> Result<bool> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name in parentheses may hold spaces; the state follows the last ')'.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .with_context(|| format!("no state in /proc/{pid}/stat: {stat:?}"))?;
    Ok(state == "Z" || state == "X")
}
