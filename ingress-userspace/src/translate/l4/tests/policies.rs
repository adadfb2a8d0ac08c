//! Frontend policies: session affinity and its timeout, source ranges (spec or annotation,
//! LoadBalancer frontends only, failing closed), and bad values keeping the last good state.

use super::*;

/// A LoadBalancer Service with a nodePort and an externalIP, plus `extra` spec lines and
/// `metadata_extra` metadata entries.
fn svc(metadata_extra: &str, extra: &str) -> Sourced<Service> {
    service(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: s, namespace: demo{metadata_extra}}}\nspec:\n  type: LoadBalancer\n  loadBalancerIP: 203.0.113.5\n  externalIPs: [203.0.113.6]\n  ports: [{{port: 80, nodePort: 30080}}]\n{extra}"
    ))
}

fn translate_one(service: Sourced<Service>, previous: &L4Plan) -> (L4Plan, Vec<Problem>) {
    translate(&objects(vec![service], vec![]), previous, &node("n1"))
}

/// Each frontend's kind and policy.
fn policies(plan: &L4Plan) -> Vec<(FrontendKind, FrontendPolicy)> {
    let mut seen: Vec<(FrontendKind, FrontendPolicy)> = plan
        .frontends
        .values()
        .map(|p| (p.kind, p.policy.clone()))
        .collect();
    seen.dedup();
    seen
}

fn prefix(a: u8, b: u8, c: u8, d: u8, len: u8) -> Ipv4Prefix {
    Ipv4Prefix {
        addr: Ipv4Addr::new(a, b, c, d),
        len,
    }
}

#[test]
fn client_ip_affinity_defaults_to_three_hours_and_applies_to_every_frontend() {
    let (plan, problems) =
        translate_one(svc("", "  sessionAffinity: ClientIP\n"), &L4Plan::default());
    assert!(problems.is_empty(), "{problems:?}");
    assert!(plan
        .frontends
        .values()
        .all(|p| p.policy.affinity_timeout == Some(10_800)));
    assert_eq!(plan.frontends.len(), 4);
    let (plan, _) = translate_one(
        svc(
            "",
            "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n",
        ),
        &L4Plan::default(),
    );
    assert!(plan
        .frontends
        .values()
        .all(|p| p.policy.affinity_timeout == Some(60)));
    let (plan, _) = translate_one(svc("", "  sessionAffinity: None\n"), &L4Plan::default());
    assert!(plan
        .frontends
        .values()
        .all(|p| p.policy.affinity_timeout.is_none()));
}

#[test]
fn affinity_timeouts_out_of_range_keep_the_last_good_state() {
    let (previous, _) = translate_one(svc("", ""), &L4Plan::default());
    for timeout in ["0", "86401", "-5"] {
        let bad = svc(
            "",
            &format!(
                "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {{clientIP: {{timeoutSeconds: {timeout}}}}}\n"
            ),
        );
        let (plan, problems) = translate_one(bad, &previous);
        assert_eq!(problems.len(), 1, "{timeout}");
        assert_eq!(
            problems[0].field,
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds"
        );
        assert_eq!(plan, previous, "{timeout}");
    }
    let edge = svc(
        "",
        "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 86400}}\n",
    );
    let (plan, problems) = translate_one(edge, &previous);
    assert!(problems.is_empty());
    assert!(plan
        .frontends
        .values()
        .all(|p| p.policy.affinity_timeout == Some(86_400)));
}

#[test]
fn source_ranges_apply_to_load_balancer_frontends_only_with_host_bits_masked() {
    let (plan, problems) = translate_one(
        svc(
            "",
            "  loadBalancerSourceRanges: [\"192.0.2.77/24\", \" 198.51.100.7/32\", \"2001:db8::/32\"]\n",
        ),
        &L4Plan::default(),
    );
    assert!(problems.is_empty(), "{problems:?}");
    let ranges = vec![prefix(192, 0, 2, 0, 24), prefix(198, 51, 100, 7, 32)];
    for (frontend, port) in &plan.frontends {
        let expected = if port.kind == FrontendKind::LoadBalancer {
            ranges.clone()
        } else {
            Vec::new()
        };
        assert_eq!(port.policy.source_ranges, expected, "{frontend}");
    }
}

#[test]
fn source_ranges_come_from_the_annotation_when_the_field_is_empty() {
    let annotated = svc(
        ", annotations: {service.beta.kubernetes.io/load-balancer-source-ranges: \"203.0.113.0/25, 10.1.2.3/8,\"}",
        "",
    );
    let (plan, problems) = translate_one(annotated, &L4Plan::default());
    assert!(problems.is_empty(), "{problems:?}");
    let lb = plan
        .frontends
        .values()
        .find(|p| p.kind == FrontendKind::LoadBalancer)
        .expect("LB frontend");
    assert_eq!(
        lb.policy.source_ranges,
        [prefix(10, 0, 0, 0, 8), prefix(203, 0, 113, 0, 25)]
    );
    // The field wins over the annotation.
    let both = svc(
        ", annotations: {service.beta.kubernetes.io/load-balancer-source-ranges: \"203.0.113.0/25\"}",
        "  loadBalancerSourceRanges: [192.0.2.0/24]\n",
    );
    let (plan, _) = translate_one(both, &L4Plan::default());
    let lb = plan
        .frontends
        .values()
        .find(|p| p.kind == FrontendKind::LoadBalancer)
        .expect("LB frontend");
    assert_eq!(lb.policy.source_ranges, [prefix(192, 0, 2, 0, 24)]);
}

