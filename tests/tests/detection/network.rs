//! Network detection: DNS queries for vendor domains (glibc and raw sendto) and look-alikes
//! that must stay silent, connects to vendor ports (refused, accepted, IPv6, UDP) and generic
//! ports that must stay silent, and the DNS-answer-to-connect correlation on port 443.

use std::{
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use rmm_tests::{
    dnswire::{self, TYPE_A, TYPE_AAAA},
    nonce,
    responder::Responder,
};

use crate::{
    Daemon, assert_context, assert_context_within, assert_event_process, assert_match,
    assert_process, helper, helper_bin, helper_comm, helper_flags, own_exe, path_str, read_alerts,
    root_or_skip, strs,
};

/// The harness responder's address in these tests (answers every A query with 127.0.0.1).
const RESOLVER: &str = "127.0.0.154";
/// The address of this file's own responder, which answers chosen names with chosen addresses.
const ANSWERING: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 155);

/// A DNS server on `ANSWERING:53` that answers A queries for the names it was given with
/// their addresses, and everything else with NODATA.
struct Answering {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Answering {
    fn bind(answers: Vec<(String, Ipv4Addr)>) -> Answering {
        let sock = UdpSocket::bind((ANSWERING, 53))
            .unwrap_or_else(|e| panic!("binding a DNS responder on {ANSWERING}:53: {e}"));
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("read timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop2.load(Ordering::Relaxed) {
                let (n, from) = match sock.recv_from(&mut buf) {
                    Ok(r) => r,
                    Err(e)
                        if matches!(
                            e.kind(),
                            ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                        ) =>
                    {
                        continue;
                    }
                    Err(e) => panic!("DNS responder: {e}"),
                };
                let msg = &buf[..n];
                let Some(mut q) = dnswire::parse_question(msg) else {
                    continue;
                };
                if q.is_response || !from.ip().is_loopback() {
                    continue;
                }
                let addr = answers
                    .iter()
                    .find(|(name, _)| name.eq_ignore_ascii_case(&q.name))
                    .map(|(_, a)| *a);
                if addr.is_none() {
                    // Unknown name: the answer carries no record (dnswire adds one for A only).
                    q.qtype = TYPE_AAAA;
                }
                let reply = dnswire::answer(msg, &q, addr.unwrap_or(Ipv4Addr::LOCALHOST));
                let _ = sock.send_to(&reply, from);
            }
        });
        Answering {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn harness_responder() -> Responder {
    let addr = SocketAddr::new(RESOLVER.parse().expect("an IP"), 53);
    Responder::bind(addr).unwrap_or_else(|e| panic!("binding the DNS responder on {addr}: {e}"))
}

/// The fields of a dns_query alert raised by a helper run.
fn assert_dns_alert(
    a: &rmm_tests::Value,
    pid: u32,
    tool: &str,
    domain: &str,
    qname: &str,
    qtype: &str,
    resolver: &str,
) {
    assert_match(a, tool, "domain", domain, "dns_query");
    assert_eq!(
        a["dns"]["question"]["name"], qname,
        "dns.question.name: {a}"
    );
    assert_eq!(
        a["dns"]["question"]["type"], qtype,
        "dns.question.type: {a}"
    );
    assert_eq!(a["destination"]["ip"], resolver, "the resolver: {a}");
    assert_eq!(a["destination"]["port"], 53, "{a}");
    assert!(a["destination"]["domain"].is_null(), "{a}");
    // The helper lives in target/: no temp dir, no package.
    assert_context_within(a, "high", &helper_flags(), "T1219.002");
    assert_event_process(a, pid, &helper_comm());
}

#[test]
fn vendor_domains_alert_on_dns_queries() {
    root_or_skip!("vendor_domains_alert_on_dns_queries");
    let resp = harness_responder();
    let d = Daemon::start("dns", &[]);

    // Look-alikes first: each is seen by the daemon (its DNS event) and must not alert.
    let mut silent = Vec::new();
    for name in [
        "notrustdesk.com",
        "rustdesk.com.example.net",
        "rustdesk.example.org",
        "teamviewer.co",
    ] {
        let run = helper(&["dns-sendto", RESOLVER, name, "A"]);
        d.m.wait_for(&format!("the DNS event for {name}"), |e| {
            e["event"] == "dns" && e["pid"] == run.pid && e["qname"] == name
        });
        silent.push(run.pid);
    }
    let gai_lookalike = format!("anydesk.com.rmm-e2e-{}.test", nonce());
    let run = helper(&["getaddrinfo", RESOLVER, &gai_lookalike]);
    d.m.wait_for_n("both glibc queries of the look-alike", 2, |e| {
        e["event"] == "dns" && e["pid"] == run.pid
    });
    silent.push(run.pid);

    // glibc: an A and an AAAA query from one process, one alert (the second is folded).
    let mut gai_pids = Vec::new();
    for (asked, tool, domain, qname) in [
        (
            "relay.rustdesk.com",
            "rustdesk",
            "rustdesk.com",
            "relay.rustdesk.com",
        ),
        (
            "RS-NY.RustDesk.COM.",
            "rustdesk",
            "rustdesk.com",
            "RS-NY.RustDesk.COM",
        ),
        (
            "master1.teamviewer.com",
            "teamviewer",
            "teamviewer.com",
            "master1.teamviewer.com",
        ),
    ] {
        let run = helper(&["getaddrinfo", RESOLVER, asked]);
        assert_eq!(run.all("addr"), vec!["127.0.0.1"], "answered on loopback");
        resp.wait_received(&format!("the A query for {qname}"), |r| {
            r.name == qname && r.qtype == TYPE_A
        });
        let a = d.alert_of("dns_query", run.pid);
        assert_dns_alert(&a, run.pid, tool, domain, qname, "A", RESOLVER);
        d.m.wait_for_n(&format!("both glibc queries for {qname}"), 2, |e| {
            e["event"] == "dns" && e["pid"] == run.pid
        });
        gai_pids.push(run.pid);
    }
    // The first vendor alert came after every look-alike was sent: they were processed.
    let so_far = read_alerts(&d.alerts);
    for pid in &silent {
        assert!(
            !so_far.iter().any(|a| a["process"]["pid"] == *pid),
            "a look-alike query (pid {pid}) alerted: {so_far:?}"
        );
    }

    // Raw sendto: one query each, the type as sent.
    let mut raw_pids = Vec::new();
    for (name, qtype, tool, domain, qname) in [
        (
            "relay.rustdesk.com",
            "A",
            "rustdesk",
            "rustdesk.com",
            "relay.rustdesk.com",
        ),
        (
            "RS-NY.RustDesk.COM.",
            "A",
            "rustdesk",
            "rustdesk.com",
            "RS-NY.RustDesk.COM",
        ),
        (
            "master1.teamviewer.com",
            "AAAA",
            "teamviewer",
            "teamviewer.com",
            "master1.teamviewer.com",
        ),
    ] {
        let run = helper(&["dns-sendto", RESOLVER, name, qtype]);
        let a = d.alert_of("dns_query", run.pid);
        assert_dns_alert(&a, run.pid, tool, domain, qname, qtype, RESOLVER);
        raw_pids.push(run.pid);
    }

    let f = d.stop();
    for pid in &silent {
        assert!(f.of_pid(*pid).is_empty(), "look-alike pid {pid} alerted");
    }
    for pid in &gai_pids {
        assert_eq!(
            f.of_pid(*pid).len(),
            1,
            "A and AAAA of one lookup are one alert (pid {pid})"
        );
    }
    assert!(
        f.detection["deduplicated"].as_u64() >= Some(3),
        "the AAAA queries were folded: {}",
        f.detection
    );
    for pid in &raw_pids {
        assert_eq!(f.of_pid(*pid).len(), 1, "one alert per query (pid {pid})");
    }
    assert!(f.count("alerts", "rustdesk") >= 4, "{}", f.detection);
    assert!(f.count("alerts", "teamviewer") >= 2, "{}", f.detection);
}

/// Runs `helper connect|udp-connect ADDR PORT`; returns the run.
fn connect(cmd: &str, addr: &str, port: u16) -> rmm_tests::HelperRun {
    helper(&[cmd, addr, &port.to_string()])
}

fn assert_connect_alert(
    a: &rmm_tests::Value,
    pid: u32,
    tool: &str,
    indicator: &str,
    matched: &str,
    (ip, port): (&str, u16),
    outcome: &str,
) {
    assert_match(a, tool, indicator, matched, "connect");
    assert_eq!(a["event"]["outcome"], outcome, "event.outcome: {a}");
    assert_eq!(a["destination"]["ip"], ip, "destination.ip: {a}");
    assert_eq!(a["destination"]["port"], port, "destination.port: {a}");
    assert!(a["dns"].is_null(), "{a}");
    assert_context_within(a, "high", &helper_flags(), "T1219.002");
    assert_event_process(a, pid, &helper_comm());
}

#[test]
fn vendor_ports_alert_on_connect() {
    root_or_skip!("vendor_ports_alert_on_connect");
    let rustdesk = TcpListener::bind(("127.0.0.1", 21115))
        .unwrap_or_else(|e| panic!("listening on 127.0.0.1:21115: {e}"));
    let d = Daemon::start("connect", &[]);

    // Generic ports alone never alert.
    let mut silent = Vec::new();
    let mut vendor = Vec::new();
    for port in [443, 80, 22] {
        let run = connect("connect", "127.0.0.1", port);
        d.seen("connect", run.pid);
        silent.push(run.pid);
    }
    let run = connect("udp-connect", "127.0.0.1", 443);
    d.seen("connect", run.pid);
    silent.push(run.pid);

    // TeamViewer, refused.
    let run = connect("connect", "127.0.0.1", 5938);
    assert_eq!(
        run.get("errno"),
        "111",
        "nothing listens on 127.0.0.1:5938 (ECONNREFUSED expected)"
    );
    let a = d.alert_of("connect", run.pid);
    vendor.push(run.pid);
    assert_connect_alert(
        &a,
        run.pid,
        "teamviewer",
        "port",
        "tcp/5938",
        ("127.0.0.1", 5938),
        "failure",
    );
    // The control came after the generic ports: they were processed and stayed silent.
    let so_far = read_alerts(&d.alerts);
    for pid in &silent {
        assert!(
            !so_far.iter().any(|a| a["process"]["pid"] == *pid),
            "a generic-port connect (pid {pid}) alerted: {so_far:?}"
        );
    }

    // AnyDesk over IPv6, refused.
    let run = connect("connect", "::1", 7070);
    assert_eq!(run.get("errno"), "111", "nothing listens on [::1]:7070");
    let a = d.alert_of("connect", run.pid);
    vendor.push(run.pid);
    assert_connect_alert(
        &a,
        run.pid,
        "anydesk",
        "port",
        "tcp/7070",
        ("::1", 7070),
        "failure",
    );

    // RustDesk, accepted.
    let run = connect("connect", "127.0.0.1", 21115);
    assert_eq!(run.get("ret"), "0", "connected to the listener");
    let a = d.alert_of("connect", run.pid);
    vendor.push(run.pid);
    assert_connect_alert(
        &a,
        run.pid,
        "rustdesk",
        "port",
        "tcp/21115",
        ("127.0.0.1", 21115),
        "success",
    );
    drop(rustdesk);

    // TeamViewer's UDP port: the protocol is part of the match.
    let run = connect("udp-connect", "127.0.0.1", 5938);
    let a = d.alert_of("connect", run.pid);
    vendor.push(run.pid);
    assert_connect_alert(
        &a,
        run.pid,
        "teamviewer",
        "port",
        "udp/5938",
        ("127.0.0.1", 5938),
        "success",
    );

    let f = d.stop();
    for pid in &silent {
        assert!(f.of_pid(*pid).is_empty(), "generic-port pid {pid} alerted");
    }
    for pid in &vendor {
        assert_eq!(f.of_pid(*pid).len(), 1, "one alert per connect (pid {pid})");
    }
}

/// A loopback address 127.<net>.x.y with x and y from a nonce.
fn random_loopback(net: u8) -> Ipv4Addr {
    let n = nonce();
    let byte = |i: usize| u8::from_str_radix(&n[i..i + 2], 16).expect("hex") % 254 + 1;
    Ipv4Addr::new(127, net, byte(0), byte(2))
}

#[test]
fn dns_answer_tags_a_later_connect_on_443() {
    root_or_skip!("dns_answer_tags_a_later_connect_on_443");
    let n = nonce();
    let vendor_name = format!("rs-{n}.rustdesk.com");
    let benign_name = format!("files-{n}.example.org");
    let vendor_ip = random_loopback(77);
    let benign_ip = random_loopback(78);
    let unrelated_ip = Ipv4Addr::new(127, 79, vendor_ip.octets()[2], vendor_ip.octets()[3]);
    let _dns = Answering::bind(vec![
        (vendor_name.clone(), vendor_ip),
        (benign_name.clone(), benign_ip),
    ]);
    let vendor_listener = TcpListener::bind((vendor_ip, 443))
        .unwrap_or_else(|e| panic!("listening on {vendor_ip}:443: {e}"));
    let benign_listener = TcpListener::bind((benign_ip, 443))
        .unwrap_or_else(|e| panic!("listening on {benign_ip}:443: {e}"));
    let resolver = ANSWERING.to_string();
    let d = Daemon::start("correlate", &[]);

    // A benign name, resolved and connected to on 443: silent.
    let mut silent = Vec::new();
    let q = helper(&["getaddrinfo", &resolver, &benign_name]);
    assert_eq!(q.all("addr"), vec![benign_ip.to_string()], "resolved");
    let c = connect("connect", &benign_ip.to_string(), 443);
    assert_eq!(c.get("ret"), "0");
    d.seen("connect", c.pid);
    silent.extend([q.pid, c.pid]);

    // The vendor name: a dns_query alert, and its answer is remembered.
    let q = helper(&["getaddrinfo", &resolver, &vendor_name]);
    assert_eq!(q.all("addr"), vec![vendor_ip.to_string()], "resolved");
    let a = d.alert_of("dns_query", q.pid);
    assert_dns_alert(
        &a,
        q.pid,
        "rustdesk",
        "rustdesk.com",
        &vendor_name,
        "A",
        &resolver,
    );

    // 443 on an address no vendor answer gave: silent.
    let c = connect("connect", &unrelated_ip.to_string(), 443);
    d.seen("connect", c.pid);
    silent.push(c.pid);

    // Another process connects to the answered address on 443: not tagged, the answer was
    // for the process that asked (a user's own server must not tag everyone's connects).
    let ip = vendor_ip.to_string();
    let c = connect("connect", &ip, 443);
    assert_eq!(c.get("ret"), "0", "connected to the vendor address");
    d.seen("connect", c.pid);
    silent.push(c.pid);

    // A process that resolves the vendor name and then connects to the answer on 443.
    let c = helper(&[
        "getaddrinfo",
        &resolver,
        &vendor_name,
        "then",
        "connect",
        &ip,
        "443",
    ]);
    assert_eq!(c.get("ret"), "0", "connected to the vendor address");
    let a = d.alert_of("connect", c.pid);
    assert_connect_alert(&a, c.pid, "rustdesk", "ip", &ip, (&ip, 443), "success");
    assert_eq!(
        a["destination"]["domain"], vendor_name,
        "destination.domain is the name queried: {a}"
    );
    assert_eq!(a["rule"]["id"], "rmm.rustdesk.ip", "{a}");
    let asker = c.pid;

    // A child of a process that resolved it: tagged too.
    let r = helper(&[
        "getaddrinfo",
        &resolver,
        &vendor_name,
        "then-child",
        "connect",
        &ip,
        "443",
    ]);
    let child: u32 = r.get("child").parse().expect("child pid");
    let a = d.alert_of("connect", child);
    assert_connect_alert(&a, child, "rustdesk", "ip", &ip, (&ip, 443), "success");
    let so_far = read_alerts(&d.alerts);
    for pid in &silent {
        assert!(
            !so_far.iter().any(|a| a["process"]["pid"] == *pid),
            "pid {pid} alerted: {so_far:?}"
        );
    }
    drop((vendor_listener, benign_listener));

    let f = d.stop();
    for pid in &silent {
        assert!(f.of_pid(*pid).is_empty(), "pid {pid} alerted");
    }
    assert!(
        f.detection["answers_parsed"].as_u64() >= Some(1),
        "the vendor answer was parsed: {}",
        f.detection
    );
    assert_eq!(f.of_pid(q.pid).len(), 1, "the vendor query alerted once");
    assert_eq!(
        f.of_pid(asker).len(),
        2,
        "the asker's query and its tagged connect alerted once each"
    );
}

/// The alert of a connect or a DNS query describes the process like an exec alert does: its
/// executable, arguments, parent chain and the context flags that follow from them. The probe
/// helper exits right after its connect; its fork, exec and exit travel in the process ring,
/// the connect in the network ring.
#[test]
fn network_alerts_of_short_lived_processes_carry_the_process_context() {
    root_or_skip!("network_alerts_of_short_lived_processes_carry_the_process_context");
    let resp = harness_responder();
    let d = Daemon::start("netproc", &[]);
    let me = std::process::id();
    let me_exe = own_exe();
    let helper_exe = path_str(helper_bin());

    let run = connect("connect", "127.0.0.1", 5938);
    let c = d.alert_of("connect", run.pid);
    assert_match(&c, "teamviewer", "port", "tcp/5938", "connect");
    let run_q = helper(&["dns-sendto", RESOLVER, "relay.rustdesk.com", "A"]);
    let q = d.alert_of("dns_query", run_q.pid);
    assert_match(&q, "rustdesk", "domain", "rustdesk.com", "dns_query");
    resp.wait_received("the query", |r| r.name == "relay.rustdesk.com");

    let f = d.stop();
    // Whatever the daemon had when it alerted, it knew all of it by the time it stopped.
    let seen: Vec<&str> = f
        .stopped
        .of_kind("exec")
        .filter(|e| e["pid"] == run.pid || e["pid"] == run_q.pid)
        .filter_map(|e| e["executable"].as_str())
        .collect();
    assert_eq!(seen, vec![helper_exe, helper_exe], "both execs were seen");
    for (a, pid, args) in [
        (
            &c,
            run.pid,
            vec![helper_exe, "connect", "127.0.0.1", "5938"],
        ),
        (
            &q,
            run_q.pid,
            vec![
                helper_exe,
                "dns-sendto",
                RESOLVER,
                "relay.rustdesk.com",
                "A",
            ],
        ),
    ] {
        assert_process(a, pid, &helper_comm(), helper_exe, Some((me, &me_exe)));
        assert_eq!(strs(&a["process"]["args"]), args, "process.args: {a}");
        assert_eq!(a["rmm"]["ancestors"][0]["pid"], me, "rmm.ancestors: {a}");
        assert_context(a, "high", &helper_flags(), "T1219.002");
    }
}

/// The two rings are merged in kernel-time order before any table lookup: a forked child's
/// connect (network ring) is judged after its fork (process ring), so its alert has the
/// executable, arguments and parent it inherited; a connect made just before an `execve` is
/// judged against the image that made it, not the new one.
#[test]
fn network_records_are_ordered_with_the_process_records_around_them() {
    root_or_skip!("network_records_are_ordered_with_the_process_records_around_them");
    let d = Daemon::start("order", &[]);
    let helper_exe = path_str(helper_bin());
    for _ in 0..3 {
        let run = helper(&["child", "connect", "127.0.0.1", "5938"]);
        let child: u32 = run.get("child").parse().expect("child pid");
        let a = d.alert_of("connect", child);
        assert_match(&a, "teamviewer", "port", "tcp/5938", "connect");
        assert_eq!(a["process"]["executable"], helper_exe, "inherited: {a}");
        assert_eq!(
            strs(&a["process"]["args"]),
            vec![helper_exe, "child", "connect", "127.0.0.1", "5938"],
            "inherited: {a}"
        );
        assert_eq!(
            a["process"]["parent"]["pid"], run.pid,
            "the forking parent: {a}"
        );
        assert_eq!(a["process"]["parent"]["executable"], helper_exe, "{a}");

        let dir = rmm_tests::TempDir::new("order-exec");
        let next = dir.copy_executable("/bin/true", "next-image");
        let run = rmm_tests::run_bounded(
            helper_bin(),
            &["connect-exec", "127.0.0.1", "5938", path_str(&next)],
        );
        run.assert_success();
        let a = d.alert_of("connect", run.pid);
        assert_eq!(
            a["process"]["executable"], helper_exe,
            "the image that connected, not the one exec'd after: {a}"
        );
    }
    let f = d.stop();
    // Counted, not asserted zero: a program preempted between its clock read and its write
    // can come late on a loaded machine.
    println!(
        "records late: {}, released early: {}",
        f.stopped.stat("/records_late"),
        f.stopped.stat("/records_forced")
    );
}

/// A rules reload (SIGHUP, which is also logrotate's reopen) between a vendor lookup and the
/// connect that follows it keeps the correlation: the connect is still tagged.
#[test]
fn dns_correlation_survives_a_sighup() {
    root_or_skip!("dns_correlation_survives_a_sighup");
    let n = nonce();
    let vendor_name = format!("relay-{n}.rustdesk.com");
    let vendor_ip = random_loopback(80);
    let ip = vendor_ip.to_string();
    let _dns = Answering::bind(vec![(vendor_name.clone(), vendor_ip)]);
    let _listener = TcpListener::bind((vendor_ip, 443))
        .unwrap_or_else(|e| panic!("listening on {ip}:443: {e}"));
    let d = Daemon::start("sighup-correlate", &[]);
    let go = d.dir.path().join("go");
    let resolver = ANSWERING.to_string();
    let child = std::process::Command::new(helper_bin())
        .args([
            "getaddrinfo",
            &resolver,
            &vendor_name,
            "then",
            "wait-file",
            path_str(&go),
            "connect",
            &ip,
            "443",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("starting the probe helper");
    let pid = child.id();
    d.alert_of("dns_query", pid);
    // SAFETY: kill(2) on the daemon, our own child, which has not been reaped.
    let rc = unsafe { libc::kill(d.m.pid() as libc::pid_t, libc::SIGHUP) };
    assert_eq!(rc, 0, "SIGHUP: {}", std::io::Error::last_os_error());
    d.m.wait_for_log("the reload", |l| l.starts_with("SIGHUP: rules reloaded"));
    std::fs::write(&go, "").expect("creating the go file");
    let out = child
        .wait_with_output()
        .expect("waiting for the probe helper");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.lines().any(|l| l == "ret=0"),
        "the helper connected: {:?}\n{stdout}",
        out.status
    );
    let a = d.alert_of("connect", pid);
    assert_connect_alert(&a, pid, "rustdesk", "ip", &ip, (&ip, 443), "success");
    let f = d.stop();
    assert_eq!(
        f.detection["reloads"].as_u64(),
        Some(1),
        "one reload: {}",
        f.detection
    );
}
