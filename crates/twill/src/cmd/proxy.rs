//! `twill proxy` (kube-proxy's job, iptables or nftables mode), `twill proxy rules`, and
//! `twill conformance proxy DIR [--mode …]`. userspace and ipvs have a dispatch point
//! that says they are not built into this binary.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use twill_model::{ClusterState, IpFamily};
use twill_proxy::corpus::{self, Fixture};
use twill_proxy_core::{FeatureGates, ModelConfig, ProxyModel, build_model};
use twill_proxy_iptables::trace::Tracer;
use twill_proxy_iptables::{Config, LocalDetector, SyncMode, render};

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
    /// Manifests to take cluster state from (standalone mode); re-read when they change.
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<String>,
    /// A KubeProxyConfiguration YAML (flags given on the command line win).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Full resync period (`30s`, `1m`).
    #[arg(long)]
    pub sync_period: Option<String>,
    /// Minimum time between syncs.
    #[arg(long)]
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

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    System,
    Legacy,
    Nft,
}

#[derive(clap::Subcommand)]
pub enum Command {
    /// Print the iptables-restore input the proxy would write for these manifests
    /// (Services and EndpointSlices, e.g. from `kubectl get -o yaml`). Needs no root.
    Rules(RulesArgs),
}

/// kube-proxy's modes. ipvs is planning only: it says what the kernel lacks (or that
/// the applier is not built) instead of running.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Iptables,
    Nftables,
    Userspace,
    Ipvs,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Iptables => "iptables",
            Mode::Nftables => "nftables",
            Mode::Userspace => "userspace",
            Mode::Ipvs => "ipvs",
        }
    }
    fn parse(s: &str) -> Option<Mode> {
        [Mode::Iptables, Mode::Nftables, Mode::Userspace, Mode::Ipvs]
            .into_iter()
            .find(|m| m.name() == s)
    }
}

/// kube-proxy's main settings, shared by the daemon and `rules`.
#[derive(clap::Args, Clone, Debug)]
pub struct Settings {
    /// Proxy mode (default iptables, or the config file's `mode`).
    #[arg(long, value_enum, global = true)]
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
    /// CIDRs whose local addresses accept NodePorts (comma separated); default all.
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

/// `30s`, `1m`, `1m30s`, `500ms`, `2h`.
pub(crate) fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let mut total = Duration::ZERO;
    let mut num = String::new();
    let mut chars = s.trim().chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let mut unit = c.to_string();
        if c == 'm' && chars.peek() == Some(&'s') {
            unit.push(chars.next().unwrap_or('s'));
        }
        let n: f64 = num.parse().with_context(|| format!("duration {s:?}"))?;
        num.clear();
        let secs = match unit.as_str() {
            "h" => n * 3600.0,
            "m" => n * 60.0,
            "s" => n,
            "ms" => n / 1000.0,
            _ => anyhow::bail!("duration {s:?}: unknown unit {unit:?}"),
        };
        total += Duration::from_secs_f64(secs);
        any = true;
    }
    if !num.is_empty() {
        anyhow::bail!("duration {s:?}: missing unit");
    }
    if !any {
        anyhow::bail!("duration {s:?} is empty");
    }
    Ok(total)
}

