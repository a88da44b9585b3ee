//! `rmm-monitor run`: attach, seed the process table, report what is already running, then
//! stream events and alerts until SIGTERM/SIGINT. SIGHUP reloads the rules.
//!
//! Order matters for a race-free start: probes are attached first and the readers start
//! buffering records; only then is /proc read; the processor then applies the buffered records
//! on top of what /proc showed.

use std::{
    io::Write,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow};
use aya::maps::{PerCpuArray, RingBuf};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
};

use crate::{
    alert::wall_now_ns,
    catalog::{RuleSources, Rules},
    decode::{self, Event},
    detect::{Compiled, DetectStats, Detector},
    evidence, fault,
    loss::{self, LossReports, Reporter},
    merge::{self, Merger},
    metrics, privs,
    probes::{self, LoadOptions},
    proctable::{ProcTable, SeedReport},
    reader,
    sinks::{Deliver, SinkReport, SinkSet, journald, json::JsonSink, syslog},
    stats::{KernelDrops, Snapshot, Stats},
    tamper,
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
    pub rules: RuleSources,
    pub sinks: SinkOptions,
    /// Prometheus endpoint `ADDRESS:PORT`, off when `None`.
    pub metrics: Option<String>,
    /// Where the records of SIGKILL and stops are pinned (bpffs); not pinned when `None`.
    pub pin_dir: Option<std::path::PathBuf>,
}

/// Validates everything that can be checked without loading probes: ring sizes, rules, sink
/// URLs and facility, TLS material, the metrics address. `config check` runs exactly this.
pub fn check_options(o: &RunOptions) -> Result<()> {
    probes::check_ring_size(o.load.proc_ring_bytes).context("proc ring")?;
    probes::check_ring_size(o.load.net_ring_bytes).context("net ring")?;
    load_rules(&o.rules).context("loading rules")?;
    syslog::facility_code(o.sinks.syslog_facility.as_deref().unwrap_or("auth"))?;
    let mut tls = false;
    for url in &o.sinks.syslog {
        tls |= matches!(syslog::Transport::parse(url)?, syslog::Transport::Tls(_));
    }
    if tls {
        syslog::tls_config(&o.sinks.tls)?;
    }
    if let Some(m) = &o.metrics {
        m.parse::<std::net::SocketAddr>()
            .with_context(|| format!("metrics address {m:?} is not ADDRESS:PORT"))?;
    }
    Ok(())
}

/// Where alerts go. With none named: journald when its socket exists, else JSON on stdout.
#[derive(Debug, Clone, Default)]
pub struct SinkOptions {
    /// `-` for stdout, or a file to append to.
    pub json: Option<String>,
    pub journald: bool,
    pub syslog: Vec<String>,
    pub syslog_format: Option<syslog::Format>,
    pub syslog_facility: Option<String>,
    pub tls: syslog::TlsFiles,
    /// Alerts queued per sink before new ones are dropped.
    pub queue: usize,
}

/// Builds the sinks (opening files and reading TLS material now, so that mistakes stop the
/// start) and says which were chosen.
pub fn build_sinks(o: &SinkOptions) -> Result<SinkSet> {
    let mut sinks: Vec<Box<dyn Deliver>> = Vec::new();
    if let Some(target) = &o.json {
        sinks.push(Box::new(JsonSink::open(target)?));
    }
    if o.journald {
        sinks.push(Box::new(journald::JournaldSink));
    }
    let facility = syslog::facility_code(o.syslog_facility.as_deref().unwrap_or("auth"))?;
    for url in &o.syslog {
        sinks.push(Box::new(syslog::SyslogSink::new(
            url,
            o.syslog_format.unwrap_or(syslog::Format::Rfc5424),
            facility,
            &o.tls,
        )?));
    }
    if sinks.is_empty() {
        if journald::journald_running() {
            log::info!("no alert sink named: journald is running, alerts go there");
            sinks.push(Box::new(journald::JournaldSink));
        } else {
            log::info!(
                "no alert sink named and journald is not running: alerts go to stdout as JSON lines"
            );
            sinks.push(Box::new(JsonSink::open("-")?));
        }
    }
    SinkSet::start(sinks, o.queue.max(1))
}

