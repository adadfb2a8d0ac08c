//! The real `xdp-ingress` binary in cluster mode (`run --kubeconfig ...`) inside a namespace:
//! started with `ip netns exec`, its output collected, stopped with SIGTERM, killed on drop.
//! (The library's `AgentProcess` starts only `--manifests` agents.)

use std::{
    io::{BufRead as _, BufReader, Read},
    net::SocketAddr,
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

/// A running agent process.
pub struct KubeAgent {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    readers: Vec<JoinHandle<()>>,
}

impl KubeAgent {
    /// `ip netns exec <netns> <binary> run --kubeconfig <kubeconfig> <args>...`, logging at
    /// info without colours.
    pub fn start(netns: &str, binary: &Path, kubeconfig: &Path, args: &[&str]) -> Result<Self> {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", netns])
            .arg(binary)
            .arg("run")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            readers.push(collect(stdout, lines.clone()));
        }
        if let Some(stderr) = child.stderr.take() {
            readers.push(collect(stderr, lines.clone()));
        }
        Ok(Self {
            child,
            lines,
            readers,
        })
    }

    /// Everything it printed so far.
    pub fn output(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Waits for a line satisfying `matches`; fails when the agent exits or time runs out.
    pub fn wait_for_line(
        &mut self,
        matches: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.output().into_iter().find(|l| matches(l)) {
                return Ok(line);
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the agent exited ({status}); its output:\n{}",
                    self.output().join("\n")
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "no such line within {timeout:?}; the agent's output:\n{}",
                    self.output().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for "running" (first list applied, XDP attached, listening).
    pub fn wait_running(&mut self, timeout: Duration) -> Result<()> {
        self.wait_for_line(
            |line| line.split_whitespace().any(|word| word == "running"),
            timeout,
        )
        .map(|_| ())
    }

    /// The address in the log line containing `what` (`HTTP listening addr=...`).
    pub fn logged_addr(&self, what: &str) -> Result<SocketAddr> {
        let lines = self.output();
        let line = lines
            .iter()
            .find(|line| line.contains(what))
            .with_context(|| format!("no {what:?} line"))?;
        line.split_whitespace()
            .find_map(|word| word.strip_prefix("addr="))
            .with_context(|| format!("no addr= in {line:?}"))?
            .parse()
            .with_context(|| format!("bad address in {line:?}"))
    }

    /// SIGTERM, then waits up to `timeout` for the exit.
    pub fn terminate(mut self, timeout: Duration) -> Result<(ExitStatus, Vec<String>)> {
        let pid = self.child.id() as i32;
        // SAFETY: plain FFI call on our own child's pid (not yet reaped, so not reused).
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            bail!("SIGTERM to {pid}: {}", std::io::Error::last_os_error());
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                for reader in std::mem::take(&mut self.readers) {
                    let _ = reader.join();
                }
                return Ok((status, self.output()));
            }
            if Instant::now() >= deadline {
                bail!(
                    "the agent did not exit within {timeout:?} of SIGTERM; its output:\n{}",
                    self.output().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for KubeAgent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for reader in std::mem::take(&mut self.readers) {
            let _ = reader.join();
        }
    }
}

fn collect(stream: impl Read + Send + 'static, lines: Arc<Mutex<Vec<String>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut lines) = lines.lock() {
                lines.push(line);
            }
        }
    })
}
