//! DNS over UDP/53, seen at the cgroup packet hooks so every sending API looks the same:
//! queries are datagrams to port 53 leaving a socket (egress: `sendto`, `sendmsg`, `sendmmsg`,
//! `send`/`write` on a connected socket, io_uring); answers are datagrams from port 53 arriving
//! at a socket (ingress), kept for DNS-to-connect correlation. Payloads are parsed in userspace.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_skb_load_bytes},
    macros::{cgroup_skb, map},
    maps::LruHashMap,
    programs::SkBuffContext,
};
use rmm_common::{
    AF_INET, AF_INET6, DNS_FIXED_LEN, DNS_PAYLOAD_LEN, DNS_PORT, DnsAskedKey, DnsEvent, DropReason,
    EventKind, FilterReason, IPPROTO_UDP, dns_flags,
};

use crate::{
    kernel::nonzero_len,
    maps::{NET_EVENTS, count_drop, count_filtered, fill_header_skb, submit_flags},
    stage::Slot,
};

/// Sockets that sent a query, and to which server: only a datagram from port 53 of a server
/// its socket asked is reported, so a flood of answers nobody asked for (forged, or meant to
/// fill the network ring and crowd out connects) costs a lookup and a counter, not a record.
/// Least recently used entries go first: 16,384 (socket, server) pairs is far more than the
/// sockets that wait for an answer at once on a real host; one evicted by a storm of queries
/// costs the answer's correlation, never the query's own alert.
#[map]
static DNS_ASKED: LruHashMap<DnsAskedKey, u8> = LruHashMap::with_max_entries(16_384, 0);

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const UDP_HEADER_LEN: usize = 8;
const _: () = assert!(DNS_PAYLOAD_LEN.is_power_of_two());

/// cgroup_skb egress: reads the IPv4/IPv6 and UDP headers (data starts at the network
/// header); reports datagrams to port 53. Always lets the packet pass.
#[cgroup_skb(egress)]
pub fn dns_egress(ctx: SkBuffContext) -> i32 {
    let _ = try_dns(&ctx, false);
    1
}

/// cgroup_skb ingress: the same for datagrams from port 53. Always lets the packet pass.
#[cgroup_skb(ingress)]
pub fn dns_ingress(ctx: SkBuffContext) -> i32 {
    let _ = try_dns(&ctx, true);
    1
}

/// Where the UDP header starts, the family, and the remote address (destination on egress,
/// source on ingress).
#[inline(always)]
fn ip_header(ctx: &SkBuffContext, ingress: bool) -> Option<(u16, usize, [u8; 16])> {
    let mut remote = [0u8; 16];
    match u16::from_be(ctx.skb.protocol() as u16) {
        ETH_P_IP => {
            let vihl: u8 = ctx.load(0).ok()?;
            let proto: u8 = ctx.load(9).ok()?;
            if proto != IPPROTO_UDP {
                return None;
            }
            // Only the first fragment carries the UDP header.
            let frag: [u8; 2] = ctx.load(6).ok()?;
            if u16::from_be_bytes(frag) & 0x1fff != 0 {
                return None;
            }
            let a: [u8; 4] = ctx.load(if ingress { 12 } else { 16 }).ok()?;
            remote[..4].copy_from_slice(&a);
            Some((AF_INET, ((vihl & 0x0f) as usize) * 4, remote))
        }
        ETH_P_IPV6 => {
            // No extension headers: DNS datagrams do not carry any in practice.
            let next: u8 = ctx.load(6).ok()?;
            if next != IPPROTO_UDP {
                return None;
            }
            remote = ctx.load(if ingress { 8 } else { 24 }).ok()?;
            Some((AF_INET6, 40, remote))
        }
        _ => None,
    }
}

