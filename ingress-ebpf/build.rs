//! Re-run the eBPF build when bpf-linker changes (the aya template's pattern).
fn main() {
    if let Ok(bpf_linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", bpf_linker.display());
    }
}
