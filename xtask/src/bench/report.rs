//! Per-workload summaries over rounds, the printed table and the JSON document.

use std::fmt::Write as _;

use serde::Serialize;

use super::{
    Ctx, DNS_SERVER, DRAIN_QUIET_S, Round, STORM_CPU, Workload, floor, storm::StormResult,
};

/// What the daemon should stay within, above the floor's slowdown.
pub const FLOOR_TARGET: f64 = 0.03;

/// How the floor was measured, or why not.
#[derive(Debug, Serialize)]
pub struct FloorMeta {
    /// bpftrace's path and `--version`, None when it was not found or not wanted.
    pub bpftrace: Option<floor::Bpftrace>,
    pub cmd: Option<Vec<String>>,
    pub script: &'static str,
    /// Why the floor was not measured (at all, or from some round on).
    pub skipped: Option<String>,
    pub target_daemon_minus_floor: f64,
}

#[derive(Debug, Serialize)]
pub struct Meta {
    pub started_unix_s: u64,
    pub elapsed_s: f64,
    pub kernel: String,
    pub cpus: usize,
    pub daemon: String,
    pub daemon_cmd: String,
    pub rounds: u32,
    pub repeats: u32,
    pub workloads: Vec<&'static str>,
    pub nonce: String,
    pub port_base: u16,
    pub connect_ports: u16,
    pub dns_server: String,
    pub storm_cpu: usize,
    pub drain_quiet_s: f64,
    pub lat_samples: u64,
    pub cmdline: Vec<String>,
    pub floor: FloorMeta,
    pub method: Vec<&'static str>,
}

const METHOD: [&str; 11] = [
    "ops/s: operations of one storm / its wall time (CLOCK_MONOTONIC, first op to end of last; setup before the clock)",
    "side: each side of a round (B, F, M) is meta.repeats storms of N operations back to back (markers numbered on across them); its rate is the fastest of them (best_ops_per_s): this machine kind has slow phases of up to a second or two in which everything runs up to a third slower, and a storm that fell into one measures the neighbour, not the monitor; all storms and all their time are in ops_per_s and the *_all_time ratios",
    "slowdown: per round baseline rate / monitored rate (daemon or floor), each side's fastest storm; median and min-max over rounds; the same with all of each side's time in the all-time column",
    "rounds: B baseline, F floor, M daemon side, in the order BFM, FMB, MBF, BFM, ... (each side first, second and last once in every three rounds); without the floor BM in odd rounds, MB in even; 0.5 s pause after B, 1 s after F and M",
    "floor: bpftrace -B line -e <meta.floor.script>, started fresh per round, storm after its BEGIN `ready` line (printed only once every probe is attached), then at least 0.2 s and until bpftrace is idle (under 1 ms of CPU in 100 ms; 5 s at most; the daemon likewise after its `ready` line); SIGTERM after the storm; @events = probe hits while it ran, a round whose count is below the storm's successful operations is failed; daemon - floor = per round, daemon slowdown - floor slowdown (same baseline), median and min-max over rounds; daemon_minus_floor_of_medians = difference of the two medians",
    "lost: issued - seen, worst round; seen = unique storm markers in the daemon's JSON stdout (exec: args hold sx<nonce>.<i>; connect: daddr 127.0.0.1 and dport = base+k, the storm's connects walking its meta.connect_ports ports again and again, each port counted up to the connects made to it; dns: qname = q<i>.storm-<nonce>.test)",
    "daemon CPU: sum of /proc/PID/task/*/schedstat run time, just before the storm to catch-up (all markers out, or none new for 2 s); per 1000 storm operations issued",
    "peak RSS: VmHWM of the daemon from /proc/PID/status just before SIGTERM, largest over rounds",
    "latency: last exec round, single execs 100-150 ms apart (random, so that they fall at every phase of the daemon's poll timer), each stamped with CLOCK_MONOTONIC in the child right before execve; seen = a reader thread (inotify on the stdout file) finds a complete exec line holding its marker; nearest-rank p50/p99",
    "kernel drops: sum of kernel_drops in the daemon's `final stats` line on SIGTERM, per round",
    "connect and DNS storms and the DNS responder (127.0.0.53:53, NXDOMAIN to everything) are pinned to CPU meta.storm_cpu; the exec storm and the daemon are not pinned",
];

