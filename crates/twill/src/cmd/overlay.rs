//! `twill overlay` (the agent, flannel's job) and `twill conformance overlay DIR`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

#[derive(clap::Args)]
pub struct Args {}

#[derive(clap::Args)]
pub struct ConformanceArgs {
    /// A folder of overlay cases (shared/testdata/overlay schema).
    pub dir: PathBuf,
}

pub fn run(_a: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("twill overlay is not built yet")
}

/// Run every `*.json` case in the folder; one line per failure, then the summary.
pub fn run_conformance(a: ConformanceArgs) -> anyhow::Result<ExitCode> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(&a.dir)
        .with_context(|| format!("reading {}", a.dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let (mut passed, mut failed) = (0, 0);
    for path in files {
        let outcome = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read: {e}"))
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).map_err(|e| format!("not JSON: {e}")))
            .and_then(|case| twill_overlay::cases::check_case(&case));
        match outcome {
            Ok(()) => passed += 1,
            Err(e) => {
                failed += 1;
                println!("FAIL {}: {e}", path.display());
            }
        }
    }
    Ok(super::conformance::summary(passed, failed))
}
