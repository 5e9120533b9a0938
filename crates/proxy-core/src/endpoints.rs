//! Endpoints as kube-proxy's EndpointSlice cache sees them.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// One endpoint of one service port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndpointInfo {
    pub ip: IpAddr,
    pub port: u16,
    /// The endpoint's `nodeName` is this node.
    pub is_local: bool,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// `hints.forZones[].name`, sorted.
    pub zone_hints: Vec<String>,
    /// `hints.forNodes`: `None` without node hints, else whether one names this node.
    pub node_hint: Option<bool>,
}

impl EndpointInfo {
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }
}

/// `ip:port`, or `[ip6]:port`: the form used in comments, DNAT targets and hashes.
impl fmt::Display for EndpointInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.socket_addr())
    }
}
