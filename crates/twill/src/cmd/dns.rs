//! `twill dns` (the cluster DNS server, CoreDNS's job), `twill dns resolvconf` (the file
//! kubelet would give a pod), and `twill conformance dns DIR`.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use twill_conformance::dns::{self as corpus, CaseRecord};
use twill_dns::resolvconf::{KubeletDns, pod_resolv_conf};
use twill_dns::{Config, PodMode, Snapshot};
use twill_dns_server::forward::upstreams_from_resolv_conf;
use twill_dns_server::{
    Cache, CacheConfig, Engine, ForwardConfig, Forwarder, Metrics, Policy, ServerConfig,
};
use twill_model::{ClusterState, Object};

use crate::cmd::conformance::summary;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: Box<ServeArgs>,
}

#[derive(clap::Subcommand)]
pub enum Command {
    /// Print the resolv.conf kubelet would give a pod (every dnsPolicy, dnsConfig merge,
    /// limits); warning events go to stderr.
    Resolvconf(ResolvconfArgs),
}

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Cluster domain served authoritatively.
    #[arg(long, default_value = "cluster.local")]
    pub zone: String,
    /// Address to serve DNS on, UDP and TCP (repeatable).
    #[arg(long, default_value = "0.0.0.0:53")]
    pub listen: Vec<SocketAddr>,
    /// Manifests with Namespaces, Services, EndpointSlices and Pods (repeatable; `-` for stdin).
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<String>,
    /// Where cluster state comes from: `manifests` (`-f`) or `kube` (the API server:
    /// `--kubeconfig`, `KUBECONFIG`, `~/.kube/config`, then the pod's service account).
    /// From the API, cluster names answer SERVFAIL until every initial list is in.
    #[arg(long, value_enum, default_value = "manifests")]
    pub source: Source,
    /// kubeconfig for `--source kube` (implies it).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Use the pod's service account (implies `--source kube`; what CoreDNS's
    /// `kubernetes` plugin does with no kubeconfig).
    #[arg(long)]
    pub in_cluster: bool,
    /// Reverse zones served authoritatively (e.g. `in-addr.arpa`, `ip6.arpa`, `0.10.in-addr.arpa`).
    #[arg(long = "reverse-zone")]
    pub reverse_zones: Vec<String>,
    /// Pod records (CoreDNS's `pods`).
    #[arg(long, value_enum, default_value = "disabled")]
    pub pods: PodsArg,
    /// TTL of synthesised records.
    #[arg(long, default_value_t = 5)]
    pub ttl: u32,
    /// Name hostname-less endpoints after their pod (`endpoint_pod_names`).
    #[arg(long)]
    pub endpoint_pod_names: bool,
    /// Only expose these namespaces (repeatable; default all).
    #[arg(long = "namespace")]
    pub namespaces: Vec<String>,
    /// Services without ready endpoints are NXDOMAIN (`ignore empty_service`).
    #[arg(long)]
    pub ignore_empty_service: bool,
    /// Forward NXDOMAIN in these zones upstream instead (`fallthrough`; no value = all zones).
    #[arg(long, num_args = 0..)]
    pub fallthrough: Option<Vec<String>>,
    /// This server's own addresses (the apex NS names the services they back).
    #[arg(long = "server-ip")]
    pub server_ips: Vec<IpAddr>,
    /// Upstream resolvers (`IP` or `IP:PORT`, repeatable). Default: the nameservers of
    /// --upstream-resolv-conf.
    #[arg(long = "upstream")]
    pub upstreams: Vec<String>,
    /// resolv.conf to take upstreams from when --upstream is not given.
    #[arg(long, default_value = "/etc/resolv.conf")]
    pub upstream_resolv_conf: PathBuf,
    /// Upstream choice (CoreDNS's `forward` policy).
    #[arg(long, value_enum, default_value = "random")]
    pub policy: PolicyArg,
    /// Forwarded queries in flight before new ones are refused at once (REFUSED, as
    /// CoreDNS's `forward` does; counted in coredns_forward_max_concurrent_rejects_total).
    #[arg(long, default_value_t = 1000)]
    pub max_concurrent: usize,
    /// Cache capacity for positive upstream answers (0 disables).
    #[arg(long, default_value_t = 9984)]
    pub cache_success: usize,
    /// Cache capacity for upstream denials (0 disables).
    #[arg(long, default_value_t = 9984)]
    pub cache_denial: usize,
    /// Longest TTL a cached positive answer keeps.
    #[arg(long, default_value_t = 3600)]
    pub cache_max_ttl: u32,
    /// Longest TTL a cached denial keeps.
    #[arg(long, default_value_t = 1800)]
    pub cache_denial_ttl: u32,
    /// Answers each UDP worker keeps ready to send (request bytes → response bytes, for
    /// the current snapshot); 0 disables this cache.
    #[arg(long, default_value_t = 8192)]
    pub answer_cache: usize,
    /// UDP worker threads per listen address (default: one per CPU).
    #[arg(long)]
    pub workers: Option<usize>,
    /// `/health` address (also serves /ready and /metrics).
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub health: SocketAddr,
    /// `/ready` address.
    #[arg(long, default_value = "0.0.0.0:8181")]
    pub ready: SocketAddr,
    /// `/metrics` address.
    #[arg(long, default_value = "0.0.0.0:9153")]
    pub metrics: SocketAddr,
    /// Do not send the forwarding-loop probe.
    #[arg(long)]
    pub no_loop_check: bool,
    /// Answer nothing outside the cluster zones (no upstreams; what a Corefile without
    /// `forward` asks).
    #[arg(long)]
    pub no_forward: bool,
    /// How often an upstream marked down is checked (`forward`'s `health_check`).
    #[arg(long, default_value = "500ms")]
    pub health_check: String,
    /// Failed exchanges before an upstream counts as down (`forward`'s `max_fails`).
    #[arg(long, default_value_t = 2)]
    pub max_fails: u32,
    /// A, AAAA and MX answers in random order (CoreDNS's `loadbalance`).
    #[arg(long)]
    pub loadbalance: bool,
    /// On SIGTERM, stay up this long answering queries with /ready failing, so the
    /// Service stops sending here first (`health`'s `lameduck`; `5s`).
    #[arg(long)]
    pub lameduck: Option<String>,
    /// A CoreDNS Corefile to take the settings from (kubeadm's default loads unchanged);
    /// what it names replaces the flags. Plugins Twill does not implement are errors
    /// naming the line.
    #[arg(long, value_name = "PATH")]
    pub corefile: Option<PathBuf>,
}

