//! The limits annotations, read as ingress-nginx reads them: `proxy-body-size` and
//! `client-body-buffer-size` (nginx sizes: a number with an optional `k`, `m` or `g`),
//! `proxy-connect-timeout`, `proxy-send-timeout`, `proxy-read-timeout` (whole seconds),
//! `proxy-next-upstream` (+ `-tries`, `-timeout`) into the route's [`UpstreamPolicy`]; and
//! `limit-rps`, `limit-rpm`, `limit-connections`, `limit-burst-multiplier`, `limit-allowlist`
//! (`limit-whitelist`) into one rate limiter per rate and one connection limiter per Ingress.
//! A value that does not parse is a bad value (the Ingress's routes answer 503): a limit that is
//! not the one written is not served.

use std::{
    sync::{Arc, LazyLock},
    time::Duration,
};

use http::StatusCode;

use super::{super::NginxDefaults, Reader};
use crate::translate::l7::routes::{
    limits::{ConnectionLimiter, NextUpstream, Rate, RateLimiter, UpstreamPolicy},
    Cidr,
};

/// ingress-nginx's `limit-burst-multiplier` default.
pub(super) const DEFAULT_BURST_MULTIPLIER: u32 = 5;
/// ingress-nginx's `limit-req-status-code` and `limit-conn-status-code` default.
pub(super) const DEFAULT_LIMIT_STATUS: StatusCode = StatusCode::SERVICE_UNAVAILABLE;

/// What the limits annotations of one Ingress ask for.
#[derive(Clone, Debug, Default)]
pub(in crate::translate::l7) struct Limits {
    /// The upstream policy; `None`: the default one (no `proxy-*` annotation).
    pub(in crate::translate::l7) policy: Option<Arc<UpstreamPolicy>>,
    /// `limit-rps`, then `limit-rpm`: both apply when both are set, as in nginx.
    pub(in crate::translate::l7) rates: Vec<Arc<RateLimiter>>,
    /// `limit-connections`.
    pub(in crate::translate::l7) connections: Option<Arc<ConnectionLimiter>>,
}

/// nginx's size syntax: digits, then optionally `k`, `m` or `g` (either case).
pub(in crate::translate::l7) fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit) = match text.as_bytes().last() {
        Some(b'k' | b'K') => (&text[..text.len() - 1], 1u64 << 10),
        Some(b'm' | b'M') => (&text[..text.len() - 1], 1 << 20),
        Some(b'g' | b'G') => (&text[..text.len() - 1], 1 << 30),
        _ => (text, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{text:?} is not an nginx size (a number, optionally followed by k, m or g)"
        ));
    }
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| format!("{text:?} is too large"))
}

impl Reader<'_, '_> {
    /// A whole number (ingress-nginx's integer annotations); `None` when absent or bad.
    fn number(&mut self, key: &str) -> Option<u64> {
        let value = self.get(key)?.trim();
        match value.parse::<u64>() {
            Ok(n) if n <= u64::from(u32::MAX) => Some(n),
            _ => {
                self.fail(key, format!("{value:?} is not a whole number"));
                None
            }
        }
    }

    /// A timeout in whole seconds (ingress-nginx writes `<n>s`); `None` when absent or bad.
    fn seconds(&mut self, key: &str) -> Option<Duration> {
        let n = self.number(key)?;
        if n == 0 {
            self.fail(key, "0 is no timeout (nginx would time out at once)".into());
            return None;
        }
        Some(Duration::from_secs(n))
    }

    /// `proxy-next-upstream`: space-separated conditions, or `off`.
    fn next_upstream(&mut self) -> Option<NextUpstream> {
        let value = self.get("proxy-next-upstream")?;
        let mut set = NextUpstream::OFF;
        let words: Vec<&str> = value.split_whitespace().collect();
        if words.is_empty() {
            self.fail("proxy-next-upstream", "empty".into());
            return None;
        }
        for word in &words {
            match (*word, NextUpstream::of_word(word)) {
                ("off", _) if words.len() == 1 => return Some(NextUpstream::OFF),
                (_, Some(condition)) => set = set.with(condition),
                _ => {
                    self.fail(
                        "proxy-next-upstream",
                        format!(
                            "{word:?} is not a condition (error, timeout, invalid_header, \
                             http_500, http_502, http_503, http_504, http_403, http_404, \
                             http_429, non_idempotent; or off alone)"
                        ),
                    );
                    return None;
                }
            }
        }
        Some(set)
    }

