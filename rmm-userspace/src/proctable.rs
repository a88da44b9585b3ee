//! The process table: seeded from /proc once the probes are attached, then kept current by
//! exec, fork and exit events (no polling), and reconciled with /proc when the kernel reports
//! lost process records.
//!
//! Lineage follows the process that created each one (its fork), not the parent the kernel
//! names at exec: a double fork or `setsid` reparents to init or a subreaper, and
//! `(sleep 3; anydesk) &` under a web server must still show the web server. Each entry has an
//! identity of its own (`id`), so that a parent is found again after its pid was reused, and an
//! exited process stays (by identity) while processes it created are in the table.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    fs, io,
    path::Path,
};

use serde::Serialize;

use crate::decode::Event;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Proc {
    pub pid: u32,
    /// The process that created this one (at its fork); for a process first seen at its exec or
    /// in /proc, the parent the kernel named then.
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
    /// The process's start (CLOCK_BOOTTIME ns, see `rmm_common::Header::start_ns`); 0 when
    /// unknown. With the pid it names the process: a record whose start differs is of another
    /// process that had the pid.
    pub start_ns: u64,
    /// The length of a clock tick when `start_ns` came from `/proc/PID/stat` (which counts in
    /// ticks): a record's start matches when it falls in the same tick. 0: exact.
    #[serde(skip)]
    pub start_tick_ns: u64,
    /// The parent's start as the exec that created this entry named it (0: unknown): the
    /// parent is looked up by pid only while it has none of its own identity link.
    #[serde(skip)]
    parent_start_ns: u64,
    /// This entry's identity in the table (never reused), and its creator's (0: unknown).
    #[serde(skip)]
    pub id: u64,
    #[serde(skip)]
    pub parent_id: u64,
    /// Kernel time of what this entry shows: the event that set it, or the /proc read.
    #[serde(skip)]
    seen_ns: u64,
    /// Read from /proc: a buffered record older than `seen_ns` is stale for it.
    #[serde(skip)]
    from_proc: bool,
}

impl Proc {
    /// Whether this entry is the process `pid` that started at `start_ns` (an unknown start,
    /// on either side, matches any).
    pub fn is(&self, pid: u32, start_ns: u64) -> bool {
        self.pid == pid && self.started_at(start_ns)
    }

    /// Whether a record's start matches this entry's (see [`Proc::is`]).
    pub fn started_at(&self, start_ns: u64) -> bool {
        match self.start_tick_ns {
            0 => same_start(self.start_ns, start_ns),
            tick => same_start(self.start_ns, start_ns) || self.start_ns / tick == start_ns / tick,
        }
    }

    /// Takes a record's exact start in place of one known to the tick or not at all.
    fn learn_start(&mut self, start_ns: u64) {
        if start_ns != 0 && (self.start_ns == 0 || self.start_tick_ns != 0) {
            self.start_ns = start_ns;
            self.start_tick_ns = 0;
        }
    }
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

/// What a reconciliation with /proc changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Reconciled {
    /// Processes in the table that /proc no longer has (their exit was lost).
    pub gone: u64,
    /// Processes in /proc that the table lacked (their fork or exec was lost).
    pub added: u64,
}

#[derive(Debug)]
pub struct ProcTable {
    /// The current entry of each pid, alive or exited (a tombstone).
    procs: HashMap<u32, Proc>,
    /// Exited processes, oldest first: (exit time, pid). They stay visible for
    /// [`EXIT_GRACE_NS`] so that events processed after the exit still find their process.
    exited: VecDeque<(u64, u32)>,
    /// Pids whose current entry is a tombstone, with its exit time.
    tombstones: HashMap<u32, u64>,
    /// Exited processes past their grace period (or whose pid was reused) that processes in
    /// the table descend from, by identity.
    kept: HashMap<u64, Proc>,
    /// Entries (current or kept) created by each identity.
    children: HashMap<u64, u32>,
    next_id: u64,
    /// Most entries of pids (alive and exited together): see [`MAX_PROCS`].
    cap: usize,
    /// Exited ancestors not kept because [`MAX_KEPT`] were (the lineage of their descendants
    /// ends there).
    pub kept_refused: u64,
    /// New processes not tracked because the table held `cap` live ones (their alerts lack
    /// the lineage and the context the table gives).
    pub refused: u64,
    /// Exited processes retired before their grace period ended, to make room.
    pub exited_early: u64,
}

