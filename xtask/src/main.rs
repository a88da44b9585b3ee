//! Project tasks: `cargo xtask run | test | build | setup | bench | fuzz`.
//!
//! Every task first makes sure the machine has what the build needs (Debian packages,
//! bpf-linker, tracefs), installing only what is missing and saying why.

mod bench;
mod fuzz;
mod image;
mod matrix;
mod package;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "rmm-monitor project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing (Debian packages, bpf-linker), mount tracefs.
    Setup,
    /// Set up, then build the eBPF object and the daemon (release).
    Build,
    /// Set up, build, and start `rmm-monitor run` with the given arguments
    /// (none by default: alerts go to journald when it runs, else to stdout as JSON lines).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build, then the whole suite: fmt, clippy, unit tests and the root end-to-end
    /// tests against this kernel, then the kernel matrix (Debian's 5.10, 6.1 and 6.12 under
    /// qemu).
    Test,
    /// Set up, build, then only the kernel matrix: the verifier and core end-to-end tests
    /// inside Debian's 5.10, 6.1 and 6.12 kernels (qemu TCG, virtme-ng) and on this kernel.
    Matrix(matrix::MatrixArgs),
    /// Set up, build the release daemon and the Debian package (target/debian/*.deb).
    Package,
    /// Set up, build the release daemon and import it as the OCI image localhost/rmm-monitor:dev
    /// (offline, with podman; see deploy/container/README.md).
    Image,
    /// Set up, build, then measure the daemon's overhead on exec, connect and DNS storms.
    Bench(bench::BenchArgs),
    /// Install cargo-fuzz if missing, then run every fuzz target of fuzz/ in turn from its
    /// committed corpus (RUSTC_BOOTSTRAP=1 on stable) and print what each reached.
    Fuzz(fuzz::FuzzArgs),
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// Runs a command, failing with its name when it does not succeed.
pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    let desc = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {desc}"))?;
    if !status.success() {
        bail!("{desc} failed ({status})");
    }
    Ok(())
}

/// The eBPF object, built with Debian's rustc (which ships `core` for bpfel) and bpf-linker.
pub fn build_ebpf() -> Result<PathBuf> {
    let root = workspace_root();
    let flags = [
        "--cfg=bpf_target_arch=\"x86_64\"",
        "-Cdebuginfo=2",
        "-Clink-arg=--btf",
    ]
    .join("\x1f");
    let path = format!(
        "{}:{}:/usr/lib/llvm-22/bin:{}",
        setup::cargo_bin_dir().display(),
        "/usr/bin",
        std::env::var("PATH").unwrap_or_default()
    );
    run_cmd(
        Command::new("/usr/bin/cargo")
            .current_dir(&root)
            .args(["build", "--quiet", "-p", "rmm-ebpf", "--bins", "--release"])
            .args([
                "--target",
                "bpfel-unknown-none",
                "--target-dir",
                "target/ebpf",
            ])
            .env("RUSTC", "/usr/bin/rustc")
            .env("RUSTC_BOOTSTRAP", "1")
            .env("CARGO_ENCODED_RUSTFLAGS", flags)
            .env("PATH", path)
            .env_remove("RUSTFLAGS")
            .env_remove("RUSTUP_TOOLCHAIN"),
    )
    .context("building the eBPF object (rmm-ebpf)")?;
    let object = root.join("target/ebpf/bpfel-unknown-none/release/rmm-ebpf");
    if !object.is_file() {
        bail!(
            "the eBPF build succeeded but {} is missing",
            object.display()
        );
    }
    Ok(object)
}

/// Builds the daemon with the eBPF object embedded; returns the binary's path.
pub fn build_daemon(release: bool) -> Result<PathBuf> {
    let object = build_ebpf()?;
    let root = workspace_root();
    let mut cmd = Command::new(cargo());
    cmd.current_dir(&root)
        .args(["build", "--quiet", "-p", "rmm-userspace"])
        .env("RMM_EBPF_OBJECT", &object);
    if release {
        cmd.arg("--release");
    }
    run_cmd(&mut cmd).context("building rmm-monitor")?;
    Ok(root.join(if release {
        "target/release/rmm-monitor"
    } else {
        "target/debug/rmm-monitor"
    }))
}

/// The cargo that runs this xtask (rustup's), for host builds.
pub fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn test() -> Result<()> {
    let root = workspace_root();
    let object = build_ebpf()?;
    let daemon = build_daemon(false)?;
    println!("xtask: cargo fmt --check");
    run_cmd(
        Command::new(cargo())
            .current_dir(&root)
            .args(["fmt", "--all", "--check"]),
    )
    .context("formatting differs: run `cargo fmt --all`")?;
    println!("xtask: cargo clippy -D warnings");
    run_cmd(
        Command::new(cargo())
            .current_dir(&root)
            .args([
                "clippy",
                "--quiet",
                "--workspace",
                "--exclude",
                "rmm-ebpf",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ])
            .env("RMM_EBPF_OBJECT", &object),
    )?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the end-to-end tests load eBPF programs and must run as root");
    }
    // The deployment tests install the Debian package and run the daemon's container image.
    let deb = package::package()?;
    let image = image::image()?;
    println!("xtask: cargo test (unit and end-to-end, real kernel)");
    let host = run_cmd(
        Command::new(cargo())
            .current_dir(&root)
            .args([
                "test",
                "--workspace",
                "--exclude",
                "rmm-ebpf",
                "--no-fail-fast",
                "--",
                "--test-threads=1",
            ])
            .env("RMM_EBPF_OBJECT", &object)
            .env("RMM_MONITOR_BIN", &daemon)
            .env("RMM_DEB", &deb)
            .env("RMM_IMAGE", &image)
            .env("RMM_DEPLOY_TOOLS", setup::deploy_tools_dir()),
    );
    // The matrix runs whatever the host suite said, so that one run shows both.
    let matrix = run_matrix(&object, &daemon, &matrix::MatrixArgs::default());
    host.and(matrix)
}

/// The kernel matrix over the test binaries built with this object and daemon.
fn run_matrix(object: &Path, daemon: &Path, args: &matrix::MatrixArgs) -> Result<()> {
    let envs = [("RMM_EBPF_OBJECT", object), ("RMM_MONITOR_BIN", daemon)];
    let bins = matrix::test_binaries(&envs)?;
    matrix::run(&bins, &envs, args)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.task {
        Task::Setup => setup::ensure_all(),
        Task::Build => {
            setup::ensure_all()?;
            let bin = build_daemon(true)?;
            println!("xtask: built {}", bin.display());
            Ok(())
        }
        Task::Run { args } => {
            setup::ensure_all()?;
            let bin = build_daemon(true)?;
            let status = Command::new(&bin)
                .arg("run")
                .args(&args)
                .status()
                .with_context(|| format!("starting {}", bin.display()))?;
            if !status.success() {
                bail!("rmm-monitor exited with {status}");
            }
            Ok(())
        }
        Task::Test => {
            setup::ensure_all()?;
            test()
        }
        Task::Matrix(args) => {
            setup::ensure_all()?;
            let object = build_ebpf()?;
            let daemon = build_daemon(false)?;
            run_matrix(&object, &daemon, &args)
        }
        Task::Package => {
            setup::ensure_all()?;
            package::package().map(|_| ())
        }
        Task::Image => {
            setup::ensure_all()?;
            image::image().map(|_| ())
        }
        Task::Bench(args) => {
            setup::ensure_all()?;
            let bin = build_daemon(true)?;
            bench::run(&bin, &args)
        }
        Task::Fuzz(args) => fuzz::run(&args),
    }
}
