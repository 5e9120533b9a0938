//! `twill agent`: one process per node, fed by the Kubernetes API.
//!
//! One source (`twill_kube_source`, in-cluster service account, `--kubeconfig` or
//! `KUBECONFIG`) feeds the parts chosen on the command line:
//!
//! - `--proxy-mode iptables|nftables`: the service proxy (kube-proxy's job), the same
//!   proxiers `twill proxy` runs, on the model state instead of manifests;
//! - `--network-policy`: the NetworkPolicy enforcer (`twill_netpol_agent::daemon`);
//! - `--pod-network`: the overlay (flannel's job), on a thread of its own (`podnet.rs`),
//!   with this node's subnet from its Node (`--subnet-store kube`, flannel's kube subnet
//!   manager) or from a lease store.
//!
//! Nothing is programmed before the source's `synced` event: a half-listed cluster would
//! look like deleted services and policies. After that, changes are batched and synced
//! at most once per `--min-sync-period`, and at least once per `--sync-period` (the
//! proxy's periodic full resync). One HTTP server answers `/healthz` (kube-proxy's port,
//! 200 once every enabled part has synced recently) and `/metrics` (every part's metrics
//! in one exposition).
//!
//! Without a part (`--dump-events`), it prints the event stream: what the parts would
//! act on.

mod podnet;
mod policy;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use anyhow::Context;
use twill_kube_source::{Error as SourceError, Role, SourceConfig};
use twill_model::{ClusterState, IpFamily, Kind, ObjectEvent, ObjectKey};
use twill_netpol::{DenyAction, RenderOptions};
use twill_netpol_agent::daemon::{Enforcer, SyncOutcome};
use twill_proxy_core::{FeatureGates, ModelConfig};

