//! Loading the eBPF object and attaching every program, with errors that name the probe.

use std::{
    fs,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    path::PathBuf,
};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, RawTracePoint, TracePoint,
    },
};
use rmm_common::{KernelOffsets, Settings, TracepointFields, feature};

use crate::{
    btf,
    features::{Feature, KernelFeatures, Report, name},
    tracefs,
};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/rmm-ebpf"));

/// Ring names in the object, the order the readers are started in.
pub const PROC_RING: &str = "PROC_EVENTS";
pub const NET_RING: &str = "NET_EVENTS";

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub proc_ring_bytes: u32,
    pub net_ring_bytes: u32,
    pub wakeup_bytes: u64,
}

impl LoadOptions {
    /// Network records are staged per CPU unless the reader is to be woken on every record
    /// (`wakeup_bytes` 0 asks for the least delay).
    pub fn staging(&self) -> bool {
        self.wakeup_bytes != 0
    }
}

/// Checks a ring size: a power of two and a multiple of the page size (the kernel's rule).
pub fn check_ring_size(bytes: u32) -> Result<u32> {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u32;
    if !bytes.is_power_of_two() || bytes < page {
        bail!(
            "ring buffer size {bytes} must be a power of two and at least the page size ({page})"
        );
    }
    Ok(bytes)
}

const TRACEFS: &str = "/sys/kernel/tracing";

/// aya attaches tracepoints through tracefs; a fresh boot may not have it mounted.
fn ensure_tracefs() -> Result<()> {
    let mounts = fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    let mounted = mounts
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some("tracefs"));
    if mounted {
        let events = PathBuf::from(TRACEFS).join("events");
        let debug_events = PathBuf::from("/sys/kernel/debug/tracing/events");
        if fs::read_dir(&events).is_ok() || fs::read_dir(&debug_events).is_ok() {
            return Ok(());
        }
        bail!(
            "tracefs is mounted but {} cannot be read: run rmm-monitor as root",
            events.display()
        );
    }
    log::info!("tracefs is not mounted; mounting it on {TRACEFS}");
    let src = c"nodev";
    let target = c"/sys/kernel/tracing";
    let fstype = c"tracefs";
    // SAFETY: valid NUL-terminated strings, no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        bail!(
            "tracefs is not mounted and mounting it on {TRACEFS} failed ({err}); mount it with \
             `mount -t tracefs nodev {TRACEFS}` or give the daemon CAP_SYS_ADMIN"
        );
    }
    Ok(())
}

/// Capabilities the daemon needs to start, by bit number (include/uapi/linux/capability.h).
const NEEDED_CAPS: &[(u32, &str, &str)] = &[
    (
        crate::privs::CAP_BPF,
        "CAP_BPF",
        "load BPF programs and maps",
    ),
    (
        crate::privs::CAP_PERFMON,
        "CAP_PERFMON",
        "attach tracepoints and read kernel memory from BPF",
    ),
    (
        crate::privs::CAP_NET_ADMIN,
        "CAP_NET_ADMIN",
        "attach the cgroup connect and packet hooks",
    ),
];

/// Fails early, naming what is missing, instead of an EPERM deep in the loader; warns about
/// what only narrows what the daemon sees.
fn check_capabilities() -> Result<()> {
    let eff = crate::privs::current()?.effective;
    let missing: Vec<String> = NEEDED_CAPS
        .iter()
        .filter(|(bit, _, _)| eff & (1u64 << bit) == 0)
        .map(|(_, name, why)| format!("{name} ({why})"))
        .collect();
    if !missing.is_empty() {
        bail!(
            "missing capabilities: {}; run rmm-monitor as root or grant them (see the systemd unit)",
            missing.join(", ")
        );
    }
    if eff & (1u64 << crate::privs::CAP_SYS_PTRACE) == 0 {
        log::warn!(
            "no CAP_SYS_PTRACE: the executables of other users' processes found in /proc (at the start, after lost records) stay unknown"
        );
    }
    Ok(())
}