impl Default for ProcTable {
    fn default() -> Self {
        ProcTable::with_cap(MAX_PROCS)
    }
}

/// How long an exited process stays in the table (kernel time).
pub const EXIT_GRACE_NS: u64 = 2_000_000_000;
/// Most exited ancestors kept.
pub const MAX_KEPT: usize = 65_536;
/// Most pids in the table, alive and exited (a few hundred bytes each, plus the arguments):
/// past it, exited processes are retired before their grace period ends, then new processes
/// are not tracked (counted). Above Linux's default `pid_max` (32,768 on small machines);
/// systemd raises `pid_max` to 4,194,304, which no real host fills with live processes.
pub const MAX_PROCS: usize = 262_144;

impl ProcTable {
    /// A table of at most `cap` pids (at least 1).
    pub fn with_cap(cap: usize) -> ProcTable {
        ProcTable {
            procs: HashMap::new(),
            exited: VecDeque::new(),
            tombstones: HashMap::new(),
            kept: HashMap::new(),
            children: HashMap::new(),
            next_id: 0,
            cap: cap.max(1),
            kept_refused: 0,
            refused: 0,
            exited_early: 0,
        }
    }

    /// Exited processes still in their grace period.
    pub fn exited(&self) -> usize {
        self.tombstones.len()
    }

