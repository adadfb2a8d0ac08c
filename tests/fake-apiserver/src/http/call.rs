//! One API call on a resource: GET, POST, PUT, DELETE, delete-collection and PATCH on an object or
//! its `/status`, and the fault injections that answer instead.

use std::sync::Arc;

use bytes::Bytes;
use http::Response;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::{json_response, lock, query::Query, Body, Shared};
use crate::{
    resources::RESOURCES,
    selector::Selector,
    store::{ApiError, WriteMode},
    Verb,
};

pub(super) struct Call<'a> {
    pub(super) shared: &'a Arc<Shared>,
    pub(super) res: usize,
    /// The namespace on the URL, `""` for cluster-scoped or all-namespace requests.
    pub(super) ns: String,
    pub(super) all_ns: bool,
    pub(super) name: Option<String>,
    pub(super) sub: Option<String>,
    pub(super) q: &'a Query,
    pub(super) content_type: Option<&'a str>,
    pub(super) body: &'a Bytes,
}

pub(super) fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

impl Call<'_> {
    pub(super) fn selector(&self) -> Result<Selector, ApiError> {
        Selector::parse(self.q.get("labelSelector"), self.q.get("fieldSelector"))
            .map_err(ApiError::bad_request)
    }

    pub(super) fn list_ns(&self) -> Option<&str> {
        if self.all_ns || !RESOURCES[self.res].namespaced {
            None
        } else {
            Some(&self.ns)
        }
    }

    pub(super) fn dispatch(
        &self,
        verb: Verb,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Response<Body>, ApiError> {
        let def = &RESOURCES[self.res];
        let status_sub = match self.sub.as_deref() {
            None => false,
            Some("status") if def.status_subresource => true,
            Some(other) => {
                return Err(ApiError::new(
                    404,
                    "NotFound",
                    format!("the server could not find the requested resource ({other})"),
                ))
            }
        };
        let name = self.name.as_deref().unwrap_or_default();
        match verb {
            Verb::List => Ok(json_response(200, &self.list()?)),
            Verb::Watch => self.watch(shutdown),
            Verb::Get => {
                let store = lock(&self.shared.store);
                match store.get(self.res, &self.ns, name) {
                    Some(o) => Ok(json_response(200, o)),
                    None => Err(ApiError::not_found(def, name)),
                }
            }
            Verb::Create => {
                if self.all_ns {
                    return Err(ApiError::new(
                        405,
                        "MethodNotAllowed",
                        "create needs a namespace",
                    ));
                }
                let mut obj = parse_json(self.body)?;
                if def.status_subresource {
                    if let Some(m) = obj.as_object_mut() {
                        m.remove("status");
                    }
                }
                let created = self.shared.mutate(|s| s.create(self.res, &self.ns, obj))?;
                Ok(json_response(201, &created))
            }
            Verb::Update => {
                let obj = parse_json(self.body)?;
                let mode = if status_sub {
                    WriteMode::Status
                } else {
                    WriteMode::Main
                };
                let updated = self
                    .shared
                    .mutate(|s| s.update(self.res, &self.ns, name, obj, mode))?;
                Ok(json_response(200, &updated))
            }
            Verb::Patch => {
                let ct = self
                    .content_type
                    .unwrap_or("")
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim();
                let (patch, apply) = match ct {
                    "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                        (parse_json(self.body)?, false)
                    }
                    "application/apply-patch+yaml" | "application/apply-patch+json" => {
                        let v: Value = serde_yaml::from_slice(self.body).map_err(|e| {
                            ApiError::bad_request(format!("the apply patch is not valid YAML/JSON: {e}"))
                        })?;
                        if self.q.get("fieldManager").is_none_or(str::is_empty) {
                            return Err(ApiError::bad_request(
                                "PATCH with apply requires the fieldManager query parameter",
                            ));
                        }
                        (v, true)
                    }
                    other => {
                        return Err(ApiError::new(
                            415,
                            "UnsupportedMediaType",
                            format!("the body of the request was in an unknown format - accepted media types include: application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml (got {other:?})"),
                        ))
                    }
                };
                let patched = self
                    .shared
                    .mutate(|s| s.patch(self.res, &self.ns, name, &patch, status_sub, apply))?;
                Ok(json_response(200, &patched))
            }
            Verb::Delete => {
                let opts: Value = if self.body.is_empty() {
                    Value::Null
                } else {
                    parse_json(self.body)?
                };
                let pre = opts
                    .pointer("/preconditions/resourceVersion")
                    .and_then(Value::as_str);
                let deleted = self
                    .shared
                    .mutate(|s| s.delete(self.res, &self.ns, name, pre))?;
                Ok(json_response(200, &deleted))
            }
            Verb::DeleteCollection => {
                let sel = self.selector()?;
                let ns = self.list_ns().map(str::to_string);
                let deleted = self.shared.mutate(|s| {
                    let keys: Vec<(String, String)> = s
                        .list(self.res, ns.as_deref(), &sel)
                        .into_iter()
                        .map(|(k, _)| k.clone())
                        .collect();
                    keys.iter()
                        .filter_map(|(ns, n)| s.delete(self.res, ns, n, None).ok())
                        .collect::<Vec<_>>()
                });
                Ok(json_response(
                    200,
                    &json!({
                        "kind": format!("{}List", def.kind),
                        "apiVersion": def.api_version(),
                        "metadata": {},
                        "items": deleted,
                    }),
                ))
            }
            Verb::Discovery | Verb::Other => Err(ApiError::new(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            )),
        }
    }
}
