//! `twill cluster render`: what the standalone control plane makes of manifests.

use std::collections::BTreeMap;
use std::process::ExitCode;

use ipnet::IpNet;
use twill_control::Settings;
use twill_manifest::{Location, Problem, Severity};
use twill_model::{ClusterState, Object, ObjectEvent, ObjectRef};

/// Cluster-wide settings of the standalone control plane (shared by every command that
/// runs it).
#[derive(clap::Args, Debug, Clone)]
pub struct ClusterArgs {
    /// Manifest files or directories (recursive); `-` reads stdin. Repeatable.
    #[arg(short = 'f', long = "filename", value_name = "PATH", required = true)]
    pub files: Vec<String>,
    /// Service CIDR; give it twice (one per family) for dual-stack.
    #[arg(long = "service-cidr", value_name = "CIDR", default_values_t = vec!["10.96.0.0/12".parse::<IpNet>().unwrap()])]
    pub service_cidrs: Vec<IpNet>,
    /// The cluster's pod CIDR, split into one subnet per node.
    #[arg(long, value_name = "CIDR", default_value = "10.244.0.0/16")]
    pub pod_cidr: IpNet,
    /// Prefix length of each node's pod subnet.
    #[arg(long, default_value_t = 24)]
    pub node_subnet_len: u8,
    /// Node-port range, inclusive (`30000-32767`).
    #[arg(long, default_value = "30000-32767", value_parser = parse_range)]
    pub node_port_range: (u16, u16),
    /// Addresses for LoadBalancer services (repeatable); none leaves them pending.
    #[arg(long = "lb-pool", value_name = "CIDR")]
    pub lb_pool: Vec<IpNet>,
    /// Generated nodes `node-1`..`node-N` when the manifests declare no Node.
    #[arg(long, default_value_t = 2)]
    pub nodes: usize,
    /// Seed for generated names (pods, slices).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

fn parse_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or("expected LOW-HIGH, e.g. 30000-32767")?;
    let a: u16 = a.trim().parse().map_err(|e| format!("{a}: {e}"))?;
    let b: u16 = b.trim().parse().map_err(|e| format!("{b}: {e}"))?;
    if a > b {
        return Err(format!("{a} is above {b}"));
    }
    Ok((a, b))
}

impl ClusterArgs {
    pub fn settings(&self, simulate_pods: bool) -> Settings {
        Settings {
            service_cidrs: self.service_cidrs.clone(),
            pod_cidr: self.pod_cidr,
            node_subnet_len: self.node_subnet_len,
            node_port_range: self.node_port_range,
            load_balancer_pool: self.lb_pool.clone(),
            seed: self.seed,
            simulate_pods,
        }
    }
}

#[derive(clap::Subcommand)]
pub enum Command {
    /// Print the cluster as the standalone control plane leaves it (Services with
    /// cluster IPs and node ports, Pods with nodes, EndpointSlices) as YAML.
    Render {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Give pods addresses from their node's subnet and mark them Ready, as a
        /// runtime would (otherwise pods without addresses have no endpoints).
        #[arg(long)]
        simulate_ips: bool,
        /// Exit 1 when any manifest or allocation problem was found.
        #[arg(long)]
        strict: bool,
    },
}

/// Loaded manifests plus the control plane's verdict, with every problem located.
pub struct Reconciled {
    /// How many objects loaded.
    pub objects: usize,
    pub output: twill_control::Output,
    pub problems: Vec<Problem>,
}

/// Load manifests and run the control plane over them. Settings that cannot work (see
/// [`Settings::check`]) are an error, whatever the manifests hold.
pub fn load_and_reconcile(args: &ClusterArgs, simulate_pods: bool) -> anyhow::Result<Reconciled> {
    let load = twill_manifest::files::load_paths(&args.files);
    let settings = args.settings(simulate_pods);
    let declares_nodes = load
        .objects
        .iter()
        .any(|l| matches!(l.object, Object::Node(_)));
    let unfit = settings.check(if declares_nodes { 0 } else { args.nodes });
    if !unfit.is_empty() {
        anyhow::bail!("{}", unfit.join("\n"));
    }
    let locations: BTreeMap<ObjectRef, Location> = load
        .objects
        .iter()
        .map(|l| (l.object.object_ref(), l.location.clone()))
        .collect();
    let mut state = ClusterState::default();
    let count = load.objects.len();
    let mut problems_in = load.problems;
    problems_in.extend(twill_manifest::checks::missing_namespaces(
        &load.objects,
        &twill_manifest::checks::SYSTEM_NAMESPACES,
    ));
    for l in load.objects {
        state.apply(ObjectEvent::Applied(l.object));
    }
    if state.nodes.is_empty() {
        for n in twill_control::generated_nodes(args.nodes, &settings) {
            state.apply(ObjectEvent::Applied(Object::Node(n)));
        }
    }
    state.apply(ObjectEvent::Synced);
    let output = twill_control::reconcile(&state, &settings);
    let mut problems = problems_in;
    problems.extend(output.problems.iter().map(|p| Problem {
        severity: Severity::Error,
        location: locations.get(&p.object).cloned(),
        object: Some(p.object.to_string()),
        path: p.path.clone(),
        message: p.message.clone(),
    }));
    // Report in file order, whichever stage found the problem.
    problems.sort_by(|a, b| {
        let key = |p: &Problem| p.location.as_ref().map(|l| (l.source.clone(), l.doc));
        key(a).cmp(&key(b))
    });
    Ok(Reconciled {
        objects: count,
        output,
        problems,
    })
}

pub fn run(c: Command) -> anyhow::Result<ExitCode> {
    match c {
        Command::Render {
            cluster,
            simulate_ips,
            strict,
        } => {
            let r = load_and_reconcile(&cluster, simulate_ips)?;
            for p in &r.problems {
                eprintln!("{p}");
            }
            print!("{}", twill_manifest::render_yaml(&r.output.state));
            let errors = r.problems.iter().any(|p| p.severity == Severity::Error);
            Ok(if strict && errors {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}
