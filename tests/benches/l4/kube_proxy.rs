//! The peers of the forwarding section (3): the Services as kube-proxy-style nftables and
//! iptables DNAT rules without masquerade (what kube-proxy writes for local endpoints of
//! `externalTrafficPolicy: Local` Services, less its filter chains); and loading a ruleset in a
//! namespace. kube-proxy's full shape, with masquerade, is in kube_proxy_cluster.rs.

use std::{
    fmt::Write as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use xdp_ingress_tests::netns::Netns;

use super::{
    scale::{endpoint_addr, scale_frontend},
    ENDPOINTS, SERVICE_PORT, VIP,
};

pub(crate) fn kube_proxy_nft(services: usize) -> String {
    let mut text =
        String::from("table ip kube-proxy\ndelete table ip kube-proxy\ntable ip kube-proxy {\n");
    let frontend = |i: usize| {
        if services == 1 {
            (VIP, SERVICE_PORT)
        } else {
            scale_frontend(i)
        }
    };
    let _ = writeln!(text, "  map service-ips {{\n    type ipv4_addr . inet_proto . inet_service : verdict\n    elements = {{");
    for i in 0..services {
        let (vip, port) = frontend(i);
        let _ = writeln!(text, "      {vip} . udp . {port} : goto service-{i},");
    }
    let _ = writeln!(text, "    }}\n  }}");
    let _ = writeln!(text, "  chain nat-prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    ip daddr . meta l4proto . th dport vmap @service-ips\n  }}");
    for i in 0..services {
        let targets: Vec<String> = (0..ENDPOINTS)
            .map(|e| format!("{e} : goto endpoint-{i}-{e}"))
            .collect();
        let _ = writeln!(
            text,
            "  chain service-{i} {{\n    numgen random mod {ENDPOINTS} vmap {{ {} }}\n  }}",
            targets.join(", ")
        );
        for e in 0..ENDPOINTS {
            let _ = writeln!(
                text,
                "  chain endpoint-{i}-{e} {{\n    meta l4proto udp dnat to {}:{SERVICE_PORT}\n  }}",
                endpoint_addr(e)
            );
        }
    }
    text.push_str("}\n");
    text
}

pub(crate) fn kube_proxy_iptables(services: usize) -> String {
    let frontend = |i: usize| {
        if services == 1 {
            (VIP, SERVICE_PORT)
        } else {
            scale_frontend(i)
        }
    };
    let mut chains = String::from("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n");
    let mut rules = String::from("-A PREROUTING -j KUBE-SERVICES\n");
    for i in 0..services {
        let (vip, port) = frontend(i);
        let _ = writeln!(chains, ":KUBE-SVC-{i} - [0:0]");
        let _ = writeln!(
            rules,
            "-A KUBE-SERVICES -d {vip}/32 -p udp -m udp --dport {port} -j KUBE-SVC-{i}"
        );
        for e in 0..ENDPOINTS {
            let _ = writeln!(chains, ":KUBE-SEP-{i}-{e} - [0:0]");
            let remaining = ENDPOINTS - e;
            if remaining > 1 {
                let _ = writeln!(rules, "-A KUBE-SVC-{i} -m statistic --mode random --probability {:.11} -j KUBE-SEP-{i}-{e}", 1.0 / remaining as f64);
            } else {
                let _ = writeln!(rules, "-A KUBE-SVC-{i} -j KUBE-SEP-{i}-{e}");
            }
            let _ = writeln!(
                rules,
                "-A KUBE-SEP-{i}-{e} -p udp -m udp -j DNAT --to-destination {}:{SERVICE_PORT}",
                endpoint_addr(e)
            );
        }
    }
    format!("{chains}{rules}COMMIT\n")
}

/// Loads a ruleset in `ns` with `program` reading stdin; returns the wall time.
pub(crate) fn load_rules(ns: &Netns, program: &[&str], rules: &str) -> Result<Duration> {
    load_rules_within(ns, program, rules, Duration::MAX)?
        .with_context(|| format!("{} did not finish", program.join(" ")))
}

/// [`load_rules`], giving up (the command killed: its transaction is not applied) after
/// `limit`: `None` then.
pub(crate) fn load_rules_within(
    ns: &Netns,
    program: &[&str],
    rules: &str,
    limit: Duration,
) -> Result<Option<Duration>> {
    use std::io::Write as _;
    let started = Instant::now();
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns.name()])
        .args(program)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(rules.as_bytes())?;
    while started.elapsed() < limit {
        if child.try_wait()?.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let elapsed = started.elapsed();
    if child.try_wait()?.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        return Ok(None);
    }
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "{} failed: {}",
            program.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(Some(elapsed))
}
