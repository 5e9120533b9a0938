//! Cluster IPs, node ports, load-balancer addresses and node pod subnets.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use twill_model::{
    ClusterState, IpFamily, IpFamilyPolicy, Kind, LoadBalancerIngress, ObjectKey, ObjectRef,
    Service, ServiceType, TrafficPolicy,
};

use crate::names::hash64;
use crate::{Problem, Settings};

/// Upstream's split of a range (`calculateRangeOffset`): the lower band, 1/16 of the
/// range clamped to 16..=256 entries, is left for explicit requests so that a user who
/// asks for a well-known address usually gets it.
fn lower_band(size: u128) -> u128 {
    const MIN: u128 = 16;
    const MAX: u128 = 256;
    if size < MIN {
        0
    } else {
        (size / 16).clamp(MIN, MAX)
    }
}

/// Allocation inside a range of `size` slots with upstream's banding; slots are offsets.
#[derive(Debug, Clone, Default)]
struct Bands {
    size: u128,
    used: BTreeSet<u128>,
}

impl Bands {
    fn new(size: u128) -> Self {
        Self {
            size,
            used: BTreeSet::new(),
        }
    }

    fn reserve(&mut self, offset: u128) -> bool {
        offset < self.size && self.used.insert(offset)
    }

    /// A free slot for `hash`: probe the upper band from a hashed start, then the lower.
    fn allocate(&mut self, hash: u64) -> Option<u128> {
        let low = lower_band(self.size);
        for (start, len) in [(low, self.size - low), (0, low)] {
            if len == 0 {
                continue;
            }
            let first = u128::from(hash) % len;
            // Probe linearly, bounded by the band size; used slots are few compared with
            // the probes in any realistic cluster, and the bound keeps it total.
            for i in 0..len.min(1 << 20) {
                let off = start + (first + i) % len;
                if self.used.insert(off) {
                    return Some(off);
                }
            }
        }
        None
    }
}

/// Cluster IP allocation in one service CIDR. Offset 0 is the first usable address
/// (the network address is never handed out, nor the IPv4 broadcast address).
#[derive(Debug, Clone)]
pub struct IpAllocator {
    cidr: IpNet,
    bands: Bands,
}

impl IpAllocator {
    pub fn new(cidr: IpNet) -> Self {
        let host_bits = u32::from(cidr.max_prefix_len() - cidr.prefix_len());
        let size = if cidr.addr().is_ipv4() {
            // Neither the network nor the broadcast address.
            (1u128 << host_bits).saturating_sub(2)
        } else {
            // Upstream caps IPv6 service ranges at 2^20 addresses; the network address
            // is never handed out.
            (1u128 << host_bits.min(20)) - 1
        };
        Self {
            cidr: cidr.trunc(),
            bands: Bands::new(size),
        }
    }

    pub fn cidr(&self) -> IpNet {
        self.cidr
    }

    pub fn size(&self) -> u128 {
        self.bands.size
    }

    fn addr(&self, offset: u128) -> IpAddr {
        match self.cidr.network() {
            IpAddr::V4(a) => IpAddr::V4((u32::from(a) + 1 + offset as u32).into()),
            IpAddr::V6(a) => IpAddr::V6((u128::from(a) + 1 + offset).into()),
        }
    }

    fn offset(&self, ip: IpAddr) -> Option<u128> {
        if !self.cidr.contains(&ip) {
            return None;
        }
        let (base, ip) = match (self.cidr.network(), ip) {
            (IpAddr::V4(b), IpAddr::V4(i)) => (u128::from(u32::from(b)), u128::from(u32::from(i))),
            (IpAddr::V6(b), IpAddr::V6(i)) => (u128::from(b), u128::from(i)),
            _ => return None,
        };
        (ip > base)
            .then(|| ip - base - 1)
            .filter(|o| *o < self.bands.size)
    }

    /// Whether `ip` is an address this range can hand out.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.offset(ip).is_some()
    }

    /// Reserve a specific address; false if outside the range or taken.
    pub fn reserve(&mut self, ip: IpAddr) -> bool {
        self.offset(ip).is_some_and(|o| self.bands.reserve(o))
    }

    /// The `n`th usable address (0 = first), if free; reserves it.
    pub fn reserve_nth(&mut self, n: u128) -> Option<IpAddr> {
        self.bands.reserve(n).then(|| self.addr(n))
    }

    /// A free address chosen by `hash` (upper band first).
    pub fn allocate(&mut self, hash: u64) -> Option<IpAddr> {
        self.bands.allocate(hash).map(|o| self.addr(o))
    }
}

