//! Start, stop and overload: SIGTERM/SIGINT give exit 0 and the final stats, the drain at
//! stop loses nothing, bad command lines are refused before anything is loaded, and a full
//! ring buffer is survived and counted.

use std::path::Path;

use rmm_tests::{Monitor, Stopped, TempDir, Value, monitor_bin, nonce, num, run_bounded};

use crate::{helper, root_or_skip};

fn keys(v: &Value) -> Vec<&str> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect()
}

/// The shape of the final stats, exactly as documented.
fn assert_stats_shape(stopped: &Stopped) {
    let s = stopped.final_stats();
    let mut top = keys(&s);
    top.sort_unstable();
    assert_eq!(
        top,
        [
            "decode_bad_size",
            "decode_unknown_kind",
            "dns_malformed",
            "events",
            "kernel_drops",
            "output_errors",
            "proc_unreadable"
        ],
        "{s}"
    );
    let mut events = keys(&s["events"]);
    events.sort_unstable();
    assert_eq!(events, ["connect", "dns", "exec", "exit", "fork"], "{s}");
    let mut drops = keys(&s["kernel_drops"]);
    drops.sort_unstable();
    assert_eq!(
        drops,
        [
            "connect_pending_map_full",
            "connect_ringbuf_full",
            "dns_ringbuf_full",
            "exec_ringbuf_full",
            "exit_ringbuf_full",
            "fork_ringbuf_full"
        ],
        "{s}"
    );
    for group in ["events", "kernel_drops"] {
        for (k, v) in s[group].as_object().expect("object") {
            assert!(v.is_u64(), "{group}.{k} is a counter: {s}");
        }
    }
}

fn stop_cleanly(signal: libc::c_int, name: &str) {
    let m = Monitor::start(&[]);
    let run = helper(&["exit", "0"]);
    let pid = u64::from(run.pid);
    m.wait_for("the helper's exec", |e| {
        e["event"] == "exec" && num(e, "pid") == pid
    });
    let stopped = m.stop_with(signal);
    stopped.assert_clean();
    assert_stats_shape(&stopped);
    assert!(
        stopped.stat("/events/exec") >= 1,
        "the helper's exec is counted"
    );
    assert!(
        stopped
            .stderr
            .iter()
            .any(|l| l.contains(&format!("{name}: draining"))),
        "the daemon says it got {name}: {:?}",
        stopped.stderr
    );
}

#[test]
fn sigterm_gives_exit_0_and_final_stats() {
    root_or_skip!("sigterm_gives_exit_0_and_final_stats");
    stop_cleanly(libc::SIGTERM, "SIGTERM");
}

#[test]
fn sigint_gives_exit_0_and_final_stats() {
    root_or_skip!("sigint_gives_exit_0_and_final_stats");
    stop_cleanly(libc::SIGINT, "SIGINT");
}

#[test]
fn stop_drains_events_still_in_the_ring() {
    root_or_skip!("stop_drains_events_still_in_the_ring");
    // No wakeup below 256 KiB and a 10 s poll: the records sit in the ring until the stop.
    let m = Monitor::start(&["--poll-ms", "10000", "--wakeup-bytes", "262144"]);
    let marker = format!("drain-{}", nonce());
    let run = helper(&["exit", "0", &marker]);
    run.assert_success();
    let stopped = m.stop();
    stopped.assert_clean();
    let pid = u64::from(run.pid);
    let exec = stopped
        .of_kind("exec")
        .find(|e| num(e, "pid") == pid)
        .unwrap_or_else(|| {
            panic!(
                "the exec made just before SIGTERM was not drained: {:?}",
                stopped.events
            )
        });
    assert_eq!(exec["args"][3], marker.as_str(), "{exec}");
    assert!(
        stopped.of_kind("exit").any(|e| num(e, "pid") == pid),
        "the exit made just before SIGTERM was not drained"
    );
}

/// `rmm-monitor ARGS` must fail fast, say why, and never get ready.
fn assert_refused(args: &[&str], want_code: Option<i32>, want_in_stderr: &str) {
    let run = run_bounded(&monitor_bin(), args);
    assert!(!run.status.success(), "{args:?} was accepted: {run:?}");
    if want_code.is_some() {
        assert_eq!(run.status.code(), want_code, "{args:?}: {run:?}");
    }
    assert!(
        run.stderr.contains(want_in_stderr),
        "{args:?}: stderr lacks {want_in_stderr:?}:\n{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("ready"),
        "{args:?} got ready:\n{}",
        run.stderr
    );
    assert!(
        run.stdout.is_empty(),
        "{args:?} printed events: {}",
        run.stdout
    );
}

