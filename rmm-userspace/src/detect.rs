//! Turns events into alerts: catalog matches, DNS-to-connect correlation, context flags,
//! allowlist and de-duplication. Runs on the processor thread; every decision is counted.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Instant,
};

use anyhow::{Context as _, Result};
use globset::{Glob, GlobMatcher};
use serde::Serialize;

use crate::{
    alert::{
        Action, Alert, ContainerFields, Destination, DnsFields, DnsQuestion, EventFields, Host,
        Orchestrator, OrchestratorResource, ProcessFields, ProcessRef, RmmFields, RuleFields,
        Technique, Threat, UserRef, indicator_name, rfc3339, technique_name, wall_of,
    },
    catalog::{Proto, Rules, UserRef as RuleUser},
    context::{
        Containers, ContextSettings, Flag, PackageDb, Pod, Pods, container_id, container_runtime,
        pod_uid,
    },
    correlate::{Answered, Correlation, Query, Scope},
    decode::{Event, Task},
    matcher::{Hit, Indicator, Matcher, basename},
    proctable::{Proc, ProcTable},
};

/// Most ancestors reported per alert.
pub const MAX_ANCESTORS: usize = 8;
/// Bound on the de-duplication state.
const MAX_DEDUP: usize = 65_536;

#[derive(Debug)]
struct Allow {
    tool: Option<String>,
    executable: Option<GlobMatcher>,
    uid: Option<u32>,
    parent: Option<(String, GlobMatcher)>,
    container: Option<String>,
    reason: String,
}

/// Everything a rules (re)load produces; swapped as a whole on SIGHUP.
#[derive(Debug)]
pub struct Compiled {
    pub matcher: Matcher,
    pub context: ContextSettings,
    allow: Vec<Allow>,
    pub sources: Vec<String>,
}

fn uid_of(name: &str) -> Option<u32> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name)
            .then(|| f.nth(1)?.parse().ok())
            .flatten()
    })
}

impl Compiled {
    pub fn build(rules: &Rules) -> Result<Compiled> {
        let matcher = Matcher::build(rules)?;
        let context = ContextSettings::from_rules(rules)?;
        let mut allow = Vec::new();
        for a in &rules.allow {
            let glob = |g: &str| -> Result<GlobMatcher> {
                Ok(Glob::new(g)
                    .with_context(|| format!("allow glob {g:?}"))?
                    .compile_matcher())
            };
            let uid = match a.user.as_ref().map(|u| u.get_ref()) {
                None => None,
                Some(RuleUser::Uid(u)) => Some(*u),
                Some(RuleUser::Name(n)) => Some(
                    uid_of(n)
                        .with_context(|| format!("allowlist user {n:?} is not in /etc/passwd"))?,
                ),
            };
            if let Some(t) = &a.tool
                && matcher.tool_index(t.get_ref()).is_none()
            {
                anyhow::bail!(
                    "allowlist names tool {:?}, which is not in the catalog",
                    t.get_ref()
                );
            }
            allow.push(Allow {
                tool: a.tool.as_ref().map(|t| t.get_ref().clone()),
                executable: a
                    .executable
                    .as_ref()
                    .map(|e| glob(e.get_ref()))
                    .transpose()?,
                uid,
                parent: a
                    .parent
                    .as_ref()
                    .map(|p| glob(p.get_ref()).map(|g| (p.get_ref().to_ascii_lowercase(), g)))
                    .transpose()?,
                container: a.container.as_ref().map(|c| c.get_ref().clone()),
                reason: a.reason.clone().unwrap_or_else(|| "no reason given".into()),
            });
        }
        Ok(Compiled {
            matcher,
            context,
            allow,
            sources: rules.sources.clone(),
        })
    }
}

#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct DetectStats {
    pub alerts: BTreeMap<String, u64>,
    /// Matches suppressed by the allowlist, per tool.
    pub allowed: BTreeMap<String, u64>,
    /// Matches folded into an earlier alert by de-duplication.
    pub deduplicated: u64,
    /// DNS answers parsed for correlation, those that did not parse, and those refused
    /// because they came from another server than the one asked or echo another question.
    pub answers_parsed: u64,
    pub answers_malformed: u64,
    pub answers_rejected: u64,
    pub reloads: u64,
    /// Sizes of the tables that grow with the host's activity, and what their caps evicted.
    pub tables: Tables,
}

/// Entries in each table that grows with the host's activity, and what its cap did: every
/// such table is bounded, and each eviction or refusal is counted here.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct Tables {
    /// Process table: live processes, exited ones in their grace period, exited ancestors
    /// kept for their descendants' lineage.
    pub processes: u64,
    pub exited: u64,
    pub kept: u64,
    /// New processes not tracked because the table was full of live ones.
    pub processes_refused: u64,
    /// Exited processes retired before their grace period to make room.
    pub exited_early: u64,
    /// Exited ancestors not kept (their descendants' lineage ends there).
    pub kept_refused: u64,
    /// De-duplication entries, and alerts sent without one because the table was full of
    /// entries inside their window (such an alert is not folded into later ones).
    pub dedup: u64,
    pub dedup_full: u64,
    /// Vendor-domain queries waiting for their answer, and those forgotten to make room.
    pub dns_pending: u64,
    pub dns_pending_evicted: u64,
    /// Addresses tagged by vendor-domain answers, and tags forgotten before their TTL.
    pub dns_resolved: u64,
    pub dns_resolved_evicted: u64,
    /// Cgroup paths cached, and times the cache was emptied because it was full.
    pub cgroups: u64,
    pub cgroups_cleared: u64,
}

