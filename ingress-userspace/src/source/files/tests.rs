//! The file source against manifests and directories: problems naming their field, last good
//! objects kept, re-reads, and what an attacker who can write into the directory cannot do.

use super::{watch::may_concern_manifests, *};
use crate::model::ObjectName;

#[test]
fn reports_file_document_object_and_field() {
    let text = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: b, namespace: shop}\nspec:\n  ports:\n  - port: not-a-number\n";
    let (objects, problems) = parse_manifest(Path::new("/m/s.yaml"), text);
    assert_eq!(objects.services.len(), 1);
    assert_eq!(problems.len(), 1);
    let p = &problems[0];
    assert_eq!(p.origin, "/m/s.yaml (document 2)");
    assert_eq!(p.object, "Service shop/b");
    assert_eq!(p.field, "spec.ports[0].port");
}

const L7_OBJECTS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: xdp, namespace: ignored}
spec: {controller: xdp-ingress.dev/controller}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: web, namespace: demo}
spec:
  rules:
  - http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
---
apiVersion: v1
kind: Secret
metadata: {name: cert, namespace: demo}
type: kubernetes.io/tls
data: {tls.crt: Q0VSVA==, tls.key: b2xk}
stringData: {tls.key: KEY}
---
apiVersion: v1
kind: Secret
metadata: {name: password, namespace: demo}
type: Opaque
stringData: {password: hunter2}
---
apiVersion: v1
kind: Secret
metadata: {name: upstream-ca, namespace: demo}
type: Opaque
stringData: {ca.crt: CA}
"#;

#[test]
fn reads_ingresses_classes_tls_and_ca_secrets_only() {
    let (objects, problems) = parse_manifest(Path::new("/m/l7.yaml"), L7_OBJECTS);
    assert!(problems.is_empty(), "{problems:?}");
    let name = |namespace: &str, name: &str| ObjectName {
        namespace: namespace.into(),
        name: name.into(),
    };
    assert_eq!(
        objects.ingress_classes[0].0, "xdp",
        "cluster-scoped: keyed by name"
    );
    assert_eq!(objects.ingresses[0].0, name("demo", "web"));
    // Opaque Secrets are read, and dropped when the files are merged unless an Ingress names
    // one in `auth-secret` or it holds a ca.crt (see `an_opaque_secret_is_kept_only_when_named`).
    assert_eq!(objects.secrets.len(), 3);
    assert_eq!(objects.secrets[1].0, name("demo", "password"));
    assert_eq!(objects.secrets[2].0, name("demo", "upstream-ca"));
    let (secret_name, secret) = &objects.secrets[0];
    assert_eq!(*secret_name, name("demo", "cert"));
    let data = secret.object.data.as_ref().unwrap();
    assert_eq!(data["tls.crt"].0, b"CERT", "data is base64");
    assert_eq!(data["tls.key"].0, b"KEY", "stringData wins over data");
    assert_eq!(secret.object.string_data, None);
}

#[test]
fn a_broken_ingress_names_its_field() {
    let text = "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: web, namespace: demo}\nspec:\n  rules:\n  - http:\n      paths:\n      - {path: /, pathType: Prefix, backend: web}\n";
    let (objects, problems) = parse_manifest(Path::new("/m/i.yaml"), text);
    assert!(objects.ingresses.is_empty());
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].object, "Ingress demo/web");
    assert_eq!(problems[0].field, "spec.rules[0].http.paths[0].backend");
    let text = "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {namespace: x}\n";
    let (_, problems) = parse_manifest(Path::new("/m/c.yaml"), text);
    assert_eq!(problems[0].object, "IngressClass <unnamed>");
    assert_eq!(problems[0].field, "metadata.name");
}

