//! Alert sinks: JSON lines, journald (native protocol) and syslog (RFC 5424 / 3164 over
//! /dev/log, UDP, TCP and TLS), any combination at once.
//!
//! Every sink runs on its own thread behind a bounded queue: the processor only does a
//! `try_send`, so a slow or dead sink never blocks the ring-buffer readers. A full queue drops
//! the alert and counts it; a failed delivery is retried after a reconnect with back-off, and
//! alerts that waited through an outage are counted as delivered late.

pub mod journald;
pub mod json;
pub mod syslog;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError, sync_channel},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::alert::Alert;

/// One delivery channel. Implementations connect lazily and report errors; the worker decides
/// when to reconnect.
pub trait Deliver: Send {
    fn describe(&self) -> String;
    /// (Re)establishes the connection or opens the file.
    fn connect(&mut self) -> Result<()>;
    fn send(&mut self, alert: &Alert) -> Result<()>;
    /// Called when the queue is empty.
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
    /// Alerts taken by `send` and not written out yet (a sink that buffers): they count as
    /// delivered only once written.
    fn pending(&self) -> u64 {
        0
    }
}

#[derive(Debug, Default)]
pub struct SinkCounters {
    pub delivered: AtomicU64,
    /// Waited more than a second in the queue (an outage, a slow peer) before delivery.
    pub delivered_late: AtomicU64,
    /// Dropped because the queue was full.
    pub dropped: AtomicU64,
    pub errors: AtomicU64,
    pub reconnects: AtomicU64,
    /// Set at shutdown: a sink that is down stops retrying.
    closing: AtomicBool,
    /// Set by SIGHUP: reopen before the next delivery. A flag, not only a queued message, so
    /// that a reopen asked for while the queue is full is not lost with the message.
    reopen: AtomicBool,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SinkReport {
    pub sink: String,
    pub delivered: u64,
    pub delivered_late: u64,
    pub dropped: u64,
    pub errors: u64,
    pub reconnects: u64,
}

enum Msg {
    Alert(Arc<Alert>, Instant),
    /// Reopen files (SIGHUP, log rotation) and reconnect sockets.
    Reopen,
}

struct Handle {
    name: String,
    tx: SyncSender<Msg>,
    counters: Arc<SinkCounters>,
    thread: JoinHandle<()>,
}

pub struct SinkSet {
    sinks: Vec<Handle>,
}

const LATE: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

impl SinkSet {
    /// Starts one worker per sink, each with a queue of `queue` alerts.
    pub fn start(sinks: Vec<Box<dyn Deliver>>, queue: usize) -> Result<SinkSet> {
        let mut handles = Vec::new();
        for (i, sink) in sinks.into_iter().enumerate() {
            let name = sink.describe();
            let (tx, rx) = sync_channel(queue.max(1));
            let counters = Arc::new(SinkCounters::default());
            let c = counters.clone();
            let thread = std::thread::Builder::new()
                .name(format!("rmm-sink-{i}"))
                .spawn(move || {
                    // Writing alerts to sockets and files needs no capability.
                    crate::privs::thread_keeps("sink", crate::privs::NONE);
                    worker(sink, rx, c)
                })
                .context("starting a sink thread")?;
            handles.push(Handle {
                name,
                tx,
                counters,
                thread,
            });
        }
        Ok(SinkSet { sinks: handles })
    }

    pub fn names(&self) -> Vec<String> {
        self.sinks.iter().map(|s| s.name.clone()).collect()
    }

    /// Never blocks: a full queue drops the alert for that sink and counts it.
    pub fn dispatch(&self, alert: Alert) {
        let alert = Arc::new(alert);
        let now = Instant::now();
        for s in &self.sinks {
            match s.tx.try_send(Msg::Alert(alert.clone(), now)) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    let n = s.counters.dropped.fetch_add(1, Relaxed) + 1;
                    if n.is_power_of_two() {
                        log::warn!("sink {}: queue full, {n} alerts dropped so far", s.name);
                    }
                }
            }
        }
    }

    /// Asks every sink to reopen its file or reconnect (SIGHUP). The message only wakes an idle
    /// worker: when the queue is full the worker is busy and sees the flag before its next
    /// delivery.
    pub fn reopen(&self) {
        for s in &self.sinks {
            s.counters.reopen.store(true, Relaxed);
            let _ = s.tx.try_send(Msg::Reopen);
        }
    }

    pub fn reports(&self) -> Vec<SinkReport> {
        self.sinks
            .iter()
            .map(|s| report(&s.name, &s.counters))
            .collect()
    }

    /// Lets each sink deliver what it has queued, for at most `grace`; what is left is counted
    /// as dropped.
    pub fn shutdown(self, grace: Duration) -> Vec<SinkReport> {
        let deadline = Instant::now() + grace;
        let mut out = Vec::new();
        for s in &self.sinks {
            s.counters.closing.store(true, Relaxed);
        }
        for s in self.sinks {
            drop(s.tx);
            while !s.thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if !s.thread.is_finished() {
                log::warn!("sink {} did not finish delivering within {grace:?}", s.name);
            } else if s.thread.join().is_err() {
                log::error!("sink {} panicked", s.name);
            }
            out.push(report(&s.name, &s.counters));
        }
        out
    }
}

