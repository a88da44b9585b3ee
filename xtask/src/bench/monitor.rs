//! The daemon under test: start it fresh (`run --events json`, stdout to a file), wait for its
//! `ready` line, read its CPU time and memory from /proc, wait until it has caught up with a
//! storm, count the storm's markers in its output, and stop it with SIGTERM.

use std::{
    borrow::Cow,
    fs::File,
    io::{Read, Seek, SeekFrom},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus},
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::{Workload, storm, sys};

/// The daemon's process and its output files.
pub struct Daemon {
    child: Option<Child>,
    pub pid: i32,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    /// Seconds from spawn to the `ready` line.
    pub ready_s: f64,
    /// It had exited before it was told to stop.
    died_early: bool,
}

const READY_TIMEOUT_S: f64 = 60.0;

/// True when `line` holds the word `ready` (not e.g. `already`).
fn is_ready_line(line: &str) -> bool {
    line.match_indices("ready").any(|(i, _)| {
        let before = line[..i].chars().next_back();
        let after = line[i + 5..].chars().next();
        !before.is_some_and(|c| c.is_alphanumeric()) && !after.is_some_and(|c| c.is_alphanumeric())
    })
}

impl Daemon {
    /// Starts `<bin> run --events json` in its own process group, stdout and stderr to files
    /// in `dir`, and waits (60 s at most) for a stderr line with the word `ready`.
    pub fn start(bin: &Path, dir: &Path) -> Result<Daemon> {
        let mut cmd = Command::new(bin);
        cmd.args(["run", "--events", "json"]).env("RMM_LOG", "info");
        let t0 = sys::now_s();
        let sys::Spawned {
            child,
            pid,
            stdout,
            stderr,
        } = sys::spawn_logged(cmd, dir, "stdout.jsonl")?;
        let mut d = Daemon {
            child: Some(child),
            pid,
            stdout,
            stderr,
            ready_s: 0.0,
            died_early: false,
        };
        loop {
            let log = std::fs::read_to_string(&d.stderr).unwrap_or_default();
            if log.lines().any(is_ready_line) {
                break;
            }
            if let Some(st) = d.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                d.child = None;
                bail!(
                    "the daemon exited ({st}) before it was ready: {}",
                    tail(&log, 600)
                );
            }
            if sys::now_s() - t0 > READY_TIMEOUT_S {
                bail!(
                    "no `ready` line from the daemon after {READY_TIMEOUT_S} s: {}",
                    tail(&log, 600)
                );
            }
            sys::sleep_s(0.02)?;
        }
        d.ready_s = sys::now_s() - t0;
        Ok(d)
    }

    /// CPU time and memory of the daemon now.
    pub fn snapshot(&self) -> ProcSnap {
        ProcSnap::read(self.pid)
    }

    /// SIGTERM, then waits (20 s, then SIGKILL) and reads the `final stats` line it logged.
    pub fn stop(mut self) -> Result<StopReport> {
        let t0 = sys::now_s();
        let status = self.terminate()?;
        let log = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let final_stats = log.lines().rev().find_map(|l| {
            let json = &l[l.find("final stats: ")? + "final stats: ".len()..];
            serde_json::from_str::<serde_json::Value>(json).ok()
        });
        let kernel_drops = final_stats
            .as_ref()
            .and_then(|v| v.get("kernel_drops"))
            .cloned();
        let kernel_drops_sum = kernel_drops
            .as_ref()
            .and_then(|d| d.as_object())
            .map(|o| o.values().filter_map(serde_json::Value::as_u64).sum());
        let warnings = log
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .take(20)
            .map(str::to_string)
            .collect();
        Ok(StopReport {
            exited_before_sigterm: self.died_early.then(|| tail(&log, 600)),
            exit: status.map(|s| s.to_string()),
            stop_s: sys::now_s() - t0,
            final_stats,
            kernel_drops,
            kernel_drops_sum,
            log_warnings: warnings,
        })
    }

    fn terminate(&mut self) -> Result<Option<ExitStatus>> {
        sys::terminate(&mut self.child, "the daemon")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.terminate();
    }
}

