//! Leases → kernel state, one module per backend (flannel's `pkg/backend/{vxlan,hostgw,udp}`).
//! Each takes the node, its own lease and the peers the watch reports, and returns the whole
//! desired state; removing a peer is recomputing without it, so stale entries fall out by
//! diffing rather than by event handlers that can miss one.

mod hostgw;
mod udp;
mod vxlan;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::Error;
use crate::config::{BackendKind, NetworkConfig};
use crate::lease::{Lease, LeaseAttrs, Mac, SubnetKey};
use crate::state::{KernelState, PeerProblem};

/// The node as the backends see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    pub public_ip: Ipv4Addr,
    pub ext_iface: String,
    pub ext_mtu: u32,
    /// Address and prefix on the external interface.
    pub ext_address: Ipv4Net,
    /// Routes of the underlay (for DirectRouting: which peers are on our L2). Empty =
    /// only the external interface's own subnet is on-link.
    pub underlay_routes: Vec<UnderlayRoute>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnderlayRoute {
    pub dst: Ipv4Net,
    pub gw: Option<Ipv4Addr>,
}

impl NodeSpec {
    /// Whether `ip` is reachable without a gateway (flannel's `ip.DirectRouting` check).
    pub fn on_link(&self, ip: Ipv4Addr) -> bool {
        if self.underlay_routes.is_empty() {
            return self.ext_address.trunc().contains(&ip);
        }
        self.underlay_routes
            .iter()
            .filter(|r| r.gw.is_none() && r.dst.prefix_len() > 0)
            .any(|r| r.dst.contains(&ip))
    }
}

/// The node's own lease as the backend needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnLease {
    pub subnet: SubnetKey,
    /// vxlan: the MAC to give the device (None: keep the kernel's).
    pub vtep_mac: Option<Mac>,
}

/// The peers the watch reports, keyed by subnet. Apply events to keep it current.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerTable {
    peers: BTreeMap<SubnetKey, LeaseAttrs>,
}

/// A change reported by a lease watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEvent {
    Added(Lease),
    Removed(SubnetKey),
}

impl PeerTable {
    pub fn from_leases<'a>(leases: impl IntoIterator<Item = &'a Lease>) -> Self {
        let mut t = PeerTable::default();
        for l in leases {
            t.apply(&LeaseEvent::Added(l.clone()));
        }
        t
    }

    /// Returns true when the table changed.
    pub fn apply(&mut self, event: &LeaseEvent) -> bool {
        match event {
            LeaseEvent::Added(l) => {
                self.peers.insert(l.subnet, l.attrs.clone()).as_ref() != Some(&l.attrs)
            }
            LeaseEvent::Removed(k) => self.peers.remove(k).is_some(),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&SubnetKey, &LeaseAttrs)> {
        self.peers.iter()
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }
}

/// The desired state and the peers that could not be served cleanly.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BackendPlan {
    pub state: KernelState,
    pub problems: Vec<PeerProblem>,
}

/// Peers of the same backend type, without our own lease.
fn same_backend<'a>(
    kind: BackendKind,
    own: &'a OwnLease,
    peers: &'a PeerTable,
) -> impl Iterator<Item = (&'a SubnetKey, &'a LeaseAttrs)> {
    peers
        .iter()
        .filter(move |(k, a)| k.ipv4 != own.subnet.ipv4 && a.backend_name() == kind.name())
}

/// Compute the kernel state for `node` under `config`.
pub fn plan_backend(
    config: &NetworkConfig,
    node: &NodeSpec,
    own: &OwnLease,
    peers: &PeerTable,
) -> Result<BackendPlan, Error> {
    let kind = config.backend_kind()?;
    let mut plan = match kind {
        BackendKind::Vxlan => vxlan::plan(config, node, own, same_backend(kind, own, peers)),
        BackendKind::HostGw => hostgw::plan(node, same_backend(kind, own, peers))?,
        BackendKind::Udp => udp::plan(config, node, own, same_backend(kind, own, peers)),
    };
    // Another backend's device left behind from an earlier run would swallow traffic.
    let names = [
        format!("flannel.{}", config.vni()),
        udp::TUN_NAME.to_string(),
    ];
    for n in names {
        if !plan.state.links.iter().any(|l| l.name() == n) {
            plan.state.absent_links.insert(n);
        }
    }
    plan.state
        .sysctls
        .insert("net.ipv4.ip_forward".into(), "1".into());
    Ok(plan)
}

/// `<subnet .0>/32`, the address flannel puts on its device.
fn device_address(subnet: Ipv4Net) -> Ipv4Net {
    Ipv4Net::new(subnet.network(), 32).expect("/32 is valid")
}

#[cfg(test)]
mod tests;
