//! End-to-end tests of the manifest reader against hostile directories (issue 12): a FIFO and
//! `/dev/zero` named like manifests, symlink loops, deep nesting, a certificate the proxy
//! refuses. The real binary: `validate`, and `run` L7-only on loopback with `--workers 1` (the
//! proxy then shares its one thread with the runner). Every run is bounded in time and memory,
//! so a reader that blocks or reads without end fails the test instead of hanging the machine.
//!
//! The binary is `$XDP_INGRESS_BIN` or `target/<profile>/xdp-ingress`.

use xdp_ingress_tests::proxy;

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt as _,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use http::StatusCode;
use proxy::{
    backends::HttpBackend,
    clients::{get, pooled},
    eventually,
    manifests::{
        backend_service, ingress, our_class, rule, tls_secret, with_tls, Manifests, OUR_CLASS,
    },
};
use xdp_ingress_tests::agent::{self, Agent, AgentProcess};
use xdp_ingress_tests::ensure_eq;

/// Longest any `validate` here may take: the fixed reader takes milliseconds.
const VALIDATE_TIMEOUT: Duration = Duration::from_secs(30);
/// Most memory any agent or `validate` here may hold; the old reader passed it within seconds
/// on `/dev/zero` and on two symlink loops.
const RSS_CAP_KIB: u64 = 512 * 1024;

/// What `validate` did.
struct Validated {
    success: bool,
    stderr: String,
}

impl Validated {
    /// Whether one line of stderr names both `what` and `why`.
    fn says(&self, what: &str, why: &str) -> bool {
        self.stderr
            .lines()
            .any(|line| line.contains(what) && line.contains(why))
    }
}

/// `validate` over `dir` fails, and one line of its stderr names both `what` and `why`.
fn validate_refuses(dir: &Path, what: &str, why: &str) -> Result<()> {
    let validated = validate(dir)?;
    ensure!(!validated.success, "{}", validated.stderr);
    ensure!(validated.says(what, why), "{}", validated.stderr);
    Ok(())
}

/// Runs `xdp-ingress validate --manifests dir`, killed (and the test failed) past
/// [`VALIDATE_TIMEOUT`] or [`RSS_CAP_KIB`].
fn validate(dir: &Path) -> Result<Validated> {
    let mut child = Command::new(agent::binary()?)
        .arg("validate")
        .arg("--manifests")
        .arg(dir)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting validate")?;
    let stderr = child.stderr.take().context("no stderr")?;
    // Read on a thread: a full pipe must not stall the child.
    let reader = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        // No event says "memory grew": polling it is the only way to stop a runaway early.
        let rss = rss_kib(child.id()).unwrap_or(0);
        if rss > RSS_CAP_KIB || started.elapsed() > VALIDATE_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "validate on {} still running after {:?} at {rss} KiB resident; killed",
                dir.display(),
                started.elapsed()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = reader
        .join()
        .map_err(|_| anyhow::anyhow!("stderr reader panicked"))?;
    Ok(Validated {
        success: status.success(),
        stderr,
    })
}

/// A process's resident memory (VmRSS), in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn mkfifo(path: &Path) -> Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: a valid NUL-terminated path; mkfifo only reads it.
    if unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) } != 0 {
        bail!(
            "mkfifo {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Our class, a Service `web` on `addr`, and an Ingress `web` for `web.example`: what every
/// directory here also holds, and what must keep loading.
fn good_manifests(addr: std::net::SocketAddr) -> Result<Manifests> {
    let manifests = Manifests::new()?;
    manifests.write("class.yaml", &[our_class()])?;
    manifests.write("services.yaml", &backend_service("web", &[addr]))?;
    manifests.write(
        "web.yaml",
        &[ingress(
            "web",
            &[rule(Some("web.example"), &[("/", "Prefix", "web")])],
        )],
    )?;
    Ok(manifests)
}

/// An address nothing needs to answer on (`validate` connects to nothing).
fn unused_addr() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 9))
}

