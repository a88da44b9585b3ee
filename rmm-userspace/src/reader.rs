//! One reader task per ring buffer: it copies records out of the ring and hands them to the
//! processor in batches; it does not decode. Records are collected on readiness (the kernel
//! wakes the fd once enough bytes wait in the ring) and on a short timer, which bounds the
//! delay of a lone event. A ring entry that holds a CPU's staged records (network ring) is
//! split into its records here; on each tick, before reading, the network ring's reader has
//! the kernel flush the stages of the CPUs that have records waiting (`Flusher`).

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

    /// Flushes every CPU with records waiting; returns how many were flushed.
    pub fn flush(&self) -> Result<u64> {
        let waiting = self
            .staged
            .get(&0, 0)
            .context("reading the STAGED counts")?;
        let mut n = 0;
        for (cpu, bytes) in waiting.iter().enumerate() {
            if *bytes > 0 {
                crate::probes::run_on_cpu(self.prog.as_fd(), cpu as u32)
                    .with_context(|| format!("flushing the stage of CPU {cpu}"))?;
                n += 1;
            }
        }
        Ok(n)
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
    };
    let flush = |stats: &mut ReaderStats| {
        let Some(f) = &flusher else { return };
        match f.flush() {
            Ok(n) => stats.flushes += n,
            Err(e) => {
                if stats.flush_errors == 0 {
                    log::error!("ring {name}: {e:#}; staged records wait for the next flush");
                }
                stats.flush_errors += 1;
            }
        }
    };
    loop {
        let mut batch = Batch::new();
        let stopping = tokio::select! {
            ready = fd.readable_mut() => {
                let mut guard = ready.with_context(|| format!("polling ring {name}"))?;
                // Drain before clearing readiness: the fd is edge-triggered.
                drain(guard.get_inner_mut(), &mut buf, &mut batch);
                guard.clear_ready();
                false
            }
            _ = tick.tick() => {
                flush(&mut stats);
                drain(fd.get_mut(), &mut buf, &mut batch);
                false
            }
            _ = stop.changed() => {
                flush(&mut stats);
                drain(fd.get_mut(), &mut buf, &mut batch);
                true
            }
        };
        if buf.capacity() < 64 << 10 {
            buf.reserve(1 << 20);
        }
        stats.records += batch.len() as u64;
        if !batch.is_empty() && tx.send(crate::daemon::Msg::Batch(batch)).await.is_err() {
            // The processor is gone: the daemon is stopping.
            break;
        }
        if stopping {
            break;
        }
    }
    Ok(stats)
}
