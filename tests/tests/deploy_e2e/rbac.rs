//! RBAC as the API server's authorizer applies it to one service account: the rules of the
//! ClusterRoles and Roles bound to it (a Role only in its own namespace), and the API calls in
//! the fake API server's request log named the way those rules name them.

use std::fmt;

use anyhow::{bail, ensure, Context as _, Result};
use fake_apiserver::{RequestRecord, RESOURCES};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};

use crate::manifests::{of_kind, Document};

/// A service account, the subject of the bindings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Account {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl Account {
    fn is(&self, subject: &Subject) -> bool {
        subject.kind == "ServiceAccount"
            && subject.name == self.name
            && subject.namespace.as_deref() == Some(self.namespace.as_str())
    }
}

/// One verb on one resource, as a rule grants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Grant {
    /// API group, `""` for core.
    pub group: String,
    /// `plural` or `plural/subresource`.
    pub resource: String,
    /// The verb.
    pub verb: String,
    /// `None`: every namespace and cluster-scoped objects (a ClusterRole bound cluster-wide);
    /// `Some(ns)`: only in `ns` (a Role, or anything bound by a RoleBinding).
    pub namespace: Option<String>,
    /// `resourceNames`; empty: any name.
    pub names: Vec<String>,
    /// The role and binding it comes from.
    pub from: String,
}

impl Grant {
    /// Whether this grant authorizes `call`.
    pub(crate) fn allows(&self, call: &Call) -> bool {
        self.group == call.group
            && self.resource == call.resource
            && self.verb == call.verb
            && self
                .namespace
                .as_ref()
                .is_none_or(|ns| call.namespace.as_ref() == Some(ns))
            && (self.names.is_empty() || call.name.as_ref().is_some_and(|n| self.names.contains(n)))
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        write!(f, "{} {}/{}", self.verb, group, self.resource)?;
        match &self.namespace {
            Some(ns) => write!(f, " in namespace {ns}")?,
            None => write!(f, " cluster-wide")?,
        }
        if !self.names.is_empty() {
            write!(f, " named {:?}", self.names)?;
        }
        write!(f, " ({})", self.from)
    }
}

/// What the rules of `role` grant, limited to `namespace` when given.
fn rule_grants(
    rules: &[PolicyRule],
    namespace: Option<&str>,
    from: &str,
    out: &mut Vec<Grant>,
) -> Result<()> {
    for rule in rules {
        ensure!(
            rule.non_resource_urls.as_ref().is_none_or(Vec::is_empty),
            "{from}: nonResourceURLs are never called by the agent"
        );
        let groups = rule.api_groups.clone().unwrap_or_default();
        let resources = rule.resources.clone().unwrap_or_default();
        ensure!(
            !groups.is_empty() && !resources.is_empty() && !rule.verbs.is_empty(),
            "{from}: a rule without apiGroups, resources or verbs: {rule:?}"
        );
        // A wildcard grants more than any set of calls can use.
        for word in groups.iter().chain(&resources).chain(&rule.verbs) {
            ensure!(word != "*", "{from}: wildcard in {rule:?}");
        }
        for group in &groups {
            for resource in &resources {
                for verb in &rule.verbs {
                    out.push(Grant {
                        group: group.clone(),
                        resource: resource.clone(),
                        verb: verb.clone(),
                        namespace: namespace.map(str::to_string),
                        names: rule.resource_names.clone().unwrap_or_default(),
                        from: from.to_string(),
                    });
                }
            }
        }
    }
    Ok(())
}

fn rbac_ref(role_ref: &RoleRef, from: &str) -> Result<()> {
    ensure!(
        role_ref.api_group.as_deref() == Some("rbac.authorization.k8s.io"),
        "{from}: roleRef apiGroup {:?}",
        role_ref.api_group
    );
    Ok(())
}

