//! DNS-to-connect correlation: the addresses that a vendor domain resolved to tag later
//! connects to them (`rmm.indicator: ip`), whatever port they use. Built so that a user on the
//! same host cannot steer it:
//! - an answer counts only for a query pending on the same socket with the same transaction
//!   id, only when it comes from the server and port that query went to and echoes its
//!   question, and only its records for that name and the CNAME chain from it count
//!   (`dns::parse_answer`). A rejected answer leaves the query pending: a forged answer that
//!   arrives first does not hide the real one;
//! - the addresses tag the connects of the process that asked and of its descendants, not
//!   every process's: a user whose own server answers `x.anydesk.com` with the company proxy's
//!   address tags only their own connects. A system resolver (`[context] system_resolvers`,
//!   by executable, which only root installs) resolves for everyone, and so does a query whose
//!   sender the kernel could not name: those answers tag every process's connects;
//! - the state is keyed by tool id, not by catalog position, so a rules reload (SIGHUP, which
//!   is also logrotate's reopen) keeps it; a tool that a reload removed tags nothing.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use crate::{
    decode::DnsAnswer,
    dns::{self, DnsError},
    proctable::ProcTable,
};

/// Bounds on the state (addresses remembered, queries waiting for an answer).
const MAX_RESOLVED: usize = 65_536;
const MAX_PENDING: usize = 4096;
/// Tags kept per address (tools and askers); the oldest goes first.
const MAX_PER_ADDRESS: usize = 8;
/// An unanswered query is forgotten after this long (stub resolvers give up within seconds).
pub const PENDING_TTL: Duration = Duration::from_secs(30);
/// Most ancestors walked to find the process that asked.
const MAX_DEPTH: usize = 64;

/// Whose connects an answer tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every process's (a system resolver asked, or the kernel could not name the sender).
    Host,
    /// This process's and its descendants': the process `pid` that started at `start_ns`
    /// (0: unknown), so that a later process with the reused pid is not in scope.
    Process { pid: u32, start_ns: u64 },
}

/// A vendor-domain query that waits for its answer.
#[derive(Debug, Clone)]
pub struct Query {
    pub tool: String,
    /// The name and type asked, as the query carried them.
    pub qname: String,
    pub qtype: String,
    /// Where the query went: the answer must come from there.
    pub server: IpAddr,
    pub server_port: u16,
    pub scope: Scope,
}

#[derive(Debug)]
struct Pending {
    q: Query,
    asked: Instant,
}

#[derive(Debug)]
struct Resolved {
    tool: String,
    domain: String,
    until: Instant,
    scope: Scope,
}

/// What became of a DNS answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answered {
    /// Not the answer to a pending vendor-domain query: not even parsed.
    Unrelated,
    /// From another server than the one asked, or for another question: ignored.
    Rejected(Rejection),
    /// Did not parse.
    Malformed,
    /// This many addresses now tag connects.
    Tagged(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    Server,
    Question,
}

/// A connect tagged by an answer: the tool (by id) and the name that was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag<'a> {
    pub tool: &'a str,
    pub domain: &'a str,
}

#[derive(Debug, Default)]
pub struct Correlation {
    /// By (socket cookie, transaction id).
    pending: HashMap<(u64, u16), Pending>,
    resolved: HashMap<IpAddr, Vec<Resolved>>,
    /// Entries in `resolved`, all addresses together.
    tags: usize,
    /// Queries forgotten unanswered because the table was full (not their age).
    pub pending_evicted: u64,
    /// Address tags forgotten before their TTL because the table was full.
    pub resolved_evicted: u64,
}

impl Correlation {
    /// Queries waiting for their answer, and address tags.
    pub fn sizes(&self) -> (usize, usize) {
        (self.pending.len(), self.tags)
    }

    /// Remembers a vendor-domain query until its answer (or [`PENDING_TTL`]).
    pub fn asked(&mut self, sock_cookie: u64, txid: u16, q: Query, now: Instant) {
        if self.pending.len() >= MAX_PENDING {
            self.pending
                .retain(|_, p| now.duration_since(p.asked) < PENDING_TTL);
            if self.pending.len() >= MAX_PENDING {
                // Still full of live queries: the oldest half goes.
                let mut ages: Vec<Instant> = self.pending.values().map(|p| p.asked).collect();
                ages.sort_unstable();
                let cut = ages[ages.len() / 2];
                let before = self.pending.len();
                self.pending.retain(|_, p| p.asked > cut);
                self.pending_evicted += (before - self.pending.len()) as u64;
            }
        }
        self.pending
            .insert((sock_cookie, txid), Pending { q, asked: now });
    }

