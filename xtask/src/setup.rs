//! `cargo xtask setup`: everything the build, the tests and the benchmarks need that a fresh
//! machine (Debian 12, rustup with stable and nightly) lacks. Every step first checks whether it
//! is already done, so a second run takes seconds. Nothing machine-specific is written down: the
//! nightly's sysroot, LLVM version and library file are looked up each time.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::cmd;

/// Debian packages the lab, the tests and the benchmarks run.
const PACKAGES: &[&str] = &[
    "iproute2",
    "ethtool",
    "netsniff-ng", // trafgen
    "iperf3",
    "wrk",
    "nghttp2-client", // h2load
    "nginx",
    "haproxy",
    "bpftool",
    "tcpdump",
    "nftables",
    "iptables",
    "conntrack",
    "socat",
    "curl",
    "util-linux", // taskset (the L7 benchmark pins proxies and load generators to cores)
    "musl-tools", // musl-gcc: ring's C for the static binary of `cargo xtask image`
    "buildah",    // `cargo xtask image`
];

/// The Rust target of the static binary in the container image (`cargo xtask image`).
pub(crate) const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// The bpf-linker release known to build against the nightly's LLVM (docs: shared toolchain notes).
const BPF_LINKER_VERSION: &str = "0.13.0";

/// `cargo xtask setup` options.
#[derive(Debug, clap::Args)]
pub(crate) struct SetupArgs {
    /// Print what would be done (including how bpf-linker would be built) without doing it.
    #[arg(long)]
    pub dry_run: bool,
}

/// Runs every step.
pub(crate) fn run(args: &SetupArgs) -> Result<()> {
    if !args.dry_run && !cmd::is_root() {
        bail!("setup installs packages and mounts bpffs: run it as root");
    }
    packages(args.dry_run)?;
    kubectl(args.dry_run)?;
    rust_src(args.dry_run)?;
    musl_target(args.dry_run)?;
    bpf_linker(args.dry_run)?;
    bpffs(args.dry_run)?;
    eprintln!("setup: done");
    Ok(())
}

fn packages(dry_run: bool) -> Result<()> {
    let missing = missing_packages()?;
    if missing.is_empty() {
        eprintln!("setup: Debian packages present");
        return Ok(());
    }
    apt_install(&missing, dry_run)
}

/// `apt-get update` then `apt-get install` of `packages`.
fn apt_install(packages: &[&str], dry_run: bool) -> Result<()> {
    let mut update = Command::new("apt-get");
    update.args(["update", "-q"]);
    let mut install = Command::new("apt-get");
    install
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(packages);
    if dry_run {
        eprintln!("setup: would run `{}`", cmd::display(&update));
        eprintln!("setup: would run `{}`", cmd::display(&install));
        return Ok(());
    }
    // The package lists of a fresh machine are empty or stale: update only when installing.
    cmd::run(&mut update)?;
    cmd::run(&mut install)
}

/// Packages from [`PACKAGES`] that dpkg does not list as installed.
fn missing_packages() -> Result<Vec<&'static str>> {
    // dpkg-query exits 1 when some package is unknown; its stdout still lists the known ones.
    let output = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${Status}\\n"])
        .args(PACKAGES)
        .output()
        .context("running dpkg-query (is this Debian?)")?;
    let listing = String::from_utf8_lossy(&output.stdout);
    let installed: Vec<&str> = listing
        .lines()
        .filter(|line| line.ends_with(" install ok installed"))
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    Ok(PACKAGES
        .iter()
        .copied()
        .filter(|package| !installed.contains(package))
        .collect())
}

/// Debian's package for `kubectl` when none is installed.
const KUBECTL_PACKAGE: &str = "kubernetes-client";

/// A `kubectl` for the manifest tests (`kubectl kustomize` renders the overlays). Any kubectl on
/// PATH will do (a distribution's, Google's `kubectl` package, a downloaded binary), so this
/// asks the binary rather than dpkg, and installs Debian's only when there is none. (Debian 12's
/// is kubectl 1.20, whose kustomize v2 cannot render the overlays: `resources:` naming a
/// directory and `patches:` came with kustomize v3/v4. The tests say so when rendering fails.)
fn kubectl(dry_run: bool) -> Result<()> {
    if cmd::succeeds("kubectl", &["version", "--client"]) {
        eprintln!("setup: kubectl present");
        return Ok(());
    }
    apt_install(&[KUBECTL_PACKAGE], dry_run)?;
    if !dry_run && !cmd::succeeds("kubectl", &["version", "--client"]) {
        bail!("{KUBECTL_PACKAGE} was installed but `kubectl version --client` fails");
    }
    Ok(())
}

