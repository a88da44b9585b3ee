//! Outbound connects: `connect(2)` entry and exit (destination and result) plus the cgroup
//! connect hooks (protocol, and connects that never pass the syscall, such as io_uring).

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    macros::{cgroup_sock_addr, tracepoint},
    programs::{SockAddrContext, TracePointContext},
};
use rmm_common::{AF_INET, AF_INET6, ConnectEvent, DropReason, EventKind, connect_source, feature};

use crate::{
    maps::{
        CONNECT_MARK, ConnectMark, NET_EVENTS, PENDING_CONNECT, PendingConnect, count_drop,
        current_start, fields, fill_header_start, has_feature, submit_flags,
    },
    stage::Slot,
};

/// `syscalls/sys_enter_connect`: reads `fd`. Only marks this CPU: the destination and
/// protocol come from the cgroup hook (kernel memory, no user-memory read), and a connect on a
/// non-INET socket, which never reaches the hook, costs nothing more.
#[tracepoint(category = "syscalls", name = "sys_enter_connect")]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    // SAFETY: the offset is the field's, from the tracepoint's format file.
    let fd = unsafe { ctx.read_at::<i64>(fields().enter_connect_fd as usize) }.unwrap_or(-1);
    if let Some(mark) = CONNECT_MARK.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; programs do not nest on a CPU for this tracepoint.
        unsafe {
            *mark = ConnectMark {
                pid_tgid: bpf_get_current_pid_tgid(),
                ts_ns: bpf_ktime_get_ns(),
                fd,
            };
        }
    }
    0
}

/// `syscalls/sys_exit_connect`: reads `ret` and reports the pending connect.
#[tracepoint(category = "syscalls", name = "sys_exit_connect")]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    let key = bpf_get_current_pid_tgid();
    // A connect(2) that never reached the cgroup hook (a non-INET socket, or refused before
    // the protocol) leaves its mark: clear it, so that no later hook on this CPU takes it for
    // its own.
    if let Some(mark) = CONNECT_MARK.get_ptr_mut(0) {
        // SAFETY: this CPU's slot.
        unsafe {
            if (*mark).pid_tgid == key {
                (*mark).pid_tgid = 0;
            }
        }
    }
    let Some(slot) = PENDING_CONNECT.get_ptr(&key) else {
        return 0;
    };
    // SAFETY: this thread's own entry; no other program writes it concurrently.
    let pending = unsafe { *slot };
    let _ = PENDING_CONNECT.remove(&key);
    // SAFETY: the offset is the field's, from the tracepoint's format file.
    let ret = unsafe { ctx.read_at::<i64>(fields().exit_connect_ret as usize) }.unwrap_or(0);
    emit(&pending, ret as i32, connect_source::SYSCALL);
    0
}

/// Reports a connect, through this CPU's stage when it is free; the header's timestamp is the
/// time of the report, `duration_ns` runs from `p.start_ns` (the syscall entry; 0 for a
/// connect seen by the hook alone).
#[inline(always)]
fn emit(p: &PendingConnect, ret: i32, source: u8) {
    if let Some(mut slot) = Slot::new::<ConnectEvent>() {
        // SAFETY: the slot's record is ours until commit; every field is written.
        fill(
            unsafe { &mut *slot.record::<ConnectEvent>() },
            p,
            ret,
            source,
        );
        slot.commit(size_of::<ConnectEvent>(), DropReason::ConnectReserve);
        return;
    }
    let Some(mut entry) = NET_EVENTS.reserve::<ConnectEvent>(0) else {
        count_drop(DropReason::ConnectReserve);
        return;
    };
    // SAFETY: the entry is ours until submit; every field is written.
    fill(unsafe { &mut *entry.as_mut_ptr() }, p, ret, source);
    entry.submit(submit_flags(&NET_EVENTS));
}

