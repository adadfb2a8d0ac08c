//! Endpoint choice beyond the default two choices: a consistent hash ring for
//! `upstream-hash-by` and for balanced cookie affinity, and the persistent affinity table, all
//! built when a backend is built (per plan or endpoint change), never per request. Per request:
//! [`Balancer::prepare`] reads the request once (hashes the key's parts as they stand, or
//! finds the session cookie), then each try's [`Balancer::choose`] is a binary search.
//!
//! Hashes are FNV-1a with a 64-bit finaliser: stable across processes and nodes, so every
//! agent replica sends one key (or one cookie) to the same endpoint. Cookie values follow
//! ingress-nginx: `<key>|<backend key>`, where the key is random (balanced: placed on the ring)
//! or a salted hash of the endpoint (persistent): never an address in clear.

use std::{
    cell::Cell,
    fmt::Write as _,
    hash::{BuildHasher, Hasher},
    io::Write as _,
    net::IpAddr,
    sync::{Arc, LazyLock},
    time::{SystemTime, UNIX_EPOCH},
};

use http::{HeaderMap, HeaderValue, Uri};
use regex::Regex;

use crate::translate::l7::{
    routes::cookie, AffinityMode, Balance, CookieAffinity, HashKey, HashPart,
};

use super::Endpoint;

/// Points per endpoint on a ring (ketama's 160): shares even to a few percent.
const POINTS: u32 = 160;
/// New balanced sessions tried before giving up on avoiding a failed endpoint (ingress-nginx).
const NEW_SESSION_TRIES: usize = 20;

/// FNV-1a, then murmur3's finaliser so that close inputs land far apart.
#[derive(Clone, Copy)]
pub(crate) struct KeyHasher(u64);