/// `host:port`, `:port` (all interfaces) or empty (`default`), as CoreDNS's plugins
/// take addresses.
fn plugin_addr(field: &str, s: &str, default: SocketAddr) -> anyhow::Result<SocketAddr> {
    if s.is_empty() {
        return Ok(default);
    }
    let s = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_string()
    };
    s.parse()
        .with_context(|| format!("{field} {s:?}: not an address (HOST:PORT or :PORT)"))
}

/// Fold a Corefile into the flags: what it names replaces them.
pub(crate) fn apply_corefile(path: &Path, a: &mut ServeArgs) -> anyhow::Result<()> {
    use twill_dns::corefile;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let s = corefile::parse(&text)
        .and_then(|b| corefile::interpret(&b))
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    for n in &s.notes {
        tracing::warn!(file = %path.display(), "{n}");
    }
    a.listen = vec![
        SocketAddr::from(([0, 0, 0, 0], s.port)),
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, s.port)),
    ];
    let k = s.kubernetes.with_context(|| {
        format!(
            "{}: no `kubernetes` plugin: Twill's DNS serves a cluster zone",
            path.display()
        )
    })?;
    let (reverse, forward): (Vec<String>, Vec<String>) = k.zones.iter().cloned().partition(|z| {
        let z = z.trim_end_matches('.');
        z.ends_with("in-addr.arpa") || z.ends_with("ip6.arpa")
    });
    match forward.as_slice() {
        [zone] => a.zone = zone.clone(),
        [] => a.zone = "cluster.local".into(),
        _ => bail!(
            "{}: kubernetes {}: Twill serves one cluster zone",
            path.display(),
            forward.join(" ")
        ),
    }
    a.reverse_zones = reverse;
    if let Some(p) = k.pods {
        a.pods = match p {
            PodMode::Disabled => PodsArg::Disabled,
            PodMode::Insecure => PodsArg::Insecure,
            PodMode::Verified => PodsArg::Verified,
        };
    }
    if let Some(t) = k.ttl {
        a.ttl = t;
    }
    a.endpoint_pod_names |= k.endpoint_pod_names;
    a.namespaces = k.namespaces;
    a.ignore_empty_service |= k.ignore_empty_service;
    a.fallthrough = k.fallthrough;
    // From the API, as CoreDNS's kubernetes plugin: its kubeconfig, else in-cluster;
    // manifests given with -f stay the source.
    if a.files.is_empty() {
        match k.kubeconfig {
            Some(p) => a.kubeconfig = Some(PathBuf::from(p)),
            None if a.kubeconfig.is_none() => a.in_cluster = true,
            None => {}
        }
    }
    match s.forward {
        None => a.no_forward = true,
        Some(f) => {
            a.upstreams.clear();
            for to in &f.to {
                if to.starts_with('/') {
                    a.upstream_resolv_conf = PathBuf::from(to);
                } else {
                    a.upstreams
                        .push(to.trim_start_matches("dns://").to_string());
                }
            }
            if let Some(p) = f.policy.as_deref() {
                a.policy = match p {
                    "round_robin" => PolicyArg::RoundRobin,
                    "sequential" => PolicyArg::Sequential,
                    _ => PolicyArg::Random,
                };
            }
            if let Some(m) = f.max_concurrent {
                a.max_concurrent = m;
            }
            if let Some(h) = f.health_check {
                a.health_check = format!("{}ms", h.as_millis());
            }
            if let Some(m) = f.max_fails {
                a.max_fails = m;
            }
        }
    }
    match s.cache {
        None => {
            a.cache_success = 0;
            a.cache_denial = 0;
        }
        Some(c) => {
            if let Some(t) = c.max_ttl {
                a.cache_max_ttl = t;
                a.cache_denial_ttl = t;
            }
            if let Some((cap, ttl)) = c.success {
                a.cache_success = cap;
                a.cache_max_ttl = ttl.unwrap_or(a.cache_max_ttl);
            }
            if let Some((cap, ttl)) = c.denial {
                a.cache_denial = cap;
                a.cache_denial_ttl = ttl.unwrap_or(a.cache_denial_ttl);
            }
        }
    }
    if let Some(h) = &s.health {
        a.health = plugin_addr("health", h, SocketAddr::from(([0, 0, 0, 0], 8080)))?;
    }
    if let Some(r) = &s.ready {
        a.ready = plugin_addr("ready", r, SocketAddr::from(([0, 0, 0, 0], 8181)))?;
    }
    if let Some(p) = &s.prometheus {
        a.metrics = plugin_addr("prometheus", p, SocketAddr::from(([0, 0, 0, 0], 9153)))?;
    }
    if let Some(l) = s.lameduck {
        a.lameduck = Some(format!("{}ms", l.as_millis()));
    }
    a.no_loop_check = !s.loop_check;
    a.loadbalance |= s.loadbalance;
    Ok(())
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Manifests,
    Kube,
}