/// The KubeProxyConfiguration fields Twill supports, folded into the flags (flags win).
fn apply_config_file(path: &PathBuf, s: &mut Settings, d: &mut DaemonArgs) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value =
        serde_saphyr::from_str(&text).with_context(|| format!("{}: not YAML", path.display()))?;
    let kind = v.get("kind").and_then(|k| k.as_str()).unwrap_or("");
    if kind != "KubeProxyConfiguration" {
        anyhow::bail!(
            "{}: kind is {kind:?}, expected KubeProxyConfiguration",
            path.display()
        );
    }
    let st = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    if let Some(m) = st("mode").filter(|m| !m.is_empty()) {
        let Some(mode) = Mode::parse(&m) else {
            anyhow::bail!("{}: mode {m:?} is not a kube-proxy mode", path.display());
        };
        // A mode given on the command line wins over the file's.
        if s.mode.is_none() {
            s.mode = Some(mode);
        }
    }
    // Sync periods and masqueradeAll live in the section of the mode in use.
    let ipt = match s.mode {
        Some(Mode::Nftables) => v.get("nftables").or_else(|| v.get("iptables")),
        _ => v.get("iptables"),
    };
    let ist = |k: &str| {
        ipt.and_then(|i| i.get(k))
            .and_then(|x| x.as_str())
            .map(str::to_string)
    };
    if s.cluster_cidr.is_none() {
        s.cluster_cidr = st("clusterCIDR").filter(|c| !c.is_empty());
    }
    if s.node.is_none() {
        s.node = st("hostnameOverride").filter(|c| !c.is_empty());
    }
    if !s.masquerade_all {
        s.masquerade_all = ipt
            .and_then(|i| i.get("masqueradeAll"))
            .and_then(|x| x.as_bool())
            .unwrap_or(false);
    }
    if s.nodeport_addresses.is_empty()
        && let Some(list) = v.get("nodePortAddresses").and_then(|x| x.as_array())
    {
        s.nodeport_addresses = list
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect();
    }
    if d.sync_period.is_none() {
        d.sync_period = ist("syncPeriod");
    }
    if d.min_sync_period.is_none() {
        d.min_sync_period = ist("minSyncPeriod");
    }
    if d.healthz_bind_address.is_none() {
        d.healthz_bind_address = st("healthzBindAddress").and_then(|a| a.parse().ok());
    }
    if d.metrics_bind_address.is_none() {
        d.metrics_bind_address = st("metricsBindAddress").and_then(|a| a.parse().ok());
    }
    Ok(())
}

fn mtimes(files: &[String]) -> Vec<Option<SystemTime>> {
    files
        .iter()
        .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        .collect()
}

/// Load manifests; bad objects are skipped (the others keep working). Returns the state
/// and how many Services were rejected.
fn load_state(files: &[String]) -> anyhow::Result<(ClusterState, u64)> {
    let loaded = twill_manifest::files::load_paths(files);
    let mut bad_services = 0;
    for p in &loaded.problems {
        tracing::warn!("{p}");
        if p.severity == twill_manifest::Severity::Error
            && p.object
                .as_deref()
                .is_some_and(|o| o.starts_with("Service "))
        {
            bad_services += 1;
        }
    }
    Ok((
        ClusterState::from_objects(loaded.into_objects()),
        bad_services,
    ))
}

/// Load the manifests and keep only this node's proxy model of them.
///
/// The parse runs on a short-lived thread: glibc gives that thread its own malloc
/// arena, so the YAML documents, the Kubernetes objects and the cluster snapshot all
/// live and die there, and their pages go back to the kernel once the model (built in
/// the daemon's arena) is out. Parsed in the daemon's own arena, the survivors sat
/// scattered among freed pages: 300 MB RSS at 10k services for ~90 MB of live data.
fn load_model(files: &[String], proxier: &dyn ModeProxier) -> anyhow::Result<Arc<ProxyModel>> {
    let (state, bad) = std::thread::scope(|s| {
        s.spawn(|| load_state(files))
            .join()
            .map_err(|_| anyhow::anyhow!("manifest loading panicked"))
    })??;
    proxier.metrics().services_skipped.inc_by(bad);
    let model = proxier.model_of(&state);
    drop(state);
    twill_proxy::proxier::release_freed_memory();
    Ok(model)
}