    /// Processes alive (exited ones kept for the grace period are not counted).
    pub fn len(&self) -> usize {
        self.procs.len() - self.tombstones.len()
    }

    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    /// Exited processes kept as ancestors of processes in the table.
    pub fn kept(&self) -> usize {
        self.kept.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Proc> {
        self.procs.values()
    }

    /// The current entry of `pid`, whichever process it is.
    pub fn get(&self, pid: u32) -> Option<&Proc> {
        self.procs.get(&pid)
    }

    /// The entry of the process `pid` that started at `start_ns` (see [`Proc::is`]): a late
    /// record of a process whose pid was reused finds nothing rather than the new process.
    pub fn get_at(&self, pid: u32, start_ns: u64) -> Option<&Proc> {
        self.procs.get(&pid).filter(|p| p.started_at(start_ns))
    }

    /// The entry of `pid` if it is alive and the process that started at `start_ns`.
    fn live_at(&self, pid: u32, start_ns: u64) -> Option<&Proc> {
        self.get_at(pid, start_ns)
            .filter(|_| !self.tombstones.contains_key(&pid))
    }

    /// The process that created `p`, if the table still knows it.
    fn parent_of(&self, p: &Proc) -> Option<&Proc> {
        if p.ppid == 0 || p.ppid == p.pid {
            return None;
        }
        if p.parent_id == 0 {
            return self
                .procs
                .get(&p.ppid)
                .filter(|q| q.started_at(p.parent_start_ns));
        }
        self.procs
            .get(&p.ppid)
            .filter(|q| q.id == p.parent_id)
            .or_else(|| self.kept.get(&p.parent_id))
    }

    /// Up to `n` ancestors of the current entry of `pid`, creator first.
    pub fn ancestors(&self, pid: u32, n: usize) -> Vec<&Proc> {
        self.procs
            .get(&pid)
            .map_or_else(Vec::new, |p| self.ancestors_of(p, n))
    }

    /// Up to `n` ancestors of `p`, creator first, followed by identity.
    pub fn ancestors_of<'a>(&'a self, p: &'a Proc, n: usize) -> Vec<&'a Proc> {
        let mut out = Vec::new();
        let mut cur = Some(p);
        while let Some(p) = cur {
            if out.len() == n {
                break;
            }
            cur = self.parent_of(p);
            if let Some(q) = cur {
                out.push(q);
            }
        }
        out
    }

    fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Makes `p` the current entry of its pid; the one it replaces leaves the table. A new pid
    /// in a full table takes the place of the oldest exited process, or is not tracked.
    fn insert(&mut self, p: Proc) {
        if !self.procs.contains_key(&p.pid) && self.procs.len() >= self.cap {
            while self.procs.len() >= self.cap && self.retire_oldest_exited() {}
            if self.procs.len() >= self.cap {
                self.refused += 1;
                return;
            }
        }
        if p.parent_id != 0 {
            *self.children.entry(p.parent_id).or_default() += 1;
        }
        if let Some(old) = self.procs.insert(p.pid, p) {
            self.retire(old);
        }
    }

    /// An entry that is no longer current: kept while it has children, dropped otherwise.
    fn retire(&mut self, old: Proc) {
        if self.children.get(&old.id).copied().unwrap_or(0) > 0 {
            if self.kept.len() < MAX_KEPT {
                self.kept.insert(old.id, old);
                return;
            }
            self.kept_refused += 1;
        }
        self.release(old.parent_id);
    }

    /// One entry created by `parent` is gone: an exited parent left with no children goes too,
    /// and so on up the lineage.
    fn release(&mut self, mut parent: u64) {
        while parent != 0 {
            let Some(n) = self.children.get_mut(&parent) else {
                return;
            };
            *n -= 1;
            if *n > 0 {
                return;
            }
            self.children.remove(&parent);
            match self.kept.remove(&parent) {
                Some(p) => parent = p.parent_id,
                None => return,
            }
        }
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
            let seen = crate::merge::kernel_now_ns();
            match read_proc(&entry.path(), pid) {
                Ok(mut p) => {
                    p.id = self.new_id();
                    p.seen_ns = seen;
                    self.insert(p);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => report.vanished += 1,
                Err(e) => {
                    log::debug!("cannot read {}: {e}", entry.path().display());
                    report.unreadable += 1;
                }
            }
        }
        self.link_seeded();
        report.processes = self.procs.len();
        Ok(report)
    }

    /// Gives the processes read from /proc their parents' identities.
    fn link_seeded(&mut self) {
        let links: Vec<(u32, u64)> = self
            .procs
            .values()
            .filter(|p| p.from_proc && p.parent_id == 0 && p.ppid != p.pid)
            .filter_map(|p| Some((p.pid, self.procs.get(&p.ppid)?.id)))
            .collect();
        for (pid, parent) in links {
            if let Some(p) = self.procs.get_mut(&pid) {
                p.parent_id = parent;
                *self.children.entry(parent).or_default() += 1;
            }
        }
    }

    /// Brings the table in line with `proc_root` after lost process records: processes it
    /// has that /proc lacks exited (their exit is recorded now), and processes /proc has that
    /// it lacks are read.
    pub fn reconcile(&mut self, proc_root: &Path) -> io::Result<Reconciled> {
        let mut present: HashSet<u32> = HashSet::new();
        for entry in fs::read_dir(proc_root)?.flatten() {
            if let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) {
                present.insert(pid);
            }
        }
        let now = crate::merge::kernel_now_ns();
        let mut done = Reconciled::default();
        let gone: Vec<u32> = self
            .procs
            .keys()
            .filter(|pid| !present.contains(*pid) && !self.tombstones.contains_key(*pid))
            .copied()
            .collect();
        for pid in gone {
            self.tombstones.insert(pid, now);
            self.exited.push_back((now, pid));
            done.gone += 1;
        }
        for pid in present {
            let dir = proc_root.join(pid.to_string());
            if let Some(p) = self
                .procs
                .get(&pid)
                .filter(|_| !self.tombstones.contains_key(&pid))
            {
                // The same process, unless /proc shows another start: then the entry is a
                // process whose exit was lost, and the pid's new owner replaces it.
                let now_there = fs::read_to_string(dir.join("stat"))
                    .ok()
                    .and_then(|s| parse_stat(&s))
                    .map(|(_, _, ticks)| ticks);
                match now_there {
                    Some(t) if p.start_ns != 0 && ticks(p.start_ns) != t => {
                        done.gone += 1;
                    }
                    _ => continue,
                }
            }
            if let Ok(mut p) = read_proc(&dir, pid) {
                p.id = self.new_id();
                p.seen_ns = now;
                self.tombstones.remove(&pid);
                self.insert(p);
                done.added += 1;
            }
        }
        self.link_seeded();
        Ok(done)
    }

