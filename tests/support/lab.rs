//! The lab: network namespaces standing for one node, a client and the backend pods behind it,
//! wired with veth pairs the way a cluster node is. The agent runs in the node namespace; nothing
//! routes the VIP there, so the VIP answers only while the agent forwards it.
//!
//! ```text
//!  client ns                 node ns (the agent runs here)
//!  eth0 192.0.2.2/24 ─────── n-client 192.0.2.1/24
//!  route 203.0.113.0/24      ip_forward=1, no address or route for the VIP
//!    via 192.0.2.1
//!                            Shared:     n-lan 198.51.100.1/24 ─── lan ns: br0 ─── b1 b2 b3 ...
//!                            PerBackend: n-b1, n-b2, ... 198.51.100.1/32 and a /32 route each
//!  backends bN: 198.51.100.1N, default route via 198.51.100.1
//! ```
//!
//! Backends' veths are at the kernel's defaults, as CNI plugins leave pods' veths; only the
//! links standing for wires are tuned ([`veth_offloads`]). Addresses come from the
//! documentation ranges; traffic never leaves the namespaces made here.
//! Used by the end-to-end tests (unique names, removed on drop) and by `cargo xtask lab` /
//! `cargo xtask demo` (fixed names, so `lab down` finds them later).

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Command, Stdio},
    str::FromStr,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

use crate::netns::Netns;

#[cfg(feature = "e2e")]
pub mod cluster;
mod servers;

pub use servers::{tcp_ask, udp_ask, udp_ask_peer, BackendServer, HeldConnection, PEER_QUESTION};

/// The Service VIP of `deploy/examples/web.yaml`: routed to the node by the client, but not
/// configured on the node, so only the agent makes it answer.
pub const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// The VIP's TCP port (targetPort [`TCP_PORT`]).
pub const VIP_TCP_PORT: u16 = 80;
/// The VIP's UDP port (targetPort [`UDP_PORT`]).
pub const VIP_UDP_PORT: u16 = 53;
/// The client's address (its eth0).
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
/// The node's address towards the client (`n-client`), the client's gateway to the VIP range.
pub const NODE_CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// The node's address towards the backends, their default gateway.
pub const NODE_BACKEND_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// The backend servers' TCP port.
pub const TCP_PORT: u16 = 8080;
/// The backend servers' UDP port.
pub const UDP_PORT: u16 = 8053;
/// The backends' HTTP port (the Ingress demo's endpoints).
pub const HTTP_PORT: u16 = 8081;
/// The node's interface towards the client.
pub const NODE_CLIENT_IF: &str = "n-client";
/// The node's interface towards the bridge in [`BackendLink::Shared`].
pub const NODE_LAN_IF: &str = "n-lan";

/// `203.0.113.10:80`.
pub fn vip_tcp() -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(VIP, VIP_TCP_PORT))
}

/// `203.0.113.10:53`.
pub fn vip_udp() -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(VIP, VIP_UDP_PORT))
}

/// Address of backend `index` (0-based): 198.51.100.11, .12, ...
pub fn backend_addr(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, 11 + index as u8)
}

/// How the node reaches its backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendLink {
    /// One node interface (`n-lan`, 198.51.100.1/24) into a bridge that all backends hang off:
    /// a node on a flat L2 network.
    Shared,
    /// One veth per backend (`n-b1`, `n-b2`, ...), /32 addresses and routes, as CNI plugins
    /// (Calico, Cilium) wire pods.
    PerBackend,
}

impl FromStr for BackendLink {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "shared" => Ok(Self::Shared),
            "per-backend" => Ok(Self::PerBackend),
            other => bail!("unknown backend link {other:?} (expected shared or per-backend)"),
        }
    }
}

impl std::fmt::Display for BackendLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Shared => "shared",
            Self::PerBackend => "per-backend",
        })
    }
}

