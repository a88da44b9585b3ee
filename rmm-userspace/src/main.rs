//! rmm-monitor: watches process execs, outbound connects and DNS queries with eBPF.

mod btf;
mod daemon;
mod decode;
mod dns;
mod probes;
mod proctable;
mod reader;
mod stats;

use std::{process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "rmm-monitor",
    version,
    about = "Detects remote-access (RMM) tools on Linux with eBPF"
)]
struct Cli {
    /// Log level of the daemon's own log on stderr (error, warn, info, debug, trace).
    #[arg(long, global = true, default_value = "info", env = "RMM_LOG")]
    log_level: log::LevelFilter,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Load the probes and stream events until SIGTERM or SIGINT.
    Run(RunArgs),
    /// Print the kernel struct offsets read from BTF (what the exec probe will use).
    Offsets,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Print every event as one JSON line on stdout (`json`), or nothing (`none`).
    #[arg(long, value_enum, default_value = "none")]
    events: daemon::EventsFormat,
    /// Size in bytes of the exec/fork/exit ring buffer (power of two, >= page size).
    #[arg(long, default_value_t = 8 << 20)]
    proc_ring_bytes: u32,
    /// Size in bytes of the connect/DNS ring buffer (power of two, >= page size).
    #[arg(long, default_value_t = 8 << 20)]
    net_ring_bytes: u32,
    /// Wake the reader once this many bytes wait in a ring (0 = on every event); below it,
    /// records are collected every --poll-ms.
    #[arg(long, default_value_t = 256 << 10)]
    wakeup_bytes: u64,
    /// Period of the ring poll timer in milliseconds (bounds the delay of a lone event).
    #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    poll_ms: u64,
    /// Seconds between checks of the loss counters (logged when non-zero).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    stats_interval: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::new()
        .filter_level(cli.log_level)
        .format_target(false)
        .init();
    let result = match cli.command {
        Command::Run(a) => daemon::run(daemon::RunOptions {
            load: probes::LoadOptions {
                proc_ring_bytes: a.proc_ring_bytes,
                net_ring_bytes: a.net_ring_bytes,
                wakeup_bytes: a.wakeup_bytes,
            },
            events: a.events,
            poll: Duration::from_millis(a.poll_ms),
            stats_interval: Duration::from_secs(a.stats_interval),
        }),
        Command::Offsets => btf::Btf::from_file(btf::VMLINUX_BTF)
            .and_then(|b| btf::kernel_offsets(&b))
            .map(|o| println!("{o:#?}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
