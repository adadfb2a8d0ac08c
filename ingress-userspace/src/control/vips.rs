//! VIP assignment for bare-metal edges (`--assign-vips CIDR`): the leader gives each
//! LoadBalancer Service of our `loadBalancerClass` (or every LoadBalancer Service without a
//! class, with `--assign-vips-to-all`) that has no address yet a free one from the pool, and
//! writes it into the Service's `status.loadBalancer.ingress`, where the L4 translator reads VIPs
//! from, as a cloud load balancer or MetalLB would.
//!
//! [`assignments`] is pure and deterministic: Services in age order (then namespace/name) take
//! the lowest free address; a requested `spec.loadBalancerIP` inside the pool is honoured when
//! free. Addresses any Service already shows (status, `loadBalancerIP`, `externalIPs`) are taken.

use std::{collections::BTreeSet, net::Ipv4Addr};

use k8s_openapi::api::core::v1::Service;
use kube::{
    api::{Api, Patch, PatchParams},
    Client,
};
use tokio::sync::watch;

use crate::{
    model::{ClusterObjects, ObjectName},
    translate::l4::compare_created,
};

/// An IPv4 pool, `a.b.c.d/len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool {
    first: u32,
    last: u32,
}

impl std::str::FromStr for Pool {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let invalid = || format!("{text:?} is not an IPv4 CIDR like 203.0.113.0/28");
        let (addr, len) = text.split_once('/').ok_or_else(invalid)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| invalid())?;
        let len: u32 = len.parse().map_err(|_| invalid())?;
        if len > 32 {
            return Err(invalid());
        }
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        let network = u32::from(addr) & mask;
        let broadcast = network | !mask;
        // Network and broadcast addresses are not handed out, except in /31 and /32.
        let (first, last) = if len >= 31 {
            (network, broadcast)
        } else {
            (network + 1, broadcast - 1)
        };
        Ok(Self { first, last })
    }
}

impl Pool {
    fn contains(&self, addr: Ipv4Addr) -> bool {
        (self.first..=self.last).contains(&u32::from(addr))
    }
}

/// Service → the address it is given.
pub(crate) type Assignments = Vec<(ObjectName, Ipv4Addr)>;

/// Which Services get addresses.

#[derive(Clone, Debug)]
pub struct AssignSettings {
    /// The pool.
    pub pool: Pool,
    /// Our `spec.loadBalancerClass`.
    pub class: String,
    /// Also Services that name no class.
    pub classless_too: bool,
}

fn wants_address(service: &Service, settings: &AssignSettings) -> bool {
    let Some(spec) = service.spec.as_ref() else {
        return false;
    };
    if spec.type_.as_deref() != Some("LoadBalancer") {
        return false;
    }
    match spec.load_balancer_class.as_deref() {
        Some(class) => class == settings.class,
        None => settings.classless_too,
    }
}

fn has_status_address(service: &Service) -> bool {
    service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .is_some_and(|ingress| {
            ingress
                .iter()
                .any(|i| i.ip.is_some() || i.hostname.is_some())
        })
}

/// Every IPv4 address some Service shows or asks for.
fn taken(objects: &ClusterObjects) -> BTreeSet<Ipv4Addr> {
    let mut taken = BTreeSet::new();
    for service in objects.services.values() {
        let service = &service.object;
        let status_ips = service
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|i| i.ip.as_deref());
        let spec = service.spec.as_ref();
        let requested = spec.and_then(|s| s.load_balancer_ip.as_deref());
        let external = spec
            .and_then(|s| s.external_ips.as_ref())
            .into_iter()
            .flatten()
            .map(String::as_str);
        taken.extend(
            status_ips
                .chain(requested)
                .chain(external)
                .filter_map(|ip| ip.parse::<Ipv4Addr>().ok()),
        );
    }
    taken
}

/// The addresses to write: Services that want one and have none, each with its address. A pool
/// that runs out leaves the rest unassigned (reported by the caller).
pub(crate) fn assignments(
    objects: &ClusterObjects,
    settings: &AssignSettings,
) -> (Vec<(ObjectName, Ipv4Addr)>, Vec<ObjectName>) {
    let mut taken = taken(objects);
    let mut waiting: Vec<(&ObjectName, &Service)> = objects
        .services
        .iter()
        .map(|(name, s)| (name, &s.object))
        .filter(|(_, s)| wants_address(s, settings) && !has_status_address(s))
        .collect();
    waiting.sort_by(|(an, a), (bn, b)| {
        compare_created(
            a.metadata.creation_timestamp.as_ref(),
            b.metadata.creation_timestamp.as_ref(),
        )
        .then_with(|| an.cmp(bn))
    });
    let mut assigned = Vec::new();
    let mut exhausted = Vec::new();
    let mut next = settings.pool.first;
    for (name, service) in waiting {
        let requested = service
            .spec
            .as_ref()
            .and_then(|s| s.load_balancer_ip.as_deref())
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
            .filter(|ip| settings.pool.contains(*ip));
        // A requested address counts as taken by its own Service: give it that one.
        if let Some(ip) = requested {
            assigned.push((name.clone(), ip));
            continue;
        }
        while next <= settings.pool.last && taken.contains(&Ipv4Addr::from(next)) {
            next += 1;
        }
        if next > settings.pool.last {
            exhausted.push(name.clone());
            continue;
        }
        let ip = Ipv4Addr::from(next);
        taken.insert(ip);
        assigned.push((name.clone(), ip));
    }
    (assigned, exhausted)
}

