//! Thin wrappers over the libc calls the bench needs: the monotonic clock, CPU pinning, a stop
//! flag set by SIGINT/SIGTERM/SIGHUP, fork + execve with a pre-exec time stamp, and waiting.
//!
//! Everything a forked child runs before execve (or in the DNS responder child, forever) is a
//! raw system call on memory prepared by the parent: no allocation, no locks.

use std::{
    ffi::CStr,
    io,
    os::raw::c_char,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{Result, bail};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_sig: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// SIGINT, SIGTERM and SIGHUP set a flag that every loop of the bench checks, so that an
/// interrupted run still stops its daemon, responder and listeners and removes its files.
pub fn install_stop_handlers() -> Result<()> {
    let handler: extern "C" fn(libc::c_int) = on_stop_signal;
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction is valid; the handler only stores to an atomic, which is
        // async-signal-safe.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = handler as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            bail!(
                "installing a handler for signal {sig}: {}",
                io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// Fails once a stop signal has arrived.
pub fn check_stop() -> Result<()> {
    if STOP.load(Ordering::Relaxed) {
        bail!("interrupted by a signal");
    }
    Ok(())
}

/// CLOCK_MONOTONIC in seconds. Async-signal-safe (vDSO), so a forked child may call it.
pub fn now_s() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: t is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// Sleeps `secs`, in slices of at most 50 ms, returning early (with an error) on a stop signal.
pub fn sleep_s(secs: f64) -> Result<()> {
    let end = now_s() + secs;
    loop {
        check_stop()?;
        let left = end - now_s();
        if left <= 0.0 {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs_f64(left.min(0.05)));
    }
}

/// The calling thread pinned to one CPU until dropped, when its previous mask comes back.
pub struct Pinned {
    old: libc::cpu_set_t,
}

pub fn pin_to_cpu(cpu: usize) -> Result<Pinned> {
    // SAFETY: cpu_set_t is plain data; the calls get valid pointers and the right size.
    unsafe {
        let mut old: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut old) != 0 {
            bail!("sched_getaffinity: {}", io::Error::last_os_error());
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!(
                "sched_setaffinity(CPU {cpu}): {}",
                io::Error::last_os_error()
            );
        }
        Ok(Pinned { old })
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // SAFETY: restores the mask read by pin_to_cpu on the same thread.
        unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &self.old) };
    }
}

/// A page-aligned array of f64 shared with forked children (MAP_SHARED | MAP_ANONYMOUS): a
/// child writes the time just before its execve, the parent reads it after waitpid.
pub struct SharedStamps {
    ptr: *mut f64,
    len: usize,
}

impl SharedStamps {
    pub fn new(len: usize) -> Result<Self> {
        let bytes = (len.max(1) * size_of::<f64>()).next_multiple_of(4096);
        // SAFETY: an anonymous shared mapping; checked for MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            bail!(
                "mmap of the shared stamp page: {}",
                io::Error::last_os_error()
            );
        }
        Ok(SharedStamps {
            ptr: ptr.cast(),
            len,
        })
    }

    /// The slot's address, for a child to write through.
    pub fn slot(&self, i: usize) -> *mut f64 {
        assert!(i < self.len, "stamp slot {i} out of {}", self.len);
        // SAFETY: in bounds of the mapping.
        unsafe { self.ptr.add(i) }
    }

    pub fn get(&self, i: usize) -> f64 {
        // SAFETY: in bounds (slot checks); volatile because another process wrote it.
        unsafe { std::ptr::read_volatile(self.slot(i)) }
    }
}

impl Drop for SharedStamps {
    fn drop(&mut self) {
        let bytes = (self.len.max(1) * size_of::<f64>()).next_multiple_of(4096);
        // SAFETY: unmaps what new() mapped.
        unsafe { libc::munmap(self.ptr.cast(), bytes) };
    }
}

/// fork + execve(path, argv) with the parent's environment. `argv` must end with a null
/// pointer. When `stamp` is given, the child writes CLOCK_MONOTONIC there right before execve.
/// Returns the child's pid.
pub fn fork_exec(
    path: &CStr,
    argv: &[*const c_char],
    stamp: Option<*mut f64>,
) -> io::Result<libc::pid_t> {
    assert!(
        argv.last().is_some_and(|p| p.is_null()),
        "argv must be null-terminated"
    );
    // SAFETY: the child only calls clock_gettime, writes to the shared page, execv and _exit,
    // all async-signal-safe, on memory the parent prepared.
    unsafe {
        let pid = libc::fork();
        if pid == 0 {
            if let Some(p) = stamp {
                std::ptr::write_volatile(p, now_s());
            }
            libc::execv(path.as_ptr(), argv.as_ptr());
            libc::_exit(127);
        }
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(pid)
    }
}

