//! rmm-probe-helper: makes the precise syscalls the end-to-end tests need and prints what it
//! did as `key=value` lines (fds, errnos, transaction ids, source ports, child pids).
//!
//! Network safety: every destination must be a loopback address (127.0.0.0/8, ::1, or
//! ::ffff:127.x.y.z); anything else is refused before a socket is made. `getaddrinfo` runs in
//! a private mount namespace with its own resolv.conf, so glibc never sees the machine's.

use std::{
    ffi::{CString, c_char, c_int},
    io::Write,
    net::{IpAddr, SocketAddr},
    process::ExitCode,
};

use rmm_tests::dnswire;

/// `MFD_EXEC` (Linux 6.3): an executable memfd, stated explicitly.
const MFD_EXEC: libc::c_uint = 0x10;

type Res<T> = Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        eprintln!(
            "usage: rmm-probe-helper [in-cgroup DIR] COMMAND ARGS.. (see the source for the list)"
        );
        return ExitCode::from(2);
    };
    let result = dispatch(cmd, rest);
    let _ = std::io::stdout().flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rmm-probe-helper {cmd}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cmd: &str, rest: &[String]) -> Res<()> {
    match cmd {
        "in-cgroup" => cmd_in_cgroup(rest),
        "exit" => cmd_exit(rest),
        "exit-signal" => cmd_exit_signal(rest),
        "execveat" => cmd_execveat(rest),
        "memfd-exec" => cmd_memfd_exec(rest),
        "exec-deleted" => cmd_exec_deleted(rest),
        "thread-exec" => cmd_thread_exec(rest),
        "threads" => cmd_threads(rest),
        "burst" => cmd_burst(rest),
        "connect" => cmd_connect(rest, libc::SOCK_STREAM),
        "udp-connect" => cmd_connect(rest, libc::SOCK_DGRAM),
        "tfo-sendto" => cmd_tfo_sendto(rest),
        "dns-sendto" => cmd_dns_sendto(rest),
        "dns-connected-send" => cmd_dns_connected_send(rest),
        "dns-sendmmsg" => cmd_dns_sendmmsg(rest),
        "dns-burst" => cmd_dns_burst(rest),
        "dns-raw-socket" => cmd_dns_raw_socket(rest),
        "getaddrinfo" => cmd_getaddrinfo(rest),
        "wait-file" => cmd_wait_file(rest),
        "child" => cmd_child(rest),
        "connect-exec" => cmd_connect_exec(rest),
        "raw-udp" => cmd_raw_udp(rest),
        "fork-storm" => cmd_fork_storm(rest),
        "connect-burst" => cmd_connect_burst(rest),
        "on-cpu" => cmd_on_cpu(rest),
        other => Err(format!("unknown command {other:?}")),
    }
}

/// `in-cgroup DIR COMMAND ARGS..`: moves the helper into the cgroup v2 directory DIR, then
/// runs COMMAND.
fn cmd_in_cgroup(rest: &[String]) -> Res<()> {
    let dir = arg(rest, 0, "DIR")?;
    let cmd = arg(rest, 1, "COMMAND")?;
    std::fs::write(
        format!("{dir}/cgroup.procs"),
        std::process::id().to_string(),
    )
    .map_err(|e| format!("joining cgroup {dir}: {e}"))?;
    dispatch(cmd, &rest[2..])
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn os_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

fn arg<'a>(rest: &'a [String], i: usize, name: &str) -> Res<&'a str> {
    rest.get(i)
        .map(String::as_str)
        .ok_or_else(|| format!("missing argument {name}"))
}

fn cstr(s: &str) -> Res<CString> {
    CString::new(s).map_err(|_| format!("{s:?} contains a NUL"))
}

/// Owned C strings plus the NULL-terminated pointer array execve wants.
struct CVec {
    _owned: Vec<CString>,
    ptrs: Vec<*const c_char>,
}

impl CVec {
    fn new<S: AsRef<str>>(items: &[S]) -> Res<CVec> {
        let owned = items
            .iter()
            .map(|s| cstr(s.as_ref()))
            .collect::<Res<Vec<_>>>()?;
        let mut ptrs: Vec<*const c_char> = owned.iter().map(|c| c.as_ptr()).collect();
        ptrs.push(std::ptr::null());
        Ok(CVec {
            _owned: owned,
            ptrs,
        })
    }

    fn as_ptr(&self) -> *const *const c_char {
        self.ptrs.as_ptr()
    }
}

fn min_env() -> Res<CVec> {
    CVec::new(&["PATH=/usr/bin:/bin"])
}

/// A destination the helper may talk to: loopback only, or a v4-mapped loopback.
fn loopback(addr: &str) -> Res<IpAddr> {
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an IP address"))?;
    let ok = match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    };
    if !ok {
        return Err(format!(
            "{ip} is not a loopback address: refusing to send anything there"
        ));
    }
    Ok(ip)
}