/// What to build.
#[derive(Clone, Debug)]
pub struct LabConfig {
    /// Namespace name prefix: `<prefix>-node`, `<prefix>-client`, `<prefix>-b1`, ...
    pub prefix: String,
    /// Number of backends (at most 200, to stay inside 198.51.100.0/24).
    pub backends: usize,
    /// How the backends are wired to the node.
    pub link: BackendLink,
    /// Fixed names (`<prefix>-node`) instead of unique ones (`<prefix>-node-<pid>`): for the lab
    /// that outlives the command that made it.
    pub fixed_names: bool,
}

impl LabConfig {
    /// Three backends, unique names (what a test wants).
    pub fn for_test(prefix: &str, link: BackendLink) -> Self {
        Self {
            prefix: prefix.to_string(),
            backends: 3,
            link,
            fixed_names: false,
        }
    }
}

/// One backend: a namespace standing for a pod.
#[derive(Debug)]
pub struct LabBackend {
    /// The name its server answers with (`b1`, `b2`, ...).
    pub name: String,
    /// Its address (198.51.100.11, ...).
    pub addr: Ipv4Addr,
    /// Its namespace.
    pub netns: Netns,
}

/// A built lab. Dropping it stops the in-process servers and removes the namespaces (unless
/// [`Lab::keep`] was called).
#[derive(Debug)]
pub struct Lab {
    // Declared first so it is dropped first: server threads keep their namespace alive.
    servers: Vec<BackendServer>,
    link: BackendLink,
    client: Netns,
    node: Netns,
    lan: Option<Netns>,
    backends: Vec<LabBackend>,
}

impl Lab {
    /// Creates the namespaces and links. On error everything made so far is removed again.
    pub fn up(config: &LabConfig) -> Result<Self> {
        if config.backends == 0 || config.backends > 200 {
            bail!("a lab needs 1 to 200 backends, not {}", config.backends);
        }
        if !config.fixed_names {
            Self::remove_stale(&config.prefix)?;
        }
        let make = |role: &str| {
            let base = format!("{}-{role}", config.prefix);
            if config.fixed_names {
                Netns::with_name(&base)
            } else {
                Netns::new(&base)
            }
        };
        let client = make("client")?;
        let node = make("node")?;
        let lan = match config.link {
            BackendLink::Shared => Some(make("lan")?),
            BackendLink::PerBackend => None,
        };
        let mut backends = Vec::with_capacity(config.backends);
        for index in 0..config.backends {
            let name = format!("b{}", index + 1);
            backends.push(LabBackend {
                netns: make(&name)?,
                name,
                addr: backend_addr(index),
            });
        }
        let lab = Self {
            servers: Vec::new(),
            link: config.link,
            client,
            node,
            lan,
            backends,
        };
        lab.wire().context("wiring the lab")?;
        lab.settle(Duration::from_secs(5))?;
        Ok(lab)
    }

    fn wire(&self) -> Result<()> {
        let node = &self.node;
        // A router: forwarding on, so the stack forwards what the XDP program passes up (first
        // packets before the neighbour is known) and bpf_fib_lookup does not refuse.
        node.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;

        // Client <-> node.
        node.ip(&[
            "link",
            "add",
            NODE_CLIENT_IF,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            self.client.name(),
        ])?;
        node.ip(&[
            "addr",
            "add",
            &cidr(NODE_CLIENT_ADDR, 24),
            "dev",
            NODE_CLIENT_IF,
        ])?;
        node.ip(&["link", "set", NODE_CLIENT_IF, "up"])?;
        let client = &self.client;
        client.ip(&["addr", "add", &cidr(CLIENT_ADDR, 24), "dev", "eth0"])?;
        client.ip(&["link", "set", "eth0", "up"])?;
        client.ip(&[
            "route",
            "add",
            "203.0.113.0/24",
            "via",
            &NODE_CLIENT_ADDR.to_string(),
        ])?;
        veth_offloads(node, NODE_CLIENT_IF, false)?;
        veth_offloads(client, "eth0", true)?;

        match (&self.lan, self.link) {
            (Some(lan), BackendLink::Shared) => self.wire_shared(lan)?,
            _ => self.wire_per_backend()?,
        }
        for backend in &self.backends {
            let ns = &backend.netns;
            ns.ip(&[
                "route",
                "add",
                "default",
                "via",
                &NODE_BACKEND_ADDR.to_string(),
            ])?;
        }
        Ok(())
    }

