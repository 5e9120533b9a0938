//! `twill manifests check`: validate manifests strictly.

use std::process::ExitCode;

use twill_manifest::Severity;

use super::cluster::{ClusterArgs, load_and_reconcile};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Load, validate and run the allocators over manifests; print every problem and
    /// exit 1 if there is any error (warnings alone pass).
    Check {
        #[command(flatten)]
        cluster: ClusterArgs,
    },
}

pub fn run(c: Command) -> anyhow::Result<ExitCode> {
    match c {
        Command::Check { cluster } => {
            let r = load_and_reconcile(&cluster, false)?;
            for p in &r.problems {
                println!("{p}");
            }
            let errors = r
                .problems
                .iter()
                .filter(|p| p.severity == Severity::Error)
                .count();
            let warnings = r.problems.len() - errors;
            println!(
                "{} objects loaded, {errors} error{}, {warnings} warning{}",
                r.objects,
                if errors == 1 { "" } else { "s" },
                if warnings == 1 { "" } else { "s" }
            );
            Ok(if errors > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}