/// Reads the headers straight from the linear packet data (no helper call: most packets are
/// TCP and must cost as little as possible). Returns `None` when the packet is not UDP or the
/// headers are not in the linear part; `Some(None)` for UDP that is not DNS.
#[inline(always)]
fn fast_path(
    ctx: &SkBuffContext,
    ingress: bool,
) -> Option<Option<(u16, usize, [u8; 16], u16, u16)>> {
    // SAFETY: reading the data/data_end fields of the context; the verifier turns them into
    // packet pointers and every access below is bounds-checked against data_end.
    let (data, end) = unsafe {
        (
            (*ctx.skb.skb).data as usize,
            (*ctx.skb.skb).data_end as usize,
        )
    };
    let mut remote = [0u8; 16];
    let (family, ihl) = match u16::from_be(ctx.skb.protocol() as u16) {
        ETH_P_IP => {
            if data + 20 > end {
                return None;
            }
            // SAFETY: 20 bytes checked above.
            let (vihl, proto, frag) = unsafe {
                (
                    *(data as *const u8),
                    *((data + 9) as *const u8),
                    u16::from_be_bytes(*((data + 6) as *const [u8; 2])),
                )
            };
            if proto != IPPROTO_UDP || frag & 0x1fff != 0 {
                return Some(None);
            }
            // SAFETY: within the 20 checked bytes.
            let a: [u8; 4] = unsafe { *((data + if ingress { 12 } else { 16 }) as *const [u8; 4]) };
            remote[..4].copy_from_slice(&a);
            (AF_INET, ((vihl & 0x0f) as usize) * 4)
        }
        ETH_P_IPV6 => {
            if data + 40 > end {
                return None;
            }
            // SAFETY: 40 bytes checked above.
            if unsafe { *((data + 6) as *const u8) } != IPPROTO_UDP {
                return Some(None);
            }
            // SAFETY: as above.
            remote = unsafe { *((data + if ingress { 8 } else { 24 }) as *const [u8; 16]) };
            (AF_INET6, 40)
        }
        _ => return Some(None),
    };
    let udp = data + ihl;
    if udp + UDP_HEADER_LEN > end {
        return None;
    }
    // SAFETY: 8 bytes checked above.
    let h = unsafe { *(udp as *const [u8; 8]) };
    let sport = u16::from_be_bytes([h[0], h[1]]);
    let dport = u16::from_be_bytes([h[2], h[3]]);
    Some(Some((family, ihl, remote, sport, dport)))
}

/// The same with `bpf_skb_load_bytes`, for headers outside the linear data.
#[inline(always)]
fn slow_path(ctx: &SkBuffContext, ingress: bool) -> Option<(u16, usize, [u8; 16], u16, u16)> {
    let (family, l4, remote) = ip_header(ctx, ingress)?;
    let udp: [u8; 8] = ctx.load(l4).ok()?;
    Some((
        family,
        l4,
        remote,
        u16::from_be_bytes([udp[0], udp[1]]),
        u16::from_be_bytes([udp[2], udp[3]]),
    ))
}

