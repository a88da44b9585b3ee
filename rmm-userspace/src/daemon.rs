//! `rmm-monitor run`: attach, seed the process table, then stream events until SIGTERM/SIGINT.
//!
//! Order matters for a race-free start: probes are attached first and the readers start
//! buffering records; only then is /proc read; the processor then applies the buffered records
//! on top of what /proc showed.

use std::{
    io::{BufWriter, Write},
    path::Path,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result, anyhow};
use aya::maps::{PerCpuArray, RingBuf};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
};

use crate::{
    decode::{self, Event},
    probes::{self, LoadOptions},
    proctable::ProcTable,
    reader::{self, Batch},
    stats::{KernelDrops, Snapshot, Stats},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EventsFormat {
    /// Every decoded event as one JSON object per line on stdout.
    Json,
    /// No per-event output (counters and log only).
    None,
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub load: LoadOptions,
    pub events: EventsFormat,
    pub poll: Duration,
    pub stats_interval: Duration,
}

pub fn run(opts: RunOptions) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(run_async(opts))
}

async fn run_async(opts: RunOptions) -> Result<()> {
    let mut loaded = probes::load_and_attach(&opts.load)?;
    let stats = Arc::new(Stats::default());
    let drops = KernelDrops::new(
        PerCpuArray::try_from(loaded.ebpf.take_map("DROPS").context("map DROPS missing")?)
            .context("map DROPS has the wrong type")?,
    );

    let (tx, rx) = mpsc::channel::<Batch>(1024);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut readers = Vec::new();
    for name in [probes::PROC_RING, probes::NET_RING] {
        let ring = RingBuf::try_from(
            loaded
                .ebpf
                .take_map(name)
                .with_context(|| format!("map {name} missing"))?,
        )
        .with_context(|| format!("map {name} is not a ring buffer"))?;
        readers.push(tokio::spawn(reader::run(
            name,
            ring,
            tx.clone(),
            opts.poll,
            stop_rx.clone(),
        )));
    }
    drop(tx);

    // The processor seeds the table from /proc (after attach) and then applies events.
    let proc_stats = stats.clone();
    let events = opts.events;
    let (seeded_tx, seeded_rx) = tokio::sync::oneshot::channel();
    let processor = std::thread::Builder::new()
        .name("rmm-processor".into())
        .spawn(move || process(rx, events, proc_stats, seeded_tx))
        .context("starting the processor thread")?;
    let seed = seeded_rx
        .await
        .map_err(|_| anyhow!("the processor stopped before reading /proc"))??;

    log::info!(
        "ready: {} probes attached ({}); {} processes from /proc ({} unreadable){}",
        loaded.attached.len(),
        loaded.attached.join(", "),
        seed.processes,
        seed.unreadable,
        if loaded.offsets_ok {
            ""
        } else {
            "; exec paths and argv unavailable (no kernel offsets)"
        }
    );
    notify(&[sd_notify::NotifyState::Ready]);

    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut tick = tokio::time::interval(opts.stats_interval);
    tick.tick().await;
    let mut last = stats.snapshot(&drops);
    loop {
        tokio::select! {
            _ = sigterm.recv() => { log::info!("SIGTERM: draining and stopping"); break; }
            _ = sigint.recv() => { log::info!("SIGINT: draining and stopping"); break; }
            _ = tick.tick() => {
                let now = stats.snapshot(&drops);
                report_interval(&last, &now);
                last = now;
            }
        }
    }
    notify(&[sd_notify::NotifyState::Stopping]);
    let _ = stop_tx.send(true);
    for r in readers {
        match r.await {
            Ok(Ok(s)) => log::debug!("reader {} read {} records", s.name, s.records),
            Ok(Err(e)) => log::error!("reader failed: {e:#}"),
            Err(e) => log::error!("reader task panicked: {e}"),
        }
    }
    match processor.join() {
        Ok(Ok(procs)) => log::debug!("process table holds {procs} processes at exit"),
        Ok(Err(e)) => log::error!("processor failed: {e:#}"),
        Err(_) => log::error!("processor thread panicked"),
    }
    let fin = stats.snapshot(&drops);
    log::info!(
        "final stats: {}",
        serde_json::to_string(&fin).unwrap_or_default()
    );
    // Dropping the Ebpf handle detaches every link.
    drop(loaded);
    Ok(())
}

fn notify(state: &[sd_notify::NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some()
        && let Err(e) = sd_notify::notify(state)
    {
        log::warn!("sd_notify failed: {e}");
    }
}

/// Logs what was lost since the last report; silent when nothing was.
fn report_interval(last: &Snapshot, now: &Snapshot) {
    let lost: Vec<String> = now
        .kernel_drops
        .iter()
        .filter_map(|(k, v)| {
            let d = v.saturating_sub(last.kernel_drops.get(k).copied().unwrap_or(0));
            (d > 0).then(|| format!("{k}={d}"))
        })
        .collect();
    if !lost.is_empty() {
        log::warn!(
            "kernel dropped events in the last interval: {} (grow the ring buffers or raise the wakeup threshold)",
            lost.join(", ")
        );
    }
    let bad = |f: fn(&Snapshot) -> u64| f(now).saturating_sub(f(last));
    let (size, kind, dns) = (
        bad(|s| s.decode_bad_size),
        bad(|s| s.decode_unknown_kind),
        bad(|s| s.dns_malformed),
    );
    if size + kind + dns > 0 {
        log::warn!(
            "skipped records in the last interval: bad_size={size} unknown_kind={kind} dns_malformed={dns}"
        );
    }
}

fn process(
    mut rx: mpsc::Receiver<Batch>,
    events: EventsFormat,
    stats: Arc<Stats>,
    seeded: tokio::sync::oneshot::Sender<Result<crate::proctable::SeedReport>>,
) -> Result<usize> {
    let mut table = ProcTable::default();
    let seed = table.seed(Path::new("/proc")).context("reading /proc");
    if let Ok(r) = &seed {
        stats
            .proc_unreadable
            .fetch_add(r.unreadable, std::sync::atomic::Ordering::Relaxed);
    }
    let failed = seed.is_err();
    let _ = seeded.send(seed);
    if failed {
        return Ok(0);
    }
    let stdout = std::io::stdout();
    let mut out = BufWriter::with_capacity(1 << 16, stdout.lock());
    while let Some(batch) = rx.blocking_recv() {
        for record in &batch {
            match decode::decode(record) {
                Ok(ev) => {
                    stats.event(kind_of(&ev));
                    table.apply(&ev);
                    if events == EventsFormat::Json && write_json(&mut out, &ev).is_err() {
                        stats
                            .output_errors
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    log::debug!("skipped a record: {e}");
                    stats.decode_error(e);
                }
            }
        }
        // Flush per batch: an operator tailing the output sees events within the poll period.
        if out.flush().is_err() {
            stats
                .output_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
    Ok(table.len())
}

fn write_json(out: &mut impl Write, ev: &Event) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, ev)?;
    out.write_all(b"\n")
}

fn kind_of(ev: &Event) -> rmm_common::EventKind {
    use rmm_common::EventKind as K;
    match ev {
        Event::Exec(_) => K::Exec,
        Event::Fork(_) => K::Fork,
        Event::Exit(_) => K::Exit,
        Event::Connect(_) => K::Connect,
        Event::Dns(_) => K::Dns,
    }
}
