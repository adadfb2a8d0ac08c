//! The real `xdp-ingress` binary as a child process inside a namespace: started with
//! `ip netns exec`, its output collected line by line (to wait for "running" and to show the
//! counters it prints on exit), stopped with SIGTERM. Killed on drop if still running, so a
//! failing test never leaves XDP attached to anything.

use std::{
    io::{BufRead as _, BufReader, Read},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Condvar, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::netns::Netns;

/// The environment variable naming the agent binary (`cargo xtask test` sets it).
pub const BIN_ENV: &str = "XDP_INGRESS_BIN";

/// The agent binary: `$XDP_INGRESS_BIN`, else `<workspace>/target/<profile>/xdp-ingress` (or
/// under `$CARGO_TARGET_DIR`) as `cargo xtask build` leaves it.
pub fn binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(BIN_ENV) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("{BIN_ENV}={} is not a file", path.display());
        }
        return Ok(path);
    }
    let target_dir = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        // This crate sits one level below the workspace root.
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
    };
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let path = target_dir.join(profile).join("xdp-ingress");
    if !path.is_file() {
        bail!(
            "the agent binary {} is missing: run `cargo xtask build` (or `cargo xtask test`, \
             which builds it and sets {BIN_ENV})",
            path.display()
        );
    }
    Ok(path)
}

/// Output lines seen so far, and a signal for each new one.
#[derive(Debug, Default)]
struct Output {
    lines: Mutex<Vec<String>>,
    grew: Condvar,
}

/// The proxy's listeners, as the agent logged them.
#[derive(Clone, Copy, Debug)]
pub struct L7Listeners {
    /// Plain HTTP.
    pub http: Option<SocketAddr>,
    /// HTTPS.
    pub https: Option<SocketAddr>,
}

/// A running agent.
#[derive(Debug)]
pub struct AgentProcess {
    child: Child,
    output: Arc<Output>,
    readers: Vec<JoinHandle<()>>,
    command_line: String,
}

impl AgentProcess {
    /// `ip netns exec <netns> <binary> run --manifests <dir> --interface <if>... --bpffs off`;
    /// logs without colour codes. `ip netns exec` execs the binary itself, so the child's pid is
    /// the agent's. Nothing is pinned (`ip netns exec` hides the host's bpffs anyway): the XDP
    /// program goes with the agent.
    pub fn start(
        binary: &Path,
        netns: &Netns,
        manifests: &Path,
        interfaces: &[String],
    ) -> Result<Self> {
        Self::start_with(binary, netns, manifests, interfaces, &["--bpffs", "off"])
    }

    /// Like [`AgentProcess::start`], with `extra` flags instead of `--bpffs off`.
    pub fn start_with(
        binary: &Path,
        netns: &Netns,
        manifests: &Path,
        interfaces: &[String],
        extra: &[&str],
    ) -> Result<Self> {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", netns.name()])
            .arg(binary)
            .arg("run")
            .arg("--manifests")
            .arg(manifests);
        for interface in interfaces {
            command.args(["--interface", interface]);
        }
        command.args(extra);
        let command_line = format!(
            "ip netns exec {} {} run --manifests {} {} {}",
            netns.name(),
            binary.display(),
            manifests.display(),
            interfaces
                .iter()
                .map(|interface| format!("--interface {interface}"))
                .collect::<Vec<_>>()
                .join(" "),
            extra.join(" ")
        );
        Self::spawn(command, command_line)
    }

    /// `<binary> run --manifests <dir> --http-listen 127.0.0.1:0 --https-listen 127.0.0.1:0
    /// <extra>...` in the current namespace, without `--interface`: the agent is an L7-only
    /// Ingress proxy and needs no privileges. Wait for its listeners with
    /// [`AgentProcess::wait_l7_listening`]. An admin listener (`--admin-listen`, where the binary
    /// has one) is turned off.
    pub fn start_l7(binary: &Path, manifests: &Path, extra: &[&str]) -> Result<Self> {
        Self::start_l7_inner(binary, manifests, extra, None)
    }

    /// Like [`AgentProcess::start_l7`], with the admin listener on a loopback port the agent
    /// picks (`--admin-listen 127.0.0.1:0`); [`AgentProcess::admin_addr`] tells which.
    pub fn start_l7_with_admin(binary: &Path, manifests: &Path, extra: &[&str]) -> Result<Self> {
        Self::start_l7_inner(binary, manifests, extra, Some("127.0.0.1:0"))
    }

