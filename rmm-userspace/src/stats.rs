//! Counters of what the daemon received, decoded and lost, and the kernel's drop counters.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use aya::maps::{MapData, PerCpuArray};
use rmm_common::{DropReason, EventKind, FilterReason};
use serde::Serialize;

use crate::decode::DecodeError;

#[derive(Default)]
pub struct Stats {
    events: [AtomicU64; 7],
    pub bad_size: AtomicU64,
    pub unknown_kind: AtomicU64,
    pub dns_malformed: AtomicU64,
    pub proc_unreadable: AtomicU64,
    pub output_errors: AtomicU64,
    /// Records the merge of the two rings released after a later one (too late for their
    /// place), and those it released before both rings were read past them (held too long).
    pub records_late: AtomicU64,
    pub records_forced: AtomicU64,
    /// At the stop: bytes of staged network records on CPUs that could not be flushed.
    pub stage_unflushed_bytes: AtomicU64,
    /// Reconciliations of the process table with /proc after lost process records, and what
    /// they changed.
    pub reconciles: AtomicU64,
    pub reconciled_gone: AtomicU64,
    pub reconciled_added: AtomicU64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Snapshot {
    pub events: std::collections::BTreeMap<&'static str, u64>,
    pub decode_bad_size: u64,
    pub decode_unknown_kind: u64,
    pub dns_malformed: u64,
    pub proc_unreadable: u64,
    pub output_errors: u64,
    pub records_late: u64,
    pub records_forced: u64,
    pub stage_unflushed_bytes: u64,
    pub reconciles: u64,
    pub reconciled_gone: u64,
    pub reconciled_added: u64,
    /// Records the kernel could not deliver, by reason.
    pub kernel_drops: std::collections::BTreeMap<&'static str, u64>,
    /// What the kernel left out on purpose (no record was wanted), by reason.
    pub kernel_filtered: std::collections::BTreeMap<&'static str, u64>,
}

impl Stats {
    pub fn event(&self, kind: EventKind) {
        self.events[kind as usize].fetch_add(1, Relaxed);
    }

    pub fn decode_error(&self, e: DecodeError) {
        match e {
            DecodeError::BadSize => &self.bad_size,
            DecodeError::UnknownKind(_) => &self.unknown_kind,
            DecodeError::MalformedDns => &self.dns_malformed,
        }
        .fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self, drops: &KernelDrops) -> Snapshot {
        Snapshot {
            events: EventKind::ALL
                .iter()
                .map(|k| (k.name(), self.events[*k as usize].load(Relaxed)))
                .collect(),
            decode_bad_size: self.bad_size.load(Relaxed),
            decode_unknown_kind: self.unknown_kind.load(Relaxed),
            dns_malformed: self.dns_malformed.load(Relaxed),
            proc_unreadable: self.proc_unreadable.load(Relaxed),
            output_errors: self.output_errors.load(Relaxed),
            records_late: self.records_late.load(Relaxed),
            records_forced: self.records_forced.load(Relaxed),
            stage_unflushed_bytes: self.stage_unflushed_bytes.load(Relaxed),
            reconciles: self.reconciles.load(Relaxed),
            reconciled_gone: self.reconciled_gone.load(Relaxed),
            reconciled_added: self.reconciled_added.load(Relaxed),
            kernel_drops: drops.read(),
            kernel_filtered: drops.read_filtered(),
        }
    }
}

/// The kernel's per-CPU `DROPS` and `FILTERED` arrays, summed over CPUs.
pub struct KernelDrops {
    map: Option<PerCpuArray<MapData, u64>>,
    filtered: Option<PerCpuArray<MapData, u64>>,
}

impl KernelDrops {
    pub fn new(map: PerCpuArray<MapData, u64>, filtered: PerCpuArray<MapData, u64>) -> Self {
        KernelDrops {
            map: Some(map),
            filtered: Some(filtered),
        }
    }

    /// Process records lost (exec, fork and exit together).
    pub fn process_records_lost(&self) -> u64 {
        [
            DropReason::ExecReserve,
            DropReason::ForkReserve,
            DropReason::ExitReserve,
        ]
        .iter()
        .map(|r| self.total(*r))
        .sum()
    }

    fn total(&self, r: DropReason) -> u64 {
        sum(self.map.as_ref(), r as u32)
    }

    pub fn read_filtered(&self) -> std::collections::BTreeMap<&'static str, u64> {
        FilterReason::ALL
            .iter()
            .map(|r| (r.name(), sum(self.filtered.as_ref(), *r as u32)))
            .collect()
    }

    pub fn read(&self) -> std::collections::BTreeMap<&'static str, u64> {
        DropReason::ALL
            .iter()
            .map(|r| (r.name(), self.total(*r)))
            .collect()
    }
}

fn sum(map: Option<&PerCpuArray<MapData, u64>>, index: u32) -> u64 {
    map.and_then(|m| m.get(&index, 0).ok())
        .map(|per_cpu| per_cpu.iter().copied().sum())
        .unwrap_or(0)
}
