//! exec, fork and exit events: the filename as passed, the resolved executable, argv and its
//! limits, ppid, and the execveat and memfd paths.

use std::{os::unix::process::CommandExt, path::Path, process::Command};

use rmm_tests::{
    Monitor, Mount, TempDir, Value, args, comm_of, flags, gettid, monotonic_ns, nonce, num,
    own_cgroup_id, text,
};

use crate::{helper, helper_comm, root_or_skip};

/// Runs a command to completion; it must exit 0. Returns its pid.
fn run_ok(cmd: &mut Command) -> u32 {
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let pid = child.id();
    let status = child.wait().expect("waiting for the child");
    assert!(status.success(), "{cmd:?} failed: {status}");
    pid
}

fn is_exec_of(ev: &Value, filename: &str) -> bool {
    ev["event"] == "exec" && ev["filename"] == filename
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// Field 22 of /proc/self/stat: this process's start in clock ticks since boot.
fn own_start_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("own stat");
    let rest = &stat[stat.rfind(')').expect("a comm") + 1..];
    rest.split_whitespace()
        .nth(19)
        .and_then(|t| t.parse().ok())
        .expect("a start time")
}

fn own_tick_ns() -> u64 {
    // SAFETY: sysconf has no preconditions.
    1_000_000_000 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64
}

/// The fields every exec event of a direct child of the test process must have.
fn assert_child_exec(ev: &Value, pid: u32, comm: &str) {
    assert_eq!(num(ev, "pid"), u64::from(pid), "pid: {ev}");
    assert_eq!(
        num(ev, "tid"),
        u64::from(pid),
        "tid of a single-threaded exec: {ev}"
    );
    assert_eq!(
        num(ev, "ppid"),
        u64::from(std::process::id()),
        "ppid is the test process: {ev}"
    );
    assert_eq!((num(ev, "uid"), num(ev, "gid")), (0, 0), "uid/gid: {ev}");
    assert_eq!(text(ev, "comm"), comm, "comm: {ev}");
    assert_eq!(num(ev, "cgroup_id"), own_cgroup_id(), "cgroup_id: {ev}");
}

#[test]
fn exec_by_absolute_path_with_fork_and_exit() {
    root_or_skip!("exec_by_absolute_path_with_fork_and_exit");
    let dir = TempDir::new("abs");
    let name = format!("true-{}", nonce());
    let exe = dir.copy_executable("/usr/bin/true", &name);
    let exe = path_str(&exe);
    let m = Monitor::start(&[]);
    let extra = ["first", "with space", "", "ünïcode", "last"];
    let before = monotonic_ns();
    let pid = run_ok(Command::new(exe).args(extra));
    let after = monotonic_ns();

    let ev = m.wait_for("exec of the copied true", |e| is_exec_of(e, exe));
    assert_child_exec(&ev, pid, &comm_of(&name));
    assert_eq!(text(&ev, "executable"), exe, "{ev}");
    let mut want = vec![exe.to_owned()];
    want.extend(extra.iter().map(|s| s.to_string()));
    assert_eq!(
        args(&ev),
        want,
        "argv, empty and non-ASCII arguments kept: {ev}"
    );
    assert_eq!(ev["args_truncated"], false, "{ev}");
    assert!(flags(&ev).is_empty(), "no flags: {ev}");
    let ts = num(&ev, "ts_ns");
    assert!(
        (before..=after).contains(&ts),
        "ts_ns {ts} is CLOCK_MONOTONIC within [{before}, {after}]"
    );

    let fork = m.wait_for("fork of that child", |e| {
        e["event"] == "fork" && num(e, "child_pid") == u64::from(pid)
    });
    assert_eq!(
        num(&fork, "pid"),
        u64::from(std::process::id()),
        "the test process forked: {fork}"
    );
    assert_eq!(
        num(&fork, "tid"),
        u64::from(gettid()),
        "by this thread: {fork}"
    );
    assert!(num(&fork, "ts_ns") <= ts, "fork before exec: {fork}");
    // Every record names its process by pid and start: the child's start is the same in its
    // fork, exec and exit; the parent (this process) starts when /proc says it did.
    let start = num(&ev, "start_ns");
    assert!(start > 0 && start <= ts, "start_ns of the exec: {ev}");
    assert_eq!(num(&fork, "child_start_ns"), start, "{fork}\n{ev}");
    assert_eq!(
        num(&ev, "parent_start_ns"),
        num(&fork, "start_ns"),
        "{fork}\n{ev}"
    );
    assert_eq!(
        num(&fork, "start_ns") / own_tick_ns(),
        own_start_ticks(),
        "the test process's start, to the tick of /proc/self/stat: {fork}"
    );
    let exit = m.wait_for("exit of that child", |e| {
        e["event"] == "exit" && num(e, "pid") == u64::from(pid)
    });
    assert_eq!(num(&exit, "start_ns"), start, "{exit}");
    assert_eq!(num(&exit, "exit_code"), 0, "{exit}");
    assert_eq!(text(&exit, "comm"), comm_of(&name), "{exit}");
    assert!(num(&exit, "ts_ns") >= ts, "exit after exec: {exit}");
    m.stop().assert_clean();
}

