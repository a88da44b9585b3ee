//! Ring-buffer records to typed events. Records are copied out of the ring by the readers;
//! here they are checked (size, kind) and turned into owned values. Nothing from the kernel is
//! trusted: lengths are clamped to the buffers, strings are decoded lossily.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rmm_common::{
    AF_INET, AF_INET6, ARGS_MAX_COUNT, BATCH_MAGIC, BatchHeader, ConnectEvent, DNS_FIXED_LEN,
    DnsEvent, EventKind, ExecEvent, ExitEvent, ForkEvent, Header, IPPROTO_TCP, IPPROTO_UDP,
    connect_source, dns_flags, exec_flags,
};
use serde::Serialize;

use crate::dns::{self, DnsQuery};

/// Fields every event carries.
#[derive(Debug, Clone, Serialize)]
pub struct Task {
    pub ts_ns: u64,
    pub pid: u32,
    /// The process's start (CLOCK_BOOTTIME ns, see `Header::start_ns`); 0 when unknown.
    /// `(pid, start_ns)` names one process; a pid alone may have been reused.
    pub start_ns: u64,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    pub cgroup_id: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Exec {
    #[serde(flatten)]
    pub task: Task,
    pub ppid: u32,
    /// The parent's start; 0 when unknown.
    pub parent_start_ns: u64,
    /// The filename as the caller passed it to execve.
    pub filename: String,
    /// The executable the kernel resolved (`mm->exe_file`), absolute.
    pub executable: String,
    pub args: Vec<String>,
    pub args_truncated: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Fork {
    #[serde(flatten)]
    pub task: Task,
    pub child_pid: u32,
    /// The child's start; 0 when unknown.
    pub child_start_ns: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Exit {
    #[serde(flatten)]
    pub task: Task,
    pub exit_code: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Connect {
    #[serde(flatten)]
    pub task: Task,
    pub protocol: &'static str,
    pub daddr: IpAddr,
    pub dport: u16,
    /// success | refused | in_progress | error | unknown (no syscall result: io_uring etc.)
    pub result: &'static str,
    /// The syscall's return value (negative errno); absent without a syscall.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ret: Option<i32>,
    pub source: &'static str,
    pub fd: i32,
    pub duration_ns: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Dns {
    #[serde(flatten)]
    pub task: Task,
    pub daddr: IpAddr,
    pub dport: u16,
    pub sport: u16,
    pub sock_cookie: u64,
    #[serde(flatten)]
    pub query: DnsQuery,
    pub payload_truncated: bool,
    /// `no_task`: the kernel could not say which process sent the query (the task fields
    /// are zero).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<&'static str>,
}

/// A DNS answer arriving at a socket. Only the header is decoded here; the answer records are
/// parsed by the detector, and only for queries it is waiting on.
#[derive(Debug, Clone, Serialize)]
pub struct DnsAnswer {
    pub ts_ns: u64,
    /// The server's address and port (the datagram's source).
    pub saddr: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub sock_cookie: u64,
    pub txid: u16,
    #[serde(skip)]
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Exec(Exec),
    Fork(Fork),
    Exit(Exit),
    Connect(Connect),
    Dns(Dns),
    DnsAnswer(DnsAnswer),
}

impl Event {
    pub fn kind(&self) -> EventKind {
        match self {
            Event::Exec(_) => EventKind::Exec,
            Event::Fork(_) => EventKind::Fork,
            Event::Exit(_) => EventKind::Exit,
            Event::Connect(_) => EventKind::Connect,
            Event::Dns(_) => EventKind::Dns,
            Event::DnsAnswer(_) => EventKind::DnsAnswer,
        }
    }
}

/// Why a record was not turned into an event. Each is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than a header, or not the size its kind says.
    BadSize,
    UnknownKind(u32),
    /// A DNS payload that is not a parseable query (counted separately).
    MalformedDns,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::BadSize => write!(f, "record has the wrong size for its kind"),
            DecodeError::UnknownKind(k) => write!(f, "unknown record kind {k}"),
            DecodeError::MalformedDns => write!(f, "malformed DNS payload"),
        }
    }
}

/// Copies a `T` out of the record after checking its size exactly.
fn read_record<T: Copy>(data: &[u8]) -> Result<T, DecodeError> {
    if data.len() != std::mem::size_of::<T>() {
        return Err(DecodeError::BadSize);
    }
    // SAFETY: the length matches; T is one of the rmm-common wire structs, which hold only
    // integers and byte arrays (every bit pattern is valid); read_unaligned copes with any
    // alignment of the buffer.
    Ok(unsafe { std::ptr::read_unaligned(data.as_ptr().cast::<T>()) })
}

/// The records of a ring entry that holds several (a CPU's stage: `BatchHeader`, then each
/// record as a `u64` length and its bytes, padded to 8), as byte ranges of `entry`. `None`
/// when the entry is a single record, or a batch whose framing does not add up (it is then
/// decoded as one record and counted as unknown).
pub fn split_batch(entry: &[u8]) -> Option<Vec<std::ops::Range<usize>>> {
    const HDR: usize = std::mem::size_of::<BatchHeader>();
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(entry.get(at..at + 4)?.try_into().ok()?))
    };
    if word(0)? != BATCH_MAGIC {
        return None;
    }
    let (count, bytes) = (word(4)? as usize, word(8)? as usize);
    if bytes != entry.len() || count > bytes / 8 {
        return None;
    }
    let mut out = Vec::with_capacity(count);
    let mut at = HDR;
    while at < bytes {
        let len = u64::from_ne_bytes(entry.get(at..at + 8)?.try_into().ok()?);
        let start = at + 8;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        if end > bytes {
            return None;
        }
        out.push(start..end);
        at = start + (end - start).next_multiple_of(8);
    }
    (at == bytes && out.len() == count).then_some(out)
}

