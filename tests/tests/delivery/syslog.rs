//! syslog to a real rsyslogd: RFC 5424 over UDP and TCP (octet counting), RFC 3164, and TLS
//! (RFC 5425) against rsyslog's gtls driver with the right CA, an unrelated CA and a name the
//! certificate does not cover. rsyslog parses what arrives; the tests check its parse (app-name,
//! procid, msgid, structured data, facility and severity) and that the message is the alert.

use std::collections::BTreeMap;

use rmm_tests::Value;

use crate::{
    Scratch, alerts_raised, assert_sink_perfect, connect_teamviewer,
    delivery::services::{Input, Pki, Rsyslog},
    free_port, is_connect_of, is_exec_of, path_str, poll, root_or_skip, sink_stats, two_ports,
    wait_alert,
};

const SD_ID: &str = "rmm@32473";
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// The alert a syslog message carries as its MSG, when it parses.
pub fn msg_alert(r: &Value) -> Option<Value> {
    serde_json::from_str(r["msg"].as_str()?.trim_start()).ok()
}

/// RFC 5424 severity of an alert severity.
fn severity_code(s: &str) -> u32 {
    match s {
        "critical" => 2,
        "high" => 3,
        "medium" => 4,
        "low" => 5,
        other => panic!("unknown severity {other:?}"),
    }
}

fn text<'a>(r: &'a Value, k: &str) -> &'a str {
    r[k].as_str()
        .unwrap_or_else(|| panic!("syslog record has no {k}: {r}"))
}

/// Parses one RFC 5424 SD-ELEMENT `[ID NAME="VALUE" ...]`, undoing the `\"`, `\\` and `\]`
/// escapes; fails the test on anything else.
fn parse_sd(sd: &str) -> (String, BTreeMap<String, String>) {
    let bad = |why: &str| -> ! { panic!("structured data {sd:?}: {why}") };
    let mut chars = sd.chars().peekable();
    if chars.next() != Some('[') {
        bad("does not start with [");
    }
    let mut id = String::new();
    while let Some(&c) = chars.peek() {
        if c == ' ' || c == ']' {
            break;
        }
        id.push(c);
        chars.next();
    }
    let mut params = BTreeMap::new();
    loop {
        match chars.next() {
            Some(']') => break,
            Some(' ') => {}
            _ => bad("expected a space or ]"),
        }
        let mut name = String::new();
        loop {
            match chars.next() {
                Some('=') => break,
                Some(c) if c != ' ' && c != ']' && c != '"' => name.push(c),
                _ => bad("bad PARAM-NAME"),
            }
        }
        if chars.next() != Some('"') {
            bad("PARAM-VALUE does not start with a quote");
        }
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('\\') => match chars.next() {
                    Some(c @ ('"' | '\\' | ']')) => value.push(c),
                    Some(c) => {
                        value.push('\\');
                        value.push(c);
                    }
                    None => bad("ends in an escape"),
                },
                Some('"') => break,
                Some(']') => bad("unescaped ] in a PARAM-VALUE"),
                Some(c) => value.push(c),
                None => bad("unterminated PARAM-VALUE"),
            }
        }
        if params.insert(name.clone(), value).is_some() {
            bad(&format!("{name} appears twice"));
        }
    }
    if chars.next().is_some() {
        bad("more than one SD-ELEMENT");
    }
    (id, params)
}

/// What the `rmm@32473` element must say about `alert`.
fn expected_sd(a: &Value) -> BTreeMap<String, String> {
    let s = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    let mut m = BTreeMap::new();
    for (k, v) in [
        ("tool", &a["rmm"]["tool"]),
        ("indicator", &a["rmm"]["indicator"]),
        ("matched", &a["rmm"]["matched"]),
        ("action", &a["event"]["action"]),
        ("severity", &a["rmm"]["severity"]),
        ("rule", &a["rule"]["id"]),
        ("technique", &a["threat"]["technique"]["id"]),
        ("pid", &a["process"]["pid"]),
        ("exe", &a["process"]["executable"]),
    ] {
        m.insert(k.to_owned(), s(v));
    }
    if !a["destination"].is_null() {
        m.insert("dst_ip".into(), s(&a["destination"]["ip"]));
        m.insert("dst_port".into(), s(&a["destination"]["port"]));
    }
    m
}