impl KeyHasher {
    pub(crate) fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    pub(crate) fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    pub(crate) fn finish(self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

fn hash(bytes: &[u8]) -> u64 {
    let mut h = KeyHasher::new();
    h.write(bytes);
    h.finish()
}

/// A consistent hash ring: [`POINTS`] per endpoint, placed by the endpoint's address, so an
/// endpoint that goes away hands only its own arcs to the others.
#[derive(Debug, Default)]
pub(crate) struct Ring {
    /// (point, endpoint index), sorted by point.
    points: Vec<(u64, u32)>,
}

impl Ring {
    pub(crate) fn new(endpoints: &[Arc<Endpoint>]) -> Self {
        let mut points = Vec::with_capacity(endpoints.len() * POINTS as usize);
        for (i, endpoint) in endpoints.iter().enumerate() {
            let addr = endpoint.addr.to_string();
            for point in 0..POINTS {
                let mut h = KeyHasher::new();
                h.write(addr.as_bytes());
                h.write(b"#");
                h.write(&point.to_le_bytes());
                points.push((h.finish(), i as u32));
            }
        }
        points.sort_unstable();
        Self { points }
    }

    /// The endpoint owning `key`, walking on past those `usable` refuses (the first owner if
    /// none is usable).
    pub(crate) fn find(&self, key: u64, usable: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.points.len();
        if n == 0 {
            return None;
        }
        let start = self.points.partition_point(|(p, _)| *p < key) % n;
        let owner = self.points[start].1 as usize;
        (0..n)
            .map(|i| self.points[(start + i) % n].1 as usize)
            .find(|&e| usable(e))
            .or(Some(owner))
    }
}

/// How a live backend chooses, built from its plan's [`Balance`] and endpoints.
#[derive(Debug, Default)]
pub(crate) enum Balancer {
    /// Two choices on outstanding requests.
    #[default]
    LeastRequests,
    /// `upstream-hash-by`.
    Hash { key: Arc<HashKey>, ring: Ring },
    /// `affinity: cookie`.
    Sticky(Box<Sticky>),
}

/// Cookie affinity of one backend.
#[derive(Debug)]
pub(crate) struct Sticky {
    pub(crate) affinity: Arc<CookieAffinity>,
    /// Names this backend in the cookie (a hash of its name, as ingress-nginx's md5s).
    pub(crate) backend_key: String,
    /// Balanced: the ring the cookie's random key is placed on.
    ring: Ring,
    /// Persistent: each endpoint's key (a salted hash of its address), sorted, with its index.
    keys: Vec<(u64, u32)>,
    /// Persistent: the key of endpoint `i`.
    key_of: Vec<u64>,
}

/// What a request brings to the choice, read once before the first try.
#[derive(Debug)]
pub(crate) enum Prepared {
    /// Nothing: the default choice.
    Any,
    /// The hash of the request's `upstream-hash-by` value.
    Hash(u64),
    /// The endpoint the session cookie names (`None`: no cookie, or one that names no
    /// endpoint of this backend any more); and whether `SameSite=None` must be left out.
    Sticky {
        endpoint: Option<usize>,
        no_samesite_none: bool,
    },
}

/// What a request is, for hashing and cookies.
pub(crate) struct RequestKeys<'a> {
    pub(crate) headers: &'a HeaderMap,
    pub(crate) uri: &'a Uri,
    /// The normalised path.
    pub(crate) path: &'a str,
    /// The host as sent (port allowed).
    pub(crate) host: &'a str,
    pub(crate) client: IpAddr,
    pub(crate) https: bool,
}

impl Balancer {
    /// The balancer for `balance` over `endpoints`; `name` (namespace, Service, port) salts the
    /// persistent keys and makes the backend key.
    pub(crate) fn new(balance: &Balance, endpoints: &[Arc<Endpoint>], name: &str) -> Self {
        match balance {
            Balance::LeastRequests => Self::LeastRequests,
            Balance::Hash(key) => Self::Hash {
                key: key.clone(),
                ring: Ring::new(endpoints),
            },
            Balance::Cookie(affinity) => {
                let persistent = affinity.mode == AffinityMode::Persistent;
                let key_of: Vec<u64> = if persistent {
                    endpoints
                        .iter()
                        .map(|e| {
                            let mut h = KeyHasher::new();
                            h.write(name.as_bytes());
                            h.write(b"|");
                            h.write(e.addr.to_string().as_bytes());
                            h.finish()
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                let mut keys: Vec<(u64, u32)> = key_of
                    .iter()
                    .enumerate()
                    .map(|(i, k)| (*k, i as u32))
                    .collect();
                keys.sort_unstable();
                Self::Sticky(Box::new(Sticky {
                    affinity: affinity.clone(),
                    backend_key: format!("{:016x}", hash(name.as_bytes())),
                    ring: if persistent {
                        Ring::default()
                    } else {
                        Ring::new(endpoints)
                    },
                    keys,
                    key_of,
                }))
            }
        }
    }

    /// Whether the request carries this backend's session cookie (ingress-nginx's
    /// `is_affinitized`: the cookie's backend key is ours).
    pub(crate) fn is_affinitized(&self, headers: &HeaderMap) -> bool {
        let Self::Sticky(sticky) = self else {
            return false;
        };
        cookie(headers, &sticky.affinity.name)
            .and_then(|value| split_value(value).1)
            .is_some_and(|backend| backend == sticky.backend_key.as_bytes())
    }

    /// Reads what the choice needs from the request.
    pub(crate) fn prepare(&self, request: &RequestKeys<'_>) -> Prepared {
        match self {
            Self::LeastRequests => Prepared::Any,
            Self::Hash { key, .. } => Prepared::Hash(hash_request(key, request)),
            Self::Sticky(sticky) => {
                let key = cookie(request.headers, &sticky.affinity.name)
                    .map(|value| split_value(value).0)
                    .filter(|key| !key.is_empty());
                let endpoint = key.and_then(|key| match sticky.affinity.mode {
                    AffinityMode::Balanced => sticky.ring.find(hash(key), |_| true),
                    AffinityMode::Persistent => {
                        let key = std::str::from_utf8(key)
                            .ok()
                            .and_then(|k| u64::from_str_radix(k, 16).ok())?;
                        let at = sticky.keys.partition_point(|(k, _)| *k < key);
                        sticky
                            .keys
                            .get(at)
                            .filter(|(k, _)| *k == key)
                            .map(|(_, i)| *i as usize)
                    }
                });
                let no_samesite_none = endpoint.is_none()
                    && sticky.affinity.conditional_samesite_none
                    && sticky.affinity.samesite == Some("None")
                    && !samesite_none_compatible(request.headers);
                Prepared::Sticky {
                    endpoint,
                    no_samesite_none,
                }
            }
        }
    }
}

/// `<key>|<backend key>` (ingress-nginx's cookie value) as its two parts.
fn split_value(value: &[u8]) -> (&[u8], Option<&[u8]>) {
    match value.iter().position(|&b| b == b'|') {
        Some(i) => (&value[..i], Some(&value[i + 1..])),
        None => (value, None),
    }
}

/// The hash of the request's value for `key`, its parts fed as they are read (nothing copied).
fn hash_request(key: &HashKey, request: &RequestKeys<'_>) -> u64 {
    let mut h = KeyHasher::new();
    for part in &key.parts {
        match part {
            HashPart::Text(text) => h.write(text.as_bytes()),
            HashPart::RequestUri => h.write(
                request
                    .uri
                    .path_and_query()
                    .map_or(b"/", |pq| pq.as_str().as_bytes()),
            ),
            HashPart::Uri => h.write(request.path.as_bytes()),
            HashPart::Args => h.write(request.uri.query().unwrap_or("").as_bytes()),
            HashPart::Host => {
                let host = strip_port(request.host);
                for b in host.bytes() {
                    h.write(&[b.to_ascii_lowercase()]);
                }
            }
            HashPart::RemoteAddr => {
                // An address's text fits in 39 bytes: written on the stack.
                let mut buf = [0u8; 48];
                let mut cursor = std::io::Cursor::new(&mut buf[..]);
                let _ = write!(cursor, "{}", request.client.to_canonical());
                let len = cursor.position() as usize;
                h.write(&buf[..len]);
            }
            HashPart::Scheme => h.write(if request.https { b"https" } else { b"http" }),
            HashPart::Header(name) => {
                if let Some(value) = request.headers.get(name) {
                    h.write(value.as_bytes());
                }
            }
            HashPart::Cookie(name) => {
                if let Some(value) = cookie(request.headers, name) {
                    h.write(value);
                }
            }
            HashPart::Arg(name) => {
                if let Some(value) = arg(request.uri.query(), name) {
                    h.write(value.as_bytes());
                }
            }
        }
    }
    h.finish()
}

/// nginx's `$arg_<name>`: the first argument so named (without case), as sent.
fn arg<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        key.eq_ignore_ascii_case(name).then_some(value)
    })
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

/// A session the choice started: the cookie to set.
#[derive(Debug)]
pub(crate) struct NewSession {
    /// The key part of the cookie value.
    key: String,
}

impl Balancer {
    /// The endpoint for this try; `exclude` failed this request before. For a new session,
    /// the cookie's key comes along.
    pub(crate) fn choose<'e>(
        &self,
        prepared: &Prepared,
        endpoints: &'e [Arc<Endpoint>],
        exclude: Option<&Arc<Endpoint>>,
        default: impl FnOnce() -> Option<&'e Arc<Endpoint>>,
    ) -> Option<(&'e Arc<Endpoint>, Option<NewSession>)> {
        let usable = |i: usize| {
            endpoints
                .get(i)
                .is_some_and(|e| !e.is_down() && exclude.is_none_or(|x| !Arc::ptr_eq(x, e)))
        };
        match (self, prepared) {
            (Self::Hash { ring, .. }, Prepared::Hash(key)) => ring
                .find(*key, usable)
                .and_then(|i| endpoints.get(i))
                .map(|e| (e, None)),
            (Self::Sticky(sticky), Prepared::Sticky { endpoint, .. }) => {
                let failed_here = |i: usize| exclude.is_some_and(|x| Arc::ptr_eq(x, &endpoints[i]));
                match endpoint {
                    // ingress-nginx keeps the session's endpoint even after a failure, unless
                    // `session-cookie-change-on-failure`.
                    Some(i)
                        if *i < endpoints.len()
                            && !(failed_here(*i) && sticky.affinity.change_on_failure) =>
                    {
                        Some((&endpoints[*i], None))
                    }
                    _ => sticky.new_session(endpoints, usable),
                }
            }
            _ => default().map(|e| (e, None)),
        }
    }
}

impl Sticky {
    fn new_session<'e>(
        &self,
        endpoints: &'e [Arc<Endpoint>],
        usable: impl Fn(usize) -> bool,
    ) -> Option<(&'e Arc<Endpoint>, Option<NewSession>)> {
        if endpoints.is_empty() {
            return None;
        }
        match self.affinity.mode {
            AffinityMode::Balanced => {
                let mut fallback = None;
                for _ in 0..NEW_SESSION_TRIES {
                    let key = format!("{:016x}", random());
                    let Some(i) = self.ring.find(hash(key.as_bytes()), |_| true) else {
                        break;
                    };
                    if usable(i) {
                        return Some((&endpoints[i], Some(NewSession { key })));
                    }
                    fallback.get_or_insert((i, key));
                }
                fallback.map(|(i, key)| (&endpoints[i], Some(NewSession { key })))
            }
            AffinityMode::Persistent => {
                let n = endpoints.len();
                let start = (random() % n as u64) as usize;
                let i = (0..n)
                    .map(|k| (start + k) % n)
                    .find(|&i| usable(i))
                    .unwrap_or(start);
                let key = format!("{:016x}", self.key_of.get(i)?);
                Some((&endpoints[i], Some(NewSession { key })))
            }
        }
    }

