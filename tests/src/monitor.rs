//! The daemon under test: started with `run --events json`, its stdout parsed line by line on
//! a thread, its stderr kept for the `ready` and `final stats` lines and for failure messages.
//! Every wait is bounded and a wait that does not see what it waits for fails the test.

use std::{
    io::{BufRead, BufReader, Read},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Condvar, Mutex, MutexGuard},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::Value;

/// A bound on a wait, times `RMM_TEST_TIMEOUT_SCALE` (default 1): the kernel matrix runs the
/// tests in emulated machines (qemu TCG), about ten times slower than this one. A bound, never
/// a measurement: nothing asserts that a wait was short.
pub fn scaled(d: Duration) -> Duration {
    let scale = std::env::var("RMM_TEST_TIMEOUT_SCALE")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(1)
        .clamp(1, 100);
    d * scale
}

/// How long the daemon may take to attach every probe.
pub fn ready_timeout() -> Duration {
    scaled(Duration::from_secs(60))
}
/// How long an event may take to show up after the action that causes it.
pub fn event_timeout() -> Duration {
    scaled(Duration::from_secs(10))
}
/// How long the daemon may take to drain and exit after SIGTERM.
pub fn stop_timeout() -> Duration {
    scaled(Duration::from_secs(30))
}

/// One daemon at a time per test binary, whatever `--test-threads` says: two daemons would
/// each see the other's test traffic, and the drop counters are per daemon.
static SERIAL: Mutex<()> = Mutex::new(());

/// Lines from one pipe of the child, shared with the thread that reads them.
struct Lines<T> {
    state: Mutex<(Vec<T>, bool)>,
    cond: Condvar,
}

