//! journald: alerts sent with `--journald`, and by default when journald listens, read back with
//! `journalctl -o json` by their fields: one entry per alert, a one-line MESSAGE, PRIORITY from
//! the severity, a MESSAGE_ID per kind of alert, the alert's fields upper-cased and the whole
//! alert in RMM_ALERT_JSON.

use rmm_tests::{Value, nonce};

use crate::{
    DELIVERY_TIMEOUT, Scratch, alerts_raised, assert_sink_perfect, connect_teamviewer,
    delivery::services::{Journald, journal},
    is_connect_of, is_exec_of, own_exe, path_str, poll, root_or_skip, sink_names, wait_alert,
};

/// The catalog ids of the journal entries (`journalctl MESSAGE_ID=...`): they must never change,
/// since operators filter on them.
const EXEC_MESSAGE_ID: &str = "5c4b1ab0a3d94e5b9a6f2f8d1e7c3a01";
const CONNECT_MESSAGE_ID: &str = "5c4b1ab0a3d94e5b9a6f2f8d1e7c3a02";

/// syslog priority of an alert severity (critical 2, high 3, medium 4, low 5).
fn priority_of(severity: &str) -> &'static str {
    match severity {
        "critical" => "2",
        "high" => "3",
        "medium" => "4",
        "low" => "5",
        other => panic!("unknown severity {other:?}"),
    }
}

fn field<'a>(e: &'a Value, k: &str) -> &'a str {
    e[k].as_str()
        .unwrap_or_else(|| panic!("journal entry has no text field {k}: {e}"))
}

/// Waits until the journal has entries matching `matches`; returns them.
fn wait_entries(what: &str, matches: &[String]) -> Vec<Value> {
    poll(
        &format!("journal entries {what} ({matches:?})"),
        DELIVERY_TIMEOUT,
        || {
            let e = journal(matches);
            (!e.is_empty()).then_some(e)
        },
        || {
            let recent: Vec<String> = journal(&["SYSLOG_IDENTIFIER=rmm-monitor".to_owned()])
                .iter()
                .rev()
                .take(5)
                .map(|e| e["MESSAGE"].to_string())
                .collect();
            format!("the last rmm-monitor entries:\n{}", recent.join("\n"))
        },
    )
}

