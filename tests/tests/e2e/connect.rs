//! connect events: protocol, destination, result and return value, fd and timing, for TCP
//! (refused, accepted, non-blocking) and UDP, over IPv4, IPv6 and v4-mapped IPv6.

use std::net::{SocketAddr, TcpListener};

use rmm_tests::{
    Cgroup, HelperRun, Monitor, Stopped, Value, gettid, int, num, own_cgroup_id, text,
};

use crate::{helper, helper_comm, root_or_skip};

/// A loopback port nothing listens on (bound, then released).
fn closed_port(ip: &str) -> u16 {
    let l = TcpListener::bind(SocketAddr::new(ip.parse().expect("an IP"), 0))
        .expect("binding a free port");
    l.local_addr().expect("local addr").port()
}

/// Runs `helper connect|udp-connect ADDR PORT [nonblock]` and returns its run and the one
/// connect event it caused.
fn connect(
    m: &Monitor,
    cmd: &str,
    addr: &str,
    port: u16,
    extra: Option<&str>,
) -> (HelperRun, Value) {
    let p = port.to_string();
    let mut a = vec![cmd, addr, &p];
    a.extend(extra);
    let run = helper(&a);
    run.assert_success();
    let pid = u64::from(run.pid);
    let ev = m.wait_for(&format!("{cmd} to {addr} port {port}"), |e| {
        e["event"] == "connect" && num(e, "pid") == pid
    });
    assert_eq!(num(&ev, "tid"), pid, "{ev}");
    assert_eq!(text(&ev, "comm"), helper_comm(), "{ev}");
    assert_eq!((num(&ev, "uid"), num(&ev, "gid")), (0, 0), "{ev}");
    assert_eq!(num(&ev, "cgroup_id"), own_cgroup_id(), "{ev}");
    assert_eq!(text(&ev, "daddr"), addr, "{ev}");
    assert_eq!(num(&ev, "dport"), u64::from(port), "{ev}");
    assert_eq!(text(&ev, "source"), "syscall", "{ev}");
    assert_eq!(
        int(&ev, "fd"),
        run.num::<i64>("fd"),
        "the fd the helper connected: {ev}"
    );
    let d = num(&ev, "duration_ns");
    assert!(
        d > 0 && d < 5_000_000_000,
        "duration_ns {d} is the syscall's time: {ev}"
    );
    // The syscall's return value, as the helper saw it (-1 and errno in libc terms).
    let want_ret = match run.num::<i64>("ret") {
        0 => 0,
        _ => -run.num::<i64>("errno"),
    };
    assert_eq!(int(&ev, "ret"), want_ret, "ret is the syscall's: {ev}");
    (run, ev)
}

/// Exactly one connect event per helper run (the cgroup hook must not add a second one).
fn assert_one_connect_each(stopped: &Stopped, runs: &[&HelperRun]) {
    for run in runs {
        let n = stopped
            .of_kind("connect")
            .filter(|e| num(e, "pid") == u64::from(run.pid))
            .count();
        assert_eq!(n, 1, "connect events of helper pid {}", run.pid);
    }
}

#[test]
fn tcp_connect_refused_ipv4() {
    root_or_skip!("tcp_connect_refused_ipv4");
    let port = closed_port("127.0.0.1");
    let m = Monitor::start(&[]);
    let (run, ev) = connect(&m, "connect", "127.0.0.1", port, None);
    assert_eq!(
        run.num::<i32>("errno"),
        libc::ECONNREFUSED,
        "the port is closed"
    );
    assert_eq!(text(&ev, "protocol"), "tcp", "{ev}");
    assert_eq!(text(&ev, "result"), "refused", "{ev}");
    assert_eq!(int(&ev, "ret"), -111, "{ev}");
    let stopped = m.stop();
    stopped.assert_clean();
    assert_one_connect_each(&stopped, &[&run]);
}

#[test]
fn tcp_connect_refused_ipv6() {
    root_or_skip!("tcp_connect_refused_ipv6");
    let port = closed_port("::1");
    let m = Monitor::start(&[]);
    let (run, ev) = connect(&m, "connect", "::1", port, None);
    assert_eq!(
        (text(&ev, "protocol"), text(&ev, "result")),
        ("tcp", "refused"),
        "{ev}"
    );
    assert_eq!(int(&ev, "ret"), -111, "{ev}");
    let stopped = m.stop();
    stopped.assert_clean();
    assert_one_connect_each(&stopped, &[&run]);
}

