//! The manifests under `deploy/` as Kubernetes would receive them: kustomize directories
//! rendered with `kubectl kustomize`, every YAML document split out and deserialized into its
//! k8s-openapi type, strictly (a field the type does not know fails, see [`strict`]).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, ensure, Context as _, Result};
use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, Deployment},
        coordination::v1::Lease,
        core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount},
        discovery::v1::EndpointSlice,
        networking::v1::{Ingress, IngressClass},
        rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
    },
    Resource,
};
use serde::{de::DeserializeOwned, Deserialize as _, Serialize};
use serde_json::Value;

/// The base (not meant to be installed alone, but rendered and checked all the same).
pub(crate) const BASE: &str = "deploy/kubernetes/base";
/// The Ingress controller only: unprivileged, no BPF.
pub(crate) const L7_ONLY: &str = "deploy/kubernetes/overlays/l7-only";
/// XDP L4 forwarding plus the Ingress proxy.
pub(crate) const KUBE_PROXY_REPLACEMENT: &str = "deploy/kubernetes/overlays/kube-proxy-replacement";
/// The RBAC `--nginx-configmap` needs (applied beside an overlay).
pub(crate) const TAKEOVER: &str = "deploy/kubernetes/takeover";
/// Every kustomize directory that is rendered.
pub(crate) const KUSTOMIZATIONS: [&str; 4] = [BASE, L7_ONLY, KUBE_PROXY_REPLACEMENT, TAKEOVER];
/// Plain manifests, applied with `kubectl apply -f`.
pub(crate) const EXAMPLES: &str = "deploy/examples";

/// The repository's root.
pub(crate) fn workspace_root() -> PathBuf {
    let tests = Path::new(env!("CARGO_MANIFEST_DIR"));
    tests
        .parent()
        .map_or_else(|| tests.to_path_buf(), Path::to_path_buf)
}

/// One YAML document, checked against its type.
#[derive(Debug, Clone)]
pub(crate) struct Document {
    /// Where it came from (file or kustomize directory, and its index there).
    pub source: String,
    /// `apiVersion`.
    pub api_version: String,
    /// `kind`.
    pub kind: String,
    /// The document as JSON.
    pub value: Value,
}

impl Document {
    /// `metadata.name`.
    pub(crate) fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or("")
    }

    /// The document as `K` (the strict check already passed when it was read).
    pub(crate) fn to<K: DeserializeOwned>(&self) -> Result<K> {
        serde_json::from_value(self.value.clone())
            .with_context(|| format!("{} {} ({})", self.kind, self.name(), self.source))
    }
}

/// `kubectl kustomize DIR`, DIR relative to the repository root.
pub(crate) fn render(dir: &str) -> Result<String> {
    let path = workspace_root().join(dir);
    let output = Command::new("kubectl")
        .arg("kustomize")
        .arg(&path)
        .output()
        .context("running kubectl (`cargo xtask setup` installs one)")?;
    // kustomize before v4 (kubectl 1.20, Debian 12's kubernetes-client) takes neither a
    // directory in `resources:` nor `patches:`; say so rather than leave a puzzling error.
    ensure!(
        output.status.success(),
        "kubectl kustomize {}: {}\n{}(the overlays need kubectl 1.21 or later)",
        path.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).context("kubectl kustomize printed non-UTF-8")
}

/// The documents of a rendered kustomize directory, each strictly checked.
pub(crate) fn rendered(dir: &str) -> Result<Vec<Document>> {
    documents(&render(dir)?, dir)
}

/// Every document of a multi-document YAML text, each deserialized into its k8s-openapi type by
/// `apiVersion`/`kind` and strictly checked. Empty documents (a stray `---`) are skipped.
pub(crate) fn documents(text: &str, source: &str) -> Result<Vec<Document>> {
    let mut out = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let source = format!("{source}#{index}");
        let value = Value::deserialize(document).with_context(|| format!("{source}: YAML"))?;
        if value.is_null() {
            continue;
        }
        let field = |name: &str| {
            value[name]
                .as_str()
                .map(str::to_string)
                .with_context(|| format!("{source}: no {name}"))
        };
        let (api_version, kind) = (field("apiVersion")?, field("kind")?);
        check_typed(&api_version, &kind, &value)
            .with_context(|| format!("{source}: {kind} {:?}", value["metadata"]["name"]))?;
        out.push(Document {
            source,
            api_version,
            kind,
            value,
        });
    }
    Ok(out)
}

