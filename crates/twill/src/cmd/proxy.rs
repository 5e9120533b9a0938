//! Placeholder until the proxy work lands (owned by the proxy work).

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {}

#[derive(clap::Args)]
pub struct ConformanceArgs {
    pub dir: PathBuf,
}

pub fn run(_a: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("twill proxy is not built yet")
}

pub fn run_conformance(_a: ConformanceArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("the proxy conformance runner is not built yet")
}
