//! `cargo xtask bench`: how much the daemon slows real work, and what it costs itself.
//!
//! Four storms (exec, loopback connect, DNS by sendto, glibc-style DNS by sendmmsg) run R rounds
//! each; a round has three sides: without the daemon (B), under the floor (F) and with a freshly
//! started daemon (M), in the rotating order BFM, FMB, MBF, BFM, ... so that over every three
//! rounds each side runs once first, once second and once last and drift of a shared machine
//! hits all three alike. The floor and the daemon ratios of a round share its baseline. Without
//! bpftrace (or with `--no-floor`) a round is BM in odd rounds and MB in even ones.
//!
//! A side is K short storms back to back (`--repeats`), and its rate is the fastest of them:
//! this machine kind has slow phases, up to a second or two long, in which everything runs up
//! to a third slower, and a storm that falls into one measures the neighbours rather than the
//! monitor. The rates over all K storms and all their time are kept beside it (`all time`).
//!
//! The floor (see `floor.rs`) is bpftrace with a script that only counts, in the kernel, the
//! hits of the tracepoints an exec/connect/DNS monitor hooks: the price of merely being there,
//! below which no tracepoint monitor can go. Start it and wait for `ready` → storm → SIGTERM.
//!
//! With the daemon: start it and wait for `ready` and for it to go idle → CPU snapshot → storms
//! → wait until its stdout holds every marker (or none new for 2 s) → CPU snapshot → (last exec
//! round: latency probes) → memory snapshot → SIGTERM → count the storms' unique markers in its
//! stdout.
//!
//! Only loopback addresses are used: 127.0.0.1 for the connect storm, 127.0.0.53:53 for DNS.

mod floor;
mod monitor;
mod report;
mod storm;
mod sys;

use std::{
    cell::RefCell,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use floor::{Bpftrace, Floored};
use monitor::{Daemon, Drain, Markers, ProcSnap, StopReport, Tail};
use storm::StormResult;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Rounds per workload (each: baseline, floor and daemon sides in rotating order).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=50))]
    rounds: u32,
    /// Storms per side of a round, back to back; the side's rate is the fastest of them.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=50))]
    repeats: u32,
    /// Workloads to run, comma-separated (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Workload>,
    /// Execs per exec storm.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(10..=1_000_000))]
    n_exec: u64,
    /// Connects per connect storm; the storms walk --connect-ports ports again and again.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(10..=10_000_000))]
    n_connect: u64,
    /// Ports of the connect storm: --port-base .. +N-1, kept below the ephemeral range; the
    /// odd ones listen (accepted connects), the even ones are closed (refused).
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u16).range(2..=30_000))]
    connect_ports: u16,
    /// DNS queries per DNS storm (dns and dns-mmsg).
    #[arg(long, default_value_t = 40_000, value_parser = clap::value_parser!(u64).range(10..=10_000_000))]
    n_dns: u64,
    /// First port of the connect storm.
    #[arg(long, default_value_t = 10000, value_parser = clap::value_parser!(u16).range(1025..))]
    port_base: u16,
    /// Exec latency probes in the last exec round (0 = none).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=1000))]
    lat_samples: u64,
    /// Keep the work directory (the daemon's and bpftrace's stdout and stderr of every round).
    #[arg(long)]
    keep: bool,
    /// Skip the floor storms (bpftrace counting on the monitor's tracepoints).
    #[arg(long)]
    no_floor: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    Exec,
    Connect,
    Dns,
    DnsMmsg,
}

impl Workload {
    const ALL: [Workload; 4] = [
        Workload::Exec,
        Workload::Connect,
        Workload::Dns,
        Workload::DnsMmsg,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Exec => "exec",
            Workload::Connect => "connect",
            Workload::Dns => "dns",
            Workload::DnsMmsg => "dns-mmsg",
        }
    }

    fn is_dns(self) -> bool {
        matches!(self, Workload::Dns | Workload::DnsMmsg)
    }
}

/// The DNS responder's address (loopback), and the CPU the connect and DNS storms and the
/// responder run on (the daemon is not pinned).
const DNS_SERVER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 53), 53);
const STORM_CPU: usize = 0;
/// After a storm, the daemon has caught up once every marker is out, or none new came for this.
const DRAIN_QUIET_S: f64 = 2.0;
const DRAIN_TIMEOUT_S: f64 = 60.0;
/// After `ready`, before the storm: at least the first, then until the daemon (or bpftrace) is
/// idle, the second at most.
const SETTLE_S: (f64, f64) = (0.2, 5.0);
const LAT_INTERVAL_S: f64 = 0.1;
const LAT_TIMEOUT_S: f64 = 5.0;