fn port(s: &str) -> Res<u16> {
    s.parse().map_err(|_| format!("{s:?} is not a port"))
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all zeroes is a valid (AF_UNSPEC) value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&raw mut ss).cast::<libc::sockaddr_in>(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&raw mut ss).cast::<libc::sockaddr_in6>(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// A socket fd closed on drop.
struct Sock(c_int);

impl Sock {
    fn new(ip: IpAddr, ty: c_int) -> Res<Sock> {
        Sock::with_protocol(ip, ty, 0)
    }

    fn with_protocol(ip: IpAddr, ty: c_int, protocol: c_int) -> Res<Sock> {
        let family = if ip.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        // SAFETY: plain syscall.
        let fd = unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC, protocol) };
        if fd < 0 {
            return Err(os_err("socket"));
        }
        Ok(Sock(fd))
    }

    /// connect(2); returns (ret, errno).
    fn connect(&self, to: SocketAddr) -> (c_int, i32) {
        let (ss, len) = sockaddr(to);
        // SAFETY: ss is a valid sockaddr of length len.
        let ret = unsafe { libc::connect(self.0, (&raw const ss).cast(), len) };
        (ret, if ret < 0 { errno() } else { 0 })
    }

    fn local_port(&self) -> Res<u16> {
        // SAFETY: zeroed sockaddr_storage is valid; getsockname writes at most len bytes.
        let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: as above.
        if unsafe { libc::getsockname(self.0, (&raw mut ss).cast(), &mut len) } != 0 {
            return Err(os_err("getsockname"));
        }
        // SAFETY: the family field tells which struct the kernel wrote.
        let port = unsafe {
            match c_int::from(ss.ss_family) {
                libc::AF_INET => (*(&raw const ss).cast::<libc::sockaddr_in>()).sin_port,
                _ => (*(&raw const ss).cast::<libc::sockaddr_in6>()).sin6_port,
            }
        };
        Ok(u16::from_be(port))
    }

    fn sendto(&self, buf: &[u8], to: SocketAddr) -> Res<()> {
        let (ss, len) = sockaddr(to);
        // SAFETY: buf and ss are valid for their lengths.
        let n = unsafe {
            libc::sendto(
                self.0,
                buf.as_ptr().cast(),
                buf.len(),
                0,
                (&raw const ss).cast(),
                len,
            )
        };
        if n != buf.len() as isize {
            return Err(os_err("sendto"));
        }
        Ok(())
    }
}

impl Drop for Sock {
    fn drop(&mut self) {
        // SAFETY: our own fd.
        unsafe { libc::close(self.0) };
    }
}

fn random_u16() -> u16 {
    let mut b = [0u8; 2];
    // SAFETY: the buffer is valid for 2 bytes.
    unsafe { libc::getrandom(b.as_mut_ptr().cast(), 2, 0) };
    u16::from_ne_bytes(b)
}

fn cmd_exit(rest: &[String]) -> Res<()> {
    let code: i32 = arg(rest, 0, "CODE")?
        .parse()
        .map_err(|_| "CODE is not a number")?;
    std::process::exit(code)
}

fn cmd_exit_signal(rest: &[String]) -> Res<()> {
    let sig: c_int = arg(rest, 0, "SIGNAL")?
        .parse()
        .map_err(|_| "SIGNAL is not a number")?;
    // SAFETY: restoring the default disposition, then raising; the process dies here.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
    Err(format!("still alive after raising signal {sig}"))
}

/// Forks; the child runs `exec` and `_exit(127)`s if it returns. Prints `child=PID` and the
/// child's wait status; fails unless it exited 0.
fn fork_exec(exec: impl FnOnce()) -> Res<()> {
    // SAFETY: the helper is single-threaded; the child only calls exec and _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(os_err("fork"));
    }
    if pid == 0 {
        exec();
        // SAFETY: leaving the child without running the parent's destructors.
        unsafe { libc::_exit(127) };
    }
    println!("child={pid}");
    let mut status = 0;
    // SAFETY: waiting for our own child.
    if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
        return Err(os_err("waitpid"));
    }
    println!("status={status}");
    if status != 0 {
        return Err(format!(
            "the child's wait status is {status} (127<<8: exec failed)"
        ));
    }
    Ok(())
}

