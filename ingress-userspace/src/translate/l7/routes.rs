//! The L7 routing table: host and path matching exactly as the Kubernetes Ingress API documentation
//! specifies. The translator builds it; the proxy looks requests up in it. A match leads to a
//! [`Route`] (filters, then weighted backends; see `route`).
//!
//! - Hosts: exact names, or a single-label wildcard `*.example.com` (matches `a.example.com`, not
//!   `example.com` nor `a.b.example.com`); compared without case and without a `:port` suffix.
//!   The most specific host wins: exact, then wildcard, then rules without a host.
//! - Paths within that host: `Exact` matches the whole path, case-sensitively; `Prefix` matches
//!   element by element on `/`, ignoring a trailing slash; `ImplementationSpecific` is treated as
//!   `Prefix`. The longest match wins, `Exact` before `Prefix` at equal length. The query string
//!   plays no part.
//! - **Regex mode** (ingress-nginx's `use-regex`, see `ingress-path-matching.md`): the translator
//!   turns every path of a host into [`PathType::Regex`] when any Ingress of that host asks for
//!   it. A regex path matches case-insensitively from the start of the path (nginx `~* "^path"`);
//!   they are tried longest path text first, and the first match wins. Exact rules the
//!   translator still adds to such a host (an `app-root` redirect of `/`) are tried before.
//! - No path matches: the default backend if there is one, else none (the proxy answers 404).
//!
//! Lookups allocate nothing: hosts are hashed as given when already lower-case, path rules are
//! pre-split and sorted, and regexes compiled, when the table is built.

pub mod auth;
mod canary;
mod cidr;
pub mod htpasswd;
pub mod limits;
mod route;
pub mod series;

pub use canary::{cookie, Canary, CanaryHeader, CanaryRule, HeaderTest, Verdict};
pub use cidr::{Cidr, CidrError};
pub use route::{CorsPolicy, Filter, Route, WeightedBackend};

use std::collections::HashMap;

use regex::{Regex, RegexBuilder};

/// The most memory one compiled path regex may take: a user's pattern cannot make the table
/// large (the engine is linear-time, so it cannot make matching slow).
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// `path` as a regex path: case-insensitive, anchored at the start only (nginx `~* "^path"`).
pub fn path_regex(path: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(&format!("^(?:{path})"))
        .case_insensitive(true)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
}

/// How a rule's path is compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathType {
    /// The whole path, case-sensitively.
    Exact,
    /// Element-wise prefix on `/`.
    Prefix,
    /// Treated as `Prefix` (documented choice).
    ImplementationSpecific,
    /// A case-insensitive regex anchored at the start of the path (regex mode).
    Regex,
}

/// One path rule of a host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathRule<B> {
    /// The path as written (must start with `/`).
    pub path: String,
    /// How it is compared.
    pub path_type: PathType,
    /// Where matching requests go.
    pub backend: B,
}

/// Rules of one host, ready for matching.
#[derive(Clone, Debug)]
struct HostRoutes<B> {
    exact: HashMap<String, B>,
    /// Prefix rules as path elements, longest first.
    prefixes: Vec<(Vec<String>, B)>,
    /// Regex rules: the path as written, its compiled form; longest text first.
    regexes: Vec<(String, Option<Regex>, B)>,
}

impl<B> Default for HostRoutes<B> {
    fn default() -> Self {
        Self {
            exact: HashMap::new(),
            prefixes: Vec::new(),
            regexes: Vec::new(),
        }
    }
}

/// Path elements of `path`: empty elements (from `//` or a trailing `/`) are dropped.
fn elements(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|e| !e.is_empty())
}

impl<B: Clone> HostRoutes<B> {
    fn add(&mut self, rule: &PathRule<B>) {
        match rule.path_type {
            PathType::Exact => {
                self.exact
                    .entry(rule.path.clone())
                    .or_insert_with(|| rule.backend.clone());
            }
            PathType::Prefix | PathType::ImplementationSpecific => {
                let parts: Vec<String> = elements(&rule.path).map(str::to_string).collect();
                if !self.prefixes.iter().any(|(p, _)| *p == parts) {
                    self.prefixes.push((parts, rule.backend.clone()));
                }
            }
            PathType::Regex => {
                if self.regexes.iter().any(|(p, _, _)| *p == rule.path) {
                    return;
                }
                // The translator reports a path that does not compile and makes its route fail;
                // it still matches, as the literal text, so that it answers saying why.
                // (`None`, matching nothing, only if even the literal exceeds the size limit.)
                let regex = path_regex(&rule.path)
                    .or_else(|_| path_regex(&regex::escape(&rule.path)))
                    .ok();
                self.regexes
                    .push((rule.path.clone(), regex, rule.backend.clone()));
            }
        }
    }

    fn finish(&mut self) {
        // Longest first; a stable sort keeps the first-added rule first among equals.
        self.prefixes
            .sort_by_key(|(parts, _)| std::cmp::Reverse(parts.len()));
        // ingress-nginx orders a server's locations by path length, longest first.
        self.regexes
            .sort_by_key(|(path, _, _)| std::cmp::Reverse(path.len()));
    }

    fn route(&self, path: &str) -> Option<&B> {
        // An Exact match is the whole request path, so no Prefix match can be longer: Exact wins
        // at equal length, as the specification asks, and is never beaten.
        if let Some(exact) = self.exact.get(path) {
            return Some(exact);
        }
        if let Some((_, _, backend)) = self
            .regexes
            .iter()
            .find(|(_, re, _)| re.as_ref().is_some_and(|re| re.is_match(path)))
        {
            return Some(backend);
        }
        let request_len = elements(path).count();
        self.prefixes
            .iter()
            .find(|(parts, _)| {
                parts.len() <= request_len && elements(path).zip(parts).all(|(a, b)| a == b)
            })
            .map(|(_, backend)| backend)
    }
}

