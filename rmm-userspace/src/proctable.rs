//! The process table: seeded from /proc once the probes are attached, then kept current by
//! exec, fork and exit events (no polling).

use std::{
    collections::{HashMap, VecDeque},
    fs, io,
    path::Path,
};

use serde::Serialize;

use crate::decode::Event;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Proc {
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub comm: String,
    pub executable: String,
    /// `executable` is the whole path of a file in the file system: not cut, not detached
    /// (memfd), not deleted. Only such a path may match an allowlist glob: a user can build a
    /// deep path whose cut tail looks like an allowlisted one.
    #[serde(skip)]
    pub exe_exact: bool,
    pub args: Vec<String>,
    pub cgroup_id: u64,
}

/// Exec flags that make the executable path inexact (see [`Proc::exe_exact`]).
const INEXACT: &[&str] = &[
    "path_truncated",
    "path_error",
    "no_offsets",
    "path_detached",
    "path_deleted",
];

/// What the /proc walk found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SeedReport {
    pub processes: usize,
    /// Entries that vanished while being read (normal churn).
    pub vanished: u64,
    /// Entries that could not be read for another reason (permissions, a broken /proc).
    pub unreadable: u64,
}

#[derive(Debug, Default)]
pub struct ProcTable {
    procs: HashMap<u32, Proc>,
    /// Exited processes, oldest first: (exit time, pid). They stay visible for
    /// [`EXIT_GRACE_NS`] so that connect and DNS events from the other ring buffer, which may be
    /// processed after the exit, still find their process.
    exited: VecDeque<(u64, u32)>,
    /// Pids whose current entry is a tombstone, with its exit time.
    tombstones: HashMap<u32, u64>,
}

/// How long an exited process stays in the table (kernel time).
pub const EXIT_GRACE_NS: u64 = 2_000_000_000;

impl ProcTable {
    /// Processes alive (exited ones kept for the grace period are not counted).
    pub fn len(&self) -> usize {
        self.procs.len() - self.tombstones.len()
    }

    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Proc> {
        self.procs.values()
    }

    pub fn get(&self, pid: u32) -> Option<&Proc> {
        self.procs.get(&pid)
    }

    /// Up to `n` ancestors of `pid`, parent first.
    pub fn ancestors(&self, pid: u32, n: usize) -> Vec<&Proc> {
        let mut out = Vec::new();
        let mut cur = self.procs.get(&pid).map(|p| p.ppid);
        while let Some(ppid) = cur {
            if out.len() == n || ppid == 0 {
                break;
            }
            match self.procs.get(&ppid) {
                Some(p) => {
                    out.push(p);
                    cur = Some(p.ppid);
                }
                None => break,
            }
        }
        out
    }

    /// Reads every process under `proc_root` (normally `/proc`). A process that disappears
    /// mid-read is skipped; one that cannot be read is counted.
    pub fn seed(&mut self, proc_root: &Path) -> io::Result<SeedReport> {
        let mut report = SeedReport::default();
        for entry in fs::read_dir(proc_root)? {
            let Ok(entry) = entry else {
                report.unreadable += 1;
                continue;
            };
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            match read_proc(&entry.path(), pid) {
                Ok(p) => {
                    // An event applied later is newer than what /proc showed.
                    self.procs.entry(pid).or_insert(p);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => report.vanished += 1,
                Err(e) => {
                    log::debug!("cannot read {}: {e}", entry.path().display());
                    report.unreadable += 1;
                }
            }
        }
        report.processes = self.procs.len();
        Ok(report)
    }

    /// Applies an event. Exec replaces what is known (the kernel's view is authoritative);
    /// fork adds the child unless /proc already showed it (it may have exec'd since); exit
    /// removes the process.
    pub fn apply(&mut self, ev: &Event) {
        self.sweep(event_ts(ev));
        match ev {
            Event::Exec(e) => {
                self.tombstones.remove(&e.task.pid);
                self.procs.insert(
                    e.task.pid,
                    Proc {
                        pid: e.task.pid,
                        ppid: e.ppid,
                        uid: e.task.uid,
                        comm: e.task.comm.clone(),
                        executable: e.executable.clone(),
                        exe_exact: e.executable.starts_with('/')
                            && !e.flags.iter().any(|f| INEXACT.contains(f)),
                        args: e.args.clone(),
                        cgroup_id: e.task.cgroup_id,
                    },
                );
            }
            Event::Fork(f) => {
                let child = match self.procs.get(&f.task.pid) {
                    Some(parent) => Proc {
                        pid: f.child_pid,
                        ppid: parent.pid,
                        ..parent.clone()
                    },
                    None => Proc {
                        pid: f.child_pid,
                        ppid: f.task.pid,
                        uid: f.task.uid,
                        comm: f.task.comm.clone(),
                        executable: String::new(),
                        exe_exact: false,
                        args: Vec::new(),
                        cgroup_id: f.task.cgroup_id,
                    },
                };
                // A tombstone of an earlier process with the same pid is replaced.
                if self.tombstones.remove(&f.child_pid).is_some() {
                    self.procs.remove(&f.child_pid);
                }
                self.procs.entry(f.child_pid).or_insert(child);
            }
            Event::Exit(x) => {
                if self.procs.contains_key(&x.task.pid) {
                    self.tombstones.insert(x.task.pid, x.task.ts_ns);
                    self.exited.push_back((x.task.ts_ns, x.task.pid));
                }
            }
            Event::Connect(_) | Event::Dns(_) | Event::DnsAnswer(_) => {}
        }
    }
}

impl ProcTable {
    /// Removes processes that exited more than [`EXIT_GRACE_NS`] before `now_ns`, unless the
    /// pid has been reused since (its tombstone is gone or newer).
    fn sweep(&mut self, now_ns: u64) {
        while let Some(&(t, pid)) = self.exited.front() {
            if now_ns < t.saturating_add(EXIT_GRACE_NS) {
                break;
            }
            self.exited.pop_front();
            if self.tombstones.get(&pid) == Some(&t) {
                self.tombstones.remove(&pid);
                self.procs.remove(&pid);
            }
        }
    }

