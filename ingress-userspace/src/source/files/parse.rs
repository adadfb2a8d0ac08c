//! Parsing one manifest file into objects: YAML documents, the kinds we read, and problems that
//! name the file, the document, the object and the field. Documents nested too deep are refused
//! before serde_yaml sees them.

use std::{path::Path, sync::Arc};

use k8s_openapi::Resource as _;
use serde::de::DeserializeOwned;

use crate::{
    model::{Origin, Problem, Sourced},
    source::yaml_depth,
};

use super::{
    objects::{for_each_kind, FileObjects, ManifestKind},
    MAX_NESTING_DEPTH,
};

/// Parses one manifest file: every document, every object, every problem.
pub(super) fn parse_manifest(path: &Path, text: &str) -> (FileObjects, Vec<Problem>) {
    let path_text: Arc<str> = Arc::from(path.display().to_string());
    let mut objects = FileObjects::default();
    let mut problems = Vec::new();
    // serde_yaml skips a byte-order mark; so does the depth check, so they count alike.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    // The documents before a too deep one are read as usual; it and the rest are not, as after
    // a syntax error.
    let deep = yaml_depth::may_nest_flows_deeper(text, MAX_NESTING_DEPTH)
        .then(|| yaml_depth::too_deep(text, MAX_NESTING_DEPTH))
        .flatten();
    let text = match deep {
        None => text,
        Some(deep) => {
            problems.push(Problem {
                severity: crate::model::Severity::Error,
                origin: Origin::File {
                    path: path_text.clone(),
                    document: deep.document,
                }
                .to_string(),
                object: String::new(),
                field: String::new(),
                message: format!(
                    "nested deeper than {MAX_NESTING_DEPTH} levels (line {}, column {}); \
                     this document and the rest of the file are not read",
                    deep.line, deep.column
                ),
            });
            text.get(..deep.document_start).unwrap_or_default()
        }
    };
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let origin = Origin::File {
            path: path_text.clone(),
            document: index + 1,
        };
        let problem = |object: String, field: &str, message: String| Problem {
            severity: crate::model::Severity::Error,
            origin: origin.to_string(),
            object,
            field: field.to_string(),
            message,
        };
        let value: serde_yaml::Value = match serde::Deserialize::deserialize(document) {
            Ok(value) => value,
            Err(error) => {
                problems.push(problem(String::new(), "", format!("YAML syntax: {error}")));
                // After a syntax error the document stream cannot be resynchronised.
                break;
            }
        };
        if value.is_null() {
            continue;
        }
        let api_version = value
            .get("apiVersion")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        let kind = value.get("kind").and_then(|v| v.as_str()).unwrap_or("");
        if api_version.is_empty() || kind.is_empty() {
            problems.push(problem(
                describe(&value, kind, true),
                if api_version.is_empty() {
                    "apiVersion"
                } else {
                    "kind"
                },
                "missing; every document must be a Kubernetes object".into(),
            ));
            continue;
        }
        let mut ours = false;
        for_each_kind!(K => {
            if (api_version, kind) == (K::API_VERSION, K::KIND) {
                ours = true;
                if let Err(problem) = load::<K>(&value, &origin, &mut objects) {
                    problems.push(problem);
                }
            }
        });
        if !ours {
            // Other kinds (Deployments, Pods, ...) may share the directory; they are not ours.
            tracing::debug!(%origin, api_version, kind, "ignoring object of a kind we do not use");
        }
    }
    (objects, problems)
}

/// Reads one document as a `K` into `objects`; a problem names the object and the field.
fn load<K: ManifestKind>(
    value: &serde_yaml::Value,
    origin: &Origin,
    objects: &mut FileObjects,
) -> Result<(), Problem> {
    let problem = |field: &str, message: String| Problem {
        severity: crate::model::Severity::Error,
        origin: origin.to_string(),
        object: describe(value, K::KIND, K::NAMESPACED),
        field: field.to_string(),
        message,
    };
    let object: K = typed(value).map_err(|(field, message)| problem(&field, message))?;
    let key =
        K::key(object.metadata()).ok_or_else(|| problem("metadata.name", "missing".into()))?;
    if let Some(object) = object.admit(origin) {
        K::in_file_mut(objects).push((
            key,
            Sourced {
                object,
                origin: origin.clone(),
            },
        ));
    }
    Ok(())
}

/// `Kind namespace/name` for messages, from the raw document.
fn describe(value: &serde_yaml::Value, kind: &str, namespaced: bool) -> String {
    let meta = value.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(|v| v.as_str())
        .unwrap_or("<unnamed>");
    let namespace = meta
        .and_then(|m| m.get("namespace"))
        .and_then(|v| v.as_str())
        .unwrap_or("default");
    let kind = if kind.is_empty() { "object" } else { kind };
    if namespaced {
        format!("{kind} {namespace}/{name}")
    } else {
        format!("{kind} {name}")
    }
}

/// Deserializes into a k8s-openapi type; on failure returns the path of the offending field.
fn typed<T: DeserializeOwned>(value: &serde_yaml::Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let field = error.path().to_string();
        let field = if field == "." { String::new() } else { field };
        (field, error.into_inner().to_string())
    })
}
