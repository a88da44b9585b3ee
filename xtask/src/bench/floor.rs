//! The floor: what merely having BPF programs on the tracepoints an exec/connect/DNS monitor
//! hooks costs, measured with bpftrace and a script that only counts in the kernel (one map
//! update per event, nothing reaches userspace per event). No tracepoint monitor can go below
//! it: enabling any `sys_enter_*` tracepoint sends every syscall of every process through the
//! slow syscall path. Started fresh for every floor storm, like the daemon.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
};

use anyhow::{Result, bail};
use serde::Serialize;

use super::{
    monitor::{self, ProcSnap},
    storm::StormResult,
    sys,
};

/// The counting script. `ready` from BEGIN is a safe readiness signal: bpftrace reads the
/// output of BEGIN only after its attach loop, so the line appears once every probe is live
/// (its own `Attaching N probes...` comes before the attach and is not).
pub const SCRIPT: &str = r#"BEGIN { printf("ready\n"); }
tracepoint:sched:sched_process_exec,
tracepoint:syscalls:sys_enter_connect,
tracepoint:syscalls:sys_enter_sendto,
tracepoint:syscalls:sys_enter_sendmsg,
tracepoint:syscalls:sys_enter_sendmmsg
{ @events = count(); }
"#;

/// bpftrace's harmless complaint on kernels that account BPF memory to the memcg.
const MEMLOCK_NOISE: &str = "couldn't set RLIMIT_MEMLOCK";

const READY_TIMEOUT_S: f64 = 30.0;

/// The bpftrace binary found at the start of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Bpftrace {
    pub path: PathBuf,
    pub version: String,
}

impl Bpftrace {
    /// bpftrace from PATH (or /usr/bin, /usr/sbin), with the version it reports; None if it
    /// is not installed or does not run.
    pub fn find() -> Option<Bpftrace> {
        let path_var = std::env::var_os("PATH").unwrap_or_default();
        let path = std::env::split_paths(&path_var)
            .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
            .map(|d| d.join("bpftrace"))
            .find(|p| p.is_file())?;
        let out = Command::new(&path)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Some(Bpftrace { path, version })
    }

    /// The command line, for the JSON and the notes.
    pub fn cmd(&self) -> Vec<String> {
        vec![
            self.path.display().to_string(),
            "-B".into(),
            "line".into(),
            "-e".into(),
            SCRIPT.into(),
        ]
    }
}

/// A running floor: `bpftrace -B line -e SCRIPT`, stdout and stderr to files.
pub struct Floor {
    child: Option<Child>,
    pub pid: i32,
    stdout: PathBuf,
    stderr: PathBuf,
    pub ready_s: f64,
}

impl Floor {
    /// Starts bpftrace in its own process group and waits (30 s at most) for the `ready` line
    /// on its stdout.
    pub fn start(bt: &Bpftrace, dir: &Path) -> Result<Floor> {
        let mut cmd = Command::new(&bt.path);
        cmd.args(["-B", "line", "-e", SCRIPT]);
        let t0 = sys::now_s();
        let sys::Spawned {
            child,
            pid,
            stdout,
            stderr,
        } = sys::spawn_logged(cmd, dir, "stdout.txt")?;
        let mut f = Floor {
            child: Some(child),
            pid,
            stdout,
            stderr,
            ready_s: 0.0,
        };
        loop {
            let out = std::fs::read_to_string(&f.stdout).unwrap_or_default();
            if out.lines().any(|l| l.trim() == "ready") {
                break;
            }
            if let Some(st) = f.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                f.child = None;
                bail!(
                    "bpftrace exited ({st}) before it was ready: {}",
                    f.problems().join(" | ")
                );
            }
            if sys::now_s() - t0 > READY_TIMEOUT_S {
                bail!(
                    "no `ready` line from bpftrace after {READY_TIMEOUT_S} s: {}",
                    f.problems().join(" | ")
                );
            }
            sys::sleep_s(0.01)?;
        }
        f.ready_s = sys::now_s() - t0;
        Ok(f)
    }

    pub fn snapshot(&self) -> ProcSnap {
        ProcSnap::read(self.pid)
    }

    /// Its stderr lines other than the RLIMIT_MEMLOCK notice (at most 20).
    fn problems(&self) -> Vec<String> {
        std::fs::read_to_string(&self.stderr)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.contains(MEMLOCK_NOISE))
            .take(20)
            .map(str::to_string)
            .collect()
    }

    /// SIGTERM (bpftrace then prints its map and exits; SIGKILL after 20 s) and the count of
    /// events its probes saw while it ran.
    pub fn stop(mut self) -> Result<FloorStop> {
        let t0 = sys::now_s();
        let status = self.terminate()?;
        let out = std::fs::read_to_string(&self.stdout).unwrap_or_default();
        let events = out.lines().find_map(|l| {
            l.trim()
                .strip_prefix("@events:")
                .and_then(|n| n.trim().parse::<u64>().ok())
        });
        Ok(FloorStop {
            exit: status.map(|s| s.to_string()),
            stop_s: sys::now_s() - t0,
            events,
            stderr: self.problems(),
        })
    }

    fn terminate(&mut self) -> Result<Option<ExitStatus>> {
        sys::terminate(&mut self.child, "bpftrace")
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = self.terminate();
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FloorStop {
    pub exit: Option<String>,
    pub stop_s: f64,
    /// `@events` at exit: every probe hit of the whole machine while bpftrace ran (the storm's
    /// own operations and anything else).
    pub events: Option<u64>,
    /// Its stderr, without the RLIMIT_MEMLOCK notice.
    pub stderr: Vec<String>,
}

/// Everything measured in one floor storm.
#[derive(Debug, Clone, Serialize)]
pub struct Floored {
    pub storm: Option<StormResult>,
    pub ready_s: f64,
    /// From `ready` to the storm, and whether bpftrace was idle by then.
    pub settle_s: f64,
    pub settled: bool,
    /// bpftrace's own CPU and memory (idle after the attach: it only counts in the kernel).
    pub snap_before: ProcSnap,
    pub snap_after: Option<ProcSnap>,
    /// Probe hits the storm must have caused at least: one per successful operation (an exec,
    /// a connect, a DNS send; the DNS storms cause two, the responder's answers being sends).
    pub min_events: u64,
    pub stop: Option<FloorStop>,
}

/// One storm under a floor just started (`floor`). `run` is the storm, given bpftrace's pid
/// (not to be listed among other tracers).
pub fn floored(
    floor: Floor,
    settle: (f64, f64),
    run: impl FnOnce(i32) -> Result<StormResult>,
) -> Result<Floored> {
    let (settle_s, settled) = monitor::settle(floor.pid, settle.0, settle.1)?;
    let mut f = Floored {
        storm: None,
        ready_s: floor.ready_s,
        settle_s,
        settled,
        snap_before: floor.snapshot(),
        snap_after: None,
        min_events: 0,
        stop: None,
    };
    let storm = run(floor.pid)?;
    f.min_events = storm.ops.saturating_sub(storm.errors);
    f.storm = Some(storm);
    f.snap_after = Some(floor.snapshot());
    f.stop = Some(floor.stop()?);
    Ok(f)
}
