//! Which URL is which: discovery documents, resource paths (core and grouped, namespaced or not,
//! `/status`) and the verb a method means on them.

use http::Method;
use serde_json::{json, Value};

use super::query::Query;
use crate::{
    resources::{self, RESOURCES},
    Verb,
};

/// Where a request goes.
pub(super) enum Route {
    Discovery(Value),
    Resource {
        res: usize,
        ns: Option<String>,
        name: Option<String>,
        sub: Option<String>,
    },
    NotFound,
}

pub(super) fn group_version_json(group: &str, version: &str) -> Value {
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({"groupVersion": gv, "version": version})
}

pub(super) fn groups() -> Vec<&'static str> {
    let mut groups: Vec<&str> = RESOURCES
        .iter()
        .map(|r| r.group)
        .filter(|g| !g.is_empty())
        .collect();
    groups.dedup();
    groups.sort_unstable();
    groups.dedup();
    groups
}

pub(super) fn api_group_json(group: &str) -> Value {
    let mut versions: Vec<&str> = RESOURCES
        .iter()
        .filter(|r| r.group == group)
        .map(|r| r.version)
        .collect();
    versions.dedup();
    json!({
        "name": group,
        "versions": versions.iter().map(|v| group_version_json(group, v)).collect::<Vec<_>>(),
        "preferredVersion": group_version_json(group, versions.first().copied().unwrap_or("v1")),
    })
}

pub(super) fn resource_list_json(group: &str, version: &str) -> Option<Value> {
    let mut out = Vec::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        out.push(json!({
            "name": r.plural,
            "singularName": r.kind.to_lowercase(),
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
        }));
        if r.status_subresource {
            out.push(json!({
                "name": format!("{}/status", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    if out.is_empty() {
        return None;
    }
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version_json(group, version)["groupVersion"],
        "resources": out,
    }))
}

pub(super) fn route(path: &str, addr: &str) -> Route {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segs.as_slice() {
        ["version"] => {
            return Route::Discovery(json!({
                "major": "1", "minor": "33", "gitVersion": "v1.33.0-fake",
                "gitCommit": "0000000000000000000000000000000000000000",
                "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z",
                "goVersion": "go1.24.0", "compiler": "gc", "platform": "linux/amd64",
            }))
        }
        ["api"] => {
            return Route::Discovery(json!({
                "kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": addr}],
            }))
        }
        ["apis"] => {
            return Route::Discovery(json!({
                "kind": "APIGroupList", "apiVersion": "v1",
                "groups": groups().into_iter().map(api_group_json).collect::<Vec<_>>(),
            }))
        }
        ["apis", g] => {
            return if groups().contains(g) {
                let mut v = api_group_json(g);
                v["kind"] = json!("APIGroup");
                v["apiVersion"] = json!("v1");
                Route::Discovery(v)
            } else {
                Route::NotFound
            };
        }
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Route::NotFound,
    };
    let r = |plural: &str| resources::by_path(group, version, plural);
    let owned = |s: &str| Some(s.to_string());
    match rest {
        [] => resource_list_json(group, version).map_or(Route::NotFound, Route::Discovery),
        ["namespaces", ns, plural, tail @ ..]
            if r(plural).is_some_and(|i| RESOURCES[i].namespaced)
                && tail.len() <= 2
                && tail.get(1).is_none_or(|s| *s == "status") =>
        {
            Route::Resource {
                res: r(plural).unwrap_or_default(),
                ns: owned(ns),
                name: tail.first().and_then(|n| owned(n)),
                sub: tail.get(1).and_then(|s| owned(s)),
            }
        }
        [plural, tail @ ..] if tail.len() <= 2 && tail.get(1).is_none_or(|s| *s == "status") => {
            match r(plural) {
                Some(res) if RESOURCES[res].namespaced && !tail.is_empty() => Route::NotFound,
                Some(res) => Route::Resource {
                    res,
                    ns: None,
                    name: tail.first().and_then(|n| owned(n)),
                    sub: tail.get(1).and_then(|s| owned(s)),
                },
                None => Route::NotFound,
            }
        }
        _ => Route::NotFound,
    }
}

pub(super) fn verb_of(method: &Method, name: bool, q: &Query) -> Verb {
    match (method.as_str(), name) {
        ("GET", false) if q.flag("watch") => Verb::Watch,
        ("GET", false) => Verb::List,
        ("GET", true) => Verb::Get,
        ("POST", false) => Verb::Create,
        ("PUT", true) => Verb::Update,
        ("PATCH", true) => Verb::Patch,
        ("DELETE", true) => Verb::Delete,
        ("DELETE", false) => Verb::DeleteCollection,
        _ => Verb::Other,
    }
}
