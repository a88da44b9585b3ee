//! rmm-monitor's daemon as a library: the binary (`src/main.rs`) is its command line, the
//! benchmarks use the matcher and detector directly.

pub mod alert;
pub mod btf;
pub mod catalog;
pub mod config;
pub mod context;
pub mod correlate;
pub mod daemon;
pub mod decode;
pub mod detect;
pub mod dns;
pub mod evidence;
pub mod fault;
pub mod features;
#[doc(hidden)]
pub mod fuzzing;
pub mod loss;
pub mod matcher;
pub mod merge;
pub mod metrics;
pub mod packages;
pub mod privs;
pub mod probes;
pub mod proctable;
pub mod reader;
pub mod rules_cmd;
pub mod sinks;
pub mod stats;
pub mod tamper;
pub mod tracefs;
