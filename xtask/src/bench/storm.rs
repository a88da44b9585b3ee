//! The four storms and the DNS responder. Each storm prepares what it can before its clock
//! starts (paths, argv, DNS queries, listeners), so the timed loop is the system calls being
//! measured plus a few compares (xtask runs as a debug build).

use std::{
    ffi::CString,
    io,
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        raw::c_char,
        unix::ffi::OsStrExt,
    },
    path::Path,
};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::sys;

/// What one storm did; `ops_per_s` = ops ÷ elapsed, the clock running from the first
/// operation to the end of the last (listeners, queries and argv are made before it starts).
#[derive(Debug, Clone, Default, Serialize)]
pub struct StormResult {
    pub ops: u64,
    pub elapsed_s: f64,
    pub ops_per_s: f64,
    /// Operations that did not do what they should (exec failed, connect neither refused nor
    /// accepted as planned, query without its answer).
    pub errors: u64,
    /// connect: refused by a closed port / accepted by a listener / a closed port that accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accepted: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unexpected_accept: Option<u64>,
    /// dns, dns-mmsg: answers received.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answered: Option<u64>,
    /// Average number of busy CPUs of the whole machine during the storm (/proc/stat): the
    /// storm itself, the daemon, and anything else running (a shared machine's noise).
    pub busy_cpus: Option<f64>,
    /// Other monitors or tracers (comm[pid]) running just before the storm started: their
    /// probes fire on it too.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub other_tracers: Vec<String>,
    /// A side of a round is several storms back to back (`--repeats`): ops/s of each, and the
    /// fastest of them (the one least disturbed by the rest of a shared machine).
    pub runs_ops_per_s: Vec<f64>,
    pub best_ops_per_s: f64,
}

impl StormResult {
    fn timed(ops: u64, t0: f64, errors: u64) -> Self {
        let elapsed_s = sys::now_s() - t0;
        let ops_per_s = if elapsed_s > 0.0 {
            ops as f64 / elapsed_s
        } else {
            0.0
        };
        StormResult {
            ops,
            elapsed_s,
            ops_per_s,
            errors,
            runs_ops_per_s: vec![ops_per_s],
            best_ops_per_s: ops_per_s,
            ..Default::default()
        }
    }

    /// Storms run back to back as one: operations, time and counts summed (so `ops_per_s`
    /// counts all of their time), each one's ops/s kept, the fastest as `best_ops_per_s`.
    pub fn combine(runs: Vec<StormResult>) -> StormResult {
        let add = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
        };
        let mut all = StormResult::default();
        for r in runs {
            all.ops += r.ops;
            all.elapsed_s += r.elapsed_s;
            all.errors += r.errors;
            all.refused = add(all.refused, r.refused);
            all.accepted = add(all.accepted, r.accepted);
            all.unexpected_accept = add(all.unexpected_accept, r.unexpected_accept);
            all.answered = add(all.answered, r.answered);
            all.best_ops_per_s = all.best_ops_per_s.max(r.ops_per_s);
            all.runs_ops_per_s.push(r.ops_per_s);
        }
        if all.elapsed_s > 0.0 {
            all.ops_per_s = all.ops as f64 / all.elapsed_s;
        }
        all
    }
}

/// The longest one storm may run: past it the storm fails rather than hold up the bench.
const STORM_LIMIT_S: f64 = 300.0;

/// Checks, in a storm's loop, for a stop signal and (every 128 operations) the time limit.
struct Limit {
    deadline: f64,
    i: u64,
}

impl Limit {
    fn new(t0: f64) -> Limit {
        Limit {
            deadline: t0 + STORM_LIMIT_S,
            i: 0,
        }
    }

    fn check(&mut self) -> Result<()> {
        sys::check_stop()?;
        self.i += 1;
        if self.i.is_multiple_of(128) && sys::now_s() > self.deadline {
            bail!("the storm ran past its {STORM_LIMIT_S} s limit");
        }
        Ok(())
    }
}

/// The argv[1] marker of exec `i`: `sx<nonce>.<i>`.
pub fn exec_marker(nonce: &str, i: u64) -> String {
    format!("sx{nonce}.{i}")
}

/// The query name of DNS operation `i`: `q<i>.storm-<nonce>.test`.
pub fn dns_name(nonce: &str, i: u64) -> String {
    format!("q{i}.storm-{nonce}.test")
}

