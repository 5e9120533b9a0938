//! `twill cni install`, the CNI conformance runner, and the multi-call plugin entry
//! (`twill-bridge`, `twill-host-local`, or the reference names `bridge`/`host-local`
//! when installed as a drop-in replacement).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use twill_cni::PluginKind;
use twill_conformance::cni::{Runner, run_dir};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Install twill-bridge, twill-host-local (and twill-flannel) into a CNI bin dir.
    Install {
        #[arg(long)]
        bin_dir: PathBuf,
    },
}

#[derive(clap::Args)]
pub struct ConformanceArgs {
    /// A folder of case files in the shared/testdata/cni schema.
    pub dir: PathBuf,
    /// Where the reference plugins (portmap, tuning, ...) live.
    #[arg(long, env = "TWILL_CNI_REFERENCE_DIR", default_value = "/usr/lib/cni")]
    pub reference_dir: PathBuf,
}

/// When invoked as a plugin (argv[0] is twill-bridge or twill-host-local), run it.
pub fn dispatch_plugin() -> Option<ExitCode> {
    let argv0 = std::env::args_os().next()?;
    let base = Path::new(&argv0).file_name()?.to_str()?.to_string();
    let kind = PluginKind::from_argv0(&base)?;
    Some(ExitCode::from(
        twill_cni::plugin_main(kind).clamp(0, 255) as u8
    ))
}

pub fn run(c: Command) -> anyhow::Result<ExitCode> {
    match c {
        Command::Install { bin_dir } => {
            let exe = std::env::current_exe().context("locating the twill binary")?;
            let exe = std::fs::canonicalize(&exe).unwrap_or(exe);
            std::fs::create_dir_all(&bin_dir)
                .with_context(|| format!("creating {}", bin_dir.display()))?;
            for name in PluginKind::INSTALL_NAMES {
                let dst = bin_dir.join(name);
                let _ = std::fs::remove_file(&dst);
                // A symlink keeps one binary on disk; a copy works across filesystems
                // and survives the source being replaced.
                if std::os::unix::fs::symlink(&exe, &dst).is_err() {
                    std::fs::copy(&exe, &dst).with_context(|| {
                        format!("copying {} to {}", exe.display(), dst.display())
                    })?;
                }
                println!("installed {}", dst.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub fn run_conformance(a: ConformanceArgs) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("locating the twill binary")?;
    let runner = Runner {
        plugin_exe: std::fs::canonicalize(&exe).unwrap_or(exe),
        reference_dir: a.reference_dir,
        provided: vec!["bridge".into(), "host-local".into(), "flannel".into()],
        timeout: Duration::from_secs(60),
    };
    let (passed, failed) = run_dir(&runner, &a.dir, &mut |file, msg| println!("{file}: {msg}"))
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("running CNI cases in {}", a.dir.display()))?;
    Ok(crate::cmd::conformance::summary(passed, failed))
}
