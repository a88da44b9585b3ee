//! A journald for tests: the one already running when its socket answers, else one started
//! here (`systemd-journald` needs no systemd as PID 1) and stopped when the guard drops.

use std::{
    os::unix::net::UnixDatagram,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub const JOURNALD: &str = "/lib/systemd/systemd-journald";
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";
const START_TIMEOUT: Duration = Duration::from_secs(15);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Does a journald answer on its native socket? (The socket file can outlive journald.)
pub fn journald_answers() -> bool {
    UnixDatagram::unbound().is_ok_and(|s| s.connect(JOURNAL_SOCKET).is_ok())
}

pub struct Journald {
    started: Option<Child>,
}

impl Journald {
    pub fn ensure() -> Journald {
        if journald_answers() {
            return Journald { started: None };
        }
        assert!(
            Path::new(JOURNALD).is_file(),
            "{JOURNALD} is missing (Debian package systemd)"
        );
        std::fs::create_dir_all("/run/systemd/journal").expect("mkdir /run/systemd/journal");
        let child = Command::new(JOURNALD)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {JOURNALD}: {e}"));
        let mut j = Journald {
            started: Some(child),
        };
        let started = Instant::now();
        while !journald_answers() {
            let c = j.started.as_mut().expect("started");
            if let Ok(Some(s)) = c.try_wait() {
                panic!("{JOURNALD} exited ({s}) before its socket answered");
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "{JOURNALD} did not answer on {JOURNAL_SOCKET} within {START_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        j
    }
}

impl Drop for Journald {
    fn drop(&mut self) {
        let Some(mut c) = self.started.take() else {
            return;
        };
        if let Ok(pid) = libc::pid_t::try_from(c.id()) {
            // SAFETY: kill(2) on our own, not yet reaped child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}
