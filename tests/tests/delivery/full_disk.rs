//! A JSON alert file on a full file system (a 64 KiB tmpfs filled by the test): the write fails
//! with ENOSPC, the error is counted and logged, the daemon keeps running, and once space
//! returns the alert is written, once, and later alerts follow.

use std::{io::Write, path::PathBuf, process::Command};

use crate::{
    Scratch, alerts_raised, is_exec_of, json_lines, path_str, root_or_skip, sink_stats, wait_alert,
};

/// A tmpfs of 64 KiB mounted for the test, unmounted at the end.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(at: PathBuf) -> SmallFs {
        std::fs::create_dir_all(&at).expect("mkdir the mount point");
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                "size=64k,mode=0700",
                "rmm-test",
                path_str(&at),
            ])
            .status()
            .expect("running mount");
        assert!(st.success(), "mounting a tmpfs on {}", at.display());
        SmallFs(at)
    }

    /// Writes a file until the file system is full.
    fn fill(&self) -> PathBuf {
        let p = self.0.join("filler");
        let mut f = std::fs::File::create(&p).expect("creating the filler");
        let block = [0u8; 4096];
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", p.display()),
            }
        }
        let _ = f.flush();
        p
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .args(["-l", path_str(&self.0)])
            .status();
    }
}

#[test]
fn a_full_file_system_delays_json_alerts_and_loses_none() {
    root_or_skip!("a_full_file_system_delays_json_alerts_and_loses_none");
    let s = Scratch::new("enospc");
    let fs = SmallFs::mount(s.file("small"));
    let json = fs.0.join("alerts.json");
    let m = s.start(&["--json", path_str(&json)]);
    let filler = fs.fill();
    let (first, _) = s.anydesk("a");
    m.wait_for_log("saying the file system is full", |l| {
        l.contains(&format!("writing alerts to {}", json.display()))
            && l.contains("No space left on device")
    });
    assert!(
        !json_lines(&json).iter().any(|a| is_exec_of(a, &first)),
        "the alert cannot be in the full file yet"
    );
    std::fs::remove_file(&filler).expect("freeing the space");
    wait_alert(&json, "written once space returned", |a| {
        is_exec_of(a, &first)
    });
    let (second, _) = s.anydesk("b");
    wait_alert(&json, "after the outage", |a| is_exec_of(a, &second));
    let stopped = m.stop();
    stopped.assert_clean();
    let lines = json_lines(&json);
    for exe in [&first, &second] {
        assert_eq!(
            lines.iter().filter(|a| is_exec_of(a, exe)).count(),
            1,
            "one alert for {}: {lines:?}",
            exe.display()
        );
    }
    let name = format!("json:{}", json.display());
    let st = sink_stats(&stopped, &name);
    assert_eq!(
        (st["delivered"], st["dropped"]),
        (alerts_raised(&stopped), 0),
        "every alert delivered, none dropped: {st:?}"
    );
    assert!(st["errors"] >= 1, "the ENOSPC was counted: {st:?}");
}
