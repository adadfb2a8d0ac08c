//! The three proxies as the measurements see them: starting the upstream and each proxy with the
//! same job, and ours' manifests (certificate Secret, Services, Ingress hosts).

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{ensure, Context as _, Result};
use rustls::pki_types::CertificateDer;

use super::{
    http_client::http_get,
    peer_config::nginx_temp_paths,
    process::{addr, ensure_free, pinned, Proc},
    Kind, Ports, Settings, IDLE_TIMEOUT_S, LOAD_CPU, PROXY_CPU, TLS_NAME, UPSTREAM_BODY,
    UPSTREAM_PORT,
};

pub(crate) struct Env {
    pub(crate) dir: PathBuf,
    pub(crate) agent: PathBuf,
    pub(crate) ours_flags: Vec<String>,
    /// RLIMIT_NOFILE the proxies inherit; their connection limits are set just below it.
    pub(crate) nofile: u64,
    pub(crate) idle_connections: usize,
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
    pub(crate) cert_der: CertificateDer<'static>,
}

pub(crate) struct Proxy {
    pub(crate) kind: Kind,
    pub(crate) ports: Ports,
    pub(crate) proc: Proc,
}

impl Proxy {
    pub(crate) fn check_answers(&mut self) -> Result<()> {
        let status = http_get(self.ports.http, "bench.example", "/")
            .with_context(|| format!("asking {}", self.kind.name()))?;
        self.proc.check_alive()?;
        ensure!(
            status == 200,
            "{} answered {status} instead of 200; its output:\n{}",
            self.kind.name(),
            self.proc.log_text()
        );
        Ok(())
    }
}

impl Env {
    pub(crate) fn prepare(settings: &Settings, dir: &Path, nofile: u64) -> Result<Self> {
        let certified = rcgen::generate_simple_self_signed(vec![
            TLS_NAME.to_string(),
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ])
        .context("generating the certificate")?;
        let env = Self {
            dir: dir.to_path_buf(),
            agent: settings.agent.clone(),
            ours_flags: settings.ours_flags.clone(),
            nofile,
            idle_connections: settings.idle_connections,
            cert_pem: certified.cert.pem(),
            key_pem: certified.key_pair.serialize_pem(),
            cert_der: certified.cert.der().clone(),
        };
        fs::write(dir.join("cert.pem"), &env.cert_pem)?;
        fs::write(dir.join("key.pem"), &env.key_pem)?;
        fs::write(
            dir.join("haproxy.pem"),
            format!("{}{}", env.cert_pem, env.key_pem),
        )?;
        let manifests = dir.join("manifests");
        fs::create_dir_all(&manifests)?;
        let mut text = base_manifests(&env.cert_pem, &env.key_pem, true);
        text += &service_manifests("up");
        text += "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: all, namespace: bench}\nspec:\n  ingressClassName: xdp\n  rules:\n  - http:\n      paths:\n      - {path: /, pathType: Prefix, backend: {service: {name: up, port: {number: 80}}}}\n";
        fs::write(manifests.join("bench.yaml"), text)?;
        Ok(env)
    }

    pub(crate) fn start_upstream(&self) -> Result<Proc> {
        ensure_free(UPSTREAM_PORT)?;
        let dir = self.dir.join("upstream");
        fs::create_dir_all(&dir)?;
        let conf = format!(
            "worker_processes 1;\nworker_rlimit_nofile {nofile};\npid {dir}/nginx.pid;\n\
             error_log stderr warn;\nevents {{ worker_connections {connections}; }}\n\
             http {{\n  access_log off;\n  keepalive_timeout {IDLE_TIMEOUT_S}s;\n  \
             keepalive_requests 100000000;\n{temp}  server {{\n    listen 127.0.0.1:{UPSTREAM_PORT} backlog=4096;\n    \
             default_type text/plain;\n    location / {{ return 200 {body:?}; }}\n  }}\n}}\n",
            dir = dir.display(),
            temp = nginx_temp_paths(&dir),
            body = UPSTREAM_BODY,
            nofile = self.nofile,
            connections = self.connection_limit(),
        );
        let file = dir.join("nginx.conf");
        fs::write(&file, conf)?;
        let mut command = pinned(&LOAD_CPU.to_string(), "nginx");
        command
            .arg("-p")
            .arg(&dir)
            .args(["-e", "stderr"])
            .arg("-c")
            .arg(&file)
            .args(["-g", "daemon off;"]);
        let mut proc = Proc::spawn("upstream nginx", command, dir.join("output.log"))?;
        proc.wait_listening(&[UPSTREAM_PORT], Duration::from_secs(10))?;
        let status = http_get(UPSTREAM_PORT, "bench.example", "/")?;
        ensure!(status == 200, "the upstream answered {status}");
        Ok(proc)
    }