    /// Applies an event. An exec keeps the process's identity and creator and takes the new
    /// image; a fork makes a new process that inherits its creator's image, arguments and
    /// cgroup, replacing whatever had the pid before; an exit makes a tombstone. A record older
    /// than what /proc showed for the pid is stale and ignored.
    pub fn apply(&mut self, ev: &Event) {
        let ts = event_ts(ev);
        self.sweep(ts);
        match ev {
            Event::Exec(e) => {
                let pid = e.task.pid;
                let exe_exact =
                    e.executable.starts_with('/') && !e.flags.iter().any(|f| INEXACT.contains(f));
                if self.stale(pid, ts) {
                    return;
                }
                // The same process takes its new image; an entry of the pid with another start
                // is a process whose exit was lost, and is replaced below.
                if self.live_at(pid, e.task.start_ns).is_some()
                    && let Some(p) = self.procs.get_mut(&pid)
                {
                    p.learn_start(e.task.start_ns);
                    p.uid = e.task.uid;
                    p.comm.clone_from(&e.task.comm);
                    p.executable.clone_from(&e.executable);
                    p.exe_exact = exe_exact;
                    p.args.clone_from(&e.args);
                    p.cgroup_id = e.task.cgroup_id;
                    p.seen_ns = ts;
                    p.from_proc = false;
                    return;
                }
                // First seen at its exec (its fork was before the start, or lost).
                self.tombstones.remove(&pid);
                let parent_id = self.live_at(e.ppid, e.parent_start_ns).map_or(0, |q| q.id);
                let p = Proc {
                    pid,
                    ppid: e.ppid,
                    uid: e.task.uid,
                    comm: e.task.comm.clone(),
                    executable: e.executable.clone(),
                    exe_exact,
                    args: e.args.clone(),
                    cgroup_id: e.task.cgroup_id,
                    start_ns: e.task.start_ns,
                    start_tick_ns: 0,
                    parent_start_ns: e.parent_start_ns,
                    id: self.new_id(),
                    parent_id,
                    seen_ns: ts,
                    from_proc: false,
                };
                self.insert(p);
            }
            Event::Fork(f) => {
                if self.stale(f.child_pid, ts) {
                    return;
                }
                let id = self.new_id();
                let child = match self.get_at(f.task.pid, f.task.start_ns) {
                    Some(parent) => Proc {
                        pid: f.child_pid,
                        ppid: parent.pid,
                        start_ns: f.child_start_ns,
                        start_tick_ns: 0,
                        parent_start_ns: f.task.start_ns,
                        id,
                        parent_id: parent.id,
                        seen_ns: ts,
                        from_proc: false,
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
                        start_ns: f.child_start_ns,
                        start_tick_ns: 0,
                        parent_start_ns: f.task.start_ns,
                        id,
                        parent_id: 0,
                        seen_ns: ts,
                        from_proc: false,
                    },
                };
                self.tombstones.remove(&f.child_pid);
                self.insert(child);
            }
            Event::Exit(x) => {
                let pid = x.task.pid;
                if self.stale(pid, ts) {
                    return;
                }
                // Only the process that started then: a lost exit's successor is not ended by
                // a late record of its predecessor.
                if self.live_at(pid, x.task.start_ns).is_some() {
                    self.tombstones.insert(pid, ts);
                    self.exited.push_back((ts, pid));
                }
            }
            Event::Connect(_) | Event::Dns(_) | Event::DnsAnswer(_) => {}
        }
    }

    /// A record of `pid` from before /proc was read for it: /proc showed what came after.
    fn stale(&self, pid: u32, ts: u64) -> bool {
        self.procs
            .get(&pid)
            .is_some_and(|p| p.from_proc && ts != 0 && ts < p.seen_ns)
    }

    /// Retires processes that exited more than [`EXIT_GRACE_NS`] before `now_ns`, unless the
    /// pid has been reused since (its tombstone is gone or newer). The list of exits holds
    /// at most `cap` entries (an exit storm within the grace period): the oldest go early.
    fn sweep(&mut self, now_ns: u64) {
        while let Some(&(t, _)) = self.exited.front() {
            if now_ns < t.saturating_add(EXIT_GRACE_NS) && self.exited.len() <= self.cap {
                break;
            }
            let early = now_ns < t.saturating_add(EXIT_GRACE_NS);
            if self.pop_exited() && early {
                self.exited_early += 1;
            }
        }
    }

    /// Retires the oldest exited process still in the table; false when there is none.
    fn retire_oldest_exited(&mut self) -> bool {
        while !self.exited.is_empty() {
            if self.pop_exited() {
                self.exited_early += 1;
                return true;
            }
        }
        false
    }

