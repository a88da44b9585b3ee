//! Matching throughput over a realistic event mix, with the full default catalog:
//! `cargo bench -p rmm-userspace --bench matcher` (also run by `cargo xtask bench`).
//!
//! The mix: 20 % execs of ordinary system binaries, 40 % outbound connects (web, databases,
//! SSH, high ports), 40 % DNS queries for ordinary names; about 1 % of each hits the catalog.

use std::{hint::black_box, net::IpAddr, sync::Arc};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rmm_userspace::{
    catalog::{Proto, RuleSources, Rules},
    decode::{Connect, Dns, Event, Exec, Task},
    detect::{Compiled, Detector},
    dns::DnsQuery,
    matcher::Matcher,
    proctable::ProcTable,
};

const BINARIES: &[&str] = &[
    "/usr/bin/bash",
    "/usr/bin/ls",
    "/usr/bin/grep",
    "/usr/bin/python3.11",
    "/usr/sbin/sshd",
    "/usr/sbin/cron",
    "/usr/bin/git",
    "/usr/bin/curl",
    "/usr/lib/postgresql/15/bin/postgres",
    "/usr/sbin/nginx",
    "/usr/bin/node",
    "/usr/bin/java",
    "/usr/local/bin/app-server",
    "/usr/bin/systemctl",
    "/usr/bin/sed",
    "/usr/bin/awk",
    "/usr/bin/cat",
    "/usr/bin/sleep",
    "/opt/app/releases/2026-11-01/bin/worker",
    "/home/deploy/.local/bin/poetry",
];
const DOMAINS: &[&str] = &[
    "api.github.com",
    "deb.debian.org",
    "s3.eu-west-1.amazonaws.com",
    "www.google.com",
    "registry.npmjs.org",
    "pypi.org",
    "files.pythonhosted.org",
    "sentry.io",
    "o123.ingest.sentry.io",
    "db.internal.example.com",
    "metrics.example.net",
    "login.microsoftonline.com",
];
const PORTS: &[u16] = &[
    443, 443, 443, 80, 5432, 6379, 22, 8080, 9200, 3306, 41234, 51000,
];

fn task(pid: u32, comm: &str) -> Task {
    Task {
        ts_ns: 1,
        pid,
        start_ns: 0,
        tid: pid,
        uid: 1000,
        gid: 1000,
        comm: comm.into(),
        cgroup_id: 0,
    }
}

fn mix(n: usize) -> Vec<Event> {
    let mut x: u32 = 0x1234_5678;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    (0..n)
        .map(|i| {
            let r = rnd();
            let hit = r % 100 == 0;
            let pid = 1000 + (r % 500);
            match i % 5 {
                0 => {
                    let exe = if hit {
                        "/tmp/x/anydesk"
                    } else {
                        BINARIES[(r as usize / 7) % BINARIES.len()]
                    };
                    let name = exe.rsplit('/').next().unwrap_or(exe);
                    Event::Exec(Exec {
                        task: task(pid, name),
                        ppid: 1,
                        parent_start_ns: 0,
                        filename: exe.into(),
                        executable: exe.into(),
                        args: vec![exe.into(), "--config".into(), "/etc/app/config.yaml".into()],
                        args_truncated: false,
                        flags: vec![],
                    })
                }
                1 | 2 => Event::Connect(Connect {
                    task: task(pid, "worker"),
                    protocol: "tcp",
                    daddr: IpAddr::from([10, 1, (r >> 8) as u8, r as u8]),
                    dport: if hit {
                        5938
                    } else {
                        PORTS[(r as usize / 3) % PORTS.len()]
                    },
                    result: "success",
                    ret: Some(0),
                    source: "syscall",
                    fd: 7,
                    duration_ns: 1000,
                }),
                _ => {
                    let qname = if hit {
                        "relay.rustdesk.com".to_string()
                    } else {
                        format!("w{}.{}", r % 50, DOMAINS[(r as usize / 11) % DOMAINS.len()])
                    };
                    Event::Dns(Dns {
                        task: task(pid, "worker"),
                        daddr: IpAddr::from([127, 0, 0, 53]),
                        dport: 53,
                        sport: 40000,
                        sock_cookie: r as u64,
                        query: DnsQuery {
                            txid: r as u16,
                            qname,
                            qtype: "A".into(),
                            qcount: 1,
                        },
                        payload_truncated: false,
                        flags: Vec::new(),
                    })
                }
            }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let rules = Rules::load(&RuleSources::default()).expect("default catalog loads");
    let matcher = Matcher::build(&rules).expect("catalog compiles");
    let events = mix(10_000);
    let mut g = c.benchmark_group("event_mix");
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("matcher", |b| {
        b.iter(|| {
            let mut hits = 0usize;
            for ev in &events {
                let hit = match ev {
                    Event::Exec(e) => matcher
                        .match_exec(&e.executable, &e.filename, &e.task.comm, &e.args)
                        .is_some(),
                    Event::Connect(c) => matcher.match_port(Proto::Tcp, c.dport).is_some(),
                    Event::Dns(d) => matcher.match_domain(&d.query.qname).is_some(),
                    _ => false,
                };
                hits += usize::from(hit);
            }
            black_box(hits)
        })
    });
    let compiled = Arc::new(Compiled::build(&rules).expect("compiles"));
    let table = ProcTable::default();
    let mut detector = Detector::new(compiled);
    g.bench_function("detector", |b| {
        b.iter(|| {
            let mut alerts = 0usize;
            for ev in &events {
                alerts += usize::from(detector.on_event(black_box(ev), &table).is_some());
            }
            black_box(alerts)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
