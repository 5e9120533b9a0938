//! The proxier's settings that change the rules.

use std::net::IpAddr;

use ipnet::IpNet;
use twill_model::IpFamily;

/// How "traffic from a local pod" is recognised (`--detect-local-mode`).
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// Match arguments for "from a local pod".
    pub fn if_local(&self) -> Vec<String> {
        match self {
            LocalDetector::None => vec![],
            LocalDetector::ClusterCidr(n) | LocalDetector::NodeCidr(n) => {
                vec!["-s".into(), n.to_string()]
            }
            LocalDetector::BridgeInterface(i) => vec!["-i".into(), i.clone()],
            LocalDetector::InterfaceNamePrefix(p) => vec!["-i".into(), format!("{p}+")],
        }
    }
    /// Match arguments for "not from a local pod".
    pub fn if_not_local(&self) -> Vec<String> {
        let mut v = self.if_local();
        if !v.is_empty() {
            v.insert(0, "!".into());
        }
        v
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub family: IpFamily,
    /// The node's primary IPs (first one is used for the LB source-range self check).
    pub node_ips: Vec<IpAddr>,
    /// Every local address (what `--nodeport-addresses` CIDRs are matched against).
    pub local_addresses: Vec<IpAddr>,
    pub local_detector: LocalDetector,
    pub masquerade_all: bool,
    /// `--iptables-masquerade-bit` (14 gives mark 0x4000).
    pub masquerade_bit: u8,
    /// `--nodeport-addresses`; empty means every local address.
    pub node_port_addresses: Vec<IpNet>,
    /// `--iptables-localhost-nodeports` (IPv4 only).
    pub localhost_node_ports: bool,
    /// nfacct counters are available (upstream adds `-m nfacct` matches then).
    pub nfacct: bool,
    /// `MASQUERADE --random-fully` is supported.
    pub random_fully: bool,
    /// Drop conntrack-INVALID forwarded packets (off with `--conntrack-tcp-be-liberal`).
    pub drop_invalid: bool,
}

impl Config {
    /// Upstream's defaults for `family` with the given cluster CIDR detector.
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
        }
    }

    pub fn mark(&self) -> String {
        format!("{:#x}", 1u32 << self.masquerade_bit)
    }

    pub(crate) fn is_v6(&self) -> bool {
        self.family == IpFamily::V6
    }

    /// Localhost node ports work only on IPv4 and when enabled.
    pub(crate) fn localhost_node_ports_enabled(&self) -> bool {
        self.localhost_node_ports && !self.is_v6()
    }

    pub(crate) fn node_port_addresses_match_all(&self) -> bool {
        self.node_port_addresses.iter().all(|n| {
            // CIDRs of the other family are ignored by this proxier.
            (n.addr().is_ipv4()) == self.is_v6()
        })
    }

    /// The nodePortAddresses CIDRs of this family include IPv4 loopback.
    pub(crate) fn node_ports_on_loopback(&self) -> bool {
        if self.is_v6() {
            return false;
        }
        if self.node_port_addresses_match_all() {
            return true;
        }
        let lo: IpAddr = [127, 0, 0, 1].into();
        self.node_port_addresses.iter().any(|n| n.contains(&lo))
    }

    /// Local addresses selected by `--nodeport-addresses` (when it is restricted).
    pub(crate) fn node_port_ips(&self) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = self
            .local_addresses
            .iter()
            .copied()
            .filter(|ip| ip.is_ipv6() == self.is_v6())
            .filter(|ip| self.node_port_addresses.iter().any(|n| n.contains(ip)))
            .collect();
        out.dedup();
        out
    }
}