/// RFC 5424 TIMESTAMP of an alert's `@timestamp`: microseconds at most.
fn timestamp_5424(ts: &str) -> String {
    let (secs, frac) = ts.split_once('.').expect("@timestamp has a fraction");
    let digits: String = frac
        .chars()
        .take_while(char::is_ascii_digit)
        .take(6)
        .collect();
    format!("{secs}.{digits}Z")
}

/// A message rsyslog parsed as RFC 5424, against the alert it carries.
pub fn check_5424(r: &Value, a: &Value, daemon: u32, facility: u32) {
    let sev = severity_code(a["rmm"]["severity"].as_str().expect("rmm.severity"));
    let pri = facility * 8 + sev;
    let action = a["event"]["action"].as_str().expect("event.action");
    let host = a["host"]["hostname"].as_str().expect("host.hostname");
    assert_eq!(text(r, "protocol_version"), "1", "parsed as RFC 5424: {r}");
    assert_eq!(text(r, "pri"), pri.to_string(), "PRI: {r}");
    assert_eq!(text(r, "facility"), facility.to_string(), "facility: {r}");
    assert_eq!(text(r, "severity"), sev.to_string(), "severity: {r}");
    assert_eq!(text(r, "app_name"), "rmm-monitor", "APP-NAME: {r}");
    assert_eq!(text(r, "procid"), daemon.to_string(), "PROCID: {r}");
    assert_eq!(text(r, "msgid"), action, "MSGID is the action: {r}");
    assert_eq!(text(r, "hostname"), host, "HOSTNAME: {r}");
    let (id, params) = parse_sd(text(r, "structured_data"));
    assert_eq!(id, SD_ID, "SD-ID: {r}");
    assert_eq!(params, expected_sd(a), "structured data parameters: {r}");
    let msg = text(r, "msg");
    assert!(msg.starts_with('{'), "MSG is the JSON alert: {msg:?}");
    assert_eq!(msg_alert(r).as_ref(), Some(a), "MSG is the alert: {r}");
    let ts = a["@timestamp"].as_str().expect("@timestamp");
    let head = format!(
        "<{pri}>1 {} {host} rmm-monitor {daemon} {action} [{SD_ID} ",
        timestamp_5424(ts)
    );
    let raw = text(r, "rawmsg");
    assert!(
        raw.starts_with(&head),
        "the header carries the event time: {raw:?} should start with {head:?}"
    );
    assert!(
        text(r, "timereported").starts_with(&ts[..19]),
        "rsyslog's TIMESTAMP is the alert's: {r}"
    );
}

