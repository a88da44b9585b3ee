//! Alert delivery as JSON lines, to stdout or appended to a file.

use std::{
    fs::OpenOptions,
    io::{self, BufWriter, Write},
    path::PathBuf,
};

use anyhow::{Context, Result};

use crate::alert::Alert;

pub enum JsonSink {
    Stdout(BufWriter<io::Stdout>),
    File {
        path: PathBuf,
        out: BufWriter<std::fs::File>,
    },
}

impl JsonSink {
    /// `-` is stdout; anything else a file opened for appending (created if missing).
    pub fn open(target: &str) -> Result<JsonSink> {
        if target == "-" {
            return Ok(JsonSink::Stdout(BufWriter::new(io::stdout())));
        }
        let path = PathBuf::from(target);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening alert file {}", path.display()))?;
        Ok(JsonSink::File {
            path,
            out: BufWriter::new(file),
        })
    }

    pub fn describe(&self) -> String {
        match self {
            JsonSink::Stdout(_) => "JSON lines on stdout".into(),
            JsonSink::File { path, .. } => format!("JSON lines appended to {}", path.display()),
        }
    }

    fn out(&mut self) -> &mut dyn Write {
        match self {
            JsonSink::Stdout(w) => w,
            JsonSink::File { out, .. } => out,
        }
    }

    pub fn write(&mut self, alert: &Alert) -> io::Result<()> {
        let out = self.out();
        serde_json::to_writer(&mut *out, alert)?;
        out.write_all(b"\n")
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out().flush()
    }
}
