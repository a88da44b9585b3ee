//! Process life cycle: exec, fork (new processes only) and exit of a whole thread group.

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_kernel_str_bytes,
        bpf_probe_read_user_buf,
    },
    macros::{map, raw_tracepoint, tracepoint},
    maps::LruHashMap,
    programs::{RawTracePointContext, TracePointContext},
};
use rmm_common::{
    ARGS_LEN, DropReason, EventKind, ExecEvent, ExitEvent, FILENAME_LEN, ForkEvent, exec_flags,
    feature,
};

use crate::{
    kernel::{read, read_ptr},
    maps::{
        PENDING_CONNECT, PROC_EVENTS, count_drop, fields, fill_header, fill_header_start,
        has_feature, offsets, process_start, submit_flags,
    },
    path::resolve_file_path,
};

/// `CLONE_THREAD` from `include/uapi/linux/sched.h`.
const CLONE_THREAD: u64 = 0x0001_0000;

/// `sched/sched_process_exec`: reads `filename` (`__data_loc char[]`); the rest comes from the
/// current task (`real_parent->tgid`, `mm->arg_start..arg_end`, `mm->exe_file`).
#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    let Some(mut entry) = PROC_EVENTS.reserve::<ExecEvent>(0) else {
        count_drop(DropReason::ExecReserve);
        return 0;
    };
    // SAFETY: the entry is ours until submit; every field the reader uses is written below
    // (byte arrays are only read up to their recorded lengths).
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill_exec(&ctx, ev);
    entry.submit(submit_flags(&PROC_EVENTS));
    0
}

#[inline(always)]
fn fill_exec(ctx: &TracePointContext, ev: &mut ExecEvent) {
    // SAFETY: helper without arguments.
    let task = unsafe { bpf_get_current_task() };
    fill_header_start(&mut ev.hdr, EventKind::Exec, process_start(task));
    ev.ppid = 0;
    ev.flags = 0;
    ev.filename_len = 0;
    ev.path_len = 0;
    ev.args_len = 0;
    ev.args_size = 0;
    ev.parent_start_ns = 0;

    // SAFETY: the offset of the filename's __data_loc, from the tracepoint's format file.
    if let Ok(loc) = unsafe { ctx.read_at::<u32>(fields().exec_filename as usize) } {
        let src = (ctx.as_ptr() as u64 + (loc & 0xffff) as u64) as *const u8;
        // SAFETY: the helper bounds the read by the destination length.
        match unsafe { bpf_probe_read_kernel_str_bytes(src, &mut ev.filename) } {
            Ok(s) => {
                ev.filename_len = s.len() as u32;
                if s.len() >= FILENAME_LEN - 1 && (loc >> 16) as usize > FILENAME_LEN {
                    ev.flags |= exec_flags::FILENAME_TRUNCATED;
                }
            }
            Err(_) => ev.flags |= exec_flags::PATH_ERROR,
        }
    }

    let off = offsets();
    if off.valid == 0 {
        ev.flags |= exec_flags::NO_OFFSETS;
        return;
    }
    if let Some(parent) = read_ptr(task, off.task_real_parent) {
        ev.ppid = read::<u32>(parent, off.task_tgid).unwrap_or(0);
        ev.parent_start_ns = process_start(parent);
    }
    let Some(mm) = read_ptr(task, off.task_mm) else {
        ev.flags |= exec_flags::ARGS_ERROR | exec_flags::PATH_ERROR;
        return;
    };
    read_args(ev, mm, &off);
    match read_ptr(mm, off.mm_exe_file) {
        Some(file) => resolve_file_path(ev, file, &off),
        None => ev.flags |= exec_flags::PATH_ERROR,
    }
}

#[inline(always)]
fn read_args(ev: &mut ExecEvent, mm: u64, off: &rmm_common::KernelOffsets) {
    let (Some(start), Some(end)) = (
        read::<u64>(mm, off.mm_arg_start),
        read::<u64>(mm, off.mm_arg_end),
    ) else {
        ev.flags |= exec_flags::ARGS_ERROR;
        return;
    };
    let size = end.saturating_sub(start);
    ev.args_size = size.min(u32::MAX as u64) as u32;
    let mut n = size as usize;
    if n > ARGS_LEN {
        n = ARGS_LEN;
        ev.flags |= exec_flags::ARGS_TRUNCATED;
    }
    if n == 0 {
        return;
    }
    // SAFETY: user memory of the current task (the new image's stack, already written by the
    // kernel); the helper reports a failed read instead of faulting.
    match unsafe { bpf_probe_read_user_buf(start as *const u8, &mut ev.args[..n]) } {
        Ok(()) => ev.args_len = n as u32,
        Err(_) => ev.flags |= exec_flags::ARGS_ERROR,
    }
}

