//! The catalog of RMM tools, the allowlist and the context settings: TOML files, validated with
//! the line and column of every error, merged (embedded default, then the rules directory in
//! name order, then `--rules` files), and compiled into a [`crate::matcher::Matcher`].

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use toml::Spanned;

/// The catalog compiled into the binary.
pub const DEFAULT_CATALOG: &str = include_str!("../catalog/default.toml");
pub const DEFAULT_CATALOG_NAME: &str = "<embedded default catalog>";
pub const DEFAULT_RULES_DIR: &str = "/etc/rmm-monitor/rules.d";

/// Ports that every kind of software uses: a catalog entry may not alert on them alone.
pub const GENERIC_PORTS: &[u16] = &[
    20, 21, 22, 23, 25, 53, 80, 110, 123, 143, 443, 465, 587, 853, 993, 995, 3478, 4000, 8080, 8443,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn raised(self, steps: usize) -> Severity {
        let all = [
            Severity::Low,
            Severity::Medium,
            Severity::High,
            Severity::Critical,
        ];
        let i = all.iter().position(|s| *s == self).unwrap_or(0);
        all[(i + steps).min(all.len() - 1)]
    }

    /// ECS `event.severity` number (the scale Elastic's detection rules use).
    pub fn score(self) -> u8 {
        match self {
            Severity::Low => 21,
            Severity::Medium => 47,
            Severity::High => 73,
            Severity::Critical => 99,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    /// "N" or "N-M".
    pub ports: Spanned<String>,
    pub proto: Proto,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolSpec {
    pub id: Spanned<String>,
    pub name: String,
    pub severity: Severity,
    pub technique: Spanned<String>,
    #[serde(default)]
    pub references: Vec<String>,
    #[serde(default)]
    pub process_names: Vec<Spanned<String>>,
    #[serde(default)]
    pub paths: Vec<Spanned<String>>,
    #[serde(default)]
    pub args: Vec<Spanned<String>>,
    #[serde(default)]
    pub domains: Vec<Spanned<String>>,
    #[serde(default)]
    pub ports: Vec<Spanned<PortSpec>>,
}

/// A user given by uid or by name.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum UserRef {
    Uid(u32),
    Name(String),
}

/// Sanctioned use: an event matching every field given is counted, not alerted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowSpec {
    /// Tool id.
    pub tool: Option<Spanned<String>>,
    /// Glob on the executable path.
    pub executable: Option<Spanned<String>>,
    pub user: Option<Spanned<UserRef>>,
    /// Name, or glob on the executable, of the parent process.
    pub parent: Option<Spanned<String>>,
    /// Container id (or a prefix of at least 12 characters).
    pub container: Option<Spanned<String>>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextSpec {
    /// Names of processes that make an RMM tool suspicious when found among its ancestors
    /// (web servers, job schedulers, ...). Another RMM tool as an ancestor always counts.
    pub suspicious_parents: Option<Vec<String>>,
    /// Globs of temporary or download directories.
    pub temp_dirs: Option<Vec<Spanned<String>>>,
    /// Seconds in which the same tool/process/indicator alerts once.
    pub dedup_window_secs: Option<u64>,
    /// Seconds a vendor domain's resolved address is remembered for connect correlation.
    pub dns_ttl_secs: Option<u64>,
    /// Globs of the executables of system resolvers (caching daemons that resolve for every
    /// process): their answers tag every process's connects, other answers only the connects
    /// of the process that asked and its descendants.
    pub system_resolvers: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesFile {
    #[serde(default)]
    pub tool: Vec<ToolSpec>,
    #[serde(default)]
    pub allow: Vec<AllowSpec>,
    pub context: Option<ContextSpec>,
}

/// One problem in a rules file, with its location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

#[derive(Debug, Clone)]
pub struct RuleErrors(pub Vec<RuleError>);

impl fmt::Display for RuleErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for RuleErrors {}

/// 1-based line and column of a byte offset.
fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let before = &src[..offset.min(src.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, col)
}

struct Checker<'a> {
    file: &'a str,
    src: &'a str,
    errors: Vec<RuleError>,
}

impl Checker<'_> {
    fn err(&mut self, span: std::ops::Range<usize>, message: impl Into<String>) {
        let (line, column) = line_col(self.src, span.start);
        self.errors.push(RuleError {
            file: self.file.to_owned(),
            line,
            column,
            message: message.into(),
        });
    }

    fn glob(&mut self, g: &Spanned<String>, what: &str) {
        if let Err(e) = globset::Glob::new(g.get_ref()) {
            self.err(
                g.span(),
                format!("invalid {what} glob {:?}: {}", g.get_ref(), e.kind()),
            );
        }
    }
}

/// The tables of an array of tables (`[[tool]]`).
fn entries<'i>(
    c: &mut Checker<'_>,
    value: toml::Spanned<toml::de::DeValue<'i>>,
    key: &str,
) -> Vec<toml::Spanned<toml::de::DeValue<'i>>> {
    let span = value.span();
    match value.into_inner() {
        toml::de::DeValue::Array(items) => items.to_vec(),
        _ => {
            c.err(
                span,
                format!("`{key}` must be an array of tables: [[{key}]]"),
            );
            Vec::new()
        }
    }
}

