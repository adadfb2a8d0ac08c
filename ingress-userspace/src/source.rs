//! Sources produce [`crate::model::ClusterObjects`]; they know nothing about plans or sinks.
pub mod files;
pub mod kube;
pub mod yaml_depth;
