//! The Prometheus endpoint (`--metrics`): scraped over real HTTP while the test makes alerts
//! and reloads, the counters follow what happened; other paths are 404; a taken port or a bad
//! address stops the daemon at start-up with a clear error.

use std::net::{Ipv4Addr, TcpListener};

use rmm_tests::{
    metrics::{get, scrape, value},
    monitor_bin, run_bounded,
};

use crate::{
    DELIVERY_TIMEOUT, Scratch, alerts_raised, assert_sink_perfect, free_port, is_exec_of,
    json_lines, path_str, poll, root_or_skip, signal, sink_stats, wait_alert,
};

#[test]
fn metrics_endpoint_counts_what_happened() {
    root_or_skip!("metrics_endpoint_counts_what_happened");
    let s = Scratch::new("metrics");
    let json = s.file("alerts.json");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let m = s.start(&["--json", path_str(&json), "--metrics", &listen]);
    m.wait_for_log("with the metrics address", |l| {
        l == format!("metrics: http://{listen}/metrics")
    });
    let sink = format!("json:{}", path_str(&json));
    let label = |name: &str, l: &str, v: &str| format!("{name}{{{l}=\"{v}\"}}");

    let first = scrape(port);
    let exec0 = value(&first, &label("rmm_events_total", "kind", "exec"));
    for kind in ["fork", "exit", "connect", "dns"] {
        value(&first, &label("rmm_events_total", "kind", kind));
    }
    assert!(
        first
            .keys()
            .any(|k| k.starts_with("rmm_events_lost_total{reason=")),
        "rmm_events_lost_total per reason: {first:?}"
    );
    for result in ["parsed", "malformed", "rejected"] {
        value(&first, &label("rmm_dns_answers_total", "result", result));
    }
    assert_eq!(
        value(&first, &label("rmm_rule_reloads_total", "result", "ok")),
        0.0
    );
    assert_eq!(
        value(&first, &label("rmm_rule_reloads_total", "result", "failed")),
        0.0
    );
    assert_eq!(
        value(&first, &label("rmm_sink_dropped_total", "sink", &sink)),
        0.0
    );
    assert_eq!(
        value(&first, &label("rmm_sink_errors_total", "sink", &sink)),
        0.0
    );

    let (one, _) = s.anydesk("one");
    let (two, _) = s.anydesk("two");
    wait_alert(&json, "one", |a| is_exec_of(a, &one));
    wait_alert(&json, "two", |a| is_exec_of(a, &two));
    let in_file = json_lines(&json).len() as f64;
    let alerts_key = label("rmm_alerts_total", "tool", "anydesk");
    let delivered_key = label("rmm_sink_delivered_total", "sink", &sink);
    let after = poll(
        "metrics counting both alerts",
        DELIVERY_TIMEOUT,
        || {
            let m = scrape(port);
            (m.get(&alerts_key).copied().unwrap_or(0.0) >= 2.0
                && m.get(&delivered_key).copied().unwrap_or(0.0) >= in_file)
                .then_some(m)
        },
        || format!("{:?}", scrape(port)),
    );
    assert!(
        value(&after, &label("rmm_events_total", "kind", "exec")) >= exec0 + 2.0,
        "both execs counted: {exec0} then {after:?}"
    );
    assert_eq!(
        value(&after, &label("rmm_sink_errors_total", "sink", &sink)),
        0.0
    );
    assert!(
        value(&after, "rmm_processes") > 0.0,
        "rmm_processes: {after:?}"
    );

    // A good reload, then a broken rules file: each counted by result.
    signal(&m, libc::SIGHUP);
    let reload_ok = label("rmm_rule_reloads_total", "result", "ok");
    let reload_failed = label("rmm_rule_reloads_total", "result", "failed");
    poll(
        "a successful reload counted",
        DELIVERY_TIMEOUT,
        || (scrape(port).get(&reload_ok) == Some(&1.0)).then_some(()),
        || format!("{:?}", scrape(port)),
    );
    let broken = s.rules_dir().join("broken.toml");
    std::fs::write(&broken, "[[tool]]\nid = \n").expect("writing broken.toml");
    signal(&m, libc::SIGHUP);
    let after_reloads = poll(
        "a failed reload counted",
        DELIVERY_TIMEOUT,
        || {
            let m = scrape(port);
            (m.get(&reload_failed) == Some(&1.0)).then_some(m)
        },
        || format!("{:?}", scrape(port)),
    );
    assert_eq!(value(&after_reloads, &reload_ok), 1.0, "{after_reloads:?}");
    std::fs::remove_file(&broken).expect("removing broken.toml");

    for path in ["/", "/metricsx", "/nope", "/metrics/extra"] {
        let (status, head, _) = get(port, path);
        assert_eq!(status, 404, "GET {path}: {head}");
    }

    let last = scrape(port);
    let stopped = m.stop();
    stopped.assert_clean();
    assert_sink_perfect(&stopped, &sink);
    let delivered = sink_stats(&stopped, &sink)["delivered"] as f64;
    assert!(
        delivered >= value(&last, &delivered_key),
        "final delivered {delivered} >= last scraped {last:?}"
    );
    assert!(alerts_raised(&stopped) as f64 >= value(&last, &alerts_key));
}

#[test]
fn metrics_show_the_process_table_as_soon_as_ready() {
    root_or_skip!("metrics_show_the_process_table_as_soon_as_ready");
    let s = Scratch::new("metrics-ready");
    let json = s.file("alerts.json");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let m = s.start(&["--json", path_str(&json), "--metrics", &listen]);
    let ready = m.wait_for_log("ready", |l| l.starts_with("ready: "));
    let seeded: u64 = ready
        .split(" processes from /proc")
        .next()
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no process count in {ready:?}"));
    assert!(seeded > 0, "{ready}");
    // The table was seeded from /proc before `ready`: the gauge must say so at once, not only
    // after the first batch of events.
    let first = scrape(port);
    let _ = m.stop();
    assert!(
        value(&first, "rmm_processes") > 0.0,
        "rmm_processes right after `ready` ({seeded} processes read from /proc): {first:?}"
    );
}

#[test]
fn metrics_on_a_taken_port_or_a_bad_address_is_a_start_up_error() {
    root_or_skip!("metrics_on_a_taken_port_or_a_bad_address_is_a_start_up_error");
    let s = Scratch::new("metrics-taken");
    let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding a port");
    let addr = taken.local_addr().expect("local address").to_string();
    let (config, rules, json) = (s.file("config.toml"), s.rules_dir(), s.file("alerts.json"));
    for (listen, want) in [
        (
            addr.as_str(),
            vec![
                format!("binding the metrics endpoint {addr}"),
                "in use".to_owned(),
            ],
        ),
        ("localhost-9464", vec!["is not ADDRESS:PORT".to_owned()]),
    ] {
        let run = run_bounded(
            &monitor_bin(),
            &[
                "run",
                "--config",
                path_str(&config),
                "--rules-dir",
                path_str(&rules),
                "--json",
                path_str(&json),
                "--metrics",
                listen,
            ],
        );
        assert!(
            !run.status.success() && run.status.code().is_some(),
            "--metrics {listen}: a non-zero exit, not {}; stderr:\n{}",
            run.status,
            run.stderr
        );
        for w in &want {
            assert!(
                run.stderr.contains(w.as_str()),
                "--metrics {listen}: the error names the problem ({w:?}); stderr:\n{}",
                run.stderr
            );
        }
        assert!(
            !run.stderr.contains("] ready"),
            "--metrics {listen}: never ready; stderr:\n{}",
            run.stderr
        );
    }
    drop(taken);
}
