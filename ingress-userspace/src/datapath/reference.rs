//! The reference programs `cargo xtask bench l4` compares the datapath with (floor, redirect
//! ceiling, sink). They are their own object, built beside the agent's, so the agent never loads
//! or carries them in its program; only the bench calls [`ReferencePrograms::load`].

use aya::{programs::Xdp, Ebpf};

use crate::datapath::{loader::xdp_program, DatapathError};

/// The reference object built by build.rs (the `ingress-ebpf-bench` binary of the eBPF crate).
static REFERENCE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ingress-ebpf-bench"));

/// The loaded reference object; its programs load on first use, and links made through it
/// detach when it is dropped.
pub struct ReferencePrograms {
    ebpf: Ebpf,
}

impl std::fmt::Debug for ReferencePrograms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReferencePrograms").finish_non_exhaustive()
    }
}

impl ReferencePrograms {
    /// Loads the object (its maps; no program yet). Needs CAP_BPF (root here).
    pub fn load() -> Result<Self, DatapathError> {
        let ebpf = Ebpf::load(REFERENCE_OBJECT).map_err(|source| DatapathError::LoadObject {
            source: Box::new(source),
        })?;
        Ok(Self { ebpf })
    }

    /// The XDP program `name` (one of `ingress_common::bench`), loaded into the kernel.
    pub fn program(&mut self, name: &'static str) -> Result<&mut Xdp, DatapathError> {
        let program = xdp_program(&mut self.ebpf, name)?;
        if program.fd().is_err() {
            program.load().map_err(|source| DatapathError::Verifier {
                program: name,
                source,
            })?;
        }
        Ok(program)
    }

    /// The whole object, for the reference programs' maps.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }
}