/// How long a stop waits for the readers and the processor to finish their work.
const STOP_BOUND: Duration = Duration::from_secs(10);

/// What the processor thread receives: records from a ring, new rules, or a ping from the
/// main loop that it answers by advancing its heartbeat.
pub enum Msg {
    Batch(reader::Drained),
    Reload(Arc<Compiled>),
    Ping,
    /// A stop or reload signal and its sender, at kernel time `.1`: the processor names the
    /// sender from its process table once the records up to then are in (the sender of a
    /// `kill` has usually exited by the time /proc could be read).
    Signal(tamper::Sender, u64),
}

/// Says, when dropped, that a part of the pipeline (the processor, a reader) has ended: on its
/// return and while a panic unwinds it alike, so that the main loop learns of it at once.
struct EndGuard {
    part: &'static str,
    ended: mpsc::UnboundedSender<&'static str>,
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        let _ = self.ended.send(self.part);
    }
}

pub fn run(opts: RunOptions) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(run_async(opts))
}

pub fn load_rules(sources: &RuleSources) -> Result<Arc<Compiled>> {
    let rules = Rules::load(sources)?;
    Ok(Arc::new(Compiled::build(&rules)?))
}

async fn run_async(opts: RunOptions) -> Result<()> {
    // Rules and the alert sink first: a broken rules file or an unwritable alert file stops
    // the daemon before it loads anything into the kernel.
    let compiled = load_rules(&opts.rules).context("loading rules")?;
    let sinks = Arc::new(build_sinks(&opts.sinks)?);
    log::info!(
        "rules: {} tools from {}; alerts: {}",
        compiled.matcher.tools.len(),
        compiled.sources.join(", "),
        sinks.names().join(", ")
    );

    // What a killed previous instance left in bpffs, read before this one pins its own.
    let previous = opts.pin_dir.as_deref().and_then(|d| {
        evidence::take_previous(d)
            .map_err(|e| log::warn!("reading the previous instance's signal records: {e:#}"))
            .ok()
            .flatten()
    });
    let mut loaded = probes::load_and_attach(&opts.load)?;
    let mut evidence = evidence::Evidence::new(&mut loaded.ebpf, opts.pin_dir.as_deref())?;
    // Attached: what only the attach needed goes (see privs.rs for what stays and why). The
    // processor, started below, inherits this and keeps it; this thread drops to its own
    // part once the processor runs.
    match privs::keep_only(privs::PROCESSOR) {
        Ok(d) => log::info!(
            "privileges: attached, keeping {}; dropped {}{}",
            privs::names(d.kept),
            privs::count_or_names(d.permitted),
            if d.bounding != 0 {
                " (also from the bounding set)"
            } else {
                ""
            }
        ),
        Err(e) => log::error!("cannot drop capabilities after the attach: {e:#}"),
    }
    let stats = Arc::new(Stats::default());
    let drops = Arc::new(KernelDrops::new(
        PerCpuArray::try_from(loaded.ebpf.take_map("DROPS").context("map DROPS missing")?)
            .context("map DROPS has the wrong type")?,
        PerCpuArray::try_from(
            loaded
                .ebpf
                .take_map("FILTERED")
                .context("map FILTERED missing")?,
        )
        .context("map FILTERED has the wrong type")?,
    ));
    let detect_stats = Arc::new(Mutex::new(DetectStats::default()));
    let sources = Arc::new(metrics::Sources {
        stats: stats.clone(),
        drops: drops.clone(),
        detect: detect_stats.clone(),
        sinks: sinks.clone(),
        reloads_ok: AtomicU64::new(0),
        loss_records: AtomicU64::new(0),
        reloads_failed: AtomicU64::new(0),
        processes: AtomicU64::new(0),
        kernel: loaded.report.clone(),
    });
    if let Some(addr) = &opts.metrics {
        let local = metrics::serve(addr, sources.clone()).await?;
        log::info!("metrics: http://{local}/metrics");
    }

    let (tx, rx) = mpsc::channel::<Msg>(1024);
    let (stop_tx, stop_rx) = watch::channel(false);
    // The processor and the readers say here when they end; before the stop, that is a death.
    let (ended_tx, mut ended_rx) = mpsc::unbounded_channel::<&'static str>();
    let mut readers = Vec::new();
    for (ring_index, name) in [probes::PROC_RING, probes::NET_RING]
        .into_iter()
        .enumerate()
    {
        let ring = RingBuf::try_from(
            loaded
                .ebpf
                .take_map(name)
                .with_context(|| format!("map {name} missing"))?,
        )
        .with_context(|| format!("map {name} is not a ring buffer"))?;
        let flusher = if name == probes::NET_RING && loaded.staging {
            Some(stage_flusher(&mut loaded.ebpf)?)
        } else {
            None
        };
        let guard = EndGuard {
            part: name,
            ended: ended_tx.clone(),
        };
        let run = reader::run(
            name,
            ring,
            flusher,
            ring_index,
            tx.clone(),
            opts.poll,
            stop_rx.clone(),
        );
        readers.push(tokio::spawn(async move {
            let _guard = guard;
            run.await
        }));
    }
    let reload_tx = tx;

    // The processor seeds the table from /proc (after attach), reports what already runs, and
    // then applies events.
    let proc_stats = stats.clone();
    let events = opts.events;
    let poll = opts.poll;
    let (seeded_tx, seeded_rx) = tokio::sync::oneshot::channel();
    let proc_sinks = sinks.clone();
    let proc_sources = sources.clone();
    let heartbeat = Arc::new(AtomicU64::new(0));
    let proc_heartbeat = heartbeat.clone();
    let guard = EndGuard {
        part: "processor",
        ended: ended_tx,
    };
    let processor = std::thread::Builder::new()
        .name("rmm-processor".into())
        .spawn(move || {
            process(
                guard,
                rx,
                events,
                proc_stats,
                Detector::new(compiled),
                proc_sinks,
                proc_sources,
                seeded_tx,
                &proc_heartbeat,
                poll,
            )
        })
        .context("starting the processor thread")?;
    let (seed, inventory) = seeded_rx
        .await
        .map_err(|_| anyhow!("the processor stopped before reading /proc"))??;

    // Handlers before the ready line and READY=1: a stop sent the moment we say we are ready
    // (systemd, a test) must drain and exit cleanly, not meet the default action and die.
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    // Over tokio's handlers, to learn who sends them.
    tamper::install().context("installing the signal-sender handler")?;
    let hostname = crate::detect::hostname();
    if let Some(r) = previous
        .as_ref()
        .and_then(|p| p.get(rmm_common::signal_slot::KILL as usize))
        .filter(|r| r.count > 0)
        && let Some(a) = evidence::report(r, true, &hostname)
    {
        sinks.dispatch(a);
    }
    let who_sent = |sig: libc::c_int| {
        if let Some(s) = tamper::last_sender(sig) {
            // Sent, not awaited: a full channel must not hold up a stop (the sender is then
            // named from /proc alone, here).
            if let Err(e) = reload_tx.try_send(Msg::Signal(s, merge::kernel_now_ns()))
                && let Msg::Signal(s, _) = e.into_inner()
            {
                tamper::report(&s, &sinks, &hostname);
            }
        }
    };

    privs::thread_keeps("main", privs::RUNTIME);
    // Every thread has dropped by now (the workers as they started, the processor before
    // reading /proc); one that holds more is a bug worth knowing.
    match privs::threads_beyond(privs::PROCESSOR) {
        Ok(over) if !over.is_empty() => log::error!(
            "threads holding capabilities the daemon does not need: {}",
            over.join("; ")
        ),
        Ok(_) => {}
        Err(e) => log::warn!("cannot check the threads' capabilities: {e:#}"),
    }
    if let Err(e) = evidence.register_threads() {
        log::warn!("a SIGKILL or a stop of the daemon will not be recorded: {e:#}");
    }
    let off = loaded.report.off();
    log::info!(
        "ready: {} probes attached ({}); {} processes from /proc ({} unreadable), {} RMM processes already running; kernel {}, {}",
        loaded.attached.len(),
        loaded.attached.join(", "),
        seed.processes,
        seed.unreadable,
        inventory,
        loaded.report.kernel,
        if off.is_empty() {
            "every kernel feature on".to_string()
        } else {
            format!("features off: {}", off.join("; "))
        }
    );
    let status = |snap: &Snapshot| {
        let events: u64 = snap.events.values().sum();
        let lost: u64 = snap.kernel_drops.values().sum();
        let alerts: u64 = detect_stats
            .lock()
            .map(|d| d.alerts.values().sum())
            .unwrap_or(0);
        format!("monitoring: {events} events, {alerts} alerts, {lost} events lost")
    };
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&status(&stats.snapshot(&drops))),
    ]);
    // The watchdog is kicked at half the interval systemd asks for, and only while the
    // processor answers: each tick pings it through the channel the records take, and the
    // next tick kicks only if its heartbeat moved since. A processor stuck in a loop or a
    // lock stops the keep-alives, and systemd kills and restarts the daemon.
    let watchdog = sd_notify::watchdog_enabled();
    let watchdog_period = watchdog.map_or(Duration::from_secs(3600), |d| {
        (d / 2).max(Duration::from_millis(10))
    });
    let mut watchdog_tick = tokio::time::interval(watchdog_period);
    let mut last_beat = None;
    let mut silent_ticks = 0u32;

    let mut tick = tokio::time::interval(opts.stats_interval);
    tick.tick().await;
    let mut last = stats.snapshot(&drops);
    // Losses go to the sinks as records of their own, at most one per reason per interval.
    let mut losses = LossReports::new(
        Reporter::this_process(hostname.clone()),
        opts.stats_interval,
    );
    let report_losses = |losses: &mut LossReports, snap: &Snapshot, force: bool| {
        let totals = loss::totals(snap, &sinks.reports());
        for r in losses.due(&totals, Instant::now(), wall_now_ns(), force) {
            sinks.dispatch(r);
        }
        sources.loss_records.store(losses.records, Relaxed);
    };
    let mut last_tables = crate::detect::Tables::default();
    let mut died = None;
    loop {
        tokio::select! {
            _ = sigterm.recv() => {
                who_sent(libc::SIGTERM);
                log::info!("SIGTERM: draining and stopping");
                break;
            }
            _ = sigint.recv() => {
                who_sent(libc::SIGINT);
                log::info!("SIGINT: draining and stopping");
                break;
            }
            Some(part) = ended_rx.recv() => {
                log::error!("the {part} stopped while the daemon runs: stopping with an error, for the service manager to restart the daemon");
                died = Some(part);
                break;
            }
            _ = watchdog_tick.tick(), if watchdog.is_some() => {
                let beat = heartbeat.load(Relaxed);
                if last_beat != Some(beat) {
                    notify(&[sd_notify::NotifyState::Watchdog]);
                    last_beat = Some(beat);
                    silent_ticks = 0;
                } else {
                    silent_ticks += 1;
                    if silent_ticks == 2 {
                        log::error!(
                            "the processor has not answered for {:?}: the watchdog keep-alive is withheld",
                            watchdog_period * 2
                        );
                    }
                }
                // Full channel: the processor has records to work through, and they move
                // the heartbeat as well.
                let _ = reload_tx.try_send(Msg::Ping);
            }
            _ = sighup.recv() => {
                who_sent(libc::SIGHUP);
                let reloading = sd_notify::NotifyState::monotonic_usec_now();
                let mut states = vec![sd_notify::NotifyState::Reloading];
                if let Ok(m) = reloading {
                    states.push(m);
                }
                notify(&states);
                sinks.reopen();
                // Parsed here, swapped in by the processor between two batches: no event is
                // dropped, and a broken file leaves the old rules in place.
                match load_rules(&opts.rules) {
                    Ok(c) => {
                        let n = c.matcher.tools.len();
                        if reload_tx.send(Msg::Reload(c)).await.is_ok() {
                            sources.reloads_ok.fetch_add(1, Relaxed);
                            log::info!("SIGHUP: rules reloaded ({n} tools)");
                        }
                    }
                    Err(e) => {
                        sources.reloads_failed.fetch_add(1, Relaxed);
                        log::error!("SIGHUP: rules not reloaded, the previous rules stay active: {e:#}");
                    }
                }
                notify(&[sd_notify::NotifyState::Ready]);
            }
            _ = tick.tick() => {
                let now = stats.snapshot(&drops);
                report_interval(&last, &now);
                let tables = sources.detect.lock().map(|d| d.tables.clone()).unwrap_or_default();
                report_tables(&last_tables, &tables);
                last_tables = tables;
                report_losses(&mut losses, &now, false);
                // Threads started since, and a stop the daemon has come back from.
                if let Err(e) = evidence.register_threads() {
                    log::warn!("registering the daemon's threads for the signal records: {e:#}");
                }
                match evidence.new_stop() {
                    Ok(Some(r)) => {
                        if let Some(a) = evidence::report(&r, false, &hostname) {
                            sinks.dispatch(a);
                        }
                    }
                    Ok(None) => {}
                    Err(e) => log::warn!("{e:#}"),
                }
                notify(&[sd_notify::NotifyState::Status(&status(&now))]);
                last = now;
            }
        }
    }
    notify(&[sd_notify::NotifyState::Stopping]);
    drop(reload_tx);
    let _ = stop_tx.send(true);
    // Everything that went wrong, for the exit status: the daemon exits non-zero when a part
    // died, and says why.
    // Bounded: a processor that hangs (and readers waiting for it to take their last batch)
    // must not keep the daemon from exiting; systemd's TimeoutStopSec is 20 s.
    let deadline = tokio::time::Instant::now() + STOP_BOUND;
    let mut failures = Vec::new();
    for mut r in readers {
        let Ok(joined) = tokio::time::timeout_at(deadline, &mut r).await else {
            r.abort();
            failures.push(format!(
                "a reader did not stop within {STOP_BOUND:?} (the processor does not take its records): what it held is lost"
            ));
            continue;
        };
        match joined {
            Ok(Ok(s)) => {
                log::debug!(
                    "reader {} read {} records ({} stage flushes, {} failed)",
                    s.name,
                    s.records,
                    s.flushes,
                    s.flush_errors
                );
                stats
                    .stage_unflushed_bytes
                    .fetch_add(s.unflushed_bytes, Relaxed);
            }
            Ok(Err(e)) => failures.push(format!("reader failed: {e:#}")),
            Err(e) => failures.push(format!("reader task panicked: {e}")),
        }
    }
    while !processor.is_finished() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let joined = if processor.is_finished() {
        processor.join()
    } else {
        Ok(Err(anyhow!(
            "it did not stop within {STOP_BOUND:?}: the records it had not processed are lost"
        )))
    };
    let detect = match joined {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => {
            failures.push(format!("processor failed: {e:#}"));
            DetectStats::default()
        }
        Err(_) => {
            failures.push("processor thread panicked".to_string());
            DetectStats::default()
        }
    };
    for f in &failures {
        log::error!("{f}");
    }
    // What was lost and not reported yet goes out before the sinks close: the loss records
    // of a run add up to its final stats.
    let fin = stats.snapshot(&drops);
    report_losses(&mut losses, &fin, true);
    log::info!("loss records sent: {}", losses.records);
    drop(sources);
    let sink_reports: Vec<SinkReport> = match Arc::try_unwrap(sinks) {
        Ok(set) => set.shutdown(Duration::from_secs(3)),
        Err(set) => set.reports(),
    };
    log::info!(
        "final stats: {}",
        serde_json::to_string(&fin).unwrap_or_default()
    );
    log::info!(
        "final detection stats: {}",
        serde_json::to_string(&detect).unwrap_or_default()
    );
    log::info!(
        "final sink stats: {}",
        serde_json::to_string(&sink_reports).unwrap_or_default()
    );
    // Dropping the Ebpf handle detaches every link.
    drop(loaded);
    match died {
        None if failures.is_empty() => Ok(()),
        None => Err(anyhow!("{}", failures.join("; "))),
        Some(part) => Err(anyhow!(
            "the {part} stopped while the daemon ran{}",
            if failures.is_empty() {
                String::new()
            } else {
                format!(": {}", failures.join("; "))
            }
        )),
    }
}