fn run_daemon(mut s: Settings, mut d: DaemonArgs) -> anyhow::Result<ExitCode> {
    if let Some(path) = d.config.clone() {
        apply_config_file(&path, &mut s, &mut d)?;
    }
    let mode = s.mode.unwrap_or(Mode::Iptables);
    if mode == Mode::Ipvs {
        // Say exactly what this kernel lacks; with IPVS present, the applier is what is
        // missing (the planning and the netlink encoding exist, the kernel half does not).
        match twill_proxy_ipvs::check_kernel() {
            Err(missing) => anyhow::bail!("--mode ipvs cannot run here: {missing}"),
            Ok(()) => anyhow::bail!(
                "--mode ipvs: this kernel has IPVS, but Twill's ipvs applier is not built yet (`twill proxy rules --mode ipvs` shows the plan)"
            ),
        }
    }
    if d.files.is_empty() {
        anyhow::bail!(
            "standalone mode needs manifests: twill proxy -f MANIFESTS --hostname-override NODE"
        );
    }
    let family =
        IpFamily::parse(&s.ip_family).with_context(|| format!("--ip-family {:?}", s.ip_family))?;
    let node = s
        .node
        .clone()
        .context("--hostname-override (or --node) is required")?;
    let sync_period = parse_duration(d.sync_period.as_deref().unwrap_or("30s"))?;
    let min_sync_period = parse_duration(d.min_sync_period.as_deref().unwrap_or("1s"))?;
    let mut cfg = renderer_config(&s, family)?;
    let mc = ModelConfig {
        family,
        node_name: node,
        node_zone: None,
        gates: FeatureGates::default(),
    };
    let mut proxier: Box<dyn ModeProxier> = if mode == Mode::Userspace {
        Box::new(UserspaceMode::new(
            mc,
            twill_proxy_userspace::Config::from_iptables(&cfg),
        ))
    } else if mode == Mode::Nftables {
        // nftables mode has no localhost NodePorts (so no route_localnet), and picks
        // NodePort addresses from the namespace's own addresses.
        cfg.localhost_node_ports = false;
        for note in twill_proxy::proxier::apply_sysctls(&cfg) {
            tracing::info!("{note}");
        }
        let mut ncfg = corpus::nft_config(&cfg);
        ncfg.local_addresses = twill_proxy::nft_proxier::local_addresses(family);
        Box::new(twill_proxy::nft_proxier::NftProxier::new(
            mc,
            ncfg,
            sync_period,
            twill_proxy::nft_proxier::NftKernel,
        ))
    } else {
        for note in twill_proxy::proxier::apply_sysctls(&cfg) {
            tracing::info!("{note}");
        }
        Box::new(twill_proxy::Proxier::new(
            mc,
            cfg,
            sync_period,
            twill_proxy::Kernel::new(match d.iptables_backend {
                Backend::System => twill_proxy::Variant::System,
                Backend::Legacy => twill_proxy::Variant::Legacy,
                Backend::Nft => twill_proxy::Variant::Nft,
            }),
        ))
    };
    let shared: twill_proxy::http::Shared = Default::default();
    shared.lock().unwrap_or_else(|p| p.into_inner()).sync_period = sync_period;
    if !d.once {
        let hz = d
            .healthz_bind_address
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 10256)));
        let mx = d
            .metrics_bind_address
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 10249)));
        twill_proxy::http::serve(hz, shared.clone())
            .with_context(|| format!("listening on {hz}"))?;
        twill_proxy::http::serve(mx, shared.clone())
            .with_context(|| format!("listening on {mx}"))?;
    }
    let mut health_ports = std::collections::BTreeSet::new();
    let mut seen = mtimes(&d.files);
    let mut model = load_model(&d.files, proxier.as_ref())?;
    let mut changed_at: Option<SystemTime> = None;
    loop {
        match proxier.sync_model(model.clone(), Instant::now()) {
            Ok(true) => {
                if let Some(t) = changed_at.take()
                    && let Ok(lat) = SystemTime::now().duration_since(t)
                {
                    proxier
                        .metrics()
                        .network_programming_duration
                        .observe(lat.as_secs_f64());
                }
            }
            Ok(false) => {}
            Err(e) => {
                tracing::error!("{e}");
                if d.once {
                    return Err(e);
                }
            }
        }
        if d.once {
            return Ok(ExitCode::SUCCESS);
        }
        {
            let mut st = shared.lock().unwrap_or_else(|p| p.into_inner());
            st.last_success = proxier.last_success();
            st.metrics_text = proxier.metrics().encode();
            st.service_health.clear();
            if let Some(m) = proxier.synced_model() {
                for (name, svc) in &m.services {
                    if let Some(port) = svc.health_check_node_port {
                        let local = m
                            .endpoints_of(name)
                            .iter()
                            .filter(|e| e.is_local && e.ready)
                            .count();
                        let e = st.service_health.entry(port).or_insert((
                            name.service.namespace.clone(),
                            name.service.name.clone(),
                            0,
                        ));
                        e.2 = e.2.max(local);
                    }
                }
            }
            for port in st.service_health.keys() {
                if health_ports.insert(*port)
                    && let Err(e) = twill_proxy::http::serve_service_health(*port, shared.clone())
                {
                    tracing::warn!(port, "health check node port: {e}");
                }
            }
        }
        std::thread::sleep(min_sync_period);
        let now = mtimes(&d.files);
        if now != seen {
            seen = now;
            changed_at = seen.iter().flatten().max().copied();
            // The old model goes first: the tracker's copy stays until the next sync.
            drop(model);
            model = load_model(&d.files, proxier.as_ref())?;
        }
    }
}

