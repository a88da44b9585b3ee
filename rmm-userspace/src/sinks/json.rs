//! Alerts as JSON lines, to stdout or appended to a file (reopened on SIGHUP for logrotate).
//!
//! Lines are collected in a buffer and written whole: stdout is shared with the raw event
//! stream (`--events json`), and a line must never be split by another writer. A write that
//! fails part-way keeps only the bytes that did not reach the file, so the retry after a
//! reconnect completes the line instead of writing it twice.
//!
//! The file is the daemon's (root's) output in a directory others may write to: it is opened
//! without following a symbolic link at its last component, created with mode 0600, and
//! refused unless it is a regular file (a FIFO, a device or a socket planted at the path).

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{FileTypeExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

use super::Deliver;
use crate::alert::Alert;

/// Buffered bytes that trigger a write even before the queue runs empty.
const FLUSH_AT: usize = 64 << 10;

pub struct JsonSink {
    /// `None` is stdout.
    path: Option<PathBuf>,
    file: Option<File>,
    buf: Vec<u8>,
}

impl JsonSink {
    /// `-` is stdout; anything else a file opened for appending (created if missing).
    pub fn new(target: &str) -> JsonSink {
        JsonSink {
            path: (target != "-").then(|| PathBuf::from(target)),
            file: None,
            buf: Vec::new(),
        }
    }

    /// Opens now, so that an unwritable file is an error at start-up.
    pub fn open(target: &str) -> Result<JsonSink> {
        let mut s = JsonSink::new(target);
        s.connect()?;
        Ok(s)
    }

    pub fn write(&mut self, alert: &Alert) -> Result<()> {
        self.send(alert)
    }
}

/// Writes complete lines to stdout under its lock, in one go.
pub fn write_stdout_lines(bytes: &[u8]) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()
}