/// A FIFO named `x.yaml`: reported, and `validate` finishes (the old reader waited forever for
/// a writer).
#[test]
fn validate_reports_a_fifo_and_finishes() -> Result<()> {
    let manifests = good_manifests(unused_addr())?;
    let fifo = manifests.path().join("x.yaml");
    mkfifo(&fifo)?;
    validate_refuses(
        manifests.path(),
        &fifo.display().to_string(),
        "not a regular file (a FIFO)",
    )
}

/// `x.yaml -> /dev/zero`: reported, read in bounded memory (the old reader grew by hundreds of
/// MiB a second); a regular file over `--max-manifest-bytes` too.
#[test]
fn validate_reads_dev_zero_and_large_files_in_bounded_memory() -> Result<()> {
    let manifests = good_manifests(unused_addr())?;
    std::os::unix::fs::symlink("/dev/zero", manifests.path().join("x.yaml"))?;
    validate_refuses(manifests.path(), "x.yaml", "a character device")?;

    std::fs::remove_file(manifests.path().join("x.yaml"))?;
    // 17 MiB of comment: valid YAML, past the default limit of 16 MiB.
    std::fs::write(
        manifests.path().join("big.yaml"),
        "#".repeat(17 * 1024 * 1024),
    )?;
    validate_refuses(
        manifests.path(),
        "big.yaml",
        "larger than --max-manifest-bytes (16777216 bytes)",
    )
}

/// Two symlink loops (to the directory itself and to its parent) in a subdirectory: walked
/// once, every file read once, so no object is "also defined" (the old reader walked
/// 2^40 paths, or read every file 40 times with one loop).
#[test]
fn validate_walks_symlink_loops_once() -> Result<()> {
    let manifests = Manifests::new()?;
    let sub = manifests.path().join("sub");
    std::fs::create_dir(&sub)?;
    manifests.write("sub/class.yaml", &[our_class()])?;
    manifests.write(
        "sub/services.yaml",
        &backend_service("web", &[unused_addr()]),
    )?;
    std::os::unix::fs::symlink(".", sub.join("here"))?;
    std::os::unix::fs::symlink("..", sub.join("up"))?;
    let validated = validate(manifests.path())?;
    ensure!(validated.success, "{}", validated.stderr);

    // One loop alone: the old reader read each file 40 times and reported the copies.
    std::fs::remove_file(sub.join("up"))?;
    let validated = validate(manifests.path())?;
    ensure!(validated.success, "{}", validated.stderr);
    Ok(())
}

/// 400 KiB of nested `[`: refused before parsing, naming the file and the document (the old
/// reader spent 17 s in libyaml's scanner, debug build, before serde_yaml's recursion limit said
/// no, with a message naming no limit of ours).
#[test]
fn validate_refuses_deep_nesting_at_once() -> Result<()> {
    let manifests = good_manifests(unused_addr())?;
    std::fs::write(manifests.path().join("deep.yaml"), "[".repeat(400 * 1024))?;
    validate_refuses(
        manifests.path(),
        "deep.yaml (document 1)",
        "nested deeper than 100 levels",
    )
}

/// A TLS Secret whose key does not belong to its certificate, and one whose certificate is not
/// PEM: `validate` fails naming each, as the agent refuses them (the old `validate` exited 0).
#[test]
fn validate_refuses_certificates_the_proxy_refuses() -> Result<()> {
    let manifests = good_manifests(unused_addr())?;
    let shop = rcgen::generate_simple_self_signed(vec!["shop.example".to_string()])?;
    let other = rcgen::generate_simple_self_signed(vec!["other.example".to_string()])?;
    let mut tls_ingress = ingress(
        "shop",
        &[
            rule(Some("shop.example"), &[("/", "Prefix", "web")]),
            rule(Some("bad.example"), &[("/", "Prefix", "web")]),
        ],
    );
    with_tls(&mut tls_ingress, &["shop.example"], "mismatched");
    with_tls(&mut tls_ingress, &["bad.example"], "not-pem");
    manifests.write(
        "shop.yaml",
        &[
            tls_ingress,
            tls_secret(
                "mismatched",
                &shop.cert.pem(),
                &other.key_pair.serialize_pem(),
            ),
            tls_secret(
                "not-pem",
                "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
                &shop.key_pair.serialize_pem(),
            ),
        ],
    )?;
    let validated = validate(manifests.path())?;
    ensure!(!validated.success, "{}", validated.stderr);
    for secret in ["Secret default/mismatched", "Secret default/not-pem"] {
        ensure!(
            validated.says("shop.yaml", secret),
            "{secret}: {}",
            validated.stderr
        );
    }

    // Both usable: no problem.
    manifests.write(
        "shop.yaml",
        &[
            ingress(
                "shop",
                &[rule(Some("shop.example"), &[("/", "Prefix", "web")])],
            ),
            tls_secret(
                "mismatched",
                &shop.cert.pem(),
                &shop.key_pair.serialize_pem(),
            ),
        ],
    )?;
    let validated = validate(manifests.path())?;
    ensure!(validated.success, "{}", validated.stderr);
    Ok(())
}