    /// Takes the oldest exit off the list and retires its process if the pid still shows it;
    /// true when an entry left the table.
    fn pop_exited(&mut self) -> bool {
        let Some((t, pid)) = self.exited.pop_front() else {
            return false;
        };
        if self.tombstones.get(&pid) != Some(&t) {
            return false;
        }
        self.tombstones.remove(&pid);
        match self.procs.remove(&pid) {
            Some(old) => {
                self.retire(old);
                true
            }
            None => false,
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
    let (comm, ppid, start_ticks) = parse_stat(&stat).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unparsable stat for pid {pid}"),
        )
    })?;
    let status = fs::read_to_string(dir.join("status"))?;
    let uid = parse_status_uid(&status);
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
        start_ns: start_ticks.saturating_mul(tick_ns()),
        start_tick_ns: tick_ns(),
        parent_start_ns: 0,
        id: 0,
        parent_id: 0,
        seen_ns: 0,
        from_proc: true,
    })
}

/// A start in the clock ticks of `/proc/PID/stat` (what `process.entity_id` holds).
pub fn ticks(start_ns: u64) -> u64 {
    start_ns / tick_ns()
}

/// Whether two exact starts are one process's (an unknown start, 0, matches any).
pub fn same_start(a: u64, b: u64) -> bool {
    a == 0 || b == 0 || a == b
}

/// The length of the clock tick that `/proc/PID/stat` counts in (`_SC_CLK_TCK`, 100 on Linux).
pub fn tick_ns() -> u64 {
    static TICK: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICK.get_or_init(|| {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if hz > 0 {
            1_000_000_000 / hz as u64
        } else {
            10_000_000
        }
    })
}

/// The real uid of a `/proc/PID/status` (the first number of its `Uid:` line); `u32::MAX`
/// when the line is missing or unparsable.
pub fn parse_status_uid(status: &str) -> u32 {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .unwrap_or(u32::MAX)
}