/// The kind of a record, from its first four bytes.
pub fn record_kind(data: &[u8]) -> Result<EventKind, DecodeError> {
    let head: [u8; 4] = data
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or(DecodeError::BadSize)?;
    EventKind::try_from(u32::from_ne_bytes(head)).map_err(DecodeError::UnknownKind)
}

/// The kernel timestamp of a record (`Header::ts_ns`), 0 when it is too short.
pub fn record_ts(data: &[u8]) -> u64 {
    const TS: usize = std::mem::offset_of!(Header, ts_ns);
    data.get(TS..TS + 8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_ne_bytes)
}

pub fn decode(data: &[u8]) -> Result<Event, DecodeError> {
    Ok(match record_kind(data)? {
        EventKind::Exec => Event::Exec(decode_exec(&read_record::<ExecEvent>(data)?)),
        EventKind::Fork => {
            let ev: ForkEvent = read_record(data)?;
            Event::Fork(Fork {
                task: task(&ev.hdr),
                child_pid: ev.child_tgid,
                child_start_ns: ev.child_start_ns,
            })
        }
        EventKind::Exit => {
            let ev: ExitEvent = read_record(data)?;
            Event::Exit(Exit {
                task: task(&ev.hdr),
                exit_code: ev.exit_code,
            })
        }
        EventKind::Connect => Event::Connect(decode_connect(&read_record::<ConnectEvent>(data)?)),
        EventKind::Dns => Event::Dns(decode_dns(&read_dns(data)?)?),
        EventKind::DnsAnswer => Event::DnsAnswer(decode_answer(&read_dns(data)?)?),
    })
}

/// A DNS record: a whole `DnsEvent` (its own ring entry), or a staged one that ends after its
/// payload (`DNS_FIXED_LEN` + `payload_len` bytes, padded to 8).
fn read_dns(data: &[u8]) -> Result<DnsEvent, DecodeError> {
    const FULL: usize = std::mem::size_of::<DnsEvent>();
    if data.len() == FULL {
        return read_record(data);
    }
    if !(DNS_FIXED_LEN..FULL).contains(&data.len()) {
        return Err(DecodeError::BadSize);
    }
    let mut full = [0u8; FULL];
    full[..data.len()].copy_from_slice(data);
    let ev: DnsEvent = read_record(&full)?;
    if ev.payload_len as usize > data.len() - DNS_FIXED_LEN {
        return Err(DecodeError::BadSize);
    }
    Ok(ev)
}

fn task(h: &Header) -> Task {
    Task {
        ts_ns: h.ts_ns,
        pid: h.tgid,
        start_ns: h.start_ns,
        tid: h.tid,
        uid: h.uid,
        gid: h.gid,
        comm: c_string(&h.comm),
        cgroup_id: h.cgroup_id,
    }
}

/// Bytes up to the first NUL, lossily decoded.
pub fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn clamp(buf: &[u8], len: u32) -> &[u8] {
    &buf[..(len as usize).min(buf.len())]
}

