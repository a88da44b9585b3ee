//! One reader task per ring buffer: it copies records out of the ring and hands them to the
//! processor in batches; it does not decode. Records are collected on readiness (the kernel
//! wakes the fd once enough bytes wait in the ring) and on a short timer, which bounds the
//! delay of a lone event. A ring entry that holds a CPU's staged records (network ring) is
//! split into its records here; on each tick, before reading, the network ring's reader has
//! the kernel flush the stages of the CPUs that have records waiting (`Flusher`).
//!
//! Every drain is sent, empty or not, with the kernel time up to which the ring has been read
//! (`read_to`: the clock just before the flush and the drain, less a slack for records being
//! written at that moment); the processor orders the two rings' records by it (`merge`). A
//! stage found in use by the flush holds records older than that: `read_to` does not move then.

use std::{
    os::fd::{AsFd, OwnedFd},
    time::Duration,
};

use anyhow::{Context, Result};
use aya::maps::{MapData, PerCpuArray, RingBuf};
use bytes::{Bytes, BytesMut};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::{mpsc, watch},
    time::MissedTickBehavior,
};

use crate::decode::split_batch;

pub type Batch = Vec<Bytes>;

pub struct ReaderStats {
    pub name: &'static str,
    pub records: u64,
    /// Stage flushes asked of the kernel, and those that failed (logged once).
    pub flushes: u64,
    pub flush_errors: u64,
    /// At the stop: bytes of staged records left on CPUs that could not be flushed (a CPU
    /// gone offline): lost.
    pub unflushed_bytes: u64,
}

/// A drain of one ring, for the processor.
pub struct Drained {
    /// Index of the ring (`merge`).
    pub ring: usize,
    pub records: Batch,
    /// Kernel time up to which the ring has been read.
    pub read_to: u64,
}

/// Kernel time a record may be older than the clock read before a drain and still be on its
/// way into the ring (written by a program at that moment).
const IN_FLIGHT_NS: u64 = 2_000_000;

/// What a flush did.
#[derive(Debug, Default)]
pub struct Flushed {
    pub flushed: u64,
    /// CPUs whose stage was in use (left for the next flush).
    pub busy: u64,
    /// CPUs that could not be flushed, with the bytes they hold and the error.
    pub failed: Vec<(usize, u32, anyhow::Error)>,
}

/// Has the kernel flush the per-CPU stages of network records (`flush_stage` run on a CPU
/// with `BPF_PROG_TEST_RUN`), for the CPUs whose `STAGED` count is not zero.
pub struct Flusher {
    prog: OwnedFd,
    staged: PerCpuArray<MapData, u32>,
}

impl Flusher {
    pub fn new(prog: OwnedFd, staged: PerCpuArray<MapData, u32>) -> Flusher {
        Flusher { prog, staged }
    }

    /// Flushes every CPU with records waiting, past those that fail (an offline CPU).
    pub fn flush(&self) -> Result<Flushed> {
        let waiting = self
            .staged
            .get(&0, 0)
            .context("reading the STAGED counts")?;
        let mut done = Flushed::default();
        for (cpu, bytes) in waiting.iter().enumerate() {
            if *bytes == 0 {
                continue;
            }
            match crate::probes::run_on_cpu(self.prog.as_fd(), cpu as u32) {
                // flush_stage returns 1 when the stage is in use.
                Ok(0) => done.flushed += 1,
                Ok(_) => done.busy += 1,
                Err(e) => done.failed.push((
                    cpu,
                    *bytes,
                    e.context(format!("flushing the stage of CPU {cpu}")),
                )),
            }
        }
        Ok(done)
    }
}

/// Copies every record that is waiting into the batch.
fn drain(ring: &mut RingBuf<MapData>, buf: &mut BytesMut, batch: &mut Batch) {
    while let Some(item) = ring.next() {
        buf.extend_from_slice(&item);
        let entry = buf.split().freeze();
        match split_batch(&entry) {
            Some(records) => batch.extend(records.into_iter().map(|r| entry.slice(r))),
            None => batch.push(entry),
        }
    }
}