    /// Whether `pid` is in the table and has not exited.
    pub fn alive(&self, pid: u32) -> bool {
        self.procs.contains_key(&pid) && !self.tombstones.contains_key(&pid)
    }
}

fn event_ts(ev: &Event) -> u64 {
    match ev {
        Event::Exec(e) => e.task.ts_ns,
        Event::Fork(f) => f.task.ts_ns,
        Event::Exit(x) => x.task.ts_ns,
        Event::Connect(c) => c.task.ts_ns,
        Event::Dns(d) => d.task.ts_ns,
        Event::DnsAnswer(a) => a.ts_ns,
    }
}

fn read_proc(dir: &Path, pid: u32) -> io::Result<Proc> {
    let stat = fs::read_to_string(dir.join("stat"))?;
    let (comm, ppid) = parse_stat(&stat).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unparsable stat for pid {pid}"),
        )
    })?;
    let status = fs::read_to_string(dir.join("status"))?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .unwrap_or(u32::MAX);
    // Kernel threads have no exe and an empty cmdline: not an error.
    let executable = match fs::read_link(dir.join("exe")) {
        Ok(p) => p.to_string_lossy().into_owned(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Err(e),
        Err(_) => String::new(),
    };
    let cmdline = fs::read(dir.join("cmdline"))?;
    let (args, _) = crate::decode::split_args(&cmdline, false);
    // The kernel marks an unlinked executable ` (deleted)`; a memfd has no leading slash.
    let exe_exact = executable.starts_with('/') && !executable.ends_with(" (deleted)");
    Ok(Proc {
        pid,
        ppid,
        uid,
        comm,
        executable,
        exe_exact,
        args,
        cgroup_id: 0,
    })
}

/// `pid (comm) state ppid ...`; comm may itself contain spaces and parentheses.
pub fn parse_stat(stat: &str) -> Option<(String, u32)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let mut rest = stat.get(close + 1..)?.split_whitespace();
    let _state = rest.next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((comm, ppid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{Exec, Exit, Fork, Task};

    fn task(pid: u32) -> Task {
        Task {
            ts_ns: 0,
            pid,
            tid: pid,
            uid: 0,
            gid: 0,
            comm: format!("c{pid}"),
            cgroup_id: 1,
        }
    }

    #[test]
    fn stat_with_odd_comm() {
        assert_eq!(
            parse_stat("42 (a) b) (c) S 7 42 42"),
            Some(("a) b) (c".into(), 7))
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S notanumber"), None);
    }

    #[test]
    fn fork_exec_exit_and_ancestors() {
        let mut t = ProcTable::default();
        let exec = |pid, ppid, exe: &str| {
            Event::Exec(Exec {
                task: task(pid),
                ppid,
                filename: exe.into(),
                executable: exe.into(),
                args: vec![exe.into()],
                args_truncated: false,
                flags: vec![],
            })
        };
        t.apply(&exec(1, 0, "/sbin/init"));
        t.apply(&Event::Fork(Fork {
            task: task(1),
            child_pid: 2,
        }));
        assert_eq!(
            t.get(2).map(|p| (p.ppid, p.executable.as_str())),
            Some((1, "/sbin/init"))
        );
        t.apply(&exec(2, 1, "/bin/sh"));
        t.apply(&Event::Fork(Fork {
            task: task(2),
            child_pid: 3,
        }));
        t.apply(&exec(3, 2, "/usr/bin/x11vnc"));
        let chain: Vec<u32> = t.ancestors(3, 4).iter().map(|p| p.pid).collect();
        assert_eq!(chain, vec![2, 1]);
        t.apply(&Event::Exit(Exit {
            task: task(3),
            exit_code: 0,
        }));
        // Still visible for events of the other ring that are processed after the exit.
        assert!(t.get(3).is_some() && !t.alive(3));
        assert_eq!(t.len(), 2);
        let mut later = task(1);
        later.ts_ns = EXIT_GRACE_NS + 1;
        t.apply(&Event::Fork(Fork {
            task: later,
            child_pid: 4,
        }));
        assert!(t.get(3).is_none(), "gone after the grace period");
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn seeds_from_this_machines_proc() {
        let mut t = ProcTable::default();
        let report = t.seed(Path::new("/proc")).expect("/proc readable");
        let me = t.get(std::process::id()).expect("own process present");
        assert!(
            me.executable.ends_with(
                std::env::current_exe()
                    .unwrap()
                    .file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
            )
        );
        assert!(report.processes > 1);
    }

    #[test]
    fn a_reused_pid_replaces_the_tombstone_and_survives_its_sweep() {
        let mut t = ProcTable::default();
        t.apply(&Event::Fork(Fork {
            task: task(1),
            child_pid: 9,
        }));
        t.apply(&Event::Exit(Exit {
            task: task(9),
            exit_code: 0,
        }));
        t.apply(&Event::Fork(Fork {
            task: task(1),
            child_pid: 9,
        }));
        assert!(t.alive(9));
        let mut later = task(1);
        later.ts_ns = 3 * EXIT_GRACE_NS;
        t.apply(&Event::Fork(Fork {
            task: later,
            child_pid: 10,
        }));
        assert!(t.alive(9), "the new process with the reused pid stays");
    }

    #[test]
    fn missing_proc_root_is_an_error() {
        assert!(
            ProcTable::default()
                .seed(Path::new("/nonexistent-proc"))
                .is_err()
        );
    }
}
