//! `xdp-ingress inspect services|backends|flows|routes|certs [--json]`: what is programmed now,
//! for a person debugging a node (like `cilium bpf lb list`).
//!
//! - `services`, `backends` and `flows` read the pinned BPF maps directly, so they work while the
//!   agent is down or restarting; Service names come from the running agent when it answers.
//! - `routes` and `certs` live in the agent's memory: it serves them as JSON on its admin
//!   listener (`/debug/routes`, `/debug/certs`, and `/debug/services` for the names), built on
//!   request by the runner from the plans it holds ([`services_view`], [`routes_view`],
//!   [`certs_view`]); nothing is computed on the apply path.

use std::{
    collections::BTreeMap,
    io,
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use bytes::Bytes;
use http::{
    header::{CONNECTION, HOST},
    Request, StatusCode,
};
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use ingress_common::{proto, BACKEND_ACTIVE};
use serde_json::{json, Value};
use tokio::{net::TcpStream, sync::oneshot};

use crate::{
    cli::{InspectArgs, InspectWhat},
    datapath::{KernelMaps, PinDir},
    model::ObjectName,
    translate::{
        l4::L4Plan,
        l7::{plan::BackendPlan, L7Plan},
    },
};

/// A view the admin listener asks the runner for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViewKind {
    /// Frontend → Service names ([`services_view`]).
    Services,
    /// The routing table ([`routes_view`]).
    Routes,
    /// The certificates ([`certs_view`]).
    Certs,
}

/// A request for a view; the runner answers on the enclosed channel.
pub type ViewRequest = (ViewKind, oneshot::Sender<Value>);

/// How long `inspect` waits for the agent's admin listener.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(3);

/// Which Service (and port name) each programmed frontend belongs to, its kind and policies,
/// and which of its endpoints are remote (SNAT) or draining.
pub fn services_view(plan: &L4Plan) -> Value {
    let endpoints = |set: &std::collections::BTreeSet<crate::translate::l4::Endpoint>| {
        set.iter().map(ToString::to_string).collect::<Vec<_>>()
    };
    Value::Array(
        plan.frontends
            .iter()
            .map(|(frontend, port)| {
                json!({
                    "frontend": frontend.to_string(),
                    "namespace": port.service.namespace,
                    "service": port.service.name,
                    "port_name": port.port_name,
                    "kind": port.kind.to_string(),
                    "external_traffic_policy": if port.policy.local_only { "Local" } else { "Cluster" },
                    "affinity_timeout_seconds": port.policy.affinity_timeout,
                    "source_ranges": port.policy.source_ranges.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "remote": endpoints(&port.remote),
                    "draining": endpoints(&port.draining),
                })
            })
            .collect(),
    )
}

fn backend_json(backend: &BackendPlan) -> Value {
    let (endpoints, unavailable) = match &backend.endpoints {
        Ok(addrs) => (
            addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            None,
        ),
        Err(why) => (Vec::new(), Some(format!("{why:?}"))),
    };
    json!({
        "ingress": backend.ingress.to_string(),
        "service": backend.service.to_string(),
        "port": backend.port.to_string(),
        "endpoints": endpoints,
        "unavailable": unavailable,
    })
}

/// The proxy's routing table, rule by rule in match order, the default backend, and the
/// `ssl-passthrough` hosts (whose TLS connections never reach the rules).
pub fn routes_view(plan: &L7Plan) -> Value {
    let backend = |id: &usize| plan.backends.get(*id).map_or(Value::Null, backend_json);
    let routes: Vec<Value> = plan
        .routes
        .entries()
        .into_iter()
        .map(|entry| {
            json!({
                "host": entry.host,
                "path": entry.path,
                "path_type": format!("{:?}", entry.path_type),
                "backend": entry.backend.backend().as_ref().map_or(Value::Null, backend),
            })
        })
        .collect();
    let passthrough: Vec<Value> = plan
        .passthrough
        .entries()
        .into_iter()
        .map(|(host, entry)| {
            json!({
                "host": host,
                "ingress": entry.ingress.to_string(),
                "backend": backend(&entry.backend),
            })
        })
        .collect();
    let mut view = json!({
        "routes": routes,
        "default_backend": plan.routes.default_backend().and_then(|r| r.backend()).as_ref().map(backend),
    });
    // Only where some host passes through: the view is otherwise what it always was.
    if !passthrough.is_empty() {
        view["passthrough"] = Value::Array(passthrough);
    }
    view
}

