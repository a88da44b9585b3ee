//! Alerts as JSON lines, to stdout or appended to a file (reopened on SIGHUP for logrotate).
//!
//! Lines are collected in a buffer and written whole: stdout is shared with the raw event
//! stream (`--events json`), and a line must never be split by another writer.

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    path::PathBuf,
};

use anyhow::{Context, Result};

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
            self.file = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .with_context(|| format!("opening alert file {}", p.display()))?,
            );
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

    fn flush(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let result = match (&self.path, &mut self.file) {
            (None, _) => write_stdout_lines(&self.buf).context("writing alerts to stdout"),
            (Some(_), Some(f)) => f.write_all(&self.buf).context("writing alerts"),
            (Some(p), None) => Err(anyhow::anyhow!("alert file {} is not open", p.display())),
        };
        // On failure the lines stay buffered for the retry after a reconnect.
        if result.is_ok() {
            self.buf.clear();
        }
        result
    }
}