fn notify(state: &[sd_notify::NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some()
        && let Err(e) = sd_notify::notify(state)
    {
        log::warn!("sd_notify failed: {e}");
    }
}

/// Logs what the tables' caps did since the last report; silent when they did nothing.
fn report_tables(last: &crate::detect::Tables, now: &crate::detect::Tables) {
    let grew: Vec<String> = now
        .evictions()
        .into_iter()
        .zip(last.evictions())
        .filter(|((_, n), (_, l))| n > l)
        .map(|((k, n), (_, l))| format!("{k}={}", n - l))
        .collect();
    if !grew.is_empty() {
        log::warn!(
            "tables at their caps in the last interval: {} ({} processes, {} exited, {} dedup entries)",
            grew.join(", "),
            now.processes,
            now.exited,
            now.dedup
        );
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

/// What the network ring's reader needs to flush the per-CPU stages of network records.
fn stage_flusher(ebpf: &mut aya::Ebpf) -> Result<reader::Flusher> {
    use std::os::fd::AsFd;
    let staged = PerCpuArray::try_from(
        ebpf.take_map(probes::STAGED_MAP)
            .with_context(|| format!("map {} missing", probes::STAGED_MAP))?,
    )
    .with_context(|| format!("map {} has the wrong type", probes::STAGED_MAP))?;
    let prog = ebpf
        .program(probes::FLUSH_PROGRAM)
        .with_context(|| format!("program {} missing", probes::FLUSH_PROGRAM))?
        .fd()
        .with_context(|| format!("program {} not loaded", probes::FLUSH_PROGRAM))?
        .as_fd()
        .try_clone_to_owned()
        .context("duplicating the flush program's fd")?;
    Ok(reader::Flusher::new(prog, staged))
}

type Seeded = Result<(SeedReport, usize)>;

#[allow(clippy::too_many_arguments)]
fn process(
    guard: EndGuard,
    mut rx: mpsc::Receiver<Msg>,
    events: EventsFormat,
    stats: Arc<Stats>,
    mut detector: Detector,
    sinks: Arc<SinkSet>,
    sources: Arc<metrics::Sources>,
    seeded: tokio::sync::oneshot::Sender<Seeded>,
    heartbeat: &AtomicU64,
    poll: Duration,
) -> Result<DetectStats> {
    // A local, dropped before the parameters: the end is announced before `rx` closes, so the
    // readers, which stop when it closes, are never taken for the part that died.
    let _guard = guard;
    privs::thread_keeps("processor", privs::PROCESSOR);
    let fault = fault::Fault::from_env()?;
    let mut table = ProcTable::default();
    let seed = match table.seed(Path::new("/proc")).context("reading /proc") {
        Ok(r) => r,
        Err(e) => {
            let _ = seeded.send(Err(e));
            return Ok(detector.stats);
        }
    };
    stats.proc_unreadable.fetch_add(seed.unreadable, Relaxed);
    let inventory = detector.inventory(&table);
    let found = inventory.len();
    for a in inventory {
        sinks.dispatch(a);
    }
    publish(&sources, &mut detector, &table);
    let _ = seeded.send(Ok((seed, found)));

    // Event lines of a batch are written whole under the stdout lock, taken briefly once per
    // batch: a JSON sink on stdout writes from its own thread and must neither wait for this
    // one nor split its lines.
    let mut out: Vec<u8> = Vec::with_capacity(1 << 16);
    let mut reload = None;
    // Records wait here until both rings have been read past them (see `merge`), at most a
    // few poll periods.
    let hold = (poll * 4 + Duration::from_millis(100)).as_nanos() as u64;
    let mut merger = Merger::new(hold, MAX_HELD_RECORDS);
    let mut ready = Vec::new();
    let mut open = true;
    // Lost process records leave the table wrong (a lost exit leaks an entry, a lost fork or
    // exec hides a process): when the kernel counts new ones, the table is reconciled with
    // /proc, at most once per RECONCILE_EVERY.
    let mut proc_lost = sources.drops.process_records_lost();
    let mut last_reconcile = std::time::Instant::now();
    let hostname = crate::detect::hostname();
    let mut signals = Vec::new();
    while open {
        match rx.blocking_recv() {
            Some(msg) => receive(msg, &mut merger, &mut reload, &mut signals, heartbeat),
            None => open = false,
        }
        // Take what else is waiting, up to a reload (applied between two batches).
        while open && reload.is_none() {
            match rx.try_recv() {
                Ok(msg) => receive(msg, &mut merger, &mut reload, &mut signals, heartbeat),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => open = false,
            }
        }
        if open {
            merger.release(merge::kernel_now_ns(), &mut ready);
        } else {
            // Every reader has sent its last drain.
            merger.release_all(&mut ready);
        }
        for record in ready.drain(..) {
            match decode::decode(&record) {
                Ok(ev) => {
                    fault.on_event(&ev)?;
                    stats.event(ev.kind());
                    table.apply(&ev);
                    if events == EventsFormat::Json && write_json(&mut out, &ev).is_err() {
                        stats.output_errors.fetch_add(1, Relaxed);
                    }
                    if let Some(alert) = detector.on_event(&ev, &table) {
                        sinks.dispatch(alert);
                    }
                }
                Err(e) => {
                    log::debug!("skipped a record: {e}");
                    stats.decode_error(e);
                }
            }
        }
        // Flush per batch: an operator tailing the output sees events within the poll period.
        if !out.is_empty() {
            if crate::sinks::json::write_stdout_lines(&out).is_err() {
                stats.output_errors.fetch_add(1, Relaxed);
            }
            out.clear();
        }
        // Signal senders, once the records up to the signal are in the table.
        signals.retain_mut(|(s, at): &mut (tamper::Sender, u64)| {
            if open && merger.watermark() < *at {
                return true;
            }
            s.complete_from(&table);
            tamper::report(s, &sinks, &hostname);
            false
        });
        if let Some(c) = reload.take() {
            detector.reload(c);
        }
        if last_reconcile.elapsed() >= RECONCILE_EVERY {
            last_reconcile = std::time::Instant::now();
            let lost = sources.drops.process_records_lost();
            if lost > proc_lost {
                proc_lost = lost;
                reconcile(&mut table, &stats);
            }
        }
        stats.records_late.store(merger.late, Relaxed);
        stats.records_forced.store(merger.forced, Relaxed);
        // Published once per batch, not per event.
        publish(&sources, &mut detector, &table);
    }
    Ok(detector.stats)
}

/// Records held for ordering at most (the oldest go past it); a record is a few hundred bytes.
const MAX_HELD_RECORDS: usize = 65_536;

/// How often at most the process table is reconciled with /proc after lost records.
const RECONCILE_EVERY: Duration = Duration::from_secs(1);

fn reconcile(table: &mut ProcTable, stats: &Stats) {
    match table.reconcile(Path::new("/proc")) {
        Ok(r) => {
            stats.reconciles.fetch_add(1, Relaxed);
            stats.reconciled_gone.fetch_add(r.gone, Relaxed);
            stats.reconciled_added.fetch_add(r.added, Relaxed);
            log::warn!(
                "process records were lost: the process table was reconciled with /proc ({} exited unseen, {} found)",
                r.gone,
                r.added
            );
        }
        Err(e) => log::warn!("process records were lost and /proc could not be read: {e}"),
    }
}

/// Takes one message into the processor's state.
fn receive(
    msg: Msg,
    merger: &mut Merger,
    reload: &mut Option<Arc<Compiled>>,
    signals: &mut Vec<(tamper::Sender, u64)>,
    heartbeat: &AtomicU64,
) {
    heartbeat.fetch_add(1, Relaxed);
    match msg {
        Msg::Batch(d) => merger.push(d.ring, d.records, d.read_to),
        Msg::Reload(c) => *reload = Some(c),
        Msg::Ping => {}
        Msg::Signal(s, at) => signals.push((s, at)),
    }
}

/// Makes the processor's counters visible to the metrics endpoint and the status line.
fn publish(sources: &metrics::Sources, detector: &mut Detector, table: &ProcTable) {
    detector.measure(table);
    if let Ok(mut d) = sources.detect.lock() {
        d.clone_from(&detector.stats);
    }
    sources.processes.store(table.len() as u64, Relaxed);
}

fn write_json(out: &mut impl Write, ev: &Event) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, ev)?;
    out.write_all(b"\n")
}
