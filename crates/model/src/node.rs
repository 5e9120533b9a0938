use std::net::IpAddr;

use ipnet::IpNet;

use crate::meta::Labels;

/// A node: its addresses, pod CIDRs and topology zone.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Node {
    pub name: String,
    pub labels: Labels,
    /// `status.addresses` of type InternalIP, in order.
    pub internal_ips: Vec<IpAddr>,
    pub pod_cidrs: Vec<IpNet>,
    pub unschedulable: bool,
}

impl Node {
    /// `topology.kubernetes.io/zone`.
    pub fn zone(&self) -> Option<&str> {
        self.labels
            .get("topology.kubernetes.io/zone")
            .map(String::as_str)
    }
}
