//! Ingress status: `status.loadBalancer.ingress` on the Ingresses we own says where they are
//! served (`--publish-address`, or the addresses of the Service `--publish-service NS/NAME`);
//! an Ingress we stopped owning has our addresses cleared; nobody else's Ingress is touched.
//!
//! [`desired_patches`] is pure: the store's Ingresses in, the patches that would make them right
//! out. Only patches that change something are produced, so a store that already reflects our
//! writes produces none. [`run_writer`] applies the latest list while this agent leads.

use std::collections::BTreeSet;

use k8s_openapi::api::networking::v1::{Ingress, IngressLoadBalancerIngress};
use kube::{
    api::{Api, Patch, PatchParams},
    Client,
};
use tokio::sync::watch;

use crate::model::{ClusterObjects, ObjectName};

/// Where our Ingresses are published.
#[derive(Clone, Debug, Default)]
pub struct PublishSettings {
    /// `--publish-address` (IP addresses or host names).
    pub addresses: Vec<String>,
    /// `--publish-service`: use this Service's `status.loadBalancer.ingress`.
    pub service: Option<ObjectName>,
}

/// One status write.
#[derive(Clone, Debug, PartialEq)]

pub(crate) struct StatusPatch {
    /// The Ingress.
    pub ingress: ObjectName,
    /// Its new `status.loadBalancer.ingress` (empty: cleared).
    pub addresses: Vec<IngressLoadBalancerIngress>,
}

/// The addresses to publish, or `None` when they are not known (no flag, or the publish Service
/// has no address yet): then nothing is written.
pub(crate) fn publish_addresses(
    settings: &PublishSettings,
    objects: &ClusterObjects,
) -> Option<Vec<IngressLoadBalancerIngress>> {
    if let Some(service) = &settings.service {
        let ingress = objects
            .services
            .get(service)?
            .object
            .status
            .as_ref()?
            .load_balancer
            .as_ref()?
            .ingress
            .as_ref()?;
        let addresses: Vec<_> = ingress
            .iter()
            .map(|i| IngressLoadBalancerIngress {
                ip: i.ip.clone(),
                hostname: i.hostname.clone(),
                ..IngressLoadBalancerIngress::default()
            })
            .collect();
        return (!addresses.is_empty()).then_some(addresses);
    }
    if settings.addresses.is_empty() {
        return None;
    }
    Some(
        settings
            .addresses
            .iter()
            .map(|address| {
                if address.parse::<std::net::IpAddr>().is_ok() {
                    IngressLoadBalancerIngress {
                        ip: Some(address.clone()),
                        ..IngressLoadBalancerIngress::default()
                    }
                } else {
                    IngressLoadBalancerIngress {
                        hostname: Some(address.clone()),
                        ..IngressLoadBalancerIngress::default()
                    }
                }
            })
            .collect(),
    )
}

fn current_status(ingress: &Ingress) -> Vec<IngressLoadBalancerIngress> {
    ingress
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.clone())
        .unwrap_or_default()
}

/// The status writes that make the store's Ingresses right: ours get `addresses`; others that
/// show exactly `addresses` (ours from before) are cleared.
pub(crate) fn desired_patches(
    objects: &ClusterObjects,
    ours: &BTreeSet<ObjectName>,
    addresses: &[IngressLoadBalancerIngress],
) -> Vec<StatusPatch> {
    objects
        .ingresses
        .iter()
        .filter_map(|(name, ingress)| {
            let current = current_status(&ingress.object);
            if ours.contains(name) {
                (current != addresses).then(|| StatusPatch {
                    ingress: name.clone(),
                    addresses: addresses.to_vec(),
                })
            } else {
                (!current.is_empty() && current == addresses).then(|| StatusPatch {
                    ingress: name.clone(),
                    addresses: Vec::new(),
                })
            }
        })
        .collect()
}

