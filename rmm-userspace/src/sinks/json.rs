//! Alerts as JSON lines, to stdout or appended to a file (reopened on SIGHUP for logrotate).

use std::{
    fs::OpenOptions,
    io::{self, BufWriter, Write},
    path::PathBuf,
};

use anyhow::{Context, Result};

use super::Deliver;
use crate::alert::Alert;

pub struct JsonSink {
    /// `None` is stdout.
    path: Option<PathBuf>,
    out: Option<BufWriter<Box<dyn Write + Send>>>,
}

impl JsonSink {
    /// `-` is stdout; anything else a file opened for appending (created if missing).
    pub fn new(target: &str) -> JsonSink {
        JsonSink {
            path: (target != "-").then(|| PathBuf::from(target)),
            out: None,
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

impl Deliver for JsonSink {
    fn describe(&self) -> String {
        match &self.path {
            None => "json:stdout".into(),
            Some(p) => format!("json:{}", p.display()),
        }
    }

    fn connect(&mut self) -> Result<()> {
        if let Some(out) = &mut self.out {
            let _ = out.flush();
        }
        let w: Box<dyn Write + Send> = match &self.path {
            None => Box::new(io::stdout()),
            Some(p) => Box::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .with_context(|| format!("opening alert file {}", p.display()))?,
            ),
        };
        self.out = Some(BufWriter::new(w));
        Ok(())
    }

    fn send(&mut self, alert: &Alert) -> Result<()> {
        if self.out.is_none() {
            self.connect()?;
        }
        let out = self.out.as_mut().context("alert output not open")?;
        serde_json::to_writer(&mut *out, alert).context("writing an alert")?;
        out.write_all(b"\n").context("writing an alert")?;
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if let Some(out) = &mut self.out {
            out.flush().context("flushing alerts")?;
        }
        Ok(())
    }
}
