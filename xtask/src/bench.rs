//! `cargo xtask bench`: placeholder replaced by the benchmark harness.

use std::path::Path;

use anyhow::{Result, bail};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {}

pub fn run(_daemon: &Path, _args: &BenchArgs) -> Result<()> {
    bail!("the benchmark is not written yet")
}
