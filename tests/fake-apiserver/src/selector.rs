//! Label and field selectors, as the API server parses them from `labelSelector` and
//! `fieldSelector`.
//!
//! Labels: `a=b`, `a==b`, `a!=b`, `a` (exists), `!a` (does not exist), `a in (x,y)`,
//! `a notin (x,y)`, comma-separated (all must hold). Fields: `path=value`, `path==value`,
//! `path!=value`, where `path` is a dotted path into the object (`metadata.name`,
//! `metadata.namespace`, `type`, `spec.nodeName`, ...); a missing field compares as `""`.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelReq {
    Eq(String, String),
    NotEq(String, String),
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum FieldReq {
    Eq(String, String),
    NotEq(String, String),
}

/// A parsed pair of label and field selectors; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    labels: Vec<LabelReq>,
    fields: Vec<FieldReq>,
}

/// Split on commas that are not inside parentheses.
fn split_top(s: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(format!("unbalanced parentheses in selector {s:?}"));
                }
            }
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!("unbalanced parentheses in selector {s:?}"));
    }
    out.push(&s[start..]);
    Ok(out
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect())
}

fn parse_set(key: &str, rest: &str) -> Result<Vec<String>, String> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("expected a parenthesised set of values for {key:?}"))?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn parse_label(req: &str) -> Result<LabelReq, String> {
    let bad = || format!("unable to parse requirement: {req:?}");
    if let Some(k) = req.strip_prefix('!') {
        let k = k.trim();
        return if valid_key(k) {
            Ok(LabelReq::NotExists(k.to_string()))
        } else {
            Err(bad())
        };
    }
    if let Some((k, v)) = req.split_once("!=") {
        return Ok(LabelReq::NotEq(k.trim().to_string(), v.trim().to_string()));
    }
    if let Some((k, v)) = req.split_once("==") {
        return Ok(LabelReq::Eq(k.trim().to_string(), v.trim().to_string()));
    }
    if let Some((k, v)) = req.split_once('=') {
        return Ok(LabelReq::Eq(k.trim().to_string(), v.trim().to_string()));
    }
    if let Some((k, rest)) = req.split_once(" notin ") {
        let k = k.trim();
        return Ok(LabelReq::NotIn(k.to_string(), parse_set(k, rest)?));
    }
    if let Some((k, rest)) = req.split_once(" in ") {
        let k = k.trim();
        return Ok(LabelReq::In(k.to_string(), parse_set(k, rest)?));
    }
    if valid_key(req) {
        return Ok(LabelReq::Exists(req.to_string()));
    }
    Err(bad())
}

fn parse_field(req: &str) -> Result<FieldReq, String> {
    let (k, v, eq) = if let Some((k, v)) = req.split_once("!=") {
        (k, v, false)
    } else if let Some((k, v)) = req.split_once("==") {
        (k, v, true)
    } else if let Some((k, v)) = req.split_once('=') {
        (k, v, true)
    } else {
        return Err(format!("invalid field selector: {req:?}"));
    };
    let (k, v) = (k.trim().to_string(), v.trim().to_string());
    if k.is_empty() {
        return Err(format!("invalid field selector: {req:?}"));
    }
    Ok(if eq {
        FieldReq::Eq(k, v)
    } else {
        FieldReq::NotEq(k, v)
    })
}

/// The string value at a dotted path, `""` when absent (as the real server's field sets do).
fn field_value(obj: &Value, path: &str) -> String {
    let mut cur = obj;
    for part in path.split('.') {
        match cur.get(part) {
            Some(v) => cur = v,
            None => return String::new(),
        }
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

impl Selector {
    /// Parse the (already URL-decoded) `labelSelector` and `fieldSelector` values.
    pub fn parse(labels: Option<&str>, fields: Option<&str>) -> Result<Selector, String> {
        let mut sel = Selector::default();
        if let Some(l) = labels {
            for req in split_top(l)? {
                sel.labels.push(parse_label(req)?);
            }
        }
        if let Some(f) = fields {
            for req in split_top(f)? {
                sel.fields.push(parse_field(req)?);
            }
        }
        Ok(sel)
    }

    /// Whether the selector has no requirements.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }

    /// Whether `obj` satisfies every requirement.
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels");
        let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        let labels_ok = self.labels.iter().all(|r| match r {
            LabelReq::Eq(k, v) => label(k) == Some(v.as_str()),
            LabelReq::NotEq(k, v) => label(k) != Some(v.as_str()),
            LabelReq::Exists(k) => label(k).is_some(),
            LabelReq::NotExists(k) => label(k).is_none(),
            LabelReq::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelReq::NotIn(k, vs) => label(k).is_none_or(|l| vs.iter().all(|v| v != l)),
        });
        labels_ok
            && self.fields.iter().all(|r| match r {
                FieldReq::Eq(k, v) => field_value(obj, k) == *v,
                FieldReq::NotEq(k, v) => field_value(obj, k) != *v,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj() -> Value {
        json!({"metadata": {"name": "a", "namespace": "ns", "labels": {"app": "web", "tier": "fe"}},
               "type": "kubernetes.io/tls"})
    }

    #[test]
    fn labels() {
        let m = |l: &str| Selector::parse(Some(l), None).map(|s| s.matches(&obj()));
        assert_eq!(m("app=web"), Ok(true));
        assert_eq!(m("app==web,tier=fe"), Ok(true));
        assert_eq!(m("app=web,tier=be"), Ok(false));
        assert_eq!(m("app!=web"), Ok(false));
        assert_eq!(m("app"), Ok(true));
        assert_eq!(m("!app"), Ok(false));
        assert_eq!(m("!missing"), Ok(true));
        assert_eq!(m("app in (x, web),tier notin (be)"), Ok(true));
        assert_eq!(m("app notin (web)"), Ok(false));
        assert!(m("app in (web").is_err());
        assert!(m("a b").is_err());
    }

    #[test]
    fn fields() {
        let m = |f: &str| Selector::parse(None, Some(f)).map(|s| s.matches(&obj()));
        assert_eq!(m("type=kubernetes.io/tls"), Ok(true));
        assert_eq!(m("type!=kubernetes.io/tls"), Ok(false));
        assert_eq!(m("metadata.name=a,metadata.namespace==ns"), Ok(true));
        assert_eq!(m("metadata.name=b"), Ok(false));
        assert_eq!(m("spec.nodeName="), Ok(true));
        assert!(m("nonsense").is_err());
    }
}
