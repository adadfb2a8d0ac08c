//! A route's second backend set and the compiled rule that sends a request there instead of
//! to the primary set: ingress-nginx's canary Ingress (`canary-by-header`, `-value`,
//! `-pattern`, `canary-by-cookie`, `canary-weight` with `-total`, tried in that order), and
//! the shape Gateway API's weighted `backendRefs` will use (a weight alone). Everything is
//! prepared with the plan; per request the rule reads at most one header and one cookie and
//! draws one random number.

use http::{HeaderMap, HeaderName};
use regex::Regex;

use crate::model::ObjectName;

use super::WeightedBackend;

/// The canary of a route.
#[derive(Clone, Debug)]
pub struct Canary {
    /// The canary Ingress (or route) it comes from.
    pub source: Option<ObjectName>,
    /// Where canary requests go.
    pub backends: Vec<WeightedBackend>,
    /// When a request goes there.
    pub rule: CanaryRule,
    /// The path its affinity cookie is set for (`session-cookie-path`, else the rule's path).
    pub cookie_path: Option<std::sync::Arc<str>>,
}

/// ingress-nginx's traffic shaping policy: header, then cookie, then weight.
#[derive(Clone, Debug)]
pub struct CanaryRule {
    /// `canary-by-header` and how its value is read.
    pub header: Option<CanaryHeader>,
    /// `canary-by-cookie`: `always` sends to the canary, `never` to the primary set.
    pub cookie: Option<String>,
    /// `canary-weight`: out of `weight_total`, the share of the rest.
    pub weight: u32,
    /// `canary-weight-total` (ingress-nginx: 100, or the annotation when larger).
    pub weight_total: u32,
    /// `affinity-canary-behavior: sticky` (the default): a request carrying the canary's
    /// affinity cookie stays on the canary. `legacy` turns that off.
    pub sticky: bool,
}

/// `canary-by-header` and the value test.
#[derive(Clone, Debug)]
pub struct CanaryHeader {
    /// The header.
    pub name: HeaderName,
    /// How its value decides.
    pub test: HeaderTest,
}

/// How the canary header's value decides.
#[derive(Clone, Debug)]
pub enum HeaderTest {
    /// `always`: canary; `never`: primary; other values: the next rule decides.
    AlwaysNever,
    /// `canary-by-header-value`: exactly this value is canary; others: the next rule.
    Value(Vec<u8>),
    /// `canary-by-header-pattern`: a match (unanchored, as `ngx.re.match`) is canary.
    Pattern(Regex),
}

/// What the rule decided from the request alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Canary.
    Canary,
    /// Primary.
    Primary,
}

impl CanaryRule {
    /// The decision for a request with `headers`; `draw(n)` is a uniform random number in
    /// `1..=n` (called only when the weight decides).
    pub fn decide(&self, headers: &HeaderMap, draw: impl FnOnce(u32) -> u32) -> Verdict {
        if let Some(header) = &self.header {
            if let Some(value) = headers.get(&header.name) {
                let value = value.as_bytes();
                match &header.test {
                    HeaderTest::Value(want) if value == want.as_slice() => return Verdict::Canary,
                    HeaderTest::Value(_) => {}
                    HeaderTest::Pattern(regex) => {
                        if std::str::from_utf8(value).is_ok_and(|v| regex.is_match(v)) {
                            return Verdict::Canary;
                        }
                    }
                    HeaderTest::AlwaysNever => match value {
                        b"always" => return Verdict::Canary,
                        b"never" => return Verdict::Primary,
                        _ => {}
                    },
                }
            }
        }
        if let Some(name) = &self.cookie {
            match cookie(headers, name) {
                Some(b"always") => return Verdict::Canary,
                Some(b"never") => return Verdict::Primary,
                _ => {}
            }
        }
        if self.weight == 0 {
            return Verdict::Primary;
        }
        if self.weight >= self.weight_total || draw(self.weight_total) <= self.weight {
            Verdict::Canary
        } else {
            Verdict::Primary
        }
    }
}

