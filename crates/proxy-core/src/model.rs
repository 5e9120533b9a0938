//! Service ports and their endpoints for one IP family, built from a cluster snapshot.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use twill_model::{
    AddressType, ClusterState, IpFamily, ObjectKey, Protocol, Service, ServiceType,
    SessionAffinity, TrafficPolicy,
};

use crate::chain;
use crate::endpoints::EndpointInfo;

/// `namespace/name:port` (or `namespace/name` for an unnamed port) plus the protocol:
/// kube-proxy's key for everything per service port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePortName {
    pub service: ObjectKey,
    /// The service port's name; `""` for an unnamed port.
    pub port: String,
    pub protocol: Protocol,
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.service.namespace, self.service.name)?;
        if !self.port.is_empty() {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

/// What every mode needs to know about one service port in one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePortInfo {
    pub name: ServicePortName,
    /// `name.to_string()`, kept because every rule comment uses it.
    pub name_string: String,
    pub cluster_ip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub node_port: Option<u16>,
    pub external_ips: Vec<IpAddr>,
    /// Load-balancer ingress IPs of this family (without `ipMode: Proxy` ones when the
    /// LoadBalancerIPMode gate is on).
    pub load_balancer_vips: Vec<IpAddr>,
    /// Already trimmed and truncated to the network, this family only.
    pub load_balancer_source_ranges: Vec<IpNet>,
    /// Only for LoadBalancer services with eTP Local (`NeedsHealthCheck`).
    pub health_check_node_port: Option<u16>,
    pub external_policy_local: bool,
    pub internal_policy_local: bool,
    /// `Some(timeout)` for ClientIP session affinity.
    pub affinity_timeout: Option<u32>,
    /// hash16(name + protocol), computed once: all four per-service iptables chain
    /// names share it (16 bytes here instead of four allocated names per service).
    pub chain_hash: [u8; 16],
}

impl ServicePortInfo {
    /// `KUBE-SVC-…`.
    pub fn cluster_chain(&self) -> chain::ChainName {
        chain::ChainName::hashed(chain::SVC_PREFIX, &self.chain_hash)
    }
    /// `KUBE-SVL-…`.
    pub fn local_chain(&self) -> chain::ChainName {
        chain::ChainName::hashed(chain::SVL_PREFIX, &self.chain_hash)
    }
    /// `KUBE-EXT-…`.
    pub fn external_chain(&self) -> chain::ChainName {
        chain::ChainName::hashed(chain::EXT_PREFIX, &self.chain_hash)
    }
    /// `KUBE-FW-…`.
    pub fn firewall_chain(&self) -> chain::ChainName {
        chain::ChainName::hashed(chain::FW_PREFIX, &self.chain_hash)
    }
    /// Reachable through a node port, external IP or load-balancer IP.
    pub fn externally_accessible(&self) -> bool {
        self.node_port.is_some()
            || !self.load_balancer_vips.is_empty()
            || !self.external_ips.is_empty()
    }
    /// Cluster endpoints are needed for iTP Cluster, and for any external traffic (even
    /// eTP Local short-circuits pod traffic to all endpoints).
    pub fn uses_cluster_endpoints(&self) -> bool {
        !self.internal_policy_local || self.externally_accessible()
    }
    pub fn uses_local_endpoints(&self) -> bool {
        self.internal_policy_local || (self.external_policy_local && self.externally_accessible())
    }
    /// The endpoint chain (`KUBE-SEP-…`) of `ep` for this port.
    pub fn endpoint_chain(&self, ep: &EndpointInfo) -> String {
        chain::endpoint_chain(&self.name_string, self.protocol.lower(), &ep.to_string())
    }
}

/// Feature gates that change what the proxy programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureGates {
    /// `LoadBalancerIPMode` (GA, on by default): `ipMode: Proxy` LB IPs are not captured.
    pub load_balancer_ip_mode: bool,
}

impl Default for FeatureGates {
    fn default() -> Self {
        Self {
            load_balancer_ip_mode: true,
        }
    }
}

/// Who this proxier is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelConfig {
    pub family: IpFamily,
    pub node_name: String,
    /// `topology.kubernetes.io/zone` of this node; taken from its Node object when `None`.
    pub node_zone: Option<String>,
    pub gates: FeatureGates,
}

/// A service the proxy does not program, and why (logged and counted by the daemon).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedService {
    pub service: ObjectKey,
    pub reason: String,
}

/// Every service port of one family and its endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyModel {
    pub services: BTreeMap<ServicePortName, ServicePortInfo>,
    /// Sorted by `ip:port`; a service port without slices has no entry.
    pub endpoints: BTreeMap<ServicePortName, Vec<EndpointInfo>>,
    pub node_zone: Option<String>,
}

impl ProxyModel {
    pub fn endpoints_of(&self, name: &ServicePortName) -> &[EndpointInfo] {
        self.endpoints.get(name).map(Vec::as_slice).unwrap_or(&[])
    }
}

