//! Every eBPF program in the embedded object that the daemon loads on this kernel passes its
//! verifier (root only; run by `cargo xtask test`, which builds the object first, and inside
//! every kernel of the matrix).

use aya::programs::{CgroupSkb, CgroupSockAddr, RawTracePoint, TracePoint};
use rmm_userspace::probes::{self, LoadOptions, PROBES};

#[test]
fn every_program_passes_the_verifier() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: loading BPF programs needs root (run `cargo xtask test`)");
        return;
    }
    let opts = LoadOptions {
        proc_ring_bytes: 1 << 16,
        net_ring_bytes: 1 << 16,
        wakeup_bytes: 1 << 12,
    };
    let plan = probes::Plan::new(&opts).expect("this kernel is supported");
    assert!(plan.offsets_ok(), "kernel offsets from BTF");
    let mut ebpf = plan.load(&opts).expect("object loads (maps, globals)");
    eprintln!("kernel features: {:?}", plan.report());
    for (name, _) in PROBES {
        if !plan.wants(name) {
            eprintln!("{name}: left out on this kernel");
            continue;
        }
        let prog = ebpf
            .program_mut(name)
            .unwrap_or_else(|| panic!("program {name} in the object"));
        let result = if let Ok(p) = <&mut TracePoint>::try_from(&mut *prog) {
            p.load()
        } else if let Ok(p) = <&mut CgroupSockAddr>::try_from(&mut *prog) {
            p.load()
        } else if let Ok(p) = <&mut CgroupSkb>::try_from(&mut *prog) {
            p.load()
        } else if let Ok(p) = <&mut RawTracePoint>::try_from(&mut *prog) {
            p.load()
        } else {
            panic!("program {name} has an unexpected type");
        };
        if let Err(e) = result {
            panic!("program {name} refused: {e:#}");
        }
    }
    assert_eq!(
        ebpf.programs().count(),
        PROBES.len(),
        "every program in the object is attached by the daemon"
    );
}
