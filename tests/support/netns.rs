//! Network namespaces owned by a test or the lab: created with `ip netns add`, removed on drop
//! (also when the test panics). [`Netns::new`] names carry a prefix and the process id, so
//! parallel or leftover runs never clash; [`Netns::with_name`] and [`Netns::keep`] are for the
//! lab that `cargo xtask lab up` leaves behind for `lab down` to find by name.

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    process::{Command, Output},
};

use anyhow::{bail, Context as _, Result};

/// A named network namespace, deleted on drop unless [kept](Netns::keep).
#[derive(Debug)]
pub struct Netns {
    name: String,
    delete_on_drop: bool,
}

impl Netns {
    /// Creates `<prefix>-<pid>` (an existing one of that name is removed first).
    pub fn new(prefix: &str) -> Result<Self> {
        Self::with_name(&format!("{prefix}-{}", std::process::id()))
    }

    /// Creates a namespace with exactly this name (an existing one of that name is removed
    /// first: a leftover from a killed run must not leak its interfaces into a new one).
    pub fn with_name(name: &str) -> Result<Self> {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        run("ip", &["netns", "add", name])?;
        let netns = Self {
            name: name.to_string(),
            delete_on_drop: true,
        };
        netns.ip(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// An existing namespace (made by someone else, e.g. an earlier `lab up`); deleted on drop
    /// like one made here.
    pub fn open(name: &str) -> Result<Self> {
        if !std::path::Path::new(&format!("/run/netns/{name}")).exists() {
            bail!("network namespace {name} does not exist");
        }
        Ok(Self {
            name: name.to_string(),
            delete_on_drop: true,
        })
    }

    /// Names of all namespaces `ip netns` knows (the files in /run/netns).
    pub fn list() -> Result<Vec<String>> {
        let entries = match std::fs::read_dir("/run/netns") {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(error).context("listing /run/netns"),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.context("listing /run/netns")?;
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_string());
            }
        }
        names.sort();
        Ok(names)
    }

    /// Leaves the namespace in place when this value is dropped; returns its name.
    pub fn keep(mut self) -> String {
        self.delete_on_drop = false;
        std::mem::take(&mut self.name)
    }

    /// The namespace's name (for `ip -n` and `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs a command inside the namespace; fails with its stderr if it exits non-zero.
    pub fn exec(&self, argv: &[&str]) -> Result<Output> {
        let mut args = vec!["netns", "exec", &self.name];
        args.extend_from_slice(argv);
        run("ip", &args)
    }

    /// `ip -n NAME ARGS...`
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Process ids of the processes living in the namespace (`ip netns pids`).
    pub fn pids(&self) -> Result<Vec<i32>> {
        let output = run("ip", &["netns", "pids", &self.name])?;
        Ok(String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .filter_map(|pid| pid.parse().ok())
            .collect())
    }

    /// Moves the calling thread into the namespace (sockets it creates, BPF_PROG_TEST_RUN and
    /// netlink calls it makes then belong to the namespace). Other threads are unaffected.
    pub fn enter(&self) -> Result<()> {
        enter_path(&format!("/run/netns/{}", self.name))
    }

    /// Runs `f` on a new thread inside the namespace and returns its result.
    pub fn run_inside<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            enter_path(&path)?;
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread in {} panicked", self.name))?
    }
}

/// Moves the calling thread into the namespace called `name` (for threads that cannot borrow
/// the [`Netns`]).
pub fn enter_named(name: &str) -> Result<()> {
    enter_path(&format!("/run/netns/{name}"))
}

fn enter_path(path: &str) -> Result<()> {
    let file = File::open(path).with_context(|| format!("opening {path}"))?;
    // SAFETY: FFI call with a valid namespace fd; affects only the calling thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!("setns({path}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.delete_on_drop {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .output();
        }
    }
}

/// Runs a command; fails with its stderr if it exits non-zero.
pub fn run(program: &str, args: &[&str]) -> Result<Output> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output)
}
