//! Overload far above capacity: one-page rings, and exec, connect and DNS storms from both
//! CPUs at once while the ring readers are held (the debug build's injected `hold` fault), so
//! that every ring overflows for certain. What was issued and not seen equals the kernel's
//! drop counters, which equal what the final stats, the metrics endpoint and the loss records
//! in the alert file report: exactly, reason by reason.

use std::{collections::BTreeMap, path::Path};

use rmm_tests::{
    TempDir,
    metrics::{labelled, scrape, value},
    monitor::Monitor,
    nonce, num,
};

use crate::{
    free_port, helper, helper_bin, hold_fault, hold_readers, loss_records, root_or_skip,
    wait_holds_over,
};

const N_EXEC: u64 = 400;
const N_CONNECT: u64 = 3000;
const N_DNS: u64 = 3000;

#[test]
fn an_overload_from_both_cpus_is_accounted_exactly() {
    root_or_skip!("an_overload_from_both_cpus_is_accounted_exactly");
    let dir = TempDir::new("overload");
    let alerts = dir.path().join("alerts.json");
    let target = dir.copy_executable("/usr/bin/true", &format!("storm-{}", nonce()));
    let target = target.to_str().expect("UTF-8").to_owned();
    let (hold, fault) = hold_fault(&dir);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let m = Monitor::start_with_env(
        &[
            "--json",
            alerts.to_str().expect("a UTF-8 path"),
            "--metrics",
            &listen,
            "--proc-ring-bytes",
            "4096",
            "--net-ring-bytes",
            "4096",
            "--stats-interval",
            "1",
        ],
        None,
        &[("RMM_MONITOR_FAULT", &fault)],
    );
    m.wait_for_log("with the metrics address", |l| {
        l == format!("metrics: http://{listen}/metrics")
    });
    hold_readers(&m, &hold);

    // The storms, at once: execs pinned to one CPU, connects and DNS queries to the other.
    let name = format!("storm-{}.rmm-e2e.test", nonce());
    let target_name = Path::new(&target)
        .file_name()
        .and_then(|f| f.to_str())
        .expect("name")
        .to_owned();
    let (execs, connects, dns) = std::thread::scope(|s| {
        let execs = s.spawn(|| {
            helper(&[
                "on-cpu",
                "0",
                "burst",
                &N_EXEC.to_string(),
                &target,
                &target_name,
            ])
        });
        let connects = s.spawn(|| {
            helper(&[
                "on-cpu",
                "1",
                "connect-burst",
                "127.0.0.1",
                "9",
                &N_CONNECT.to_string(),
            ])
        });
        let dns = s.spawn(|| {
            helper(&[
                "on-cpu",
                "1",
                "dns-burst",
                "127.0.0.1",
                &name,
                &N_DNS.to_string(),
            ])
        });
        (
            execs.join().expect("the exec storm"),
            connects.join().expect("the connect storm"),
            dns.join().expect("the DNS storm"),
        )
    });
    execs.assert_success();
    assert_eq!(
        (execs.num::<u64>("issued"), execs.num::<u64>("failed")),
        (N_EXEC, 0),
        "{execs:?}"
    );
    assert_eq!(connects.assert_success().num::<u64>("connected"), N_CONNECT);
    assert_eq!(dns.assert_success().num::<u64>("sent"), N_DNS);
    wait_holds_over(&m);
    // The rings are read again; the loss is reported within a stats interval.
    m.wait_for_log("reporting the drops", |l| {
        l.contains("kernel dropped events") && l.contains("dns_ringbuf_full=")
    });
    std::thread::sleep(rmm_tests::monitor::scaled(std::time::Duration::from_secs(
        2,
    )));
    let metrics = scrape(port);
    let stopped = m.stop();
    stopped.assert_clean();

    // Kernel counters (final stats) = metrics = loss records, reason by reason.
    let finals = stopped.final_stats();
    let drops: BTreeMap<String, u64> = finals["kernel_drops"]
        .as_object()
        .expect("kernel_drops")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().expect("a count")))
        .collect();
    let records = loss_records(&alerts);
    for (reason, total) in &drops {
        let scraped = value(
            &metrics,
            &labelled("rmm_events_lost_total", "reason", reason),
        ) as u64;
        assert_eq!(
            scraped, *total,
            "{reason}: the metrics endpoint against the final stats"
        );
        let reported: u64 = records
            .iter()
            .filter(|r| r["rmm"]["loss"]["reason"] == reason.as_str())
            .map(|r| num(&r["rmm"]["loss"], "count"))
            .sum();
        assert_eq!(
            reported, *total,
            "{reason}: the loss records against the final stats: {records:?}"
        );
    }

    // Issued - seen = dropped, per kind. The execs issued are the storm's and those of the
    // three helpers (each an exec of the helper binary).
    let helpers = [execs.pid, connects.pid, dns.pid].map(u64::from);
    let helper_path = helper_bin().to_str().expect("UTF-8");
    let seen_exec = stopped
        .of_kind("exec")
        .filter(|e| {
            e["filename"] == target.as_str()
                || (e["filename"] == helper_path && helpers.contains(&num(e, "pid")))
        })
        .count() as u64;
    let seen_connect = stopped
        .of_kind("connect")
        .filter(|e| num(e, "pid") == u64::from(connects.pid))
        .count() as u64;
    let seen_dns = stopped
        .of_kind("dns")
        .filter(|e| e["qname"] == name.as_str())
        .count() as u64;
    let d = |r: &str| drops.get(r).copied().unwrap_or(0);
    for (what, issued, seen, dropped) in [
        ("exec", N_EXEC + 3, seen_exec, d("exec_ringbuf_full")),
        (
            "connect",
            N_CONNECT,
            seen_connect,
            d("connect_ringbuf_full") + d("connect_pending_map_full"),
        ),
        ("dns", N_DNS, seen_dns, d("dns_ringbuf_full")),
    ] {
        eprintln!("{what}: issued {issued}, seen {seen}, dropped {dropped}");
        assert!(dropped > 0, "{what}: the overload dropped some: {finals}");
        assert_eq!(
            issued - seen,
            dropped,
            "{what}: {issued} issued, {seen} seen: the rest is what the kernel counted \
             (final stats {finals})"
        );
    }
}
