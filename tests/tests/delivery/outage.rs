//! Outages: the syslog server crashes mid-stream and comes back on the same port, or never
//! answers at all. The daemon keeps running, other sinks are not held back, and the sink's
//! counters account for every alert raised.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use rmm_tests::{Stopped, Value};

use crate::{
    Scratch, alerts_raised, assert_sink_perfect,
    delivery::{
        services::{Input, Rsyslog},
        syslog::{check_5424, msg_alert},
    },
    free_port, is_exec_of, json_lines, path_str, poll, root_or_skip, sink_stats, wait_alert,
};

/// Runs `n` distinct anydesk copies, one every 100 ms, each once its alert is in the JSON file
/// (so the series keeps pace with the daemon); returns their paths and when each alert was seen
/// there (the daemon had dispatched it to every sink by then).
fn series(s: &Scratch, json: &Path, phase: &str, n: usize) -> Vec<(PathBuf, Instant)> {
    (0..n)
        .map(|i| {
            let (exe, _) = s.anydesk(&format!("{phase}-{i:02}"));
            wait_alert(json, "in the JSON file", |a| is_exec_of(a, &exe));
            let seen = Instant::now();
            std::thread::sleep(Duration::from_millis(100));
            (exe, seen)
        })
        .collect()
}

fn paths(v: &[(PathBuf, Instant)]) -> Vec<PathBuf> {
    v.iter().map(|(p, _)| p.clone()).collect()
}

/// The executable of the alert a syslog record carries.
fn exe_of(r: &Value) -> Option<String> {
    msg_alert(r).and_then(|a| a["process"]["executable"].as_str().map(str::to_owned))
}

#[test]
fn tcp_sink_survives_a_server_restart_and_accounts_for_every_alert() {
    root_or_skip!("tcp_sink_survives_a_server_restart_and_accounts_for_every_alert");
    let port = free_port();
    let mut rs = Rsyslog::start(&[Input::tcp("tcp", port)], None);
    let s = Scratch::new("outage");
    let json = s.file("alerts.json");
    let url = format!("tcp://127.0.0.1:{port}");
    let m = s.start(&["--json", path_str(&json), "--syslog", &url]);
    let daemon = m.pid();
    let arrived = |rs: &Rsyslog, exes: &[PathBuf]| -> Option<()> {
        let got: Vec<String> = rs
            .sent_by("tcp", daemon)
            .iter()
            .filter_map(exe_of)
            .collect();
        exes.iter()
            .all(|e| got.iter().any(|g| g == path_str(e)))
            .then_some(())
    };

    // Before: everything arrives, and nothing is in flight when the server dies.
    let before = paths(&series(&s, &json, "before", 5));
    poll(
        "the alerts before the outage at rsyslog",
        crate::DELIVERY_TIMEOUT,
        || arrived(&rs, &before),
        || rs.output(),
    );
    rs.kill();
    // During the outage (about 1.5 s): the sink finds the connection closed and retries.
    let during = series(&s, &json, "during", 15);
    // The server cannot listen again before this moment.
    let restarting = Instant::now();
    rs.restart();
    // After the restart on the same port.
    let after = paths(&series(&s, &json, "after", 10));
    let mut later = paths(&during);
    later.extend(after.iter().cloned());
    poll(
        "the alerts issued during and after the outage at the restarted rsyslog",
        Duration::from_secs(40),
        || arrived(&rs, &later),
        || {
            let got: Vec<String> = rs
                .sent_by("tcp", daemon)
                .iter()
                .filter_map(exe_of)
                .collect();
            format!(
                "rsyslog got from the daemon:\n{}\n{}",
                got.join("\n"),
                rs.output()
            )
        },
    );
    // Alerts dispatched more than a second before the server was restarted cannot have been
    // delivered within a second: the sink must count them late (or dropped).
    let must_wait = during
        .iter()
        .filter(|(_, seen)| restarting.duration_since(*seen) > Duration::from_secs(1))
        .count() as u64;
    assert!(
        must_wait > 0,
        "the outage lasted over a second for some alerts"
    );
    let stopped = m.stop();
    stopped.assert_clean();
    let raised = alerts_raised(&stopped);
    let log = stopped.stderr.join("\n");
    assert_sink_perfect(&stopped, &format!("json:{}", path_str(&json)));
    let st = sink_stats(&stopped, &format!("syslog:{url}"));
    assert!(
        st["reconnects"] >= 1,
        "reconnected after the restart: {st:?}\n{log}"
    );
    assert!(
        st["errors"] >= 1,
        "the outage is counted as errors: {st:?}\n{log}"
    );
    assert_eq!(
        st["delivered"] + st["dropped"],
        raised,
        "every alert is delivered or dropped ({raised} raised): {st:?}\n{log}"
    );
    assert!(
        st["delivered_late"] + st["dropped"] >= must_wait,
        "the {must_wait} alerts that waited over a second through the outage are counted late \
         (or dropped): {st:?}\n{log}"
    );
    // Each of ours exactly once, none duplicated by the retries.
    let recs = rs.sent_by("tcp", daemon);
    for exe in before.iter().chain(&later) {
        let hits: Vec<&Value> = recs
            .iter()
            .filter(|r| exe_of(r).as_deref() == Some(path_str(exe)))
            .collect();
        assert_eq!(hits.len(), 1, "one message for {}: {hits:?}", exe.display());
        let alert = msg_alert(hits[0]).expect("an alert");
        check_5424(hits[0], &alert, daemon, 4);
    }
    assert_eq!(
        recs.len() as u64,
        st["delivered"],
        "rsyslog got every alert the sink counts as delivered"
    );
}

