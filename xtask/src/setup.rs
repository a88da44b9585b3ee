//! Idempotent machine set-up: installs only what is missing and says why.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::run_cmd;

/// Debian packages and why each is needed.
const PACKAGES: &[(&str, &str)] = &[
    (
        "rustc-web",
        "rustc 1.96 with LLVM 22, the compiler of the eBPF crate",
    ),
    ("cargo-web", "the cargo that goes with rustc-web"),
    (
        "libstd-rust-web-dev-bpf",
        "prebuilt core library for the bpfel target (no build-std here)",
    ),
    ("llvm-22-dev", "LLVM 22 for building bpf-linker"),
    (
        "libpolly-22-dev",
        "needed to link bpf-linker against LLVM 22",
    ),
    ("zlib1g-dev", "needed to link bpf-linker"),
    ("libzstd-dev", "needed to link bpf-linker"),
    ("iproute2", "network namespaces for the end-to-end tests"),
    (
        "tigervnc-standalone-server",
        "a real VNC server (Xtigervnc) for the detection tests",
    ),
    ("rsyslog", "a real syslog server for the delivery tests"),
    (
        "rsyslog-gnutls",
        "TLS syslog (RFC 5425) for the delivery tests",
    ),
    ("openssl", "test certificates for TLS syslog"),
    (
        "podman",
        "real containers for the container tests and `cargo xtask image`",
    ),
    (
        "runc",
        "the OCI runtime podman uses here (crun refuses this hybrid cgroup layout)",
    ),
    (
        "busybox-static",
        "the shell of the Kubernetes reloader sidecar (deploy tests) and the init of the kernel matrix's guests (virtme-ng wants it static)",
    ),
    (
        "shellcheck",
        "lint of the reloader script in the deploy tests",
    ),
    (
        "bpftrace",
        "the benchmark's floor: an in-kernel counter on the same tracepoints",
    ),
    (
        "qemu-system-x86",
        "boots Debian's kernels for the kernel matrix (TCG: KVM hangs on this machine kind)",
    ),
    (
        "kmod",
        "depmod, which virtme-ng runs on the matrix kernels' modules",
    ),
    (
        "python3-venv",
        "the virtualenvs of the Kubernetes validation tools and of virtme-ng (kernel matrix)",
    ),
];

const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn cargo_bin_dir() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn ensure_packages() -> Result<()> {
    let missing: Vec<&(&str, &str)> = PACKAGES.iter().filter(|(p, _)| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    for (p, why) in &missing {
        println!("xtask: installing Debian package {p}: {why}");
    }
    run_cmd(
        Command::new("apt-get")
            .args(["update", "-q"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("apt-get update")?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(missing.iter().map(|(p, _)| *p))
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("apt-get install")
}

fn ensure_bpf_linker() -> Result<()> {
    let bin = cargo_bin_dir().join("bpf-linker");
    let current = Command::new(&bin)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if current.contains(BPF_LINKER_VERSION) {
        return Ok(());
    }
    println!(
        "xtask: installing bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (links the eBPF object; about a minute)"
    );
    let path = format!(
        "/usr/lib/llvm-22/bin:{}",
        std::env::var("PATH").unwrap_or_default()
    );
    run_cmd(
        Command::new(crate::cargo())
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features", "llvm-22", "--locked"])
            .env("PATH", path),
    )
    .context("cargo install bpf-linker")
}

fn ensure_tracefs() -> Result<()> {
    if Path::new("/sys/kernel/tracing/events").is_dir() {
        return Ok(());
    }
    println!("xtask: mounting tracefs on /sys/kernel/tracing (tracepoints attach through it)");
    run_cmd(Command::new("mount").args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"]))
}

/// Python tools of the deploy tests, pinned, in their own virtualenv (installing checkov into
/// the system Python replaces packages other tools need).
const PIP_PACKAGES: &[&str] = &[
    "kubernetes-validate==1.37.0",
    "checkov==3.3.30",
    "helm-python-sdk==0.2.2",
];

pub fn deploy_tools_dir() -> std::path::PathBuf {
    crate::workspace_root().join("target/deploy-tools")
}

fn ensure_deploy_tools() -> Result<()> {
    let venv = deploy_tools_dir();
    let pip = venv.join("bin/pip");
    let frozen = Command::new(&pip)
        .args(["freeze", "--disable-pip-version-check"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_lowercase())
        .unwrap_or_default();
    let missing: Vec<&str> = PIP_PACKAGES
        .iter()
        .copied()
        .filter(|p| !frozen.lines().any(|l| l == p.to_lowercase()))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !pip.exists() {
        println!(
            "xtask: creating the virtualenv {} for the Kubernetes validation tools",
            venv.display()
        );
        run_cmd(Command::new("python3").args(["-m", "venv"]).arg(&venv))
            .context("python3 -m venv")?;
    }
    println!(
        "xtask: installing {} into {} (chart rendering, schema validation and security lint of the deploy tests)",
        missing.join(" "),
        venv.display()
    );
    run_cmd(
        Command::new(&pip)
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(PIP_PACKAGES),
    )
    .context("pip install of the deploy tools")
}

pub fn ensure_all() -> Result<()> {
    if !Path::new("/usr/bin/dpkg-query").exists() {
        bail!("this set-up expects a Debian machine (dpkg-query not found)");
    }
    ensure_packages()?;
    ensure_bpf_linker()?;
    ensure_deploy_tools()?;
    ensure_tracefs()
}
