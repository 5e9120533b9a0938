//! vxlan, after flannel's `pkg/backend/vxlan`: one device `flannel.<VNI>` with learning off;
//! per peer a route `<subnet> via <subnet.0> dev flannel.<VNI> onlink`, a permanent ARP
//! entry `<subnet.0> → VtepMAC` and an FDB entry `VtepMAC → PublicIP`. All three are
//! programmed up front from the lease, so the kernel never has to ask (flannel dropped its
//! L2/L3-miss design because answering misses from userspace was slow and lossy).
//! With DirectRouting, peers on our own L2 get a plain route via their public IP.

use crate::config::{BackendKind, NetworkConfig};
use crate::lease::{LeaseAttrs, Mac, SubnetKey};
use crate::state::{FdbEntry, LinkSpec, Neighbour, Route, VxlanLink};

use super::{BackendPlan, NodeSpec, OwnLease, device_address};

pub(super) fn plan<'a>(
    config: &NetworkConfig,
    node: &NodeSpec,
    own: &OwnLease,
    peers: impl Iterator<Item = (&'a SubnetKey, &'a LeaseAttrs)>,
) -> BackendPlan {
    let name = format!("flannel.{}", config.vni());
    let mut plan = BackendPlan::default();
    plan.state.links.push(LinkSpec::Vxlan(VxlanLink {
        name: name.clone(),
        vni: config.vni(),
        port: config.port(BackendKind::Vxlan),
        local: node.public_ip,
        dev: node.ext_iface.clone(),
        mtu: config.pod_mtu(BackendKind::Vxlan, node.ext_mtu),
        learning: false,
        gbp: false,
        mac: own.vtep_mac,
        address: device_address(own.subnet.ipv4),
    }));
    plan.state
        .sysctls
        .insert(format!("net.ipv6.conf.{name}.accept_ra"), "0".into());
    for (key, attrs) in peers {
        let dst = key.ipv4;
        if config.backend.direct_routing && node.on_link(attrs.public_ip) {
            plan.state.routes.insert(Route {
                dst,
                gw: Some(attrs.public_ip),
                dev: node.ext_iface.clone(),
                onlink: false,
            });
            continue;
        }
        let Some(data) = attrs.vxlan_data() else {
            plan.problems.push(crate::state::PeerProblem {
                subnet: *key,
                public_ip: attrs.public_ip,
                message: format!(
                    "vxlan lease {} has no usable BackendData.VtepMAC; peer skipped",
                    key.segment()
                ),
            });
            continue;
        };
        let mac: Mac = data.vtep_mac.parse().expect("vxlan_data checked the MAC");
        let gw = dst.network();
        plan.state.routes.insert(Route {
            dst,
            gw: Some(gw),
            dev: name.clone(),
            onlink: true,
        });
        plan.state.neighbours.insert(Neighbour {
            ip: gw,
            mac,
            dev: name.clone(),
        });
        plan.state.fdb.insert(FdbEntry {
            mac,
            dst: attrs.public_ip,
            dev: name.clone(),
        });
    }
    plan
}