/// A daemon whose syslog sink points at a port where nothing ever listens, and a JSON file;
/// eight alerts, three more seconds of retries, then SIGTERM.
struct DeadRun {
    stopped: Stopped,
    json: PathBuf,
    sink: String,
    raised: u64,
    /// How long each alert took to reach the JSON file after its exec.
    json_delays: Vec<Duration>,
    stop_took: Duration,
    _scratch: Scratch,
}

fn dead_server_run(tag: &str) -> DeadRun {
    let port = free_port();
    let s = Scratch::new(tag);
    let json = s.file("alerts.json");
    let url = format!("tcp://127.0.0.1:{port}");
    let m = s.start(&["--json", path_str(&json), "--syslog", &url]);
    m.wait_for_log("about the refused connection", |l| {
        l.contains(&format!("sink syslog:{url}")) && l.contains("retrying in the background")
    });
    let json_delays: Vec<Duration> = (0..8)
        .map(|i| {
            let t = Instant::now();
            let (exe, _) = s.anydesk(&format!("{tag}-{i}"));
            wait_alert(&json, "despite the dead syslog server", |a| {
                is_exec_of(a, &exe)
            });
            let took = t.elapsed();
            std::thread::sleep(Duration::from_millis(100));
            took
        })
        .collect();
    // Let the sink retry for a while (its back-off grows meanwhile).
    std::thread::sleep(Duration::from_secs(3));
    let t = Instant::now();
    let stopped = m.stop();
    let stop_took = t.elapsed();
    stopped.assert_clean();
    let raised = alerts_raised(&stopped);
    assert!(raised >= 8, "{raised} alerts raised");
    DeadRun {
        stopped,
        json,
        sink: format!("syslog:{url}"),
        raised,
        json_delays,
        stop_took,
        _scratch: s,
    }
}

#[test]
fn dead_syslog_server_does_not_hold_back_other_sinks() {
    root_or_skip!("dead_syslog_server_does_not_hold_back_other_sinks");
    let r = dead_server_run("dead");
    let slow: Vec<&Duration> = r
        .json_delays
        .iter()
        .filter(|d| **d > Duration::from_secs(2))
        .collect();
    assert!(
        slow.is_empty(),
        "every alert reached the JSON file promptly: {:?}",
        r.json_delays
    );
    assert_eq!(
        json_lines(&r.json).len() as u64,
        r.raised,
        "the JSON file holds every alert"
    );
    assert_sink_perfect(&r.stopped, &format!("json:{}", path_str(&r.json)));
    let st = sink_stats(&r.stopped, &r.sink);
    assert_eq!(st["delivered"], 0, "nothing delivered: {st:?}");
    assert_eq!(st["reconnects"], 0, "never connected: {st:?}");
    assert!(st["errors"] >= 2, "the failed connects are counted: {st:?}");
    assert!(
        r.stop_took < Duration::from_secs(10),
        "a dead sink does not hold up the exit: {:?}",
        r.stop_took
    );
}

#[test]
fn dead_syslog_sink_accounts_for_every_alert_at_shutdown() {
    root_or_skip!("dead_syslog_sink_accounts_for_every_alert_at_shutdown");
    let r = dead_server_run("dead-acct");
    let st = sink_stats(&r.stopped, &r.sink);
    let raised = r.raised;
    assert_eq!(
        st["delivered"] + st["dropped"],
        raised,
        "every alert of the dead sink is accounted for: delivered + dropped == {raised} raised \
         (what was still queued at exit counts as dropped): {st:?}; daemon stderr:\n{}",
        r.stopped.stderr.join("\n")
    );
}
