//! The proxier's settings that change the ruleset.

use std::net::IpAddr;

use ipnet::IpNet;
use twill_model::IpFamily;

/// How "traffic from a local pod" is recognised (`--detect-local-mode`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LocalDetector {
    /// No detector: every source may be a pod.
    None,
    ClusterCidr(IpNet),
    NodeCidr(IpNet),
    BridgeInterface(String),
    InterfaceNamePrefix(String),
}

impl LocalDetector {
    pub fn is_implemented(&self) -> bool {
        !matches!(self, LocalDetector::None)
    }

    /// The nft match for "from a local pod" (`ip saddr 10.0.0.0/8`, `iifname "cbr0"`).
    pub fn if_local(&self, family: IpFamily) -> Option<String> {
        self.expr(family, "")
    }

    /// The nft match for "not from a local pod".
    pub fn if_not_local(&self, family: IpFamily) -> Option<String> {
        self.expr(family, "!= ")
    }

    fn expr(&self, family: IpFamily, op: &str) -> Option<String> {
        Some(match self {
            LocalDetector::None => return None,
            LocalDetector::ClusterCidr(n) | LocalDetector::NodeCidr(n) => {
                format!("{} saddr {op}{n}", ip_x(family))
            }
            LocalDetector::BridgeInterface(i) => format!("iifname {op}\"{i}\""),
            LocalDetector::InterfaceNamePrefix(p) => format!("iifname {op}\"{p}*\""),
        })
    }
}

/// `ip` or `ip6`: the table family and the address-match keyword.
pub(crate) fn ip_x(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "ip",
        IpFamily::V6 => "ip6",
    }
}

/// `ipv4_addr` or `ipv6_addr`.
pub(crate) fn addr_type(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "ipv4_addr",
        IpFamily::V6 => "ipv6_addr",
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub family: IpFamily,
    /// The node's primary IPs (the first is used for the LB source-range self check).
    pub node_ips: Vec<IpAddr>,
    /// Every local address (what `--nodeport-addresses` CIDRs select from).
    pub local_addresses: Vec<IpAddr>,
    pub local_detector: LocalDetector,
    pub masquerade_all: bool,
    /// `--masquerade-bit` (14 gives mark 0x4000).
    pub masquerade_bit: u8,
    /// `--nodeport-addresses`; empty (or only other-family CIDRs) means every local
    /// address.
    pub node_port_addresses: Vec<IpNet>,
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
}

impl Config {
    /// Upstream's defaults for `family`.
    pub fn new(family: IpFamily, node_ips: Vec<IpAddr>, local_detector: LocalDetector) -> Self {
        Config {
            family,
            local_addresses: node_ips.clone(),
            node_ips,
            local_detector,
            masquerade_all: false,
            masquerade_bit: 14,
            node_port_addresses: Vec::new(),
            service_cidrs: Vec::new(),
            large_cluster_endpoints: 1000,
        }
    }

    /// `0x4000` for bit 14.
    pub fn mark(&self) -> String {
        format!("{:#x}", 1u32 << self.masquerade_bit)
    }

    fn is_v6(&self) -> bool {
        self.family == IpFamily::V6
    }

    /// The addresses that accept NodePort traffic (`nodeport-ips`), sorted. Loopback is
    /// never one: nftables mode has no localhost NodePorts.
    pub fn node_port_ips(&self) -> Vec<IpAddr> {
        let cidrs: Vec<&IpNet> = self
            .node_port_addresses
            .iter()
            .filter(|n| n.addr().is_ipv6() == self.is_v6())
            .collect();
        let mut out: Vec<IpAddr> = self
            .local_addresses
            .iter()
            .chain(&self.node_ips)
            .copied()
            .filter(|ip| ip.is_ipv6() == self.is_v6() && !ip.is_loopback())
            .filter(|ip| cidrs.is_empty() || cidrs.iter().any(|n| n.contains(ip)))
            .collect();
        out.sort();
        out.dedup();
        out
    }
}