    /// The `Set-Cookie` value for a new session, attributes in lua-resty-cookie's order.
    pub(crate) fn set_cookie(
        &self,
        session: &NewSession,
        path: Option<&str>,
        https: bool,
        no_samesite_none: bool,
    ) -> Option<HeaderValue> {
        let a = &self.affinity;
        let mut line = format!("{}={}|{}", a.name, session.key, self.backend_key);
        if let Some(seconds) = a.expires {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let _ = write!(
                line,
                "; Expires={}",
                cookie_time(now.saturating_add(seconds))
            );
        }
        if let Some(seconds) = a.max_age {
            let _ = write!(line, "; Max-Age={seconds}");
        }
        if let Some(domain) = &a.domain {
            let _ = write!(line, "; Domain={domain}");
        }
        if let Some(path) = path {
            let _ = write!(line, "; Path={path}");
        }
        if a.secure.unwrap_or(https) {
            line.push_str("; Secure");
        }
        line.push_str("; HttpOnly");
        if let Some(samesite) = a.samesite.filter(|s| !(no_samesite_none && *s == "None")) {
            let _ = write!(line, "; SameSite={samesite}");
        }
        HeaderValue::try_from(line).ok()
    }
}

impl Balancer {
    /// The cookie for `session` (see [`Sticky::set_cookie`]); `None` for other balancers.
    pub(crate) fn set_cookie(
        &self,
        session: &NewSession,
        path: Option<&str>,
        https: bool,
        prepared: &Prepared,
    ) -> Option<HeaderValue> {
        let Self::Sticky(sticky) = self else {
            return None;
        };
        let no_samesite_none = matches!(
            prepared,
            Prepared::Sticky {
                no_samesite_none: true,
                ..
            }
        );
        sticky.set_cookie(session, path, https, no_samesite_none)
    }
}