const TOOL_KEYS: &[&str] = &[
    "id",
    "name",
    "severity",
    "technique",
    "references",
    "process_names",
    "paths",
    "args",
    "domains",
    "ports",
];
const ALLOW_KEYS: &[&str] = &[
    "tool",
    "executable",
    "user",
    "parent",
    "container",
    "reason",
];
const CONTEXT_KEYS: &[&str] = &[
    "suspicious_parents",
    "temp_dirs",
    "dedup_window_secs",
    "dns_ttl_secs",
    "system_resolvers",
];

/// Deserializes one entry, recording its errors: unknown keys first (each at its own place,
/// then left out so the other checks still run), then what the deserializer reports.
fn entry<T: serde::de::DeserializeOwned>(
    c: &mut Checker<'_>,
    value: toml::Spanned<toml::de::DeValue<'_>>,
    known: &[&str],
) -> Option<T> {
    let span = value.span();
    let value = match value.into_inner() {
        toml::de::DeValue::Table(mut table) => {
            let unknown: Vec<_> = table
                .keys()
                .filter(|k| !known.contains(&k.get_ref().as_ref()))
                .cloned()
                .collect();
            for k in unknown {
                c.err(
                    k.span(),
                    format!(
                        "unknown field `{}`, expected one of {}",
                        k.get_ref(),
                        known.join(", ")
                    ),
                );
                table.remove(&k);
            }
            toml::Spanned::new(span.clone(), toml::de::DeValue::Table(table))
        }
        other => toml::Spanned::new(span.clone(), other),
    };
    match T::deserialize(toml::de::ValueDeserializer::from(value)) {
        Ok(t) => Some(t),
        Err(e) => {
            c.err(e.span().unwrap_or(span), e.message());
            None
        }
    }
}

/// Parses "N" or "N-M".
pub fn parse_port_range(s: &str) -> Option<(u16, u16)> {
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (a.trim().parse().ok()?, b.trim().parse().ok()?),
        None => {
            let p = s.trim().parse().ok()?;
            (p, p)
        }
    };
    (lo > 0 && lo <= hi).then_some((lo, hi))
}

/// Normalises a domain: lower case, no trailing dot.
pub fn normalize_domain(d: &str) -> String {
    d.trim().trim_end_matches('.').to_ascii_lowercase()
}

fn valid_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        && d.contains('.')
}

