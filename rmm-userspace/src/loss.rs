//! Loss records: what the daemon lost (records the kernel could not deliver, records it could
//! not decode, alerts a full sink queue refused) as alert-shaped `state` records sent to every
//! sink, so that a blind spot is visible where the alerts are read, not only in the daemon's
//! own log. At most one record per reason per interval: the counts in between are folded into
//! the next one, with the time of the first loss they hold. At the stop every count not yet
//! reported goes out, so that the records of a run add up to its final stats.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use crate::{
    alert::{
        Action, Alert, EventFields, LossFields, ProcessFields, RmmFields, RuleFields, Threat,
        UserRef, rfc3339,
    },
    matcher::Indicator,
    sinks::SinkReport,
    stats::Snapshot,
};

/// What a loss is counted under: a reason, and the sink for `sink_queue_full`.
pub type LossKey = (String, Option<String>);

/// Every loss counter of the daemon, by key, as totals since the start.
pub fn totals(snap: &Snapshot, sinks: &[SinkReport]) -> BTreeMap<LossKey, u64> {
    let mut out: BTreeMap<LossKey, u64> = snap
        .kernel_drops
        .iter()
        .map(|(k, v)| (((*k).to_owned(), None), *v))
        .collect();
    for (reason, n) in [
        ("decode_bad_size", snap.decode_bad_size),
        ("decode_unknown_kind", snap.decode_unknown_kind),
        ("dns_malformed", snap.dns_malformed),
    ] {
        out.insert((reason.to_owned(), None), n);
    }
    for s in sinks {
        out.insert(
            ("sink_queue_full".to_owned(), Some(s.sink.clone())),
            s.dropped,
        );
    }
    out
}

/// Who reports: the daemon itself, the `process` of its records.
#[derive(Debug, Clone)]
pub struct Reporter {
    pub pid: u32,
    pub executable: String,
    pub hostname: String,
}

impl Reporter {
    pub fn this_process(hostname: String) -> Reporter {
        Reporter {
            pid: std::process::id(),
            executable: std::fs::read_link("/proc/self/exe")
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default(),
            hostname,
        }
    }
}

#[derive(Debug)]
struct Pending {
    /// Total already reported.
    reported: u64,
    /// Wall-clock time (ns since the epoch) of the first loss not reported yet.
    since: Option<u128>,
    last_sent: Option<Instant>,
}

pub struct LossReports {
    reporter: Reporter,
    interval: Duration,
    keys: BTreeMap<LossKey, Pending>,
    /// Loss records made.
    pub records: u64,
}

impl LossReports {
    pub fn new(reporter: Reporter, interval: Duration) -> LossReports {
        LossReports {
            reporter,
            interval,
            keys: BTreeMap::new(),
            records: 0,
        }
    }

    /// The records due for the counters `totals` (read at `now`, wall clock `wall_ns`): one per
    /// key whose count grew, unless one went out for it less than an interval ago (`force`: at
    /// the stop, every count not reported yet).
    pub fn due(
        &mut self,
        totals: &BTreeMap<LossKey, u64>,
        now: Instant,
        wall_ns: u128,
        force: bool,
    ) -> Vec<Alert> {
        let mut out = Vec::new();
        for (key, &total) in totals {
            let p = self.keys.entry(key.clone()).or_insert(Pending {
                reported: 0,
                since: None,
                last_sent: None,
            });
            if total <= p.reported {
                continue;
            }
            let since = *p.since.get_or_insert(wall_ns);
            let limited = p
                .last_sent
                .is_some_and(|t| now.duration_since(t) < self.interval);
            if limited && !force {
                continue;
            }
            let count = total - p.reported;
            p.reported = total;
            p.since = None;
            p.last_sent = Some(now);
            self.records += 1;
            out.push(record(&self.reporter, key, count, since, wall_ns));
        }
        out
    }
}

