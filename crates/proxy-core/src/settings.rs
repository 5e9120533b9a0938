//! The proxier settings every mode reads: one [`Config`] and one [`LocalDetector`],
//! after `KubeProxyConfiguration` (shared fields at the top, then the fields only one
//! mode reads, named by that mode). Each mode crate renders the detector in its own
//! syntax and picks node-port addresses by its own upstream rule; the settings
//! themselves live here so no mode converts another mode's type.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use twill_model::IpFamily;

/// How "traffic from a local pod" is recognised (`--detect-local-mode`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LocalDetector {
    /// No detector: every source may be a pod.
    None,
    /// `ClusterCIDR`: sources inside the cluster's pod CIDR.
    ClusterCidr(IpNet),
    /// `NodeCIDR`: sources inside this node's pod CIDR.
    NodeCidr(IpNet),
    /// `BridgeInterface`: packets arriving on the pod bridge.
    BridgeInterface(String),
    /// `InterfaceNamePrefix`: packets arriving on interfaces with this prefix.
    InterfaceNamePrefix(String),
}

impl LocalDetector {
    pub fn is_implemented(&self) -> bool {
        !matches!(self, LocalDetector::None)
    }

    /// The pod CIDR of a CIDR-based detector (the only kind the ipvs mode renders).
    pub fn cidr(&self) -> Option<IpNet> {
        match self {
            LocalDetector::ClusterCidr(n) | LocalDetector::NodeCidr(n) => Some(*n),
            _ => None,
        }
    }
}

/// An IPVS scheduler (`--ipvs-scheduler`). A closed list: the kernel loads
/// `ip_vs_<name>` for each, and an unknown name would only fail at apply time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[non_exhaustive]
pub enum Scheduler {
    #[default]
    Rr,
    Wrr,
    Lc,
    Wlc,
    Lblc,
    Lblcr,
    Dh,
    Sh,
    Sed,
    Nq,
    Mh,
    Fo,
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

    /// The kernel's and kube-proxy's name for it.
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

    /// Parse a scheduler name; empty means the default (`rr`), as upstream.
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

/// The settings that change what a proxier writes, for one IP family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub family: IpFamily,
    /// The node's primary IPs (the first is used for the LB source-range self check).
    pub node_ips: Vec<IpAddr>,
    /// Every local address (what `--nodeport-addresses` CIDRs select from).
    pub local_addresses: Vec<IpAddr>,
    pub local_detector: LocalDetector,
    /// `--masquerade-all`.
    pub masquerade_all: bool,
    /// `--iptables-masquerade-bit` (14 gives mark 0x4000); every mode uses it.
    pub masquerade_bit: u8,
    /// `--nodeport-addresses`; empty (or only other-family CIDRs) means every local
    /// address.
    pub node_port_addresses: Vec<IpNet>,
    /// `--iptables-localhost-nodeports` (IPv4 only; iptables and userspace modes).
    pub localhost_node_ports: bool,

    // iptables mode.
    /// nfacct counters are available (upstream adds `-m nfacct` matches then).
    pub nfacct: bool,
    /// `MASQUERADE --random-fully` is supported.
    pub random_fully: bool,
    /// Drop conntrack-INVALID forwarded packets (off with `--conntrack-tcp-be-liberal`).
    pub drop_invalid: bool,

    // nftables mode.
    /// Service CIDRs: traffic to an unallocated ClusterIP in them is dropped
    /// (`cluster-ips-check`). Empty: no such rule.
    pub service_cidrs: Vec<IpNet>,
    /// Above this many endpoints in total, each policy chain's `numgen` dispatch uses a
    /// named verdict map (named like the chain) instead of an inline one. Same packet
    /// path, but the kernel binds an inline (anonymous) map by walking the whole
    /// transaction, which makes a large full sync quadratic (about 100 s at 250k
    /// endpoints). Upstream's iptables mode has the same kind of switch
    /// (`largeClusterEndpointsThreshold`, 1000), which drops rule comments.
    pub large_cluster_endpoints: usize,

    // ipvs mode.
    pub scheduler: Scheduler,
    /// `--ipvs-strict-arp`.
    pub strict_arp: bool,
    /// `--ipvs-exclude-cidrs`: virtual servers in these CIDRs are never deleted.
    pub exclude_cidrs: Vec<IpNet>,
}

impl Config {
    /// Upstream's defaults for `family` with the given local-traffic detector.
    pub fn new(family: IpFamily, node_ips: Vec<IpAddr>, local_detector: LocalDetector) -> Self {
        Config {
            family,
            local_addresses: node_ips.clone(),
            node_ips,
            local_detector,
            masquerade_all: false,
            masquerade_bit: 14,
            node_port_addresses: Vec::new(),
            localhost_node_ports: true,
            nfacct: false,
            random_fully: false,
            drop_invalid: true,
            service_cidrs: Vec::new(),
            large_cluster_endpoints: 1000,
            scheduler: Scheduler::Rr,
            strict_arp: false,
            exclude_cidrs: Vec::new(),
        }
    }

    /// The masquerade mark, as the rules write it (`0x4000` for bit 14).
    pub fn mark(&self) -> String {
        format!("{:#x}", 1u32 << self.masquerade_bit)
    }

    pub fn is_v6(&self) -> bool {
        self.family == IpFamily::V6
    }

    /// `--nodeport-addresses` CIDRs of this family; none left means "every address".
    pub fn node_port_cidrs(&self) -> Vec<IpNet> {
        self.node_port_addresses
            .iter()
            .filter(|n| n.addr().is_ipv6() == self.is_v6())
            .copied()
            .collect()
    }
}
