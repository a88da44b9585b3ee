//! The catalog compiled for matching: hash lookups for names, domains and ports, one `GlobSet`
//! for paths and one for arguments. Built once per (re)load, shared read-only.

use std::collections::HashMap;

use anyhow::{Context, Result};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::Serialize;

use crate::catalog::{Proto, Rules, Severity, normalize_domain, parse_port_range};

/// Length of `task_struct.comm` without its NUL.
pub const COMM_MAX: usize = 15;

#[derive(Debug, Clone, Serialize)]
pub struct ToolInfo {
    pub id: String,
    pub name: String,
    pub severity: Severity,
    pub technique: String,
    pub references: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Indicator {
    Binary,
    Path,
    Domain,
    Port,
    Ip,
    /// The daemon's own loss records (never a catalog match).
    Loss,
    /// The daemon's own: the sender of a stop or reload signal.
    Tamper,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// Index into [`Matcher::tools`].
    pub tool: usize,
    pub indicator: Indicator,
    /// What matched: a name, a path, a domain, `tcp/5938`, an address.
    pub matched: String,
}

#[derive(Debug, Default)]
pub struct Matcher {
    pub tools: Vec<ToolInfo>,
    names: HashMap<String, usize>,
    /// First 15 bytes of names longer than `comm` can hold.
    comm_prefixes: HashMap<String, usize>,
    paths: GlobSet,
    path_tool: Vec<usize>,
    args: GlobSet,
    args_tool: Vec<usize>,
    domains: HashMap<String, usize>,
    ports: HashMap<(Proto, u16), usize>,
}

/// Path globs keep `*` inside one directory; argument globs let it match anything.
fn glob(pattern: &str, path_like: bool) -> Result<globset::Glob> {
    GlobBuilder::new(pattern)
        .literal_separator(path_like)
        .build()
        .with_context(|| format!("glob {pattern:?}"))
}

/// The last path component.
pub fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

impl Matcher {
    pub fn build(rules: &Rules) -> Result<Matcher> {
        let mut m = Matcher::default();
        let mut paths = GlobSetBuilder::new();
        let mut args = GlobSetBuilder::new();
        for (i, t) in rules.tools.iter().enumerate() {
            m.tools.push(ToolInfo {
                id: t.id.get_ref().clone(),
                name: t.name.clone(),
                severity: t.severity,
                technique: t.technique.get_ref().clone(),
                references: t.references.clone(),
            });
            for n in &t.process_names {
                let lower = n.get_ref().to_ascii_lowercase();
                if lower.len() > COMM_MAX
                    && let Some(prefix) = lower.get(..COMM_MAX)
                {
                    m.comm_prefixes.entry(prefix.to_owned()).or_insert(i);
                }
                m.names.entry(lower).or_insert(i);
            }
            for p in &t.paths {
                paths.add(glob(p.get_ref(), true)?);
                m.path_tool.push(i);
            }
            for a in &t.args {
                args.add(glob(a.get_ref(), false)?);
                m.args_tool.push(i);
            }
            for d in &t.domains {
                m.domains.entry(normalize_domain(d.get_ref())).or_insert(i);
            }
            for p in &t.ports {
                let spec = p.get_ref();
                let (lo, hi) = parse_port_range(spec.ports.get_ref())
                    .with_context(|| format!("port range {:?}", spec.ports.get_ref()))?;
                for port in lo..=hi {
                    m.ports.entry((spec.proto, port)).or_insert(i);
                }
            }
        }
        m.paths = paths.build().context("compiling path globs")?;
        m.args = args.build().context("compiling argument globs")?;
        Ok(m)
    }

    pub fn tool(&self, hit: &Hit) -> &ToolInfo {
        &self.tools[hit.tool]
    }

    pub fn tool_index(&self, id: &str) -> Option<usize> {
        self.tools.iter().position(|t| t.id == id)
    }

    fn name(&self, name: &str) -> Option<usize> {
        if name.is_empty() {
            return None;
        }
        self.names.get(&name.to_ascii_lowercase()).copied()
    }