/// Everything the manifests' RBAC grants `account`. Every ClusterRole and Role in the manifests
/// must be bound to it (here every role exists for the agent), and every binding must name a
/// role that exists.
pub(crate) fn grants(documents: &[Document], account: &Account) -> Result<Vec<Grant>> {
    let cluster_roles = of_kind::<ClusterRole>(documents)?;
    let roles = of_kind::<Role>(documents)?;
    let mut bound_cluster_roles = Vec::new();
    let mut bound_roles = Vec::new();
    let mut out = Vec::new();
    for (document, binding) in of_kind::<ClusterRoleBinding>(documents)? {
        let from = format!("ClusterRoleBinding {}", document.name());
        rbac_ref(&binding.role_ref, &from)?;
        ensure!(
            binding.role_ref.kind == "ClusterRole",
            "{from}: binds a {}",
            binding.role_ref.kind
        );
        let subjects = binding.subjects.unwrap_or_default();
        ensure!(
            subjects.iter().all(|s| account.is(s)),
            "{from}: binds someone besides {account:?}: {subjects:?}"
        );
        let (_, role) = cluster_roles
            .iter()
            .find(|(d, _)| d.name() == binding.role_ref.name)
            .with_context(|| format!("{from}: no ClusterRole {}", binding.role_ref.name))?;
        let from = format!("ClusterRole {} via {from}", binding.role_ref.name);
        rule_grants(
            &role.rules.clone().unwrap_or_default(),
            None,
            &from,
            &mut out,
        )?;
        bound_cluster_roles.push(binding.role_ref.name.clone());
    }
    for (document, binding) in of_kind::<RoleBinding>(documents)? {
        let namespace = binding
            .metadata
            .namespace
            .clone()
            .with_context(|| format!("RoleBinding {} has no namespace", document.name()))?;
        let from = format!("RoleBinding {namespace}/{}", document.name());
        rbac_ref(&binding.role_ref, &from)?;
        let subjects = binding.subjects.unwrap_or_default();
        ensure!(
            subjects.iter().all(|s| account.is(s)),
            "{from}: binds someone besides {account:?}: {subjects:?}"
        );
        let rules = match binding.role_ref.kind.as_str() {
            "Role" => {
                let (_, role) = roles
                    .iter()
                    .find(|(_, r)| {
                        r.metadata.name.as_deref() == Some(binding.role_ref.name.as_str())
                            && r.metadata.namespace.as_deref() == Some(namespace.as_str())
                    })
                    .with_context(|| {
                        format!("{from}: no Role {} in {namespace}", binding.role_ref.name)
                    })?;
                bound_roles.push((namespace.clone(), binding.role_ref.name.clone()));
                role.rules.clone().unwrap_or_default()
            }
            "ClusterRole" => {
                let (_, role) = cluster_roles
                    .iter()
                    .find(|(d, _)| d.name() == binding.role_ref.name)
                    .with_context(|| format!("{from}: no ClusterRole {}", binding.role_ref.name))?;
                bound_cluster_roles.push(binding.role_ref.name.clone());
                role.rules.clone().unwrap_or_default()
            }
            other => bail!("{from}: binds a {other}"),
        };
        let from = format!(
            "{} {} via {from}",
            binding.role_ref.kind, binding.role_ref.name
        );
        rule_grants(&rules, Some(&namespace), &from, &mut out)?;
    }
    for (document, _) in &cluster_roles {
        ensure!(
            bound_cluster_roles.iter().any(|n| n == document.name()),
            "ClusterRole {} is bound to nobody",
            document.name()
        );
    }
    for (_, role) in &roles {
        let key = (
            role.metadata.namespace.clone().unwrap_or_default(),
            role.metadata.name.clone().unwrap_or_default(),
        );
        ensure!(
            bound_roles.contains(&key),
            "Role {}/{} is bound to nobody",
            key.0,
            key.1
        );
    }
    Ok(out)
}