    pub(crate) fn start_proxy(&self, kind: Kind) -> Result<Proxy> {
        let ports = kind.ports();
        ensure_free(ports.http)?;
        ensure_free(ports.https)?;
        let dir = self.dir.join(kind.name());
        fs::create_dir_all(&dir)?;
        let (command, timeout) = match kind {
            Kind::Ours => {
                let mut command = pinned(PROXY_CPU, &self.agent);
                command
                    .arg("run")
                    .arg("--manifests")
                    .arg(self.dir.join("manifests"))
                    .arg("--http-listen")
                    .arg(addr(ports.http).to_string())
                    .arg("--https-listen")
                    .arg(addr(ports.https).to_string())
                    .args(["--workers", "1", "--default-tls-secret", "bench/tls"])
                    .args(&self.ours_flags)
                    .env("RUST_LOG", "info");
                (command, Duration::from_secs(30))
            }
            Kind::Nginx => {
                let file = dir.join("nginx.conf");
                fs::write(&file, self.nginx_conf(&dir, ports))?;
                let mut command = pinned(PROXY_CPU, "nginx");
                command
                    .arg("-p")
                    .arg(&dir)
                    .args(["-e", "stderr"])
                    .arg("-c")
                    .arg(&file)
                    .args(["-g", "daemon off;"]);
                (command, Duration::from_secs(10))
            }
            Kind::Haproxy => {
                let file = dir.join("haproxy.cfg");
                fs::write(&file, self.haproxy_conf(ports))?;
                let mut command = pinned(PROXY_CPU, "haproxy");
                command.arg("-f").arg(&file).arg("-db");
                (command, Duration::from_secs(10))
            }
        };
        let mut proc = Proc::spawn(kind.name(), command, dir.join("output.log"))?;
        proc.wait_listening(&[ports.http, ports.https], timeout)?;
        Ok(Proxy { kind, ports, proc })
    }

    /// Ours on a manifest directory of its own, plain HTTP only (the scale measurement).
    pub(crate) fn start_ours_on(
        &self,
        name: &str,
        manifests: &Path,
        port: u16,
    ) -> Result<(Proc, Duration)> {
        ensure_free(port)?;
        let mut command = pinned(PROXY_CPU, &self.agent);
        command
            .arg("run")
            .arg("--manifests")
            .arg(manifests)
            .arg("--http-listen")
            .arg(addr(port).to_string())
            .args(["--https-listen", "off", "--workers", "1"])
            .args(&self.ours_flags)
            .env("RUST_LOG", "info");
        let mut proc = Proc::spawn(name, command, self.dir.join(format!("{name}.log")))?;
        let started = proc.wait_listening(&[port], Duration::from_secs(180))?;
        Ok((proc, started))
    }
}

/// The IngressClass and, if asked, the TLS Secret `bench/tls`.
pub(crate) fn base_manifests(cert_pem: &str, key_pem: &str, with_secret: bool) -> String {
    let mut text = "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: xdp}\nspec: {controller: xdp-ingress.dev/controller}\n".to_string();
    if with_secret {
        let indent = |pem: &str| {
            pem.lines()
                .map(|line| format!("    {line}\n"))
                .collect::<String>()
        };
        let _ = write!(
            text,
            "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: tls, namespace: bench}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
            indent(cert_pem),
            indent(key_pem)
        );
    }
    text
}

/// Service `bench/NAME` port 80 with an EndpointSlice pointing at the upstream.
pub(crate) fn service_manifests(name: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: bench}}\nspec: {{ports: [{{name: http, port: 80, targetPort: {UPSTREAM_PORT}}}]}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-a, namespace: bench, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{{name: http, port: {UPSTREAM_PORT}}}]\nendpoints: [{{addresses: [127.0.0.1], conditions: {{ready: true}}}}]\n"
    )
}

/// Ingress `bench/hN` for host hN.bench.example with `paths` to Service `bench/sN`, and the
/// Service.
pub(crate) fn host_manifests(n: usize, paths: &[&str]) -> String {
    let mut text = service_manifests(&format!("s{n}"));
    let _ = write!(
        text,
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: h{n}, namespace: bench}}\nspec:\n  ingressClassName: xdp\n  rules:\n  - host: h{n}.bench.example\n    http:\n      paths:\n"
    );
    for path in paths {
        let _ = writeln!(
            text,
            "      - {{path: {path}, pathType: Prefix, backend: {{service: {{name: s{n}, port: {{number: 80}}}}}}}}"
        );
    }
    text
}
