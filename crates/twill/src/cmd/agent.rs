//! `twill agent`: one process per node fed by the Kubernetes API.
//!
//! For now it connects (in-cluster service account, `--kubeconfig`, or `KUBECONFIG`),
//! watches what its role reads and prints the event stream (`--dump-events`) and a state
//! summary once synced. Running the proxy, overlay and policy agents from this source is
//! the next step; they consume the same [`twill_kube_source::spawn`] channel.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use twill_kube_source::{Role, SourceConfig};
use twill_model::{ClusterState, ObjectEvent};

#[derive(clap::Args)]
pub struct Args {
    /// kubeconfig to use; without it: `KUBECONFIG`, `~/.kube/config`, then the pod's
    /// service account (in-cluster).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// This node's name (default: `NODE_NAME`, then the hostname), as kube-proxy's
    /// `--hostname-override`.
    #[arg(long, env = "NODE_NAME")]
    pub hostname_override: Option<String>,
    /// What this process is: `node` (the DaemonSet agent: every kind it may act on) or
    /// `dns` (cluster DNS: Namespaces, Pods, Services, EndpointSlices).
    #[arg(long, default_value = "node", value_parser = parse_role)]
    pub role: Role,
    /// Watch only this node's Pods (`fieldSelector=spec.nodeName=NODE`): far less
    /// traffic on big clusters, for when this agent enforces no NetworkPolicy (policy
    /// peers live on every node).
    #[arg(long)]
    pub local_pods_only: bool,
    /// Print every event (`applied KIND NAME`, `deleted KIND NAME`, `synced ...`) on
    /// stdout.
    #[arg(long)]
    pub dump_events: bool,
    /// Exit after the first sync (with its summary); for scripts and smoke tests.
    #[arg(long)]
    pub exit_after_sync: bool,
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| {
        let known: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
        format!("unknown role {s:?} (known: {})", known.join(", "))
    })
}

fn node_name(a: &Args) -> anyhow::Result<String> {
    if let Some(n) = a.hostname_override.as_ref().filter(|n| !n.is_empty()) {
        return Ok(n.clone());
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("reading the hostname (give --hostname-override)")?;
    // Node names are lower case, as kubelet registers them.
    Ok(host.trim().to_lowercase())
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    if !a.dump_events && !a.exit_after_sync {
        anyhow::bail!(
            "running the proxy, pod network and policy parts from the API is not built yet; \
             use --dump-events to watch what the agent would act on"
        );
    }
    let node = node_name(&a)?;
    let mut config: SourceConfig = a.role.source_config();
    if a.local_pods_only {
        config = config.local_pods_only(node.clone());
    }
    tracing::info!(node, role = a.role.as_str(), "connecting to the API server");
    let events = twill_kube_source::spawn(a.kubeconfig.clone(), config)
        .context("starting the Kubernetes source")?;
    let mut state = ClusterState::default();
    for item in events {
        let event = match item {
            Ok(e) => e,
            // Logged by the source; it retries (or skips the object) by itself.
            Err(e) if e.is_transient() => continue,
            Err(e) => return Err(e).context("connecting to the API server"),
        };
        if a.dump_events {
            match &event {
                ObjectEvent::Applied(o) => println!("applied {} {}", o.kind(), o.key()),
                ObjectEvent::Deleted(r) => println!("deleted {r}"),
                ObjectEvent::Synced => {}
            }
        }
        let synced = event == ObjectEvent::Synced;
        state.apply(event);
        if synced {
            println!("synced: {}", twill_kube_source::state_summary(&state));
            if a.exit_after_sync {
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
    anyhow::bail!("the Kubernetes source stopped")
}