fn rust_src(dry_run: bool) -> Result<()> {
    let installed = cmd::output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .context("listing the nightly toolchain's components (is rustup's nightly installed?)")?;
    // Names carry the target triple, except rust-src.
    if installed
        .lines()
        .any(|line| line.trim().starts_with("rust-src"))
    {
        eprintln!("setup: rust-src (nightly) present");
        return Ok(());
    }
    let mut add = Command::new("rustup");
    add.args(["component", "add", "rust-src", "--toolchain", "nightly"]);
    if dry_run {
        eprintln!("setup: would run `{}`", cmd::display(&add));
        return Ok(());
    }
    cmd::run(&mut add)
}

/// The musl target's standard library for the stable toolchain (the one cargo uses here).
fn musl_target(dry_run: bool) -> Result<()> {
    let installed = cmd::output(Command::new("rustup").args(["target", "list", "--installed"]))
        .context("listing the installed Rust targets (is rustup installed?)")?;
    if installed.lines().any(|line| line.trim() == MUSL_TARGET) {
        eprintln!("setup: Rust target {MUSL_TARGET} present");
        return Ok(());
    }
    let mut add = Command::new("rustup");
    add.args(["target", "add", MUSL_TARGET]);
    if dry_run {
        eprintln!("setup: would run `{}`", cmd::display(&add));
        return Ok(());
    }
    cmd::run(&mut add)
}

/// How bpf-linker gets built against the nightly's LLVM: a prefix whose lib/ holds the
/// nightly's libLLVM under the names llvm-sys looks for.
#[derive(Debug)]
struct BpfLinkerPlan {
    /// LLVM major version of the nightly (`rustc +nightly -vV`).
    llvm_major: String,
    /// The real shared library in the nightly's sysroot.
    library: PathBuf,
    /// The prefix handed to llvm-sys as LLVM_PREFIX; the built binary keeps it as its RUNPATH,
    /// so it lives in a cache directory that outlasts `cargo clean`.
    prefix: PathBuf,
}

impl BpfLinkerPlan {
    fn derive() -> Result<Self> {
        let sysroot = cmd::output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
            .context("asking the nightly toolchain for its sysroot")?;
        let sysroot = PathBuf::from(sysroot.trim());
        let version = cmd::output(Command::new("rustc").args(["+nightly", "-vV"]))?;
        let llvm_major = llvm_major(&version)
            .with_context(|| format!("no LLVM version in `rustc +nightly -vV`:\n{version}"))?;
        let library = real_libllvm(&sysroot.join("lib"))?;
        let cache = match std::env::var_os("XDG_CACHE_HOME") {
            Some(dir) => PathBuf::from(dir),
            None => {
                PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".cache")
            }
        };
        let prefix = cache.join("xdp-ingress").join(format!("llvm-{llvm_major}"));
        Ok(Self {
            llvm_major,
            library,
            prefix,
        })
    }

    fn library_name(&self) -> Result<&str> {
        self.library
            .file_name()
            .and_then(|name| name.to_str())
            .with_context(|| format!("odd library path {}", self.library.display()))
    }

    /// `P/lib/libLLVM.so` and `P/lib/<real name>`, both pointing at the real library.
    fn links(&self) -> Result<Vec<PathBuf>> {
        let lib = self.prefix.join("lib");
        Ok(vec![lib.join("libLLVM.so"), lib.join(self.library_name()?)])
    }

    fn install_command(&self) -> Command {
        let mut install = Command::new("cargo");
        install
            .env("LLVM_PREFIX", &self.prefix)
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features"])
            .arg(format!("llvm-{}", self.llvm_major));
        install
    }
}

/// The major version from `rustc -vV`'s "LLVM version: 22.1.4" line.
fn llvm_major(rustc_version: &str) -> Option<String> {
    rustc_version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version:"))
        .and_then(|version| version.trim().split('.').next())
        .filter(|major| !major.is_empty() && major.bytes().all(|b| b.is_ascii_digit()))
        .map(str::to_string)
}

