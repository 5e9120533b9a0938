//! Read what the kernel holds, in the overlay's terms.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::Handle;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteProtocol,
};
use twill_overlay::Mac;
use twill_overlay::state::{FdbEntry, Neighbour, Route};

use crate::{Error, Scope};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanParams {
    pub vni: u32,
    pub port: u16,
    pub local: Option<Ipv4Addr>,
    pub dev_index: Option<u32>,
    pub learning: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedLink {
    pub index: u32,
    pub kind: Option<String>,
    pub vxlan: Option<VxlanParams>,
    pub mtu: u32,
    pub mac: Option<Mac>,
    pub up: bool,
    pub addresses: BTreeSet<Ipv4Net>,
}

/// The kernel state the diff looks at.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedState {
    /// Every link by name (routes may go through any of them).
    pub links: BTreeMap<String, ObservedLink>,
    /// Routes the scope owns.
    pub routes: BTreeSet<Route>,
    /// Permanent neighbours on the overlay's vxlan device.
    pub neighbours: BTreeSet<Neighbour>,
    /// Permanent `self` FDB entries with a remote on the overlay's vxlan device.
    pub fdb: BTreeSet<FdbEntry>,
}

fn nl(action: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
    let action = action.into();
    move |source| Error::Netlink { action, source }
}

fn mac_of(bytes: &[u8]) -> Option<Mac> {
    <[u8; 6]>::try_from(bytes).ok().map(Mac)
}

/// Dump links, addresses, routes, neighbours and FDB entries relevant to `scope`.
pub async fn observe(handle: &Handle, scope: &Scope) -> Result<ObservedState, Error> {
    let mut st = ObservedState::default();
    let mut names = BTreeMap::new();
    let mut links = handle.link().get().execute();
    while let Some(msg) = links.try_next().await.map_err(nl("dumping links"))? {
        let mut name = None;
        let mut l = ObservedLink {
            index: msg.header.index,
            kind: None,
            vxlan: None,
            mtu: 0,
            mac: None,
            up: msg.header.flags.contains(LinkFlags::Up),
            addresses: BTreeSet::new(),
        };
        for a in &msg.attributes {
            match a {
                LinkAttribute::IfName(n) => name = Some(n.clone()),
                LinkAttribute::Mtu(m) => l.mtu = *m,
                LinkAttribute::Address(b) => l.mac = mac_of(b),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        match i {
                            LinkInfo::Kind(k) => {
                                l.kind = Some(match k {
                                    InfoKind::Vxlan => "vxlan".to_string(),
                                    InfoKind::Tun => "tun".to_string(),
                                    other => format!("{other:?}").to_lowercase(),
                                })
                            }
                            LinkInfo::Data(InfoData::Vxlan(v)) => {
                                let mut p = VxlanParams {
                                    vni: 0,
                                    port: 0,
                                    local: None,
                                    dev_index: None,
                                    learning: true,
                                };
                                for x in v {
                                    match x {
                                        InfoVxlan::Id(id) => p.vni = *id,
                                        InfoVxlan::Port(port) => p.port = *port,
                                        InfoVxlan::Local(ip) => p.local = Some(*ip),
                                        InfoVxlan::Link(i) => p.dev_index = Some(*i),
                                        InfoVxlan::Learning(b) => p.learning = *b,
                                        _ => {}
                                    }
                                }
                                l.vxlan = Some(p);
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if let Some(n) = name {
            names.insert(l.index, n.clone());
            st.links.insert(n, l);
        }
    }

    let mut addrs = handle.address().get().execute();
    while let Some(msg) = addrs.try_next().await.map_err(nl("dumping addresses"))? {
        let Some(name) = names.get(&msg.header.index) else {
            continue;
        };
        for a in &msg.attributes {
            if let AddressAttribute::Address(IpAddr::V4(ip)) = a
                && let Ok(net) = Ipv4Net::new(*ip, msg.header.prefix_len)
                && let Some(l) = st.links.get_mut(name)
            {
                l.addresses.insert(net);
            }
        }
    }

    let req = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new().build();
    let mut routes = handle.route().get(req).execute();
    while let Some(msg) = routes.try_next().await.map_err(nl("dumping routes"))? {
        if msg.header.table != RouteHeader::RT_TABLE_MAIN
            || msg.header.protocol == RouteProtocol::Kernel
        {
            continue;
        }
        let mut dst = Ipv4Addr::UNSPECIFIED;
        let mut gw = None;
        let mut dev = None;
        for a in &msg.attributes {
            match a {
                RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = *d,
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(*g),
                RouteAttribute::Oif(i) => dev = names.get(i).cloned(),
                _ => {}
            }
        }
        let (Some(dev), Ok(dst)) = (dev, Ipv4Net::new(dst, msg.header.destination_prefix_length))
        else {
            continue;
        };
        if scope.owns_route(dst, &dev) {
            let onlink = msg.header.flags.contains(RouteFlags::Onlink);
            st.routes.insert(Route {
                dst,
                gw,
                dev,
                onlink,
            });
        }
    }

    for family in [AddressFamily::Inet, AddressFamily::Bridge] {
        let mut neigh = handle
            .neighbours()
            .get()
            .set_address_family(family)
            .execute();
        while let Some(msg) = neigh.try_next().await.map_err(nl("dumping neighbours"))? {
            let Some(dev) = names.get(&msg.header.ifindex) else {
                continue;
            };
            // Only the overlay's own vxlan device: neighbours on the external interface
            // (the node's gateway, say) are never ours, even though its routes may be.
            let overlay_device = st
                .links
                .get(dev)
                .is_some_and(|l| l.kind.as_deref() == Some("vxlan"));
            if !scope.devices.contains(dev)
                || !overlay_device
                || msg.header.state != NeighbourState::Permanent
            {
                continue;
            }
            let mut ip = None;
            let mut mac = None;
            for a in &msg.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) => ip = Some(*d),
                    // Bridge-family dumps leave NDA_DST undecoded (the remote VTEP).
                    NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                        ip = <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from)
                    }
                    NeighbourAttribute::LinkLayerAddress(b) => mac = mac_of(b),
                    _ => {}
                }
            }
            let (Some(ip), Some(mac)) = (ip, mac) else {
                continue;
            };
            if family == AddressFamily::Bridge {
                if msg.header.flags.contains(NeighbourFlags::Own) {
                    st.fdb.insert(FdbEntry {
                        mac,
                        dst: ip,
                        dev: dev.clone(),
                    });
                }
            } else {
                st.neighbours.insert(Neighbour {
                    ip,
                    mac,
                    dev: dev.clone(),
                });
            }
        }
    }
    Ok(st)
}
