//! Carry out a [`Plan`] through rtnetlink. Every add is a replace, so a change applied
//! twice (or after a crash halfway) is harmless; a delete of something already gone counts
//! as done. One failing change (say, a host-gw peer that is not on-link) does not stop the
//! others: failures are collected and returned together.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage,
};
use rtnetlink::{Handle, LinkUnspec, LinkVxlan, RouteMessageBuilder};
use twill_overlay::state::{KernelState, Route};

use crate::diff::{LinkChange, Plan, diff_state};
use crate::observe::observe;
use crate::{Error, Scope};

/// Observe, diff and apply; returns the plan that was applied.
pub async fn reconcile(
    handle: &Handle,
    desired: &KernelState,
    scope: &Scope,
) -> Result<Plan, Error> {
    let observed = observe(handle, scope).await?;
    let plan = diff_state(desired, &observed);
    if !plan.is_empty() {
        apply_plan(handle, &plan).await?;
    }
    Ok(plan)
}

async fn link_indices(handle: &Handle) -> Result<BTreeMap<String, u32>, Error> {
    let mut out = BTreeMap::new();
    let mut links = handle.link().get().execute();
    while let Some(msg) = links.try_next().await.map_err(|source| Error::Netlink {
        action: "dumping links".into(),
        source,
    })? {
        for a in &msg.attributes {
            if let rtnetlink::packet_route::link::LinkAttribute::IfName(n) = a {
                out.insert(n.clone(), msg.header.index);
            }
        }
    }
    Ok(out)
}

/// ENOENT / ESRCH on delete: already gone.
fn already_gone(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -libc_enoent() || m.raw_code() == -3)
}

const fn libc_enoent() -> i32 {
    2
}

/// Apply `plan` in order: links, deletions, then additions (FDB before neighbours before
/// routes, so a route never points at a neighbour the kernel cannot resolve yet).
pub async fn apply_plan(handle: &Handle, plan: &Plan) -> Result<(), Error> {
    let mut failures: Vec<String> = plan
        .missing_links
        .iter()
        .map(|n| format!("link {n}: does not exist"))
        .collect();
    let mut idx = link_indices(handle).await?;
    let index = |idx: &BTreeMap<String, u32>, name: &str, what: &str| {
        idx.get(name)
            .copied()
            .ok_or_else(|| format!("{what}: link {name} not found"))
    };
    let mut note = |r: Result<(), String>| {
        if let Err(e) = r {
            failures.push(e);
        }
    };

    for change in &plan.links {
        let r: Result<(), String> = async {
            match change {
                LinkChange::Delete { name } => {
                    let i = index(&idx, name, "delete link")?;
                    handle.link().del(i).execute().await.or_else(|e| if already_gone(&e) { Ok(()) } else { Err(e) })
                        .map_err(|e| format!("delete link {name}: {e}"))
                }
                LinkChange::CreateVxlan(v) => {
                    let dev = index(&idx, &v.dev, &format!("create {}", v.name))?;
                    let mut b = LinkVxlan::new(&v.name, v.vni)
                        .dev(dev)
                        .port(v.port)
                        .local(v.local)
                        .learning(v.learning)
                        .mtu(v.mtu)
                        .up();
                    if v.gbp {
                        b = b.gbp();
                    }
                    if let Some(m) = v.mac {
                        b = b.address(m.0.to_vec());
                    }
                    handle.link().add(b.build()).execute().await.map_err(|e| format!("create vxlan {}: {e}", v.name))
                }
                LinkChange::Set { name, mtu, mac, up } => {
                    let i = index(&idx, name, "set link")?;
                    let mut b = LinkUnspec::new_with_index(i);
                    if let Some(m) = mtu {
                        b = b.mtu(*m);
                    }
                    if let Some(m) = mac {
                        b = b.address(m.0.to_vec());
                    }
                    if *up {
                        b = b.up();
                    }
                    handle.link().set(b.build()).execute().await.map_err(|e| format!("set link {name}: {e}"))
                }
                LinkChange::AddAddress { name, address } => {
                    let i = index(&idx, name, "add address")?;
                    handle
                        .address()
                        .add(i, IpAddr::V4(address.addr()), address.prefix_len())
                        .replace()
                        .execute()
                        .await
                        .map_err(|e| format!("add address {address} to {name}: {e}"))
                }
                LinkChange::DelAddress { name, address } => {
                    let i = index(&idx, name, "delete address")?;
                    let mut found = None;
                    let mut s = handle.address().get().set_link_index_filter(i).execute();
                    while let Some(m) = s.try_next().await.map_err(|e| format!("dump addresses of {name}: {e}"))? {
                        let hit = m.header.prefix_len == address.prefix_len()
                            && m.attributes.iter().any(|a| {
                                matches!(a, rtnetlink::packet_route::address::AddressAttribute::Address(IpAddr::V4(ip)) if *ip == address.addr())
                            });
                        if hit {
                            found = Some(m);
                        }
                    }
                    match found {
                        Some(m) => handle.address().del(m).execute().await.map_err(|e| format!("delete address {address} from {name}: {e}")),
                        None => Ok(()),
                    }
                }
            }
        }
        .await;
        note(r);
        if matches!(
            change,
            LinkChange::CreateVxlan(_) | LinkChange::Delete { .. }
        ) {
            idx = link_indices(handle).await?;
        }
    }

    for r in &plan.del_routes {
        let res = match route_message(&idx, r) {
            Ok(m) => handle
                .route()
                .del(m)
                .execute()
                .await
                .or_else(|e| if already_gone(&e) { Ok(()) } else { Err(e) })
                .map_err(|e| format!("delete route {} via {:?} dev {}: {e}", r.dst, r.gw, r.dev)),
            Err(e) => Err(e),
        };
        note(res);
    }
    for n in &plan.del_neighbours {
        let res = match index(&idx, &n.dev, "delete neighbour") {
            Ok(i) => {
                let mut m = NeighbourMessage::default();
                m.header.family = AddressFamily::Inet;
                m.header.ifindex = i;
                m.attributes
                    .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                        n.ip,
                    )));
                handle
                    .neighbours()
                    .del(m)
                    .execute()
                    .await
                    .or_else(|e| if already_gone(&e) { Ok(()) } else { Err(e) })
                    .map_err(|e| format!("delete neighbour {} dev {}: {e}", n.ip, n.dev))
            }
            Err(e) => Err(e),
        };
        note(res);
    }
    for f in &plan.del_fdb {
        let res = match index(&idx, &f.dev, "delete fdb entry") {
            Ok(i) => {
                let mut m = NeighbourMessage::default();
                m.header.family = AddressFamily::Bridge;
                m.header.ifindex = i;
                m.header.flags = NeighbourFlags::Own;
                m.attributes
                    .push(NeighbourAttribute::LinkLayerAddress(f.mac.0.to_vec()));
                m.attributes
                    .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                        f.dst,
                    )));
                handle
                    .neighbours()
                    .del(m)
                    .execute()
                    .await
                    .or_else(|e| if already_gone(&e) { Ok(()) } else { Err(e) })
                    .map_err(|e| format!("delete fdb {} dst {} dev {}: {e}", f.mac, f.dst, f.dev))
            }
            Err(e) => Err(e),
        };
        note(res);
    }
    for f in &plan.add_fdb {
        let res = match index(&idx, &f.dev, "add fdb entry") {
            Ok(i) => handle
                .neighbours()
                .add_bridge(i, &f.mac.0)
                .flags(NeighbourFlags::Own)
                .destination(IpAddr::V4(f.dst))
                .replace()
                .execute()
                .await
                .map_err(|e| format!("add fdb {} dst {} dev {}: {e}", f.mac, f.dst, f.dev)),
            Err(e) => Err(e),
        };
        note(res);
    }
    for n in &plan.add_neighbours {
        let res = match index(&idx, &n.dev, "add neighbour") {
            Ok(i) => handle
                .neighbours()
                .add(i, IpAddr::V4(n.ip))
                .link_layer_address(&n.mac.0)
                .replace()
                .execute()
                .await
                .map_err(|e| format!("add neighbour {} lladdr {} dev {}: {e}", n.ip, n.mac, n.dev)),
            Err(e) => Err(e),
        };
        note(res);
    }
    for r in &plan.add_routes {
        let res = match route_message(&idx, r) {
            Ok(m) => handle
                .route()
                .add(m)
                .replace()
                .execute()
                .await
                .map_err(|e| format!("add route {} via {:?} dev {}: {e}", r.dst, r.gw, r.dev)),
            Err(e) => Err(e),
        };
        note(res);
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(Error::Partial {
            total: plan.len() + plan.missing_links.len(),
            failures,
        })
    }
}

