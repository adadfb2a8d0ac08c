//! kube-proxy's rules for the bench's Services as it really writes them for a LoadBalancer
//! Service with `externalTrafficPolicy: Cluster` (the default): DNAT to any endpoint, and
//! masquerade of external clients so the endpoint's replies come back through the node.
//!
//! The shapes follow kubernetes/kubernetes `pkg/proxy/nftables/proxier.go` (and the expected
//! rulesets in its `proxier_test.go`) and `pkg/proxy/iptables/proxier.go`:
//! - nftables: the `service-ips` verdict map sends the LoadBalancer IP to the Service's
//!   `external-…` chain (`jump mark-for-masquerade`, `goto service-…`), whose `numgen random`
//!   vmap picks an `endpoint-…` chain (hairpin `ip saddr EP jump mark-for-masquerade`, `dnat`);
//!   the `masquerading` chain in `nat-postrouting` masquerades marked packets (`fully-random`);
//!   the filter chains with their (here empty) verdict maps run for every new connection.
//! - iptables: `KUBE-SERVICES` → `KUBE-EXT-…` (`KUBE-MARK-MASQ`, `KUBE-SVC-…`) → `statistic`
//!   rules → `KUBE-SEP-…` (hairpin mark, `DNAT`); `KUBE-POSTROUTING` masquerades marked packets.
//!
//! Left out, as the bench's Services have none: ClusterIPs, nodePorts, source ranges, affinity,
//! IPv6, the filter table's iptables chains.
//!
//! Incremental changes are the transactions kube-proxy writes when one endpoint of one Service
//! changes: nftables rewrites that Service's chains (each flushed and refilled, every endpoint
//! chain of it too), flushes the chain of the endpoint that left and deletes the chains that went
//! stale in an earlier sync (it deletes a chain only a second after flushing it, for kernels
//! before 6.2); iptables restores with `--noflush` either the whole `nat` table (its full sync:
//! every change before `MinimizeIPTablesRestore`, and still every `--iptables-sync-period`) or,
//! with `MinimizeIPTablesRestore` (default since 1.27), the top-level chains (`KUBE-SERVICES` in
//! full) and the changed Service's chains.

use std::{fmt::Write as _, net::Ipv4Addr};

use super::SERVICE_PORT;

/// The Services of a ruleset: frontend and endpoints of each.
pub(crate) struct Services {
    pub(crate) frontends: Vec<(Ipv4Addr, u16)>,
    pub(crate) endpoints: Vec<Vec<Ipv4Addr>>,
}

/// kube-proxy's chain-name hash (it uses base32 of a SHA-256): 8 or 16 characters of the name.
fn hash(text: &str, len: usize) -> String {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut hasher);
    let mut value = hasher.finish();
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    (0..len)
        .map(|_| {
            let c = ALPHABET[(value % 32) as usize] as char;
            value = (value / 32) ^ value.rotate_left(17);
            c
        })
        .collect()
}

fn port_name(i: usize) -> String {
    format!("bench/svc-{i}/udp/p")
}

fn nft_service_chain(i: usize) -> String {
    format!("service-{}-{}", hash(&port_name(i), 8), port_name(i))
}

fn nft_external_chain(i: usize) -> String {
    format!("external-{}-{}", hash(&port_name(i), 8), port_name(i))
}

fn nft_endpoint_chain(i: usize, endpoint: Ipv4Addr) -> String {
    let name = format!("{}__{endpoint}/{SERVICE_PORT}", port_name(i));
    format!("endpoint-{}-{name}", hash(&name, 8))
}