/// A message rsyslog parsed as RFC 3164 (BSD syslog), against the alert it carries.
fn check_3164(r: &Value, a: &Value, daemon: u32, facility: u32) {
    let sev = severity_code(a["rmm"]["severity"].as_str().expect("rmm.severity"));
    let pri = facility * 8 + sev;
    let host = a["host"]["hostname"].as_str().expect("host.hostname");
    assert_eq!(text(r, "protocol_version"), "0", "parsed as RFC 3164: {r}");
    assert_eq!(text(r, "pri"), pri.to_string(), "PRI: {r}");
    assert_eq!(text(r, "facility"), facility.to_string(), "facility: {r}");
    assert_eq!(text(r, "severity"), sev.to_string(), "severity: {r}");
    assert_eq!(text(r, "programname"), "rmm-monitor", "{r}");
    assert_eq!(text(r, "app_name"), "rmm-monitor", "{r}");
    assert_eq!(
        text(r, "syslogtag"),
        format!("rmm-monitor[{daemon}]:"),
        "TAG: {r}"
    );
    assert_eq!(text(r, "procid"), daemon.to_string(), "{r}");
    assert_eq!(text(r, "hostname"), host, "HOSTNAME: {r}");
    assert_eq!(text(r, "msgid"), "-", "no MSGID in RFC 3164: {r}");
    assert_eq!(
        text(r, "structured_data"),
        "-",
        "no structured data in RFC 3164: {r}"
    );
    assert_eq!(msg_alert(r).as_ref(), Some(a), "MSG is the alert: {r}");
    // <PRI>Mmm dd hh:mm:ss HOST rmm-monitor[PID]: {...}
    let raw = text(r, "rawmsg");
    let rest = raw
        .strip_prefix(&format!("<{pri}>"))
        .unwrap_or_else(|| panic!("PRI <{pri}>: {raw:?}"));
    let (stamp, rest) = rest.split_at(15);
    let month = &stamp[..3];
    let day = stamp[4..6].trim_start();
    let clock: Vec<&str> = stamp[7..].split(':').collect();
    assert!(
        MONTHS.contains(&month)
            && stamp.as_bytes()[3] == b' '
            && day.parse::<u32>().is_ok_and(|d| (1..=31).contains(&d))
            && stamp.as_bytes()[6] == b' '
            && clock.len() == 3
            && clock
                .iter()
                .all(|c| c.len() == 2 && c.parse::<u32>().is_ok()),
        "RFC 3164 TIMESTAMP `Mmm dd hh:mm:ss`: {stamp:?} in {raw:?}"
    );
    let tail = format!(" {host} rmm-monitor[{daemon}]: {{");
    assert!(rest.starts_with(&tail), "HOSTNAME and TAG: {raw:?}");
}

/// Waits until input `label` got the daemon's message carrying `alert`.
fn wait_delivered(rs: &Rsyslog, label: &str, daemon: u32, alert: &Value) {
    let what = format!(
        "carrying the {} alert of pid {}",
        alert["event"]["action"], alert["process"]["pid"]
    );
    rs.wait(label, &what, 1, |r| {
        r["procid"].as_str() == Some(daemon.to_string().as_str())
            && msg_alert(r).as_ref() == Some(alert)
    });
}

/// After the daemon stopped: `label` got exactly `raised` messages from it, each alert of
/// `alerts` exactly once; returns the record of each alert.
fn exactly_once(
    rs: &Rsyslog,
    label: &str,
    daemon: u32,
    raised: u64,
    alerts: &[&Value],
) -> Vec<Value> {
    let from = poll(
        &format!("{raised} messages from the daemon on {label}"),
        crate::DELIVERY_TIMEOUT,
        || {
            let f = rs.sent_by(label, daemon);
            (f.len() as u64 >= raised).then_some(f)
        },
        || format!("got {}", rs.sent_by(label, daemon).len()),
    );
    assert_eq!(
        from.len() as u64,
        raised,
        "{label}: one message per alert raised"
    );
    alerts
        .iter()
        .map(|a| {
            let hits: Vec<&Value> = from
                .iter()
                .filter(|r| msg_alert(r).as_ref() == Some(*a))
                .collect();
            assert_eq!(
                hits.len(),
                1,
                "{label}: exactly one message for {a}: {hits:?}"
            );
            hits[0].clone()
        })
        .collect()
}

