//! The proxy as a sink: its settings, the plans applied to it (the routing table and the
//! certificates, each swapped in with one atomic store), its listeners started and drained, and
//! its `/metrics` collector.
//!
//! What happens to a connection and its requests lives beside it, in the order they meet it:
//! `listener` (accepting, TLS), `connection` (a connection's life, keep-alive, parking),
//! `forward` (the request path), `refusal` (the answers the proxy gives itself) and `body` (the
//! response body, where a request is counted when it ends).

use std::{
    fmt,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use hyper_util::{
    rt::{TokioExecutor, TokioTimer},
    server::conn::auto,
};
use prometheus_client::{collector::Collector, encoding::DescriptorEncoder};
use tokio::net::TcpListener;

use crate::translate::l7::{BackendId, L7Plan};

use super::{
    access_log::AccessLog,
    connection::{return_parked_memory, run_parking_lot},
    headers::RequestIds,
    lifetime::ListenerSlots,
    listener::accept_loop,
    metrics::{self, ProxyCounters, ProxyScrape},
    parking::ParkingLot,
    router::{EndpointRegistry, Router},
    tls::{CertBook, CertExpiry, CertProblem, TlsError},
};

use super::listener::BoundListeners;

/// Listeners, timeouts and limits (the `run` flags).
#[derive(Clone, Debug)]
pub struct ProxySettings {
    /// Plain HTTP listener (`None`: off).
    pub http_listen: Option<SocketAddr>,
    /// HTTPS listener (`None`: off).
    pub https_listen: Option<SocketAddr>,
    /// Connecting to an endpoint; then the next endpoint, else 504 (a route's
    /// `proxy-connect-timeout` replaces it).
    pub upstream_connect_timeout: Duration,
    /// From the request sent to the response head, and between two body reads; then 504 (a
    /// route's `proxy-read-timeout` replaces it).
    pub upstream_response_timeout: Duration,
    /// Pooled upstream connections idle longer are closed.
    pub upstream_idle_timeout: Duration,
    /// A client must send a complete request head (and finish a TLS handshake) within this,
    /// once it has started one.
    pub client_header_timeout: Duration,
    /// An HTTP/1.1 keep-alive connection waiting for its next request, or an HTTP/2 connection
    /// without a stream, is closed after this (HTTP/2: GOAWAY first).
    pub client_idle_timeout: Duration,
    /// A write to the client that makes no progress for this closes the connection (and so its
    /// upstream connections); also HTTP/2 responses waiting this long for the client's window.
    pub client_send_timeout: Duration,
    /// A request body that brings no bytes for this while the proxy waits for it ends the
    /// request (408 when the endpoint has not answered yet).
    pub client_body_timeout: Duration,
    /// Connections per listener (parked ones included); at the cap, the idle connection that
    /// waited longest is closed for a new one, else the new one is refused.
    pub max_connections: usize,
    /// Largest request head, in bytes; larger gets 431.
    pub max_header_bytes: usize,
    /// Largest request body, in bytes, over every route's own limit; larger gets 413. `None`:
    /// no ceiling.
    pub max_body_bytes: Option<u64>,
    /// Write one access-log line per request.
    pub access_log: bool,
    /// Keep `%2F` and `%5C` in request paths (see [`path`](super::path)); else 400.
    pub allow_encoded_slashes: bool,
    /// Pass request headers whose names contain `_`; else they are dropped.
    pub allow_underscores_in_headers: bool,
    /// Upgrade protocols passed to endpoints (lower-case; `h2c` never is).
    pub upgrades: Vec<String>,
    /// `--metrics-compat nginx`: also export ingress-nginx's families, with these constant
    /// labels; `None`: not exported, and requests record nothing for them.
    pub nginx_metrics: Option<super::NginxLabels>,
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self {
            http_listen: Some(SocketAddr::from(([0, 0, 0, 0], 80))),
            https_listen: Some(SocketAddr::from(([0, 0, 0, 0], 443))),
            upstream_connect_timeout: Duration::from_secs(5),
            upstream_response_timeout: Duration::from_secs(60),
            upstream_idle_timeout: Duration::from_secs(30),
            client_header_timeout: Duration::from_secs(10),
            client_idle_timeout: Duration::from_secs(60),
            client_send_timeout: Duration::from_secs(60),
            client_body_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_header_bytes: 32 * 1024,
            max_body_bytes: None,
            access_log: false,
            allow_encoded_slashes: false,
            allow_underscores_in_headers: false,
            upgrades: vec!["websocket".to_string()],
            nginx_metrics: None,
        }
    }
}

