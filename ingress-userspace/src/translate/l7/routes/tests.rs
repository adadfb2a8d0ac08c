//! The table's matching rules: the Ingress documentation's examples, precedence, hosts, and
//! the regex mode of `use-regex`.

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

#[test]
fn regex_mode_exact_first_then_longest_text_first_case_insensitive_and_anchored() {
    use PathType::{Exact, Regex};
    let table = RouteTable::new(
        [
            (Some("r.example"), rule("/", Regex, "root")),
            (Some("r.example"), rule("/a.*", Regex, "a-any")),
            (Some("r.example"), rule("/ab", Regex, "ab")),
            (Some("r.example"), rule("/a/b/c", Regex, "abc")),
            (Some("r.example"), rule("/", Exact, "app-root")),
            (Some("r.example"), rule("/ab", Regex, "ab-again")),
        ],
        None,
    );
    assert_eq!(table.route("r.example", "/"), Some(&"app-root"));
    assert_eq!(table.route("r.example", "/A/B/C/d"), Some(&"abc"));
    assert_eq!(
        table.route("r.example", "/abc"),
        Some(&"a-any"),
        "4 characters before 3"
    );
    assert_eq!(
        table.route("r.example", "/x/a/b/c"),
        Some(&"root"),
        "anchored at the start"
    );
    let entries: Vec<_> = table
        .entries()
        .into_iter()
        .map(|e| (e.path, e.path_type, *e.backend))
        .collect();
    assert_eq!(
        entries,
        [
            ("/".to_string(), Exact, "app-root"),
            ("/a/b/c".to_string(), Regex, "abc"),
            ("/a.*".to_string(), Regex, "a-any"),
            ("/ab".to_string(), Regex, "ab"),
            ("/".to_string(), Regex, "root"),
        ],
        "the first of two equal regex paths is kept"
    );
}

#[test]
fn a_regex_path_that_does_not_compile_matches_as_literal_text() {
    let table = RouteTable::new([(None, rule("/(x", PathType::Regex, "literal"))], None);
    assert_eq!(table.route("h", "/(x/more"), Some(&"literal"));
    assert_eq!(table.route("h", "/x"), None);
}
