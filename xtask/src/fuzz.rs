//! `cargo xtask fuzz`: every cargo-fuzz target of `fuzz/`, one after the other, from its
//! committed seed corpus, with a summary of what libFuzzer reached.
//!
//! cargo-fuzz needs nightly's `-Zsanitizer`; the stable toolchain accepts it under
//! `RUSTC_BOOTSTRAP=1` (and ships the AddressSanitizer runtime), so no nightly is needed.

use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::{cargo, run_cmd, workspace_root};

pub const TARGETS: &[&str] = &["decode", "dns", "toml", "cgroup", "proc", "syslog_url"];

#[derive(Args, Debug)]
pub struct FuzzArgs {
    /// Seconds of fuzzing per target.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Only this target (default: all of them).
    #[arg(long)]
    pub target: Option<String>,
}

/// Installs cargo-fuzz when `cargo fuzz` does not run.
fn ensure_cargo_fuzz() -> Result<()> {
    let ok = Command::new(cargo())
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        println!("xtask: installing cargo-fuzz (cargo install cargo-fuzz --locked)");
        run_cmd(Command::new(cargo()).args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}

/// The last value of `key` (e.g. `cov:`) on libFuzzer's status lines.
fn last_stat(log: &str, key: &str) -> Option<u64> {
    log.lines()
        .rev()
        .filter(|l| l.starts_with('#'))
        .find_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == key)?;
            words.next()?.parse().ok()
        })
}

pub fn run(args: &FuzzArgs) -> Result<()> {
    ensure_cargo_fuzz()?;
    let root = workspace_root();
    let fuzz = root.join("fuzz");
    let targets: Vec<&str> = match &args.target {
        Some(t) if TARGETS.contains(&t.as_str()) => vec![t.as_str()],
        Some(t) => bail!("unknown fuzz target {t:?} (one of {})", TARGETS.join(", ")),
        None => TARGETS.to_vec(),
    };
    let mut failed = Vec::new();
    let mut rows = Vec::new();
    for t in targets {
        println!("xtask: fuzzing {t} for {} s", args.seconds);
        // libFuzzer writes what it finds into the first directory: the grown corpus (ignored
        // by git); the committed seeds are read only.
        let seeds = fuzz.join("corpus").join(t);
        let corpus = fuzz.join("corpus-grown").join(t);
        std::fs::create_dir_all(&corpus)
            .with_context(|| format!("creating {}", corpus.display()))?;
        let out = Command::new(cargo())
            .current_dir(&fuzz)
            .env("RUSTC_BOOTSTRAP", "1")
            .args(["fuzz", "run", "-O", t])
            .arg(&corpus)
            .arg(&seeds)
            .args(["--", &format!("-max_total_time={}", args.seconds)])
            .arg("-print_final_stats=1")
            .output()
            .with_context(|| format!("starting cargo fuzz run {t}"))?;
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        std::fs::write(root.join(format!("target/fuzz-{t}.log")), &log).ok();
        let final_stat = |k: &str| {
            log.lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let execs = final_stat("stat::number_of_executed_units:");
        let rate = final_stat("stat::average_exec_per_sec:");
        let artifact = log
            .lines()
            .find_map(|l| l.split("Test unit written to ").nth(1))
            .map(str::to_owned);
        rows.push(format!(
            "{t:<12} execs {:>10} exec/s {:>7} cov {:>6} ft {:>6} corpus {:>5} {}",
            execs.map_or("?".into(), |v| v.to_string()),
            rate.map_or("?".into(), |v| v.to_string()),
            last_stat(&log, "cov:").map_or("?".into(), |v| v.to_string()),
            last_stat(&log, "ft:").map_or("?".into(), |v| v.to_string()),
            std::fs::read_dir(&corpus).map_or(0, |d| d.count()),
            match (&artifact, out.status.success()) {
                (Some(a), _) => format!("CRASH {a}"),
                (None, true) => "no crashes".into(),
                (None, false) => format!("FAILED ({})", out.status),
            },
        ));
        if artifact.is_some() || !out.status.success() {
            failed.push(t);
        }
    }
    println!("xtask: fuzz summary (logs in target/fuzz-<target>.log)");
    for r in &rows {
        println!("  {r}");
    }
    if !failed.is_empty() {
        bail!("fuzz targets failed: {}", failed.join(", "));
    }
    Ok(())
}
