//! `cargo xtask build`: the agent binary in the debug profile, the same artifacts `cargo test`
//! uses, so `test` does not compile the agent twice. Its path comes from cargo's own report,
//! which follows CARGO_TARGET_DIR and friends.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

use crate::cmd;

/// Builds `xdp-ingress` and returns the executable's path.
pub fn agent() -> Result<PathBuf> {
    agent_with(&[])
}

/// Builds `xdp-ingress` in the release profile (what the benchmarks measure).
pub fn agent_release() -> Result<PathBuf> {
    agent_with(&["--release"])
}

fn agent_with(extra: &[&str]) -> Result<PathBuf> {
    let mut build = Command::new("cargo");
    build
        .current_dir(cmd::workspace_root())
        // The whole workspace's bins, not `-p ingress-userspace`: features then resolve as for
        // `cargo test --workspace`, which reuses this build instead of compiling the agent (and
        // the eBPF object, 40 s cold) a second time with another feature set.
        .args(["build", "--workspace", "--bins"])
        .args(extra)
        .arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped());
    eprintln!("$ {}", cmd::display(&build));
    let output = build
        .spawn()
        .context("starting cargo build")?
        .wait_with_output()
        .context("waiting for cargo build")?;
    if !output.status.success() {
        bail!("building the agent failed ({})", output.status);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    for line in stdout.lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] == "compiler-artifact" && message["target"]["name"] == "xdp-ingress" {
            if let Some(executable) = message["executable"].as_str() {
                return Ok(PathBuf::from(executable));
            }
        }
    }
    bail!("cargo build did not report the xdp-ingress executable")
}
