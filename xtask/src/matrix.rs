//! The kernel matrix: Debian's 5.10, 6.1 and 6.12 kernels, booted here under qemu (TCG: KVM
//! hangs on this machine kind) with virtme-ng over this machine's root file system, run the
//! verifier test and the core end-to-end tests against the very binaries the host suite
//! tested; the host kernel runs the same list natively. The result is a table kernel × test
//! (`target/kernel-matrix/report.md`), and any test that does not pass fails the task.
//!
//! Kernels come from Debian's archive through a private apt configuration (the system's
//! sources stay as they are), pinned by package with a fallback to the newest of the series
//! when the archive has dropped the pin, and are cached under `target/kernel-matrix`.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{run_cmd, workspace_root};

/// A kernel of the matrix.
struct Kernel {
    /// Who ships it.
    distro: &'static str,
    suite: &'static str,
    /// The package tested, while the archive has it.
    pinned: &'static str,
    /// Packages of the same series: `prefix` + an ABI or patch number + `suffix`.
    prefix: &'static str,
    suffix: &'static str,
}

const KERNELS: &[Kernel] = &[
    Kernel {
        distro: "Debian 11",
        suite: "bullseye",
        pinned: "linux-image-5.10.0-32-amd64",
        prefix: "linux-image-5.10.0-",
        suffix: "-amd64",
    },
    Kernel {
        distro: "Debian 12",
        suite: "bookworm",
        pinned: "linux-image-6.1.0-50-amd64",
        prefix: "linux-image-6.1.0-",
        suffix: "-amd64",
    },
    Kernel {
        distro: "Debian 13",
        suite: "trixie",
        pinned: "linux-image-6.12.117+deb13-amd64",
        prefix: "linux-image-6.12.",
        suffix: "+deb13-amd64",
    },
];

/// The test binaries (cargo test target names) the matrix runs, each from its package's
/// directory, and the tests of each it runs (exact names). What every kernel must do: load
/// every program, report an exec with its path and argv (argument limit, memfd, from a
/// thread), the exit of that very process with its wait status, fork versus thread, TCP and
/// UDP connects over IPv4 and IPv6 (refused, in progress, fast open through the cgroup hook),
/// DNS through glibc, sendto, a connected socket, a raw socket and IPv6, answers filtered to
/// the sockets that asked, every record of a query and answer flood printed or counted
/// exactly, full rings counted with and without staging, READY and a clean stop, a catalog binary found running by the
/// start-up inventory and a vendor-domain alert naming its process. Under TCG a test takes
/// about ten times as long as here (the report's times), so the list holds what differs
/// between kernels and leaves the rest of the detection tests (catalog matching, enrichment)
/// to the host run: about 5 minutes a kernel.
const CORE: &[(&str, &str, &[&str])] = &[
    (
        "verifier",
        "rmm-userspace",
        &["every_program_passes_the_verifier"],
    ),
    (
        "e2e",
        "tests",
        &[
            "e2e::exec::exec_by_absolute_path_with_fork_and_exit",
            "e2e::exec::exec_argument_count_limit",
            "e2e::exec::exec_of_a_memfd",
            "e2e::exec::exit_codes_are_wait_statuses",
            "e2e::exec::exec_from_a_second_thread",
            "e2e::exec::threads_are_neither_forks_nor_exits",
            "e2e::connect::tcp_connect_refused_ipv4",
            "e2e::connect::tcp_connect_refused_ipv6",
            "e2e::connect::tcp_connect_non_blocking",
            "e2e::connect::udp_connect",
            "e2e::connect::tcp_fast_open_is_seen_by_the_cgroup_hook",
            "e2e::dns::dns_getaddrinfo_through_glibc",
            "e2e::dns::dns_sendto_unconnected",
            "e2e::dns::dns_connected_send_and_write",
            "e2e::dns::dns_from_a_raw_socket",
            "e2e::dns::dns_over_ipv6",
            "e2e::dns::answers_nobody_asked_for_are_filtered_in_the_kernel",
            "e2e::dns::a_query_and_answer_flood_is_counted_exactly",
            "e2e::lifecycle::ready_is_sent_to_the_service_manager_and_names_the_kernel",
            "e2e::lifecycle::full_ring_buffers_are_survived_and_counted",
            "e2e::lifecycle::full_ring_buffers_are_survived_and_counted_with_staged_records",
            "e2e::overload::an_overload_from_both_cpus_is_accounted_exactly",
            "e2e::signals::a_stop_and_a_kill_by_another_process_are_alerts_naming_it",
        ],
    ),
    (
        "detection",
        "tests",
        &[
            "detection::exec::running_tools_are_reported_by_inventory_and_scan",
            "detection::network::vendor_domains_alert_on_dns_queries",
        ],
    ),
];

