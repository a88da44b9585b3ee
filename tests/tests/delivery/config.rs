//! The configuration file and SIGHUP: sinks chosen by the file alone, flags winning over it,
//! `config check` and `run --config` refusing bad or missing files with a location, and the JSON
//! file reopened on SIGHUP after a logrotate-style rename.

use rmm_tests::{Monitor, monitor_bin, nonce, run_bounded};

use crate::{
    Scratch, alerts_raised, assert_sink_perfect,
    delivery::{
        services::{Input, Rsyslog},
        syslog::{check_5424, msg_alert},
    },
    is_exec_of, json_lines, path_str, root_or_skip, signal, sink_names, sink_stats, two_ports,
    wait_alert,
};

#[test]
fn config_file_selects_the_sinks_and_flags_override_it() {
    root_or_skip!("config_file_selects_the_sinks_and_flags_override_it");
    let (u_file, u_flag) = two_ports();
    let rs = Rsyslog::start(
        &[Input::udp("file", u_file), Input::udp("flag", u_flag)],
        None,
    );
    let s = Scratch::new("config");
    let (from_file, from_flag) = (s.file("from-file.json"), s.file("from-flag.json"));
    let (url_file, url_flag) = (
        format!("udp://127.0.0.1:{u_file}"),
        format!("udp://127.0.0.1:{u_flag}"),
    );
    let cfg = s.file("rmm.toml");
    std::fs::write(
        &cfg,
        format!(
            "# sinks and rules from the file only\n[alerts]\njson = \"{}\"\nsyslog = [\"{url_file}\"]\n\
             syslog_facility = \"local5\"\n\n[rules]\ndir = \"{}\"\n\n[events]\nformat = \"none\"\n",
            path_str(&from_file),
            path_str(&s.rules_dir())
        ),
    )
    .expect("writing rmm.toml");

    // The file alone (the harness adds `--events json`, which must win over `format = "none"`).
    let m = Monitor::start(&["--config", path_str(&cfg)]);
    let daemon = m.pid();
    m.wait_for_log("naming the sinks of the file", |l| {
        l.ends_with(&format!(
            "; alerts: json:{}, syslog:{url_file}",
            path_str(&from_file)
        ))
    });
    let (exe, pid) = s.anydesk("file");
    m.wait_for("the exec event (the --events flag won)", |e| {
        e["event"] == "exec" && e["pid"] == pid
    });
    let a = wait_alert(&from_file, "from the file's sinks", |a| is_exec_of(a, &exe));
    let r = rs.wait("file", "carrying the alert", 1, |r| {
        msg_alert(r).as_ref() == Some(&a)
    });
    // local5 is facility 21.
    check_5424(&r[0], &a, daemon, 21);
    let stopped = m.stop();
    stopped.assert_clean();
    assert_eq!(
        sink_names(&stopped),
        vec![
            format!("json:{}", path_str(&from_file)),
            format!("syslog:{url_file}")
        ]
    );
    assert_sink_perfect(&stopped, &format!("json:{}", path_str(&from_file)));
    assert_sink_perfect(&stopped, &format!("syslog:{url_file}"));

    // Flags win over the file: --json, --syslog and --syslog-facility replace its values.
    let m = Monitor::start(&[
        "--config",
        path_str(&cfg),
        "--json",
        path_str(&from_flag),
        "--syslog",
        &url_flag,
        "--syslog-facility",
        "local6",
    ]);
    let daemon = m.pid();
    m.wait_for_log("naming the sinks of the flags", |l| {
        l.ends_with(&format!(
            "; alerts: json:{}, syslog:{url_flag}",
            path_str(&from_flag)
        ))
    });
    let (exe, _) = s.anydesk("flag");
    let a = wait_alert(&from_flag, "from the flags' sinks", |a| is_exec_of(a, &exe));
    let r = rs.wait("flag", "carrying the alert", 1, |r| {
        msg_alert(r).as_ref() == Some(&a)
    });
    // local6 is facility 22.
    check_5424(&r[0], &a, daemon, 22);
    let stopped = m.stop();
    stopped.assert_clean();
    assert_eq!(
        sink_names(&stopped),
        vec![
            format!("json:{}", path_str(&from_flag)),
            format!("syslog:{url_flag}")
        ]
    );
    assert_sink_perfect(&stopped, &format!("syslog:{url_flag}"));
    assert!(
        !json_lines(&from_file).iter().any(|x| is_exec_of(x, &exe)),
        "the file's JSON path was overridden"
    );
    assert!(
        rs.sent_by("file", daemon).is_empty(),
        "the file's syslog URL was overridden"
    );
}