    fn wire_shared(&self, lan: &Netns) -> Result<()> {
        let node = &self.node;
        lan.ip(&["link", "add", "br0", "type", "bridge"])?;
        lan.ip(&["link", "set", "br0", "up"])?;
        node.ip(&[
            "link",
            "add",
            NODE_LAN_IF,
            "type",
            "veth",
            "peer",
            "name",
            "p-node",
            "netns",
            lan.name(),
        ])?;
        node.ip(&[
            "addr",
            "add",
            &cidr(NODE_BACKEND_ADDR, 24),
            "dev",
            NODE_LAN_IF,
        ])?;
        node.ip(&["link", "set", NODE_LAN_IF, "up"])?;
        lan.ip(&["link", "set", "p-node", "master", "br0", "up"])?;
        veth_offloads(node, NODE_LAN_IF, false)?;
        veth_offloads(lan, "p-node", true)?;
        for backend in &self.backends {
            let port = format!("p-{}", backend.name);
            veth(lan, &port, &backend.netns, "eth0")?;
            backend
                .netns
                .ip(&["addr", "add", &cidr(backend.addr, 24), "dev", "eth0"])?;
            // The pod's end first: a bridge port that comes up with carrier forwards at once,
            // one that gains carrier later waits for linkwatch (up to a second).
            backend.netns.ip(&["link", "set", "eth0", "up"])?;
            lan.ip(&["link", "set", &port, "master", "br0", "up"])?;
        }
        Ok(())
    }

    fn wire_per_backend(&self) -> Result<()> {
        let node = &self.node;
        let gateway = NODE_BACKEND_ADDR.to_string();
        for backend in &self.backends {
            let interface = format!("n-{}", backend.name);
            veth(node, &interface, &backend.netns, "eth0")?;
            // The same /32 gateway address on every pod link, as Calico does with 169.254.1.1.
            node.ip(&[
                "addr",
                "add",
                &cidr(NODE_BACKEND_ADDR, 32),
                "dev",
                &interface,
            ])?;
            node.ip(&["link", "set", &interface, "up"])?;
            node.ip(&["route", "add", &cidr(backend.addr, 32), "dev", &interface])?;
            let ns = &backend.netns;
            ns.ip(&["addr", "add", &cidr(backend.addr, 32), "dev", "eth0"])?;
            ns.ip(&["link", "set", "eth0", "up"])?;
            ns.ip(&["route", "add", &gateway, "dev", "eth0"])?;
        }
        Ok(())
    }

    /// Waits until the node reaches the client and every backend: links and bridge ports
    /// become usable a moment after they are set up.
    fn settle(&self, timeout: Duration) -> Result<()> {
        let mut targets = vec![CLIENT_ADDR];
        targets.extend(self.backends.iter().map(|backend| backend.addr));
        wait_reachable(&self.node, targets, timeout)
    }

    /// How the backends are wired.
    pub fn link(&self) -> BackendLink {
        self.link
    }

    /// The client's namespace.
    pub fn client(&self) -> &Netns {
        &self.client
    }

    /// The node's namespace (where the agent runs).
    pub fn node(&self) -> &Netns {
        &self.node
    }

    /// The node's interfaces, to pass to the agent as `--interface`: its links to wires (the
    /// client's, and the shared LAN's), never the backends' own veths, which a node's agent is
    /// not told about (pods come and go; the stack delivers to them and their replies get the
    /// frontend back at the uplink's TC egress).
    pub fn node_interfaces(&self) -> Vec<String> {
        let mut interfaces = vec![NODE_CLIENT_IF.to_string()];
        if self.link == BackendLink::Shared {
            interfaces.push(NODE_LAN_IF.to_string());
        }
        interfaces
    }

    /// The backends.
    pub fn backends(&self) -> &[LabBackend] {
        &self.backends
    }