use podnet::{SubnetStore, parse_subnet_store};

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
    /// What this process watches as: `node` (the DaemonSet agent) or `dns` (what cluster
    /// DNS reads; with `--dump-events` only — `twill dns --source kube` serves it).
    #[arg(long, default_value = "node", value_parser = parse_role)]
    pub role: Role,
    /// Watch only this node's Pods (`fieldSelector=spec.nodeName=NODE`): far less
    /// traffic on big clusters; not with `--network-policy` (policy peers live on every
    /// node).
    #[arg(long)]
    pub local_pods_only: bool,
    /// Print every event (`applied KIND NAME`, `deleted KIND NAME`, `synced ...`) on
    /// stdout.
    #[arg(long)]
    pub dump_events: bool,
    /// Exit after the first sync (with its summary, after the parts' first pass); for
    /// scripts and smoke tests.
    #[arg(long)]
    pub exit_after_sync: bool,

    /// The service proxy: `iptables`, `nftables`, or `none` (kube-proxy stays in charge).
    #[arg(long, value_enum, default_value = "none")]
    pub proxy_mode: ProxyMode,
    /// Run the pod network (the overlay: this node's subnet, routes to the others').
    #[arg(long)]
    pub pod_network: bool,
    /// Enforce NetworkPolicy for this node's pods.
    #[arg(long)]
    pub network_policy: bool,

    /// Where this node's pod subnet comes from: `kube` (the Node's spec.podCIDR, lease
    /// published as flannel.alpha.coreos.com annotations), `embedded[:PATH]` or
    /// `etcd:URL` (a lease store, as `twill overlay`).
    #[arg(long, default_value = "kube", value_parser = parse_subnet_store)]
    pub subnet_store: SubnetStore,
    /// Network config (flannel's net-conf.json).
    #[arg(long, default_value = "/etc/twill/net-conf.json")]
    pub net_conf: PathBuf,
    /// External interface for the overlay (default: the default route's).
    #[arg(long)]
    pub iface: Option<String>,
    /// Masquerade pod traffic leaving the cluster network (flanneld `--ip-masq`).
    #[arg(long)]
    pub ip_masq: bool,
    /// Where to write subnet.env (the CNI plugin reads it).
    #[arg(long, default_value = twill_overlay::subnet_env::SUBNET_ENV_PATH)]
    pub subnet_file: PathBuf,
    /// Also write a twill-bridge CNI config here.
    #[arg(long)]
    pub cni_conf: Option<PathBuf>,

    /// Pod CIDR for the proxy's local-traffic detector (default: the network config's
    /// Network with `--pod-network`, else none).
    #[arg(long)]
    pub cluster_cidr: Option<String>,
    /// The node's IPs for NodePorts (default: the Node's InternalIPs).
    #[arg(long = "node-ip")]
    pub node_ips: Vec<IpAddr>,
    /// Masquerade all ClusterIP traffic.
    #[arg(long)]
    pub masquerade_all: bool,
    /// CIDRs whose local addresses accept NodePorts (comma separated); default all.
    #[arg(long, value_delimiter = ',')]
    pub nodeport_addresses: Vec<String>,
    /// Which iptables binaries to use.
    #[arg(long, value_enum, default_value = "system")]
    pub iptables_backend: crate::cmd::proxy::Backend,
    /// Full resync period (`30s`, `1m`).
    #[arg(long, default_value = "30s")]
    pub sync_period: String,
    /// Minimum time between syncs.
    #[arg(long, default_value = "1s")]
    pub min_sync_period: String,

    /// What NetworkPolicy-denied packets get.
    #[arg(long, value_enum, default_value = "reject")]
    pub deny: Deny,

    /// Where /healthz listens (kube-proxy's default).
    #[arg(long, default_value = "0.0.0.0:10256")]
    pub healthz_bind_address: SocketAddr,
    /// Where /metrics listens (kube-proxy's default).
    #[arg(long, default_value = "127.0.0.1:10249")]
    pub metrics_bind_address: SocketAddr,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    None,
    Iptables,
    Nftables,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deny {
    Reject,
    Drop,
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

/// Several Prometheus/OpenMetrics expositions as one: each part's registry ends its
/// text with `# EOF`, which may appear only once, at the end.
fn merge_expositions<'a>(parts: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::new();
    for p in parts {
        for line in p.lines().filter(|l| *l != "# EOF") {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str("# EOF\n");
    out
}

type Proxier = Box<dyn crate::cmd::proxy::ModeProxier>;

/// The service proxy, built at the first sync (its defaults come from the Node).
struct ProxyPart {
    proxier: Proxier,
    health_ports: BTreeSet<u16>,
}

fn proxy_part(
    a: &Args,
    node: &str,
    state: &ClusterState,
    sync_period: Duration,
) -> anyhow::Result<ProxyPart> {
    let family = IpFamily::V4;
    let cidr = match &a.cluster_cidr {
        Some(c) => Some(c.clone()),
        None if a.pod_network => std::fs::read_to_string(&a.net_conf)
            .ok()
            .and_then(|t| twill_overlay::NetworkConfig::parse("net-conf", &t).ok())
            .map(|c| c.network.to_string()),
        None => None,
    };
    let mut node_ips: Vec<IpAddr> = a.node_ips.clone();
    if node_ips.is_empty()
        && let Some(n) = state.nodes.get(node)
    {
        node_ips = n.internal_ips.clone();
    }
    let mut cfg = crate::cmd::proxy::proxy_config(
        family,
        cidr.as_deref(),
        &node_ips,
        a.masquerade_all,
        &a.nodeport_addresses,
    )?;
    // As `twill proxy` does: nftables mode has no localhost NodePorts (so no
    // route_localnet).
    if a.proxy_mode == ProxyMode::Nftables {
        cfg.localhost_node_ports = false;
    }
    for note in twill_proxy::proxier::apply_sysctls(&cfg) {
        tracing::info!("{note}");
    }
    let mc = ModelConfig {
        family,
        node_name: node.to_string(),
        node_zone: state
            .nodes
            .get(node)
            .and_then(|n| n.zone())
            .map(str::to_string),
        gates: FeatureGates::default(),
    };
    use crate::cmd::proxy::Backend;
    let variant = match a.iptables_backend {
        Backend::System => twill_proxy::Variant::System,
        Backend::Legacy => twill_proxy::Variant::Legacy,
        Backend::Nft => twill_proxy::Variant::Nft,
    };
    let proxier: Proxier = match a.proxy_mode {
        ProxyMode::Nftables => {
            let mut ncfg = twill_proxy::corpus::nft_config(&cfg);
            ncfg.local_addresses = twill_proxy::nft_proxier::local_addresses(family);
            Box::new(twill_proxy::nft_proxier::NftProxier::new(
                mc,
                ncfg,
                sync_period,
                twill_proxy::nft_proxier::NftKernel,
            ))
        }
        _ => Box::new(twill_proxy::Proxier::new(
            mc,
            cfg,
            sync_period,
            twill_proxy::Kernel::new(variant),
        )),
    };
    Ok(ProxyPart {
        proxier,
        health_ports: BTreeSet::new(),
    })
}

impl ProxyPart {
    /// Publish the health-check node ports of `externalTrafficPolicy: Local` services
    /// (what `twill proxy` serves the same way).
    fn serve_service_health(&mut self, shared: &twill_proxy::http::Shared) {
        let mut st = shared.lock().unwrap_or_else(|p| p.into_inner());
        st.service_health.clear();
        if let Some(m) = self.proxier.synced_model() {
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
            if self.health_ports.insert(*port)
                && let Err(e) = twill_proxy::http::serve_service_health(*port, shared.clone())
            {
                tracing::warn!(port, "health check node port: {e}");
            }
        }
    }
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let node = node_name(&a)?;
    let parts_on = a.proxy_mode != ProxyMode::None || a.network_policy || a.pod_network;
    if !parts_on && !a.dump_events && !a.exit_after_sync {
        anyhow::bail!(
            "nothing to run: choose parts (--proxy-mode iptables, --pod-network, \
             --network-policy) or --dump-events"
        );
    }
    if parts_on && a.role != Role::Node {
        anyhow::bail!(
            "--role {} runs no node parts; use `twill dns --source kube`",
            a.role.as_str()
        );
    }
    if a.local_pods_only && a.network_policy {
        anyhow::bail!(
            "--local-pods-only cannot be used with --network-policy: policy peers are pods of every node"
        );
    }
    let sync_period = crate::cmd::proxy::parse_duration(&a.sync_period)?;
    let min_sync_period = crate::cmd::proxy::parse_duration(&a.min_sync_period)?;

    let mut config: SourceConfig = a.role.source_config();
    if a.local_pods_only {
        config = config.local_pods_only(node.clone());
    }
    tracing::info!(node, role = a.role.as_str(), proxy = ?a.proxy_mode, pod_network = a.pod_network, network_policy = a.network_policy, "connecting to the API server");

    let pod_network = if a.pod_network {
        let text = std::fs::read_to_string(&a.net_conf)
            .with_context(|| format!("reading the network config {}", a.net_conf.display()))?;
        let opts = twill_overlay_agent::AgentOptions {
            iface: a.iface.clone(),
            ip_masq: a.ip_masq,
            subnet_env_path: a.subnet_file.clone(),
            cni_conf_path: a.cni_conf.clone(),
            resync: podnet::DEFAULT_RESYNC,
            ..Default::default()
        };
        Some(podnet::start(
            a.subnet_store.clone(),
            text,
            opts,
            a.kubeconfig.clone(),
            node.clone(),
        )?)
    } else {
        None
    };

    let shared: twill_proxy::http::Shared = Default::default();
    shared.lock().unwrap_or_else(|p| p.into_inner()).sync_period = sync_period;
    if parts_on && !a.exit_after_sync {
        twill_proxy::http::serve(a.healthz_bind_address, shared.clone())
            .with_context(|| format!("listening on {}", a.healthz_bind_address))?;
        if a.metrics_bind_address != a.healthz_bind_address {
            twill_proxy::http::serve(a.metrics_bind_address, shared.clone())
                .with_context(|| format!("listening on {}", a.metrics_bind_address))?;
        }
    }

    let events = twill_kube_source::spawn(a.kubeconfig.clone(), config)
        .context("starting the Kubernetes source")?;
    let mut state = ClusterState::default();
    let mut rejected_policies: BTreeMap<ObjectKey, String> = BTreeMap::new();
    let mut proxy: Option<ProxyPart> = None;
    let mut enforcer = a.network_policy.then(|| {
        Enforcer::new(
            &node,
            RenderOptions {
                deny: match a.deny {
                    Deny::Reject => DenyAction::Reject,
                    Deny::Drop => DenyAction::Drop,
                },
                existing_chains: vec![],
            },
        )
    });
    let mut dirty = true;
    let mut policy_failed = false;
    let mut changed_at: Option<Instant> = None;
    let mut last_pass: Option<Instant> = None;
    let mut source_errors: u64 = 0;
    // When the next pass is due: right after sync; then after the minimum period when
    // something changed, else after the sync period (the proxy's periodic resync, the
    // policy deny counters, the health timestamp).
    let due = |synced: bool, dirty: bool, last_pass: Option<Instant>| -> Option<Instant> {
        if !synced || !parts_on {
            return None;
        }
        Some(match last_pass {
            None => Instant::now(),
            Some(t) if dirty => t + min_sync_period,
            Some(t) => t + sync_period,
        })
    };
    loop {
        // Gather events until the next pass is due (checking on the pod network part
        // every second).
        let wait = due(state.synced, dirty, last_pass)
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1));
        let first = match events.recv_timeout(wait) {
            Ok(item) => Some(item),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => anyhow::bail!("the Kubernetes source stopped"),
        };
        for item in first.into_iter().chain(events.try_iter()) {
            if track_rejected_policies(&mut rejected_policies, &item) {
                dirty = true;
            }
            let event = match item {
                Ok(e) => e,
                // Logged by the source; tracked above when it matters.
                Err(SourceError::Invalid { .. }) => continue,
                // Logged by the source; it retries by itself.
                Err(e) if e.is_transient() => {
                    source_errors += 1;
                    continue;
                }
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
            if state.apply(event) {
                dirty = true;
                changed_at.get_or_insert_with(Instant::now);
            }
            if synced {
                println!("synced: {}", twill_kube_source::state_summary(&state));
                if !parts_on && a.exit_after_sync {
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
        if let Some(p) = &pod_network
            && let Some(e) = p.stopped()
        {
            return Err(e).context("the pod network part");
        }
        match due(state.synced, dirty, last_pass) {
            Some(t) if Instant::now() >= t => {}
            _ => continue,
        }
        last_pass = Some(Instant::now());
        let mut ok = true;
        if a.proxy_mode != ProxyMode::None {
            if proxy.is_none() {
                proxy = Some(proxy_part(&a, &node, &state, sync_period)?);
            }
            let p = proxy.as_mut().expect("built above");
            match p.proxier.sync_state(&state, Instant::now()) {
                Ok(true) => {
                    if let Some(t) = changed_at {
                        p.proxier
                            .metrics()
                            .network_programming_duration
                            .observe(t.elapsed().as_secs_f64());
                    }
                    tracing::info!(mode = ?a.proxy_mode, "proxy sync");
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::error!("proxy: {e}");
                    ok = false;
                }
            }
            p.serve_service_health(&shared);
        }
        if let Some(enf) = enforcer.as_mut() {
            // An unchanged view costs a comparison (and reads the deny counters).
            let cluster = policy::cluster_from_state(&state, &rejected_policies, &[]);
            let result = enf.sync(cluster);
            policy_failed = false;
            match result {
                Ok(SyncOutcome::Applied {
                    rules,
                    sets,
                    elapsed,
                    sets_only,
                }) => {
                    tracing::info!(
                        rules,
                        sets,
                        sets_only,
                        elapsed_ms = elapsed.as_millis() as u64,
                        "network policy sync"
                    )
                }
                Ok(SyncOutcome::Unchanged) => {}
                Err(e) => {
                    tracing::error!("network policy: {e}");
                    policy_failed = true;
                }
            }
        }
        if policy_failed {
            ok = false;
        }
        if let Some(p) = &pod_network
            && !p.is_healthy()
        {
            ok = false;
        }
        dirty = false;
        changed_at = None;
        {
            let mut st = shared.lock().unwrap_or_else(|p| p.into_inner());
            if ok {
                st.last_success = Some(Instant::now());
            }
            let mut texts: Vec<String> = Vec::new();
            if let Some(p) = &proxy {
                texts.push(p.proxier.metrics().encode());
            }
            if let Some(e) = &enforcer {
                texts.push(e.metrics.encode());
            }
            let pn = pod_network.as_ref().map(|p| p.health());
            texts.push(agent_metrics(&state, source_errors, pn.as_ref()));
            st.metrics_text = merge_expositions(texts.iter().map(String::as_str));
        }
        if a.exit_after_sync {
            if let Some(p) = &pod_network
                && !p.is_healthy()
            {
                // Not converged yet (no lease, or a peer not programmed): try again.
                dirty = true;
                continue;
            }
            if !ok {
                anyhow::bail!("the first pass after sync did not converge (see the log)");
            }
            println!(
                "programmed: {}",
                programmed_summary(proxy.as_ref(), enforcer.as_ref())
            );
            return Ok(ExitCode::SUCCESS);
        }
    }
}

/// Keep the NetworkPolicies the source rejected as invalid (they fail closed: see
/// `policy.rs`) in step with the stream: an `Invalid` adds one, a valid version or its
/// deletion removes it (the source announces both, in that order when a policy turns
/// invalid: `Deleted`, then `Invalid`). Returns whether the set changed.
fn track_rejected_policies(
    rejected: &mut BTreeMap<ObjectKey, String>,
    item: &Result<ObjectEvent, SourceError>,
) -> bool {
    match item {
        Err(SourceError::Invalid { object, errors }) if object.kind == Kind::NetworkPolicy => {
            let why: Vec<String> = errors.iter().map(ToString::to_string).collect();
            let reason = format!("{object}: {}", why.join("; "));
            rejected.insert(object.key.clone(), reason.clone()) != Some(reason)
        }
        Ok(ObjectEvent::Applied(twill_model::Object::NetworkPolicy(p))) => {
            rejected.remove(&p.key).is_some()
        }
        Ok(ObjectEvent::Deleted(r)) if r.kind == Kind::NetworkPolicy => {
            rejected.remove(&r.key).is_some()
        }
        _ => false,
    }
}

fn programmed_summary(proxy: Option<&ProxyPart>, enforcer: Option<&Enforcer>) -> String {
    let mut parts = Vec::new();
    if let Some(p) = proxy {
        let services = p
            .proxier
            .synced_model()
            .map(|m| m.services.len())
            .unwrap_or(0);
        parts.push(format!("proxy {services} service ports"));
    }
    if let Some(e) = enforcer {
        parts.push(format!("network policy {} rules", e.metrics.rules.get()));
    }
    parts.join(", ")
}

/// The agent's own metrics (Twill-only, hence `twill_agent_`), in text exposition.
fn agent_metrics(
    state: &ClusterState,
    source_errors: u64,
    pod_network: Option<&twill_overlay_agent::HealthState>,
) -> String {
    let mut out = String::new();
    out += "# HELP twill_agent_synced Whether the source has completed its initial lists.\n";
    out += "# TYPE twill_agent_synced gauge\n";
    out += &format!("twill_agent_synced {}\n", u8::from(state.synced));
    out += "# HELP twill_agent_source_errors Watch errors the source retried after.\n";
    out += "# TYPE twill_agent_source_errors counter\n";
    out += &format!("twill_agent_source_errors_total {source_errors}\n");
    if let Some(h) = pod_network {
        out += "# HELP twill_agent_pod_network_peers Peers the pod network routes to.\n";
        out += "# TYPE twill_agent_pod_network_peers gauge\n";
        out += &format!("twill_agent_pod_network_peers {}\n", h.peers);
        out += "# HELP twill_agent_pod_network_syncs Pod network syncs.\n";
        out += "# TYPE twill_agent_pod_network_syncs counter\n";
        out += &format!("twill_agent_pod_network_syncs_total {}\n", h.syncs);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    /// The subcommands the deploy manifests run.
    #[derive(clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Deployed,
    }

    #[derive(clap::Subcommand)]
    enum Deployed {
        Agent(Box<Args>),
        Dns(crate::cmd::dns::Args),
    }

    /// Every container of every workload in `deploy/`, as (file, args).
    fn deployed_args() -> Vec<(String, Vec<String>)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
        let mut out = Vec::new();
        for file in ["agent.yaml", "dns.yaml"] {
            let text = std::fs::read_to_string(dir.join(file)).unwrap();
            for doc in text.split("\n---") {
                let v: serde_json::Value = serde_saphyr::from_str(doc).unwrap();
                for c in v["spec"]["template"]["spec"]["containers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    let args: Vec<String> = c["args"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|a| a.as_str().unwrap().to_string())
                        .collect();
                    out.push((file.to_string(), args));
                }
            }
        }
        out
    }

    #[test]
    fn the_deployed_agent_and_dns_arguments_parse_and_run_every_part_from_the_api() {
        let mut seen = Vec::new();
        for (file, args) in deployed_args() {
            let cli = Cli::try_parse_from(std::iter::once("twill".to_string()).chain(args.clone()))
                .unwrap_or_else(|e| panic!("{file}: {args:?}: {e}"));
            match cli.command {
                Deployed::Agent(a) => {
                    assert_eq!(a.proxy_mode, ProxyMode::Iptables, "{file}");
                    assert!(a.pod_network && a.network_policy, "{file}");
                    assert_eq!(a.subnet_store, SubnetStore::Kube, "{file}");
                    assert!(!a.local_pods_only, "{file}: policy needs every pod");
                    assert_eq!(a.net_conf, PathBuf::from("/etc/twill/net-conf.json"));
                    seen.push("agent");
                }
                Deployed::Dns(d) => {
                    assert!(d.command.is_none(), "{file}");
                    assert!(d.serve.in_cluster, "{file}");
                    assert!(d.serve.files.is_empty(), "{file}");
                    seen.push("dns");
                }
            }
        }
        seen.sort();
        assert_eq!(seen, ["agent", "dns"]);
    }

    #[test]
    fn an_unreadable_policy_fails_closed_until_fixed_or_deleted() {
        use kube::runtime::watcher::Event;
        use twill_kube_source::{Entry, SyncGate, WatchedKind};
        let policy = |selector: serde_json::Value| -> Entry {
            let np: k8s_openapi::api::networking::v1::NetworkPolicy =
                serde_json::from_value(serde_json::json!({
                    "metadata": {"name": "deny", "namespace": "shop"},
                    "spec": {"podSelector": selector, "policyTypes": ["Ingress"]},
                }))
                .unwrap();
            Entry {
                object_ref: twill_model::ObjectRef {
                    kind: Kind::NetworkPolicy,
                    key: ObjectKey::new("shop", "deny"),
                },
                object: twill_model::k8s::network_policy_from_k8s(&np)
                    .map(twill_model::Object::NetworkPolicy),
            }
        };
        let good = policy(serde_json::json!({"matchLabels": {"app": "web"}}));
        let bad = policy(serde_json::json!({"matchLabels": {"not a label!": "web"}}));
        assert!(bad.object.is_err(), "the test needs an invalid policy");
        const NP: WatchedKind = WatchedKind::NetworkPolicy;
        let mut gate = SyncGate::new([NP]);
        let mut rejected = BTreeMap::new();
        let mut feed = |gate: &mut SyncGate, e: Event<Entry>| {
            for item in gate.step(NP, e) {
                track_rejected_policies(&mut rejected, &item);
            }
            rejected.keys().map(ToString::to_string).collect::<Vec<_>>()
        };
        feed(&mut gate, Event::Init);
        feed(&mut gate, Event::InitApply(good.clone()));
        assert!(feed(&mut gate, Event::InitDone).is_empty());
        assert_eq!(feed(&mut gate, Event::Apply(bad.clone())), ["shop/deny"]);
        assert!(feed(&mut gate, Event::Apply(good)).is_empty(), "fixed");
        assert_eq!(feed(&mut gate, Event::Apply(bad.clone())), ["shop/deny"]);
        assert!(feed(&mut gate, Event::Delete(bad)).is_empty(), "deleted");
    }

    #[test]
    fn merged_metrics_keep_every_part_and_end_with_one_eof() {
        let merged = merge_expositions([
            "# TYPE a counter\na_total 1\n# EOF\n",
            "# TYPE b gauge\nb 2\n# EOF\n",
        ]);
        assert_eq!(
            merged,
            "# TYPE a counter\na_total 1\n# TYPE b gauge\nb 2\n# EOF\n"
        );
    }

    #[test]
    fn agent_metrics_say_whether_synced_and_count_source_errors() {
        let mut s = ClusterState::default();
        let text = agent_metrics(&s, 3, None);
        assert!(text.contains("twill_agent_synced 0\n"), "{text}");
        assert!(
            text.contains("twill_agent_source_errors_total 3\n"),
            "{text}"
        );
        s.apply(ObjectEvent::Synced);
        assert!(agent_metrics(&s, 0, None).contains("twill_agent_synced 1\n"));
    }
}
