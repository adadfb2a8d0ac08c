//! KEP-1669 on one node: ready endpoints take new flows, serving terminating ones only when
//! none is ready, and keep their established flows otherwise; `publishNotReadyAddresses`;
//! locality, `externalTrafficPolicy: Local` and the health check count.

use super::*;

/// A LoadBalancer Service with one port and the given extra spec lines.
fn svc(extra: &str) -> Sourced<Service> {
    service(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: s, namespace: demo}}\nspec:\n  type: LoadBalancer\n  loadBalancerIP: 203.0.113.5\n  ports: [{{name: http, port: 80}}]\n{extra}"
    ))
}

/// A slice of `s` with the given endpoint lines.
fn eps(endpoints: &[&str]) -> Sourced<EndpointSlice> {
    let lines: String = endpoints.iter().map(|e| format!("- {e}\n")).collect();
    slice(&format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s-1, namespace: demo, labels: {{kubernetes.io/service-name: s}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n{lines}"
    ))
}

fn frontend() -> Frontend {
    Frontend {
        vip: Ipv4Addr::new(203, 0, 113, 5),
        port: 80,
        protocol: Protocol::Tcp,
    }
}

/// The last octets of a set of endpoints.
fn octets(set: &BTreeSet<Endpoint>) -> Vec<u8> {
    set.iter().map(|e| e.addr.octets()[3]).collect()
}

/// (backends, draining, remote) of the one frontend.
fn roles(
    service: Sourced<Service>,
    endpoints: &[&str],
    options: &L4Options,
) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let (plan, problems) = translate(
        &objects(vec![service], vec![eps(endpoints)]),
        &L4Plan::default(),
        options,
    );
    assert!(problems.is_empty(), "{problems:?}");
    let port = &plan.frontends[&frontend()];
    (
        octets(&port.backends),
        octets(&port.draining),
        octets(&port.remote),
    )
}

const READY: &str =
    "{addresses: [198.51.100.1], conditions: {ready: true, serving: true, terminating: false}}";
const UNSET: &str = "{addresses: [198.51.100.2]}";
const NOT_READY: &str =
    "{addresses: [198.51.100.3], conditions: {ready: false, serving: false, terminating: false}}";
const TERMINATING_SERVING: &str =
    "{addresses: [198.51.100.4], conditions: {ready: false, serving: true, terminating: true}}";
const TERMINATING_GONE: &str =
    "{addresses: [198.51.100.5], conditions: {ready: false, serving: false, terminating: true}}";
/// `serving` missing: defers to `ready` (false), so not a fallback.
const TERMINATING_UNSET_SERVING: &str =
    "{addresses: [198.51.100.6], conditions: {ready: false, terminating: true}}";

#[test]
fn ready_endpoints_take_new_flows_and_serving_terminating_ones_drain() {
    let all = [
        READY,
        UNSET,
        NOT_READY,
        TERMINATING_SERVING,
        TERMINATING_GONE,
        TERMINATING_UNSET_SERVING,
    ];
    assert_eq!(
        roles(svc(""), &all, &NO_NODE),
        (vec![1, 2], vec![4], vec![])
    );
}

#[test]
fn without_ready_endpoints_the_serving_terminating_ones_take_new_flows() {
    let none_ready = [
        NOT_READY,
        TERMINATING_SERVING,
        TERMINATING_GONE,
        TERMINATING_UNSET_SERVING,
    ];
    assert_eq!(
        roles(svc(""), &none_ready, &NO_NODE),
        (vec![4], vec![], vec![])
    );
    // Nothing usable: no backends (new connections refused), nothing draining.
    assert_eq!(
        roles(svc(""), &[NOT_READY, TERMINATING_GONE], &NO_NODE),
        (vec![], vec![], vec![])
    );
}

#[test]
fn publish_not_ready_addresses_makes_every_endpoint_ready() {
    let all = [NOT_READY, TERMINATING_SERVING, TERMINATING_GONE];
    assert_eq!(
        roles(svc("  publishNotReadyAddresses: true\n"), &all, &NO_NODE),
        (vec![3, 4, 5], vec![], vec![])
    );
}

#[test]
fn endpoints_on_other_nodes_are_remote_and_those_naming_no_node_local() {
    let endpoints = [
        "{addresses: [198.51.100.1], nodeName: n1}",
        "{addresses: [198.51.100.2], nodeName: n2}",
        "{addresses: [198.51.100.3]}",
        "{addresses: [198.51.100.4], nodeName: n2, conditions: {ready: false, serving: true, terminating: true}}",
    ];
    assert_eq!(
        roles(svc(""), &endpoints, &node("n1")),
        (vec![1, 2, 3], vec![4], vec![2, 4])
    );
    // Seen from n2, n1's endpoint is the remote one.
    assert_eq!(
        roles(svc(""), &endpoints, &node("n2")),
        (vec![1, 2, 3], vec![4], vec![1])
    );
}