    /// The backend with this server name (`b2`), if any.
    pub fn backend_named(&self, name: &str) -> Option<&LabBackend> {
        self.backends.iter().find(|backend| backend.name == name)
    }

    /// Every namespace of the lab, client and node first.
    pub fn namespaces(&self) -> Vec<&Netns> {
        let mut all = vec![&self.client, &self.node];
        all.extend(&self.lan);
        all.extend(self.backends.iter().map(|backend| &backend.netns));
        all
    }

    /// Checks the wiring without the agent: from the node, every backend's server answers over
    /// TCP and UDP with its own name.
    pub fn check_backends(&self, timeout: Duration) -> Result<()> {
        let backends: Vec<(String, Ipv4Addr)> = self
            .backends
            .iter()
            .map(|backend| (backend.name.clone(), backend.addr))
            .collect();
        self.node.run_inside(move || {
            for (name, addr) in backends {
                let tcp = tcp_ask(SocketAddr::from((addr, TCP_PORT)), timeout)
                    .with_context(|| format!("TCP from the node to backend {name} ({addr})"))?;
                let (udp, _) = udp_ask(SocketAddr::from((addr, UDP_PORT)), timeout)
                    .with_context(|| format!("UDP from the node to backend {name} ({addr})"))?;
                if tcp != name || udp != name {
                    bail!("backend {name} ({addr}) answered {tcp:?} over TCP, {udp:?} over UDP");
                }
            }
            Ok(())
        })
    }

    /// Starts a [`BackendServer`] in every backend namespace, as threads of this process; they
    /// stop when the lab is dropped.
    pub fn start_servers(&mut self) -> Result<()> {
        for backend in &self.backends {
            let name = backend.name.clone();
            let server = backend
                .netns
                .run_inside(move || BackendServer::start(&name))
                .with_context(|| format!("starting the server of {}", backend.name))?;
            self.servers.push(server);
        }
        Ok(())
    }

    /// Starts `<program> <args...> --name <backend>` inside every backend namespace as a
    /// separate process (`ip netns exec`), for a lab that outlives this process. Output goes
    /// to `log_dir/<backend>.log`. Returns the pids; [`Lab::down`] ends them.
    pub fn spawn_server_processes(
        &self,
        program: &Path,
        args: &[&str],
        log_dir: &Path,
    ) -> Result<Vec<u32>> {
        std::fs::create_dir_all(log_dir)
            .with_context(|| format!("creating {}", log_dir.display()))?;
        let mut pids = Vec::new();
        for backend in &self.backends {
            let log_path = log_dir.join(format!("{}.log", backend.name));
            let log = std::fs::File::create(&log_path)
                .with_context(|| format!("creating {}", log_path.display()))?;
            let child = Command::new("ip")
                .args(["netns", "exec", backend.netns.name()])
                .arg(program)
                .args(args)
                .args(["--name", &backend.name])
                .stdin(Stdio::null())
                .stdout(log.try_clone().context("duplicating the log file")?)
                .stderr(log)
                .process_group(0)
                .spawn()
                .with_context(|| format!("starting {} in {}", program.display(), backend.name))?;
            pids.push(child.id());
        }
        Ok(pids)
    }

    /// Leaves the namespaces (and any server processes in them) in place; returns their names.
    /// In-process servers stop: they cannot outlive this process anyway.
    pub fn keep(self) -> Vec<String> {
        let Lab {
            servers,
            client,
            node,
            lan,
            backends,
            ..
        } = self;
        drop(servers);
        let mut names = vec![client.keep(), node.keep()];
        names.extend(lan.map(Netns::keep));
        names.extend(backends.into_iter().map(|backend| backend.netns.keep()));
        names
    }

    /// Removes a lab built with fixed names and this prefix: ends every process inside its
    /// namespaces (servers, an agent), then deletes them. Returns the names removed.
    pub fn down(prefix: &str) -> Result<Vec<String>> {
        Self::remove_matching(|name| is_fixed_lab_name(prefix, name))
    }

