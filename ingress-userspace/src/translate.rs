//! The translator: pure functions from [`crate::model::ClusterObjects`] to plans. No sockets, no
//! maps, no clocks; sources feed it and sinks apply what it returns.
pub mod l4;
pub mod l7;