/// `execveat DIR NAME ARGV..`: execveat(dirfd of DIR, NAME, ARGV, env, 0) in a child.
fn cmd_execveat(rest: &[String]) -> Res<()> {
    let dir = cstr(arg(rest, 0, "DIR")?)?;
    let name = cstr(arg(rest, 1, "NAME")?)?;
    let argv = CVec::new(&rest[2..])?;
    let envp = min_env()?;
    // SAFETY: a valid path; the fd is the helper's own.
    let dirfd = unsafe { libc::open(dir.as_ptr(), libc::O_PATH | libc::O_DIRECTORY) };
    if dirfd < 0 {
        return Err(os_err("open DIR"));
    }
    println!("dirfd={dirfd}");
    fork_exec(|| {
        // SAFETY: valid NUL-terminated strings and NULL-terminated arrays.
        unsafe {
            libc::syscall(
                libc::SYS_execveat,
                dirfd,
                name.as_ptr(),
                argv.as_ptr(),
                envp.as_ptr(),
                0,
            )
        };
    })
}

/// `memfd-exec SRC MEMFD_NAME ARGV..`: copies SRC into a memfd and runs it with
/// execveat(memfd, "", .., AT_EMPTY_PATH) in a child.
fn cmd_memfd_exec(rest: &[String]) -> Res<()> {
    let image = std::fs::read(arg(rest, 0, "SRC")?).map_err(|e| format!("reading SRC: {e}"))?;
    let name = cstr(arg(rest, 1, "MEMFD_NAME")?)?;
    let argv = CVec::new(&rest[2..])?;
    let envp = min_env()?;
    // SAFETY: a valid name; plain syscall.
    let mut fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | MFD_EXEC) };
    if fd < 0 && errno() == libc::EINVAL {
        // SAFETY: as above, for kernels before MFD_EXEC.
        fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    }
    if fd < 0 {
        return Err(os_err("memfd_create"));
    }
    let mut off = 0;
    while off < image.len() {
        // SAFETY: the slice is valid for its length.
        let n = unsafe { libc::write(fd, image[off..].as_ptr().cast(), image.len() - off) };
        if n <= 0 {
            return Err(os_err("writing the memfd"));
        }
        off += n as usize;
    }
    println!("memfd={fd}");
    let empty = c"";
    fork_exec(|| {
        // SAFETY: valid strings and arrays; AT_EMPTY_PATH executes the fd itself.
        unsafe {
            libc::syscall(
                libc::SYS_execveat,
                fd,
                empty.as_ptr(),
                argv.as_ptr(),
                envp.as_ptr(),
                libc::AT_EMPTY_PATH,
            )
        };
    })
}

/// `exec-deleted PATH ARGV..`: opens PATH, unlinks it, then runs the open file with
/// execveat(fd, "", .., AT_EMPTY_PATH) in a child.
fn cmd_exec_deleted(rest: &[String]) -> Res<()> {
    let path = cstr(arg(rest, 0, "PATH")?)?;
    let argv = CVec::new(&rest[1..])?;
    let envp = min_env()?;
    // SAFETY: a valid path.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY) };
    if fd < 0 {
        return Err(os_err("open PATH"));
    }
    // SAFETY: a valid path.
    if unsafe { libc::unlink(path.as_ptr()) } != 0 {
        return Err(os_err("unlink PATH"));
    }
    println!("fd={fd}");
    let empty = c"";
    fork_exec(|| {
        // SAFETY: valid strings and arrays.
        unsafe {
            libc::syscall(
                libc::SYS_execveat,
                fd,
                empty.as_ptr(),
                argv.as_ptr(),
                envp.as_ptr(),
                libc::AT_EMPTY_PATH,
            )
        };
    })
}

/// `thread-exec PATH ARGV..`: a second thread of the helper calls execve; the kernel makes
/// it the thread group leader first.
fn cmd_thread_exec(rest: &[String]) -> Res<()> {
    let path = cstr(arg(rest, 0, "PATH")?)?;
    let argv = CVec::new(&rest[1..])?;
    let envp = min_env()?;
    println!("leader={}", std::process::id());
    let _ = std::io::stdout().flush();
    let (path_p, argv_p, envp_p) = (
        path.as_ptr() as usize,
        argv.as_ptr() as usize,
        envp.as_ptr() as usize,
    );
    let t = std::thread::spawn(move || {
        // SAFETY: the pointers stay valid: the main thread owns them and blocks in join.
        unsafe {
            libc::execve(
                path_p as *const c_char,
                argv_p as *const *const c_char,
                envp_p as *const *const c_char,
            )
        };
        os_err("execve from a thread")
    });
    Err(t
        .join()
        .unwrap_or_else(|_| "the exec thread panicked".into()))
}

