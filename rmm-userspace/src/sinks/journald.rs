//! Alerts to journald through its native protocol (the datagram socket
//! `/run/systemd/journal/socket`; large entries go through a sealed memfd, as the protocol
//! allows), via the `libsystemd` crate. Every alert field becomes an upper-case journal field
//! (`RMM_TOOL`, `PROCESS_EXECUTABLE`, `DESTINATION_IP`, ...) so `journalctl RMM_TOOL=anydesk`
//! works; `MESSAGE` is one readable line.

use std::path::Path;

use anyhow::{Context, Result, bail};
use libsystemd::logging::{Priority, journal_send};
use serde_json::Value;

use super::Deliver;
use crate::alert::{Action, Alert};

pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";
pub const IDENTIFIER: &str = "rmm-monitor";

/// Stable `MESSAGE_ID`s, one per alert kind (`journalctl MESSAGE_ID=...`).
pub fn message_id(action: Action) -> &'static str {
    match action {
        Action::Exec => "5c4b1ab0a3d94e5b9a6f2f8d1e7c3a01",
        Action::Connect => "5c4b1ab0a3d94e5b9a6f2f8d1e7c3a02",
        Action::DnsQuery => "5c4b1ab0a3d94e5b9a6f2f8d1e7c3a03",
        Action::Inventory => "5c4b1ab0a3d94e5b9a6f2f8d1e7c3a04",
        Action::Loss => "5c4b1ab0a3d94e5b9a6f2f8d1e7c3a05",
        Action::Tamper => "5c4b1ab0a3d94e5b9a6f2f8d1e7c3a06",
    }
}

pub fn priority(severity: &str) -> Priority {
    match severity {
        "critical" => Priority::Critical,
        "high" => Priority::Error,
        "medium" => Priority::Warning,
        _ => Priority::Notice,
    }
}

/// One line for a human: tool, action, process, destination.
pub fn summary(a: &Alert) -> String {
    if let Some(l) = &a.rmm.loss {
        return format!(
            "rmm-monitor lost {} events ({}{}) since {}: detection was blind to them",
            l.count,
            l.reason,
            l.sink
                .as_ref()
                .map(|s| format!(", sink {s}"))
                .unwrap_or_default(),
            l.since
        );
    }
    let mut s = format!(
        "{} ({}) {} by {} pid {}",
        a.rmm.tool_name,
        a.rmm.severity,
        match a.event.action {
            Action::Exec => "executed",
            Action::Connect => "connection",
            Action::DnsQuery => "DNS lookup",
            Action::Inventory => "running",
            Action::Loss => "lost events",
            Action::Tamper => "stopped or reloaded rmm-monitor",
        },
        if a.process.executable.is_empty() {
            &a.process.name
        } else {
            &a.process.executable
        },
        a.process.pid,
    );
    if let Some(p) = &a.process.parent {
        s.push_str(&format!(" (parent {} pid {})", p.name, p.pid));
    }
    if let Some(q) = &a.dns {
        s.push_str(&format!(" for {}", q.question.name));
    } else if let Some(d) = &a.destination {
        s.push_str(&format!(" to {}:{}", d.ip, d.port));
        if let Some(dom) = &d.domain {
            s.push_str(&format!(" ({dom})"));
        }
    }
    s.push_str(&format!(": {} {}", a.rmm.indicator_name(), a.rmm.matched));
    if !a.rmm.context.is_empty() {
        let flags: Vec<String> = a
            .rmm
            .context
            .iter()
            .map(|f| {
                serde_json::to_value(f)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            })
            .collect();
        s.push_str(&format!(" [{}]", flags.join(", ")));
    }
    s
}

/// The alert as journal fields: nested keys joined with `_` and upper-cased; arrays of
/// strings joined with spaces, other arrays as JSON.
pub fn fields(a: &Alert) -> Result<Vec<(String, String)>> {
    let v = serde_json::to_value(a).context("encoding the alert")?;
    let mut out = Vec::new();
    flatten("", &v, &mut out);
    out.push(("SYSLOG_IDENTIFIER".into(), IDENTIFIER.into()));
    out.push(("MESSAGE_ID".into(), message_id(a.event.action).into()));
    out.push((
        "RMM_ALERT_JSON".into(),
        serde_json::to_string(a).context("encoding the alert")?,
    ));
    Ok(out)
}

fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    let key = |k: &str| -> String {
        let k = k.trim_start_matches('@');
        let k = if k == "timestamp" && prefix.is_empty() {
            "ALERT_TIMESTAMP".to_owned()
        } else {
            k.to_ascii_uppercase()
        };
        if prefix.is_empty() {
            k
        } else {
            format!("{prefix}_{k}")
        }
    };
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                flatten(&key(k), v, out);
            }
        }
        Value::Null => {}
        Value::String(s) => out.push((prefix.to_owned(), s.clone())),
        Value::Array(items) if items.iter().all(Value::is_string) => {
            let joined: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
            out.push((prefix.to_owned(), joined.join(" ")));
        }
        other => out.push((prefix.to_owned(), other.to_string())),
    }
}

/// A socket file can outlive journald: connecting tells whether anything listens.
pub fn journald_running() -> bool {
    Path::new(JOURNAL_SOCKET).exists()
        && std::os::unix::net::UnixDatagram::unbound()
            .is_ok_and(|s| s.connect(JOURNAL_SOCKET).is_ok())
}

pub struct JournaldSink;

impl Deliver for JournaldSink {
    fn describe(&self) -> String {
        "journald".into()
    }

    fn connect(&mut self) -> Result<()> {
        if !journald_running() {
            bail!("journald is not running (nothing listens on {JOURNAL_SOCKET})");
        }
        Ok(())
    }

    fn send(&mut self, alert: &Alert) -> Result<()> {
        let fields = fields(alert)?;
        journal_send(
            priority(alert.rmm.severity),
            &summary(alert),
            fields.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("sending to journald")
    }
}
