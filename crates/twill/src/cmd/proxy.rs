//! `twill proxy` (kube-proxy's job, iptables or nftables mode), `twill proxy rules`, and
//! `twill conformance proxy DIR [--mode …]`. userspace and ipvs have a dispatch point
//! that says they are not built into this binary.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
pub use twill_agent::parts::proxy::{Backend, Mode};
use twill_agent::parts::proxy::{ProxyPart, ProxySettings};
use twill_conformance::proxy::corpus::{self, Fixture, FlowOutcome};
use twill_model::{ClusterState, IpFamily};
use twill_proxy_core::{FeatureGates, ModelConfig, build_model};
use twill_proxy_iptables::trace::Tracer;
use twill_proxy_iptables::{Config, SyncMode, render};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub settings: Settings,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

/// Daemon-only settings.
#[derive(clap::Args, Clone, Debug)]
pub struct DaemonArgs {
    /// Remove everything Twill or kube-proxy wrote into this network namespace (chains in
    /// every table and backend, the `kube-proxy` nft tables, ipsets, policy and overlay
    /// rules) and exit, as `kube-proxy --cleanup` does.
    #[arg(long)]
    pub cleanup: bool,
    /// Manifests to take cluster state from (standalone mode); re-read when they change.
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<String>,
    #[command(flatten)]
    pub tuning: super::kube_proxy::TuningFlags,
    /// Full resync period (`30s`, `1m`).
    #[arg(long, alias = "iptables-sync-period")]
    pub sync_period: Option<String>,
    /// Minimum time between syncs.
    #[arg(long, alias = "iptables-min-sync-period")]
    pub min_sync_period: Option<String>,
    /// Where /healthz listens.
    #[arg(long)]
    pub healthz_bind_address: Option<SocketAddr>,
    /// Where /metrics listens.
    #[arg(long)]
    pub metrics_bind_address: Option<SocketAddr>,
    /// Sync once and exit (for scripts and tests).
    #[arg(long)]
    pub once: bool,
    /// Which iptables binaries to use: the system's `iptables`, or legacy/nft explicitly.
    #[arg(long, value_enum, default_value = "system")]
    pub iptables_backend: Backend,
}

#[derive(clap::Subcommand)]
pub enum Command {
    /// Print the iptables-restore input the proxy would write for these manifests
    /// (Services and EndpointSlices, e.g. from `kubectl get -o yaml`). Needs no root.
    Rules(RulesArgs),
}

/// kube-proxy's main settings, shared by the daemon and `rules`.
#[derive(clap::Args, Clone, Debug)]
pub struct Settings {
    /// Proxy mode (default iptables, or the config file's `mode`).
    #[arg(long, alias = "proxy-mode", value_enum, global = true)]
    pub mode: Option<Mode>,
    /// Pod CIDR for the local-traffic detector (off-cluster sources are masqueraded).
    #[arg(long, global = true)]
    pub cluster_cidr: Option<String>,
    /// This node's name (endpoints with this nodeName are local).
    #[arg(long = "hostname-override", alias = "node", global = true)]
    pub node: Option<String>,
    /// The node's primary IP(s).
    #[arg(long = "node-ip", global = true)]
    pub node_ips: Vec<IpAddr>,
    /// Masquerade all ClusterIP traffic.
    #[arg(long, global = true)]
    pub masquerade_all: bool,
    /// CIDRs whose local addresses accept NodePorts (comma separated), or `primary` (the
    /// node's primary addresses, as kube-proxy); default all.
    #[arg(long, value_delimiter = ',', global = true)]
    pub nodeport_addresses: Vec<String>,
    /// IP family this proxier handles.
    #[arg(long, default_value = "IPv4", global = true)]
    pub ip_family: String,
}

