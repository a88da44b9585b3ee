//! "Does a Debian package own this file?" (the `not_packaged` context flag), from dpkg's file
//! lists. The lists are read once into an index of path hashes (about 120,000 paths, 1.2 MB
//! here) instead of scanning every `.list` file for each new executable (a flood of new paths
//! would otherwise be a flood of reads on the event path). dpkg's info directory changes when a
//! package is installed or removed: its modification time is looked at every
//! [`RECHECK_EVERY`], and a changed directory is re-read on a thread of its own while the old
//! index answers.

use std::{
    collections::HashSet,
    fs,
    hash::{DefaultHasher, Hash, Hasher},
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

/// How often the info directory's modification time is compared with the index's.
pub const RECHECK_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Index {
    /// Hashes of every path listed, in the form of [`canonical`].
    paths: HashSet<u64>,
    /// The info directory's modification time when it was read.
    mtime: Option<SystemTime>,
}

#[derive(Debug)]
pub struct PackageDb {
    info_dir: PathBuf,
    /// `None` before the first use, and where there is no dpkg database.
    index: Option<Arc<Index>>,
    tried: bool,
    last_check: Option<Instant>,
    /// A rebuilt index, left here by the rebuilding thread.
    rebuilt: Arc<Mutex<Option<Index>>>,
    rebuilding: Arc<AtomicBool>,
}

impl Default for PackageDb {
    fn default() -> Self {
        PackageDb::new(Path::new("/var/lib/dpkg/info"))
    }
}

/// With merged /usr, dpkg may list `/bin/x` for what the kernel resolves as `/usr/bin/x`: both
/// are indexed and looked up without the `/usr`.
fn canonical(path: &str) -> &str {
    if let Some(rest) = path.strip_prefix("/usr")
        && ["/bin/", "/sbin/", "/lib/", "/lib64/"]
            .iter()
            .any(|p| rest.starts_with(p))
    {
        return rest;
    }
    path
}

fn hash(path: &str) -> u64 {
    let mut h = DefaultHasher::new();
    canonical(path).hash(&mut h);
    h.finish()
}

fn mtime(dir: &Path) -> Option<SystemTime> {
    fs::metadata(dir).and_then(|m| m.modified()).ok()
}

/// Reads every `.list` file of `dir`; `None` when there is no such directory.
fn build(dir: &Path) -> Option<Index> {
    let mtime = mtime(dir);
    let entries = fs::read_dir(dir).ok()?;
    let mut paths = HashSet::new();
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "list") {
            continue;
        }
        let Ok(f) = fs::File::open(&p) else {
            log::debug!("cannot read {}", p.display());
            continue;
        };
        for line in BufReader::new(f).lines().map_while(Result::ok) {
            if line.starts_with('/') {
                paths.insert(hash(&line));
            }
        }
    }
    Some(Index { paths, mtime })
}

impl PackageDb {
    pub fn new(info_dir: &Path) -> PackageDb {
        PackageDb {
            info_dir: info_dir.to_owned(),
            index: None,
            tried: false,
            last_check: None,
            rebuilt: Arc::new(Mutex::new(None)),
            rebuilding: Arc::new(AtomicBool::new(false)),
        }
    }

    /// `None` when there is no dpkg database to ask (another distribution).
    pub fn owned(&mut self, path: &str) -> Option<bool> {
        if path.is_empty() || !path.starts_with('/') {
            return None;
        }
        self.refresh();
        let index = self.index.as_ref()?;
        Some(index.paths.contains(&hash(path)))
    }

    /// The first use reads the lists here (at start-up, for the inventory); later changes are
    /// read on a thread of their own.
    fn refresh(&mut self) {
        if !self.tried {
            self.tried = true;
            self.index = build(&self.info_dir).map(Arc::new);
            self.last_check = Some(Instant::now());
            return;
        }
        if let Ok(mut slot) = self.rebuilt.lock()
            && let Some(new) = slot.take()
        {
            log::debug!("dpkg file lists re-read: {} paths", new.paths.len());
            self.index = Some(Arc::new(new));
        }
        if self.last_check.is_some_and(|t| t.elapsed() < RECHECK_EVERY) {
            return;
        }
        self.last_check = Some(Instant::now());
        let now = mtime(&self.info_dir);
        if now == self.index.as_ref().and_then(|i| i.mtime) {
            return;
        }
        if self.rebuilding.swap(true, Ordering::AcqRel) {
            return;
        }
        let (dir, slot, busy) = (
            self.info_dir.clone(),
            self.rebuilt.clone(),
            self.rebuilding.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name("rmm-dpkg-index".into())
            .spawn(move || {
                // dpkg's lists are world-readable.
                crate::privs::thread_keeps("dpkg index", crate::privs::NONE);
                let new = build(&dir);
                if let (Some(new), Ok(mut s)) = (new, slot.lock()) {
                    *s = Some(new);
                }
                busy.store(false, Ordering::Release);
            });
        if let Err(e) = spawned {
            log::warn!("cannot start the dpkg index thread: {e}");
            self.rebuilding.store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_ownership_from_dpkg_lists_and_their_changes() {
        let dir = std::env::temp_dir().join(format!("rmm-dpkg-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(
            dir.join("coreutils.list"),
            "/.\n/bin\n/bin/true\n/usr/share/doc/x\n",
        )
        .expect("write");
        fs::write(dir.join("coreutils.md5sums"), "/tmp/x/anydesk\n").expect("write");
        let mut db = PackageDb::new(&dir);
        assert_eq!(db.owned("/bin/true"), Some(true));
        assert_eq!(db.owned("/usr/bin/true"), Some(true), "merged /usr");
        assert_eq!(
            db.owned("/tmp/x/anydesk"),
            Some(false),
            "only .list files count"
        );
        assert_eq!(db.owned("relative"), None);
        // A package installed later: seen after the next check, read off this thread.
        fs::write(dir.join("x11vnc.list"), "/usr/bin/x11vnc\n").expect("write");
        let later = SystemTime::now() + Duration::from_secs(5);
        fs::File::open(&dir)
            .and_then(|d| d.set_modified(later))
            .expect("touching the directory");
        db.last_check = None;
        assert_eq!(
            db.owned("/usr/bin/x11vnc"),
            Some(false),
            "the old index answers"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while db.owned("/usr/bin/x11vnc") != Some(true) {
            assert!(Instant::now() < deadline, "the new list was never read");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            PackageDb::new(Path::new("/nonexistent")).owned("/bin/true"),
            None
        );
        let _ = fs::remove_dir_all(&dir);
    }
}
