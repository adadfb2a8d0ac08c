//! Who this node is, for the L4 translation: its name (which EndpointSlice endpoints are
//! local) and its IPv4 addresses (where nodePorts are served). The flags give them; without
//! them the name comes from the host and the addresses from the `--interface`s, read with
//! `getifaddrs(3)` (the libc the agent already links; no shelling out to `ip`).

use std::{ffi::CStr, net::Ipv4Addr};

/// Why the node's addresses could not be read.
#[derive(Debug, thiserror::Error)]
#[error("reading the interfaces' addresses: {0}")]
pub struct NodeError(#[from] std::io::Error);

/// The host name, as the kernel has it (`/proc/sys/kernel/hostname`); `None` when unreadable.
pub fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

/// The IPv4 addresses of the named interfaces, in the kernel's order, without duplicates.
pub fn interface_addresses(interfaces: &[String]) -> Result<Vec<Ipv4Addr>, NodeError> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head into `list` and returns 0, or -1 with errno set and
    // nothing to free.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    let mut addresses = Vec::new();
    let mut entry = list;
    while !entry.is_null() {
        // SAFETY: `entry` is a node of the list getifaddrs returned, not freed until below.
        let ifa = unsafe { &*entry };
        entry = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) }.to_string_lossy();
        if !interfaces.iter().any(|i| *i == name) {
            continue;
        }
        // SAFETY: ifa_addr is non-null and points to a sockaddr of the family it names.
        if i32::from(unsafe { (*ifa.ifa_addr).sa_family }) != libc::AF_INET {
            continue;
        }
        // SAFETY: an AF_INET sockaddr is a sockaddr_in.
        let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
        let addr = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
        if !addresses.contains(&addr) {
            addresses.push(addr);
        }
    }
    // SAFETY: `list` came from a successful getifaddrs and is freed once, after its last use.
    unsafe { libc::freeifaddrs(list) };
    Ok(addresses)
}

/// `--interface` value that stands for the interfaces of the node's IPv4 default routes: a
/// DaemonSet cannot name every node's uplink.
pub const AUTO_INTERFACE: &str = "auto";

/// Why `--interface auto` could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum AutoInterfaceError {
    /// The routing table could not be read.
    #[error("--interface auto: reading /proc/net/route: {0}")]
    Read(#[from] std::io::Error),
    /// There is no IPv4 default route.
    #[error(
        "--interface auto: the node has no IPv4 default route; name the uplink with --interface"
    )]
    NoDefaultRoute,
}

/// The interfaces with `auto` replaced by those of the default routes (others kept, in order,
/// without duplicates).
pub fn resolve_interfaces(interfaces: &[String]) -> Result<Vec<String>, AutoInterfaceError> {
    if !interfaces.iter().any(|i| i == AUTO_INTERFACE) {
        return Ok(interfaces.to_vec());
    }
    let uplinks = default_route_interfaces(&std::fs::read_to_string("/proc/net/route")?);
    if uplinks.is_empty() {
        return Err(AutoInterfaceError::NoDefaultRoute);
    }
    let mut resolved: Vec<String> = Vec::new();
    for interface in interfaces {
        let names = if interface == AUTO_INTERFACE {
            uplinks.clone()
        } else {
            vec![interface.clone()]
        };
        for name in names {
            if !resolved.contains(&name) {
                resolved.push(name);
            }
        }
    }
    Ok(resolved)
}

/// The interfaces of the IPv4 default routes in a `/proc/net/route` table (destination and
/// mask 0), in table order.
fn default_route_interfaces(table: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(name), Some(destination), Some(mask)) =
            (fields.first(), fields.get(1), fields.get(7))
        else {
            continue;
        };
        if *destination == "00000000" && *mask == "00000000" && !names.iter().any(|n| n == name) {
            names.push((*name).to_string());
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_its_address_and_unknown_interfaces_none() {
        let lo = interface_addresses(&["lo".to_string()]).expect("getifaddrs");
        assert!(lo.contains(&Ipv4Addr::LOCALHOST), "{lo:?}");
        let none = interface_addresses(&["no-such-if0".to_string()]).expect("getifaddrs");
        assert!(none.is_empty());
    }

    #[test]
    fn default_routes_name_the_uplinks() {
        let table =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth0\t00000000\t0102A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
            eth0\t0002A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n\
            bond1\t00000000\t0101000A\t0003\t0\t0\t200\t00000000\t0\t0\t0\n\
            eth0\t00000000\t0102A8C0\t0003\t0\t0\t300\t00000000\t0\t0\t0\n";
        assert_eq!(default_route_interfaces(table), ["eth0", "bond1"]);
        assert!(default_route_interfaces("Iface\tDestination\n").is_empty());
        // Named interfaces pass through untouched.
        let named = vec!["eth1".to_string(), "eth2".to_string()];
        assert_eq!(resolve_interfaces(&named).expect("no auto"), named);
    }
}