#[derive(clap::Args)]
pub struct RulesArgs {
    /// Manifest files or folders (`-` for stdin).
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<String>,
    /// ipvs mode's scheduler (rr, wrr, lc, wlc, lblc, lblcr, dh, sh, sed, nq).
    #[arg(long, default_value = "rr")]
    pub ipvs_scheduler: String,
}

#[derive(clap::Args)]
pub struct ConformanceArgs {
    /// A folder of proxy cases (shared/testdata/proxy schema).
    pub dir: PathBuf,
    /// Only the pure checks (expected text and traced flows); skip real-kernel flows.
    #[arg(long)]
    pub trace_only: bool,
    /// Which proxy mode runs the cases.
    #[arg(long, value_enum, default_value = "iptables")]
    pub mode: Mode,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    match a.command {
        Some(Command::Rules(r)) => run_rules(&a.settings, r),
        None => run_daemon(a.settings, a.daemon),
    }
}

/// Go's duration forms, as kube-proxy's flags take them (`30s`, `1m30s`, `500ms`, `2h`).
pub(crate) fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    twill_agent::kube_proxy_config::parse_duration(s).map_err(anyhow::Error::msg)
}

/// A KubeProxyConfiguration folded into the flags (flags win).
fn apply_config_file(
    f: &twill_agent::kube_proxy_config::FromFile,
    s: &mut Settings,
    d: &mut DaemonArgs,
) {
    if s.mode.is_none() {
        s.mode = f.mode;
    }
    super::kube_proxy::Basics {
        hostname_override: &mut s.node,
        cluster_cidr: &mut s.cluster_cidr,
        node_ips: &mut s.node_ips,
        masquerade_all: &mut s.masquerade_all,
        nodeport_addresses: &mut s.nodeport_addresses,
        sync_period: &mut d.sync_period,
        min_sync_period: &mut d.min_sync_period,
        healthz_bind_address: &mut d.healthz_bind_address,
        metrics_bind_address: &mut d.metrics_bind_address,
    }
    .fold(f);
}

/// Serve the agent routes on the health and metrics addresses (one listener when they
/// are the same).
pub(crate) fn listen_agent(
    http: &twill_agent::http::HttpServer,
    healthz: SocketAddr,
    metrics: SocketAddr,
) -> anyhow::Result<()> {
    let routes = if metrics == healthz {
        twill_agent::http::Routes::Agent
    } else {
        twill_agent::http::Routes::Health
    };
    http.listen(healthz, routes)
        .with_context(|| format!("listening on {healthz}"))?;
    if metrics != healthz {
        http.listen(metrics, twill_agent::http::Routes::Agent)
            .with_context(|| format!("listening on {metrics}"))?;
    }
    Ok(())
}

/// The daemon: the agent runtime with the manifest source and the proxy part.
fn run_daemon(mut s: Settings, mut d: DaemonArgs) -> anyhow::Result<ExitCode> {
    if d.cleanup {
        return Ok(crate::cmd::print_cleanup(
            twill_agent::cleanup::remove_everything(),
        ));
    }
    let file = d.tuning.load_file()?;
    if let Some(f) = &file {
        apply_config_file(f, &mut s, &mut d);
    }
    let tuning = d.tuning.tuning(file.as_ref())?;
    let family =
        IpFamily::parse(&s.ip_family).with_context(|| format!("--ip-family {:?}", s.ip_family))?;
    let sync_period = parse_duration(d.sync_period.as_deref().unwrap_or("30s"))?;
    let min_sync_period = parse_duration(d.min_sync_period.as_deref().unwrap_or("1s"))?;
    let node = s.node.clone();
    let mut settings = proxy_settings(
        &s,
        family,
        node.clone().unwrap_or_default(),
        d.iptables_backend,
        sync_period,
    );
    settings.tuning = tuning;
    settings.check_runnable()?;
    if d.files.is_empty() {
        anyhow::bail!(
            "standalone mode needs manifests: twill proxy -f MANIFESTS --hostname-override NODE"
        );
    }
    node.context("--hostname-override (or --node) is required")?;
    let status = twill_agent::Status::new(sync_period);
    let http = if d.once {
        None
    } else {
        let http = twill_agent::http::HttpServer::new(status.clone())?;
        let hz = d
            .healthz_bind_address
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 10256)));
        let mx = d
            .metrics_bind_address
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 10249)));
        listen_agent(&http, hz, mx)?;
        Some(http)
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let source = twill_agent::ManifestSource::new(&d.files);
    let missing = source.missing();
    if d.once && !missing.is_empty() {
        anyhow::bail!("no such file: {}", missing.join(", "));
    }
    source.follow(tx, Duration::from_secs(5))?;
    twill_agent::signals::install();
    let runtime = twill_agent::Runtime::new(
        status,
        http,
        vec![twill_agent::Part::Proxy(ProxyPart::new(settings))],
        rx,
        twill_agent::Options {
            min_sync_period,
            sync_period,
            once: d.once,
            ..Default::default()
        },
    );
    runtime.run()?;
    Ok(ExitCode::SUCCESS)
}

