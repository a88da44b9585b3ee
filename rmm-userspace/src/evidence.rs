//! Who killed or stopped the daemon, for the signals it cannot catch (SIGKILL) or does not
//! handle (SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU). The kernel program on `signal/signal_generate`
//! records the sender of such a signal sent to one of the daemon's threads (registered here in
//! `DAEMON_TASKS`) in the `SIGNALS` map, which the daemon pins in bpffs: a killed instance
//! leaves it behind, and the next start reports it. A stop is reported once the daemon runs
//! again (at the next stats interval after SIGCONT).
//!
//! The pin lives at `PIN_DIR/signals` (default [`DEFAULT_PIN_DIR`]); where bpffs cannot be
//! written (no bpffs, a read-only sandbox) stops are still reported, and a kill is not.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, anyhow};
use aya::maps::{Array, HashMap, Map, MapData};
use rmm_common::{SignalRecord, signal_slot};

use crate::{alert::Alert, tamper::Sender};

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/rmm-monitor";
const PIN_FILE: &str = "signals";
const SIGNALS_MAP: &str = "SIGNALS";
const TASKS_MAP: &str = "DAEMON_TASKS";
/// `BPF_FS_MAGIC` from `include/uapi/linux/magic.h`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// `SI_KERNEL`: sent by the kernel itself (the OOM killer).
const SI_KERNEL: i32 = 0x80;

/// The records a previous instance left in `dir`, read and unpinned (`None`: nothing left).
pub fn take_previous(dir: &Path) -> Result<Option<Vec<SignalRecord>>> {
    let path = dir.join(PIN_FILE);
    if std::fs::symlink_metadata(&path).is_err() {
        return Ok(None);
    }
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening pinned map {}", path.display()))?;
    let map = Map::from_map_data(data).with_context(|| format!("map {}", path.display()))?;
    let signals: Array<MapData, SignalRecord> = Array::try_from(map)
        .with_context(|| format!("{} is not the signal record map", path.display()))?;
    let records = (0..signal_slot::COUNT)
        .map(|i| signals.get(&i, 0))
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("reading {}", path.display()))?;
    std::fs::remove_file(&path).with_context(|| format!("unpinning {}", path.display()))?;
    Ok(Some(records))
}

/// The daemon's side of the signal records.
pub struct Evidence {
    signals: Array<MapData, SignalRecord>,
    tasks: HashMap<MapData, u32, u32>,
    registered: HashSet<u32>,
    /// Stops already reported.
    stops: u64,
    /// Where the map is pinned, if it is.
    pub pinned: Option<PathBuf>,
}

impl Evidence {
    /// Takes the maps out of the loaded object and pins the record map in `pin_dir` (when
    /// given; a failure there is logged: kills are then not kept across a restart).
    pub fn new(ebpf: &mut aya::Ebpf, pin_dir: Option<&Path>) -> Result<Evidence> {
        let signals = ebpf
            .take_map(SIGNALS_MAP)
            .with_context(|| format!("map {SIGNALS_MAP} missing"))?;
        let pinned = match pin_dir {
            Some(dir) => match pin(&signals, dir) {
                Ok(p) => Some(p),
                Err(e) => {
                    log::warn!(
                        "a SIGKILL of the daemon will not be reported at the next start: {e:#}"
                    );
                    None
                }
            },
            None => None,
        };
        let signals = Array::try_from(signals)
            .with_context(|| format!("map {SIGNALS_MAP} has the wrong type"))?;
        let tasks = HashMap::try_from(
            ebpf.take_map(TASKS_MAP)
                .with_context(|| format!("map {TASKS_MAP} missing"))?,
        )
        .with_context(|| format!("map {TASKS_MAP} has the wrong type"))?;
        Ok(Evidence {
            signals,
            tasks,
            registered: HashSet::new(),
            stops: 0,
            pinned,
        })
    }

    /// Registers the daemon's threads (the ones started since the last call too) with its
    /// parent as their supervisor, and forgets those that ended.
    pub fn register_threads(&mut self) -> Result<()> {
        // SAFETY: getppid has no preconditions.
        let supervisor = unsafe { libc::getppid() } as u32;
        let now: HashSet<u32> = std::fs::read_dir("/proc/self/task")
            .context("listing /proc/self/task")?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        for tid in now.difference(&self.registered) {
            self.tasks
                .insert(tid, supervisor, 0)
                .with_context(|| format!("registering thread {tid}"))?;
        }
        for tid in self.registered.difference(&now) {
            // Gone already is fine.
            let _ = self.tasks.remove(tid);
        }
        self.registered = now;
        Ok(())
    }

    /// A stop recorded since the last call (the daemon runs again: it was continued).
    pub fn new_stop(&mut self) -> Result<Option<SignalRecord>> {
        let r = self
            .signals
            .get(&signal_slot::STOP, 0)
            .context("reading the signal records")?;
        if r.count <= self.stops {
            return Ok(None);
        }
        self.stops = r.count;
        Ok(Some(r))
    }
}