fn report(name: &str, c: &SinkCounters) -> SinkReport {
    SinkReport {
        sink: name.to_owned(),
        delivered: c.delivered.load(Relaxed),
        delivered_late: c.delivered_late.load(Relaxed),
        dropped: c.dropped.load(Relaxed),
        errors: c.errors.load(Relaxed),
        reconnects: c.reconnects.load(Relaxed),
    }
}

fn worker(mut sink: Box<dyn Deliver>, rx: Receiver<Msg>, c: Arc<SinkCounters>) {
    let name = sink.describe();
    let mut connected = match sink.connect() {
        Ok(()) => true,
        Err(e) => {
            log::warn!("sink {name}: {e:#}; retrying in the background");
            c.errors.fetch_add(1, Relaxed);
            false
        }
    };
    let mut backoff = BACKOFF_MIN;
    // Alerts taken by the sink; delivered are those of them written out.
    let mut sent = 0u64;
    let delivered = |sink: &dyn Deliver, sent: u64| {
        c.delivered
            .store(sent.saturating_sub(sink.pending()), Relaxed);
    };
    loop {
        // Flush whenever the queue runs empty: alerts reach the file or peer promptly, and
        // bursts are still written in one go.
        let msg = match rx.try_recv() {
            Ok(m) => m,
            Err(TryRecvError::Empty) => {
                if connected && let Err(e) = sink.flush() {
                    log::warn!("sink {name}: flush failed: {e:#}");
                    c.errors.fetch_add(1, Relaxed);
                    connected = false;
                }
                delivered(&*sink, sent);
                match idle(
                    &mut *sink,
                    &rx,
                    &c,
                    &name,
                    &mut connected,
                    &mut backoff,
                    sent,
                ) {
                    Some(m) => m,
                    None => break,
                }
            }
            Err(TryRecvError::Disconnected) => break,
        };
        if c.reopen.swap(false, Relaxed) {
            let _ = sink.flush();
            connected = reconnect(&mut *sink, &name, &c);
        }
        let (alert, queued) = match msg {
            Msg::Alert(a, t) => (a, t),
            Msg::Reopen => continue,
        };
        // Deliver this alert, reconnecting with back-off until it goes through or the
        // daemon stops (the queue behind it fills up meanwhile and drops are counted).
        loop {
            if !connected {
                // Shutting down with the sink still down: what is queued is dropped (and
                // counted) at once rather than waiting out the back-off.
                if c.closing.load(Relaxed) {
                    c.dropped.fetch_add(1, Relaxed);
                    break;
                }
                sleep_unless_closing(backoff, &c.closing);
                backoff = (backoff * 2).min(BACKOFF_MAX);
                connected = reconnect(&mut *sink, &name, &c);
                if !connected {
                    continue;
                }
            }
            match sink.send(&alert) {
                Ok(()) => {
                    backoff = BACKOFF_MIN;
                    sent += 1;
                    delivered(&*sink, sent);
                    if queued.elapsed() > LATE {
                        c.delivered_late.fetch_add(1, Relaxed);
                    }
                    break;
                }
                Err(e) => {
                    log::warn!("sink {name}: {e:#}; reconnecting");
                    c.errors.fetch_add(1, Relaxed);
                    connected = false;
                }
            }
        }
    }
    if let Err(e) = sink.flush() {
        c.errors.fetch_add(1, Relaxed);
        log::error!("sink {name}: the last flush failed: {e:#}");
    }
    // What could not be written by the end is lost: counted as dropped, not as delivered.
    let unwritten = sink.pending();
    if unwritten > 0 {
        log::error!("sink {name}: {unwritten} alerts could not be written before the stop");
        c.dropped.fetch_add(unwritten, Relaxed);
    }
    delivered(&*sink, sent);
}

