//! The real services the delivery tests talk to, each behind a guard that stops what the test
//! started: an rsyslogd with a configuration of the test's own, journald (reused when one
//! already answers), and a small PKI made with openssl.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use rmm_tests::{TempDir, Value, run_bounded};

use crate::{json_lines, path_str, poll};

const RSYSLOGD: &str = "/usr/sbin/rsyslogd";
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// Stops a child: SIGTERM, up to 5 s, then SIGKILL; always reaped.
fn stop_child(child: &mut Child) {
    if child.try_wait().ok().flatten().is_some() {
        return;
    }
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
    // SAFETY: kill(2) on our own child, not reaped yet.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// One input of the test's rsyslogd: a loopback port and the label of the file its messages
/// go to (`LABEL.log`, one JSON object per message, see [`Rsyslog`]).
#[derive(Debug, Clone)]
pub struct Input {
    pub label: &'static str,
    pub port: u16,
    pub udp: bool,
}

impl Input {
    pub fn udp(label: &'static str, port: u16) -> Input {
        Input {
            label,
            port,
            udp: true,
        }
    }

    pub fn tcp(label: &'static str, port: u16) -> Input {
        Input {
            label,
            port,
            udp: false,
        }
    }
}

/// Server side of TLS: every TCP input of an rsyslogd started with it speaks TLS (gtls driver,
/// mode 1, anonymous client authentication).
pub struct ServerTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// An rsyslogd of the test's own: `rsyslogd -n -f CONF -i PIDFILE`, with its own work
/// directory, listening on loopback only, writing each message it receives on input LABEL to
/// `LABEL.log` as one JSON object holding the parsed RFC 5424 / 3164 parts: `pri`,
/// `protocol_version`, `app_name`, `programname`, `syslogtag`, `procid`, `msgid`,
/// `structured_data`, `hostname`, `timereported`, `facility`, `severity`, `inputname`, `msg` and
/// `rawmsg`. Its own messages go to `internal.log`. Killed on drop.
pub struct Rsyslog {
    dir: TempDir,
    conf: PathBuf,
    pidfile: PathBuf,
    inputs: Vec<Input>,
    child: Option<Child>,
}

impl Rsyslog {
    pub fn start(inputs: &[Input], tls: Option<&ServerTls>) -> Rsyslog {
        assert!(
            Path::new(RSYSLOGD).is_file(),
            "{RSYSLOGD} is missing: install the Debian packages rsyslog and rsyslog-gnutls \
             (`cargo xtask setup` does)"
        );
        let dir = TempDir::new("dlv-rsyslog");
        let work = dir.path().join("work");
        std::fs::create_dir(&work).expect("mkdir rsyslog work directory");
        let d = path_str(dir.path()).to_owned();
        let mut conf = String::new();
        let mut global = format!(
            "global(workDirectory=\"{}\" maxMessageSize=\"64k\"",
            path_str(&work)
        );
        if let Some(t) = tls {
            write!(
                global,
                "\n  defaultNetstreamDriver=\"gtls\"\n  defaultNetstreamDriverCAFile=\"{}\"\n  \
                 defaultNetstreamDriverCertFile=\"{}\"\n  defaultNetstreamDriverKeyFile=\"{}\"",
                path_str(&t.ca),
                path_str(&t.cert),
                path_str(&t.key)
            )
            .expect("formatting");
        }
        global.push_str(")\n");
        conf.push_str(&global);
        if inputs.iter().any(|i| i.udp) {
            conf.push_str("module(load=\"imudp\")\n");
        }
        if inputs.iter().any(|i| !i.udp) {
            if tls.is_some() {
                conf.push_str(
                    "module(load=\"imtcp\" streamDriver.name=\"gtls\" streamDriver.mode=\"1\" \
                     streamDriver.authMode=\"anon\")\n",
                );
            } else {
                conf.push_str("module(load=\"imtcp\")\n");
            }
        }
        conf.push_str("template(name=\"rmmTestFields\" type=\"list\" option.jsonf=\"on\") {\n");
        for (out, prop) in [
            ("pri", "pri"),
            ("protocol_version", "protocol-version"),
            ("app_name", "app-name"),
            ("programname", "programname"),
            ("syslogtag", "syslogtag"),
            ("procid", "procid"),
            ("msgid", "msgid"),
            ("structured_data", "structured-data"),
            ("hostname", "hostname"),
            ("facility", "syslogfacility"),
            ("severity", "syslogseverity"),
            ("inputname", "inputname"),
            ("msg", "msg"),
            ("rawmsg", "rawmsg"),
        ] {
            writeln!(
                conf,
                "  property(outname=\"{out}\" name=\"{prop}\" format=\"jsonf\")"
            )
            .expect("formatting");
        }
        conf.push_str(
            "  property(outname=\"timereported\" name=\"timereported\" dateFormat=\"rfc3339\" \
             format=\"jsonf\")\n}\n",
        );
        for i in inputs {
            writeln!(
                conf,
                "ruleset(name=\"in_{l}\") {{ action(type=\"omfile\" file=\"{d}/{l}.log\" \
                 template=\"rmmTestFields\") }}\n\
                 input(type=\"{t}\" address=\"127.0.0.1\" port=\"{p}\" ruleset=\"in_{l}\")",
                l = i.label,
                t = if i.udp { "imudp" } else { "imtcp" },
                p = i.port,
            )
            .expect("formatting");
        }
        writeln!(conf, "action(type=\"omfile\" file=\"{d}/internal.log\")").expect("formatting");
        let conf_path = dir.path().join("rsyslog.conf");
        std::fs::write(&conf_path, conf).expect("writing rsyslog.conf");
        let pidfile = dir.path().join("rsyslogd.pid");
        let mut r = Rsyslog {
            dir,
            conf: conf_path,
            pidfile,
            inputs: inputs.to_vec(),
            child: None,
        };
        r.launch();
        r
    }

    fn launch(&mut self) {
        let _ = std::fs::remove_file(&self.pidfile);
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("rsyslogd.out"))
            .expect("opening rsyslogd.out");
        let err = out.try_clone().expect("dup");
        let child = Command::new(RSYSLOGD)
            .arg("-n")
            .arg("-f")
            .arg(&self.conf)
            .arg("-i")
            .arg(&self.pidfile)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {RSYSLOGD}: {e}"));
        self.child = Some(child);
        let started = Instant::now();
        loop {
            let missing: Vec<&Input> = self
                .inputs
                .iter()
                .filter(|i| !listening(i.port, i.udp))
                .collect();
            if missing.is_empty() {
                return;
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || started.elapsed() > START_TIMEOUT {
                panic!(
                    "rsyslogd {} ({:?} after start) before listening on {missing:?}; its \
                     output:\n{}\nconfiguration:\n{}",
                    exited.map_or("did not get ready".to_owned(), |s| format!("exited ({s})")),
                    started.elapsed(),
                    self.output(),
                    std::fs::read_to_string(&self.conf).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What rsyslogd said: its stdout/stderr and its internal messages.
    pub fn output(&self) -> String {
        let read = |n: &str| std::fs::read_to_string(self.dir.path().join(n)).unwrap_or_default();
        format!(
            "[rsyslogd.out]\n{}[internal.log]\n{}",
            read("rsyslogd.out"),
            read("internal.log")
        )
    }

    /// SIGKILL, like a crash: nothing is flushed or closed politely. Reaped.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again with the same configuration (same ports, same output files).
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// Every message received so far on input `label`.
    pub fn records(&self, label: &str) -> Vec<Value> {
        json_lines(&self.dir.path().join(format!("{label}.log")))
    }

    /// Messages on `label` sent by the daemon of pid `daemon` (the syslog PROCID).
    pub fn sent_by(&self, label: &str, daemon: u32) -> Vec<Value> {
        self.records(label)
            .into_iter()
            .filter(|r| r["procid"].as_str() == Some(daemon.to_string().as_str()))
            .collect()
    }

    /// Waits until `n` messages of `label` match `pred`; returns them.
    pub fn wait(
        &self,
        label: &str,
        what: &str,
        n: usize,
        pred: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        poll(
            &format!("{n} syslog message(s) {what} on rsyslog input {label}"),
            crate::DELIVERY_TIMEOUT,
            || {
                let hits: Vec<Value> = self
                    .records(label)
                    .into_iter()
                    .filter(|r| pred(r))
                    .collect();
                (hits.len() >= n).then_some(hits)
            },
            || {
                let all: Vec<String> = self
                    .records(label)
                    .iter()
                    .map(|r| {
                        r["rawmsg"]
                            .as_str()
                            .unwrap_or_default()
                            .chars()
                            .take(300)
                            .collect()
                    })
                    .collect();
                format!(
                    "{} messages on {label}:\n{}\n{}",
                    all.len(),
                    all.join("\n"),
                    self.output()
                )
            },
        )
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c);
        }
    }
}

/// Is something bound to 127.0.0.1:`port` (UDP), or listening there (TCP)?
fn listening(port: u16, udp: bool) -> bool {
    let table = if udp {
        "/proc/net/udp"
    } else {
        "/proc/net/tcp"
    };
    let text = std::fs::read_to_string(table).unwrap_or_default();
    let local = format!("0100007F:{port:04X}");
    text.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(1) == Some(&local.as_str()) && (udp || f.get(3) == Some(&"0A"))
    })
}

pub use rmm_tests::journald::Journald;

/// The journal entries matching every `FIELD=VALUE` of `matches` (`journalctl -o json`).
pub fn journal(matches: &[String]) -> Vec<Value> {
    let mut args = vec!["-o", "json", "--all", "--no-pager", "-q"];
    args.extend(matches.iter().map(String::as_str));
    let run = run_bounded(Path::new("journalctl"), &args);
    assert!(
        run.status.success(),
        "journalctl {args:?} failed ({}): {}",
        run.status,
        run.stderr
    );
    run.stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("journalctl printed bad JSON ({e}): {l}"))
        })
        .collect()
}