/// Errors starting the proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS setup failed.
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    /// A rustls configuration error.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The access log writer could not start.
    #[error("starting the access log: {0}")]
    AccessLog(std::io::Error),
}

/// What applying a plan did.
#[derive(Debug)]
pub struct ApplyReport {
    /// Backends in the new table.
    pub backends: usize,
    /// Certificates that could not be used (the previous one stays where there was one).
    pub certificate_problems: Vec<CertProblem>,
    /// Time to build and swap the table and the certificates.
    pub elapsed: Duration,
}

/// What every connection and request shares.
pub(super) struct Shared {
    pub(super) router: ArcSwap<Router>,
    pub(super) settings: ProxySettings,
    pub(super) request_ids: RequestIds,
    pub(super) access_log: Option<AccessLog>,
    pub(super) http: auto::Builder<TokioExecutor>,
    pub(super) tls: tokio_rustls::TlsAcceptor,
    /// Sent once on drain; every listener and connection holds a receiver.
    pub(super) drain: tokio::sync::watch::Sender<()>,
    /// Counters that belong to no backend (shared with every connection's send timer).
    pub(super) counters: Arc<ProxyCounters>,
    /// Where quiet plain connections wait (`None`: no epoll set could be made; then they wait in
    /// their tasks, as TLS connections do).
    pub(super) parking: Option<ParkingLot>,
}

/// The proxy: apply plans to it, serve with it.
pub struct Proxy {
    shared: Arc<Shared>,
    registry: EndpointRegistry,
    certs: CertBook,
}

impl Proxy {
    /// A proxy with an empty routing table and the self-signed certificate.
    pub fn new(settings: ProxySettings) -> Result<Self, ProxyError> {
        let provider = super::tls::crypto_provider();
        let certs = CertBook::new(provider.clone())?;
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(certs.resolver());
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mut http = auto::Builder::new(TokioExecutor::new());
        http.http1()
            .timer(TokioTimer::new())
            // hyper's header timer also runs while a connection waits for its next request, so
            // it is the idle timeout; slow heads are cut by the head guard's shorter timer.
            .header_read_timeout(
                settings
                    .client_idle_timeout
                    .max(settings.client_header_timeout),
            )
            .max_buf_size(settings.max_header_bytes.max(8192));
        http.http2()
            .timer(TokioTimer::new())
            // PINGs find dead peers of connections that wait (for an endpoint, say) without
            // writing, where the send timeout cannot see them.
            .keep_alive_interval(settings.client_idle_timeout.max(Duration::from_secs(2)) / 2)
            .keep_alive_timeout(settings.client_header_timeout)
            .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX));
        let access_log = if settings.access_log {
            Some(AccessLog::start(Box::new(std::io::stdout())).map_err(ProxyError::AccessLog)?)
        } else {
            None
        };
        let mut registry = EndpointRegistry::default();
        registry.nginx_metrics = settings.nginx_metrics.is_some();
        Ok(Self {
            shared: Arc::new(Shared {
                router: ArcSwap::from_pointee(Router::default()),
                settings,
                request_ids: RequestIds::default(),
                access_log,
                http,
                tls: tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
                drain: tokio::sync::watch::channel(()).0,
                counters: Arc::default(),
                parking: match ParkingLot::new() {
                    Ok(lot) => Some(lot),
                    Err(error) => {
                        tracing::warn!(%error, "no parking lot; quiet connections park in their tasks");
                        None
                    }
                },
            }),
            registry,
            certs,
        })
    }

    /// Swaps in the routing table and certificates of `plan`. Requests in flight finish on the
    /// table they started with; connections stay open.
    pub fn apply(&mut self, plan: &L7Plan) -> ApplyReport {
        let started = Instant::now();
        let router = self.registry.router(plan);
        let backends = router.backend_count();
        let certificate_problems = self.certs.apply(&plan.tls, plan.default_tls.as_ref());
        self.shared.router.store(Arc::new(router));
        ApplyReport {
            backends,
            certificate_problems,
            elapsed: started.elapsed(),
        }
    }

    /// Swaps in a router whose backends `changed` follow `plan` (their endpoints changed; the
    /// routes did not). Cheaper than [`Proxy::apply`]: nothing else is rebuilt.
    pub fn apply_endpoints(&mut self, plan: &L7Plan, changed: &[BackendId]) -> ApplyReport {
        let started = Instant::now();
        let current = self.shared.router.load_full();
        let router = self.registry.with_new_endpoints(&current, plan, changed);
        let backends = router.backend_count();
        self.shared.router.store(Arc::new(router));
        ApplyReport {
            backends,
            certificate_problems: Vec::new(),
            elapsed: started.elapsed(),
        }
    }

    /// Binds the configured listeners and serves them on the current runtime until it stops.
    /// Returns the bound addresses (port 0 resolved), plain first.
    pub async fn listen(&self) -> Result<BoundListeners, ProxyError> {
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ProxyError::Bind { addr, source })
        };
        let mut bound = BoundListeners::default();
        let max = self.shared.settings.max_connections;
        if let Some(addr) = self.shared.settings.http_listen {
            let listener = bind(addr).await?;
            bound.http = listener.local_addr().ok();
            let slots = ListenerSlots::new(bound.http.map_or(0, |a| a.port()), max);
            tokio::spawn(accept_loop(self.shared.clone(), listener, false, slots));
        }
        if let Some(addr) = self.shared.settings.https_listen {
            let listener = bind(addr).await?;
            bound.https = listener.local_addr().ok();
            let slots = ListenerSlots::new(bound.https.map_or(0, |a| a.port()), max);
            tokio::spawn(accept_loop(self.shared.clone(), listener, true, slots));
        }
        tokio::spawn(return_parked_memory(self.shared.clone()));
        tokio::spawn(run_parking_lot(self.shared.clone()));
        Ok(bound)
    }

    /// Stops accepting, lets every connection finish what it is doing (see
    /// `connection::serve_until_parked`), and returns when all have closed or `timeout` has
    /// passed; returns how many were still open then.
    pub async fn drain(&self, timeout: Duration) -> usize {
        let _ = self.shared.drain.send(());
        let _ = tokio::time::timeout(timeout, self.shared.drain.closed()).await;
        self.shared.drain.receiver_count()
    }

    /// Access-log lines dropped because the writer fell behind.
    pub fn access_log_dropped(&self) -> u64 {
        self.shared
            .access_log
            .as_ref()
            .map_or(0, AccessLog::dropped)
    }

    /// The leaf certificates' notAfter per Secret in use (for `inspect certs`).
    pub fn cert_expiry(&self) -> Arc<Vec<(crate::model::ObjectName, i64)>> {
        self.certs.expiry().load_full()
    }

    /// The proxy's `/metrics` collector: it reads the router current at scrape time.
    pub fn collector(&self) -> ProxyCollector {
        ProxyCollector {
            shared: self.shared.clone(),
            cert_expiry: self.certs.expiry(),
        }
    }
}