/// waitpid, retried on EINTR; returns the raw wait status.
pub fn wait_pid(pid: libc::pid_t) -> io::Result<libc::c_int> {
    let mut status = 0;
    loop {
        // SAFETY: status is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return Ok(status);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// True when a wait status says "exited with status 0".
pub fn exited_ok(status: libc::c_int) -> bool {
    libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
}

/// Raises the soft RLIMIT_NOFILE to at least `need` (up to the hard limit).
pub fn ensure_nofile(need: u64) -> Result<()> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: rl is a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        bail!("getrlimit: {}", io::Error::last_os_error());
    }
    if rl.rlim_cur >= need {
        return Ok(());
    }
    if rl.rlim_max < need {
        bail!(
            "the connect storm needs {need} file descriptors; the hard limit is {}",
            rl.rlim_max
        );
    }
    rl.rlim_cur = need.max(rl.rlim_cur);
    // SAFETY: rl is valid.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) } != 0 {
        bail!(
            "setrlimit(RLIMIT_NOFILE, {need}): {}",
            io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Six hex digits from the kernel's random source, to tell this run's markers from any other's.
pub fn nonce() -> Result<String> {
    let mut b = [0u8; 3];
    // SAFETY: b is a valid buffer of its length.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        bail!("getrandom: {}", io::Error::last_os_error());
    }
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// `n` numbers uniform in [0, 1) from the kernel's random source.
pub fn uniform(n: usize) -> Result<Vec<f64>> {
    let mut b = vec![0u8; n * 4];
    // SAFETY: b is a valid buffer of its length.
    let got = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if got != b.len() as isize {
        bail!("getrandom: {}", io::Error::last_os_error());
    }
    Ok(b.chunks_exact(4)
        .map(|c| f64::from(u32::from_ne_bytes([c[0], c[1], c[2], c[3]])) / 4_294_967_296.0)
        .collect())
}

pub fn clock_ticks_per_s() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Non-idle CPU time of the whole machine so far, in seconds summed over CPUs (/proc/stat:
/// user, nice, system, irq, softirq, steal).
pub fn machine_busy_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let f: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let busy = f.get(0..3)?.iter().sum::<u64>() + f.get(5..8)?.iter().sum::<u64>();
    Some(busy as f64 / clock_ticks_per_s())
}

pub fn online_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// How long a stopped child (daemon or bpftrace) may take before it is killed.
pub const STOP_TIMEOUT_S: f64 = 20.0;

/// Sends SIGTERM to a child we own and reaps it, with SIGKILL after [`STOP_TIMEOUT_S`].
/// `what` names it in messages. Returns `None` when there was no child left.
pub fn terminate(
    child: &mut Option<std::process::Child>,
    what: &str,
) -> Result<Option<std::process::ExitStatus>> {
    let Some(mut c) = child.take() else {
        return Ok(None);
    };
    let pid = c.id() as libc::pid_t;
    // SAFETY: the pid is our unreaped child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let t0 = now_s();
    loop {
        if let Some(st) = c
            .try_wait()
            .map_err(|e| anyhow::anyhow!("waiting for {what}: {e}"))?
        {
            return Ok(Some(st));
        }
        if now_s() - t0 > STOP_TIMEOUT_S {
            eprintln!("bench: {what} (pid {pid}) ignored SIGTERM for {STOP_TIMEOUT_S} s: SIGKILL");
            let _ = c.kill();
            return Ok(c.wait().ok());
        }
        // Not sleep_s: stopping must finish even after a stop signal.
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A child started by [`spawn_logged`].
pub struct Spawned {
    pub child: std::process::Child,
    pub pid: i32,
    pub stdout: std::path::PathBuf,
    pub stderr: std::path::PathBuf,
}

/// Starts `cmd` in its own process group with stdout and stderr to files in `dir`; the kernel
/// sends it SIGTERM if the bench dies without stopping it.
pub fn spawn_logged(
    mut cmd: std::process::Command,
    dir: &std::path::Path,
    stdout_name: &str,
) -> Result<Spawned> {
    use std::os::unix::process::CommandExt;

    use anyhow::Context;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let stdout = dir.join(stdout_name);
    let stderr = dir.join("stderr.log");
    let out =
        std::fs::File::create(&stdout).with_context(|| format!("creating {}", stdout.display()))?;
    let err =
        std::fs::File::create(&stderr).with_context(|| format!("creating {}", stderr.display()))?;
    cmd.stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let program = cmd.get_program().to_string_lossy().into_owned();
    let child = cmd.spawn().with_context(|| format!("starting {program}"))?;
    let pid = i32::try_from(child.id()).context("pid out of range")?;
    Ok(Spawned {
        child,
        pid,
        stdout,
        stderr,
    })
}
