//! The limits keys: `proxy-body-size` and the timeouts into the route's policy (ingress-nginx's
//! defaults without them), `proxy-next-upstream` and its tries and timeout, the rate and
//! connection limiters (one per Ingress, shared by its routes) and their exempt ranges; bad
//! values of each.

use std::time::Duration;

use super::*;
use crate::translate::l7::routes::limits::{NextUpstream, Rate, UpstreamPolicy};

fn two_paths() -> String {
    rules(&[rule(
        "h.example",
        &[qpath("/a", "Prefix", "web"), qpath("/b", "Prefix", "web")],
    )])
}

/// The plan of one Ingress `x` with `annotations` on `h.example` `/a` and `/b`.
fn plan_of(annotations: &[(&str, &str)]) -> (L7Plan, Vec<Problem>) {
    translate_docs(&[annotated("x", annotations, &two_paths())])
}

#[test]
fn nginx_sizes() {
    use crate::translate::l7::annotations::parse_size;
    for (text, bytes) in [
        ("0", 0),
        ("1024", 1024),
        ("8k", 8 << 10),
        ("8K", 8 << 10),
        ("1m", 1 << 20),
        ("20M", 20 << 20),
        ("2g", 2 << 30),
        (" 5m ", 5 << 20),
    ] {
        assert_eq!(parse_size(text), Ok(bytes), "{text}");
    }
    for bad in [
        "",
        "m",
        "1.5m",
        "10mb",
        "-1",
        "1t",
        "ten",
        "99999999999999999999g",
    ] {
        assert!(parse_size(bad).is_err(), "{bad}");
    }
}

#[test]
fn without_annotations_routes_share_ingress_nginx_defaults() {
    let (plan, problems) = plan_of(&[]);
    assert!(problems.is_empty(), "{problems:?}");
    let route = route(&plan, "h.example", "/a");
    assert_eq!(*route.policy, UpstreamPolicy::default());
    assert_eq!(route.policy.max_body_bytes, Some(1024 * 1024), "1m");
    assert_eq!(route.policy.send_timeout, Duration::from_secs(60));
    assert_eq!(
        (route.policy.connect_timeout, route.policy.read_timeout),
        (None, None),
        "the proxy's flags, whose defaults are nginx's 5 s and 60 s"
    );
    assert_eq!(route.policy.next_upstream, NextUpstream::DEFAULT);
    assert_eq!(route.policy.next_upstream_tries, 3);
    assert_eq!(route.policy.next_upstream_timeout, None);
    assert!(route.connection_limit.is_none());
    assert!(filter_names(route).is_empty());
}

#[test]
fn proxy_annotations_set_the_policy_of_every_route_of_the_ingress() {
    let (plan, problems) = plan_of(&[
        ("proxy-body-size", "8k"),
        ("client-body-buffer-size", "16k"),
        ("proxy-connect-timeout", "2"),
        ("proxy-send-timeout", "3"),
        ("proxy-read-timeout", "4"),
        (
            "proxy-next-upstream",
            "error timeout http_503 non_idempotent",
        ),
        ("proxy-next-upstream-tries", "5"),
        ("proxy-next-upstream-timeout", "7"),
    ]);
    assert!(problems.is_empty(), "{problems:?}");
    let a = route(&plan, "h.example", "/a");
    let b = route(&plan, "h.example", "/b");
    assert!(Arc::ptr_eq(&a.policy, &b.policy), "one policy per Ingress");
    let policy = *a.policy;
    assert_eq!(policy.max_body_bytes, Some(8 * 1024));
    assert_eq!(policy.connect_timeout, Some(Duration::from_secs(2)));
    assert_eq!(policy.send_timeout, Duration::from_secs(3));
    assert_eq!(policy.read_timeout, Some(Duration::from_secs(4)));
    let set = policy.next_upstream;
    for condition in [
        NextUpstream::ERROR,
        NextUpstream::TIMEOUT,
        NextUpstream::HTTP_503,
        NextUpstream::NON_IDEMPOTENT,
    ] {
        assert!(set.has(condition), "{condition:?}");
    }
    assert!(!set.has(NextUpstream::HTTP_502));
    assert!(set.on_status(http::StatusCode::SERVICE_UNAVAILABLE));
    assert!(!set.on_status(http::StatusCode::BAD_GATEWAY));
    assert_eq!(policy.next_upstream_tries, 5);
    assert_eq!(policy.next_upstream_timeout, Some(Duration::from_secs(7)));

    let (plan, problems) = plan_of(&[
        ("proxy-body-size", "0"),
        ("proxy-next-upstream", "off"),
        ("proxy-next-upstream-tries", "0"),
        ("proxy-next-upstream-timeout", "0"),
    ]);
    assert!(problems.is_empty(), "{problems:?}");
    let policy = *route(&plan, "h.example", "/a").policy;
    assert_eq!(policy.max_body_bytes, None, "0: unlimited");
    assert_eq!(policy.next_upstream, NextUpstream::OFF);
    assert_eq!(policy.next_upstream_tries, 0, "0: no limit");
    assert_eq!(policy.next_upstream_timeout, None, "0: no limit");
}