fn service_ports(svc: &Service, cfg: &ModelConfig) -> Result<Vec<ServicePortInfo>, String> {
    let Some(cluster_ip) = svc.cluster_ip_of(cfg.family) else {
        return Ok(Vec::new());
    };
    let fam = |ip: &IpAddr| IpFamily::of(ip) == cfg.family;
    let external_ips: Vec<IpAddr> = svc.external_ips.iter().copied().filter(fam).collect();
    let load_balancer_vips: Vec<IpAddr> = if svc.service_type == ServiceType::LoadBalancer {
        svc.load_balancer_ingress
            .iter()
            .filter(|i| !(cfg.gates.load_balancer_ip_mode && i.ip_mode_proxy))
            .map(|i| i.ip)
            .filter(fam)
            .collect()
    } else {
        Vec::new()
    };
    let load_balancer_source_ranges: Vec<IpNet> = svc
        .load_balancer_source_ranges
        .iter()
        .map(IpNet::trunc)
        .filter(|n| fam(&n.addr()))
        .collect();
    let external_policy_local = svc.external_policy_local();
    let health_check_node_port = (svc.service_type == ServiceType::LoadBalancer
        && svc.external_traffic_policy == TrafficPolicy::Local)
        .then_some(svc.health_check_node_port)
        .flatten();
    let affinity_timeout = match svc.session_affinity {
        SessionAffinity::ClientIp { timeout_seconds } => Some(timeout_seconds),
        SessionAffinity::None => None,
    };
    let mut out = Vec::new();
    for p in &svc.ports {
        if p.port == 0 {
            return Err(format!("spec.ports port {:?} is 0", p.name));
        }
        let name = ServicePortName {
            service: svc.key.clone(),
            port: p.name.clone(),
            protocol: p.protocol,
        };
        let name_string = name.to_string();
        let proto = p.protocol.lower();
        // All four chains hash the same input; only the prefix differs.
        let chain_hash = chain::hash16_parts(&[name_string.as_bytes(), proto.as_bytes()]);
        out.push(ServicePortInfo {
            chain_hash,
            name,
            name_string,
            cluster_ip,
            port: p.port,
            protocol: p.protocol,
            node_port: if svc.service_type.has_node_ports() {
                p.node_port
            } else {
                None
            },
            external_ips: external_ips.clone(),
            load_balancer_vips: load_balancer_vips.clone(),
            load_balancer_source_ranges: load_balancer_source_ranges.clone(),
            health_check_node_port,
            external_policy_local,
            internal_policy_local: svc.internal_traffic_policy == TrafficPolicy::Local,
            affinity_timeout,
        });
    }
    Ok(out)
}

/// Build the model of one family from a cluster snapshot. Services that cannot be
/// programmed are returned as skipped; the others are unaffected.
pub fn build_model(state: &ClusterState, cfg: &ModelConfig) -> (ProxyModel, Vec<SkippedService>) {
    let mut model = ProxyModel {
        node_zone: cfg.node_zone.clone().or_else(|| {
            state
                .nodes
                .get(&cfg.node_name)
                .and_then(|n| n.zone().map(str::to_string))
        }),
        ..Default::default()
    };
    let mut skipped = Vec::new();
    // Both maps are built from sorted runs in bulk: inserted one by one, a BTreeMap
    // keeps its nodes about half full (8 MB instead of ~4 at 10k services).
    let mut services = Vec::new();
    for svc in state.services.values().filter(|s| s.is_proxied()) {
        match service_ports(svc, cfg) {
            Ok(ports) => services.extend(ports.into_iter().map(|p| (p.name.clone(), p))),
            Err(reason) => skipped.push(SkippedService {
                service: svc.key.clone(),
                reason,
            }),
        }
    }
    let want = match cfg.family {
        IpFamily::V4 => AddressType::IPv4,
        IpFamily::V6 => AddressType::IPv6,
    };
    // Keyed by `ip:port` per service port, so duplicates across slices fold into one.
    let mut eps: BTreeMap<ServicePortName, BTreeMap<(IpAddr, u16), EndpointInfo>> = BTreeMap::new();
    for slice in state
        .endpoint_slices
        .values()
        .filter(|s| s.address_type == want)
    {
        let Some(service) = slice.service_key() else {
            continue;
        };
        for sp in &slice.ports {
            let Some(port) = sp.port else { continue };
            let name = ServicePortName {
                service: service.clone(),
                port: sp.name.clone(),
                protocol: sp.protocol,
            };
            let set = eps.entry(name).or_default();
            for ep in &slice.endpoints {
                let Some(ip) = ep.addresses.first().copied() else {
                    continue;
                };
                if IpFamily::of(&ip) != cfg.family {
                    continue;
                }
                let is_local = ep.node_name.as_deref() == Some(cfg.node_name.as_str());
                let mut zone_hints = ep.hints_for_zones.clone();
                zone_hints.sort();
                let info = EndpointInfo {
                    ip,
                    port,
                    is_local,
                    ready: ep.conditions.is_ready(),
                    serving: ep.conditions.is_serving(),
                    terminating: ep.conditions.is_terminating(),
                    zone_hints,
                    node_hint: (!ep.hints_for_nodes.is_empty())
                        .then(|| ep.hints_for_nodes.contains(&cfg.node_name)),
                };
                // Like the slice cache: the first copy wins unless a later one is local.
                if is_local || !set.contains_key(&(ip, port)) {
                    set.insert((ip, port), info);
                }
            }
        }
    }
    model.services = services.into_iter().collect();
    model.endpoints = eps
        .into_iter()
        .map(|(name, set)| {
            let mut list: Vec<EndpointInfo> = set.into_values().collect();
            // By the `ip:port` text, formatted once per endpoint into a stack buffer (a
            // String per comparison was most of build_model's time at 100k endpoints).
            list.sort_by_cached_key(AddrKey::of);
            (name, list)
        })
        .collect();
    (model, skipped)
}

/// `ip:port` text of an endpoint without a heap allocation (at most 47 bytes:
/// `[` + 39 + `]:` + 5).
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct AddrKey([u8; 48]);

impl AddrKey {
    fn of(e: &EndpointInfo) -> Self {
        use std::io::Write as _;
        let mut buf = [0u8; 48];
        let mut cur = std::io::Cursor::new(&mut buf[..]);
        let _ = write!(cur, "{}", e.socket_addr());
        // Zero padding sorts a prefix first, as string comparison does.
        AddrKey(buf)
    }
}
