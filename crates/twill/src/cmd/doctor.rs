//! `twill doctor`: check this node's networking (the network namespace it runs in).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;

use twill_doctor::{Severity, check, collect};

#[derive(clap::Args)]
pub struct Args {
    /// Cluster objects to check Services and pods against (manifests, or a lab's
    /// cluster.yaml). Repeatable.
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<String>,
    /// A host-local IPAM store to check for leaked addresses.
    #[arg(long)]
    pub ipam_dir: Option<PathBuf>,
    /// Container ids the runtime knows (comma separated); with --ipam-dir, finds leaks.
    #[arg(long, value_delimiter = ',')]
    pub live_containers: Option<Vec<String>>,
    /// This node's name (for the report).
    #[arg(long)]
    pub node: Option<String>,
    /// `json` for tools.
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<crate::cmd::Output>,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let mut snap = collect::collect_node();
    snap.node = a.node.clone();
    if !a.files.is_empty() {
        let loaded = twill_manifest::files::load_paths(&a.files);
        for p in &loaded.problems {
            eprintln!("{p}");
        }
        snap.cluster = Some(twill_model::ClusterState::from_objects(
            loaded.into_objects(),
        ));
    }
    if let Some(d) = &a.ipam_dir {
        snap.ipam = collect::read_ipam(d);
    }
    snap.live_containers = a.live_containers.map(|v| {
        v.into_iter()
            .filter(|s| !s.is_empty())
            .collect::<BTreeSet<_>>()
    });
    let findings = check(&snap);
    if a.output == Some(crate::cmd::Output::Json) {
        println!("{}", serde_json::to_string_pretty(&findings)?);
    } else {
        let who = a.node.as_deref().unwrap_or("this node");
        if findings.is_empty() {
            println!("{who}: no problems found");
        }
        for f in &findings {
            println!("{who}: {f}");
        }
    }
    let errors = findings.iter().any(|f| f.severity == Severity::Error);
    Ok(if errors {
        ExitCode::from(2)
    } else if findings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
