//! Types shared by the eBPF programs (`rmm-ebpf`) and the daemon (`rmm-userspace`).
//!
//! Everything that crosses the kernel/user boundary is `#[repr(C)]`, holds only integers and
//! byte arrays, and has explicit padding, so any byte pattern is a valid value and userspace can
//! copy a ring-buffer record into it without `transmute`. Kinds are plain `u32` on the wire and
//! are validated with `TryFrom` on the user side.
#![no_std]

use core::mem::size_of;

/// Length of `task_struct.comm`.
pub const COMM_LEN: usize = 16;
/// Bytes of the exec filename (as the caller passed it) copied from the tracepoint.
pub const FILENAME_LEN: usize = 256;
/// Bytes of the resolved executable path. The path is stored leaf first, one NUL-terminated
/// component after the other (see [`ExecEvent::path`]); a component starts at an offset below
/// [`PATH_START_LIMIT`] and is at most [`PATH_COMPONENT_MAX`] bytes long.
pub const PATH_LEN: usize = 768;
/// A component may start at offsets `0..PATH_START_LIMIT` (a mask the verifier understands).
pub const PATH_START_LIMIT: usize = 512;
/// Longest component read (NAME_MAX + NUL).
pub const PATH_COMPONENT_MAX: usize = 256;
/// Most path components walked (dentries plus mount crossings).
pub const PATH_MAX_DEPTH: u32 = 40;
/// Bytes of the argument block (`mm->arg_start..arg_end`) copied per exec.
pub const ARGS_LEN: usize = 1024;
/// Most arguments userspace reports per exec.
pub const ARGS_MAX_COUNT: usize = 16;
/// Bytes of a DNS payload copied (the classic UDP DNS limit).
pub const DNS_PAYLOAD_LEN: usize = 512;
/// UDP destination port treated as DNS.
pub const DNS_PORT: u16 = 53;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Kind of a record, first field of every record's [`Header`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Exec = 1,
    Fork = 2,
    Exit = 3,
    Connect = 4,
    Dns = 5,
    /// A UDP datagram from port 53 (an answer), same layout as `Dns`.
    DnsAnswer = 6,
}

impl EventKind {
    pub const ALL: [EventKind; 6] = [
        EventKind::Exec,
        EventKind::Fork,
        EventKind::Exit,
        EventKind::Connect,
        EventKind::Dns,
        EventKind::DnsAnswer,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            EventKind::Exec => "exec",
            EventKind::Fork => "fork",
            EventKind::Exit => "exit",
            EventKind::Connect => "connect",
            EventKind::Dns => "dns",
            EventKind::DnsAnswer => "dns_answer",
        }
    }
}

impl TryFrom<u32> for EventKind {
    type Error = u32;
    fn try_from(v: u32) -> Result<Self, u32> {
        Ok(match v {
            1 => EventKind::Exec,
            2 => EventKind::Fork,
            3 => EventKind::Exit,
            4 => EventKind::Connect,
            5 => EventKind::Dns,
            6 => EventKind::DnsAnswer,
            other => return Err(other),
        })
    }
}

/// Indexes of the per-CPU `DROPS` counter array: why the kernel side lost an event.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// `bpf_ringbuf_reserve` failed on the process ring (exec).
    ExecReserve = 0,
    ForkReserve = 1,
    ExitReserve = 2,
    ConnectReserve = 3,
    DnsReserve = 4,
    /// The map that carries a connect from syscall entry to exit was full.
    ConnectPendingFull = 5,
    DnsAnswerReserve = 6,
}

impl DropReason {
    pub const COUNT: u32 = 7;
    pub const ALL: [DropReason; 7] = [
        DropReason::ExecReserve,
        DropReason::ForkReserve,
        DropReason::ExitReserve,
        DropReason::ConnectReserve,
        DropReason::DnsReserve,
        DropReason::ConnectPendingFull,
        DropReason::DnsAnswerReserve,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            DropReason::ExecReserve => "exec_ringbuf_full",
            DropReason::ForkReserve => "fork_ringbuf_full",
            DropReason::ExitReserve => "exit_ringbuf_full",
            DropReason::ConnectReserve => "connect_ringbuf_full",
            DropReason::DnsReserve => "dns_ringbuf_full",
            DropReason::ConnectPendingFull => "connect_pending_map_full",
            DropReason::DnsAnswerReserve => "dns_answer_ringbuf_full",
        }
    }
}

/// Indexes of the per-CPU `FILTERED` counter array: what the programs left out on purpose (not
/// a loss: records nobody asked for).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterReason {
    /// A datagram from port 53 to a socket that sent no query to that address (a forged or
    /// stray answer, or a flood meant to fill the network ring).
    DnsAnswerUnsolicited = 0,
}

