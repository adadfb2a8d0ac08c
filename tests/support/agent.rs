//! The real `xdp-ingress` binary as a child process, in file or cluster mode, on the host or
//! inside a namespace (one builder, [`Agent`], for every way the tests start it): its output
//! collected line by line (to wait for "running", find the addresses it logged and show the
//! counters it prints on exit), stopped with SIGTERM or SIGKILL. Killed on drop if still
//! running, so a failing test never leaves XDP attached to anything.

use std::{
    ffi::{OsStr, OsString},
    io::{BufRead as _, BufReader, Read},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Condvar, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

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

/// How to start the agent binary: what it reads (`--manifests` or `--kubeconfig`), where it runs
/// (the current namespace or `ip netns exec`), the interfaces XDP attaches to, its listeners and
/// any further flags. [`Agent::start`] spawns it and returns the running [`AgentProcess`].
///
/// ```ignore
/// let agent = Agent::manifests(dir).l7_on_loopback().arg("--workers").arg("2").start()?;
/// ```
#[derive(Clone, Debug)]
pub struct Agent {
    binary: Option<PathBuf>,
    source: (&'static str, PathBuf),
    netns: Option<String>,
    interfaces: Vec<String>,
    l7_on_loopback: bool,
    admin: Option<String>,
    args: Vec<OsString>,
}

impl Agent {
    /// `run --manifests <dir>`: file mode.
    pub fn manifests(dir: impl Into<PathBuf>) -> Self {
        Self::reading("--manifests", dir.into())
    }

    /// `run --kubeconfig <file>`: cluster mode.
    pub fn kubeconfig(file: impl Into<PathBuf>) -> Self {
        Self::reading("--kubeconfig", file.into())
    }

    fn reading(flag: &'static str, path: PathBuf) -> Self {
        Self {
            binary: None,
            source: (flag, path),
            netns: None,
            interfaces: Vec::new(),
            l7_on_loopback: false,
            admin: None,
            args: Vec::new(),
        }
    }

    /// Runs `binary` (such as a wrapper script that execs the agent) instead of [`binary()`].
    pub fn binary(mut self, binary: impl Into<PathBuf>) -> Self {
        self.binary = Some(binary.into());
        self
    }

    /// Runs it with `ip netns exec <netns>`, which execs the binary itself, so the child's pid
    /// is the agent's. `ip netns exec` remounts /sys and so hides the host's bpffs.
    pub fn in_netns(mut self, netns: impl Into<String>) -> Self {
        self.netns = Some(netns.into());
        self
    }

    /// `--interface <name>` for each of `interfaces`.
    pub fn interfaces(mut self, interfaces: &[String]) -> Self {
        self.interfaces.extend_from_slice(interfaces);
        self
    }

    /// `--http-listen 127.0.0.1:0 --https-listen 127.0.0.1:0`, and the admin listener off
    /// unless [`Agent::admin_listen`] says where (where the binary has one): a proxy on loopback
    /// ports it picks, so agents started side by side never clash. Wait for the listeners with
    /// [`AgentProcess::wait_l7_listening`].
    pub fn l7_on_loopback(mut self) -> Self {
        self.l7_on_loopback = true;
        self
    }

    /// `--admin-listen <addr>` (such as `127.0.0.1:0` or `[::]:0`);
    /// [`AgentProcess::admin_addr`] tells which port it got.
    pub fn admin_listen(mut self, addr: &str) -> Self {
        self.admin = Some(addr.to_string());
        self
    }

    /// One more argument, after the others.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_os_string());
        self
    }

    /// More arguments, after the others.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|arg| arg.as_ref().to_os_string()));
        self
    }

    /// Spawns it, logging without colour codes at info (a RUST_LOG from outside must not hide
    /// the lines the tests wait for), its output collected line by line.
    pub fn start(self) -> Result<AgentProcess> {
        let binary = match self.binary {
            Some(binary) => binary,
            None => binary()?,
        };
        let mut argv: Vec<OsString> = vec![
            binary.clone().into(),
            "run".into(),
            self.source.0.into(),
            self.source.1.into(),
        ];
        for interface in &self.interfaces {
            argv.extend(["--interface".into(), interface.into()]);
        }
        if self.l7_on_loopback {
            argv.extend(
                [
                    "--http-listen",
                    "127.0.0.1:0",
                    "--https-listen",
                    "127.0.0.1:0",
                ]
                .map(Into::into),
            );
        }
        match &self.admin {
            Some(admin) => argv.extend(["--admin-listen".into(), admin.into()]),
            // An admin listener on a fixed port by default would keep a second agent from
            // starting.
            None if self.l7_on_loopback && knows_flag(&binary, "--admin-listen")? => {
                argv.extend(["--admin-listen", "off"].map(Into::into))
            }
            None => {}
        }
        argv.extend(self.args);
        if let Some(netns) = self.netns {
            argv.splice(
                0..0,
                ["ip".into(), "netns".into(), "exec".into(), netns.into()],
            );
        }
        let command_line = argv
            .iter()
            .map(|arg| arg.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ");
        let mut command = Command::new(&argv[0]);
        command.args(&argv[1..]).env("RUST_LOG", "info");
        AgentProcess::spawn(command, command_line)
    }
}

/// A running agent, started by [`Agent::start`]. Killed on drop if still running.
#[derive(Debug)]
pub struct AgentProcess {
    child: Child,
    output: Arc<Output>,
    readers: Vec<JoinHandle<()>>,
    command_line: String,
}

impl AgentProcess {
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
        Ok(L7Listeners {
            http: self.logged_addr("HTTP listening")?,
            https: self.logged_addr("HTTPS listening")?,
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