/// One API call, named as RBAC names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Call {
    /// API group, `""` for core.
    pub group: String,
    /// `plural` or `plural/subresource`.
    pub resource: String,
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`.
    pub verb: String,
    /// The namespace on the URL (`None`: cluster-scoped, or all namespaces).
    pub namespace: Option<String>,
    /// The object on the URL.
    pub name: Option<String>,
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        write!(f, "{} {}/{}", self.verb, group, self.resource)?;
        match &self.namespace {
            Some(ns) => write!(f, " in namespace {ns}")?,
            None => write!(f, " cluster-wide")?,
        }
        if let Some(name) = &self.name {
            write!(f, " name {name}")?;
        }
        Ok(())
    }
}

/// Whether a query string asks for a watch (`watch=true` or `watch=1`).
fn watching(query: &str) -> bool {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .any(|(key, value)| key == "watch" && (value == "true" || value == "1"))
}

/// The RBAC name of a recorded request: GET on a collection is `list`, with `watch=true`
/// `watch`, GET on an object `get`, POST `create`, PUT `update`, PATCH `patch`, DELETE `delete`
/// (`deletecollection` on a collection). A request for no resource (discovery, an unknown
/// path) fails: the RBAC here has no rule for it.
pub(crate) fn call(record: &RequestRecord) -> Result<Call> {
    let describe = || format!("{} {}?{}", record.method, record.path, record.query);
    let qualified = record
        .resource
        .as_deref()
        .with_context(|| format!("{}: not a resource request", describe()))?;
    let resource = RESOURCES
        .iter()
        .find(|r| r.qualified() == qualified)
        .with_context(|| format!("{}: unknown resource {qualified}", describe()))?;
    let verb = match (record.method.as_str(), record.name.is_some()) {
        ("GET", true) => "get",
        ("GET", false) if watching(&record.query) => "watch",
        ("GET", false) => "list",
        ("POST", false) => "create",
        ("PUT", true) => "update",
        ("PATCH", true) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => bail!("{}: no RBAC verb for it", describe()),
    };
    let resource_name = match &record.subresource {
        Some(sub) => format!("{}/{sub}", resource.plural),
        None => resource.plural.to_string(),
    };
    Ok(Call {
        group: resource.group.to_string(),
        resource: resource_name,
        verb: verb.to_string(),
        namespace: record.namespace.clone(),
        name: record.name.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(verb: &str, resource: &str, namespace: Option<&str>) -> Grant {
        Grant {
            group: "coordination.k8s.io".into(),
            resource: resource.into(),
            verb: verb.into(),
            namespace: namespace.map(str::to_string),
            names: Vec::new(),
            from: "test".into(),
        }
    }

    fn lease_call(verb: &str, namespace: Option<&str>) -> Call {
        Call {
            group: "coordination.k8s.io".into(),
            resource: "leases".into(),
            verb: verb.into(),
            namespace: namespace.map(str::to_string),
            name: Some("l".into()),
        }
    }

    #[test]
    fn a_role_allows_only_in_its_namespace_and_only_its_verbs_and_resources() -> Result<()> {
        let role = grant("get", "leases", Some("xdp-ingress"));
        ensure!(role.allows(&lease_call("get", Some("xdp-ingress"))));
        ensure!(!role.allows(&lease_call("get", Some("default"))));
        ensure!(!role.allows(&lease_call("get", None)));
        ensure!(!role.allows(&lease_call("update", Some("xdp-ingress"))));
        ensure!(!grant("get", "leases/status", None).allows(&lease_call("get", Some("x"))));
        ensure!(grant("get", "leases", None).allows(&lease_call("get", Some("any"))));
        let named = Grant {
            names: vec!["other".into()],
            ..grant("get", "leases", None)
        };
        ensure!(!named.allows(&lease_call("get", Some("x"))));
        Ok(())
    }

    #[test]
    fn watch_is_told_from_list_by_the_query() -> Result<()> {
        ensure!(watching("labelSelector=a%3Db&watch=true&resourceVersion=5"));
        ensure!(watching("watch=1"));
        ensure!(!watching("watch=false&limit=500"));
        ensure!(!watching("resourceVersion=0"));
        Ok(())
    }
}