    /// A `comm` is the first 15 bytes of the thread name: a full-length one may be a cut name.
    fn comm(&self, comm: &str) -> Option<usize> {
        let lower = comm.to_ascii_lowercase();
        self.names.get(&lower).copied().or_else(|| {
            (lower.len() == COMM_MAX)
                .then(|| self.comm_prefixes.get(&lower).copied())
                .flatten()
        })
    }

    /// Matches a process image: path globs first (strongest), then the executable's and the
    /// exec filename's names, then `comm`, then argument globs.
    pub fn match_exec(
        &self,
        executable: &str,
        filename: &str,
        comm: &str,
        args: &[String],
    ) -> Option<Hit> {
        if !executable.is_empty()
            && let Some(i) = self.paths.matches(executable).into_iter().next()
        {
            return Some(Hit {
                tool: self.path_tool[i],
                indicator: Indicator::Path,
                matched: executable.to_owned(),
            });
        }
        for candidate in [basename(executable), basename(filename)] {
            if let Some(t) = self.name(candidate) {
                return Some(Hit {
                    tool: t,
                    indicator: Indicator::Binary,
                    matched: candidate.to_owned(),
                });
            }
        }
        if let Some(t) = self.comm(comm) {
            return Some(Hit {
                tool: t,
                indicator: Indicator::Binary,
                matched: comm.to_owned(),
            });
        }
        if !self.args_tool.is_empty() {
            for a in args {
                if let Some(i) = self.args.matches(a).into_iter().next() {
                    return Some(Hit {
                        tool: self.args_tool[i],
                        indicator: Indicator::Path,
                        matched: a.clone(),
                    });
                }
            }
        }
        None
    }

    /// Matches a DNS name against the vendor domains on label boundaries, case-insensitively,
    /// ignoring a trailing dot. Returns the tool and the catalog domain that matched.
    pub fn match_domain(&self, qname: &str) -> Option<(usize, &str)> {
        let name = qname.trim_end_matches('.').to_ascii_lowercase();
        let mut rest = name.as_str();
        loop {
            if let Some((d, t)) = self.domains.get_key_value(rest) {
                return Some((*t, d.as_str()));
            }
            match rest.split_once('.') {
                Some((_, tail)) if !tail.is_empty() => rest = tail,
                _ => return None,
            }
        }
    }

