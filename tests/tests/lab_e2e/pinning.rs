//! The agent's bpffs pins: a bpffs of the test's own, and pinned maps reused only when their
//! layout matches.

use std::path::PathBuf;

use anyhow::{ensure, Context as _, Result};

/// A bpffs mounted for one test, so the agent can pin where `ip netns exec` still sees it (that
/// command remounts /sys, hiding the host's /sys/fs/bpf). Unmounted on drop, also after a
/// failure: that drops every pin under it, so nothing stays attached.
pub(crate) struct Bpffs {
    pub(crate) dir: PathBuf,
}

impl Bpffs {
    pub(crate) fn mount(tag: &str) -> Result<Self> {
        let dir =
            std::env::temp_dir().join(format!("xdp-ingress-bpffs-{tag}-{}", std::process::id()));
        let _ = std::process::Command::new("umount").arg(&dir).output();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let status = std::process::Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&dir)
            .status()
            .context("running mount")?;
        ensure!(
            status.success(),
            "mount -t bpf bpf {}: {status}",
            dir.display()
        );
        Ok(Self { dir })
    }

    /// The agent's `--bpffs`.
    pub(crate) fn pins(&self) -> PathBuf {
        self.dir.join("xdp-ingress")
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.dir).output();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[test]
fn pinned_maps_are_reused_only_when_their_layout_matches() -> Result<()> {
    if !xdp_ingress_tests::root::root_or_skip(
        "pinned_maps_are_reused_only_when_their_layout_matches",
    ) {
        return Ok(());
    }
    use xdp_ingress::datapath::{Datapath, MapSizes, PinDir, PinnedState};
    // SAFETY: plain FFI call without arguments.
    ensure!(unsafe { libc::geteuid() } == 0, "needs root (BPF, mount)");
    let bpffs = Bpffs::mount("xe-pm")?;
    let pins = PinDir::new(bpffs.pins());
    let sizes = MapSizes {
        services: 64,
        backends: 256,
        maglev_slots: 1 << 16,
        flows: 1024,
        snat_flows: 1024,
        affinity: 1024,
    };
    let load = |sizes: &MapSizes| -> Result<PinnedState> {
        let (datapath, state) = Datapath::load_pinned(sizes, Some(&pins))?;
        drop(datapath);
        Ok(state)
    };
    ensure!(
        load(&sizes)? == PinnedState::Fresh,
        "nothing was pinned yet"
    );
    ensure!(
        load(&sizes)? == PinnedState::Adopted,
        "same build, same sizes"
    );
    // A different flow table size: the state maps are adopted, FLOWS is made anew.
    let more_flows = MapSizes {
        flows: 2048,
        ..sizes
    };
    ensure!(
        load(&more_flows)? == PinnedState::Adopted,
        "only FLOWS differs"
    );
    // Bigger SNAT and affinity tables (`--max-snat-flows`, `--max-affinity-entries`): made
    // anew like FLOWS, the forwarding state adopted.
    let more_snat = MapSizes {
        snat_flows: 4096,
        affinity: 2048,
        ..more_flows
    };
    ensure!(
        load(&more_snat)? == PinnedState::Adopted,
        "only REVERSE_FLOWS and AFFINITY differ"
    );
    // A different Service capacity changes state maps: everything starts empty.
    let more_services = MapSizes {
        services: 128,
        ..more_snat
    };
    ensure!(
        load(&more_services)? == PinnedState::Fresh,
        "state maps differ"
    );
    ensure!(
        load(&more_services)? == PinnedState::Adopted,
        "pinned again"
    );
    let removed = pins.remove_all()?;
    ensure!(removed.len() >= 13, "cleanup removed {removed:?}");
    ensure!(!bpffs.pins().exists(), "pin directory left behind");
    Ok(())
}
