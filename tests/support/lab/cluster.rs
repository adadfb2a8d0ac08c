//! The two-node cluster lab: two node namespaces on one flat node network behind a router, pods
//! as namespaces behind veths on each node, external clients beyond the router. It is shaped
//! like a real cluster with host-gw routing (flannel host-gw, Calico without overlay), so the
//! tests of issue 13 (SNAT to pods on other nodes, reverse NAT of local pods' replies, NodePort,
//! externalTrafficPolicy) see the paths a cluster has, with one agent per node.
//!
//! ```text
//!  client  eth0 198.51.100.2/26  ── r-client 198.51.100.1/26 ┐
//!  client2 eth0 198.51.100.66/26 ── r-client2 198.51.100.65/26┤ router ns (ip_forward=1)
//!                                                             │ br0 192.0.2.65/26
//!                                  203.0.113.0/24 via a node ─┤ 198.51.100.128/27 via .66
//!                                                             │ 198.51.100.160/27 via .67
//!           ┌──────────────── r-node1 ─── br0 ─── r-node2 ────┘
//!  node-1   eth0 192.0.2.66/26                 node-2  eth0 192.0.2.67/26
//!           default via .65, 198.51.100.160/27          default via .65, 198.51.100.128/27
//!           via .67; pods 198.51.100.128/27             via .66; pods 198.51.100.160/27
//!           lxc130 ── pod eth0 198.51.100.130/32        lxc162 ── pod eth0 198.51.100.162/32
//! ```
//!
//! Pods are wired as the ptp CNI plugin and Calico wire them: the host end of the veth
//! (`lxc<last octet>`) carries the node's pod gateway (the first address of its pod CIDR) as a
//! /32 and a /32 route to the pod; the pod's `eth0` has its address as a /32, a route to the
//! gateway and a default route via it. Every pod veth stays at the kernel's defaults (checksum
//! offload on, GRO off), as CNI plugins leave them: forwarding to such pods is part of what the
//! datapath has to handle. Only the links that stand for wires are tuned: TX checksum offload
//! off where a real wire would carry complete checksums (a NIC computes them in hardware), and
//! GRO on at the router's end of each node uplink, because an XDP_TX or redirect out of a veth
//! is dropped unless its peer runs NAPI, where a physical NIC always transmits.
//!
//! Names are unique (`<prefix>-<role>-<pid>`) and everything is removed on drop; labs of killed
//! runs with the same prefix are removed when the next one comes up.

mod manifests;

use std::{net::Ipv4Addr, path::Path, time::Duration};

use anyhow::{bail, Context as _, Result};

pub use manifests::{
    endpoint_slice, load_balancer_service, web_service, Endpoint, ServicePort, WEB_PORTS,
};

use super::{cidr, veth, veth_offloads, wait_reachable, BackendServer};
use crate::{agent::Agent, netns::Netns};
use ingress_common::bench;
use xdp_ingress::datapath::{reference::ReferencePrograms, AttachMode};

/// The router's address on the node network (every node's default gateway).
pub const ROUTER_NODE_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 65);
/// The node network's prefix length (192.0.2.64/26).
pub const NODE_NET_PREFIX: u8 = 26;
/// The first client's address.
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
/// The router's address towards the first client.
pub const ROUTER_CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// The second client's address (another subnet: source-range tests allow one, not the other).
pub const CLIENT2_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 66);
/// The router's address towards the second client.
pub const ROUTER_CLIENT2_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 65);
/// The clients' subnets' prefix length.
pub const CLIENT_NET_PREFIX: u8 = 26;
/// The node's uplink, the only interface the agent is given.
pub const UPLINK: &str = "eth0";
/// How long the wiring may take to become usable.
const SETTLE: Duration = Duration::from_secs(5);

/// One of the two nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NodeId {
    /// `node-1`, 192.0.2.66, pods 198.51.100.128/27.
    One,
    /// `node-2`, 192.0.2.67, pods 198.51.100.160/27.
    Two,
}

impl NodeId {
    /// Both nodes.
    pub const ALL: [NodeId; 2] = [NodeId::One, NodeId::Two];