#[test]
fn exec_through_a_symlinked_directory() {
    root_or_skip!("exec_through_a_symlinked_directory");
    // /bin is a symlink to usr/bin on Debian: the kernel resolves it, the filename keeps it.
    let real = std::fs::canonicalize("/bin/true").expect("/bin/true exists");
    let marker = format!("marker-{}", nonce());
    let m = Monitor::start(&[]);
    let pid = run_ok(Command::new("/bin/true").arg(&marker));
    let ev = m.wait_for("exec of /bin/true", |e| {
        e["event"] == "exec" && e["args"][1] == marker.as_str()
    });
    assert_child_exec(&ev, pid, "true");
    assert_eq!(text(&ev, "filename"), "/bin/true", "{ev}");
    assert_eq!(text(&ev, "executable"), path_str(&real), "{ev}");
    assert_eq!(args(&ev), vec!["/bin/true".to_owned(), marker.clone()]);
    m.stop().assert_clean();
}

#[test]
fn exec_by_relative_path() {
    root_or_skip!("exec_by_relative_path");
    let dir = TempDir::new("rel");
    let name = format!("rel-{}", nonce());
    let exe = dir.copy_executable("/usr/bin/true", &name);
    let rel = format!("./{name}");
    let m = Monitor::start(&[]);
    let pid = run_ok(Command::new(&rel).arg("x").current_dir(dir.path()));
    let ev = m.wait_for("exec of the relative path", |e| is_exec_of(e, &rel));
    assert_child_exec(&ev, pid, &comm_of(&name));
    assert_eq!(
        text(&ev, "executable"),
        path_str(&exe),
        "resolved against the cwd: {ev}"
    );
    assert_eq!(args(&ev), vec![rel.clone(), "x".into()]);
    m.stop().assert_clean();
}

#[test]
fn exec_via_a_symlink() {
    root_or_skip!("exec_via_a_symlink");
    let dir = TempDir::new("link");
    let n = nonce();
    let real = dir.copy_executable("/usr/bin/true", &format!("real-{n}"));
    let link = dir.path().join(format!("link-{n}"));
    std::os::unix::fs::symlink(format!("real-{n}"), &link).expect("symlink");
    let m = Monitor::start(&[]);
    let pid = run_ok(Command::new(&link).arg0("argv0-is-free"));
    let ev = m.wait_for("exec of the symlink", |e| is_exec_of(e, path_str(&link)));
    assert_child_exec(&ev, pid, &comm_of(&format!("link-{n}")));
    assert_eq!(
        text(&ev, "executable"),
        path_str(&real),
        "the link's target: {ev}"
    );
    assert_eq!(
        args(&ev),
        vec!["argv0-is-free".to_owned()],
        "argv[0] as set by the caller: {ev}"
    );
    m.stop().assert_clean();
}