/// Node-port allocation in an inclusive range.
#[derive(Debug, Clone)]
pub struct PortAllocator {
    lo: u16,
    bands: Bands,
}

impl PortAllocator {
    pub fn new(range: (u16, u16)) -> Self {
        let (lo, hi) = range;
        Self {
            lo,
            bands: Bands::new(u128::from(hi.saturating_sub(lo)) + u128::from(hi >= lo)),
        }
    }
    pub fn contains(&self, port: u16) -> bool {
        port >= self.lo && u128::from(port - self.lo) < self.bands.size
    }
    pub fn reserve(&mut self, port: u16) -> bool {
        self.contains(port) && self.bands.reserve(u128::from(port - self.lo))
    }
    pub fn allocate(&mut self, hash: u64) -> Option<u16> {
        self.bands.allocate(hash).map(|o| self.lo + o as u16)
    }
}

fn problem(key: &ObjectKey, path: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem {
        object: ObjectRef {
            kind: Kind::Service,
            key: key.clone(),
        },
        path: path.into(),
        message: message.into(),
    }
}

/// Give nodes without a pod CIDR the next free subnet, in name order.
/// A node left without one is a problem: its pods could get no address.
pub(crate) fn assign_node_subnets(
    state: &mut ClusterState,
    settings: &Settings,
    problems: &mut Vec<Problem>,
) {
    let taken: BTreeSet<IpNet> = state
        .nodes
        .values()
        .flat_map(|n| n.pod_cidrs.iter().copied())
        .collect();
    let mut free = settings
        .pod_cidr
        .subnets(settings.node_subnet_len)
        .into_iter()
        .flatten()
        .filter(|s| !taken.iter().any(|t| t.contains(s) || s.contains(t)));
    for node in state.nodes.values_mut() {
        if !node.pod_cidrs.is_empty() {
            continue;
        }
        match free.next() {
            Some(s) => node.pod_cidrs.push(s),
            None => problems.push(Problem {
                object: ObjectRef {
                    kind: Kind::Node,
                    key: ObjectKey::cluster(node.name.clone()),
                },
                path: "spec.podCIDR".into(),
                message: format!(
                    "no pod subnet left: {} holds {} subnets of /{}, all taken",
                    settings.pod_cidr,
                    settings.node_capacity(),
                    settings.node_subnet_len
                ),
            }),
        }
    }
}

/// Default `ipFamilies` the way the API server does for this cluster; `Err` explains why
/// the service cannot be served.
fn default_families(
    svc: &Service,
    cluster: &[IpFamily],
) -> Result<Vec<IpFamily>, (String, String)> {
    let primary = cluster[0];
    let mut fams = svc.ip_families.clone();
    for f in &fams {
        if !cluster.contains(f) {
            return Err((
                "spec.ipFamilies".into(),
                format!(
                    "{} is not configured on this cluster (no service CIDR of that family)",
                    f.as_str()
                ),
            ));
        }
    }
    match svc.ip_family_policy {
        IpFamilyPolicy::SingleStack => {
            if fams.is_empty() {
                fams.push(primary);
            }
        }
        IpFamilyPolicy::PreferDualStack | IpFamilyPolicy::RequireDualStack => {
            if fams.is_empty() {
                fams.push(primary);
            }
            for f in cluster {
                if !fams.contains(f) && fams.len() < 2 {
                    fams.push(*f);
                }
            }
            if svc.ip_family_policy == IpFamilyPolicy::RequireDualStack && fams.len() < 2 {
                return Err((
                    "spec.ipFamilyPolicy".into(),
                    "RequireDualStack needs a dual-stack cluster (service CIDRs of both families)"
                        .into(),
                ));
            }
        }
    }
    Ok(fams)
}

