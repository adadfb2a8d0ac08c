//! The processes the bench starts (proxies, upstream, load tools) and the machine they run on:
//! CPU pinning, the file limit, CPU time and output of a child, and the temporary directory.

use std::{
    fs,
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};

use super::LOCALHOST;

/// Pins this process (and threads started later, and children unless they re-pin) to one CPU.
pub(crate) fn pin_self_to(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the macros only set bits in it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!(
                "pinning the load generator to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// Raises RLIMIT_NOFILE (inherited by the proxies started later) to hold `need` descriptors, as
/// far as allowed (without CAP_SYS_RESOURCE only up to the hard limit); the limit now.
pub(crate) fn raise_file_limit(need: u64) -> Result<u64> {
    let wanted = need.max(200_000);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain FFI calls with a valid pointer.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        let raised = libc::rlimit {
            rlim_cur: wanted,
            rlim_max: wanted.max(limit.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
            // Not allowed to raise the hard limit: take what there is.
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    ensure!(
        limit.rlim_cur >= need,
        "RLIMIT_NOFILE is {} (hard limit {}) but the benchmark needs {need} descriptors: \
         raise the hard limit (ulimit -Hn) or run as root with CAP_SYS_RESOURCE",
        limit.rlim_cur,
        limit.rlim_max
    );
    Ok(limit.rlim_cur)
}

/// A temporary directory, removed on drop.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new() -> Result<Self> {
        let path =
            std::env::temp_dir().join(format!("xdp-ingress-bench-l7-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A child process (and whatever it forks), its output in a log file; killed on drop.
pub(crate) struct Proc {
    pub(crate) name: String,
    pub(crate) child: Child,
    pub(crate) log: PathBuf,
}

impl Proc {
    pub(crate) fn spawn(name: &str, mut command: Command, log: PathBuf) -> Result<Self> {
        let file = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let line = display(&command);
        let child = command
            .spawn()
            .with_context(|| format!("starting {name}: `{line}`"))?;
        println!("  started {name} (pid {}): {line}", child.id());
        Ok(Self {
            name: name.to_string(),
            child,
            log,
        })
    }

    pub(crate) fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails, with the process's output, if it has exited.
    pub(crate) fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); its output:\n{}",
                self.name,
                self.log_text()
            );
        }
        Ok(())
    }

    /// Waits until every port accepts connections.
    pub(crate) fn wait_listening(&mut self, ports: &[u16], timeout: Duration) -> Result<Duration> {
        let started = Instant::now();
        for &port in ports {
            loop {
                self.check_alive()?;
                if TcpStream::connect_timeout(&addr(port), Duration::from_millis(200)).is_ok() {
                    break;
                }
                if started.elapsed() > timeout {
                    bail!(
                        "{} is not listening on 127.0.0.1:{port} after {timeout:?}; its output:\n{}",
                        self.name,
                        self.log_text()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(started.elapsed())
    }

    /// The process and its descendants (nginx's workers).
    pub(crate) fn pids(&self) -> Vec<u32> {
        let root = self.child.id();
        let mut parents: Vec<(u32, u32)> = Vec::new();
        if let Ok(entries) = fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                    continue;
                };
                if let Some(fields) = stat_fields(pid) {
                    if let Some(ppid) = fields.get(1).and_then(|s| s.parse().ok()) {
                        parents.push((pid, ppid));
                    }
                }
            }
        }
        let mut found = vec![root];
        let mut i = 0;
        while i < found.len() {
            let parent = found[i];
            found.extend(
                parents
                    .iter()
                    .filter(|(_, ppid)| *ppid == parent)
                    .map(|(pid, _)| *pid),
            );
            i += 1;
        }
        found
    }

    /// utime + stime of the process and its descendants, in clock ticks.
    pub(crate) fn cpu_ticks(&self) -> u64 {
        self.pids()
            .into_iter()
            .filter_map(stat_fields)
            .map(|fields| {
                let field = |i: usize| fields.get(i).and_then(|s| s.parse::<u64>().ok());
                field(11).unwrap_or(0) + field(12).unwrap_or(0)
            })
            .sum()
    }

    /// VmRSS summed over the process and its descendants, KiB.
    pub(crate) fn rss_kib(&self) -> u64 {
        self.pids()
            .into_iter()
            .filter_map(|pid| fs::read_to_string(format!("/proc/{pid}/status")).ok())
            .filter_map(|status| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .sum()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pids = self.pids();
        for pid in pids.iter().rev() {
            // SAFETY: FFI call signalling our own child or its descendants.
            unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a proxy wrote (warnings, errors), for the person reading the run; at most 20 lines.
pub(crate) fn print_output(proc: &Proc) {
    let text = proc.log_text();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.contains(" INFO ") && !l.contains("[NOTICE]"))
        .collect();
    if lines.is_empty() {
        println!("  {}: no warnings or errors in its output", proc.name);
        return;
    }
    println!(
        "  {} wrote {} warning/error line(s):",
        proc.name,
        lines.len()
    );
    for line in lines.iter().take(20) {
        println!("    | {line}");
    }
}

/// Fields of /proc/PID/stat after the command name: [0] is the state, [1] the ppid, [11] utime,
/// [12] stime.
pub(crate) fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

pub(crate) fn clock_ticks_per_second() -> f64 {
    // SAFETY: plain FFI call.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

pub(crate) fn display(command: &Command) -> String {
    let mut line = vec![command.get_program().to_string_lossy().into_owned()];
    line.extend(command.get_args().map(|a| {
        let a = a.to_string_lossy();
        if a.contains(' ') || a.contains(';') {
            format!("'{a}'")
        } else {
            a.into_owned()
        }
    }));
    line.join(" ")
}

pub(crate) fn addr(port: u16) -> SocketAddr {
    SocketAddr::from((LOCALHOST, port))
}

pub(crate) fn ensure_free(port: u16) -> Result<()> {
    TcpListener::bind(addr(port))
        .map(drop)
        .with_context(|| format!("port 127.0.0.1:{port} is taken (a proxy left running?)"))
}

/// `taskset -c CPU program`.
pub(crate) fn pinned(cpu: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new("taskset");
    command.args(["-c", cpu]).arg(program);
    command
}

/// Runs a load generator to completion; its stdout, or its output in the error.
pub(crate) fn run_tool(mut command: Command) -> Result<String> {
    let line = display(&command);
    let output = command
        .output()
        .with_context(|| format!("starting `{line}`"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "`{line}` failed ({}):\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(stdout)
}
