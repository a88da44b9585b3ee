//! The fuzz harnesses: one function per parser family of untrusted input, each calling the
//! production parsers and asserting what they promise (no panic first of all). The cargo-fuzz
//! targets in `fuzz/` are one-line wrappers around these, and the unit test below replays
//! every committed corpus and regression input through them, so CI checks every input the
//! fuzzer kept or that once crashed, without fuzzing.

use rmm_common::{ARGS_MAX_COUNT, DNS_PAYLOAD_LEN};

use crate::{
    catalog::{self, Rules},
    config, context, decode, dns,
    matcher::Matcher,
    proctable,
    sinks::syslog::{self, Transport},
};

/// A harness: one input, a panic when a parser breaks a promise.
pub type Harness = fn(&[u8]);

/// Every harness, by the name of its fuzz target (and of its corpus directory).
pub const TARGETS: &[(&str, Harness)] = &[
    ("decode", decode_entry),
    ("dns", dns_payload),
    ("toml", toml_text),
    ("cgroup", cgroup_text),
    ("proc", proc_file),
    ("syslog_url", syslog_url),
];

/// A ring entry, as a reader gets it: a staged batch split into records, or one record; every
/// record decoded as the processor does.
pub fn decode_entry(data: &[u8]) {
    match decode::split_batch(data) {
        Some(ranges) => {
            let mut prev = std::mem::size_of::<rmm_common::BatchHeader>();
            for r in ranges {
                assert!(prev <= r.start && r.start <= r.end && r.end <= data.len());
                prev = r.end;
                record(&data[r]);
            }
        }
        None => record(data),
    }
}

fn record(r: &[u8]) {
    let _ = decode::record_ts(r);
    let kind = decode::record_kind(r);
    if let Ok(ev) = decode::decode(r) {
        assert_eq!(kind, Ok(ev.kind()));
        assert!(serde_json::to_string(&ev).is_ok());
    }
}

/// A DNS payload (at most the bytes the kernel copies) as a query, and as the answer to the
/// question it carries.
pub fn dns_payload(data: &[u8]) {
    let data = &data[..data.len().min(DNS_PAYLOAD_LEN)];
    if let Ok(q) = dns::parse_query(data) {
        assert!(q.qcount >= 1 && !q.qtype.is_empty());
    }
    if data.len() > 2 {
        let (mut query, mut answer) = (data.to_vec(), data.to_vec());
        query[2] &= 0x7f;
        answer[2] |= 0x80;
        if let Ok(q) = dns::parse_query(&query) {
            let _ = dns::parse_answer(&answer, &q.qname, &q.qtype);
        }
    }
    let _ = dns::parse_answer(data, "example.com", "A");
}

/// A rules file and a configuration file. Rules that validate must build a matcher and the
/// context settings (validation promises the later stages never fail); errors carry
/// locations inside the text.
pub fn toml_text(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines = text.matches('\n').count() + 1;
    match catalog::parse_rules("fuzz.toml", text) {
        Ok(f) => {
            let rules = Rules {
                tools: f.tool,
                allow: f.allow,
                context: f.context.unwrap_or_default(),
                sources: vec!["fuzz.toml".into()],
            };
            if let Err(e) = Matcher::build(&rules) {
                panic!("valid rules do not build a matcher: {e:#}");
            }
            if let Err(e) = context::ContextSettings::from_rules(&rules) {
                panic!("valid rules do not give context settings: {e:#}");
            }
        }
        Err(errs) => {
            assert!(!errs.0.is_empty());
            for e in &errs.0 {
                assert!(e.line >= 1 && e.line <= lines && e.column >= 1, "{e}");
            }
            let _ = errs.to_string();
        }
    }
    if let Err(errs) = config::parse("fuzz.toml", text) {
        for e in &errs.0 {
            assert!(e.line >= 1 && e.line <= lines && e.column >= 1, "{e}");
        }
    }
    if let Some((lo, hi)) = catalog::parse_port_range(text) {
        assert!(lo > 0 && lo <= hi);
    }
}

/// A `/proc/PID/cgroup` file, and each of its lines as a cgroup path.
pub fn cgroup_text(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let unified = context::unified_cgroup(text);
    for path in unified.into_iter().chain(text.lines()).chain([text]) {
        if let Some(id) = context::container_id(path) {
            assert!(id.len() == 64 && path.contains(&id));
        }
        let _ = context::container_runtime(path);
        if let Some(uid) = context::pod_uid(path) {
            assert_eq!(uid.len(), 36);
        }
    }
}

/// A `/proc/PID/stat`, `status` or `cmdline` file, through each of their parsers.
pub fn proc_file(data: &[u8]) {
    let (args, _) = decode::split_args(data, false);
    assert!(args.len() <= ARGS_MAX_COUNT);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some((comm, _ppid, _start)) = proctable::parse_stat(text) {
        assert!(text.contains(&comm));
    }
    let _ = proctable::parse_status_uid(text);
}

/// A `--syslog` URL and a facility name.
pub fn syslog_url(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Transport::parse(text) {
        Ok(Transport::Unix(p)) => assert!(p.is_absolute()),
        Ok(Transport::Udp(a) | Transport::Tcp(a) | Transport::Tls(a)) => {
            let (host, port) = a.rsplit_once(':').expect("a host:port was accepted");
            assert!(!host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    if let Ok(code) = syslog::facility_code(text) {
        assert!(code < 24);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Every committed corpus and regression input, through its harness: a panic fails the
    /// test and names the file.
    #[test]
    fn committed_fuzz_inputs_replay_without_panics() {
        let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        let mut total = 0;
        for (name, harness) in super::TARGETS {
            let mut seen = 0;
            for kind in ["corpus", "regressions"] {
                let Ok(dir) = std::fs::read_dir(fuzz.join(kind).join(name)) else {
                    continue;
                };
                let mut files: Vec<_> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
                files.sort();
                for f in files.iter().filter(|f| f.is_file()) {
                    let data = std::fs::read(f).unwrap();
                    let r = std::panic::catch_unwind(|| harness(&data));
                    assert!(r.is_ok(), "{} panics in the {name} harness", f.display());
                    seen += 1;
                }
            }
            assert!(seen > 0, "no committed inputs for fuzz target {name}");
            total += seen;
        }
        eprintln!("replayed {total} fuzz inputs");
    }
}
