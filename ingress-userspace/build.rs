//! Builds the eBPF objects with aya-build (nightly, build-std=core, bpf-linker) into OUT_DIR,
//! where `datapath::loader` embeds the agent's (`ingress-ebpf`) and `datapath::reference` the
//! bench's (`ingress-ebpf-bench`). `cargo xtask setup` installs what this needs.
fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = std::path::Path::new(&manifest_dir).join("../ingress-ebpf");
    let ebpf_dir = ebpf_dir.canonicalize()?;
    let root_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "ingress-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
