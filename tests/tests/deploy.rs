//! Deployment tests: the Kubernetes manifests and the Helm chart (`deploy/kubernetes/`,
//! `deploy/helm/rmm-monitor/`), the reloader sidecar, and the Debian package.
//!
//! - `manifests`: the chart is rendered offline by Helm's own engine (the PyPI package
//!   helm-python-sdk, driven by `deploy/render.py`); the plain manifests must equal its render;
//!   every object is checked against the Kubernetes OpenAPI schemas (kubernetes-validate,
//!   strict, Kubernetes 1.30 and 1.37) and by checkov (`deploy/kubernetes/.checkov.yaml` lists
//!   and justifies every skipped check); the DaemonSet is checked against the systemd unit
//!   (same capabilities) and the design (read-only mounts, probes, ports); the ConfigMaps'
//!   files pass `rmm-monitor config check` / `rules check`. No root needed.
//! - `reloader`: the sidecar's script against a real daemon in a sibling cgroup, with and
//!   without a cgroup namespace, next to decoys named `rmm-monitor` elsewhere: rules changes give
//!   SIGHUP, a config change SIGTERM, the decoys get nothing; under dash and busybox sh. Root.
//!   And shellcheck on the script.
//! - `package`: `dpkg -i` of the package built by `cargo xtask package`, `systemd-analyze
//!   verify` and `security`, the installed daemon started as the unit starts it (its
//!   capability set, NoNewPrivileges, SecureBits, UMask, sd_notify socket, watchdog), an alert
//!   read back from journald, SIGHUP and SIGTERM, then `dpkg -P` and nothing left. Root.
//!
//! The Python tools come from PyPI: kubernetes-validate, checkov and helm-python-sdk (see
//! [`PIP_PACKAGES`]). They are looked up in `$RMM_DEPLOY_TOOLS/bin`, then in the virtualenv
//! `target/deploy-tools/bin`, then on PATH; a missing one fails the test naming its package.
//! Debian packages: busybox-static and shellcheck (reloader), systemd (journald, journalctl,
//! systemd-analyze), util-linux (setpriv, unshare).

mod deploy {
    pub mod manifests;
    pub mod package;
    pub mod reloader;
}

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::Command,
    sync::{Mutex, MutexGuard},
};

use rmm_tests::{HelperRun, Value, run_bounded};

pub use rmm_tests::root_or_skip;

/// The PyPI packages (and versions) the deployment tests were written against.
pub const PIP_PACKAGES: &str = "kubernetes-validate==1.37.0 checkov==3.3.30 helm-python-sdk==0.2.2";

/// The Kubernetes versions the manifests are validated against: the chart's minimum
/// (`kubeVersion: >=1.30.0-0`, for recursiveReadOnly) and the newest schema shipped.
pub const KUBE_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_path_buf()
}

pub fn chart_dir() -> PathBuf {
    workspace().join("deploy/helm/rmm-monitor")
}

pub fn plain_dir() -> PathBuf {
    workspace().join("deploy/kubernetes")
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

fn install_hint(package: &str) -> String {
    format!(
        "install the PyPI package {package} (the deployment tests use {PIP_PACKAGES}), e.g. \
         `python3 -m venv target/deploy-tools && target/deploy-tools/bin/pip install \
         {PIP_PACKAGES}`, or set RMM_DEPLOY_TOOLS to a virtualenv that has them"
    )
}

/// Where the deployment tools may be: `$RMM_DEPLOY_TOOLS/bin`, `target/deploy-tools/bin`, PATH.
fn tool_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("RMM_DEPLOY_TOOLS") {
        dirs.push(PathBuf::from(d).join("bin"));
    }
    dirs.push(workspace().join("target/deploy-tools/bin"));
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs
}

/// The executable `name` of the PyPI package `package`; fails the test naming the package.
pub fn tool(name: &str, package: &str) -> PathBuf {
    tool_dirs()
        .into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`{name}` not found: {}", install_hint(package)))
}