impl FilterReason {
    pub const COUNT: u32 = 1;
    pub const ALL: [FilterReason; 1] = [FilterReason::DnsAnswerUnsolicited];

    pub const fn name(self) -> &'static str {
        match self {
            FilterReason::DnsAnswerUnsolicited => "dns_answer_unsolicited",
        }
    }
}

/// A socket that sent a DNS query to a server (cgroup_skb egress), the key of the kernel's
/// table of expected answers: a datagram from port 53 is reported only when its socket asked
/// the address it comes from.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsAskedKey {
    pub sock_cookie: u64,
    /// The server, network byte order; IPv4 in the first 4 bytes.
    pub addr: [u8; 16],
    pub family: u16,
    pub _pad: [u8; 6],
}

/// Common prefix of every record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Header {
    /// An [`EventKind`] value.
    pub kind: u32,
    /// Thread id (kernel `pid`).
    pub tid: u32,
    /// Process id (kernel `tgid`).
    pub tgid: u32,
    pub uid: u32,
    pub gid: u32,
    pub _pad0: u32,
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC in nanoseconds.
    pub ts_ns: u64,
    /// Start of the process (`task->group_leader->start_boottime`: CLOCK_BOOTTIME in
    /// nanoseconds, what `/proc/PID/stat` shows in clock ticks); 0 when unknown. With `tgid`
    /// it names one process for the life of the boot: a pid is reused, this pair is not.
    pub start_ns: u64,
    /// cgroup v2 id of the task (`bpf_get_current_cgroup_id`).
    pub cgroup_id: u64,
    pub comm: [u8; COMM_LEN],
}

/// `ExecEvent::flags` bits.
pub mod exec_flags {
    /// The filename did not fit [`super::FILENAME_LEN`].
    pub const FILENAME_TRUNCATED: u32 = 1 << 0;
    /// The path has more components or bytes than the buffer holds; the leaf side is kept.
    pub const PATH_TRUNCATED: u32 = 1 << 1;
    /// A kernel read failed while resolving the path.
    pub const PATH_ERROR: u32 = 1 << 2;
    /// The argument block was longer than [`super::ARGS_LEN`].
    pub const ARGS_TRUNCATED: u32 = 1 << 3;
    /// Reading the argument block failed.
    pub const ARGS_ERROR: u32 = 1 << 4;
    /// Kernel struct offsets were not provided: no path, argv or ppid.
    pub const NO_OFFSETS: u32 = 1 << 5;
    /// The walk ended at a dentry that is its own parent outside the mount tree root
    /// (a pseudo file system such as memfd).
    pub const PATH_DETACHED: u32 = 1 << 6;
    /// The executable's dentry is unhashed: the file was deleted (or replaced) after it was
    /// opened, the way `/proc/PID/exe` shows ` (deleted)`.
    pub const PATH_DELETED: u32 = 1 << 7;
}

/// `sched:sched_process_exec`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecEvent {
    pub hdr: Header,
    /// `task->real_parent->tgid`.
    pub ppid: u32,
    pub flags: u32,
    /// Bytes used in `filename` (without NUL).
    pub filename_len: u32,
    /// Bytes used in `path`.
    pub path_len: u32,
    /// Bytes used in `args`.
    pub args_len: u32,
    /// `arg_end - arg_start` as the kernel reports it (the real size of argv).
    pub args_size: u32,
    /// The parent's start (see [`Header::start_ns`]); 0 when unknown.
    pub parent_start_ns: u64,
    /// The exec filename as the caller passed it (relative, a symlink, `/dev/fd/N`, ...).
    pub filename: [u8; FILENAME_LEN],
    /// `mm->exe_file` resolved by walking dentries and mounts: components leaf first, each
    /// NUL-terminated, e.g. `true\0bin\0usr\0` for `/usr/bin/true`.
    pub path: [u8; PATH_LEN],
    /// argv as laid out in the new process's memory: NUL-separated.
    pub args: [u8; ARGS_LEN],
}

/// `task:task_newtask` for a new process (not a thread). The header describes the parent.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForkEvent {
    pub hdr: Header,
    pub child_tgid: u32,
    pub _pad0: u32,
    /// The child's start (see [`Header::start_ns`]); 0 when unknown (no struct offsets).
    pub child_start_ns: u64,
}

/// `sched:sched_process_exit` when the whole thread group is dead.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExitEvent {
    pub hdr: Header,
    /// `task->exit_code` (wait status), or 0 when offsets are missing.
    pub exit_code: u32,
    pub _pad0: u32,
}