/// Parses and validates one rules file. Every problem found is reported, with its location:
/// each `[[tool]]` and `[[allow]]` entry is read on its own, so one bad entry does not hide the
/// problems of the others.
pub fn parse_rules(file: &str, src: &str) -> Result<RulesFile, RuleErrors> {
    let mut c = Checker {
        file,
        src,
        errors: Vec::new(),
    };
    let doc = match toml::de::DeTable::parse(src) {
        Ok(d) => d,
        Err(e) => {
            c.err(e.span().unwrap_or(0..0), e.message());
            return Err(RuleErrors(c.errors));
        }
    };
    let mut parsed = RulesFile::default();
    for (key, value) in doc.into_inner() {
        match key.get_ref().as_ref() {
            "tool" => {
                for item in entries(&mut c, value, "tool") {
                    parsed
                        .tool
                        .extend(entry::<ToolSpec>(&mut c, item, TOOL_KEYS));
                }
            }
            "allow" => {
                for item in entries(&mut c, value, "allow") {
                    parsed
                        .allow
                        .extend(entry::<AllowSpec>(&mut c, item, ALLOW_KEYS));
                }
            }
            "context" => parsed.context = entry::<ContextSpec>(&mut c, value, CONTEXT_KEYS),
            other => c.err(
                key.span(),
                format!("unknown key `{other}`, expected `tool`, `allow` or `context`"),
            ),
        }
    }
    let mut seen = BTreeMap::new();
    for t in &parsed.tool {
        let id = t.id.get_ref();
        if id.is_empty()
            || !id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            c.err(
                t.id.span(),
                format!("tool id {id:?} must be lower-case letters, digits and '-'"),
            );
        }
        if seen.insert(id.clone(), ()).is_some() {
            c.err(
                t.id.span(),
                format!("tool id {id:?} defined twice in this file"),
            );
        }
        if !matches!(t.technique.get_ref().as_str(), "T1219" | "T1219.002") {
            c.err(
                t.technique.span(),
                format!(
                    "technique {:?} must be T1219 or T1219.002",
                    t.technique.get_ref()
                ),
            );
        }
        if t.process_names.is_empty()
            && t.paths.is_empty()
            && t.domains.is_empty()
            && t.ports.is_empty()
        {
            c.err(
                t.id.span(),
                format!("tool {id:?} has no indicator (process_names, paths, domains or ports)"),
            );
        }
        for n in &t.process_names {
            if n.get_ref().is_empty() || n.get_ref().contains('/') {
                c.err(
                    n.span(),
                    format!("process name {:?} must be a bare file name", n.get_ref()),
                );
            }
        }
        for p in &t.paths {
            c.glob(p, "path");
            if !p.get_ref().starts_with('/') && !p.get_ref().starts_with("**") {
                c.err(
                    p.span(),
                    format!(
                        "path pattern {:?} must be absolute or start with **",
                        p.get_ref()
                    ),
                );
            }
        }
        for a in &t.args {
            c.glob(a, "args");
        }
        for d in &t.domains {
            if !valid_domain(&normalize_domain(d.get_ref())) {
                c.err(d.span(), format!("{:?} is not a domain name", d.get_ref()));
            }
        }
        for p in &t.ports {
            let spec = p.get_ref();
            match parse_port_range(spec.ports.get_ref()) {
                None => c.err(
                    spec.ports.span(),
                    format!(
                        "port {:?} must be N or N-M with 0 < N <= M",
                        spec.ports.get_ref()
                    ),
                ),
                Some((lo, hi)) => {
                    if let Some(g) = GENERIC_PORTS.iter().find(|g| (lo..=hi).contains(g)) {
                        c.err(
                            spec.ports.span(),
                            format!("port {g} is generic and never alerts on its own"),
                        );
                    }
                }
            }
        }
    }
    for a in &parsed.allow {
        if a.tool.is_none()
            && a.executable.is_none()
            && a.user.is_none()
            && a.parent.is_none()
            && a.container.is_none()
        {
            c.errors.push(RuleError {
                file: file.to_owned(),
                line: 1,
                column: 1,
                message: "an [[allow]] entry needs at least one of tool, executable, user, parent, container".into(),
            });
        }
        if let Some(e) = &a.executable {
            c.glob(e, "executable");
        }
        if let Some(p) = &a.parent {
            c.glob(p, "parent");
        }
        if let Some(ct) = &a.container
            && ct.get_ref().len() < 12
        {
            c.err(ct.span(), "container id must have at least 12 characters");
        }
    }
    if let Some(ctx) = &parsed.context {
        for g in ctx.temp_dirs.iter().flatten() {
            c.glob(g, "temp_dirs");
        }
        for g in ctx.system_resolvers.iter().flatten() {
            c.glob(g, "system_resolvers");
        }
    }
    if c.errors.is_empty() {
        Ok(parsed)
    } else {
        c.errors.sort_by_key(|e| (e.line, e.column));
        Err(RuleErrors(c.errors))
    }
}

/// Where the rules come from.
#[derive(Debug, Clone, Default)]
pub struct RuleSources {
    /// Skip the embedded default catalog.
    pub no_default: bool,
    /// A directory of `*.toml` files, read in name order; a missing directory is not an error.
    pub dir: Option<PathBuf>,
    /// Files given on the command line, read last.
    pub files: Vec<PathBuf>,
}