#[test]
fn external_traffic_policy_local_uses_this_nodes_endpoints_only() {
    let local = svc("  externalTrafficPolicy: Local\n  healthCheckNodePort: 32000\n");
    let endpoints = [
        "{addresses: [198.51.100.1], nodeName: n1}",
        "{addresses: [198.51.100.2], nodeName: n2}",
        "{addresses: [198.51.100.4], nodeName: n1, conditions: {ready: false, serving: true, terminating: true}}",
    ];
    assert_eq!(
        roles(local.clone(), &endpoints, &node("n1")),
        (vec![1], vec![4], vec![])
    );
    // n2 has a ready endpoint of its own.
    assert_eq!(
        roles(local.clone(), &endpoints, &node("n2")),
        (vec![2], vec![], vec![])
    );
    // n3 has none: no backends although the Service has some elsewhere.
    assert_eq!(
        roles(local.clone(), &endpoints, &node("n3")),
        (vec![], vec![], vec![])
    );
    // ... so its datapath drops new connections instead of refusing them (kube-proxy's rule).
    let (plan, _) = translate(
        &objects(vec![local.clone()], vec![eps(&endpoints)]),
        &L4Plan::default(),
        &node("n3"),
    );
    assert!(plan.frontends[&frontend()].endpoints_elsewhere);
    let (plan, _) = translate(
        &objects(vec![local.clone()], vec![eps(&[])]),
        &L4Plan::default(),
        &node("n3"),
    );
    assert!(
        !plan.frontends[&frontend()].endpoints_elsewhere,
        "no endpoint anywhere: refused"
    );
    let (plan, _) = translate(
        &objects(vec![local.clone()], vec![eps(&endpoints)]),
        &L4Plan::default(),
        &node("n1"),
    );
    assert!(!plan.frontends[&frontend()].endpoints_elsewhere);
    // Only a local terminating one: it takes new flows (kube-proxy's local fallback).
    let only_terminating = [
        "{addresses: [198.51.100.2], nodeName: n2}",
        "{addresses: [198.51.100.4], nodeName: n1, conditions: {ready: false, serving: true, terminating: true}}",
    ];
    assert_eq!(
        roles(local.clone(), &only_terminating, &node("n1")),
        (vec![4], vec![], vec![])
    );
    let (plan, _) = translate(
        &objects(vec![local.clone()], vec![eps(&only_terminating)]),
        &L4Plan::default(),
        &node("n1"),
    );
    assert!(plan.frontends[&frontend()].policy.local_only);
    // ... but the health check does not count it.
    assert_eq!(plan.health_checks[&32000].local_endpoints, 0);
}

#[test]
fn health_check_counts_ready_local_endpoints_of_every_port() {
    let two_ports = service(
        "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: demo}\nspec:\n  type: LoadBalancer\n  loadBalancerIP: 203.0.113.5\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 32000\n  ports: [{name: http, port: 80}, {name: admin, port: 81}]\n",
    );
    let slice_two_ports = slice(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s-1, namespace: demo, labels: {kubernetes.io/service-name: s}}\naddressType: IPv4\nports: [{name: http, port: 8080}, {name: admin, port: 9090}]\nendpoints:\n- {addresses: [198.51.100.1], nodeName: n1}\n- {addresses: [198.51.100.2], nodeName: n1, conditions: {ready: false}}\n- {addresses: [198.51.100.3], nodeName: n2}\n",
    );
    let (plan, problems) = translate(
        &objects(vec![two_ports.clone()], vec![slice_two_ports.clone()]),
        &L4Plan::default(),
        &node("n1"),
    );
    assert!(problems.is_empty(), "{problems:?}");
    let check = &plan.health_checks[&32000];
    assert_eq!(check.service.to_string(), "demo/s");
    // kube-proxy counts local ready endpoints by address: one pod with two ports counts once.
    assert_eq!(check.local_endpoints, 1);
    // eTP Cluster: no health check even with the port set.
    let cluster = service(
        &serde_yaml::to_string(&two_ports.object)
            .expect("yaml")
            .replace(
                "externalTrafficPolicy: Local",
                "externalTrafficPolicy: Cluster",
            ),
    );
    let (plan, _) = translate(
        &objects(vec![cluster], vec![slice_two_ports]),
        &L4Plan::default(),
        &node("n1"),
    );
    assert!(plan.health_checks.is_empty());
}

/// An endpoint change re-translates incrementally: backends, draining and the health check
/// count follow, and the result is the full translation's.
#[test]
fn endpoint_changes_retranslate_roles_and_health_counts_incrementally() {
    let local = svc("  externalTrafficPolicy: Local\n  healthCheckNodePort: 32000\n");
    let before = objects(
        vec![local.clone()],
        vec![eps(&["{addresses: [198.51.100.1], nodeName: n1}"])],
    );
    let (mut plan, _) = translate(&before, &L4Plan::default(), &node("n1"));
    assert_eq!(plan.health_checks[&32000].local_endpoints, 1);
    let after = objects(
        vec![local],
        vec![eps(&[
            "{addresses: [198.51.100.1], nodeName: n1, conditions: {ready: false, serving: true, terminating: true}}",
            "{addresses: [198.51.100.2], nodeName: n2}",
        ])],
    );
    let name = ObjectName {
        namespace: "demo".into(),
        name: "s".into(),
    };
    let (changed, problems) =
        retranslate_services(&after, &mut plan, &BTreeSet::from([name]), &node("n1"))
            .expect("incremental");
    assert!(problems.is_empty());
    // The local endpoint, now terminating, still takes the flows (no other local one): the
    // frontend is unchanged, but the health check no longer counts it, so load balancers
    // move away from this node.
    assert!(changed.is_empty(), "{changed:?}");
    assert_eq!(plan.frontends[&frontend()].backends.len(), 1);
    assert_eq!(plan.health_checks[&32000].local_endpoints, 0);
    let (full, _) = translate(&after, &L4Plan::default(), &node("n1"));
    assert_eq!(plan, full);
}
