//! What this kernel offers the programs, probed at start-up. The same eBPF object runs on
//! every supported kernel: what differs is decided here and handed to the programs as
//! `Settings::features` (read-only data, so the verifier skips what is turned off), or by
//! leaving a program out. Each feature that is off says why, in the `ready` line and in the
//! metrics (`rmm_kernel_feature`).

use std::ffi::CStr;

use anyhow::{Result, bail};
use aya::{
    programs::ProgramType,
    sys::{BpfHelper, is_helper_supported, is_map_supported},
};
use serde::Serialize;

/// The oldest kernel supported: Debian 11's. Everything newer than it is probed.
pub const FLOOR: (u32, u32) = (5, 10);

/// One capability of the kernel side, and what its absence costs.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Feature {
    pub name: &'static str,
    pub on: bool,
    /// When off: why, and what the daemon does instead.
    pub detail: String,
}

/// What was found on this kernel.
#[derive(Debug, Clone)]
pub struct KernelFeatures {
    pub release: String,
    /// `bpf_ktime_get_coarse_ns` in cgroup sock_addr programs (Linux 5.11).
    pub coarse_clock: bool,
    /// The task helpers in cgroup_skb programs (pid, uid, comm and cgroup of the sender).
    pub skb_task_helpers: bool,
    /// `bpf_get_current_task` in cgroup sock_addr programs.
    pub sock_addr_task: bool,
}

/// `major.minor` of a kernel release string such as `5.10.0-32-amd64` or `6.18.44-fc-v1272`.
pub fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(['.', '-', '+']);
    let major = it.next()?.parse().ok()?;
    let minor = it
        .next()?
        .trim_end_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .ok()?;
    Some((major, minor))
}

fn uname_release() -> Result<String> {
    // SAFETY: utsname is plain data; uname fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        bail!("uname: {}", std::io::Error::last_os_error());
    }
    // SAFETY: uname NUL-terminates the release.
    Ok(unsafe { CStr::from_ptr(u.release.as_ptr()) }
        .to_string_lossy()
        .into_owned())
}

/// Refuses a kernel below the floor in one line, before anything is loaded.
pub fn check_floor(release: &str) -> Result<()> {
    match parse_release(release) {
        Some(v) if v < FLOOR => bail!(
            "Linux {release} is older than {}.{}, the oldest kernel rmm-monitor supports \
             (it needs the BPF ring buffer, bounded loops, BTF and the kernel reads of 5.10)",
            FLOOR.0,
            FLOOR.1
        ),
        Some(_) => Ok(()),
        None => {
            log::warn!("cannot read the kernel version from {release:?}; probing features anyway");
            Ok(())
        }
    }
}

fn helper(prog: ProgramType, helper: BpfHelper) -> bool {
    match is_helper_supported(prog, helper) {
        Ok(v) => v,
        Err(e) => {
            let e = anyhow::Error::new(e);
            log::debug!("probing {helper:?} for {prog:?}: {e:#}; taken as missing");
            false
        }
    }
}

impl KernelFeatures {
    /// Probes this kernel; fails in one line when it is below the floor or lacks what every
    /// probe needs (the BPF ring buffer).
    pub fn probe() -> Result<KernelFeatures> {
        let release = uname_release()?;
        check_floor(&release)?;
        match is_map_supported(aya::maps::MapType::RingBuf) {
            Ok(true) => {}
            Ok(false) => bail!(
                "this kernel ({release}) has no BPF ring buffer (Linux 5.8 or a backport is needed)"
            ),
            // The cause (EPERM from a seccomp profile, a missing capability) is in the source
            // chain: keep it, the one line must say why.
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("probing the BPF ring buffer on {release}")));
            }
        }
        let skb_task_helpers = [
            BpfHelper::BPF_FUNC_get_current_pid_tgid,
            BpfHelper::BPF_FUNC_get_current_uid_gid,
            BpfHelper::BPF_FUNC_get_current_comm,
            BpfHelper::BPF_FUNC_get_current_cgroup_id,
        ]
        .into_iter()
        .all(|h| helper(ProgramType::CgroupSkb, h));
        Ok(KernelFeatures {
            coarse_clock: helper(
                ProgramType::CgroupSockAddr,
                BpfHelper::BPF_FUNC_ktime_get_coarse_ns,
            ),
            skb_task_helpers,
            sock_addr_task: helper(
                ProgramType::CgroupSockAddr,
                BpfHelper::BPF_FUNC_get_current_task,
            ),
            release,
        })
    }
}

/// What the probes run with, as the `ready` line and the metrics report it.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub kernel: String,
    pub features: Vec<Feature>,
}

impl Report {
    /// Features that are off, as `name (why)`, for the `ready` line.
    pub fn off(&self) -> Vec<String> {
        self.features
            .iter()
            .filter(|f| !f.on)
            .map(|f| format!("{} ({})", f.name, f.detail))
            .collect()
    }
}

/// Names of the features, as reported.
pub mod name {
    pub const OFFSETS: &str = "kernel_offsets";
    pub const EXIT_GROUP_DEAD: &str = "exit_group_dead";
    pub const SKB_TASK_HELPERS: &str = "skb_task_helpers";
    pub const COARSE_CLOCK: &str = "coarse_clock";
    pub const SOCK_ADDR_TASK: &str = "sock_addr_task";
    pub const STAGING: &str = "staging";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_parse() {
        assert_eq!(parse_release("5.10.0-32-amd64"), Some((5, 10)));
        assert_eq!(parse_release("6.12.117+deb13-amd64"), Some((6, 12)));
        assert_eq!(parse_release("6.18.44-fc-v1272"), Some((6, 18)));
        assert_eq!(parse_release("5.14.0-427.el9.x86_64"), Some((5, 14)));
        assert_eq!(parse_release("6.8.0rc3"), Some((6, 8)));
        assert_eq!(parse_release("garbage"), None);
        assert_eq!(parse_release(""), None);
    }

    #[test]
    fn the_floor_is_5_10() {
        assert!(check_floor("5.10.0-32-amd64").is_ok());
        assert!(check_floor("6.1.0-50-amd64").is_ok());
        let err = check_floor("5.4.0-216-generic").expect_err("5.4 is below the floor");
        let text = format!("{err:#}");
        assert!(
            text.contains("5.4.0-216-generic") && text.contains("5.10"),
            "{text}"
        );
        assert!(!text.contains('\n'), "one line: {text}");
        assert!(check_floor("4.19.0-27-amd64").is_err());
        assert!(check_floor("unparsable").is_ok());
    }

    #[test]
    fn this_kernel_probes() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: probing BPF features needs root");
            return;
        }
        let f = KernelFeatures::probe().expect("this kernel is supported");
        let (major, minor) = parse_release(&f.release).expect("release");
        if (major, minor) >= (5, 11) {
            assert!(f.coarse_clock, "coarse clock on {}", f.release);
        }
    }
}
