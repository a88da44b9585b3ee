//! The configuration file (`/etc/rmm-monitor/config.toml`, path overridable): every setting of
//! `rmm-monitor run` that makes sense in a file. Command-line flags win over the file, the file
//! over the defaults. Unknown keys are errors with their location.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::{
    catalog::{RuleError, RuleErrors},
    daemon::EventsFormat,
    sinks::syslog::Format,
};

pub const DEFAULT_CONFIG: &str = "/etc/rmm-monitor/config.toml";

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub alerts: AlertsConfig,
    #[serde(default)]
    pub rules: RulesConfig,
    #[serde(default)]
    pub events: EventsConfig,
    #[serde(default)]
    pub rings: RingsConfig,
    #[serde(default)]
    pub daemon: DaemonConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// `-` or a file to append JSON lines to.
    pub json: Option<String>,
    pub journald: Option<bool>,
    /// Syslog URLs: unix:///dev/log, udp://HOST:PORT, tcp://HOST:PORT, tls://HOST:PORT.
    pub syslog: Option<Vec<String>>,
    pub syslog_format: Option<Format>,
    pub syslog_facility: Option<String>,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Alerts queued per sink before new ones are dropped.
    pub queue: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RulesConfig {
    pub files: Option<Vec<PathBuf>>,
    pub dir: Option<PathBuf>,
    pub default_catalog: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    pub format: Option<EventsFormatName>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EventsFormatName {
    Json,
    None,
}

impl From<EventsFormatName> for EventsFormat {
    fn from(f: EventsFormatName) -> Self {
        match f {
            EventsFormatName::Json => EventsFormat::Json,
            EventsFormatName::None => EventsFormat::None,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RingsConfig {
    pub proc_bytes: Option<u32>,
    pub net_bytes: Option<u32>,
    pub wakeup_bytes: Option<u64>,
    pub poll_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    pub stats_interval_secs: Option<u64>,
    /// Where the signal records are pinned in bpffs; `""` keeps them unpinned.
    pub pin_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `ADDRESS:PORT` of the Prometheus endpoint; off when absent.
    pub listen: Option<String>,
}

/// Parses a configuration file's text; errors carry line and column.
pub fn parse(file: &str, text: &str) -> Result<Config, RuleErrors> {
    toml::from_str(text).map_err(|e| {
        let (line, column) = e.span().map_or((1, 1), |s| {
            let before = &text[..s.start.min(text.len())];
            (
                before.matches('\n').count() + 1,
                before
                    .rfind('\n')
                    .map_or(before.len(), |n| before.len() - n - 1)
                    + 1,
            )
        });
        RuleErrors(vec![RuleError {
            file: file.to_owned(),
            line,
            column,
            message: e.message().to_owned(),
        }])
    })
}

/// Reads the configuration. A missing file is fine when it is the default path (nothing
/// configured), an error when it was named explicitly.
pub fn load(path: Option<&Path>) -> Result<Config> {
    let (path, explicit) = match path {
        Some(p) => (p.to_path_buf(), true),
        None => (PathBuf::from(DEFAULT_CONFIG), false),
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(parse(&path.display().to_string(), &text)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => Ok(Config::default()),
        Err(e) => Err(e).with_context(|| format!("reading configuration {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_config_parses() {
        let text = r#"
[alerts]
json = "/var/log/rmm-monitor/alerts.json"
journald = true
syslog = ["udp://127.0.0.1:514", "tls://logs.example.net:6514"]
syslog_format = "rfc3164"
syslog_facility = "local3"
tls_ca = "/etc/rmm-monitor/ca.pem"
queue = 100

[rules]
files = ["/etc/rmm-monitor/site.toml"]
dir = "/etc/rmm-monitor/rules.d"
default_catalog = true

[events]
format = "json"

[rings]
proc_bytes = 4194304
poll_ms = 50

[daemon]
stats_interval_secs = 30

[metrics]
listen = "127.0.0.1:9464"
"#;
        let c = parse("c.toml", text).expect("parses");
        assert_eq!(c.alerts.syslog.as_ref().map(Vec::len), Some(2));
        assert_eq!(c.alerts.syslog_format, Some(Format::Rfc3164));
        assert_eq!(c.rings.poll_ms, Some(50));
        assert_eq!(c.metrics.listen.as_deref(), Some("127.0.0.1:9464"));
        assert_eq!(c.events.format, Some(EventsFormatName::Json));
    }

    #[test]
    fn unknown_keys_and_bad_values_have_locations() {
        let err = parse("c.toml", "[alerts]\njson = \"-\"\njournal = true\n").unwrap_err();
        assert_eq!((err.0[0].line, err.0[0].column), (3, 1), "{err}");
        assert!(err.to_string().contains("journal"), "{err}");
        let err = parse("c.toml", "[rings]\npoll_ms = \"fast\"\n").unwrap_err();
        assert_eq!(err.0[0].line, 2, "{err}");
        let err = parse("c.toml", "[nope]\n").unwrap_err();
        assert_eq!(err.0[0].line, 1, "{err}");
    }

    #[test]
    fn missing_default_is_empty_but_missing_explicit_is_an_error() {
        assert!(load(Some(Path::new("/nonexistent/rmm.toml"))).is_err());
        assert_eq!(parse("e", "").expect("empty parses"), Config::default());
    }
}
