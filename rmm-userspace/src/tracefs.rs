//! Tracepoint record layouts, read from the events' `format` files in tracefs: the programs
//! read their fields at these offsets (kernels add, move and resize fields: `group_dead` in
//! `sched_process_exit` exists only since Linux 6.16).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rmm_common::TracepointFields;

/// Where tracefs is, or was mounted by the daemon; the older debugfs place as a fallback.
const EVENT_DIRS: [&str; 2] = [
    "/sys/kernel/tracing/events",
    "/sys/kernel/debug/tracing/events",
];

/// A field of a tracepoint record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    pub size: u32,
}

/// The fields of one event's format file, by name.
#[derive(Debug, Default)]
pub struct Format {
    fields: Vec<(String, Field)>,
}

impl Format {
    /// Parses a format file: one `field:TYPE NAME;\toffset:N;\tsize:N;\tsigned:N;` line per
    /// field (arrays are `NAME[N]`). Lines of another shape (name, ID, print fmt) are skipped;
    /// a field line without a readable offset or size is an error.
    pub fn parse(text: &str) -> Result<Format> {
        let mut fields = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            let Some(decl) = line.strip_prefix("field:") else {
                continue;
            };
            let mut parts = decl.split(';').map(str::trim);
            let decl = parts.next().unwrap_or_default();
            let mut offset = None;
            let mut size = None;
            for p in parts {
                if let Some(v) = p.strip_prefix("offset:") {
                    offset = v.parse::<u32>().ok();
                } else if let Some(v) = p.strip_prefix("size:") {
                    size = v.parse::<u32>().ok();
                }
            }
            let name = decl
                .rsplit([' ', '\t', '*'])
                .next()
                .map(|n| n.split('[').next().unwrap_or(n))
                .filter(|n| !n.is_empty());
            let (Some(name), Some(offset), Some(size)) = (name, offset, size) else {
                bail!("malformed field line {line:?}");
            };
            fields.push((name.to_string(), Field { offset, size }));
        }
        if fields.is_empty() {
            bail!("no field lines");
        }
        Ok(Format { fields })
    }

    pub fn field(&self, name: &str) -> Option<Field> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, f)| *f)
    }

    /// The offset of a field the programs need, checked for the size they read.
    fn required(&self, event: &str, name: &str, size: u32) -> Result<u32> {
        let f = self
            .field(name)
            .with_context(|| format!("tracepoint {event} has no field {name}"))?;
        if f.size != size {
            bail!(
                "tracepoint {event}: field {name} is {} bytes, the probe reads {size}",
                f.size
            );
        }
        Ok(f.offset)
    }
}

fn events_dir() -> Result<PathBuf> {
    EVENT_DIRS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("sched").is_dir())
        .with_context(|| {
            format!(
                "no tracepoint events under {} (is tracefs mounted?)",
                EVENT_DIRS.join(" or ")
            )
        })
}

/// Reads `category/event/format` under `dir`.
pub fn read_format(dir: &Path, category: &str, event: &str) -> Result<Format> {
    let path = dir.join(category).join(event).join("format");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {}: does this kernel have tracepoint {category}/{event}?",
            path.display()
        )
    })?;
    Format::parse(&text).with_context(|| format!("parsing {}", path.display()))
}

/// The field offsets of every tracepoint the programs read, and whether `sched_process_exit`
/// has `group_dead`.
pub fn tracepoint_fields() -> Result<(TracepointFields, bool)> {
    fields_under(&events_dir()?)
}

pub fn fields_under(dir: &Path) -> Result<(TracepointFields, bool)> {
    let exec = read_format(dir, "sched", "sched_process_exec")?;
    let newtask = read_format(dir, "task", "task_newtask")?;
    let exit = read_format(dir, "sched", "sched_process_exit")?;
    let enter = read_format(dir, "syscalls", "sys_enter_connect")?;
    let leave = read_format(dir, "syscalls", "sys_exit_connect")?;
    let signal = read_format(dir, "signal", "signal_generate")?;
    let group_dead = match exit.field("group_dead") {
        Some(f) if f.size == 1 => Some(f.offset),
        Some(f) => bail!(
            "tracepoint sched_process_exit: field group_dead is {} bytes, the probe reads 1",
            f.size
        ),
        None => None,
    };
    let fields = TracepointFields {
        exec_filename: exec.required("sched_process_exec", "filename", 4)?,
        newtask_pid: newtask.required("task_newtask", "pid", 4)?,
        newtask_clone_flags: newtask.required("task_newtask", "clone_flags", 8)?,
        exit_group_dead: group_dead.unwrap_or(0),
        enter_connect_fd: enter.required("sys_enter_connect", "fd", 8)?,
        exit_connect_ret: leave.required("sys_exit_connect", "ret", 8)?,
        signal_sig: signal.required("signal_generate", "sig", 4)?,
        signal_code: signal.required("signal_generate", "code", 4)?,
        signal_pid: signal.required("signal_generate", "pid", 4)?,
        signal_result: signal.required("signal_generate", "result", 4)?,
    };
    Ok((fields, group_dead.is_some()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `sched_process_exit` as Linux 6.1 prints it (no `group_dead`).
    const EXIT_6_1: &str = "name: sched_process_exit\nID: 300\nformat:\n\
        \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
        \tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\
        \tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:1;\n\
        \tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;\n\
        \tfield:int prio;\toffset:28;\tsize:4;\tsigned:1;\n\n\
        print fmt: \"comm=%s pid=%d prio=%d\", REC->comm, REC->pid, REC->prio\n";

    #[test]
    fn parses_fields_and_arrays() {
        let f = Format::parse(EXIT_6_1).expect("parses");
        assert_eq!(
            f.field("comm"),
            Some(Field {
                offset: 8,
                size: 16
            })
        );
        assert_eq!(
            f.field("pid"),
            Some(Field {
                offset: 24,
                size: 4
            })
        );
        assert_eq!(f.field("common_pid"), Some(Field { offset: 4, size: 4 }));
        assert_eq!(f.field("group_dead"), None);
        let data_loc = "\tfield:__data_loc char[] filename;\toffset:8;\tsize:4;\tsigned:0;\n";
        assert_eq!(
            Format::parse(data_loc).expect("parses").field("filename"),
            Some(Field { offset: 8, size: 4 })
        );
        let ptr = "\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;\n";
        assert_eq!(
            Format::parse(ptr).expect("parses").field("skaddr"),
            Some(Field { offset: 8, size: 8 })
        );
    }

    #[test]
    fn malformed_formats_are_errors() {
        for bad in [
            "",
            "name: x\nID: 1\n",
            "\tfield:int pid;\toffset:x;\tsize:4;\n",
            "\tfield:int pid;\tsize:4;\n",
            "\tfield:;\toffset:1;\tsize:4;\n",
        ] {
            assert!(Format::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_field_of_another_size_is_refused() {
        let f = Format::parse(EXIT_6_1).expect("parses");
        assert!(f.required("sched_process_exit", "pid", 8).is_err());
        assert!(f.required("sched_process_exit", "nope", 4).is_err());
        assert_eq!(f.required("sched_process_exit", "pid", 4).expect("pid"), 24);
    }

    #[test]
    fn reads_this_kernels_tracepoints() {
        let Ok(dir) = events_dir() else {
            eprintln!("skipped: tracefs is not mounted");
            return;
        };
        let (fields, _) = fields_under(&dir).expect("this kernel's formats");
        assert_eq!(fields.exec_filename, 8);
        assert_eq!(fields.exit_connect_ret, 16);
    }
}
