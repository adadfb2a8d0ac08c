//! The L4 sink: loads the XDP program, attaches it, and keeps its maps equal to the L4 plan.
mod egress;
mod error;
mod kernel_maps;
mod loader;
pub(crate) mod maglev;
mod pin;
pub mod reference;
pub mod sync;

pub use error::DatapathError;
pub use kernel_maps::{datapath_now_ns, KernelMaps};
pub use loader::{AttachMode, Datapath, MapSizes};
pub use pin::{PinDir, PinnedState};