/// Turns the leaf-first component list from the kernel into an absolute path.
pub fn path_from_components(raw: &[u8], detached: bool) -> String {
    let parts: Vec<&[u8]> = raw.split(|b| *b == 0).filter(|p| !p.is_empty()).collect();
    if parts.is_empty() {
        return String::new();
    }
    let mut out = Vec::with_capacity(raw.len() + 1);
    for (i, part) in parts.iter().rev().enumerate() {
        // A detached object (memfd:NAME, an unlinked file) has no root to hang from: its name
        // is shown as the kernel has it, like /proc/PID/exe does.
        if !(detached && i == 0) {
            out.push(b'/');
        }
        out.extend_from_slice(part);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Splits the argv block into at most `ARGS_MAX_COUNT` arguments. `truncated` is true when
/// the kernel cut the block or there were more arguments than kept.
pub fn split_args(block: &[u8], cut_by_kernel: bool) -> (Vec<String>, bool) {
    let body = block.strip_suffix(&[0]).unwrap_or(block);
    if body.is_empty() {
        return (Vec::new(), cut_by_kernel);
    }
    let mut args = Vec::new();
    let mut truncated = cut_by_kernel;
    for part in body.split(|b| *b == 0) {
        if args.len() == ARGS_MAX_COUNT {
            truncated = true;
            break;
        }
        args.push(String::from_utf8_lossy(part).into_owned());
    }
    (args, truncated)
}

fn decode_exec(ev: &ExecEvent) -> Exec {
    let mut flags = Vec::new();
    for (bit, name) in [
        (exec_flags::FILENAME_TRUNCATED, "filename_truncated"),
        (exec_flags::PATH_TRUNCATED, "path_truncated"),
        (exec_flags::PATH_ERROR, "path_error"),
        (exec_flags::ARGS_ERROR, "args_error"),
        (exec_flags::NO_OFFSETS, "no_offsets"),
        (exec_flags::PATH_DETACHED, "path_detached"),
        (exec_flags::PATH_DELETED, "path_deleted"),
    ] {
        if ev.flags & bit != 0 {
            flags.push(name);
        }
    }
    let detached = ev.flags & exec_flags::PATH_DETACHED != 0;
    let (args, args_truncated) = split_args(
        clamp(&ev.args, ev.args_len),
        ev.flags & exec_flags::ARGS_TRUNCATED != 0,
    );
    Exec {
        task: task(&ev.hdr),
        ppid: ev.ppid,
        parent_start_ns: ev.parent_start_ns,
        filename: String::from_utf8_lossy(clamp(&ev.filename, ev.filename_len)).into_owned(),
        executable: path_from_components(clamp(&ev.path, ev.path_len), detached),
        args,
        args_truncated,
        flags,
    }
}

fn ip(family: u16, raw: &[u8; 16]) -> IpAddr {
    if family == AF_INET {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*raw))
    }
}

const EINPROGRESS: i32 = 115;
const ECONNREFUSED: i32 = 111;

fn decode_connect(ev: &ConnectEvent) -> Connect {
    let syscall = ev.source == connect_source::SYSCALL;
    let result = match (syscall, ev.ret) {
        (false, _) => "unknown",
        (true, 0) => "success",
        (true, r) if r == -ECONNREFUSED => "refused",
        (true, r) if r == -EINPROGRESS => "in_progress",
        (true, _) => "error",
    };
    Connect {
        task: task(&ev.hdr),
        protocol: match ev.protocol {
            IPPROTO_TCP => "tcp",
            IPPROTO_UDP => "udp",
            _ => "unknown",
        },
        daddr: ip(
            if ev.family == AF_INET6 {
                AF_INET6
            } else {
                AF_INET
            },
            &ev.daddr,
        ),
        dport: ev.dport,
        result,
        ret: syscall.then_some(ev.ret),
        source: if syscall { "syscall" } else { "cgroup_hook" },
        fd: ev.fd,
        duration_ns: ev.duration_ns,
    }
}

fn decode_dns(ev: &DnsEvent) -> Result<Dns, DecodeError> {
    let payload = clamp(&ev.payload, ev.payload_len);
    let query = dns::parse_query(payload).map_err(|_| DecodeError::MalformedDns)?;
    Ok(Dns {
        task: task(&ev.hdr),
        daddr: ip(ev.family, &ev.daddr),
        dport: ev.dport,
        sport: ev.sport,
        sock_cookie: ev.sock_cookie,
        query,
        payload_truncated: ev.flags & dns_flags::TRUNCATED != 0,
        flags: if ev.flags & dns_flags::NO_TASK != 0 {
            vec!["no_task"]
        } else {
            Vec::new()
        },
    })
}