#[test]
fn tcp_connect_v4_mapped_ipv6() {
    root_or_skip!("tcp_connect_v4_mapped_ipv6");
    let port = closed_port("127.0.0.1");
    let m = Monitor::start(&[]);
    let (run, ev) = connect(&m, "connect", "::ffff:127.0.0.1", port, None);
    assert_eq!(
        (text(&ev, "protocol"), text(&ev, "result")),
        ("tcp", "refused"),
        "{ev}"
    );
    let stopped = m.stop();
    stopped.assert_clean();
    assert_one_connect_each(&stopped, &[&run]);
}

#[test]
fn tcp_connect_accepted() {
    root_or_skip!("tcp_connect_accepted");
    let v4 = TcpListener::bind("127.0.0.1:0").expect("listener on 127.0.0.1");
    let v6 = TcpListener::bind("[::1]:0").expect("listener on ::1");
    let m = Monitor::start(&[]);
    let mut runs = Vec::new();
    for (addr, l) in [("127.0.0.1", &v4), ("::1", &v6)] {
        let port = l.local_addr().expect("addr").port();
        let (run, ev) = connect(&m, "connect", addr, port, None);
        assert_eq!(
            (text(&ev, "protocol"), text(&ev, "result")),
            ("tcp", "success"),
            "{ev}"
        );
        assert_eq!(int(&ev, "ret"), 0, "{ev}");
        runs.push(run);
    }
    // From this test's own thread: pid is the process, tid the thread.
    let port = v4.local_addr().expect("addr").port();
    let stream = std::net::TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .expect("connecting in-process");
    let (pid, tid) = (u64::from(std::process::id()), u64::from(gettid()));
    let ev = m.wait_for("the in-process connect", |e| {
        e["event"] == "connect" && num(e, "pid") == pid && num(e, "dport") == u64::from(port)
    });
    assert_eq!(num(&ev, "tid"), tid, "the connecting thread: {ev}");
    assert_eq!(
        (text(&ev, "result"), int(&ev, "ret")),
        ("success", 0),
        "{ev}"
    );
    drop(stream);
    let stopped = m.stop();
    stopped.assert_clean();
    assert_one_connect_each(&stopped, &runs.iter().collect::<Vec<_>>());
}

#[test]
fn tcp_connect_non_blocking() {
    root_or_skip!("tcp_connect_non_blocking");
    let l = TcpListener::bind("127.0.0.1:0").expect("listener");
    let port = l.local_addr().expect("addr").port();
    let m = Monitor::start(&[]);
    let (run, ev) = connect(&m, "connect", "127.0.0.1", port, Some("nonblock"));
    let want = match (run.num::<i32>("ret"), run.num::<i32>("errno")) {
        (0, _) => "success",
        (_, libc::EINPROGRESS) => "in_progress",
        (r, e) => panic!("unexpected non-blocking connect result ret={r} errno={e}"),
    };
    assert_eq!(
        (text(&ev, "protocol"), text(&ev, "result")),
        ("tcp", want),
        "{ev}"
    );
    let stopped = m.stop();
    stopped.assert_clean();
    assert_one_connect_each(&stopped, &[&run]);
}

#[test]
fn udp_connect() {
    root_or_skip!("udp_connect");
    let port = closed_port("127.0.0.1");
    let m = Monitor::start(&[]);
    let mut runs = Vec::new();
    for addr in ["127.0.0.1", "::1"] {
        let (run, ev) = connect(&m, "udp-connect", addr, port, None);
        assert_eq!(
            (text(&ev, "protocol"), text(&ev, "result")),
            ("udp", "success"),
            "{ev}"
        );
        assert_eq!(int(&ev, "ret"), 0, "{ev}");
        runs.push(run);
    }
    let stopped = m.stop();
    stopped.assert_clean();
    assert_one_connect_each(&stopped, &runs.iter().collect::<Vec<_>>());
}