/// Cluster IPs, node ports and LB addresses for every service.
pub(crate) fn allocate_services(
    state: &mut ClusterState,
    settings: &Settings,
    problems: &mut Vec<Problem>,
) {
    let mut ip_allocs: BTreeMap<IpFamily, IpAllocator> = BTreeMap::new();
    let mut cluster_families = Vec::new();
    for cidr in &settings.service_cidrs {
        let f = if cidr.addr().is_ipv4() {
            IpFamily::V4
        } else {
            IpFamily::V6
        };
        if let std::collections::btree_map::Entry::Vacant(e) = ip_allocs.entry(f) {
            cluster_families.push(f);
            e.insert(IpAllocator::new(*cidr));
        }
    }
    let mut ports = PortAllocator::new(settings.node_port_range);
    let mut drop: BTreeSet<ObjectKey> = BTreeSet::new();

    // Pass 1: families, explicit cluster IPs and explicit node ports, in key order (the
    // first object in that order keeps a contested value).
    let mut port_owner: BTreeMap<u16, ObjectKey> = BTreeMap::new();
    for svc in state.services.values_mut() {
        if svc.service_type == ServiceType::ExternalName || cluster_families.is_empty() {
            continue;
        }
        match default_families(svc, &cluster_families) {
            Ok(f) => svc.ip_families = f,
            Err((path, msg)) => {
                problems.push(problem(&svc.key, path, msg));
                drop.insert(svc.key.clone());
                continue;
            }
        }
        for (i, ip) in svc.cluster_ips.iter().enumerate() {
            let fam = IpFamily::of(ip);
            let Some(a) = ip_allocs.get_mut(&fam) else {
                continue;
            };
            let path = if i == 0 {
                "spec.clusterIP".to_string()
            } else {
                format!("spec.clusterIPs[{i}]")
            };
            if !a.contains(*ip) {
                problems.push(problem(
                    &svc.key,
                    path,
                    format!("{ip} is not in the service CIDR {} (or is its network or broadcast address)", a.cidr()),
                ));
                drop.insert(svc.key.clone());
            } else if !a.reserve(*ip) {
                problems.push(problem(
                    &svc.key,
                    path,
                    format!("{ip} is already allocated to another service"),
                ));
                drop.insert(svc.key.clone());
            }
        }
        let mut own = BTreeSet::new();
        let explicit = svc.ports.iter().enumerate().filter_map(|(i, p)| {
            p.node_port
                .map(|n| (format!("spec.ports[{i}].nodePort"), n))
        });
        let explicit: Vec<(String, u16)> = explicit
            .chain(
                svc.health_check_node_port
                    .map(|n| ("spec.healthCheckNodePort".to_string(), n)),
            )
            .collect();
        for (path, n) in explicit {
            let (lo, hi) = settings.node_port_range;
            if !ports.contains(n) {
                problems.push(problem(
                    &svc.key,
                    path,
                    format!("{n} is not in the node-port range {lo}-{hi}"),
                ));
                drop.insert(svc.key.clone());
            } else if own.contains(&n) {
                // One service may use one node port for TCP and UDP of the same port.
            } else if !ports.reserve(n) {
                let other = port_owner
                    .get(&n)
                    .map(|k| format!(" (by Service {k})"))
                    .unwrap_or_default();
                problems.push(problem(
                    &svc.key,
                    path,
                    format!("node port {n} is already allocated{other}"),
                ));
                drop.insert(svc.key.clone());
            } else {
                own.insert(n);
                port_owner.insert(n, svc.key.clone());
            }
        }
    }
    for k in &drop {
        state.services.remove(k);
    }

    // Pass 2: well-known addresses when their services did not ask for one.
    for (key, nth) in [
        (ObjectKey::new("default", "kubernetes"), 0u128),
        (ObjectKey::new("kube-system", "kube-dns"), 9),
    ] {
        if let Some(svc) = state.services.get_mut(&key)
            && svc.cluster_ips.is_empty()
            && !svc.headless
            && svc.service_type != ServiceType::ExternalName
        {
            let fam = svc.ip_families[0];
            if let Some(ip) = ip_allocs.get_mut(&fam).and_then(|a| a.reserve_nth(nth)) {
                svc.cluster_ips.push(ip);
            }
        }
    }

    // Pass 3: dynamic allocation.
    let mut pool = LbPool::new(&settings.load_balancer_pool, state);
    let mut exhausted = Vec::new();
    for svc in state.services.values_mut() {
        if svc.service_type == ServiceType::ExternalName {
            continue;
        }
        let name = svc.key.to_string();
        if !svc.headless {
            for fam in svc.ip_families.clone() {
                if svc.cluster_ip_of(fam).is_some() {
                    continue;
                }
                match ip_allocs
                    .get_mut(&fam)
                    .and_then(|a| a.allocate(hash64(settings.seed, &["ip", &name])))
                {
                    Some(ip) => svc.cluster_ips.push(ip),
                    None => exhausted.push(problem(
                        &svc.key,
                        "spec.clusterIPs",
                        format!("no free {} cluster IP left", fam.as_str()),
                    )),
                }
            }
        }
        let wants_node_ports = svc.service_type == ServiceType::NodePort
            || (svc.service_type == ServiceType::LoadBalancer
                && svc.allocate_load_balancer_node_ports);
        if wants_node_ports {
            let mut by_port: BTreeMap<u16, u16> = BTreeMap::new();
            for p in svc
                .ports
                .iter()
                .filter_map(|p| p.node_port.map(|n| (p.port, n)))
            {
                by_port.insert(p.0, p.1);
            }
            for i in 0..svc.ports.len() {
                if svc.ports[i].node_port.is_some() {
                    continue;
                }
                // The same service port number over two protocols shares one node port.
                let n = by_port.get(&svc.ports[i].port).copied().or_else(|| {
                    ports.allocate(hash64(
                        settings.seed,
                        &["nodeport", &name, &svc.ports[i].port.to_string()],
                    ))
                });
                match n {
                    Some(n) => {
                        by_port.insert(svc.ports[i].port, n);
                        svc.ports[i].node_port = Some(n);
                    }
                    None => exhausted.push(problem(
                        &svc.key,
                        format!("spec.ports[{i}].nodePort"),
                        "no free node port left",
                    )),
                }
            }
        }
        if svc.service_type == ServiceType::LoadBalancer
            && svc.external_traffic_policy == TrafficPolicy::Local
            && svc.health_check_node_port.is_none()
        {
            svc.health_check_node_port =
                ports.allocate(hash64(settings.seed, &["healthcheck", &name]));
        }
        if svc.service_type == ServiceType::LoadBalancer && svc.load_balancer_ingress.is_empty() {
            for fam in svc.ip_families.clone() {
                let wanted = svc.load_balancer_ip.filter(|ip| IpFamily::of(ip) == fam);
                if let Some(ip) = pool.allocate(fam, wanted) {
                    svc.load_balancer_ingress.push(LoadBalancerIngress {
                        ip,
                        ip_mode_proxy: false,
                    });
                }
            }
        }
    }
    problems.extend(exhausted);
}