fn tail(s: &str, n: usize) -> String {
    let start = s.len().saturating_sub(n);
    let start = (start..=s.len())
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(s.len());
    s[start..].trim().replace('\n', " | ")
}

#[derive(Debug, Clone, Serialize)]
pub struct StopReport {
    /// The end of its stderr when the daemon had exited before SIGTERM.
    pub exited_before_sigterm: Option<String>,
    pub exit: Option<String>,
    pub stop_s: f64,
    pub final_stats: Option<serde_json::Value>,
    pub kernel_drops: Option<serde_json::Value>,
    pub kernel_drops_sum: Option<u64>,
    pub log_warnings: Vec<String>,
}

/// The daemon's CPU time and memory at one moment.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProcSnap {
    pub t: f64,
    /// utime + stime of the whole process (all threads, live and exited) from /proc/PID/stat,
    /// in clock ticks converted to seconds.
    pub stat_cpu_s: f64,
    /// On-CPU time of its live threads, summed from /proc/PID/task/*/schedstat (ns precision).
    pub sched_cpu_s: f64,
    pub threads: u32,
    pub vm_hwm_kb: u64,
    pub vm_rss_kb: u64,
}

impl ProcSnap {
    pub fn read(pid: i32) -> ProcSnap {
        let mut s = ProcSnap {
            t: sys::now_s(),
            ..Default::default()
        };
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            && let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..])
        {
            // Fields after the comm: state(3) ... utime(14) stime(15).
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks: u64 = [11, 12]
                .iter()
                .filter_map(|i| f.get(*i)?.parse::<u64>().ok())
                .sum();
            s.stat_cpu_s = ticks as f64 / sys::clock_ticks_per_s();
        }
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for t in tasks.flatten() {
                if let Ok(ss) = std::fs::read_to_string(t.path().join("schedstat"))
                    && let Some(ns) = ss
                        .split_whitespace()
                        .next()
                        .and_then(|x| x.parse::<u64>().ok())
                {
                    s.sched_cpu_s += ns as f64 / 1e9;
                    s.threads += 1;
                }
            }
        }
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            for line in status.lines() {
                let kb = || {
                    line.split_whitespace()
                        .nth(1)
                        .and_then(|x| x.parse().ok())
                        .unwrap_or(0)
                };
                if line.starts_with("VmHWM:") {
                    s.vm_hwm_kb = kb();
                } else if line.starts_with("VmRSS:") {
                    s.vm_rss_kb = kb();
                }
            }
        }
        s
    }
}

/// Waits until `pid` is idle after its start-up: at least `min_s`, then until its threads ran
/// less than `IDLE_CPU_S` in a window of `IDLE_WINDOW_S` (the daemon reads /proc, the rules and
/// the package lists after `ready`; a storm started then would measure that, not the probes),
/// `max_s` at most. Returns the time waited and whether it went idle.
pub fn settle(pid: i32, min_s: f64, max_s: f64) -> Result<(f64, bool)> {
    const IDLE_WINDOW_S: f64 = 0.1;
    const IDLE_CPU_S: f64 = 0.001;
    let t0 = sys::now_s();
    sys::sleep_s(min_s)?;
    let mut last = ProcSnap::read(pid).sched_cpu_s;
    while sys::now_s() - t0 < max_s {
        sys::sleep_s(IDLE_WINDOW_S)?;
        let cpu = ProcSnap::read(pid).sched_cpu_s;
        if cpu - last < IDLE_CPU_S {
            return Ok((sys::now_s() - t0, true));
        }
        last = cpu;
    }
    Ok((sys::now_s() - t0, false))
}

/// The fields of a daemon JSON line that the counting needs.
#[derive(Deserialize)]
struct Line<'a> {
    /// Absent on alert lines, which share stdout by default.
    #[serde(default, borrow)]
    event: Cow<'a, str>,
    #[serde(default, borrow)]
    args: Vec<Cow<'a, str>>,
    #[serde(default, borrow)]
    daddr: Option<Cow<'a, str>>,
    #[serde(default)]
    dport: Option<u64>,
    #[serde(default, borrow)]
    qname: Option<Cow<'a, str>>,
}

