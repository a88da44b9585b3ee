//! Faults injected on purpose, for the tests of the daemon's supervision: the processor made
//! to fail, panic or hang on the exec of a file of a given name, so that a test can watch the
//! daemon exit non-zero or withhold its watchdog keep-alive. Only debug builds (the ones the
//! test suite runs) honour `RMM_MONITOR_FAULT`; a release build says it ignores it.
//!
//! `RMM_MONITOR_FAULT=KIND:NAME`, KIND one of `fail` (the processor returns an error), `panic`,
//! `hang` (it sleeps forever) and `hold` (every ring reader stops reading for `HOLD`, so that a
//! test can fill the kernel's rings for certain), NAME the file name of the executable that
//! triggers it.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use anyhow::{Result, bail};

use crate::{decode::Event, matcher::basename};

pub const VAR: &str = "RMM_MONITOR_FAULT";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Fail,
    Panic,
    Hang,
    Hold,
}

/// How long the readers stop reading on a `hold` fault.
pub const HOLD: Duration = Duration::from_secs(5);

/// Holds asked so far; each reader compares it with the holds it has served.
static HOLDS: AtomicU64 = AtomicU64::new(0);

/// For a ring reader, at the top of each read: true when a hold was asked since the last
/// call with this `served` count (one relaxed load when none was).
pub fn hold_asked(served: &mut u64) -> bool {
    let asked = HOLDS.load(Ordering::Relaxed);
    if asked == *served {
        return false;
    }
    *served = asked;
    true
}

/// The fault asked for, if any.
#[derive(Debug, Default)]
pub struct Fault {
    armed: Option<(Kind, String)>,
}

impl Fault {
    /// From `RMM_MONITOR_FAULT`; a value that does not parse is an error (debug builds).
    pub fn from_env() -> Result<Fault> {
        let Some(value) = std::env::var_os(VAR) else {
            return Ok(Fault::default());
        };
        if !cfg!(debug_assertions) {
            log::warn!("{VAR} is set: ignored, only debug builds inject faults");
            return Ok(Fault::default());
        }
        let value = value.to_string_lossy();
        let fault = Fault::parse(&value)?;
        log::warn!("{VAR}={value}: a fault will be injected (test build)");
        Ok(fault)
    }

    fn parse(value: &str) -> Result<Fault> {
        let Some((kind, name)) = value.split_once(':') else {
            bail!("{VAR}={value:?}: expected KIND:NAME");
        };
        let kind = match kind {
            "fail" => Kind::Fail,
            "panic" => Kind::Panic,
            "hang" => Kind::Hang,
            "hold" => Kind::Hold,
            other => bail!("{VAR}: unknown fault {other:?} (fail, panic, hang or hold)"),
        };
        if name.is_empty() {
            bail!("{VAR}={value:?}: no file name");
        }
        Ok(Fault {
            armed: Some((kind, name.to_string())),
        })
    }

    /// Fails, panics, hangs or holds the readers when `ev` is the exec of the named file.
    pub fn on_event(&self, ev: &Event) -> Result<()> {
        let (Some((kind, name)), Event::Exec(e)) = (&self.armed, ev) else {
            return Ok(());
        };
        if basename(&e.filename) != name.as_str() {
            return Ok(());
        }
        match kind {
            Kind::Fail => bail!("injected fault: exec of {}", e.filename),
            Kind::Panic => panic!("injected fault: exec of {}", e.filename),
            Kind::Hang => loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            },
            Kind::Hold => {
                HOLDS.fetch_add(1, Ordering::Relaxed);
                log::warn!(
                    "injected fault: exec of {}: the ring readers stop reading for {} ms",
                    e.filename,
                    HOLD.as_millis()
                );
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_or_say_why_not() {
        assert_eq!(
            Fault::parse("hang:x").unwrap().armed,
            Some((Kind::Hang, "x".into()))
        );
        assert_eq!(
            Fault::parse("hold:y").unwrap().armed,
            Some((Kind::Hold, "y".into()))
        );
        for bad in ["", "hang", "hang:", "explode:x"] {
            assert!(Fault::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_hold_is_served_once_by_each_reader() {
        let (mut a, mut b) = (HOLDS.load(Ordering::Relaxed), HOLDS.load(Ordering::Relaxed));
        assert!(!hold_asked(&mut a));
        HOLDS.fetch_add(1, Ordering::Relaxed);
        assert!(hold_asked(&mut a) && hold_asked(&mut b));
        assert!(!hold_asked(&mut a) && !hold_asked(&mut b));
    }
}
