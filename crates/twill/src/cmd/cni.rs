//! Placeholder until the CNI work lands (owned by the CNI work).

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Install twill-bridge and twill-host-local into a CNI bin dir.
    Install {
        #[arg(long)]
        bin_dir: PathBuf,
    },
}

#[derive(clap::Args)]
pub struct ConformanceArgs {
    pub dir: PathBuf,
}

/// When invoked as a plugin (argv[0] is twill-bridge or twill-host-local), run it.
pub fn dispatch_plugin() -> Option<ExitCode> {
    None
}

pub fn run(_c: Command) -> anyhow::Result<ExitCode> {
    anyhow::bail!("the CNI plugins are not built yet")
}

pub fn run_conformance(_a: ConformanceArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("the CNI conformance runner is not built yet")
}