#[derive(clap::Args)]
pub struct ResolvconfArgs {
    /// The pod manifest.
    #[arg(short = 'f', long = "filename")]
    pub file: String,
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Kubelet's --cluster-dns (repeatable).
    #[arg(long = "cluster-dns", default_value = "10.96.0.10")]
    pub cluster_dns: Vec<String>,
    /// Kubelet's --resolv-conf; an empty string means none.
    #[arg(long, default_value = "/etc/resolv.conf")]
    pub resolv_conf: String,
    /// The node's addresses (used only without a resolv.conf).
    #[arg(long = "node-ip")]
    pub node_ips: Vec<IpAddr>,
}

#[derive(clap::Args)]
pub struct ConformanceArgs {
    pub dir: PathBuf,
}

/// `--pods`, as CoreDNS spells the modes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodsArg {
    Disabled,
    Insecure,
    Verified,
}

/// `--policy`, as CoreDNS's `forward` spells the policies.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyArg {
    Random,
    #[value(name = "round_robin")]
    RoundRobin,
    Sequential,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    match a.command {
        Some(Command::Resolvconf(r)) => resolvconf(r),
        None => serve(*a.serve),
    }
}

/// Load manifests; `serving`: they are what DNS answers from, where no API server
/// creates namespaces, so every namespace in use must be given (CoreDNS answers
/// NXDOMAIN in one that does not exist).
fn load_objects(files: &[String], serving: bool) -> anyhow::Result<Vec<Object>> {
    if files.is_empty() {
        return Ok(vec![]);
    }
    let loaded = twill_manifest::files::load_paths(files);
    let unnamed = if serving {
        twill_manifest::checks::missing_namespaces(&loaded.objects, &[])
    } else {
        vec![]
    };
    for p in loaded.problems.iter().chain(&unnamed) {
        eprintln!("{p}");
    }
    if loaded.has_errors() {
        bail!("the manifests have errors (above)");
    }
    Ok(loaded.into_objects())
}

