//! The traffic annotations: `canary` and its `canary-*` rules, `affinity: cookie` with the
//! `session-cookie-*` settings, and `upstream-hash-by`, read with ingress-nginx's defaults.
//!
//! On a canary Ingress, ingress-nginx uses only the canary annotations and those of the
//! canary's own upstream (`load-balance`, `upstream-hash-by`, the affinity ones); every other
//! annotation is the main Ingress's business and ignored there. So is it here, and reported.
//! (Its affinity ones count only with `affinity-canary-behavior: legacy`: by default the
//! canary takes the main backend's affinity; see `rules/canary`.)

use http::HeaderName;
use regex::RegexBuilder;

use super::{Reader, PREFIX};
use crate::translate::l7::{
    balance::{AffinityMode, Balance, CookieAffinity, HashKey},
    routes::{CanaryHeader, CanaryRule, HeaderTest, REGEX_SIZE_LIMIT},
};

/// The keys a canary Ingress honours (ingress-nginx's annotations.md: "all the other
/// non-canary annotations will be ignored ... except load-balance, upstream-hash-by, and
/// annotations related to session affinity").
fn canary_keeps(key: &str) -> bool {
    key.starts_with("canary")
        || key.starts_with("session-cookie-")
        || key.starts_with("affinity")
        || key.starts_with("upstream-hash-by")
        || key == "load-balance"
}

const CANARY_KEYS: [&str; 6] = [
    "canary-by-header",
    "canary-by-header-value",
    "canary-by-header-pattern",
    "canary-by-cookie",
    "canary-weight",
    "canary-weight-total",
];

impl Reader<'_, '_> {
    /// `canary: "true"`: reports and drops the annotations a canary Ingress does not use.
    /// Returns whether the Ingress is a canary.
    pub(super) fn canary_first(&mut self) -> bool {
        if !self.bool("canary", false) {
            let stray: Vec<&str> = CANARY_KEYS
                .into_iter()
                .filter(|key| self.get(key).is_some())
                .collect();
            for key in stray {
                self.problems.push(self.ingress.problem(
                    super::field(key),
                    format!("ignored: this Ingress does not set {PREFIX}canary: \"true\""),
                ));
            }
            return false;
        }
        let ignored: Vec<&str> = self
            .values
            .keys()
            .copied()
            .filter(|key| !canary_keeps(key))
            .collect();
        for key in ignored {
            self.values.remove(key);
            self.problems.push(self.ingress.problem(
                super::field(key),
                "ignored on a canary Ingress: the main Ingress's setting applies, as in \
                 ingress-nginx (a canary honours only canary-*, affinity, session-cookie-*, \
                 upstream-hash-by and load-balance)",
            ));
        }
        true
    }

