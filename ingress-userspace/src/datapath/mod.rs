//! The L4 sink: loads the XDP program, attaches it, and keeps its maps equal to the L4 plan.
pub mod loader;
pub mod maglev;
pub mod sync;
