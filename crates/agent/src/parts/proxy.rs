//! The service proxy part (kube-proxy's job) in every mode: the proxier of the chosen
//! mode as a [`ModeProxier`] (a closed enum), built at the first sync (its defaults come from this
//! node's Node object), its metrics in the agent's registry, and the health-check node
//! ports of `externalTrafficPolicy: Local` services published in the status.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use twill_model::{ClusterState, IpFamily};
use twill_proxy::metrics::Metrics;
use twill_proxy_core::{Config, LocalDetector};
use twill_proxy_core::{FeatureGates, ModelConfig, ProxyModel};

use super::{PartError, SyncContext};
use crate::status::{ServiceHealth, Status};

/// kube-proxy's modes. ipvs is planning only here: it says what the kernel lacks (or
/// that the applier is not built) instead of running.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Iptables,
    Nftables,
    Userspace,
    Ipvs,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Iptables => "iptables",
            Mode::Nftables => "nftables",
            Mode::Userspace => "userspace",
            Mode::Ipvs => "ipvs",
        }
    }

    pub fn parse(s: &str) -> Option<Mode> {
        [Mode::Iptables, Mode::Nftables, Mode::Userspace, Mode::Ipvs]
            .into_iter()
            .find(|m| m.as_str() == s)
    }
}

/// Which iptables binaries the iptables mode runs.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Backend {
    #[default]
    System,
    Legacy,
    Nft,
}

/// kube-proxy's `detectLocalMode`: how a packet is known to come from a pod.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DetectLocal {
    /// Sources in `--cluster-cidr` (none given: every source may be a pod).
    #[default]
    ClusterCidr,
    /// Sources in this node's pod CIDR (its Node object's `spec.podCIDRs`).
    NodeCidr,
    /// Packets arriving on this bridge.
    BridgeInterface(String),
    /// Packets arriving on interfaces whose names start with this prefix.
    InterfaceNamePrefix(String),
}

/// kube-proxy's conntrack settings; `None` (or `false`) leaves the kernel's value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Conntrack {
    pub max_per_core: Option<u32>,
    pub min: Option<u32>,
    pub tcp_established_timeout: Option<Duration>,
    pub tcp_close_wait_timeout: Option<Duration>,
    pub tcp_be_liberal: bool,
    pub udp_timeout: Option<Duration>,
    pub udp_stream_timeout: Option<Duration>,
}

impl Conntrack {
    /// What to write, in the applier's terms.
    pub fn as_sysctls(&self) -> twill_proxy::conntrack::Sysctls {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        let max = self
            .max_per_core
            .filter(|m| *m > 0)
            .map(|m| (u64::from(m) * cpus).max(u64::from(self.min.unwrap_or(0))));
        twill_proxy::conntrack::Sysctls {
            max,
            tcp_established_timeout: self.tcp_established_timeout,
            tcp_close_wait_timeout: self.tcp_close_wait_timeout,
            tcp_be_liberal: self.tcp_be_liberal,
            udp_timeout: self.udp_timeout,
            udp_stream_timeout: self.udp_stream_timeout,
        }
    }

    /// kube-proxy's defaults (maxPerCore 32768, min 131072, established 24h, close-wait 1h).
    pub fn kube_proxy_defaults() -> Self {
        Conntrack {
            max_per_core: Some(32768),
            min: Some(131072),
            tcp_established_timeout: Some(Duration::from_secs(24 * 3600)),
            tcp_close_wait_timeout: Some(Duration::from_secs(3600)),
            ..Conntrack::default()
        }
    }
}

/// Settings past the basics, with kube-proxy's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuning {
    pub detect_local: DetectLocal,
    /// `--iptables-masquerade-bit` (the `nftables` section's for nftables mode).
    pub masquerade_bit: u8,
    /// `--iptables-localhost-nodeports` (iptables mode, IPv4).
    pub localhost_node_ports: bool,
    pub conntrack: Conntrack,
    /// Service CIDRs for sources without ServiceCIDR objects (`--service-cidr`); nftables
    /// mode drops traffic to their unallocated addresses.
    pub service_cidrs: Vec<ipnet::IpNet>,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            detect_local: DetectLocal::ClusterCidr,
            masquerade_bit: 14,
            localhost_node_ports: true,
            conntrack: Conntrack::default(),
            service_cidrs: Vec::new(),
        }
    }
}