    pub fn match_port(&self, proto: Proto, port: u16) -> Option<usize> {
        self.ports.get(&(proto, port)).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{DEFAULT_CATALOG, RuleSources, Rules};

    fn matcher() -> Matcher {
        Matcher::build(&Rules::load(&RuleSources::default()).expect("default rules"))
            .expect("builds")
    }

    fn id(m: &Matcher, hit: Option<Hit>) -> Option<(String, Indicator)> {
        hit.map(|h| (m.tool(&h).id.clone(), h.indicator))
    }

    #[test]
    fn binary_names_are_exact_and_case_insensitive() {
        let m = matcher();
        let none: &[String] = &[];
        assert_eq!(
            id(
                &m,
                m.match_exec("/tmp/x/anydesk", "anydesk", "anydesk", none)
            ),
            Some(("anydesk".into(), Indicator::Binary))
        );
        assert_eq!(
            id(
                &m,
                m.match_exec("/home/u/AnyDesk", "./AnyDesk", "AnyDesk", none)
            ),
            Some(("anydesk".into(), Indicator::Binary))
        );
        assert_eq!(
            id(
                &m,
                m.match_exec("/usr/bin/x11vnc", "x11vnc", "x11vnc", none)
            ),
            Some(("vnc".into(), Indicator::Binary))
        );
        // look-alikes
        assert_eq!(
            m.match_exec(
                "/usr/bin/anydesk-notes",
                "anydesk-notes",
                "anydesk-notes",
                none
            ),
            None
        );
        assert_eq!(
            m.match_exec("/usr/bin/vncviewer", "vncviewer", "vncviewer", none),
            None
        );
        assert_eq!(m.match_exec("/usr/bin/true", "true", "true", none), None);
    }

    #[test]
    fn paths_win_over_names() {
        let m = matcher();
        let h = m.match_exec(
            "/opt/teamviewer/tv_bin/teamviewerd",
            "/opt/teamviewer/tv_bin/teamviewerd",
            "teamviewerd",
            &[],
        );
        assert_eq!(
            id(&m, h.clone()),
            Some(("teamviewer".into(), Indicator::Path))
        );
        assert_eq!(
            h.map(|h| h.matched),
            Some("/opt/teamviewer/tv_bin/teamviewerd".into())
        );
        // `*` does not cross directories; `**` does
        assert_eq!(
            id(
                &m,
                m.match_exec(
                    "/opt/screenconnect-0123456789abcdef/bin/java",
                    "",
                    "java",
                    &[]
                )
            ),
            Some(("screenconnect".into(), Indicator::Path))
        );
        assert_eq!(m.match_exec("/opt/teamviewerx/bin", "", "bin", &[]), None);
    }

    #[test]
    fn truncated_comm_matches_long_names() {
        let m = matcher();
        // TeamViewer_Desktop is cut to TeamViewer_Desk by the kernel
        assert_eq!(
            id(&m, m.match_exec("", "", "TeamViewer_Desk", &[])),
            Some(("teamviewer".into(), Indicator::Binary))
        );
        // a 14-byte comm is not a cut name
        assert_eq!(m.match_exec("", "", "TeamViewer_Des", &[]), None);
    }

    #[test]
    fn argument_globs() {
        let m = matcher();
        let args = vec![
            "java".to_string(),
            "-jar".into(),
            "/var/lib/ScreenConnect/x.jar".into(),
        ];
        assert_eq!(
            id(&m, m.match_exec("/usr/bin/java", "java", "java", &args)),
            Some(("screenconnect".into(), Indicator::Path))
        );
    }

    #[test]
    fn domains_on_label_boundaries() {
        let m = matcher();
        let d = |q: &str| {
            m.match_domain(q)
                .map(|(t, d)| (m.tools[t].id.clone(), d.to_owned()))
        };
        assert_eq!(
            d("relay.rustdesk.com."),
            Some(("rustdesk".into(), "rustdesk.com".into()))
        );
        assert_eq!(
            d("RUSTDESK.COM"),
            Some(("rustdesk".into(), "rustdesk.com".into()))
        );
        assert_eq!(
            d("rs-ny.RustDesk.com"),
            Some(("rustdesk".into(), "rustdesk.com".into()))
        );
        assert_eq!(
            d("master1.teamviewer.com"),
            Some(("teamviewer".into(), "teamviewer.com".into()))
        );
        assert_eq!(
            d("control.connectwise.com"),
            Some(("screenconnect".into(), "control.connectwise.com".into()))
        );
        assert_eq!(d("notrustdesk.com"), None);
        assert_eq!(d("rustdesk.com.example.net"), None);
        assert_eq!(d("rustdesk.example.org"), None);
        assert_eq!(d("connectwise.com"), None);
        assert_eq!(d("com"), None);
        assert_eq!(d(""), None);
        assert_eq!(d("."), None);
    }

    #[test]
    fn ports_by_protocol_and_generic_ports_never_match() {
        let m = matcher();
        let p = |proto, port| m.match_port(proto, port).map(|t| m.tools[t].id.clone());
        assert_eq!(p(Proto::Tcp, 5938), Some("teamviewer".into()));
        assert_eq!(p(Proto::Tcp, 7071), Some("anydesk".into()));
        assert_eq!(p(Proto::Udp, 21116), Some("rustdesk".into()));
        assert_eq!(p(Proto::Udp, 21117), None);
        for generic in [22, 53, 80, 443, 3478, 4000] {
            assert_eq!(p(Proto::Tcp, generic), None);
            assert_eq!(p(Proto::Udp, generic), None);
        }
    }

    #[test]
    fn default_catalog_compiles() {
        let f = crate::catalog::parse_rules("d", DEFAULT_CATALOG).expect("valid");
        assert!(!f.tool.is_empty());
        assert!(matcher().tools.len() >= 19);
    }
}