/// The table, its hooks and helper chains, as kube-proxy's full sync writes them.
fn nft_base(text: &mut String) {
    text.push_str(
        "add table ip kube-proxy { comment \"rules for kube-proxy\" ; }\n\
         flush table ip kube-proxy\n\
         add set ip kube-proxy cluster-ips { type ipv4_addr ; comment \"Active ClusterIPs\" ; }\n\
         add set ip kube-proxy nodeport-ips { type ipv4_addr ; comment \"IPs that accept NodePort traffic\" ; }\n\
         add map ip kube-proxy firewall-ips { type ipv4_addr . inet_proto . inet_service : verdict ; }\n\
         add map ip kube-proxy no-endpoint-nodeports { type inet_proto . inet_service : verdict ; }\n\
         add map ip kube-proxy no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict ; }\n\
         add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }\n\
         add map ip kube-proxy service-nodeports { type inet_proto . inet_service : verdict ; }\n\
         add chain ip kube-proxy cluster-ips-check\n\
         add chain ip kube-proxy filter-prerouting-pre-dnat { type filter hook prerouting priority -110 ; }\n\
         add chain ip kube-proxy filter-output-pre-dnat { type filter hook output priority -110 ; }\n\
         add chain ip kube-proxy filter-forward { type filter hook forward priority 0 ; }\n\
         add chain ip kube-proxy filter-input { type filter hook input priority 0 ; }\n\
         add chain ip kube-proxy filter-output { type filter hook output priority 0 ; }\n\
         add chain ip kube-proxy firewall-check\n\
         add chain ip kube-proxy mark-for-masquerade\n\
         add chain ip kube-proxy masquerading\n\
         add chain ip kube-proxy nat-output { type nat hook output priority -100 ; }\n\
         add chain ip kube-proxy nat-postrouting { type nat hook postrouting priority 100 ; }\n\
         add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }\n\
         add chain ip kube-proxy nodeport-endpoints-check\n\
         add chain ip kube-proxy reject-chain\n\
         add chain ip kube-proxy services\n\
         add chain ip kube-proxy service-endpoints-check\n\
         add rule ip kube-proxy cluster-ips-check ip daddr @cluster-ips reject\n\
         add rule ip kube-proxy cluster-ips-check ip daddr { 203.0.113.192/26 } drop\n\
         add rule ip kube-proxy filter-prerouting-pre-dnat ct state new jump firewall-check\n\
         add rule ip kube-proxy filter-forward ct state new jump service-endpoints-check\n\
         add rule ip kube-proxy filter-forward ct state new jump cluster-ips-check\n\
         add rule ip kube-proxy filter-input ct state new jump nodeport-endpoints-check\n\
         add rule ip kube-proxy filter-input ct state new jump service-endpoints-check\n\
         add rule ip kube-proxy filter-output ct state new jump service-endpoints-check\n\
         add rule ip kube-proxy filter-output-pre-dnat ct state new jump firewall-check\n\
         add rule ip kube-proxy filter-output ct state new jump cluster-ips-check\n\
         add rule ip kube-proxy firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips\n\
         add rule ip kube-proxy mark-for-masquerade mark set mark or 0x4000\n\
         add rule ip kube-proxy masquerading mark and 0x4000 == 0 return\n\
         add rule ip kube-proxy masquerading mark set mark xor 0x4000\n\
         add rule ip kube-proxy masquerading masquerade fully-random\n\
         add rule ip kube-proxy nat-output jump services\n\
         add rule ip kube-proxy nat-postrouting jump masquerading\n\
         add rule ip kube-proxy nat-prerouting jump services\n\
         add rule ip kube-proxy nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports\n\
         add rule ip kube-proxy reject-chain reject\n\
         add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips\n\
         add rule ip kube-proxy services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports\n\
         add rule ip kube-proxy service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services\n",
    );
}

/// Service `i`'s chains (each added, flushed and filled, as kube-proxy's `ensureChain` does;
/// every chain exists before a rule names it, as nft requires within one transaction).
fn nft_service(text: &mut String, i: usize, endpoints: &[Ipv4Addr]) {
    let service = nft_service_chain(i);
    let external = nft_external_chain(i);
    let chains: Vec<String> = endpoints
        .iter()
        .map(|endpoint| nft_endpoint_chain(i, *endpoint))
        .collect();
    for chain in [&service, &external].into_iter().chain(&chains) {
        let _ = writeln!(
            text,
            "add chain ip kube-proxy {chain}\nflush chain ip kube-proxy {chain}"
        );
    }
    let targets: Vec<String> = chains
        .iter()
        .enumerate()
        .map(|(n, chain)| format!("{n} : goto {chain}"))
        .collect();
    let _ = writeln!(
        text,
        "add rule ip kube-proxy {service} numgen random mod {} vmap {{ {} }}\n\
         add rule ip kube-proxy {external} jump mark-for-masquerade\n\
         add rule ip kube-proxy {external} goto {service}",
        endpoints.len(),
        targets.join(" , ")
    );
    for (endpoint, chain) in endpoints.iter().zip(&chains) {
        let _ = writeln!(
            text,
            "add rule ip kube-proxy {chain} ip saddr {endpoint} jump mark-for-masquerade\n\
             add rule ip kube-proxy {chain} meta l4proto udp dnat to {endpoint}:{SERVICE_PORT}"
        );
    }
}

/// The whole ruleset, as kube-proxy's nftables mode writes it in a full sync.
pub(crate) fn nft_full(services: &Services) -> String {
    let mut text = String::new();
    nft_base(&mut text);
    for (i, endpoints) in services.endpoints.iter().enumerate() {
        nft_service(&mut text, i, endpoints);
    }
    for (i, (vip, port)) in services.frontends.iter().enumerate() {
        let _ = writeln!(
            text,
            "add element ip kube-proxy service-ips {{ {vip} . udp . {port} : goto {} }}",
            nft_external_chain(i)
        );
    }
    text
}

/// The transaction of a partial sync after Service `i`'s endpoints became `endpoints`:
/// its chains rewritten, `left` (endpoints gone since the last sync) flushed, `stale` (gone in
/// an earlier sync, flushed then) deleted. The `service-ips` element is unchanged, so not written.
pub(crate) fn nft_change(
    i: usize,
    endpoints: &[Ipv4Addr],
    left: &[Ipv4Addr],
    stale: &[(usize, Ipv4Addr)],
) -> String {
    let mut text = String::new();
    nft_service(&mut text, i, endpoints);
    for endpoint in left {
        let _ = writeln!(
            text,
            "flush chain ip kube-proxy {}",
            nft_endpoint_chain(i, *endpoint)
        );
    }
    for (service, endpoint) in stale {
        let _ = writeln!(
            text,
            "delete chain ip kube-proxy {}",
            nft_endpoint_chain(*service, *endpoint)
        );
    }
    text
}