/// `ConnectEvent::source` values.
pub mod connect_source {
    /// `connect(2)`: entry, cgroup hook and exit seen; `ret` is the syscall's return value.
    pub const SYSCALL: u8 = 1;
    /// Only the cgroup connect hook saw it (io_uring, or a kernel-internal connect): no result.
    pub const CGROUP_ONLY: u8 = 2;
}

/// Outbound `connect` on an AF_INET / AF_INET6 socket.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnectEvent {
    pub hdr: Header,
    /// Return value of `connect(2)` (0, `-ECONNREFUSED`, `-EINPROGRESS`, ...); 0 when
    /// `source` is `CGROUP_ONLY`.
    pub ret: i32,
    pub fd: i32,
    /// `AF_INET` or `AF_INET6` (v4-mapped addresses keep `AF_INET6`).
    pub family: u16,
    /// Destination port, host byte order.
    pub dport: u16,
    /// `IPPROTO_TCP` / `IPPROTO_UDP`, 0 when the cgroup hook did not run (e.g. the connect
    /// failed before reaching the protocol).
    pub protocol: u8,
    /// A `connect_source` value.
    pub source: u8,
    pub _pad0: [u8; 2],
    /// Destination address, network byte order; IPv4 uses the first 4 bytes.
    pub daddr: [u8; 16],
    /// Wall time from syscall entry to exit.
    pub duration_ns: u64,
}

/// `DnsEvent::flags` bits.
pub mod dns_flags {
    /// The UDP payload was longer than [`super::DNS_PAYLOAD_LEN`].
    pub const TRUNCATED: u16 = 1 << 0;
    /// Copying the payload failed.
    pub const LOAD_ERROR: u16 = 1 << 1;
    /// The sending task could not be read (a kernel without the task helpers in cgroup_skb
    /// and without kernel offsets): the header's task fields are zero.
    pub const NO_TASK: u16 = 1 << 2;
}

/// A UDP packet to port 53 leaving a socket (cgroup_skb egress), whatever API sent it; or, as
/// `EventKind::DnsAnswer`, a UDP packet from port 53 arriving at a socket (cgroup_skb ingress).
/// For answers the header's task fields are zero (the packet is not received in the context of
/// the socket's owner) and `daddr`/`dport` are the server's address and port (the packet's
/// source), `sport` the local port.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DnsEvent {
    pub hdr: Header,
    /// Socket cookie, stable for the socket's life (matches answers to queries).
    pub sock_cookie: u64,
    pub family: u16,
    pub dport: u16,
    pub sport: u16,
    pub flags: u16,
    /// Bytes of the UDP payload (before truncation).
    pub udp_payload_len: u32,
    /// Bytes copied into `payload`.
    pub payload_len: u32,
    pub daddr: [u8; 16],
    pub payload: [u8; DNS_PAYLOAD_LEN],
}

/// First four bytes of a ring entry that holds several records (a CPU's stage, see
/// [`BatchHeader`]), where a single record has its `EventKind`. Not an `EventKind` value.
pub const BATCH_MAGIC: u32 = 0x4854_4142; // "BATH" in memory order (little endian)

/// A ring entry with several records: this header, then each record as a `u64` length (its
/// bytes, not counting this prefix) followed by the record, padded to 8 bytes. A record may be
/// shorter than its struct (a `DnsEvent` ends after `payload_len` bytes of payload).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BatchHeader {
    /// [`BATCH_MAGIC`].
    pub magic: u32,
    /// Records that follow.
    pub count: u32,
    /// Bytes of the entry, this header included.
    pub bytes: u32,
    pub _pad: u32,
}

/// Bytes of a `DnsEvent` before its payload: a staged DNS record is at least this long.
pub const DNS_FIXED_LEN: usize = core::mem::offset_of!(DnsEvent, payload);

