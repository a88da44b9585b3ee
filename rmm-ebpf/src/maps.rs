//! Maps and globals shared by every program, and the helpers that fill and submit records.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task, bpf_get_current_uid_gid, bpf_ktime_get_ns,
    },
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use rmm_common::{
    DropReason, EventKind, FilterReason, Header, KernelOffsets, Settings, SignalRecord,
    TracepointFields, signal_slot,
};

use crate::kernel::{read, read_ptr};

/// exec, fork and exit records. Sized by the daemon (`map_max_entries`).
#[map]
pub static PROC_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// connect and DNS records. Sized by the daemon.
#[map]
pub static NET_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// Per-CPU loss counters, indexed by `DropReason`.
#[map]
pub static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DropReason::COUNT, 0);

/// Per-CPU counters of what was left out on purpose, indexed by `FilterReason`.
#[map]
pub static FILTERED: PerCpuArray<u64> = PerCpuArray::with_max_entries(FilterReason::COUNT, 0);

/// A connect between `sys_enter_connect` and `sys_exit_connect`, keyed by pid_tgid.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingConnect {
    pub start_ns: u64,
    pub fd: i32,
    pub family: u16,
    pub dport: u16,
    pub protocol: u8,
    pub _pad: [u8; 7],
    pub daddr: [u8; 16],
}

/// Connects in flight: inserted by the cgroup hook, removed by `sys_exit_connect` (and, should
/// an exit ever be missed, when the thread exits). Preallocated: kernels before 6.1 refuse
/// run-time allocated hash maps in tracing programs, and a preallocated insert or delete is a
/// free-list operation. 8192 threads blocked in `connect(2)` at once is far above any real
/// host; beyond it the connect is counted as `connect_pending_map_full`.
#[map]
pub static PENDING_CONNECT: HashMap<u64, PendingConnect> = HashMap::with_max_entries(8192, 0);

/// Set by `sys_enter_connect` on its CPU: which thread entered `connect(2)`, when, on which fd.
/// The cgroup hook that follows on the same CPU knows from it that the connect came through the
/// syscall (a result will follow at `sys_exit_connect`); otherwise (io_uring) it reports alone.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ConnectMark {
    pub pid_tgid: u64,
    pub ts_ns: u64,
    pub fd: i64,
}

#[map]
pub static CONNECT_MARK: PerCpuArray<ConnectMark> = PerCpuArray::with_max_entries(1, 0);

/// Kernel struct offsets, written by the daemon before load.
#[unsafe(no_mangle)]
static OFFSETS: KernelOffsets = KernelOffsets::zeroed();

/// Run-time settings, written by the daemon before load.
#[unsafe(no_mangle)]
static SETTINGS: Settings = Settings::default_const();

#[inline(always)]
pub fn offsets() -> KernelOffsets {
    // SAFETY: a plain read of a global; volatile so the compiler does not fold the zeroed
    // initial value (the loader rewrites .rodata before load).
    unsafe { core::ptr::read_volatile(&raw const OFFSETS) }
}

#[inline(always)]
pub fn settings_stage_bytes() -> u64 {
    // SAFETY: see `offsets`.
    unsafe { core::ptr::read_volatile(&raw const SETTINGS.stage_bytes) }
}

/// Whether this kernel offers a `rmm_common::feature`. A load from read-only data: the
/// verifier knows the value and skips the branch that the kernel could not run.
#[inline(always)]
pub fn has_feature(bit: u32) -> bool {
    // SAFETY: see `offsets`.
    let features = unsafe { core::ptr::read_volatile(&raw const SETTINGS.features) };
    features & bit != 0
}

/// Offsets of the tracepoint fields, from tracefs.
#[inline(always)]
pub fn fields() -> TracepointFields {
    // SAFETY: see `offsets`.
    unsafe { core::ptr::read_volatile(&raw const SETTINGS.fields) }
}

#[inline(always)]
pub fn count_drop(reason: DropReason) {
    count_drops(reason, 1);
}

#[inline(always)]
pub fn count_drops(reason: DropReason, n: u64) {
    if let Some(counter) = DROPS.get_ptr_mut(reason as u32) {
        // Atomic: a program on this CPU may be interrupted by another that counts too.
        crate::kernel::atomic_add(counter, n);
    }
}

#[inline(always)]
pub fn count_filtered(reason: FilterReason) {
    if let Some(counter) = FILTERED.get_ptr_mut(reason as u32) {
        crate::kernel::atomic_add(counter, 1);
    }
}

/// The start of the process `task` belongs to (`group_leader->start_boottime`, the identity
/// that a reused pid does not share); 0 without offsets or when a read fails.
#[inline(always)]
pub fn process_start(task: u64) -> u64 {
    let off = offsets();
    if off.valid == 0 {
        return 0;
    }
    read_ptr(task, off.task_group_leader)
        .and_then(|leader| read::<u64>(leader, off.task_start_boottime))
        .unwrap_or(0)
}

