//! The L7 routing table: host and path matching exactly as the Kubernetes Ingress API documentation
//! specifies. The translator builds it; the proxy looks requests up in it.
//!
//! - Hosts: exact names, or a single-label wildcard `*.example.com` (matches `a.example.com`, not
//!   `example.com` nor `a.b.example.com`); compared without case and without a `:port` suffix.
//!   The most specific host wins: exact, then wildcard, then rules without a host.
//! - Paths within that host: `Exact` matches the whole path, case-sensitively; `Prefix` matches
//!   element by element on `/`, ignoring a trailing slash; `ImplementationSpecific` is treated as
//!   `Prefix`. The longest match wins, `Exact` before `Prefix` at equal length. The query string
//!   plays no part.
//! - No path matches: the default backend if there is one, else none (the proxy answers 404).
//!
//! Lookups allocate nothing: hosts are hashed as given when already lower-case, and path rules are
//! pre-split and sorted when the table is built.

use std::collections::HashMap;

/// How a rule's path is compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathType {
    /// The whole path, case-sensitively.
    Exact,
    /// Element-wise prefix on `/`.
    Prefix,
    /// Treated as `Prefix` (documented choice).
    ImplementationSpecific,
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
}

impl<B> Default for HostRoutes<B> {
    fn default() -> Self {
        Self {
            exact: HashMap::new(),
            prefixes: Vec::new(),
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
        }
    }

    fn finish(&mut self) {
        // Longest first; a stable sort keeps the first-added rule first among equals.
        self.prefixes
            .sort_by_key(|(parts, _)| std::cmp::Reverse(parts.len()));
    }

