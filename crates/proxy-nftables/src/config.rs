//! How the shared proxier settings ([`twill_proxy_core::Config`]) read in nftables
//! terms: the local-traffic detector as an nft match, the family keywords, and the
//! addresses that take node ports.

use std::net::IpAddr;

use twill_model::IpFamily;
pub use twill_proxy_core::{Config, LocalDetector};

/// The local-traffic detector as an nft match.
pub trait DetectorMatch {
    /// The nft match for "from a local pod" (`ip saddr 10.0.0.0/8`, `iifname "cbr0"`).
    fn if_local(&self, family: IpFamily) -> Option<String>;
    /// The nft match for "not from a local pod".
    fn if_not_local(&self, family: IpFamily) -> Option<String>;
}

impl DetectorMatch for LocalDetector {
    fn if_local(&self, family: IpFamily) -> Option<String> {
        detector_expr(self, family, "")
    }

    fn if_not_local(&self, family: IpFamily) -> Option<String> {
        detector_expr(self, family, "!= ")
    }
}

fn detector_expr(d: &LocalDetector, family: IpFamily, op: &str) -> Option<String> {
    Some(match d {
        LocalDetector::ClusterCidr(n) | LocalDetector::NodeCidr(n) => {
            format!("{} saddr {op}{n}", ip_x(family))
        }
        LocalDetector::BridgeInterface(i) => format!("iifname {op}\"{i}\""),
        LocalDetector::InterfaceNamePrefix(p) => format!("iifname {op}\"{p}*\""),
        _ => return None,
    })
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

/// The addresses that accept NodePort traffic (`nodeport-ips`), sorted. Loopback is
/// never one: nftables mode has no localhost NodePorts.
pub fn node_port_ips(cfg: &Config) -> Vec<IpAddr> {
    let cidrs = cfg.node_port_cidrs();
    let mut out: Vec<IpAddr> = cfg
        .local_addresses
        .iter()
        .chain(&cfg.node_ips)
        .copied()
        .filter(|ip| ip.is_ipv6() == cfg.is_v6() && !ip.is_loopback())
        .filter(|ip| cidrs.is_empty() || cidrs.iter().any(|n| n.contains(ip)))
        .collect();
    out.sort();
    out.dedup();
    out
}