/// Pins `map` at `dir/signals`, making `dir` (and mounting bpffs on /sys/fs/bpf) if needed.
fn pin(map: &Map, dir: &Path) -> Result<PathBuf> {
    let bpffs = Path::new("/sys/fs/bpf");
    if dir.starts_with(bpffs) && !is_bpffs(bpffs) {
        mount_bpffs(bpffs)?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(PIN_FILE);
    // A pin left by an instance whose records were read already, or by a failed start.
    let _ = std::fs::remove_file(&path);
    map.pin(&path)
        .with_context(|| format!("pinning the signal records at {}", path.display()))?;
    Ok(path)
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: a valid C string and a zeroed statfs to fill.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

fn mount_bpffs(path: &Path) -> Result<()> {
    log::info!(
        "mounting bpffs on {} (for the signal records)",
        path.display()
    );
    let target =
        std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).context("bpffs mount point")?;
    // SAFETY: valid C strings; no data.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(anyhow!(
            "mounting bpffs on {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => "SIGKILL",
        libc::SIGSTOP => "SIGSTOP",
        libc::SIGTSTP => "SIGTSTP",
        libc::SIGTTIN => "SIGTTIN",
        libc::SIGTTOU => "SIGTTOU",
        _ => "signal",
    }
}

/// The sender of a record, completed from /proc while the same process is still there.
pub fn sender(r: &SignalRecord) -> Sender {
    let comm_len = r.comm.iter().position(|b| *b == 0).unwrap_or(r.comm.len());
    let mut s = Sender {
        signal: signal_name(r.sig),
        pid: r.sender_pid,
        uid: r.sender_uid,
        from_kernel: r.code == SI_KERNEL,
        executable: String::new(),
        name: String::from_utf8_lossy(&r.comm[..comm_len]).into_owned(),
        ppid: 0,
    };
    let dir = format!("/proc/{}", r.sender_pid);
    if let Some((_, ppid, ticks)) = std::fs::read_to_string(format!("{dir}/stat"))
        .ok()
        .and_then(|t| crate::proctable::parse_stat(&t))
        && (r.sender_start_ns == 0 || crate::proctable::ticks(r.sender_start_ns) == ticks)
    {
        s.ppid = ppid;
        s.executable = std::fs::read_link(format!("{dir}/exe"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
    }
    s
}

/// Whether the record's sender supervised the daemon: PID 1, the daemon's parent when it
/// registered its threads, or the kernel (the OOM killer).
pub fn by_supervisor(r: &SignalRecord) -> bool {
    r.code == SI_KERNEL || r.sender_pid <= 1 || r.sender_pid == r.supervisor
}

/// Logs a record and, unless its sender supervised the daemon, makes the `tamper` alert:
/// `previous` for a kill of the previous instance.
pub fn report(r: &SignalRecord, previous: bool, hostname: &str) -> Option<Alert> {
    let s = sender(r);
    let what = if previous {
        format!(
            "the previous rmm-monitor instance was killed ({} from pid {} {:?}, uid {}, {})",
            s.signal,
            s.pid,
            s.name,
            s.uid,
            if s.executable.is_empty() {
                "exited since".to_string()
            } else {
                s.executable.clone()
            }
        )
    } else {
        format!("rmm-monitor was stopped: {}", s.describe())
    };
    let extra = if r.count > 1 {
        format!(" ({} such signals in all)", r.count)
    } else {
        String::new()
    };
    if by_supervisor(r) {
        log::info!("{what}{extra}: by its supervisor or the kernel");
        return None;
    }
    log::warn!("{what}{extra}: not the daemon's supervisor, alerting");
    let wall = crate::alert::wall_of(libc::CLOCK_BOOTTIME, r.boot_ns);
    let mut a = crate::tamper::alert(&s, wall, hostname);
    if previous {
        a.rule.name = format!(
            "previous rmm-monitor instance killed by pid {} ({})",
            s.pid, s.signal
        );
    }
    Some(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(sig: i32, pid: u32, code: i32, supervisor: u32) -> SignalRecord {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"kill");
        SignalRecord {
            count: 1,
            boot_ns: 1,
            sig,
            code,
            sender_pid: pid,
            sender_uid: 1000,
            supervisor,
            comm,
            ..Default::default()
        }
    }

    #[test]
    fn supervisors_and_the_kernel_are_logged_others_alerted() {
        assert!(report(&record(9, 1, 0, 77), true, "h").is_none());
        assert!(report(&record(9, 77, 0, 77), true, "h").is_none());
        assert!(report(&record(9, 4242, SI_KERNEL, 77), true, "h").is_none());
        // A pid that no process has now: named by its comm.
        let a = report(&record(9, u32::MAX - 1, 0, 77), true, "h").expect("an alert");
        assert_eq!(a.process.pid, u32::MAX - 1);
        assert_eq!(a.process.name, "kill");
        assert!(
            a.rule
                .name
                .starts_with("previous rmm-monitor instance killed")
        );
        let a = report(&record(19, u32::MAX - 1, 0, 77), false, "h").expect("an alert");
        assert_eq!(a.rmm.matched, "SIGSTOP");
    }
}