fn resolvconf(a: ResolvconfArgs) -> anyhow::Result<ExitCode> {
    let pod = load_objects(std::slice::from_ref(&a.file), false)?
        .into_iter()
        .find_map(|o| {
            if let Object::Pod(p) = o {
                Some(p)
            } else {
                None
            }
        })
        .with_context(|| format!("{}: no Pod in the file", a.file))?;
    let host = if a.resolv_conf.is_empty() {
        None
    } else {
        Some(
            std::fs::read_to_string(&a.resolv_conf)
                .with_context(|| format!("reading {}", a.resolv_conf))?,
        )
    };
    let kubelet = KubeletDns {
        cluster_domain: a.cluster_domain,
        cluster_dns: a.cluster_dns,
        node_ips: a.node_ips,
        host_resolv_conf: host,
    };
    let r = pod_resolv_conf(&kubelet, &pod);
    for e in &r.events {
        eprintln!("warning: event {e} for pod {}", pod.key);
    }
    match r.render() {
        Some(text) => print!("{text}"),
        None => eprintln!(
            "pod {}: empty DNS configuration; the container runtime decides",
            pod.key
        ),
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_upstream(s: &str) -> anyhow::Result<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let ip: IpAddr = s
        .parse()
        .with_context(|| format!("--upstream {s}: not an address"))?;
    Ok(SocketAddr::new(ip, 53))
}

fn serve(mut a: ServeArgs) -> anyhow::Result<ExitCode> {
    if let Some(path) = a.corefile.clone() {
        apply_corefile(&path, &mut a)?;
    }
    let lameduck = a
        .lameduck
        .as_deref()
        .map(twill_model::parse_go_duration)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--lameduck: {e}"))?
        .unwrap_or_default();
    if a.kubeconfig.is_some() || a.in_cluster {
        a.source = Source::Kube;
    }
    if a.source == Source::Kube && !a.files.is_empty() {
        bail!("--source kube takes cluster state from the API server; drop -f");
    }
    #[cfg(not(feature = "kube"))]
    if a.source == Source::Kube {
        bail!("this twill was built without the `kube` feature");
    }
    let mut config = Config::new(&a.zone)?.with_reverse_zones(&a.reverse_zones)?;
    config.pods = match a.pods {
        PodsArg::Disabled => PodMode::Disabled,
        PodsArg::Insecure => PodMode::Insecure,
        PodsArg::Verified => PodMode::Verified,
    };
    config.ttl = a.ttl;
    config.endpoint_pod_names = a.endpoint_pod_names;
    config.namespaces = (!a.namespaces.is_empty()).then(|| a.namespaces.clone());
    config.ignore_empty_service = a.ignore_empty_service;
    config.fallthrough = a
        .fallthrough
        .map(|zones| {
            zones
                .iter()
                .map(|z| twill_dns::Config::new(z).map(|c| c.zone))
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    config.server_ips = a.server_ips.clone();
    if config.server_ips.is_empty() {
        // CoreDNS's boundIPs: the listen addresses, or every interface address for a
        // wildcard listener; loopback never counts.
        for l in &a.listen {
            if l.ip().is_unspecified() {
                config
                    .server_ips
                    .extend(twill_dns_server::interface_addresses());
            } else if !l.ip().is_loopback() {
                config.server_ips.push(l.ip());
            }
        }
        config.server_ips.sort();
        config.server_ips.dedup();
    }
    // Load and index on a thread of its own: glibc gives it its own heap arena, full of
    // the JSON trees and growth leftovers of loading (a few hundred MB at 10k services).
    // The clone made here, on the main arena, is compact; once the thread's copies are
    // dropped its whole arena is free and goes back to the kernel.
    //
    // Files that do not exist yet (a lab's cluster state before its first write) leave
    // the server unsynced: cluster names answer SERVFAIL until they appear.
    let all_exist = a
        .files
        .iter()
        .all(|f| f == "-" || std::path::Path::new(f).exists());
    let (files, cfg) = (a.files.clone(), config.clone());
    // From the API, the state starts empty and unsynced: SERVFAIL until listed.
    let from_files = a.source == Source::Manifests;
    let built = std::thread::spawn(move || -> anyhow::Result<Snapshot> {
        let state = if all_exist && from_files {
            ClusterState::from_objects(load_objects(&files, true)?)
        } else {
            ClusterState::default()
        };
        Ok(Snapshot::build(
            &state,
            &cfg,
            twill_agent::parts::dns::serial_now(),
        ))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("loading manifests panicked"))??;
    let snapshot = built.clone();
    drop(built);
    twill_dns_server::release_free_memory();

    let upstreams = if a.no_forward {
        vec![]
    } else if a.upstreams.is_empty() {
        match std::fs::read_to_string(&a.upstream_resolv_conf) {
            Ok(t) => upstreams_from_resolv_conf(&t),
            Err(e) => {
                tracing::warn!(file = %a.upstream_resolv_conf.display(), error = %e, "no upstreams");
                vec![]
            }
        }
    } else {
        a.upstreams
            .iter()
            .map(|s| parse_upstream(s))
            .collect::<anyhow::Result<_>>()?
    };
    let mut server = ServerConfig::new(a.listen.clone());
    if let Some(w) = a.workers {
        server.workers = w;
    }
    server.answer_cache_entries = a.answer_cache;
    // One registry and one HTTP server (the agent runtime's): `/health`, `/ready` and
    // `/metrics` on CoreDNS's three ports, each port answering every path.
    let status = twill_agent::Status::new(Duration::from_secs(30));
    let mut registered = None;
    status.register(|r| {
        registered = Some(Metrics::registered_in(&format!("dns://{}", a.listen[0]), r))
    });
    let metrics = Arc::new(registered.expect("registered above"));
    let http = twill_agent::http::HttpServer::new(status.clone())?;
    let mut http_addrs = Vec::new();
    for addr in [a.health, a.ready, a.metrics] {
        if !http_addrs.contains(&addr) {
            http.listen(addr, twill_agent::http::Routes::Agent)
                .with_context(|| format!("listening on {addr}"))?;
            http_addrs.push(addr);
        }
    }
    let policy = match a.policy {
        PolicyArg::Random => Policy::Random,
        PolicyArg::RoundRobin => Policy::RoundRobin,
        PolicyArg::Sequential => Policy::Sequential,
    };
    let forwarder = (!upstreams.is_empty()).then(|| {
        let mut f = ForwardConfig::new(upstreams.clone());
        f.policy = policy;
        f.max_concurrent = a.max_concurrent;
        f.max_fails = a.max_fails;
        if let Ok(h) = twill_model::parse_go_duration(&a.health_check) {
            f.health_check = h;
        }
        Forwarder::new(f, metrics.clone())
    });
    let cache = (a.cache_success + a.cache_denial > 0).then(|| {
        Cache::new(CacheConfig {
            success_capacity: a.cache_success,
            denial_capacity: a.cache_denial,
            success_max_ttl: a.cache_max_ttl,
            denial_max_ttl: a.cache_denial_ttl,
            min_ttl: 5,
        })
    });
    let mut engine = Engine::new(snapshot, forwarder, cache, metrics);
    if a.loadbalance {
        engine = engine.with_loadbalance();
    }
    if !a.no_loop_check && !upstreams.is_empty() {
        let probe = Name::from_ascii(format!("{}.{}.", rand_label(), rand_label()))?;
        engine = engine.with_loop_probe(probe.clone());
        server.loop_probe = Some(probe);
    }
    let engine = Arc::new(engine);
    let running = twill_dns_server::start(&server, engine.clone())?;
    // Following manifests or the API: the agent runtime with the DNS part swaps a new
    // snapshot in after every batch of changes; an invalid edit keeps the last good data.
    let (tx, rx) = std::sync::mpsc::channel();
    let mut follow = false;
    if !a.files.is_empty() && !a.files.iter().any(|f| f == "-") {
        twill_agent::ManifestSource::new(&a.files).follow(tx.clone(), Duration::from_secs(5))?;
        follow = true;
    }
    #[cfg(feature = "kube")]
    if a.source == Source::Kube {
        let kubeconfig = if a.in_cluster {
            None
        } else {
            a.kubeconfig.clone()
        };
        twill_agent::source::follow_kube(
            kubeconfig,
            twill_kube_source::SourceConfig::dns(),
            tx.clone(),
        )
        .context("starting the Kubernetes source")?;
        follow = true;
    }
    let tx_static = tx;
    tracing::info!(
        udp = ?running.udp,
        tcp = ?running.tcp,
        http = ?http_addrs,
        services = engine.snapshot().service_count(),
        upstreams = ?upstreams,
        "serving cluster DNS"
    );
    eprintln!("twill dns: serving {} on {:?}", config.zone, running.udp);
    let part = if follow {
        twill_agent::parts::dns::DnsPart::new(engine.clone(), config.clone())
    } else {
        // Manifests read once (stdin) or none: the snapshot built above stays.
        tx_static.send(twill_agent::Update::Events(vec![
            twill_model::ObjectEvent::Synced,
        ]))?;
        twill_agent::parts::dns::DnsPart::fixed(engine.clone())
    };
    drop(tx_static);
    twill_agent::signals::install();
    // The HTTP server stays here, not with the runtime: it must outlive the runtime to
    // answer /ready with 503 through the lameduck.
    let runtime = twill_agent::Runtime::new(
        status.clone(),
        None,
        vec![twill_agent::Part::Dns(part)],
        rx,
        twill_agent::Options {
            // Batch a relist or a burst of endpoint changes into one snapshot.
            min_sync_period: Duration::from_millis(100),
            ..Default::default()
        },
    );
    runtime.run()?;
    if !lameduck.is_zero() {
        // CoreDNS's lameduck: not ready at once, still answering, then gone.
        status.lock().stopping = true;
        tracing::info!(
            ?lameduck,
            "stopping: /ready fails; answering until the lameduck ends"
        );
        std::thread::sleep(lameduck);
    }
    running.shutdown();
    drop(http);
    Ok(ExitCode::SUCCESS)
}

fn rand_label() -> String {
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(7);
    format!("{:x}{:x}", n, std::process::id())
}

// ---------------------------------------------------------------------------------------
// Conformance

/// A fake upstream resolver on loopback answering from the corpus's `other.upstream`.
struct FakeUpstream {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl FakeUpstream {
    fn start(records: Vec<CaseRecord>) -> anyhow::Result<Self> {
        let sock = UdpSocket::bind("127.0.0.1:0")?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        let addr = sock.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !flag.load(Ordering::Relaxed) {
                let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(req) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let Some(q) = req.queries.first() else {
                    continue;
                };
                let (rcode, answers) = corpus::upstream_answer(&records, q.name(), q.query_type());
                let mut m = Message::new(req.metadata.id, MessageType::Response, OpCode::Query);
                m.metadata.recursion_desired = req.metadata.recursion_desired;
                m.metadata.recursion_available = true;
                m.metadata.response_code = rcode;
                m.queries = req.queries.clone();
                m.answers = answers;
                if let Ok(bytes) = m.to_vec() {
                    let _ = sock.send_to(&bytes, peer);
                }
            }
        });
        Ok(FakeUpstream { addr, stop, thread })
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

/// Ask `server` over UDP (EDNS, 1232 bytes) and retry over TCP when truncated.
pub fn ask(server: SocketAddr, qname: &str, qtype: RecordType) -> anyhow::Result<Message> {
    let name = Name::from_ascii(qname).with_context(|| format!("qname {qname}"))?;
    let id: u16 = (twill_agent::parts::dns::serial_now() as u16) ^ 0x5a5a;
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(name, qtype));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    m.set_edns(edns);
    let bytes = m.to_vec()?;
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut buf = vec![0u8; 65535];
    let mut reply = None;
    for _ in 0..3 {
        sock.send_to(&bytes, server)?;
        if let Ok(n) = sock.recv(&mut buf) {
            let r = Message::from_vec(&buf[..n])?;
            if r.metadata.id == id {
                reply = Some(r);
                break;
            }
        }
    }
    let reply = reply.context("no UDP answer after 3 tries")?;
    if !reply.metadata.truncation {
        return Ok(reply);
    }
    let mut s = TcpStream::connect(server)?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&bytes);
    s.write_all(&framed)?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len)?;
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut body)?;
    Ok(Message::from_vec(&body)?)
}

fn run_query_file(
    path: &Path,
    value: &serde_json::Value,
    passed: &mut usize,
    failed: &mut usize,
) -> anyhow::Result<()> {
    let file = corpus::parse_query_file(value).map_err(anyhow::Error::msg)?;
    let upstream = FakeUpstream::start(file.upstream.clone())?;
    let metrics = Arc::new(Metrics::new("dns://127.0.0.1:0"));
    let mut fwd = ForwardConfig::new(vec![upstream.addr]);
    fwd.timeout = Duration::from_secs(1);
    let forwarder = Forwarder::new(fwd, metrics.clone());
    let engine = Arc::new(Engine::new(
        Snapshot::build(
            &file.state,
            &file.config,
            twill_agent::parts::dns::serial_now(),
        ),
        Some(forwarder),
        None,
        metrics,
    ));
    let mut sc = ServerConfig::new(vec!["127.0.0.1:0".parse()?]);
    sc.workers = 1;
    let running = twill_dns_server::start(&sc, engine)?;
    let server = running.udp[0];
    for case in &file.queries {
        match ask(server, &case.qname, case.qtype) {
            Ok(msg) => {
                let problems = corpus::check_response(case, &msg);
                if problems.is_empty() {
                    *passed += 1;
                } else {
                    *failed += 1;
                    println!(
                        "FAIL {} {}: {}",
                        path.display(),
                        case.name,
                        problems.join("; ")
                    );
                }
            }
            Err(e) => {
                *failed += 1;
                println!("FAIL {} {}: {e:#}", path.display(), case.name);
            }
        }
    }
    running.shutdown();
    upstream.stop();
    Ok(())
}

fn run_resolv_file(
    path: &Path,
    value: &serde_json::Value,
    passed: &mut usize,
    failed: &mut usize,
) -> anyhow::Result<()> {
    for case in corpus::parse_resolv_file(value).map_err(anyhow::Error::msg)? {
        let (_, problems) = corpus::check_resolv(&case);
        if problems.is_empty() {
            *passed += 1;
        } else {
            *failed += 1;
            println!(
                "FAIL {} {}: {}",
                path.display(),
                case.name,
                problems.join("; ")
            );
        }
    }
    Ok(())
}

pub fn run_conformance(a: ConformanceArgs) -> anyhow::Result<ExitCode> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(&a.dir)
        .with_context(|| format!("reading {}", a.dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let (mut passed, mut failed) = (0, 0);
    for path in files {
        let value: serde_json::Value = match std::fs::read_to_string(&path)
            .map_err(anyhow::Error::from)
            .and_then(|t| serde_json::from_str(&t).map_err(anyhow::Error::from))
        {
            Ok(v) => v,
            Err(e) => {
                failed += 1;
                println!("FAIL {}: {e:#}", path.display());
                continue;
            }
        };
        // The schema, not the file name, says which kind of file this is.
        let result = if value.get("queries").is_some() {
            run_query_file(&path, &value, &mut passed, &mut failed)
        } else if value.get("cases").is_some() {
            run_resolv_file(&path, &value, &mut passed, &mut failed)
        } else {
            Err(anyhow::anyhow!("neither `queries` nor `cases`"))
        };
        if let Err(e) = result {
            failed += 1;
            println!("FAIL {}: {e:#}", path.display());
        }
    }
    Ok(summary(passed, failed))
}
