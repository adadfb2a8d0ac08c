//! The uplinks' second hook: the TC egress program (`tc_reverse_nat`, attached as a TCX link
//! beside each XDP link, pinned as `links/tc-egress-<interface>` and replaced in place on a
//! restart like the XDP link) and the node's interfaces (`NODE_INTERFACES`: the agent's own
//! `--interface`s and the node's address on each, the SNAT source), the only ones XDP redirects
//! into. Everything else, a local pod's veth above all, is reached through the stack, and the
//! pod's replies get their frontend back at the uplink's TC egress.

use std::{ffi::CString, path::Path};

use aya::{
    maps::HashMap,
    programs::{
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        LinkOrder, SchedClassifier, TcAttachType,
    },
};
use ingress_common::{map_names, TC_EGRESS_PROGRAM};

use crate::datapath::{loader::pin_link, pin::pin_file, Datapath, DatapathError};

/// The interface's index, or an error naming it.
pub(super) fn ifindex(interface: &str) -> Result<u32, DatapathError> {
    let name = CString::new(interface).map_err(|_| DatapathError::NoInterface {
        interface: interface.to_string(),
    })?;
    // SAFETY: FFI call with a NUL-terminated name; it only reads it.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(DatapathError::NoInterface {
            interface: interface.to_string(),
        });
    }
    Ok(index)
}

impl Datapath {
    /// The TC egress program (for attaching and for BPF_PROG_TEST_RUN).
    pub fn egress_program(&mut self) -> Result<&mut SchedClassifier, DatapathError> {
        self.ebpf
            .program_mut(TC_EGRESS_PROGRAM)
            .ok_or(DatapathError::ProgramMissing(TC_EGRESS_PROGRAM))?
            .try_into()
            .map_err(|source| DatapathError::WrongProgramType {
                program: TC_EGRESS_PROGRAM,
                source,
            })
    }

    /// Makes `interface` one of the node's in `NODE_INTERFACES`: XDP may redirect frames into it,
    /// and flows to remote endpoints that leave by it are SNATed to its first IPv4 address.
    /// Called before the programs are attached there (the agent's interfaces; the test rigs').
    pub fn add_interface(&mut self, interface: &str) -> Result<(), DatapathError> {
        let index = ifindex(interface)?;
        let address = crate::node::interface_addresses(&[interface.to_string()])
            .ok()
            .and_then(|addresses| addresses.first().copied())
            .map_or(0, |addr| u32::from_ne_bytes(addr.octets()));
        let map = self
            .ebpf
            .map_mut(map_names::NODE_INTERFACES)
            .ok_or(DatapathError::MapMissing(map_names::NODE_INTERFACES))?;
        let mut interfaces: HashMap<_, u32, u32> =
            HashMap::try_from(map).map_err(|source| DatapathError::Map {
                operation: format!("opening {}", map_names::NODE_INTERFACES),
                source,
            })?;
        interfaces
            .insert(index, address, 0)
            .map_err(|source| DatapathError::Map {
                operation: format!("adding {interface} to {}", map_names::NODE_INTERFACES),
                source,
            })
    }

    /// Attaches the TC egress program to `interface` as a TCX link; with pins, replaces the
    /// program in the pinned link instead, or pins the new link.
    pub(super) fn attach_egress(&mut self, interface: &str) -> Result<(), DatapathError> {
        let pins = self.pins.clone();
        let path = pins.as_ref().map(|pins| pins.egress_link(interface));
        if let Some(path) = path.as_deref().filter(|p| p.exists()) {
            match self.replace_in_pinned_egress_link(path) {
                Ok(()) => return Ok(()),
                Err(error) => {
                    tracing::warn!(interface, %error, "pinned TC link unusable; attaching anew");
                    std::fs::remove_file(path).map_err(pin_file("removing", path))?;
                }
            }
        }
        let attach_error = |source| DatapathError::AttachEgress {
            interface: interface.to_string(),
            source,
        };
        let program = self.egress_program()?;
        let id = program
            .attach_with_options(
                interface,
                TcAttachType::Egress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(attach_error)?;
        let Some(path) = path else {
            self.attached_egress.push((interface.to_string(), id));
            return Ok(());
        };
        let link = program.take_link(id).map_err(attach_error)?;
        pin_link(interface, link, &path)
    }

    fn replace_in_pinned_egress_link(&mut self, path: &Path) -> Result<(), DatapathError> {
        let pinned = PinnedLink::from_pin(path).map_err(|source| DatapathError::OpenLink {
            path: path.to_path_buf(),
            source,
        })?;
        let link = SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(|source| {
            DatapathError::NotTcLink {
                path: path.to_path_buf(),
                source,
            }
        })?;
        let update_error = |operation| {
            let path = path.to_path_buf();
            move |source| DatapathError::UpdateLink {
                operation,
                path,
                source,
            }
        };
        let program = self.egress_program()?;
        let id = program
            .attach_to_link(link)
            .map_err(update_error("updating"))?;
        drop(program.take_link(id).map_err(update_error("taking"))?);
        Ok(())
    }
}