/// Offsets of kernel struct fields, read from `/sys/kernel/btf/vmlinux` by the daemon and
/// handed to the programs as the global `OFFSETS` (Rust eBPF has no CO-RE field relocations).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// Non-zero once filled in.
    pub valid: u32,
    pub task_real_parent: u32,
    pub task_tgid: u32,
    pub task_mm: u32,
    pub task_exit_code: u32,
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    pub mm_exe_file: u32,
    pub file_f_path: u32,
    pub path_mnt: u32,
    pub path_dentry: u32,
    pub dentry_d_parent: u32,
    pub dentry_d_name: u32,
    /// `dentry.d_hash.pprev`: NULL once the dentry is unhashed (deleted).
    pub dentry_d_hash_pprev: u32,
    pub qstr_name: u32,
    pub mount_mnt: u32,
    pub mount_mnt_parent: u32,
    pub mount_mnt_mountpoint: u32,
    pub vfsmount_mnt_root: u32,
    /// The current task's identity, read from the task where the kernel refuses the task
    /// helpers (`cgroup_skb` programs before Linux 6.x): `task_struct.pid`, `.comm`, `.cred`,
    /// `cred.uid`, `cred.gid`, and the cgroup v2 id through `task_struct.cgroups`,
    /// `css_set.dfl_cgrp`, `cgroup.kn` and `kernfs_node.id`.
    pub task_pid: u32,
    pub task_comm: u32,
    pub task_cred: u32,
    pub cred_uid: u32,
    pub cred_gid: u32,
    pub task_cgroups: u32,
    pub css_set_dfl_cgrp: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,
    /// `task_struct.signal` and `signal_struct.live` (the count of live threads): the death
    /// of a thread group where `sched_process_exit` has no `group_dead` field (Linux < 6.16).
    pub task_signal: u32,
    pub signal_live: u32,
    /// `task_struct.group_leader` and `.start_boottime`: a process's start, its identity
    /// beside the pid.
    pub task_group_leader: u32,
    pub task_start_boottime: u32,
}

impl KernelOffsets {
    pub const fn zeroed() -> Self {
        KernelOffsets {
            valid: 0,
            task_real_parent: 0,
            task_tgid: 0,
            task_mm: 0,
            task_exit_code: 0,
            mm_arg_start: 0,
            mm_arg_end: 0,
            mm_exe_file: 0,
            file_f_path: 0,
            path_mnt: 0,
            path_dentry: 0,
            dentry_d_parent: 0,
            dentry_d_name: 0,
            dentry_d_hash_pprev: 0,
            qstr_name: 0,
            mount_mnt: 0,
            mount_mnt_parent: 0,
            mount_mnt_mountpoint: 0,
            vfsmount_mnt_root: 0,
            task_pid: 0,
            task_comm: 0,
            task_cred: 0,
            cred_uid: 0,
            cred_gid: 0,
            task_cgroups: 0,
            css_set_dfl_cgrp: 0,
            cgroup_kn: 0,
            kernfs_node_id: 0,
            task_signal: 0,
            signal_live: 0,
            task_group_leader: 0,
            task_start_boottime: 0,
        }
    }
}

/// `Settings::features` bits: what this kernel lets the programs do, probed by the daemon at
/// start-up. The settings are read-only data, so the verifier knows each bit and never looks
/// at the branch a bit turns off (a helper the kernel lacks there is no load failure).
pub mod feature {
    /// `bpf_ktime_get_coarse_ns` in cgroup sock_addr programs (Linux 5.11).
    pub const COARSE_CLOCK: u32 = 1 << 0;
    /// `bpf_get_current_{pid_tgid,uid_gid,comm,cgroup_id}` in cgroup_skb programs; without
    /// them the sender of a DNS query is read from the current task through `KernelOffsets`.
    pub const SKB_TASK_HELPERS: u32 = 1 << 1;
    /// `sched_process_exit` has a `group_dead` field (Linux 6.16) at
    /// `TracepointFields::exit_group_dead`; without it, the thread group is dead when
    /// `signal->live` is 0.
    pub const EXIT_GROUP_DEAD: u32 = 1 << 2;
    /// `bpf_get_current_task` in cgroup sock_addr programs: a connect seen by the cgroup hook
    /// alone (io_uring) carries its process's start.
    pub const SOCK_ADDR_TASK: u32 = 1 << 3;
}

/// Byte offsets of the tracepoint fields the programs read, from the events' `format` files
/// in tracefs (never assumed: they differ between kernels).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TracepointFields {
    /// `sched/sched_process_exec`: `filename` (`__data_loc char[]`).
    pub exec_filename: u32,
    /// `task/task_newtask`: `pid`.
    pub newtask_pid: u32,
    /// `task/task_newtask`: `clone_flags`.
    pub newtask_clone_flags: u32,
    /// `sched/sched_process_exit`: `group_dead`, when `feature::EXIT_GROUP_DEAD` is set.
    pub exit_group_dead: u32,
    /// `syscalls/sys_enter_connect`: `fd`.
    pub enter_connect_fd: u32,
    /// `syscalls/sys_exit_connect`: `ret`.
    pub exit_connect_ret: u32,
    /// `signal/signal_generate`: `sig`, `code`, `pid` (the target) and `result`.
    pub signal_sig: u32,
    pub signal_code: u32,
    pub signal_pid: u32,
    pub signal_result: u32,
}