impl Proxy {
    /// The writer of ingress-nginx's families (`--metrics-compat nginx`); `None` without it.
    pub fn nginx_metrics(&self) -> Option<NginxCollector> {
        self.shared.settings.nginx_metrics.as_ref()?;
        Some(NginxCollector {
            shared: self.shared.clone(),
            cert_expiry: self.certs.expiry(),
        })
    }
}

/// Writes ingress-nginx's families for `/metrics` (see [`metrics::nginx`]).
pub struct NginxCollector {
    shared: Arc<Shared>,
    cert_expiry: CertExpiry,
}

impl fmt::Debug for NginxCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NginxCollector").finish_non_exhaustive()
    }
}

impl NginxCollector {
    /// Appends the families to `out` (before `# EOF`), with the last reload's result.
    pub fn render(&self, out: &mut String, last_reload_successful: Option<i64>) {
        let Some(labels) = &self.shared.settings.nginx_metrics else {
            return;
        };
        let router = self.shared.router.load();
        let cert_expiry = self.cert_expiry.load();
        metrics::nginx::render(
            &metrics::nginx::NginxScrape {
                labels,
                routes: router.routes(),
                unrouted: &self.shared.counters.nginx_unrouted,
                tls_hosts: router.tls_hosts(),
                cert_expiry: &cert_expiry,
                last_reload_successful,
            },
            out,
        );
    }
}

/// Encodes the proxy's counters for `/metrics` (see [`metrics::encode`]).
pub struct ProxyCollector {
    shared: Arc<Shared>,
    cert_expiry: CertExpiry,
}

impl fmt::Debug for ProxyCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyCollector").finish_non_exhaustive()
    }
}

impl Collector for ProxyCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let router = self.shared.router.load();
        let cert_expiry = self.cert_expiry.load();
        metrics::encode(
            &ProxyScrape {
                backends: router.backends(),
                counters: &self.shared.counters,
                cert_expiry: &cert_expiry,
                access_log_dropped: self.shared.access_log.as_ref().map(AccessLog::dropped),
            },
            &mut encoder,
        )
    }
}
