//! host-gw, after flannel's `pkg/backend/hostgw`: per peer `<subnet> via <PublicIP> dev
//! <ext iface>`. Works only when every node is on the same L2; a peer that is not on-link
//! is reported (the kernel would refuse the route), and a node behind NAT (public IP not on
//! the interface) is refused outright, as flannel does.

use crate::Error;
use crate::lease::{LeaseAttrs, SubnetKey};
use crate::state::{PeerProblem, Route};

use super::{BackendPlan, NodeSpec};

pub(super) fn plan<'a>(
    node: &NodeSpec,
    peers: impl Iterator<Item = (&'a SubnetKey, &'a LeaseAttrs)>,
) -> Result<BackendPlan, Error> {
    if node.public_ip != node.ext_address.addr() {
        return Err(Error::HostGwNat {
            public_ip: node.public_ip,
            iface_ip: node.ext_address.addr(),
        });
    }
    let mut plan = BackendPlan::default();
    for (key, attrs) in peers {
        if !node.on_link(attrs.public_ip) {
            plan.problems.push(PeerProblem {
                subnet: *key,
                public_ip: attrs.public_ip,
                message: format!(
                    "host-gw peer {} at {} is not on-link from {} ({}); its route cannot be installed",
                    key.segment(),
                    attrs.public_ip,
                    node.ext_iface,
                    node.ext_address
                ),
            });
        }
        plan.state.routes.insert(Route {
            dst: key.ipv4,
            gw: Some(attrs.public_ip),
            dev: node.ext_iface.clone(),
            onlink: false,
        });
    }
    Ok(plan)
}
