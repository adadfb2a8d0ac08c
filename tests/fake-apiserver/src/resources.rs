//! The resource table: which API groups, versions and resources the fake server serves.

/// One served resource (`services`, `ingresses`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceDef {
    /// API group, `""` for the core group.
    pub group: &'static str,
    /// API version, e.g. `v1`.
    pub version: &'static str,
    /// The plural resource name used in URLs.
    pub plural: &'static str,
    /// The object kind.
    pub kind: &'static str,
    /// Namespaced (true) or cluster-scoped (false).
    pub namespaced: bool,
    /// Whether the resource has a `/status` subresource: then writes to the main resource keep the
    /// stored `.status` and writes to `/status` change only `.status`, as the real server does.
    pub status_subresource: bool,
}

impl ResourceDef {
    /// `v1` for the core group, else `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `services` or `ingresses.networking.k8s.io`, as used in the real server's messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

const fn def(
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    status_subresource: bool,
) -> ResourceDef {
    ResourceDef {
        group,
        version,
        plural,
        kind,
        namespaced,
        status_subresource,
    }
}

/// Every resource the fake server serves.
pub const RESOURCES: &[ResourceDef] = &[
    def("", "v1", "services", "Service", true, true),
    def("", "v1", "secrets", "Secret", true, false),
    def("", "v1", "configmaps", "ConfigMap", true, false),
    def("", "v1", "events", "Event", true, false),
    def("", "v1", "endpoints", "Endpoints", true, false),
    def("", "v1", "pods", "Pod", true, true),
    def("", "v1", "namespaces", "Namespace", false, true),
    def("", "v1", "nodes", "Node", false, true),
    def(
        "discovery.k8s.io",
        "v1",
        "endpointslices",
        "EndpointSlice",
        true,
        false,
    ),
    def(
        "networking.k8s.io",
        "v1",
        "ingresses",
        "Ingress",
        true,
        true,
    ),
    def(
        "networking.k8s.io",
        "v1",
        "ingressclasses",
        "IngressClass",
        false,
        false,
    ),
    def("coordination.k8s.io", "v1", "leases", "Lease", true, false),
    def("events.k8s.io", "v1", "events", "Event", true, false),
];

/// Index of the resource `plural` in `group/version`.
pub(crate) fn by_path(group: &str, version: &str, plural: &str) -> Option<usize> {
    RESOURCES
        .iter()
        .position(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Index of the resource with this `apiVersion` and `kind`.
pub(crate) fn by_kind(api_version: &str, kind: &str) -> Option<usize> {
    RESOURCES
        .iter()
        .position(|r| r.kind == kind && r.api_version() == api_version)
}

/// Index of the resource named by `plural` (`services`) or `plural.group`
/// (`ingresses.networking.k8s.io`); a bare plural picks the first match (core `events`).
pub(crate) fn by_name(name: &str) -> Option<usize> {
    RESOURCES
        .iter()
        .position(|r| r.qualified() == name)
        .or_else(|| RESOURCES.iter().position(|r| r.plural == name))
}
