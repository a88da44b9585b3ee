//! Least privilege once the probes are attached. Capabilities belong to threads, not to the
//! process, so each thread gives up what its part never needs: the main thread right after the
//! attach, the processor and the workers (sinks, dpkg index) as they start. What stays:
//!
//! - `CAP_BPF`: the drop and filter counters read every stats interval and at the stop, and the
//!   stage flush (`BPF_PROG_TEST_RUN` of `flush_stage` on each CPU). On kernels before 6.5 with
//!   unprivileged BPF disabled (Debian's default) every `bpf(2)` command needs it, even on a map
//!   the daemon already holds.
//! - `CAP_SYS_PTRACE`: `/proc/PID/exe` of processes of other users (the ptrace access check) in
//!   the seeding, the reconciliation after lost records and the naming of a signal's sender.
//! - `CAP_DAC_READ_SEARCH`, in the processor only and only where granted (containers; the unit
//!   does not): cgroup id to path by `open_by_handle_at`.
//!
//! Everything else goes, from the permitted set (so it cannot be raised again) and, where the
//! daemon may change it (`CAP_SETPCAP`, as root outside the unit), from the bounding set;
//! the inheritable and ambient sets are emptied and `no_new_privs` is set. Attaching
//! (`CAP_PERFMON`, `CAP_NET_ADMIN`), raising RLIMIT_MEMLOCK (`CAP_SYS_RESOURCE`) and anything a
//! privileged container grants are needed before the attach only. Rules reloads, the alert
//! sinks and the metrics endpoint need no capability at all.

use anyhow::{Context, Result, bail};

pub const CAP_SETPCAP: u32 = 8;
pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

pub const CAP_DAC_READ_SEARCH: u32 = 2;

/// What the main thread keeps: kernel maps and `/proc`.
pub const RUNTIME: u64 = (1 << CAP_BPF) | (1 << CAP_SYS_PTRACE);
/// What the processor keeps: the same, and `CAP_DAC_READ_SEARCH` where it was granted (a
/// container): `open_by_handle_at`, the O(1) cgroup id to path lookup for a process that has
/// exited (without it, or under the unit's syscall filter, the hierarchy is walked instead).
pub const PROCESSOR: u64 = RUNTIME | (1 << CAP_DAC_READ_SEARCH);
/// What the workers that only write alerts or read world-readable files keep.
pub const NONE: u64 = 0;

/// Names of capabilities by bit (include/uapi/linux/capability.h).
const NAMES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// `CAP_X, CAP_Y` for a mask (unknown bits by number).
pub fn names(mask: u64) -> String {
    let v: Vec<String> = (0..64)
        .filter(|b| mask & (1u64 << b) != 0)
        .map(|b| {
            NAMES
                .get(b as usize)
                .map_or_else(|| format!("cap{b}"), |n| (*n).to_string())
        })
        .collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// [`names`], or `N capabilities` when there are more than a line holds.
pub fn count_or_names(mask: u64) -> String {
    match mask.count_ones() {
        0..=6 => names(mask),
        n => format!("{n} capabilities"),
    }
}

/// One thread's capability sets, as 64-bit masks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sets {
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
}

#[repr(C)]
struct Header {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// _LINUX_CAPABILITY_VERSION_3: two 32-bit words per set.
const VERSION_3: u32 = 0x2008_0522;

/// The calling thread's sets.
pub fn current() -> Result<Sets> {
    let mut hdr = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget(2) writes two Data words for version 3; both are ours.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("capget");
    }
    let join = |lo: u32, hi: u32| u64::from(lo) | (u64::from(hi) << 32);
    Ok(Sets {
        effective: join(data[0].effective, data[1].effective),
        permitted: join(data[0].permitted, data[1].permitted),
        inheritable: join(data[0].inheritable, data[1].inheritable),
    })
}

fn set(s: Sets) -> Result<()> {
    let mut hdr = Header {
        version: VERSION_3,
        pid: 0,
    };
    let split = |m: u64| (m as u32, (m >> 32) as u32);
    let (e0, e1) = split(s.effective);
    let (p0, p1) = split(s.permitted);
    let (i0, i1) = split(s.inheritable);
    let data = [
        Data {
            effective: e0,
            permitted: p0,
            inheritable: i0,
        },
        Data {
            effective: e1,
            permitted: p1,
            inheritable: i1,
        },
    ];
    // SAFETY: capset(2) reads two Data words for version 3.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("capset");
    }
    Ok(())
}

/// What `keep_only` took away from the calling thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    /// Capabilities removed from the permitted set.
    pub permitted: u64,
    /// Capabilities removed from the bounding set (none without `CAP_SETPCAP`).
    pub bounding: u64,
    /// What the thread still holds.
    pub kept: u64,
}

