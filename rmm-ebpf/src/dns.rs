//! DNS queries: every UDP datagram to port 53 that leaves a socket, seen at cgroup_skb egress,
//! so `sendto`, `sendmsg`, `sendmmsg`, `send`/`write` on a connected socket and io_uring all
//! look the same. The payload is parsed in userspace.

use aya_ebpf::{
    helpers::{bpf_get_socket_cookie, bpf_skb_load_bytes},
    macros::cgroup_skb,
    programs::SkBuffContext,
    EbpfContext,
};
use rmm_common::{
    dns_flags, DnsEvent, DropReason, EventKind, AF_INET, AF_INET6, DNS_PAYLOAD_LEN, DNS_PORT,
    IPPROTO_UDP,
};

use crate::maps::{count_drop, fill_header, submit_flags, NET_EVENTS};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const UDP_HEADER_LEN: usize = 8;

/// cgroup_skb egress: reads the IPv4/IPv6 and UDP headers of the packet (data starts at the
/// network header). Always lets the packet pass.
#[cgroup_skb(egress)]
pub fn dns_egress(ctx: SkBuffContext) -> i32 {
    let _ = try_dns_egress(&ctx);
    1
}

#[inline(always)]
fn try_dns_egress(ctx: &SkBuffContext) -> Option<()> {
    let mut daddr = [0u8; 16];
    let (family, l4) = match u16::from_be(ctx.skb.protocol() as u16) {
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
            let a: [u8; 4] = ctx.load(16).ok()?;
            daddr[..4].copy_from_slice(&a);
            (AF_INET, ((vihl & 0x0f) as usize) * 4)
        }
        ETH_P_IPV6 => {
            // No extension headers: a DNS query does not carry any in practice.
            let next: u8 = ctx.load(6).ok()?;
            if next != IPPROTO_UDP {
                return None;
            }
            daddr = ctx.load(24).ok()?;
            (AF_INET6, 40)
        }
        _ => return None,
    };
    let udp: [u8; 8] = ctx.load(l4).ok()?;
    let dport = u16::from_be_bytes([udp[2], udp[3]]);
    if dport != DNS_PORT {
        return None;
    }
    let sport = u16::from_be_bytes([udp[0], udp[1]]);
    let payload_off = l4 + UDP_HEADER_LEN;
    let total = (ctx.len() as usize).checked_sub(payload_off)?;

    let Some(mut entry) = NET_EVENTS.reserve::<DnsEvent>(0) else {
        count_drop(DropReason::DnsReserve);
        return None;
    };
    // SAFETY: the entry is ours until submit; the payload is read only up to payload_len.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut ev.hdr, EventKind::Dns);
    // SAFETY: the context is a cgroup_skb __sk_buff.
    ev.sock_cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    ev.family = family;
    ev.dport = dport;
    ev.sport = sport;
    ev.flags = 0;
    ev.udp_payload_len = total as u32;
    ev.payload_len = 0;
    ev.daddr = daddr;
    let mut n = total;
    if n > DNS_PAYLOAD_LEN {
        n = DNS_PAYLOAD_LEN;
        ev.flags |= dns_flags::TRUNCATED;
    }
    if n > 0 {
        // SAFETY: n is in 1..=DNS_PAYLOAD_LEN, the size of the destination.
        let ret = unsafe {
            bpf_skb_load_bytes(
                ctx.as_ptr(),
                payload_off as u32,
                ev.payload.as_mut_ptr().cast(),
                n as u32,
            )
        };
        if ret == 0 {
            ev.payload_len = n as u32;
        } else {
            ev.flags |= dns_flags::LOAD_ERROR;
        }
    }
    entry.submit(submit_flags(&NET_EVENTS));
    Some(())
}
