//! `twill netpol` (the NetworkPolicy enforcer for one node) and
//! `twill conformance netpol DIR` (the truth-table runner).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use twill_agent::parts::policy::PolicyPart;
use twill_conformance::netpol::corpus::{check_pure, load_dir};
use twill_conformance::netpol::harness::HarnessOptions;
use twill_conformance::netpol::replay::{PolicyOrder, run_scenario};
use twill_netpol::{DenyAction, RenderOptions};
use twill_netpol_agent::daemon::cluster_from_manifests;

#[derive(clap::Args)]
pub struct Args {
    /// The node whose pods this enforcer guards.
    #[arg(long, env = "NODE_NAME")]
    pub node: String,
    /// Manifest files or folders (Namespaces, Nodes, Pods, NetworkPolicies); followed
    /// (inotify), an invalid edit keeping the last good objects.
    #[arg(short = 'f', long = "manifests", required = true)]
    pub manifests: Vec<String>,
    /// Further addresses of this node (e.g. its bridge gateway), for the rule that lets a
    /// node always reach its own pods.
    #[arg(long = "node-address")]
    pub node_addresses: Vec<std::net::IpAddr>,
    #[arg(long, value_enum, default_value = "reject")]
    pub deny: Deny,
    /// Minimum time between syncs, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// One pass, then exit.
    #[arg(long)]
    pub once: bool,
    /// Print the rendered ipset and iptables input for the node and exit (no root needed).
    #[arg(long)]
    pub dry_run: bool,
    /// Serve Prometheus metrics (`/metrics`) and the flow log (`/flows`) on this address.
    #[arg(long)]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Enter this named network namespace (`/run/netns/NAME`) before touching the kernel.
    #[arg(long)]
    pub netns: Option<String>,
    #[command(flatten)]
    pub flow_log: FlowLogFlags,
}

/// The NetworkPolicy flow log (`GET /flows` on the agent's HTTP server).
#[derive(clap::Args, Clone, Debug)]
pub struct FlowLogFlags {
    /// Which policy decisions the kernel logs: `drops` (every refused connection
    /// attempt), `all` (also every admitted one) or `off`.
    #[arg(long, value_enum, default_value = "drops")]
    pub flow_log: FlowLogMode,
    /// The nfnetlink_log group of the log rules (one listener per group and namespace).
    #[arg(long, default_value_t = twill_netpol::render::FLOW_LOG_GROUP)]
    pub flow_log_group: u16,
    /// Log records per second per pod and direction in the kernel (`-m limit`); a flood
    /// beyond it is not copied to the agent.
    #[arg(long, default_value_t = 100)]
    pub flow_log_rate: u32,
    /// Records the agent keeps (the oldest go first).
    #[arg(long, default_value_t = 10_000)]
    pub flow_log_size: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FlowLogMode {
    Off,
    Drops,
    All,
}

impl FlowLogFlags {
    /// The rules' half.
    pub fn rules(&self) -> Option<twill_netpol::render::FlowLogRules> {
        (self.flow_log != FlowLogMode::Off).then(|| twill_netpol::render::FlowLogRules {
            group: self.flow_log_group,
            allowed: self.flow_log == FlowLogMode::All,
            per_second: self.flow_log_rate.max(1),
            burst: self.flow_log_rate.max(1).saturating_mul(2),
        })
    }