/// `threads N CODE`: starts N threads (no fork events expected), then the last one calls
/// exit(CODE) while the others still run: the whole group dies with that code.
fn cmd_threads(rest: &[String]) -> Res<()> {
    let n: usize = arg(rest, 0, "N")?
        .parse()
        .map_err(|_| "N is not a number")?;
    let code: i32 = arg(rest, 1, "CODE")?
        .parse()
        .map_err(|_| "CODE is not a number")?;
    let done = std::sync::Arc::new(std::sync::Barrier::new(n + 1));
    let mut handles = Vec::new();
    for _ in 0..n {
        let d = done.clone();
        handles.push(std::thread::spawn(move || {
            d.wait();
        }));
    }
    done.wait();
    for h in handles {
        let _ = h.join();
    }
    println!("threads={n}");
    let _ = std::io::stdout().flush();
    let d = std::sync::Arc::new(std::sync::Barrier::new(2));
    let d2 = d.clone();
    std::thread::spawn(move || {
        d2.wait();
        std::process::exit(code);
    });
    d.wait();
    loop {
        std::thread::park();
    }
}

/// `burst N PATH ARGV..`: forks N children at once, child i runs PATH with ARGV + [i]; then
/// reaps them all. Prints `issued=N` and `failed=F`.
fn cmd_burst(rest: &[String]) -> Res<()> {
    let n: usize = arg(rest, 0, "N")?
        .parse()
        .map_err(|_| "N is not a number")?;
    let path = cstr(arg(rest, 1, "PATH")?)?;
    let argvs = (0..n)
        .map(|i| {
            let mut a: Vec<String> = rest[2..].to_vec();
            a.push(i.to_string());
            CVec::new(&a)
        })
        .collect::<Res<Vec<_>>>()?;
    let envp = min_env()?;
    let mut pids = Vec::with_capacity(n);
    for argv in &argvs {
        // SAFETY: single-threaded; the child only calls execve and _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: valid strings and arrays.
            unsafe {
                libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
                libc::_exit(127);
            }
        }
        if pid < 0 {
            return Err(os_err("fork"));
        }
        pids.push(pid);
    }
    let mut failed = 0;
    for pid in pids {
        let mut status = 0;
        // SAFETY: waiting for our own child.
        if unsafe { libc::waitpid(pid, &mut status, 0) } != pid || status != 0 {
            failed += 1;
        }
    }
    println!("issued={n}");
    println!("failed={failed}");
    Ok(())
}

/// `connect ADDR PORT [nonblock|badlen]` / `udp-connect ADDR PORT`: one connect(2); prints
/// fd, ret and errno. `badlen` passes an address length of 4, which the protocol refuses
/// (EINVAL) before the cgroup hook runs. A refused connect is a result, not a failure.
fn cmd_connect(rest: &[String], ty: c_int) -> Res<()> {
    let ip = loopback(arg(rest, 0, "ADDR")?)?;
    let to = SocketAddr::new(ip, port(arg(rest, 1, "PORT")?)?);
    let (nonblock, badlen) = match rest.get(2).map(String::as_str) {
        None => (0, false),
        Some("nonblock") => (libc::SOCK_NONBLOCK, false),
        Some("badlen") => (0, true),
        Some(o) => return Err(format!("unknown option {o:?}")),
    };
    let s = Sock::new(ip, ty | nonblock)?;
    let (ret, e) = if badlen {
        let (ss, _) = sockaddr(to);
        // SAFETY: ss is valid for more than the 4 bytes passed.
        let ret = unsafe { libc::connect(s.0, (&raw const ss).cast(), 4) };
        (ret, if ret < 0 { errno() } else { 0 })
    } else {
        s.connect(to)
    };
    println!("fd={}", s.0);
    println!("ret={ret}");
    println!("errno={e}");
    Ok(())
}

/// `tfo-sendto ADDR PORT [after-unix-connect]`: sendto(MSG_FASTOPEN) on an unconnected TCP
/// socket: the kernel connects without connect(2), so only the cgroup connect hook sees it.
/// With `after-unix-connect`, pinned to one CPU, a connect(2) on an AF_UNIX socket (to a path
/// that does not exist: it never reaches an INET hook) comes just before.
fn cmd_tfo_sendto(rest: &[String]) -> Res<()> {
    let ip = loopback(arg(rest, 0, "ADDR")?)?;
    let to = SocketAddr::new(ip, port(arg(rest, 1, "PORT")?)?);
    match rest.get(2).map(String::as_str) {
        None => {}
        Some("after-unix-connect") => unix_connect_pinned()?,
        Some(o) => return Err(format!("unknown option {o:?}")),
    }
    let s = Sock::new(ip, libc::SOCK_STREAM)?;
    let (ss, len) = sockaddr(to);
    let data = b"x";
    // SAFETY: data and ss are valid for their lengths.
    let ret = unsafe {
        libc::sendto(
            s.0,
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_FASTOPEN,
            (&raw const ss).cast(),
            len,
        )
    };
    println!("fd={}", s.0);
    println!("ret={ret}");
    println!("errno={}", if ret < 0 { errno() } else { 0 });
    Ok(())
}

