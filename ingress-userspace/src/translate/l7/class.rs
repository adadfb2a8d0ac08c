//! Which Ingresses are ours, and in what order they take precedence: the IngressClass rules
//! (`spec.ingressClassName`, the deprecated annotation, our default class) and the oldest-first
//! order every conflict is settled by.

use std::collections::BTreeSet;

use k8s_openapi::{
    api::networking::v1::{Ingress, IngressSpec},
    apimachinery::pkg::apis::meta::v1::Time,
};

use super::{nginx_config::NginxDefaults, DEFAULT_CLASS_ANNOTATION, INGRESS_CLASS_ANNOTATION};
use crate::{
    model::{ClusterObjects, ObjectName, Problem, Severity, Sourced},
    translate::l4::compare_created,
};

/// One of our Ingresses.
pub(super) struct OurIngress<'a> {
    pub(super) name: &'a ObjectName,
    pub(super) ingress: &'a Sourced<Ingress>,
    /// What its annotations default to (ingress-nginx's ConfigMap).
    pub(super) defaults: &'a NginxDefaults,
}

impl OurIngress<'_> {
    fn created(&self) -> Option<&Time> {
        self.ingress.object.metadata.creation_timestamp.as_ref()
    }

    pub(super) fn spec(&self) -> Option<&IngressSpec> {
        self.ingress.object.spec.as_ref()
    }

    /// An error: something of this Ingress is not served as written.
    pub(super) fn problem(&self, field: impl Into<String>, message: impl Into<String>) -> Problem {
        self.problem_of(Severity::Error, field.into(), message.into())
    }

    /// A warning: served, with a setting ignored or only partly honoured.
    pub(super) fn warning(&self, field: impl Into<String>, message: impl Into<String>) -> Problem {
        self.problem_of(Severity::Warning, field.into(), message.into())
    }

    fn problem_of(&self, severity: Severity, field: String, message: String) -> Problem {
        Problem {
            severity,
            origin: self.ingress.origin.to_string(),
            object: format!("Ingress {}", self.name),
            field,
            message,
        }
    }
}

/// Our Ingresses, in precedence order.
pub(super) fn our_ingresses<'a>(
    objects: &'a ClusterObjects,
    controllers: &[String],
    defaults: &'a NginxDefaults,
) -> Vec<OurIngress<'a>> {
    let mut our_classes = BTreeSet::new();
    let mut default_is_ours = false;
    for (name, class) in &objects.ingress_classes {
        let class = &class.object;
        let controller = class.spec.as_ref().and_then(|s| s.controller.as_deref());
        if !controller.is_some_and(|c| controllers.iter().any(|ours| ours == c)) {
            continue;
        }
        our_classes.insert(name.as_str());
        let annotations = class.metadata.annotations.as_ref();
        default_is_ours |= annotations
            .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
            .is_some_and(|v| v == "true");
    }
    let mut ours: Vec<OurIngress<'_>> = objects
        .ingresses
        .iter()
        .filter(|(_, ingress)| match class_of(&ingress.object) {
            Some(class) => our_classes.contains(class),
            None => default_is_ours,
        })
        .map(|(name, ingress)| OurIngress {
            name,
            ingress,
            defaults,
        })
        .collect();
    tracing::debug!(
        ours = ours.len(),
        ignored = objects.ingresses.len() - ours.len(),
        "Ingresses selected by class"
    );
    ours.sort_by(|a, b| compare_created(a.created(), b.created()).then_with(|| a.name.cmp(b.name)));
    ours
}

/// The class an Ingress asks for: `spec.ingressClassName`, else the deprecated annotation.
fn class_of(ingress: &Ingress) -> Option<&str> {
    let from_spec = ingress
        .spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.as_deref());
    let annotations = ingress.metadata.annotations.as_ref();
    let from_annotation = annotations
        .and_then(|a| a.get(INGRESS_CLASS_ANNOTATION))
        .map(String::as_str);
    from_spec
        .filter(|c| !c.is_empty())
        .or(from_annotation.filter(|c| !c.is_empty()))
}