/// What the daemon loop needs from a mode's proxier.
pub(crate) trait ModeProxier {
    /// Who the proxier models the cluster for.
    fn model_config(&self) -> &ModelConfig;
    /// Sync a model built with [`Self::model_config`]; `true` when something was
    /// written. The same `Arc` again only writes when a full sync is due.
    fn sync_model(&mut self, model: Arc<ProxyModel>, now: Instant) -> anyhow::Result<bool>;
    fn metrics(&self) -> &twill_proxy::metrics::Metrics;
    fn synced_model(&self) -> Option<&ProxyModel>;
    fn last_success(&self) -> Option<Instant>;

    /// This node's model of `state`; skipped services are logged and counted.
    fn model_of(&self, state: &ClusterState) -> Arc<ProxyModel> {
        twill_proxy::metrics::node_model(state, self.model_config(), self.metrics()).0
    }

    /// Build this node's model of `state` and sync it.
    fn sync_state(&mut self, state: &ClusterState, now: Instant) -> anyhow::Result<bool> {
        let model = self.model_of(state);
        self.sync_model(model, now)
    }
}

impl ModeProxier for twill_proxy::Proxier<twill_proxy::Kernel> {
    fn model_config(&self) -> &ModelConfig {
        &self.model_config
    }
    fn sync_model(&mut self, model: Arc<ProxyModel>, now: Instant) -> anyhow::Result<bool> {
        let r = twill_proxy::Proxier::sync_model(self, model, now)?;
        tracing::debug!(?r, "sync");
        Ok(r.is_some())
    }
    fn metrics(&self) -> &twill_proxy::metrics::Metrics {
        &self.metrics
    }
    fn synced_model(&self) -> Option<&ProxyModel> {
        twill_proxy::Proxier::synced_model(self)
    }
    fn last_success(&self) -> Option<Instant> {
        twill_proxy::Proxier::last_success(self)
    }
}

impl ModeProxier for twill_proxy::nft_proxier::NftProxier<twill_proxy::nft_proxier::NftKernel> {
    fn model_config(&self) -> &ModelConfig {
        twill_proxy::nft_proxier::NftProxier::model_config(self)
    }
    fn sync_model(&mut self, model: Arc<ProxyModel>, now: Instant) -> anyhow::Result<bool> {
        let r = twill_proxy::nft_proxier::NftProxier::sync_model(self, model, now)?;
        tracing::debug!(?r, "sync");
        Ok(r.is_some())
    }
    fn metrics(&self) -> &twill_proxy::metrics::Metrics {
        &self.metrics
    }
    fn synced_model(&self) -> Option<&ProxyModel> {
        twill_proxy::nft_proxier::NftProxier::synced_model(self)
    }
    fn last_success(&self) -> Option<Instant> {
        twill_proxy::nft_proxier::NftProxier::last_success(self)
    }
}

fn renderer_config(s: &Settings, family: IpFamily) -> anyhow::Result<Config> {
    proxy_config(
        family,
        s.cluster_cidr.as_deref(),
        &s.node_ips,
        s.masquerade_all,
        &s.nodeport_addresses,
    )
}