/// The cgroup v2 mount point (on hybrid layouts, `/sys/fs/cgroup/unified`).
pub fn cgroup2_root() -> Result<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_src, dir, ty) = (f.next()?, f.next()?, f.next()?);
            (ty == "cgroup2").then(|| PathBuf::from(dir))
        })
        .min_by_key(|p| p.as_os_str().len())
        .context("no cgroup2 file system is mounted: the connect and DNS hooks attach to the cgroup v2 root (mount -t cgroup2 none /sys/fs/cgroup/unified)")
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK (the unit sets LimitMEMLOCK=infinity;
/// elsewhere root raises it here); later kernels charge the cgroup.
fn raise_memlock() {
    let mut cur = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscall with a valid struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut cur) } == 0
        && cur.rlim_cur == libc::RLIM_INFINITY
    {
        return;
    }
    let lim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) } != 0 {
        log::debug!(
            "raising RLIMIT_MEMLOCK failed ({}); harmless on memcg-accounted kernels (5.11 and later)",
            std::io::Error::last_os_error()
        );
    }
}

pub struct Loaded {
    /// Network records are staged per CPU (`flush_stage` must be run on each CPU).
    pub staging: bool,
    pub ebpf: Ebpf,
    /// What the probes are attached to (the programs the daemon only runs are not listed).
    pub attached: Vec<String>,
    pub offsets_ok: bool,
    /// The kernel and what of it the programs use.
    pub report: Report,
}

/// Everything decided about this kernel before the object is loaded.
pub struct Plan {
    pub kernel: KernelFeatures,
    offsets: Option<KernelOffsets>,
    offsets_error: Option<String>,
    fields: TracepointFields,
    exit_group_dead: bool,
    /// Staged network records, or why not.
    pub staging: Result<(), String>,
}

impl Plan {
    /// Checks privileges and tracefs, probes the kernel, and reads the struct offsets (BTF)
    /// and the tracepoint layouts (tracefs).
    pub fn new(opts: &LoadOptions) -> Result<Plan> {
        if OBJECT.is_empty() {
            bail!(
                "this rmm-monitor binary was built without its eBPF object; build it with \
                 `cargo xtask build` (which installs bpf-linker and the BPF toolchain first)"
            );
        }
        check_capabilities()?;
        raise_memlock();
        ensure_tracefs()?;
        let kernel = KernelFeatures::probe()?;
        let (offsets, offsets_error) = match btf::Btf::from_file(btf::VMLINUX_BTF)
            .and_then(|b| btf::kernel_offsets(&b))
        {
            Ok(o) => (Some(o), None),
            Err(e) => {
                log::warn!(
                    "kernel struct offsets unavailable ({e:#}): exec events will lack the resolved path, argv and ppid"
                );
                (None, Some(format!("{e:#}")))
            }
        };
        let (fields, exit_group_dead) =
            tracefs::tracepoint_fields().context("reading the tracepoint formats")?;
        let staging = if opts.staging() {
            Ok(())
        } else {
            Err("--wakeup-bytes 0 asks for a wakeup on every record".into())
        };
        Ok(Plan {
            kernel,
            offsets,
            offsets_error,
            fields,
            exit_group_dead,
            staging,
        })
    }

    pub fn offsets_ok(&self) -> bool {
        self.offsets.is_some()
    }

    /// Whether the daemon loads program `name` on this kernel: the flush program only with
    /// staging; the raw `task_newtask` (which reads the child's task) with struct offsets, the
    /// tracefs one without.
    pub fn wants(&self, name: &str) -> bool {
        match name {
            FLUSH_PROGRAM => self.staging.is_ok(),
            "task_newtask_raw" => self.offsets.is_some(),
            "task_newtask" => self.offsets.is_none(),
            _ => true,
        }
    }

    fn features(&self) -> u32 {
        let mut f = 0;
        if self.kernel.coarse_clock {
            f |= feature::COARSE_CLOCK;
        }
        if self.kernel.skb_task_helpers {
            f |= feature::SKB_TASK_HELPERS;
        }
        if self.exit_group_dead {
            f |= feature::EXIT_GROUP_DEAD;
        }
        if self.kernel.sock_addr_task {
            f |= feature::SOCK_ADDR_TASK;
        }
        f
    }