/// Deserializes `value` as the type its `apiVersion`/`kind` name; a kind not listed here fails
/// (a manifest nobody checks is what this test exists to prevent).
fn check_typed(api_version: &str, kind: &str, value: &Value) -> Result<()> {
    macro_rules! kinds {
        ($($type:ty),* $(,)?) => {
            $(
                if api_version == <$type>::API_VERSION && kind == <$type>::KIND {
                    return strict::<$type>(value).map(drop);
                }
            )*
        };
    }
    kinds!(
        Namespace,
        ServiceAccount,
        ClusterRole,
        ClusterRoleBinding,
        Role,
        RoleBinding,
        IngressClass,
        Ingress,
        DaemonSet,
        Deployment,
        Service,
        EndpointSlice,
        Secret,
        ConfigMap,
        Lease,
    );
    bail!("no k8s-openapi type known here for apiVersion {api_version} kind {kind}")
}

/// `value` as `K`, failing when the typed object, serialized again, differs from `value` (nulls
/// ignored on both sides): serde drops fields a type does not know, so a misspelled or misplaced
/// field shows up as lost here; a value of the wrong shape fails to deserialize.
pub(crate) fn strict<K: DeserializeOwned + Serialize>(value: &Value) -> Result<K> {
    let typed: K = serde_json::from_value(value.clone())?;
    let again = serde_json::to_value(&typed)?;
    let mut problems = Vec::new();
    differences(
        &without_nulls(value),
        &without_nulls(&again),
        "",
        &mut problems,
    );
    ensure!(
        problems.is_empty(),
        "does not survive its type (misspelled or misplaced fields?): {}",
        problems.join("; ")
    );
    Ok(typed)
}

fn without_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

/// What differs between the document (`written`) and its round trip (`typed`), by path.
fn differences(written: &Value, typed: &Value, path: &str, out: &mut Vec<String>) {
    match (written, typed) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                let here = format!("{path}.{key}");
                match b.get(key) {
                    Some(other) => differences(value, other, &here, out),
                    None => out.push(format!("{here} is not a field of the type")),
                }
            }
            for key in b.keys().filter(|key| !a.contains_key(*key)) {
                out.push(format!("{path}.{key} appeared in the round trip"));
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                differences(x, y, &format!("{path}[{i}]"), out);
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(format!("{path}: written {a}, read back as {b}")),
    }
}

/// The `*.yaml`/`*.yml` files under `dir` (relative to the root), recursively, sorted.
pub(crate) fn yaml_files(dir: &str) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut pending = vec![workspace_root().join(dir)];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("{}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path
                .extension()
                .is_some_and(|ext| ext == "yaml" || ext == "yml")
            {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// The files a kustomization renders from its own directory: `resources` that are files, and
/// `patches[].path` (other directories in `resources` are kustomizations of their own).
pub(crate) fn kustomization_inputs(dir: &str) -> Result<BTreeSet<PathBuf>> {
    let base = workspace_root().join(dir);
    let file = base.join("kustomization.yaml");
    let text = std::fs::read_to_string(&file).with_context(|| format!("{}", file.display()))?;
    let kustomization: Value =
        serde_yaml::from_str(&text).with_context(|| format!("{}", file.display()))?;
    let resources = kustomization["resources"].as_array().into_iter().flatten();
    let patches = kustomization["patches"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|patch| &patch["path"]);
    let mut inputs = BTreeSet::new();
    for entry in resources.chain(patches).filter_map(Value::as_str) {
        let path = base.join(entry);
        if path.is_file() {
            inputs.insert(path.canonicalize()?);
        }
    }
    Ok(inputs)
}

/// The one document of type `K` named `name`.
pub(crate) fn one<K: Resource + DeserializeOwned>(documents: &[Document], name: &str) -> Result<K> {
    let mut found = of_kind::<K>(documents)?
        .into_iter()
        .filter(|(document, _)| document.name() == name);
    let (_, object) = found
        .next()
        .with_context(|| format!("no {} {name}", K::KIND))?;
    ensure!(found.next().is_none(), "several {} {name}", K::KIND);
    Ok(object)
}

/// Every document of type `K`, with the document.
pub(crate) fn of_kind<K: Resource + DeserializeOwned>(
    documents: &[Document],
) -> Result<Vec<(&Document, K)>> {
    documents
        .iter()
        .filter(|d| d.api_version == K::API_VERSION && d.kind == K::KIND)
        .map(|d| Ok((d, d.to::<K>()?)))
        .collect()
}