    /// The canary rule of a canary Ingress.
    pub(super) fn canary_rule(&mut self) -> CanaryRule {
        let header = self.get("canary-by-header").map(str::trim);
        let header = match header.filter(|h| !h.is_empty()) {
            None => None,
            Some(name) => match HeaderName::from_bytes(name.as_bytes()) {
                Ok(name) => Some(name),
                Err(_) => {
                    self.fail("canary-by-header", format!("{name:?} is not a header name"));
                    None
                }
            },
        };
        let value = self.get("canary-by-header-value").filter(|v| !v.is_empty());
        let pattern = self
            .get("canary-by-header-pattern")
            .filter(|v| !v.is_empty());
        // ingress-nginx: a value wins over a pattern.
        let test = match (value, pattern) {
            (Some(value), _) => HeaderTest::Value(value.as_bytes().to_vec()),
            (None, Some(pattern)) => {
                match RegexBuilder::new(pattern)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                {
                    Ok(regex) => HeaderTest::Pattern(regex),
                    Err(error) => {
                        let detail = error.to_string();
                        let last = detail.lines().last().unwrap_or_default().trim().to_string();
                        self.fail(
                            "canary-by-header-pattern",
                            format!("{pattern:?} is not a valid regex: {last}"),
                        );
                        HeaderTest::AlwaysNever
                    }
                }
            }
            (None, None) => HeaderTest::AlwaysNever,
        };
        let cookie = self
            .get("canary-by-cookie")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_string);
        let weight = self.count("canary-weight", 0);
        // ingress-nginx's Lua: 100, unless the annotation is larger.
        let weight_total = self.count("canary-weight-total", 100).max(100);
        let sticky = match self.get("affinity-canary-behavior").map(str::trim) {
            None | Some("sticky") => true,
            Some("legacy") => false,
            Some(other) => {
                self.fail(
                    "affinity-canary-behavior",
                    format!("{other:?} is neither \"sticky\" nor \"legacy\""),
                );
                true
            }
        };
        CanaryRule {
            header: header.map(|name| CanaryHeader { name, test }),
            cookie,
            weight,
            weight_total,
            sticky,
        }
    }

    /// `upstream-hash-by`, else `affinity: cookie`, else the default balancing.
    pub(super) fn balance(&mut self) -> Balance {
        if let Some(text) = self.get("upstream-hash-by").map(str::trim) {
            if !text.is_empty() {
                match HashKey::parse(text) {
                    Ok(key) => return Balance::Hash(key.into()),
                    Err(why) => {
                        self.fail("upstream-hash-by", why);
                        return Balance::LeastRequests;
                    }
                }
            }
        }
        match self.get("affinity").map(str::trim) {
            Some("cookie") => Balance::Cookie(self.cookie_affinity().into()),
            None | Some("") => Balance::LeastRequests,
            Some(other) => {
                // ingress-nginx knows only "cookie" and ignores anything else.
                self.problems.push(self.ingress.problem(
                    super::field("affinity"),
                    format!("{other:?} is not an affinity type (only \"cookie\"); ignored"),
                ));
                Balance::LeastRequests
            }
        }
    }

    fn cookie_affinity(&mut self) -> CookieAffinity {
        let mut affinity = CookieAffinity::default();
        if let Some(name) = self.get("session-cookie-name").map(str::trim) {
            if is_token(name) {
                affinity.name = name.to_string();
            } else {
                self.fail(
                    "session-cookie-name",
                    format!("{name:?} is not a cookie name"),
                );
            }
        }
        affinity.path = self.cookie_text("session-cookie-path");
        affinity.domain = self.cookie_text("session-cookie-domain");
        affinity.max_age = self.cookie_seconds("session-cookie-max-age");
        affinity.expires = self.cookie_seconds("session-cookie-expires");
        if self.get("session-cookie-secure").is_some() {
            affinity.secure = Some(self.bool("session-cookie-secure", false));
        }
        affinity.samesite = match self.get("session-cookie-samesite").map(str::trim) {
            None | Some("") => None,
            Some("None") => Some("None"),
            Some("Lax") => Some("Lax"),
            Some("Strict") => Some("Strict"),
            Some(other) => {
                // lua-resty-cookie drops any other value (with a warning in nginx's log).
                self.problems.push(self.ingress.problem(
                    super::field("session-cookie-samesite"),
                    format!(
                        "{other:?} is not None, Lax or Strict; the cookie gets no SameSite, as \
                         with ingress-nginx"
                    ),
                ));
                None
            }
        };
        affinity.conditional_samesite_none =
            self.bool("session-cookie-conditional-samesite-none", false);
        affinity.change_on_failure = self.bool("session-cookie-change-on-failure", false);
        affinity.mode = match self.get("affinity-mode").map(str::trim) {
            None | Some("") | Some("balanced") => AffinityMode::Balanced,
            Some("persistent") => AffinityMode::Persistent,
            Some(other) => {
                self.problems.push(self.ingress.problem(
                    super::field("affinity-mode"),
                    format!(
                        "{other:?} is not \"balanced\" or \"persistent\"; balanced is used, as \
                         ingress-nginx does"
                    ),
                ));
                AffinityMode::Balanced
            }
        };
        affinity
    }

    /// A non-negative integer; `default` when absent.
    fn count(&mut self, key: &str, default: u32) -> u32 {
        let Some(value) = self.get(key).map(str::trim) else {
            return default;
        };
        match value.parse::<u32>() {
            Ok(n) => n,
            Err(_) => {
                self.fail(key, format!("{value:?} is not a non-negative integer"));
                default
            }
        }
    }

    /// A cookie lifetime in seconds (0 allowed: the cookie expires at once).
    fn cookie_seconds(&mut self, key: &str) -> Option<u64> {
        let value = self.get(key).map(str::trim).filter(|v| !v.is_empty())?;
        match value.parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => {
                self.fail(key, format!("{value:?} is not a number of seconds"));
                None
            }
        }
    }

    /// A cookie attribute value: printable, without `;`.
    fn cookie_text(&mut self, key: &str) -> Option<String> {
        let value = self.get(key).map(str::trim).filter(|v| !v.is_empty())?;
        if value
            .bytes()
            .all(|b| (0x21..0x7f).contains(&b) && b != b';')
        {
            Some(value.to_string())
        } else {
            self.fail(
                key,
                format!("{value:?} cannot be a cookie attribute (spaces, ';' or control bytes)"),
            );
            None
        }
    }
}

/// An RFC 6265 cookie name (an RFC 9110 token).
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
