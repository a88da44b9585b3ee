//! Who stopped or reloaded the daemon: the sender of SIGTERM, SIGINT and SIGHUP, from the
//! signal's `siginfo`, logged and, unless it is the daemon's supervisor, sent to every sink as
//! a `tamper` alert. An intruder stops a monitor before installing a remote-access tool; the
//! record of who did it must leave before the daemon does.
//!
//! tokio's signal streams do not expose `siginfo`: a handler of our own is installed on top of
//! theirs (after them, so that no signal meets a half-installed pair), records the sender in
//! atomics (async-signal-safe) and calls the handler it replaced.

use std::sync::atomic::{AtomicI32, AtomicU32, AtomicUsize, Ordering::SeqCst};

use anyhow::{Result, bail};

use crate::{
    alert::{
        Action, Alert, EventFields, ProcessFields, ProcessRef, RmmFields, RuleFields, Threat,
        UserRef,
    },
    matcher::Indicator,
};

/// The signals watched, and their slots below.
const SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// The replaced handler of each signal: its `sa_sigaction` and whether it takes `siginfo`.
static PREV: [AtomicUsize; 3] = [const { AtomicUsize::new(0) }; 3];
static PREV_SIGINFO: [AtomicU32; 3] = [const { AtomicU32::new(0) }; 3];
/// The last sender of each signal: pid, uid, `si_code`.
static PID: [AtomicI32; 3] = [const { AtomicI32::new(0) }; 3];
static UID: [AtomicU32; 3] = [const { AtomicU32::new(0) }; 3];
static CODE: [AtomicI32; 3] = [const { AtomicI32::new(0) }; 3];

fn slot(sig: libc::c_int) -> Option<usize> {
    SIGNALS.iter().position(|s| *s == sig)
}

extern "C" fn on_signal(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let Some(i) = slot(sig) else { return };
    if !info.is_null() {
        // SAFETY: the kernel hands a valid siginfo to an SA_SIGINFO handler; for the signals
        // sent by kill(2) and the like, si_pid and si_uid are set.
        unsafe {
            PID[i].store((*info).si_pid(), SeqCst);
            UID[i].store((*info).si_uid(), SeqCst);
            CODE[i].store((*info).si_code, SeqCst);
        }
    }
    let prev = PREV[i].load(SeqCst);
    if prev == libc::SIG_IGN {
        return;
    }
    if prev == libc::SIG_DFL {
        // The default action (termination) as if no handler had been there.
        // SAFETY: signal and raise are async-signal-safe.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
        return;
    }
    // SAFETY: `prev` is the handler that sigaction reported as installed before ours, called
    // the way its flags say.
    unsafe {
        if PREV_SIGINFO[i].load(SeqCst) != 0 {
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                std::mem::transmute(prev);
            f(sig, info, ctx);
        } else {
            let f: extern "C" fn(libc::c_int) = std::mem::transmute(prev);
            f(sig);
        }
    }
}

/// Installs the recording handler over the ones in place (call after tokio's `signal()`).
pub fn install() -> Result<()> {
    for (i, sig) in SIGNALS.iter().enumerate() {
        // SAFETY: zeroed sigaction structs are valid; sigaction reads `new`, writes `old`.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(*sig, std::ptr::null(), &mut old) != 0 {
                bail!(
                    "reading the handler of signal {sig}: {}",
                    std::io::Error::last_os_error()
                );
            }
            PREV[i].store(old.sa_sigaction, SeqCst);
            PREV_SIGINFO[i].store(u32::from(old.sa_flags & libc::SA_SIGINFO != 0), SeqCst);
            let mut new: libc::sigaction = std::mem::zeroed();
            new.sa_sigaction = on_signal as *const () as usize;
            // The flags of the handler replaced (tokio's: SA_RESTART), plus siginfo.
            new.sa_flags = old.sa_flags | libc::SA_SIGINFO;
            new.sa_mask = old.sa_mask;
            if libc::sigaction(*sig, &new, std::ptr::null_mut()) != 0 {
                bail!(
                    "installing the handler of signal {sig}: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
    Ok(())
}

/// Who sent a signal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sender {
    pub signal: &'static str,
    /// 0 when the kernel sent it (a terminal's Ctrl-C, a hang-up).
    pub pid: u32,
    pub uid: u32,
    /// `si_code > 0`: the kernel, not a process.
    pub from_kernel: bool,
    pub executable: String,
    pub name: String,
    pub ppid: u32,
}

fn signal_name(sig: libc::c_int) -> &'static str {
    match sig {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        _ => "signal",
    }
}

