//! Container and pod context end to end: cgroups named the way each runtime and kubelet cgroup
//! driver names them are created in the real cgroup v2 hierarchy, an RMM-named binary is run
//! inside each, and the alert must carry the container id, the runtime and (for Kubernetes)
//! the pod's uid, namespace and name (from a `/var/log/pods/<ns>_<pod>_<uid>` directory, as the
//! kubelet makes them).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use rmm_tests::{Monitor, TempDir, nonce, root_or_skip};

/// Removes what a layout created, deepest first, even when the test fails.
struct Cleanup {
    cgroups: Vec<PathBuf>,
    pod_log_dir: Option<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for dir in self.cgroups.iter().rev() {
            let _ = fs::remove_dir(dir);
        }
        if let Some(d) = &self.pod_log_dir {
            let _ = fs::remove_dir(d);
        }
    }
}

fn cgroup2_root() -> PathBuf {
    let mounts = fs::read_to_string("/proc/self/mounts").expect("reading /proc/self/mounts");
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .min_by_key(|p| p.as_os_str().len())
        .expect("a cgroup2 mount")
}

/// Creates every level of `rel` under the cgroup2 root; returns the created directories.
fn make_cgroups(root: &Path, rel: &str) -> Vec<PathBuf> {
    let mut created = Vec::new();
    let mut cur = root.to_path_buf();
    for seg in rel.split('/').filter(|s| !s.is_empty()) {
        cur.push(seg);
        if !cur.exists() {
            fs::create_dir(&cur).unwrap_or_else(|e| panic!("mkdir {}: {e}", cur.display()));
            created.push(cur.clone());
        }
    }
    created
}

struct Layout {
    runtime: &'static str,
    path: String,
    pod: Option<(&'static str, String)>,
}

fn hex64(tag: u8) -> String {
    let n = nonce();
    let mut s = format!("{tag:02x}{n}");
    while s.len() < 64 {
        s.push_str(&n);
    }
    s.truncate(64);
    s.chars()
        .map(|c| {
            if c.is_ascii_hexdigit() {
                c.to_ascii_lowercase()
            } else {
                'a'
            }
        })
        .collect()
}

fn uid() -> String {
    let h = hex64(0xee);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn layouts() -> Vec<Layout> {
    let mut out = Vec::new();
    let id = hex64(1);
    out.push(Layout {
        runtime: "docker",
        path: format!("/system.slice/docker-{id}.scope"),
        pod: None,
    });
    let id = hex64(2);
    out.push(Layout {
        runtime: "docker",
        path: format!("/docker/{id}"),
        pod: None,
    });
    let id = hex64(3);
    out.push(Layout {
        runtime: "podman",
        path: format!("/machine.slice/libpod-{id}.scope/container"),
        pod: None,
    });
    let (id, u) = (hex64(4), uid());
    out.push(Layout {
        runtime: "containerd",
        path: format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{id}.scope",
            u.replace('-', "_")
        ),
        pod: Some(("prod", u)),
    });
    let (id, u) = (hex64(5), uid());
    out.push(Layout {
        runtime: "containerd",
        path: format!("/kubepods/burstable/pod{u}/{id}"),
        pod: Some(("kube-system", u)),
    });
    let (id, u) = (hex64(6), uid());
    out.push(Layout {
        runtime: "cri-o",
        path: format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/crio-{id}.scope",
            u.replace('-', "_")
        ),
        pod: Some(("tenant-a", u)),
    });
    out
}

fn container_id_of(path: &str) -> String {
    let seg = path
        .rsplit('/')
        .find(|s| s.len() >= 64 && s.bytes().filter(u8::is_ascii_hexdigit).count() >= 64)
        .expect("an id segment");
    let s = seg.strip_suffix(".scope").unwrap_or(seg);
    s.rsplit('-').next().expect("id").to_owned()
}

#[test]
fn alerts_carry_container_and_pod_context_for_every_runtime_layout() {
    root_or_skip!("alerts_carry_container_and_pod_context_for_every_runtime_layout");
    let root = cgroup2_root();
    let dir = TempDir::new("cgroups");
    let rules = TempDir::new("cgroups-rules");
    let exe = dir.copy_executable("/bin/true", "anydesk");
    // Leave no /var/log/pods behind on a machine that had none.
    struct RemoveIfCreated(bool);
    impl Drop for RemoveIfCreated {
        fn drop(&mut self) {
            if self.0 {
                let _ = fs::remove_dir("/var/log/pods");
            }
        }
    }
    let _pods_dir = RemoveIfCreated(!Path::new("/var/log/pods").exists());
    let m = Monitor::start(&[
        "--json",
        "-",
        "--rules-dir",
        rules.path().to_str().expect("utf-8"),
    ]);
    for layout in layouts() {
        let mut cleanup = Cleanup {
            cgroups: make_cgroups(&root, &layout.path),
            pod_log_dir: None,
        };
        let pod_name = format!("rustdesk-{}", &nonce()[..6]);
        if let Some((ns, u)) = &layout.pod {
            let d = PathBuf::from(format!("/var/log/pods/{ns}_{pod_name}_{u}"));
            fs::create_dir_all(&d).expect("creating the kubelet pod log directory");
            cleanup.pod_log_dir = Some(d);
        }
        let marker = nonce();
        run_in_cgroup(&root, &layout.path, &exe, &marker);
        let alert = m.wait_for(&format!("the alert from {}", layout.path), |e| {
            e["event"]["kind"] == "alert"
                && e["process"]["args"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x == marker.as_str()))
        });
        let want_id = container_id_of(&layout.path);
        assert_eq!(
            alert["container"]["id"],
            want_id.as_str(),
            "{}: {alert}",
            layout.path
        );
        assert_eq!(
            alert["container"]["runtime"], layout.runtime,
            "{}: {alert}",
            layout.path
        );
        assert!(
            alert["rmm"]["context"]
                .as_array()
                .is_some_and(|c| c.iter().any(|f| f == "container")),
            "{}: {alert}",
            layout.path
        );
        match &layout.pod {
            Some((ns, u)) => {
                let o = &alert["orchestrator"];
                assert_eq!(o["type"], "kubernetes", "{alert}");
                assert_eq!(o["namespace"], *ns, "{alert}");
                assert_eq!(o["resource"]["type"], "pod", "{alert}");
                assert_eq!(o["resource"]["name"], pod_name.as_str(), "{alert}");
                assert_eq!(o["resource"]["id"], u.as_str(), "{alert}");
            }
            None => assert!(
                alert.get("orchestrator").is_none(),
                "{}: {alert}",
                layout.path
            ),
        }
        drop(cleanup);
    }
    let stopped = m.stop();
    assert_eq!(stopped.status.code(), Some(0));
}

