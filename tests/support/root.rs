//! Tests that need root (namespaces, XDP, BPF maps) skip with a message when run as another
//! user, so a plain `cargo test` passes what it can. As root nothing is skipped, so a skip can
//! never hide a failure in `cargo xtask test`, which refuses to run without root.

/// What a skipped test prints.
pub const SKIP_MESSAGE: &str = "skipped: needs root (CAP_NET_ADMIN, CAP_BPF)";

/// Whether the process runs as root.
pub fn is_root() -> bool {
    // SAFETY: plain FFI call without arguments.
    unsafe { libc::geteuid() == 0 }
}

/// `true` when `test` may run (we are root); otherwise prints `<test>: skipped: needs root ...`
/// and returns `false`. Use at the top of every test that needs root:
/// `if !root_or_skip("name") { return Ok(()); }`.
pub fn root_or_skip(test: &str) -> bool {
    if is_root() {
        return true;
    }
    eprintln!("{test}: {SKIP_MESSAGE}");
    false
}