#[test]
fn config_errors_are_reported_with_their_location() {
    // Neither command loads anything into the kernel: no root needed.
    let s = Scratch::new("config-check");
    let run = |args: &[&str]| run_bounded(&monitor_bin(), args);
    let good = s.file("good.toml");
    std::fs::write(
        &good,
        "[alerts]\njson = \"/var/log/rmm-monitor/alerts.json\"\nsyslog = [\"udp://127.0.0.1:514\"]\n\
         syslog_format = \"rfc3164\"\n\n[metrics]\nlisten = \"127.0.0.1:9464\"\n",
    )
    .expect("writing good.toml");
    let r = run(&["config", "check", path_str(&good)]);
    assert!(r.status.success(), "a good file passes: {r:?}");
    assert_eq!(r.stdout, format!("{}: ok\n", path_str(&good)));

    let cases = [
        (
            "unknown-key.toml",
            "[alerts]\njson = \"-\"\njournal = true\n",
            "3:1",
            "unknown field `journal`",
        ),
        (
            "nested.toml",
            "[metrics]\nlisten = \"127.0.0.1:9464\"\n\n[rings]\n  poll_msec = 5\n",
            "5:3",
            "unknown field `poll_msec`",
        ),
        (
            "table.toml",
            "[alert]\njson = \"-\"\n",
            "1:",
            "unknown field `alert`",
        ),
    ];
    for (name, text, at, what) in cases {
        let f = s.file(name);
        std::fs::write(&f, text).expect("writing a config");
        let located = format!("{}:{at}", path_str(&f));
        for args in [
            vec!["config", "check", path_str(&f)],
            vec!["run", "--config", path_str(&f)],
        ] {
            let r = run(&args);
            assert_eq!(r.status.code(), Some(1), "{args:?} exits 1: {r:?}");
            assert!(
                r.stderr.contains(&located) && r.stderr.contains(what),
                "{args:?}: the error is located at {located} and says {what:?}; stderr:\n{}",
                r.stderr
            );
            assert!(
                !r.stderr.contains("] ready"),
                "{args:?} never starts: {r:?}"
            );
        }
    }

    // A value that parses but is not valid: the syslog URL has no port.
    let f = s.file("bad-url.toml");
    std::fs::write(&f, "[alerts]\nsyslog = [\"udp://loghost\"]\n").expect("writing bad-url.toml");
    let r = run(&["config", "check", path_str(&f)]);
    assert_eq!(r.status.code(), Some(1), "{r:?}");
    assert!(
        r.stderr.contains("udp://loghost"),
        "names the URL: {}",
        r.stderr
    );

    // A configuration named explicitly must exist.
    let missing = format!("/nonexistent/rmm-monitor-{}.toml", nonce());
    let r = run(&["run", "--config", &missing]);
    assert_eq!(
        r.status.code(),
        Some(1),
        "run --config MISSING exits 1: {r:?}"
    );
    assert!(
        r.stderr
            .contains(&format!("reading configuration {missing}"))
            && r.stderr.contains("No such file"),
        "a clear error: {}",
        r.stderr
    );
    assert!(!r.stderr.contains("] ready"), "never starts: {r:?}");
}

#[test]
fn sighup_reopens_the_json_file_after_rotation() {
    root_or_skip!("sighup_reopens_the_json_file_after_rotation");
    let s = Scratch::new("reopen");
    let json = s.file("alerts.json");
    let rotated = s.file("alerts.json.1");
    let m = s.start(&["--json", path_str(&json)]);
    let (before, _) = s.anydesk("before");
    wait_alert(&json, "before the rotation", |a| is_exec_of(a, &before));
    // logrotate without copytruncate: rename, then signal.
    std::fs::rename(&json, &rotated).expect("renaming the alert file");
    signal(&m, libc::SIGHUP);
    m.wait_for_log("handling SIGHUP", |l| {
        l.starts_with("SIGHUP: rules reloaded")
    });
    let (after, _) = s.anydesk("after");
    wait_alert(&json, "after the rotation, in a new file", |a| {
        is_exec_of(a, &after)
    });
    let stopped = m.stop();
    stopped.assert_clean();
    let (old, new) = (json_lines(&rotated), json_lines(&json));
    assert!(
        old.iter().any(|a| is_exec_of(a, &before)),
        "the rotated file keeps the old alert"
    );
    assert!(
        !old.iter().any(|a| is_exec_of(a, &after)),
        "nothing new in the rotated file"
    );
    assert!(
        !new.iter().any(|a| is_exec_of(a, &before)),
        "the new file starts afresh"
    );
    assert_eq!(
        (old.len() + new.len()) as u64,
        alerts_raised(&stopped),
        "every alert in one of the two files"
    );
    let sink = format!("json:{}", path_str(&json));
    assert_sink_perfect(&stopped, &sink);
    assert!(
        sink_stats(&stopped, &sink)["reconnects"] >= 1,
        "the reopen is counted"
    );
}
