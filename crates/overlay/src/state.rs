//! The kernel state a node must hold, as data. Backends produce it; `twill-netlink` makes
//! the kernel match it. Sets are ordered so the same leases give the same bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::lease::{Mac, SubnetKey};

/// A link the overlay creates and owns. Closed on purpose: appliers match every kind.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum LinkSpec {
    Vxlan(VxlanLink),
    Tun(TunLink),
}

impl LinkSpec {
    pub fn name(&self) -> &str {
        match self {
            LinkSpec::Vxlan(v) => &v.name,
            LinkSpec::Tun(t) => &t.name,
        }
    }

    pub fn address(&self) -> Ipv4Net {
        match self {
            LinkSpec::Vxlan(v) => v.address,
            LinkSpec::Tun(t) => t.address,
        }
    }

    pub fn mtu(&self) -> u32 {
        match self {
            LinkSpec::Vxlan(v) => v.mtu,
            LinkSpec::Tun(t) => t.mtu,
        }
    }
}

/// `ip link add flannel.1 type vxlan id 1 local <ip> dev eth0 dstport 8472 nolearning`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct VxlanLink {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    pub local: Ipv4Addr,
    pub dev: String,
    pub mtu: u32,
    pub learning: bool,
    pub gbp: bool,
    /// None = keep whatever MAC the device has (the kernel picks one at creation).
    pub mac: Option<Mac>,
    /// `<own subnet .0>/32`.
    pub address: Ipv4Net,
}

/// The udp backend's TUN device.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TunLink {
    pub name: String,
    pub mtu: u32,
    pub address: Ipv4Net,
}

/// An IPv4 route in the main table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    pub dst: Ipv4Net,
    pub gw: Option<Ipv4Addr>,
    pub dev: String,
    pub onlink: bool,
}

/// A permanent ARP entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Neighbour {
    pub ip: Ipv4Addr,
    pub mac: Mac,
    pub dev: String,
}

/// A permanent `self` forwarding entry of a vxlan device: MAC → remote VTEP.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FdbEntry {
    pub mac: Mac,
    pub dst: Ipv4Addr,
    pub dev: String,
}

/// One entry of the udp relay's peer table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UdpPeer {
    pub subnet: Ipv4Net,
    pub public_ip: Ipv4Addr,
    pub port: u16,
}

/// What the udp relay does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpRelay {
    pub listen: Ipv4Addr,
    pub port: u16,
    pub peers: BTreeSet<UdpPeer>,
}

/// Everything a backend wants in the kernel (and the relay, for udp).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KernelState {
    pub links: Vec<LinkSpec>,
    /// Names of overlay links that must not exist (another backend's device).
    pub absent_links: BTreeSet<String>,
    /// Exactly the routes inside the cluster network this node must have.
    pub routes: BTreeSet<Route>,
    pub neighbours: BTreeSet<Neighbour>,
    pub fdb: BTreeSet<FdbEntry>,
    pub sysctls: BTreeMap<String, String>,
    pub udp: Option<UdpRelay>,
}

/// A peer the backend cannot serve well, said out loud instead of left silently broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerProblem {
    pub subnet: SubnetKey,
    pub public_ip: Ipv4Addr,
    pub message: String,
}