/// Runs `exe MARKER` in the cgroup `rel` (relative to the cgroup2 root `root`): the shell
/// moves itself into the cgroup, then becomes the binary.
fn run_in_cgroup(root: &Path, rel: &str, exe: &Path, marker: &str) {
    let procs = root.join(rel.trim_start_matches('/')).join("cgroup.procs");
    let status = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {} && exec {} {marker}",
            procs.display(),
            exe.display()
        ))
        .status()
        .expect("running the shell");
    assert!(status.success(), "moving into {rel} and exec: {status}");
}

/// An allowlist entry by container id trusts only a cgroup that a runtime made (owned by root
/// up to the root of the hierarchy): in a subtree delegated to a user, who may name cgroups
/// anything, the same kind of name is still reported as a container but allows nothing.
#[test]
fn a_container_allowlist_trusts_only_cgroups_a_runtime_made() {
    root_or_skip!("a_container_allowlist_trusts_only_cgroups_a_runtime_made");
    let root = cgroup2_root();
    let dir = TempDir::new("cgroups-allow");
    let rules = TempDir::new("cgroups-allow-rules");
    let exe = dir.copy_executable("/bin/true", "anydesk");
    let (trusted_id, forged_id) = (hex64(7), hex64(8));
    let trusted = format!("/system.slice/docker-{trusted_id}.scope");
    // A user's delegated subtree, as systemd makes it for user@UID.service: chowned to them.
    let deleg = format!("/rmm-test-{}.slice/user@1000.service", &nonce()[..8]);
    let forged = format!("{deleg}/docker-{forged_id}.scope");
    std::fs::write(
        rules.path().join("allow.toml"),
        format!(
            "[[allow]]\ntool = \"anydesk\"\ncontainer = \"{}\"\nreason = \"trusted\"\n\n\
             [[allow]]\ntool = \"anydesk\"\ncontainer = \"{}\"\nreason = \"forged\"\n",
            &trusted_id[..12],
            &forged_id[..12]
        ),
    )
    .expect("writing the allowlist");
    let _trusted_cg = Cleanup {
        cgroups: make_cgroups(&root, &trusted),
        pod_log_dir: None,
    };
    let deleg_cgs = make_cgroups(&root, &deleg);
    for d in &deleg_cgs {
        std::os::unix::fs::chown(d, Some(1000), Some(1000))
            .unwrap_or_else(|e| panic!("chown {}: {e}", d.display()));
    }
    let mut forged_cgs = deleg_cgs;
    forged_cgs.extend(make_cgroups(&root, &forged));
    std::os::unix::fs::chown(forged_cgs.last().expect("made"), Some(1000), Some(1000))
        .expect("chown the forged cgroup");
    let _forged_cg = Cleanup {
        cgroups: forged_cgs,
        pod_log_dir: None,
    };
    let m = Monitor::start(&[
        "--json",
        "-",
        "--rules-dir",
        rules.path().to_str().expect("utf-8"),
    ]);
    let (allowed, alerted) = (nonce(), nonce());
    run_in_cgroup(&root, &trusted, &exe, &allowed);
    run_in_cgroup(&root, &forged, &exe, &alerted);
    let has_marker = |e: &rmm_tests::Value, marker: &str| {
        e["args"]
            .as_array()
            .or(e["process"]["args"].as_array())
            .is_some_and(|a| a.iter().any(|x| x == marker))
    };
    let alert = m.wait_for("the alert from the delegated subtree", |e| {
        e["event"]["kind"] == "alert" && has_marker(e, &alerted)
    });
    assert_eq!(alert["container"]["id"], forged_id.as_str(), "{alert}");
    m.wait_for("the exec in the runtime's cgroup", |e| {
        e["event"] == "exec" && has_marker(e, &allowed)
    });
    let stopped = m.stop();
    assert_eq!(stopped.status.code(), Some(0));
    let wrongly = stopped
        .events
        .iter()
        .filter(|e| e["event"]["kind"] == "alert" && has_marker(e, &allowed))
        .count();
    assert_eq!(wrongly, 0, "the trusted container's tool is allowed");
}