/// What the storms need to know, fixed for the run.
struct Ctx {
    daemon: PathBuf,
    work: PathBuf,
    nonce: String,
    exec_prog: PathBuf,
    port_base: u16,
    connect_ports: u16,
    rounds: u32,
    repeats: u32,
    lat_samples: u64,
    n_exec: u64,
    n_connect: u64,
    n_dns: u64,
    /// bpftrace for the floor storms; None when absent or not wanted.
    floor: Option<Bpftrace>,
    /// Why the floor is not measured (absent, not wanted, or failed to start: then the rest
    /// of the run goes without it).
    floor_off: RefCell<Option<String>>,
}

impl Ctx {
    fn n_of(&self, wl: Workload) -> u64 {
        match wl {
            Workload::Exec => self.n_exec,
            Workload::Connect => self.n_connect,
            Workload::Dns => self.n_dns,
            Workload::DnsMmsg => self.n_dns + self.n_dns % 2,
        }
    }

    /// bpftrace when the floor is still measured.
    fn floor(&self) -> Option<&Bpftrace> {
        self.floor
            .as_ref()
            .filter(|_| self.floor_off.borrow().is_none())
    }

    /// One side of a round: `repeats` storms of `wl`, `n` operations each, back to back,
    /// numbered on from one storm to the next (their markers differ); the connect and DNS storms
    /// pinned to STORM_CPU. `ours`: the pid of the daemon or bpftrace under test, not to be
    /// listed among other tracers.
    fn storm(&self, wl: Workload, n: u64, repeats: u32, ours: Option<i32>) -> Result<StormResult> {
        let others = monitor::other_tracers(ours.as_slice());
        let busy0 = sys::machine_busy_s();
        let _pin = match wl {
            Workload::Exec => None,
            _ => Some(sys::pin_to_cpu(STORM_CPU)?),
        };
        let mut runs = Vec::new();
        for k in 0..u64::from(repeats) {
            let first = k * n;
            runs.push(match wl {
                Workload::Exec => storm::exec(first, n, &self.exec_prog, &self.nonce),
                Workload::Connect => storm::connect(first, n, self.port_base, self.connect_ports),
                Workload::Dns => storm::dns_sendto(first, n, DNS_SERVER, &self.nonce),
                Workload::DnsMmsg => storm::dns_mmsg(first, n, DNS_SERVER, &self.nonce),
            }?);
        }
        let mut res = StormResult::combine(runs);
        if let (Some(b0), Some(b1)) = (busy0, sys::machine_busy_s())
            && res.elapsed_s > 0.0
        {
            res.busy_cpus = Some((b1 - b0) / res.elapsed_s);
        }
        res.other_tracers = others;
        Ok(res)
    }
}