/// The iptables renderer's settings from kube-proxy's flags (shared with `twill agent`):
/// the cluster CIDR drives the local-traffic detector, node IPs of other families are
/// dropped, and flag values are named in errors.
pub(crate) fn proxy_config(
    family: IpFamily,
    cluster_cidr: Option<&str>,
    node_ips: &[IpAddr],
    masquerade_all: bool,
    nodeport_addresses: &[String],
) -> anyhow::Result<Config> {
    let detector = match cluster_cidr {
        Some(c) => LocalDetector::ClusterCidr(
            twill_model::parse_net_lenient(c)
                .with_context(|| format!("--cluster-cidr {c:?} is not a CIDR"))?
                .trunc(),
        ),
        None => LocalDetector::None,
    };
    let node_ips: Vec<IpAddr> = node_ips
        .iter()
        .copied()
        .filter(|ip| IpFamily::of(ip) == family)
        .collect();
    let mut cfg = Config::new(family, node_ips, detector);
    cfg.masquerade_all = masquerade_all;
    for n in nodeport_addresses {
        cfg.node_port_addresses.push(
            twill_model::parse_net_lenient(n)
                .with_context(|| format!("--nodeport-addresses {n:?} is not a CIDR"))?
                .trunc(),
        );
    }
    Ok(cfg)
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
            let desired = twill_proxy_nftables::render(&corpus::nft_config(&cfg), &model);
            print!("{}", twill_proxy_nftables::full_script(&desired, None));
            return Ok(ExitCode::SUCCESS);
        }
        Mode::Userspace => {
            let ucfg = twill_proxy_userspace::Config::from_iptables(&cfg);
            let plan = twill_proxy_userspace::plan_listeners(&ucfg, &model);
            print!("{}", twill_proxy_userspace::preview(&ucfg, &plan));
            return Ok(ExitCode::SUCCESS);
        }
        Mode::Ipvs => {
            let mut icfg = twill_proxy_ipvs::Config::from_iptables(&cfg);
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
        && twill_proxy::lab::available()
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
    use twill_proxy::lab::{self, FlowOutcome, Mode as LabMode};
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
                let o = match o {
                    FlowOutcome::Passed => Outcome::Pass,
                    FlowOutcome::Failed(e) => Outcome::Fail(e),
                    FlowOutcome::Skipped(why) => Outcome::Skip(why),
                };
                record(&file, fx, flow, o, (&mut passed, &mut failed, &mut skipped));
            }
        }
    }
    println!("{skipped} skipped");
    Ok(super::conformance::summary(passed, failed))
}

/// A flow's result in the nftables, userspace and ipvs runners.
enum Outcome {
    Pass,
    Fail(String),
    Skip(String),
}

