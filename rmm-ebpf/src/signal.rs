//! Signals the daemon cannot catch or that stop it: `signal/signal_generate`, filtered to the
//! daemon's own threads and to SIGKILL and the stopping signals, records the sender in the
//! `SIGNALS` map (pinned by the daemon, so that the next start can report a kill).

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_ktime_get_boot_ns,
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use rmm_common::signal_slot;

use crate::maps::{DAEMON_TASKS, SIGNALS, current_start, fields};

const SIGKILL: i32 = 9;
/// SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU.
const STOP_FIRST: i32 = 19;
const STOP_LAST: i32 = 22;

#[tracepoint(category = "signal", name = "signal_generate")]
pub fn signal_generate(ctx: TracePointContext) -> u32 {
    let f = fields();
    // SAFETY: offsets of 4-byte fields, from the tracepoint's format file.
    let Ok(sig) = (unsafe { ctx.read_at::<i32>(f.signal_sig as usize) }) else {
        return 0;
    };
    let slot = match sig {
        SIGKILL => signal_slot::KILL,
        STOP_FIRST..=STOP_LAST => signal_slot::STOP,
        _ => return 0,
    };
    // SAFETY: as above.
    let Ok(target) = (unsafe { ctx.read_at::<i32>(f.signal_pid as usize) }) else {
        return 0;
    };
    let target = target as u32;
    // SAFETY: a plain lookup; the value is copied out at once.
    let Some(supervisor) = (unsafe { DAEMON_TASKS.get(&target) }).copied() else {
        return 0;
    };
    let Some(rec) = SIGNALS.get_ptr_mut(slot) else {
        return 0;
    };
    // SAFETY: as above.
    let code = unsafe { ctx.read_at::<i32>(f.signal_code as usize) }.unwrap_or(0);
    let result = unsafe { ctx.read_at::<i32>(f.signal_result as usize) }.unwrap_or(0);
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    let start = current_start();
    // SAFETY: a pointer into the map's value; signals to the daemon are rare, and a second
    // one racing on another CPU at worst mixes two senders' fields in the last record.
    unsafe {
        (*rec).boot_ns = bpf_ktime_get_boot_ns();
        (*rec).sender_start_ns = start;
        (*rec).sig = sig;
        (*rec).code = code;
        (*rec).result = result;
        (*rec).target = target;
        (*rec).sender_pid = (pid_tgid >> 32) as u32;
        (*rec).sender_uid = uid_gid as u32;
        (*rec).supervisor = supervisor;
        (*rec)._pad = 0;
        (*rec).comm = comm;
        crate::kernel::atomic_add(&raw mut (*rec).count, 1);
    }
    0
}