impl<T: Clone> Lines<T> {
    fn new() -> Arc<Self> {
        Arc::new(Lines {
            state: Mutex::new((Vec::new(), false)),
            cond: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, (Vec<T>, bool)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, item: T) {
        self.lock().0.push(item);
        self.cond.notify_all();
    }

    fn close(&self) {
        self.lock().1 = true;
        self.cond.notify_all();
    }

    fn snapshot(&self) -> Vec<T> {
        self.lock().0.clone()
    }

    /// Calls `check(items, closed)` whenever something arrives until it returns `Some`, the
    /// deadline passes (`Err(false)`) or the pipe is closed without a match (`Err(true)`).
    fn wait<R>(&self, deadline: Instant, check: impl Fn(&[T]) -> Option<R>) -> Result<R, bool> {
        let mut guard = self.lock();
        loop {
            if let Some(r) = check(&guard.0) {
                return Ok(r);
            }
            if guard.1 {
                return Err(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(false);
            }
            guard = self
                .cond
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// A line the daemon printed on stdout.
#[derive(Debug, Clone)]
enum OutLine {
    Event(Value),
    /// Not a JSON object: a protocol violation the tests report.
    Bad(String),
}

pub struct Monitor {
    child: Child,
    stdout: Arc<Lines<OutLine>>,
    stderr: Arc<Lines<String>>,
    threads: Vec<JoinHandle<()>>,
    _serial: MutexGuard<'static, ()>,
}

/// What a stopped daemon left behind.
#[derive(Debug)]
pub struct Stopped {
    pub status: ExitStatus,
    pub events: Vec<Value>,
    /// stdout lines that were not JSON objects.
    pub bad_lines: Vec<String>,
    pub stderr: Vec<String>,
}

/// The message part of an env_logger line (`[time LEVEL] message`).
fn message(line: &str) -> &str {
    line.split_once("] ").map_or(line, |(_, m)| m)
}

fn spawn_reader<R: Read + Send + 'static>(
    name: &str,
    pipe: R,
    each: impl Fn(String) + Send + 'static,
    close: impl FnOnce() + Send + 'static,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            for line in BufReader::new(pipe).lines() {
                match line {
                    Ok(l) => each(l),
                    Err(e) => {
                        each(format!("<unreadable line: {e}>"));
                        break;
                    }
                }
            }
            close();
        })
        .expect("spawning a pipe reader thread")
}

/// The write end of a pipe whose read end is closed.
fn broken_pipe() -> Stdio {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both fds were just created and are owned here; the read end is closed at once.
    unsafe {
        libc::close(fds[0]);
        Stdio::from(std::os::fd::OwnedFd::from_raw_fd(fds[1]))
    }
}

impl Monitor {
    /// Starts `rmm-monitor run --events json EXTRA..` (EXTRA may name another `--events`) and
    /// waits until it says `ready`.
    pub fn start(extra: &[&str]) -> Monitor {
        Monitor::start_with(extra, false, None, &[])
    }

    /// Like [`Monitor::start`], with `$NOTIFY_SOCKET` set to `socket` (sd_notify).
    pub fn start_notifying(extra: &[&str], socket: &std::path::Path) -> Monitor {
        Monitor::start_with(extra, false, Some(socket), &[])
    }

    /// Like [`Monitor::start`], with `$NOTIFY_SOCKET` set to `socket` when given and these
    /// variables in the daemon's environment.
    pub fn start_with_env(
        extra: &[&str],
        socket: Option<&std::path::Path>,
        env: &[(&str, &str)],
    ) -> Monitor {
        Monitor::start_with(extra, false, socket, env)
    }

    /// Like [`Monitor::start`], but stdout is a pipe whose read end is already closed: every
    /// write of the daemon fails with EPIPE.
    pub fn start_with_broken_stdout(extra: &[&str]) -> Monitor {
        Monitor::start_with(extra, true, None, &[])
    }

    fn start_with(
        extra: &[&str],
        broken_stdout: bool,
        notify: Option<&std::path::Path>,
        env: &[(&str, &str)],
    ) -> Monitor {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let bin = crate::monitor_bin();
        let stdout_cfg = if broken_stdout {
            broken_pipe()
        } else {
            Stdio::piped()
        };
        let mut cmd = Command::new(&bin);
        match notify {
            Some(socket) => cmd.env("NOTIFY_SOCKET", socket),
            None => cmd.env_remove("NOTIFY_SOCKET"),
        };
        // `--events json` unless the test names its own format.
        cmd.arg("run");
        if !extra.contains(&"--events") {
            cmd.args(["--events", "json"]);
        }
        let mut child = cmd
            .args(extra)
            .envs(env.iter().copied())
            .env("RMM_LOG", "info")
            .stdin(Stdio::null())
            .stdout(stdout_cfg)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let stdout = Lines::new();
        let stderr = Lines::new();
        let (o1, o2) = (stdout.clone(), stdout.clone());
        let (e1, e2) = (stderr.clone(), stderr.clone());
        let mut threads = vec![spawn_reader(
            "monitor-stderr",
            child.stderr.take().expect("stderr is piped"),
            move |l| e1.push(l),
            move || e2.close(),
        )];
        match child.stdout.take() {
            Some(out) => threads.push(spawn_reader(
                "monitor-stdout",
                out,
                move |l| {
                    o1.push(match serde_json::from_str::<Value>(&l) {
                        Ok(v) if v.is_object() => OutLine::Event(v),
                        _ => OutLine::Bad(l),
                    })
                },
                move || o2.close(),
            )),
            None => o2.close(),
        }
        let mut m = Monitor {
            child,
            stdout,
            stderr,
            threads,
            _serial: serial,
        };
        let started = Instant::now();
        let ready = m.stderr.wait(started + ready_timeout(), |lines| {
            lines
                .iter()
                .any(|l| message(l).starts_with("ready"))
                .then_some(())
        });
        if let Err(closed) = ready {
            let _ = m.child.kill();
            let status = m.child.wait().ok();
            panic!(
                "rmm-monitor {} before logging `ready` ({:?} after start, status {status:?}); \
                 stderr:\n{}",
                if closed {
                    "exited"
                } else {
                    "did not get ready"
                },
                started.elapsed(),
                m.stderr.snapshot().join("\n")
            );
        }
        m
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every event printed so far.
    pub fn events(&self) -> Vec<Value> {
        self.stdout
            .snapshot()
            .into_iter()
            .filter_map(|l| match l {
                OutLine::Event(v) => Some(v),
                OutLine::Bad(_) => None,
            })
            .collect()
    }

    /// Waits for a stderr line whose message matches `pred`; fails the test otherwise.
    pub fn wait_for_log(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let started = Instant::now();
        let found = self.stderr.wait(started + event_timeout(), |lines| {
            lines.iter().find(|l| pred(message(l))).cloned()
        });
        found.unwrap_or_else(|closed| {
            panic!(
                "waited {:?} for a log line {what}{}; stderr:\n{}",
                started.elapsed(),
                if closed {
                    " (the daemon closed stderr)"
                } else {
                    ""
                },
                self.stderr.snapshot().join("\n")
            )
        })
    }

    /// Like [`Monitor::wait_for`], bounded by `timeout`, and `None` when nothing came: for
    /// callers that retry (every caller must fail the test when all tries return `None`).
    pub fn try_wait_for(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        self.stdout
            .wait(Instant::now() + timeout, |lines| {
                lines.iter().find_map(|l| match l {
                    OutLine::Event(v) if pred(v) => Some(v.clone()),
                    _ => None,
                })
            })
            .ok()
    }

    /// Waits for the first event matching `pred`; fails the test when none comes in time.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_for_n(what, 1, pred).remove(0)
    }

    /// Waits until `n` events match `pred` and returns the first `n`, in output order.
    pub fn wait_for_n(&self, what: &str, n: usize, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let started = Instant::now();
        let found = self.stdout.wait(started + event_timeout(), |lines| {
            let hits: Vec<Value> = lines
                .iter()
                .filter_map(|l| match l {
                    OutLine::Event(v) if pred(v) => Some(v.clone()),
                    _ => None,
                })
                .take(n)
                .collect();
            (hits.len() == n).then_some(hits)
        });
        match found {
            Ok(hits) => hits,
            Err(closed) => {
                let events = self.events();
                let hits = events.iter().filter(|v| pred(v)).count();
                let tail: Vec<String> = events
                    .iter()
                    .rev()
                    .take(15)
                    .rev()
                    .map(Value::to_string)
                    .collect();
                panic!(
                    "waited {:?} for {n} event(s) {what}, saw {hits}{}; {} events in all, the \
                     last ones:\n{}\ndaemon stderr:\n{}",
                    started.elapsed(),
                    if closed {
                        " (the daemon closed its output)"
                    } else {
                        ""
                    },
                    events.len(),
                    tail.join("\n"),
                    self.stderr.snapshot().join("\n")
                )
            }
        }
    }

    /// SIGTERM, then waits (bounded) for the exit and the end of both pipes.
    pub fn stop(self) -> Stopped {
        self.stop_with(libc::SIGTERM)
    }

    pub fn stop_with(self, signal: libc::c_int) -> Stopped {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) on our own child, which has not been reaped yet (so the pid is ours).
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(
            rc,
            0,
            "kill({pid}, {signal}): {}",
            std::io::Error::last_os_error()
        );
        self.finish(&format!("of signal {signal}"), stop_timeout())
    }

    /// Waits (bounded) for a daemon that exits by itself, and the end of both pipes; fails the
    /// test (killing the daemon) when it is still running after `timeout`.
    pub fn wait_exit(self, timeout: Duration) -> Stopped {
        self.finish("without a signal", timeout)
    }

    fn finish(mut self, after: &str, timeout: Duration) -> Stopped {
        let deadline = Instant::now() + timeout;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(None) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!(
                        "rmm-monitor did not exit within {timeout:?} {after}; stderr:\n{}",
                        self.stderr.snapshot().join("\n")
                    );
                }
                Err(e) => panic!("waiting for rmm-monitor: {e}"),
            }
        };
        for t in self.threads.drain(..) {
            t.join().expect("pipe reader thread panicked");
        }
        let mut events = Vec::new();
        let mut bad_lines = Vec::new();
        for l in self.stdout.snapshot() {
            match l {
                OutLine::Event(v) => events.push(v),
                OutLine::Bad(s) => bad_lines.push(s),
            }
        }
        Stopped {
            status,
            events,
            bad_lines,
            stderr: self.stderr.snapshot(),
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        // A test that panicked midway: never leave a daemon (and its probes) behind.
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Stopped {
    /// The JSON of the `final stats: {..}` line; fails the test when there is none.
    pub fn final_stats(&self) -> Value {
        let line = self
            .stderr
            .iter()
            .rev()
            .find_map(|l| message(l).strip_prefix("final stats: "))
            .unwrap_or_else(|| {
                panic!(
                    "no `final stats:` line on stderr:\n{}",
                    self.stderr.join("\n")
                )
            });
        serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("final stats are not JSON ({e}): {line}"))
    }

    /// A counter of the final stats by JSON pointer, e.g. `/kernel_drops/exec_ringbuf_full`.
    pub fn stat(&self, pointer: &str) -> u64 {
        let stats = self.final_stats();
        stats
            .pointer(pointer)
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("final stats have no counter {pointer}: {stats}"))
    }

    /// Printed events of one kind.
    pub fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.events.iter().filter(move |e| e["event"] == kind)
    }

    /// Exit status 0, a final stats line, every stdout line an event, no output or decode
    /// errors, and the per-kind counters equal to what was printed.
    pub fn assert_clean(&self) {
        self.assert_clean_unprinted();
        let stats = self.final_stats();
        let counted = stats["events"]
            .as_object()
            .unwrap_or_else(|| panic!("no events in {stats}"));
        for (kind, n) in counted {
            assert_eq!(
                n.as_u64(),
                Some(self.of_kind(kind).count() as u64),
                "final stats events.{kind} against the {kind} lines printed"
            );
        }
    }

    /// [`Stopped::assert_clean`] for a run with `--events none`: all but the comparison
    /// with the events printed (none were).
    pub fn assert_clean_unprinted(&self) {
        let err = self.stderr.join("\n");
        assert_eq!(
            self.status.code(),
            Some(0),
            "rmm-monitor exit status; stderr:\n{err}"
        );
        assert!(
            self.bad_lines.is_empty(),
            "stdout lines that are not JSON events: {:?}",
            self.bad_lines
        );
        assert_eq!(self.stat("/output_errors"), 0, "output errors");
        assert_eq!(
            self.stat("/decode_bad_size"),
            0,
            "records of the wrong size"
        );
        assert_eq!(
            self.stat("/decode_unknown_kind"),
            0,
            "records of an unknown kind"
        );
        let stats = self.final_stats();
        let counted = stats["events"]
            .as_object()
            .unwrap_or_else(|| panic!("no events in {stats}"));
        for kind in ["exec", "fork", "exit", "connect", "dns"] {
            assert!(
                counted.contains_key(kind),
                "final stats count no {kind} events: {stats}"
            );
        }
    }
}