#[test]
fn a_source_range_that_does_not_parse_keeps_the_last_good_ranges() {
    let good = svc("", "  loadBalancerSourceRanges: [192.0.2.0/24]\n");
    let (previous, _) = translate_one(good, &L4Plan::default());
    let cases = [
        (
            svc("", "  loadBalancerSourceRanges: [192.0.2.0/24, 192.0.2.300/24]\n"),
            "spec.loadBalancerSourceRanges[1]",
        ),
        (
            svc("", "  loadBalancerSourceRanges: [192.0.2.0/33]\n"),
            "spec.loadBalancerSourceRanges[0]",
        ),
        (
            svc("", "  loadBalancerSourceRanges: [192.0.2.0]\n"),
            "spec.loadBalancerSourceRanges[0]",
        ),
        (
            svc(
                ", annotations: {service.beta.kubernetes.io/load-balancer-source-ranges: \"192.0.2.0/24,nonsense\"}",
                "",
            ),
            "metadata.annotations[service.beta.kubernetes.io/load-balancer-source-ranges]",
        ),
    ];
    for (service, field) in cases {
        let (plan, problems) = translate_one(service, &previous);
        assert_eq!(problems.len(), 1, "{field}: {problems:?}");
        assert_eq!(problems[0].field, field);
        assert_eq!(plan, previous, "{field}: the old ranges stay, not everyone");
    }
}

#[test]
fn only_ipv6_source_ranges_close_the_load_balancer_addresses() {
    let (plan, problems) = translate_one(
        svc("", "  loadBalancerSourceRanges: [\"2001:db8::/32\"]\n"),
        &L4Plan::default(),
    );
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].field, "spec.loadBalancerSourceRanges[0]");
    assert!(plan
        .frontends
        .values()
        .all(|p| p.kind != FrontendKind::LoadBalancer));
    assert_eq!(plan.frontends.len(), 3, "externalIP and nodePorts stay");
}

#[test]
fn traffic_policy_applies_to_every_kind_and_unknown_values_are_problems() {
    let (plan, _) = translate_one(
        svc("", "  externalTrafficPolicy: Local\n"),
        &L4Plan::default(),
    );
    assert_eq!(
        policies(&plan)
            .iter()
            .map(|(kind, policy)| (*kind, policy.local_only))
            .collect::<BTreeSet<_>>(),
        BTreeSet::from([
            (FrontendKind::LoadBalancer, true),
            (FrontendKind::ExternalIp, true),
            (FrontendKind::NodePort, true)
        ])
    );
    let (previous, _) = translate_one(svc("", ""), &L4Plan::default());
    let (plan, problems) = translate_one(svc("", "  externalTrafficPolicy: local\n"), &previous);
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].field, "spec.externalTrafficPolicy");
    assert_eq!(plan, previous);
}

/// Policy changes are not structural: the incremental path applies them.
#[test]
fn affinity_switched_on_and_off_retranslates_incrementally() {
    let off = objects(vec![svc("", "")], vec![]);
    let on = objects(vec![svc("", "  sessionAffinity: ClientIP\n")], vec![]);
    let (mut plan, _) = translate(&off, &L4Plan::default(), &node("n1"));
    let name = BTreeSet::from([ObjectName {
        namespace: "demo".into(),
        name: "s".into(),
    }]);
    let (changed, _) =
        retranslate_services(&on, &mut plan, &name, &node("n1")).expect("incremental");
    assert_eq!(changed.len(), 4);
    assert_eq!(plan, translate(&on, &L4Plan::default(), &node("n1")).0);
    let (changed, _) =
        retranslate_services(&off, &mut plan, &name, &node("n1")).expect("incremental");
    assert_eq!(changed.len(), 4);
    assert_eq!(plan, translate(&off, &L4Plan::default(), &node("n1")).0);
}

#[test]
fn a_zero_length_source_range_allows_everyone_as_in_kube_proxy() {
    let (plan, problems) = translate_one(
        svc(
            "",
            "  loadBalancerSourceRanges: [192.0.2.0/24, 0.0.0.0/0]\n",
        ),
        &L4Plan::default(),
    );
    assert!(problems.is_empty(), "{problems:?}");
    assert!(plan
        .frontends
        .values()
        .all(|p| p.policy.source_ranges.is_empty()));
}

#[test]
fn services_with_bad_policies_seen_first_are_skipped_and_the_others_kept() {
    let named = |name: &str, vip: &str, extra: &str| {
        service(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  type: LoadBalancer\n  loadBalancerIP: {vip}\n  ports: [{{port: 80}}]\n{extra}"
        ))
    };
    let services = vec![
        named("good", "203.0.113.5", "  loadBalancerSourceRanges: [192.0.2.0/24]\n"),
        named(
            "ranges",
            "203.0.113.6",
            "  loadBalancerSourceRanges: [192.0.2.0/24, not-a-range]\n",
        ),
        named(
            "timeout",
            "203.0.113.7",
            "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}\n",
        ),
    ];
    let (plan, mut problems) =
        translate(&objects(services, vec![]), &L4Plan::default(), &node("n1"));
    let served: BTreeSet<String> = plan
        .frontends
        .values()
        .map(|p| p.service.name.clone())
        .collect();
    assert_eq!(served, BTreeSet::from(["good".to_string()]), "{plan:?}");
    problems.sort_by(|a, b| a.object.cmp(&b.object));
    let named_fields: Vec<(&str, &str)> = problems
        .iter()
        .map(|p| (p.object.as_str(), p.field.as_str()))
        .collect();
    assert_eq!(
        named_fields,
        [
            ("Service demo/ranges", "spec.loadBalancerSourceRanges[1]"),
            (
                "Service demo/timeout",
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds"
            ),
        ]
    );
}