#[test]
fn unknown_flag_is_refused_before_starting() {
    // Needs no root: clap refuses the command line before anything is loaded.
    assert_refused(
        &["run", "--events", "json", "--no-such-flag"],
        Some(2),
        "unexpected argument '--no-such-flag'",
    );
    assert_refused(
        &["run", "--events", "yaml"],
        Some(2),
        "invalid value 'yaml'",
    );
    assert_refused(&["run", "--poll-ms", "0"], Some(2), "--poll-ms");
}

#[test]
fn bad_ring_size_is_refused() {
    root_or_skip!("bad_ring_size_is_refused");
    assert_refused(
        &["run", "--events", "json", "--proc-ring-bytes", "5000"],
        Some(1),
        "power of two",
    );
    assert_refused(
        &["run", "--events", "json", "--net-ring-bytes", "2048"],
        Some(1),
        "page size",
    );
}

/// Copies /usr/bin/true under a unique name; its execs are told apart by filename.
fn burst_target(dir: &TempDir) -> String {
    let p = dir.copy_executable("/usr/bin/true", &format!("burst-{}", nonce()));
    p.to_str().expect("UTF-8").to_owned()
}

fn burst(target: &str, n: usize) {
    let run = helper(&[
        "burst",
        &n.to_string(),
        target,
        Path::new(target)
            .file_name()
            .and_then(|f| f.to_str())
            .expect("name"),
    ]);
    run.assert_success();
    assert_eq!(
        (run.num::<usize>("issued"), run.num::<usize>("failed")),
        (n, 0),
        "{run:?}"
    );
}

#[test]
fn burst_of_execs_is_complete_with_default_rings() {
    root_or_skip!("burst_of_execs_is_complete_with_default_rings");
    let dir = TempDir::new("burst-ok");
    let target = burst_target(&dir);
    let n = 200;
    let m = Monitor::start(&[]);
    burst(&target, n);
    let seen = m.wait_for_n("every exec of the burst", n, |e| {
        e["event"] == "exec" && e["filename"] == target.as_str()
    });
    let mut idx: Vec<u64> = seen
        .iter()
        .map(|e| {
            e["args"][1]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or(u64::MAX)
        })
        .collect();
    idx.sort_unstable();
    assert_eq!(
        idx,
        (0..n as u64).collect::<Vec<_>>(),
        "each child's index once"
    );
    let stopped = m.stop();
    stopped.assert_clean();
    assert_eq!(stopped.stat("/kernel_drops/exec_ringbuf_full"), 0);
}

#[test]
fn full_ring_buffer_is_survived_and_counted() {
    root_or_skip!("full_ring_buffer_is_survived_and_counted");
    let dir = TempDir::new("burst-full");
    let target = burst_target(&dir);
    let n = 300;
    // A one-page ring holds a single exec record (2 KiB) and is read once a second.
    let m = Monitor::start(&[
        "--proc-ring-bytes",
        "4096",
        "--wakeup-bytes",
        "0",
        "--poll-ms",
        "1000",
    ]);
    burst(&target, n);
    // Still alive and reading: a connect on the other ring comes through.
    let probe = helper(&["udp-connect", "127.0.0.1", "9"]);
    let pid = u64::from(probe.pid);
    m.wait_for("a connect after the burst", |e| {
        e["event"] == "connect" && num(e, "pid") == pid
    });
    let stopped = m.stop();
    stopped.assert_clean();
    let seen = stopped
        .of_kind("exec")
        .filter(|e| e["filename"] == target.as_str())
        .count() as u64;
    let exec_drops = stopped.stat("/kernel_drops/exec_ringbuf_full");
    let proc_drops = exec_drops
        + stopped.stat("/kernel_drops/fork_ringbuf_full")
        + stopped.stat("/kernel_drops/exit_ringbuf_full");
    assert!(
        exec_drops > 0,
        "a one-page ring under {n} execs drops some: {}",
        stopped.final_stats()
    );
    assert!(
        seen < n as u64,
        "seen {seen} of {n} execs although {exec_drops} were dropped"
    );
    assert!(
        seen + exec_drops >= n as u64,
        "every exec of the burst is either printed ({seen}) or counted as dropped ({exec_drops}); other drops {proc_drops}"
    );
}