/// nginx's `ngx_http_cookie_time`: `Thu, 18-Nov-10 11:27:35 GMT` (two-digit years up to 2037).
fn cookie_time(unix: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix / 86_400;
    let secs = unix % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let shown_year = if year > 2037 { year } else { year % 100 };
    format!(
        "{}, {:02}-{}-{:02} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        shown_year,
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// ingress-nginx's `same_site_none_compatible`: browsers known to reject (or misread)
/// `SameSite=None` (Chrome 51-66, iOS 12, Safari on macOS 10.14, UC Browser before 12.13.2).
fn samesite_none_compatible(headers: &HeaderMap) -> bool {
    static INCOMPATIBLE: LazyLock<Vec<Regex>> = LazyLock::new(|| {
        [
            r"Chrom(e|ium)/(5[1-9]|6[0-6])\.",
            r"\(iP.+; CPU .*OS 12[_\d]*.*\) AppleWebKit/",
            r"\(Macintosh;.*Mac OS X 10_14[_\d]*.*\) AppleWebKit/.*Version/.* Safari/",
            r"UCBrowser/([0-9]|1[01])\.|UCBrowser/12\.([0-9]|1[0-2])\.|UCBrowser/12\.13\.[01]\b",
        ]
        .iter()
        .filter_map(|re| Regex::new(re).ok())
        .collect()
    });
    let Some(agent) = headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
    else {
        return true;
    };
    !INCOMPATIBLE.iter().any(|re| re.is_match(agent))
}

thread_local! {
    static RANDOM: Cell<u64> = Cell::new(
        std::collections::hash_map::RandomState::new().build_hasher().finish() | 1,
    );
}

/// A random number (xorshift64*, per thread, seeded from the OS through `RandomState`): for
/// canary weights and new session keys, where predictability does not matter but cost does.
pub(crate) fn random() -> u64 {
    RANDOM.with(|state| {
        let mut x = state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

#[cfg(test)]
mod tests;
