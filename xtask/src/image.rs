//! `cargo xtask image`: the daemon as an OCI image, built offline (no registry, no base image).
//!
//! The root file system holds the release binary, exactly the shared libraries `ldd` lists for
//! it (at the paths `ldd` prints, so the binary's ELF interpreter and the loader's default
//! search path find them without an `ld.so.cache`), a minimal `/etc/passwd` and `/etc/group`
//! (the allowlist resolves user names from `/etc/passwd`), an `/etc/nsswitch.conf` (host names
//! of `tcp://` and `tls://` syslog servers), the system CA bundle (`tls://` syslog) and an empty
//! `/tmp`. It is packed as a tar with fixed owners, order and times and imported with
//! `podman import` as [`IMAGE`], with the entrypoint and command set. How to run it (host PID
//! and cgroup namespaces, tracefs, capabilities, seccomp profile) is in
//! `deploy/container/README.md`.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{build_daemon, run_cmd, workspace_root};

/// The image this task makes (and the container test runs by default).
pub const IMAGE: &str = "localhost/rmm-monitor:dev";

/// Where the binary lives in the image.
const DAEMON_PATH: &str = "/usr/bin/rmm-monitor";

/// The system CA bundle (Debian's ca-certificates), the daemon's default for `tls://` syslog.
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The libraries of `ldd`'s output, in order: `name => /path (addr)` and `/path (addr)` lines
/// (the interpreter). The vDSO has no file and is skipped; a library that is `not found` is an
/// error, since the image would not start.
pub fn ldd_paths(output: &str) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for line in output.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("statically linked") {
            continue;
        }
        let target = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    bail!("ldd: {} is not found", name.trim());
                }
                rest
            }
            None => line,
        };
        let path = target.split_whitespace().next().unwrap_or_default();
        if path.starts_with('/') {
            paths.push(PathBuf::from(path));
        } else if !line.starts_with("linux-vdso") && !line.starts_with("linux-gate") {
            bail!("ldd printed a line that names no file: {line:?}");
        }
    }
    Ok(paths)
}

/// The shared libraries `binary` loads, from `ldd`.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd (Debian package libc-bin)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() && !text.contains("statically linked") {
        bail!(
            "ldd {} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    ldd_paths(&text)
}