/// Everything a proxier is built from (kube-proxy's flags and config file, folded).
#[derive(Debug, Clone)]
pub struct ProxySettings {
    pub mode: Mode,
    pub family: IpFamily,
    pub node: String,
    /// Pod CIDR for the local-traffic detector (off-cluster sources are masqueraded).
    pub cluster_cidr: Option<String>,
    /// The node's IPs; empty: the Node object's InternalIPs at the first sync.
    pub node_ips: Vec<IpAddr>,
    pub masquerade_all: bool,
    /// CIDRs whose local addresses accept NodePorts; empty: all.
    pub nodeport_addresses: Vec<String>,
    pub iptables_backend: Backend,
    pub sync_period: Duration,
    pub tuning: Tuning,
}

impl ProxySettings {
    /// Refuse what cannot run here, before anything starts.
    pub fn check_runnable(&self) -> Result<(), PartError> {
        if self.mode == Mode::Ipvs {
            // Say exactly what this kernel lacks; with IPVS present, the applier is
            // what is missing (planning and netlink encoding exist, the kernel half
            // does not).
            return Err(PartError::fatal(match twill_proxy_ipvs::check_kernel() {
                Err(missing) => format!("--mode ipvs cannot run here: {missing}"),
                Ok(()) => "--mode ipvs: this kernel has IPVS, but Twill's ipvs applier is not built yet (`twill proxy rules --mode ipvs` shows the plan)".into(),
            }));
        }
        // The node's addresses may come from its Node object at the first sync; until
        // then an unspecified address stands in (so `primary` is checked for form only).
        let stand_in = [match self.family {
            IpFamily::V4 => IpAddr::from([0, 0, 0, 0]),
            IpFamily::V6 => IpAddr::from([0u16; 8]),
        }];
        let ips: &[IpAddr] = if self.node_ips.is_empty() {
            &stand_in
        } else {
            &self.node_ips
        };
        self.renderer_config(ips, &[]).map(|_| ())
    }

