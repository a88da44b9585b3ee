//! `rmm-monitor rules check|list` and `rmm-monitor scan`.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use crate::{
    catalog::{RuleSources, Rules, parse_rules},
    daemon::load_rules,
    detect::Detector,
    proctable::ProcTable,
    sinks::json::JsonSink,
};

pub fn check(files: &[PathBuf]) -> Result<()> {
    let mut bad = 0;
    for f in files {
        let name = f.display().to_string();
        match std::fs::read_to_string(f) {
            Err(e) => {
                eprintln!("{name}: cannot read: {e}");
                bad += 1;
            }
            Ok(text) => match parse_rules(&name, &text) {
                Ok(r) => println!(
                    "{name}: ok ({} tools, {} allow entries)",
                    r.tool.len(),
                    r.allow.len()
                ),
                Err(errs) => {
                    eprintln!("{errs}");
                    bad += 1;
                }
            },
        }
    }
    if bad > 0 {
        bail!("{bad} of {} rules files have errors", files.len());
    }
    Ok(())
}

pub fn list(sources: &RuleSources, json: bool) -> Result<()> {
    let rules = Rules::load(sources)?;
    // Compile too, so that `list` fails exactly when `run` would.
    let compiled = load_rules(sources)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&compiled.matcher.tools)?);
        return Ok(());
    }
    println!("# sources: {}", rules.sources.join(", "));
    for t in &rules.tools {
        let list = |v: &[toml::Spanned<String>]| {
            v.iter()
                .map(|s| s.get_ref().as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let ports: Vec<String> = t
            .ports
            .iter()
            .map(|p| {
                format!(
                    "{}/{}",
                    p.get_ref().ports.get_ref(),
                    match p.get_ref().proto {
                        crate::catalog::Proto::Tcp => "tcp",
                        crate::catalog::Proto::Udp => "udp",
                    }
                )
            })
            .collect();
        println!(
            "{} ({}) severity={} technique={}",
            t.id.get_ref(),
            t.name,
            t.severity.name(),
            t.technique.get_ref()
        );
        for (label, value) in [
            ("names", list(&t.process_names)),
            ("paths", list(&t.paths)),
            ("args", list(&t.args)),
            ("domains", list(&t.domains)),
            ("ports", ports.join(", ")),
        ] {
            if !value.is_empty() {
                println!("  {label}: {value}");
            }
        }
    }
    println!(
        "# {} tools, {} allow entries",
        rules.tools.len(),
        rules.allow.len()
    );
    Ok(())
}

pub fn scan(sources: &RuleSources, json: &str) -> Result<()> {
    let compiled = load_rules(sources)?;
    let mut sink = JsonSink::open(json)?;
    let mut table = ProcTable::default();
    let report = table.seed(Path::new("/proc"))?;
    let mut detector = Detector::new(compiled);
    let alerts = detector.inventory(&table);
    for a in &alerts {
        sink.write(a)?;
    }
    crate::sinks::Deliver::flush(&mut sink)?;
    log::info!(
        "scanned {} processes ({} unreadable): {} RMM processes running",
        report.processes,
        report.unreadable,
        alerts.len()
    );
    Ok(())
}
