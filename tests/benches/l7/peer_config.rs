//! nginx's and HAProxy's configuration for the same job as ours (one worker, keep-alive upstream,
//! the same headers, timeouts and connection limits), kept apart so the peers' settings can be
//! read side by side.

use std::path::Path;

use super::{proxies::Env, Ports, IDLE_TIMEOUT_S, UPSTREAM_PORT};

impl Env {
    pub(crate) fn nginx_conf(&self, dir: &Path, ports: Ports) -> String {
        format!(
            "worker_processes 1;\nworker_rlimit_nofile {nofile};\npid {d}/nginx.pid;\n\
             error_log stderr warn;\nevents {{ worker_connections {connections}; }}\n\
             http {{\n  access_log off;\n  keepalive_timeout {IDLE_TIMEOUT_S}s;\n  \
             keepalive_requests 100000000;\n  client_header_timeout {IDLE_TIMEOUT_S}s;\n{temp}  \
             upstream up {{\n    server 127.0.0.1:{UPSTREAM_PORT};\n    keepalive 256;\n    \
             keepalive_requests 100000000;\n    keepalive_timeout 30s;\n  }}\n  server {{\n    \
             listen 127.0.0.1:{http};\n    listen 127.0.0.1:{https} ssl http2;\n    \
             ssl_certificate {d}/../cert.pem;\n    ssl_certificate_key {d}/../key.pem;\n    \
             ssl_protocols TLSv1.2 TLSv1.3;\n    \
             location / {{\n      proxy_pass http://up;\n      proxy_http_version 1.1;\n      \
             proxy_set_header Connection \"\";\n      proxy_set_header Host $http_host;\n      \
             proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n      \
             proxy_set_header X-Forwarded-Proto $scheme;\n      \
             proxy_set_header X-Forwarded-Host $host;\n      \
             proxy_set_header X-Forwarded-Port $server_port;\n      \
             proxy_set_header X-Real-IP $remote_addr;\n      \
             proxy_set_header X-Request-ID $request_id;\n    }}\n  }}\n}}\n",
            d = dir.display(),
            temp = nginx_temp_paths(dir),
            http = ports.http,
            https = ports.https,
            nofile = self.nofile,
            connections = self.connection_limit(),
        )
    }

    /// Connections per proxy: all the descriptors it may open, less some for everything else.
    pub(crate) fn connection_limit(&self) -> u64 {
        self.nofile.saturating_sub(500)
    }

    /// HAProxy reserves two descriptors per connection (client and server side) and refuses a
    /// maxconn it cannot back that way unless `no strict-limits`; idle client connections hold
    /// one, so the idle-connection count (plus room) is enough and within the limit here.
    pub(crate) fn haproxy_maxconn(&self) -> u64 {
        (self.idle_connections as u64 + 1_000).min(self.connection_limit())
    }

    pub(crate) fn haproxy_conf(&self, ports: Ports) -> String {
        format!(
            "global\n  nbthread 1\n  maxconn {connections}\n  no strict-limits\n\n\
             defaults\n  mode http\n  maxconn {connections}\n  timeout connect 5s\n  \
             timeout client {IDLE_TIMEOUT_S}s\n  timeout server 60s\n  \
             timeout http-request {IDLE_TIMEOUT_S}s\n  timeout http-keep-alive {IDLE_TIMEOUT_S}s\n\n\
             frontend fe\n  bind 127.0.0.1:{http}\n  \
             bind 127.0.0.1:{https} ssl crt {pem} alpn h2,http/1.1\n  \
             unique-id-format %{{+X}}o%ci%cp%fi%fp%Ts%rt\n  option forwardfor\n  \
             http-request set-header X-Forwarded-Proto https if {{ ssl_fc }}\n  \
             http-request set-header X-Forwarded-Proto http if !{{ ssl_fc }}\n  \
             http-request set-header X-Forwarded-Host %[req.hdr(host)]\n  \
             http-request set-header X-Forwarded-Port %[dst_port]\n  \
             http-request set-header X-Real-IP %[src]\n  \
             http-request set-header X-Request-ID %[unique-id] unless {{ req.hdr(x-request-id) -m found }}\n  \
             default_backend be\n\n\
             backend be\n  server up 127.0.0.1:{UPSTREAM_PORT}\n",
            http = ports.http,
            https = ports.https,
            pem = self.dir.join("haproxy.pem").display(),
            connections = self.haproxy_maxconn(),
        )
    }
}

pub(crate) fn nginx_temp_paths(dir: &Path) -> String {
    ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
        .iter()
        .map(|kind| format!("  {kind}_temp_path {}/{kind}_temp;\n", dir.display()))
        .collect()
}
