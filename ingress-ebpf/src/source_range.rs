//! `loadBalancerSourceRanges`: one LPM trie for every frontend, keyed by service id (all 32 bits
//! always match) and then the client's address, so a lookup answers "is this client inside one of
//! this frontend's prefixes" at once. Checked on new flows only, as kube-proxy's firewall rules
//! are (`ct state new`).

use aya_ebpf::maps::lpm_trie::Key;
use ingress_common::SourceRangeKey;

use crate::maps::SOURCE_RANGES;

/// Whether `client` (wire order) may open flows to frontend `service_id`.
#[inline(always)]
pub(crate) fn allowed(service_id: u32, client: u32) -> bool {
    let key = Key::new(
        64,
        SourceRangeKey {
            service_id: service_id.to_be(),
            addr: client,
        },
    );
    SOURCE_RANGES.get(&key).is_some()
}