/// One journal entry against the alert it stands for.
fn check_entry(e: &Value, alert: &Value, daemon: u32) {
    let a = alert;
    let message = field(e, "MESSAGE");
    assert!(
        !message.is_empty() && !message.contains('\n'),
        "MESSAGE is one line: {message:?}"
    );
    assert_eq!(field(e, "SYSLOG_IDENTIFIER"), "rmm-monitor", "{e}");
    assert_eq!(
        field(e, "_PID"),
        daemon.to_string(),
        "sent by the daemon: {e}"
    );
    assert_eq!(field(e, "_TRANSPORT"), "journal", "native protocol: {e}");
    let severity = a["rmm"]["severity"].as_str().expect("rmm.severity");
    assert_eq!(
        field(e, "PRIORITY"),
        priority_of(severity),
        "PRIORITY of a {severity} alert: {e}"
    );
    let action = a["event"]["action"].as_str().expect("event.action");
    let id = match action {
        "exec" => EXEC_MESSAGE_ID,
        "connect" => CONNECT_MESSAGE_ID,
        other => panic!("unexpected action {other}"),
    };
    assert_eq!(
        field(e, "MESSAGE_ID"),
        id,
        "MESSAGE_ID of an {action} alert: {e}"
    );
    for (k, v) in [
        ("RMM_TOOL", &a["rmm"]["tool"]),
        ("RMM_INDICATOR", &a["rmm"]["indicator"]),
        ("RMM_MATCHED", &a["rmm"]["matched"]),
        ("RMM_SEVERITY", &a["rmm"]["severity"]),
        ("RULE_ID", &a["rule"]["id"]),
        ("EVENT_ACTION", &a["event"]["action"]),
        ("PROCESS_EXECUTABLE", &a["process"]["executable"]),
        ("ALERT_TIMESTAMP", &a["@timestamp"]),
        ("THREAT_TECHNIQUE_ID", &a["threat"]["technique"]["id"]),
    ] {
        assert_eq!(field(e, k), v.as_str().expect("a text field"), "{k}: {e}");
    }
    assert_eq!(
        field(e, "PROCESS_PID"),
        a["process"]["pid"].to_string(),
        "PROCESS_PID: {e}"
    );
    let context: Vec<&str> = a["rmm"]["context"]
        .as_array()
        .expect("rmm.context")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        field(e, "RMM_CONTEXT"),
        context.join(" "),
        "RMM_CONTEXT: {e}"
    );
    if action == "connect" {
        assert_eq!(
            field(e, "DESTINATION_IP"),
            a["destination"]["ip"].as_str().expect("destination.ip"),
            "{e}"
        );
        assert_eq!(
            field(e, "DESTINATION_PORT"),
            a["destination"]["port"].to_string(),
            "{e}"
        );
    } else {
        assert!(
            e["DESTINATION_IP"].is_null(),
            "no DESTINATION_IP on an {action} alert: {e}"
        );
    }
    let embedded: Value = serde_json::from_str(field(e, "RMM_ALERT_JSON"))
        .unwrap_or_else(|err| panic!("RMM_ALERT_JSON is not JSON ({err}): {e}"));
    assert_eq!(&embedded, a, "RMM_ALERT_JSON is the alert");
    let tool_name = a["rmm"]["tool_name"].as_str().expect("rmm.tool_name");
    let verb = if action == "exec" {
        "executed"
    } else {
        "connection"
    };
    let lead = format!(
        "{tool_name} ({severity}) {verb} by {} pid {}",
        a["process"]["executable"]
            .as_str()
            .expect("process.executable"),
        a["process"]["pid"]
    );
    assert!(
        message.starts_with(&lead),
        "MESSAGE names tool, severity, action and process: {message:?} (want {lead:?}...)"
    );
    let tail = format!(
        ": {} {}",
        a["rmm"]["indicator"].as_str().expect("rmm.indicator"),
        a["rmm"]["matched"].as_str().expect("rmm.matched")
    );
    assert!(
        message.contains(&tail),
        "MESSAGE names the match {tail:?}: {message:?}"
    );
}