/// The bare-metal load-balancer pool: addresses handed out in order, requested ones
/// honoured when free.
struct LbPool {
    nets: Vec<IpNet>,
    used: BTreeSet<IpAddr>,
}

impl LbPool {
    fn new(nets: &[IpNet], state: &ClusterState) -> Self {
        let used = state
            .services
            .values()
            .flat_map(|s| s.load_balancer_ingress.iter().map(|i| i.ip))
            .collect();
        Self {
            nets: nets.to_vec(),
            used,
        }
    }

    fn usable(net: &IpNet, ip: &IpAddr) -> bool {
        // Skip the network and broadcast addresses of IPv4 pools wider than /31.
        !(net.addr().is_ipv4()
            && net.prefix_len() < 31
            && (*ip == net.network() || *ip == net.broadcast()))
    }

    fn allocate(&mut self, fam: IpFamily, wanted: Option<IpAddr>) -> Option<IpAddr> {
        if let Some(ip) = wanted
            && self
                .nets
                .iter()
                .any(|n| n.contains(&ip) && Self::usable(n, &ip))
            && self.used.insert(ip)
        {
            return Some(ip);
        }
        for net in self.nets.iter().filter(|n| IpFamily::of(&n.addr()) == fam) {
            // A pool is small in practice; the bound keeps a huge IPv6 pool from hanging.
            for ip in net.hosts().take(1 << 16) {
                if Self::usable(net, &ip) && !self.used.contains(&ip) {
                    self.used.insert(ip);
                    return Some(ip);
                }
            }
        }
        None
    }
}