/// Bounded waits in the tests are this many times longer in an emulated guest (TCG runs the
/// suite about thirteen times slower than the host here).
const GUEST_TIMEOUT_SCALE: u32 = 6;
/// A guest that has not finished by then is stopped and its missing tests fail.
const GUEST_DEADLINE: Duration = Duration::from_secs(15 * 60);
const VIRTME_NG: &str = "virtme-ng==1.42";

fn matrix_dir() -> PathBuf {
    workspace_root().join("target/kernel-matrix")
}

/// Options of `cargo xtask matrix`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct MatrixArgs {
    /// Only the kernels whose release starts with this (e.g. 5.10); repeatable.
    #[arg(long = "kernel")]
    pub kernels: Vec<String>,
    /// Every test of the verifier, e2e and detection binaries instead of the core list.
    #[arg(long)]
    pub all: bool,
}

/// The test executables that the host suite built, by target name.
pub type Binaries = BTreeMap<String, PathBuf>;

/// Paths of the test executables (`cargo test --no-run`, which builds nothing new after the
/// host suite with the same environment).
pub fn test_binaries(envs: &[(&str, &Path)]) -> Result<Binaries> {
    let mut cmd = Command::new(crate::cargo());
    cmd.current_dir(workspace_root())
        .args(["test", "--no-run", "--quiet", "--message-format=json"])
        .args(["-p", "rmm-tests", "-p", "rmm-userspace"])
        .stderr(Stdio::inherit());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().context("cargo test --no-run")?;
    if !out.status.success() {
        bail!("cargo test --no-run failed ({})", out.status);
    }
    let wanted: Vec<&str> = CORE.iter().map(|(t, _, _)| *t).collect();
    let mut found = Binaries::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(name), Some(exe)) = (
            v.pointer("/target/name").and_then(|n| n.as_str()),
            v.get("executable").and_then(|e| e.as_str()),
        ) else {
            continue;
        };
        if v.pointer("/profile/test").and_then(|t| t.as_bool()) == Some(true)
            && wanted.contains(&name)
        {
            found.insert(name.to_string(), PathBuf::from(exe));
        }
    }
    for w in wanted {
        if !found.contains_key(w) {
            bail!("cargo did not report the test binary {w}");
        }
    }
    Ok(found)
}

/// `-o` options that make apt use its own lists, cache and sources under `dir`.
fn apt_options(dir: &Path) -> Vec<String> {
    let d = dir.display();
    vec![
        format!("-oDir::Etc::sourcelist={d}/sources.list"),
        "-oDir::Etc::sourceparts=/nonexistent".into(),
        format!("-oDir::State::Lists={d}/lists"),
        format!("-oDir::Cache={d}/cache"),
        "-oDir::State::status=/var/lib/dpkg/status".into(),
        "-oAPT::Sandbox::User=root".into(),
        "-qq".into(),
    ]
}

/// The series number of a package of `k`'s series (`linux-image-6.1.0-50-amd64` → 50), for
/// choosing the newest.
fn series_number(k: &Kernel, pkg: &str) -> Option<u32> {
    pkg.strip_prefix(k.prefix)?
        .strip_suffix(k.suffix)?
        .parse()
        .ok()
}