/// Writes the latest assignments while this agent leads.
pub(crate) async fn run_writer(
    client: Client,
    mut assigned: watch::Receiver<Vec<(ObjectName, Ipv4Addr)>>,
    mut leader: watch::Receiver<bool>,
) {
    loop {
        if *leader.borrow_and_update() {
            let pending = assigned.borrow_and_update().clone();
            for (service, ip) in pending {
                let api: Api<Service> = Api::namespaced(client.clone(), &service.namespace);
                let body = serde_json::json!({
                    "status": { "loadBalancer": { "ingress": [ { "ip": ip.to_string() } ] } }
                });
                match api
                    .patch_status(&service.name, &PatchParams::default(), &Patch::Merge(&body))
                    .await
                {
                    Ok(_) => tracing::info!(%service, %ip, "VIP assigned"),
                    Err(error) => tracing::warn!(%service, %error, "writing Service status"),
                }
            }
        }
        tokio::select! {
            changed = assigned.changed() => if changed.is_err() { return },
            changed = leader.changed() => if changed.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Origin, Sourced};

    fn add(objects: &mut ClusterObjects, name: &str, yaml: &str) {
        let service: Service = serde_yaml::from_str(yaml).unwrap();
        objects.services.insert(
            ObjectName {
                namespace: "default".into(),
                name: name.into(),
            },
            Sourced {
                object: service,
                origin: Origin::Api,
            },
        );
    }

    #[test]
    fn lowest_free_address_oldest_first_requested_honoured_pool_exhaustion_reported() {
        let mut objects = ClusterObjects::default();
        let lb = |class: &str, created: &str, extra: &str| {
            format!("metadata: {{creationTimestamp: \"{created}\"}}\nspec: {{type: LoadBalancer{class}{extra}}}")
        };
        let ours = ", loadBalancerClass: xdp-ingress.dev/lb";
        add(
            &mut objects,
            "b-young",
            &lb(ours, "2026-03-01T00:00:00Z", ""),
        );
        add(&mut objects, "a-old", &lb(ours, "2026-01-01T00:00:00Z", ""));
        add(
            &mut objects,
            "wants-4",
            &lb(
                ours,
                "2026-04-01T00:00:00Z",
                ", loadBalancerIP: 203.0.113.4",
            ),
        );
        add(
            &mut objects,
            "other-class",
            &lb(", loadBalancerClass: metallb", "2026-01-01T00:00:00Z", ""),
        );
        add(
            &mut objects,
            "classless",
            &lb("", "2026-01-01T00:00:00Z", ""),
        );
        add(&mut objects, "late", &lb(ours, "2026-05-01T00:00:00Z", ""));
        add(
            &mut objects,
            "done",
            &format!(
                "{}\nstatus: {{loadBalancer: {{ingress: [{{ip: 203.0.113.1}}]}}}}",
                lb(ours, "2025-01-01T00:00:00Z", "")
            ),
        );
        let settings = AssignSettings {
            pool: "203.0.113.0/29".parse().unwrap(),
            class: "xdp-ingress.dev/lb".into(),
            classless_too: false,
        };
        let (assigned, exhausted) = assignments(&objects, &settings);
        let got: Vec<(String, String)> = assigned
            .iter()
            .map(|(n, ip)| (n.name.clone(), ip.to_string()))
            .collect();
        // .1 is taken by "done", .4 is requested by "wants-4"; .0 and .7 are not handed out.
        assert_eq!(
            got,
            [
                ("a-old".to_string(), "203.0.113.2".to_string()),
                ("b-young".to_string(), "203.0.113.3".to_string()),
                ("wants-4".to_string(), "203.0.113.4".to_string()),
                ("late".to_string(), "203.0.113.5".to_string()),
            ]
        );
        assert!(exhausted.is_empty());
        let tiny = AssignSettings {
            pool: "203.0.113.2/32".parse().unwrap(),
            classless_too: true,
            ..settings
        };
        let (assigned, exhausted) = assignments(&objects, &tiny);
        // The oldest takes the only address; a requested address outside the pool is not given.
        assert_eq!(assigned.len(), 1);
        assert_eq!(assigned[0].0.name, "a-old");
        assert_eq!(exhausted.len(), 4);

        assert!("203.0.113.0/33".parse::<Pool>().is_err());
    }
}