/// The value of the first cookie `name` in the request's `Cookie` headers (nginx's
/// `$cookie_<name>`), without copying.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|line| line.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let (key, value) = split_once(pair, b'=')?;
            (key.trim_ascii() == name.as_bytes()).then(|| value.trim_ascii())
        })
}

fn split_once(bytes: &[u8], at: u8) -> Option<(&[u8], &[u8])> {
    let i = bytes.iter().position(|&b| b == at)?;
    Some((&bytes[..i], &bytes[i + 1..]))
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn rule(test: Option<HeaderTest>, cookie: Option<&str>, weight: u32) -> CanaryRule {
        CanaryRule {
            header: test.map(|test| CanaryHeader {
                name: HeaderName::from_static("x-canary"),
                test,
            }),
            cookie: cookie.map(str::to_string),
            weight,
            weight_total: 100,
            sticky: true,
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, HeaderValue::from_static(v));
        }
        map
    }

    const NO_DRAW: fn(u32) -> u32 = |_| panic!("the weight must not decide");

    #[test]
    fn header_then_cookie_then_weight() {
        use Verdict::{Canary, Primary};
        let r = rule(Some(HeaderTest::AlwaysNever), Some("canary"), 0);
        assert_eq!(
            r.decide(&headers(&[("x-canary", "always")]), NO_DRAW),
            Canary
        );
        let both = headers(&[("x-canary", "never"), ("cookie", "canary=always")]);
        assert_eq!(r.decide(&both, NO_DRAW), Primary, "the header wins");
        let other = headers(&[("x-canary", "maybe"), ("cookie", "a=1; canary=always")]);
        assert_eq!(r.decide(&other, NO_DRAW), Canary, "then the cookie");
        let never = headers(&[("cookie", "canary=never")]);
        assert_eq!(r.decide(&never, NO_DRAW), Primary);
        // Weight 0: never canary; 100 of 100: always, without a draw.
        assert_eq!(r.decide(&headers(&[]), NO_DRAW), Primary);
        assert_eq!(rule(None, None, 100).decide(&headers(&[]), NO_DRAW), Canary);
        // 30 of 100: draws 1..=30 are canary.
        let thirty = rule(None, None, 30);
        assert_eq!(thirty.decide(&headers(&[]), |_| 30), Canary);
        assert_eq!(thirty.decide(&headers(&[]), |_| 31), Primary);
    }

    #[test]
    fn header_value_and_pattern() {
        use Verdict::{Canary, Primary};
        let value = rule(Some(HeaderTest::Value(b"v2".to_vec())), None, 0);
        assert_eq!(
            value.decide(&headers(&[("x-canary", "v2")]), NO_DRAW),
            Canary
        );
        // With a value, "always" is just another value.
        assert_eq!(
            value.decide(&headers(&[("x-canary", "always")]), NO_DRAW),
            Primary
        );
        let pattern = rule(
            Some(HeaderTest::Pattern(Regex::new("^(beta|rc)-").unwrap())),
            None,
            0,
        );
        assert_eq!(
            pattern.decide(&headers(&[("x-canary", "rc-1")]), NO_DRAW),
            Canary
        );
        assert_eq!(
            pattern.decide(&headers(&[("x-canary", "ga-1")]), NO_DRAW),
            Primary
        );
    }

    #[test]
    fn cookies_are_read_from_every_cookie_line() {
        let h = headers(&[("cookie", "a=1;b = 2"), ("cookie", "c=3; a=4")]);
        assert_eq!(cookie(&h, "a"), Some(&b"1"[..]));
        assert_eq!(cookie(&h, "b"), Some(&b"2"[..]));
        assert_eq!(cookie(&h, "c"), Some(&b"3"[..]));
        assert_eq!(cookie(&h, "d"), None);
    }
}
