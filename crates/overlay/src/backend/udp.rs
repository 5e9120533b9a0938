//! udp, after flannel's `pkg/backend/udp`: a TUN device `flannel0` holding `<subnet.0>/32`,
//! one route for the whole network into it, and a userspace relay that wraps each IP packet
//! in UDP to the peer's public IP. Peers live in the relay's table, not in the kernel.

use std::collections::BTreeSet;

use crate::config::{BackendKind, NetworkConfig};
use crate::lease::{LeaseAttrs, SubnetKey};
use crate::state::{LinkSpec, Route, TunLink, UdpPeer, UdpRelay};

use super::{BackendPlan, NodeSpec, OwnLease, device_address};

pub(crate) const TUN_NAME: &str = "flannel0";

pub(super) fn plan<'a>(
    config: &NetworkConfig,
    node: &NodeSpec,
    own: &OwnLease,
    peers: impl Iterator<Item = (&'a SubnetKey, &'a LeaseAttrs)>,
) -> BackendPlan {
    let port = config.port(BackendKind::Udp);
    let mut plan = BackendPlan::default();
    plan.state.links.push(LinkSpec::Tun(TunLink {
        name: TUN_NAME.into(),
        mtu: config.pod_mtu(BackendKind::Udp, node.ext_mtu),
        address: device_address(own.subnet.ipv4),
    }));
    plan.state.routes.insert(Route {
        dst: config.network,
        gw: None,
        dev: TUN_NAME.into(),
        onlink: false,
    });
    let peers: BTreeSet<UdpPeer> = peers
        .map(|(k, a)| UdpPeer {
            subnet: k.ipv4,
            public_ip: a.public_ip,
            port,
        })
        .collect();
    plan.state.udp = Some(UdpRelay {
        listen: node.public_ip,
        port,
        peers,
    });
    plan
}