#[test]
fn exec_argument_count_limit() {
    root_or_skip!("exec_argument_count_limit");
    let dir = TempDir::new("many");
    let exe = dir.copy_executable("/usr/bin/true", &format!("many-{}", nonce()));
    let exe = path_str(&exe);
    let m = Monitor::start(&[]);
    // argv of 16 (all kept), 17 and 40 (16 kept, truncated).
    for total in [16usize, 17, 40] {
        let extra: Vec<String> = (1..total).map(|i| format!("t{total}-a{i}")).collect();
        let pid = run_ok(Command::new(exe).args(&extra));
        let ev = m.wait_for(&format!("exec with {total} args"), |e| {
            is_exec_of(e, exe) && num(e, "pid") == u64::from(pid)
        });
        let mut full = vec![exe.to_owned()];
        full.extend(extra);
        let got = args(&ev);
        assert_eq!(got.len(), 16.min(total), "{total} args: {ev}");
        assert_eq!(
            got,
            full[..16.min(total)],
            "{total} args: the first ones, in order: {ev}"
        );
        assert_eq!(ev["args_truncated"], total > 16, "{total} args: {ev}");
    }
    m.stop().assert_clean();
}

#[test]
fn exec_argument_bytes_limit() {
    root_or_skip!("exec_argument_bytes_limit");
    let dir = TempDir::new("long");
    let exe = dir.copy_executable("/usr/bin/true", &format!("long-{}", nonce()));
    let exe = path_str(&exe);
    // The argv block is argv[0]\0argv[1]\0...; the kernel side copies 1024 bytes of it.
    let head = exe.len() + 1;
    let m = Monitor::start(&[]);
    let cases: [(&str, Vec<String>); 3] = [
        ("exactly 1024 bytes", vec!["x".repeat(1024 - head - 1)]),
        (
            "1025 bytes (the last NUL cut)",
            vec!["y".repeat(1024 - head)],
        ),
        (
            "1.2 KiB over two args",
            vec!["A".repeat(600), "B".repeat(600)],
        ),
    ];
    for (what, extra) in cases {
        let pid = run_ok(Command::new(exe).args(&extra));
        let ev = m.wait_for(what, |e| {
            is_exec_of(e, exe) && num(e, "pid") == u64::from(pid)
        });
        let got = args(&ev);
        assert_eq!(got[0], exe, "{what}: {ev}");
        assert!(
            !flags(&ev).contains(&"args_error".to_owned()),
            "{what}: {ev}"
        );
        match what {
            "exactly 1024 bytes" => {
                assert_eq!(got[1..], extra[..], "{what}: all kept");
                assert_eq!(ev["args_truncated"], false, "{what}: {ev}");
            }
            "1025 bytes (the last NUL cut)" => {
                assert_eq!(got[1..], extra[..], "{what}: the argument itself is whole");
                assert_eq!(ev["args_truncated"], true, "{what}: {ev}");
            }
            _ => {
                let kept_b = 1024 - head - 601;
                assert_eq!(got.len(), 3, "{what}: {ev}");
                assert_eq!(got[1], extra[0], "{what}");
                assert_eq!(got[2], "B".repeat(kept_b), "{what}: cut at byte 1024");
                assert_eq!(ev["args_truncated"], true, "{what}: {ev}");
            }
        }
    }
    m.stop().assert_clean();
}

#[test]
fn exec_through_execveat_with_a_dirfd() {
    root_or_skip!("exec_through_execveat_with_a_dirfd");
    let dir = TempDir::new("at");
    let name = format!("at-{}", nonce());
    let exe = dir.copy_executable("/usr/bin/true", &name);
    let m = Monitor::start(&[]);
    let run = helper(&[
        "execveat",
        path_str(dir.path()),
        &name,
        "at-argv0",
        "one",
        "two",
    ]);
    run.assert_success();
    let (child, dirfd): (u64, i32) = (run.num("child"), run.num("dirfd"));
    let ev = m.wait_for("exec through execveat", |e| {
        e["event"] == "exec" && num(e, "pid") == child
    });
    assert_eq!(
        num(&ev, "ppid"),
        u64::from(run.pid),
        "the helper forked it: {ev}"
    );
    // For a dirfd-relative execveat the kernel names the file /dev/fd/N/NAME.
    assert_eq!(
        text(&ev, "filename"),
        format!("/dev/fd/{dirfd}/{name}"),
        "{ev}"
    );
    assert_eq!(text(&ev, "executable"), path_str(&exe), "{ev}");
    assert_eq!(args(&ev), vec!["at-argv0", "one", "two"], "{ev}");
    assert_eq!(text(&ev, "comm"), comm_of(&name), "{ev}");
    assert!(flags(&ev).is_empty(), "{ev}");
    let fork = m.wait_for("the helper's fork", |e| {
        e["event"] == "fork" && num(e, "child_pid") == child
    });
    assert_eq!(num(&fork, "pid"), u64::from(run.pid), "{fork}");
    assert_eq!(text(&fork, "comm"), helper_comm(), "{fork}");
    m.stop().assert_clean();
}

