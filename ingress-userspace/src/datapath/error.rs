//! The datapath's one error type, shared by loading, pinning, the kernel maps and the sync: each
//! variant names what failed (the path, the interface, the map or the program) and keeps the
//! error underneath as its source, so a caller can tell a full map from a refused program.

use std::path::PathBuf;

use aya::{
    maps::MapError,
    pin::PinError,
    programs::{links::LinkError, ProgramError},
    EbpfError,
};

use crate::datapath::AttachMode;

/// A failure loading, attaching or pinning the datapath, writing its maps, or a full map.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// A map operation failed.
    #[error("{operation}: {source}")]
    Map {
        /// What was being done.
        operation: String,
        /// The error from aya.
        source: MapError,
    },
    /// No free id or slot range left.
    #[error("{0} exhausted; raise the capacity")]
    Exhausted(&'static str),
    /// The embedded object does not parse.
    #[error("parsing the eBPF object: {source}")]
    ParseObject {
        /// Why.
        source: aya_obj::ParseError,
    },
    /// The embedded object could not be loaded (a map could not be created or opened).
    #[error("loading the eBPF object: {source}")]
    LoadObject {
        /// Why.
        source: Box<EbpfError>,
    },
    /// The embedded object declares no such map.
    #[error("map {0} missing from the eBPF object")]
    MapNotInObject(&'static str),
    /// The loaded object no longer holds the map (it was taken already).
    #[error("map {0} missing")]
    MapMissing(&'static str),
    /// A map has another type than the agent needs.
    #[error("{map} is not {expected}")]
    MapType {
        /// The map.
        map: &'static str,
        /// What it should be.
        expected: &'static str,
    },
    /// The Maglev slot array could not be mapped into the agent.
    #[error("mmap of {map}: {source}")]
    Mmap {
        /// The map.
        map: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The possible CPUs (for per-CPU values) could not be read.
    #[error("{what}: {source}")]
    Cpus {
        /// What was read.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// Per-CPU values could not be built.
    #[error("per-CPU values: {source}")]
    PerCpuValues {
        /// Why.
        source: std::io::Error,
    },
    /// The object has no program of that name.
    #[error("program {0} missing")]
    ProgramMissing(&'static str),
    /// The program is of another type.
    #[error("{program} is not XDP: {source}")]
    NotXdp {
        /// The program.
        program: &'static str,
        /// Why.
        source: ProgramError,
    },
    /// The TC program is of another type.
    #[error("{program} is not a TC classifier: {source}")]
    WrongProgramType {
        /// The program.
        program: &'static str,
        /// Why.
        source: ProgramError,
    },
    /// No interface of that name.
    #[error("no interface named {interface:?}")]
    NoInterface {
        /// The name given.
        interface: String,
    },
    /// The TC egress program could not be attached.
    #[error("attaching the TC egress program to {interface}: {source}")]
    AttachEgress {
        /// The interface.
        interface: String,
        /// Why.
        source: ProgramError,
    },
    /// A pinned link holds no TCX attachment.
    #[error("{} is not a TCX link: {source}", path.display())]
    NotTcLink {
        /// The pin's path.
        path: PathBuf,
        /// Why.
        source: LinkError,
    },
    /// The kernel refused the program.
    #[error("the verifier rejected {program}: {source}")]
    Verifier {
        /// The program.
        program: &'static str,
        /// The kernel's answer (with the verifier log).
        source: ProgramError,
    },
    /// No loaded program has this id.
    #[error("no loaded program with id {0}")]
    NoProgram(u32),
    /// The maps a loaded program uses could not be listed.
    #[error("map ids of program {program_id}: {source}")]
    ProgramMaps {
        /// The program's id.
        program_id: u32,
        /// Why.
        source: ProgramError,
    },
    /// A loaded program does not use a map the agent needs.
    #[error("program {program_id} uses no map {map}")]
    ProgramLacksMap {
        /// The program's id.
        program_id: u32,
        /// The map.
        map: &'static str,
    },
    /// The XDP program could not be attached to an interface.
    #[error("attaching XDP to {interface} ({mode:?}): {source}")]
    Attach {
        /// The interface.
        interface: String,
        /// The mode asked for.
        mode: AttachMode,
        /// Why.
        source: ProgramError,
    },
    /// The new attachment's link could not be taken over for pinning.
    #[error("taking the XDP link of {interface}: {source}")]
    TakeLink {
        /// The interface.
        interface: String,
        /// Why.
        source: ProgramError,
    },
    /// The attachment is not a bpf_link, so it cannot be pinned.
    #[error("XDP on {interface} is not a bpf_link (kernel too old to pin): {source}")]
    NotBpfLink {
        /// The interface.
        interface: String,
        /// Why.
        source: LinkError,
    },
    /// A link could not be pinned.
    #[error("pinning {}: {source}", path.display())]
    PinLink {
        /// The pin's path.
        path: PathBuf,
        /// Why.
        source: PinError,
    },
    /// A pinned link could not be opened.
    #[error("opening {}: {source}", path.display())]
    OpenLink {
        /// The pin's path.
        path: PathBuf,
        /// Why.
        source: LinkError,
    },
    /// A pinned link holds no XDP attachment.
    #[error("{} is not an XDP link: {source}", path.display())]
    NotXdpLink {
        /// The pin's path.
        path: PathBuf,
        /// Why.
        source: LinkError,
    },
    /// The program in a pinned link could not be replaced.
    #[error("{operation} {}: {source}", path.display())]
    UpdateLink {
        /// What was being done ("updating", "taking").
        operation: &'static str,
        /// The pin's path.
        path: PathBuf,
        /// Why.
        source: ProgramError,
    },
    /// The pin directory is not on a bpffs.
    #[error(
        "{} is not on a bpf filesystem: mount one (`mount -t bpf bpf {}`) or pass \
         --bpffs off to run without pinning (the datapath then stops with the agent)",
        root.display(),
        parent.display()
    )]
    NotBpffs {
        /// The pin directory.
        root: PathBuf,
        /// Its parent, where a bpffs would be mounted.
        parent: PathBuf,
    },
    /// A file or directory under the pin directory could not be made or removed.
    #[error("{operation} {}: {source}", path.display())]
    PinFile {
        /// What was being done ("creating", "unpinning", "removing").
        operation: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}