/// A Python that can import helm_python (helm-python-sdk) and yaml (PyYAML, which checkov and
/// kubernetes-validate bring).
pub fn python() -> PathBuf {
    let mut tried = Vec::new();
    for d in tool_dirs() {
        let p = d.join("python3");
        if !p.is_file() || tried.contains(&p) {
            continue;
        }
        let ok = Command::new(&p)
            .args(["-c", "import helm_python, yaml"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return p;
        }
        tried.push(p);
    }
    panic!(
        "no python3 can import helm_python and yaml (tried {tried:?}): {}",
        install_hint("helm-python-sdk")
    );
}

/// Runs a program (bounded: 60 s) and fails the test with its output unless it succeeds.
pub fn run_ok<S: AsRef<OsStr>>(program: &Path, args: &[S]) -> HelperRun {
    let run = run_bounded(program, args);
    let shown: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
    assert!(
        run.status.success(),
        "{} {} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        program.display(),
        shown.join(" "),
        run.status,
        run.stdout,
        run.stderr
    );
    run
}

/// `deploy/render.py ARGS` with the helm-python-sdk Python; fails the test when it fails.
pub fn render_py(args: &[&str]) -> HelperRun {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/deploy/render.py");
    let mut all = vec![path_str(&script)];
    all.extend_from_slice(args);
    run_ok(&python(), &all)
}

/// Every YAML document of `files`, as JSON values.
pub fn yaml_docs(files: &[&Path]) -> Vec<Value> {
    let mut args = vec!["json"];
    args.extend(files.iter().map(|f| path_str(f)));
    let run = render_py(&args);
    match serde_json::from_str(&run.stdout) {
        Ok(Value::Array(docs)) => docs,
        other => panic!("render.py json printed no list: {other:?}"),
    }
}

/// The chart rendered with `values` files (none: the chart's defaults) as release
/// rmm-monitor in namespace rmm-monitor.
pub fn render_chart(values: &[&Path]) -> String {
    let chart = chart_dir();
    let mut args = vec!["template", path_str(&chart)];
    for v in values {
        args.extend(["-f", path_str(v)]);
    }
    render_py(&args).stdout
}

/// One root test at a time in this binary: each starts a daemon, and two daemons would see
/// each other's test traffic.
static ROOT: Mutex<()> = Mutex::new(());

pub fn root_lock() -> MutexGuard<'static, ()> {
    ROOT.lock().unwrap_or_else(|e| e.into_inner())
}

pub use rmm_tests::poll;

/// The `[Service]` settings of a systemd unit file: `(key, value)` in file order.
pub fn unit_service_settings(text: &str) -> Vec<(String, String)> {
    let mut section = "";
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            section = line;
            continue;
        }
        if section == "[Service]"
            && let Some((k, v)) = line.split_once('=')
        {
            out.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    out
}

/// The value of `key` in `[Service]`; fails the test when the unit has none.
pub fn unit_setting<'a>(settings: &'a [(String, String)], key: &str) -> &'a str {
    settings
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("the unit has no {key}="))
}

/// The unit's CapabilityBoundingSet as Kubernetes names them (`CAP_BPF` -> `BPF`).
pub fn unit_capabilities(settings: &[(String, String)]) -> Vec<String> {
    unit_setting(settings, "CapabilityBoundingSet")
        .split_whitespace()
        .map(|c| {
            c.strip_prefix("CAP_")
                .unwrap_or_else(|| panic!("capability {c:?} in the unit lacks CAP_"))
                .to_owned()
        })
        .collect()
}

#[test]
fn unit_settings_are_parsed() {
    let s = unit_service_settings(
        "[Unit]\nDescription=x\n[Service]\n# c\nExecStart=/usr/bin/x run\n\
         CapabilityBoundingSet=CAP_BPF CAP_PERFMON\n[Install]\nWantedBy=y\n",
    );
    assert_eq!(unit_setting(&s, "ExecStart"), "/usr/bin/x run");
    assert_eq!(unit_capabilities(&s), ["BPF", "PERFMON"]);
    assert!(s.iter().all(|(k, _)| k != "WantedBy" && k != "Description"));
}