/// Pins the process to the CPU it runs on, then connect(2)s an AF_UNIX socket to a path that
/// does not exist (ENOENT).
fn unix_connect_pinned() -> Res<()> {
    // SAFETY: sched_getcpu has no preconditions; cpu_set_t is plain data.
    unsafe {
        let cpu = libc::sched_getcpu();
        if cpu < 0 {
            return Err(os_err("sched_getcpu"));
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(os_err("sched_setaffinity"));
        }
    }
    // SAFETY: a plain socket call; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(os_err("socket(AF_UNIX)"));
    }
    // SAFETY: sockaddr_un is plain data.
    let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in sun
        .sun_path
        .iter_mut()
        .zip(b"/nonexistent/rmm-probe-helper.sock")
    {
        *d = *s as libc::c_char;
    }
    // SAFETY: sun is valid for its length.
    let ret = unsafe {
        libc::connect(
            fd,
            (&raw const sun).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    let e = errno();
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    if ret == 0 || e != libc::ENOENT {
        return Err(format!(
            "the AF_UNIX connect should fail with ENOENT: {ret}, errno {e}"
        ));
    }
    Ok(())
}

/// `dns-sendto ADDR NAME QTYPE [PADDING]`: one query with sendto(2) on an unconnected socket.
fn cmd_dns_sendto(rest: &[String]) -> Res<()> {
    let ip = loopback(arg(rest, 0, "ADDR")?)?;
    let name = arg(rest, 1, "NAME")?;
    let qtype = dnswire::parse_type(arg(rest, 2, "QTYPE")?).ok_or("unknown QTYPE")?;
    let padding: usize = match rest.get(3) {
        Some(p) => p.parse().map_err(|_| "PADDING is not a number")?,
        None => 0,
    };
    let s = Sock::new(ip, libc::SOCK_DGRAM)?;
    let txid = random_u16();
    let q = dnswire::query(txid, name, qtype, padding);
    s.sendto(&q, SocketAddr::new(ip, 53))?;
    println!("txid={txid}");
    println!("sport={}", s.local_port()?);
    println!("len={}", q.len());
    Ok(())
}

/// `dns-burst ADDR NAME N`: N A queries for NAME (txids 0..N) from one socket, as fast as
/// sendto goes. Prints `sent`.
fn cmd_dns_burst(rest: &[String]) -> Res<()> {
    let ip = loopback(arg(rest, 0, "ADDR")?)?;
    let name = arg(rest, 1, "NAME")?;
    let n: u16 = arg(rest, 2, "N")?
        .parse()
        .map_err(|_| "N is not a number")?;
    let s = Sock::new(ip, libc::SOCK_DGRAM)?;
    for id in 0..n {
        s.sendto(
            &dnswire::query(id, name, dnswire::TYPE_A, 0),
            SocketAddr::new(ip, 53),
        )?;
    }
    println!("sent={n}");
    Ok(())
}

/// `dns-raw-socket ADDR NAME SPORT`: an A query in a UDP header written by hand, sent on a
/// SOCK_RAW/IPPROTO_UDP socket (IPv4; the kernel adds the IP header). Prints `txid`.
fn cmd_dns_raw_socket(rest: &[String]) -> Res<()> {
    let ip = loopback(arg(rest, 0, "ADDR")?)?;
    if !ip.is_ipv4() {
        return Err("IPv4 only".into());
    }
    let name = arg(rest, 1, "NAME")?;
    let sport = port(arg(rest, 2, "SPORT")?)?;
    let txid = random_u16();
    let q = dnswire::query(txid, name, dnswire::TYPE_A, 0);
    let len = u16::try_from(8 + q.len()).map_err(|_| "query too long")?;
    let mut dgram = Vec::with_capacity(usize::from(len));
    dgram.extend_from_slice(&sport.to_be_bytes());
    dgram.extend_from_slice(&53u16.to_be_bytes());
    dgram.extend_from_slice(&len.to_be_bytes());
    dgram.extend_from_slice(&[0, 0]); // no checksum (allowed over IPv4)
    dgram.extend_from_slice(&q);
    let s = Sock::with_protocol(ip, libc::SOCK_RAW, libc::IPPROTO_UDP)?;
    s.sendto(&dgram, SocketAddr::new(ip, 0))?;
    println!("txid={txid}");
    Ok(())
}

fn connected_udp(ip: IpAddr, port: u16) -> Res<Sock> {
    let s = Sock::new(ip, libc::SOCK_DGRAM)?;
    match s.connect(SocketAddr::new(ip, port)) {
        (0, _) => Ok(s),
        (_, e) => Err(format!("connect: errno {e}")),
    }
}

/// `dns-connected-send ADDR NAME`: connects a UDP socket to ADDR:53, then one A query with
/// send(2) and one with write(2). Prints `txid_send`, `txid_write` and `sport`.
fn cmd_dns_connected_send(rest: &[String]) -> Res<()> {
    let ip = loopback(arg(rest, 0, "ADDR")?)?;
    let name = arg(rest, 1, "NAME")?;
    let s = connected_udp(ip, 53)?;
    let (t1, t2) = (random_u16(), random_u16());
    let q1 = dnswire::query(t1, name, dnswire::TYPE_A, 0);
    // SAFETY: the buffer is valid for its length.
    if unsafe { libc::send(s.0, q1.as_ptr().cast(), q1.len(), 0) } != q1.len() as isize {
        return Err(os_err("send"));
    }
    let q2 = dnswire::query(t2, name, dnswire::TYPE_A, 0);
    // SAFETY: as above.
    if unsafe { libc::write(s.0, q2.as_ptr().cast(), q2.len()) } != q2.len() as isize {
        return Err(os_err("write"));
    }
    println!("txid_send={t1}");
    println!("txid_write={t2}");
    println!("sport={}", s.local_port()?);
    Ok(())
}

/// `dns-sendmmsg ADDR NAME`: as glibc does: a connected UDP socket, then one sendmmsg(2) of
/// an A and an AAAA query without msg_name. Prints `txid_a`, `txid_aaaa`, `sport`, `sent`.
fn cmd_dns_sendmmsg(rest: &[String]) -> Res<()> {
    let ip = loopback(arg(rest, 0, "ADDR")?)?;
    let name = arg(rest, 1, "NAME")?;
    let s = connected_udp(ip, 53)?;
    let (ta, t6) = (random_u16(), random_u16());
    let qa = dnswire::query(ta, name, dnswire::TYPE_A, 0);
    let q6 = dnswire::query(t6, name, dnswire::TYPE_AAAA, 0);
    let mut iov = [
        libc::iovec {
            iov_base: qa.as_ptr() as *mut _,
            iov_len: qa.len(),
        },
        libc::iovec {
            iov_base: q6.as_ptr() as *mut _,
            iov_len: q6.len(),
        },
    ];
    // SAFETY: mmsghdr is plain data; zeroed means no name, no control data.
    let mut msgs: [libc::mmsghdr; 2] = unsafe { std::mem::zeroed() };
    for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
        m.msg_hdr.msg_iov = v;
        m.msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: two valid mmsghdr whose iovecs point at live buffers.
    let sent = unsafe { libc::sendmmsg(s.0, msgs.as_mut_ptr(), 2, 0) };
    if sent != 2 {
        return Err(format!(
            "sendmmsg sent {sent} of 2: {}",
            std::io::Error::last_os_error()
        ));
    }
    println!("txid_a={ta}");
    println!("txid_aaaa={t6}");
    println!("sport={}", s.local_port()?);
    println!("sent={sent}");
    Ok(())
}

/// `raw-udp ADDR PORT HEX..`: one datagram per HEX argument (`-` is an empty payload).
fn cmd_raw_udp(rest: &[String]) -> Res<()> {
    let ip = loopback(arg(rest, 0, "ADDR")?)?;
    let to = SocketAddr::new(ip, port(arg(rest, 1, "PORT")?)?);
    let payloads = rest[2..]
        .iter()
        .map(|h| {
            if h == "-" {
                Some(Vec::new())
            } else {
                dnswire::from_hex(h)
            }
        })
        .collect::<Option<Vec<_>>>()
        .ok_or("a payload is not hex")?;
    let s = Sock::new(ip, libc::SOCK_DGRAM)?;
    for p in &payloads {
        s.sendto(p, to)?;
    }
    println!("sent={}", payloads.len());
    println!("sport={}", s.local_port()?);
    Ok(())
}

/// `getaddrinfo RESOLVER_IP NAME [then|then-child COMMAND ARGS..]`: in a private mount
/// namespace, bind-mounts a resolv.conf naming only RESOLVER_IP (loopback) over
/// /etc/resolv.conf, checks that glibc will read exactly that, then resolves NAME (AF_UNSPEC,
/// no AI_ADDRCONFIG: A and AAAA are asked). With `then`, the same process runs COMMAND next;
/// with `then-child`, a forked child does.
fn cmd_getaddrinfo(rest: &[String]) -> Res<()> {
    let resolver = loopback(arg(rest, 0, "RESOLVER_IP")?)?;
    let name = cstr(arg(rest, 1, "NAME")?)?;
    let conf = format!("nameserver {resolver}\noptions attempts:1 timeout:1\n");
    private_resolv_conf(&conf)?;
    let now = std::fs::read_to_string("/etc/resolv.conf")
        .map_err(|e| format!("re-reading resolv.conf: {e}"))?;
    if now != conf {
        return Err(format!(
            "/etc/resolv.conf is not ours after the bind mount: {now:?}"
        ));
    }
    // SAFETY: addrinfo is plain data; zeroed is "no constraints".
    let mut hints: libc::addrinfo = unsafe { std::mem::zeroed() };
    hints.ai_family = libc::AF_UNSPEC;
    hints.ai_socktype = libc::SOCK_STREAM;
    let mut res: *mut libc::addrinfo = std::ptr::null_mut();
    // SAFETY: valid name and hints; res is freed below.
    let rc = unsafe { libc::getaddrinfo(name.as_ptr(), std::ptr::null(), &hints, &mut res) };
    println!("rc={rc}");
    if rc != 0 {
        // SAFETY: gai_strerror returns a static string.
        let msg = unsafe { std::ffi::CStr::from_ptr(libc::gai_strerror(rc)) };
        return Err(format!("getaddrinfo: {}", msg.to_string_lossy()));
    }
    let mut cur = res;
    while !cur.is_null() {
        // SAFETY: a node of the list getaddrinfo returned.
        let ai = unsafe { &*cur };
        // SAFETY: ai_addr points at a sockaddr of the family ai_family.
        let ip: IpAddr = unsafe {
            match ai.ai_family {
                libc::AF_INET => {
                    let sin = &*ai.ai_addr.cast::<libc::sockaddr_in>();
                    IpAddr::from(sin.sin_addr.s_addr.to_ne_bytes())
                }
                _ => IpAddr::from((*ai.ai_addr.cast::<libc::sockaddr_in6>()).sin6_addr.s6_addr),
            }
        };
        println!("addr={ip}");
        cur = ai.ai_next;
    }
    // SAFETY: the list from getaddrinfo, freed once.
    unsafe { libc::freeaddrinfo(res) };
    match rest.get(2).map(String::as_str) {
        None => Ok(()),
        // The same process goes on with another command (a connect to what was resolved).
        Some("then") => {
            let cmd = arg(rest, 3, "COMMAND")?;
            dispatch(cmd, &rest[4..])
        }
        // A forked child goes on with it (`child=PID`): a descendant of the resolver.
        Some("then-child") => cmd_child(&rest[3..]),
        Some(o) => Err(format!("unknown option {o:?} (then, then-child)")),
    }
}

/// `child COMMAND ARGS..`: a forked child runs COMMAND without exec (`child=PID`), as a
/// script's forked worker does: it has its parent's executable and arguments.
fn cmd_child(rest: &[String]) -> Res<()> {
    let cmd = arg(rest, 0, "COMMAND")?.to_string();
    let args = rest[1..].to_vec();
    let _ = std::io::stdout().flush();
    fork_exec(move || {
        let code = match dispatch(&cmd, &args) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("rmm-probe-helper {cmd} (child): {e}");
                1
            }
        };
        let _ = std::io::stdout().flush();
        // SAFETY: leaving the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    })
}

/// `connect-exec ADDR PORT PATH`: a TCP connect to ADDR:PORT, then at once execv(PATH) in
/// the same process: the connect belongs to the image before the exec.
fn cmd_connect_exec(rest: &[String]) -> Res<()> {
    let ip = loopback(arg(rest, 0, "ADDR")?)?;
    let to = SocketAddr::new(ip, port(arg(rest, 1, "PORT")?)?);
    let path = cstr(arg(rest, 2, "PATH")?)?;
    let s = Sock::new(ip, libc::SOCK_STREAM)?;
    let (ret, e) = s.connect(to);
    println!("ret={ret}");
    println!("errno={e}");
    let _ = std::io::stdout().flush();
    let argv = [path.as_ptr(), std::ptr::null()];
    // SAFETY: a valid path and a NULL-terminated argv; on success it does not return.
    unsafe { libc::execv(path.as_ptr(), argv.as_ptr()) };
    Err(os_err("execv"))
}

/// `wait-file PATH COMMAND ARGS..`: waits (30 s at most) until PATH exists, then runs COMMAND:
/// a test acts on the daemon between two steps of one process.
fn cmd_wait_file(rest: &[String]) -> Res<()> {
    let path = std::path::Path::new(arg(rest, 0, "PATH")?);
    let cmd = arg(rest, 1, "COMMAND")?;
    let started = std::time::Instant::now();
    println!("waiting={}", path.display());
    let _ = std::io::stdout().flush();
    while !path.exists() {
        if started.elapsed() > std::time::Duration::from_secs(30) {
            return Err(format!("{} did not appear within 30 s", path.display()));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    dispatch(cmd, &rest[2..])
}

fn private_resolv_conf(conf: &str) -> Res<()> {
    // SAFETY: plain syscalls with valid strings; the helper is single-threaded (unshare of
    // the mount namespace needs that).
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(os_err("unshare(CLONE_NEWNS)"));
        }
        if libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return Err(os_err("making / private"));
        }
    }
    let tmp = std::env::temp_dir().join(format!("rmm-resolv-{}.conf", std::process::id()));
    std::fs::write(&tmp, conf).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    let src = cstr(&tmp.to_string_lossy())?;
    // SAFETY: valid strings; a bind mount in our private namespace only.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            c"/etc/resolv.conf".as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    let err = os_err("bind-mounting over /etc/resolv.conf");
    // The mount keeps the file alive; the name is not needed any more.
    let _ = std::fs::remove_file(&tmp);
    if rc != 0 {
        return Err(err);
    }
    Ok(())
}

