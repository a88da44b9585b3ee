//! Per-CPU staging of network records: connect and DNS records are written into this CPU's
//! stage and go to `NET_EVENTS` several kilobytes at a time, one ring reservation for dozens
//! of records instead of one each (the reservation, a locked operation with interrupts off, is
//! the dearest part of a record). A stage is flushed when the next record would not fit, and
//! by the daemon's poll timer, which runs `flush_stage` on every CPU that has records waiting
//! (`BPF_PROG_TEST_RUN` on that CPU), so a lone record waits one poll period at most.
//!
//! A program that finds its CPU's stage in use (a program it interrupted, or that was preempted
//! on this CPU) reserves its own ring entry, as every record did before staging.

use aya_ebpf::{
    macros::{map, raw_tracepoint},
    maps::PerCpuArray,
    programs::RawTracePointContext,
};
use rmm_common::{BATCH_MAGIC, BatchHeader, DropReason};

use crate::{
    kernel::atomic_add,
    maps::{NET_EVENTS, count_drops, settings_stage_bytes, submit_flags},
};

/// A stage is flushed before a record would end past `SETTINGS.stage_bytes`, at most this
/// many bytes (a power of two).
pub const FLUSH_AT: usize = 8192;
/// Room for the largest record after `FLUSH_AT` (a `DnsEvent` is 608 bytes).
const CAP: usize = FLUSH_AT + 1024;
const HDR: usize = core::mem::size_of::<BatchHeader>();
/// Each record is preceded by its length.
const PREFIX: usize = 8;

/// What the records of a stage count as when the ring refuses the stage: the reasons a
/// record reserved on its own would be counted under, one counter per reason.
const DROP_AS: [DropReason; 3] = [
    DropReason::ConnectReserve,
    DropReason::DnsReserve,
    DropReason::DnsAnswerReserve,
];

/// The counter of `DROP_AS` for a record's drop reason.
#[inline(always)]
const fn drop_index(reason: DropReason) -> usize {
    match reason {
        DropReason::ConnectReserve => 0,
        DropReason::DnsReserve => 1,
        _ => 2,
    }
}

#[repr(C)]
pub struct Stage {
    /// Programs holding or trying the lock; 1 while one writes to or flushes the stage (see
    /// `take`).
    busy: u64,
    /// Bytes used in `data` (the batch header included once a record is in).
    len: u32,
    /// Records waiting, by `DROP_AS` reason.
    counts: [u32; 3],
    data: [u8; CAP],
}

#[map]
static STAGES: PerCpuArray<Stage> = PerCpuArray::with_max_entries(1, 0);

/// Bytes waiting in each CPU's stage: the daemon reads it to flush only the CPUs that have
/// records waiting.
#[map]
static STAGED: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// A record being written into a stage. The stage is held while the slot lives: dropping it,
/// committed or not, releases the stage, so no return path can leave it taken.
pub struct Slot {
    stage: *mut Stage,
    /// Offset of the record's length prefix in `data`.
    off: usize,
}

impl Slot {
    /// Room for a `T` in this CPU's stage, or `None` when the stage is in use (the caller
    /// reserves its own ring entry then).
    #[inline(always)]
    pub fn new<T>() -> Option<Slot> {
        let flush_at = (settings_stage_bytes() as usize).min(FLUSH_AT);
        if flush_at == 0 {
            return None;
        }
        let stage = STAGES.get_ptr_mut(0)?;
        // SAFETY: this CPU's stage.
        if !take(unsafe { &raw mut (*stage).busy }) {
            return None;
        }
        // SAFETY: the stage is ours until `busy` is cleared.
        let st = unsafe { &mut *stage };
        let mut len = st.len as usize;
        if len < HDR {
            len = HDR;
        }
        if len > HDR && len + PREFIX + core::mem::size_of::<T>() > flush_at {
            flush(st);
            len = HDR;
        }
        Some(Slot {
            stage,
            // A bound the verifier can see (a no-op: len is below FLUSH_AT).
            off: len & (FLUSH_AT - 1),
        })
    }