fn cstring(s: &[u8]) -> Result<CString> {
    CString::new(s).context("a NUL byte in an exec argument")
}

/// fork + execve(`prog`, [prog, sx<nonce>.<i>]) for i in `first`..`first`+`n`, waiting for
/// each child.
pub fn exec(first: u64, n: u64, prog: &Path, nonce: &str) -> Result<StormResult> {
    let path = cstring(prog.as_os_str().as_bytes())?;
    let markers = (first..first + n)
        .map(|i| cstring(exec_marker(nonce, i).as_bytes()))
        .collect::<Result<Vec<_>>>()?;
    let mut errors = 0;
    let t0 = sys::now_s();
    let mut limit = Limit::new(t0);
    for m in &markers {
        limit.check()?;
        let argv: [*const c_char; 3] = [path.as_ptr(), m.as_ptr(), std::ptr::null()];
        match sys::fork_exec(&path, &argv, None) {
            Ok(pid) => match sys::wait_pid(pid) {
                Ok(st) if sys::exited_ok(st) => {}
                _ => errors += 1,
            },
            Err(_) => errors += 1,
        }
    }
    Ok(StormResult::timed(n, t0, errors))
}

/// Connects `first`..`first`+`n` of a walk over `ports` ports (see `connect_port_index`), TCP
/// to 127.0.0.1:`base`+k. Even k: a closed port (must be refused). Odd k: a port with a
/// listener made before the clock starts; the connection is accepted and both ends closed (the
/// accepted end first).
pub fn connect(first: u64, n: u64, base: u16, ports: u16) -> Result<StormResult> {
    if ports < 2 || u64::from(base) + u64::from(ports) > 65535 {
        bail!(
            "ports {base}..{} do not fit",
            u64::from(base) + u64::from(ports)
        );
    }
    let ports = u64::from(ports);
    sys::ensure_nofile(ports / 2 + 64)?;
    let port = |k: u64| base + u16::try_from(k).expect("checked above");
    let mut listeners = Vec::with_capacity((ports / 2) as usize);
    for k in (1..ports).step_by(2) {
        sys::check_stop()?;
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port(k));
        listeners.push(
            TcpListener::bind(addr)
                .with_context(|| format!("listener on {addr} (is the port in use?)"))?,
        );
    }
    let (mut refused, mut accepted, mut unexpected, mut errors) = (0, 0, 0, 0);
    let t0 = sys::now_s();
    let mut limit = Limit::new(t0);
    for i in first..first + n {
        limit.check()?;
        let k = connect_port_index(i, ports);
        let r = TcpStream::connect(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port(k)));
        if k % 2 == 1 {
            match r {
                Ok(s) => {
                    match listeners[(k / 2) as usize].accept() {
                        Ok((c, _)) => {
                            accepted += 1;
                            drop(c);
                        }
                        Err(_) => errors += 1,
                    }
                    drop(s);
                }
                Err(_) => errors += 1,
            }
        } else {
            match r {
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => refused += 1,
                Ok(_) => unexpected += 1,
                Err(_) => errors += 1,
            }
        }
    }
    let mut res = StormResult::timed(n, t0, errors + unexpected);
    drop(listeners);
    res.refused = Some(refused);
    res.accepted = Some(accepted);
    res.unexpected_accept = Some(unexpected);
    Ok(res)
}

/// Connect `i` of a storm goes to port `base + connect_port_index(i, ports)`: the storm walks
/// the port set again and again, closed (even index) and listening (odd index) in turn.
pub fn connect_port_index(i: u64, ports: u64) -> u64 {
    i % ports
}

/// How many connects of an `n`-connect storm go to port index `k`.
pub fn connects_to_port(n: u64, ports: u64, k: u64) -> u64 {
    n / ports + u64::from(k < n % ports)
}

/// A standard recursive query (RD, one question, class IN) for `name`/`qtype`.
pub fn dns_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(18 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        let len = u8::try_from(label.len()).expect("labels are short");
        assert!(len <= 63, "DNS label too long: {label}");
        q.push(len);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    q
}

const QTYPE_A: u16 = 1;
const QTYPE_AAAA: u16 = 28;

fn query_id(i: u64) -> u16 {
    (i.wrapping_mul(7919).wrapping_add(1) & 0xffff) as u16
}

fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

const SOCKADDR_IN_LEN: libc::socklen_t = size_of::<libc::sockaddr_in>() as libc::socklen_t;