#[test]
fn rate_limits_are_one_limiter_per_ingress_before_the_source_ranges() {
    let (plan, problems) = plan_of(&[
        ("limit-rps", "10"),
        ("limit-rpm", "300"),
        ("limit-connections", "4"),
        ("limit-whitelist", "192.0.2.0/24"),
        ("whitelist-source-range", "0.0.0.0/0"),
    ]);
    assert!(problems.is_empty(), "{problems:?}");
    let a = route(&plan, "h.example", "/a");
    let b = route(&plan, "h.example", "/b");
    assert_eq!(
        filter_names(a),
        ["rate-limit", "rate-limit", "source-range"],
        "limit_req (preaccess) before allow/deny (access), both rates apply"
    );
    let limiters = |route: &Route| -> Vec<_> {
        route
            .filters
            .iter()
            .filter_map(|f| match f {
                Filter::RateLimit(limiter) => Some(limiter.clone()),
                _ => None,
            })
            .collect()
    };
    let (la, lb) = (limiters(a), limiters(b));
    assert!(
        Arc::ptr_eq(&la[0], &lb[0]),
        "the Ingress's routes share a zone"
    );
    assert_eq!(la[0].rate, Rate::PerSecond(10));
    assert_eq!(la[1].rate, Rate::PerMinute(300));
    assert_eq!(la[0].status, http::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(la[0].exempt.len(), 1);
    let connections = a.connection_limit.as_ref().expect("limit-connections");
    assert!(Arc::ptr_eq(
        connections,
        b.connection_limit.as_ref().unwrap()
    ));
    assert_eq!(connections.limit, 4);
    assert_eq!(connections.exempt.len(), 1);

    // The new name wins over the old; 0 turns a limit off; a multiplier below 1 is the default.
    let (plan, problems) = plan_of(&[
        ("limit-rps", "0"),
        ("limit-rpm", "60"),
        ("limit-burst-multiplier", "0"),
        ("limit-allowlist", "198.51.100.0/24, 203.0.113.7"),
        ("limit-whitelist", "192.0.2.0/24"),
    ]);
    assert_eq!(
        fields(&problems),
        ["Ingress demo/x metadata.annotations[\"nginx.ingress.kubernetes.io/limit-burst-multiplier\"]"]
    );
    assert!(problems[0].message.contains("5 is used"), "{problems:?}");
    let a = route(&plan, "h.example", "/a");
    let limiters = limiters(a);
    assert_eq!(limiters.len(), 1);
    assert_eq!(limiters[0].rate, Rate::PerMinute(60));
    assert_eq!(limiters[0].exempt.len(), 2);
}

#[test]
fn bad_limit_values_fail_the_ingress_and_name_the_key() {
    for (key, value) in [
        ("proxy-body-size", "1.5m"),
        ("proxy-body-size", "10mb"),
        ("client-body-buffer-size", "lots"),
        ("proxy-connect-timeout", "5s"),
        ("proxy-send-timeout", "-1"),
        ("proxy-read-timeout", "0"),
        ("proxy-next-upstream", "error sometimes"),
        ("proxy-next-upstream", "off error"),
        ("proxy-next-upstream-tries", "three"),
        ("proxy-next-upstream-timeout", "1m"),
        ("limit-rps", "ten"),
        ("limit-rpm", "-5"),
        ("limit-connections", "1.5"),
        ("limit-burst-multiplier", "x"),
        ("limit-whitelist", "192.0.2.0/33"),
        ("limit-allowlist", "not-an-address"),
    ] {
        let (plan, problems) = plan_of(&[(key, value)]);
        assert!(
            matches!(
                route(&plan, "h.example", "/a").filters[..],
                [Filter::Fail(_)]
            ),
            "{key}: {value}"
        );
        assert_eq!(
            fields(&problems),
            vec![format!(
                "Ingress demo/x metadata.annotations[\"nginx.ingress.kubernetes.io/{key}\"]"
            )],
            "{key}: {value}"
        );
    }
}