impl Meta {
    pub(super) fn new(
        ctx: &Ctx,
        workloads: &[Workload],
        started: std::time::SystemTime,
        elapsed_s: f64,
    ) -> Meta {
        Meta {
            started_unix_s: started
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            elapsed_s,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .into(),
            cpus: super::sys::online_cpus(),
            daemon: ctx.daemon.display().to_string(),
            daemon_cmd: format!("{} run --events json", ctx.daemon.display()),
            rounds: ctx.rounds,
            repeats: ctx.repeats,
            workloads: workloads.iter().map(|w| w.name()).collect(),
            nonce: ctx.nonce.clone(),
            port_base: ctx.port_base,
            connect_ports: ctx.connect_ports,
            dns_server: DNS_SERVER.to_string(),
            storm_cpu: STORM_CPU,
            drain_quiet_s: DRAIN_QUIET_S,
            lat_samples: ctx.lat_samples,
            cmdline: std::env::args().collect(),
            floor: FloorMeta {
                bpftrace: ctx.floor.clone(),
                cmd: ctx.floor.as_ref().map(floor::Bpftrace::cmd),
                script: floor::SCRIPT,
                skipped: ctx.floor_off.borrow().clone(),
                target_daemon_minus_floor: FLOOR_TARGET,
            },
            method: METHOD.to_vec(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub samples: usize,
    pub seen: usize,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub workload: &'static str,
    pub n: u64,
    pub rounds: usize,
    pub rounds_ok: usize,
    pub baseline_ops_median: Option<f64>,
    pub monitored_ops_median: Option<f64>,
    pub ratio_median: Option<f64>,
    pub ratio_min: Option<f64>,
    pub ratio_max: Option<f64>,
    /// Medians over rounds with all of each side's time (not only its fastest storm).
    pub ratio_all_time_median: Option<f64>,
    pub floor_ratio_all_time_median: Option<f64>,
    pub daemon_minus_floor_all_time: Option<f64>,
    pub seen_per_round: Vec<u64>,
    pub lost_worst: Option<u64>,
    pub cpu_s_median: Option<f64>,
    pub cpu_s_per_1k_median: Option<f64>,
    pub peak_rss_kb: Option<u64>,
    pub latency: Option<Latency>,
    pub kernel_drops_per_round: Vec<Option<u64>>,
    pub storm_errors: u64,
    /// Whole-machine busy CPUs during the storms (baseline, floor and daemon), min and max.
    pub busy_cpus_min: Option<f64>,
    pub busy_cpus_max: Option<f64>,
    pub drain_s_max: Option<f64>,
    pub drains_not_complete: usize,
    pub failed_rounds: Vec<String>,
    /// Other monitors or tracers (by comm) running at the start of some round: their probes
    /// fire on the storms too, on all sides, and their CPU use is noise.
    pub other_tracers_seen: Vec<String>,
    /// The floor: rounds with a valid floor storm, its ops/s and slowdown.
    pub floor_rounds_ok: usize,
    pub floor_ops_median: Option<f64>,
    pub floor_ratio_median: Option<f64>,
    pub floor_ratio_min: Option<f64>,
    pub floor_ratio_max: Option<f64>,
    /// bpftrace's @events (probe hits of the whole machine while it ran), per floor round.
    pub floor_events_per_round: Vec<Option<u64>>,
    pub floor_ready_s_max: Option<f64>,
    pub floor_failed_rounds: Vec<String>,
    /// Median over rounds of ratio − floor_ratio (both against the round's own baseline, so
    /// a baseline storm that ran fast or slow shifts both alike): the headline.
    pub daemon_minus_floor: Option<f64>,
    /// ratio_median − floor_ratio_median, for reference.
    pub daemon_minus_floor_of_medians: Option<f64>,
    /// Per round: ratio − floor_ratio.
    pub daemon_minus_floor_per_round: Vec<f64>,
    pub daemon_minus_floor_round_min: Option<f64>,
    pub daemon_minus_floor_round_max: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct WorkloadResult {
    pub summary: Summary,
    pub rounds: Vec<Round>,
}

pub fn median(v: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

/// Nearest-rank percentile.
pub fn percentile(v: &[f64], p: f64) -> Option<f64> {
    let mut v = v.to_vec();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0 * v.len() as f64).ceil() as usize).max(1);
    Some(v[rank.min(v.len()) - 1])
}

fn fmin(v: &[f64]) -> Option<f64> {
    v.iter().copied().reduce(f64::min)
}

fn fmax(v: &[f64]) -> Option<f64> {
    v.iter().copied().reduce(f64::max)
}

impl WorkloadResult {
    pub fn new(wl: Workload, n: u64, rounds: Vec<Round>) -> WorkloadResult {
        let mons: Vec<_> = rounds.iter().filter_map(|r| r.monitored.as_ref()).collect();
        let base_ops: Vec<f64> = rounds
            .iter()
            .filter_map(|r| Some(r.baseline.as_ref()?.best_ops_per_s))
            .collect();
        let mon_ops: Vec<f64> = mons
            .iter()
            .filter_map(|m| Some(m.storm.as_ref()?.best_ops_per_s))
            .collect();
        let ratios: Vec<f64> = rounds.iter().filter_map(|r| r.ratio).collect();
        let all_time =
            |f: fn(&Round) -> Option<f64>| median(&rounds.iter().filter_map(f).collect::<Vec<_>>());
        let cpus: Vec<f64> = mons.iter().filter_map(|m| m.cpu_s).collect();
        let per_1k: Vec<f64> = mons
            .iter()
            .filter_map(|m| Some(m.cpu_s? / m.issued as f64 * 1000.0))
            .collect();
        let latency = mons
            .iter()
            .rev()
            .find_map(|m| m.latency_ms.as_ref())
            .map(|l| {
                let seen: Vec<f64> = l.iter().flatten().copied().collect();
                Latency {
                    samples: l.len(),
                    seen: seen.len(),
                    p50_ms: percentile(&seen, 50.0),
                    p99_ms: percentile(&seen, 99.0),
                    max_ms: fmax(&seen),
                }
            });
        let floors: Vec<_> = rounds.iter().filter_map(|r| r.floor.as_ref()).collect();
        let floor_ratios: Vec<f64> = rounds.iter().filter_map(|r| r.floor_ratio).collect();
        let floor_ops: Vec<f64> = rounds
            .iter()
            .filter(|r| r.floor_ratio.is_some())
            .filter_map(|r| Some(r.floor.as_ref()?.storm.as_ref()?.best_ops_per_s))
            .collect();
        let diffs: Vec<f64> = rounds.iter().filter_map(|r| r.daemon_minus_floor).collect();
        let busy: Vec<f64> = storms(&rounds).filter_map(|s| s.busy_cpus).collect();
        let storm_errors = storms(&rounds).map(|s| s.errors).sum();
        let (ratio_median, floor_ratio_median) = (median(&ratios), median(&floor_ratios));
        let summary = Summary {
            workload: wl.name(),
            n,
            rounds: rounds.len(),
            rounds_ok: ratios.len(),
            baseline_ops_median: median(&base_ops),
            monitored_ops_median: median(&mon_ops),
            ratio_median,
            ratio_min: fmin(&ratios),
            ratio_max: fmax(&ratios),
            ratio_all_time_median: all_time(|r| r.ratio_all_time),
            floor_ratio_all_time_median: all_time(|r| r.floor_ratio_all_time),
            daemon_minus_floor_all_time: all_time(|r| r.daemon_minus_floor_all_time),
            seen_per_round: mons.iter().map(|m| m.seen).collect(),
            lost_worst: mons.iter().map(|m| m.lost).max(),
            cpu_s_median: median(&cpus),
            cpu_s_per_1k_median: median(&per_1k),
            peak_rss_kb: mons
                .iter()
                .filter_map(|m| Some(m.snap_end.as_ref()?.vm_hwm_kb))
                .max(),
            latency,
            kernel_drops_per_round: mons
                .iter()
                .map(|m| m.stop.as_ref().and_then(|s| s.kernel_drops_sum))
                .collect(),
            storm_errors,
            busy_cpus_min: fmin(&busy),
            busy_cpus_max: fmax(&busy),
            drain_s_max: fmax(
                &mons
                    .iter()
                    .filter_map(|m| Some(m.drain.as_ref()?.drain_s))
                    .collect::<Vec<_>>(),
            ),
            drains_not_complete: mons
                .iter()
                .filter(|m| {
                    m.drain
                        .as_ref()
                        .is_some_and(|d| d.why != "all markers seen")
                })
                .count(),
            failed_rounds: rounds.iter().filter_map(|r| r.error.clone()).collect(),
            other_tracers_seen: {
                let mut v: Vec<String> = storms(&rounds)
                    .flat_map(|s| &s.other_tracers)
                    .map(|t| t.split('[').next().unwrap_or(t).to_string())
                    .collect();
                v.sort();
                v.dedup();
                v
            },
            floor_rounds_ok: floor_ratios.len(),
            floor_ops_median: median(&floor_ops),
            floor_ratio_median,
            floor_ratio_min: fmin(&floor_ratios),
            floor_ratio_max: fmax(&floor_ratios),
            floor_events_per_round: floors
                .iter()
                .map(|f| f.stop.as_ref().and_then(|s| s.events))
                .collect(),
            floor_ready_s_max: fmax(&floors.iter().map(|f| f.ready_s).collect::<Vec<_>>()),
            floor_failed_rounds: rounds
                .iter()
                .filter_map(|r| Some(format!("round {}: {}", r.round, r.floor_error.as_ref()?)))
                .collect(),
            daemon_minus_floor: median(&diffs),
            daemon_minus_floor_of_medians: ratio_median.zip(floor_ratio_median).map(|(m, f)| m - f),
            daemon_minus_floor_per_round: diffs.clone(),
            daemon_minus_floor_round_min: fmin(&diffs),
            daemon_minus_floor_round_max: fmax(&diffs),
        };
        WorkloadResult { summary, rounds }
    }
}

/// The storms of some rounds: baseline, floor and daemon.
fn storms(rounds: &[Round]) -> impl Iterator<Item = &StormResult> {
    rounds
        .iter()
        .flat_map(|r| {
            [
                r.baseline.as_ref(),
                r.floor.as_ref().and_then(|f| f.storm.as_ref()),
                r.monitored.as_ref().and_then(|m| m.storm.as_ref()),
            ]
        })
        .flatten()
}

/// One progress line for a finished round.
pub fn round_line(r: &Round) -> String {
    let mut s = String::new();
    let busy = |st: &StormResult| {
        let b = st
            .busy_cpus
            .map_or(String::new(), |b| format!(", {b:.1} CPUs busy"));
        format!(" (all {:.0}/s{b})", st.ops_per_s)
    };
    if let Some(b) = &r.baseline {
        let _ = write!(s, "baseline {:.0}/s{}", b.best_ops_per_s, busy(b));
    }
    if let Some(f) = &r.floor {
        if let Some(st) = &f.storm {
            let _ = write!(s, ", floor {:.0}/s{}", st.best_ops_per_s, busy(st));
        }
        if let Some(x) = r.floor_ratio {
            let _ = write!(s, ", floor ratio {x:.3}");
        }
        if let Some(c) = f.stop.as_ref().and_then(|s| s.events) {
            let _ = write!(s, " ({c} probe hits)");
        }
    }
    if let Some(m) = &r.monitored {
        if let Some(st) = &m.storm {
            let _ = write!(s, ", with daemon {:.0}/s{}", st.best_ops_per_s, busy(st));
        }
        if let Some(x) = r.ratio {
            let _ = write!(s, ", ratio {x:.3}");
        }
        if let Some(d) = r.daemon_minus_floor {
            let _ = write!(s, " (floor {d:+.3})");
        }
        let _ = write!(s, ", seen {}/{}", m.seen, m.issued);
        if let Some(c) = m.cpu_s {
            let _ = write!(s, ", daemon CPU {c:.2} s");
        }
        if let Some(d) = m.stop.as_ref().and_then(|s| s.kernel_drops_sum) {
            let _ = write!(s, ", kernel drops {d}");
        }
        if let Some(d) = &m.drain {
            let _ = write!(s, ", caught up in {:.1} s ({})", d.drain_s, d.why);
        }
    }
    let mut others: Vec<&str> = storms(std::slice::from_ref(r))
        .flat_map(|s| &s.other_tracers)
        .map(String::as_str)
        .collect();
    others.sort_unstable();
    others.dedup();
    if !others.is_empty() {
        let _ = write!(s, "; other tracers running: {}", others.join(" "));
    }
    if let Some(e) = &r.floor_error {
        let _ = write!(s, "; FLOOR FAILED: {e}");
    }
    if let Some(e) = &r.error {
        let _ = write!(s, "; FAILED: {e}");
    }
    s
}

#[derive(Debug, Serialize)]
pub struct Doc {
    pub meta: Meta,
    pub results: Vec<WorkloadResult>,
}

fn opt(x: Option<f64>, digits: usize) -> String {
    x.map_or_else(|| "–".into(), |v| format!("{v:.digits$}"))
}

fn thousands(x: f64) -> String {
    let s = format!("{:.0}", x);
    let (sign, digits) = s.split_at(usize::from(s.starts_with('-')));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

impl Doc {
    pub fn new(meta: Meta, results: Vec<WorkloadResult>) -> Doc {
        Doc { meta, results }
    }

    /// The Markdown table, its notes below it.
    pub fn table(&self) -> String {
        let head = [
            "workload",
            "monitor",
            "N × storms",
            "baseline ops/s",
            "monitored ops/s",
            "slowdown median (min–max)",
            "daemon − floor median (min…max)",
            "all time: slowdown / − floor",
            "events lost, worst round",
            "daemon CPU ms / 1k events",
            "peak RSS MB",
            "exec→event p50 / p99 ms",
            "kernel drops / round",
        ];
        let mut rows: Vec<Vec<String>> = vec![head.iter().map(|s| s.to_string()).collect()];
        let mut notes = Vec::new();
        let mut cpu_note: Vec<String> = Vec::new();
        let mut busy_note: Vec<String> = Vec::new();
        let ratio = |m: Option<f64>, lo: Option<f64>, hi: Option<f64>| match (m, lo, hi) {
            (Some(m), Some(lo), Some(hi)) => format!("{m:.3} ({lo:.3}–{hi:.3})"),
            _ => "–".into(),
        };
        for r in &self.results {
            let s = &r.summary;
            // A FLOOR row wherever a floor storm was tried.
            if r.rounds
                .iter()
                .any(|r| r.floor.is_some() || r.floor_error.is_some())
            {
                rows.push(vec![
                    s.workload.into(),
                    "FLOOR".into(),
                    format!("{}×{}", thousands(s.n as f64), self.meta.repeats),
                    s.baseline_ops_median.map_or("–".into(), thousands),
                    s.floor_ops_median.map_or("–".into(), thousands),
                    ratio(s.floor_ratio_median, s.floor_ratio_min, s.floor_ratio_max),
                    String::new(),
                    opt(s.floor_ratio_all_time_median, 3),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                ]);
            }
            let diff = match (
                s.daemon_minus_floor,
                s.daemon_minus_floor_round_min,
                s.daemon_minus_floor_round_max,
            ) {
                (Some(d), Some(lo), Some(hi)) => format!("{d:+.3} ({lo:+.3}…{hi:+.3})"),
                (Some(d), _, _) => format!("{d:+.3}"),
                _ => "–".into(),
            };
            let lost = match (
                s.lost_worst,
                s.seen_per_round.iter().min(),
                s.seen_per_round.iter().max(),
            ) {
                (Some(l), Some(lo), Some(hi)) => {
                    format!(
                        "{} ({}–{} seen)",
                        thousands(l as f64),
                        thousands(*lo as f64),
                        thousands(*hi as f64)
                    )
                }
                _ => "–".into(),
            };
            let lat = match &s.latency {
                Some(l) if l.seen > 0 => format!("{} / {}", opt(l.p50_ms, 1), opt(l.p99_ms, 1)),
                Some(_) => "none seen".into(),
                None => "–".into(),
            };
            let drops = if s.kernel_drops_per_round.is_empty() {
                "–".into()
            } else {
                s.kernel_drops_per_round
                    .iter()
                    .map(|d| d.map_or("?".into(), |d| d.to_string()))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            rows.push(vec![
                s.workload.into(),
                "daemon".into(),
                format!("{}×{}", thousands(s.n as f64), self.meta.repeats),
                s.baseline_ops_median.map_or("–".into(), thousands),
                s.monitored_ops_median.map_or("–".into(), thousands),
                ratio(s.ratio_median, s.ratio_min, s.ratio_max),
                diff,
                format!(
                    "{} / {}",
                    opt(s.ratio_all_time_median, 3),
                    s.daemon_minus_floor_all_time
                        .map_or("–".into(), |d| format!("{d:+.3}"))
                ),
                lost,
                opt(s.cpu_s_per_1k_median.map(|x| x * 1000.0), 2),
                opt(s.peak_rss_kb.map(|k| k as f64 / 1024.0), 1),
                lat,
                drops,
            ]);
            let w = s.workload;
            if s.storm_errors > 0 {
                notes.push(format!(
                    "{w}: {} storm operations failed (all sides, all rounds)",
                    s.storm_errors
                ));
            }
            if s.drains_not_complete > 0 {
                notes.push(format!(
                    "{w}: in {} round(s) the daemon's output never held every marker (stopped waiting after {DRAIN_QUIET_S} s without a new one)",
                    s.drains_not_complete
                ));
            }
            if let Some(l) = &s.latency
                && l.seen < l.samples
            {
                notes.push(format!(
                    "{w}: {} of {} latency probes not seen within 5 s",
                    l.samples - l.seen,
                    l.samples
                ));
            }
            let with_others = r
                .rounds
                .iter()
                .filter(|r| storms(std::slice::from_ref(*r)).any(|s| !s.other_tracers.is_empty()))
                .count();
            if with_others > 0 {
                notes.push(format!(
                    "{w}: WARNING: other monitors/tracers were running just before a storm in {with_others} of {} rounds ({}); \
                     their probes fire on the storms and their CPU use is noise: rerun on a quiet machine",
                    r.rounds.len(),
                    s.other_tracers_seen.join(", ")
                ));
            }
            for e in &s.failed_rounds {
                notes.push(format!("{w}: failed round: {e}"));
            }
            for e in &s.floor_failed_rounds {
                notes.push(format!("{w}: FLOOR failed in {e}"));
            }
            if let (Some(lo), Some(hi)) = (s.busy_cpus_min, s.busy_cpus_max) {
                busy_note.push(format!("{w} {lo:.1}–{hi:.1}"));
            }
            if let Some(c) = s.cpu_s_median {
                cpu_note.push(format!("{w} {c:.3} s"));
            }
        }
        if let Some(bt) = &self.meta.floor.bpftrace
            && self.results.iter().any(|r| r.summary.floor_rounds_ok > 0)
        {
            notes.push(format!(
                "FLOOR = {} counting in the kernel on sched_process_exec and sys_enter_connect/sendto/sendmsg/sendmmsg \
                 (one map update per hit, nothing reaches userspace per event), started fresh per round like the daemon: \
                 the price of merely having BPF programs on these tracepoints, below which no tracepoint monitor can go; \
                 its min–max is the noise of this run. Rounds: B = baseline, F = floor, M = daemon storm, in the order BFM, FMB, MBF, …",
                bt.version
            ));
            notes.push(format!(
                "daemon − floor = per round, the daemon's slowdown − the floor's, both against that round's baseline \
                 (so a baseline storm that ran fast or slow shifts both alike); median and min…max over rounds \
                 (target ≤ {FLOOR_TARGET:.2}). The difference of the two median columns is in the JSON \
                 (daemon_minus_floor_of_medians)"
            ));
            notes.push(
                "ops/s and slowdowns are those of each side's fastest storm of the round (this machine kind has slow \
                 phases of a second or two in which everything runs up to a third slower); \"all time\" counts every \
                 storm and all of its time instead: noisier, shown for comparison"
                    .into(),
            );
        }
        if let Some(why) = &self.meta.floor.skipped {
            notes.push(format!("FLOOR {why}"));
        }
        if !cpu_note.is_empty() {
            notes.push(format!(
                "daemon CPU per storm, storm start to catch-up (median): {}",
                cpu_note.join(", ")
            ));
        }
        if !busy_note.is_empty() {
            notes.push(format!(
                "busy CPUs of the whole machine during the storms, min–max (noise if well above what the storm needs): {}",
                busy_note.join(", ")
            ));
        }
        let widths: Vec<usize> = (0..head.len())
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "rmm-monitor overhead: {} round(s) per workload, {} storms per side, kernel {}, {} CPUs, {:.0} s",
            self.meta.rounds,
            self.meta.repeats,
            self.meta.kernel,
            self.meta.cpus,
            self.meta.elapsed_s
        );
        let _ = writeln!(out);
        for (i, r) in rows.iter().enumerate() {
            let cells: Vec<String> = r
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(c, (v, w))| {
                    let pad = " ".repeat(w - v.chars().count());
                    if c < 2 {
                        format!(" {v}{pad} ")
                    } else {
                        format!(" {pad}{v} ")
                    }
                })
                .collect();
            let _ = writeln!(out, "|{}|", cells.join("|"));
            if i == 0 {
                let rule: Vec<String> = widths
                    .iter()
                    .enumerate()
                    .map(|(c, w)| {
                        if c < 2 {
                            "-".repeat(w + 2)
                        } else {
                            format!("{}:", "-".repeat(w + 1))
                        }
                    })
                    .collect();
                let _ = writeln!(out, "|{}|", rule.join("|"));
            }
        }
        notes.push(
            "events = storm operations issued, one marked event each (an exec also makes a fork and an exit event); \
             lost = issued − unique markers in the daemon's output; daemon CPU = schedstat of its threads from just \
             before the storm until it caught up; the method of each number is in meta.method of the JSON"
                .into(),
        );
        if !notes.is_empty() {
            let _ = writeln!(out);
            for n in notes {
                let _ = writeln!(out, "- {n}");
            }
        }
        out
    }
}