/// A CA, a server certificate it signs for `IP:127.0.0.1`, and an unrelated second CA.
pub struct Pki {
    pub dir: TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = TempDir::new("dlv-pki");
        let p = |n: &str| dir.path().join(n);
        let openssl = |args: &[&str]| {
            let run = run_bounded(Path::new("openssl"), args);
            assert!(
                run.status.success(),
                "openssl {args:?} failed ({}): {}",
                run.status,
                run.stderr
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        for (name, cn) in [("ca", "rmm-monitor test CA"), ("wrong-ca", "unrelated CA")] {
            let key = p(&format!("{name}.key"));
            let pem = p(&format!("{name}.pem"));
            let subj = format!("/CN={cn}");
            let mut args = vec!["req", "-x509"];
            args.extend_from_slice(&ec);
            args.extend_from_slice(&[
                "-keyout",
                path_str(&key),
                "-out",
                path_str(&pem),
                "-days",
                "2",
                "-subj",
                &subj,
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]);
            openssl(&args);
        }
        let (key, csr, pem, ext) = (
            p("server.key"),
            p("server.csr"),
            p("server.pem"),
            p("server.ext"),
        );
        std::fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n\
             basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n",
        )
        .expect("writing server.ext");
        let mut args = vec!["req"];
        args.extend_from_slice(&ec);
        args.extend_from_slice(&[
            "-keyout",
            path_str(&key),
            "-out",
            path_str(&csr),
            "-subj",
            "/CN=127.0.0.1",
        ]);
        openssl(&args);
        let (ca, ca_key, serial) = (p("ca.pem"), p("ca.key"), p("ca.srl"));
        openssl(&[
            "x509",
            "-req",
            "-in",
            path_str(&csr),
            "-CA",
            path_str(&ca),
            "-CAkey",
            path_str(&ca_key),
            "-CAserial",
            path_str(&serial),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            path_str(&ext),
            "-out",
            path_str(&pem),
        ]);
        Pki { dir }
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn server(&self) -> ServerTls {
        ServerTls {
            ca: self.file("ca.pem"),
            cert: self.file("server.pem"),
            key: self.file("server.key"),
        }
    }
}
