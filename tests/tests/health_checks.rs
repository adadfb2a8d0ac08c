//! kube-proxy's health checks served by the agent (issue 13): each `externalTrafficPolicy:
//! Local` Service's `healthCheckNodePort` answers 200 with the number of ready endpoints on this
//! node, 503 with none or only terminating ones; the node's `/healthz` and `/livez` on
//! `--healthz-listen`. The real binary with its XDP datapath on a veth in a namespace the test
//! makes (so the fixed ports 10256 and 32100... do not clash with the host), curl as the
//! client, the manifest edited live.
//!
//! The binary is `$XDP_INGRESS_BIN` or `target/<profile>/xdp-ingress`.

use std::{path::Path, time::Duration};

use anyhow::{bail, ensure, Context as _, Result};
use xdp_ingress_tests::{
    agent::{self, Agent, AgentProcess},
    netns::Netns,
    proxy::manifests::TempDir,
};

/// The node's address, on the veth the agent attaches to.
const NODE_IP: &str = "192.0.2.1";
/// The longest a start or a change may take to show.
const SETTLE: Duration = Duration::from_secs(20);

/// A LoadBalancer Service with `externalTrafficPolicy: Local` and the given health check port.
fn local_service(name: &str, created: &str, vip: &str, health_port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: demo, creationTimestamp: \"{created}\"}}\nspec:\n  type: LoadBalancer\n  loadBalancerIP: {vip}\n  externalTrafficPolicy: Local\n  healthCheckNodePort: {health_port}\n  ports: [{{name: http, port: 80}}]\n"
    )
}

/// An EndpointSlice of `service` with the given endpoint lines.
fn slice(service: &str, endpoints: &[&str]) -> String {
    let lines: String = endpoints.iter().map(|e| format!("- {e}\n")).collect();
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {service}-1, namespace: demo, labels: {{kubernetes.io/service-name: {service}}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n{lines}"
    )
}

/// Writes `file` atomically (the agent skips names not ending in `.yaml`).
fn write(dir: &Path, file: &str, text: &str) -> Result<()> {
    let staging = dir.join(format!("{file}.tmp"));
    std::fs::write(&staging, text).with_context(|| format!("writing {}", staging.display()))?;
    std::fs::rename(&staging, dir.join(file)).context("renaming")
}

/// `web`'s slice: two ready endpoints on n1 (one without conditions), one on n2.
fn web_slice(n1_terminating: bool) -> String {
    let conditions = if n1_terminating {
        ", conditions: {ready: false, serving: true, terminating: true}"
    } else {
        ""
    };
    slice(
        "web",
        &[
            &format!("{{addresses: [198.51.100.11], nodeName: n1{conditions}}}"),
            &format!("{{addresses: [198.51.100.12], nodeName: n1{conditions}}}"),
            "{addresses: [198.51.100.21], nodeName: n2, conditions: {ready: true}}",
        ],
    )
}

/// What curl got.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<String>,
    body: String,
}