#[test]
fn syslog_rfc5424_over_udp_and_tcp_once_per_transport() {
    root_or_skip!("syslog_rfc5424_over_udp_and_tcp_once_per_transport");
    let (u, t) = two_ports();
    let rs = Rsyslog::start(&[Input::udp("udp", u), Input::tcp("tcp", t)], None);
    let s = Scratch::new("s5424");
    let json = s.file("alerts.json");
    let (udp, tcp) = (
        format!("udp://127.0.0.1:{u}"),
        format!("tcp://127.0.0.1:{t}"),
    );
    let m = s.start(&[
        "--json",
        path_str(&json),
        "--syslog",
        &udp,
        "--syslog",
        &tcp,
    ]);
    let daemon = m.pid();
    let (one, _) = s.anydesk("one");
    // Quotes, a backslash and a bracket in the executable path: escaped in the structured data.
    let (odd, _) = s.anydesk("two \"quoted\" [x]\\y");
    let (three, _) = s.anydesk("three");
    let me = connect_teamviewer();
    let alerts = [
        wait_alert(&json, "for anydesk one", |a| is_exec_of(a, &one)),
        wait_alert(&json, "for the odd path", |a| is_exec_of(a, &odd)),
        wait_alert(&json, "for anydesk three", |a| is_exec_of(a, &three)),
        wait_alert(&json, "for the connect", |a| is_connect_of(a, me)),
    ];
    for label in ["udp", "tcp"] {
        for a in &alerts {
            wait_delivered(&rs, label, daemon, a);
        }
    }
    let stopped = m.stop();
    stopped.assert_clean();
    let raised = alerts_raised(&stopped);
    for sink in [
        format!("json:{}", path_str(&json)),
        format!("syslog:{udp}"),
        format!("syslog:{tcp}"),
    ] {
        assert_sink_perfect(&stopped, &sink);
    }
    let refs: Vec<&Value> = alerts.iter().collect();
    for label in ["udp", "tcp"] {
        let recs = exactly_once(&rs, label, daemon, raised, &refs);
        for (r, a) in recs.iter().zip(&alerts) {
            // Facility auth (4) by default.
            check_5424(r, a, daemon, 4);
        }
        assert_eq!(
            recs[0]["inputname"],
            if label == "udp" { "imudp" } else { "imtcp" }
        );
        let (_, odd_sd) = parse_sd(text(&recs[1], "structured_data"));
        assert_eq!(odd_sd["exe"], path_str(&odd), "escaped exe round-trips");
        let (_, conn_sd) = parse_sd(text(&recs[3], "structured_data"));
        assert_eq!(
            (conn_sd["dst_ip"].as_str(), conn_sd["dst_port"].as_str()),
            ("127.0.0.1", "5938"),
            "destination of the connect"
        );
        assert_eq!(text(&recs[3], "msgid"), "connect");
    }
}

#[test]
fn syslog_rfc3164_over_udp_and_tcp_with_a_facility() {
    root_or_skip!("syslog_rfc3164_over_udp_and_tcp_with_a_facility");
    let (u, t) = two_ports();
    let rs = Rsyslog::start(&[Input::udp("udp", u), Input::tcp("tcp", t)], None);
    let s = Scratch::new("s3164");
    let json = s.file("alerts.json");
    let (udp, tcp) = (
        format!("udp://127.0.0.1:{u}"),
        format!("tcp://127.0.0.1:{t}"),
    );
    let m = s.start(&[
        "--json",
        path_str(&json),
        "--syslog",
        &udp,
        "--syslog",
        &tcp,
        "--syslog-format",
        "rfc3164",
        "--syslog-facility",
        "local3",
    ]);
    let daemon = m.pid();
    let (ad, _) = s.anydesk("bsd");
    let me = connect_teamviewer();
    let alerts = [
        wait_alert(&json, "for anydesk", |a| is_exec_of(a, &ad)),
        wait_alert(&json, "for the connect", |a| is_connect_of(a, me)),
    ];
    for label in ["udp", "tcp"] {
        for a in &alerts {
            wait_delivered(&rs, label, daemon, a);
        }
    }
    let stopped = m.stop();
    stopped.assert_clean();
    let raised = alerts_raised(&stopped);
    for sink in [format!("syslog:{udp}"), format!("syslog:{tcp}")] {
        assert_sink_perfect(&stopped, &sink);
    }
    let refs: Vec<&Value> = alerts.iter().collect();
    for label in ["udp", "tcp"] {
        let recs = exactly_once(&rs, label, daemon, raised, &refs);
        for (r, a) in recs.iter().zip(&alerts) {
            // local3 is facility 19.
            check_3164(r, a, daemon, 19);
        }
    }
}