/// The merged, validated rules.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// By id, in the order first defined.
    pub tools: Vec<ToolSpec>,
    pub allow: Vec<AllowSpec>,
    pub context: ContextSpec,
    /// The files read, in order.
    pub sources: Vec<String>,
}

impl Rules {
    fn merge(&mut self, name: String, file: RulesFile) {
        for t in file.tool {
            match self
                .tools
                .iter_mut()
                .find(|x| x.id.get_ref() == t.id.get_ref())
            {
                Some(slot) => *slot = t,
                None => self.tools.push(t),
            }
        }
        self.allow.extend(file.allow);
        if let Some(c) = file.context {
            let cur = &mut self.context;
            if c.suspicious_parents.is_some() {
                cur.suspicious_parents = c.suspicious_parents;
            }
            if c.temp_dirs.is_some() {
                cur.temp_dirs = c.temp_dirs;
            }
            if c.dedup_window_secs.is_some() {
                cur.dedup_window_secs = c.dedup_window_secs;
            }
            if c.dns_ttl_secs.is_some() {
                cur.dns_ttl_secs = c.dns_ttl_secs;
            }
            if c.system_resolvers.is_some() {
                cur.system_resolvers = c.system_resolvers;
            }
        }
        self.sources.push(name);
    }

    /// Reads every source; the first invalid file stops the load (the caller keeps what it had).
    pub fn load(src: &RuleSources) -> Result<Rules> {
        let mut rules = Rules::default();
        if !src.no_default {
            let f = parse_rules(DEFAULT_CATALOG_NAME, DEFAULT_CATALOG)?;
            rules.merge(DEFAULT_CATALOG_NAME.into(), f);
        }
        let mut files = Vec::new();
        if let Some(dir) = &src.dir {
            match std::fs::read_dir(dir) {
                Ok(entries) => {
                    let mut in_dir: Vec<PathBuf> = entries
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                        .collect();
                    in_dir.sort();
                    files.extend(in_dir);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("reading rules directory {}", dir.display()));
                }
            }
        }
        files.extend(src.files.iter().cloned());
        for path in files {
            let (name, f) = read_rules_file(&path)?;
            rules.merge(name, f);
        }
        Ok(rules)
    }
}

