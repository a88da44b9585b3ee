//! rmm-monitor: detects remote-access (RMM) tools on Linux with eBPF.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use rmm_userspace::{btf, catalog, config, daemon, probes, rules_cmd};

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

#[derive(clap::Args, Debug, Clone, Default)]
struct RuleArgs {
    /// Extra rules file (TOML); repeatable. Read after the rules directory; a tool with the
    /// same id replaces the earlier definition.
    #[arg(long = "rules", value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Directory of *.toml rules files, read in name order (missing is fine; default
    /// /etc/rmm-monitor/rules.d).
    #[arg(long, value_name = "DIR")]
    rules_dir: Option<PathBuf>,
    /// Do not load the embedded default catalog.
    #[arg(long)]
    no_default_rules: bool,
}

impl RuleArgs {
    fn sources(&self) -> catalog::RuleSources {
        catalog::RuleSources {
            no_default: self.no_default_rules,
            dir: Some(
                self.rules_dir
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(catalog::DEFAULT_RULES_DIR)),
            ),
            files: self.files.clone(),
        }
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Load the probes and report events and alerts until SIGTERM or SIGINT (SIGHUP reloads
    /// the rules).
    Run(Box<RunArgs>),
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
    /// Check a configuration file (default /etc/rmm-monitor/config.toml).
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Print the kernel struct offsets read from BTF (what the exec probe will use).
    Offsets,
    /// Write the man page (roff) to stdout.
    #[command(hide = true)]
    Manpage,
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Parse and validate: unknown keys and bad values are errors with their location.
    Check { file: Option<PathBuf> },
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
#[derive(clap::Args, Debug, Default)]
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
    /// Alerts queued per sink before new ones are dropped (and counted; default 4096).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    sink_queue: Option<u32>,
}

#[derive(clap::Args, Debug, Default)]
struct RunArgs {
    /// Configuration file; flags given here win over it.
    #[arg(long, value_name = "FILE", env = "RMM_CONFIG")]
    config: Option<PathBuf>,
    /// Print every event as one JSON line on stdout (`json`), or nothing (`none`, default).
    #[arg(long, value_enum)]
    events: Option<daemon::EventsFormat>,
    #[command(flatten)]
    sinks: SinkArgs,
    #[command(flatten)]
    rules: RuleArgs,
    /// Size in bytes of the exec/fork/exit ring buffer (power of two, >= page size; default 2 MiB).
    #[arg(long)]
    proc_ring_bytes: Option<u32>,
    /// Size in bytes of the connect/DNS ring buffer (power of two, >= page size; default 2 MiB).
    #[arg(long)]
    net_ring_bytes: Option<u32>,
    /// Wake the reader once this many bytes wait in a ring (0 = on every event, and no per-CPU
    /// staging of network records; default 256 KiB); below it, records are collected every
    /// --poll-ms.
    #[arg(long)]
    wakeup_bytes: Option<u64>,
    /// Period of the ring poll timer in milliseconds (bounds the delay of a lone event; default 25).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    poll_ms: Option<u64>,
    /// Seconds between checks of the loss counters (logged when non-zero; default 10).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    stats_interval: Option<u64>,
    /// Serve Prometheus metrics on ADDRESS:PORT (e.g. 127.0.0.1:9464); off by default.
    #[arg(long, value_name = "ADDRESS:PORT")]
    metrics: Option<String>,
    /// Directory in bpffs where the record of who killed the daemon (SIGKILL) is kept for the
    /// next start (default /sys/fs/bpf/rmm-monitor; "" to keep none).
    #[arg(long, value_name = "DIR")]
    pin_dir: Option<PathBuf>,
}

/// Flags over the configuration file over the defaults.
fn resolve(a: &RunArgs, c: &config::Config) -> daemon::RunOptions {
    let r = &a.rules;
    let s = &a.sinks;
    let ca = &c.alerts;
    daemon::RunOptions {
        load: probes::LoadOptions {
            proc_ring_bytes: a.proc_ring_bytes.or(c.rings.proc_bytes).unwrap_or(2 << 20),
            net_ring_bytes: a.net_ring_bytes.or(c.rings.net_bytes).unwrap_or(2 << 20),
            wakeup_bytes: a.wakeup_bytes.or(c.rings.wakeup_bytes).unwrap_or(256 << 10),
        },
        events: a
            .events
            .or(c.events.format.map(Into::into))
            .unwrap_or(daemon::EventsFormat::None),
        poll: Duration::from_millis(a.poll_ms.or(c.rings.poll_ms).unwrap_or(25).clamp(1, 10_000)),
        stats_interval: Duration::from_secs(
            a.stats_interval
                .or(c.daemon.stats_interval_secs)
                .unwrap_or(10)
                .clamp(1, 86_400),
        ),
        rules: catalog::RuleSources {
            no_default: r.no_default_rules || c.rules.default_catalog == Some(false),
            dir: Some(
                r.rules_dir
                    .clone()
                    .or(c.rules.dir.clone())
                    .unwrap_or_else(|| PathBuf::from(catalog::DEFAULT_RULES_DIR)),
            ),
            files: if r.files.is_empty() {
                c.rules.files.clone().unwrap_or_default()
            } else {
                r.files.clone()
            },
        },
        sinks: daemon::SinkOptions {
            json: s.json.clone().or(ca.json.clone()),
            journald: s.journald || ca.journald == Some(true),
            syslog: if s.syslog.is_empty() {
                ca.syslog.clone().unwrap_or_default()
            } else {
                s.syslog.clone()
            },
            syslog_format: s.syslog_format.or(ca.syslog_format),
            syslog_facility: s.syslog_facility.clone().or(ca.syslog_facility.clone()),
            tls: rmm_userspace::sinks::syslog::TlsFiles {
                ca: s.tls_ca.clone().or(ca.tls_ca.clone()),
                cert: s.tls_cert.clone().or(ca.tls_cert.clone()),
                key: s.tls_key.clone().or(ca.tls_key.clone()),
            },
            queue: s.sink_queue.or(ca.queue).unwrap_or(4096).max(1) as usize,
        },
        metrics: a.metrics.clone().or(c.metrics.listen.clone()),
        pin_dir: Some(
            a.pin_dir
                .clone()
                .or(c.daemon.pin_dir.clone())
                .unwrap_or_else(|| PathBuf::from(rmm_userspace::evidence::DEFAULT_PIN_DIR)),
        )
        .filter(|d| !d.as_os_str().is_empty()),
    }
}

fn main() -> ExitCode {
    // Start-up parses two copies of the kernel's BTF (ours for the offsets, aya's for the
    // loader), several MB each: allocations that large get their own mappings, returned to the
    // system when freed, so they do not stay in the daemon's resident size.
    // SAFETY: called first, before any other thread exists.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024) };
    let cli = Cli::parse();
    env_logger::Builder::new()
        .filter_level(cli.log_level)
        .format_target(false)
        .init();
    let result = match cli.command {
        Command::Run(a) => config::load(a.config.as_deref())
            .and_then(|c| {
                let opts = resolve(&a, &c);
                daemon::check_options(&opts)?;
                Ok(opts)
            })
            .and_then(daemon::run),
        Command::Config {
            command: ConfigCommand::Check { file },
        } => {
            let path = file.unwrap_or_else(|| PathBuf::from(config::DEFAULT_CONFIG));
            config::load(Some(&path)).and_then(|c| {
                let args = RunArgs::default();
                daemon::check_options(&resolve(&args, &c))?;
                println!("{}: ok", path.display());
                Ok(())
            })
        }
        Command::Scan { rules, json } => rules_cmd::scan(&rules.sources(), &json),
        Command::Rules {
            command: RulesCommand::Check { files },
        } => rules_cmd::check(&files),
        Command::Rules {
            command: RulesCommand::List { rules, json },
        } => rules_cmd::list(&rules.sources(), json),
        Command::Manpage => {
            use clap::CommandFactory;
            clap_mangen::Man::new(Cli::command())
                .render(&mut std::io::stdout())
                .map_err(anyhow::Error::from)
        }
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
