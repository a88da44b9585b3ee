//! `cargo xtask package`: the Debian package (cargo-deb) with the daemon, its systemd unit,
//! default configuration, rules directory, documentation and man page.

use std::{fs, path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};

use crate::{build_daemon, cargo, run_cmd, setup::cargo_bin_dir, workspace_root};

const CARGO_DEB_VERSION: &str = "3.8.0";

fn ensure_cargo_deb() -> Result<()> {
    let ok = Command::new(cargo_bin_dir().join("cargo-deb"))
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(CARGO_DEB_VERSION));
    if ok {
        return Ok(());
    }
    println!("xtask: installing cargo-deb {CARGO_DEB_VERSION} (builds the .deb)");
    run_cmd(Command::new(cargo()).args([
        "install",
        "cargo-deb",
        "--version",
        CARGO_DEB_VERSION,
        "--locked",
    ]))
}

/// Builds the package and returns its path.
pub fn package() -> Result<PathBuf> {
    ensure_cargo_deb()?;
    let root = workspace_root();
    let bin = build_daemon(true)?;
    let man_dir = root.join("target/man");
    fs::create_dir_all(&man_dir).context("creating target/man")?;
    let roff = Command::new(&bin)
        .arg("manpage")
        .output()
        .context("rendering the man page")?;
    if !roff.status.success() {
        bail!("rmm-monitor manpage failed");
    }
    let man = man_dir.join("rmm-monitor.1");
    fs::write(&man, &roff.stdout).context("writing the man page")?;
    run_cmd(Command::new("gzip").args(["-9", "-n", "-f"]).arg(&man))?;
    let out = Command::new(cargo())
        .current_dir(&root)
        .args(["deb", "-p", "rmm-userspace", "--no-build", "--no-strip"])
        .output()
        .context("running cargo deb")?;
    if !out.status.success() {
        bail!("cargo deb failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let path = PathBuf::from(
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .lines()
            .last()
            .unwrap_or_default(),
    );
    if !path.is_file() {
        bail!("cargo deb did not report the package it built (got {path:?})");
    }
    println!("xtask: built {}", path.display());
    Ok(path)
}
