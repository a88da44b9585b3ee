//! rmm-monitor's eBPF programs: process exec/fork/exit, outbound connect and DNS queries.
//!
//! Only tracepoints and cgroup hooks: the target kernels may lack kprobes, fentry and LSM.
#![no_std]
#![feature(asm_experimental_arch)]
#![no_main]

mod connect;
mod dns;
mod kernel;
mod maps;
mod path;
mod process;
mod signal;
mod stage;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