/// The work directory, removed when dropped unless kept.
struct WorkDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("bench: work directory kept: {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Everything measured in one monitored storm.
#[derive(Debug, Clone, Serialize)]
pub struct Monitored {
    pub storm: Option<StormResult>,
    pub ready_s: f64,
    /// From `ready` to the storm, and whether the daemon was idle by then.
    pub settle_s: f64,
    pub settled: bool,
    pub snap_before: ProcSnap,
    pub snap_after: Option<ProcSnap>,
    pub snap_end: Option<ProcSnap>,
    /// Daemon CPU from just before the storm to catch-up: schedstat of its threads.
    pub cpu_s: Option<f64>,
    /// The same from /proc/PID/stat utime+stime (clock ticks).
    pub cpu_stat_s: Option<f64>,
    pub drain: Option<Drain>,
    pub issued: u64,
    pub seen: u64,
    pub lost: u64,
    /// Lines the daemon wrote in all (every event of the machine, not only the storm's).
    pub daemon_lines: u64,
    pub unparsed_lines: u64,
    pub stop: Option<StopReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<Vec<Option<f64>>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Round {
    pub round: u32,
    /// The storms in the order they ran: B baseline, F floor, M daemon.
    pub order: &'static str,
    pub baseline: Option<StormResult>,
    pub monitored: Option<Monitored>,
    /// baseline ÷ monitored, each side's fastest storm (`best_ops_per_s`).
    pub ratio: Option<f64>,
    /// The same with all of each side's storms and all of their time (`ops_per_s`).
    pub ratio_all_time: Option<f64>,
    pub error: Option<String>,
    pub floor: Option<Floored>,
    /// baseline ÷ floor, fastest storms.
    pub floor_ratio: Option<f64>,
    pub floor_ratio_all_time: Option<f64>,
    /// ratio − floor_ratio: the daemon's cost above the floor, against the same baseline.
    pub daemon_minus_floor: Option<f64>,
    pub daemon_minus_floor_all_time: Option<f64>,
    pub floor_error: Option<String>,
    pub loadavg: Option<String>,
}

/// The storms of round `r` (from 1) in the order they run.
fn round_order(r: u32, with_floor: bool) -> &'static str {
    if with_floor {
        ["BFM", "FMB", "MBF"][((r - 1) % 3) as usize]
    } else if r % 2 == 1 {
        "BM"
    } else {
        "MB"
    }
}

pub fn run(daemon: &Path, args: &BenchArgs) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the bench loads eBPF programs and binds port 53: run it as root");
    }
    if !daemon.is_file() {
        bail!("no daemon binary at {}", daemon.display());
    }
    let eph_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(32768);
    let last_port = u64::from(args.port_base) + u64::from(args.connect_ports);
    if last_port > eph_low {
        bail!(
            "connect ports {}..{} reach the ephemeral range (from {eph_low}): lower --connect-ports or --port-base",
            args.port_base,
            last_port - 1
        );
    }
    let workloads: Vec<Workload> = if args.only.is_empty() {
        Workload::ALL.to_vec()
    } else {
        Workload::ALL
            .into_iter()
            .filter(|w| args.only.contains(w))
            .collect()
    };
    sys::install_stop_handlers()?;

    let nonce = sys::nonce()?;
    let work = WorkDir {
        path: std::env::temp_dir().join(format!("rmm-bench-{nonce}")),
        keep: args.keep,
    };
    std::fs::create_dir_all(&work.path)
        .with_context(|| format!("creating {}", work.path.display()))?;
    let exec_prog = work.path.join(format!("storm-exec-{nonce}"));
    std::fs::copy("/bin/true", &exec_prog).context("copying /bin/true into the work directory")?;
    let (floor, floor_off) = if args.no_floor {
        (None, Some("not measured (--no-floor)".to_string()))
    } else {
        match Bpftrace::find() {
            Some(bt) => (Some(bt), None),
            None => {
                eprintln!(
                    "bench: NOTE: bpftrace not found (Debian package `bpftrace`): the FLOOR rows are skipped"
                );
                (
                    None,
                    Some("not measured: bpftrace not found (Debian package `bpftrace`)".into()),
                )
            }
        }
    };
    let ctx = Ctx {
        daemon: daemon.to_path_buf(),
        work: work.path.clone(),
        nonce,
        exec_prog,
        port_base: args.port_base,
        connect_ports: args.connect_ports,
        rounds: args.rounds,
        repeats: args.repeats,
        lat_samples: args.lat_samples,
        n_exec: args.n_exec,
        n_connect: args.n_connect,
        n_dns: args.n_dns,
        floor,
        floor_off: RefCell::new(floor_off),
    };
    let started = std::time::SystemTime::now();
    let t0 = sys::now_s();
    eprintln!(
        "bench: {} round(s) of {} (nonce {}, daemon {}, floor {})",
        ctx.rounds,
        workloads
            .iter()
            .map(|w| w.name())
            .collect::<Vec<_>>()
            .join(", "),
        ctx.nonce,
        daemon.display(),
        ctx.floor
            .as_ref()
            .map_or("skipped".into(), |b| format!("{} counting", b.version))
    );

    let mut results = Vec::new();
    for wl in &workloads {
        results.push(run_workload(&ctx, *wl)?);
    }

    let meta = report::Meta::new(&ctx, &workloads, started, sys::now_s() - t0);
    let doc = report::Doc::new(meta, results);
    let out_dir = crate::workspace_root().join("target/bench");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let out = out_dir.join("latest.json");
    std::fs::write(&out, serde_json::to_string_pretty(&doc)?)
        .with_context(|| format!("writing {}", out.display()))?;
    print!("{}", doc.table());
    println!("\nRaw numbers: {}", out.display());
    eprintln!("bench: done in {:.0} s", sys::now_s() - t0);
    Ok(())
}