#[inline(always)]
fn fill(ev: &mut ConnectEvent, p: &PendingConnect, ret: i32, source: u8) {
    // The cgroup hook may not be able to read the current task (`feature::SOCK_ADDR_TASK`).
    let with_start = source == connect_source::SYSCALL || has_feature(feature::SOCK_ADDR_TASK);
    let start = if with_start { current_start() } else { 0 };
    fill_header_start(&mut ev.hdr, EventKind::Connect, start);
    ev.ret = ret;
    ev.fd = p.fd;
    ev.family = p.family;
    ev.dport = p.dport;
    ev.protocol = p.protocol;
    ev.source = source;
    ev._pad0 = [0; 2];
    ev.daddr = p.daddr;
    ev.duration_ns = if p.start_ns == 0 {
        0
    } else {
        ev.hdr.ts_ns.saturating_sub(p.start_ns)
    };
}

/// `cgroup/connect4`: reads `user_ip4`, `user_port`, `protocol`.
#[cgroup_sock_addr(connect4)]
pub fn cgroup_connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: context fields of a cgroup sock_addr program, read with their own widths.
    let (ip, port, proto) = unsafe {
        let sa = &*ctx.sock_addr;
        (sa.user_ip4, sa.user_port, sa.protocol)
    };
    let mut daddr = [0u8; 16];
    daddr[..4].copy_from_slice(&ip.to_ne_bytes());
    on_cgroup_connect(AF_INET, daddr, port, proto);
    1
}

/// `cgroup/connect6`: reads `user_ip6`, `user_port`, `protocol`.
#[cgroup_sock_addr(connect6)]
pub fn cgroup_connect6(ctx: SockAddrContext) -> i32 {
    // SAFETY: as in `cgroup_connect4`; each `user_ip6` word is a 4-byte context load.
    let (w, port, proto) = unsafe {
        let sa = &*ctx.sock_addr;
        (
            [
                sa.user_ip6[0],
                sa.user_ip6[1],
                sa.user_ip6[2],
                sa.user_ip6[3],
            ],
            sa.user_port,
            sa.protocol,
        )
    };
    let mut daddr = [0u8; 16];
    daddr[0..4].copy_from_slice(&w[0].to_ne_bytes());
    daddr[4..8].copy_from_slice(&w[1].to_ne_bytes());
    daddr[8..12].copy_from_slice(&w[2].to_ne_bytes());
    daddr[12..16].copy_from_slice(&w[3].to_ne_bytes());
    on_cgroup_connect(AF_INET6, daddr, port, proto);
    1
}

/// Longest time from `sys_enter_connect` to the cgroup hook of the same connect. Checked
/// against the coarse clock where the kernel has it (a few ms of resolution, and far cheaper
/// than the precise one; Linux 5.11);
/// the exit of a connect(2) that never reached the hook clears its mark anyway, so this only
/// guards against a mark left behind by a thread that moved to another CPU in between.
const MARK_FRESH_NS: u64 = 50_000_000;

/// Records the destination for `sys_exit_connect` when this connect came through the syscall
/// on this thread (this CPU's mark); otherwise (io_uring, a kernel-internal connect, or a thread
/// that migrated between entry and hook) reports it at once without a result.
#[inline(always)]
fn on_cgroup_connect(family: u16, daddr: [u8; 16], user_port: u32, protocol: u32) {
    let key = bpf_get_current_pid_tgid();
    let mut p = PendingConnect {
        start_ns: 0,
        fd: -1,
        family,
        dport: u16::from_be(user_port as u16),
        protocol: protocol as u8,
        _pad: [0; 7],
        daddr,
    };
    if let Some(mark) = CONNECT_MARK.get_ptr_mut(0) {
        // SAFETY: this CPU's slot.
        let m = unsafe { &mut *mark };
        if m.pid_tgid == key && now_coarse().saturating_sub(m.ts_ns) < MARK_FRESH_NS {
            p.start_ns = m.ts_ns;
            p.fd = m.fd as i32;
            m.pid_tgid = 0;
            if PENDING_CONNECT.insert(&key, &p, 0).is_err() {
                count_drop(DropReason::ConnectPendingFull);
            }
            return;
        }
    }
    emit(&p, 0, connect_source::CGROUP_ONLY);
}

/// The coarse clock where this kernel has it in cgroup programs, the precise one otherwise.
#[inline(always)]
fn now_coarse() -> u64 {
    // SAFETY: helpers without arguments.
    unsafe {
        if has_feature(feature::COARSE_CLOCK) {
            bpf_ktime_get_coarse_ns()
        } else {
            bpf_ktime_get_ns()
        }
    }
}