    /// Removes labs with unique names whose process is gone (a test run that was killed and so
    /// never dropped its lab), with any agent still running in them.
    fn remove_stale(prefix: &str) -> Result<Vec<String>> {
        Self::remove_matching(|name| {
            name.rsplit_once('-').is_some_and(|(base, pid)| {
                is_fixed_lab_name(prefix, base)
                    && pid.parse::<u32>().is_ok()
                    && !Path::new(&format!("/proc/{pid}")).exists()
            })
        })
    }

    fn remove_matching(matches: impl Fn(&str) -> bool) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        for name in Netns::list()? {
            if !matches(&name) {
                continue;
            }
            // Someone else may be removing it at the same moment: skip what is already gone.
            let Ok(netns) = Netns::open(&name) else {
                continue;
            };
            if let Ok(pids) = netns.pids() {
                end_processes(&pids);
            }
            drop(netns);
            removed.push(name);
        }
        Ok(removed)
    }
}

/// `<prefix>-client`, `<prefix>-node`, `<prefix>-lan` or `<prefix>-b<N>`: what [`Lab::up`]
/// names with fixed names (and nothing else someone may have called `<prefix>-...`).
fn is_fixed_lab_name(prefix: &str, name: &str) -> bool {
    let Some(role) = name
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('-'))
    else {
        return false;
    };
    matches!(role, "client" | "node" | "lan")
        || role
            .strip_prefix('b')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Waits until every address in `targets` is reachable from `from` (a connection refused
/// proves the path), at most `timeout` in all.
pub(crate) fn wait_reachable(
    from: &Netns,
    targets: Vec<Ipv4Addr>,
    timeout: Duration,
) -> Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    let name = from.name().to_string();
    from.run_inside(move || {
        for addr in targets {
            // Port 9 (discard): nothing listens, so a reachable host answers with a reset.
            let target = SocketAddr::from((addr, 9));
            loop {
                match TcpStream::connect_timeout(&target, Duration::from_millis(200)) {
                    Ok(_) => break,
                    Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => break,
                    Err(error) if std::time::Instant::now() >= deadline => {
                        return Err(error).with_context(|| {
                            format!("{addr} not reachable from {name} after {timeout:?}")
                        })
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        Ok(())
    })
}

pub(crate) fn cidr(addr: Ipv4Addr, prefix: u8) -> String {
    format!("{addr}/{prefix}")
}

/// A veth pair: `name` in `outer`, its peer `peer` in `inner` (a pod's end is its `eth0`).
pub(crate) fn veth(outer: &Netns, name: &str, inner: &Netns, peer: &str) -> Result<()> {
    outer.ip(&[
        "link",
        "add",
        name,
        "type",
        "veth",
        "peer",
        "name",
        peer,
        "netns",
        inner.name(),
    ])?;
    Ok(())
}

/// Tunes a link that stands for a wire (client <-> node, node <-> a LAN or router), never a
/// pod's: no TX checksum offload, since a real wire delivers complete checksums; `gro` on the
/// peers of the node's interfaces, since native XDP redirect into a veth drops frames unless
/// the receiving end runs NAPI, where a NIC always transmits (XDP_TX needs more: an XDP program
/// on the peer, see `cluster`). Pods' veths stay at the kernel's defaults (checksum offload on,
/// GRO off), as CNI plugins leave them: handling those is the datapath's job.
pub(crate) fn veth_offloads(netns: &Netns, interface: &str, gro: bool) -> Result<()> {
    let mut argv = vec!["ethtool", "-K", interface, "tx", "off"];
    if gro {
        argv.extend(["gro", "on"]);
    }
    netns.exec(&argv)?;
    Ok(())
}

/// SIGTERM, up to 2 s of grace, then SIGKILL.
pub(crate) fn end_processes(pids: &[i32]) {
    for &pid in pids {
        // SAFETY: plain FFI call; a stale pid at worst yields ESRCH.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let alive = |pid: i32| Path::new(&format!("/proc/{pid}")).exists();
    for _ in 0..40 {
        if !pids.iter().any(|&pid| alive(pid)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for &pid in pids {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

#[cfg(test)]
mod tests;
