//! ingress-nginx's global ConfigMap (`--nginx-configmap NS/NAME`), read into [`NginxDefaults`]:
//! the keys that change what an Ingress gets when its annotations say nothing. Without the flag
//! (or without the ConfigMap) every field has ingress-nginx's own default, so an Ingress of a
//! taken-over class behaves as it did under the old controller's configuration, not just its
//! defaults.
//!
//! Values are parsed as ingress-nginx does (Go's `strconv.ParseBool`, integers of seconds, nginx
//! sizes, comma-separated CIDRs). A value that does not parse is a problem naming the ConfigMap
//! and the key, and that key keeps its default; every other key still applies. Keys we do not
//! read are reported once, in one warning listing them all.

use std::{collections::BTreeMap, time::Duration};

use http::{HeaderValue, StatusCode};
use k8s_openapi::api::core::v1::ConfigMap;

use crate::model::{ClusterObjects, ObjectName, Problem, Severity, Sourced};

use super::routes::Cidr;

/// The annotation defaults the ConfigMap may change, with ingress-nginx's defaults (its
/// `internal/ingress/controller/config/config.go`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NginxDefaults {
    /// `ssl-redirect` (true): hosts with a certificate redirect plain HTTP to HTTPS.
    pub ssl_redirect: bool,
    /// `force-ssl-redirect` (false): redirect to HTTPS even without a certificate.
    pub force_ssl_redirect: bool,
    /// `http-redirect-code` (308; 301, 302, 307 or 308): the status of those redirects.
    pub http_redirect_code: StatusCode,
    /// `use-forwarded-headers` (false): trust the client's `X-Forwarded-Proto`, `-Host`,
    /// `-Port` and take the client address from `X-Forwarded-For` (the proxy is behind
    /// another L7 load balancer).
    pub use_forwarded_headers: bool,
    /// `hsts` (true) with `hsts-max-age` (31536000), `hsts-include-subdomains` (true) and
    /// `hsts-preload` (false): the `Strict-Transport-Security` value sent on HTTPS responses of
    /// hosts with a certificate; `None` when `hsts` is false.
    pub hsts: Option<HeaderValue>,
    /// `whitelist-source-range` (empty: every address): the allowed client ranges of every
    /// Ingress without its own `whitelist-source-range` / `allowlist-source-range`.
    pub allow_source_ranges: Vec<Cidr>,
    /// `proxy-body-size` (`1m`), bytes; 0: no limit.
    pub proxy_body_size: u64,
    /// `limit-req-status-code` (503): the status of requests over a rate limit.
    pub limit_req_status_code: StatusCode,
    /// `proxy-connect-timeout` (5 s).
    pub proxy_connect_timeout: Duration,
    /// `proxy-read-timeout` (60 s).
    pub proxy_read_timeout: Duration,
    /// `proxy-send-timeout` (60 s).
    pub proxy_send_timeout: Duration,
}

/// ingress-nginx's `hsts-max-age` default: one year.
const HSTS_MAX_AGE: u64 = 31_536_000;

impl Default for NginxDefaults {
    fn default() -> Self {
        Self {
            ssl_redirect: true,
            force_ssl_redirect: false,
            http_redirect_code: StatusCode::PERMANENT_REDIRECT,
            use_forwarded_headers: false,
            hsts: Some(hsts_value(HSTS_MAX_AGE, true, false)),
            allow_source_ranges: Vec::new(),
            proxy_body_size: 1024 * 1024,
            limit_req_status_code: StatusCode::SERVICE_UNAVAILABLE,
            proxy_connect_timeout: Duration::from_secs(5),
            proxy_read_timeout: Duration::from_secs(60),
            proxy_send_timeout: Duration::from_secs(60),
        }
    }
}

/// The keys read; any other is reported as ignored.
const KNOWN: &[&str] = &[
    "ssl-redirect",
    "force-ssl-redirect",
    "http-redirect-code",
    "use-forwarded-headers",
    "hsts",
    "hsts-max-age",
    "hsts-include-subdomains",
    "hsts-preload",
    "whitelist-source-range",
    "proxy-body-size",
    "limit-req-status-code",
    "proxy-connect-timeout",
    "proxy-read-timeout",
    "proxy-send-timeout",
];

/// The `Strict-Transport-Security` value ingress-nginx's template renders.
fn hsts_value(max_age: u64, include_subdomains: bool, preload: bool) -> HeaderValue {
    let mut value = format!("max-age={max_age}");
    if include_subdomains {
        value.push_str("; includeSubDomains");
    }
    if preload {
        value.push_str("; preload");
    }
    // Digits and fixed ASCII: always a valid header value.
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("max-age=0"))
}

/// The defaults from ConfigMap `name` (`None`: no `--nginx-configmap`): ingress-nginx's own
/// when it is not given or does not exist (a missing one is a problem: the flag names it).
pub(super) fn read(
    objects: &ClusterObjects,
    name: Option<&ObjectName>,
    problems: &mut Vec<Problem>,
) -> NginxDefaults {
    let Some(name) = name else {
        return NginxDefaults::default();
    };
    let Some(config_map) = objects.config_maps.get(name) else {
        problems.push(Problem {
            severity: Severity::Error,
            origin: "--nginx-configmap".to_string(),
            object: format!("ConfigMap {name}"),
            field: String::new(),
            message: "no such ConfigMap; ingress-nginx's defaults are used".to_string(),
        });
        return NginxDefaults::default();
    };
    read_config_map(name, config_map, problems)
}

