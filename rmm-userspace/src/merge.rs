//! One ordered stream out of the two rings. The process ring (exec, fork, exit) and the
//! network ring (connect, DNS, staged per CPU) are read by separate readers with their own
//! wake-ups, so a forked child's DNS query can be read before its fork, and a connect made just
//! before an `execve` after it. Records are held here and released in kernel-time order once
//! every ring has been read past them: each reader says, with every batch (empty ones too, on
//! each poll tick), up to which kernel time its ring has been read (`read_to`). A record older
//! than [`Merger::max_hold`] is released anyway, so a ring that stops being read delays the
//! stream by a bounded time; a record that arrives after later ones were released (it came
//! too late for its place) is released at once and counted.

use bytes::Bytes;

use crate::decode::record_ts;

/// The rings, by index in `Merger`.
pub const RINGS: usize = 2;

/// The clock of the kernel's record times (`bpf_ktime_get_ns`: CLOCK_MONOTONIC), now.
pub fn kernel_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[derive(Debug)]
pub struct Merger {
    /// Up to which kernel time each ring has been read.
    read_to: [u64; RINGS],
    /// Held records, sorted by kernel time after each push.
    held: Vec<(u64, Bytes)>,
    /// The newest kernel time released so far.
    released_to: u64,
    /// How long (kernel time) a record may be held at most.
    max_hold_ns: u64,
    /// Most records held; past it the oldest are released whatever the rings say.
    max_held: usize,
    /// Records released after a later one (out of order), and records released because they
    /// were held too long or too many were held.
    pub late: u64,
    pub forced: u64,
}

impl Merger {
    pub fn new(max_hold_ns: u64, max_held: usize) -> Merger {
        Merger {
            read_to: [0; RINGS],
            held: Vec::new(),
            released_to: 0,
            max_hold_ns,
            max_held: max_held.max(1),
            late: 0,
            forced: 0,
        }
    }

    /// Records read from `ring`, which has now been read up to kernel time `read_to`.
    pub fn push(&mut self, ring: usize, records: Vec<Bytes>, read_to: u64) {
        if let Some(r) = self.read_to.get_mut(ring) {
            *r = (*r).max(read_to);
        }
        if records.is_empty() {
            return;
        }
        self.held
            .extend(records.into_iter().map(|r| (record_ts(&r), r)));
        // A stable sort finds the sorted runs (what was held, each ring's batch) and merges
        // them: close to linear on this input.
        self.held.sort_by_key(|(ts, _)| *ts);
    }

    /// Moves to `out`, in order, every record that can go: those every ring has been read
    /// past, those held longer than the bound at kernel time `now`, and the oldest when too
    /// many are held.
    pub fn release(&mut self, now: u64, out: &mut Vec<Bytes>) {
        let watermark = self.read_to.iter().copied().min().unwrap_or(0);
        let stale = now.saturating_sub(self.max_hold_ns);
        let over = self.held.len().saturating_sub(self.max_held);
        let mut n = self.held.partition_point(|(ts, _)| *ts <= watermark);
        let forced_to = self.held.partition_point(|(ts, _)| *ts <= stale).max(over);
        if forced_to > n {
            self.forced += (forced_to - n) as u64;
            n = forced_to;
        }
        self.take(n, out);
    }

    /// Releases everything held (the stop: every ring has been read for the last time).
    pub fn release_all(&mut self, out: &mut Vec<Bytes>) {
        let n = self.held.len();
        self.take(n, out);
    }

    /// Kernel time up to which every ring has been read: records up to it are released.
    pub fn watermark(&self) -> u64 {
        self.read_to.iter().copied().min().unwrap_or(0)
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }

    fn take(&mut self, n: usize, out: &mut Vec<Bytes>) {
        for (ts, r) in self.held.drain(..n) {
            // ts 0: a record too short to carry one; decode counts it.
            if ts != 0 && ts < self.released_to {
                self.late += 1;
            }
            self.released_to = self.released_to.max(ts);
            out.push(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmm_common::Header;

    const PROC: usize = 0;
    const NET: usize = 1;

    /// A record that is only a header with this kernel time, and its tag in `pid`.
    fn rec(ts: u64, tag: u32) -> Bytes {
        let mut b = vec![0u8; std::mem::size_of::<Header>()];
        let off = std::mem::offset_of!(Header, ts_ns);
        b[off..off + 8].copy_from_slice(&ts.to_ne_bytes());
        let p = std::mem::offset_of!(Header, tgid);
        b[p..p + 4].copy_from_slice(&tag.to_ne_bytes());
        Bytes::from(b)
    }

    fn tags(out: &[Bytes]) -> Vec<u32> {
        let p = std::mem::offset_of!(Header, tgid);
        out.iter()
            .map(|r| u32::from_ne_bytes(r[p..p + 4].try_into().unwrap()))
            .collect()
    }

    #[test]
    fn a_record_waits_until_every_ring_is_read_past_it() {
        let mut m = Merger::new(1_000_000_000, 1000);
        let mut out = Vec::new();
        // The network ring is read first: a child's connect at 20, read up to 30.
        m.push(NET, vec![rec(20, 2)], 30);
        m.release(40, &mut out);
        assert!(out.is_empty(), "the process ring has not been read past 20");
        // The process ring: the fork at 15, read up to 40.
        m.push(PROC, vec![rec(15, 1), rec(35, 3)], 40);
        m.release(40, &mut out);
        assert_eq!(
            tags(&out),
            vec![1, 2],
            "the fork first; 35 waits for the network ring"
        );
        m.push(NET, vec![], 50);
        m.release(50, &mut out);
        assert_eq!(tags(&out), vec![1, 2, 3]);
        assert_eq!((m.late, m.forced, m.held()), (0, 0, 0));
    }

    #[test]
    fn a_silent_ring_delays_by_a_bounded_time_and_late_records_are_counted() {
        let mut m = Merger::new(100, 1000);
        let mut out = Vec::new();
        m.push(PROC, vec![rec(10, 1), rec(500, 2)], 600);
        m.release(300, &mut out);
        assert_eq!(tags(&out), vec![1], "held longer than 100: released");
        assert_eq!(m.forced, 1);
        // A record older than what was released arrives: released at once, counted.
        m.push(NET, vec![rec(5, 3)], 6);
        m.release(300, &mut out);
        assert_eq!(tags(&out), vec![1, 3]);
        assert_eq!(m.late, 1);
        m.release_all(&mut out);
        assert_eq!(tags(&out), vec![1, 3, 2]);
    }

    #[test]
    fn too_many_held_records_release_the_oldest() {
        let mut m = Merger::new(u64::MAX, 2);
        let mut out = Vec::new();
        m.push(PROC, (1..=5).map(|i| rec(i, i as u32)).collect(), 10);
        m.release(10, &mut out);
        assert_eq!(tags(&out), vec![1, 2, 3]);
        assert_eq!(m.held(), 2);
    }
}