    /// The node's name, as EndpointSlices' `nodeName` and `--node-name` say it.
    pub fn name(self) -> &'static str {
        match self {
            Self::One => "node-1",
            Self::Two => "node-2",
        }
    }

    /// The node's address on the node network (its uplink's).
    pub fn addr(self) -> Ipv4Addr {
        match self {
            Self::One => Ipv4Addr::new(192, 0, 2, 66),
            Self::Two => Ipv4Addr::new(192, 0, 2, 67),
        }
    }

    /// The first address of the node's pod CIDR (a /27).
    fn pod_base(self) -> Ipv4Addr {
        match self {
            Self::One => Ipv4Addr::new(198, 51, 100, 128),
            Self::Two => Ipv4Addr::new(198, 51, 100, 160),
        }
    }

    /// The node's pod CIDR, `198.51.100.128/27` or `198.51.100.160/27`.
    pub fn pod_cidr(self) -> String {
        cidr(self.pod_base(), 27)
    }

    /// The pods' gateway on this node (the pod CIDR's first host address, on every pod veth).
    pub fn pod_gateway(self) -> Ipv4Addr {
        offset(self.pod_base(), 1)
    }

    /// The other node.
    pub fn other(self) -> Self {
        match self {
            Self::One => Self::Two,
            Self::Two => Self::One,
        }
    }

    fn index(self) -> usize {
        match self {
            Self::One => 0,
            Self::Two => 1,
        }
    }

    /// The router's port towards this node.
    fn router_port(self) -> &'static str {
        match self {
            Self::One => "r-node1",
            Self::Two => "r-node2",
        }
    }
}

/// A pod: a namespace behind a veth on its node.
#[derive(Debug)]
pub struct Pod {
    /// Its name, also what its server answers with.
    pub name: String,
    /// The node it runs on.
    pub node: NodeId,
    /// Its address.
    pub addr: Ipv4Addr,
    /// The host end of its veth, in the node's namespace.
    pub host_interface: String,
    /// Its namespace.
    pub netns: Netns,
}

/// A built cluster lab; removed on drop (servers first, then pods, then the rest).
#[derive(Debug)]
pub struct Cluster {
    // Declared first so they are dropped first: server threads keep their namespace alive.
    servers: Vec<(String, BackendServer)>,
    /// The pass program on the router's node ports (detached when dropped).
    _wire_programs: Option<ReferencePrograms>,
    pods: Vec<Pod>,
    /// Next host number per node's pod CIDR; addresses are not reused, so a flow to a removed
    /// pod can never be answered by a new one.
    next_host: [u8; 2],
    prefix: String,
    clients: [Netns; 2],
    nodes: [Netns; 2],
    router: Netns,
}

impl Cluster {
    /// Creates the router, both nodes and both clients, no pods; the VIP range is routed to
    /// node-1. On error everything made so far is removed again.
    pub fn up(prefix: &str) -> Result<Self> {
        remove_stale(prefix)?;
        let make = |role: &str| Netns::new(&format!("{prefix}-{role}"));
        let mut cluster = Self {
            servers: Vec::new(),
            _wire_programs: None,
            pods: Vec::new(),
            next_host: [2, 2],
            prefix: prefix.to_string(),
            clients: [make("client")?, make("client2")?],
            nodes: [make("node1")?, make("node2")?],
            router: make("router")?,
        };
        cluster.wire().context("wiring the cluster lab")?;
        cluster._wire_programs = Some(
            cluster
                .router
                .run_inside(|| {
                    let mut programs = ReferencePrograms::load()?;
                    for node in NodeId::ALL {
                        programs
                            .program(bench::PASS)?
                            .attach(node.router_port(), AttachMode::Native.into())?;
                    }
                    Ok(programs)
                })
                .context("the router ports' pass program")?,
        );
        cluster.route_vips_via(NodeId::One)?;
        let targets = vec![
            CLIENT_ADDR,
            CLIENT2_ADDR,
            NodeId::One.addr(),
            NodeId::Two.addr(),
        ];
        wait_reachable(&cluster.router, targets, SETTLE)?;
        for node in NodeId::ALL {
            wait_reachable(cluster.node(node), vec![node.other().addr()], SETTLE)?;
        }
        Ok(cluster)
    }

