//! What the agent writes back to the cluster, in kube mode: who may write ([`election`], a
//! `coordination.k8s.io/v1` Lease), Ingress status ([`status`]), and Kubernetes Events for
//! problems a user must see ([`events`]). Every agent serves traffic; only the Lease holder
//! writes status.

pub(crate) mod election;
pub(crate) mod events;
pub(crate) mod status;
pub(crate) mod vips;
