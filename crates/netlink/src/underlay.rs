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

/// Which interface carries the overlay, as flanneld's flags choose it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IfaceChoice {
    /// `--iface` (repeatable): names or IPv4 addresses, tried in order; the first
    /// present wins.
    pub ifaces: Vec<String>,
    /// `--iface-regex` (repeatable): matched against addresses first, then names, in
    /// order (used when `ifaces` is empty).
    pub regexes: Vec<String>,
    /// `--iface-can-reach`: the interface of the route to this address (used when the
    /// two above are empty).
    pub can_reach: Option<Ipv4Addr>,
}

impl IfaceChoice {
    /// One interface by name (or address).
    pub fn named(name: Option<&str>) -> Self {
        IfaceChoice {
            ifaces: name.into_iter().map(str::to_string).collect(),
            ..IfaceChoice::default()
        }
    }
}

/// What the kernel has, for [`choose`]: links `(index, name)`, IPv4 addresses
/// `(index, address)` and main-table routes `(index, destination)`.
#[derive(Debug, Clone, Default)]
pub struct Interfaces {
    pub links: Vec<(u32, String)>,
    pub addresses: Vec<(u32, Ipv4Net)>,
    pub routes: Vec<(u32, Ipv4Net)>,
}

/// Pick the interface index, flanneld's way (`LookupExtIface`): `--iface` entries in
/// order (an address selects the interface holding it), else each `--iface-regex` over
/// addresses then names, else the route to `--iface-can-reach`, else the default
/// route's. The error says what was looked for.
pub fn choose(have: &Interfaces, choice: &IfaceChoice) -> Result<u32, String> {
    if !choice.ifaces.is_empty() {
        for spec in &choice.ifaces {
            let found = match spec.parse::<Ipv4Addr>() {
                Ok(ip) => have
                    .addresses
                    .iter()
                    .find(|(_, a)| a.addr() == ip)
                    .map(|(i, _)| *i),
                Err(_) => have.links.iter().find(|(_, n)| n == spec).map(|(i, _)| *i),
            };
            if let Some(i) = found {
                return Ok(i);
            }
        }
        return Err(format!(
            "failed to find any valid interface to use: {}",
            choice.ifaces.join(", ")
        ));
    }
    if !choice.regexes.is_empty() {
        for r in &choice.regexes {
            let re = regex_lite::Regex::new(r).map_err(|e| format!("--iface-regex {r:?}: {e}"))?;
            if let Some((i, _)) = have
                .addresses
                .iter()
                .find(|(_, a)| re.is_match(&a.addr().to_string()))
            {
                return Ok(*i);
            }
            if let Some((i, _)) = have.links.iter().find(|(_, n)| re.is_match(n)) {
                return Ok(*i);
            }
        }
        return Err(format!(
            "no interface (name or address) matches --iface-regex {}",
            choice.regexes.join(", ")
        ));
    }
    if let Some(target) = choice.can_reach {
        return have
            .routes
            .iter()
            .filter(|(_, dst)| dst.contains(&target))
            .max_by_key(|(_, dst)| dst.prefix_len())
            .map(|(i, _)| *i)
            .ok_or_else(|| format!("no route to {target} (--iface-can-reach)"));
    }
    have.routes
        .iter()
        .find(|(_, dst)| dst.prefix_len() == 0)
        .map(|(i, _)| *i)
        .ok_or_else(|| "no default route to take the interface from (give --iface)".into())
}

/// Describe the interface `choice` selects (the default route's when it is empty).
pub async fn describe_underlay(handle: &Handle, choice: &IfaceChoice) -> Result<Underlay, Error> {
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
    let mut addresses: Vec<(u32, Ipv4Net)> = Vec::new();
    let mut s = handle.address().get().execute();
    while let Some(m) = s.try_next().await.map_err(nl("dumping addresses"))? {
        for a in &m.attributes {
            if let AddressAttribute::Address(IpAddr::V4(ip)) = a
                && let Ok(net) = Ipv4Net::new(*ip, m.header.prefix_len)
            {
                addresses.push((m.header.index, net));
            }
        }
    }
    let have = Interfaces {
        links: links.iter().map(|(i, l)| (*i, l.0.clone())).collect(),
        addresses: addresses.clone(),
        routes: routes.iter().map(|r| (r.0, r.1)).collect(),
    };
    let index = choose(&have, choice).map_err(|why| Error::MissingLink {
        name: why,
        needed_by: "the overlay's external interface".into(),
    })?;
    let (lname, mtu, mac) = links.get(&index).cloned().unwrap_or_default();
    // The first IPv4 address on it, as flannel takes it.
    let address = addresses.iter().find(|(i, _)| *i == index).map(|(_, a)| *a);
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
