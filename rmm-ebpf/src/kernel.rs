//! Reads of kernel memory at offsets that userspace found in BTF.

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
