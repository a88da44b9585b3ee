//! rmm-monitor: detects remote-access (RMM) tools on Linux with eBPF.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use rmm_userspace::{btf, catalog, daemon, probes, rules_cmd};

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

#[derive(clap::Args, Debug, Clone)]
struct RuleArgs {
    /// Extra rules file (TOML); repeatable. Read after the rules directory; a tool with the
    /// same id replaces the earlier definition.
    #[arg(long = "rules", value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Directory of *.toml rules files, read in name order (missing is fine).
    #[arg(long, value_name = "DIR", default_value = catalog::DEFAULT_RULES_DIR)]
    rules_dir: PathBuf,
    /// Do not load the embedded default catalog.
    #[arg(long)]
    no_default_rules: bool,
}

impl RuleArgs {
    fn sources(&self) -> catalog::RuleSources {
        catalog::RuleSources {
            no_default: self.no_default_rules,
            dir: Some(self.rules_dir.clone()),
            files: self.files.clone(),
        }
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Load the probes and report events and alerts until SIGTERM or SIGINT (SIGHUP reloads
    /// the rules).
    Run(RunArgs),
    /// Report RMM processes running now (from /proc) and exit; no eBPF needed.
    Scan {
        #[command(flatten)]
        rules: RuleArgs,
        /// Where alerts go: `-` for stdout or a file to append JSON lines to.
        #[arg(long, value_name = "PATH", default_value = "-")]
        json: String,
    },
    /// Check and list rules files.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Print the kernel struct offsets read from BTF (what the exec probe will use).
    Offsets,
}

#[derive(Subcommand, Debug)]
enum RulesCommand {
    /// Validate rules files; errors are reported as FILE:LINE:COLUMN: message.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the effective catalog (default, rules directory and --rules files merged).
    List {
        #[command(flatten)]
        rules: RuleArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Alert sinks; any combination. With none named, alerts go to journald when it runs, else to
/// JSON lines on stdout.
#[derive(clap::Args, Debug)]
struct SinkArgs {
    /// Append alerts as JSON lines to PATH (`-` = stdout).
    #[arg(long, value_name = "PATH")]
    json: Option<String>,
    /// Send alerts to journald (native protocol).
    #[arg(long)]
    journald: bool,
    /// Send alerts to syslog: unix:///dev/log, udp://HOST:PORT, tcp://HOST:PORT (octet counting)
    /// or tls://HOST:PORT; repeatable.
    #[arg(long, value_name = "URL")]
    syslog: Vec<String>,
    /// Syslog message format.
    #[arg(long, value_enum)]
    syslog_format: Option<rmm_userspace::sinks::syslog::Format>,
    /// Syslog facility (auth, daemon, local0..local7, ...; default auth).
    #[arg(long, value_name = "NAME")]
    syslog_facility: Option<String>,
    /// CA bundle for tls:// (default: the system bundle).
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// Client certificate for tls:// (with --tls-key).
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// Client key for tls:// (with --tls-cert).
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Alerts queued per sink before new ones are dropped (and counted).
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    sink_queue: u32,
}

impl SinkArgs {
    fn options(&self) -> daemon::SinkOptions {
        daemon::SinkOptions {
            json: self.json.clone(),
            journald: self.journald,
            syslog: self.syslog.clone(),
            syslog_format: self.syslog_format,
            syslog_facility: self.syslog_facility.clone(),
            tls: rmm_userspace::sinks::syslog::TlsFiles {
                ca: self.tls_ca.clone(),
                cert: self.tls_cert.clone(),
                key: self.tls_key.clone(),
            },
            queue: self.sink_queue as usize,
        }
    }
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Print every event as one JSON line on stdout (`json`), or nothing (`none`).
    #[arg(long, value_enum, default_value = "none")]
    events: daemon::EventsFormat,
    #[command(flatten)]
    sinks: SinkArgs,
    #[command(flatten)]
    rules: RuleArgs,
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
            rules: a.rules.sources(),
            sinks: a.sinks.options(),
        }),
        Command::Scan { rules, json } => rules_cmd::scan(&rules.sources(), &json),
        Command::Rules {
            command: RulesCommand::Check { files },
        } => rules_cmd::check(&files),
        Command::Rules {
            command: RulesCommand::List { rules, json },
        } => rules_cmd::list(&rules.sources(), json),
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