/// Reduces the calling thread to `keep` (those of it that it holds): no_new_privs, the bounding
/// set (when `CAP_SETPCAP` allows), then permitted and effective, inheritable and with it
/// ambient emptied. Threads created afterwards by this thread inherit the result.
pub fn keep_only(keep: u64) -> Result<Dropped> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error()).context("prctl(PR_SET_NO_NEW_PRIVS)");
    }
    let before = current()?;
    let mut bounding = 0;
    if before.effective & (1 << CAP_SETPCAP) != 0 {
        for cap in 0..64u32 {
            // SAFETY: as above.
            let held = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) };
            if held < 0 {
                break; // EINVAL: past the kernel's last capability
            }
            if held == 1 && keep & (1u64 << cap) == 0 {
                // SAFETY: as above.
                if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
                    return Err(std::io::Error::last_os_error()).with_context(|| {
                        format!("dropping {} from the bounding set", names(1 << cap))
                    });
                }
                bounding |= 1u64 << cap;
            }
        }
    }
    let after = Sets {
        effective: before.effective & keep,
        permitted: before.permitted & keep,
        inheritable: 0,
    };
    set(after)?;
    // SAFETY: as above.
    if unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    } != 0
    {
        return Err(std::io::Error::last_os_error()).context("clearing the ambient set");
    }
    let now = current()?;
    if now != after {
        bail!(
            "the capability sets did not take: effective {:#x}, permitted {:#x}, inheritable {:#x}",
            now.effective,
            now.permitted,
            now.inheritable
        );
    }
    Ok(Dropped {
        permitted: before.permitted & !keep,
        bounding,
        kept: after.permitted,
    })
}

/// For a thread that starts its work: reduces it to `keep`, and says so if that fails (the
/// thread runs on with more than it needs, which is worth an error, not a stop).
pub fn thread_keeps(part: &str, keep: u64) {
    match keep_only(keep) {
        Ok(d) => log::debug!(
            "{part}: capabilities {} (dropped {})",
            names(d.kept),
            names(d.permitted)
        ),
        Err(e) => log::error!("{part}: cannot drop capabilities: {e:#}"),
    }
}

/// Threads of this process that hold more than `allowed` in any set (`name (tid): CapPrm`),
/// read from /proc/self/task; a thread that vanished meanwhile is skipped.
pub fn threads_beyond(allowed: u64) -> Result<Vec<String>> {
    let mut over = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task").context("reading /proc/self/task")? {
        let Ok(entry) = entry else { continue };
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        };
        let name = status
            .lines()
            .find_map(|l| l.strip_prefix("Name:"))
            .map(str::trim)
            .unwrap_or("?");
        let held = ["CapEff:", "CapPrm:", "CapInh:", "CapAmb:"]
            .iter()
            .filter_map(|k| field(k))
            .fold(0, |a, m| a | m);
        if held & !allowed != 0 {
            over.push(format!(
                "{name} ({}): {}",
                entry.file_name().to_string_lossy(),
                names(held & !allowed)
            ));
        }
    }
    Ok(over)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cover_the_known_bits_and_number_the_rest() {
        assert_eq!(names(0), "none");
        assert_eq!(names(RUNTIME), "CAP_SYS_PTRACE, CAP_BPF");
        assert_eq!(names(1 << 45), "cap45");
        assert_eq!(NAMES[CAP_PERFMON as usize], "CAP_PERFMON");
        assert_eq!(NAMES[CAP_NET_ADMIN as usize], "CAP_NET_ADMIN");
        assert_eq!(NAMES[CAP_SETPCAP as usize], "CAP_SETPCAP");
    }

    /// A thread of its own (capabilities are per thread): what it keeps is what it holds after,
    /// its new threads inherit it, and it cannot raise what it dropped.
    #[test]
    fn a_thread_keeps_only_what_it_is_told_and_its_children_inherit_it() {
        let mine = current().expect("capget");
        std::thread::spawn(|| {
            let before = current().expect("capget");
            let d = keep_only(1 << CAP_BPF).expect("dropping");
            let now = current().expect("capget");
            assert_eq!(now.permitted, before.permitted & (1 << CAP_BPF));
            assert_eq!(now.effective, before.effective & (1 << CAP_BPF));
            assert_eq!(now.inheritable, 0);
            assert_eq!(d.kept, now.permitted);
            assert_eq!(d.permitted, before.permitted & !(1 << CAP_BPF));
            let child = std::thread::spawn(current)
                .join()
                .expect("child")
                .expect("capget");
            assert_eq!(child, now);
            if before.permitted & (1 << CAP_NET_ADMIN) != 0 {
                let raised = Sets {
                    effective: now.effective | (1 << CAP_NET_ADMIN),
                    permitted: now.permitted | (1 << CAP_NET_ADMIN),
                    inheritable: 0,
                };
                assert!(set(raised).is_err(), "a dropped capability came back");
            }
            // SAFETY: prctl read.
            assert_eq!(
                unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) },
                1
            );
        })
        .join()
        .expect("the test thread");
        // Capabilities are per thread: this one was left alone, and is listed as holding more
        // than a set without one of its capabilities.
        assert_eq!(current().expect("capget"), mine);
        assert!(threads_beyond(u64::MAX).expect("tasks").is_empty());
        if let Some(bit) = (0..64).find(|b| mine.permitted & (1u64 << b) != 0) {
            let over = threads_beyond(!(1u64 << bit)).expect("tasks");
            assert!(
                over.iter().any(|t| t.contains(&names(1 << bit))),
                "{over:?}"
            );
        }
    }
}