    /// The kernel and the features, on or off, with what each absence costs.
    pub fn report(&self) -> Report {
        let feature = |name, on: bool, detail: &str| Feature {
            name,
            on,
            detail: if on { String::new() } else { detail.into() },
        };
        let no_offsets = format!(
            "no struct offsets from BTF ({}): exec events lack path, argv and ppid",
            self.offsets_error.as_deref().unwrap_or("")
        );
        Report {
            kernel: self.kernel.release.clone(),
            features: vec![
                feature(name::OFFSETS, self.offsets.is_some(), &no_offsets),
                feature(
                    name::EXIT_GROUP_DEAD,
                    self.exit_group_dead,
                    if self.offsets.is_some() {
                        "sched_process_exit has no group_dead (Linux < 6.16): a process ends when signal->live reaches 0"
                    } else {
                        "sched_process_exit has no group_dead and there are no offsets: the group leader's exit ends a process"
                    },
                ),
                feature(
                    name::SKB_TASK_HELPERS,
                    self.kernel.skb_task_helpers,
                    if self.offsets.is_some() {
                        "cgroup_skb programs cannot call the task helpers here: a DNS query's sender is read from the current task"
                    } else {
                        "cgroup_skb programs cannot call the task helpers and there are no offsets: DNS queries carry no process (flag no_task)"
                    },
                ),
                feature(
                    name::SOCK_ADDR_TASK,
                    self.kernel.sock_addr_task,
                    "cgroup connect hooks cannot read the current task: a connect seen by the hook alone (io_uring) carries no process start",
                ),
                feature(
                    name::COARSE_CLOCK,
                    self.kernel.coarse_clock,
                    "no coarse clock in cgroup programs (Linux < 5.11): the precise clock is read instead",
                ),
                feature(
                    name::STAGING,
                    self.staging.is_ok(),
                    &format!(
                        "{}: one ring entry per network record",
                        self.staging.as_ref().err().map_or("", String::as_str)
                    ),
                ),
            ],
        }
    }

    /// Loads the object (maps created, globals set; programs not yet verified).
    pub fn load(&self, opts: &LoadOptions) -> Result<Ebpf> {
        let net_ring = check_ring_size(opts.net_ring_bytes)?;
        let settings = Settings {
            wakeup_bytes: opts.wakeup_bytes,
            // A stage is sent to the network ring as one entry: an eighth of the ring at
            // most, so that a small ring takes several (the kernel caps it at 8 KiB).
            stage_bytes: if self.staging.is_ok() {
                u64::from(net_ring / 8)
            } else {
                0
            },
            features: self.features(),
            fields: self.fields,
            _pad: 0,
        };
        let offsets = self.offsets.unwrap_or(KernelOffsets::zeroed());
        EbpfLoader::new()
            .map_max_entries(PROC_RING, check_ring_size(opts.proc_ring_bytes)?)
            .map_max_entries(NET_RING, net_ring)
            .override_global("OFFSETS", &offsets, true)
            .override_global("SETTINGS", &settings, true)
            .load(OBJECT)
            .map_err(|e| permission_hint(anyhow::Error::new(e).context("loading the eBPF object")))
    }
}