#[test]
fn exec_of_a_memfd() {
    root_or_skip!("exec_of_a_memfd");
    let name = format!("rmm-{}", nonce());
    let m = Monitor::start(&[]);
    let run = helper(&["memfd-exec", "/usr/bin/true", &name, "fileless", "--flag"]);
    run.assert_success();
    let (child, memfd): (u64, i32) = (run.num("child"), run.num("memfd"));
    let ev = m.wait_for("exec of the memfd", |e| {
        e["event"] == "exec" && num(e, "pid") == child
    });
    assert_eq!(num(&ev, "ppid"), u64::from(run.pid), "{ev}");
    assert_eq!(
        text(&ev, "filename"),
        format!("/dev/fd/{memfd}"),
        "fexecve's name: {ev}"
    );
    assert_eq!(
        text(&ev, "executable"),
        format!("memfd:{name}"),
        "the memfd's own name: {ev}"
    );
    assert_eq!(
        flags(&ev),
        vec!["path_detached"],
        "no path on any mount: {ev}"
    );
    assert_eq!(args(&ev), vec!["fileless", "--flag"], "{ev}");
    assert_eq!(ev["args_truncated"], false, "{ev}");
    m.stop().assert_clean();
}

#[test]
fn exit_codes_are_wait_statuses() {
    root_or_skip!("exit_codes_are_wait_statuses");
    let m = Monitor::start(&[]);
    let code = helper(&["exit", "7"]);
    assert_eq!(code.status.code(), Some(7));
    let killed = helper(&["exit-signal", "9"]);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&killed.status),
        Some(9)
    );
    for (run, want, what) in [(&code, 7u64 << 8, "exit(7)"), (&killed, 9, "SIGKILL")] {
        let pid = u64::from(run.pid);
        let ev = m.wait_for(what, |e| e["event"] == "exit" && num(e, "pid") == pid);
        assert_eq!(num(&ev, "exit_code"), want, "{what}: {ev}");
        assert_eq!(text(&ev, "comm"), helper_comm(), "{what}: {ev}");
        let exec = m.wait_for(what, |e| e["event"] == "exec" && num(e, "pid") == pid);
        assert_eq!(num(&exec, "ppid"), u64::from(std::process::id()), "{exec}");
        assert_eq!(
            text(&exec, "executable"),
            path_str(crate::helper_bin()),
            "{exec}"
        );
    }
    m.stop().assert_clean();
}

#[test]
fn exec_of_a_script() {
    root_or_skip!("exec_of_a_script");
    let dir = TempDir::new("script");
    let name = format!("script-{}.sh", nonce());
    let script = dir.path().join(&name);
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").expect("writing the script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let sh = std::fs::canonicalize("/bin/sh").expect("/bin/sh exists");
    let script = path_str(&script);
    let m = Monitor::start(&[]);
    let pid = run_ok(Command::new(script).arg("s-arg"));
    let ev = m.wait_for("exec of the script", |e| is_exec_of(e, script));
    assert_child_exec(&ev, pid, &comm_of(&name));
    assert_eq!(
        text(&ev, "executable"),
        path_str(&sh),
        "the interpreter runs: {ev}"
    );
    assert_eq!(
        args(&ev),
        vec!["/bin/sh", script, "s-arg"],
        "argv as the kernel rewrote it: {ev}"
    );
    m.stop().assert_clean();
}