/// The last sender of `sig`, read from /proc while it may still be there.
pub fn last_sender(sig: libc::c_int) -> Option<Sender> {
    let i = slot(sig)?;
    let pid = u32::try_from(PID[i].load(SeqCst)).unwrap_or(0);
    let code = CODE[i].load(SeqCst);
    let proc_dir = format!("/proc/{pid}");
    let (executable, name, ppid) = if pid == 0 {
        (String::new(), String::new(), 0)
    } else {
        let exe = std::fs::read_link(format!("{proc_dir}/exe"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let stat = std::fs::read_to_string(format!("{proc_dir}/stat")).unwrap_or_default();
        let (name, ppid) = crate::proctable::parse_stat(&stat)
            .map(|(c, p, _)| (c, p))
            .unwrap_or_default();
        (exe, name, ppid)
    };
    Some(Sender {
        signal: signal_name(sig),
        pid,
        uid: UID[i].load(SeqCst),
        from_kernel: code > 0,
        executable,
        name,
        ppid,
    })
}

impl Sender {
    /// Fills what /proc no longer showed (the sender exited) from the process table, which
    /// has the sender's exec from the kernel.
    pub fn complete_from(&mut self, table: &crate::proctable::ProcTable) {
        if self.pid == 0 || !self.executable.is_empty() {
            return;
        }
        if let Some(p) = table.get(self.pid) {
            self.executable.clone_from(&p.executable);
            self.name.clone_from(&p.comm);
            self.ppid = p.ppid;
        }
    }

    /// The log's words for the sender.
    pub fn describe(&self) -> String {
        if self.from_kernel || self.pid == 0 {
            return format!("{} from the kernel (a terminal or a hang-up)", self.signal);
        }
        format!(
            "{} from pid {} ({}, uid {}, parent pid {})",
            self.signal,
            self.pid,
            if self.executable.is_empty() {
                "exited"
            } else {
                &self.executable
            },
            self.uid,
            self.ppid
        )
    }

    /// Whether the sender supervises the daemon: PID 1 (systemd, a container's init), the
    /// process that started the daemon (a service manager, a shell, a test), or the kernel.
    pub fn is_supervisor(&self) -> bool {
        // SAFETY: getppid has no preconditions.
        let parent = unsafe { libc::getppid() } as u32;
        self.from_kernel || self.pid == 0 || self.pid == 1 || self.pid == parent
    }
}

/// Logs the sender and, unless it is the supervisor, sends the `tamper` alert.
pub fn report(s: &Sender, sinks: &crate::sinks::SinkSet, hostname: &str) {
    if s.is_supervisor() {
        log::info!("{}", s.describe());
        return;
    }
    log::warn!("{}: not the daemon's supervisor, alerting", s.describe());
    sinks.dispatch(alert(s, crate::alert::wall_now_ns(), hostname));
}

/// The `tamper` alert for a signal from anyone else than the supervisor.
pub fn alert(s: &Sender, wall_ns: u128, hostname: &str) -> Alert {
    let doing = if s.signal == "SIGHUP" {
        "reloaded"
    } else {
        "stopped"
    };
    Alert::own(
        wall_ns,
        EventFields {
            kind: "alert",
            category: vec!["process"],
            action: Action::Tamper,
            severity: 73,
            outcome: None,
        },
        RuleFields {
            id: "rmm.monitor.tamper".into(),
            name: format!("rmm-monitor {doing} by pid {} ({})", s.pid, s.signal),
        },
        RmmFields::monitor(Indicator::Tamper, s.signal.into(), "high", 1, None),
        Threat::attack("T1562.001", "Disable or Modify Tools"),
        ProcessFields {
            pid: s.pid,
            entity_id: None,
            start: None,
            name: s.name.clone(),
            executable: s.executable.clone(),
            args: vec![],
            user: UserRef { id: s.uid },
            parent: (s.ppid != 0).then(|| ProcessRef {
                pid: s.ppid,
                entity_id: None,
                start: None,
                name: String::new(),
                executable: std::fs::read_link(format!("/proc/{}/exe", s.ppid))
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            }),
        },
        hostname,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The handler records the sender of a signal this process sends itself, and the handler
    /// it replaced still runs.
    #[test]
    fn the_sender_of_a_signal_is_recorded_and_the_old_handler_runs() {
        static RAN: AtomicU32 = AtomicU32::new(0);
        extern "C" fn old(_: libc::c_int) {
            RAN.fetch_add(1, SeqCst);
        }
        // SAFETY: a plain handler for SIGHUP in this test process, then our own over it.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = old as *const () as usize;
            assert_eq!(libc::sigaction(libc::SIGHUP, &sa, std::ptr::null_mut()), 0);
        }
        install().expect("installed");
        // SAFETY: a signal to this very process; both handlers are in place.
        assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGHUP) }, 0);
        // Delivered to any thread of the process, perhaps after kill returned.
        let t0 = std::time::Instant::now();
        while RAN.load(SeqCst) == 0 && t0.elapsed() < std::time::Duration::from_secs(5) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let s = last_sender(libc::SIGHUP).expect("a sender");
        assert_eq!(s.pid, std::process::id());
        // SAFETY: getuid has no preconditions.
        assert_eq!(s.uid, unsafe { libc::getuid() });
        assert!(!s.from_kernel);
        assert_eq!(
            s.executable,
            std::env::current_exe().unwrap().to_string_lossy()
        );
        assert_eq!(RAN.load(SeqCst), 1, "the replaced handler ran");
        let a = alert(&s, 1, "h");
        assert_eq!(a.rmm.indicator, Indicator::Tamper);
        assert_eq!(a.process.pid, std::process::id());
        assert!(
            s.describe()
                .starts_with(&format!("SIGHUP from pid {}", s.pid))
        );
    }
}