/// A kernel's image directory, fetched and unpacked once: `target/kernel-matrix/kernels/PKG`.
fn fetch(k: &Kernel, apt: &Path, updated: &mut bool) -> Result<PathBuf> {
    let kernels = matrix_dir().join("kernels");
    if let Some(dir) = cached(&kernels, k) {
        return Ok(dir);
    }
    let opts = apt_options(apt);
    if !*updated {
        fs::create_dir_all(apt.join("lists/partial"))?;
        fs::create_dir_all(apt.join("cache/archives/partial"))?;
        let sources: String = KERNELS
            .iter()
            .map(|k| format!("deb http://deb.debian.org/debian {} main\n", k.suite))
            .collect();
        fs::write(apt.join("sources.list"), sources)?;
        println!(
            "xtask: matrix: reading Debian's package lists for the kernels (private apt configuration)"
        );
        run_cmd(Command::new("apt-get").args(&opts).arg("update"))
            .context("apt-get update (private kernel sources)")?;
        *updated = true;
    }
    let listing = Command::new("apt-cache")
        .args(&opts)
        .args(["pkgnames", k.prefix])
        .output()
        .context("apt-cache pkgnames")?;
    let names: Vec<String> = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .filter(|n| series_number(k, n).is_some())
        .map(str::to_string)
        .collect();
    let pkg = if names.iter().any(|n| n == k.pinned) {
        k.pinned.to_string()
    } else {
        let newest = names
            .iter()
            .max_by_key(|n| series_number(k, n))
            .with_context(|| {
                format!("Debian's archive has no {}*{} package", k.prefix, k.suffix)
            })?;
        println!(
            "xtask: matrix: {} is gone from Debian's archive; using the newest of the series, {newest}",
            k.pinned
        );
        newest.clone()
    };
    let debs = matrix_dir().join("debs");
    fs::create_dir_all(&debs)?;
    println!("xtask: matrix: downloading {pkg} ({})", k.distro);
    run_cmd(
        Command::new("apt-get")
            .current_dir(&debs)
            .args(&opts)
            .args(["download", &pkg]),
    )
    .with_context(|| format!("downloading {pkg}"))?;
    let deb = fs::read_dir(&debs)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{pkg}_")) && n.ends_with(".deb"))
        })
        .with_context(|| format!("{pkg} was downloaded but no .deb is in {}", debs.display()))?;
    let dir = kernels.join(&pkg);
    let partial = kernels.join(format!("{pkg}.partial"));
    let _ = fs::remove_dir_all(&partial);
    fs::create_dir_all(&partial)?;
    run_cmd(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial))
        .with_context(|| format!("unpacking {}", deb.display()))?;
    fs::rename(&partial, &dir)?;
    let _ = fs::remove_file(&deb);
    Ok(dir)
}

/// An unpacked kernel of `k`'s series, if one is cached (the pin, else any of the series).
fn cached(kernels: &Path, k: &Kernel) -> Option<PathBuf> {
    let pinned = kernels.join(k.pinned);
    if vmlinuz(&pinned).is_some() {
        return Some(pinned);
    }
    fs::read_dir(kernels)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| series_number(k, n).is_some())
        })
        .map(|e| e.path())
        .filter(|p| vmlinuz(p).is_some())
        .max()
}

fn vmlinuz(dir: &Path) -> Option<PathBuf> {
    fs::read_dir(dir.join("boot"))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
}

/// virtme-ng, from PyPI, in its own virtualenv.
fn ensure_virtme() -> Result<PathBuf> {
    let venv = matrix_dir().join("venv");
    let vng = venv.join("bin/vng");
    let have = Command::new(venv.join("bin/pip"))
        .args(["freeze", "--disable-pip-version-check"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(VIRTME_NG))
        .unwrap_or(false);
    if have && vng.exists() {
        return Ok(vng);
    }
    if !venv.join("bin/pip").exists() {
        println!(
            "xtask: matrix: creating the virtualenv {} for virtme-ng",
            venv.display()
        );
        run_cmd(Command::new("python3").args(["-m", "venv"]).arg(&venv))
            .context("python3 -m venv")?;
    }
    println!(
        "xtask: matrix: installing {VIRTME_NG} (boots the kernels over this root file system)"
    );
    run_cmd(Command::new(venv.join("bin/pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        VIRTME_NG,
    ]))
    .context("pip install virtme-ng")?;
    Ok(vng)
}

/// What one test did on one kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Ok,
    Failed,
    Ignored,
    /// Never reported: the binary crashed, hung past the deadline or the guest died.
    NotRun,
}

impl Outcome {
    fn cell(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "FAILED",
            Outcome::Ignored => "ignored",
            Outcome::NotRun => "NOT RUN",
        }
    }
}

/// One kernel's column.
struct Column {
    kernel: String,
    label: String,
    seconds: u64,
    results: BTreeMap<String, Verdict>,
    /// The output of each binary, for the failures' messages.
    outputs: Vec<(String, String)>,
}

/// A verdict and, with `--report-time`, how long the test took.
#[derive(Debug, Clone, PartialEq)]
struct Verdict {
    outcome: Outcome,
    seconds: Option<f64>,
}

