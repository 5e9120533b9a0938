//! What the agent needs to know about the node's external interface: name, MTU, IPv4
//! address, and the routes through it (for DirectRouting's "is this peer on our L2?").

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteHeader};
use rtnetlink::{Handle, RouteMessageBuilder};

use crate::Error;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underlay {
    pub name: String,
    pub index: u32,
    pub mtu: u32,
    pub address: Ipv4Net,
    pub mac: Option<twill_overlay::Mac>,
    /// (destination, gateway) of main-table routes through the interface.
    pub routes: Vec<(Ipv4Net, Option<Ipv4Addr>)>,
}

fn nl(action: &str) -> impl FnOnce(rtnetlink::Error) -> Error + '_ {
    move |source| Error::Netlink {
        action: action.to_string(),
        source,
    }
}

/// Describe `name`, or the interface of the default route when `name` is None.
pub async fn describe_underlay(handle: &Handle, name: Option<&str>) -> Result<Underlay, Error> {
    let mut links: BTreeMap<u32, (String, u32, Option<twill_overlay::Mac>)> = BTreeMap::new();
    let mut s = handle.link().get().execute();
    while let Some(m) = s.try_next().await.map_err(nl("dumping links"))? {
        let mut n = String::new();
        let mut mtu = 0;
        let mut mac = None;
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(x) => n = x.clone(),
                LinkAttribute::Mtu(x) => mtu = *x,
                LinkAttribute::Address(b) => {
                    mac = <[u8; 6]>::try_from(b.as_slice())
                        .ok()
                        .map(twill_overlay::Mac)
                }
                _ => {}
            }
        }
        links.insert(m.header.index, (n, mtu, mac));
    }
    let mut routes: Vec<(u32, Ipv4Net, Option<Ipv4Addr>)> = Vec::new();
    let mut s = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    while let Some(m) = s.try_next().await.map_err(nl("dumping routes"))? {
        if m.header.table != RouteHeader::RT_TABLE_MAIN {
            continue;
        }
        let (mut dst, mut gw, mut oif) = (Ipv4Addr::UNSPECIFIED, None, None);
        for a in &m.attributes {
            match a {
                RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = *d,
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(*g),
                RouteAttribute::Oif(i) => oif = Some(*i),
                _ => {}
            }
        }
        if let (Some(i), Ok(net)) = (oif, Ipv4Net::new(dst, m.header.destination_prefix_length)) {
            routes.push((i, net, gw));
        }
    }
    let index = match name {
        Some(n) => links.iter().find(|(_, l)| l.0 == n).map(|(i, _)| *i),
        None => routes.iter().find(|r| r.1.prefix_len() == 0).map(|r| r.0),
    }
    .ok_or_else(|| Error::MissingLink {
        name: name.unwrap_or("<default route interface>").to_string(),
        needed_by: "the overlay's external interface".into(),
    })?;
    let (lname, mtu, mac) = links.get(&index).cloned().unwrap_or_default();
    let mut address = None;
    let mut s = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    while let Some(m) = s.try_next().await.map_err(nl("dumping addresses"))? {
        for a in &m.attributes {
            if let AddressAttribute::Address(IpAddr::V4(ip)) = a
                && address.is_none()
            {
                address = Ipv4Net::new(*ip, m.header.prefix_len).ok();
            }
        }
    }
    let address = address.ok_or_else(|| Error::MissingLink {
        name: format!("IPv4 address on {lname}"),
        needed_by: "the overlay's public IP".into(),
    })?;
    Ok(Underlay {
        name: lname,
        index,
        mtu,
        address,
        mac,
        routes: routes
            .into_iter()
            .filter(|r| r.0 == index)
            .map(|r| (r.1, r.2))
            .collect(),
    })
}
