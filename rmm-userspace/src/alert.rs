//! The alert schema: ECS-aligned JSON with nested objects (documented in `ALERTS.md`).

use std::net::IpAddr;

use serde::Serialize;

use crate::{context::Flag, matcher::Indicator};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Alert {
    #[serde(rename = "@timestamp")]
    pub timestamp: String,
    pub event: EventFields,
    pub rule: RuleFields,
    pub rmm: RmmFields,
    pub threat: Threat,
    pub process: ProcessFields,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<Destination>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsFields>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerFields>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub orchestrator: Option<Orchestrator>,
    pub host: Host,
}

impl Alert {
    /// One of the daemon's own records (loss, tamper): no destination, DNS or container.
    pub fn own(
        wall_ns: u128,
        event: EventFields,
        rule: RuleFields,
        rmm: RmmFields,
        threat: Threat,
        process: ProcessFields,
        hostname: &str,
    ) -> Alert {
        Alert {
            timestamp: rfc3339(wall_ns),
            event,
            rule,
            rmm,
            threat,
            process,
            destination: None,
            dns: None,
            container: None,
            orchestrator: None,
            host: Host {
                hostname: hostname.to_owned(),
            },
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Exec,
    Connect,
    DnsQuery,
    Inventory,
    /// The daemon's own: events it lost (`event.kind: state`, `rmm.loss`).
    Loss,
    /// The daemon's own: someone other than its supervisor stopped or reloaded it.
    Tamper,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EventFields {
    /// "alert"; "state" for the daemon's own records (losses).
    pub kind: &'static str,
    /// ECS categories: `process` for exec/inventory, `network` for connect/dns, `host` for
    /// the daemon's own records.
    pub category: Vec<&'static str>,
    pub action: Action,
    /// 21 low, 47 medium, 73 high, 99 critical.
    pub severity: u8,
    /// `success`, `failure` or `unknown` (connects).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RuleFields {
    /// `rmm.<tool>.<indicator>`.
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RmmFields {
    /// Canonical tool id from the catalog.
    pub tool: String,
    pub tool_name: String,
    pub indicator: Indicator,
    /// What matched (a name, a path, a domain, `tcp/5938`, an address).
    pub matched: String,
    /// Context flags that raised the severity.
    pub context: Vec<Flag>,
    /// `low` | `medium` | `high` | `critical` after context.
    pub severity: &'static str,
    /// Occurrences this alert stands for (1, or more after a de-duplication window).
    pub count: u64,
    /// Ancestors, parent first (up to 8).
    pub ancestors: Vec<ProcessRef>,
    pub references: Vec<String>,
    /// Loss records only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss: Option<LossFields>,
}

/// What a loss record reports (see `crate::loss`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LossFields {
    /// A kernel drop reason (`exec_ringbuf_full`, ...), `decode_bad_size`,
    /// `decode_unknown_kind`, `dns_malformed` or `sink_queue_full`.
    pub reason: String,
    /// The sink whose queue was full.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sink: Option<String>,
    /// Events lost since the previous record of this reason.
    pub count: u64,
    /// When the first of them was noticed (RFC 3339).
    pub since: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Threat {
    pub framework: &'static str,
    pub technique: Technique,
}

impl Threat {
    /// What a blind spot of the monitor serves (ATT&CK T1562, Impair Defenses): the record
    /// says that detection was impaired, whatever the cause.
    pub fn impair_defenses() -> Threat {
        Threat::attack("T1562", "Impair Defenses")
    }

    /// An ATT&CK technique.
    pub fn attack(id: &str, name: &'static str) -> Threat {
        Threat {
            framework: "MITRE ATT&CK",
            technique: Technique {
                id: id.into(),
                name,
            },
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Technique {
    pub id: String,
    pub name: &'static str,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProcessRef {
    pub pid: u32,
    /// `<boot id>:<pid>:<start in clock ticks>`: one process on one host for all time, where a
    /// pid is reused within minutes. Absent when the start is unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entity_id: Option<String>,
    /// When the process started (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// Absent rather than empty when unknown.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub executable: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UserRef {
    pub id: u32,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProcessFields {
    pub pid: u32,
    /// As in [`ProcessRef`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entity_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// Name, executable and arguments are absent rather than empty when unknown.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub executable: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    pub user: UserRef,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<ProcessRef>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Destination {
    pub ip: IpAddr,
    pub port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DnsFields {
    pub question: DnsQuestion,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DnsQuestion {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ContainerFields {
    pub id: String,
    /// docker, podman, containerd, cri-o.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<&'static str>,
}

/// Kubernetes context, from the node alone (cgroup path and kubelet log directories).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Orchestrator {
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub resource: OrchestratorResource,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct OrchestratorResource {
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Pod name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Pod uid.
    pub id: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Host {
    pub hostname: String,
}

impl RmmFields {
    /// The daemon's own records (loss, tamper): tool `rmm-monitor`, no context, ancestors or
    /// references.
    pub fn monitor(
        indicator: Indicator,
        matched: String,
        severity: &'static str,
        count: u64,
        loss: Option<LossFields>,
    ) -> RmmFields {
        RmmFields {
            tool: "rmm-monitor".into(),
            tool_name: "rmm-monitor".into(),
            indicator,
            matched,
            context: vec![],
            severity,
            count,
            ancestors: vec![],
            references: vec![],
            loss,
        }
    }

    pub fn indicator_name(&self) -> &'static str {
        indicator_name(self.indicator)
    }
}

/// `rmm.indicator` as a word (rule ids, syslog parameters, journal messages).
pub fn indicator_name(i: Indicator) -> &'static str {
    match i {
        Indicator::Binary => "binary",
        Indicator::Path => "path",
        Indicator::Domain => "domain",
        Indicator::Port => "port",
        Indicator::Ip => "ip",
        Indicator::Loss => "loss",
        Indicator::Tamper => "tamper",
    }
}

pub fn technique_name(id: &str) -> &'static str {
    if id == "T1219.002" {
        "Remote Desktop Software"
    } else {
        "Remote Access Tools"
    }
}

/// Now, in nanoseconds since the epoch.
pub fn wall_now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// The wall-clock time of `ns` on `clock` (CLOCK_MONOTONIC, CLOCK_BOOTTIME; 0: now). The
/// offset between the clocks is taken at each call, not once: a clock step or a suspend
/// would otherwise shift every later time.
pub fn wall_of(clock: libc::clockid_t, ns: u64) -> u128 {
    let wall = wall_now_ns() as i128;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    let now = ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128;
    let ns = if ns == 0 { now } else { i128::from(ns) };
    (wall - (now - ns)).max(0) as u128
}

/// RFC 3339 UTC with nanoseconds, from nanoseconds since the epoch.
pub fn rfc3339(epoch_ns: u128) -> String {
    let t = std::time::UNIX_EPOCH
        + std::time::Duration::from_nanos(epoch_ns.min(u64::MAX as u128) as u64);
    humantime::format_rfc3339_nanos(t).to_string()
}
