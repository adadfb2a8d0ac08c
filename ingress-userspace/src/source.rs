//! Sources produce [`crate::model::ClusterObjects`]; they know nothing about plans or sinks.
pub(crate) mod files;
pub(crate) mod kube;
pub(crate) mod yaml_depth;