    fn route(&self, path: &str) -> Option<&B> {
        // An Exact match is the whole request path, so no Prefix match can be longer: Exact wins
        // at equal length, as the specification asks, and is never beaten.
        if let Some(exact) = self.exact.get(path) {
            return Some(exact);
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
    /// Exact or Prefix (ImplementationSpecific is stored as Prefix).
    pub path_type: PathType,
    /// Where it sends.
    pub backend: &'a B,
}

impl<B> RouteTable<B> {
    /// Every rule in match order per host: exact hosts, then wildcards, then rules without a
    /// host; within a host, Exact paths, then Prefix paths longest first.
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
mod tests {
    use super::*;

    fn rule(path: &str, path_type: PathType, backend: &'static str) -> PathRule<&'static str> {
        PathRule {
            path: path.to_string(),
            path_type,
            backend,
        }
    }

    /// Every row of the path-matching examples table of the Ingress documentation.
    #[test]
    fn ingress_documentation_examples() {
        use PathType::{Exact, Prefix};
        // (rules as (path, type), request path, whether any rule matches)
        type Case = (&'static [(&'static str, PathType)], &'static str, bool);
        let cases: &[Case] = &[
            (&[("/", Prefix)], "/anything/at/all", true),
            (&[("/foo", Exact)], "/foo", true),
            (&[("/foo", Exact)], "/bar", false),
            (&[("/foo", Exact)], "/foo/", false),
            (&[("/foo/", Exact)], "/foo", false),
            (&[("/foo", Prefix)], "/foo", true),
            (&[("/foo", Prefix)], "/foo/", true),
            (&[("/foo/", Prefix)], "/foo", true),
            (&[("/foo/", Prefix)], "/foo/", true),
            (&[("/aaa/bb", Prefix)], "/aaa/bbb", false),
            (&[("/aaa/bbb", Prefix)], "/aaa/bbb", true),
            (&[("/aaa/bbb/", Prefix)], "/aaa/bbb", true),
            (&[("/aaa/bbb", Prefix)], "/aaa/bbb/", true),
            (&[("/aaa/bbb", Prefix)], "/aaa/bbb/ccc", true),
            (&[("/aaa/bbb", Prefix)], "/aaa/bbbxyz", false),
            (&[("/", Prefix), ("/aaa", Prefix)], "/aaa/ccc", true),
            (
                &[("/", Prefix), ("/aaa", Prefix), ("/aaa/bbb", Prefix)],
                "/aaa/bbb",
                true,
            ),
            (
                &[("/", Prefix), ("/aaa", Prefix), ("/aaa/bbb", Prefix)],
                "/ccc",
                true,
            ),
            (&[("/aaa", Prefix)], "/ccc", false),
            (&[("/foo", Prefix), ("/foo", Exact)], "/foo", true),
        ];
        for (rules, request, matches) in cases {
            let table = RouteTable::new(
                rules
                    .iter()
                    .map(|(path, path_type)| (None, rule(path, *path_type, path))),
                None,
            );
            assert_eq!(
                table.route("example.com", request).is_some(),
                *matches,
                "{rules:?} {request}"
            );
        }
    }

    #[test]
    fn longest_match_wins_and_exact_beats_prefix_at_equal_length() {
        use PathType::{Exact, ImplementationSpecific, Prefix};
        let table = RouteTable::new(
            [
                (None, rule("/", Prefix, "root")),
                (None, rule("/aaa", Prefix, "aaa")),
                (None, rule("/aaa/bbb", ImplementationSpecific, "bbb")),
                (None, rule("/foo", Prefix, "foo-prefix")),
                (None, rule("/foo", Exact, "foo-exact")),
                (None, rule("/aaa/bbb/ccc", Exact, "ccc-exact")),
            ],
            None,
        );
        assert_eq!(table.route("h", "/aaa/ccc"), Some(&"aaa"));
        assert_eq!(table.route("h", "/aaa/bbb/x"), Some(&"bbb"));
        assert_eq!(table.route("h", "/ccc"), Some(&"root"));
        assert_eq!(table.route("h", "/foo"), Some(&"foo-exact"));
        assert_eq!(table.route("h", "/foo/x"), Some(&"foo-prefix"));
        assert_eq!(table.route("h", "/aaa/bbb/ccc"), Some(&"ccc-exact"));
        assert_eq!(
            table.route("h", "/aaa/bbb/ccc?x=1"),
            Some(&"ccc-exact"),
            "query ignored"
        );
    }

    #[test]
    fn hosts_exact_then_single_label_wildcard_then_any() {
        use PathType::Prefix;
        let table = RouteTable::new(
            [
                (Some("foo.bar.com"), rule("/", Prefix, "exact")),
                (Some("*.bar.com"), rule("/", Prefix, "wildcard")),
                (None, rule("/", Prefix, "any")),
            ],
            Some("default"),
        );
        assert_eq!(table.route("foo.bar.com", "/"), Some(&"exact"));
        assert_eq!(
            table.route("FOO.Bar.com:8443", "/"),
            Some(&"exact"),
            "case and port ignored"
        );
        assert_eq!(table.route("baz.bar.com", "/"), Some(&"wildcard"));
        assert_eq!(
            table.route("bar.com", "/"),
            Some(&"any"),
            "wildcard needs one label"
        );
        assert_eq!(
            table.route("a.baz.bar.com", "/"),
            Some(&"any"),
            "only a single label"
        );
        assert_eq!(table.route("[2001:db8::1]:80", "/"), Some(&"any"));
    }

    #[test]
    fn default_backend_then_nothing() {
        use PathType::Exact;
        let with_default = RouteTable::new(
            [(Some("a.example"), rule("/x", Exact, "x"))],
            Some("default"),
        );
        assert_eq!(with_default.route("a.example", "/y"), Some(&"default"));
        assert_eq!(with_default.route("other.example", "/x"), Some(&"default"));
        let without = RouteTable::new([(Some("a.example"), rule("/x", Exact, "x"))], None);
        assert_eq!(without.route("a.example", "/y"), None);
    }

    #[test]
    fn first_rule_wins_for_the_same_host_path_and_type() {
        use PathType::Prefix;
        let table = RouteTable::new(
            [
                (None, rule("/api", Prefix, "older")),
                (None, rule("/api/", Prefix, "newer")),
            ],
            None,
        );
        assert_eq!(table.route("h", "/api/v1"), Some(&"older"));
    }
}
