//! How the shared proxier settings ([`twill_proxy_core::Config`]) read in iptables
//! terms: the local-traffic detector as match arguments, and upstream's iptables rules
//! for which addresses take node ports.

use std::net::IpAddr;

pub use twill_proxy_core::{Config, LocalDetector};

/// The local-traffic detector as iptables match arguments.
pub trait DetectorArgs {
    /// Match arguments for "from a local pod".
    fn if_local(&self) -> Vec<String>;
    /// Match arguments for "not from a local pod".
    fn if_not_local(&self) -> Vec<String>;
}

impl DetectorArgs for LocalDetector {
    fn if_local(&self) -> Vec<String> {
        match self {
            LocalDetector::ClusterCidr(n) | LocalDetector::NodeCidr(n) => {
                vec!["-s".into(), n.to_string()]
            }
            LocalDetector::BridgeInterface(i) => vec!["-i".into(), i.clone()],
            LocalDetector::InterfaceNamePrefix(p) => vec!["-i".into(), format!("{p}+")],
            _ => vec![],
        }
    }

    fn if_not_local(&self) -> Vec<String> {
        let mut v = self.if_local();
        if !v.is_empty() {
            v.insert(0, "!".into());
        }
        v
    }
}

/// The iptables mode's node-port address rules.
pub(crate) trait NodePorts {
    /// Localhost node ports work only on IPv4 and when enabled.
    fn localhost_node_ports_enabled(&self) -> bool;
    /// No `--nodeport-addresses` CIDR of this family: every address takes node ports.
    fn node_port_addresses_match_all(&self) -> bool;
    /// The nodePortAddresses CIDRs of this family include IPv4 loopback.
    fn node_ports_on_loopback(&self) -> bool;
    /// Local addresses selected by `--nodeport-addresses` (when it is restricted).
    fn node_port_ips(&self) -> Vec<IpAddr>;
}

impl NodePorts for Config {
    fn localhost_node_ports_enabled(&self) -> bool {
        self.localhost_node_ports && !self.is_v6()
    }

    fn node_port_addresses_match_all(&self) -> bool {
        self.node_port_cidrs().is_empty()
    }

    fn node_ports_on_loopback(&self) -> bool {
        if self.is_v6() {
            return false;
        }
        if self.node_port_addresses_match_all() {
            return true;
        }
        let lo: IpAddr = [127, 0, 0, 1].into();
        self.node_port_addresses.iter().any(|n| n.contains(&lo))
    }

    fn node_port_ips(&self) -> Vec<IpAddr> {
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