fn udp_socket(flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket has no memory preconditions; the fd is owned from here on.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | flags,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Waits (1 s at most per poll) for a datagram whose id is one of `ids`; skips late answers to
/// earlier queries (at most 16 of them). Returns the id received.
fn wait_answer(fd: RawFd, ids: &[u16]) -> Option<u16> {
    let mut buf = [0u8; 512];
    for _ in 0..16 {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, 1000) } <= 0 {
            return None;
        }
        // SAFETY: buf is valid for its length.
        let got = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if got < 0 {
            let e = io::Error::last_os_error().raw_os_error();
            if e == Some(libc::EAGAIN) || e == Some(libc::EINTR) {
                continue;
            }
            return None;
        }
        if got >= 2 {
            let id = u16::from_be_bytes([buf[0], buf[1]]);
            if ids.contains(&id) {
                return Some(id);
            }
        }
    }
    None
}

/// Fails fast when the first few queries get no answer (the responder is not there), or when
/// 20 in a row get none (it has stopped): each costs a 1 s timeout.
fn no_responder(answered: u64, consecutive_fail: u32, server: SocketAddrV4) -> Result<()> {
    if (answered == 0 && consecutive_fail >= 3) || consecutive_fail >= 20 {
        bail!("no answer from the DNS responder on {server} ({consecutive_fail} queries in a row)");
    }
    Ok(())
}

/// `n` queries (A, `q<i>.storm-<nonce>.test`, i from `first`) by sendto on one unconnected
/// UDP socket, each answered before the next goes out, as a stub resolver does.
pub fn dns_sendto(first: u64, n: u64, server: SocketAddrV4, nonce: &str) -> Result<StormResult> {
    let queries: Vec<(u16, Vec<u8>)> = (first..first + n)
        .map(|i| {
            (
                query_id(i),
                dns_query(query_id(i), &dns_name(nonce, i), QTYPE_A),
            )
        })
        .collect();
    let sa = sockaddr(server);
    let sock = udp_socket(0).context("UDP socket")?;
    let fd = sock.as_raw_fd();
    let (mut errors, mut answered, mut consecutive_fail) = (0u64, 0u64, 0u32);
    let t0 = sys::now_s();
    let mut limit = Limit::new(t0);
    for (id, q) in &queries {
        limit.check()?;
        // SAFETY: q and sa are valid for the lengths given.
        let sent = unsafe {
            libc::sendto(
                fd,
                q.as_ptr().cast(),
                q.len(),
                0,
                (&raw const sa).cast(),
                SOCKADDR_IN_LEN,
            )
        };
        if sent != q.len() as isize {
            errors += 1;
            continue;
        }
        if wait_answer(fd, &[*id]).is_some() {
            answered += 1;
            consecutive_fail = 0;
        } else {
            errors += 1;
            consecutive_fail += 1;
            no_responder(answered, consecutive_fail, server)?;
        }
    }
    let mut res = StormResult::timed(n, t0, errors);
    res.answered = Some(answered);
    Ok(res)
}