fn route_message(
    idx: &BTreeMap<String, u32>,
    r: &Route,
) -> Result<rtnetlink::packet_route::route::RouteMessage, String> {
    let i = idx
        .get(&r.dev)
        .copied()
        .ok_or_else(|| format!("route {}: link {} not found", r.dst, r.dev))?;
    // proto boot, as `ip route add` and flannel write them.
    let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
        .protocol(rtnetlink::packet_route::route::RouteProtocol::Boot)
        .destination_prefix(r.dst.network(), r.dst.prefix_len())
        .output_interface(i);
    if let Some(gw) = r.gw {
        b = b.gateway(gw);
    } else {
        b = b.scope(rtnetlink::packet_route::route::RouteScope::Link);
    }
    if r.onlink {
        b = b.onlink();
    }
    Ok(b.build())
}

/// Write sysctls (`net.ipv4.ip_forward` = `/proc/sys/net/ipv4/ip_forward`) in the calling
/// thread's namespace. Per-interface keys keep the interface name whole even when it has
/// dots (`net.ipv6.conf.flannel.1.accept_ra`). A missing IPv6 tree (IPv6 disabled) is skipped.
pub fn apply_sysctls(sysctls: &BTreeMap<String, String>) -> Result<(), Error> {
    for (key, value) in sysctls {
        let path = sysctl_path(key);
        if key.starts_with("net.ipv6.") && !std::path::Path::new("/proc/sys/net/ipv6").exists() {
            tracing::debug!(key, "IPv6 disabled; sysctl skipped");
            continue;
        }
        std::fs::write(&path, value).map_err(|source| Error::Sysctl {
            key: key.clone(),
            source,
        })?;
    }
    Ok(())
}

fn sysctl_path(key: &str) -> String {
    for prefix in [
        "net.ipv4.conf.",
        "net.ipv6.conf.",
        "net.ipv4.neigh.",
        "net.ipv6.neigh.",
    ] {
        if let Some(rest) = key.strip_prefix(prefix)
            && let Some((iface, leaf)) = rest.rsplit_once('.')
        {
            return format!(
                "/proc/sys/{}/{iface}/{leaf}",
                prefix.trim_end_matches('.').replace('.', "/")
            );
        }
    }
    format!("/proc/sys/{}", key.replace('.', "/"))
}

#[cfg(test)]
mod tests {
    use super::sysctl_path;

    #[test]
    fn interface_sysctl_keeps_dotted_interface_name() {
        assert_eq!(
            sysctl_path("net.ipv6.conf.flannel.1.accept_ra"),
            "/proc/sys/net/ipv6/conf/flannel.1/accept_ra"
        );
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward"),
            "/proc/sys/net/ipv4/ip_forward"
        );
    }
}