#[test]
fn syslog_over_tls_checks_the_server_certificate() {
    root_or_skip!("syslog_over_tls_checks_the_server_certificate");
    let pki = Pki::new();
    let port = free_port();
    let rs = Rsyslog::start(&[Input::tcp("tls", port)], Some(&pki.server()));
    let url = format!("tls://127.0.0.1:{port}");
    let sink = format!("syslog:{url}");
    let s = Scratch::new("tls");
    let ca = pki.file("ca.pem");

    // The CA that signed the server's certificate (IP SAN 127.0.0.1): delivered.
    let json = s.file("good.json");
    let m = s.start(&[
        "--json",
        path_str(&json),
        "--syslog",
        &url,
        "--tls-ca",
        path_str(&ca),
    ]);
    let daemon = m.pid();
    let (ad, _) = s.anydesk("good");
    let me = connect_teamviewer();
    let alerts = [
        wait_alert(&json, "for anydesk", |a| is_exec_of(a, &ad)),
        wait_alert(&json, "for the connect", |a| is_connect_of(a, me)),
    ];
    for a in &alerts {
        wait_delivered(&rs, "tls", daemon, a);
    }
    let stopped = m.stop();
    stopped.assert_clean();
    assert_sink_perfect(&stopped, &sink);
    let raised = alerts_raised(&stopped);
    let refs: Vec<&Value> = alerts.iter().collect();
    let recs = exactly_once(&rs, "tls", daemon, raised, &refs);
    for (r, a) in recs.iter().zip(&alerts) {
        check_5424(r, a, daemon, 4);
    }

    // An unrelated CA, and then the right CA but a server name the certificate does not cover
    // (it names IP 127.0.0.1 only): the handshake fails, the daemon keeps running, the other sink
    // gets the alert, the syslog sink counts errors and delivers nothing.
    let wrong = pki.file("wrong-ca.pem");
    let by_name = format!("tls://localhost:{port}");
    for (case, url, ca) in [
        ("wrong-ca", url.as_str(), &wrong),
        ("wrong-name", by_name.as_str(), &ca),
    ] {
        let json = s.file(&format!("{case}.json"));
        let m = s.start(&[
            "--json",
            path_str(&json),
            "--syslog",
            url,
            "--tls-ca",
            path_str(ca),
        ]);
        let daemon = m.pid();
        let line = m.wait_for_log("about the refused certificate", |l| {
            l.contains(&format!("sink syslog:{url}")) && l.contains("invalid peer certificate")
        });
        let (ad, _) = s.anydesk(case);
        wait_alert(&json, "for anydesk", |a| is_exec_of(a, &ad));
        // Let it retry a few times.
        std::thread::sleep(std::time::Duration::from_millis(800));
        let stopped = m.stop();
        stopped.assert_clean();
        assert_sink_perfect(&stopped, &format!("json:{}", path_str(&json)));
        let st = sink_stats(&stopped, &format!("syslog:{url}"));
        assert_eq!(st["delivered"], 0, "{case}: nothing delivered: {st:?}");
        assert!(
            st["errors"] >= 2,
            "{case}: the failed handshakes are counted: {st:?}"
        );
        assert_eq!(st["reconnects"], 0, "{case}: never connected: {st:?}");
        assert!(
            rs.sent_by("tls", daemon).is_empty(),
            "{case}: rsyslog got nothing from this daemon"
        );
        if case == "wrong-ca" {
            assert!(line.contains("UnknownIssuer"), "{line}");
        } else {
            assert!(line.contains("not valid for name"), "{line}");
        }
    }
}
