//! `twill netpol` (the NetworkPolicy enforcer for one node) and
//! `twill conformance netpol DIR` (the truth-table runner).

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use twill_netpol::{DenyAction, RenderOptions};
use twill_netpol_agent::corpus::{check_pure, load_dir};
use twill_netpol_agent::daemon::{Enforcer, SyncOutcome, cluster_from_manifests};
use twill_netpol_agent::harness::HarnessOptions;
use twill_netpol_agent::replay::{PolicyOrder, run_scenario};

#[derive(clap::Args)]
pub struct Args {
    /// The node whose pods this enforcer guards.
    #[arg(long, env = "NODE_NAME")]
    pub node: String,
    /// Manifest files or folders (Namespaces, Nodes, Pods, NetworkPolicies); re-read on
    /// every pass.
    #[arg(short = 'f', long = "manifests", required = true)]
    pub manifests: Vec<String>,
    /// Further addresses of this node (e.g. its bridge gateway), for the rule that lets a
    /// node always reach its own pods.
    #[arg(long = "node-address")]
    pub node_addresses: Vec<std::net::IpAddr>,
    #[arg(long, value_enum, default_value = "reject")]
    pub deny: Deny,
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// One pass, then exit.
    #[arg(long)]
    pub once: bool,
    /// Print the rendered ipset and iptables input for the node and exit (no root needed).
    #[arg(long)]
    pub dry_run: bool,
    /// Serve Prometheus metrics on this address (`/metrics`).
    #[arg(long)]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Enter this named network namespace (`/run/netns/NAME`) before touching the kernel.
    #[arg(long)]
    pub netns: Option<String>,
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

/// A one-endpoint HTTP server for `/metrics`. Hand-rolled: one GET, no keep-alive, so a
/// web framework (and an async runtime) would be all cost here.
fn serve_metrics(addr: std::net::SocketAddr, text: Arc<Mutex<String>>) -> anyhow::Result<()> {
    let listener =
        std::net::TcpListener::bind(addr).with_context(|| format!("binding metrics on {addr}"))?;
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf);
            let body = text.lock().map(|t| t.clone()).unwrap_or_default();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    Ok(())
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let extra: Vec<(String, std::net::IpAddr)> = a
        .node_addresses
        .iter()
        .map(|ip| (a.node.clone(), *ip))
        .collect();
    let opts = RenderOptions {
        deny: deny_action(a.deny),
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
    let text = Arc::new(Mutex::new(String::new()));
    if let Some(addr) = a.metrics_addr {
        serve_metrics(addr, text.clone())?;
    }
    if let Some(ns) = &a.netns {
        twill_netpol_agent::netns::enter(&std::path::Path::new("/run/netns").join(ns))
            .map_err(|e| anyhow::anyhow!("entering netns {ns}: {e}"))?;
    }
    let mut enforcer = Enforcer::new(&a.node, opts);
    loop {
        let load = twill_manifest::files::load_paths(&a.manifests);
        let (cluster, problems) = cluster_from_manifests(&load, &extra);
        for p in &problems {
            tracing::warn!(problem = %p, "manifest problem");
        }
        match enforcer.sync(cluster) {
            Ok(SyncOutcome::Applied {
                rules,
                sets,
                elapsed,
                sets_only,
            }) => {
                let elapsed_ms = elapsed.as_millis() as u64;
                tracing::info!(node = %a.node, rules, sets, sets_only, elapsed_ms, "netpol sync")
            }
            Ok(SyncOutcome::Unchanged) => {}
            Err(e) => {
                tracing::error!(error = %e, "netpol sync failed");
                if a.once {
                    return Err(e.into());
                }
            }
        }
        if let Ok(mut t) = text.lock() {
            *t = enforcer.metrics.encode();
        }
        if a.once {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_millis(a.interval_ms));
    }
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
        let why = if twill_netpol_agent::probe::sctp_supported() {
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