#[test]
fn exec_across_mounts() {
    root_or_skip!("exec_across_mounts");
    // ext4 (/tmp) -> a tmpfs of ours -> a bind mount of a directory inside it.
    let dir = TempDir::new("mnt");
    let outer = dir.path().join("outer");
    std::fs::create_dir(&outer).expect("mkdir");
    let _tmpfs = Mount::tmpfs(&outer);
    let (real, bindpoint) = (outer.join("real"), outer.join("bindpoint"));
    std::fs::create_dir(&real).expect("mkdir");
    std::fs::create_dir(&bindpoint).expect("mkdir");
    let _bind = Mount::bind(&real, &bindpoint);
    // A second tmpfs stacked on a first one: the lower mount's root is the upper's mountpoint.
    let stacked = outer.join("stacked");
    std::fs::create_dir(&stacked).expect("mkdir");
    let _lower = Mount::tmpfs(&stacked);
    let _upper = Mount::tmpfs(&stacked);
    let name = format!("mnt-{}", nonce());
    let staging = TempDir::new("mnt-src");
    let src = staging.copy_executable("/usr/bin/true", &name);
    std::fs::copy(&src, real.join(&name)).expect("copy into the tmpfs");
    std::fs::copy(&src, stacked.join(&name)).expect("copy into the stacked tmpfs");
    let on_tmpfs = real.join(&name);
    let via_bind = bindpoint.join(&name);
    let on_stacked = stacked.join(&name);
    let m = Monitor::start(&[]);
    for p in [&on_tmpfs, &via_bind, &on_stacked] {
        let p = path_str(p);
        let pid = run_ok(&mut Command::new(p));
        let ev = m.wait_for(&format!("exec of {p}"), |e| is_exec_of(e, p));
        assert_child_exec(&ev, pid, &comm_of(&name));
        assert_eq!(
            text(&ev, "executable"),
            p,
            "the path through the mounts it was run from: {ev}"
        );
        assert!(flags(&ev).is_empty(), "{ev}");
    }
    m.stop().assert_clean();
}

#[test]
fn exec_filename_length_limit() {
    root_or_skip!("exec_filename_length_limit");
    let dir = TempDir::new("fname");
    // Pad a subdirectory so that <dir>/<sub>/t255 is exactly 255 bytes.
    let base = path_str(dir.path()).len() + 1;
    let sub = dir.path().join("d".repeat(255 - base - 1 - 4));
    std::fs::create_dir(&sub).expect("mkdir");
    let src = TempDir::new("fname-src");
    let true_copy = src.copy_executable("/usr/bin/true", "t");
    let exact = sub.join("t255");
    let long = sub.join(format!("t{}", "x".repeat(60)));
    for p in [&exact, &long] {
        std::fs::copy(&true_copy, p).expect("copy");
    }
    assert_eq!(path_str(&exact).len(), 255);
    let m = Monitor::start(&[]);
    for (p, cut) in [(&exact, false), (&long, true)] {
        let p = path_str(p);
        let pid = run_ok(&mut Command::new(p));
        let ev = m.wait_for(&format!("exec of a {}-byte filename", p.len()), |e| {
            e["event"] == "exec" && num(e, "pid") == u64::from(pid)
        });
        let shown = if cut { &p[..255] } else { p };
        assert_eq!(text(&ev, "filename"), shown, "{ev}");
        assert_eq!(
            flags(&ev).contains(&"filename_truncated".to_owned()),
            cut,
            "{ev}"
        );
        assert_eq!(
            text(&ev, "executable"),
            p,
            "the resolved path is not cut: {ev}"
        );
    }
    m.stop().assert_clean();
}

#[test]
fn exec_path_limits() {
    root_or_skip!("exec_path_limits");
    let dir = TempDir::new("deep");
    let src = TempDir::new("deep-src");
    let name = format!("deep-{}", nonce());
    let true_copy = src.copy_executable("/usr/bin/true", &name);
    // 45 components: more than the 40 walked. 3 components of 200 bytes: more than 512 bytes.
    let mut deep = dir.path().to_path_buf();
    for _ in 0..45 {
        deep.push("d");
    }
    let mut wide = dir.path().to_path_buf();
    for c in ["a", "b", "c"] {
        wide.push(c.repeat(200));
    }
    for d in [&deep, &wide] {
        std::fs::create_dir_all(d).expect("mkdir -p");
        std::fs::copy(&true_copy, d.join(&name)).expect("copy");
    }
    let m = Monitor::start(&[]);
    for (d, what) in [(&deep, "45 levels deep"), (&wide, "longer than 512 bytes")] {
        let p = d.join(&name);
        let pid = run_ok(&mut Command::new(&p));
        let ev = m.wait_for(what, |e| {
            e["event"] == "exec" && num(e, "pid") == u64::from(pid)
        });
        let exe = text(&ev, "executable");
        assert!(
            flags(&ev).contains(&"path_truncated".to_owned()),
            "{what}: {ev}"
        );
        // The leaf side is kept, and what is shown is a true suffix of the real path.
        assert!(
            path_str(&p).ends_with(exe.trim_start_matches('/')),
            "{what}: {exe} is not a suffix of the path"
        );
        assert!(exe.ends_with(&format!("/{name}")), "{what}: {ev}");
        assert!(
            exe.len() > name.len() + 1,
            "{what}: some directories are kept: {ev}"
        );
    }
    m.stop().assert_clean();
}