/// Certificates by host in precedence order, with the leaf's expiry where it parsed.
pub fn certs_view(plan: &L7Plan, expiry: &[(ObjectName, i64)]) -> Value {
    let not_after = |secret: &ObjectName| {
        expiry
            .iter()
            .find(|(name, _)| name == secret)
            .map(|(_, at)| *at)
    };
    let cert = |tls: &crate::translate::l7::plan::TlsPlan, default: bool| {
        json!({
            "hosts": tls.hosts,
            "secret": tls.secret.to_string(),
            "ingress": tls.ingress.as_ref().map(ToString::to_string),
            "default": default,
            "problem": tls.pem.as_ref().err(),
            "not_after": not_after(&tls.secret),
        })
    };
    let mut certs: Vec<Value> = plan.tls.iter().map(|tls| cert(tls, false)).collect();
    if let Some(tls) = &plan.default_tls {
        certs.push(cert(tls, true));
    }
    Value::Array(certs)
}

/// Runs `inspect`.
pub fn run(args: &InspectArgs) -> Result<()> {
    let view = match args.what {
        InspectWhat::Services | InspectWhat::Backends | InspectWhat::Flows => {
            let pins = PinDir::new(&args.bpffs);
            let maps = KernelMaps::open_pinned(&pins).with_context(|| {
                format!(
                    "reading the maps pinned under {} (is the agent running with --bpffs there?)",
                    args.bpffs.display()
                )
            })?;
            let names = match fetch(args.admin, "/debug/services") {
                Ok(view) => names_from(&view),
                Err(error) => {
                    eprintln!("note: no Service names ({error:#}); showing the maps alone");
                    Names::new()
                }
            };
            match args.what {
                InspectWhat::Services => services_from_maps(&maps, &names)?,
                InspectWhat::Backends => backends_from_maps(&maps, &names)?,
                _ => flows_from_maps(&maps)?,
            }
        }
        InspectWhat::Routes => fetch(args.admin, "/debug/routes")?,
        InspectWhat::Certs => fetch(args.admin, "/debug/certs")?,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        for line in table(args.what, &view) {
            println!("{line}");
        }
    }
    Ok(())
}

/// GET `path` from the admin listener; its JSON body. `inspect` is a one-shot command that
/// runs without a runtime, so the request gets a current-thread one of its own.
fn fetch(admin: SocketAddr, path: &str) -> Result<Value> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(get(admin, path))
}

async fn get(admin: SocketAddr, path: &str) -> Result<Value> {
    let stream = tokio::time::timeout(ADMIN_TIMEOUT, TcpStream::connect(admin))
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection timed out",
            ))
        })
        .with_context(|| format!("connecting to the agent's admin listener {admin}"))?;
    let reading = || format!("reading {path} from {admin}");
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .with_context(reading)?;
    // The connection is driven beside the request; `Connection: close` ends it after the answer.
    tokio::spawn(connection);
    let request = Request::get(path)
        .header(HOST, admin.to_string())
        .header(CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .with_context(|| format!("{path}: not a request path"))?;
    let response = match tokio::time::timeout(ADMIN_TIMEOUT, sender.send_request(request)).await {
        Ok(Ok(response)) => response,
        Ok(Err(error)) if error.is_parse() || error.is_incomplete_message() => {
            bail!("{path} from {admin}: no HTTP response")
        }
        Ok(Err(error)) => return Err(error).with_context(reading),
        Err(elapsed) => return Err(elapsed).with_context(reading),
    };
    let (head, body) = response.into_parts();
    let body = match tokio::time::timeout(ADMIN_TIMEOUT, body.collect()).await {
        Ok(body) => body.with_context(reading)?.to_bytes(),
        Err(elapsed) => return Err(elapsed).with_context(reading),
    };
    let body = String::from_utf8_lossy(&body);
    if head.status != StatusCode::OK {
        // As the status line reads: `HTTP/1.1 403 Forbidden`.
        let status = format!("{:?} {}", head.version, head.status);
        bail!("{path} from {admin}: {status}: {}", body.trim());
    }
    serde_json::from_str(&body).with_context(|| format!("{path} from {admin}: not JSON"))
}