fn renderer_config(s: &Settings, family: IpFamily) -> anyhow::Result<Config> {
    let settings = proxy_settings(s, family, String::new(), Backend::System, Duration::ZERO);
    Ok(settings.renderer_config(&s.node_ips, &[])?)
}

/// The proxier's settings from kube-proxy's flags.
fn proxy_settings(
    s: &Settings,
    family: IpFamily,
    node: String,
    iptables_backend: Backend,
    sync_period: Duration,
) -> ProxySettings {
    ProxySettings {
        mode: s.mode.unwrap_or_default(),
        family,
        node,
        cluster_cidr: s.cluster_cidr.clone(),
        node_ips: s.node_ips.clone(),
        masquerade_all: s.masquerade_all,
        nodeport_addresses: s.nodeport_addresses.clone(),
        iptables_backend,
        sync_period,
        tuning: Default::default(),
    }
}

fn run_rules(s: &Settings, a: RulesArgs) -> anyhow::Result<ExitCode> {
    let mode = s.mode.unwrap_or(Mode::Iptables);
    let loaded = twill_manifest::files::load_paths(&a.files);
    for p in &loaded.problems {
        eprintln!("{p}");
    }
    if loaded.has_errors() {
        anyhow::bail!("the manifests have errors");
    }
    let family =
        IpFamily::parse(&s.ip_family).with_context(|| format!("--ip-family {:?}", s.ip_family))?;
    let node = s
        .node
        .clone()
        .context("--node (or --hostname-override) is required")?;
    let state = ClusterState::from_objects(loaded.into_objects());
    let mc = ModelConfig {
        family,
        node_name: node,
        node_zone: None,
        gates: FeatureGates::default(),
    };
    let (model, skipped) = build_model(&state, &mc);
    for sk in skipped {
        eprintln!("warning: Service {}: skipped: {}", sk.service, sk.reason);
    }
    let cfg = renderer_config(s, family)?;
    match mode {
        Mode::Nftables => {
            let desired = twill_proxy_nftables::render(&cfg, &model);
            print!("{}", twill_proxy_nftables::full_script(&desired, None));
            return Ok(ExitCode::SUCCESS);
        }
        Mode::Userspace => {
            let ucfg = cfg.clone();
            let plan = twill_proxy_userspace::plan_listeners(&ucfg, &model);
            print!("{}", twill_proxy_userspace::preview(&ucfg, &plan));
            return Ok(ExitCode::SUCCESS);
        }
        Mode::Ipvs => {
            let mut icfg = cfg.clone();
            icfg.scheduler = twill_proxy_ipvs::Scheduler::parse(&a.ipvs_scheduler)
                .with_context(|| format!("--ipvs-scheduler {:?}", a.ipvs_scheduler))?;
            print!("{}", twill_proxy_ipvs::render_text(&icfg, &model));
            return Ok(ExitCode::SUCCESS);
        }
        Mode::Iptables => {}
    }
    print!(
        "{}",
        render(&cfg, &model, SyncMode::Full { existing: None }).text
    );
    Ok(ExitCode::SUCCESS)
}