#[inline(always)]
fn try_dns(ctx: &SkBuffContext, ingress: bool) -> Option<()> {
    let (family, l4, remote, sport, dport) = match fast_path(ctx, ingress) {
        Some(Some(h)) => h,
        Some(None) => return None,
        None => slow_path(ctx, ingress)?,
    };
    let (remote_port, local_port) = if ingress {
        (sport, dport)
    } else {
        (dport, sport)
    };
    if remote_port != DNS_PORT {
        return None;
    }
    let asked = DnsAskedKey {
        // SAFETY: the context is a cgroup_skb __sk_buff.
        sock_cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        addr: remote,
        family,
        _pad: [0; 6],
    };
    if ingress {
        if DNS_ASKED.get_ptr(&asked).is_none() {
            count_filtered(FilterReason::DnsAnswerUnsolicited);
            return None;
        }
        // Answers matter only for the addresses they carry: skip those without answer
        // records (NXDOMAIN, NODATA) before paying for a record.
        let counts: [u8; 8] = ctx.load(l4 + UDP_HEADER_LEN + 4).ok()?;
        if counts[2] == 0 && counts[3] == 0 {
            return None;
        }
    } else if DNS_ASKED.get_ptr(&asked).is_none() {
        // Looked up first: an update of a present key would replace its element.
        let _ = DNS_ASKED.insert(&asked, &1, 0);
    }
    let payload_off = l4 + UDP_HEADER_LEN;
    let d = Datagram {
        ingress,
        remote,
        family,
        remote_port,
        local_port,
        payload_off,
        total: (ctx.len() as usize).checked_sub(payload_off)?,
        sock_cookie: asked.sock_cookie,
    };
    let drop_as = if ingress {
        DropReason::DnsAnswerReserve
    } else {
        DropReason::DnsReserve
    };

    if let Some(mut slot) = Slot::new::<DnsEvent>() {
        // SAFETY: the slot's record is ours until commit; the payload is kept only up to
        // payload_len.
        let ev = unsafe { &mut *slot.record::<DnsEvent>() };
        fill(ctx, ev, &d);
        let len = DNS_FIXED_LEN + ev.payload_len as usize;
        slot.commit(len, drop_as);
        return Some(());
    }
    let Some(mut entry) = NET_EVENTS.reserve::<DnsEvent>(0) else {
        count_drop(drop_as);
        return None;
    };
    // SAFETY: the entry is ours until submit; the payload is read only up to payload_len.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill(ctx, ev, &d);
    entry.submit(submit_flags(&NET_EVENTS));
    Some(())
}

/// What a record says of a DNS datagram.
struct Datagram {
    ingress: bool,
    remote: [u8; 16],
    family: u16,
    remote_port: u16,
    local_port: u16,
    /// Where the UDP payload starts in the packet, and its length.
    payload_off: usize,
    total: usize,
    sock_cookie: u64,
}

/// Fills a DNS record: the header, the addresses, and up to `DNS_PAYLOAD_LEN` bytes of the
/// payload.
#[inline(always)]
fn fill(ctx: &SkBuffContext, ev: &mut DnsEvent, d: &Datagram) {
    ev.flags = 0;
    if d.ingress {
        // Received in softirq or in the sender's context: the current task is not the
        // socket's owner, so no task fields (userspace matches answers by socket cookie).
        ev.hdr.kind = EventKind::DnsAnswer as u32;
        ev.hdr.tid = 0;
        ev.hdr.tgid = 0;
        ev.hdr.uid = 0;
        ev.hdr.gid = 0;
        ev.hdr._pad0 = 0;
        // SAFETY: helper without arguments.
        ev.hdr.ts_ns = unsafe { bpf_ktime_get_ns() };
        ev.hdr.start_ns = 0;
        ev.hdr.cgroup_id = 0;
        ev.hdr.comm = [0; 16];
    } else if !fill_header_skb(&mut ev.hdr, EventKind::Dns) {
        ev.flags |= dns_flags::NO_TASK;
    }
    ev.sock_cookie = d.sock_cookie;
    ev.family = d.family;
    ev.dport = d.remote_port;
    ev.sport = d.local_port;
    ev.udp_payload_len = d.total as u32;
    ev.payload_len = 0;
    ev.daddr = d.remote;
    let mut n = d.total;
    if n > DNS_PAYLOAD_LEN {
        n = DNS_PAYLOAD_LEN;
        ev.flags |= dns_flags::TRUNCATED;
    }
    if n > 0 {
        let len = nonzero_len(n, DNS_PAYLOAD_LEN);
        // SAFETY: len is in 1..=DNS_PAYLOAD_LEN, the size of the destination.
        let ret = unsafe {
            bpf_skb_load_bytes(
                ctx.as_ptr(),
                d.payload_off as u32,
                ev.payload.as_mut_ptr().cast(),
                len,
            )
        };
        if ret == 0 {
            ev.payload_len = len;
        } else {
            ev.flags |= dns_flags::LOAD_ERROR;
        }
    }
}