    /// The limits annotations.
    pub(super) fn limits(&mut self) -> Limits {
        let mut policy = self.configured_policy();
        let mut changed = policy != UpstreamPolicy::default();
        if let Some(value) = self.get("proxy-body-size") {
            match parse_size(value) {
                Ok(0) => policy.max_body_bytes = None,
                Ok(n) => policy.max_body_bytes = Some(n),
                Err(why) => self.fail("proxy-body-size", why),
            }
            changed = true;
        }
        // Checked, then without effect: bodies are streamed, never buffered (see the catalogue).
        if let Some(value) = self.get("client-body-buffer-size") {
            if let Err(why) = parse_size(value) {
                self.fail("client-body-buffer-size", why);
            }
        }
        if let Some(timeout) = self.seconds("proxy-connect-timeout") {
            policy.connect_timeout = Some(timeout);
            changed = true;
        }
        if let Some(timeout) = self.seconds("proxy-send-timeout") {
            policy.send_timeout = timeout;
            changed = true;
        }
        if let Some(timeout) = self.seconds("proxy-read-timeout") {
            policy.read_timeout = Some(timeout);
            changed = true;
        }
        if let Some(set) = self.next_upstream() {
            policy.next_upstream = set;
            changed = true;
        }
        if let Some(tries) = self.number("proxy-next-upstream-tries") {
            policy.next_upstream_tries = tries as u32;
            changed = true;
        }
        if let Some(seconds) = self.number("proxy-next-upstream-timeout") {
            policy.next_upstream_timeout = (seconds > 0).then(|| Duration::from_secs(seconds));
            changed = true;
        }
        let mut limits = Limits {
            policy: changed.then(|| Arc::new(policy)),
            ..Limits::default()
        };

        let rps = self.number("limit-rps").unwrap_or(0) as u32;
        let rpm = self.number("limit-rpm").unwrap_or(0) as u32;
        let connections = self.number("limit-connections").unwrap_or(0) as u32;
        let multiplier = self.burst_multiplier();
        // ingress-nginx reads the new name first, the old one as its alias.
        let exempt: Arc<[Cidr]> = match self.get("limit-allowlist") {
            Some(_) => self.ranges("limit-allowlist"),
            None => self.ranges("limit-whitelist"),
        }
        .into();
        for rate in [Rate::PerSecond(rps), Rate::PerMinute(rpm)] {
            if matches!(rate, Rate::PerSecond(0) | Rate::PerMinute(0)) {
                continue;
            }
            limits.rates.push(Arc::new(RateLimiter::new(
                rate,
                multiplier,
                exempt.clone(),
                self.ingress.defaults.limit_req_status_code,
            )));
        }
        if connections > 0 {
            limits.connections = Some(Arc::new(ConnectionLimiter::new(
                connections,
                exempt,
                DEFAULT_LIMIT_STATUS,
            )));
        }
        limits
    }

    /// The policy of an Ingress without `proxy-*` annotations: ingress-nginx's defaults, or
    /// what its ConfigMap (`--nginx-configmap`) says instead. A ConfigMap value equal to nginx's
    /// default leaves the agent's own flags (`--upstream-connect-timeout`,
    /// `--upstream-response-timeout`) in charge.
    fn configured_policy(&self) -> UpstreamPolicy {
        static STOCK: LazyLock<NginxDefaults> = LazyLock::new(NginxDefaults::default);
        let (nginx, stock) = (self.ingress.defaults, &*STOCK);
        let mut policy = UpstreamPolicy::default();
        if nginx.proxy_body_size != stock.proxy_body_size {
            policy.max_body_bytes = (nginx.proxy_body_size > 0).then_some(nginx.proxy_body_size);
        }
        if nginx.proxy_connect_timeout != stock.proxy_connect_timeout {
            policy.connect_timeout = Some(nginx.proxy_connect_timeout);
        }
        if nginx.proxy_read_timeout != stock.proxy_read_timeout {
            policy.read_timeout = Some(nginx.proxy_read_timeout);
        }
        policy.send_timeout = nginx.proxy_send_timeout;
        policy
    }

    /// `limit-burst-multiplier`: below 1 ingress-nginx uses its default; so do we, and say so.
    fn burst_multiplier(&mut self) -> u32 {
        let key = "limit-burst-multiplier";
        match self.number(key) {
            None => DEFAULT_BURST_MULTIPLIER,
            Some(0) => {
                self.problems.push(self.ingress.problem(
                    super::field(key),
                    format!(
                        "0 is below 1; {DEFAULT_BURST_MULTIPLIER} is used, as ingress-nginx does"
                    ),
                ));
                DEFAULT_BURST_MULTIPLIER
            }
            Some(n) => n as u32,
        }
    }
}