/// Run every `*.json` case file: expected text per fixture, and every flow traced
/// through the rendered rules and, unless `--trace-only` (or not root), sent through a
/// real kernel in network namespaces.
pub fn run_conformance(a: ConformanceArgs) -> anyhow::Result<ExitCode> {
    match a.mode {
        Mode::Iptables => {}
        Mode::Nftables => return run_conformance_nft(&a),
        Mode::Userspace | Mode::Ipvs => return run_conformance_other(&a),
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&a.dir)
        .with_context(|| format!("reading {}", a.dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let kernel = !a.trace_only
        && twill_conformance::proxy::flows::available()
            .map_err(|why| eprintln!("note: real-kernel flows skipped: {why}"))
            .is_ok();
    let (mut passed, mut failed) = (0usize, 0usize);
    for path in files {
        let file = path.display().to_string();
        let parsed = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read: {e}"))
            .and_then(|t| corpus::parse_case_file(&file, &t).map_err(|e| e.to_string()));
        let case = match parsed {
            Ok(c) => c,
            Err(e) => {
                failed += 1;
                println!("FAIL {file}: {e}");
                continue;
            }
        };
        for fx in &case.fixtures {
            let (p, f) = run_fixture(&file, fx, kernel);
            passed += p;
            failed += f;
        }
    }
    Ok(super::conformance::summary(passed, failed))
}

/// The case files of `dir` (`*.json`, sorted).
fn case_files(dir: &PathBuf) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    Ok(files)
}

/// nftables mode: every flow through a real kernel whose node namespace holds the
/// rendered `kube-proxy` table, plus the fixture's `nftables` lines where it states
/// them. Flows needing what the mode lacks are reported `skipped: …` and not counted.
fn run_conformance_nft(a: &ConformanceArgs) -> anyhow::Result<ExitCode> {
    use twill_conformance::proxy::flows::{self as lab, Mode as LabMode};
    let kernel = if a.trace_only {
        Err("--trace-only (nftables mode has no rule tracer)".to_string())
    } else {
        lab::available_for(LabMode::Nftables)
    };
    let (mut passed, mut failed, mut skipped) = (0usize, 0usize, 0usize);
    for path in case_files(&a.dir)? {
        let file = path.display().to_string();
        let parsed = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read: {e}"))
            .and_then(|t| corpus::parse_case_file(&file, &t).map_err(|e| e.to_string()));
        let case = match parsed {
            Ok(c) => c,
            Err(e) => {
                failed += 1;
                println!("FAIL {file}: {e}");
                continue;
            }
        };
        for fx in &case.fixtures {
            if let Err(e) = fx.prepare(false) {
                println!("FAIL {file} [{}]: {e}", fx.name);
                failed += 1 + fx.flows.len();
                continue;
            }
            if let Err(why) = &kernel {
                skipped += fx.flows.len();
                println!("skipped: {file} [{}]: real-kernel flows: {why}", fx.name);
                continue;
            }
            let run = lab::run_fixture_mode(fx, LabMode::Nftables);
            if let Some(problems) = run.nftables {
                if problems.is_empty() {
                    passed += 1;
                } else {
                    failed += 1;
                    for p in problems {
                        println!("FAIL {file} [{}] nftables: {p}", fx.name);
                    }
                }
            }
            for (flow, o) in fx.flows.iter().zip(run.flows) {
                record(&file, fx, flow, o, (&mut passed, &mut failed, &mut skipped));
            }
        }
    }
    println!("{skipped} skipped");
    Ok(super::conformance::summary(passed, failed))
}

/// Count one flow's outcome into (passed, failed, skipped) and print a line for a
/// failure or a skip, the same way for every mode.
fn record(
    file: &str,
    fx: &Fixture,
    flow: &twill_conformance::proxy::corpus::Flow,
    o: FlowOutcome,
    (passed, failed, skipped): (&mut usize, &mut usize, &mut usize),
) {
    match o {
        FlowOutcome::Passed => *passed += 1,
        FlowOutcome::Failed(e) => {
            *failed += 1;
            println!("FAIL {file} [{}] flow {:?}: {e}", fx.name, flow.name);
        }
        FlowOutcome::Skipped(why) => {
            *skipped += 1;
            println!("skipped: {file} [{}] flow {:?}: {why}", fx.name, flow.name);
        }
    }
}

/// userspace mode: every flow through real listeners in a node namespace; ipvs mode:
/// every flow judged against the plan (virtual and real servers, ipsets), the kernel
/// half reported as skipped with what this kernel lacks.
fn run_conformance_other(a: &ConformanceArgs) -> anyhow::Result<ExitCode> {
    let kernel: Result<(), String> = match a.mode {
        Mode::Userspace if a.trace_only => Err("--trace-only".into()),
        Mode::Userspace => twill_conformance::proxy::flows::available(),
        _ => twill_proxy_ipvs::check_kernel().map_err(|m| m.to_string()),
    };
    if a.mode == Mode::Ipvs
        && let Err(why) = &kernel
    {
        println!("skipped: the kernel half of every fixture (applying the plan): {why}");
    }
    let (mut passed, mut failed, mut skipped) = (0usize, 0usize, 0usize);
    for path in case_files(&a.dir)? {
        let file = path.display().to_string();
        let parsed = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read: {e}"))
            .and_then(|t| corpus::parse_case_file(&file, &t).map_err(|e| e.to_string()));
        let case = match parsed {
            Ok(c) => c,
            Err(e) => {
                failed += 1;
                println!("FAIL {file}: {e}");
                continue;
            }
        };
        for fx in &case.fixtures {
            let outcomes: Vec<FlowOutcome> = match a.mode {
                Mode::Userspace => match &kernel {
                    Err(why) => fx
                        .flows
                        .iter()
                        .map(|_| FlowOutcome::Skipped(format!("real-kernel flows: {why}")))
                        .collect(),
                    Ok(()) => twill_conformance::proxy::userspace::run_fixture(fx)
                        .into_iter()
                        .collect(),
                },
                _ => twill_conformance::proxy::ipvs::run_fixture_plan(fx, kernel.clone())
                    .flows
                    .into_iter()
                    .collect(),
            };
            for (flow, o) in fx.flows.iter().zip(outcomes) {
                record(&file, fx, flow, o, (&mut passed, &mut failed, &mut skipped));
            }
        }
    }
    println!("{skipped} skipped");
    Ok(super::conformance::summary(passed, failed))
}

fn run_fixture(file: &str, fx: &Fixture, kernel: bool) -> (usize, usize) {
    let (mut passed, mut failed) = (0, 0);
    let prepared = match fx.prepare(true) {
        Ok(p) => p,
        Err(e) => {
            println!("FAIL {file} [{}]: {e}", fx.name);
            return (0, 1 + fx.flows.len());
        }
    };
    let rendered = prepared.render();
    if let Some(problems) = corpus::check_text(fx, &rendered) {
        if problems.is_empty() {
            passed += 1;
        } else {
            failed += 1;
            for p in problems {
                println!("FAIL {file} [{}] rules: {p}", fx.name);
            }
        }
    }
    let tracer = match Tracer::new(&rendered.text, &prepared.local_addresses) {
        Ok(t) => t,
        Err(e) => {
            println!(
                "FAIL {file} [{}]: rendered rules do not parse: {e}",
                fx.name
            );
            return (passed, failed + fx.flows.len());
        }
    };
    let mut results: Vec<Result<(), String>> = fx
        .flows
        .iter()
        .map(|f| corpus::check_flow_traced(f, &tracer).map_err(|e| format!("traced: {e}")))
        .collect();
    if kernel {
        let outcomes = twill_conformance::proxy::flows::run_fixture(fx);
        for (r, k) in results.iter_mut().zip(outcomes) {
            if r.is_ok()
                && let Err(e) = k
            {
                *r = Err(format!("kernel: {e}"));
            }
        }
    }
    for (flow, r) in fx.flows.iter().zip(results) {
        match r {
            Ok(()) => passed += 1,
            Err(e) => {
                failed += 1;
                println!("FAIL {file} [{}] flow {:?}: {e}", fx.name, flow.name);
            }
        }
    }
    (passed, failed)
}

#[cfg(test)]
mod tests {
    use super::{DaemonArgs, Mode, Settings, apply_config_file, parse_duration};
    use std::time::Duration;

    #[test]
    fn kube_proxy_configuration_fills_unset_flags_and_flags_win() {
        let file = |text: &str| twill_agent::kube_proxy_config::parse(text).unwrap();
        let mut s = Settings {
            mode: None,
            cluster_cidr: None,
            node: Some("from-flag".into()),
            node_ips: vec![],
            masquerade_all: false,
            nodeport_addresses: vec![],
            ip_family: "IPv4".into(),
        };
        let mut d = DaemonArgs {
            cleanup: false,
            files: vec![],
            tuning: Default::default(),
            sync_period: None,
            min_sync_period: None,
            healthz_bind_address: None,
            metrics_bind_address: None,
            once: true,
            iptables_backend: super::Backend::System,
        };
        apply_config_file(
            &file(
                "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: iptables\n\
                 clusterCIDR: 10.244.0.0/16\nhostnameOverride: node-a\nnodePortAddresses: [192.168.0.0/24]\n\
                 bindAddress: 192.168.0.7\n\
                 iptables:\n  masqueradeAll: true\n  syncPeriod: 1m\n  minSyncPeriod: 2s\n",
            ),
            &mut s,
            &mut d,
        );
        assert_eq!(s.cluster_cidr.as_deref(), Some("10.244.0.0/16"));
        assert_eq!(s.node.as_deref(), Some("from-flag"), "the flag wins");
        assert_eq!(
            s.node_ips,
            ["192.168.0.7".parse::<std::net::IpAddr>().unwrap()]
        );
        assert!(s.masquerade_all);
        assert_eq!(s.nodeport_addresses, ["192.168.0.0/24"]);
        assert_eq!(
            parse_duration(d.sync_period.as_deref().unwrap()).unwrap(),
            Duration::from_secs(60)
        );
        assert_eq!(
            parse_duration(d.min_sync_period.as_deref().unwrap()).unwrap(),
            Duration::from_secs(2)
        );
        assert_eq!(s.mode, Some(Mode::Iptables));
        apply_config_file(
            &file("kind: KubeProxyConfiguration\nmode: nftables\n"),
            &mut s,
            &mut d,
        );
        assert_eq!(s.mode, Some(Mode::Iptables), "a mode already chosen wins");
        s.mode = None;
        d.sync_period = None;
        apply_config_file(
            &file("kind: KubeProxyConfiguration\nmode: nftables\nnftables:\n  syncPeriod: 1h\n"),
            &mut s,
            &mut d,
        );
        assert_eq!(s.mode, Some(Mode::Nftables), "the file's mode is taken");
        assert_eq!(
            parse_duration(d.sync_period.as_deref().unwrap()).unwrap(),
            Duration::from_secs(3600),
            "from the nftables section"
        );
        assert!(
            twill_agent::kube_proxy_config::parse("kind: KubeProxyConfiguration\nmode: bogus\n")
                .is_err(),
            "an unknown mode is refused"
        );
    }

    #[test]
    fn durations_take_kube_proxy_spellings() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("3x").is_err());
    }
}
