//! Start, stop and overload: SIGTERM/SIGINT give exit 0 and the final stats, the drain at
//! stop loses nothing, bad command lines are refused before anything is loaded, and a full
//! ring buffer is survived and counted.

use std::{path::Path, time::Duration};

use rmm_tests::{Monitor, Stopped, TempDir, Value, monitor_bin, nonce, num, run_bounded};

use crate::{helper, root_or_skip};

fn keys(v: &Value) -> Vec<&str> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect()
}

/// The documented shape of the final stats (newer daemons may add counters).
fn assert_stats_shape(stopped: &Stopped) {
    let s = stopped.final_stats();
    let has = |v: &Value, want: &[&str]| {
        let got = keys(v);
        for k in want {
            assert!(got.contains(k), "final stats lack {k}: {s}");
        }
    };
    has(
        &s,
        &[
            "decode_bad_size",
            "decode_unknown_kind",
            "dns_malformed",
            "events",
            "kernel_drops",
            "output_errors",
            "proc_unreadable",
        ],
    );
    has(&s["events"], &["connect", "dns", "exec", "exit", "fork"]);
    has(
        &s["kernel_drops"],
        &[
            "connect_pending_map_full",
            "connect_ringbuf_full",
            "dns_ringbuf_full",
            "exec_ringbuf_full",
            "exit_ringbuf_full",
            "fork_ringbuf_full",
        ],
    );
    for group in ["events", "kernel_drops"] {
        for (k, v) in s[group].as_object().expect("object") {
            assert!(v.is_u64(), "{group}.{k} is a counter: {s}");
        }
    }
    for k in [
        "decode_bad_size",
        "decode_unknown_kind",
        "dns_malformed",
        "output_errors",
        "proc_unreadable",
    ] {
        assert!(s[k].is_u64(), "{k} is a counter: {s}");
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

/// What the daemon tells its service manager, and the kernel it says it runs on: on every
/// kernel of the matrix, READY=1 comes once every probe is attached, and the ready line names
/// this kernel and its features.
#[test]
fn ready_is_sent_to_the_service_manager_and_names_the_kernel() {
    root_or_skip!("ready_is_sent_to_the_service_manager_and_names_the_kernel");
    let dir = TempDir::new("notify");
    let path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path)
        .unwrap_or_else(|e| panic!("binding {}: {e}", path.display()));
    sock.set_read_timeout(Some(rmm_tests::monitor::ready_timeout()))
        .expect("socket timeout");
    let m = Monitor::start_notifying(&[], &path);
    let mut said = Vec::new();
    let mut buf = [0u8; 4096];
    while !said.iter().any(|l: &String| l == "READY=1") {
        let n = sock
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no READY=1 on {} ({e}); got {said:?}", path.display()));
        said.extend(
            String::from_utf8_lossy(&buf[..n])
                .lines()
                .map(str::to_string),
        );
    }
    assert!(
        said.iter().any(|l| l.starts_with("STATUS=monitoring")),
        "a status with the ready notification: {said:?}"
    );
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let ready = m.wait_for_log("ready", |l| l.starts_with("ready: "));
    assert!(
        ready.contains(&format!("kernel {}", release.trim())),
        "the ready line names the kernel: {ready}"
    );
    assert!(
        ready.contains("every kernel feature on") || ready.contains("features off: "),
        "the ready line says which kernel features are off: {ready}"
    );
    m.stop().assert_clean();
}

#[test]
fn sigint_gives_exit_0_and_final_stats() {
    root_or_skip!("sigint_gives_exit_0_and_final_stats");
    stop_cleanly(libc::SIGINT, "SIGINT");
}

#[test]
fn stop_drains_events_still_in_the_ring() {
    root_or_skip!("stop_drains_events_still_in_the_ring");
    // A wakeup threshold larger than the ring (never reached, whatever else runs on the
    // machine) and a 10 s poll: the records sit in the ring until the stop.
    let m = Monitor::start(&["--poll-ms", "10000", "--wakeup-bytes", "1099511627776"]);
    let marker = format!("drain-{}", nonce());
    let run = helper(&["exit", "0", &marker]);
    run.assert_success();
    let pid = u64::from(run.pid);
    // Documented behaviour: below the wakeup threshold nothing is read before the next poll.
    let early = m.try_wait_for(std::time::Duration::from_millis(500), |e| {
        e["event"] == "exec" && num(e, "pid") == pid
    });
    assert!(
        early.is_none(),
        "read before the 10 s poll although below the wakeup threshold: {early:?}"
    );
    let stopped = m.stop();
    stopped.assert_clean();
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
fn full_ring_buffers_are_survived_and_counted() {
    root_or_skip!("full_ring_buffers_are_survived_and_counted");
    // A wakeup on every record: each network record is its own ring entry.
    check_full_rings("0");
}

#[test]
fn full_ring_buffers_are_survived_and_counted_with_staged_records() {
    root_or_skip!("full_ring_buffers_are_survived_and_counted_with_staged_records");
    // Network records go through the per-CPU stages: a stage that the full ring refuses
    // counts each of its records as dropped. No wakeup below 1 GiB: the ring is read once a
    // second only, so the burst must overflow it.
    check_full_rings("1073741824");
}

fn check_full_rings(wakeup_bytes: &str) {
    let dir = TempDir::new("burst-full");
    let target = burst_target(&dir);
    let (n_exec, n_dns) = (300u64, 300u64);
    let alerts = dir.path().join("alerts.json");
    // One-page rings hold a single exec record (2 KiB) or six DNS records, read once a second.
    // The readers are held (the debug build's injected `hold` fault, on the exec of `hold`)
    // while the bursts run, so that both rings overflow whatever the scheduling.
    let (hold, fault) = crate::hold_fault(&dir);
    let m = Monitor::start_with_env(
        &[
            "--json",
            alerts.to_str().expect("a UTF-8 path"),
            "--proc-ring-bytes",
            "4096",
            "--net-ring-bytes",
            "4096",
            "--wakeup-bytes",
            wakeup_bytes,
            "--poll-ms",
            "1000",
            "--stats-interval",
            "1",
        ],
        None,
        &[("RMM_MONITOR_FAULT", &fault)],
    );
    crate::hold_readers(&m, &hold);
    burst(&target, n_exec as usize);
    let name = format!("burst-{}.rmm-e2e.test", nonce());
    let dns = helper(&["dns-burst", "127.0.0.1", &name, &n_dns.to_string()]);
    dns.assert_success();
    crate::wait_holds_over(&m);
    // The loss is logged within a stats interval.
    m.wait_for_log("reporting the exec drops", |l| {
        l.contains("kernel dropped events") && l.contains("exec_ringbuf_full=")
    });
    // Still alive and reading: a connect made afterwards comes through (retried, since a
    // full ring may drop one).
    let alive = (0..5).any(|_| {
        let probe = helper(&["udp-connect", "127.0.0.1", "9"]);
        let pid = u64::from(probe.pid);
        m.try_wait_for(
            rmm_tests::monitor::scaled(std::time::Duration::from_secs(3)),
            |e| e["event"] == "connect" && num(e, "pid") == pid,
        )
        .is_some()
    });
    let printed_before_stop = m.events().len();
    let stopped_pid = m.pid();
    let stopped = m.stop();
    assert!(
        alive,
        "no connect event came through after the bursts ({printed_before_stop} events printed \
         before the stop, {} after); final stats {}; loss reports:\n{}",
        stopped.events.len(),
        stopped.final_stats(),
        stopped
            .stderr
            .iter()
            .filter(|l| l.contains("dropped"))
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    stopped.assert_clean();
    // Every loss reached the alert file as loss records, and they add up to the final
    // counters, reason by reason.
    let records = crate::loss_records(&alerts);
    let finals = stopped.final_stats();
    let drops = finals["kernel_drops"].as_object().expect("kernel_drops");
    for (reason, total) in drops {
        let reported: u64 = records
            .iter()
            .filter(|r| r["rmm"]["loss"]["reason"] == reason.as_str())
            .map(|r| num(&r["rmm"]["loss"], "count"))
            .sum();
        assert_eq!(
            Some(reported),
            total.as_u64(),
            "loss records of {reason} add up to the final count: {records:?}"
        );
    }
    let exec_loss = records
        .iter()
        .find(|r| r["rmm"]["loss"]["reason"] == "exec_ringbuf_full")
        .unwrap_or_else(|| panic!("a loss record for the exec drops: {records:?}"));
    assert_eq!(exec_loss["event"]["kind"], "state", "{exec_loss}");
    assert_eq!(exec_loss["rule"]["id"], "rmm.monitor.loss", "{exec_loss}");
    assert_eq!(exec_loss["process"]["pid"], stopped_pid, "{exec_loss}");
    for (what, seen, dropped, issued) in [
        (
            "exec",
            stopped
                .of_kind("exec")
                .filter(|e| e["filename"] == target.as_str())
                .count() as u64,
            stopped.stat("/kernel_drops/exec_ringbuf_full"),
            n_exec,
        ),
        (
            "dns",
            stopped
                .of_kind("dns")
                .filter(|e| e["qname"] == name.as_str())
                .count() as u64,
            stopped.stat("/kernel_drops/dns_ringbuf_full"),
            n_dns,
        ),
    ] {
        assert!(
            dropped > 0,
            "{what}: a one-page ring under {issued} records drops some: {}",
            stopped.final_stats()
        );
        assert!(
            seen < issued,
            "{what}: seen {seen} of {issued} although {dropped} were dropped"
        );
        assert!(
            seen + dropped >= issued,
            "{what}: each of the {issued} is either printed ({seen}) or counted as dropped ({dropped})"
        );
    }
}

#[test]
fn broken_stdout_is_counted_not_fatal() {
    root_or_skip!("broken_stdout_is_counted_not_fatal");
    let m = Monitor::start_with_broken_stdout(&[]);
    helper(&["exit", "0"]).assert_success();
    let stopped = m.stop();
    assert_eq!(
        stopped.status.code(),
        Some(0),
        "exit status; stderr:\n{}",
        stopped.stderr.join("\n")
    );
    assert!(
        stopped.stat("/events/exec") >= 1,
        "the helper's exec was processed"
    );
    assert!(
        stopped.stat("/output_errors") >= 1,
        "writes to a closed stdout are counted: {}",
        stopped.final_stats()
    );
}

#[test]
fn alerts_on_stdout_stream_while_events_do() {
    root_or_skip!("alerts_on_stdout_stream_while_events_do");
    // Alerts and raw events share stdout (`--json -` with `--events json`): an alert must come
    // out while the daemon runs, not only at shutdown.
    let dir = TempDir::new("stdout-alert");
    let exe = dir.copy_executable("/bin/true", "anydesk");
    let m = Monitor::start(&["--json", "-"]);
    run_bounded(&exe, &[nonce()]);
    let exe = exe.to_str().expect("utf-8 path").to_owned();
    let alert = m.wait_for("the anydesk alert on stdout", |e| {
        e["event"]["kind"] == "alert" && e["process"]["executable"] == exe.as_str()
    });
    assert_eq!(alert["rmm"]["tool"], "anydesk", "{alert}");
    let stopped = m.stop();
    assert_eq!(stopped.status.code(), Some(0));
}

#[test]
fn alert_and_event_lines_never_interleave_on_stdout() {
    root_or_skip!("alert_and_event_lines_never_interleave_on_stdout");
    // Hundreds of alerts (one per process: no de-duplication) written by the sink thread while
    // the processor writes thousands of event lines to the same stdout: every line must still
    // be whole JSON.
    let dir = TempDir::new("interleave");
    let exe = dir.copy_executable("/bin/true", "anydesk");
    let target = exe.to_str().expect("utf-8 path").to_owned();
    let m = Monitor::start(&["--json", "-"]);
    burst(&target, 400);
    let alerts = m.wait_for_n("400 anydesk alerts", 400, |e| {
        e["event"]["kind"] == "alert" && e["process"]["executable"] == target.as_str()
    });
    assert_eq!(alerts.len(), 400);
    let stopped = m.stop();
    stopped.assert_clean();
}

/// A processor that dies (an error returned, a panic) stops the daemon at once with a non-zero
/// status that says which part died: under the unit's `Restart=on-failure`, systemd restarts
/// it. The fault is injected by the debug build's `RMM_MONITOR_FAULT` on the exec of a file.
#[test]
fn a_processor_that_dies_stops_the_daemon_with_an_error() {
    root_or_skip!("a_processor_that_dies_stops_the_daemon_with_an_error");
    for (kind, cause) in [
        ("fail", "processor failed: injected fault"),
        ("panic", "processor thread panicked"),
    ] {
        let dir = TempDir::new(&format!("fault-{kind}"));
        let name = format!("fault-{kind}-{}", nonce());
        let exe = dir.copy_executable("/bin/true", &name);
        let fault = format!("{kind}:{name}");
        let m = Monitor::start_with_env(&[], None, &[("RMM_MONITOR_FAULT", &fault)]);
        let st = std::process::Command::new(&exe)
            .status()
            .unwrap_or_else(|e| panic!("running {}: {e}", exe.display()));
        assert!(st.success());
        let stopped = m.wait_exit(rmm_tests::monitor::event_timeout());
        let err = stopped.stderr.join("\n");
        assert!(
            !stopped.status.success(),
            "{kind}: the daemon exits with an error: {:?}; stderr:\n{err}",
            stopped.status
        );
        assert!(
            err.contains("the processor stopped while the daemon runs") && err.contains(cause),
            "{kind}: the daemon says which part died and why ({cause}); stderr:\n{err}"
        );
    }
}

/// A processor that hangs stops the watchdog keep-alives (systemd then kills and restarts the
/// daemon), and a stop asked of the daemon then is bounded and exits non-zero.
#[test]
fn a_hung_processor_withholds_the_watchdog_and_cannot_block_the_stop() {
    root_or_skip!("a_hung_processor_withholds_the_watchdog_and_cannot_block_the_stop");
    let dir = TempDir::new("fault-hang");
    let path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path)
        .unwrap_or_else(|e| panic!("binding {}: {e}", path.display()));
    sock.set_nonblocking(true).expect("non-blocking socket");
    let kicks = |sock: &std::os::unix::net::UnixDatagram| {
        let mut buf = [0u8; 4096];
        let mut n = 0;
        while let Ok(len) = sock.recv(&mut buf) {
            n += String::from_utf8_lossy(&buf[..len])
                .lines()
                .filter(|l| *l == "WATCHDOG=1")
                .count();
        }
        n
    };
    let name = format!("fault-hang-{}", nonce());
    let exe = dir.copy_executable("/bin/true", &name);
    let fault = format!("hang:{name}");
    // 200 ms: a keep-alive every 100 ms while the processor answers.
    let m = Monitor::start_with_env(
        &[],
        Some(&path),
        &[("WATCHDOG_USEC", "200000"), ("RMM_MONITOR_FAULT", &fault)],
    );
    std::thread::sleep(rmm_tests::monitor::scaled(Duration::from_secs(1)));
    let before = kicks(&sock);
    assert!(
        before >= 3,
        "keep-alives while the processor answers: {before} in a second"
    );
    let st = std::process::Command::new(&exe)
        .status()
        .unwrap_or_else(|e| panic!("running {}: {e}", exe.display()));
    assert!(st.success());
    m.wait_for_log("the processor not answering", |l| {
        l.starts_with("the processor has not answered for")
    });
    kicks(&sock);
    std::thread::sleep(rmm_tests::monitor::scaled(Duration::from_secs(1)));
    assert_eq!(kicks(&sock), 0, "no keep-alive once the processor hangs");
    let stopped = m.stop();
    let err = stopped.stderr.join("\n");
    assert!(
        !stopped.status.success(),
        "a stop with a hung processor exits with an error: {:?}; stderr:\n{err}",
        stopped.status
    );
    assert!(
        err.contains("did not stop within"),
        "the daemon says what it could not stop; stderr:\n{err}"
    );
}

/// A stop by anyone but the daemon's supervisor (PID 1, or the process that started it) is
/// an alert naming the sender, delivered before the daemon exits: here procps' `kill`, a second
/// process. A stop by the supervisor (this test process) is only logged.
#[test]
fn a_stop_by_another_process_is_an_alert_naming_it() {
    root_or_skip!("a_stop_by_another_process_is_an_alert_naming_it");
    let dir = TempDir::new("tamper");
    let alerts = dir.path().join("alerts.json");
    let alerts_arg = alerts.to_str().expect("a UTF-8 path").to_owned();
    let m = Monitor::start(&["--json", &alerts_arg]);
    let mut kill = std::process::Command::new("/bin/kill")
        .args(["-TERM", &m.pid().to_string()])
        .spawn()
        .expect("running /bin/kill");
    let killer = kill.id();
    assert!(kill.wait().expect("kill ran").success());
    let stopped = m.wait_exit(rmm_tests::monitor::stop_timeout());
    assert_eq!(stopped.status.code(), Some(0), "a clean stop");
    let log = stopped.stderr.join("\n");
    assert!(
        log.contains(&format!("SIGTERM from pid {killer} (")),
        "the log names the sender: {log}"
    );
    let tamper: Vec<Value> = std::fs::read_to_string(&alerts)
        .expect("the alert file")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .filter(|a: &Value| a["event"]["action"] == "tamper")
        .collect();
    assert_eq!(tamper.len(), 1, "one tamper alert: {tamper:?}");
    let a = &tamper[0];
    let kill_exe = std::fs::canonicalize("/bin/kill").expect("kill's path");
    assert_eq!(a["process"]["pid"], killer, "{a}");
    assert_eq!(
        a["process"]["executable"],
        kill_exe.to_str().unwrap(),
        "{a}"
    );
    assert_eq!(a["process"]["parent"]["pid"], std::process::id(), "{a}");
    assert_eq!(a["rmm"]["indicator"], "tamper", "{a}");
    assert_eq!(a["rmm"]["matched"], "SIGTERM", "{a}");
    assert_eq!(a["rule"]["id"], "rmm.monitor.tamper", "{a}");
    assert_eq!(a["threat"]["technique"]["id"], "T1562.001", "{a}");

    // The supervisor's stop: logged, no alert.
    let alerts2 = dir.path().join("alerts2.json");
    let m = Monitor::start(&["--json", alerts2.to_str().expect("a UTF-8 path")]);
    let stopped = m.stop();
    stopped.assert_clean();
    let log = stopped.stderr.join("\n");
    assert!(
        log.contains(&format!("SIGTERM from pid {} (", std::process::id())),
        "{log}"
    );
    let text = std::fs::read_to_string(&alerts2).unwrap_or_default();
    assert!(!text.contains("\"tamper\""), "no tamper alert: {text}");
}

const CAP_DAC_READ_SEARCH: u64 = 1 << 2;
const CAP_SYS_PTRACE: u64 = 1 << 19;
const CAP_BPF: u64 = 1 << 39;

/// Started as full root (a privileged container's position), the daemon keeps CAP_BPF and
/// CAP_SYS_PTRACE in its main thread, adds CAP_DAC_READ_SEARCH in the processor, nothing in
/// the sinks, and cannot gain more (bounding set, no_new_privs); and with that it still reads
/// another user's process from /proc at the start, alerts on an exec, reloads its rules and
/// reads its kernel counters at the stop.
#[test]
fn after_the_attach_every_thread_keeps_only_what_it_needs() {
    root_or_skip!("after_the_attach_every_thread_keeps_only_what_it_needs");
    let dir = TempDir::new("privs");
    let sleeper_exe = dir.copy_executable("/bin/sleep", "anydesk");
    // Not root's: its /proc/PID/exe needs CAP_SYS_PTRACE to read.
    let mut sleeper = rmm_tests::spawn_as_nobody(&sleeper_exe, &["60"]);
    let sleeper_pid = sleeper.id();

    let m = Monitor::start(&[]);
    let threads = rmm_tests::thread_caps(m.pid());
    let show = |t: &rmm_tests::ThreadCaps| {
        format!(
            "{} ({}): eff {:#x} prm {:#x} inh {:#x} amb {:#x} bnd {:#x} nnp {}",
            t.name, t.tid, t.eff, t.prm, t.inh, t.amb, t.bnd, t.no_new_privs
        )
    };
    let all: Vec<String> = threads.iter().map(show).collect();
    println!("{}", all.join("\n"));
    let runtime = CAP_BPF | CAP_SYS_PTRACE;
    let main = threads
        .iter()
        .find(|t| t.tid == m.pid())
        .expect("the main thread");
    assert_eq!((main.eff, main.prm), (runtime, runtime), "{}", show(main));
    let processor = threads
        .iter()
        .find(|t| t.name == "rmm-processor")
        .expect("the processor thread");
    let with_dac = runtime | CAP_DAC_READ_SEARCH;
    assert_eq!(
        (processor.eff, processor.prm),
        (with_dac, with_dac),
        "{}",
        show(processor)
    );
    let sinks: Vec<&rmm_tests::ThreadCaps> = threads
        .iter()
        .filter(|t| t.name.starts_with("rmm-sink"))
        .collect();
    assert!(!sinks.is_empty(), "no sink thread: {all:?}");
    for t in &threads {
        assert_eq!((t.inh, t.amb), (0, 0), "{}", show(t));
        assert!(t.no_new_privs, "{}", show(t));
        assert_eq!(t.bnd & !with_dac, 0, "bounding set: {}", show(t));
        assert_eq!(t.prm & !with_dac, 0, "{}", show(t));
    }
    for t in sinks {
        assert_eq!((t.eff, t.prm), (0, 0), "{}", show(t));
    }

    let inv = m.wait_for("the inventory alert of nobody's anydesk", |a| {
        a["event"]["action"] == "inventory" && a["process"]["pid"] == sleeper_pid
    });
    assert_eq!(
        inv["process"]["executable"],
        sleeper_exe.to_str().expect("a UTF-8 path"),
        "{inv}"
    );
    let exe = dir.copy_executable("/bin/true", "rustdesk");
    assert!(
        std::process::Command::new(&exe)
            .status()
            .expect("rustdesk")
            .success()
    );
    m.wait_for("the exec alert", |a| {
        a["event"]["action"] == "exec" && a["process"]["executable"] == exe.to_str().unwrap()
    });
    // SAFETY: kill(2) on the daemon this test started.
    assert_eq!(
        unsafe { libc::kill(m.pid() as libc::pid_t, libc::SIGHUP) },
        0
    );
    m.wait_for_log("the reload", |l| l.contains("SIGHUP: rules reloaded"));
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let stopped = m.stop();
    stopped.assert_clean();
    let log = stopped.stderr.join("\n");
    assert!(
        log.contains("privileges: attached, keeping CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE, CAP_BPF"),
        "{log}"
    );
    assert!(
        !log.contains("cannot drop") && !log.contains("threads holding"),
        "{log}"
    );
}