#[test]
fn exec_from_a_second_thread() {
    root_or_skip!("exec_from_a_second_thread");
    let marker = format!("thr-{}", nonce());
    let m = Monitor::start(&[]);
    let run = helper(&["thread-exec", "/usr/bin/true", "true", &marker]);
    run.assert_success();
    let leader: u64 = run.num("leader");
    assert_eq!(leader, u64::from(run.pid));
    let ev = m.wait_for("exec from a thread", |e| {
        e["event"] == "exec" && e["args"][1] == marker.as_str()
    });
    // The kernel turns the exec'ing thread into the group leader before the event.
    assert_eq!((num(&ev, "pid"), num(&ev, "tid")), (leader, leader), "{ev}");
    assert_eq!(num(&ev, "ppid"), u64::from(std::process::id()), "{ev}");
    assert_eq!(text(&ev, "executable"), "/usr/bin/true", "{ev}");
    m.stop().assert_clean();
}

#[test]
fn threads_are_neither_forks_nor_exits() {
    root_or_skip!("threads_are_neither_forks_nor_exits");
    let m = Monitor::start(&[]);
    let run = helper(&["threads", "4", "5"]);
    assert_eq!(run.status.code(), Some(5), "{run:?}");
    assert_eq!(run.num::<u32>("threads"), 4);
    let pid = u64::from(run.pid);
    let exit = m.wait_for("the helper's exit", |e| {
        e["event"] == "exit" && num(e, "pid") == pid
    });
    assert_eq!(
        num(&exit, "exit_code"),
        5 << 8,
        "exit(5) from a secondary thread: {exit}"
    );
    let stopped = m.stop();
    stopped.assert_clean();
    let me = u64::from(std::process::id());
    assert!(
        stopped
            .of_kind("fork")
            .any(|e| num(e, "pid") == me && num(e, "child_pid") == pid),
        "the helper's own fork is reported"
    );
    let forks: Vec<&Value> = stopped
        .of_kind("fork")
        .filter(|e| num(e, "pid") == pid)
        .collect();
    assert!(forks.is_empty(), "threads reported as forks: {forks:?}");
    assert_eq!(
        stopped
            .of_kind("exit")
            .filter(|e| num(e, "pid") == pid)
            .count(),
        1,
        "one exit per process"
    );
}

#[test]
fn exec_of_an_unlinked_file_is_marked() {
    root_or_skip!("exec_of_an_unlinked_file_is_marked");
    let dir = TempDir::new("unlinked");
    let name = format!("gone-{}", nonce());
    let exe = dir.copy_executable("/usr/bin/true", &name);
    let m = Monitor::start(&[]);
    let run = helper(&["exec-deleted", path_str(&exe), "gone", "arg"]);
    run.assert_success();
    let child: u64 = run.num("child");
    let ev = m.wait_for("exec of the unlinked file", |e| {
        e["event"] == "exec" && num(e, "pid") == child
    });
    assert_eq!(
        text(&ev, "filename"),
        format!("/dev/fd/{}", run.get("fd")),
        "{ev}"
    );
    assert_eq!(args(&ev), vec!["gone", "arg"], "{ev}");
    assert!(!exe.exists(), "the file is gone while it runs");
    // /proc/PID/exe says "(deleted)"; rmm-common documents PATH_DETACHED for "an unlinked
    // file". An exec of a file that no longer exists must not look like a file on disk.
    let exe_shown = text(&ev, "executable");
    let marked = flags(&ev)
        .iter()
        .any(|f| f == "path_detached" || f.contains("deleted"))
        || exe_shown.ends_with(" (deleted)");
    assert!(
        marked,
        "the exec of an unlinked file shows as {exe_shown:?} with flags {:?}: {ev}",
        flags(&ev)
    );
    m.stop().assert_clean();
}