/// The agent with `--workers 1` on a directory holding a FIFO, `/dev/zero` and a symlink loop:
/// it starts, serves the good Ingress, reloads (a new Ingress is served), and a deeply nested
/// file is refused while the proxy keeps answering (the old agent never got past the FIFO).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_serves_beside_a_fifo_dev_zero_loops_and_deep_nesting() -> Result<()> {
    let web = HttpBackend::start("web").await?;
    let manifests = good_manifests(web.addr)?;
    // Named to be read first: the old agent blocked here.
    mkfifo(&manifests.path().join("a-fifo.yaml"))?;
    std::os::unix::fs::symlink("/dev/zero", manifests.path().join("zero.yaml"))?;
    std::os::unix::fs::symlink(".", manifests.path().join("loop"))?;
    let mut agent = Agent::manifests(manifests.path())
        .l7_on_loopback()
        .args(["--workers", "1", "--debounce-ms", "20"])
        .start()?;
    let listening = agent.wait_l7_listening(Duration::from_secs(30));
    let (http, memory) = match listening {
        Ok(listeners) => (listeners.http, rss_kib(agent.pid())),
        Err(error) => bail!("{error:#}\nresident: {:?} KiB", rss_kib(agent.pid())),
    };
    let http = http.context("no HTTP listener")?;
    ensure!(memory.unwrap_or(0) < RSS_CAP_KIB, "{memory:?} KiB");
    let log = agent.output().join("\n");
    ensure!(log.contains("not a regular file (a FIFO)"), "{log}");
    ensure!(log.contains("a character device"), "{log}");

    let client = pooled();
    let reply = get(&client, http, "web.example", "/").await?;
    ensure_eq!(reply.status, StatusCode::OK, "{:?}", reply.text());
    ensure_eq!(reply.backend().as_deref(), Some("web"));

    // A reload goes through the same directory: a new Ingress is served.
    manifests.write(
        "more.yaml",
        &[ingress(
            "more",
            &[rule(Some("more.example"), &[("/", "Prefix", "web")])],
        )],
    )?;
    eventually("the new Ingress is served", || async {
        let reply = get(&client, http, "more.example", "/").await?;
        ensure!(
            reply.status == StatusCode::OK,
            "expected 200, seen {} {:?}",
            reply.status,
            reply.text()
        );
        Ok(())
    })
    .await
    .with_context(|| agent.output().join("\n"))?;

    std::fs::write(manifests.path().join("deep.yaml"), "[".repeat(400 * 1024))?;
    agent.wait_for_line(
        |line| line.contains("deep.yaml (document 1)") && line.contains("nested deeper than"),
        Duration::from_secs(20),
    )?;
    let reply = get(&client, http, "web.example", "/").await?;
    ensure_eq!(reply.status, StatusCode::OK, "{:?}", reply.text());
    ensure!(agent.is_running()?);
    Ok(())
}