    /// Takes an answer into account (see the module's rules); `ttl`: how long its addresses
    /// tag connects.
    pub fn answered(&mut self, a: &DnsAnswer, ttl: Duration, now: Instant) -> Answered {
        let key = (a.sock_cookie, a.txid);
        let Some(p) = self.pending.get(&key) else {
            return Answered::Unrelated;
        };
        if now.duration_since(p.asked) >= PENDING_TTL {
            self.pending.remove(&key);
            return Answered::Unrelated;
        }
        if a.saddr != p.q.server || a.sport != p.q.server_port {
            return Answered::Rejected(Rejection::Server);
        }
        let addrs = match dns::parse_answer(&a.payload, &p.q.qname, &p.q.qtype) {
            Ok(addrs) => addrs,
            Err(DnsError::QuestionMismatch) => return Answered::Rejected(Rejection::Question),
            Err(_) => return Answered::Malformed,
        };
        let Some(Pending { q, .. }) = self.pending.remove(&key) else {
            return Answered::Unrelated;
        };
        if self.tags + addrs.len() > MAX_RESOLVED {
            self.expire(now);
            if self.tags + addrs.len() > MAX_RESOLVED {
                self.resolved_evicted += self.tags as u64;
                self.resolved.clear();
                self.tags = 0;
            }
        }
        let until = now + ttl;
        for ip in &addrs {
            let list = self.resolved.entry(*ip).or_default();
            if let Some(r) = list
                .iter_mut()
                .find(|r| r.tool == q.tool && r.scope == q.scope)
            {
                r.until = until;
                r.domain.clone_from(&q.qname);
                continue;
            }
            if list.len() >= MAX_PER_ADDRESS {
                list.remove(0);
                self.tags -= 1;
                self.resolved_evicted += 1;
            }
            list.push(Resolved {
                tool: q.tool.clone(),
                domain: q.qname.clone(),
                until,
                scope: q.scope,
            });
            self.tags += 1;
        }
        Answered::Tagged(addrs.len())
    }

