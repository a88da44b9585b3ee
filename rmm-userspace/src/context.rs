//! Context that raises an alert's severity: a suspicious ancestor, an executable in a temp or
//! download directory, an executable no package owns, a process inside a container.

pub use crate::packages::PackageDb;

use std::{
    collections::{HashMap, HashSet},
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::Serialize;

use crate::catalog::Rules;

pub const DEFAULT_SUSPICIOUS_PARENTS: &[&str] = &[
    "nginx",
    "apache2",
    "httpd",
    "lighttpd",
    "caddy",
    "php-fpm",
    "php-cgi",
    "php",
    "uwsgi",
    "gunicorn",
    "tomcat",
    "catalina.sh",
    "jboss",
    "weblogic",
    "cron",
    "crond",
    "atd",
    "anacron",
    "fcron",
];
pub const DEFAULT_TEMP_DIRS: &[&str] = &[
    "/tmp/**",
    "/var/tmp/**",
    "/dev/shm/**",
    "/home/*/Downloads/**",
    "/root/Downloads/**",
];
/// Caching resolvers as Debian installs them (systemd-resolved, nscd, dnsmasq, unbound, BIND),
/// by the executable the kernel reports (`/lib` is `/usr/lib` on merged-/usr systems).
pub const DEFAULT_SYSTEM_RESOLVERS: &[&str] = &[
    "/usr/lib/systemd/systemd-resolved",
    "/lib/systemd/systemd-resolved",
    "/usr/sbin/nscd",
    "/usr/sbin/dnsmasq",
    "/usr/sbin/unbound",
    "/usr/sbin/named",
];
pub const DEFAULT_DEDUP_WINDOW: Duration = Duration::from_secs(300);
pub const DEFAULT_DNS_TTL: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Flag {
    SuspiciousParent,
    TempDir,
    NotPackaged,
    Container,
}

/// Context settings compiled from the rules' `[context]` table.
#[derive(Debug)]
pub struct ContextSettings {
    suspicious_parents: HashSet<String>,
    temp_dirs: GlobSet,
    system_resolvers: GlobSet,
    pub dedup_window: Duration,
    pub dns_ttl: Duration,
}

impl ContextSettings {
    pub fn from_rules(rules: &Rules) -> Result<ContextSettings> {
        let c = &rules.context;
        let parents = match &c.suspicious_parents {
            Some(list) => list.iter().map(|s| s.to_ascii_lowercase()).collect(),
            None => DEFAULT_SUSPICIOUS_PARENTS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        };
        Ok(ContextSettings {
            suspicious_parents: parents,
            temp_dirs: path_globs("temp_dirs", c.temp_dirs.as_deref(), DEFAULT_TEMP_DIRS)?,
            system_resolvers: path_globs(
                "system_resolvers",
                c.system_resolvers.as_deref(),
                DEFAULT_SYSTEM_RESOLVERS,
            )?,
            dedup_window: c
                .dedup_window_secs
                .map_or(DEFAULT_DEDUP_WINDOW, Duration::from_secs),
            dns_ttl: c.dns_ttl_secs.map_or(DEFAULT_DNS_TTL, Duration::from_secs),
        })
    }

    /// A web server, scheduler, ... by executable name or comm. Versioned names count too
    /// (`php-fpm8.2`, `python3.11` would for `python3`).
    pub fn is_suspicious_parent(&self, name: &str) -> bool {
        let lower = name.to_ascii_lowercase();
        if self.suspicious_parents.contains(&lower) {
            return true;
        }
        let stem = lower.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
        stem.len() < lower.len() && self.suspicious_parents.contains(stem)
    }

    pub fn in_temp_dir(&self, executable: &str) -> bool {
        !executable.is_empty() && self.temp_dirs.is_match(executable)
    }

    /// A caching resolver that resolves for every process (by its executable).
    pub fn is_system_resolver(&self, executable: &str) -> bool {
        !executable.is_empty() && self.system_resolvers.is_match(executable)
    }
}

/// Path globs (`*` stays within a path component) from the rules, or the defaults.
fn path_globs(
    key: &str,
    given: Option<&[toml::Spanned<String>]>,
    default: &[&str],
) -> Result<GlobSet> {
    let globs: Vec<String> = match given {
        Some(list) => list.iter().map(|g| g.get_ref().clone()).collect(),
        None => default.iter().map(|s| (*s).to_owned()).collect(),
    };
    let mut b = GlobSetBuilder::new();
    for g in &globs {
        b.add(
            GlobBuilder::new(g)
                .literal_separator(true)
                .build()
                .with_context(|| format!("{key} glob {g:?}"))?,
        );
    }
    b.build().with_context(|| format!("compiling {key}"))
}

/// Finds the cgroup of a process and the container id in it.
#[derive(Debug, Default)]
pub struct Containers {
    /// cgroup v2 id (inode) to path, filled by walking the hierarchy on a miss.
    by_id: HashMap<u64, String>,
    last_walk: Option<Instant>,
    /// The cgroup v2 mount, found once (the probes are attached to it for the daemon's life).
    root: Option<PathBuf>,
    /// Times the cache was emptied because it held [`MAX_CGROUPS`] paths.
    pub cache_cleared: u64,
}

/// Most cgroup paths cached.
const MAX_CGROUPS: usize = 65_536;

impl Containers {
    /// Cgroup paths cached.
    pub fn cached(&self) -> usize {
        self.by_id.len()
    }

    /// The cgroup v2 path of `pid`, or of cgroup `cgroup_id` when the process is gone.
    pub fn cgroup_path(&mut self, pid: u32, cgroup_id: u64) -> Option<String> {
        if let Ok(text) = fs::read_to_string(format!("/proc/{pid}/cgroup"))
            && let Some(p) = unified_cgroup(&text)
        {
            return Some(p.to_owned());
        }
        if cgroup_id == 0 {
            return None;
        }
        if let Some(p) = self.by_id.get(&cgroup_id) {
            return Some(p.clone());
        }
        let root = self.root()?;
        if let Some(p) = path_by_id(&root, cgroup_id) {
            if self.by_id.len() >= MAX_CGROUPS {
                self.by_id.clear();
                self.cache_cleared += 1;
            }
            self.by_id.insert(cgroup_id, p.clone());
            return Some(p);
        }
        // Without open_by_handle_at (no CAP_DAC_READ_SEARCH): walk the hierarchy.
        // Walk at most every 50 ms: a flood of unknown ids must not become a flood of walks,
        // but the cgroup of a short-lived process in a new container must still be found.
        if self
            .last_walk
            .is_some_and(|t| t.elapsed() < Duration::from_millis(50))
        {
            return None;
        }
        self.last_walk = Some(Instant::now());
        self.by_id.clear();
        walk_cgroups(&root, &root, 0, &mut self.by_id);
        self.by_id.get(&cgroup_id).cloned()
    }
    /// Whether the cgroup at `path` (as [`Containers::cgroup_path`] gives it) and every cgroup
    /// above it is owned by root. A delegated subtree (a user's systemd manager, a rootless
    /// runtime) is owned by its user, who can name cgroups in it anything, container ids
    /// included. False when it cannot be looked at (gone already).
    pub fn owned_by_root(&mut self, path: &str) -> bool {
        let Some(mut dir) = self.root() else {
            return false;
        };
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if part == ".." {
                return false;
            }
            dir.push(part);
            match fs::metadata(&dir) {
                Ok(m) if m.uid() == 0 => {}
                _ => return false,
            }
        }
        true
    }
}

