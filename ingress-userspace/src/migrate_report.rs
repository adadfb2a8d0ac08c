//! `xdp-ingress migrate-report`: for every Ingress of an ingress-nginx class in a manifest
//! directory, what each of its `nginx.ingress.kubernetes.io/*` annotations will do under
//! xdp-ingress: behave identically, differ (and how), be ignored, never run (snippets), or not
//! parse. Read from the annotation catalogue and the translator's own parser, so the report
//! says what the agent will do. It reads, never writes.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::Ingress;
use serde_json::{json, Value};

use crate::{
    model::{ObjectName, Sourced},
    source::files::{FilesError, ManifestDir},
    translate::l7::{
        annotations::{catalogue, field, problems_of, PREFIX},
        INGRESS_CLASS_ANNOTATION,
    },
};

/// What one annotation will do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    /// Behaves as in ingress-nginx.
    Identical,
    /// Works, with a difference.
    Differs,
    /// Not implemented: ignored.
    Ignored,
    /// A snippet: never executed.
    NeverExecuted,
    /// No such ingress-nginx annotation.
    Unknown,
    /// Its value does not parse: the Ingress's routes answer 503.
    Invalid,
}

impl Verdict {
    /// The word the report uses.
    pub fn word(self) -> &'static str {
        match self {
            Verdict::Identical => "identical",
            Verdict::Differs => "differs",
            Verdict::Ignored => "ignored",
            Verdict::NeverExecuted => "never executed",
            Verdict::Unknown => "unknown",
            Verdict::Invalid => "invalid",
        }
    }
}

/// One annotation of one Ingress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// The key without the prefix.
    pub key: String,
    /// Its value.
    pub value: String,
    /// What it will do.
    pub verdict: Verdict,
    /// How it differs, why it is ignored, or why it does not parse.
    pub note: String,
}

/// One Ingress of the class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngressReport {
    /// `namespace/name`.
    pub ingress: ObjectName,
    /// Where it was read.
    pub origin: String,
    /// Its ingress-nginx annotations, by key.
    pub lines: Vec<Line>,
}

/// The whole report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The class reported on.
    pub class: String,
    /// Every Ingress of it, by namespace/name.
    pub ingresses: Vec<IngressReport>,
}

/// Reads `dir` and reports on the Ingresses of class `class` (`spec.ingressClassName`, else
/// the `kubernetes.io/ingress.class` annotation).
pub fn report_dir(
    dir: &std::path::Path,
    class: &str,
    max_file_bytes: u64,
) -> Result<Report, FilesError> {
    let snapshot = ManifestDir::new(dir)
        .with_max_file_bytes(max_file_bytes)
        .load()?;
    Ok(report(snapshot.objects.ingresses.iter(), class))
}

/// The report over `ingresses`, those of class `class`.
pub fn report<'a>(
    ingresses: impl IntoIterator<Item = (&'a ObjectName, &'a Sourced<Ingress>)>,
    class: &str,
) -> Report {
    let mut out = Vec::new();
    for (name, ingress) in ingresses {
        if class_of(&ingress.object) != Some(class) {
            continue;
        }
        out.push(ingress_report(name, ingress));
    }
    out.sort_by(|a, b| a.ingress.cmp(&b.ingress));
    Report {
        class: class.to_string(),
        ingresses: out,
    }
}

fn class_of(ingress: &Ingress) -> Option<&str> {
    ingress
        .spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.as_deref())
        .or_else(|| {
            ingress
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(INGRESS_CLASS_ANNOTATION))
                .map(String::as_str)
        })
}