/// The ELF file among the sysroot's `libLLVM*` (its sibling `libLLVM-NN-rust-*.so` is a linker
/// script, which llvm-sys cannot use).
fn real_libllvm(lib_dir: &Path) -> Result<PathBuf> {
    let entries =
        fs::read_dir(lib_dir).with_context(|| format!("listing {}", lib_dir.display()))?;
    let mut found = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("listing {}", lib_dir.display()))?
            .path();
        let is_llvm = path
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.starts_with("libLLVM"));
        if is_llvm && path.is_file() && is_elf(&path)? {
            found.push(path);
        }
    }
    found.sort();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!(
            "no libLLVM shared library in {} (is the nightly toolchain complete?)",
            lib_dir.display()
        ),
        many => bail!(
            "several libLLVM libraries in {}: {many:?}",
            lib_dir.display()
        ),
    }
}

fn is_elf(path: &Path) -> Result<bool> {
    use std::io::Read as _;
    let mut magic = [0u8; 4];
    let mut file = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(file.read_exact(&mut magic).is_ok() && magic == *b"\x7fELF")
}

fn bpf_linker(dry_run: bool) -> Result<()> {
    let works = cmd::succeeds("bpf-linker", &["--version"]);
    if works && !dry_run {
        eprintln!("setup: bpf-linker present");
        return Ok(());
    }
    let plan = BpfLinkerPlan::derive()?;
    if dry_run {
        if works {
            eprintln!("setup: bpf-linker present; building it would take these steps:");
        } else {
            eprintln!("setup: would build bpf-linker:");
        }
        for link in plan.links()? {
            eprintln!(
                "setup:   ln -sf {} {}",
                plan.library.display(),
                link.display()
            );
        }
        eprintln!("setup:   {}", cmd::display(&plan.install_command()));
        return Ok(());
    }
    let lib = plan.prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    for link in plan.links()? {
        // Replace whatever is there: a link left by an older nightly points at a removed file.
        match fs::remove_file(&link) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(error).with_context(|| format!("removing {}", link.display()))
            }
        }
        std::os::unix::fs::symlink(&plan.library, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    cmd::run(&mut plan.install_command())?;
    if !cmd::succeeds("bpf-linker", &["--version"]) {
        bail!("bpf-linker was installed but does not run; is ~/.cargo/bin on PATH?");
    }
    Ok(())
}

fn bpffs(dry_run: bool) -> Result<()> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    let mounted = mounts.lines().any(|line| {
        let mut fields = line.split_whitespace();
        let (_, target, fstype) = (fields.next(), fields.next(), fields.next());
        target == Some("/sys/fs/bpf") && fstype == Some("bpf")
    });
    if mounted {
        eprintln!("setup: bpffs mounted at /sys/fs/bpf");
        return Ok(());
    }
    let mut mount = Command::new("mount");
    mount.args(["-t", "bpf", "bpf", "/sys/fs/bpf"]);
    if dry_run {
        eprintln!("setup: would run `{}`", cmd::display(&mount));
        return Ok(());
    }
    cmd::run(&mut mount)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major_comes_from_the_llvm_line() {
        let text = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nbinary: rustc\n\
                    host: x86_64-unknown-linux-gnu\nLLVM version: 22.1.4\n";
        assert_eq!(llvm_major(text).as_deref(), Some("22"));
        assert_eq!(llvm_major("rustc 1.0.0\nLLVM version: \n"), None);
        assert_eq!(llvm_major("rustc 1.0.0\n"), None);
    }

    #[test]
    fn the_real_libllvm_is_the_elf_file_not_the_linker_script() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("xtask-libllvm-{}", std::process::id()));
        fs::create_dir_all(&dir)?;
        fs::write(
            dir.join("libLLVM-22-rust-1.97.0-nightly.so"),
            "INPUT(libLLVM.so.22.1-rust-1.97.0-nightly)\n",
        )?;
        fs::write(
            dir.join("libLLVM.so.22.1-rust-1.97.0-nightly"),
            b"\x7fELF\x02\x01",
        )?;
        fs::write(dir.join("librustc_driver-0123.so"), b"\x7fELF\x02\x01")?;
        let found = real_libllvm(&dir);
        fs::remove_dir_all(&dir)?;
        assert_eq!(
            found?.file_name().and_then(|name| name.to_str()),
            Some("libLLVM.so.22.1-rust-1.97.0-nightly")
        );
        Ok(())
    }
}