    /// The iptables renderer's settings (the other modes derive theirs from it): the
    /// cluster CIDR drives the local-traffic detector, node IPs of other families are
    /// dropped, and bad values are named in errors.
    pub fn renderer_config(
        &self,
        node_ips: &[IpAddr],
        node_pod_cidrs: &[ipnet::IpNet],
    ) -> Result<Config, PartError> {
        let detector = match &self.tuning.detect_local {
            DetectLocal::ClusterCidr => match &self.cluster_cidr {
                // A dual-stack pair: this proxier's family.
                Some(c) => {
                    let nets = c
                        .split(',')
                        .map(|p| {
                            twill_model::parse_net_lenient(p.trim()).ok_or_else(|| {
                                PartError::fatal(format!("--cluster-cidr {c:?} is not a CIDR"))
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    nets.into_iter()
                        .find(|n| IpFamily::of(&n.addr()) == self.family)
                        .map_or(LocalDetector::None, |n| {
                            LocalDetector::ClusterCidr(n.trunc())
                        })
                }
                None => LocalDetector::None,
            },
            // Until the Node object is known (the first sync), nothing is local.
            DetectLocal::NodeCidr => node_pod_cidrs
                .iter()
                .find(|n| IpFamily::of(&n.addr()) == self.family)
                .map_or(LocalDetector::None, |n| LocalDetector::NodeCidr(n.trunc())),
            DetectLocal::BridgeInterface(b) => LocalDetector::BridgeInterface(b.clone()),
            DetectLocal::InterfaceNamePrefix(p) => LocalDetector::InterfaceNamePrefix(p.clone()),
        };
        let node_ips: Vec<IpAddr> = node_ips
            .iter()
            .copied()
            .filter(|ip| IpFamily::of(ip) == self.family)
            .collect();
        let mut cfg = Config::new(self.family, node_ips.clone(), detector);
        cfg.masquerade_all = self.masquerade_all;
        cfg.masquerade_bit = self.tuning.masquerade_bit;
        cfg.localhost_node_ports = self.tuning.localhost_node_ports;
        // conntrack.tcpBeLiberal: out-of-window packets are not INVALID, so nothing to drop.
        cfg.drop_invalid = !self.tuning.conntrack.tcp_be_liberal;
        for n in &self.nodeport_addresses {
            // kube-proxy's keyword: the node's primary addresses (its Node object's, or
            // --node-ip), each as a single-address CIDR.
            if n == "primary" {
                if node_ips.is_empty() {
                    return Err(PartError::fatal(
                        "--nodeport-addresses primary: this node has no primary address of this family (give --node-ip)",
                    ));
                }
                cfg.node_port_addresses
                    .extend(node_ips.iter().map(|ip| ipnet::IpNet::from(*ip)));
                continue;
            }
            cfg.node_port_addresses.push(
                twill_model::parse_net_lenient(n)
                    .ok_or_else(|| {
                        PartError::fatal(format!("--nodeport-addresses {n:?} is not a CIDR"))
                    })?
                    .trunc(),
            );
        }
        // nftables mode has no localhost NodePorts (so no route_localnet).
        if self.mode == Mode::Nftables {
            cfg.localhost_node_ports = false;
        }
        Ok(cfg)
    }

    fn model_config(&self, state: &ClusterState) -> ModelConfig {
        ModelConfig {
            family: self.family,
            node_name: self.node.clone(),
            node_zone: state
                .nodes
                .get(&self.node)
                .and_then(|n| n.zone())
                .map(str::to_string),
            gates: FeatureGates::default(),
        }
    }

    /// Build the proxier of the mode (sysctls set as kube-proxy sets them).
    pub fn build(&self, state: &ClusterState) -> Result<ModeProxier, PartError> {
        self.check_runnable()?;
        let mut node_ips = self.node_ips.clone();
        let node = state.nodes.get(&self.node);
        if node_ips.is_empty()
            && let Some(n) = node
        {
            node_ips = n.internal_ips.clone();
        }
        let pod_cidrs = node.map(|n| n.pod_cidrs.clone()).unwrap_or_default();
        let mut cfg = self.renderer_config(&node_ips, &pod_cidrs)?;
        // ServiceCIDR objects when the source has them, else --service-cidr. Read when
        // the proxier is built (the first sync): a later change needs a restart.
        let from_state = state.service_cidr_nets();
        let cidrs = if from_state.is_empty() {
            &self.tuning.service_cidrs
        } else {
            &from_state
        };
        cfg.service_cidrs = cidrs
            .iter()
            .filter(|n| IpFamily::of(&n.addr()) == self.family)
            .copied()
            .collect();
        let mc = self.model_config(state);
        if self.mode == Mode::Userspace {
            return Ok(ModeProxier::Userspace(UserspaceMode::new(mc, cfg)));
        }
        for note in twill_proxy_iptables::proxier::apply_sysctls(&cfg) {
            tracing::info!("{note}");
        }
        for note in twill_proxy::conntrack::apply_settings(&self.tuning.conntrack.as_sysctls()) {
            tracing::info!("{note}");
        }
        Ok(match self.mode {
            Mode::Nftables => {
                let mut ncfg = cfg.clone();
                ncfg.local_addresses = twill_proxy_nftables::proxier::local_addresses(self.family);
                ModeProxier::Nftables(twill_proxy_nftables::NftProxier::new(
                    mc,
                    ncfg,
                    self.sync_period,
                    twill_proxy_nftables::NftKernel,
                ))
            }
            _ => ModeProxier::Iptables(twill_proxy_iptables::Proxier::new(
                mc,
                cfg,
                self.sync_period,
                twill_proxy_iptables::Kernel::new(match self.iptables_backend {
                    Backend::System => twill_proxy_iptables::Variant::System,
                    Backend::Legacy => twill_proxy_iptables::Variant::Legacy,
                    Backend::Nft => twill_proxy_iptables::Variant::Nft,
                }),
            )),
        })
    }
}

/// The proxier of the chosen mode: a closed set, one variant per mode that applies
/// (ipvs stops at [`ProxySettings::build`] with what the kernel lacks).
pub enum ModeProxier {
    Iptables(twill_proxy_iptables::Proxier<twill_proxy_iptables::Kernel>),
    Nftables(twill_proxy_nftables::NftProxier<twill_proxy_nftables::NftKernel>),
    Userspace(UserspaceMode),
}

impl ModeProxier {
    /// Who the proxier models the cluster for.
    pub fn model_config(&self) -> &ModelConfig {
        match self {
            ModeProxier::Iptables(p) => &p.model_config,
            ModeProxier::Nftables(p) => p.model_config(),
            ModeProxier::Userspace(p) => &p.mc,
        }
    }

    /// Sync a model built with [`Self::model_config`]; `true` when something was
    /// written. The same `Arc` again only writes when a full sync is due.
    pub fn sync_model(&mut self, model: Arc<ProxyModel>, now: Instant) -> Result<bool, String> {
        match self {
            ModeProxier::Iptables(p) => {
                let r = p.sync_model(model, now).map_err(|e| e.to_string())?;
                if let Some(r) = &r {
                    tracing::debug!(?r, "iptables sync");
                }
                Ok(r.is_some())
            }
            ModeProxier::Nftables(p) => {
                let r = p.sync_model(model, now).map_err(|e| e.to_string())?;
                if let Some(r) = &r {
                    tracing::debug!(?r, "nftables sync");
                }
                Ok(r.is_some())
            }
            ModeProxier::Userspace(p) => p.sync_model(model),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        match self {
            ModeProxier::Iptables(p) => &p.metrics,
            ModeProxier::Nftables(p) => &p.metrics,
            ModeProxier::Userspace(p) => &p.metrics,
        }
    }

    /// The model of the last successful sync.
    pub fn synced_model(&self) -> Option<&ProxyModel> {
        match self {
            ModeProxier::Iptables(p) => p.synced_model(),
            ModeProxier::Nftables(p) => p.synced_model(),
            ModeProxier::Userspace(p) => p.model.as_deref(),
        }
    }
}

/// The userspace proxier with what the other modes keep themselves: the model
/// config, metrics and the last synced model (it syncs models, not states).
pub struct UserspaceMode {
    mc: ModelConfig,
    proxier: twill_proxy_userspace::Proxier,
    metrics: Metrics,
    model: Option<Arc<ProxyModel>>,
}

impl UserspaceMode {
    fn new(mc: ModelConfig, cfg: twill_proxy_userspace::Config) -> Self {
        UserspaceMode {
            mc,
            proxier: twill_proxy_userspace::Proxier::new(
                cfg,
                twill_proxy_userspace::Options::default(),
            ),
            metrics: Metrics::new(),
            model: None,
        }
    }

    fn sync_model(&mut self, model: Arc<ProxyModel>) -> Result<bool, String> {
        if self.model.as_ref() == Some(&model) {
            return Ok(false);
        }
        let started = Instant::now();
        let r = self.proxier.sync(&model).map_err(|e| e.to_string())?;
        self.metrics
            .sync_duration
            .observe(started.elapsed().as_secs_f64());
        tracing::info!(?r, "userspace sync");
        self.model = Some(model);
        Ok(true)
    }
}

/// The part: settings until the first sync, then the proxier.
pub struct ProxyPart {
    settings: ProxySettings,
    proxier: Option<ModeProxier>,
    /// The model of the state generation it was built from: an unchanged state costs
    /// no rebuild on periodic resyncs.
    model: Option<(u64, Arc<ProxyModel>)>,
    /// New connections per Service port and endpoint, from conntrack's events.
    connections: twill_proxy::connections::ConnectionCounts,
}

impl ProxyPart {
    pub fn new(settings: ProxySettings) -> Self {
        ProxyPart {
            settings,
            proxier: None,
            model: None,
            connections: Default::default(),
        }
    }

    pub fn settings(&self) -> &ProxySettings {
        &self.settings
    }

    pub fn proxier(&self) -> Option<&ModeProxier> {
        self.proxier.as_ref()
    }

    pub(crate) fn sync(&mut self, ctx: &SyncContext, status: &Status) -> Result<bool, PartError> {
        if self.proxier.is_none() {
            let p = self.settings.build(ctx.state)?;
            status.register(|r| {
                p.metrics().register(r);
                self.connections.register(r);
            });
            if let Err(e) = self.connections.start() {
                tracing::warn!(error = %e, "no per-Service connection counts");
            }
            self.proxier = Some(p);
        }
        let proxier = self.proxier.as_mut().expect("built above");
        let model = match &self.model {
            Some((g, m)) if *g == ctx.generation => m.clone(),
            _ => {
                // The old model goes first: the tracker keeps its own copy.
                self.model = None;
                let (m, _) = twill_proxy::metrics::node_model(
                    ctx.state,
                    proxier.model_config(),
                    proxier.metrics(),
                );
                self.model = Some((ctx.generation, m.clone()));
                m
            }
        };
        let wrote = proxier
            .sync_model(model, ctx.now)
            .map_err(PartError::retry)?;
        if wrote && let Some(t) = ctx.changed_at {
            proxier
                .metrics()
                .network_programming_duration
                .observe(t.elapsed().as_secs_f64());
        }
        publish_service_health(proxier.synced_model(), status);
        if wrote && let Some(m) = proxier.synced_model() {
            self.connections.update(m);
        }
        Ok(wrote)
    }

    pub(crate) fn summary(&self) -> String {
        let services = self
            .proxier
            .as_ref()
            .and_then(|p| p.synced_model())
            .map_or(0, |m| m.services.len());
        format!("proxy {services} service ports")
    }
}

/// The answers of the health-check node ports of `externalTrafficPolicy: Local`
/// services: a port shared by a service's ports answers with the largest count.
fn publish_service_health(model: Option<&ProxyModel>, status: &Status) {
    let mut st = status.lock();
    st.service_health.clear();
    let Some(m) = model else {
        return;
    };
    for (name, svc) in &m.services {
        if let Some(port) = svc.health_check_node_port {
            let local = m
                .endpoints_of(name)
                .iter()
                .filter(|e| e.is_local && e.ready)
                .count();
            let e = st.service_health.entry(port).or_insert(ServiceHealth {
                namespace: name.service.namespace.clone(),
                name: name.service.name.clone(),
                local_endpoints: 0,
            });
            e.local_endpoints = e.local_endpoints.max(local);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(nodeport_addresses: &[&str]) -> ProxySettings {
        ProxySettings {
            mode: Mode::Iptables,
            family: IpFamily::V4,
            node: "n1".into(),
            cluster_cidr: Some("10.244.0.0/16".into()),
            node_ips: vec![],
            masquerade_all: false,
            nodeport_addresses: nodeport_addresses.iter().map(|s| s.to_string()).collect(),
            iptables_backend: Backend::System,
            sync_period: Duration::from_secs(30),
            tuning: Tuning::default(),
        }
    }

    #[test]
    fn nodeport_addresses_primary_means_the_nodes_own_addresses() {
        let s = settings(&["primary", "127.0.0.0/8"]);
        assert!(
            s.check_runnable().is_ok(),
            "primary is valid before the Node is known"
        );
        let ips: Vec<IpAddr> = vec!["192.168.1.10".parse().unwrap(), "fd00::10".parse().unwrap()];
        let cfg = s.renderer_config(&ips, &[]).unwrap();
        let got: Vec<String> = cfg
            .node_port_addresses
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            got,
            ["192.168.1.10/32", "127.0.0.0/8"],
            "the IPv6 address is another family's"
        );
        let err = s.renderer_config(&[], &[]).unwrap_err().to_string();
        assert!(err.contains("primary"), "{err}");
        let err = settings(&["nonsense"])
            .check_runnable()
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"nonsense\" is not a CIDR"), "{err}");
    }
}
