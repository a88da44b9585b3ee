//! One reader task per ring buffer: it copies records out of the ring and hands them to the
//! processor in batches; it does not decode. Records are collected on readiness (the kernel
//! wakes the fd once enough bytes wait) and on a short timer (records submitted without a
//! wakeup), which bounds the delay of a lone event.

use std::time::Duration;

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use bytes::{Bytes, BytesMut};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::{mpsc, watch},
    time::MissedTickBehavior,
};

pub type Batch = Vec<Bytes>;

pub struct ReaderStats {
    pub name: &'static str,
    pub records: u64,
}

/// Copies every record that is waiting into the batch.
fn drain(ring: &mut RingBuf<MapData>, buf: &mut BytesMut, batch: &mut Batch) {
    while let Some(item) = ring.next() {
        buf.extend_from_slice(&item);
        batch.push(buf.split().freeze());
    }
}

pub async fn run(
    name: &'static str,
    ring: RingBuf<MapData>,
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
    let mut stats = ReaderStats { name, records: 0 };
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
                drain(fd.get_mut(), &mut buf, &mut batch);
                false
            }
            _ = stop.changed() => {
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
