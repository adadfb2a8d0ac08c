//! `cargo xtask image`: the agent's OCI image. A static release binary for musl (the eBPF object
//! embedded), alone in a build context, then `buildah build -f deploy/Containerfile` (`FROM
//! scratch`: nothing is pulled) into buildah's vfs storage, tagged as the DaemonSet names it, and
//! pushed to an OCI archive under `target/image/` that `podman load`, `skopeo copy` or
//! `ctr images import` take.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, ensure, Context as _, Result};

use crate::{build, cmd, setup};

/// The image's repository; with the workspace version as tag, what
/// `deploy/kubernetes/base/kustomization.yaml` sets for the DaemonSet's `xdp-ingress` image.
pub(crate) const IMAGE_NAME: &str = "localhost/xdp-ingress";

/// `localhost/xdp-ingress:<workspace version>`.
pub(crate) fn tag() -> String {
    format!("{IMAGE_NAME}:{}", env!("CARGO_PKG_VERSION"))
}

/// buildah's storage: vfs needs neither fuse-overlayfs nor an overlay-capable kernel mount.
const STORAGE: [&str; 2] = ["--storage-driver", "vfs"];

/// `cargo xtask image`: setup, then [`build`].
pub(crate) fn run() -> Result<()> {
    ensure!(
        cmd::is_root(),
        "the image is built with buildah's root storage (/var/lib/containers): run as root"
    );
    setup::run(&setup::SetupArgs { dry_run: false })?;
    build()
}

/// Builds the binary and the image, writes the archive, prints where it is and what it is.
pub(crate) fn build() -> Result<()> {
    let started = Instant::now();
    let root = cmd::workspace_root();
    let binary = build::agent_static()?;
    let built = started.elapsed();
    check_static(&binary)?;

    let target_dir =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let out = target_dir.join("image");
    let context = out.join("context");
    stage(&binary, &context)?;

    let tag = tag();
    let previous = image_id(&tag)?;
    let iid_file = out.join("image-id");
    let revision = cmd::output(Command::new("git").current_dir(&root).args([
        "rev-parse",
        "--short=12",
        "HEAD",
    ]))
    .map_or_else(|_| "unknown".to_string(), |rev| rev.trim().to_string());
    // The commit's time as the image's creation time: the same commit and binary give the same
    // image id, not a new one per second.
    let commit_time =
        cmd::output(
            Command::new("git")
                .current_dir(&root)
                .args(["log", "-1", "--format=%ct"]),
        )
        .ok()
        .map(|time| time.trim().to_string())
        .filter(|time| !time.is_empty() && time.bytes().all(|b| b.is_ascii_digit()));
    let mut buildah = Command::new("buildah");
    buildah.arg("build").args(STORAGE);
    if let Some(time) = &commit_time {
        buildah.args(["--timestamp", time]);
    }
    cmd::run(
        buildah
            // Nothing in the Containerfile runs, but chroot isolation also needs no user
            // namespace or runc should that change.
            .args(["--isolation", "chroot"])
            .arg("--file")
            .arg(root.join("deploy").join("Containerfile"))
            .args(["--tag", &tag])
            .arg("--build-arg")
            .arg(format!("VERSION={}", env!("CARGO_PKG_VERSION")))
            .arg("--build-arg")
            .arg(format!("REVISION={revision}"))
            .arg("--iidfile")
            .arg(&iid_file)
            .arg(&context)
            // Its steps are progress: stdout stays for the summary below.
            .stdout(std::io::stderr()),
    )?;
    let id = fs::read_to_string(&iid_file)
        .with_context(|| format!("reading {}", iid_file.display()))?
        .trim()
        .to_string();
    // The image the tag pointed at before is untagged now: drop it rather than let vfs (a full
    // copy per layer) pile them up.
    if let Some(previous) = previous.filter(|previous| !id.ends_with(previous.as_str())) {
        if let Err(error) = cmd::output(
            Command::new("buildah")
                .args(STORAGE)
                .args(["rmi", previous.as_str()]),
        ) {
            eprintln!("image: could not remove the previous image {previous}: {error:#}");
        }
    }

    let archive = out.join(format!("xdp-ingress-{}.oci.tar", env!("CARGO_PKG_VERSION")));
    match fs::remove_file(&archive) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error).with_context(|| format!("removing {}", archive.display())),
    }
    let archive_str = archive
        .to_str()
        .with_context(|| format!("non-UTF-8 path {}", archive.display()))?;
    ensure!(
        !archive_str.contains(':'),
        "buildah cannot write an oci-archive to a path with ':' ({archive_str})"
    );
    // The reference after the path becomes the archive's org.opencontainers.image.ref.name,
    // the name `podman load` and `ctr images import` give the image.
    cmd::output(Command::new("buildah").args(STORAGE).args([
        "push",
        "--quiet",
        &tag,
        &format!("oci-archive:{archive_str}:{tag}"),
    ]))?;

    verify_archive(&archive, &out.join("unpacked"))?;
    let size = fs::metadata(&archive)
        .with_context(|| format!("reading {}", archive.display()))?
        .len();
    let binary_size = fs::metadata(context.join("xdp-ingress"))?.len();
    println!("archive: {}", archive.display());
    println!("image:   {tag}");
    println!("id:      {id}");
    println!(
        "size:    {} (archive), binary {} (static, debug info stripped)",
        mib(size),
        mib(binary_size)
    );
    eprintln!(
        "image: done in {:.0} s (cargo build {:.0} s)",
        started.elapsed().as_secs_f64(),
        built.as_secs_f64()
    );
    Ok(())
}