    fn wire(&self) -> Result<()> {
        let router = &self.router;
        router.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        router.ip(&["link", "add", "br0", "type", "bridge"])?;
        router.ip(&[
            "addr",
            "add",
            &cidr(ROUTER_NODE_ADDR, NODE_NET_PREFIX),
            "dev",
            "br0",
        ])?;
        router.ip(&["link", "set", "br0", "up"])?;
        let clients = [
            ("r-client", ROUTER_CLIENT_ADDR, CLIENT_ADDR),
            ("r-client2", ROUTER_CLIENT2_ADDR, CLIENT2_ADDR),
        ];
        for ((port, gateway, addr), client) in clients.into_iter().zip(&self.clients) {
            veth(router, port, client, "eth0")?;
            router.ip(&[
                "addr",
                "add",
                &cidr(gateway, CLIENT_NET_PREFIX),
                "dev",
                port,
            ])?;
            router.ip(&["link", "set", port, "up"])?;
            client.ip(&["addr", "add", &cidr(addr, CLIENT_NET_PREFIX), "dev", "eth0"])?;
            client.ip(&["link", "set", "eth0", "up"])?;
            client.ip(&["route", "add", "default", "via", &gateway.to_string()])?;
            veth_offloads(router, port, false)?;
            veth_offloads(client, "eth0", false)?;
        }
        for node in NodeId::ALL {
            let ns = self.node(node);
            ns.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
            let port = node.router_port();
            veth(router, port, ns, UPLINK)?;
            ns.ip(&[
                "addr",
                "add",
                &cidr(node.addr(), NODE_NET_PREFIX),
                "dev",
                UPLINK,
            ])?;
            // The node's end first: a bridge port that comes up with carrier forwards at once.
            ns.ip(&["link", "set", UPLINK, "up"])?;
            router.ip(&["link", "set", port, "master", "br0", "up"])?;
            veth_offloads(ns, UPLINK, false)?;
            veth_offloads(router, port, true)?;
            ns.ip(&[
                "route",
                "add",
                "default",
                "via",
                &ROUTER_NODE_ADDR.to_string(),
            ])?;
            // host-gw: the other node's pods straight via that node, on the shared segment.
            let other = node.other();
            ns.ip(&[
                "route",
                "add",
                &other.pod_cidr(),
                "via",
                &other.addr().to_string(),
            ])?;
            router.ip(&[
                "route",
                "add",
                &node.pod_cidr(),
                "via",
                &node.addr().to_string(),
            ])?;
        }
        Ok(())
    }

    /// Routes the VIP range 203.0.113.0/24 from the router to `node`, as a cloud load
    /// balancer or MetalLB would deliver a Service's external address to one node.
    pub fn route_vips_via(&self, node: NodeId) -> Result<()> {
        self.router.ip(&[
            "route",
            "replace",
            "203.0.113.0/24",
            "via",
            &node.addr().to_string(),
        ])?;
        Ok(())
    }

    /// Adds a pod called `name` on `node` (also while agents run) and returns its address.
    /// Nothing serves in it until [`Cluster::start_server`].
    pub fn add_pod(&mut self, node: NodeId, name: &str) -> Result<Ipv4Addr> {
        if self.pods.iter().any(|pod| pod.name == name) {
            bail!("there is already a pod called {name}");
        }
        let host = self.next_host[node.index()];
        // .0 is the network, .1 the gateway, .31 the broadcast of the /27.
        if host > 30 {
            bail!("no pod addresses left on {}", node.name());
        }
        let addr = offset(node.pod_base(), host);
        let netns = Netns::new(&format!("{}-{name}", self.prefix))?;
        let host_interface = format!("lxc{}", addr.octets()[3]);
        let ns = self.node(node);
        let gateway = node.pod_gateway().to_string();
        veth(ns, &host_interface, &netns, "eth0")?;
        ns.ip(&[
            "addr",
            "add",
            &cidr(node.pod_gateway(), 32),
            "dev",
            &host_interface,
        ])?;
        ns.ip(&["link", "set", &host_interface, "up"])?;
        ns.ip(&["route", "add", &cidr(addr, 32), "dev", &host_interface])?;
        netns.ip(&["addr", "add", &cidr(addr, 32), "dev", "eth0"])?;
        netns.ip(&["link", "set", "eth0", "up"])?;
        netns.ip(&["route", "add", &gateway, "dev", "eth0"])?;
        netns.ip(&["route", "add", "default", "via", &gateway])?;
        self.next_host[node.index()] = host + 1;
        self.pods.push(Pod {
            name: name.to_string(),
            node,
            addr,
            host_interface,
            netns,
        });
        wait_reachable(self.node(node), vec![addr], SETTLE)?;
        Ok(addr)
    }

    /// Removes a pod: its server stops, its namespace and veth go (the route to it with them).
    pub fn remove_pod(&mut self, name: &str) -> Result<()> {
        let index = self
            .pods
            .iter()
            .position(|pod| pod.name == name)
            .with_context(|| format!("no pod called {name}"))?;
        self.servers.retain(|(pod, _)| pod != name);
        let pod = self.pods.remove(index);
        // Deleting the namespace takes the pod's end of the veth, and so the pair, with it.
        drop(pod.netns);
        Ok(())
    }

    /// Starts the lab's [`BackendServer`] in pod `name`, answering with the pod's name; it
    /// stops when the pod is removed or the lab dropped.
    pub fn start_server(&mut self, name: &str) -> Result<()> {
        let pod = self.pod(name)?;
        let server_name = name.to_string();
        let server = pod
            .netns
            .run_inside(move || BackendServer::start(&server_name))
            .with_context(|| format!("starting the server of pod {name}"))?;
        self.servers.push((name.to_string(), server));
        Ok(())
    }

