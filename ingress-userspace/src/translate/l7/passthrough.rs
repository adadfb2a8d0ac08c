//! `nginx.ingress.kubernetes.io/ssl-passthrough`: the hosts whose TLS connections the proxy
//! hands, unterminated, to a backend, chosen here once per plan so the HTTPS listener only looks
//! a ClientHello's SNI up in a table ([`PassthroughTable`]).
//!
//! ingress-nginx's rules, as its controller applies them (`createServers` and
//! `getConfiguration`), and ours:
//! - The controller must run with `--enable-ssl-passthrough` (ours has the flag of the same
//!   name); without it the annotation changes nothing, and is reported.
//! - The oldest Ingress naming a host decides whether the host passes through (ingress-nginx
//!   creates a host's server from the first Ingress in creation order and reads the annotation
//!   there only). An Ingress that asks for it on a host an older Ingress defines without it is
//!   reported, and so is a younger Ingress whose rules share a passthrough host: its TLS
//!   connections pass through, its rules serve plain HTTP only.
//! - The connections go to the backend of the host's path `/` (whichever Ingress routes it, by
//!   precedence); other paths are reported as serving plain HTTP only. A host without a path
//!   `/` does not pass through (ingress-nginx would send its connections to the default
//!   backend's empty address), reported.
//! - Lookups are by exact name, as ingress-nginx's TCP proxy does: a wildcard host never
//!   matches an SNI, reported.
//! - The other annotations of a passthrough Ingress still shape its plain-HTTP routes
//!   (ingress-nginx's port 80 serves them too); for TLS they have no effect, reported once per
//!   Ingress.

use std::collections::{BTreeMap, HashMap};

use super::{
    annotations::{field, PREFIX},
    class::OurIngress,
    routes::{PathRule, Route},
    BackendId,
};
use crate::model::{ObjectName, Problem};

/// The annotation, without the prefix.
pub(super) const KEY: &str = "ssl-passthrough";

/// Passthrough hosts → the backend their TLS connections go to. Swapped with the routing table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassthroughTable {
    /// Keyed by lower-case host name.
    hosts: HashMap<String, PassthroughHost>,
}

/// Where one passthrough host's connections go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassthroughHost {
    /// The backend of the host's path `/`.
    pub backend: BackendId,
    /// The Ingress whose annotation made the host pass through.
    pub ingress: ObjectName,
}

impl PassthroughTable {
    /// The entry for `host` (lower-case, no trailing dot).
    pub fn get(&self, host: &str) -> Option<&PassthroughHost> {
        self.hosts.get(host)
    }

    /// Whether no host passes through (then the HTTPS listener reads no ClientHello itself).
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Every entry, by host name.
    pub fn entries(&self) -> Vec<(&str, &PassthroughHost)> {
        let mut entries: Vec<(&str, &PassthroughHost)> =
            self.hosts.iter().map(|(h, e)| (h.as_str(), e)).collect();
        entries.sort_by(|a, b| a.0.cmp(b.0));
        entries
    }
}

/// One of our Ingresses as the passthrough rules see it.
pub(super) struct PassthroughInput<'a, 'b> {
    pub(super) ingress: &'b OurIngress<'a>,
    /// Its `ssl-passthrough` value (false when absent or bad).
    pub(super) wanted: bool,
    /// Its rules' valid hosts (`None`: a rule without host), with each rule's index.
    pub(super) hosts: Vec<(usize, Option<String>)>,
}

/// The passthrough table of our Ingresses (in precedence order), given their accepted path
/// `rules`; `enabled` is `--enable-ssl-passthrough`. Everything that does not go as asked is
/// reported.
pub(super) fn passthrough_table(
    inputs: &[PassthroughInput<'_, '_>],
    rules: &[(Option<String>, PathRule<Route>)],
    enabled: bool,
    problems: &mut Vec<Problem>,
) -> PassthroughTable {
    let mut table = PassthroughTable::default();
    if !inputs.iter().any(|i| i.wanted) {
        return table;
    }
    if !enabled {
        for input in inputs.iter().filter(|i| i.wanted) {
            problems.push(input.ingress.problem(
                field(KEY),
                "ignored: the agent runs without --enable-ssl-passthrough (ingress-nginx needs \
                 its flag of the same name too); TLS connections to its hosts are terminated by \
                 the proxy",
            ));
        }
        return table;
    }
    // The oldest Ingress naming a host decides for it.
    let mut decider: BTreeMap<&str, (&ObjectName, bool)> = BTreeMap::new();
    for input in inputs {
        for (_, host) in &input.hosts {
            if let Some(host) = host {
                decider
                    .entry(host.as_str())
                    .or_insert((input.ingress.name, input.wanted));
            }
        }
    }
    for input in inputs.iter().filter(|i| i.wanted) {
        report_wanted(input, &decider, rules, problems);
    }
    for (host, (ingress, wanted)) in &decider {
        if !wanted {
            continue;
        }
        if host.starts_with("*.") {
            continue; // Reported with the Ingress.
        }
        let root = rules
            .iter()
            .find(|(h, rule)| h.as_deref() == Some(*host) && rule.path == "/")
            .and_then(|(_, rule)| rule.backend.backend());
        if let Some(backend) = root {
            table.hosts.insert(
                (*host).to_string(),
                PassthroughHost {
                    backend,
                    ingress: (*ingress).clone(),
                },
            );
        }
    }
    // Younger Ingresses sharing a passthrough host.
    for input in inputs {
        for (i, host) in &input.hosts {
            let Some(host) = host else { continue };
            let Some(entry) = table.hosts.get(host.as_str()) else {
                continue;
            };
            if entry.ingress != *input.ingress.name {
                problems.push(input.ingress.problem(
                    format!("spec.rules[{i}].host"),
                    format!(
                        "TLS connections to {host} pass through unterminated (ssl-passthrough of \
                         Ingress {}, which defines the host first); this rule serves plain HTTP \
                         only",
                        entry.ingress
                    ),
                ));
            }
        }
    }
    table
}