    /// Like [`AgentProcess::start_l7_with_admin`], with the admin listener on `admin` (such as
    /// `[::]:0`).
    pub fn start_l7_with_admin_at(
        binary: &Path,
        manifests: &Path,
        admin: &str,
        extra: &[&str],
    ) -> Result<Self> {
        Self::start_l7_inner(binary, manifests, extra, Some(admin))
    }

    fn start_l7_inner(
        binary: &Path,
        manifests: &Path,
        extra: &[&str],
        admin: Option<&str>,
    ) -> Result<Self> {
        let mut flags = vec![
            "--http-listen",
            "127.0.0.1:0",
            "--https-listen",
            "127.0.0.1:0",
        ];
        if let Some(admin) = admin {
            flags.extend(["--admin-listen", admin]);
        } else if knows_flag(binary, "--admin-listen")? {
            // An admin listener on a fixed port by default would keep a second agent from
            // starting.
            flags.extend(["--admin-listen", "off"]);
        }
        flags.extend_from_slice(extra);
        let mut command = Command::new(binary);
        command
            .arg("run")
            .arg("--manifests")
            .arg(manifests)
            .args(&flags);
        let command_line = format!(
            "{} run --manifests {} {}",
            binary.display(),
            manifests.display(),
            flags.join(" ")
        );
        // The log lines the tests wait for are at info; a RUST_LOG from outside must not hide them.
        command.env("RUST_LOG", "info");
        Self::spawn(command, command_line)
    }

