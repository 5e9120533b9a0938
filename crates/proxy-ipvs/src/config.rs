//! How the shared proxier settings ([`twill_proxy_core::Config`]) read in the ipvs
//! mode: which addresses take node ports. The ipvs mode renders only CIDR-based
//! local-traffic detectors ([`LocalDetector::cidr`]); the interface-based ones act as
//! none, as they did before the settings were shared.

use std::net::IpAddr;

pub use twill_proxy_core::{Config, LocalDetector, Scheduler};

/// The ipvs mode's node-port addresses.
pub(crate) trait NodePorts {
    /// Local addresses selected by `--nodeport-addresses` (every non-loopback address of
    /// this family when it names none), sorted.
    fn node_port_ips(&self) -> Vec<IpAddr>;
}

impl NodePorts for Config {
    fn node_port_ips(&self) -> Vec<IpAddr> {
        let cidrs = self.node_port_cidrs();
        let mut v: Vec<IpAddr> = self
            .local_addresses
            .iter()
            .copied()
            .filter(|ip| ip.is_ipv6() == self.is_v6() && !ip.is_loopback())
            .filter(|ip| cidrs.is_empty() || cidrs.iter().any(|n| n.contains(ip)))
            .collect();
        v.sort();
        v.dedup();
        v
    }
}