/// Opens (creating with mode 0600) the alert file for appending. `O_NOFOLLOW` refuses a
/// symbolic link at the path; `O_NONBLOCK` makes a FIFO without a reader an error instead of a
/// hang (it changes nothing for a regular file); anything but a regular file is refused.
fn open_alert_file(p: &Path) -> Result<File> {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(p);
    let f = match f {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => bail!(
            "alert file {} is a symbolic link: refusing to follow it (name the target itself)",
            p.display()
        ),
        Err(e) => {
            return Err(e).with_context(|| format!("opening alert file {}", p.display()));
        }
    };
    let ft = f
        .metadata()
        .with_context(|| format!("inspecting alert file {}", p.display()))?
        .file_type();
    if !ft.is_file() {
        let kind = if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_char_device() || ft.is_block_device() {
            "a device"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        bail!(
            "alert file {} is {kind}: only a regular file is written (use `-` for stdout)",
            p.display()
        );
    }
    Ok(f)
}

/// Writes `buf` to `w`; whatever reached `w` is removed from `buf` even when a later write
/// fails, so a retry sends only the rest.
fn write_draining(w: &mut impl Write, buf: &mut Vec<u8>) -> io::Result<()> {
    let mut done = 0;
    let result = loop {
        if done == buf.len() {
            break Ok(());
        }
        match w.write(&buf[done..]) {
            Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    buf.drain(..done);
    result
}

impl Deliver for JsonSink {
    fn describe(&self) -> String {
        match &self.path {
            None => "json:stdout".into(),
            Some(p) => format!("json:{}", p.display()),
        }
    }

    fn connect(&mut self) -> Result<()> {
        let _ = self.flush();
        if let Some(p) = &self.path {
            self.file = None;
            self.file = Some(open_alert_file(p)?);
        }
        Ok(())
    }

    fn send(&mut self, alert: &Alert) -> Result<()> {
        serde_json::to_writer(&mut self.buf, alert).context("encoding an alert")?;
        self.buf.push(b'\n');
        if self.buf.len() >= FLUSH_AT {
            self.flush()?;
        }
        Ok(())
    }

    fn pending(&self) -> u64 {
        // Every alert ends its line: a partly written one still has its newline here.
        self.buf.iter().filter(|b| **b == b'\n').count() as u64
    }

    fn flush(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        // On failure what was not written stays buffered for the retry after a reconnect.
        match (&self.path, &mut self.file) {
            (None, _) => write_draining(&mut io::stdout().lock(), &mut self.buf)
                .and_then(|()| io::stdout().lock().flush())
                .context("writing alerts to stdout"),
            (Some(p), Some(f)) => write_draining(f, &mut self.buf)
                .with_context(|| format!("writing alerts to {}", p.display())),
            (Some(p), None) => Err(anyhow::anyhow!("alert file {} is not open", p.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{ffi::CString, fs, os::unix::fs::PermissionsExt};

    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("rmm-json-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_new_alert_file_is_private() {
        let d = scratch("mode");
        let p = d.join("alerts.json");
        JsonSink::open(p.to_str().unwrap()).unwrap();
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "mode {mode:o}");
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_symlink_at_the_alert_path_is_refused_and_its_target_untouched() {
        let d = scratch("link");
        let target = d.join("shadow");
        fs::write(&target, "root:x:0:0\n").unwrap();
        let p = d.join("alerts.json");
        std::os::unix::fs::symlink(&target, &p).unwrap();
        let e = format!("{:#}", JsonSink::open(p.to_str().unwrap()).err().unwrap());
        assert!(e.contains("symbolic link"), "{e}");
        assert_eq!(fs::read_to_string(&target).unwrap(), "root:x:0:0\n");
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_fifo_or_a_device_at_the_alert_path_is_refused_without_blocking() {
        let d = scratch("fifo");
        let p = d.join("alerts.json");
        let c = CString::new(p.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // No reader: the open fails at once (ENXIO) instead of waiting for one.
        let e = format!("{:#}", JsonSink::open(p.to_str().unwrap()).err().unwrap());
        assert!(e.contains("opening alert file"), "{e}");
        // With a reader the open succeeds, and the type check refuses it.
        let _reader = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&p)
            .unwrap();
        let e = format!("{:#}", JsonSink::open(p.to_str().unwrap()).err().unwrap());
        assert!(e.contains("is a FIFO"), "{e}");
        let e = format!("{:#}", JsonSink::open("/dev/null").err().unwrap());
        assert!(e.contains("is a device"), "{e}");
        fs::remove_dir_all(d).unwrap();
    }

    /// Takes `room` bytes, then fails every write (a disk that fills up).
    struct FillsUp {
        got: Vec<u8>,
        room: usize,
    }

    impl Write for FillsUp {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            let n = b.len().min(self.room).min(7);
            self.got.extend_from_slice(&b[..n]);
            self.room -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_write_that_fails_part_way_is_resumed_not_repeated() {
        let lines = b"{\"a\":1}\n{\"b\":2}\n{\"c\":3}\n".to_vec();
        let mut buf = lines.clone();
        let mut w = FillsUp {
            got: Vec::new(),
            room: 12,
        };
        assert!(write_draining(&mut w, &mut buf).is_err());
        assert_eq!(w.got.len() + buf.len(), lines.len());
        // Room again (space freed, file reopened): the retry writes only the rest.
        w.room = usize::MAX;
        write_draining(&mut w, &mut buf).unwrap();
        assert!(buf.is_empty());
        assert_eq!(w.got, lines);
    }

    #[test]
    fn alerts_reach_a_reopened_file_once_each() {
        let d = scratch("reopen");
        let p = d.join("alerts.json");
        let mut s = JsonSink::open(p.to_str().unwrap()).unwrap();
        s.buf.extend_from_slice(b"{\"n\":1}\n");
        s.flush().unwrap();
        // logrotate: the file moves away, the sink reopens the path.
        fs::rename(&p, d.join("alerts.json.1")).unwrap();
        s.buf.extend_from_slice(b"{\"n\":2}\n");
        s.connect().unwrap();
        s.buf.extend_from_slice(b"{\"n\":3}\n");
        s.flush().unwrap();
        assert_eq!(
            fs::read_to_string(d.join("alerts.json.1")).unwrap(),
            "{\"n\":1}\n{\"n\":2}\n"
        );
        assert_eq!(fs::read_to_string(&p).unwrap(), "{\"n\":3}\n");
        fs::remove_dir_all(d).unwrap();
    }
}