fn read_config_map(
    name: &ObjectName,
    config_map: &Sourced<ConfigMap>,
    problems: &mut Vec<Problem>,
) -> NginxDefaults {
    let empty = BTreeMap::new();
    let data = config_map.object.data.as_ref().unwrap_or(&empty);
    let mut reader = Reader {
        name,
        origin: config_map.origin.to_string(),
        problems,
        data,
    };
    let defaults = NginxDefaults::default();
    let hsts_on = reader.bool("hsts", true);
    let max_age = reader.parsed("hsts-max-age", HSTS_MAX_AGE, "a number of seconds", |v| {
        v.parse::<u64>().ok()
    });
    let include_subdomains = reader.bool("hsts-include-subdomains", true);
    let preload = reader.bool("hsts-preload", false);
    let seconds = |v: &str| v.parse::<u64>().ok().map(Duration::from_secs);
    let out = NginxDefaults {
        ssl_redirect: reader.bool("ssl-redirect", defaults.ssl_redirect),
        force_ssl_redirect: reader.bool("force-ssl-redirect", defaults.force_ssl_redirect),
        http_redirect_code: reader.parsed(
            "http-redirect-code",
            defaults.http_redirect_code,
            "one of 301, 302, 307, 308",
            |v| match v.parse::<u16>() {
                Ok(code @ (301 | 302 | 307 | 308)) => StatusCode::from_u16(code).ok(),
                _ => None,
            },
        ),
        use_forwarded_headers: reader.bool("use-forwarded-headers", false),
        hsts: hsts_on.then(|| hsts_value(max_age, include_subdomains, preload)),
        allow_source_ranges: reader.parsed(
            "whitelist-source-range",
            Vec::new(),
            "a comma-separated list of addresses and CIDR ranges",
            |v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|i| !i.is_empty())
                    .map(|i| i.parse::<Cidr>().ok())
                    .collect()
            },
        ),
        proxy_body_size: reader.parsed(
            "proxy-body-size",
            defaults.proxy_body_size,
            "an nginx size (such as 8m, 512k or 0)",
            nginx_size,
        ),
        limit_req_status_code: reader.parsed(
            "limit-req-status-code",
            defaults.limit_req_status_code,
            "an HTTP status code (400-599)",
            |v| {
                v.parse::<u16>()
                    .ok()
                    .filter(|c| (400..=599).contains(c))
                    .and_then(|c| StatusCode::from_u16(c).ok())
            },
        ),
        proxy_connect_timeout: reader.parsed(
            "proxy-connect-timeout",
            defaults.proxy_connect_timeout,
            "a number of seconds",
            seconds,
        ),
        proxy_read_timeout: reader.parsed(
            "proxy-read-timeout",
            defaults.proxy_read_timeout,
            "a number of seconds",
            seconds,
        ),
        proxy_send_timeout: reader.parsed(
            "proxy-send-timeout",
            defaults.proxy_send_timeout,
            "a number of seconds",
            seconds,
        ),
    };
    let unknown: Vec<&str> = data
        .keys()
        .map(String::as_str)
        .filter(|key| !KNOWN.contains(key))
        .collect();
    if !unknown.is_empty() {
        reader.problems.push(Problem {
            severity: Severity::Warning,
            origin: reader.origin.clone(),
            object: format!("ConfigMap {name}"),
            field: "data".to_string(),
            message: format!(
                "keys not read by xdp-ingress, ignored: {}",
                unknown.join(", ")
            ),
        });
    }
    out
}

struct Reader<'a> {
    name: &'a ObjectName,
    origin: String,
    problems: &'a mut Vec<Problem>,
    data: &'a BTreeMap<String, String>,
}

impl Reader<'_> {
    /// `key` parsed by `parse`; absent: `default`; not parsing: a problem, and `default`.
    fn parsed<T>(
        &mut self,
        key: &str,
        default: T,
        expected: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> T {
        let Some(value) = self.data.get(key).map(|v| v.trim()) else {
            return default;
        };
        match parse(value) {
            Some(parsed) => parsed,
            None => {
                self.problems.push(Problem {
                    severity: Severity::Error,
                    origin: self.origin.clone(),
                    object: format!("ConfigMap {}", self.name),
                    field: format!("data[\"{key}\"]"),
                    message: format!(
                        "{value:?} is not {expected}; ingress-nginx's default is used for this key"
                    ),
                });
                default
            }
        }
    }

    /// A boolean as Go's `strconv.ParseBool` reads it.
    fn bool(&mut self, key: &str, default: bool) -> bool {
        self.parsed(
            key,
            default,
            "a boolean (\"true\" or \"false\")",
            |v| match v {
                "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
                "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
                _ => None,
            },
        )
    }
}

/// An nginx size: bytes, or a number with `k`/`K`, `m`/`M`, `g`/`G`; `0` is no limit.
pub(crate) fn nginx_size(value: &str) -> Option<u64> {
    let (digits, unit) = match value.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => (&value[..i], c.to_ascii_lowercase()),
        _ => (value, 'b'),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let number: u64 = digits.parse().ok()?;
    let scale: u64 = match unit {
        'b' => 1,
        'k' => 1 << 10,
        'm' => 1 << 20,
        'g' => 1 << 30,
        _ => return None,
    };
    number.checked_mul(scale)
}

#[cfg(test)]
mod tests;