impl Containers {
    fn root(&mut self) -> Option<PathBuf> {
        if self.root.is_none() {
            match crate::probes::cgroup2_root() {
                Ok(r) => self.root = Some(r),
                Err(e) => log::debug!("no cgroup path lookups: {e:#}"),
            }
        }
        self.root.clone()
    }
}

/// `FILEID_KERNFS`: a cgroup v2 file handle is its 64-bit id.
const FILEID_KERNFS: i32 = 0xfe;

/// Opens the cgroup directory whose id the kernel reported (the way systemd and bpftool
/// resolve cgroup ids) and reads its path back: O(1), and it works after the process exited.
fn path_by_id(root: &Path, id: u64) -> Option<String> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    #[repr(C)]
    struct KernfsHandle {
        handle_bytes: u32,
        handle_type: i32,
        id: u64,
    }
    let mount = fs::File::open(root).ok()?;
    let mut h = KernfsHandle {
        handle_bytes: 8,
        handle_type: FILEID_KERNFS,
        id,
    };
    // SAFETY: a valid directory fd and a file_handle of the declared size.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount.as_raw_fd(),
            &mut h as *mut KernfsHandle,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: the syscall returned a new file descriptor that we own.
    let dir = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let target = fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd())).ok()?;
    let rel = target.strip_prefix(root).ok()?;
    Some(format!("/{}", rel.display()).replace("//", "/"))
}