/// Storm markers in the daemon's output, fed incrementally as it grows.
/// exec: an exec event whose args hold `sx<nonce>.<i>`; dns and dns-mmsg: a dns event whose
/// qname is `q<i>.storm-<nonce>.test` (each unique); connect: a connect event to 127.0.0.1 with
/// dport = base + k, counted per port up to the number of connects the storm made to it (it
/// walks its port set several times).
pub struct Markers {
    workload: Workload,
    n: u64,
    port_base: u64,
    exec_prefix: String,
    dns_suffix: String,
    quick: String,
    /// Per marker: how many times it may still count.
    left: Vec<u32>,
    pub seen: u64,
    pub lines: u64,
    pub bytes: u64,
    pub unparsed: u64,
    partial: Vec<u8>,
}

impl Markers {
    pub fn new(workload: Workload, n: u64, nonce: &str, port_base: u16, ports: u16) -> Markers {
        let quick = match workload {
            Workload::Exec => format!("sx{nonce}."),
            Workload::Connect => "\"event\":\"connect\"".into(),
            Workload::Dns | Workload::DnsMmsg => format!(".storm-{nonce}.test"),
        };
        Markers {
            workload,
            n,
            port_base: u64::from(port_base),
            exec_prefix: format!("sx{nonce}."),
            dns_suffix: format!(".storm-{nonce}.test"),
            quick,
            left: if workload == Workload::Connect {
                let ports = u64::from(ports).min(n);
                (0..ports)
                    .map(|k| {
                        u32::try_from(storm::connects_to_port(n, ports, k)).unwrap_or(u32::MAX)
                    })
                    .collect()
            } else {
                vec![1; n as usize]
            },
            seen: 0,
            lines: 0,
            bytes: 0,
            unparsed: 0,
            partial: Vec::new(),
        }
    }

    fn mark(&mut self, i: u64) {
        if let Some(left) = self.left.get_mut(i as usize)
            && *left > 0
        {
            *left -= 1;
            self.seen += 1;
        }
    }

    fn line(&mut self, raw: &[u8]) {
        self.lines += 1;
        if !memfind(raw, self.quick.as_bytes()) {
            return;
        }
        let Ok(l) = serde_json::from_slice::<Line>(raw) else {
            self.unparsed += 1;
            return;
        };
        match self.workload {
            Workload::Exec if l.event == "exec" => {
                let hits: Vec<u64> = l
                    .args
                    .iter()
                    .filter_map(|a| a.strip_prefix(self.exec_prefix.as_str())?.parse().ok())
                    .collect();
                hits.into_iter().for_each(|i| self.mark(i));
            }
            Workload::Connect
                if l.event == "connect" && l.daddr.as_deref() == Some("127.0.0.1") =>
            {
                if let Some(p) = l.dport.filter(|p| *p >= self.port_base) {
                    self.mark(p - self.port_base);
                }
            }
            Workload::Dns | Workload::DnsMmsg if l.event == "dns" => {
                let i = l
                    .qname
                    .as_deref()
                    .and_then(|q| q.strip_suffix(self.dns_suffix.as_str()))
                    .and_then(|q| q.strip_prefix('q'))
                    .and_then(|q| q.parse::<u64>().ok());
                if let Some(i) = i {
                    self.mark(i);
                }
            }
            _ => {}
        }
    }

    /// Feeds newly read bytes; a trailing partial line waits for the rest (or `finish`).
    pub fn feed(&mut self, data: &[u8]) {
        self.bytes += data.len() as u64;
        let mut buf = std::mem::take(&mut self.partial);
        buf.extend_from_slice(data);
        let mut start = 0;
        while let Some(nl) = buf[start..].iter().position(|b| *b == b'\n') {
            self.line(&buf[start..start + nl]);
            start += nl + 1;
        }
        buf.drain(..start);
        self.partial = buf;
    }

    pub fn finish(&mut self) {
        let rest = std::mem::take(&mut self.partial);
        if !rest.is_empty() {
            self.line(&rest);
        }
    }
}