fn run_workload(ctx: &Ctx, wl: Workload) -> Result<report::WorkloadResult> {
    let n = ctx.n_of(wl);
    let _responder = if wl.is_dns() {
        Some(storm::Responder::start(DNS_SERVER, Some(STORM_CPU))?)
    } else {
        None
    };
    let warm = ctx
        .storm(wl, (n / 10).max(2), 1, None)
        .with_context(|| format!("warm-up {} storm", wl.name()))?;
    if warm.errors > 0 {
        eprintln!(
            "bench: [{}] warm-up: {} of {} operations failed",
            wl.name(),
            warm.errors,
            warm.ops
        );
    }
    let mut rounds = Vec::new();
    for r in 1..=ctx.rounds {
        let order = round_order(r, ctx.floor().is_some());
        let mut round = Round {
            round: r,
            order,
            baseline: None,
            monitored: None,
            ratio: None,
            ratio_all_time: None,
            error: None,
            floor: None,
            floor_ratio: None,
            floor_ratio_all_time: None,
            daemon_minus_floor: None,
            daemon_minus_floor_all_time: None,
            floor_error: None,
            loadavg: std::fs::read_to_string("/proc/loadavg")
                .ok()
                .map(|s| s.trim().to_string()),
        };
        for phase in order.chars() {
            if phase == 'B' {
                round.baseline = Some(
                    ctx.storm(wl, n, ctx.repeats, None)
                        .with_context(|| format!("{} storm", wl.name()))?,
                );
                sys::sleep_s(0.5)?;
            } else if phase == 'F' {
                let Some(bt) = ctx.floor() else { continue };
                let (f, valid) = floor_storm(ctx, bt, wl, r);
                round.floor = f;
                if let Err(e) = valid {
                    sys::check_stop()?;
                    eprintln!("bench: [{}] round {r}: floor: {e:#}", wl.name());
                    round.floor_error = Some(format!("{e:#}"));
                }
                sys::sleep_s(1.0)?;
            } else {
                match monitored(ctx, wl, r) {
                    Ok(m) => {
                        if let Some(log) = m
                            .stop
                            .as_ref()
                            .and_then(|s| s.exited_before_sigterm.as_ref())
                        {
                            round.error = Some(format!("the daemon exited before SIGTERM: {log}"));
                        }
                        round.monitored = Some(m);
                    }
                    Err(e) => {
                        sys::check_stop()?;
                        eprintln!("bench: [{}] round {r}: {e:#}", wl.name());
                        round.error = Some(format!("{e:#}"));
                    }
                }
                sys::sleep_s(1.0)?;
            }
        }
        let b = round.baseline.clone();
        let m = round.monitored.as_ref().and_then(|m| m.storm.clone());
        // A floor whose probes missed storm operations (floor_error) gives no ratio.
        let f = round
            .floor
            .as_ref()
            .filter(|_| round.floor_error.is_none())
            .and_then(|f| f.storm.clone());
        let ratio = |x: &StormResult, y: &StormResult, rate: fn(&StormResult) -> f64| {
            (rate(y) > 0.0).then(|| rate(x) / rate(y))
        };
        let best = |s: &StormResult| s.best_ops_per_s;
        let all = |s: &StormResult| s.ops_per_s;
        if let Some(b) = &b {
            if let Some(m) = &m {
                round.ratio = ratio(b, m, best);
                round.ratio_all_time = ratio(b, m, all);
            }
            if let Some(f) = &f {
                round.floor_ratio = ratio(b, f, best);
                round.floor_ratio_all_time = ratio(b, f, all);
            }
        }
        if let (Some(m), Some(f)) = (round.ratio, round.floor_ratio) {
            round.daemon_minus_floor = Some(m - f);
        }
        if let (Some(m), Some(f)) = (round.ratio_all_time, round.floor_ratio_all_time) {
            round.daemon_minus_floor_all_time = Some(m - f);
        }
        eprintln!(
            "bench: [{}] round {r}/{} ({order}): {}",
            wl.name(),
            ctx.rounds,
            report::round_line(&round)
        );
        rounds.push(round);
    }
    Ok(report::WorkloadResult::new(wl, n, rounds))
}