fn ingress_report(name: &ObjectName, ingress: &Sourced<Ingress>) -> IngressReport {
    let problems = problems_of(name, ingress);
    let mut lines = Vec::new();
    let annotations = ingress.object.metadata.annotations.iter().flatten();
    for (key, value) in annotations {
        let Some(key) = key.strip_prefix(PREFIX) else {
            continue;
        };
        let field = field(key);
        let problem = problems
            .iter()
            .find(|p| p.field == field)
            .map(|p| p.message.clone());
        let (verdict, note) = match catalogue::lookup(key) {
            Some(entry) => {
                let verdict = match entry.support {
                    catalogue::Support::Supported => Verdict::Identical,
                    catalogue::Support::Partly => Verdict::Differs,
                    catalogue::Support::Ignored => Verdict::Ignored,
                    catalogue::Support::NeverExecuted => Verdict::NeverExecuted,
                };
                match problem {
                    Some(message) if message.contains("answer 503") => (Verdict::Invalid, message),
                    // A value ingress-nginx also replaces by its default: reported, same result.
                    Some(message) if verdict == Verdict::Identical => (Verdict::Identical, message),
                    _ => (verdict, entry.note.to_string()),
                }
            }
            None if key.ends_with("-snippet") => (
                Verdict::NeverExecuted,
                "nginx configuration is never executed".to_string(),
            ),
            None => (
                Verdict::Unknown,
                "not an ingress-nginx annotation".to_string(),
            ),
        };
        lines.push(Line {
            key: key.to_string(),
            value: value.clone(),
            verdict,
            note,
        });
    }
    IngressReport {
        ingress: name.clone(),
        origin: ingress.origin.to_string(),
        lines,
    }
}

impl Report {
    /// How many annotations got each verdict.
    pub fn counts(&self) -> BTreeMap<Verdict, usize> {
        let mut counts = BTreeMap::new();
        for line in self.ingresses.iter().flat_map(|i| &i.lines) {
            *counts.entry(line.verdict).or_insert(0) += 1;
        }
        counts
    }

    fn summary(&self) -> String {
        let counts = self.counts();
        let total: usize = counts.values().sum();
        let parts: Vec<String> = [
            Verdict::Identical,
            Verdict::Differs,
            Verdict::Ignored,
            Verdict::NeverExecuted,
            Verdict::Unknown,
            Verdict::Invalid,
        ]
        .iter()
        .map(|v| format!("{} {}", counts.get(v).copied().unwrap_or(0), v.word()))
        .collect();
        format!(
            "{} Ingress(es) of class {}, {total} annotation(s): {}",
            self.ingresses.len(),
            self.class,
            parts.join(", ")
        )
    }

    /// The report as text: one block per Ingress, the counts at the end.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for ingress in &self.ingresses {
            out.push_str(&format!(
                "Ingress {} ({})\n",
                ingress.ingress, ingress.origin
            ));
            if ingress.lines.is_empty() {
                out.push_str("  no ingress-nginx annotations\n");
            }
            for line in &ingress.lines {
                out.push_str(&format!("  {:<15} {}", line.verdict.word(), line.key));
                if !line.note.is_empty() {
                    out.push_str(&format!(": {}", line.note));
                }
                out.push('\n');
            }
        }
        out.push_str(&self.summary());
        out.push('\n');
        out
    }

    /// The report as JSON.
    pub fn json(&self) -> Value {
        let ingresses: Vec<Value> = self
            .ingresses
            .iter()
            .map(|i| {
                let annotations: Vec<Value> = i
                    .lines
                    .iter()
                    .map(|l| {
                        json!({
                            "key": format!("{PREFIX}{}", l.key),
                            "value": l.value,
                            "verdict": l.verdict.word(),
                            "note": l.note,
                        })
                    })
                    .collect();
                json!({
                    "ingress": i.ingress.to_string(),
                    "origin": i.origin,
                    "annotations": annotations,
                })
            })
            .collect();
        let counts: serde_json::Map<String, Value> = self
            .counts()
            .into_iter()
            .map(|(v, n)| (v.word().to_string(), json!(n)))
            .collect();
        json!({"class": self.class, "ingresses": ingresses, "counts": counts})
    }
}
