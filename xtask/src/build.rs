//! `cargo xtask build`: the agent binary in the debug profile, the same artifacts `cargo test`
//! uses, so `test` does not compile the agent twice. Its path comes from cargo's own report,
//! which follows CARGO_TARGET_DIR and friends. `cargo xtask image` builds a static release binary
//! for musl here too.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

use crate::{cmd, setup::MUSL_TARGET};

/// Builds `xdp-ingress` and returns the executable's path.
pub(crate) fn agent() -> Result<PathBuf> {
    agent_with(&[])
}

/// Builds `xdp-ingress` in the release profile (what the benchmarks measure).
pub(crate) fn agent_release() -> Result<PathBuf> {
    agent_with(&["--release"])
}

fn agent_with(extra: &[&str]) -> Result<PathBuf> {
    let mut build = Command::new("cargo");
    // The whole workspace's bins, not `-p ingress-userspace`: features then resolve as for
    // `cargo test --workspace`, which reuses this build instead of compiling the agent (and
    // the eBPF object, 40 s cold) a second time with another feature set.
    build.args(["build", "--workspace", "--bins"]).args(extra);
    executable(build)
}

/// Builds `xdp-ingress` as a static executable ([`MUSL_TARGET`], release profile) for the
/// container image. aya-build still builds the eBPF object for bpfel-unknown-none (it derives
/// that from the target's endianness, not from the target itself) and the binary embeds it.
pub(crate) fn agent_static() -> Result<PathBuf> {
    let mut build = Command::new("cargo");
    // ring compiles C: the musl target needs a C compiler for musl (musl-tools' musl-gcc).
    let cc = format!("CC_{}", MUSL_TARGET.replace('-', "_"));
    if std::env::var_os(&cc).is_none() {
        build.env(&cc, "musl-gcc");
    }
    build.args([
        "build",
        "--package",
        "ingress-userspace",
        "--bin",
        "xdp-ingress",
        "--release",
        "--target",
        MUSL_TARGET,
    ]);
    executable(build)
}

/// Runs `cargo build ...` (echoed, diagnostics on stderr) and returns the path cargo reports for
/// the `xdp-ingress` executable.
fn executable(mut build: Command) -> Result<PathBuf> {
    build
        .current_dir(cmd::workspace_root())
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
