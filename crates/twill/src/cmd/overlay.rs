//! Placeholder until the overlay work lands (owned by the overlay work).

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {}

#[derive(clap::Args)]
pub struct ConformanceArgs {
    pub dir: PathBuf,
}

pub fn run(_a: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("twill overlay is not built yet")
}

pub fn run_conformance(_a: ConformanceArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("the overlay conformance runner is not built yet")
}