/// `test NAME ... ok|FAILED|ignored [<1.234s>]` lines of libtest's output.
fn parse_libtest(out: &str) -> BTreeMap<String, Verdict> {
    let mut r = BTreeMap::new();
    for line in out.lines() {
        let Some(rest) = line.strip_prefix("test ") else {
            continue;
        };
        let Some((name, verdict)) = rest.rsplit_once(" ... ") else {
            continue;
        };
        let verdict = verdict.trim();
        // `--report-time` appends ` <1.234s>`.
        let (verdict, seconds) = match verdict.rsplit_once(" <") {
            Some((v, t)) => (v, t.strip_suffix("s>").and_then(|t| t.parse::<f64>().ok())),
            None => (verdict, None),
        };
        let outcome = match verdict {
            "ok" => Outcome::Ok,
            "FAILED" => Outcome::Failed,
            v if v.starts_with("ignored") => Outcome::Ignored,
            _ => continue,
        };
        r.insert(name.trim().to_string(), Verdict { outcome, seconds });
    }
    r
}

/// The list each binary runs: the core list, or (with `--all`) everything.
fn selection(all: bool) -> Vec<(&'static str, &'static str, Vec<&'static str>)> {
    CORE.iter()
        .map(|(t, dir, names)| (*t, *dir, if all { Vec::new() } else { names.to_vec() }))
        .collect()
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The script a guest runs: mount what the daemon needs, then each binary with its list,
/// output into `results`.
fn guest_script(bins: &Binaries, envs: &[(&str, &Path)], results: &Path, all: bool) -> String {
    let root = workspace_root();
    let mut s = String::from("#!/bin/sh\n# Written by cargo xtask matrix; run inside a guest.\n");
    let r = shell_quote(&results.display().to_string());
    let _ = writeln!(
        s,
        "R={r}\nmountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing\n\
         grep -q ' cgroup2 ' /proc/mounts || mount -t cgroup2 none /sys/fs/cgroup\n\
         uname -r > \"$R/release\"\nexport RMM_TEST_TIMEOUT_SCALE={GUEST_TIMEOUT_SCALE}\n\
         # libtest's per-test times (--report-time) are unstable: allowed as for the build.\n\
         export RUSTC_BOOTSTRAP=1"
    );
    for (k, v) in envs {
        let _ = writeln!(s, "export {k}={}", shell_quote(&v.display().to_string()));
    }
    for (target, dir, names) in selection(all) {
        let Some(bin) = bins.get(target) else {
            continue;
        };
        let mut line = format!(
            "cd {} && {} --test-threads=1 -Z unstable-options --report-time",
            shell_quote(&root.join(dir).display().to_string()),
            shell_quote(&bin.display().to_string())
        );
        if !names.is_empty() {
            line.push_str(" --exact");
            for n in names {
                line.push(' ');
                line.push_str(&shell_quote(n));
            }
        }
        let _ = writeln!(s, "{line} > \"$R/{target}.out\" 2>&1");
    }
    s.push_str("echo done > \"$R/done\"\n");
    s
}

/// Runs `cmd` until it exits or `deadline` passes (then kills it); the output goes to `log`.
fn run_bounded(cmd: &mut Command, log: &Path, deadline: Duration) -> Result<bool> {
    use std::os::unix::process::CommandExt;
    let out = fs::File::create(log)?;
    let err = out.try_clone()?;
    // A process group of its own: vng starts virtme-run, which starts qemu; stopping vng alone
    // would leave the guest running (and eating the CPUs of every later guest).
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let group = child.id() as libc::pid_t;
    let kill_group = || {
        // SAFETY: kill(2) on the process group this function created.
        unsafe { libc::kill(-group, libc::SIGKILL) };
    };
    let started = Instant::now();
    loop {
        if child.try_wait()?.is_some() {
            // Whatever the guest's launcher left behind goes with it.
            kill_group();
            return Ok(true);
        }
        if started.elapsed() > deadline {
            kill_group();
            let _ = child.wait();
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// An empty results directory `results/NAME` and the script for it, executable.
fn fresh_results(
    name: &str,
    bins: &Binaries,
    envs: &[(&str, &Path)],
    all: bool,
) -> Result<(PathBuf, PathBuf)> {
    use std::os::unix::fs::PermissionsExt;
    let results = matrix_dir().join("results").join(name);
    let _ = fs::remove_dir_all(&results);
    fs::create_dir_all(&results)?;
    let script = results.join("run.sh");
    fs::write(&script, guest_script(bins, envs, &results, all))?;
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755))?;
    Ok((results, script))
}

/// Collects what the binaries reported into a column, named by the release the script wrote
/// (else `fallback`); an expected test without a verdict is `NotRun`.
fn collect(fallback: String, label: String, results: &Path, seconds: u64, all: bool) -> Column {
    let kernel = fs::read_to_string(results.join("release"))
        .map(|r| r.trim().to_string())
        .unwrap_or(fallback);
    let mut col = Column {
        kernel,
        label,
        seconds,
        results: BTreeMap::new(),
        outputs: Vec::new(),
    };
    for (target, _, names) in selection(all) {
        let out = fs::read_to_string(results.join(format!("{target}.out"))).unwrap_or_default();
        let got = parse_libtest(&out);
        if names.is_empty() {
            col.results.extend(got);
        } else {
            for n in names {
                col.results.insert(
                    n.to_string(),
                    got.get(n).cloned().unwrap_or(Verdict {
                        outcome: Outcome::NotRun,
                        seconds: None,
                    }),
                );
            }
        }
        col.outputs.push((target.to_string(), out));
    }
    col
}

fn run_guest(
    vng: &Path,
    dir: &Path,
    k: &Kernel,
    bins: &Binaries,
    envs: &[(&str, &Path)],
    all: bool,
) -> Result<Column> {
    let image = vmlinuz(dir).with_context(|| format!("no vmlinuz under {}", dir.display()))?;
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("kernel")
        .to_string();
    let (results, script) = fresh_results(&name, bins, envs, all)?;
    println!(
        "xtask: matrix: booting {name} ({}) under qemu TCG and running the tests",
        k.distro
    );
    let started = Instant::now();
    let path = format!(
        "{}:{}",
        vng.parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        std::env::var("PATH").unwrap_or_default()
    );
    let finished = run_bounded(
        Command::new(vng)
            .env("PATH", path)
            .args([
                "--disable-kvm",
                "--memory",
                "2G",
                "--cpus",
                "2",
                "--rw",
                "-r",
            ])
            .arg(&image)
            .arg("--")
            .arg(&script),
        &results.join("console.log"),
        GUEST_DEADLINE,
    )?;
    let seconds = started.elapsed().as_secs();
    if !finished {
        println!("xtask: matrix: {name} did not finish within {GUEST_DEADLINE:?}: stopped");
    } else if !results.join("done").exists() {
        println!(
            "xtask: matrix: {name}: the guest ended before its script did (see {})",
            results.join("console.log").display()
        );
    }
    Ok(collect(name, k.distro.into(), &results, seconds, all))
}

/// The same list on the host kernel, natively.
fn run_host(bins: &Binaries, envs: &[(&str, &Path)], all: bool) -> Result<Column> {
    let (results, script) = fresh_results("host", bins, envs, all)?;
    println!("xtask: matrix: the same tests on this machine's kernel");
    let started = Instant::now();
    run_bounded(
        Command::new("sh").arg(&script),
        &results.join("console.log"),
        GUEST_DEADLINE,
    )?;
    Ok(collect(
        "host".into(),
        "this machine".into(),
        &results,
        started.elapsed().as_secs(),
        all,
    ))
}

/// The table, in Markdown, then every failure's output.
fn report(cols: &[Column]) -> String {
    let mut names: Vec<&String> = cols.iter().flat_map(|c| c.results.keys()).collect();
    names.sort();
    names.dedup();
    let mut s = String::from("| test |");
    for c in cols {
        let _ = write!(s, " {} ({}) |", c.kernel, c.label);
    }
    s.push_str("\n|---|");
    s.push_str(&"---|".repeat(cols.len()));
    s.push('\n');
    for n in &names {
        let _ = write!(s, "| {n} |");
        for c in cols {
            let cell = match c.results.get(*n) {
                None => "–".to_string(),
                Some(Verdict {
                    outcome,
                    seconds: Some(t),
                }) => format!("{} ({t:.0} s)", outcome.cell()),
                Some(v) => v.outcome.cell().to_string(),
            };
            let _ = write!(s, " {cell} |");
        }
        s.push('\n');
    }
    s.push_str("| wall time |");
    for c in cols {
        let _ = write!(s, " {} s |", c.seconds);
    }
    s.push('\n');
    for c in cols {
        for (n, v) in &c.results {
            let o = &v.outcome;
            if *o == Outcome::Ok || *o == Outcome::Ignored {
                continue;
            }
            let _ = writeln!(s, "\n### {n} on {}: {}\n", c.kernel, o.cell());
            let marker = format!("---- {n} stdout ----");
            let excerpt: String = c
                .outputs
                .iter()
                .find_map(|(_, out)| out.find(&marker).map(|i| &out[i..]))
                .map(|t| t.lines().take(40).collect::<Vec<_>>().join("\n"))
                .unwrap_or_else(|| "(no output for this test: see the console log)".into());
            let _ = writeln!(s, "```\n{excerpt}\n```");
        }
    }
    s
}

/// Boots every kernel of the matrix and runs the list in each, the host kernel too; fails when
/// any test does not pass on any of them.
pub fn run(bins: &Binaries, envs: &[(&str, &Path)], args: &MatrixArgs) -> Result<()> {
    let started = Instant::now();
    let vng = ensure_virtme()?;
    let apt = matrix_dir().join("apt");
    let mut updated = false;
    let mut cols = Vec::new();
    for k in KERNELS {
        if !args.kernels.is_empty()
            && !args.kernels.iter().any(|want| {
                k.prefix
                    .trim_start_matches("linux-image-")
                    .starts_with(want.as_str())
            })
        {
            continue;
        }
        let dir = fetch(k, &apt, &mut updated)?;
        cols.push(run_guest(&vng, &dir, k, bins, envs, args.all)?);
    }
    cols.push(run_host(bins, envs, args.all)?);
    let table = report(&cols);
    let path = matrix_dir().join("report.md");
    fs::write(&path, &table)?;
    println!(
        "xtask: kernel matrix ({} s; {}):\n{table}",
        started.elapsed().as_secs(),
        path.display()
    );
    let bad: Vec<String> = cols
        .iter()
        .flat_map(|c| {
            c.results
                .iter()
                .filter(|(_, v)| matches!(v.outcome, Outcome::Failed | Outcome::NotRun))
                .map(move |(n, v)| format!("{n} on {} ({})", c.kernel, v.outcome.cell()))
        })
        .collect();
    if !bad.is_empty() {
        bail!("the kernel matrix failed: {}", bad.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtest_lines_are_read() {
        let out = "running 4 tests\ntest a::b ... ok\ntest a::c ... FAILED\n\
                   test a::d ... ignored, needs x\ntest a::e ... ok <12.500s>\nnoise\n\
                   test result: FAILED. 1 passed\n";
        let r = parse_libtest(out);
        let o = |n: &str| r.get(n).map(|v| (v.outcome.clone(), v.seconds));
        assert_eq!(o("a::b"), Some((Outcome::Ok, None)));
        assert_eq!(o("a::c"), Some((Outcome::Failed, None)));
        assert_eq!(o("a::d"), Some((Outcome::Ignored, None)));
        assert_eq!(o("a::e"), Some((Outcome::Ok, Some(12.5))));
        assert_eq!(r.len(), 4);
    }

    #[test]
    fn series_numbers_pick_the_newest() {
        let k = &KERNELS[1];
        assert_eq!(series_number(k, "linux-image-6.1.0-50-amd64"), Some(50));
        assert_eq!(series_number(k, "linux-image-6.1.0-50-amd64-dbg"), None);
        assert_eq!(series_number(k, "linux-image-6.1.0-50-rt-amd64"), None);
        let t = &KERNELS[2];
        assert_eq!(
            series_number(t, "linux-image-6.12.117+deb13-amd64"),
            Some(117)
        );
        assert_eq!(
            series_number(t, "linux-image-6.12.117+deb13-cloud-amd64"),
            None
        );
        for k in KERNELS {
            assert!(
                series_number(k, k.pinned).is_some(),
                "{} is of its series",
                k.pinned
            );
        }
    }

    #[test]
    fn a_missing_verdict_is_not_run() {
        let dir = std::env::temp_dir().join(format!("xtask-matrix-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(
            dir.join("e2e.out"),
            "test e2e::exec::exec_of_a_memfd ... ok\n",
        )
        .expect("write");
        let col = collect("k".into(), "l".into(), &dir, 1, false);
        let o = |n: &str| col.results.get(n).map(|v| v.outcome.clone());
        assert_eq!(o("e2e::exec::exec_of_a_memfd"), Some(Outcome::Ok));
        assert_eq!(o("e2e::dns::dns_from_a_raw_socket"), Some(Outcome::NotRun));
        assert_eq!(
            o("every_program_passes_the_verifier"),
            Some(Outcome::NotRun)
        );
        let _ = fs::remove_dir_all(&dir);
    }
}
