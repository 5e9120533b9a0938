//! The ipvs proxier's settings that change the plan.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use twill_model::IpFamily;

/// An IPVS scheduler (`--ipvs-scheduler`). A closed list: the kernel loads
/// `ip_vs_<name>` for each, and an unknown name would only fail at apply time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[non_exhaustive]
pub enum Scheduler {
    /// Round robin (upstream's default).
    #[default]
    Rr,
    /// Weighted round robin.
    Wrr,
    /// Least connections.
    Lc,
    /// Weighted least connections.
    Wlc,
    /// Locality-based least connections.
    Lblc,
    /// Locality-based least connections with replication.
    Lblcr,
    /// Destination hashing.
    Dh,
    /// Source hashing.
    Sh,
    /// Shortest expected delay.
    Sed,
    /// Never queue.
    Nq,
    /// Maglev hashing.
    Mh,
    /// Weighted failover.
    Fo,
    /// Weighted overflow.
    Ovf,
}

impl Scheduler {
    pub const ALL: [Scheduler; 13] = [
        Scheduler::Rr,
        Scheduler::Wrr,
        Scheduler::Lc,
        Scheduler::Wlc,
        Scheduler::Lblc,
        Scheduler::Lblcr,
        Scheduler::Dh,
        Scheduler::Sh,
        Scheduler::Sed,
        Scheduler::Nq,
        Scheduler::Mh,
        Scheduler::Fo,
        Scheduler::Ovf,
    ];
    /// The kernel's name (`IPVS_SVC_ATTR_SCHED_NAME`).
    pub fn as_str(self) -> &'static str {
        match self {
            Scheduler::Rr => "rr",
            Scheduler::Wrr => "wrr",
            Scheduler::Lc => "lc",
            Scheduler::Wlc => "wlc",
            Scheduler::Lblc => "lblc",
            Scheduler::Lblcr => "lblcr",
            Scheduler::Dh => "dh",
            Scheduler::Sh => "sh",
            Scheduler::Sed => "sed",
            Scheduler::Nq => "nq",
            Scheduler::Mh => "mh",
            Scheduler::Fo => "fo",
            Scheduler::Ovf => "ovf",
        }
    }
    /// `""` means the default, as upstream's flag does.
    pub fn parse(s: &str) -> Option<Self> {
        if s.is_empty() {
            return Some(Scheduler::Rr);
        }
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

impl fmt::Display for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How "traffic from a local pod" is recognised, for the masquerade rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalDetector {
    None,
    Cidr(IpNet),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub family: IpFamily,
    /// The node's primary IPs (the LB source-range self check uses the first).
    pub node_ips: Vec<IpAddr>,
    /// Every local address: node ports get a virtual server on each (minus loopback,
    /// which upstream's ipvs mode never served), narrowed by `node_port_addresses`.
    pub local_addresses: Vec<IpAddr>,
    /// `--nodeport-addresses`; empty means every local address.
    pub node_port_addresses: Vec<IpNet>,
    pub scheduler: Scheduler,
    /// `--ipvs-strict-arp`: `arp_ignore=1`, `arp_announce=2`, so the node does not answer
    /// ARP for addresses on `kube-ipvs0`.
    pub strict_arp: bool,
    /// `--ipvs-exclude-cidrs`: virtual servers there are never deleted by a sync.
    pub exclude_cidrs: Vec<IpNet>,
    pub masquerade_all: bool,
    /// 14 gives mark 0x4000.
    pub masquerade_bit: u8,
    pub local_detector: LocalDetector,
}

impl Config {
    pub fn new(family: IpFamily, node_ips: Vec<IpAddr>) -> Self {
        Config {
            family,
            local_addresses: node_ips.clone(),
            node_ips,
            node_port_addresses: Vec::new(),
            scheduler: Scheduler::Rr,
            strict_arp: false,
            exclude_cidrs: Vec::new(),
            masquerade_all: false,
            masquerade_bit: 14,
            local_detector: LocalDetector::None,
        }
    }
    /// The shared settings of an iptables-mode renderer config (what `twill proxy` builds
    /// from its flags); ipvs-only knobs keep their defaults.
    pub fn from_iptables(c: &twill_proxy_iptables::Config) -> Self {
        use twill_proxy_iptables::LocalDetector as D;
        let mut out = Config::new(c.family, c.node_ips.clone());
        out.local_addresses = c.local_addresses.clone();
        out.node_port_addresses = c.node_port_addresses.clone();
        out.masquerade_all = c.masquerade_all;
        out.masquerade_bit = c.masquerade_bit;
        out.local_detector = match &c.local_detector {
            D::ClusterCidr(n) | D::NodeCidr(n) => LocalDetector::Cidr(*n),
            _ => LocalDetector::None,
        };
        out
    }
    pub fn v6(&self) -> bool {
        self.family == IpFamily::V6
    }
    pub fn mark(&self) -> String {
        format!("{:#x}", 1u32 << self.masquerade_bit)
    }
    /// The addresses node ports are served on, sorted.
    pub fn node_port_ips(&self) -> Vec<IpAddr> {
        let cidrs: Vec<&IpNet> = self
            .node_port_addresses
            .iter()
            .filter(|n| n.addr().is_ipv6() == self.v6())
            .collect();
        let mut v: Vec<IpAddr> = self
            .local_addresses
            .iter()
            .copied()
            .filter(|ip| ip.is_ipv6() == self.v6() && !ip.is_loopback())
            .filter(|ip| cidrs.is_empty() || cidrs.iter().any(|n| n.contains(ip)))
            .collect();
        v.sort();
        v.dedup();
        v
    }
}