/// `pid (comm) state ppid ...`: the comm, the ppid and the start (field 22, in clock ticks
/// since boot); comm may itself contain spaces and parentheses.
pub fn parse_stat(stat: &str) -> Option<(String, u32, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let mut rest = stat.get(close + 1..)?.split_whitespace();
    let _state = rest.next()?;
    let ppid = rest.next()?.parse().ok()?;
    // Fields 5 to 21, then starttime.
    let start = rest.nth(17)?.parse().ok()?;
    Some((comm, ppid, start))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{Exec, Exit, Fork, Task};

    fn task(pid: u32) -> Task {
        Task {
            ts_ns: 0,
            pid,
            start_ns: 0,
            tid: pid,
            uid: 0,
            gid: 0,
            comm: format!("c{pid}"),
            cgroup_id: 1,
        }
    }

    #[test]
    fn stat_with_odd_comm() {
        let line = "42 (a) b) (c) S 7 42 42 0 -1 4194560 100 0 0 0 3 1 0 0 20 0 1 0 987654 9 9";
        assert_eq!(parse_stat(line), Some(("a) b) (c".into(), 7, 987_654)));
        assert_eq!(parse_stat("42 (a) S 7 42 42"), None, "cut before the start");
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S notanumber"), None);
    }

    #[test]
    fn fork_exec_exit_and_ancestors() {
        let mut t = ProcTable::default();
        t.apply(&exec_ev(1, 0, "/sbin/init", 0));
        t.apply(&fork_ev(1, 2, 0));
        assert_eq!(
            t.get(2).map(|p| (p.ppid, p.executable.as_str())),
            Some((1, "/sbin/init"))
        );
        t.apply(&exec_ev(2, 1, "/bin/sh", 0));
        t.apply(&fork_ev(2, 3, 0));
        t.apply(&exec_ev(3, 2, "/usr/bin/x11vnc", 0));
        let chain: Vec<u32> = t.ancestors(3, 4).iter().map(|p| p.pid).collect();
        assert_eq!(chain, vec![2, 1]);
        t.apply(&exit_ev(3, 0));
        // Still visible for events of the other ring that are processed after the exit.
        assert!(t.get(3).is_some() && !t.alive(3));
        assert_eq!(t.len(), 2);
        t.apply(&fork_ev(1, 4, EXIT_GRACE_NS + 1));
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

    /// A full table makes room by retiring the oldest exited processes before their grace
    /// period ends, never a live one; with only live ones left, new processes are refused
    /// and counted, and a pid already in the table is still updated.
    #[test]
    fn a_full_table_retires_exited_processes_early_then_refuses_new_ones() {
        let mut t = ProcTable::with_cap(4);
        t.apply(&exec_ev(1, 0, "/sbin/init", 0));
        for pid in 2..=4 {
            t.apply(&fork_ev(1, pid, 1));
        }
        t.apply(&exit_ev(2, 2));
        t.apply(&exit_ev(3, 3));
        t.apply(&fork_ev(1, 5, 4));
        assert!(t.get(2).is_none(), "the oldest exited process made room");
        assert!(
            t.get(3).is_some() && !t.alive(3),
            "the next one is still there"
        );
        assert_eq!((t.exited_early, t.refused), (1, 0));
        t.apply(&fork_ev(1, 6, 5));
        assert!(t.get(3).is_none() && t.alive(6));
        // Only live processes: 1, 4, 5, 6.
        t.apply(&fork_ev(1, 7, 6));
        assert!(t.get(7).is_none(), "refused");
        assert_eq!((t.exited_early, t.refused, t.len()), (2, 1, 4));
        assert!(t.alive(1) && t.alive(4) && t.alive(5) && t.alive(6));
        t.apply(&exec_ev(6, 1, "/usr/bin/x11vnc", 7));
        assert_eq!(
            t.get(6).map(|p| p.executable.as_str()),
            Some("/usr/bin/x11vnc")
        );
        assert_eq!(chain(&t, 6), vec!["/sbin/init"]);
    }

    /// An exit storm faster than the grace period: the list of exits stays within the cap
    /// (pids reused within the grace period leave stale entries in it).
    #[test]
    fn the_list_of_exits_is_bounded_under_an_exit_storm() {
        let mut t = ProcTable::with_cap(8);
        t.apply(&exec_ev(1, 0, "/sbin/init", 0));
        for i in 0..1000u64 {
            let pid = 2 + (i % 3) as u32;
            t.apply(&fork_ev(1, pid, i));
            t.apply(&exit_ev(pid, i));
            assert!(t.exited.len() <= 8 + 1, "{} exits listed", t.exited.len());
            assert!(t.procs.len() <= 8);
        }
        assert_eq!(t.refused, 0);
        assert!(t.alive(1));
    }

    #[test]
    fn a_reused_pid_replaces_the_tombstone_and_survives_its_sweep() {
        let mut t = ProcTable::default();
        t.apply(&fork_ev(1, 9, 0));
        t.apply(&exit_ev(9, 0));
        t.apply(&fork_ev(1, 9, 0));
        assert!(t.alive(9));
        t.apply(&fork_ev(1, 10, 3 * EXIT_GRACE_NS));
        assert!(t.alive(9), "the new process with the reused pid stays");
    }

    /// Events of processes with known starts (`start` is the process's, `other` its
    /// parent's or child's).
    fn with_starts(mut ev: Event, start: u64, other: u64) -> Event {
        match &mut ev {
            Event::Exec(e) => {
                e.task.start_ns = start;
                e.parent_start_ns = other;
            }
            Event::Fork(f) => {
                f.task.start_ns = start;
                f.child_start_ns = other;
            }
            Event::Exit(x) => x.task.start_ns = start,
            _ => {}
        }
        ev
    }

    /// A process whose exit record was lost, and whose pid a new process then took: records
    /// of the old one (late, or from a ring read behind) never land on the new one, and the
    /// new one's lineage is its own.
    #[test]
    fn a_late_record_after_pid_reuse_never_lands_on_the_new_process() {
        const OLD: u64 = 1_000_000_000;
        const NEW: u64 = 9_000_000_000;
        let mut t = ProcTable::default();
        t.apply(&with_starts(exec_ev(1, 0, "/sbin/init", 1), 5, 0));
        t.apply(&with_starts(fork_ev(1, 100, 2), 5, OLD));
        t.apply(&with_starts(exec_ev(100, 1, "/usr/bin/anydesk", 3), OLD, 5));
        // Its exit is lost; pid 100 is reused by a child of a shell.
        t.apply(&with_starts(fork_ev(1, 50, 4), 5, 50));
        t.apply(&with_starts(exec_ev(50, 1, "/bin/sh", 5), 50, 5));
        t.apply(&with_starts(fork_ev(50, 100, 6), 50, NEW));
        t.apply(&with_starts(exec_ev(100, 50, "/usr/bin/curl", 7), NEW, 50));
        assert_eq!(
            t.get_at(100, NEW).map(|p| p.executable.as_str()),
            Some("/usr/bin/curl")
        );
        assert!(
            t.get_at(100, OLD).is_none(),
            "the old process is not the new one"
        );
        // A late exit of the old process leaves the new one alive.
        t.apply(&with_starts(exit_ev(100, 8), OLD, 0));
        assert!(
            t.alive(100),
            "a late exit of the predecessor ended the new process"
        );
        assert_eq!(chain(&t, 100), vec!["/bin/sh", "/sbin/init"]);

        // An exec of a process with the pid but another start: the entry (whose exit was
        // lost) is replaced, not renamed; and an exec naming a parent by a start the parent's
        // entry does not have gets no parent rather than the wrong one.
        const THIRD: u64 = 20_000_000_000;
        t.apply(&with_starts(
            exec_ev(100, 50, "/usr/bin/x11vnc", 9),
            THIRD,
            77,
        ));
        let p = t.get(100).expect("entry");
        assert_eq!(
            (p.executable.as_str(), p.start_ns),
            ("/usr/bin/x11vnc", THIRD)
        );
        assert!(chain(&t, 100).is_empty(), "{:?}", chain(&t, 100));
    }

    /// A process read from /proc knows its start to the clock tick: records with an exact
    /// start in that tick are its own, and the first one makes it exact.
    #[test]
    fn a_start_from_proc_matches_to_the_tick() {
        let tick = tick_ns();
        let mut p = Proc {
            pid: 7,
            ppid: 1,
            uid: 0,
            comm: "x".into(),
            executable: "/x".into(),
            exe_exact: true,
            args: vec![],
            cgroup_id: 0,
            start_ns: 42 * tick,
            start_tick_ns: tick,
            parent_start_ns: 0,
            id: 1,
            parent_id: 0,
            seen_ns: 0,
            from_proc: true,
        };
        assert!(p.is(7, 42 * tick + tick / 2));
        assert!(p.is(7, 0), "an unknown start matches");
        assert!(!p.is(7, 43 * tick));
        assert!(!p.is(8, 42 * tick));
        p.learn_start(42 * tick + 3);
        assert!(
            p.is(7, 42 * tick + 3) && !p.is(7, 42 * tick + 4),
            "exact now"
        );
    }

    /// Every entry seeded from this machine's /proc knows its start, and it is this process's
    /// own (field 22 of /proc/self/stat).
    #[test]
    fn seeded_processes_know_their_start() {
        let mut t = ProcTable::default();
        t.seed(Path::new("/proc")).expect("/proc readable");
        let stat = fs::read_to_string("/proc/self/stat").expect("own stat");
        let (_, _, ticks) = parse_stat(&stat).expect("parsable");
        let me = t.get(std::process::id()).expect("own process present");
        assert_eq!(me.start_ns, ticks * tick_ns());
        assert!(me.is(me.pid, ticks * tick_ns() + 1));
    }

    fn exec_ev(pid: u32, ppid: u32, exe: &str, ts: u64) -> Event {
        let mut t = task(pid);
        t.ts_ns = ts;
        Event::Exec(Exec {
            task: t,
            ppid,
            parent_start_ns: 0,
            filename: exe.into(),
            executable: exe.into(),
            args: vec![exe.into()],
            args_truncated: false,
            flags: vec![],
        })
    }

    fn fork_ev(parent: u32, child: u32, ts: u64) -> Event {
        let mut t = task(parent);
        t.ts_ns = ts;
        Event::Fork(Fork {
            task: t,
            child_pid: child,
            child_start_ns: 0,
        })
    }

    fn exit_ev(pid: u32, ts: u64) -> Event {
        let mut t = task(pid);
        t.ts_ns = ts;
        Event::Exit(Exit {
            task: t,
            exit_code: 0,
        })
    }

    fn chain(t: &ProcTable, pid: u32) -> Vec<String> {
        t.ancestors(pid, 8)
            .iter()
            .map(|p| p.executable.clone())
            .collect()
    }

    /// `(sleep 3; anydesk) &` under nginx: the subshell is reparented to init when the shell
    /// exits, and its exec names init as the parent; the lineage still goes through the shell
    /// and nginx, which stay (exited) while their descendant lives.
    #[test]
    fn lineage_survives_daemonising_and_exited_parents_stay_while_children_live() {
        let mut t = ProcTable::default();
        t.apply(&exec_ev(1, 0, "/sbin/init", 1));
        t.apply(&fork_ev(1, 10, 2));
        t.apply(&exec_ev(10, 1, "/usr/sbin/nginx", 3));
        t.apply(&fork_ev(10, 11, 4));
        t.apply(&exec_ev(11, 10, "/bin/sh", 5));
        t.apply(&fork_ev(11, 12, 6));
        t.apply(&exit_ev(11, 7));
        t.apply(&exit_ev(10, 8));
        // Long after the grace period: the exec of the orphan names init.
        let late = 10 * EXIT_GRACE_NS;
        t.apply(&exec_ev(12, 1, "/tmp/anydesk", late));
        assert_eq!(
            chain(&t, 12),
            vec!["/bin/sh", "/usr/sbin/nginx", "/sbin/init"]
        );
        assert_eq!(t.kept(), 2, "the exited shell and nginx");
        // Their pids are reused: the lineage still finds them by identity.
        t.apply(&fork_ev(1, 11, late + 1));
        t.apply(&exec_ev(11, 1, "/usr/bin/other", late + 2));
        assert_eq!(chain(&t, 12)[0], "/bin/sh");
        // The descendant goes: so do the kept ancestors.
        t.apply(&exit_ev(12, late + 3));
        t.apply(&fork_ev(1, 99, late + 3 * EXIT_GRACE_NS));
        assert_eq!(t.kept(), 0);
        assert!(t.children.is_empty() || t.children.values().all(|n| *n > 0));
    }

    /// A lost exit leaves a stale entry; the next fork of that pid replaces it (the child
    /// never inherits the stale image), and its children count follows.
    #[test]
    fn a_fork_replaces_a_stale_entry_of_its_pid() {
        let mut t = ProcTable::default();
        t.apply(&exec_ev(1, 0, "/sbin/init", 1));
        t.apply(&fork_ev(1, 20, 2));
        t.apply(&exec_ev(20, 1, "/usr/bin/x11vnc", 3));
        // The exit of 20 was lost; bash (pid 30) forks a child that gets pid 20.
        t.apply(&fork_ev(1, 30, 4));
        t.apply(&exec_ev(30, 1, "/usr/bin/bash", 5));
        t.apply(&fork_ev(30, 20, 6));
        let p = t.get(20).expect("the new process");
        assert_eq!((p.ppid, p.executable.as_str()), (30, "/usr/bin/bash"));
    }

    /// Records buffered while /proc was read are older than what it showed for their pid.
    #[test]
    fn records_older_than_the_proc_read_are_stale() {
        let mut t = ProcTable::default();
        t.seed(Path::new("/proc")).expect("/proc readable");
        let me = std::process::id();
        let exe = t.get(me).expect("own process").executable.clone();
        t.apply(&exec_ev(me, 1, "/old/image", 1));
        t.apply(&exit_ev(me, 2));
        assert_eq!(t.get(me).map(|p| p.executable.as_str()), Some(exe.as_str()));
        assert!(t.alive(me));
        let now = crate::merge::kernel_now_ns();
        t.apply(&exec_ev(me, 1, "/new/image", now));
        assert_eq!(t.get(me).map(|p| p.executable.as_str()), Some("/new/image"));
    }

    #[test]
    fn reconcile_finds_what_lost_records_hid() {
        let mut t = ProcTable::default();
        // A process that is not in /proc (its exit was lost).
        t.apply(&exec_ev(u32::MAX - 1, 1, "/gone", 1));
        let r = t.reconcile(Path::new("/proc")).expect("/proc readable");
        assert_eq!(r.gone, 1);
        assert!(!t.alive(u32::MAX - 1));
        assert!(r.added > 1, "every process /proc has was missing: {r:?}");
        assert!(t.alive(std::process::id()));
    }

    /// An entry whose pid /proc shows with another start is a process whose exit was lost:
    /// reconciling replaces it with the pid's present owner.
    #[test]
    fn reconcile_replaces_an_entry_whose_pid_has_a_new_owner() {
        let me = std::process::id();
        let mut t = ProcTable::default();
        t.apply(&with_starts(exec_ev(me, 1, "/usr/bin/anydesk", 1), 7, 0));
        let r = t.reconcile(Path::new("/proc")).expect("/proc readable");
        assert!(r.gone >= 1 && r.added >= 1, "{r:?}");
        let p = t.get(me).expect("present");
        assert_ne!(
            p.executable, "/usr/bin/anydesk",
            "replaced by what /proc shows"
        );
        assert!(p.start_ns > 7, "{p:?}");
        // Reconciling again changes nothing for it.
        let id = p.id;
        t.reconcile(Path::new("/proc")).expect("/proc readable");
        assert_eq!(t.get(me).map(|p| p.id), Some(id));
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