    fn spawn(mut command: Command, command_line: String) -> Result<Self> {
        command
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {command_line}"))?;
        let output = Arc::new(Output::default());
        let mut readers = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            readers.push(collect(stdout, output.clone()));
        }
        if let Some(stderr) = child.stderr.take() {
            readers.push(collect(stderr, output.clone()));
        }
        Ok(Self {
            child,
            output,
            readers,
            command_line,
        })
    }

    /// Waits for "running" and returns the proxy's bound addresses from its log lines
    /// `HTTP listening addr=...` and `HTTPS listening addr=...` (`None`: that listener is off).
    pub fn wait_l7_listening(&mut self, timeout: Duration) -> Result<L7Listeners> {
        self.wait_running(timeout)?;
        let lines = self.output();
        let find = |what: &str| -> Result<Option<SocketAddr>> {
            let Some(line) = lines.iter().find(|line| line.contains(what)) else {
                return Ok(None);
            };
            let addr = line
                .split_whitespace()
                .find_map(|word| word.strip_prefix("addr="))
                .with_context(|| format!("no addr= in {line:?}"))?;
            Ok(Some(
                addr.parse()
                    .with_context(|| format!("bad address in {line:?}"))?,
            ))
        };
        Ok(L7Listeners {
            http: find("HTTP listening")?,
            https: find("HTTPS listening")?,
        })
    }

    /// The admin listener's address from the log line `admin listening addr=...` (`None`: not
    /// logged, the listener is off). Logged before "running", so call it after
    /// [`AgentProcess::wait_l7_listening`].
    pub fn admin_addr(&self) -> Result<Option<SocketAddr>> {
        self.logged_addr("admin listening")
    }

    /// The address in the first log line containing `what` (`admin listening`, `metrics
    /// listening`): its `addr=...` field; `None` when no line says it.
    pub fn logged_addr(&self, what: &str) -> Result<Option<SocketAddr>> {
        let lines = self.output();
        let Some(line) = lines.iter().find(|line| line.contains(what)) else {
            return Ok(None);
        };
        let addr = line
            .split_whitespace()
            .find_map(|word| word.strip_prefix("addr="))
            .with_context(|| format!("no addr= in {line:?}"))?;
        Ok(Some(
            addr.parse()
                .with_context(|| format!("bad address in {line:?}"))?,
        ))
    }

    /// The agent's process id (for /proc/PID/status).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The command that started it.
    pub fn command_line(&self) -> &str {
        &self.command_line
    }

    /// Waits until a line satisfies `matches`; fails if the agent exits first or time runs out.
    /// Returns the line.
    pub fn wait_for_line(
        &mut self,
        matches: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let mut seen = 0;
        loop {
            {
                let lines = self
                    .output
                    .lines
                    .lock()
                    .map_err(|_| anyhow::anyhow!("output lock poisoned"))?;
                if let Some(line) = lines[seen..].iter().find(|line| matches(line)) {
                    return Ok(line.clone());
                }
                seen = lines.len();
                let now = Instant::now();
                if now >= deadline {
                    bail!(
                        "timed out after {timeout:?} waiting for the agent; its output:\n{}",
                        lines.join("\n")
                    );
                }
                // Short waits so an exit is noticed even without new output.
                let wait = (deadline - now).min(Duration::from_millis(100));
                let _ = self.output.grew.wait_timeout(lines, wait);
            }
            if let Some(status) = self.child.try_wait().context("checking the agent")? {
                self.join_readers();
                bail!(
                    "the agent exited ({status}) before the expected line; its output:\n{}",
                    self.output().join("\n")
                );
            }
        }
    }

    /// Waits for the log line saying the agent attached and is forwarding.
    pub fn wait_running(&mut self, timeout: Duration) -> Result<()> {
        self.wait_for_line(
            |line| line.split_whitespace().any(|word| word == "running"),
            timeout,
        )
        .map(|_| ())
    }

    /// Whether the process is still alive.
    pub fn is_running(&mut self) -> Result<bool> {
        Ok(self
            .child
            .try_wait()
            .context("checking the agent")?
            .is_none())
    }

    /// Everything it printed so far (stdout and stderr interleaved as read).
    pub fn output(&self) -> Vec<String> {
        self.output
            .lines
            .lock()
            .map(|lines| lines.clone())
            .unwrap_or_default()
    }

    /// SIGTERM, then waits up to `timeout` for the exit. Returns the exit status and all output.
    pub fn terminate(mut self, timeout: Duration) -> Result<(ExitStatus, Vec<String>)> {
        let pid = self.child.id() as i32;
        // SAFETY: plain FFI call on our own child's pid (not yet reaped, so not reused).
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            bail!("SIGTERM to {pid}: {}", std::io::Error::last_os_error());
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().context("waiting for the agent")? {
                self.join_readers();
                return Ok((status, self.output()));
            }
            if Instant::now() >= deadline {
                bail!(
                    "the agent did not exit within {timeout:?} of SIGTERM; where it waits:\n{}\n\
                     its output:\n{}",
                    where_it_waits(pid),
                    self.output().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL (no clean-up in the agent at all, as in a crash or an OOM kill); waits for the
    /// exit and returns the agent's output.
    pub fn kill(mut self) -> Result<Vec<String>> {
        self.child.kill().context("SIGKILL to the agent")?;
        self.child.wait().context("waiting for the killed agent")?;
        self.join_readers();
        Ok(self.output())
    }

    fn join_readers(&mut self) {
        for reader in std::mem::take(&mut self.readers) {
            let _ = reader.join();
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        self.join_readers();
    }
}

/// Whether `binary run --help` lists `flag` (for flags newer than some binaries).
fn knows_flag(binary: &Path, flag: &str) -> Result<bool> {
    let output = Command::new(binary)
        .args(["run", "--help"])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{} run --help", binary.display()))?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .split(|c: char| c.is_whitespace() || c == ',' || c == '=')
        .any(|word| word == flag))
}

/// The state and kernel stack of each thread of `pid`, for a process that does not exit.
fn where_it_waits(pid: i32) -> String {
    let mut report = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return format!("(no /proc/{pid}/task)");
    };
    for task in tasks.flatten() {
        let path = task.path();
        let read = |name: &str| std::fs::read_to_string(path.join(name)).unwrap_or_default();
        let status = read("status");
        let field = |key: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(key))
                .unwrap_or("?")
                .trim()
                .to_string()
        };
        report.push(format!(
            "thread {} ({}) {} wchan={}\n{}",
            task.file_name().to_string_lossy(),
            field("Name:"),
            field("State:"),
            read("wchan"),
            read("stack").trim_end()
        ));
    }
    report.join("\n")
}

fn collect(stream: impl Read + Send + 'static, output: Arc<Output>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut lines) = output.lines.lock() {
                lines.push(line);
            }
            output.grew.notify_all();
        }
    })
}
