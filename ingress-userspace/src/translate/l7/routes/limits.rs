//! A route's limits, as ingress-nginx's `proxy-*` and `limit-*` annotations set them: the
//! [`UpstreamPolicy`] (body size, upstream timeouts, when to try another endpoint) that every
//! route carries, and the per-client [`RateLimiter`] and [`ConnectionLimiter`] that a route
//! reaches through its filters. The translator fills them in once per plan; the proxy only reads
//! them (the limiters' per-client state is the one thing that changes, see `proxy::limits`).
//!
//! A limiter is one per Ingress, shared by all its routes, as ingress-nginx declares one
//! `limit_req_zone` / `limit_conn_zone` per Ingress: a client's requests to any path of the
//! Ingress share its budget.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, LazyLock, Mutex},
    time::{Duration, Instant},
};

use http::StatusCode;

use super::Cidr;

/// ingress-nginx's `proxy-body-size` default (its ConfigMap's `proxy-body-size: 1m`).
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1024 * 1024;
/// ingress-nginx's `proxy-send-timeout` default; read and connect timeouts default to the
/// proxy's `--upstream-response-timeout` and `--upstream-connect-timeout` (60 s and 5 s, as
/// ingress-nginx's).
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// ingress-nginx's `proxy-next-upstream-tries` default.
pub const DEFAULT_NEXT_UPSTREAM_TRIES: u32 = 3;

/// How a route talks to its endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpstreamPolicy {
    /// Largest request body (`proxy-body-size`); `None`: unlimited (`0`). The proxy's
    /// `--max-body-bytes` is a ceiling over every route.
    pub max_body_bytes: Option<u64>,
    /// `proxy-connect-timeout`; `None`: `--upstream-connect-timeout`.
    pub connect_timeout: Option<Duration>,
    /// `proxy-send-timeout`: between two successive writes of the request to the endpoint.
    pub send_timeout: Duration,
    /// `proxy-read-timeout`: between two successive reads from the endpoint (the request sent
    /// to the response head, then between body reads); `None`: `--upstream-response-timeout`.
    pub read_timeout: Option<Duration>,
    /// `proxy-next-upstream`: which failures send the request to another endpoint.
    pub next_upstream: NextUpstream,
    /// `proxy-next-upstream-tries`: endpoints tried at most, the first included; 0: no limit
    /// (each endpoint once).
    pub next_upstream_tries: u32,
    /// `proxy-next-upstream-timeout`: no new try after this much time; `None`: no limit.
    pub next_upstream_timeout: Option<Duration>,
}

impl Default for UpstreamPolicy {
    fn default() -> Self {
        Self {
            max_body_bytes: Some(DEFAULT_MAX_BODY_BYTES),
            connect_timeout: None,
            send_timeout: DEFAULT_SEND_TIMEOUT,
            read_timeout: None,
            next_upstream: NextUpstream::DEFAULT,
            next_upstream_tries: DEFAULT_NEXT_UPSTREAM_TRIES,
            next_upstream_timeout: None,
        }
    }
}

impl UpstreamPolicy {
    /// The default policy, shared: routes without `proxy-*` annotations all point at it.
    pub fn shared_default() -> Arc<Self> {
        static DEFAULT: LazyLock<Arc<UpstreamPolicy>> =
            LazyLock::new(|| Arc::new(UpstreamPolicy::default()));
        DEFAULT.clone()
    }
}

/// nginx's `proxy_next_upstream` conditions, as bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NextUpstream(u16);

impl NextUpstream {
    /// Never another endpoint (`off`).
    pub const OFF: Self = Self(0);
    /// Connecting, sending the request or reading the response head failed.
    pub const ERROR: Self = Self(1);
    /// Connecting, sending or reading the response head timed out.
    pub const TIMEOUT: Self = Self(1 << 1);
    /// The response head was not valid HTTP.
    pub const INVALID_HEADER: Self = Self(1 << 2);
    /// The endpoint answered 500.
    pub const HTTP_500: Self = Self(1 << 3);
    /// 502.
    pub const HTTP_502: Self = Self(1 << 4);
    /// 503.
    pub const HTTP_503: Self = Self(1 << 5);
    /// 504.
    pub const HTTP_504: Self = Self(1 << 6);
    /// 403.
    pub const HTTP_403: Self = Self(1 << 7);
    /// 404.
    pub const HTTP_404: Self = Self(1 << 8);
    /// 429.
    pub const HTTP_429: Self = Self(1 << 9);
    /// Requests with a non-idempotent method (POST, LOCK, PATCH) may go to another endpoint
    /// after they were sent to one.
    pub const NON_IDEMPOTENT: Self = Self(1 << 10);
    /// ingress-nginx's default, `error timeout`.
    pub const DEFAULT: Self = Self(Self::ERROR.0 | Self::TIMEOUT.0);

