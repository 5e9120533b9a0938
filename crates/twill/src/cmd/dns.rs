//! Placeholder until the dns work lands (owned by the dns work).

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {}

#[derive(clap::Args)]
pub struct ConformanceArgs {
    pub dir: PathBuf,
}

pub fn run(_a: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("twill dns is not built yet")
}

pub fn run_conformance(_a: ConformanceArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("the dns conformance runner is not built yet")
}