    /// Adds a pod on `node` and starts its server: its address.
    pub fn add_serving_pod(&mut self, node: NodeId, name: &str) -> Result<Ipv4Addr> {
        let addr = self.add_pod(node, name)?;
        self.start_server(name)?;
        Ok(addr)
    }

    /// The pod called `name`.
    pub fn pod(&self, name: &str) -> Result<&Pod> {
        self.pods
            .iter()
            .find(|pod| pod.name == name)
            .with_context(|| format!("no pod called {name}"))
    }

    /// Every pod, in the order they were added.
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// The host ends of the veths of `node`'s pods (for an agent given every pod link).
    pub fn pod_interfaces(&self, node: NodeId) -> Vec<String> {
        self.pods
            .iter()
            .filter(|pod| pod.node == node)
            .map(|pod| pod.host_interface.clone())
            .collect()
    }

    /// A node's namespace.
    pub fn node(&self, node: NodeId) -> &Netns {
        &self.nodes[node.index()]
    }

    /// The router's namespace.
    pub fn router(&self) -> &Netns {
        &self.router
    }

    /// The first client's namespace (198.51.100.2).
    pub fn client(&self) -> &Netns {
        &self.clients[0]
    }

    /// The second client's namespace (198.51.100.66).
    pub fn client2(&self) -> &Netns {
        &self.clients[1]
    }

    /// The agent for `node`, not started: reading `manifests` (one directory for both nodes),
    /// in the node's namespace, XDP on the uplink only, no pinning. Add flags such as
    /// `--node-name` with [`Agent::arg`], more interfaces with [`Agent::interfaces`].
    pub fn agent(&self, node: NodeId, manifests: &Path) -> Agent {
        Agent::manifests(manifests)
            .in_netns(self.node(node).name())
            .interfaces(&[UPLINK.to_string()])
            .args(["--bpffs", "off"])
    }

    /// Runs `f` in a new thread inside the first client's namespace.
    pub fn in_client<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.client().run_inside(f)
    }

    /// Runs `f` in a new thread inside pod `name`'s namespace.
    pub fn in_pod<T: Send + 'static>(
        &self,
        name: &str,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.pod(name)?.netns.run_inside(f)
    }
}

fn offset(base: Ipv4Addr, host: u8) -> Ipv4Addr {
    let [a, b, c, d] = base.octets();
    Ipv4Addr::new(a, b, c, d + host)
}

/// Removes namespaces `<prefix>-<role>-<pid>` whose process is gone (a killed test run never
/// dropped its lab), with any agent still running in them.
fn remove_stale(prefix: &str) -> Result<()> {
    for name in Netns::list()? {
        let alive = |pid: u32| Path::new(&format!("/proc/{pid}")).exists();
        if !is_stale(prefix, &name, alive) {
            continue;
        }
        let Ok(netns) = Netns::open(&name) else {
            continue;
        };
        if let Ok(pids) = netns.pids() {
            super::end_processes(&pids);
        }
    }
    Ok(())
}

/// Whether `name` is `<prefix>-<role>-<pid>` with a pid that is not `alive`.
fn is_stale(prefix: &str, name: &str, alive: impl Fn(u32) -> bool) -> bool {
    name.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('-'))
        .and_then(|rest| rest.rsplit_once('-'))
        .and_then(|(role, pid)| Some((role, pid.parse::<u32>().ok()?)))
        .is_some_and(|(role, pid)| !role.is_empty() && !alive(pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_dead_runs_of_this_prefix_are_stale() {
        let alive = |pid: u32| pid == 7;
        for name in ["xc-rt-node1-9", "xc-rt-a-b-9", "xc-rt-client2-12"] {
            assert!(is_stale("xc-rt", name, alive), "{name}");
        }
        for name in [
            "xc-rt-node1-7",
            "xc-rt-node1",
            "xc-rt-9",
            "xc-rtx-node1-9",
            "xc-node1-9",
            "other-9",
        ] {
            assert!(!is_stale("xc-rt", name, alive), "{name}");
        }
    }

    #[test]
    fn pod_cidrs_and_gateways_do_not_overlap_the_other_nets() {
        assert_eq!(NodeId::One.pod_cidr(), "198.51.100.128/27");
        assert_eq!(NodeId::Two.pod_cidr(), "198.51.100.160/27");
        assert_eq!(NodeId::One.pod_gateway(), Ipv4Addr::new(198, 51, 100, 129));
        assert_eq!(NodeId::Two.pod_gateway(), Ipv4Addr::new(198, 51, 100, 161));
        for node in NodeId::ALL {
            assert_eq!(node.other().other(), node);
            assert_ne!(node.addr(), ROUTER_NODE_ADDR);
        }
    }
}
