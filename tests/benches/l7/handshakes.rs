//! Measurement 3: full TLS 1.3 handshakes from a rustls client here (no resumption), per second
//! of proxy CPU.

use std::{
    collections::BTreeMap,
    io::Write,
    net::TcpStream,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _, Result};
use rustls::pki_types::{CertificateDer, ServerName};
use xdp_ingress_tests::proxy::clients::CertVerifier;

use super::{
    http_client::read_response,
    process::addr,
    proxies::{Env, Proxy},
    stats::{with_cpu, Samples},
    Kind, Settings, TLS_NAME,
};

/// TLS 1.3, no session resumption (no cache, no tickets): every connection is a full handshake.
pub(crate) fn handshake_client_config(
    cert: &CertificateDer<'static>,
) -> Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(CertVerifier::pinned(cert.clone(), provider)))
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// One connection: full handshake, one request, the whole response.
pub(crate) fn one_handshake(config: &Arc<rustls::ClientConfig>, port: u16) -> Result<()> {
    let tcp = TcpStream::connect_timeout(&addr(port), Duration::from_secs(5))?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let name = ServerName::try_from(TLS_NAME)?.to_owned();
    let connection = rustls::ClientConnection::new(config.clone(), name)?;
    let mut stream = rustls::StreamOwned::new(connection, tcp);
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: {TLS_NAME}\r\nConnection: close\r\n\r\n"
    )?;
    stream.flush()?;
    let status = read_response(&mut stream, &mut Vec::new())?;
    ensure!(status == 200, "status {status}");
    ensure!(
        stream.conn.handshake_kind() == Some(rustls::HandshakeKind::Full),
        "not a full handshake: {:?}",
        stream.conn.handshake_kind()
    );
    Ok(())
}

/// Handshakes from `threads` client threads for `secs`: (completed, failed, first error).
pub(crate) fn handshake_load(
    config: &Arc<rustls::ClientConfig>,
    port: u16,
    secs: u64,
    threads: usize,
) -> (u64, u64, Option<String>) {
    let done = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let first_error = std::sync::Mutex::new(None);
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    match one_handshake(config, port) {
                        Ok(()) => {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(error) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            let mut first = first_error.lock().unwrap();
                            if first.is_none() {
                                *first = Some(format!("{error:#}"));
                            }
                        }
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_secs(secs));
        stop.store(true, Ordering::Relaxed);
    });
    (
        done.into_inner(),
        failed.into_inner(),
        first_error.into_inner().unwrap(),
    )
}

pub(crate) struct Handshakes {
    pub(crate) per_cpu_second: Samples,
    pub(crate) per_second: Samples,
    pub(crate) errors: BTreeMap<Kind, (u64, Option<String>)>,
}

pub(crate) const HANDSHAKE_THREADS: usize = 16;

pub(crate) fn handshakes(
    settings: &Settings,
    env: &Env,
    proxies: &mut BTreeMap<Kind, Proxy>,
) -> Result<Handshakes> {
    println!(
        "\n3. Full TLS 1.3 handshakes, {HANDSHAKE_THREADS} client threads, {} s",
        settings.handshake_secs
    );
    let config = handshake_client_config(&env.cert_der)?;
    for proxy in proxies.values() {
        one_handshake(&config, proxy.ports.https)
            .with_context(|| format!("a TLS request to {}", proxy.kind.name()))?;
        handshake_load(&config, proxy.ports.https, 1, HANDSHAKE_THREADS); // warm-up
    }
    let mut result = Handshakes {
        per_cpu_second: Samples::default(),
        per_second: Samples::default(),
        errors: BTreeMap::new(),
    };
    for rep in 0..settings.reps {
        for proxy in proxies.values_mut() {
            let started = Instant::now();
            let ((done, failed, first), us) = with_cpu(&proxy.proc, || {
                Ok(handshake_load(
                    &config,
                    proxy.ports.https,
                    settings.handshake_secs,
                    HANDSHAKE_THREADS,
                ))
            })?;
            let wall = started.elapsed().as_secs_f64();
            proxy.proc.check_alive()?;
            let per_cpu = done as f64 / (us / 1e6);
            println!(
                "  [{}] {:<12} {:>7.0} handshakes/s  {:>7.0} per proxy CPU-second  failed {failed}{}",
                rep + 1,
                proxy.kind.name(),
                done as f64 / wall,
                per_cpu,
                first.as_deref().map(|e| format!(" (first: {e})")).unwrap_or_default()
            );
            result.per_cpu_second.push(proxy.kind, per_cpu);
            result.per_second.push(proxy.kind, done as f64 / wall);
            let entry = result.errors.entry(proxy.kind).or_default();
            entry.0 += failed;
            if entry.1.is_none() {
                entry.1 = first;
            }
        }
    }
    Ok(result)
}