pub fn read_rules_file(path: &Path) -> Result<(String, RulesFile)> {
    let name = path.display().to_string();
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading rules file {name}"))?;
    let f = parse_rules(&name, &text)?;
    Ok((name, f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_catalog_is_valid_and_covers_the_required_tools() {
        let f = parse_rules(DEFAULT_CATALOG_NAME, DEFAULT_CATALOG).expect("default catalog valid");
        let ids: Vec<&str> = f.tool.iter().map(|t| t.id.get_ref().as_str()).collect();
        for id in [
            "rustdesk",
            "anydesk",
            "teamviewer",
            "vnc",
            "screenconnect",
            "splashtop",
            "chrome-remote-desktop",
            "nomachine",
            "meshcentral",
            "dwservice",
            "tactical-rmm",
            "atera",
            "todesk",
            "sunlogin",
            "xrdp",
            "gnome-remote-desktop",
            "tmate",
            "ngrok",
            "cloudflared",
        ] {
            assert!(ids.contains(&id), "catalog lacks {id}");
        }
        assert!(
            f.tool.iter().all(|t| !t.references.is_empty()),
            "every tool cites a source"
        );
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let err = parse_rules("x.toml", "[[tool]]\nid = \"a\"\nname = \n").unwrap_err();
        assert_eq!((err.0[0].line, err.0[0].file.as_str()), (3, "x.toml"));
    }

    #[test]
    fn unknown_key_is_an_error_with_location() {
        let src = "[[tool]]\nid = \"a\"\nname = \"A\"\nseverity = \"high\"\ntechnique = \"T1219\"\nprocess_name = [\"a\"]\n";
        let err = parse_rules("x.toml", src).unwrap_err();
        let e = err
            .0
            .iter()
            .find(|e| e.message.contains("`process_name`"))
            .expect("reported");
        assert_eq!((e.line, e.column), (6, 1), "{err}");
    }

    #[test]
    fn semantic_errors_are_all_reported_with_locations() {
        let src = r#"
[[tool]]
id = "Bad Id"
name = "x"
severity = "high"
technique = "T1000"
paths = ["/opt/[x/**"]
domains = ["not a domain"]
ports = [{ ports = "443", proto = "tcp" }, { ports = "9-3", proto = "udp" }]
"#;
        let err = parse_rules("r.toml", src).unwrap_err();
        let lines: Vec<usize> = err.0.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![3, 6, 7, 8, 9, 9], "{err}");
        assert!(err.to_string().contains("r.toml:9:"), "{err}");
        assert!(err.to_string().contains("generic"), "{err}");
    }

    #[test]
    fn an_unknown_key_does_not_hide_other_errors() {
        let src = "[[tool]]\nid = \"a\"\nname = \"A\"\nseverity = \"high\"\ntechnique = \"T1219\"\ncolour = 1\n\n[[tool]]\nid = \"b\"\nname = \"B\"\nseverity = \"high\"\ntechnique = \"T1219\"\nports = [{ ports = \"443\", proto = \"tcp\" }]\n\n[oops]\n";
        let err = parse_rules("x.toml", src).unwrap_err();
        let lines: Vec<usize> = err.0.iter().map(|e| e.line).collect();
        // tool "a" (line 2) has no indicator left once the unknown key is set aside
        assert_eq!(lines, vec![2, 6, 13, 15], "{err}");
        assert!(
            err.to_string().contains("colour")
                && err.to_string().contains("generic")
                && err.to_string().contains("oops"),
            "{err}"
        );
    }

    #[test]
    fn bad_severity_is_rejected() {
        let src = "[[tool]]\nid = \"a\"\nname = \"A\"\nseverity = \"urgent\"\ntechnique = \"T1219\"\nprocess_names = [\"a\"]\n";
        assert_eq!(parse_rules("x.toml", src).unwrap_err().0[0].line, 4);
    }

    #[test]
    fn later_files_replace_tools_by_id_and_extend_allowlist() {
        let mut rules = Rules::default();
        rules.merge(
            "a".into(),
            parse_rules("a", DEFAULT_CATALOG).expect("valid"),
        );
        let n = rules.tools.len();
        let over = r#"
[[tool]]
id = "anydesk"
name = "AnyDesk (site)"
severity = "critical"
technique = "T1219.002"
process_names = ["anydesk"]

[[tool]]
id = "inhouse-rat"
name = "In-house"
severity = "low"
technique = "T1219"
process_names = ["ihr"]

[[allow]]
tool = "anydesk"
user = "helpdesk"

[context]
dedup_window_secs = 5
"#;
        rules.merge("b".into(), parse_rules("b", over).expect("valid"));
        assert_eq!(rules.tools.len(), n + 1);
        let any = rules
            .tools
            .iter()
            .find(|t| t.id.get_ref() == "anydesk")
            .expect("kept");
        assert_eq!(any.severity, Severity::Critical);
        assert_eq!(rules.allow.len(), 1);
        assert_eq!(rules.context.dedup_window_secs, Some(5));
    }

    #[test]
    fn port_ranges() {
        assert_eq!(parse_port_range("5938"), Some((5938, 5938)));
        assert_eq!(parse_port_range("7070-7071"), Some((7070, 7071)));
        assert_eq!(parse_port_range("0"), None);
        assert_eq!(parse_port_range("9-3"), None);
        assert_eq!(parse_port_range("x"), None);
    }

    #[test]
    fn severity_raise_is_capped() {
        assert_eq!(Severity::Medium.raised(1), Severity::High);
        assert_eq!(Severity::High.raised(5), Severity::Critical);
    }

    #[test]
    fn missing_rules_dir_is_fine_but_a_broken_file_is_not() {
        let dir = std::env::temp_dir().join(format!("rmm-rules-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let src = RuleSources {
            dir: Some(dir.clone()),
            ..Default::default()
        };
        assert!(Rules::load(&src).is_ok());
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("10-bad.toml"), "[[tool]\n").expect("write");
        let err = Rules::load(&src).unwrap_err();
        assert!(format!("{err:#}").contains("10-bad.toml:1:"), "{err:#}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