fn ipt_svc_chain(i: usize) -> String {
    format!("KUBE-SVC-{}", hash(&port_name(i), 16))
}

fn ipt_ext_chain(i: usize) -> String {
    format!("KUBE-EXT-{}", hash(&port_name(i), 16))
}

fn ipt_sep_chain(i: usize, endpoint: Ipv4Addr) -> String {
    format!(
        "KUBE-SEP-{}",
        hash(&format!("{}__{endpoint}", port_name(i)), 16)
    )
}

/// Service `i`'s chain declarations and rules.
fn ipt_service(chains: &mut String, rules: &mut String, i: usize, endpoints: &[Ipv4Addr]) {
    let (svc, ext, name) = (ipt_svc_chain(i), ipt_ext_chain(i), port_name(i));
    let _ = writeln!(chains, ":{svc} - [0:0]\n:{ext} - [0:0]");
    let _ = writeln!(
        rules,
        "-A {ext} -m comment --comment \"masquerade traffic for {name} external destinations\" -j KUBE-MARK-MASQ\n\
         -A {ext} -j {svc}"
    );
    for (n, endpoint) in endpoints.iter().enumerate() {
        let sep = ipt_sep_chain(i, *endpoint);
        let _ = writeln!(chains, ":{sep} - [0:0]");
        let remaining = endpoints.len() - n;
        if remaining > 1 {
            let _ = writeln!(
                rules,
                "-A {svc} -m comment --comment \"{name} -> {endpoint}:{SERVICE_PORT}\" -m statistic --mode random --probability {:.10} -j {sep}",
                1.0 / remaining as f64
            );
        } else {
            let _ = writeln!(
                rules,
                "-A {svc} -m comment --comment \"{name} -> {endpoint}:{SERVICE_PORT}\" -j {sep}"
            );
        }
        let _ = writeln!(
            rules,
            "-A {sep} -m comment --comment {name} -s {endpoint}/32 -j KUBE-MARK-MASQ\n\
             -A {sep} -m comment --comment {name} -m udp -p udp -j DNAT --to-destination {endpoint}:{SERVICE_PORT}"
        );
    }
}

/// kube-proxy's top-level `nat` chains (always written in full) and `KUBE-SERVICES`' rules.
fn ipt_top(chains: &mut String, rules: &mut String, services: &Services) {
    chains.push_str(
        "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n",
    );
    rules.push_str(
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n",
    );
    for (i, (vip, port)) in services.frontends.iter().enumerate() {
        let _ = writeln!(
            rules,
            "-A KUBE-SERVICES -m comment --comment \"{} loadbalancer IP\" -d {vip}/32 -p udp -m udp --dport {port} -j {}",
            port_name(i),
            ipt_ext_chain(i)
        );
    }
}

/// The whole `nat` table as kube-proxy's iptables mode restores it (`iptables-restore
/// --noflush`) in a full sync; `hooks` adds the jumps from the built-in chains (kube-proxy
/// makes those once with `iptables -I`), for a first load into an empty table; `deleted`:
/// chains of endpoints that left (declared and `-X`ed, as kube-proxy does).
pub(crate) fn ipt_full(services: &Services, hooks: bool, deleted: &[(usize, Ipv4Addr)]) -> String {
    let (mut chains, mut rules) = (String::new(), String::new());
    ipt_top(&mut chains, &mut rules, services);
    if hooks {
        rules.push_str("-A PREROUTING -j KUBE-SERVICES\n-A OUTPUT -j KUBE-SERVICES\n-A POSTROUTING -j KUBE-POSTROUTING\n");
    }
    for (i, endpoints) in services.endpoints.iter().enumerate() {
        ipt_service(&mut chains, &mut rules, i, endpoints);
    }
    ipt_deleted(&mut chains, &mut rules, deleted);
    format!("{chains}{rules}COMMIT\n")
}

/// A `MinimizeIPTablesRestore` partial sync after Service `i` changed: the top-level chains in
/// full, Service `i`'s chains, the chains of endpoints that left deleted.
pub(crate) fn ipt_partial(services: &Services, i: usize, deleted: &[(usize, Ipv4Addr)]) -> String {
    let (mut chains, mut rules) = (String::new(), String::new());
    ipt_top(&mut chains, &mut rules, services);
    ipt_service(&mut chains, &mut rules, i, &services.endpoints[i]);
    ipt_deleted(&mut chains, &mut rules, deleted);
    format!("{chains}{rules}COMMIT\n")
}

fn ipt_deleted(chains: &mut String, rules: &mut String, deleted: &[(usize, Ipv4Addr)]) {
    for (service, endpoint) in deleted {
        let sep = ipt_sep_chain(*service, *endpoint);
        let _ = writeln!(chains, ":{sep} - [0:0]");
        let _ = writeln!(rules, "-X {sep}");
    }
}