/// Where a program attaches.
#[derive(Debug, Clone, Copy)]
pub enum Hook {
    TracePoint {
        category: &'static str,
        name: &'static str,
    },
    /// A raw tracepoint (its arguments are the kernel's, not the tracefs format's).
    RawTracePoint(&'static str),
    /// `cgroup/connect4` or `cgroup/connect6` on the cgroup v2 root.
    SockAddr(&'static str),
    /// `cgroup_skb/egress` or `/ingress` on the cgroup v2 root.
    Skb(CgroupSkbAttachType),
    /// Not attached: loaded so that the daemon can run it on each CPU (a raw tracepoint
    /// program run with `BPF_PROG_TEST_RUN`).
    Run,
}

/// Every program of the object and its hook, in attach order (process probes first, so the
/// process table is fed before network events arrive).
pub const PROBES: &[(&str, Hook)] = &[
    (
        "sched_process_exec",
        Hook::TracePoint {
            category: "sched",
            name: "sched_process_exec",
        },
    ),
    ("task_newtask_raw", Hook::RawTracePoint("task_newtask")),
    (
        "task_newtask",
        Hook::TracePoint {
            category: "task",
            name: "task_newtask",
        },
    ),
    (
        "sched_process_exit",
        Hook::TracePoint {
            category: "sched",
            name: "sched_process_exit",
        },
    ),
    (
        "sys_enter_connect",
        Hook::TracePoint {
            category: "syscalls",
            name: "sys_enter_connect",
        },
    ),
    (
        "sys_exit_connect",
        Hook::TracePoint {
            category: "syscalls",
            name: "sys_exit_connect",
        },
    ),
    (
        "signal_generate",
        Hook::TracePoint {
            category: "signal",
            name: "signal_generate",
        },
    ),
    ("cgroup_connect4", Hook::SockAddr("connect4")),
    ("cgroup_connect6", Hook::SockAddr("connect6")),
    ("dns_egress", Hook::Skb(CgroupSkbAttachType::Egress)),
    ("dns_ingress", Hook::Skb(CgroupSkbAttachType::Ingress)),
    ("flush_stage", Hook::Run),
];

/// The program the network ring's reader runs on a CPU to flush its stage.
pub const FLUSH_PROGRAM: &str = "flush_stage";
/// Bytes waiting in each CPU's stage.
pub const STAGED_MAP: &str = "STAGED";

impl Hook {
    fn describe(self, cgroup_root: &std::path::Path) -> String {
        match self {
            Hook::TracePoint { category, name } => format!("tracepoint {category}/{name}"),
            Hook::RawTracePoint(name) => format!("raw tracepoint {name}"),
            Hook::SockAddr(kind) => format!("cgroup/{kind} on {}", cgroup_root.display()),
            Hook::Skb(CgroupSkbAttachType::Egress) => {
                format!("cgroup_skb/egress on {}", cgroup_root.display())
            }
            Hook::Skb(CgroupSkbAttachType::Ingress) => {
                format!("cgroup_skb/ingress on {}", cgroup_root.display())
            }
            Hook::Run => "run on each CPU by the daemon".into(),
        }
    }
}

pub fn load_and_attach(opts: &LoadOptions) -> Result<Loaded> {
    let mut plan = Plan::new(opts)?;
    let mut ebpf = plan.load(opts)?;
    // Staged network records need the daemon to run the flush program on each CPU: if this
    // kernel cannot (BPF_F_TEST_RUN_ON_CPU is Linux >= 5.10), load again without staging.
    if plan.staging.is_ok()
        && let Err(e) = check_flush(&mut ebpf)
    {
        log::warn!(
            "network records are not staged per CPU ({e:#}): one ring entry per record instead"
        );
        plan.staging = Err(format!("running the flush program on a CPU failed ({e:#})"));
        ebpf = plan.load(opts)?;
    }
    let cgroup_root = cgroup2_root()?;
    let cgroup = fs::File::open(&cgroup_root)
        .with_context(|| format!("opening cgroup v2 root {}", cgroup_root.display()))?;
    let mut attached = Vec::new();
    for &(prog, hook) in PROBES {
        if !plan.wants(prog) {
            continue;
        }
        let what = hook.describe(&cgroup_root);
        let program = ebpf
            .program_mut(prog)
            .with_context(|| format!("program {prog} missing from the eBPF object"))?;
        let verify = |e: aya::programs::ProgramError| {
            permission_hint(anyhow::Error::new(e).context(format!("loading {what} (verifier)")))
        };
        let wrong_type = || format!("program {prog} does not match its hook ({what})");
        // cgroup programs are attached as BPF links (kernel >= 5.7): a link never replaces
        // other programs on the cgroup, and the kernel refuses attach flags on links, hence
        // `Single`.
        match hook {
            Hook::TracePoint { category, name } => {
                let p: &mut TracePoint = program.try_into().with_context(wrong_type)?;
                p.load().map_err(verify)?;
                p.attach(category, name).with_context(|| {
                    format!("attaching {what}: does this kernel have it? (ls {TRACEFS}/events/{category}/{name})")
                })?;
            }
            Hook::RawTracePoint(name) => {
                let p: &mut RawTracePoint = program.try_into().with_context(wrong_type)?;
                p.load().map_err(verify)?;
                p.attach(name)
                    .with_context(|| format!("attaching {what}"))?;
            }
            Hook::SockAddr(_) => {
                let p: &mut CgroupSockAddr = program.try_into().with_context(wrong_type)?;
                p.load().map_err(verify)?;
                p.attach(&cgroup, CgroupAttachMode::Single)
                    .with_context(|| format!("attaching {what}"))?;
            }
            Hook::Skb(attach_type) => {
                let p: &mut CgroupSkb = program.try_into().with_context(wrong_type)?;
                p.load().map_err(verify)?;
                p.attach(&cgroup, attach_type, CgroupAttachMode::Single)
                    .with_context(|| format!("attaching {what}"))?;
            }
            Hook::Run => {
                let p: &mut RawTracePoint = program.try_into().with_context(wrong_type)?;
                // `check_flush` may have loaded it already.
                if p.fd().is_err() {
                    p.load().map_err(verify)?;
                }
                continue;
            }
        }
        attached.push(what);
    }

    Ok(Loaded {
        staging: plan.staging.is_ok(),
        ebpf,
        attached,
        offsets_ok: plan.offsets_ok(),
        report: plan.report(),
    })
}

/// Loads the flush program and runs it once on this CPU.
fn check_flush(ebpf: &mut Ebpf) -> Result<()> {
    let p: &mut RawTracePoint = ebpf
        .program_mut(FLUSH_PROGRAM)
        .with_context(|| format!("program {FLUSH_PROGRAM} missing"))?
        .try_into()
        .with_context(|| format!("program {FLUSH_PROGRAM} is not a raw tracepoint program"))?;
    p.load()
        .map_err(|e| anyhow::Error::new(e).context(format!("loading {FLUSH_PROGRAM}")))?;
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() }.max(0) as u32;
    run_on_cpu(p.fd()?.as_fd(), cpu).map(|_| ())
}

/// Runs a raw tracepoint program once on `cpu` (`BPF_PROG_TEST_RUN` with
/// `BPF_F_TEST_RUN_ON_CPU`); the call returns once it has run there, with the program's
/// return value.
pub fn run_on_cpu(prog: BorrowedFd<'_>, cpu: u32) -> Result<u32> {
    /// The `test` member of `union bpf_attr` (include/uapi/linux/bpf.h).
    #[repr(C)]
    #[derive(Default)]
    struct TestRunAttr {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
        ctx_size_in: u32,
        ctx_size_out: u32,
        ctx_in: u64,
        ctx_out: u64,
        flags: u32,
        cpu: u32,
        batch_size: u32,
        _pad: u32,
    }
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    const BPF_F_TEST_RUN_ON_CPU: u32 = 1;
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        flags: BPF_F_TEST_RUN_ON_CPU,
        cpu,
        ..Default::default()
    };
    // SAFETY: a BPF_PROG_TEST_RUN call with a valid attribute block of the size given; the
    // kernel reads it and writes `retval` and `duration` into it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &raw mut attr,
            std::mem::size_of::<TestRunAttr>(),
        )
    };
    if rc != 0 {
        bail!(
            "BPF_PROG_TEST_RUN on CPU {cpu}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(attr.retval)
}

/// Adds what to do when the failure is a missing privilege.
fn permission_hint(err: anyhow::Error) -> anyhow::Error {
    let text = format!("{err:#}");
    if text.contains("Operation not permitted") || text.contains("EPERM") {
        err.context("permission denied: run rmm-monitor as root (or with CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN)")
    } else {
        err
    }
}