/// `fork-storm TOTAL HOLD`: forks HOLD children that stay alive (each blocked reading a pipe),
/// prints `held=HOLD`, then forks the rest of TOTAL one after the other, each exiting at once
/// and reaped, and prints `stormed=N`. Then it waits for a line on stdin, closes the pipe (the
/// held children exit), reaps them and prints `released=HOLD`.
fn cmd_fork_storm(rest: &[String]) -> Res<()> {
    let total: usize = arg(rest, 0, "TOTAL")?
        .parse()
        .map_err(|_| "TOTAL is not a number")?;
    let hold: usize = arg(rest, 1, "HOLD")?
        .parse()
        .map_err(|_| "HOLD is not a number")?;
    if hold > total {
        return Err("HOLD is more than TOTAL".into());
    }
    let mut fds = [0 as c_int; 2];
    // SAFETY: a valid array of two fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(os_err("pipe2"));
    }
    let (rd, wr) = (fds[0], fds[1]);
    let _ = std::io::stdout().flush();
    let mut held = Vec::with_capacity(hold);
    for _ in 0..hold {
        // SAFETY: the child only makes async-signal-safe calls (close, read, _exit).
        match unsafe { libc::fork() } {
            -1 => return Err(os_err(&format!("fork after {} held", held.len()))),
            0 => unsafe {
                libc::close(wr);
                let mut b = 0u8;
                libc::read(rd, (&raw mut b).cast(), 1);
                libc::_exit(0);
            },
            pid => held.push(pid),
        }
    }
    println!("held={}", held.len());
    let _ = std::io::stdout().flush();
    let mut stormed = 0usize;
    for _ in hold..total {
        // SAFETY: the child exits at once.
        match unsafe { libc::fork() } {
            -1 => return Err(os_err(&format!("fork after {stormed} short-lived"))),
            0 => unsafe { libc::_exit(0) },
            pid => {
                // SAFETY: reaping our own child.
                unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
                stormed += 1;
            }
        }
    }
    println!("stormed={stormed}");
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| format!("reading stdin: {e}"))?;
    // SAFETY: our own fds; the held children see EOF and exit.
    unsafe {
        libc::close(wr);
        libc::close(rd);
    }
    for pid in &held {
        // SAFETY: reaping our own children.
        unsafe { libc::waitpid(*pid, std::ptr::null_mut(), 0) };
    }
    println!("released={}", held.len());
    Ok(())
}