pub fn memfind(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// Reads a growing file from where the last read stopped.
pub struct Tail {
    file: File,
    off: u64,
}

impl Tail {
    pub fn open(path: &Path) -> Result<Tail> {
        Ok(Tail {
            file: File::open(path).with_context(|| format!("opening {}", path.display()))?,
            off: 0,
        })
    }

    /// Everything appended since the last call.
    pub fn read_all(&mut self) -> Result<Vec<u8>> {
        let mut all = Vec::new();
        loop {
            let chunk = self.read_new()?;
            if chunk.is_empty() {
                return Ok(all);
            }
            all.extend_from_slice(&chunk);
        }
    }

    /// What was appended since the last call, at most 64 MiB of it.
    pub fn read_new(&mut self) -> Result<Vec<u8>> {
        self.file.seek(SeekFrom::Start(self.off))?;
        let mut buf = Vec::new();
        (&mut self.file).take(64 << 20).read_to_end(&mut buf)?;
        self.off += buf.len() as u64;
        Ok(buf)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Drain {
    pub drain_s: f64,
    pub seen: u64,
    pub why: &'static str,
}

/// Waits until every marker of the storm is in the daemon's stdout, or none new has come for
/// `quiet_s`, or `timeout_s` has passed.
pub fn drain(
    tail: &mut Tail,
    markers: &mut Markers,
    quiet_s: f64,
    timeout_s: f64,
) -> Result<Drain> {
    let t0 = sys::now_s();
    let (mut last_seen, mut last_change) = (u64::MAX, t0);
    loop {
        markers.feed(&tail.read_new()?);
        let now = sys::now_s();
        if markers.seen != last_seen {
            (last_seen, last_change) = (markers.seen, now);
        }
        let why = if markers.seen >= markers.n {
            "all markers seen"
        } else if now - last_change >= quiet_s {
            "no new marker for the quiet period"
        } else if now - t0 >= timeout_s {
            "timeout"
        } else {
            sys::sleep_s(0.05)?;
            continue;
        };
        return Ok(Drain {
            drain_s: now - t0,
            seen: markers.seen,
            why,
        });
    }
}

/// Exec-to-event latency: `samples` single execs of `prog` with argv[1] `sl<nonce>.<k>`,
/// `interval_s` to 1.5 × `interval_s` apart (random). Each is stamped with CLOCK_MONOTONIC in the child right before execve;
/// a reader thread tails `stdout` (woken by inotify) and stamps the moment a complete line of
/// an exec event carrying that marker is in the file. Returns one latency (ms) per sample,
/// None when not seen within `timeout_s` after the last sample.
pub fn exec_latency(
    stdout: &Path,
    prog: &Path,
    nonce: &str,
    samples: usize,
    interval_s: f64,
    timeout_s: f64,
) -> Result<Vec<Option<f64>>> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::sync::{Arc, Mutex, atomic::AtomicBool, atomic::Ordering};

    let path = CString::new(prog.as_os_str().as_bytes())?;
    let marks: Vec<String> = (0..samples).map(|k| format!("sl{nonce}.{k}")).collect();
    let cmarks = marks
        .iter()
        .map(|m| CString::new(m.as_str()))
        .collect::<Result<Vec<_>, _>>()?;
    let stamps = sys::SharedStamps::new(samples)?;
    let seen_at: Arc<Mutex<Vec<Option<f64>>>> = Arc::new(Mutex::new(vec![None; samples]));
    let done = Arc::new(AtomicBool::new(false));

    let mut tail = Tail::open(stdout)?;
    tail.off = tail.file.metadata()?.len();
    let reader = {
        let (seen_at, done, prefix) = (seen_at.clone(), done.clone(), format!("sl{nonce}."));
        let watch_path = CString::new(stdout.as_os_str().as_bytes())?;
        std::thread::Builder::new()
            .name("bench-lat-reader".into())
            .spawn(move || -> Result<()> {
                let ino = Inotify::new(&watch_path)?;
                let mut partial = Vec::new();
                while !done.load(Ordering::Relaxed) {
                    let data = tail.read_new()?;
                    let now = sys::now_s();
                    partial.extend_from_slice(&data);
                    let mut start = 0;
                    while let Some(nl) = partial[start..].iter().position(|b| *b == b'\n') {
                        let line = &partial[start..start + nl];
                        start += nl + 1;
                        if !memfind(line, prefix.as_bytes()) {
                            continue;
                        }
                        let Ok(l) = serde_json::from_slice::<Line>(line) else {
                            continue;
                        };
                        if l.event != "exec" {
                            continue;
                        }
                        for a in &l.args {
                            if let Some(k) = a
                                .strip_prefix(prefix.as_str())
                                .and_then(|k| k.parse::<usize>().ok())
                                && let Some(slot) = seen_at.lock().expect("lock").get_mut(k)
                            {
                                slot.get_or_insert(now);
                            }
                        }
                    }
                    partial.drain(..start);
                    ino.wait(2);
                }
                Ok(())
            })?
    };

    // Spacing interval_s .. 1.5 × interval_s, random: the daemon collects lone events on a
    // periodic timer, and a fixed spacing would sample one phase of it only.
    let jitter = sys::uniform(samples)?;
    let mut issued = vec![0.0; samples];
    let mut result = Ok(());
    for k in 0..samples {
        if let Err(e) = sys::check_stop() {
            result = Err(e);
            break;
        }
        let argv = [path.as_ptr(), cmarks[k].as_ptr(), std::ptr::null()];
        let t0 = sys::now_s();
        issued[k] = t0;
        match sys::fork_exec(&path, &argv, Some(stamps.slot(k))) {
            Ok(pid) => {
                let _ = sys::wait_pid(pid);
            }
            Err(e) => eprintln!("bench: latency probe {k}: fork: {e}"),
        }
        let left = t0 + interval_s * (1.0 + jitter[k] / 2.0) - sys::now_s();
        if left > 0.0
            && let Err(e) = sys::sleep_s(left)
        {
            result = Err(e);
            break;
        }
    }
    let deadline = sys::now_s() + timeout_s;
    while result.is_ok()
        && sys::now_s() < deadline
        && seen_at.lock().expect("lock").iter().any(Option::is_none)
    {
        if let Err(e) = sys::sleep_s(0.01) {
            result = Err(e);
        }
    }
    done.store(true, Ordering::Relaxed);
    let reader_result = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the latency reader panicked"))?;
    result?;
    reader_result?;
    let seen = seen_at.lock().expect("lock").clone();
    Ok((0..samples)
        .map(|k| {
            let stamp = stamps.get(k);
            let t0 = if stamp > 0.0 { stamp } else { issued[k] };
            seen[k].map(|t| (t - t0) * 1000.0)
        })
        .collect())
}

/// An inotify watch for IN_MODIFY on one file.
struct Inotify {
    fd: std::os::fd::OwnedFd,
}

impl Inotify {
    fn new(path: &std::ffi::CStr) -> Result<Inotify> {
        use std::os::fd::FromRawFd;
        // SAFETY: no memory arguments.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            bail!("inotify_init1: {}", std::io::Error::last_os_error());
        }
        // SAFETY: fd is fresh and ours.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        // SAFETY: path is a valid C string.
        if unsafe {
            libc::inotify_add_watch(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                path.as_ptr(),
                libc::IN_MODIFY,
            )
        } < 0
        {
            bail!("inotify_add_watch: {}", std::io::Error::last_os_error());
        }
        Ok(Inotify { fd })
    }

    /// Waits for a modification (at most `max_ms`), then empties the event queue.
    fn wait(&self, max_ms: i32) {
        use std::os::fd::AsRawFd;
        let fd = self.fd.as_raw_fd();
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let mut buf = [0u8; 4096];
        // SAFETY: valid pollfd and buffer.
        unsafe {
            libc::poll(&mut pfd, 1, max_ms);
            while libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) > 0 {}
        }
    }
}

/// Other monitors or tracers running now (other than `except`), which would add noise.
pub fn other_tracers(except: &[i32]) -> Vec<String> {
    const NAMES: [&str; 9] = [
        "rmm-monitor",
        "bpftrace",
        "strace",
        "auditd",
        "perf",
        "ltrace",
        "falco",
        "tetragon",
        "tracee",
    ];
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if except.contains(&pid) {
            continue;
        }
        if let Ok(comm) = std::fs::read_to_string(e.path().join("comm")) {
            let comm = comm.trim();
            if NAMES.contains(&comm) {
                out.push(format!("{comm}[{pid}]"));
            }
        }
    }
    out
}
