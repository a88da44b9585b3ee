//! Bounded memory under abuse: a fork storm of 100,000 processes with 20,000 of them alive at
//! once. Every one is tracked (no cap refuses it), the table shrinks back once they exit, and
//! the daemon's peak RSS stays under [`RSS_BOUND_KB`].

use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use rmm_tests::{
    metrics::{labelled, scrape, value},
    monitor::{Monitor, scaled},
};

use crate::{free_port, helper_bin, root_or_skip};

const TOTAL: u64 = 100_000;
const HOLD: u64 = 20_000;

/// The daemon's peak RSS during the storm, at most. Measured on this machine kind (the test
/// prints it): 28 MB at rest, 20 MB more with 20,000 processes tracked (about 1 KB each: the
/// entry, its copy of its creator's image and arguments, the index maps), a peak of 53 MB
/// over the storm. The bound leaves room for allocator slack and a host with more processes
/// at rest; the table's cap (`MAX_PROCS`, 262,144 pids) bounds it at about 300 MB at worst.
const RSS_BOUND_KB: u64 = 120 * 1024;

/// `VmRSS` and `VmHWM` of `pid`, in KiB.
fn rss_kb(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Scrapes until `pred` holds of the table gauges (name -> value), driving the daemon with an
/// exec per try (the table retires exited processes as events arrive); fails after `timeout`.
fn wait_tables(
    port: u16,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&dyn Fn(&str) -> u64) -> bool,
) {
    let end = Instant::now() + timeout;
    loop {
        let m = scrape(port);
        let get = |t: &str| value(&m, &labelled("rmm_table_entries", "table", t)) as u64;
        if pred(&get) {
            return;
        }
        assert!(
            Instant::now() < end,
            "waited {timeout:?} for {what}: processes={} exited={} kept={}",
            get("processes"),
            get("exited"),
            get("kept")
        );
        let _ = Command::new("/bin/true").status();
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_fork_storm_is_tracked_in_bounded_memory() {
    root_or_skip!("a_fork_storm_is_tracked_in_bounded_memory");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let m = Monitor::start(&["--events", "none", "--metrics", &listen]);
    m.wait_for_log("with the metrics address", |l| {
        l == format!("metrics: http://{listen}/metrics")
    });
    let before = scrape(port);
    let base = value(
        &before,
        &labelled("rmm_table_entries", "table", "processes"),
    ) as u64;
    let (rss_rest, _) = rss_kb(m.pid());

    let mut storm = Command::new(helper_bin())
        .args(["fork-storm", &TOTAL.to_string(), &HOLD.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the fork storm");
    let mut stdin = storm.stdin.take().expect("stdin is piped");
    let stdout = storm.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let expect = |want: String| {
        let got = rx
            .recv_timeout(scaled(Duration::from_secs(300)))
            .unwrap_or_else(|e| panic!("the fork storm said nothing ({e}); waiting for {want}"));
        assert_eq!(got, want, "the fork storm's progress");
    };
    expect(format!("held={HOLD}"));
    expect(format!("stormed={}", TOTAL - HOLD));
    // Every held process is in the table (none refused by a cap).
    wait_tables(
        port,
        "the held processes in the table",
        scaled(Duration::from_secs(30)),
        |get| get("processes") >= base + HOLD,
    );
    let (rss_held, _) = rss_kb(m.pid());
    writeln!(stdin, "release").expect("releasing the held processes");
    expect(format!("released={HOLD}"));
    assert!(storm.wait().expect("the fork storm ran").success());
    // They exited: after the grace period the table is back to about where it was.
    wait_tables(
        port,
        "the table to shrink back",
        scaled(Duration::from_secs(30)),
        |get| get("processes") <= base + 200 && get("exited") <= 200,
    );
    let after = scrape(port);
    let (_, rss_peak) = rss_kb(m.pid());
    let stopped = m.stop();
    stopped.assert_clean_unprinted();

    let evicted = |what: &str| value(&after, &labelled("rmm_table_evictions_total", "what", what));
    for what in [
        "processes_refused",
        "exited_early",
        "kept_refused",
        "dedup_full",
    ] {
        assert_eq!(evicted(what), 0.0, "{what}: no cap was reached");
    }
    let forks = value(&after, &labelled("rmm_events_total", "kind", "fork"))
        - value(&before, &labelled("rmm_events_total", "kind", "fork"));
    assert!(
        forks >= TOTAL as f64,
        "every fork of the storm was seen: {forks} of {TOTAL}; final stats {}",
        stopped.final_stats()
    );
    let per_process = rss_held.saturating_sub(rss_rest) * 1024 / HOLD;
    eprintln!(
        "daemon RSS: {rss_rest} KiB at rest, {rss_held} KiB with {HOLD} more processes \
         (about {per_process} bytes each), peak {rss_peak} KiB over {TOTAL} forks"
    );
    assert!(
        rss_peak <= RSS_BOUND_KB,
        "peak RSS {rss_peak} KiB over the bound of {RSS_BOUND_KB} KiB (at rest {rss_rest} KiB, \
         with {HOLD} held {rss_held} KiB)"
    );
}