    /// The answer that tags a connect of process `pid` (started at `start_ns`) to `ip`, if
    /// any: one of a system resolver, or one that the process or an ancestor of it asked for.
    pub fn lookup(
        &self,
        ip: IpAddr,
        pid: u32,
        start_ns: u64,
        table: &ProcTable,
        now: Instant,
    ) -> Option<Tag<'_>> {
        let list = self.resolved.get(&ip)?;
        let mut lineage: Option<Vec<&crate::proctable::Proc>> = None;
        list.iter()
            .rev()
            .filter(|r| r.until > now)
            .find(|r| match r.scope {
                Scope::Host => true,
                Scope::Process {
                    pid: by,
                    start_ns: by_start,
                } => {
                    (by == pid && crate::proctable::same_start(by_start, start_ns))
                        || lineage
                            .get_or_insert_with(|| {
                                table
                                    .get_at(pid, start_ns)
                                    .map_or_else(Vec::new, |p| table.ancestors_of(p, MAX_DEPTH))
                            })
                            .iter()
                            .any(|a| a.is(by, by_start))
                }
            })
            .map(|r| Tag {
                tool: &r.tool,
                domain: &r.domain,
            })
    }

    /// Addresses tagged (all tags of all addresses).
    pub fn len(&self) -> usize {
        self.tags
    }

    pub fn is_empty(&self) -> bool {
        self.tags == 0
    }

    fn expire(&mut self, now: Instant) {
        let mut tags = 0;
        self.resolved.retain(|_, list| {
            list.retain(|r| r.until > now);
            tags += list.len();
            !list.is_empty()
        });
        self.tags = tags;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        decode::{Event, Exec, Fork, Task},
        dns::tests::{answer, query},
    };

    const SERVER: &str = "127.0.0.153";

    fn q(tool: &str, name: &str, scope: Scope) -> Query {
        Query {
            tool: tool.into(),
            qname: name.into(),
            qtype: "A".into(),
            server: SERVER.parse().unwrap(),
            server_port: 53,
            scope,
        }
    }

    fn ans(cookie: u64, txid: u16, from: &str, asked: &str, ips: &[&str]) -> DnsAnswer {
        let ips: Vec<IpAddr> = ips.iter().map(|i| i.parse().unwrap()).collect();
        DnsAnswer {
            ts_ns: 1,
            saddr: from.parse().unwrap(),
            sport: 53,
            dport: 40000,
            sock_cookie: cookie,
            txid,
            payload: answer(&query(txid, asked, 1, false), &ips),
        }
    }

    fn task(pid: u32) -> Task {
        Task {
            ts_ns: 1,
            pid,
            start_ns: 0,
            tid: pid,
            uid: 1000,
            gid: 1000,
            comm: "x".into(),
            cgroup_id: 0,
        }
    }

    /// pid 10 forks 11; pid 20 is unrelated.
    fn table() -> ProcTable {
        let mut t = ProcTable::default();
        for (pid, ppid) in [(10, 1), (20, 1)] {
            t.apply(&Event::Exec(Exec {
                task: task(pid),
                ppid,
                parent_start_ns: 0,
                filename: "/usr/bin/x".into(),
                executable: "/usr/bin/x".into(),
                args: vec![],
                args_truncated: false,
                flags: vec![],
            }));
        }
        t.apply(&Event::Fork(Fork {
            task: task(10),
            child_pid: 11,
            child_start_ns: 0,
        }));
        t
    }

    const TTL: Duration = Duration::from_secs(60);

    #[test]
    fn the_asker_and_its_descendants_are_tagged_not_another_process() {
        let t = table();
        let now = Instant::now();
        let mut c = Correlation::default();
        c.asked(
            1,
            7,
            q(
                "anydesk",
                "relay.anydesk.com",
                Scope::Process {
                    pid: 10,
                    start_ns: 0,
                },
            ),
            now,
        );
        assert_eq!(
            c.answered(
                &ans(1, 7, SERVER, "relay.anydesk.com", &["127.0.0.9"]),
                TTL,
                now
            ),
            Answered::Tagged(1)
        );
        let ip = "127.0.0.9".parse().unwrap();
        let tag = Tag {
            tool: "anydesk",
            domain: "relay.anydesk.com",
        };
        assert_eq!(c.lookup(ip, 10, 0, &t, now), Some(tag));
        assert_eq!(
            c.lookup(ip, 11, 0, &t, now),
            Some(tag),
            "a child of the asker"
        );
        assert_eq!(c.lookup(ip, 20, 0, &t, now), None, "another process");
        assert_eq!(c.lookup(ip, 10, 0, &t, now + TTL), None, "expired");
    }

    #[test]
    fn a_system_resolver_tags_every_process() {
        let t = table();
        let now = Instant::now();
        let mut c = Correlation::default();
        c.asked(1, 7, q("anydesk", "relay.anydesk.com", Scope::Host), now);
        c.answered(
            &ans(1, 7, SERVER, "relay.anydesk.com", &["127.0.0.9"]),
            TTL,
            now,
        );
        assert!(
            c.lookup("127.0.0.9".parse().unwrap(), 20, 0, &t, now)
                .is_some()
        );
    }

    #[test]
    fn forged_answers_are_rejected_and_leave_the_query_pending() {
        let t = table();
        let now = Instant::now();
        let mut c = Correlation::default();
        c.asked(
            1,
            7,
            q(
                "anydesk",
                "x.anydesk.com",
                Scope::Process {
                    pid: 10,
                    start_ns: 0,
                },
            ),
            now,
        );
        assert_eq!(
            c.answered(
                &ans(1, 7, "127.0.0.66", "x.anydesk.com", &["127.0.0.5"]),
                TTL,
                now
            ),
            Answered::Rejected(Rejection::Server)
        );
        assert_eq!(
            c.answered(
                &ans(1, 7, SERVER, "y.anydesk.com", &["127.0.0.5"]),
                TTL,
                now
            ),
            Answered::Rejected(Rejection::Question)
        );
        assert_eq!(
            c.answered(
                &ans(2, 7, SERVER, "x.anydesk.com", &["127.0.0.5"]),
                TTL,
                now
            ),
            Answered::Unrelated,
            "another socket"
        );
        assert!(c.is_empty());
        // The real answer still counts.
        assert_eq!(
            c.answered(
                &ans(1, 7, SERVER, "x.anydesk.com", &["127.0.0.6"]),
                TTL,
                now
            ),
            Answered::Tagged(1)
        );
        assert!(
            c.lookup("127.0.0.5".parse().unwrap(), 10, 0, &t, now)
                .is_none()
        );
        assert!(
            c.lookup("127.0.0.6".parse().unwrap(), 10, 0, &t, now)
                .is_some()
        );
        // Answered once: a second copy is unrelated.
        assert_eq!(
            c.answered(
                &ans(1, 7, SERVER, "x.anydesk.com", &["127.0.0.7"]),
                TTL,
                now
            ),
            Answered::Unrelated
        );
    }

    #[test]
    fn stale_queries_and_full_tables_are_bounded() {
        let now = Instant::now();
        let mut c = Correlation::default();
        c.asked(1, 7, q("anydesk", "x.anydesk.com", Scope::Host), now);
        assert_eq!(
            c.answered(
                &ans(1, 7, SERVER, "x.anydesk.com", &["127.0.0.5"]),
                TTL,
                now + PENDING_TTL
            ),
            Answered::Unrelated,
            "answered too late"
        );
        for i in 0..(MAX_PENDING as u64 + 10) {
            c.asked(i, 1, q("anydesk", "x.anydesk.com", Scope::Host), now);
        }
        assert!(c.pending.len() <= MAX_PENDING);
        assert!(c.pending_evicted > 0);
    }
}