/// `connect-burst ADDR PORT N`: N UDP connects to ADDR:PORT, each on a new socket, as fast as
/// they go (no packet is sent). Prints `connected=N`.
fn cmd_connect_burst(rest: &[String]) -> Res<()> {
    let ip = loopback(arg(rest, 0, "ADDR")?)?;
    let to = SocketAddr::new(ip, port(arg(rest, 1, "PORT")?)?);
    let n: usize = arg(rest, 2, "N")?
        .parse()
        .map_err(|_| "N is not a number")?;
    for i in 0..n {
        let s = Sock::new(ip, libc::SOCK_DGRAM)?;
        let (ret, e) = s.connect(to);
        if ret != 0 {
            return Err(format!("connect {i} of {n}: errno {e}"));
        }
    }
    println!("connected={n}");
    Ok(())
}

/// `on-cpu CPU COMMAND ARGS..`: runs COMMAND in this process, pinned to CPU (modulo the CPUs
/// this process may use).
fn cmd_on_cpu(rest: &[String]) -> Res<()> {
    let cpu: usize = arg(rest, 0, "CPU")?
        .parse()
        .map_err(|_| "CPU is not a number")?;
    let cmd = arg(rest, 1, "COMMAND")?;
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the calls get valid pointers.
    unsafe {
        let mut allowed: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut allowed) != 0 {
            return Err(os_err("sched_getaffinity"));
        }
        let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
            .filter(|c| libc::CPU_ISSET(*c, &allowed))
            .collect();
        let Some(&chosen) = cpus.get(cpu % cpus.len().max(1)) else {
            return Err("no CPU allowed".into());
        };
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(chosen, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(os_err("sched_setaffinity"));
        }
        println!("cpu={chosen}");
    }
    dispatch(cmd, &rest[2..])
}