/// Frontend (`vip:port/PROTO`) → its entry of `/debug/services` (Service, port name, kind,
/// policies).
type Names = BTreeMap<String, Value>;

fn names_from(view: &Value) -> Names {
    view.as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| Some((n["frontend"].as_str()?.to_string(), n.clone())))
        .collect()
}

fn name_of(names: &Names, frontend: &str) -> (String, String) {
    match names.get(frontend) {
        Some(n) => (
            format!(
                "{}/{}",
                n["namespace"].as_str().unwrap_or_default(),
                n["service"].as_str().unwrap_or_default()
            ),
            n["port_name"].as_str().unwrap_or_default().to_string(),
        ),
        None => ("-".into(), String::new()),
    }
}

fn addr(network_order: u32) -> Ipv4Addr {
    Ipv4Addr::from(network_order.to_ne_bytes())
}

fn protocol(number: u32) -> &'static str {
    match u8::try_from(number) {
        Ok(proto::TCP) => "TCP",
        Ok(proto::UDP) => "UDP",
        _ => "?",
    }
}

fn services_from_maps(maps: &KernelMaps, names: &Names) -> Result<Value> {
    let state = maps.read_state()?;
    let mut services = Vec::new();
    for (key, entry, table) in &state.services {
        let frontend = format!(
            "{}:{}/{}",
            addr(key.vip),
            u16::from_be(key.port),
            protocol(key.proto.into())
        );
        let (service, port_name) = name_of(names, &frontend);
        let counters = maps.service_counters(entry.service_id)?;
        let mut slots: BTreeMap<u32, usize> = BTreeMap::new();
        for id in table {
            *slots.entry(*id).or_insert(0) += 1;
        }
        // Draining backends are in no table; they name their frontend.
        for (id, backend) in state.backends.iter().enumerate() {
            if backend.service_id == entry.service_id
                && backend.flags & ingress_common::BACKEND_DRAINING != 0
                && backend.flags & ingress_common::BACKEND_ACTIVE != 0
            {
                slots.entry(id as u32).or_insert(0);
            }
        }
        let backends: Vec<Value> = slots
            .iter()
            .map(|(id, slots)| {
                let backend = maps.backend(*id);
                let counters = maps.backend_counters(*id).unwrap_or_default();
                let flags = backend.map_or(0, |b| b.flags);
                json!({
                    "id": id,
                    "address": backend.map(|b| format!("{}:{}", addr(b.addr), u16::from_be(b.port))),
                    "maglev_slots": slots,
                    "remote": flags & ingress_common::BACKEND_SNAT != 0,
                    "draining": flags & ingress_common::BACKEND_DRAINING != 0,
                    "packets": counters.packets,
                    "bytes": counters.bytes,
                })
            })
            .collect();
        let view = names.get(&frontend);
        let from_view = |field: &str| view.map_or(Value::Null, |v| v[field].clone());
        services.push(json!({
            "frontend": frontend,
            "service": service,
            "port_name": port_name,
            "kind": from_view("kind"),
            "external_traffic_policy": from_view("external_traffic_policy"),
            "source_range_list": from_view("source_ranges"),
            "snat_failures": counters.snat_failures,
            "service_id": entry.service_id,
            "maglev_table_size": entry.table_size,
            "packets": counters.packets,
            "bytes": counters.bytes,
            "new_flows": counters.new_flows,
            "no_backend_drops": counters.no_backend,
            "rejected": counters.rejected,
            "source_range_drops": counters.denied,
            "affinity_timeout_seconds": entry.affinity_timeout,
            "drops_when_empty": entry.flags & ingress_common::SERVICE_DROP_EMPTY != 0,
            "source_ranges": entry.flags & ingress_common::SERVICE_SOURCE_RANGES != 0,
            "backends": backends,
        }));
    }
    services.sort_by(|a, b| a["frontend"].as_str().cmp(&b["frontend"].as_str()));
    Ok(Value::Array(services))
}