/// Copies `src` (following symbolic links) to `dst` under `rootfs`, creating directories.
fn install(rootfs: &Path, src: &Path, dst: &str, mode: u32) -> Result<()> {
    let to = rootfs.join(dst.trim_start_matches('/'));
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::copy(src, &to).with_context(|| format!("copying {} to {}", src.display(), to.display()))?;
    fs::set_permissions(&to, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", to.display()))
}

fn write(rootfs: &Path, dst: &str, text: &str) -> Result<()> {
    let to = rootfs.join(dst.trim_start_matches('/'));
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(&to, text).with_context(|| format!("writing {}", to.display()))?;
    fs::set_permissions(&to, fs::Permissions::from_mode(0o644))
        .with_context(|| format!("chmod {}", to.display()))
}

fn dir(rootfs: &Path, dst: &str, mode: u32) -> Result<()> {
    let to = rootfs.join(dst.trim_start_matches('/'));
    fs::create_dir_all(&to).with_context(|| format!("creating {}", to.display()))?;
    fs::set_permissions(&to, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", to.display()))
}

/// Fills `rootfs` (which must be empty) and returns the paths it holds, for the summary.
fn populate(rootfs: &Path, daemon: &Path) -> Result<Vec<String>> {
    let mut files = vec![DAEMON_PATH.to_owned()];
    install(rootfs, daemon, DAEMON_PATH, 0o755)?;
    for lib in shared_libraries(daemon)? {
        let dst = lib.to_str().context("library paths are UTF-8")?.to_owned();
        install(rootfs, &lib, &dst, 0o755)?;
        files.push(dst);
    }
    // Only root: the daemon runs as root (uid 0) and allowlists may name users by uid.
    for (path, text) in [
        (
            "/etc/passwd",
            "root:x:0:0:root:/root:/usr/sbin/nologin\n\
             nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        ),
        ("/etc/group", "root:x:0:\nnogroup:x:65534:\n"),
        (
            "/etc/nsswitch.conf",
            "passwd: files\ngroup: files\nhosts: files dns\n",
        ),
    ] {
        write(rootfs, path, text)?;
        files.push(path.to_owned());
    }
    if Path::new(CA_BUNDLE).is_file() {
        install(rootfs, Path::new(CA_BUNDLE), CA_BUNDLE, 0o644)?;
        files.push(CA_BUNDLE.to_owned());
    } else {
        println!(
            "xtask: warning: {CA_BUNDLE} is missing (package ca-certificates): the image has no \
             CA bundle, so tls:// syslog needs --tls-ca"
        );
    }
    dir(rootfs, "/tmp", 0o1777)?;
    // Mount points for the configuration and rules (`-v /etc/rmm-monitor:/etc/rmm-monitor:ro`).
    dir(rootfs, "/etc/rmm-monitor/rules.d", 0o755)?;
    Ok(files)
}

/// The id of a local image, or `None` when there is no such image.
fn image_id(name: &str) -> Option<String> {
    let out = Command::new("podman")
        .args(["image", "inspect", "--format", "{{.Id}}", name])
        .output()
        .ok()?;
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !id.is_empty()).then_some(id)
}

/// Builds the release daemon, its root file system and the image; returns the image id.
pub fn image() -> Result<String> {
    if Command::new("podman").arg("--version").output().is_err() {
        bail!(
            "podman is not installed: `apt-get install podman runc` (see deploy/container/README.md)"
        );
    }
    let daemon = build_daemon(true)?;
    let root = workspace_root();
    let stage = root.join("target/image");
    let rootfs = stage.join("rootfs");
    if rootfs.exists() {
        fs::remove_dir_all(&rootfs).with_context(|| format!("removing {}", rootfs.display()))?;
    }
    fs::create_dir_all(&rootfs).with_context(|| format!("creating {}", rootfs.display()))?;
    let files = populate(&rootfs, &daemon)?;

    let tar = stage.join("rootfs.tar");
    run_cmd(
        Command::new("tar")
            .arg("--create")
            .arg("--file")
            .arg(&tar)
            .arg("--directory")
            .arg(&rootfs)
            .args([
                "--numeric-owner",
                "--owner=0",
                "--group=0",
                "--sort=name",
                "--mtime=@0",
                ".",
            ]),
    )
    .context("packing the root file system")?;

    let previous = image_id(IMAGE);
    let version = env!("CARGO_PKG_VERSION");
    let changes = [
        format!("ENTRYPOINT [\"{DAEMON_PATH}\"]"),
        "CMD [\"run\"]".to_owned(),
        "STOPSIGNAL SIGTERM".to_owned(),
        "LABEL org.opencontainers.image.title=rmm-monitor".to_owned(),
        format!("LABEL org.opencontainers.image.version={version}"),
        "LABEL org.opencontainers.image.description=\"eBPF monitor for remote-access tools; run \
         flags in deploy/container/README.md\""
            .to_owned(),
    ];
    let mut import = Command::new("podman");
    import.args(["import", "--quiet"]);
    for c in &changes {
        import.arg("--change").arg(c);
    }
    import.arg(&tar).arg(IMAGE);
    let out = import.output().context("running podman import")?;
    if !out.status.success() {
        bail!(
            "podman import failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let id = image_id(IMAGE).context("podman import succeeded but the image is not there")?;
    // A rebuild leaves the previous image untagged: remove it unless a container still uses it.
    if let Some(old) = previous.filter(|old| *old != id) {
        let _ = Command::new("podman").args(["image", "rm", &old]).output();
    }
    let size = fs::metadata(&tar).map(|m| m.len()).unwrap_or(0);
    println!(
        "xtask: image {IMAGE} ({}) imported: {} files, {:.1} MiB: {}",
        &id[..id.len().min(12)],
        files.len(),
        size as f64 / (1024.0 * 1024.0),
        files.join(" ")
    );
    println!("xtask: run it as deploy/container/README.md shows");
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_of_a_dynamic_binary() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd0b3f2000)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f4308121000)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f430773e000)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f4308154000)\n";
        assert_eq!(
            ldd_paths(text).expect("parses"),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn ldd_output_of_a_static_binary_and_missing_libraries() {
        assert!(
            ldd_paths("\tstatically linked\n")
                .expect("parses")
                .is_empty()
        );
        let err = ldd_paths("\tlibfoo.so.1 => not found\n").expect_err("a missing library");
        assert!(err.to_string().contains("libfoo.so.1"), "{err}");
        assert!(ldd_paths("\tsomething odd\n").is_err());
    }
}