/// Count one flow's outcome into (passed, failed, skipped) and print a line for a
/// failure or a skip, the same way for every mode.
fn record(
    file: &str,
    fx: &Fixture,
    flow: &twill_proxy::corpus::Flow,
    o: Outcome,
    (passed, failed, skipped): (&mut usize, &mut usize, &mut usize),
) {
    match o {
        Outcome::Pass => *passed += 1,
        Outcome::Fail(e) => {
            *failed += 1;
            println!("FAIL {file} [{}] flow {:?}: {e}", fx.name, flow.name);
        }
        Outcome::Skip(why) => {
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
        Mode::Userspace => twill_proxy::lab::available(),
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
            let outcomes: Vec<Outcome> = match a.mode {
                Mode::Userspace => match &kernel {
                    Err(why) => fx
                        .flows
                        .iter()
                        .map(|_| Outcome::Skip(format!("real-kernel flows: {why}")))
                        .collect(),
                    Ok(()) => twill_proxy_userspace::flows::run_fixture(fx)
                        .into_iter()
                        .map(|o| {
                            use twill_proxy_userspace::flows::FlowOutcome as F;
                            match o {
                                F::Pass => Outcome::Pass,
                                F::Fail(e) => Outcome::Fail(e),
                                F::Skip(w) => Outcome::Skip(w),
                            }
                        })
                        .collect(),
                },
                _ => twill_proxy_ipvs::conformance::run_fixture_plan(fx, kernel.clone())
                    .flows
                    .into_iter()
                    .map(|o| {
                        use twill_proxy_ipvs::conformance::FlowOutcome as F;
                        match o {
                            F::Pass => Outcome::Pass,
                            F::Fail(e) => Outcome::Fail(e),
                            F::Skip(w) => Outcome::Skip(w),
                        }
                    })
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

/// The userspace proxier behind the daemon loop: it syncs models, not states.
struct UserspaceMode {
    mc: ModelConfig,
    proxier: twill_proxy_userspace::Proxier,
    metrics: twill_proxy::metrics::Metrics,
    model: Option<Arc<ProxyModel>>,
    last_success: Option<Instant>,
}

impl UserspaceMode {
    fn new(mc: ModelConfig, cfg: twill_proxy_userspace::Config) -> Self {
        UserspaceMode {
            mc,
            proxier: twill_proxy_userspace::Proxier::new(
                cfg,
                twill_proxy_userspace::Options::default(),
            ),
            metrics: twill_proxy::metrics::Metrics::new(),
            model: None,
            last_success: None,
        }
    }
}

impl ModeProxier for UserspaceMode {
    fn model_config(&self) -> &ModelConfig {
        &self.mc
    }
    fn sync_model(&mut self, model: Arc<ProxyModel>, now: Instant) -> anyhow::Result<bool> {
        if self.model.as_ref() == Some(&model) {
            return Ok(false);
        }
        let started = Instant::now();
        let r = self.proxier.sync(&model)?;
        self.metrics
            .sync_duration
            .observe(started.elapsed().as_secs_f64());
        tracing::info!(?r, "userspace sync");
        self.model = Some(model);
        self.last_success = Some(now);
        Ok(true)
    }
    fn metrics(&self) -> &twill_proxy::metrics::Metrics {
        &self.metrics
    }
    fn synced_model(&self) -> Option<&ProxyModel> {
        self.model.as_deref()
    }
    fn last_success(&self) -> Option<Instant> {
        self.last_success
    }
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
        let outcomes = twill_proxy::lab::run_fixture(fx);
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
        let dir = std::env::temp_dir().join(format!("twill-proxy-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("kp.yaml");
        std::fs::write(
            &path,
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: iptables\n\
             clusterCIDR: 10.244.0.0/16\nhostnameOverride: node-a\nnodePortAddresses: [192.168.0.0/24]\n\
             iptables:\n  masqueradeAll: true\n  syncPeriod: 1m\n  minSyncPeriod: 2s\n",
        )
        .unwrap();
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
            files: vec![],
            config: None,
            sync_period: None,
            min_sync_period: None,
            healthz_bind_address: None,
            metrics_bind_address: None,
            once: true,
            iptables_backend: super::Backend::System,
        };
        apply_config_file(&path, &mut s, &mut d).unwrap();
        assert_eq!(s.cluster_cidr.as_deref(), Some("10.244.0.0/16"));
        assert_eq!(s.node.as_deref(), Some("from-flag"), "the flag wins");
        assert!(s.masquerade_all);
        assert_eq!(s.nodeport_addresses, ["192.168.0.0/24"]);
        assert_eq!(d.sync_period.as_deref(), Some("1m"));
        assert_eq!(d.min_sync_period.as_deref(), Some("2s"));
        assert_eq!(s.mode, Some(Mode::Iptables));
        std::fs::write(&path, "kind: KubeProxyConfiguration\nmode: nftables\n").unwrap();
        apply_config_file(&path, &mut s, &mut d).unwrap();
        assert_eq!(s.mode, Some(Mode::Iptables), "a mode already chosen wins");
        s.mode = None;
        d.sync_period = None;
        std::fs::write(
            &path,
            "kind: KubeProxyConfiguration\nmode: nftables\nnftables:\n  syncPeriod: 1h\n",
        )
        .unwrap();
        apply_config_file(&path, &mut s, &mut d).unwrap();
        assert_eq!(s.mode, Some(Mode::Nftables), "the file's mode is taken");
        assert_eq!(
            d.sync_period.as_deref(),
            Some("1h"),
            "from the nftables section"
        );
        std::fs::write(&path, "kind: KubeProxyConfiguration\nmode: bogus\n").unwrap();
        assert!(
            apply_config_file(&path, &mut s, &mut d).is_err(),
            "an unknown mode is refused"
        );
        let _ = std::fs::remove_dir_all(&dir);
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