/// `validate` on a directory with a YAML syntax error and an Ingress with a bad field: exit
/// status 1, one `error:` line per problem (reading first, then translating) naming the file, the document, the object and the
/// field; on a good directory (deploy/examples): exit status 0 and the plan on stdout.
#[test]
fn validate_exit_status_and_messages() -> Result<()> {
    let manifests = good_manifests(unused_addr())?;
    std::fs::write(
        manifests.path().join("syntax.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: s\n  namespace: [unclosed\n",
    )?;
    std::fs::write(
        manifests.path().join("bad.yaml"),
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: bad, namespace: \
             shop}}\nspec:\n  ingressClassName: {OUR_CLASS}\n  rules:\n  - host: a.example\n    http:\n      paths:\n      - path: /x\n        \
         pathType: Sometimes\n        backend: {{service: {{name: web, port: {{number: 80}}}}}}\n"
        ),
    )?;
    let output = Command::new(agent::binary()?)
        .args(["validate", "--manifests"])
        .arg(manifests.path())
        .env("RUST_BACKTRACE", "0")
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure_eq!(output.status.code(), Some(1), "{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    let dir = manifests.path().display();
    ensure_eq!(
        errors,
        [
            format!(
                "error: {dir}/syntax.yaml (document 1): YAML syntax: did not find expected ',' \
                 or '}}' at line 4 column 12, while parsing a flow mapping at line 3 column 11"
            )
            .as_str(),
            format!(
                "error: {dir}/bad.yaml (document 1): Ingress shop/bad: field \
                 spec.rules[0].http.paths[0].pathType: unknown path type \"Sometimes\" (Exact, \
                 Prefix or ImplementationSpecific)"
            )
            .as_str(),
        ],
        "{stderr}"
    );
    ensure!(stderr.contains("2 error(s) in"), "{stderr}");

    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    let output = Command::new(agent::binary()?)
        .args(["validate", "--manifests"])
        .arg(&examples)
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    ensure!(stdout.contains("Ingress(es) ours"), "{stdout}");
    Ok(())
}

/// Twenty Ingress files written in one burst become one sync (with a debounce long enough that
/// a loaded machine's pauses between the writes stay inside it): the agent logs exactly three
/// syncs, the first, the burst's and a later marker's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_changes_is_applied_as_one_sync() -> Result<()> {
    let web = HttpBackend::start("web").await?;
    let manifests = good_manifests(web.addr)?;
    let mut agent = Agent::manifests(manifests.path())
        .l7_on_loopback()
        .args(["--debounce-ms", "300", "--debounce-max-ms", "5000"])
        .start()?;
    let http = agent
        .wait_l7_listening(Duration::from_secs(30))?
        .http
        .context("no HTTP listener")?;
    let syncs = |agent: &AgentProcess| {
        agent
            .output()
            .iter()
            .filter(|line| line.contains(" synced"))
            .count()
    };
    ensure_eq!(syncs(&agent), 1, "{}", agent.output().join("\n"));
    let client = pooled();
    let served = |host: String| {
        let client = &client;
        async move {
            let reply = get(client, http, &host, "/").await?;
            ensure!(
                reply.status == StatusCode::OK,
                "{host}: expected 200, seen {} {:?}",
                reply.status,
                reply.text()
            );
            Ok(())
        }
    };
    for i in 0..20 {
        let name = format!("burst-{i}");
        let host = format!("{name}.example");
        manifests.write(
            &format!("{name}.yaml"),
            &[ingress(
                &name,
                &[rule(Some(&host), &[("/", "Prefix", "web")])],
            )],
        )?;
    }
    eventually("every Ingress of the burst is served", || async {
        for i in 0..20 {
            served(format!("burst-{i}.example")).await?;
        }
        Ok(())
    })
    .await
    .with_context(|| agent.output().join("\n"))?;
    // A later change, so that a sync the burst would have caused late is counted too.
    manifests.write(
        "marker.yaml",
        &[ingress(
            "marker",
            &[rule(Some("marker.example"), &[("/", "Prefix", "web")])],
        )],
    )?;
    eventually("the marker is served", || {
        served("marker.example".to_string())
    })
    .await
    .with_context(|| agent.output().join("\n"))?;
    ensure_eq!(
        syncs(&agent),
        3,
        "the first sync, one for the burst, one for the marker:\n{}",
        agent.output().join("\n")
    );
    agent.terminate(Duration::from_secs(20))?;
    Ok(())
}