/// Reads a JSON blob of the unpacked OCI layout by digest (`sha256:...`).
fn blob(layout: &Path, digest: &str) -> Result<(PathBuf, serde_json::Value)> {
    let hex = digest
        .strip_prefix("sha256:")
        .with_context(|| format!("digest {digest:?} is not sha256"))?;
    let path = layout.join("blobs/sha256").join(hex);
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let json =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    Ok((path, json))
}

/// What a user of the archive gets: unpacks it as an OCI layout (index, manifest, config,
/// layers), checks the config (entrypoint, non-root user) and that the root filesystem holds the
/// binary alone, then runs that very binary: `--version` and `validate` on `deploy/examples`.
fn verify_archive(archive: &Path, scratch: &Path) -> Result<()> {
    let _ = fs::remove_dir_all(scratch);
    let (layout, rootfs) = (scratch.join("layout"), scratch.join("rootfs"));
    fs::create_dir_all(&layout)?;
    fs::create_dir_all(&rootfs)?;
    cmd::run(
        Command::new("tar")
            .arg("-xf")
            .arg(archive)
            .arg("-C")
            .arg(&layout),
    )?;
    let index: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(layout.join("index.json")).context("the archive has no index.json")?,
    )?;
    let manifest_digest = index["manifests"][0]["digest"]
        .as_str()
        .context("index.json names no manifest")?;
    let (_, manifest) = blob(&layout, manifest_digest)?;
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .context("the manifest names no config")?;
    let (_, config) = blob(&layout, config_digest)?;
    ensure!(
        config["config"]["Entrypoint"] == serde_json::json!(["/xdp-ingress"]),
        "image entrypoint {}",
        config["config"]["Entrypoint"]
    );
    ensure!(
        config["config"]["User"] == "65532:65532",
        "image user {}",
        config["config"]["User"]
    );
    let layers = manifest["layers"]
        .as_array()
        .context("the manifest lists no layers")?;
    for layer in layers {
        let digest = layer["digest"].as_str().context("a layer without digest")?;
        let hex = digest.strip_prefix("sha256:").context("layer digest")?;
        // GNU tar recognises gzip (and uncompressed) layers by themselves.
        cmd::run(
            Command::new("tar")
                .arg("-xf")
                .arg(layout.join("blobs/sha256").join(hex))
                .arg("-C")
                .arg(&rootfs),
        )?;
    }
    let files: Vec<String> = fs::read_dir(&rootfs)?
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    ensure!(
        files == ["xdp-ingress"],
        "the image's root holds {files:?}, not the binary alone"
    );
    let binary = rootfs.join("xdp-ingress");
    let version = cmd::output(Command::new(&binary).arg("--version"))?;
    ensure!(
        version.trim() == format!("xdp-ingress {}", env!("CARGO_PKG_VERSION")),
        "the image's binary says {version:?}"
    );
    let examples = cmd::workspace_root().join("deploy/examples");
    let validated = cmd::output(
        Command::new(&binary)
            .arg("validate")
            .arg("--manifests")
            .arg(&examples),
    )?;
    println!(
        "verified: the archive's binary runs `--version` ({}) and `validate` on deploy/examples \
         ({})",
        version.trim(),
        validated.lines().last().unwrap_or_default()
    );
    fs::remove_dir_all(scratch).with_context(|| format!("removing {}", scratch.display()))?;
    Ok(())
}

/// The binary runs (`--version`) and has no program interpreter: `ldd` calls it static.
fn check_static(binary: &Path) -> Result<()> {
    let version = cmd::output(Command::new(binary).arg("--version"))?;
    ensure!(
        version.starts_with("xdp-ingress "),
        "`{} --version` printed {version:?}",
        binary.display()
    );
    // ldd exits 1 for "not a dynamic executable"; its words are what counts.
    let ldd = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&ldd.stdout),
        String::from_utf8_lossy(&ldd.stderr)
    );
    if !(said.contains("not a dynamic executable") || said.contains("statically linked")) {
        bail!(
            "{} is not static; ldd says:\n{}",
            binary.display(),
            said.trim()
        );
    }
    eprintln!("image: {} ({})", binary.display(), version.trim());
    Ok(())
}