impl Answer {
    fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_str(&self.body).with_context(|| format!("not JSON: {:?}", self.body))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find_map(|h| {
            let (n, v) = h.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// GET `http://NODE_IP:port/path` with curl inside the namespace; `Err` when nothing answers.
fn get(netns: &Netns, port: u16, path: &str) -> Result<Answer> {
    let url = format!("http://{NODE_IP}:{port}{path}");
    let output = netns.exec(&["curl", "-sS", "-i", "--max-time", "5", &url])?;
    ensure!(
        output.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).context("curl output")?;
    let (head, body) = text.split_once("\r\n\r\n").context("no end of head")?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    Ok(Answer {
        status,
        headers: lines.map(str::to_string).collect(),
        body: body.to_string(),
    })
}

/// Polls `port` until its answer satisfies `ok` (a change is applied asynchronously after the
/// file is written); the last answer.
fn until(netns: &Netns, port: u16, what: &str, ok: impl Fn(&Answer) -> bool) -> Result<Answer> {
    let deadline = std::time::Instant::now() + SETTLE;
    loop {
        let answer = get(netns, port, "/");
        match answer {
            Ok(answer) if ok(&answer) => return Ok(answer),
            _ if std::time::Instant::now() >= deadline => {
                bail!("{what}: still not after {SETTLE:?}; last answer {answer:?}")
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Whether one line of the agent's output contains all of `parts`.
fn logged(agent: &AgentProcess, parts: &[&str]) -> bool {
    agent
        .output()
        .iter()
        .any(|line| parts.iter().all(|p| line.contains(p)))
}

#[test]
fn health_check_ports_answer_like_kube_proxy_and_follow_the_manifests() -> Result<()> {
    let netns = Netns::new("xe-hc")?;
    netns.ip(&["link", "add", "hc0", "type", "veth", "peer", "name", "hc1"])?;
    netns.ip(&["addr", "add", &format!("{NODE_IP}/24"), "dev", "hc0"])?;
    netns.ip(&["link", "set", "hc0", "up"])?;
    netns.ip(&["link", "set", "hc1", "up"])?;
    // Someone else holds 32102 in the node's namespace.
    let squatter = netns.run_inside(|| {
        std::net::TcpListener::bind("0.0.0.0:32102").context("binding the squatter")
    })?;

    let dir = TempDir::new("xdp-ingress-health")?;
    let services = [
        local_service("web", "2026-01-01T00:00:00Z", "203.0.113.10", 32100),
        local_service("draining", "2026-01-01T00:00:00Z", "203.0.113.11", 32101),
        // Younger than web, same health check port: reported, web keeps it.
        local_service("clash", "2026-02-01T00:00:00Z", "203.0.113.12", 32100),
        local_service("busy", "2026-01-01T00:00:00Z", "203.0.113.13", 32102),
    ]
    .join("---\n");
    write(dir.path(), "services.yaml", &services)?;
    write(dir.path(), "web-slice.yaml", &web_slice(false))?;
    let draining = slice(
        "draining",
        &["{addresses: [198.51.100.13], nodeName: n1, conditions: {ready: false, serving: true, terminating: true}}"],
    );
    write(dir.path(), "draining-slice.yaml", &draining)?;

    // `validate` on the same directory, as n1: the health checks it would serve, and the clash.
    let validated = std::process::Command::new(agent::binary()?)
        .args([
            "validate",
            "--node-name",
            "n1",
            "--node-ip",
            NODE_IP,
            "--manifests",
        ])
        .arg(dir.path())
        .env("NO_COLOR", "1")
        .output()
        .context("running validate")?;
    let stdout = String::from_utf8_lossy(&validated.stdout);
    let stderr = String::from_utf8_lossy(&validated.stderr);
    ensure!(
        !validated.status.success(),
        "the clash is a problem: {stdout}"
    );
    ensure!(
        stdout.contains("health check :32100 service demo/web: 2 local endpoint(s)"),
        "{stdout}"
    );
    ensure!(
        stderr
            .lines()
            .any(|l| l.contains("Service demo/clash")
                && l.contains("field spec.healthCheckNodePort")),
        "{stderr}"
    );

    let mut agent = Agent::manifests(dir.path())
        .in_netns(netns.name())
        .interfaces(&["hc0".to_string()])
        .args([
            "--bpffs",
            "off",
            "--http-listen",
            "off",
            "--https-listen",
            "off",
        ])
        .args(["--admin-listen", "off", "--node-name", "n1"])
        .start()?;
    agent.wait_running(SETTLE)?;

    // web: two ready endpoints on n1 (n2's does not count).
    let web = get(&netns, 32100, "/")?;
    ensure!(web.status == 200, "{web:?}");
    ensure!(
        web.header("content-type") == Some("application/json"),
        "{web:?}"
    );
    ensure!(
        web.header("x-content-type-options") == Some("nosniff"),
        "{web:?}"
    );
    let json = web.json()?;
    ensure!(
        json["service"]["namespace"] == "demo" && json["service"]["name"] == "web",
        "{json}"
    );
    ensure!(json["localEndpoints"] == 2, "{json}");
    ensure!(json["serviceProxyHealthy"] == true, "{json}");

    // draining: only a terminating endpoint here.
    let draining = get(&netns, 32101, "/healthz")?;
    ensure!(draining.status == 503, "{draining:?}");
    ensure!(draining.json()?["localEndpoints"] == 0, "{draining:?}");

    // The node's health server.
    let healthz = get(&netns, 10256, "/healthz")?;
    ensure!(healthz.status == 200, "{healthz:?}");
    let json = healthz.json()?;
    ensure!(json["nodeEligible"] == true, "{json}");
    ensure!(
        json["lastUpdated"]
            .as_str()
            .is_some_and(|t| t.ends_with(" +0000 UTC")),
        "{json}"
    );
    ensure!(get(&netns, 10256, "/livez")?.status == 200);

    // The clash and the port in use are reported; everything else is served.
    ensure!(
        logged(
            &agent,
            &[
                "Service demo/clash",
                "field spec.healthCheckNodePort",
                "32100"
            ]
        ),
        "no clash problem:\n{}",
        agent.output().join("\n")
    );
    ensure!(
        logged(
            &agent,
            &["Service demo/busy", "cannot listen on 0.0.0.0:32102"]
        ),
        "no port-in-use problem:\n{}",
        agent.output().join("\n")
    );

    // web's local endpoints start terminating: 503, none counted.
    write(dir.path(), "web-slice.yaml", &web_slice(true))?;
    let gone = until(&netns, 32100, "web down to 0", |a| a.status == 503)?;
    ensure!(gone.json()?["localEndpoints"] == 0, "{gone:?}");
    write(dir.path(), "web-slice.yaml", &web_slice(false))?;
    let back = until(&netns, 32100, "web back to 2", |a| a.status == 200)?;
    ensure!(back.json()?["localEndpoints"] == 2, "{back:?}");

    // The squatter leaves: the next pass binds busy's port.
    drop(squatter);
    write(dir.path(), "services.yaml", &format!("{services}\n"))?;
    let busy = until(&netns, 32102, "busy served", |_| true)?;
    ensure!(busy.json()?["service"]["name"] == "busy", "{busy:?}");

    // web goes back to Cluster: its health check goes, and clash gets the port.
    let web_cluster = services.replacen(
        "externalTrafficPolicy: Local",
        "externalTrafficPolicy: Cluster",
        1,
    );
    write(dir.path(), "services.yaml", &web_cluster)?;
    let clash = until(&netns, 32100, "clash takes 32100", |a| {
        a.json().is_ok_and(|j| j["service"]["name"] == "clash")
    })?;
    ensure!(clash.status == 503, "clash has no endpoints: {clash:?}");

    // draining's health check goes with its Service: the port closes.
    let without_draining: Vec<&str> = web_cluster
        .split("---\n")
        .filter(|doc| !doc.contains("name: draining"))
        .collect();
    write(dir.path(), "services.yaml", &without_draining.join("---\n"))?;
    let deadline = std::time::Instant::now() + SETTLE;
    while get(&netns, 32101, "/").is_ok() {
        ensure!(std::time::Instant::now() < deadline, "32101 still open");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, _) = agent.terminate(SETTLE)?;
    ensure!(status.success(), "agent exit {status}");
    Ok(())
}
