//! Desired vs observed, as a list of changes. Pure.

use std::collections::BTreeSet;

use ipnet::Ipv4Net;
use twill_overlay::Mac;
use twill_overlay::state::{FdbEntry, KernelState, LinkSpec, Neighbour, Route, VxlanLink};

use crate::observe::ObservedState;

/// One change to a link.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkChange {
    Delete {
        name: String,
    },
    CreateVxlan(VxlanLink),
    Set {
        name: String,
        mtu: Option<u32>,
        mac: Option<Mac>,
        up: bool,
    },
    AddAddress {
        name: String,
        address: Ipv4Net,
    },
    DelAddress {
        name: String,
        address: Ipv4Net,
    },
}

/// Everything to change, in the order [`crate::apply_plan`] applies it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub links: Vec<LinkChange>,
    pub del_routes: Vec<Route>,
    pub del_neighbours: Vec<Neighbour>,
    pub del_fdb: Vec<FdbEntry>,
    pub add_fdb: Vec<FdbEntry>,
    pub add_neighbours: Vec<Neighbour>,
    pub add_routes: Vec<Route>,
    /// Links the state needs that this applier does not create (the udp relay's TUN).
    pub missing_links: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.len() == 0 && self.missing_links.is_empty()
    }

    /// Number of changes.
    pub fn len(&self) -> usize {
        self.links.len()
            + self.del_routes.len()
            + self.del_neighbours.len()
            + self.del_fdb.len()
            + self.add_fdb.len()
            + self.add_neighbours.len()
            + self.add_routes.len()
    }
}

fn vxlan_matches(want: &VxlanLink, observed: &ObservedState) -> bool {
    let Some(l) = observed.links.get(&want.name) else {
        return false;
    };
    let Some(p) = &l.vxlan else { return false };
    let dev_index = observed.links.get(&want.dev).map(|d| d.index);
    l.kind.as_deref() == Some("vxlan")
        && p.vni == want.vni
        && p.port == want.port
        && p.local == Some(want.local)
        && p.dev_index == dev_index
        && p.learning == want.learning
}

/// What must change so the kernel holds `desired`.
pub fn diff_state(desired: &KernelState, observed: &ObservedState) -> Plan {
    let mut plan = Plan::default();
    let mut observed = observed.clone();
    let mut fresh: BTreeSet<String> = BTreeSet::new();

    for name in &desired.absent_links {
        if observed.links.contains_key(name) {
            plan.links.push(LinkChange::Delete { name: name.clone() });
            forget_device(&mut observed, name);
        }
    }
    for link in &desired.links {
        let name = link.name().to_string();
        match link {
            LinkSpec::Vxlan(v) => {
                if !vxlan_matches(v, &observed) {
                    if observed.links.contains_key(&name) {
                        plan.links.push(LinkChange::Delete { name: name.clone() });
                        forget_device(&mut observed, &name);
                    }
                    plan.links.push(LinkChange::CreateVxlan(v.clone()));
                    fresh.insert(name.clone());
                }
            }
            LinkSpec::Tun(_) => {
                if !observed.links.contains_key(&name) {
                    plan.missing_links.push(name.clone());
                    continue;
                }
            }
        }
        let current = observed.links.get(&name).filter(|_| !fresh.contains(&name));
        let want_mac = match link {
            LinkSpec::Vxlan(v) => v.mac,
            LinkSpec::Tun(_) => None,
        };
        let mtu = (current.map(|c| c.mtu) != Some(link.mtu())).then_some(link.mtu());
        let mac = want_mac.filter(|m| current.and_then(|c| c.mac) != Some(*m));
        let up = current.is_some_and(|c| c.up);
        if !fresh.contains(&name) && (mtu.is_some() || mac.is_some() || !up) {
            plan.links.push(LinkChange::Set {
                name: name.clone(),
                mtu,
                mac,
                up: true,
            });
        }
        let have: BTreeSet<Ipv4Net> = current.map(|c| c.addresses.clone()).unwrap_or_default();
        for a in &have {
            if *a != link.address() {
                plan.links.push(LinkChange::DelAddress {
                    name: name.clone(),
                    address: *a,
                });
            }
        }
        if !have.contains(&link.address()) {
            plan.links.push(LinkChange::AddAddress {
                name: name.clone(),
                address: link.address(),
            });
        }
    }

    plan.del_routes = observed
        .routes
        .difference(&desired.routes)
        .cloned()
        .collect();
    plan.add_routes = desired
        .routes
        .difference(&observed.routes)
        .cloned()
        .collect();
    plan.del_neighbours = observed
        .neighbours
        .difference(&desired.neighbours)
        .cloned()
        .collect();
    plan.add_neighbours = desired
        .neighbours
        .difference(&observed.neighbours)
        .cloned()
        .collect();
    plan.del_fdb = observed.fdb.difference(&desired.fdb).cloned().collect();
    plan.add_fdb = desired.fdb.difference(&observed.fdb).cloned().collect();
    // A route whose only difference is the gateway or flags is replaced, not deleted:
    // deleting first would open a window with no route at all.
    // The kernel keys a main-table route by destination (same tos and metric), so a
    // replace also moves it to another device.
    let added: BTreeSet<Ipv4Net> = plan.add_routes.iter().map(|r| r.dst).collect();
    plan.del_routes.retain(|r| !added.contains(&r.dst));
    plan
}

/// A deleted device takes its routes, neighbours and FDB entries with it.
fn forget_device(observed: &mut ObservedState, name: &str) {
    observed.links.remove(name);
    observed.routes.retain(|r| r.dev != name);
    observed.neighbours.retain(|n| n.dev != name);
    observed.fdb.retain(|f| f.dev != name);
}

#[cfg(test)]
mod tests;