/// Per-CPU count of records submitted, to look at the ring's fill level only on some of them.
#[map]
pub static SUBMITS: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// A CPU checks the ring's fill level on one record in this many (a power of two): the
/// query is a helper call on every record otherwise, and a few records more or less before
/// the wakeup make no difference to a threshold of many kilobytes.
const WAKEUP_CHECK_EVERY: u32 = 8;

/// Flags for `submit`: wake the reader only once `wakeup_bytes` are waiting; otherwise the
/// daemon's poll timer collects the record. `wakeup_bytes == 0` means wake on every record.
#[inline(always)]
pub fn submit_flags(ring: &RingBuf) -> u64 {
    // SAFETY: see `offsets`.
    let threshold = unsafe { core::ptr::read_volatile(&raw const SETTINGS.wakeup_bytes) };
    if threshold == 0 {
        return 0;
    }
    if let Some(n) = SUBMITS.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; a nested program on this CPU at worst skips one check.
        let k = unsafe {
            let k = *n;
            *n = k.wrapping_add(1);
            k
        };
        if k % WAKEUP_CHECK_EVERY != 0 {
            return BPF_RB_NO_WAKEUP as u64;
        }
    }
    if ring.query(BPF_RB_AVAIL_DATA as u64) >= threshold {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// Fills the common header from the current task.
#[inline(always)]
pub fn fill_header(hdr: &mut Header, kind: EventKind) {
    fill_header_start(hdr, kind, current_start());
}

/// The current task's process start (see [`process_start`]).
#[inline(always)]
pub fn current_start() -> u64 {
    // SAFETY: helper without arguments.
    process_start(unsafe { bpf_get_current_task() })
}

/// Fills the common header from the current task, with the process start the caller read
/// (0 where the program type cannot call `bpf_get_current_task`).
#[inline(always)]
pub fn fill_header_start(hdr: &mut Header, kind: EventKind, start_ns: u64) {
    hdr.start_ns = start_ns;
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    hdr.kind = kind as u32;
    hdr.tid = pid_tgid as u32;
    hdr.tgid = (pid_tgid >> 32) as u32;
    hdr.uid = uid_gid as u32;
    hdr.gid = (uid_gid >> 32) as u32;
    hdr._pad0 = 0;
    // SAFETY: helpers without arguments.
    hdr.ts_ns = unsafe { bpf_ktime_get_ns() };
    hdr.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    hdr.comm = bpf_get_current_comm().unwrap_or([0; 16]);
}

/// Fills the header in a cgroup_skb program. Kernels that refuse the task helpers there
/// (`rmm_common::feature::SKB_TASK_HELPERS` off) get the same fields read from the current
/// task through the offsets from BTF. Returns false when the task could not be read.
#[inline(always)]
pub fn fill_header_skb(hdr: &mut Header, kind: EventKind) -> bool {
    if has_feature(rmm_common::feature::SKB_TASK_HELPERS) {
        fill_header(hdr, kind);
        return true;
    }
    hdr.kind = kind as u32;
    hdr._pad0 = 0;
    // SAFETY: helper without arguments.
    hdr.ts_ns = unsafe { bpf_ktime_get_ns() };
    hdr.tid = 0;
    hdr.tgid = 0;
    hdr.uid = 0;
    hdr.gid = 0;
    hdr.cgroup_id = 0;
    hdr.start_ns = 0;
    hdr.comm = [0; 16];
    let off = offsets();
    if off.valid == 0 {
        return false;
    }
    // SAFETY: helper without arguments.
    let task = unsafe { bpf_get_current_task() };
    hdr.start_ns = process_start(task);
    hdr.tid = read::<u32>(task, off.task_pid).unwrap_or(0);
    hdr.tgid = read::<u32>(task, off.task_tgid).unwrap_or(0);
    hdr.comm = read::<[u8; 16]>(task, off.task_comm).unwrap_or([0; 16]);
    if let Some(cred) = read_ptr(task, off.task_cred) {
        hdr.uid = read::<u32>(cred, off.cred_uid).unwrap_or(0);
        hdr.gid = read::<u32>(cred, off.cred_gid).unwrap_or(0);
    }
    let cgroup = read_ptr(task, off.task_cgroups)
        .and_then(|cset| read_ptr(cset, off.css_set_dfl_cgrp))
        .and_then(|cgrp| read_ptr(cgrp, off.cgroup_kn));
    if let Some(kn) = cgroup {
        hdr.cgroup_id = read::<u64>(kn, off.kernfs_node_id).unwrap_or(0);
    }
    hdr.tgid != 0
}

/// The daemon's threads (tid -> the daemon's parent, its supervisor), written by the daemon:
/// the signal program records only signals sent to them.
#[map]
pub static DAEMON_TASKS: HashMap<u32, u32> = HashMap::with_max_entries(256, 0);

/// The last SIGKILL and the last stopping signal sent to the daemon (`signal_slot`); pinned
/// in bpffs by the daemon, so that it outlives a killed instance.
#[map]
pub static SIGNALS: Array<SignalRecord> = Array::with_max_entries(signal_slot::COUNT, 0);