/// Waits for the next message with the queue empty. While alerts wait unwritten in a sink that
/// is down (a full file system, a peer gone), the sink is reconnected and flushed with
/// back-off meanwhile, so that they go out when it comes back even if no new alert arrives.
/// `None`: the queue is closed.
fn idle(
    sink: &mut dyn Deliver,
    rx: &Receiver<Msg>,
    c: &SinkCounters,
    name: &str,
    connected: &mut bool,
    backoff: &mut Duration,
    sent: u64,
) -> Option<Msg> {
    loop {
        if *connected || sink.pending() == 0 || c.closing.load(Relaxed) {
            return rx.recv().ok();
        }
        match rx.recv_timeout(*backoff) {
            Ok(m) => return Some(m),
            Err(RecvTimeoutError::Disconnected) => return None,
            Err(RecvTimeoutError::Timeout) => {
                *backoff = (*backoff * 2).min(BACKOFF_MAX);
                *connected = reconnect(sink, name, c);
                if *connected && let Err(e) = sink.flush() {
                    log::debug!("sink {name}: flush failed again: {e:#}");
                    c.errors.fetch_add(1, Relaxed);
                    *connected = false;
                }
                if *connected {
                    *backoff = BACKOFF_MIN;
                }
                c.delivered
                    .store(sent.saturating_sub(sink.pending()), Relaxed);
            }
        }
    }
}

/// Sleeps up to `d`, returning early once the daemon starts shutting down.
fn sleep_unless_closing(d: Duration, closing: &AtomicBool) {
    let until = Instant::now() + d;
    while !closing.load(Relaxed) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

fn reconnect(sink: &mut dyn Deliver, name: &str, c: &SinkCounters) -> bool {
    match sink.connect() {
        Ok(()) => {
            c.reconnects.fetch_add(1, Relaxed);
            log::info!("sink {name}: connected");
            true
        }
        Err(e) => {
            log::debug!("sink {name}: reconnect failed: {e:#}");
            c.errors.fetch_add(1, Relaxed);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Mutex, mpsc};

    use super::*;
    use crate::{
        alert::{Action, EventFields, Host, ProcessFields, RmmFields, RuleFields, Threat, UserRef},
        matcher::Indicator,
    };

    fn alert(n: u32) -> Alert {
        Alert {
            timestamp: "2026-12-07T00:00:00Z".into(),
            event: EventFields {
                kind: "alert",
                category: vec!["process"],
                action: Action::Exec,
                severity: 47,
                outcome: None,
            },
            rule: RuleFields {
                id: "rmm.test.binary".into(),
                name: "test".into(),
            },
            rmm: RmmFields {
                tool: "test".into(),
                tool_name: "Test".into(),
                indicator: Indicator::Binary,
                matched: "test".into(),
                context: vec![],
                severity: "medium",
                count: 1,
                ancestors: vec![],
                references: vec![],
                loss: None,
            },
            threat: Threat::attack("T1219", "Remote Access Tools"),
            process: ProcessFields {
                pid: n,
                entity_id: None,
                start: None,
                name: "test".into(),
                executable: "/usr/bin/test".into(),
                args: vec![],
                user: UserRef { id: 0 },
                parent: None,
            },
            destination: None,
            dns: None,
            container: None,
            orchestrator: None,
            host: Host {
                hostname: "h".into(),
            },
        }
    }

    /// Records what the worker asks of it; every delivery waits for a permit, so a test can
    /// hold the worker busy while the queue fills.
    struct Gated {
        permits: Mutex<mpsc::Receiver<()>>,
        log: mpsc::Sender<String>,
    }

    impl Deliver for Gated {
        fn describe(&self) -> String {
            "gated".into()
        }
        fn connect(&mut self) -> Result<()> {
            let _ = self.log.send("connect".into());
            Ok(())
        }
        fn send(&mut self, a: &Alert) -> Result<()> {
            let _ = self.permits.lock().unwrap().recv();
            let _ = self.log.send(format!("alert {}", a.process.pid));
            Ok(())
        }
    }

    #[test]
    fn a_reopen_asked_for_while_the_queue_is_full_is_carried_out() {
        let (permit, permits) = mpsc::channel();
        let (log, events) = mpsc::channel();
        let sink = Gated {
            permits: Mutex::new(permits),
            log,
        };
        let set = SinkSet::start(vec![Box::new(sink)], 2).unwrap();
        let next = || events.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(next(), "connect");
        set.dispatch(alert(1));
        // The worker holds alert 1 (blocked on its permit); 2 and 3 fill the queue.
        std::thread::sleep(Duration::from_millis(100));
        set.dispatch(alert(2));
        set.dispatch(alert(3));
        set.reopen();
        for _ in 0..3 {
            permit.send(()).unwrap();
        }
        let seen: Vec<String> = (0..4).map(|_| next()).collect();
        assert_eq!(seen, ["alert 1", "connect", "alert 2", "alert 3"]);
        let r = set.shutdown(Duration::from_secs(5));
        assert_eq!((r[0].delivered, r[0].dropped, r[0].reconnects), (3, 0, 1));
    }
}