fn decode_answer(ev: &DnsEvent) -> Result<DnsAnswer, DecodeError> {
    let payload = clamp(&ev.payload, ev.payload_len);
    if payload.len() < 12 {
        return Err(DecodeError::MalformedDns);
    }
    Ok(DnsAnswer {
        ts_ns: ev.hdr.ts_ns,
        saddr: ip(ev.family, &ev.daddr),
        sport: ev.dport,
        dport: ev.sport,
        sock_cookie: ev.sock_cookie,
        txid: u16::from_be_bytes([payload[0], payload[1]]),
        payload: payload.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: EventKind) -> Header {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        Header {
            kind: kind as u32,
            tid: 11,
            tgid: 10,
            uid: 1000,
            gid: 1000,
            _pad0: 0,
            ts_ns: 5,
            start_ns: 123_450_000_000,
            cgroup_id: 77,
            comm,
        }
    }

    fn bytes_of<T: Copy>(v: &T) -> Vec<u8> {
        // SAFETY: wire structs are plain data with explicit padding.
        unsafe {
            std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>())
        }
        .to_vec()
    }

    #[test]
    fn path_components_are_reversed() {
        assert_eq!(
            path_from_components(b"true\0bin\0usr\0", false),
            "/usr/bin/true"
        );
        assert_eq!(path_from_components(b"memfd:x\0", true), "memfd:x");
        assert_eq!(path_from_components(b"", false), "");
    }

    #[test]
    fn args_are_split_and_capped() {
        assert_eq!(
            split_args(b"a\0b c\0\0", false),
            (vec!["a".into(), "b c".into(), "".into()], false)
        );
        let many: Vec<u8> = (0..20)
            .flat_map(|i| format!("{i}\0").into_bytes())
            .collect();
        let (args, truncated) = split_args(&many, false);
        assert_eq!(args.len(), ARGS_MAX_COUNT);
        assert!(truncated);
        assert_eq!(split_args(b"", true), (vec![], true));
    }

    #[test]
    fn exec_round_trip() {
        let mut ev = ExecEvent {
            hdr: header(EventKind::Exec),
            ppid: 1,
            flags: exec_flags::ARGS_TRUNCATED,
            filename_len: 4,
            path_len: 13,
            args_len: 7,
            args_size: 4000,
            parent_start_ns: 0,
            filename: [0; rmm_common::FILENAME_LEN],
            path: [0; rmm_common::PATH_LEN],
            args: [0; rmm_common::ARGS_LEN],
        };
        ev.filename[..4].copy_from_slice(b"./tr");
        ev.path[..13].copy_from_slice(b"true\0bin\0usr\0");
        ev.args[..7].copy_from_slice(b"tr\0-x\0y");
        let Ok(Event::Exec(e)) = decode(&bytes_of(&ev)) else {
            panic!("exec decodes")
        };
        assert_eq!(e.executable, "/usr/bin/true");
        assert_eq!(e.filename, "./tr");
        assert_eq!(e.args, vec!["tr", "-x", "y"]);
        assert!(e.args_truncated);
        assert_eq!(
            (e.task.pid, e.task.tid, e.task.comm.as_str(), e.ppid),
            (10, 11, "curl", 1)
        );
    }

    #[test]
    fn lengths_from_the_kernel_are_clamped() {
        let mut ev = ExecEvent {
            hdr: header(EventKind::Exec),
            ppid: 1,
            flags: 0,
            filename_len: u32::MAX,
            path_len: u32::MAX,
            args_len: u32::MAX,
            args_size: 0,
            parent_start_ns: 0,
            filename: [b'a'; rmm_common::FILENAME_LEN],
            path: [b'b'; rmm_common::PATH_LEN],
            args: [b'c'; rmm_common::ARGS_LEN],
        };
        ev.ppid = 2;
        assert!(matches!(decode(&bytes_of(&ev)), Ok(Event::Exec(_))));
    }

    #[test]
    fn connect_results() {
        let mut ev = ConnectEvent {
            hdr: header(EventKind::Connect),
            ret: -111,
            fd: 3,
            family: AF_INET6,
            dport: 5938,
            protocol: IPPROTO_TCP,
            source: connect_source::SYSCALL,
            _pad0: [0; 2],
            daddr: Ipv6Addr::LOCALHOST.octets(),
            duration_ns: 1,
        };
        let Ok(Event::Connect(c)) = decode(&bytes_of(&ev)) else {
            panic!("connect decodes")
        };
        assert_eq!(
            (c.result, c.protocol, c.dport, c.ret),
            ("refused", "tcp", 5938, Some(-111))
        );
        assert_eq!(c.daddr, IpAddr::V6(Ipv6Addr::LOCALHOST));
        ev.source = connect_source::CGROUP_ONLY;
        ev.family = AF_INET;
        ev.daddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        let Ok(Event::Connect(c)) = decode(&bytes_of(&ev)) else {
            panic!("connect decodes")
        };
        assert_eq!((c.result, c.ret), ("unknown", None));
        assert_eq!(c.daddr, IpAddr::V4(Ipv4Addr::LOCALHOST));
    }

    fn dns(kind: EventKind, payload: &[u8]) -> DnsEvent {
        let mut ev = DnsEvent {
            hdr: header(kind),
            sock_cookie: 1,
            family: AF_INET,
            dport: 53,
            sport: 4000,
            flags: 0,
            udp_payload_len: payload.len() as u32,
            payload_len: payload.len() as u32,
            daddr: [0; 16],
            payload: [0; rmm_common::DNS_PAYLOAD_LEN],
        };
        ev.payload[..payload.len()].copy_from_slice(payload);
        ev
    }

    /// A batch entry as the kernel's stage writes it.
    fn batch(records: &[Vec<u8>]) -> Vec<u8> {
        let mut b = vec![0u8; 16];
        for r in records {
            b.extend_from_slice(&(r.len() as u64).to_ne_bytes());
            b.extend_from_slice(r);
            b.resize(b.len().next_multiple_of(8), 0xee);
        }
        let (count, bytes) = (records.len() as u32, b.len() as u32);
        b[..4].copy_from_slice(&BATCH_MAGIC.to_ne_bytes());
        b[4..8].copy_from_slice(&count.to_ne_bytes());
        b[8..12].copy_from_slice(&bytes.to_ne_bytes());
        b
    }

    #[test]
    fn staged_batches_split_into_records_and_short_dns_records_decode() {
        let q = crate::dns::tests::query(0x4242, "relay.example.com", 1, false);
        let mut short = bytes_of(&dns(EventKind::Dns, &q));
        short.truncate(DNS_FIXED_LEN + q.len());
        let connect = ConnectEvent {
            hdr: header(EventKind::Connect),
            ret: 0,
            fd: 3,
            family: AF_INET,
            dport: 443,
            protocol: IPPROTO_TCP,
            source: connect_source::SYSCALL,
            _pad0: [0; 2],
            daddr: [0; 16],
            duration_ns: 1,
        };
        let entry = batch(&[bytes_of(&connect), short.clone()]);
        let ranges = split_batch(&entry).expect("a well-formed batch");
        assert_eq!(ranges.len(), 2);
        assert!(matches!(
            decode(&entry[ranges[0].clone()]),
            Ok(Event::Connect(_))
        ));
        let Ok(Event::Dns(d)) = decode(&entry[ranges[1].clone()]) else {
            panic!("the short DNS record decodes")
        };
        assert_eq!(
            (d.query.qname.as_str(), d.query.txid),
            ("relay.example.com", 0x4242)
        );
        // A single record is not a batch.
        assert_eq!(split_batch(&bytes_of(&connect)), None);
        // Framing that does not add up is refused whole, never a panic.
        for bad in [
            {
                let mut e = entry.clone();
                e[4] = 3; // count
                e
            },
            {
                let mut e = entry.clone();
                e.truncate(e.len() - 8); // bytes
                e
            },
            {
                let mut e = entry.clone();
                e[16..24].copy_from_slice(&u64::MAX.to_ne_bytes()); // a record's length
                e
            },
            entry[..10].to_vec(),
        ] {
            assert_eq!(split_batch(&bad), None);
        }
        // A short DNS record whose payload_len claims more than it holds is refused.
        let mut lying = short;
        lying.truncate(DNS_FIXED_LEN + 8);
        assert_eq!(decode(&lying).unwrap_err(), DecodeError::BadSize);
    }

    #[test]
    fn bad_records_are_errors_not_panics() {
        assert_eq!(decode(&[]).unwrap_err(), DecodeError::BadSize);
        assert_eq!(
            decode(&[9, 0, 0, 0]).unwrap_err(),
            DecodeError::UnknownKind(9)
        );
        let fork = ForkEvent {
            hdr: header(EventKind::Fork),
            child_tgid: 3,
            _pad0: 0,
            child_start_ns: 0,
        };
        let mut b = bytes_of(&fork);
        b.pop();
        assert_eq!(decode(&b).unwrap_err(), DecodeError::BadSize);
        let mut dns = DnsEvent {
            hdr: header(EventKind::Dns),
            sock_cookie: 1,
            family: AF_INET,
            dport: 53,
            sport: 4000,
            flags: 0,
            udp_payload_len: 3,
            payload_len: 3,
            daddr: [0; 16],
            payload: [0; rmm_common::DNS_PAYLOAD_LEN],
        };
        dns.payload[..3].copy_from_slice(&[1, 2, 3]);
        assert_eq!(
            decode(&bytes_of(&dns)).unwrap_err(),
            DecodeError::MalformedDns
        );
    }
}