impl Tables {
    /// Entries per table, by name (metrics).
    pub fn sizes(&self) -> [(&'static str, u64); 7] {
        [
            ("processes", self.processes),
            ("exited", self.exited),
            ("kept", self.kept),
            ("dedup", self.dedup),
            ("dns_pending", self.dns_pending),
            ("dns_resolved", self.dns_resolved),
            ("cgroups", self.cgroups),
        ]
    }

    /// What the caps did, by name (metrics and the interval's warning).
    pub fn evictions(&self) -> [(&'static str, u64); 7] {
        [
            ("processes_refused", self.processes_refused),
            ("exited_early", self.exited_early),
            ("kept_refused", self.kept_refused),
            ("dedup_full", self.dedup_full),
            ("dns_pending_evicted", self.dns_pending_evicted),
            ("dns_resolved_evicted", self.dns_resolved_evicted),
            ("cgroups_cleared", self.cgroups_cleared),
        ]
    }
}

struct Dedup {
    since: Instant,
    suppressed: u64,
}

#[derive(Debug, Default)]
struct Placement {
    container: Option<ContainerFields>,
    /// The container's cgroup was created by a runtime (owned by root): only then may an
    /// allowlist entry match its id.
    container_trusted: bool,
    pod: Option<Pod>,
}

pub struct Detector {
    compiled: Arc<Compiled>,
    /// By tool, process (pid and start: a reused pid is a new process) and indicator.
    dedup: HashMap<(String, u32, u64, Indicator, String), Dedup>,
    /// Vendor-domain queries and the addresses their answers gave.
    correlation: Correlation,
    packages: PackageDb,
    containers: Containers,
    pods: Pods,
    hostname: String,
    /// `/proc/sys/kernel/random/boot_id` (the host name where it cannot be read): the first
    /// part of `process.entity_id`.
    boot_id: String,
    pub stats: DetectStats,
}

/// `process.entity_id` and `process.start` of the process `pid` that started at `start_ns`
/// (CLOCK_BOOTTIME ns; 0: unknown, and both are absent).
fn identity(boot_id: &str, pid: u32, start_ns: u64) -> (Option<String>, Option<String>) {
    if start_ns == 0 {
        return (None, None);
    }
    let ticks = crate::proctable::ticks(start_ns);
    (
        Some(format!("{boot_id}:{pid}:{ticks}")),
        Some(rfc3339(wall_of(libc::CLOCK_BOOTTIME, start_ns))),
    )
}

fn boot_id() -> String {
    match std::fs::read_to_string("/proc/sys/kernel/random/boot_id") {
        Ok(s) if !s.trim().is_empty() => s.trim().to_owned(),
        _ => hostname(),
    }
}

/// The wall-clock time of kernel time `ts_ns` (0: now). The offset between the two clocks is
/// taken at each alert, not once at start: a clock step (NTP, an operator) or a suspend, which
/// stops CLOCK_MONOTONIC, would otherwise shift every later alert's `@timestamp`.
fn wall_time_ns(ts_ns: u64) -> u128 {
    wall_of(libc::CLOCK_MONOTONIC, ts_ns)
}

/// `host.hostname`: `$RMM_HOSTNAME` when set (in a Kubernetes pod the UTS name is the pod's:
/// the chart sets the node's name there), else the kernel's host name.
pub fn hostname() -> String {
    if let Ok(h) = std::env::var("RMM_HOSTNAME")
        && !h.trim().is_empty()
    {
        return h.trim().to_owned();
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
#[test]
fn a_kernel_time_is_dated_by_the_clocks_now() {
    let now = crate::merge::kernel_now_ns();
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos();
    let a_second_ago = wall_time_ns(now - 1_000_000_000);
    let diff = wall as i128 - a_second_ago as i128;
    assert!(
        (900_000_000..1_500_000_000).contains(&diff),
        "a second ago is {diff} ns before now"
    );
}

/// What the alert is about, beyond the process.
struct Subject<'a> {
    action: Action,
    hit: Hit,
    task: Option<&'a Task>,
    destination: Option<Destination>,
    dns: Option<DnsFields>,
    outcome: Option<&'static str>,
}

impl Detector {
    pub fn new(compiled: Arc<Compiled>) -> Detector {
        Detector {
            compiled,
            dedup: HashMap::new(),
            correlation: Correlation::default(),
            packages: PackageDb::default(),
            containers: Containers::default(),
            pods: Pods::default(),
            hostname: hostname(),
            boot_id: boot_id(),
            stats: DetectStats::default(),
        }
    }

    /// Replaces the rules; correlation and de-duplication state carry over (both are keyed
    /// by tool id: a tool the new rules lack matches nothing).
    /// Brings `stats.tables` up to date with the tables' sizes and eviction counters.
    pub fn measure(&mut self, table: &ProcTable) {
        let (pending, resolved) = self.correlation.sizes();
        let t = &mut self.stats.tables;
        t.processes = table.len() as u64;
        t.exited = table.exited() as u64;
        t.kept = table.kept() as u64;
        t.processes_refused = table.refused;
        t.exited_early = table.exited_early;
        t.kept_refused = table.kept_refused;
        t.dedup = self.dedup.len() as u64;
        t.dns_pending = pending as u64;
        t.dns_pending_evicted = self.correlation.pending_evicted;
        t.dns_resolved = resolved as u64;
        t.dns_resolved_evicted = self.correlation.resolved_evicted;
        t.cgroups = self.containers.cached() as u64;
        t.cgroups_cleared = self.containers.cache_cleared;
    }

    pub fn reload(&mut self, compiled: Arc<Compiled>) {
        self.compiled = compiled;
        self.stats.reloads += 1;
    }

    /// Container and pod of a process, from its cgroup path.
    fn placement_of(&mut self, pid: u32, cgroup_id: u64) -> Placement {
        let Some(path) = self.containers.cgroup_path(pid, cgroup_id) else {
            return Placement::default();
        };
        let container = container_id(&path).map(|id| ContainerFields {
            id,
            runtime: container_runtime(&path),
        });
        Placement {
            container_trusted: container.is_some() && self.containers.owned_by_root(&path),
            container,
            pod: pod_uid(&path).map(|uid| self.pods.lookup(&uid)),
        }
    }

    /// Alerts for RMM processes already running (start-up inventory, `rmm-monitor scan`).
    pub fn inventory(&mut self, table: &ProcTable) -> Vec<Alert> {
        let mut procs: Vec<&Proc> = table.iter().collect();
        procs.sort_by_key(|p| p.pid);
        let mut out = Vec::new();
        for p in procs {
            if let Some(hit) = self
                .compiled
                .matcher
                .match_exec(&p.executable, "", &p.comm, &p.args)
            {
                let s = Subject {
                    action: Action::Inventory,
                    hit,
                    task: None,
                    destination: None,
                    dns: None,
                    outcome: None,
                };
                if let Some(a) = self.emit(s, p.pid, table, 0) {
                    out.push(a);
                }
            }
        }
        out
    }

    pub fn on_event(&mut self, ev: &Event, table: &ProcTable) -> Option<Alert> {
        match ev {
            Event::Exec(e) => {
                let hit = self.compiled.matcher.match_exec(
                    &e.executable,
                    &e.filename,
                    &e.task.comm,
                    &e.args,
                )?;
                let s = Subject {
                    action: Action::Exec,
                    hit,
                    task: Some(&e.task),
                    destination: None,
                    dns: None,
                    outcome: None,
                };
                self.emit(s, e.task.pid, table, e.task.ts_ns)
            }
            Event::Connect(c) => {
                let correlated = self
                    .correlation
                    .lookup(c.daddr, c.task.pid, c.task.start_ns, table, Instant::now())
                    .and_then(|t| {
                        let tool = self.compiled.matcher.tool_index(t.tool)?;
                        Some((tool, t.domain.to_owned()))
                    });
                let (hit, domain) = match correlated {
                    Some((tool, domain)) => (
                        Hit {
                            tool,
                            indicator: Indicator::Ip,
                            matched: c.daddr.to_string(),
                        },
                        Some(domain),
                    ),
                    None => {
                        let proto = if c.protocol == "udp" {
                            Proto::Udp
                        } else {
                            Proto::Tcp
                        };
                        let tool = self.compiled.matcher.match_port(proto, c.dport)?;
                        let p = if proto == Proto::Udp { "udp" } else { "tcp" };
                        (
                            Hit {
                                tool,
                                indicator: Indicator::Port,
                                matched: format!("{p}/{}", c.dport),
                            },
                            None,
                        )
                    }
                };
                // A non-blocking connect's result is not known at the syscall's return.
                let outcome = match c.result {
                    "success" => "success",
                    "in_progress" | "unknown" => "unknown",
                    _ => "failure",
                };
                let s = Subject {
                    action: Action::Connect,
                    hit,
                    task: Some(&c.task),
                    destination: Some(Destination {
                        ip: c.daddr,
                        port: c.dport,
                        domain,
                    }),
                    dns: None,
                    outcome: Some(outcome),
                };
                self.emit(s, c.task.pid, table, c.task.ts_ns)
            }
            Event::Dns(d) => {
                let (tool, domain) = self.compiled.matcher.match_domain(&d.query.qname)?;
                let domain = domain.to_owned();
                // Whose connects the answer will tag: the asker's, or everyone's when a system
                // resolver asked (or the kernel could not say who did).
                let scope = match table.get_at(d.task.pid, d.task.start_ns) {
                    _ if d.task.pid == 0 => Scope::Host,
                    Some(p) if self.compiled.context.is_system_resolver(&p.executable) => {
                        Scope::Host
                    }
                    _ => Scope::Process {
                        pid: d.task.pid,
                        start_ns: d.task.start_ns,
                    },
                };
                self.correlation.asked(
                    d.sock_cookie,
                    d.query.txid,
                    Query {
                        tool: self.compiled.matcher.tools[tool].id.clone(),
                        qname: d.query.qname.clone(),
                        qtype: d.query.qtype.clone(),
                        server: d.daddr,
                        server_port: d.dport,
                        scope,
                    },
                    Instant::now(),
                );
                let s = Subject {
                    action: Action::DnsQuery,
                    hit: Hit {
                        tool,
                        indicator: Indicator::Domain,
                        matched: domain,
                    },
                    task: Some(&d.task),
                    destination: Some(Destination {
                        ip: d.daddr,
                        port: d.dport,
                        domain: None,
                    }),
                    dns: Some(DnsFields {
                        question: DnsQuestion {
                            name: d.query.qname.clone(),
                            kind: d.query.qtype.clone(),
                        },
                    }),
                    outcome: None,
                };
                self.emit(s, d.task.pid, table, d.task.ts_ns)
            }
            Event::DnsAnswer(a) => {
                // Only answers to vendor-domain queries are parsed: the rest cost a hash lookup.
                let ttl = self.compiled.context.dns_ttl;
                match self.correlation.answered(a, ttl, Instant::now()) {
                    Answered::Unrelated => {}
                    Answered::Tagged(_) => self.stats.answers_parsed += 1,
                    Answered::Malformed => self.stats.answers_malformed += 1,
                    Answered::Rejected(why) => {
                        log::debug!(
                            "DNS answer from {}:{} for txid {} ignored: {why:?} differs from the query's",
                            a.saddr,
                            a.sport,
                            a.txid
                        );
                        self.stats.answers_rejected += 1;
                    }
                }
                None
            }
            Event::Fork(_) | Event::Exit(_) => None,
        }
    }

    fn emit(&mut self, s: Subject<'_>, pid: u32, table: &ProcTable, ts_ns: u64) -> Option<Alert> {
        let c = self.compiled.clone();
        let tool = c.matcher.tool(&s.hit);
        // The process the record names (pid and start): never another that reused its pid.
        let proc_ = match s.task {
            Some(t) => table.get_at(pid, t.start_ns),
            None => table.get(pid),
        };
        let ancestors: Vec<&Proc> =
            proc_.map_or_else(Vec::new, |p| table.ancestors_of(p, MAX_ANCESTORS));
        let executable = proc_.map(|p| p.executable.clone()).unwrap_or_default();
        let uid = s
            .task
            .map(|t| t.uid)
            .or(proc_.map(|p| p.uid))
            .unwrap_or(u32::MAX);
        let cgroup_id = s
            .task
            .map(|t| t.cgroup_id)
            .or(proc_.map(|p| p.cgroup_id))
            .unwrap_or(0);
        // Reading the cgroup costs a file read: done before the allowlist only when an entry
        // needs it, otherwise after de-duplication.
        let mut placement = None;
        if c.allow.iter().any(|a| a.container.is_some()) {
            placement = Some(self.placement_of(pid, cgroup_id));
        }

        // Only an exact path may match an executable glob (see `Proc::exe_exact`).
        let exact_exe = proc_.filter(|p| p.exe_exact).map(|p| p.executable.as_str());
        if let Some(reason) = allowed(
            &c,
            &tool.id,
            exact_exe,
            uid,
            ancestors.first().copied(),
            placement
                .as_ref()
                .filter(|p| p.container_trusted)
                .and_then(|p| p.container.as_ref())
                .map(|c| c.id.as_str()),
        ) {
            log::debug!(
                "allowed {} activity of pid {pid} ({executable}): {reason}",
                tool.id
            );
            *self.stats.allowed.entry(tool.id.clone()).or_default() += 1;
            return None;
        }
        let start_ns = s
            .task
            .map(|t| t.start_ns)
            .filter(|&n| n != 0)
            .or(proc_.map(|p| p.start_ns))
            .unwrap_or(0);
        let start_tick = crate::proctable::ticks(start_ns);
        let key = (
            tool.id.clone(),
            pid,
            start_tick,
            s.hit.indicator,
            s.hit.matched.clone(),
        );
        let now = Instant::now();
        let count = match self.dedup.get_mut(&key) {
            Some(d) if now.duration_since(d.since) < c.context.dedup_window => {
                d.suppressed += 1;
                self.stats.deduplicated += 1;
                return None;
            }
            Some(d) => {
                let n = d.suppressed + 1;
                *d = Dedup {
                    since: now,
                    suppressed: 0,
                };
                n
            }
            None => {
                if self.dedup.len() >= MAX_DEDUP {
                    let window = c.context.dedup_window;
                    self.dedup
                        .retain(|_, d| now.duration_since(d.since) < window);
                }
                if self.dedup.len() < MAX_DEDUP {
                    self.dedup.insert(
                        key,
                        Dedup {
                            since: now,
                            suppressed: 0,
                        },
                    );
                } else {
                    // Full of live entries: this alert goes out, and is not folded into.
                    self.stats.tables.dedup_full += 1;
                }
                1
            }
        };

        let placement = match placement {
            Some(p) => p,
            None => self.placement_of(pid, cgroup_id),
        };
        let mut flags = Vec::new();
        if ancestors.iter().take(MAX_ANCESTORS).any(|a| {
            c.context.is_suspicious_parent(basename(&a.executable))
                || c.context.is_suspicious_parent(&a.comm)
                || c.matcher
                    .match_exec(&a.executable, "", &a.comm, &[])
                    .is_some_and(|h| h.tool != s.hit.tool)
        }) {
            flags.push(Flag::SuspiciousParent);
        }
        if c.context.in_temp_dir(&executable) {
            flags.push(Flag::TempDir);
        }
        if self.packages.owned(&executable) == Some(false) {
            flags.push(Flag::NotPackaged);
        }
        if placement.container.is_some() {
            flags.push(Flag::Container);
        }
        let severity = tool.severity.raised(flags.len());
        let name = s
            .task
            .map(|t| t.comm.clone())
            .or(proc_.map(|p| p.comm.clone()))
            .unwrap_or_default();
        let epoch_ns = wall_time_ns(ts_ns);
        *self.stats.alerts.entry(tool.id.clone()).or_default() += 1;
        let boot_id = self.boot_id.as_str();
        let pref = |p: &Proc| {
            let (entity_id, start) = identity(boot_id, p.pid, p.start_ns);
            ProcessRef {
                pid: p.pid,
                entity_id,
                start,
                name: p.comm.clone(),
                executable: p.executable.clone(),
            }
        };
        let (entity_id, start) = identity(&self.boot_id, pid, start_ns);
        Some(Alert {
            timestamp: rfc3339(epoch_ns),
            event: EventFields {
                kind: "alert",
                category: vec![match s.action {
                    Action::Exec | Action::Inventory => "process",
                    Action::Connect | Action::DnsQuery => "network",
                    Action::Loss => "host",
                    Action::Tamper => "process",
                }],
                action: s.action,
                severity: severity.score(),
                outcome: s.outcome,
            },
            rule: RuleFields {
                id: format!("rmm.{}.{}", tool.id, indicator_name(s.hit.indicator)),
                name: format!(
                    "{} {} ({})",
                    tool.name,
                    describe(s.action),
                    indicator_name(s.hit.indicator)
                ),
            },
            rmm: RmmFields {
                tool: tool.id.clone(),
                tool_name: tool.name.clone(),
                indicator: s.hit.indicator,
                matched: s.hit.matched,
                context: flags,
                severity: severity.name(),
                count,
                ancestors: ancestors.iter().map(|p| pref(p)).collect(),
                references: tool.references.clone(),
                loss: None,
            },
            threat: Threat {
                framework: "MITRE ATT&CK",
                technique: Technique {
                    id: tool.technique.clone(),
                    name: technique_name(&tool.technique),
                },
            },
            process: ProcessFields {
                pid,
                entity_id,
                start,
                name,
                executable,
                args: proc_.map(|p| p.args.clone()).unwrap_or_default(),
                user: UserRef { id: uid },
                parent: ancestors.first().map(|p| pref(p)),
            },
            destination: s.destination,
            dns: s.dns,
            container: placement.container,
            orchestrator: placement.pod.map(|p| Orchestrator {
                kind: "kubernetes",
                namespace: p.namespace,
                resource: OrchestratorResource {
                    kind: "pod",
                    name: p.name,
                    id: p.uid,
                },
            }),
            host: Host {
                hostname: self.hostname.clone(),
            },
        })
    }
}

/// The reason of the first allowlist entry whose every given field matches. Only what a user
/// cannot forge is compared: `exe` is the executable's exact path (`None` when cut, detached
/// or deleted), a parent is matched by its exact executable (never by its `comm`, which
/// `prctl(PR_SET_NAME)` sets to anything), and `container` is given only for a cgroup that a
/// runtime created (owned by root, not in a user's delegated subtree).
fn allowed<'c>(
    c: &'c Compiled,
    tool: &str,
    exe: Option<&str>,
    uid: u32,
    parent: Option<&Proc>,
    container: Option<&str>,
) -> Option<&'c str> {
    c.allow
        .iter()
        .find(|a| {
            a.tool.as_deref().is_none_or(|t| t == tool)
                && a.executable
                    .as_ref()
                    .is_none_or(|g| exe.is_some_and(|e| g.is_match(e)))
                && a.uid.is_none_or(|u| u == uid)
                && a.parent.as_ref().is_none_or(|(name, g)| {
                    parent.filter(|p| p.exe_exact).is_some_and(|p| {
                        basename(&p.executable).eq_ignore_ascii_case(name)
                            || g.is_match(&p.executable)
                    })
                })
                && a.container
                    .as_ref()
                    .is_none_or(|want| container.is_some_and(|got| got.starts_with(want.as_str())))
        })
        .map(|a| a.reason.as_str())
}

fn describe(a: Action) -> &'static str {
    match a {
        Action::Exec => "executed",
        Action::Inventory => "running",
        Action::Connect => "connection",
        Action::DnsQuery => "DNS lookup",
        Action::Loss => "lost events",
        Action::Tamper => "stopped or reloaded",
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::{
        catalog::{RuleSources, parse_rules},
        decode::{Connect, Dns, DnsAnswer, Exec, Fork},
        dns::{DnsQuery, tests as dnsw},
    };

    fn detector(extra: &str) -> Detector {
        let mut rules = Rules::load(&RuleSources::default()).expect("default rules");
        if !extra.is_empty() {
            let f = parse_rules("extra", extra).expect("extra rules valid");
            rules.allow.extend(f.allow);
            if let Some(c) = f.context {
                rules.context = c;
            }
        }
        Detector::new(Arc::new(Compiled::build(&rules).expect("compiles")))
    }

    fn task(pid: u32, comm: &str, uid: u32) -> Task {
        Task {
            ts_ns: 1,
            pid,
            start_ns: 0,
            tid: pid,
            uid,
            gid: uid,
            comm: comm.into(),
            cgroup_id: 0,
        }
    }

    fn exec(pid: u32, ppid: u32, exe: &str, uid: u32) -> Event {
        Event::Exec(Exec {
            task: task(pid, basename(exe), uid),
            ppid,
            parent_start_ns: 0,
            filename: exe.into(),
            executable: exe.into(),
            args: vec![exe.into()],
            args_truncated: false,
            flags: vec![],
        })
    }

    fn connect(pid: u32, ip: &str, port: u16, result: &'static str) -> Event {
        Event::Connect(Connect {
            task: task(pid, "client", 0),
            protocol: "tcp",
            daddr: ip.parse().expect("ip"),
            dport: port,
            result,
            ret: Some(0),
            source: "syscall",
            fd: 3,
            duration_ns: 1,
        })
    }

    /// Feeds events through the table and the detector like the processor does.
    fn feed(d: &mut Detector, t: &mut ProcTable, evs: &[Event]) -> Vec<Alert> {
        evs.iter()
            .filter_map(|e| {
                t.apply(e);
                d.on_event(e, t)
            })
            .collect()
    }

    #[test]
    fn exec_alert_fields_and_parent_chain() {
        let mut d = detector("");
        let mut t = ProcTable::default();
        let alerts = feed(
            &mut d,
            &mut t,
            &[
                exec(10, 1, "/usr/sbin/nginx", 33),
                Event::Fork(Fork {
                    task: task(10, "nginx", 33),
                    child_pid: 11,
                    child_start_ns: 0,
                }),
                exec(11, 10, "/bin/sh", 33),
                Event::Fork(Fork {
                    task: task(11, "sh", 33),
                    child_pid: 12,
                    child_start_ns: 0,
                }),
                exec(12, 11, "/tmp/x/anydesk", 33),
            ],
        );
        assert_eq!(alerts.len(), 1);
        let a = &alerts[0];
        assert_eq!(
            (a.rmm.tool.as_str(), a.rmm.indicator, a.event.action),
            ("anydesk", Indicator::Binary, Action::Exec)
        );
        assert_eq!(a.process.parent.as_ref().map(|p| p.pid), Some(11));
        let chain: Vec<u32> = a.rmm.ancestors.iter().map(|p| p.pid).collect();
        assert_eq!(chain, vec![11, 10]);
        assert!(
            a.rmm.context.contains(&Flag::SuspiciousParent),
            "nginx above the shell"
        );
        assert!(a.rmm.context.contains(&Flag::TempDir));
        assert_eq!(a.rmm.severity, "critical");
        assert_eq!(a.threat.technique.id, "T1219.002");
        assert_eq!(a.process.user.id, 33);
        let json = serde_json::to_value(a).expect("serializes");
        assert_eq!(json["event"]["kind"], "alert");
        assert_eq!(json["rmm"]["tool"], "anydesk");
        assert!(
            json["@timestamp"]
                .as_str()
                .is_some_and(|s| s.ends_with('Z'))
        );
    }

    #[test]
    fn another_rmm_as_ancestor_is_suspicious_but_not_itself() {
        let mut d = detector("");
        let mut t = ProcTable::default();
        let alerts = feed(
            &mut d,
            &mut t,
            &[
                exec(20, 1, "/usr/bin/x11vnc", 0),
                exec(21, 20, "/usr/bin/anydesk", 0),
            ],
        );
        assert_eq!(alerts.len(), 2);
        assert!(!alerts[0].rmm.context.contains(&Flag::SuspiciousParent));
        assert!(alerts[1].rmm.context.contains(&Flag::SuspiciousParent));
    }

    #[test]
    fn benign_processes_and_generic_ports_stay_silent() {
        let mut d = detector("");
        let mut t = ProcTable::default();
        let alerts = feed(
            &mut d,
            &mut t,
            &[
                exec(30, 1, "/usr/bin/vncviewer", 0),
                exec(31, 1, "/usr/bin/anydesk-notes", 0),
                connect(31, "127.0.0.1", 443, "success"),
                connect(31, "127.0.0.1", 22, "success"),
                connect(31, "127.0.0.1", 80, "refused"),
            ],
        );
        assert!(alerts.is_empty(), "{alerts:?}");
    }

    #[test]
    fn dns_answer_tags_a_later_connect_even_on_443() {
        let mut d = detector("");
        let mut t = ProcTable::default();
        let q = dnsw::query(77, "rs-ny.rustdesk.com", 1, false);
        let ip: IpAddr = "127.0.0.88".parse().expect("ip");
        let query = Event::Dns(Dns {
            task: task(40, "curl", 0),
            daddr: "127.0.0.153".parse().expect("ip"),
            dport: 53,
            sport: 5000,
            sock_cookie: 9,
            query: DnsQuery {
                txid: 77,
                qname: "rs-ny.rustdesk.com".into(),
                qtype: "A".into(),
                qcount: 1,
            },
            payload_truncated: false,
            flags: Vec::new(),
        });
        let answer = Event::DnsAnswer(DnsAnswer {
            ts_ns: 2,
            saddr: "127.0.0.153".parse().expect("ip"),
            sport: 53,
            dport: 5000,
            sock_cookie: 9,
            txid: 77,
            payload: dnsw::answer(&q, &[ip]),
        });
        let alerts = feed(
            &mut d,
            &mut t,
            &[
                query,
                answer,
                connect(40, "127.0.0.88", 443, "success"),
                connect(40, "127.0.0.89", 443, "success"),
            ],
        );
        assert_eq!(alerts.len(), 2, "{alerts:?}");
        assert_eq!(
            (alerts[0].event.action, alerts[0].rmm.indicator),
            (Action::DnsQuery, Indicator::Domain)
        );
        let c = &alerts[1];
        assert_eq!(
            (c.event.action, c.rmm.indicator, c.rmm.tool.as_str()),
            (Action::Connect, Indicator::Ip, "rustdesk")
        );
        let dest = c.destination.as_ref().expect("destination");
        assert_eq!(
            (dest.ip, dest.port, dest.domain.as_deref()),
            (ip, 443, Some("rs-ny.rustdesk.com"))
        );
        assert_eq!(c.event.outcome, Some("success"));
        assert_eq!(d.stats.answers_parsed, 1);
    }

    #[test]
    fn unanswered_or_unrelated_answers_are_not_parsed() {
        let mut d = detector("");
        let mut t = ProcTable::default();
        let q = dnsw::query(5, "example.org", 1, false);
        let answer = Event::DnsAnswer(DnsAnswer {
            ts_ns: 2,
            saddr: "127.0.0.153".parse().expect("ip"),
            sport: 53,
            dport: 5000,
            sock_cookie: 1,
            txid: 5,
            payload: dnsw::answer(&q, &["127.0.0.5".parse().expect("ip")]),
        });
        assert!(
            feed(
                &mut d,
                &mut t,
                &[answer, connect(1, "127.0.0.5", 443, "success")]
            )
            .is_empty()
        );
        assert_eq!(d.stats.answers_parsed, 0);
    }

    #[test]
    fn vendor_port_connect_outcomes() {
        let mut d = detector("");
        let mut t = ProcTable::default();
        let alerts = feed(
            &mut d,
            &mut t,
            &[
                connect(50, "127.0.0.1", 5938, "refused"),
                connect(51, "::1", 7070, "in_progress"),
                connect(52, "127.0.0.1", 21116, "success"),
            ],
        );
        let got: Vec<(&str, &str, Option<&str>)> = alerts
            .iter()
            .map(|a| (a.rmm.tool.as_str(), a.rmm.matched.as_str(), a.event.outcome))
            .collect();
        assert_eq!(
            got,
            vec![
                ("teamviewer", "tcp/5938", Some("failure")),
                ("anydesk", "tcp/7070", Some("unknown")),
                ("rustdesk", "tcp/21116", Some("success")),
            ]
        );
    }

    #[test]
    fn allowlist_counts_instead_of_alerting() {
        let allow = "[[allow]]\ntool = \"anydesk\"\nexecutable = \"/opt/helpdesk/**\"\nuser = 1000\nreason = \"helpdesk\"\n\n[[allow]]\nparent = \"msp-agent\"\n";
        let mut d = detector(allow);
        let mut t = ProcTable::default();
        let alerts = feed(
            &mut d,
            &mut t,
            &[
                exec(60, 1, "/opt/helpdesk/bin/anydesk", 1000),
                exec(61, 1, "/opt/helpdesk/bin/anydesk", 0),
                exec(62, 1, "/usr/bin/msp-agent", 0),
                exec(63, 62, "/usr/bin/rustdesk", 0),
            ],
        );
        let pids: Vec<u32> = alerts.iter().map(|a| a.process.pid).collect();
        assert_eq!(pids, vec![61], "only the wrong user alerts");
        assert_eq!(d.stats.allowed.get("anydesk"), Some(&1));
        assert_eq!(d.stats.allowed.get("rustdesk"), Some(&1));
    }

    /// An exec whose kernel flags say the path is not exact.
    fn exec_flagged(pid: u32, ppid: u32, exe: &str, flags: Vec<&'static str>) -> Event {
        let mut e = exec(pid, ppid, exe, 1000);
        if let Event::Exec(x) = &mut e {
            x.flags = flags;
        }
        e
    }

    #[test]
    fn the_allowlist_ignores_what_a_user_can_forge() {
        let allow = "[[allow]]\ntool = \"anydesk\"\nexecutable = \"/opt/helpdesk/**\"\nreason = \"helpdesk\"\n\n[[allow]]\nparent = \"msp-agent\"\n";
        let mut d = detector(allow);
        let mut t = ProcTable::default();
        // A parent that calls itself msp-agent (prctl(PR_SET_NAME)) but is a shell.
        let mut spoofed = exec(70, 1, "/usr/bin/bash", 1000);
        if let Event::Exec(x) = &mut spoofed {
            x.task.comm = "msp-agent".into();
        }
        let alerts = feed(
            &mut d,
            &mut t,
            &[
                spoofed,
                exec(71, 70, "/usr/bin/rustdesk", 1000),
                // Cut, detached and deleted paths that look allowlisted.
                exec_flagged(72, 1, "/opt/helpdesk/anydesk", vec!["path_truncated"]),
                exec_flagged(73, 1, "/opt/helpdesk/anydesk", vec!["path_deleted"]),
                exec_flagged(74, 1, "/opt/helpdesk/anydesk", vec!["path_detached"]),
                // The real thing is still allowed.
                exec(75, 1, "/opt/helpdesk/anydesk", 1000),
                exec(76, 1, "/usr/bin/msp-agent", 0),
                exec(77, 76, "/usr/bin/rustdesk", 0),
            ],
        );
        let pids: Vec<u32> = alerts.iter().map(|a| a.process.pid).collect();
        assert_eq!(pids, vec![71, 72, 73, 74]);
    }

    #[test]
    fn allowlist_with_unknown_tool_or_user_is_rejected() {
        let mut rules = Rules::load(&RuleSources::default()).expect("rules");
        rules.allow = parse_rules("a", "[[allow]]\ntool = \"nosuchtool\"\n")
            .expect("syntax ok")
            .allow;
        assert!(Compiled::build(&rules).is_err());
        rules.allow = parse_rules("a", "[[allow]]\nuser = \"no-such-user-xyz\"\n")
            .expect("syntax ok")
            .allow;
        assert!(Compiled::build(&rules).is_err());
    }

    #[test]
    fn dedup_folds_repeats_into_one_alert_with_a_count() {
        let mut d = detector("[context]\ndedup_window_secs = 3600\n");
        let mut t = ProcTable::default();
        let evs: Vec<Event> = (0..5)
            .map(|_| connect(70, "127.0.0.1", 5938, "refused"))
            .collect();
        assert_eq!(feed(&mut d, &mut t, &evs).len(), 1);
        assert_eq!(d.stats.deduplicated, 4);
        // another process is another alert
        assert_eq!(
            feed(&mut d, &mut t, &[connect(71, "127.0.0.1", 5938, "refused")]).len(),
            1
        );
        // and so is a process that took pid 70 after it (another start): not folded into
        // the first one's window
        let mut reused = connect(70, "127.0.0.1", 5938, "refused");
        if let Event::Connect(c) = &mut reused {
            c.task.start_ns = 7_000_000_000;
        }
        let a = feed(&mut d, &mut t, &[reused]);
        assert_eq!(a.len(), 1, "a reused pid is a new process");
        assert_eq!(
            a[0].process
                .entity_id
                .as_deref()
                .map(|id| id.ends_with(":70:700")),
            Some(true),
            "{:?}",
            a[0].process
        );

        let mut d = detector("[context]\ndedup_window_secs = 0\n");
        assert_eq!(
            feed(&mut d, &mut t, &evs).len(),
            5,
            "a zero window never folds"
        );
        assert!(feed(&mut d, &mut t, &evs).iter().all(|a| a.rmm.count == 1));
    }

    #[test]
    fn inventory_reports_running_tools() {
        let mut d = detector("");
        let mut t = ProcTable::default();
        feed(
            &mut d,
            &mut t,
            &[
                exec(80, 1, "/opt/teamviewer/tv_bin/teamviewerd", 0),
                exec(81, 1, "/usr/bin/bash", 0),
            ],
        );
        let mut d = detector("");
        let inv = d.inventory(&t);
        assert_eq!(inv.len(), 1);
        assert_eq!(
            (
                inv[0].event.action,
                inv[0].rmm.tool.as_str(),
                inv[0].rmm.indicator
            ),
            (Action::Inventory, "teamviewer", Indicator::Path)
        );
    }

    /// A vendor query of `pid` on socket 9 and its answer giving `ip`.
    fn lookup(pid: u32, name: &str, ip: &str) -> [Event; 2] {
        let q = dnsw::query(78, name, 1, false);
        [
            Event::Dns(Dns {
                task: task(pid, "curl", 0),
                daddr: "127.0.0.153".parse().expect("ip"),
                dport: 53,
                sport: 5000,
                sock_cookie: 9,
                query: DnsQuery {
                    txid: 78,
                    qname: name.into(),
                    qtype: "A".into(),
                    qcount: 1,
                },
                payload_truncated: false,
                flags: Vec::new(),
            }),
            Event::DnsAnswer(DnsAnswer {
                ts_ns: 2,
                saddr: "127.0.0.153".parse().expect("ip"),
                sport: 53,
                dport: 5000,
                sock_cookie: 9,
                txid: 78,
                payload: dnsw::answer(&q, &[ip.parse().expect("ip")]),
            }),
        ]
    }

    #[test]
    fn a_reload_keeps_correlation_and_a_removed_tool_tags_nothing() {
        let mut d = detector("");
        let mut t = ProcTable::default();
        feed(
            &mut d,
            &mut t,
            &lookup(41, "relay.rustdesk.com", "127.0.0.90"),
        );
        feed(&mut d, &mut t, &lookup(41, "x.anydesk.com", "127.0.0.91"));
        let mut rules = Rules::load(&RuleSources::default()).expect("rules");
        // Rustdesk goes, and it is listed before anydesk: indexes move, ids do not.
        let pos = |r: &Rules, id: &str| r.tools.iter().position(|x| x.id.get_ref() == id);
        assert!(pos(&rules, "rustdesk") < pos(&rules, "anydesk"));
        rules.tools.retain(|x| x.id.get_ref() != "rustdesk");
        d.reload(Arc::new(Compiled::build(&rules).expect("compiles")));
        let alerts = feed(
            &mut d,
            &mut t,
            &[
                connect(41, "127.0.0.90", 443, "success"),
                connect(41, "127.0.0.91", 443, "success"),
            ],
        );
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert_eq!(
            (alerts[0].rmm.tool.as_str(), alerts[0].rmm.indicator),
            ("anydesk", Indicator::Ip)
        );
    }

    #[test]
    fn an_answer_tags_only_the_asker_and_a_forged_one_nothing() {
        let mut d = detector("");
        let mut t = ProcTable::default();
        let [query, answer] = lookup(42, "relay.rustdesk.com", "127.0.0.92");
        let Event::DnsAnswer(real) = &answer else {
            unreachable!()
        };
        let mut forged = real.clone();
        forged.payload = dnsw::answer(
            &dnsw::query(78, "other.rustdesk.com", 1, false),
            &["127.0.0.93".parse().expect("ip")],
        );
        let alerts = feed(
            &mut d,
            &mut t,
            &[
                query,
                Event::DnsAnswer(forged),
                answer,
                connect(43, "127.0.0.92", 443, "success"),
                connect(42, "127.0.0.93", 443, "success"),
            ],
        );
        assert_eq!(alerts.len(), 1, "only the DNS query alerts: {alerts:?}");
        assert_eq!((d.stats.answers_rejected, d.stats.answers_parsed), (1, 1));
        let alerts = feed(&mut d, &mut t, &[connect(42, "127.0.0.92", 443, "success")]);
        assert_eq!(alerts.len(), 1, "the asker's connect is tagged: {alerts:?}");
    }

    #[test]
    fn reload_swaps_rules() {
        let mut d = detector("");
        let mut t = ProcTable::default();
        let mut rules = Rules::load(&RuleSources::default()).expect("rules");
        rules.tools.retain(|x| x.id.get_ref() != "anydesk");
        d.reload(Arc::new(Compiled::build(&rules).expect("compiles")));
        assert!(feed(&mut d, &mut t, &[exec(90, 1, "/usr/bin/anydesk", 0)]).is_empty());
        assert_eq!(d.stats.reloads, 1);
    }
}