/// Host → path → backend, plus the default backend.
#[derive(Clone, Debug)]
pub struct RouteTable<B> {
    exact_hosts: HashMap<String, HostRoutes<B>>,
    /// Keyed by the suffix after `*.` (e.g. `example.com`).
    wildcard_hosts: HashMap<String, HostRoutes<B>>,
    any_host: HostRoutes<B>,
    default_backend: Option<B>,
}

impl<B: Clone> RouteTable<B> {
    /// Builds the table from `(host, rule)` pairs (`None` host: every host) and a default backend.
    /// Earlier rules win over later ones for the same host, path and type: callers sort rules
    /// by the precedence they decide (oldest Ingress first).
    pub fn new<'a>(
        rules: impl IntoIterator<Item = (Option<&'a str>, PathRule<B>)>,
        default_backend: Option<B>,
    ) -> Self
    where
        B: 'a,
    {
        let mut table = Self {
            exact_hosts: HashMap::new(),
            wildcard_hosts: HashMap::new(),
            any_host: HostRoutes::default(),
            default_backend,
        };
        for (host, rule) in rules {
            let routes = match host.map(|h| h.to_ascii_lowercase()) {
                None => &mut table.any_host,
                Some(host) if host.is_empty() => &mut table.any_host,
                Some(host) => match host.strip_prefix("*.") {
                    Some(suffix) => table.wildcard_hosts.entry(suffix.to_string()).or_default(),
                    None => table.exact_hosts.entry(host).or_default(),
                },
            };
            routes.add(&rule);
        }
        table.any_host.finish();
        table.exact_hosts.values_mut().for_each(HostRoutes::finish);
        table
            .wildcard_hosts
            .values_mut()
            .for_each(HostRoutes::finish);
        table
    }

    /// The backend for a request to `host` (as in the Host header or `:authority`, any case, port
    /// allowed) and `path` (the query string, if any, is ignored).
    pub fn route(&self, host: &str, path: &str) -> Option<&B> {
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        let host = strip_port(host);
        let routes = self.host_routes(host);
        routes
            .and_then(|r| r.route(path))
            .or(self.default_backend.as_ref())
    }

    fn host_routes(&self, host: &str) -> Option<&HostRoutes<B>> {
        // Hosts are stored lower-case; only a host with upper-case letters pays for a copy.
        let lowered;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = host.to_ascii_lowercase();
            lowered.as_str()
        } else {
            host
        };
        if let Some(routes) = self.exact_hosts.get(host) {
            return Some(routes);
        }
        if let Some((_, suffix)) = host.split_once('.') {
            if let Some(routes) = self.wildcard_hosts.get(suffix) {
                return Some(routes);
            }
        }
        Some(&self.any_host)
    }
}

/// One rule as the table holds it (merged, conflicts decided), for `inspect routes`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteEntry<'a, B> {
    /// Exact host, `*.suffix`, or `None` for rules without a host.
    pub host: Option<String>,
    /// The path (a Prefix rule's elements joined again, so `/a/` shows as `/a`).
    pub path: String,
    /// Exact, Prefix (ImplementationSpecific is stored as Prefix) or Regex.
    pub path_type: PathType,
    /// Where it sends.
    pub backend: &'a B,
}

impl<B> RouteTable<B> {
    /// Every rule in match order per host: exact hosts, then wildcards, then rules without a
    /// host; within a host, Exact paths, then Regex paths longest first, then Prefix paths
    /// longest first.
    pub fn entries(&self) -> Vec<RouteEntry<'_, B>> {
        let mut hosts: Vec<(Option<String>, &HostRoutes<B>)> = Vec::new();
        let mut exact: Vec<_> = self.exact_hosts.iter().collect();
        exact.sort_by(|a, b| a.0.cmp(b.0));
        hosts.extend(exact.into_iter().map(|(h, r)| (Some(h.clone()), r)));
        let mut wildcard: Vec<_> = self.wildcard_hosts.iter().collect();
        wildcard.sort_by(|a, b| a.0.cmp(b.0));
        hosts.extend(
            wildcard
                .into_iter()
                .map(|(s, r)| (Some(format!("*.{s}")), r)),
        );
        hosts.push((None, &self.any_host));
        let mut entries = Vec::new();
        for (host, routes) in hosts {
            let mut exact: Vec<_> = routes.exact.iter().collect();
            exact.sort_by(|a, b| a.0.cmp(b.0));
            for (path, backend) in exact {
                entries.push(RouteEntry {
                    host: host.clone(),
                    path: path.clone(),
                    path_type: PathType::Exact,
                    backend,
                });
            }
            for (path, _, backend) in &routes.regexes {
                entries.push(RouteEntry {
                    host: host.clone(),
                    path: path.clone(),
                    path_type: PathType::Regex,
                    backend,
                });
            }
            for (parts, backend) in &routes.prefixes {
                entries.push(RouteEntry {
                    host: host.clone(),
                    path: format!("/{}", parts.join("/")),
                    path_type: PathType::Prefix,
                    backend,
                });
            }
        }
        entries
    }

    /// `spec.defaultBackend` of the oldest Ingress that has one.
    pub fn default_backend(&self) -> Option<&B> {
        self.default_backend.as_ref()
    }
}

/// `example.com:8080` → `example.com`; `[2001:db8::1]:443` → `[2001:db8::1]`.
fn strip_port(host: &str) -> &str {
    if let Some(end) = host.strip_prefix('[').and_then(|rest| rest.find(']')) {
        return &host[..end + 2];
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests;