pub async fn run(
    name: &'static str,
    ring: RingBuf<MapData>,
    flusher: Option<Flusher>,
    ring_index: usize,
    tx: mpsc::Sender<crate::daemon::Msg>,
    poll: Duration,
    mut stop: watch::Receiver<bool>,
) -> Result<ReaderStats> {
    // SAFETY: the ring's fd stays open for as long as the AsyncFd owns the RingBuf.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .with_context(|| format!("registering ring {name} with the reactor"))?;
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut buf = BytesMut::with_capacity(1 << 20);
    let mut stats = ReaderStats {
        name,
        records: 0,
        flushes: 0,
        flush_errors: 0,
        unflushed_bytes: 0,
    };
    // Flushes the stages; false when records older than now may still wait in one.
    let flush = |stats: &mut ReaderStats, last: bool| -> bool {
        let Some(f) = &flusher else { return true };
        match f.flush() {
            Ok(done) => {
                stats.flushes += done.flushed;
                for (cpu, bytes, e) in &done.failed {
                    if stats.flush_errors == 0 || last {
                        log::error!(
                            "ring {name}: {e:#}; {}",
                            if last {
                                format!("the {bytes} bytes of records staged on CPU {cpu} are lost")
                            } else {
                                "its staged records wait for the next flush".to_string()
                            }
                        );
                    }
                    stats.flush_errors += 1;
                    if last {
                        stats.unflushed_bytes += u64::from(*bytes);
                    }
                }
                done.busy == 0 && done.failed.is_empty()
            }
            Err(e) => {
                if stats.flush_errors == 0 {
                    log::error!("ring {name}: {e:#}; staged records wait for the next flush");
                }
                stats.flush_errors += 1;
                false
            }
        }
    };
    let mut read_to = 0u64;
    let mut holds_served = 0u64;
    loop {
        if crate::fault::hold_asked(&mut holds_served) {
            // A test's injected fault (debug builds): the ring fills meanwhile. A stop ends
            // the hold (seen on a clone, so that the select below sees it too).
            let mut stopped = stop.clone();
            tokio::select! {
                _ = tokio::time::sleep(crate::fault::HOLD) => {}
                _ = stopped.changed() => {}
            }
            log::warn!("ring {name}: injected hold over, reading again");
        }
        let mut batch = Batch::new();
        // The clock just before the flush and the drain, less what may still be in flight.
        let now = || crate::merge::kernel_now_ns().saturating_sub(IN_FLIGHT_NS);
        let (stopping, complete) = tokio::select! {
            ready = fd.readable_mut() => {
                let mut guard = ready.with_context(|| format!("polling ring {name}"))?;
                let t = now();
                // Drain before clearing readiness: the fd is edge-triggered.
                drain(guard.get_inner_mut(), &mut buf, &mut batch);
                guard.clear_ready();
                // Staged records are not flushed on a wake-up: the network ring's time
                // moves on its ticks only.
                (false, flusher.is_none().then_some(t))
            }
            _ = tick.tick() => {
                let t = now();
                let flushed = flush(&mut stats, false);
                drain(fd.get_mut(), &mut buf, &mut batch);
                (false, flushed.then_some(t))
            }
            _ = stop.changed() => {
                let t = now();
                flush(&mut stats, true);
                drain(fd.get_mut(), &mut buf, &mut batch);
                (true, Some(t))
            }
        };
        if let Some(t) = complete {
            read_to = read_to.max(t);
        }
        if buf.capacity() < 64 << 10 {
            buf.reserve(1 << 20);
        }
        stats.records += batch.len() as u64;
        let drained = Drained {
            ring: ring_index,
            records: batch,
            read_to,
        };
        if tx.send(crate::daemon::Msg::Batch(drained)).await.is_err() {
            // The processor is gone: the daemon is stopping.
            break;
        }
        if stopping {
            break;
        }
    }
    Ok(stats)
}