fn backends_from_maps(maps: &KernelMaps, names: &Names) -> Result<Value> {
    let state = maps.read_state()?;
    let mut frontend_of: BTreeMap<u32, String> = BTreeMap::new();
    for (key, _, table) in &state.services {
        let frontend = format!(
            "{}:{}/{}",
            addr(key.vip),
            u16::from_be(key.port),
            protocol(key.proto.into())
        );
        for id in table {
            frontend_of.entry(*id).or_insert_with(|| frontend.clone());
        }
    }
    let mut backends = Vec::new();
    for (id, backend) in state.backends.iter().enumerate() {
        let id = id as u32;
        if backend.flags & BACKEND_ACTIVE == 0 {
            continue;
        }
        let counters = maps.backend_counters(id)?;
        let frontend = frontend_of.get(&id).cloned().unwrap_or_default();
        let (service, _) = name_of(names, &frontend);
        backends.push(json!({
            "id": id,
            "address": format!("{}:{}", addr(backend.addr), u16::from_be(backend.port)),
            "frontend": frontend,
            "service": service,
            "generation": backend.generation,
            "packets": counters.packets,
            "bytes": counters.bytes,
        }));
    }
    Ok(Value::Array(backends))
}

fn flows_from_maps(maps: &KernelMaps) -> Result<Value> {
    let mut flows = Vec::new();
    for (key, entry) in maps.flows() {
        let backend = maps
            .backend(entry.backend_id)
            .filter(|b| b.flags & BACKEND_ACTIVE != 0 && b.generation == entry.backend_generation);
        flows.push(json!({
            "protocol": protocol(key.proto),
            "client": format!("{}:{}", addr(key.src_addr), u16::from_be(key.src_port)),
            "vip": format!("{}:{}", addr(key.dst_addr), u16::from_be(key.dst_port)),
            "backend_id": entry.backend_id,
            // None: the backend left; the flow's next packet is re-balanced.
            "backend": backend.map(|b| format!("{}:{}", addr(b.addr), u16::from_be(b.port))),
            "service_id": entry.service_id,
        }));
    }
    flows.sort_by(|a, b| a["client"].as_str().cmp(&b["client"].as_str()));
    Ok(Value::Array(flows))
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The human-readable form of a view.
fn table(what: InspectWhat, view: &Value) -> Vec<String> {
    let rows = |v: &Value| v.as_array().cloned().unwrap_or_default();
    let mut lines = Vec::new();
    match what {
        InspectWhat::Services => {
            lines.push(format!(
                "{:<24} {:<12} {:<7} {:<28} {:>5} {:>7} {:>12} {:>10}  BACKENDS (id addr slots packets; remote, draining marked)",
                "FRONTEND", "KIND", "POLICY", "SERVICE", "ID", "SLOTS", "PACKETS", "NEW FLOWS"
            ));
            for s in rows(view) {
                let backends: Vec<String> = rows(&s["backends"])
                    .iter()
                    .map(|b| {
                        let mut marks = String::new();
                        if b["remote"] == true {
                            marks.push_str(" remote");
                        }
                        if b["draining"] == true {
                            marks.push_str(" draining");
                        }
                        format!(
                            "{} {} {} {}{marks}",
                            b["id"],
                            text(&b["address"]),
                            b["maglev_slots"],
                            b["packets"]
                        )
                    })
                    .collect();
                lines.push(format!(
                    "{:<24} {:<12} {:<7} {:<28} {:>5} {:>7} {:>12} {:>10}  {}",
                    text(&s["frontend"]),
                    text(&s["kind"]),
                    text(&s["external_traffic_policy"]),
                    text(&s["service"]),
                    s["service_id"],
                    s["maglev_table_size"],
                    s["packets"],
                    s["new_flows"],
                    backends.join(", ")
                ));
            }
        }
        InspectWhat::Backends => {
            lines.push(format!(
                "{:>6} {:<22} {:<24} {:<28} {:>12} {:>14}",
                "ID", "ADDRESS", "FRONTEND", "SERVICE", "PACKETS", "BYTES"
            ));
            for b in rows(view) {
                lines.push(format!(
                    "{:>6} {:<22} {:<24} {:<28} {:>12} {:>14}",
                    b["id"],
                    text(&b["address"]),
                    text(&b["frontend"]),
                    text(&b["service"]),
                    b["packets"],
                    b["bytes"]
                ));
            }
        }
        InspectWhat::Flows => {
            lines.push(format!(
                "{:<5} {:<22} {:<22} {:<22}",
                "PROTO", "CLIENT", "VIP", "BACKEND"
            ));
            for f in rows(view) {
                lines.push(format!(
                    "{:<5} {:<22} {:<22} {:<22}",
                    text(&f["protocol"]),
                    text(&f["client"]),
                    text(&f["vip"]),
                    text(&f["backend"])
                ));
            }
        }
        InspectWhat::Routes => {
            lines.push(format!(
                "{:<28} {:<24} {:<7} {:<28} {:<28} ENDPOINTS",
                "HOST", "PATH", "TYPE", "INGRESS", "SERVICE:PORT"
            ));
            let mut routes = rows(&view["routes"]);
            if !view["default_backend"].is_null() {
                routes.push(json!({"host": "(default)", "path": "", "path_type": "",
                    "backend": view["default_backend"]}));
            }
            // TLS connections of these hosts never reach the rules above.
            for p in rows(&view["passthrough"]) {
                routes.push(
                    json!({"host": p["host"], "path": "(TLS)", "path_type": "PASSTHROUGH",
                    "backend": p["backend"]}),
                );
            }
            for r in routes {
                let backend = &r["backend"];
                let endpoints = match backend["unavailable"].as_str() {
                    Some(why) => format!("unavailable: {why}"),
                    None => rows(&backend["endpoints"])
                        .iter()
                        .map(text)
                        .collect::<Vec<_>>()
                        .join(", "),
                };
                lines.push(format!(
                    "{:<28} {:<24} {:<7} {:<28} {:<28} {}",
                    r["host"].as_str().unwrap_or("*"),
                    text(&r["path"]),
                    text(&r["path_type"]),
                    text(&backend["ingress"]),
                    format!("{}:{}", text(&backend["service"]), text(&backend["port"])),
                    endpoints
                ));
            }
        }
        InspectWhat::Certs => {
            lines.push(format!(
                "{:<36} {:<28} {:<22} STATE",
                "HOSTS", "SECRET", "NOT AFTER (UNIX)"
            ));
            for c in rows(view) {
                let hosts = rows(&c["hosts"])
                    .iter()
                    .map(text)
                    .collect::<Vec<_>>()
                    .join(",");
                let hosts = if c["default"] == true {
                    "(default)".to_string()
                } else {
                    hosts
                };
                let state = match c["problem"].as_str() {
                    Some(problem) => format!("unusable: {problem}"),
                    None => "ok".into(),
                };
                lines.push(format!(
                    "{:<36} {:<28} {:<22} {}",
                    hosts,
                    text(&c["secret"]),
                    text(&c["not_after"]),
                    state
                ));
            }
        }
    }
    lines
}