/// `context/` with only the binary, without its debug info (the symbols stay for backtraces).
fn stage(binary: &Path, context: &Path) -> Result<()> {
    match fs::remove_dir_all(context) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error).with_context(|| format!("removing {}", context.display())),
    }
    fs::create_dir_all(context).with_context(|| format!("creating {}", context.display()))?;
    let staged = context.join("xdp-ingress");
    cmd::output(
        Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(&staged)
            .arg(binary),
    )?;
    fs::set_permissions(&staged, fs::Permissions::from_mode(0o555))
        .with_context(|| format!("chmod {}", staged.display()))
}

/// The id of the image `tag` names in buildah's storage, if any.
fn image_id(tag: &str) -> Result<Option<String>> {
    let output = Command::new("buildah")
        .args(STORAGE)
        .args(["images", "--quiet", "--no-trunc", tag])
        .output()
        .context("running buildah images (is buildah installed? cargo xtask setup)")?;
    // An unknown tag is an error exit, not an empty list.
    if !output.status.success() {
        return Ok(None);
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .next()
        .map(|id| id.trim().trim_start_matches("sha256:").to_string())
        .filter(|id| !id.is_empty()))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// `newName:newTag` of the `images:` entry named `name` in a kustomization.
#[cfg(test)]
fn kustomize_image(kustomization: &str, name: &str) -> Option<String> {
    let mut in_images = false;
    let mut entry: Option<(String, Option<String>, Option<String>)> = None;
    let mut found = Vec::new();
    for line in kustomization.lines() {
        let trimmed = line.trim_end();
        if trimmed.trim_start().starts_with('#') || trimmed.is_empty() {
            continue;
        }
        if !trimmed.starts_with(' ') && !trimmed.starts_with('-') {
            in_images = trimmed == "images:";
            continue;
        }
        if !in_images {
            continue;
        }
        let item = trimmed.trim_start();
        let (item, starts_entry) = match item.strip_prefix("- ") {
            Some(rest) => (rest, true),
            None => (item, false),
        };
        if starts_entry {
            found.extend(entry.take());
            entry = Some((String::new(), None, None));
        }
        let Some((key, value)) = item.split_once(':') else {
            continue;
        };
        let value = value
            .trim()
            .trim_matches('"')
            .trim_matches('\'')
            .to_string();
        if let Some((entry_name, new_name, new_tag)) = entry.as_mut() {
            match key.trim() {
                "name" => *entry_name = value,
                "newName" => *new_name = Some(value),
                "newTag" => *new_tag = Some(value),
                _ => {}
            }
        }
    }
    found.extend(entry);
    found
        .into_iter()
        .find(|(entry_name, _, _)| entry_name == name)
        .and_then(|(_, new_name, new_tag)| Some(format!("{}:{}", new_name?, new_tag?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(relative: &str) -> String {
        let path = cmd::workspace_root().join(relative);
        fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
    }

    #[test]
    fn the_image_built_is_the_one_the_daemonset_runs() {
        let daemonset = read("deploy/kubernetes/base/daemonset.yaml");
        assert!(
            daemonset
                .lines()
                .any(|line| line.trim() == "image: xdp-ingress"),
            "the DaemonSet's container no longer names the image `xdp-ingress`"
        );
        let kustomization = read("deploy/kubernetes/base/kustomization.yaml");
        assert_eq!(
            kustomize_image(&kustomization, "xdp-ingress").as_deref(),
            Some(tag().as_str()),
            "deploy/kubernetes/base/kustomization.yaml sets another image than `cargo xtask image` builds"
        );
    }

    #[test]
    fn the_containerfile_pulls_nothing_and_runs_unprivileged() {
        let containerfile = read("deploy/Containerfile");
        let instructions: Vec<&str> = containerfile
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .collect();
        let froms: Vec<&&str> = instructions
            .iter()
            .filter(|line| line.starts_with("FROM "))
            .collect();
        assert_eq!(froms, [&"FROM scratch"]);
        assert!(instructions.contains(&"USER 65532:65532"));
        assert!(instructions.contains(&r#"ENTRYPOINT ["/xdp-ingress"]"#));
        assert!(!instructions.iter().any(|line| line.starts_with("RUN ")));
    }

    #[test]
    fn kustomize_images_are_read_by_name() {
        let text = "resources:\n- a.yaml\nimages:\n- name: other\n  newTag: \"1\"\n\
                    # the agent\n- name: xdp-ingress\n  newName: reg.example/x\n  newTag: '2.0'\n\
                    labels: []\n";
        assert_eq!(
            kustomize_image(text, "xdp-ingress").as_deref(),
            Some("reg.example/x:2.0")
        );
        assert_eq!(kustomize_image(text, "other"), None);
        assert_eq!(kustomize_image("images: []\n", "xdp-ingress"), None);
    }
}