    /// The condition of one word of the annotation (`off` is handled by the caller).
    pub fn of_word(word: &str) -> Option<Self> {
        Some(match word {
            "error" => Self::ERROR,
            "timeout" => Self::TIMEOUT,
            "invalid_header" => Self::INVALID_HEADER,
            "http_500" => Self::HTTP_500,
            "http_502" => Self::HTTP_502,
            "http_503" => Self::HTTP_503,
            "http_504" => Self::HTTP_504,
            "http_403" => Self::HTTP_403,
            "http_404" => Self::HTTP_404,
            "http_429" => Self::HTTP_429,
            "non_idempotent" => Self::NON_IDEMPOTENT,
            _ => return None,
        })
    }

    /// Both sets of conditions.
    pub const fn with(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// Whether every condition of `other` is in this set.
    pub const fn has(self, other: Self) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }

    /// Whether an endpoint answering `status` sends the request to the next one.
    pub fn on_status(self, status: StatusCode) -> bool {
        let condition = match status.as_u16() {
            500 => Self::HTTP_500,
            502 => Self::HTTP_502,
            503 => Self::HTTP_503,
            504 => Self::HTTP_504,
            403 => Self::HTTP_403,
            404 => Self::HTTP_404,
            429 => Self::HTTP_429,
            _ => return false,
        };
        self.has(condition)
    }

    /// Whether any response status is a reason to try another endpoint.
    pub fn any_status(self) -> bool {
        self.0
            & !(Self::ERROR.0 | Self::TIMEOUT.0 | Self::INVALID_HEADER.0 | Self::NON_IDEMPOTENT.0)
            != 0
    }
}

/// The shards of a limiter's per-client table: a request locks one shard only (clients spread
/// by address), so concurrent requests of different clients rarely wait for each other.
pub(crate) const SHARDS: usize = 16;

/// Most clients a shard remembers; when full, clients whose state has run out are forgotten
/// first (nginx's zone evicts its least recently used entries likewise).
pub(crate) const CLIENTS_PER_SHARD: usize = 4096;

/// `limit-rps` / `limit-rpm` of one Ingress: nginx's `limit_req` (a leaky bucket per client
/// address, `burst = rate × limit-burst-multiplier`, `nodelay`).
#[derive(Debug)]
pub struct RateLimiter {
    /// Requests per second or per minute, as configured (for `inspect` and problems).
    pub rate: Rate,
    /// Excess requests accepted at once, in thousandths of a request (nginx's unit).
    pub(crate) burst_milli: u64,
    /// Thousandths of a request the bucket drains per millisecond.
    pub(crate) drain_per_ms_milli: f64,
    /// Clients never limited (`limit-allowlist` / `limit-whitelist`).
    pub exempt: Arc<[Cidr]>,
    /// The answer's status when refused (`limit-req-status-code`, 503 by default).
    pub status: StatusCode,
    /// Per client: excess (thousandths of a request) and when it was last updated (ms since
    /// `epoch`).
    pub(crate) clients: [Mutex<HashMap<IpAddr, (u64, u64)>>; SHARDS],
    pub(crate) epoch: Instant,
}

/// A configured request rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rate {
    /// `limit-rps`.
    PerSecond(u32),
    /// `limit-rpm`.
    PerMinute(u32),
}

impl RateLimiter {
    /// A limiter of `rate` with `burst_multiplier × rate` excess requests allowed.
    pub fn new(rate: Rate, burst_multiplier: u32, exempt: Arc<[Cidr]>, status: StatusCode) -> Self {
        let (per_unit, unit_ms) = match rate {
            Rate::PerSecond(n) => (n, 1_000.0),
            Rate::PerMinute(n) => (n, 60_000.0),
        };
        Self {
            rate,
            burst_milli: u64::from(per_unit) * u64::from(burst_multiplier) * 1000,
            drain_per_ms_milli: f64::from(per_unit) * 1000.0 / unit_ms,
            exempt,
            status,
            clients: Default::default(),
            epoch: Instant::now(),
        }
    }
}

/// `limit-connections` of one Ingress: nginx's `limit_conn` (requests in progress per client
/// address, which is what nginx counts for HTTP).
#[derive(Debug)]
pub struct ConnectionLimiter {
    /// Most requests in progress per client.
    pub limit: u32,
    /// Clients never limited.
    pub exempt: Arc<[Cidr]>,
    /// The answer's status when refused (`limit-conn-status-code`, 503 by default).
    pub status: StatusCode,
    /// Requests in progress per client (absent: none).
    pub(crate) clients: [Mutex<HashMap<IpAddr, u32>>; SHARDS],
}

impl ConnectionLimiter {
    /// A limiter of `limit` requests in progress per client.
    pub fn new(limit: u32, exempt: Arc<[Cidr]>, status: StatusCode) -> Self {
        Self {
            limit,
            exempt,
            status,
            clients: Default::default(),
        }
    }
}

/// The shard of `client`'s state.
pub(crate) fn shard_of(client: IpAddr) -> usize {
    // The low bits of the address vary most between clients.
    let low = match client {
        IpAddr::V4(v4) => u32::from(v4),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            u32::from_be_bytes([o[12], o[13], o[14], o[15]])
                ^ u32::from_be_bytes([o[4], o[5], o[6], o[7]])
        }
    };
    (low as usize ^ (low >> 8) as usize) % SHARDS
}