/// The problems of one Ingress that asks for passthrough (with the flag on).
fn report_wanted(
    input: &PassthroughInput<'_, '_>,
    decider: &BTreeMap<&str, (&ObjectName, bool)>,
    rules: &[(Option<String>, PathRule<Route>)],
    problems: &mut Vec<Problem>,
) {
    let ingress = input.ingress;
    let mut passing = false;
    for (i, host) in &input.hosts {
        let Some(host) = host else {
            problems.push(ingress.problem(
                format!("spec.rules[{i}].host"),
                "ssl-passthrough needs a host: connections are chosen by the name their TLS \
                 ClientHello asks for; this rule is served as usual",
            ));
            continue;
        };
        let Some((first, wanted)) = decider.get(host.as_str()) else {
            continue;
        };
        if *first != ingress.name {
            if !wanted {
                problems.push(ingress.problem(
                    field(KEY),
                    format!(
                        "ignored for {host}: Ingress {first} defines the host first (older, or as \
                         old and first by namespace/name) without ssl-passthrough, and the first \
                         Ingress of a host decides, as in ingress-nginx"
                    ),
                ));
            }
            continue;
        }
        if host.starts_with("*.") {
            problems.push(ingress.problem(
                format!("spec.rules[{i}].host"),
                format!(
                    "ssl-passthrough matches names exactly, as ingress-nginx does: the wildcard \
                     {host} never matches a ClientHello's name; its connections are terminated \
                     as usual"
                ),
            ));
            continue;
        }
        let has_root = rules
            .iter()
            .any(|(h, rule)| h.as_deref() == Some(host.as_str()) && rule.path == "/");
        if !has_root {
            problems.push(ingress.problem(
                field(KEY),
                format!(
                    "{host} has no path \"/\": passthrough connections go to the backend of the \
                     host's path \"/\", as in ingress-nginx; its TLS connections are terminated \
                     as usual"
                ),
            ));
            continue;
        }
        passing = true;
    }
    if !passing {
        return;
    }
    report_http_only_parts(ingress, problems);
}

/// The parts of a passthrough Ingress that apply to plain HTTP only: its other annotations and
/// its paths other than `/`.
fn report_http_only_parts(ingress: &OurIngress<'_>, problems: &mut Vec<Problem>) {
    let others: Vec<&str> = ingress
        .ingress
        .object
        .metadata
        .annotations
        .iter()
        .flatten()
        .filter_map(|(key, _)| key.strip_prefix(PREFIX))
        .filter(|key| *key != KEY)
        .collect();
    if !others.is_empty() {
        problems.push(ingress.problem(
            field(KEY),
            format!(
                "its other annotations ({}) apply to plain HTTP requests only: TLS connections \
                 pass through unterminated, where no HTTP rule runs (ingress-nginx: \
                 ssl-passthrough invalidates the other annotations)",
                others.join(", ")
            ),
        ));
    }
    let rules = ingress.spec().and_then(|s| s.rules.as_ref());
    for (i, rule) in rules.into_iter().flatten().enumerate() {
        let paths = rule.http.as_ref().map(|h| h.paths.as_slice());
        for (j, path) in paths.into_iter().flatten().enumerate() {
            let text = path.path.as_deref().unwrap_or("/");
            if text != "/" && !text.is_empty() {
                problems.push(ingress.problem(
                    format!("spec.rules[{i}].http.paths[{j}]"),
                    format!(
                        "TLS connections go unterminated to the backend of path \"/\" (as in \
                         ingress-nginx); path {text:?} serves plain HTTP only"
                    ),
                ));
            }
        }
    }
}
