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
}
