//! `xdp-ingress validate` as a user runs it: the real binary on a directory of manifests.

use std::process::Command;

fn validate(files: &[(&str, &str)]) -> (bool, String, String) {
    let dir = std::env::temp_dir().join(format!(
        "xdp-ingress-validate-{}-{}",
        std::process::id(),
        files.len()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    for (name, text) in files {
        std::fs::write(dir.join(name), text).expect("manifest");
    }
    let output = Command::new(env!("CARGO_BIN_EXE_xdp-ingress"))
        .args(["validate", "--manifests"])
        .arg(&dir)
        .output()
        .expect("running xdp-ingress");
    let _ = std::fs::remove_dir_all(&dir);
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_examples_validate_and_print_the_plan() {
    let examples = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/examples/web.yaml"
    ))
    .expect("deploy/examples/web.yaml");
    let (ok, stdout, stderr) = validate(&[("web.yaml", &examples)]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("203.0.113.10:80/TCP") && stdout.contains("198.51.100.13:8080"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("198.51.100.14"),
        "a not-ready endpoint was planned: {stdout}"
    );
}

#[test]
fn bad_input_fails_naming_file_object_and_field() {
    let service = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: demo}\nspec:\n  type: LoadBalancer\n  loadBalancerIP: 203.0.113.10\n  ports:\n  - {name: http, port: 80, protocol: TPC}\n";
    let (ok, _, stderr) = validate(&[("svc.yaml", service), ("broken.yaml", "kind: [")]);
    assert!(!ok, "validate accepted bad input");
    assert!(
        stderr.contains("svc.yaml (document 1): Service demo/web: field spec.ports[0].protocol"),
        "{stderr}"
    );
    assert!(
        stderr.contains("broken.yaml") && stderr.contains("YAML syntax"),
        "{stderr}"
    );
}