    /// The record to fill in.
    #[inline(always)]
    pub fn record<T>(&mut self) -> *mut T {
        // SAFETY: off < FLUSH_AT and a record is at most CAP - FLUSH_AT - PREFIX bytes, so it
        // stays inside `data`; off is a multiple of 8 and `data` 8-aligned in the value.
        unsafe {
            (*self.stage)
                .data
                .as_mut_ptr()
                .add(self.off + PREFIX)
                .cast()
        }
    }

    /// Keeps the first `len` bytes of the record; the stage is released when `self` drops.
    /// `drop_as`: what the record counts as if the ring refuses the stage.
    #[inline(always)]
    pub fn commit(self, len: usize, drop_as: DropReason) {
        // SAFETY: the stage is ours until `busy` is cleared below.
        let st = unsafe { &mut *self.stage };
        // SAFETY: off + 8 <= FLUSH_AT + 8 < CAP, 8-aligned (see `record`).
        unsafe { *st.data.as_mut_ptr().add(self.off).cast::<u64>() = len as u64 };
        let end = self.off + PREFIX + ((len + 7) & !7);
        st.len = end as u32;
        st.counts[drop_index(drop_as)] += 1;
        set_staged(end as u32);
    }
}

impl Drop for Slot {
    #[inline(always)]
    fn drop(&mut self) {
        // SAFETY: the stage is this CPU's, held by this slot.
        give(unsafe { &raw mut (*self.stage).busy });
    }
}

/// Takes the stage's lock: an atomic add of 1 (an atomic exchange would need Linux 5.12), then
/// a look at the count. Only the one whose increment is alone in the count owns the stage; the others
/// take theirs back. Every program that touches a stage runs on its CPU (a per-CPU value; the
/// flush is run on that CPU), nested or preempted, and an increment is never lost.
#[inline(always)]
fn take(flag: *mut u64) -> bool {
    atomic_add(flag, 1);
    // SAFETY: flag points into a map value (8-aligned).
    if unsafe { core::ptr::read_volatile(flag) } == 1 {
        return true;
    }
    atomic_add(flag, u64::MAX);
    false
}

/// Releases a lock taken by `take`, after the stores before it (the asm is a compiler barrier;
/// on the CPU the stage belongs to, its own stores are seen in order).
#[inline(always)]
fn give(flag: *mut u64) {
    atomic_add(flag, u64::MAX);
}

#[inline(always)]
fn set_staged(bytes: u32) {
    if let Some(s) = STAGED.get_ptr_mut(0) {
        // SAFETY: this CPU's slot.
        unsafe { *s = bytes };
    }
}

/// Sends the stage's records to the ring as one entry (the stage must be held).
#[inline(always)]
fn flush(st: &mut Stage) {
    let len = st.len as usize;
    if len <= HDR {
        return;
    }
    let count = st.counts[0] + st.counts[1] + st.counts[2];
    // SAFETY: the header's place at the start of `data` (8-aligned).
    unsafe {
        *st.data.as_mut_ptr().cast::<BatchHeader>() = BatchHeader {
            magic: BATCH_MAGIC,
            count,
            bytes: len as u32,
            _pad: 0,
        };
    }
    // Bounded for the verifier (a no-op: len <= FLUSH_AT + PREFIX + a record < CAP).
    let n = if len > CAP { CAP } else { len };
    if NET_EVENTS
        .output::<[u8]>(&st.data[..n], submit_flags(&NET_EVENTS))
        .is_err()
    {
        for (i, reason) in DROP_AS.iter().enumerate() {
            count_drops(*reason, u64::from(st.counts[i]));
        }
    }
    st.len = HDR as u32;
    st.counts = [0; 3];
    set_staged(0);
}

/// Not attached anywhere: the daemon runs it on a CPU (`BPF_PROG_TEST_RUN` with
/// `BPF_F_TEST_RUN_ON_CPU`) to flush that CPU's stage. A stage in use is left for next time.
#[raw_tracepoint(tracepoint = "rmm_flush_stage")]
pub fn flush_stage(_ctx: RawTracePointContext) -> i32 {
    let Some(stage) = STAGES.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's stage.
    let busy = unsafe { &raw mut (*stage).busy };
    if !take(busy) {
        return 1;
    }
    // SAFETY: the stage is ours until `busy` is cleared.
    flush(unsafe { &mut *stage });
    give(busy);
    0
}
