//! The signals the daemon cannot catch or does not handle, sent by a second process (procps'
//! `kill`): a SIGSTOP is an alert naming the sender once the daemon runs again, and a SIGKILL
//! is an alert of the next start, from the record the kernel program left in bpffs.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde_json::Value;

use rmm_tests::{
    TempDir,
    monitor::{Monitor, event_timeout, scaled},
    nonce,
};

use crate::root_or_skip;

/// A bpffs directory of the test's own, removed at the end.
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0.join("signals"));
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn tamper_alerts(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|a: &Value| a["event"]["action"] == "tamper")
        .collect()
}

fn wait_tamper(path: &Path, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let end = Instant::now() + scaled(Duration::from_secs(15));
    loop {
        if let Some(a) = tamper_alerts(path).into_iter().find(&pred) {
            return a;
        }
        assert!(
            Instant::now() < end,
            "no tamper alert {what} in {}: {:?}",
            path.display(),
            tamper_alerts(path)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `kill -SIG PID` from a process of its own; returns its pid.
fn kill(sig: &str, pid: u32) -> u32 {
    let mut k = std::process::Command::new("/bin/kill")
        .args([sig, &pid.to_string()])
        .spawn()
        .expect("running /bin/kill");
    let id = k.id();
    assert!(k.wait().expect("kill ran").success(), "kill {sig} {pid}");
    id
}

#[test]
fn a_stop_and_a_kill_by_another_process_are_alerts_naming_it() {
    root_or_skip!("a_stop_and_a_kill_by_another_process_are_alerts_naming_it");
    let dir = TempDir::new("signals");
    let pins = PinDir(PathBuf::from(format!("/sys/fs/bpf/rmm-e2e-{}", nonce())));
    let pin_arg = pins.0.to_str().expect("UTF-8").to_owned();
    let alerts = dir.path().join("alerts.json");
    let m = Monitor::start(&[
        "--json",
        alerts.to_str().expect("UTF-8"),
        "--pin-dir",
        &pin_arg,
        "--stats-interval",
        "1",
    ]);
    let daemon = m.pid();
    assert!(
        pins.0.join("signals").exists(),
        "the signal records are pinned in {pin_arg}"
    );

    // SIGSTOP, then SIGCONT: the alert names the sender of the stop.
    let stopper = kill("-STOP", daemon);
    std::thread::sleep(Duration::from_millis(300));
    kill("-CONT", daemon);
    let a = wait_tamper(&alerts, "for the stop", |a| {
        a["rmm"]["matched"] == "SIGSTOP"
    });
    assert_eq!(a["process"]["pid"], stopper, "{a}");
    assert_eq!(a["process"]["name"], "kill", "{a}");
    assert_eq!(a["rule"]["id"], "rmm.monitor.tamper", "{a}");
    assert_eq!(a["threat"]["technique"]["id"], "T1562.001", "{a}");

    // SIGKILL: nothing can be sent before the daemon dies; the next start reports it.
    let killer = kill("-KILL", daemon);
    let killed = m.wait_exit(event_timeout());
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&killed.status),
        Some(9),
        "killed by SIGKILL"
    );
    assert!(
        pins.0.join("signals").exists(),
        "the record outlives the killed daemon"
    );
    let alerts2 = dir.path().join("alerts2.json");
    let m = Monitor::start(&[
        "--json",
        alerts2.to_str().expect("UTF-8"),
        "--pin-dir",
        &pin_arg,
    ]);
    let a = wait_tamper(&alerts2, "for the kill", |a| {
        a["rmm"]["matched"] == "SIGKILL"
    });
    assert_eq!(a["process"]["pid"], killer, "{a}");
    assert_eq!(a["process"]["name"], "kill", "{a}");
    assert_eq!(
        a["rule"]["name"],
        format!("previous rmm-monitor instance killed by pid {killer} (SIGKILL)"),
        "{a}"
    );
    m.wait_for_log("naming the killer", |l| {
        l.starts_with("the previous rmm-monitor instance was killed (SIGKILL from pid")
    });
    // Reported once: a clean stop and a third start report nothing.
    let stopped = m.stop();
    stopped.assert_clean();
    let alerts3 = dir.path().join("alerts3.json");
    let m = Monitor::start(&[
        "--json",
        alerts3.to_str().expect("UTF-8"),
        "--pin-dir",
        &pin_arg,
    ]);
    let stopped = m.stop();
    stopped.assert_clean();
    assert!(
        tamper_alerts(&alerts3).is_empty(),
        "no kill to report after a clean stop: {:?}",
        tamper_alerts(&alerts3)
    );
}
