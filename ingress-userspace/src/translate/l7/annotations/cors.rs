//! `enable-cors` and the `cors-*` annotations, with ingress-nginx's defaults, rendered into a
//! [`CorsPolicy`] once: the allowed origins as one regex (a `*` label in an origin matches one
//! DNS label, as ingress-nginx's `[A-Za-z0-9-]+`), the answer's headers as header values.
//! Values ingress-nginx would reject (it falls back to its defaults, silently) are bad values
//! here: a CORS policy that is not the one written is not served.

use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use regex::RegexBuilder;

use super::Reader;
use crate::translate::l7::routes::{CorsPolicy, REGEX_SIZE_LIMIT};

/// ingress-nginx's `cors-allow-methods` default.
pub(super) const DEFAULT_METHODS: &str = "GET, PUT, POST, DELETE, PATCH, OPTIONS";
/// ingress-nginx's `cors-allow-headers` default.
pub(super) const DEFAULT_HEADERS: &str =
    "DNT,Keep-Alive,User-Agent,X-Requested-With,If-Modified-Since,Cache-Control,Content-Type,Range,Authorization";
/// ingress-nginx's `cors-max-age` default (20 days).
pub(super) const DEFAULT_MAX_AGE: u32 = 1_728_000;

impl Reader<'_, '_> {
    /// The CORS policy, when `enable-cors` is true.
    pub(super) fn cors(&mut self) -> Option<Arc<CorsPolicy>> {
        if !self.bool("enable-cors", false) {
            return None;
        }
        let origins = self.origins();
        let credentials = self.bool("cors-allow-credentials", true);
        let methods = self.list("cors-allow-methods", DEFAULT_METHODS, |b| {
            b.is_ascii_alphabetic()
        });
        let headers = self.list("cors-allow-headers", DEFAULT_HEADERS, |b| {
            b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
        });
        let expose = self.list("cors-expose-headers", "", |b| {
            b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'*'
        });
        let max_age = match self.get("cors-max-age").map(str::trim) {
            None => DEFAULT_MAX_AGE,
            Some(value) => match value.parse::<u32>() {
                Ok(seconds) => seconds,
                Err(_) => {
                    self.fail(
                        "cors-max-age",
                        format!("{value:?} is not a number of seconds"),
                    );
                    DEFAULT_MAX_AGE
                }
            },
        };
        let mut rendered = Vec::new();
        let mut add = |name: &'static str, value: &str| {
            if let Ok(value) = HeaderValue::from_str(value) {
                rendered.push((HeaderName::from_static(name), value));
            }
        };
        if credentials {
            add("access-control-allow-credentials", "true");
        }
        add("access-control-allow-methods", &methods);
        add("access-control-allow-headers", &headers);
        if !expose.is_empty() {
            add("access-control-expose-headers", &expose);
        }
        add("access-control-max-age", &max_age.to_string());
        Some(Arc::new(CorsPolicy {
            origins: origins?,
            headers: rendered,
        }))
    }

    /// `cors-allow-origin`: `Some(None)` for any (`*`, the default), `Some(Some(regex))` for a
    /// list, `None` when a value is bad (reported).
    fn origins(&mut self) -> Option<Option<regex::Regex>> {
        let Some(value) = self.get("cors-allow-origin") else {
            return Some(None);
        };
        let mut alternatives = Vec::new();
        for origin in value.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            if origin == "*" {
                return Some(None);
            }
            match origin_pattern(origin) {
                Some(pattern) => alternatives.push(pattern),
                None => {
                    self.fail(
                        "cors-allow-origin",
                        format!(
                            "{origin:?} is not an origin (http(s)://name[:port], a first label \
                             may be *)"
                        ),
                    );
                    return None;
                }
            }
        }
        if alternatives.is_empty() {
            return Some(None);
        }
        let regex = RegexBuilder::new(&format!("^(?:{})$", alternatives.join("|")))
            .case_insensitive(true)
            .size_limit(REGEX_SIZE_LIMIT)
            .build();
        match regex {
            Ok(regex) => Some(Some(regex)),
            Err(_) => {
                self.fail("cors-allow-origin", "too many origins".into());
                None
            }
        }
    }

    /// A comma-separated list whose items are made of bytes `ok` accepts (and spaces);
    /// `default` when absent.
    fn list(&mut self, key: &str, default: &str, ok: impl Fn(u8) -> bool) -> String {
        let Some(value) = self.get(key).map(str::trim) else {
            return default.to_string();
        };
        let valid = value.split(',').all(|item| {
            let item = item.trim();
            !item.is_empty() && item.bytes().all(&ok)
        });
        if !valid {
            self.fail(
                key,
                format!("{value:?} is not a comma-separated list of names"),
            );
            return default.to_string();
        }
        value.to_string()
    }
}

/// `http(s)://name[:port]`, the first label possibly `*`, as a regex; `None` if it is no origin.
fn origin_pattern(origin: &str) -> Option<String> {
    let (scheme, rest) = origin.split_once("://")?;
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (rest, None),
    };
    if port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
        return None;
    }
    let (wildcard, name) = match host.strip_prefix("*.") {
        Some(name) => (true, name),
        None => (false, host),
    };
    let name_ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if !name_ok {
        return None;
    }
    let mut pattern = format!("{scheme}://");
    if wildcard {
        pattern.push_str(r"[A-Za-z0-9\-]+\.");
    }
    pattern.push_str(&regex::escape(name));
    if let Some(port) = port {
        pattern.push(':');
        pattern.push_str(port);
    }
    Some(pattern)
}