#[test]
fn journald_sink_writes_one_structured_entry_per_alert() {
    root_or_skip!("journald_sink_writes_one_structured_entry_per_alert");
    let _journald = Journald::ensure();
    let s = Scratch::new("journald");
    // A tool of severity low: run from /tmp, unpackaged, it is raised twice to high (PRIORITY 3),
    // next to anydesk raised to critical (PRIORITY 2).
    let low_name = format!("dlv-low-{}", nonce());
    std::fs::write(
        s.rules_dir().join("low.toml"),
        format!(
            "[[tool]]\nid = \"delivery-low\"\nname = \"Delivery test tool\"\nseverity = \"low\"\n\
             technique = \"T1219\"\nreferences = [\"https://example.invalid/rmm-delivery\"]\n\
             process_names = [\"{low_name}\"]\n"
        ),
    )
    .expect("writing low.toml");
    let json = s.file("alerts.json");
    let m = s.start(&["--journald", "--json", path_str(&json)]);
    let daemon = m.pid();
    let (ad, _) = s.anydesk("a");
    let (low, _) = s.run_copy("/bin/true", "low", &low_name);
    let me = connect_teamviewer();

    let a_ad = wait_alert(&json, "for anydesk", |a| is_exec_of(a, &ad));
    let a_low = wait_alert(&json, "for the low tool", |a| is_exec_of(a, &low));
    let a_conn = wait_alert(&json, "for the connect", |a| is_connect_of(a, me));
    assert_eq!(a_ad["rmm"]["severity"], "critical", "{a_ad}");
    assert_eq!(a_low["rmm"]["severity"], "high", "{a_low}");

    let q_ad = vec![
        "RMM_TOOL=anydesk".to_owned(),
        format!("PROCESS_EXECUTABLE={}", path_str(&ad)),
    ];
    let q_low = vec![
        "RMM_TOOL=delivery-low".to_owned(),
        format!("PROCESS_EXECUTABLE={}", path_str(&low)),
    ];
    let q_conn = vec![
        "RMM_TOOL=teamviewer".to_owned(),
        format!("PROCESS_PID={me}"),
        format!("_PID={daemon}"),
    ];
    wait_entries("for anydesk", &q_ad);
    wait_entries("for the low tool", &q_low);
    wait_entries("for the connect", &q_conn);

    let stopped = m.stop();
    stopped.assert_clean();
    // After the daemon drained and exited: still exactly one entry per alert.
    for (q, alert) in [(&q_ad, &a_ad), (&q_low, &a_low), (&q_conn, &a_conn)] {
        let entries = journal(q);
        assert_eq!(entries.len(), 1, "one journal entry for {q:?}: {entries:?}");
        check_entry(&entries[0], alert, daemon);
    }
    let e_ad = &journal(&q_ad)[0];
    assert_eq!(field(e_ad, "PRIORITY"), "2", "critical is PRIORITY 2");
    assert_eq!(
        field(&journal(&q_low)[0], "PRIORITY"),
        "3",
        "high is PRIORITY 3"
    );
    assert_eq!(
        field(e_ad, "MESSAGE_ID"),
        field(&journal(&q_low)[0], "MESSAGE_ID"),
        "exec alerts of different tools share a MESSAGE_ID"
    );
    assert_ne!(
        field(e_ad, "MESSAGE_ID"),
        field(&journal(&q_conn)[0], "MESSAGE_ID"),
        "exec and connect alerts have different MESSAGE_IDs"
    );
    let conn = &journal(&q_conn)[0];
    assert_eq!(field(conn, "DESTINATION_IP"), "127.0.0.1", "{conn}");
    assert_eq!(field(conn, "DESTINATION_PORT"), "5938", "{conn}");
    assert_eq!(field(conn, "PROCESS_EXECUTABLE"), own_exe(), "{conn}");
    assert_eq!(field(conn, "RMM_INDICATOR"), "port", "{conn}");
    assert_eq!(field(e_ad, "RMM_INDICATOR"), "binary", "{e_ad}");
    assert_sink_perfect(&stopped, "journald");
    assert_sink_perfect(&stopped, &format!("json:{}", path_str(&json)));
    assert!(alerts_raised(&stopped) >= 3);
}

#[test]
fn journald_is_the_default_sink_when_it_listens() {
    root_or_skip!("journald_is_the_default_sink_when_it_listens");
    let _journald = Journald::ensure();
    let s = Scratch::new("jdefault");
    let m = s.start(&[]);
    m.wait_for_log("saying journald was chosen", |l| {
        l.contains("no alert sink named") && l.contains("journald is running")
    });
    m.wait_for_log("naming journald as the only sink", |l| {
        l.starts_with("rules: ") && l.ends_with("; alerts: journald")
    });
    let daemon = m.pid();
    let (ad, pid) = s.anydesk("d");
    let q = vec![
        "RMM_TOOL=anydesk".to_owned(),
        format!("PROCESS_EXECUTABLE={}", path_str(&ad)),
        format!("_PID={daemon}"),
    ];
    wait_entries("for anydesk", &q);
    let stopped = m.stop();
    stopped.assert_clean();
    let entries = journal(&q);
    assert_eq!(entries.len(), 1, "one journal entry: {entries:?}");
    let alert: Value =
        serde_json::from_str(field(&entries[0], "RMM_ALERT_JSON")).expect("RMM_ALERT_JSON is JSON");
    assert!(is_exec_of(&alert, &ad), "{alert}");
    assert_eq!(alert["process"]["pid"], pid, "{alert}");
    check_entry(&entries[0], &alert, daemon);
    assert_eq!(sink_names(&stopped), vec!["journald"], "the only sink");
    assert_sink_perfect(&stopped, "journald");
    // Alerts went to journald only, not to stdout next to the events.
    let on_stdout: Vec<&Value> = stopped
        .events
        .iter()
        .filter(|v| v["event"]["kind"] == "alert")
        .collect();
    assert!(on_stdout.is_empty(), "alerts on stdout: {on_stdout:?}");
}
