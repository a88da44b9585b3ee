//! Reads of kernel memory at offsets that userspace found in BTF, and the few instructions
//! written by hand where the compiler's own would not verify on every kernel.

use aya_ebpf::helpers::bpf_probe_read_kernel;

/// Reads a `T` at `base + off`; `None` on a NULL base or a failed read.
#[inline(always)]
pub fn read<T>(base: u64, off: u32) -> Option<T> {
    if base == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel validates the address; a bad one is an error, not a fault.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T).ok() }
}

/// Reads a kernel pointer at `base + off`.
#[inline(always)]
pub fn read_ptr(base: u64, off: u32) -> Option<u64> {
    read::<u64>(base, off).filter(|p| *p != 0)
}

/// `n` (in `1..=max`, `max` a power of two) in a form whose bounds every verifier sees:
/// `((n - 1) & (max - 1)) + 1`, the mask applied in assembly so that the compiler, which knows
/// it changes nothing, cannot drop it. Verifiers before 6.x do not learn `n >= 1` from a test
/// `n != 0` and refuse a helper's length that may be 0.
#[inline(always)]
pub fn nonzero_len(n: usize, max: usize) -> u32 {
    let mut m = (n as u64).wrapping_sub(1);
    // SAFETY: arithmetic on a register only.
    unsafe {
        core::arch::asm!(
            "{m} &= {mask}",
            m = inout(reg) m,
            mask = in(reg) (max as u64).wrapping_sub(1),
            options(pure, nomem, nostack),
        );
    }
    (m + 1) as u32
}

/// `*p += v` in one atomic instruction (`lock *(u64 *)(p + 0) += v`, BPF_XADD, on every
/// kernel; the fetching atomics are Linux 5.12 and their instructions alone make 5.10 refuse
/// a program).
#[inline(always)]
pub fn atomic_add(p: *mut u64, v: u64) {
    // SAFETY: p points into a map value (8-aligned); the instruction reads and writes those 8
    // bytes atomically and touches nothing else.
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({p} + 0) += {v}",
            p = in(reg) p,
            v = in(reg) v,
            options(nostack),
        );
    }
}