/// `task_newtask` as a raw tracepoint (`struct task_struct *task, u64 clone_flags`), loaded
/// where the struct offsets are known: the child's tgid and start are read from its task.
/// Threads (`CLONE_THREAD`) are skipped in the kernel; the parent is the current task.
#[raw_tracepoint(tracepoint = "task_newtask")]
pub fn task_newtask_raw(ctx: RawTracePointContext) -> i32 {
    // SAFETY: the context of a raw tracepoint is its argument array; task_newtask has two.
    let (child, clone_flags) = unsafe {
        let args = ctx.as_ptr() as *const u64;
        (*args, *args.add(1))
    };
    if clone_flags & CLONE_THREAD != 0 {
        return 0;
    }
    let off = offsets();
    let Some(tgid) = read::<u32>(child, off.task_tgid) else {
        return 0;
    };
    // A new process leads its own thread group: its start is the process's.
    emit_fork(
        tgid,
        read::<u64>(child, off.task_start_boottime).unwrap_or(0),
    );
    0
}

/// Reports a new process; the header describes the parent (the current task).
#[inline(always)]
fn emit_fork(child_tgid: u32, child_start_ns: u64) {
    let Some(mut entry) = PROC_EVENTS.reserve::<ForkEvent>(0) else {
        count_drop(DropReason::ForkReserve);
        return;
    };
    // SAFETY: the entry is ours until submit; every field is written.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut ev.hdr, EventKind::Fork);
    ev.child_tgid = child_tgid;
    ev._pad0 = 0;
    ev.child_start_ns = child_start_ns;
    entry.submit(submit_flags(&PROC_EVENTS));
}

/// `task/task_newtask`, where the struct offsets are unknown: reads `pid` and `clone_flags`
/// from the tracepoint's format (the child's start stays unknown). Threads are skipped.
#[tracepoint(category = "task", name = "task_newtask")]
pub fn task_newtask(ctx: TracePointContext) -> u32 {
    let f = fields();
    // SAFETY: offsets from the tracepoint's format file.
    let (Ok(child), Ok(clone_flags)) = (
        unsafe { ctx.read_at::<i32>(f.newtask_pid as usize) },
        unsafe { ctx.read_at::<u64>(f.newtask_clone_flags as usize) },
    ) else {
        return 0;
    };
    if clone_flags & CLONE_THREAD != 0 {
        return 0;
    }
    emit_fork(child as u32, 0);
    0
}

/// A thread group whose death was reported, where `sched_process_exit` has no `group_dead`:
/// several of its threads may exit at once and each see `signal->live` at 0; the first to
/// insert the key reports it. The key holds the `signal_struct` so that a reused pid is a new
/// key; old keys are evicted.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GroupKey {
    signal: u64,
    tgid: u32,
    _pad: u32,
}

#[map]
static GROUPS_DEAD: LruHashMap<GroupKey, u8> = LruHashMap::with_max_entries(1024, 0);

/// `BPF_NOEXIST` from `include/uapi/linux/bpf.h`.
const BPF_NOEXIST: u64 = 1;

/// Whether the exiting thread is the end of its thread group: the tracepoint's `group_dead`
/// where the kernel has it (Linux 6.16), else `signal->live == 0`, reported once per group.
#[inline(always)]
fn group_dead(ctx: &TracePointContext, pid_tgid: u64) -> bool {
    if has_feature(feature::EXIT_GROUP_DEAD) {
        // SAFETY: the offset from the tracepoint's format file.
        return matches!(unsafe { ctx.read_at::<u8>(fields().exit_group_dead as usize) }, Ok(v) if v != 0);
    }
    let off = offsets();
    let tgid = (pid_tgid >> 32) as u32;
    if off.valid == 0 {
        // No way to count the live threads: the group leader's exit stands for the group.
        return tgid == pid_tgid as u32;
    }
    // SAFETY: helper without arguments.
    let Some(signal) = read_ptr(unsafe { bpf_get_current_task() }, off.task_signal) else {
        return false;
    };
    if read::<i32>(signal, off.signal_live) != Some(0) {
        return false;
    }
    let key = GroupKey {
        signal,
        tgid,
        _pad: 0,
    };
    GROUPS_DEAD.insert(&key, &1, BPF_NOEXIST).is_ok()
}

/// `sched/sched_process_exit`: reads `group_dead` where the kernel has it; only the death of
/// the whole thread group is reported.
#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // An exiting thread drops its pending-connect entry, should one be left (see
    // `PENDING_CONNECT`).
    let _ = PENDING_CONNECT.remove(&pid_tgid);
    if !group_dead(&ctx, pid_tgid) {
        return 0;
    }
    let Some(mut entry) = PROC_EVENTS.reserve::<ExitEvent>(0) else {
        count_drop(DropReason::ExitReserve);
        return 0;
    };
    // SAFETY: the entry is ours until submit; every field is written.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut ev.hdr, EventKind::Exit);
    let off = offsets();
    ev.exit_code = if off.valid != 0 {
        // SAFETY: helper without arguments.
        read::<u32>(unsafe { bpf_get_current_task() }, off.task_exit_code).unwrap_or(0)
    } else {
        0
    };
    ev._pad0 = 0;
    entry.submit(submit_flags(&PROC_EVENTS));
    0
}