fn walk_cgroups(root: &Path, dir: &Path, depth: u32, out: &mut HashMap<u64, String>) {
    if depth > 16 || out.len() >= MAX_CGROUPS {
        return;
    }
    if let Ok(meta) = fs::metadata(dir) {
        let rel = dir
            .strip_prefix(root)
            .map(|r| format!("/{}", r.display()))
            .unwrap_or_default();
        out.insert(meta.ino(), if rel == "/" { "/".into() } else { rel });
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            walk_cgroups(root, &e.path(), depth + 1, out);
        }
    }
}

/// The cgroup v2 path in the text of a `/proc/PID/cgroup` (its `0::PATH` line).
pub fn unified_cgroup(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("0::"))
}

/// The container id in a cgroup path, for docker, podman, containerd and CRI-O layouts:
/// `docker-<id>.scope`, `/docker/<id>`, `libpod-<id>`, `cri-containerd-<id>.scope`,
/// `crio-<id>.scope`, `/kubepods/.../<id>`. conmon's own cgroup is not a container.
pub fn container_id(cgroup_path: &str) -> Option<String> {
    for seg in cgroup_path.rsplit('/') {
        let s = seg.strip_suffix(".scope").unwrap_or(seg);
        if s.contains("conmon") {
            return None;
        }
        let id = [
            "docker-",
            "libpod-",
            "cri-containerd-",
            "crio-",
            "containerd-",
        ]
        .iter()
        .find_map(|p| s.strip_prefix(p))
        .unwrap_or(s);
        if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Some(id.to_owned());
        }
    }
    None
}

/// The runtime that named a container's cgroup, from the same path.
pub fn container_runtime(cgroup_path: &str) -> Option<&'static str> {
    let p = cgroup_path;
    if p.contains("cri-containerd-")
        || (p.contains("/kubepods") && !p.contains("crio-") && !p.contains("docker"))
    {
        Some("containerd")
    } else if p.contains("crio-") {
        Some("cri-o")
    } else if p.contains("libpod-") {
        Some("podman")
    } else if p.contains("docker") {
        Some("docker")
    } else {
        None
    }
}