/// One storm under a fresh floor, and whether it is valid: bpftrace started (if not, the rest
/// of the run goes without the floor), the storm ran, and its probes counted at least one hit
/// per successful operation of the storm.
fn floor_storm(
    ctx: &Ctx,
    bt: &Bpftrace,
    wl: Workload,
    round: u32,
) -> (Option<Floored>, Result<()>) {
    let fl = match floor::Floor::start(bt, &ctx.work.join(format!("{}-r{round}-floor", wl.name())))
    {
        Ok(fl) => fl,
        Err(e) => {
            if sys::check_stop().is_ok() {
                eprintln!("bench: NOTE: bpftrace did not start, the FLOOR is skipped from here on");
                *ctx.floor_off.borrow_mut() = Some(format!(
                    "not measured from {} round {round} on: bpftrace did not start: {e:#}",
                    wl.name()
                ));
            }
            return (None, Err(e));
        }
    };
    let n = ctx.n_of(wl);
    let f = match floor::floored(fl, SETTLE_S, |pid| {
        ctx.storm(wl, n, ctx.repeats, Some(pid))
            .with_context(|| format!("{} storm under the floor", wl.name()))
    }) {
        Ok(f) => f,
        Err(e) => return (None, Err(e)),
    };
    let counted = f.stop.as_ref().and_then(|s| s.events);
    if counted.is_some_and(|c| c >= f.min_events) {
        return (Some(f), Ok(()));
    }
    let e = anyhow::anyhow!(
        "bpftrace counted {} probe hits, fewer than the storm's {} operations: its probes were not all live (stderr: {})",
        counted.map_or("no".into(), |c| c.to_string()),
        f.min_events,
        f.stop
            .as_ref()
            .map_or(String::new(), |s| s.stderr.join(" | "))
    );
    (Some(f), Err(e))
}

/// One storm with a fresh daemon.
fn monitored(ctx: &Ctx, wl: Workload, round: u32) -> Result<Monitored> {
    let n = ctx.n_of(wl) * u64::from(ctx.repeats);
    let daemon = Daemon::start(
        &ctx.daemon,
        &ctx.work.join(format!("{}-r{round}", wl.name())),
    )?;
    let (settle_s, settled) = monitor::settle(daemon.pid, SETTLE_S.0, SETTLE_S.1)?;
    let mut tail = Tail::open(&daemon.stdout)?;
    let mut markers = Markers::new(wl, n, &ctx.nonce, ctx.port_base, ctx.connect_ports);
    let snap_before = daemon.snapshot();
    let mut m = Monitored {
        storm: None,
        ready_s: daemon.ready_s,
        settle_s,
        settled,
        snap_before,
        snap_after: None,
        snap_end: None,
        cpu_s: None,
        cpu_stat_s: None,
        drain: None,
        issued: n,
        seen: 0,
        lost: n,
        daemon_lines: 0,
        unparsed_lines: 0,
        stop: None,
        latency_ms: None,
    };
    let storm = ctx
        .storm(wl, ctx.n_of(wl), ctx.repeats, Some(daemon.pid))
        .with_context(|| format!("{} storm with the daemon", wl.name()))?;
    m.storm = Some(storm);
    m.drain = Some(monitor::drain(
        &mut tail,
        &mut markers,
        DRAIN_QUIET_S,
        DRAIN_TIMEOUT_S,
    )?);
    let after = daemon.snapshot();
    if after.threads > 0 {
        m.cpu_s = Some(after.sched_cpu_s - m.snap_before.sched_cpu_s);
        m.cpu_stat_s = Some(after.stat_cpu_s - m.snap_before.stat_cpu_s);
    }
    m.snap_after = Some(after);
    if wl == Workload::Exec && round == ctx.rounds && ctx.lat_samples > 0 {
        eprintln!(
            "bench: [exec] latency: {} single execs, {:.0}-{:.0} ms apart",
            ctx.lat_samples,
            LAT_INTERVAL_S * 1000.0,
            LAT_INTERVAL_S * 1500.0
        );
        m.latency_ms = Some(monitor::exec_latency(
            &daemon.stdout,
            &ctx.exec_prog,
            &ctx.nonce,
            ctx.lat_samples as usize,
            LAT_INTERVAL_S,
            LAT_TIMEOUT_S,
        )?);
    }
    m.snap_end = Some(daemon.snapshot());
    m.stop = Some(daemon.stop()?);
    markers.feed(&tail.read_all()?);
    markers.finish();
    m.seen = markers.seen;
    m.lost = n.saturating_sub(markers.seen);
    m.daemon_lines = markers.lines;
    m.unparsed_lines = markers.unparsed;
    Ok(m)
}