#[test]
fn connect_refused_before_the_protocol_is_not_reported() {
    root_or_skip!("connect_refused_before_the_protocol_is_not_reported");
    // The destination comes from the cgroup connect hook (no user-memory read at syscall
    // entry): a connect the kernel refuses before the protocol (a bad address length) never
    // reaches the network and is not reported. A later good connect is the positive control.
    let port = closed_port("127.0.0.1");
    let m = Monitor::start(&[]);
    let bad = helper(&["connect", "127.0.0.1", &port.to_string(), "badlen"]);
    bad.assert_success();
    assert_eq!(
        bad.num::<i32>("errno"),
        libc::EINVAL,
        "an address length of 4 is refused"
    );
    let (good, _) = connect(&m, "connect", "127.0.0.1", port, None);
    let stopped = m.stop();
    stopped.assert_clean();
    assert_one_connect_each(&stopped, &[&good]);
    let n = stopped
        .of_kind("connect")
        .filter(|e| num(e, "pid") == u64::from(bad.pid))
        .count();
    assert_eq!(n, 0, "no event for the connect refused before the protocol");
}

#[test]
fn tcp_fast_open_is_seen_by_the_cgroup_hook() {
    root_or_skip!("tcp_fast_open_is_seen_by_the_cgroup_hook");
    // sendto(MSG_FASTOPEN) connects without connect(2): only the cgroup hook sees it.
    check_fast_open(&[]);
}

#[test]
fn a_hook_only_connect_right_after_a_unix_connect_is_reported_at_once() {
    root_or_skip!("a_hook_only_connect_right_after_a_unix_connect_is_reported_at_once");
    // connect(2) on an AF_UNIX socket marks its CPU at entry and never reaches the INET hook;
    // its exit must clear the mark, or the fast-open connect that follows on the same thread
    // and CPU would be taken for a connect(2) and wait for an exit that never comes.
    check_fast_open(&["after-unix-connect"]);
}

fn check_fast_open(options: &[&str]) {
    let port = closed_port("127.0.0.1");
    let m = Monitor::start(&[]);
    let port_s = port.to_string();
    let mut args = vec!["tfo-sendto", "127.0.0.1", &port_s];
    args.extend_from_slice(options);
    let run = helper(&args);
    run.assert_success();
    let pid = u64::from(run.pid);
    let ev = m.wait_for("the fast-open connect", |e| {
        e["event"] == "connect" && num(e, "pid") == pid
    });
    assert_eq!(text(&ev, "source"), "cgroup_hook", "{ev}");
    assert_eq!(text(&ev, "result"), "unknown", "no syscall result: {ev}");
    assert!(ev.get("ret").is_none(), "no ret without a syscall: {ev}");
    assert_eq!(int(&ev, "fd"), -1, "{ev}");
    assert_eq!(
        (text(&ev, "protocol"), text(&ev, "daddr")),
        ("tcp", "127.0.0.1"),
        "{ev}"
    );
    assert_eq!(num(&ev, "dport"), u64::from(port), "{ev}");
    assert_eq!(text(&ev, "comm"), helper_comm(), "{ev}");
    let stopped = m.stop();
    stopped.assert_clean();
    assert_one_connect_each(&stopped, &[&run]);
}

#[test]
fn connect_and_dns_from_a_child_cgroup() {
    root_or_skip!("connect_and_dns_from_a_child_cgroup");
    // The hooks sit on the cgroup v2 root; services live in cgroups below it.
    let cg = Cgroup::new();
    let dir = cg.path().to_str().expect("UTF-8").to_owned();
    let port = closed_port("127.0.0.1");
    let name = format!("cg-{}.rmm-e2e.test", rmm_tests::nonce());
    let m = Monitor::start(&[]);
    let conn = helper(&["in-cgroup", &dir, "connect", "127.0.0.1", &port.to_string()]);
    conn.assert_success();
    let dns = helper(&["in-cgroup", &dir, "dns-sendto", "127.0.0.1", &name, "A"]);
    dns.assert_success();
    let (cpid, dpid) = (u64::from(conn.pid), u64::from(dns.pid));
    let c = m.wait_for("the connect from the child cgroup", |e| {
        e["event"] == "connect" && num(e, "pid") == cpid
    });
    assert_eq!(num(&c, "cgroup_id"), cg.id(), "{c}");
    assert_eq!(
        (text(&c, "protocol"), text(&c, "result")),
        ("tcp", "refused"),
        "the cgroup hook ran too: {c}"
    );
    let d = m.wait_for("the DNS query from the child cgroup", |e| {
        e["event"] == "dns" && num(e, "pid") == dpid
    });
    assert_eq!(num(&d, "cgroup_id"), cg.id(), "{d}");
    assert_eq!(text(&d, "qname"), name, "{d}");
    assert_eq!(num(&d, "txid"), dns.num::<u64>("txid"), "{d}");
    m.stop().assert_clean();
}