/// What glibc's resolver does per lookup, `n` queries in all (n/2 lookups, i from `first`):
/// socket, connect to the server, sendmmsg of two queries with no msg_name (A for q<i>, AAAA
/// for q<i+1>), read the two answers (either order), close.
pub fn dns_mmsg(first: u64, n: u64, server: SocketAddrV4, nonce: &str) -> Result<StormResult> {
    let n = n + n % 2;
    let lookups: Vec<[(u16, Vec<u8>); 2]> = (first..first + n)
        .step_by(2)
        .map(|i| {
            [
                (
                    query_id(i),
                    dns_query(query_id(i), &dns_name(nonce, i), QTYPE_A),
                ),
                (
                    query_id(i + 1),
                    dns_query(query_id(i + 1), &dns_name(nonce, i + 1), QTYPE_AAAA),
                ),
            ]
        })
        .collect();
    let sa = sockaddr(server);
    let (mut errors, mut answered, mut consecutive_fail) = (0u64, 0u64, 0u32);
    let t0 = sys::now_s();
    let mut limit = Limit::new(t0);
    for pair in &lookups {
        limit.check()?;
        let Ok(sock) = udp_socket(libc::SOCK_NONBLOCK) else {
            errors += 2;
            continue;
        };
        let fd = sock.as_raw_fd();
        // SAFETY: sa is valid for its length.
        if unsafe { libc::connect(fd, (&raw const sa).cast(), SOCKADDR_IN_LEN) } != 0 {
            errors += 2;
            continue;
        }
        let mut iov = [
            libc::iovec {
                iov_base: pair[0].1.as_ptr() as *mut _,
                iov_len: pair[0].1.len(),
            },
            libc::iovec {
                iov_base: pair[1].1.as_ptr() as *mut _,
                iov_len: pair[1].1.len(),
            },
        ];
        // SAFETY: mmsghdr is plain data; zeroed means no name, no control data, no flags.
        let mut msgs: [libc::mmsghdr; 2] = unsafe { std::mem::zeroed() };
        for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
            m.msg_hdr.msg_iov = v;
            m.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: msgs and the iovecs they point to outlive the call; the kernel only reads
        // the buffers (sendmmsg) and writes msg_len.
        let sent = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), 2, libc::MSG_NOSIGNAL) };
        let sent = u64::try_from(sent).unwrap_or(0);
        errors += 2 - sent;
        let ids = [pair[0].0, pair[1].0];
        let got = (0..sent)
            .take_while(|_| wait_answer(fd, &ids).is_some())
            .count() as u64;
        answered += got;
        if got < sent {
            errors += sent - got;
            consecutive_fail += 1;
            no_responder(answered, consecutive_fail, server)?;
        } else {
            consecutive_fail = 0;
        }
        drop(sock);
    }
    let mut res = StormResult::timed(n, t0, errors);
    res.answered = Some(answered);
    Ok(res)
}

/// A DNS responder in a forked child process, pinned to `cpu`: answers every query with
/// NXDOMAIN (the question echoed, QR and RA set). Killed when dropped, and by the kernel
/// (PR_SET_PDEATHSIG) if the bench dies first.
pub struct Responder {
    pid: libc::pid_t,
}

impl Responder {
    pub fn start(addr: SocketAddrV4, cpu: Option<usize>) -> Result<Responder> {
        let sock = udp_socket(0).context("responder socket")?;
        let sa = sockaddr(addr);
        let fd = sock.as_raw_fd();
        // SAFETY: sa is valid for its length.
        if unsafe { libc::bind(fd, (&raw const sa).cast(), SOCKADDR_IN_LEN) } != 0 {
            bail!(
                "the DNS responder cannot bind {addr}: {} (is another resolver there?)",
                io::Error::last_os_error()
            );
        }
        let big: libc::c_int = 1 << 20;
        // SAFETY: big is a valid int option value.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&raw const big).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        // SAFETY: cpu_set_t is plain data.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        if let Some(c) = cpu {
            // SAFETY: set is a valid cpu_set_t; CPU_SET ignores CPUs beyond its size.
            unsafe { libc::CPU_SET(c, &mut set) };
        }
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        // SAFETY: the child runs only system calls on its stack and on values prepared here,
        // and never returns into Rust code.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: as above; the child ends only by a signal.
            unsafe { responder_child(fd, parent, cpu.map(|_| set)) }
        }
        if pid < 0 {
            bail!("fork of the DNS responder: {}", io::Error::last_os_error());
        }
        drop(sock);
        Ok(Responder { pid })
    }
}

/// The responder's loop. Only raw system calls: it runs in a child forked from a process that
/// may have other threads.
unsafe fn responder_child(fd: RawFd, parent: libc::pid_t, cpu: Option<libc::cpu_set_t>) -> ! {
    // SAFETY: (the whole body) system calls on valid stack memory.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() != parent {
            libc::_exit(0);
        }
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::signal(sig, libc::SIG_DFL);
        }
        if let Some(set) = cpu {
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
        }
        let mut buf = [0u8; 1500];
        loop {
            let mut from: libc::sockaddr_in = std::mem::zeroed();
            let mut flen = SOCKADDR_IN_LEN;
            let n = libc::recvfrom(
                fd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&raw mut from).cast(),
                &mut flen,
            );
            if n < 12 {
                continue;
            }
            buf[2] = 0x80 | (buf[2] & 0x01);
            buf[3] = 0x83;
            libc::sendto(
                fd,
                buf.as_ptr().cast(),
                n as usize,
                0,
                (&raw const from).cast(),
                flen,
            );
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        // SAFETY: pid is our child, not yet reaped.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        let _ = sys::wait_pid(self.pid);
    }
}