/// Run-time settings of the programs, the global `SETTINGS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Submit with a forced wakeup once this many bytes wait in a ring; below it, submit
    /// without a wakeup and let the daemon's poll timer pick the records up.
    pub wakeup_bytes: u64,
    /// A CPU's stage of network records is sent to the ring once it holds this many bytes
    /// (at most the stage's size, 8 KiB; 0: no staging, one ring entry per record).
    pub stage_bytes: u64,
    /// `feature` bits.
    pub features: u32,
    pub fields: TracepointFields,
    pub _pad: u32,
}

impl Settings {
    pub const fn default_const() -> Self {
        Settings {
            wakeup_bytes: 0,
            stage_bytes: 0,
            features: 0,
            fields: TracepointFields {
                exec_filename: 0,
                newtask_pid: 0,
                newtask_clone_flags: 0,
                exit_group_dead: 0,
                enter_connect_fd: 0,
                exit_connect_ret: 0,
                signal_sig: 0,
                signal_code: 0,
                signal_pid: 0,
                signal_result: 0,
            },
            _pad: 0,
        }
    }
}

/// Slots of the `SIGNALS` map: the last SIGKILL, and the last stopping signal, sent to one
/// of the daemon's threads.
pub mod signal_slot {
    pub const KILL: u32 = 0;
    pub const STOP: u32 = 1;
    pub const COUNT: u32 = 2;
}

/// A signal the daemon cannot catch (SIGKILL) or that stops it (SIGSTOP, SIGTSTP, SIGTTIN,
/// SIGTTOU: it handles none of them), as `signal/signal_generate` saw it being sent. Kept in
/// a map pinned in bpffs, so that the next start can tell who killed the previous instance.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SignalRecord {
    /// Signals recorded in this slot so far (0: none).
    pub count: u64,
    /// CLOCK_BOOTTIME of the last one.
    pub boot_ns: u64,
    /// The sender's process start (CLOCK_BOOTTIME; 0 without struct offsets).
    pub sender_start_ns: u64,
    pub sig: i32,
    /// `si_code`: 0 `SI_USER` (kill), -6 `SI_TKILL`, 0x80 `SI_KERNEL` (the OOM killer).
    pub code: i32,
    /// `TRACE_SIGNAL_*`: 0 delivered, 1 ignored, 2 already pending, 3 overflow, 4 lost info.
    pub result: i32,
    /// The thread of the daemon it was sent to.
    pub target: u32,
    /// The sender's process, thread and user (the task running when it was generated).
    pub sender_pid: u32,
    pub sender_uid: u32,
    /// The daemon's parent when the daemon registered its threads (its supervisor).
    pub supervisor: u32,
    pub _pad: u32,
    /// The sender's `comm`.
    pub comm: [u8; COMM_LEN],
}

// Layout guards: these sizes are the wire format between the two sides.
const _: () = assert!(size_of::<Header>() == 64);
const _: () = assert!(size_of::<BatchHeader>() == 16);
const _: () = assert!(size_of::<DnsAskedKey>() == 32);
const _: () = assert!(DNS_FIXED_LEN == 104);
const _: () = assert!(size_of::<ExecEvent>() == 64 + 32 + FILENAME_LEN + PATH_LEN + ARGS_LEN);
const _: () = assert!(size_of::<ForkEvent>() == 80);
const _: () = assert!(size_of::<ExitEvent>() == 72);
const _: () = assert!(size_of::<ConnectEvent>() == 64 + 8 + 8 + 16 + 8);
const _: () = assert!(size_of::<DnsEvent>() == 64 + 8 + 8 + 8 + 16 + DNS_PAYLOAD_LEN);
const _: () = assert!(size_of::<KernelOffsets>() == 32 * 4);
const _: () = assert!(size_of::<Settings>() == 16 + 4 + 10 * 4 + 4);
const _: () = assert!(size_of::<SignalRecord>() == 72);
const _: () = assert!(size_of::<ExecEvent>().is_multiple_of(8));
const _: () = assert!(size_of::<DnsEvent>().is_multiple_of(8));
const _: () = assert!(PATH_START_LIMIT + PATH_COMPONENT_MAX <= PATH_LEN);
const _: () = assert!(PATH_START_LIMIT.is_power_of_two());

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are `#[repr(C)]`, contain only integers and byte arrays with explicit
    // padding, so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::Settings {}
    unsafe impl aya::Pod for super::SignalRecord {}
}