/// Applies the latest patch list whenever it changes or this agent becomes the leader, and only
/// while it leads.
pub(crate) async fn run_writer(
    client: Client,
    mut patches: watch::Receiver<Vec<StatusPatch>>,
    mut leader: watch::Receiver<bool>,
) {
    loop {
        if *leader.borrow_and_update() {
            let pending = patches.borrow_and_update().clone();
            for patch in pending {
                write(&client, &patch).await;
            }
        }
        tokio::select! {
            changed = patches.changed() => if changed.is_err() { return },
            changed = leader.changed() => if changed.is_err() { return },
        }
    }
}

async fn write(client: &Client, patch: &StatusPatch) {
    let api: Api<Ingress> = Api::namespaced(client.clone(), &patch.ingress.namespace);
    let body = serde_json::json!({
        "status": { "loadBalancer": { "ingress": patch.addresses } }
    });
    match api
        .patch_status(
            &patch.ingress.name,
            &PatchParams::default(),
            &Patch::Merge(&body),
        )
        .await
    {
        Ok(_) => {
            tracing::info!(ingress = %patch.ingress, addresses = patch.addresses.len(), "Ingress status written")
        }
        Err(error) => tracing::warn!(ingress = %patch.ingress, %error, "writing Ingress status"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Origin, Sourced};

    fn ingress(name: &str, status_ip: Option<&str>) -> (ObjectName, Sourced<Ingress>) {
        let yaml = match status_ip {
            Some(ip) => format!(
                "metadata: {{name: {name}, namespace: default}}\nstatus: {{loadBalancer: {{ingress: [{{ip: {ip}}}]}}}}"
            ),
            None => format!("metadata: {{name: {name}, namespace: default}}"),
        };
        let object: Ingress = serde_yaml::from_str(&yaml).unwrap();
        (
            ObjectName {
                namespace: "default".into(),
                name: name.into(),
            },
            Sourced {
                object,
                origin: Origin::Api,
            },
        )
    }

    #[test]
    fn ours_get_the_address_former_ours_are_cleared_others_untouched() {
        let mut objects = ClusterObjects::default();
        for (name, ip) in [
            ("new", None),
            ("done", Some("192.0.2.10")),
            ("stale", Some("192.0.2.99")),
            ("left", Some("192.0.2.10")),
            ("foreign", Some("198.51.100.1")),
        ] {
            let (key, value) = ingress(name, ip);
            objects.ingresses.insert(key, value);
        }
        let ours: BTreeSet<ObjectName> = ["new", "done", "stale"]
            .iter()
            .map(|n| ObjectName {
                namespace: "default".into(),
                name: n.to_string(),
            })
            .collect();
        let settings = PublishSettings {
            addresses: vec!["192.0.2.10".into()],
            service: None,
        };
        let addresses = publish_addresses(&settings, &objects).unwrap();
        let patches = desired_patches(&objects, &ours, &addresses);
        let summary: Vec<(String, usize)> = patches
            .iter()
            .map(|p| (p.ingress.name.clone(), p.addresses.len()))
            .collect();
        assert_eq!(
            summary,
            [
                ("left".to_string(), 0),
                ("new".to_string(), 1),
                ("stale".to_string(), 1)
            ]
        );
        assert_eq!(patches[1].addresses[0].ip.as_deref(), Some("192.0.2.10"));
        assert!(publish_addresses(&PublishSettings::default(), &objects).is_none());
    }

    #[test]
    fn publish_service_addresses_come_from_its_status() {
        let mut objects = ClusterObjects::default();
        let service: k8s_openapi::api::core::v1::Service = serde_yaml::from_str(
            "metadata: {name: lb, namespace: xdp}\nstatus: {loadBalancer: {ingress: [{ip: 203.0.113.5}, {hostname: lb.example}]}}",
        )
        .unwrap();
        let name = ObjectName {
            namespace: "xdp".into(),
            name: "lb".into(),
        };
        objects.services.insert(
            name.clone(),
            Sourced {
                object: service,
                origin: Origin::Api,
            },
        );
        let settings = PublishSettings {
            addresses: Vec::new(),
            service: Some(name),
        };
        let addresses = publish_addresses(&settings, &objects).unwrap();
        assert_eq!(addresses[0].ip.as_deref(), Some("203.0.113.5"));
        assert_eq!(addresses[1].hostname.as_deref(), Some("lb.example"));
    }
}
