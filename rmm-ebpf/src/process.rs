//! Process life cycle: exec, fork (new processes only) and exit of a whole thread group.

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_kernel_str_bytes,
        bpf_probe_read_user_buf,
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use rmm_common::{
    ARGS_LEN, DropReason, EventKind, ExecEvent, ExitEvent, FILENAME_LEN, ForkEvent, exec_flags,
};

use crate::{
    kernel::{read, read_ptr},
    maps::{PENDING_CONNECT, PROC_EVENTS, count_drop, fill_header, offsets, submit_flags},
    path::resolve_file_path,
};

/// `CLONE_THREAD` from `include/uapi/linux/sched.h`.
const CLONE_THREAD: u64 = 0x0001_0000;

/// `sched/sched_process_exec`: reads `filename` (`__data_loc char[]` at offset 8); the rest
/// comes from the current task (`real_parent->tgid`, `mm->arg_start..arg_end`, `mm->exe_file`).
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
    fill_header(&mut ev.hdr, EventKind::Exec);
    ev.ppid = 0;
    ev.flags = 0;
    ev.filename_len = 0;
    ev.path_len = 0;
    ev.args_len = 0;
    ev.args_size = 0;

    // SAFETY: offset 8 of the tracepoint record is the filename's __data_loc.
    if let Ok(loc) = unsafe { ctx.read_at::<u32>(8) } {
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
    // SAFETY: helper without arguments.
    let task = unsafe { bpf_get_current_task() };
    if let Some(parent) = read_ptr(task, off.task_real_parent) {
        ev.ppid = read::<u32>(parent, off.task_tgid).unwrap_or(0);
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

/// `task/task_newtask`: reads `pid` (offset 8) and `clone_flags` (offset 32); the parent is
/// the current task. Threads (`CLONE_THREAD`) are skipped in the kernel.
#[tracepoint(category = "task", name = "task_newtask")]
pub fn task_newtask(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets from the tracepoint's format file.
    let (Ok(child), Ok(clone_flags)) = (unsafe { ctx.read_at::<i32>(8) }, unsafe {
        ctx.read_at::<u64>(32)
    }) else {
        return 0;
    };
    if clone_flags & CLONE_THREAD != 0 {
        return 0;
    }
    let Some(mut entry) = PROC_EVENTS.reserve::<ForkEvent>(0) else {
        count_drop(DropReason::ForkReserve);
        return 0;
    };
    // SAFETY: the entry is ours until submit; every field is written.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut ev.hdr, EventKind::Fork);
    ev.child_tgid = child as u32;
    ev._pad0 = 0;
    entry.submit(submit_flags(&PROC_EVENTS));
    0
}

/// `sched/sched_process_exit`: reads `group_dead` (offset 32); only the death of the whole
/// thread group is reported.
#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    // Every exiting thread drops its pending-connect entry (see `PENDING_CONNECT`).
    let _ = PENDING_CONNECT.remove(&bpf_get_current_pid_tgid());
    // SAFETY: offset from the tracepoint's format file.
    match unsafe { ctx.read_at::<u8>(32) } {
        Ok(0) | Err(_) => return 0,
        Ok(_) => {}
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