fn record(r: &Reporter, key: &LossKey, count: u64, since: u128, wall_ns: u128) -> Alert {
    let (reason, sink) = key;
    let what = match sink {
        Some(s) => format!("{reason} ({s})"),
        None => reason.clone(),
    };
    Alert::own(
        wall_ns,
        EventFields {
            kind: "state",
            category: vec!["host"],
            action: Action::Loss,
            severity: 47,
            outcome: None,
        },
        RuleFields {
            id: "rmm.monitor.loss".into(),
            name: format!("rmm-monitor lost events: {what}"),
        },
        RmmFields::monitor(
            Indicator::Loss,
            what,
            "medium",
            count,
            Some(LossFields {
                reason: reason.clone(),
                sink: sink.clone(),
                count,
                since: rfc3339(since),
            }),
        ),
        Threat::impair_defenses(),
        ProcessFields {
            pid: r.pid,
            entity_id: None,
            start: None,
            name: "rmm-monitor".into(),
            executable: r.executable.clone(),
            args: vec![],
            user: UserRef {
                // SAFETY: getuid has no preconditions.
                id: unsafe { libc::getuid() },
            },
            parent: None,
        },
        &r.hostname,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reports() -> LossReports {
        LossReports::new(
            Reporter {
                pid: 1,
                executable: "/usr/bin/rmm-monitor".into(),
                hostname: "h".into(),
            },
            Duration::from_secs(10),
        )
    }

    fn key(r: &str) -> LossKey {
        (r.to_owned(), None)
    }

    /// One record per reason per interval, the counts in between folded into the next, the
    /// first loss's time kept; the stop reports what is left; the counts add up to the totals.
    #[test]
    fn losses_are_rate_limited_and_folded_and_add_up() {
        let mut l = reports();
        let t0 = Instant::now();
        let totals = |exec: u64, dns: u64| {
            BTreeMap::from([
                (key("exec_ringbuf_full"), exec),
                (key("dns_ringbuf_full"), dns),
            ])
        };
        assert!(
            l.due(&totals(0, 0), t0, 1_000, false).is_empty(),
            "nothing lost"
        );
        let r = l.due(&totals(5, 0), t0, 2_000, false);
        assert_eq!(r.len(), 1);
        let loss = r[0].rmm.loss.as_ref().expect("loss fields");
        assert_eq!((loss.reason.as_str(), loss.count), ("exec_ringbuf_full", 5));
        assert_eq!(r[0].event.kind, "state");
        // Within the interval: folded.
        let t1 = t0 + Duration::from_secs(3);
        let r = l.due(&totals(9, 2), t1, 3_000, false);
        assert_eq!(r.len(), 1, "only the other reason goes out: {r:?}");
        assert_eq!(r[0].rmm.loss.as_ref().unwrap().reason, "dns_ringbuf_full");
        assert!(l.due(&totals(12, 2), t1, 4_000, false).is_empty());
        // Past the interval: the folded count, since the first loss it holds.
        let t2 = t0 + Duration::from_secs(11);
        let r = l.due(&totals(12, 2), t2, 5_000, false);
        assert_eq!(r.len(), 1);
        let loss = r[0].rmm.loss.as_ref().unwrap();
        assert_eq!(loss.count, 7);
        assert_eq!(loss.since, rfc3339(3_000));
        // The stop reports at once what is left.
        let r = l.due(&totals(13, 3), t2, 6_000, true);
        assert_eq!(r.len(), 2);
        assert_eq!(l.records, 5);
    }

    /// A loss record reads as one in every sink's format.
    #[test]
    fn loss_records_in_the_sink_formats() {
        let mut l = reports();
        let totals = BTreeMap::from([(key("connect_ringbuf_full"), 42)]);
        let r = l.due(&totals, Instant::now(), 1_700_000_000_000_000_000, false);
        let a = &r[0];
        let line = crate::sinks::syslog::format_5424(a, 13, "h", 1).expect("formats");
        assert!(line.contains(" rmm-monitor 1 loss [rmm@32473 tool=\"rmm-monitor\" indicator=\"loss\" matched=\"connect_ringbuf_full\""), "{line}");
        assert!(line.contains("lost=\"42\""), "{line}");
        assert!(line.contains("technique=\"T1562\""), "{line}");
        let text = crate::sinks::journald::summary(a);
        assert!(
            text.starts_with("rmm-monitor lost 42 events (connect_ringbuf_full) since "),
            "{text}"
        );
        let fields = crate::sinks::journald::fields(a).expect("fields");
        assert!(
            fields.contains(&("RMM_LOSS_COUNT".into(), "42".into())),
            "{fields:?}"
        );
        assert!(
            fields.contains(&("EVENT_KIND".into(), "state".into())),
            "{fields:?}"
        );
    }

    #[test]
    fn sink_drops_name_the_sink() {
        let snap = Snapshot::default();
        let sinks = vec![SinkReport {
            sink: "syslog:udp://127.0.0.1:514".into(),
            delivered: 0,
            delivered_late: 0,
            dropped: 3,
            errors: 0,
            reconnects: 0,
        }];
        let t = totals(&snap, &sinks);
        let mut l = reports();
        let r = l.due(&t, Instant::now(), 1, false);
        assert_eq!(r.len(), 1);
        let loss = r[0].rmm.loss.as_ref().unwrap();
        assert_eq!(loss.sink.as_deref(), Some("syslog:udp://127.0.0.1:514"));
        assert_eq!((loss.reason.as_str(), loss.count), ("sink_queue_full", 3));
        assert_eq!(
            r[0].rmm.matched,
            "sink_queue_full (syslog:udp://127.0.0.1:514)"
        );
    }
}
