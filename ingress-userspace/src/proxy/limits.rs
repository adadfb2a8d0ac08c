//! The per-client state of `limit-rps` / `limit-rpm` and `limit-connections` (the limiters the
//! translator put in the plan, one per Ingress): nginx's `limit_req` leaky bucket and its
//! `limit_conn` counter, keyed by client address.
//!
//! Per request on a limited route: one shard of the limiter's table locked for a hash lookup
//! and an update. The state is per client and changes per request, so no table built with the
//! plan can stand in for it; sharding by address keeps clients from waiting on each other (a
//! lock-free map would buy little for 16 short critical sections). Routes without limits pay
//! nothing. Each shard remembers a bounded number of clients; when one is full, clients whose
//! state ran out (an empty bucket, no request in progress) make room.

use std::{net::IpAddr, sync::Arc};

use crate::translate::l7::routes::limits::{
    shard_of, ConnectionLimiter, RateLimiter, CLIENTS_PER_SHARD,
};

impl RateLimiter {
    /// Whether a request of `client` now is within its rate and burst (nginx `limit_req` with
    /// `nodelay`): each request adds one to the client's excess, which drains at the rate; a
    /// request that would take it above the burst is refused and not counted.
    pub(crate) fn admit(&self, client: IpAddr) -> bool {
        if self.exempt.iter().any(|range| range.contains(client)) {
            return true;
        }
        let now = self.epoch.elapsed().as_millis() as u64;
        let mut clients = self.clients[shard_of(client)]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let drain = |last: u64| (now.saturating_sub(last) as f64 * self.drain_per_ms_milli) as i64;
        if let Some((excess, last)) = clients.get_mut(&client) {
            // nginx: excess = max(0, excess - rate × elapsed + 1); busy above the burst. A new
            // client starts at 0, so burst + 1 requests pass at once.
            let next = (*excess as i64 - drain(*last) + 1000).max(0) as u64;
            if next > self.burst_milli {
                return false;
            }
            *excess = next;
            *last = now;
            return true;
        }
        if clients.len() >= CLIENTS_PER_SHARD {
            clients.retain(|_, (excess, last)| *excess as i64 - drain(*last) > 0);
            if clients.len() >= CLIENTS_PER_SHARD {
                // Everyone is still within a burst: forget one rather than grow without bound.
                if let Some(&any) = clients.keys().next() {
                    clients.remove(&any);
                }
            }
        }
        clients.insert(client, (0, now));
        true
    }
}

/// A request in progress counted against its client's `limit-connections`; dropping it (when
/// the response has ended) ends the count.
#[derive(Debug)]
pub(crate) struct ConnectionSlot {
    limiter: Arc<ConnectionLimiter>,
    client: IpAddr,
}

/// Take a slot of `limiter` for `client`; `None` when the client already has `limit`
/// requests in progress. An exempt client takes no slot and is never refused.
pub(crate) fn acquire(
    limiter: &Arc<ConnectionLimiter>,
    client: IpAddr,
) -> Result<Option<ConnectionSlot>, ()> {
    if limiter.exempt.iter().any(|range| range.contains(client)) {
        return Ok(None);
    }
    let mut clients = limiter.clients[shard_of(client)]
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(count) = clients.get_mut(&client) {
        if *count >= limiter.limit {
            return Err(());
        }
        *count += 1;
    } else {
        // Clients are removed when their count falls to 0, so a full shard is that many
        // clients with requests in progress: the new one is refused rather than miscounted.
        if clients.len() >= CLIENTS_PER_SHARD {
            return Err(());
        }
        clients.insert(client, 1);
    }
    Ok(Some(ConnectionSlot {
        limiter: limiter.clone(),
        client,
    }))
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut clients = self.limiter.clients[shard_of(self.client)]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(count) = clients.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                clients.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use http::StatusCode;

    use super::*;
    use crate::translate::l7::routes::limits::Rate;

    const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn a_burst_of_rate_times_multiplier_passes_then_the_client_is_refused() {
        // 1 r/min: nothing drains within the test. Burst 3: four requests at once (the first
        // counts no excess, as in nginx), the fifth refused; another client is unaffected.
        let limiter = RateLimiter::new(
            Rate::PerMinute(1),
            3,
            Arc::from(Vec::new()),
            StatusCode::SERVICE_UNAVAILABLE,
        );
        let admitted = (0..10).filter(|_| limiter.admit(CLIENT)).count();
        assert_eq!(admitted, 4);
        assert!(limiter.admit(OTHER));
    }

    #[test]
    fn exempt_clients_are_never_refused() {
        let exempt: Arc<[_]> = Arc::from(vec!["192.0.2.0/24".parse().unwrap()]);
        let limiter = RateLimiter::new(
            Rate::PerMinute(1),
            1,
            exempt.clone(),
            StatusCode::SERVICE_UNAVAILABLE,
        );
        assert!((0..100).all(|_| limiter.admit(CLIENT)));
        let connections = Arc::new(ConnectionLimiter::new(
            1,
            exempt,
            StatusCode::SERVICE_UNAVAILABLE,
        ));
        let slots: Vec<_> = (0..5).map(|_| acquire(&connections, CLIENT)).collect();
        assert!(slots.iter().all(|s| matches!(s, Ok(None))));
    }

    #[test]
    fn connection_slots_count_requests_in_progress_per_client() {
        let limiter = Arc::new(ConnectionLimiter::new(
            2,
            Arc::from(Vec::new()),
            StatusCode::SERVICE_UNAVAILABLE,
        ));
        let first = acquire(&limiter, CLIENT).unwrap();
        let second = acquire(&limiter, CLIENT).unwrap();
        assert!(acquire(&limiter, CLIENT).is_err());
        assert!(acquire(&limiter, OTHER).unwrap().is_some());
        drop(first);
        let third = acquire(&limiter, CLIENT).unwrap();
        assert!(third.is_some());
        drop((second, third));
        assert!(limiter
            .clients
            .iter()
            .all(|shard| shard.lock().unwrap().get(&CLIENT).is_none()));
    }
}
