//! `--log-format`: the real binary in file mode (no BPF, no privileges), L7 only, on an ephemeral
//! port; its log lines on stdout are read until one shows the format.

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

const INGRESS_CLASS: &str = "apiVersion: networking.k8s.io/v1\nkind: IngressClass\n\
                             metadata:\n  name: xdp-ingress\n\
                             spec:\n  controller: xdp-ingress.dev/controller\n";

/// How long the agent may take to print a line that answers the question.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The agent and its manifest directory, killed and removed on drop (also when a test fails).
struct Agent {
    child: Child,
    dir: PathBuf,
    lines: mpsc::Receiver<String>,
}

impl Agent {
    fn start(name: &str, extra: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "xdp-ingress-log-format-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("ingressclass.yaml"), INGRESS_CLASS).expect("manifest");
        let mut child = Command::new(env!("CARGO_BIN_EXE_xdp-ingress"))
            .arg("run")
            .arg("--manifests")
            .arg(&dir)
            .args([
                "--http-listen",
                "127.0.0.1:0",
                "--https-listen",
                "off",
                "--admin-listen",
                "off",
            ])
            .args(extra)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting xdp-ingress");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, dir, lines }
    }

    /// Lines until `accept` returns something; panics with every line seen on timeout or exit.
    fn find<T>(&mut self, mut accept: impl FnMut(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + TIMEOUT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(found) = accept(&line) {
                        return found;
                    }
                    seen.push(line);
                }
                Err(error) => panic!(
                    "no matching log line ({error:?}; exit status {:?}); stdout:\n{}",
                    self.child.try_wait().ok().flatten(),
                    seen.join("\n")
                ),
            }
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn json_logs_are_one_object_per_line_with_level_and_message() {
    let mut agent = Agent::start("json", &["--log-format", "json"]);
    let (level, message) = agent.find(|line| {
        let object: serde_json::Value = serde_json::from_str(line).ok()?;
        let level = object.get("level")?.as_str()?.to_string();
        let message = object
            .pointer("/fields/message")
            .or_else(|| object.get("message"))?
            .as_str()?
            .to_string();
        Some((level, message))
    });
    assert!(
        ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&level.as_str()),
        "odd level {level:?}"
    );
    assert!(!message.is_empty());
}

#[test]
fn text_is_the_default_and_not_json() {
    let mut agent = Agent::start("text", &[]);
    let line = agent.find(|line| (!line.trim().is_empty()).then(|| line.to_string()));
    assert!(
        serde_json::from_str::<serde_json::Value>(&line).is_err(),
        "the default format printed JSON: {line}"
    );
    assert!(line.contains("INFO"), "no level in {line:?}");
}