#[test]
fn duplicate_names_and_last_good_state_for_the_new_kinds() {
    let dir = std::env::temp_dir().join(format!("xdp-ingress-files-l7-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a.yaml"), L7_OBJECTS).unwrap();
    // The class again, in another namespace: cluster-scoped, so the same object.
    std::fs::write(
        dir.join("b.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: xdp}\n",
    )
    .unwrap();
    let mut source = ManifestDir::new(&dir);
    let snapshot = source.load().unwrap();
    assert_eq!(snapshot.objects.ingress_classes.len(), 1);
    assert_eq!(snapshot.problems.len(), 1, "{:?}", snapshot.problems);
    assert_eq!(snapshot.problems[0].object, "IngressClass xdp");
    assert!(snapshot.problems[0].origin.contains("b.yaml"));

    // The Ingress breaks: its last good version stays, the rest of the file reloads.
    let broken = L7_OBJECTS.replace("number: 80", "number: eighty");
    std::fs::write(dir.join("a.yaml"), broken).unwrap();
    let snapshot = source.load().unwrap();
    assert_eq!(
        snapshot.objects.ingresses.len(),
        1,
        "last good Ingress kept"
    );
    assert_eq!(
        snapshot.objects.secrets.len(),
        2,
        "the TLS and the CA Secret"
    );
    assert!(snapshot
        .problems
        .iter()
        .any(|p| p.field == "spec.rules[0].http.paths[0].backend.service.port.number"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_opaque_secret_is_kept_only_when_named() {
    let dir = std::env::temp_dir().join(format!("xdp-ingress-auth-secret-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a.yaml"), L7_OBJECTS).unwrap();
    let mut source = ManifestDir::new(&dir);
    let kept = |source: &mut ManifestDir| {
        let snapshot = source.load().unwrap();
        let mut names: Vec<String> = snapshot
            .objects
            .secrets
            .keys()
            .map(|n| n.name.clone())
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        kept(&mut source),
        ["cert", "upstream-ca"],
        "nobody names the Opaque one without a ca.crt"
    );
    let named = L7_OBJECTS.replace(
        "metadata: {name: web, namespace: demo}",
        "metadata: {name: web, namespace: demo, annotations: \
         {nginx.ingress.kubernetes.io/auth-secret: password}}",
    );
    std::fs::write(dir.join("a.yaml"), named).unwrap();
    assert_eq!(kept(&mut source), ["cert", "password", "upstream-ca"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn broken_file_keeps_last_good_objects() {
    let dir = std::env::temp_dir().join(format!("xdp-ingress-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("svc.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n",
    )
    .unwrap();
    let mut source = ManifestDir::new(&dir);
    assert_eq!(source.load().unwrap().objects.services.len(), 1);
    std::fs::write(&file, "apiVersion: v1\nkind: Service\nmetadata: {name: a\n").unwrap();
    let snapshot = source.load().unwrap();
    assert_eq!(snapshot.objects.services.len(), 1, "last good object kept");
    assert!(snapshot.problems[0].message.contains("YAML syntax"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn only_changes_that_may_touch_manifests_count() {
    let paths = |names: &[&str]| names.iter().map(PathBuf::from).collect::<Vec<_>>();
    assert!(may_concern_manifests(&paths(&["/m/a.yaml"])));
    assert!(may_concern_manifests(&paths(&["/m/a.yml"])));
    assert!(may_concern_manifests(&paths(&["/m/sub"])), "a directory");
    assert!(
        may_concern_manifests(&paths(&["/m/sedX1b2c3", "/m/a.yaml"])),
        "a rename onto a manifest"
    );
    assert!(may_concern_manifests(&[]), "an event without paths");
    assert!(!may_concern_manifests(&paths(&["/m/agent.log"])));
    assert!(!may_concern_manifests(&paths(&[
        "/m/.a.yaml.swp",
        "/m/notes.txt"
    ])));
}

/// Unchanged files are not parsed again, yet every read reports the same objects and
/// problems; a changed file is read anew, and a removed file's objects go.
#[test]
fn unchanged_files_give_the_same_objects_and_problems() {
    let dir = std::env::temp_dir().join(format!("xdp-ingress-reread-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.yaml");
    let broken = dir.join("broken.yaml");
    std::fs::write(
        &good,
        "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n",
    )
    .unwrap();
    std::fs::write(
        &broken,
        "apiVersion: v1\nkind: Service\nmetadata: {name: b\n",
    )
    .unwrap();
    let mut source = ManifestDir::new(&dir);
    let first = source.load().unwrap();
    let second = source.load().unwrap();
    assert_eq!(first.objects.services.len(), 1);
    assert_eq!(first.problems.len(), 1);
    assert_eq!(
        second.problems, first.problems,
        "the broken file is reported again"
    );
    assert_eq!(
        second.objects.services.keys().collect::<Vec<_>>(),
        first.objects.services.keys().collect::<Vec<_>>()
    );

    // Same length, other text: parsed again.
    std::fs::write(
        &good,
        "apiVersion: v1\nkind: Service\nmetadata: {name: c}\n",
    )
    .unwrap();
    let changed = source.load().unwrap();
    let names: Vec<String> = changed
        .objects
        .services
        .keys()
        .map(|k| k.to_string())
        .collect();
    assert!(
        names.iter().any(|n| n.ends_with("/c") || n == "c"),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n.ends_with("/a") || n == "a"),
        "{names:?}"
    );

    // Removed: its objects go.
    std::fs::remove_file(&good).unwrap();
    assert!(source.load().unwrap().objects.services.is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A temporary directory for one test, removed at the end.
fn test_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xdp-ingress-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const SERVICE_A: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n";

/// A FIFO named like a manifest is a problem, not a wait (on the old code `load` never
/// returned); its path's last good objects stay, the other files load.
#[test]
fn a_fifo_is_reported_and_keeps_the_last_good_objects() {
    let dir = test_dir("fifo");
    std::fs::write(dir.join("a.yaml"), SERVICE_A).unwrap();
    let x = dir.join("x.yaml");
    std::fs::write(&x, "apiVersion: v1\nkind: Service\nmetadata: {name: x}\n").unwrap();
    let mut source = ManifestDir::new(&dir);
    assert_eq!(source.load().unwrap().objects.services.len(), 2);
    std::fs::remove_file(&x).unwrap();
    let path = std::ffi::CString::new(x.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo only reads it.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    let snapshot = source.load().unwrap();
    assert_eq!(snapshot.problems.len(), 1, "{:?}", snapshot.problems);
    assert_eq!(snapshot.problems[0].origin, x.display().to_string());
    assert!(snapshot.problems[0]
        .message
        .contains("not a regular file (a FIFO)"));
    assert_eq!(
        snapshot.objects.services.len(),
        2,
        "x.yaml's last good Service is kept"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `/dev/zero` behind a manifest's name, and a file over the limit: reported, not read
/// (on the old code the first read grew without end).
#[test]
fn devices_and_files_over_the_limit_are_not_read() {
    let dir = test_dir("limit");
    std::fs::write(dir.join("a.yaml"), SERVICE_A).unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.join("zero.yaml")).unwrap();
    std::fs::write(dir.join("big.yaml"), format!("# {}\n", "x".repeat(200))).unwrap();
    let snapshot = ManifestDir::new(&dir)
        .with_max_file_bytes(100)
        .load()
        .unwrap();
    assert_eq!(snapshot.objects.services.len(), 1);
    let messages: Vec<(&str, &str)> = snapshot
        .problems
        .iter()
        .map(|p| (p.origin.as_str(), p.message.as_str()))
        .collect();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(messages[0].0.ends_with("big.yaml"));
    assert!(messages[0]
        .1
        .contains("larger than --max-manifest-bytes (100 bytes)"));
    assert!(messages[1].0.ends_with("zero.yaml"));
    assert!(messages[1].1.contains("a character device"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Two symlink loops and a second link to a directory: every directory is walked once,
/// every file read once, under its first path (on the old code: files read 40 times, or a
/// walk without end).
#[test]
fn symlink_loops_and_second_paths_are_walked_once() {
    let dir = test_dir("loops");
    std::fs::create_dir(dir.join("b")).unwrap();
    std::fs::write(dir.join("b/svc.yaml"), SERVICE_A).unwrap();
    std::os::unix::fs::symlink("..", dir.join("b/up")).unwrap();
    std::os::unix::fs::symlink(".", dir.join("b/here")).unwrap();
    std::os::unix::fs::symlink("b", dir.join("c")).unwrap();
    std::os::unix::fs::symlink("b/svc.yaml", dir.join("d.yaml")).unwrap();
    assert_eq!(
        collect_manifest_files(&dir).unwrap(),
        vec![dir.join("b/svc.yaml"), dir.join("d.yaml")],
        "c is b, walked already; b/up and b/here lead back"
    );
    let snapshot = ManifestDir::new(&dir).load().unwrap();
    assert!(snapshot.problems.is_empty(), "{:?}", snapshot.problems);
    assert_eq!(snapshot.objects.services.len(), 1);
    let origin = snapshot
        .objects
        .services
        .values()
        .next()
        .unwrap()
        .origin
        .to_string();
    assert!(origin.contains("b/svc.yaml"), "{origin}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Deep nesting is refused before serde_yaml sees it, naming file and document; the
/// documents before it load.
#[test]
fn deep_nesting_is_refused_by_document() {
    let text = format!(
        "{SERVICE_A}---\n{}\n---\n{SERVICE_A}",
        "[".repeat(97 * 1024)
    );
    let started = std::time::Instant::now();
    let (objects, problems) = parse_manifest(Path::new("/m/deep.yaml"), &text);
    let elapsed = started.elapsed();
    assert_eq!(objects.services.len(), 1, "document 1 loads");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].origin, "/m/deep.yaml (document 2)");
    assert!(problems[0]
        .message
        .starts_with("nested deeper than 100 levels (line 5, column 101)"));
    // Generous: milliseconds here; serde_yaml alone took seconds on this input.
    assert!(elapsed < std::time::Duration::from_secs(2), "{elapsed:?}");
}