    /// The policy part with its flow log.
    pub fn part(
        &self,
        node: &str,
        deny: DenyAction,
        extra: Vec<(String, std::net::IpAddr)>,
    ) -> PolicyPart {
        PolicyPart::new(
            node,
            RenderOptions {
                deny,
                flow_log: self.rules(),
                existing_chains: vec![],
            },
            extra,
        )
        .with_flow_log_options(twill_netpol_agent::flows::FlowLogOptions {
            capacity: self.flow_log_size.max(1),
            rejects: deny == DenyAction::Reject,
            ..Default::default()
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// The model's verdict only.
    Pure,
    /// Real connections in a netns cluster only.
    Kernel,
    /// Both (the kernel run needs root; without it only the model is checked, and said so).
    Both,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Order {
    Before,
    After,
    Both,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Deny {
    Reject,
    Drop,
}

#[derive(clap::Args)]
pub struct ConformanceArgs {
    /// Folder of truth-table files (shared/testdata/netpol schema).
    pub dir: PathBuf,
    #[arg(long, value_enum, default_value = "both")]
    pub mode: Mode,
    /// Apply policies before the pods' network comes up, after, or run both ways.
    #[arg(long, value_enum, default_value = "both")]
    pub order: Order,
    /// What denied packets get in the kernel run.
    #[arg(long, value_enum, default_value = "reject")]
    pub deny: Deny,
    /// Per-probe timeout in the kernel run.
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
    /// Only scenarios whose name contains this.
    #[arg(long)]
    pub scenario: Option<String>,
}

fn deny_action(d: Deny) -> DenyAction {
    match d {
        Deny::Reject => DenyAction::Reject,
        Deny::Drop => DenyAction::Drop,
    }
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let extra: Vec<(String, std::net::IpAddr)> = a
        .node_addresses
        .iter()
        .map(|ip| (a.node.clone(), *ip))
        .collect();
    let opts = RenderOptions {
        deny: deny_action(a.deny),
        flow_log: a.flow_log.rules(),
        existing_chains: vec![],
    };
    if a.dry_run {
        let load = twill_manifest::files::load_paths(&a.manifests);
        let (cluster, problems) = cluster_from_manifests(&load, &extra);
        for p in &problems {
            eprintln!("{p}");
        }
        let rules = twill_netpol::render_node(&cluster, &a.node, &opts);
        print!("{}{}", rules.ipset, rules.iptables);
        return Ok(ExitCode::SUCCESS);
    }
    let status = twill_agent::Status::new(Duration::from_secs(30));
    // Bound before entering the node's namespace: metrics are read from outside it.
    let http = match a.metrics_addr {
        Some(addr) => {
            let http = twill_agent::http::HttpServer::new(status.clone())?;
            http.listen(addr, twill_agent::http::Routes::Agent)
                .with_context(|| format!("binding metrics on {addr}"))?;
            Some(http)
        }
        None => None,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let source = twill_agent::ManifestSource::new(&a.manifests);
    let missing = source.missing();
    if a.once && !missing.is_empty() {
        anyhow::bail!("no such file: {}", missing.join(", "));
    }
    source.follow(tx, Duration::from_secs(5))?;
    if let Some(ns) = &a.netns {
        twill_conformance::netpol::netns::enter(&std::path::Path::new("/run/netns").join(ns))
            .map_err(|e| anyhow::anyhow!("entering netns {ns}: {e}"))?;
    }
    twill_agent::signals::install();
    // The runtime syncs on this thread, which is now in the node's namespace.
    let runtime = twill_agent::Runtime::new(
        status,
        http,
        vec![twill_agent::Part::Policy(
            a.flow_log.part(&a.node, opts.deny, extra),
        )],
        rx,
        twill_agent::Options {
            min_sync_period: Duration::from_millis(a.interval_ms),
            once: a.once,
            ..Default::default()
        },
    );
    runtime.run()?;
    Ok(ExitCode::SUCCESS)
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

pub fn run_conformance(a: ConformanceArgs) -> anyhow::Result<ExitCode> {
    let mut files = load_dir(&a.dir).with_context(|| format!("loading {}", a.dir.display()))?;
    if let Some(filter) = &a.scenario {
        for (_, f) in &mut files {
            f.scenarios.retain(|s| s.name.contains(filter.as_str()));
        }
    }
    let (mut passed, mut failed) = (0, 0);
    if a.mode != Mode::Kernel {
        let (mut p_ok, mut p_bad) = (0, 0);
        for (path, file) in &files {
            let (p, failures) = check_pure(path, file);
            p_ok += p;
            p_bad += failures.len();
            for f in failures {
                println!("{f}");
            }
        }
        println!("model: {p_ok} probes agree, {p_bad} disagree");
        passed += p_ok;
        failed += p_bad;
    }
    let kernel = match a.mode {
        Mode::Pure => false,
        Mode::Kernel => {
            anyhow::ensure!(
                is_root(),
                "--mode kernel needs root (CAP_NET_ADMIN) to build network namespaces"
            );
            true
        }
        Mode::Both => {
            let root = is_root();
            if !root {
                println!("kernel: skipped: needs CAP_NET_ADMIN (run as root)");
            }
            root
        }
    };
    if kernel {
        let orders: &[PolicyOrder] = match a.order {
            Order::Before => &[PolicyOrder::BeforePods],
            Order::After => &[PolicyOrder::AfterPods],
            Order::Both => &[PolicyOrder::AfterPods, PolicyOrder::BeforePods],
        };
        let opts = HarnessOptions {
            deny: deny_action(a.deny),
            timeout: Duration::from_millis(a.timeout_ms),
            ..HarnessOptions::default()
        };
        let (mut k_ok, mut k_bad, mut not_run, mut sctp) = (0, 0, 0, 0);
        for (path, file) in &files {
            for sc in &file.scenarios {
                for order in orders {
                    match run_scenario(path, file, sc, *order, &opts) {
                        Ok(r) => {
                            k_ok += r.passed;
                            k_bad += r.failed;
                            not_run += r.not_run;
                            sctp += r.sctp_not_run;
                            for f in &r.failures {
                                println!("{f}");
                            }
                            tracing::info!(scenario = %sc.name, order = order.as_str(), passed = r.passed, failed = r.failed, elapsed_ms = r.elapsed.as_millis() as u64, "kernel run");
                        }
                        Err(e) => {
                            k_bad += 1;
                            println!(
                                "FAIL {}: {} [{}]: harness: {e}",
                                path.display(),
                                sc.name,
                                order.as_str()
                            );
                        }
                    }
                }
            }
        }
        let why = if twill_conformance::netpol::probe::sctp_supported() {
            "self-probes".to_string()
        } else {
            format!("{sctp} SCTP (this kernel has no SCTP sockets), the rest self-probes")
        };
        println!(
            "kernel: {k_ok} probes agree, {k_bad} disagree; {not_run} not run in the kernel: {why}"
        );
        passed += k_ok;
        failed += k_bad;
    }
    Ok(super::conformance::summary(passed, failed))
}