/// The Kubernetes pod uid in a cgroup path: `kubepods-burstable-pod<uid_with_underscores>.slice`
/// (systemd driver) or `/kubepods/burstable/pod<uid>/` (cgroupfs driver).
pub fn pod_uid(cgroup_path: &str) -> Option<String> {
    if !cgroup_path.contains("kubepods") {
        return None;
    }
    for seg in cgroup_path.split('/') {
        let s = seg.strip_suffix(".slice").unwrap_or(seg);
        let Some(pos) = s.rfind("pod") else { continue };
        let uid = s[pos + 3..].replace('_', "-");
        let hex_and_dashes =
            uid.len() == 36 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
        if hex_and_dashes && uid.matches('-').count() == 4 {
            return Some(uid);
        }
    }
    None
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub uid: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

pub const DEFAULT_PODS_LOG_DIR: &str = "/var/log/pods";

/// Pod names and namespaces from what every node has without the API server: the kubelet's
/// log directories `/var/log/pods/<namespace>_<pod>_<uid>`. Cached; re-listed when a new uid
/// is not in the cache.
#[derive(Debug)]
pub struct Pods {
    dir: PathBuf,
    by_uid: HashMap<String, (String, String)>,
    misses: HashMap<String, Instant>,
}

impl Default for Pods {
    fn default() -> Self {
        Pods::new(Path::new(DEFAULT_PODS_LOG_DIR))
    }
}

impl Pods {
    pub fn new(dir: &Path) -> Pods {
        Pods {
            dir: dir.to_owned(),
            by_uid: HashMap::new(),
            misses: HashMap::new(),
        }
    }

    pub fn lookup(&mut self, uid: &str) -> Pod {
        // A new uid triggers one listing; a uid that was just looked up in vain is not
        // listed again for a second (a flood of alerts from one unknown pod costs nothing).
        if !self.by_uid.contains_key(uid)
            && self
                .misses
                .get(uid)
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            self.refresh();
            if !self.by_uid.contains_key(uid) {
                if self.misses.len() >= 4096 {
                    self.misses.clear();
                }
                self.misses.insert(uid.to_owned(), Instant::now());
            }
        }
        let found = self.by_uid.get(uid);
        Pod {
            uid: uid.to_owned(),
            namespace: found.map(|f| f.0.clone()),
            name: found.map(|f| f.1.clone()),
        }
    }

    fn refresh(&mut self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        self.by_uid.clear();
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            // <namespace>_<pod>_<uid>: namespaces and pod names cannot contain '_'.
            let mut parts = name.splitn(3, '_');
            if let (Some(ns), Some(pod), Some(uid)) = (parts.next(), parts.next(), parts.next()) {
                self.by_uid
                    .insert(uid.to_owned(), (ns.to_owned(), pod.to_owned()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ContextSettings {
        ContextSettings::from_rules(&Rules::default()).expect("defaults compile")
    }

    #[test]
    fn suspicious_parents_including_versioned_names() {
        let s = settings();
        assert!(s.is_suspicious_parent("nginx"));
        assert!(s.is_suspicious_parent("php-fpm8.2"));
        assert!(s.is_suspicious_parent("CRON"));
        assert!(!s.is_suspicious_parent("bash"));
        assert!(!s.is_suspicious_parent("nginx-exporter"));
        assert!(!s.is_suspicious_parent(""));
    }

    #[test]
    fn temp_dirs() {
        let s = settings();
        assert!(s.in_temp_dir("/tmp/x/anydesk"));
        assert!(s.in_temp_dir("/dev/shm/a"));
        assert!(s.in_temp_dir("/home/alice/Downloads/rustdesk"));
        assert!(s.in_temp_dir("/root/Downloads/sub/dir/tool"));
        assert!(!s.in_temp_dir("/usr/bin/anydesk"));
        assert!(!s.in_temp_dir("/home/alice/bin/tool"));
        assert!(!s.in_temp_dir("/tmpfoo/x"));
        assert!(!s.in_temp_dir(""));
    }

    #[test]
    fn configured_lists_replace_defaults() {
        let src = "[context]\nsuspicious_parents = [\"sshd\"]\ntemp_dirs = [\"/scratch/**\"]\ndedup_window_secs = 7\n";
        let mut rules = Rules::default();
        let f = crate::catalog::parse_rules("c", src).expect("valid");
        rules.context = f.context.expect("context");
        let s = ContextSettings::from_rules(&rules).expect("compiles");
        assert!(s.is_suspicious_parent("sshd") && !s.is_suspicious_parent("nginx"));
        assert!(s.in_temp_dir("/scratch/a") && !s.in_temp_dir("/tmp/a"));
        assert_eq!(s.dedup_window, Duration::from_secs(7));
    }

    #[test]
    fn cgroup_ids_resolve_to_paths_through_file_handles() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: open_by_handle_at needs CAP_DAC_READ_SEARCH");
            return;
        }
        let root = crate::probes::cgroup2_root().expect("cgroup2 mounted");
        let mine = fs::read_to_string("/proc/self/cgroup").expect("own cgroup");
        let rel = mine
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .expect("v2 line")
            .to_owned();
        let id = fs::metadata(root.join(rel.trim_start_matches('/')))
            .expect("stat")
            .ino();
        assert_eq!(path_by_id(&root, id).as_deref(), Some(rel.as_str()));
        assert_eq!(path_by_id(&root, u64::MAX), None);
    }

    #[test]
    fn container_ids_from_runtime_cgroup_paths() {
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        for path in [
            format!("/libpod_parent/libpod-{id}"),
            format!("/machine.slice/libpod-{id}.scope/container"),
            format!("/system.slice/docker-{id}.scope"),
            format!("/docker/{id}"),
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/cri-containerd-{id}.scope"
            ),
            format!("/kubepods.slice/kubepods-pod1234.slice/crio-{id}.scope"),
            format!("/kubepods/besteffort/pod1234/{id}"),
        ] {
            assert_eq!(container_id(&path).as_deref(), Some(id), "{path}");
        }
        assert_eq!(
            container_id(&format!("/machine.slice/libpod-conmon-{id}.scope")),
            None
        );
        assert_eq!(
            container_id("/user.slice/user-0.slice/session-1.scope"),
            None
        );
        assert_eq!(container_id("/"), None);
    }

    const UID: &str = "5f0c8e3a-1b2c-4d5e-8f90-123456789abc";

    #[test]
    fn pod_uids_and_runtimes_from_kubelet_cgroup_layouts() {
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let u = UID.replace('-', "_");
        let cases = [
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{id}.scope"
                ),
                "containerd",
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/crio-{id}.scope"
                ),
                "cri-o",
            ),
            (
                format!("/kubepods.slice/kubepods-pod{u}.slice/cri-containerd-{id}.scope"),
                "containerd",
            ),
            (format!("/kubepods/burstable/pod{UID}/{id}"), "containerd"),
            (format!("/kubepods/pod{UID}/{id}"), "containerd"),
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/docker-{id}.scope"
                ),
                "docker",
            ),
        ];
        for (path, runtime) in &cases {
            assert_eq!(pod_uid(path).as_deref(), Some(UID), "{path}");
            assert_eq!(container_id(path).as_deref(), Some(id), "{path}");
            assert_eq!(container_runtime(path), Some(*runtime), "{path}");
        }
        assert_eq!(pod_uid(&format!("/system.slice/docker-{id}.scope")), None);
        assert_eq!(
            container_runtime(&format!("/system.slice/docker-{id}.scope")),
            Some("docker")
        );
        assert_eq!(
            container_runtime(&format!("/libpod_parent/libpod-{id}")),
            Some("podman")
        );
        assert_eq!(pod_uid("/kubepods.slice/kubepods-podnotauid.slice"), None);
        // Inside a pod's own cgroup namespace /proc/PID/cgroup shows paths relative to it.
        let rel = format!("/../../kubepods-burstable-pod{u}.slice/cri-containerd-{id}.scope");
        assert_eq!(pod_uid(&rel).as_deref(), Some(UID));
        assert_eq!(container_id(&rel).as_deref(), Some(id));
    }

    #[test]
    fn pod_names_from_kubelet_log_dirs() {
        let dir = std::env::temp_dir().join(format!("rmm-pods-{}", std::process::id()));
        fs::create_dir_all(dir.join(format!("kube-system_rustdesk-7f9c_{UID}"))).expect("mkdir");
        fs::create_dir_all(dir.join("junk")).expect("mkdir");
        let mut pods = Pods::new(&dir);
        let p = pods.lookup(UID);
        assert_eq!(
            (p.namespace.as_deref(), p.name.as_deref()),
            (Some("kube-system"), Some("rustdesk-7f9c"))
        );
        assert_eq!(
            pods.lookup("00000000-0000-0000-0000-000000000000").name,
            None
        );
        let _ = fs::remove_dir_all(&dir);
    }
}
