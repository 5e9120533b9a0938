//! The `bridge` main plugin (reference `plugins/main/bridge/bridge.go`), through netlink.
//!
//! ADD, in this order (each step after IPAM is undone when a later one fails):
//! 1. validate config (`hairpinMode` + `promiscMode` is refused before anything exists);
//! 2. ensure the bridge (create, up, promisc, mtu, vlan filtering);
//! 3. refuse an existing `CNI_IFNAME` in the container (before IPAM, like the reference,
//!    so the store is untouched);
//! 4. IPAM ADD (delegated, or in-process when `CNI_PATH` leads back to this binary);
//! 5. one netlink request creates the veth pair: host end `veth<8 hex>` enslaved and up,
//!    peer created directly inside the container netns as `CNI_IFNAME` (no move step);
//! 6. container addresses (IPv6 with `IFA_F_NODAD`: no waiting for DAD), routes;
//! 7. gateway address on the bridge (`isGateway`), forwarding sysctls, `ipMasq` chain.
//!
//! Unlike the reference, a failure after step 4 also removes the veth pair it made.
//! A process killed between 4 and 5 leaves only a reservation, which the next DEL (or a
//! GC without the attachment) releases.
//!
//! Namespaces: the plugin thread opens one rtnetlink socket in the host netns and one in
//! the container netns (`setns` there, create the socket, `setns` back): sockets stay bound
//! to the netns they were created in, so both are usable from one thread.

use std::fs::File;
use std::net::IpAddr;

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth,
    RouteMessageBuilder,
};
use serde::Deserialize;
use serde_json::Value;
use twill_ipam::Dns;

use crate::delegate;
use crate::ipmasq;
use crate::skel::{CmdArgs, Command, Plugin};
use crate::spec::{CniError, CniResult, Interface, IpConfig, Route, errno_text};

pub struct Bridge;

/// When set, ADD aborts right after IPAM ADD (tests only).
pub const ABORT_AFTER_IPAM_ENV: &str = "TWILL_CNI_ABORT_AFTER_IPAM";

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct BridgeConf {
    name: String,
    #[serde(default)]
    bridge: String,
    #[serde(default)]
    is_gateway: bool,
    #[serde(default)]
    is_default_gateway: bool,
    #[serde(default)]
    force_address: bool,
    #[serde(default)]
    ip_masq: bool,
    #[serde(default)]
    mtu: u32,
    #[serde(default)]
    hairpin_mode: bool,
    #[serde(default)]
    promisc_mode: bool,
    #[serde(default)]
    vlan: u16,
    #[serde(default)]
    ipam: Option<Value>,
    #[serde(default)]
    dns: Option<Value>,
}

/// The bridge plugin's network configuration from the parsed stdin, with its defaults
/// and checks (pure: the fuzz tests call it).
pub fn parse_conf(a: &CmdArgs) -> Result<BridgeConf, CniError> {
    let mut c: BridgeConf = serde_json::from_value(a.conf.clone()).map_err(|e| {
        CniError::new(
            crate::spec::ErrorCode::Decoding,
            format!("failed to load netconf: {e}"),
        )
    })?;
    if c.bridge.is_empty() {
        c.bridge = "cni0".into();
    }
    if c.is_default_gateway {
        c.is_gateway = true;
    }
    if c.hairpin_mode && c.promisc_mode {
        return Err(CniError::internal(
            "cannot set hairpin mode and promiscuous mode at the same time",
        ));
    }
    if c.vlan > 4094 {
        return Err(CniError::new(
            crate::spec::ErrorCode::InvalidNetworkConfig,
            format!("invalid VLAN ID {} (must be between 0 and 4094)", c.vlan),
        ));
    }
    Ok(c)
}

fn ipam_type(c: &BridgeConf) -> Result<String, CniError> {
    let t = c
        .ipam
        .as_ref()
        .and_then(|i| i.get("type"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    if t.is_empty() {
        return Err(CniError::new(
            crate::spec::ErrorCode::InvalidNetworkConfig,
            "ipam.type: missing IPAM plugin type",
        ));
    }
    Ok(t.to_string())
}

fn nl_errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

fn nl_text(e: &rtnetlink::Error) -> String {
    match nl_errno(e) {
        Some(n) => errno_text(n),
        None => e.to_string(),
    }
}

fn nl(what: impl std::fmt::Display) -> impl FnOnce(rtnetlink::Error) -> CniError {
    move |e| CniError::internal(format!("{what}: {}", nl_text(&e)))
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // SAFETY: getrandom writes at most N bytes into our buffer.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), N, 0) };
    if n != N as isize {
        // Not reached on Linux >= 3.17; fall back to something unique per process.
        let seed = std::process::id().to_le_bytes();
        for (i, x) in b.iter_mut().enumerate() {
            *x = seed[i % 4].wrapping_mul(31).wrapping_add(i as u8);
        }
    }
    b
}

fn random_mac() -> [u8; 6] {
    let mut m = random_bytes::<6>();
    m[0] = (m[0] & 0xfe) | 0x02;
    m
}

fn fmt_mac(m: &[u8]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn link_mac(l: &LinkMessage) -> String {
    l.attributes
        .iter()
        .find_map(|a| {
            if let LinkAttribute::Address(m) = a {
                Some(fmt_mac(m))
            } else {
                None
            }
        })
        .unwrap_or_default()
}

fn link_kind(l: &LinkMessage) -> Option<&InfoKind> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| {
            if let LinkInfo::Kind(k) = i {
                Some(k)
            } else {
                None
            }
        }),
        _ => None,
    })
}

fn link_controller(l: &LinkMessage) -> Option<u32> {
    l.attributes.iter().find_map(|a| {
        if let LinkAttribute::Controller(i) = a {
            Some(*i)
        } else {
            None
        }
    })
}

fn link_peer_index(l: &LinkMessage) -> Option<u32> {
    l.attributes.iter().find_map(|a| {
        if let LinkAttribute::Link(i) = a {
            Some(*i)
        } else {
            None
        }
    })
}

async fn link_by_name(h: &Handle, name: &str) -> Result<Option<LinkMessage>, rtnetlink::Error> {
    match h
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
    {
        Ok(l) => Ok(l),
        Err(e) if nl_errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

async fn link_by_index(h: &Handle, index: u32) -> Result<Option<LinkMessage>, rtnetlink::Error> {
    match h.link().get().match_index(index).execute().try_next().await {
        Ok(l) => Ok(l),
        Err(e) if nl_errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

fn addr_of(m: &AddressMessage) -> Option<IpNet> {
    let ip = m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let ip = ip.or_else(|| {
        m.attributes.iter().find_map(|a| {
            if let AddressAttribute::Address(ip) = a {
                Some(*ip)
            } else {
                None
            }
        })
    })?;
    IpNet::new(ip, m.header.prefix_len).ok()
}

async fn addresses(h: &Handle, index: u32) -> Result<Vec<IpNet>, rtnetlink::Error> {
    let msgs: Vec<AddressMessage> = h
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await?;
    Ok(msgs.iter().filter_map(addr_of).collect())
}

async fn add_address(h: &Handle, index: u32, a: IpNet) -> Result<(), rtnetlink::Error> {
    let mut req = h.address().add(index, a.addr(), a.prefix_len());
    if a.addr().is_ipv6() {
        req.message_mut()
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    req.execute().await
}

async fn add_route(h: &Handle, index: u32, dst: IpNet, gw: Option<IpAddr>) -> Result<(), CniError> {
    let desc = match gw {
        Some(g) => format!("failed to add route '{dst} via {g}'"),
        None => format!("failed to add route '{dst}'"),
    };
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst.addr(), dst.prefix_len())
        .map_err(|e| CniError::internal(format!("{desc}: {e}")))?
        .output_interface(index);
    if let Some(g) = gw {
        b = b
            .gateway(g)
            .map_err(|e| CniError::internal(format!("{desc}: {e}")))?;
    }
    h.route().add(b.build()).execute().await.map_err(nl(desc))
}

fn route_addr(a: &netlink_packet_route::route::RouteAddress) -> Option<IpAddr> {
    use netlink_packet_route::route::RouteAddress;
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// `(dst, gw)` of the main-table routes of one family.
async fn routes(h: &Handle, v4: bool) -> Result<Vec<(IpNet, Option<IpAddr>)>, rtnetlink::Error> {
    use netlink_packet_route::route::RouteAttribute;
    let query = if v4 {
        RouteMessageBuilder::<std::net::Ipv4Addr>::new().build()
    } else {
        RouteMessageBuilder::<std::net::Ipv6Addr>::new().build()
    };
    let msgs: Vec<_> = h.route().get(query).execute().try_collect().await?;
    Ok(msgs
        .iter()
        .filter_map(|m| {
            let zero = if v4 {
                IpAddr::from([0u8; 4])
            } else {
                IpAddr::from([0u16; 8])
            };
            let dst = m
                .attributes
                .iter()
                .find_map(|a| {
                    if let RouteAttribute::Destination(d) = a {
                        route_addr(d)
                    } else {
                        None
                    }
                })
                .unwrap_or(zero);
            let gw = m.attributes.iter().find_map(|a| {
                if let RouteAttribute::Gateway(g) = a {
                    route_addr(g)
                } else {
                    None
                }
            });
            Some((
                IpNet::new(dst, m.header.destination_prefix_length).ok()?,
                gw,
            ))
        })
        .collect())
}

/// Write a sysctl of the calling thread's netns, skipping the write when already set.
fn set_sysctl(key: &str, value: &str) -> Result<(), CniError> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == value) {
        return Ok(());
    }
    std::fs::write(&path, value)
        .map_err(|e| CniError::internal(format!("failed to set sysctl {key}={value}: {e}")))
}

/// Namespace switching for one thread.
struct Namespaces {
    host: File,
    container: File,
}

impl Namespaces {
    fn open(netns: &str) -> Result<Namespaces, std::io::Error> {
        Ok(Namespaces {
            host: File::open("/proc/thread-self/ns/net")?,
            container: File::open(netns)?,
        })
    }

    /// Run `f` with the thread inside the container netns.
    fn in_container<R>(&self, f: impl FnOnce() -> R) -> Result<R, CniError> {
        let enter = |fd: &File| {
            nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| CniError::internal(format!("failed to switch network namespace: {e}")))
        };
        enter(&self.container)?;
        let r = f();
        enter(&self.host)?;
        Ok(r)
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, CniError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| CniError::internal(format!("failed to start runtime: {e}")))
}

fn connect() -> Result<Handle, CniError> {
    let (conn, handle, _) = rtnetlink::new_connection()
        .map_err(|e| CniError::internal(format!("failed to open netlink socket: {e}")))?;
    tokio::spawn(conn);
    Ok(handle)
}

fn open_netns(netns: &str) -> Result<Namespaces, CniError> {
    Namespaces::open(netns)
        .map_err(|e| CniError::internal(format!("failed to open netns {netns:?}: {e}")))
}

async fn ensure_bridge(h: &Handle, c: &BridgeConf) -> Result<LinkMessage, CniError> {
    let what = || format!("failed to create bridge {:?}", c.bridge);
    for _ in 0..3 {
        if let Some(l) = link_by_name(h, &c.bridge).await.map_err(nl(what()))? {
            if link_kind(&l) != Some(&InfoKind::Bridge) {
                return Err(CniError::internal(format!(
                    "{:?} already exists but is not a bridge",
                    c.bridge
                )));
            }
            let up = l.header.flags.contains(LinkFlags::Up);
            let promisc = l.header.flags.contains(LinkFlags::Promisc);
            if !up || (c.promisc_mode && !promisc) {
                let mut b = LinkUnspec::new_with_index(l.header.index).up();
                if c.promisc_mode {
                    b = b.promiscuous(true);
                }
                h.link()
                    .set(b.build())
                    .execute()
                    .await
                    .map_err(nl(what()))?;
            }
            return Ok(l);
        }
        let mut b = LinkBridge::new(&c.bridge).up();
        if c.mtu > 0 {
            b = b.mtu(c.mtu);
        }
        if c.promisc_mode {
            b = b.promiscuous(true);
        }
        if c.vlan != 0 {
            b = b.vlan_filtering(true);
        }
        match h.link().add(b.build()).execute().await {
            Ok(()) => {}
            // Another ADD created it meanwhile: take that one.
            Err(e) if nl_errno(&e) == Some(libc::EEXIST) => {}
            Err(e) => return Err(nl(what())(e)),
        }
    }
    Err(CniError::internal(format!(
        "failed to find bridge {:?} after creating it",
        c.bridge
    )))
}

/// Routes to install in the container, in result order: IPAM's, then (isDefaultGateway)
/// a default route per family via that family's gateway unless IPAM gave one *with* a gw
/// (the reference `calcGateways`; a gateway-less IPAM default route is not considered).
fn plan_routes(ipam: &CniResult, is_default_gateway: bool) -> Vec<Route> {
    let mut routes = ipam.routes.clone();
    if is_default_gateway {
        for v4 in [true, false] {
            let Some(gw) = ipam
                .ips
                .iter()
                .filter(|i| i.address.addr().is_ipv4() == v4)
                .find_map(|i| i.gateway)
            else {
                continue;
            };
            let has_default = routes
                .iter()
                .any(|r| r.dst.prefix_len() == 0 && r.dst.addr().is_ipv4() == v4 && r.gw.is_some());
            if !has_default {
                let dst = if v4 { "0.0.0.0/0" } else { "::/0" };
                routes.push(Route {
                    dst: dst.parse().expect("literal"),
                    gw: Some(gw),
                });
            }
        }
    }
    routes
}

/// Gateway addresses for the bridge: one per family, with the subnet's prefix.
fn plan_gateways(ipam: &CniResult) -> Vec<IpNet> {
    let mut out: Vec<IpNet> = Vec::new();
    for ip in &ipam.ips {
        if let Some(gw) = ip.gateway
            && !out.iter().any(|g| g.addr().is_ipv4() == gw.is_ipv4())
            && let Ok(n) = IpNet::new(gw, ip.address.prefix_len())
        {
            out.push(n);
        }
    }
    out
}

/// What this ADD created, so a failure removes exactly that (never a pre-existing link).
struct Created {
    host_veth: Option<String>,
}

async fn add_inner(
    a: &CmdArgs,
    c: &BridgeConf,
    ns: &Namespaces,
    handles: (&Handle, &Handle),
    ipam: &CniResult,
    br: LinkMessage,
    created: &mut Created,
) -> Result<CniResult, CniError> {
    let (host, ctr) = handles;
    let br_index = br.header.index;
    let mtu = c.mtu;

    // 5. The veth pair, peer created in the container netns.
    let ctr_mac = random_mac();
    let host_mac = random_mac();
    let mut host_name = String::new();
    for attempt in 0..4 {
        host_name = format!(
            "veth{}",
            random_bytes::<4>()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        let mut peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(a.ifname.clone())
            .address(ctr_mac.to_vec())
            // No `up()` here: the kernel refuses IFF_UP on a peer created in another
            // netns (ENOTCONN); it is set from the container side below.
            .setns_by_fd(std::os::fd::AsRawFd::as_raw_fd(&ns.container));
        if mtu > 0 {
            peer = peer.mtu(mtu);
        }
        let mut b = LinkVeth::new(&host_name, &a.ifname)
            .address(host_mac.to_vec())
            .controller(br_index)
            .up()
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())));
        if mtu > 0 {
            b = b.mtu(mtu);
        }
        match host.link().add(b.build()).execute().await {
            Ok(()) => {
                created.host_veth = Some(host_name.clone());
                break;
            }
            Err(e) if nl_errno(&e) == Some(libc::EEXIST) => {
                // Either our random host name or the container name collides.
                if link_by_name(ctr, &a.ifname)
                    .await
                    .map_err(nl("failed to look up container interface"))?
                    .is_some()
                {
                    return Err(CniError::internal(format!(
                        "container veth name provided ({}) already exists",
                        a.ifname
                    )));
                }
                if attempt == 3 {
                    return Err(CniError::internal(format!(
                        "failed to create veth {host_name}: file exists"
                    )));
                }
            }
            Err(e) => {
                return Err(nl(format!(
                    "failed to create veth pair {host_name}/{}",
                    a.ifname
                ))(e));
            }
        }
    }
    // The host veth's index is only needed for port settings; its MAC is ours.
    let host_index = if c.hairpin_mode || c.vlan != 0 {
        link_by_name(host, &host_name)
            .await
            .map_err(nl("failed to look up host veth"))?
            .ok_or_else(|| CniError::internal(format!("host veth {host_name} vanished")))?
            .header
            .index
    } else {
        0
    };
    if c.hairpin_mode {
        host.link()
            .set_port(LinkBridgePort::new(host_index).hairpin(true).build())
            .execute()
            .await
            .map_err(nl(format!("failed to set hairpin mode on {host_name}")))?;
    }
    if c.vlan != 0 {
        use netlink_packet_route::link::BridgeVlanInfoFlags as F;
        let set = |vid, flags| {
            rtnetlink::LinkBridgeVlan::new(host_index)
                .vlan(vid, flags)
                .build()
        };
        host.link()
            .set(set(c.vlan, F::Pvid | F::Untagged))
            .execute()
            .await
            .map_err(nl(format!("failed to set vlan {} on {host_name}", c.vlan)))?;
        // The default VLAN 1 would let the port talk untagged outside its VLAN.
        let _ = host
            .link()
            .del_with_message(set(1, F::empty()))
            .execute()
            .await;
    }

    // 6. The container side.
    let ctr_link = link_by_name(ctr, &a.ifname)
        .await
        .map_err(nl("failed to look up container interface"))?
        .ok_or_else(|| CniError::internal(format!("container interface {} vanished", a.ifname)))?;
    let ctr_index = ctr_link.header.index;
    ctr.link()
        .set(LinkUnspec::new_with_index(ctr_index).up().build())
        .execute()
        .await
        .map_err(nl(format!("failed to set {:?} up", a.ifname)))?;
    let ifname = a.ifname.clone();
    ns.in_container(|| set_sysctl(&format!("net.ipv4.conf.{ifname}.arp_notify"), "1"))??;
    for ip in &ipam.ips {
        add_address(ctr, ctr_index, ip.address)
            .await
            .map_err(nl(format!(
                "failed to add IP addr {} to {:?}",
                ip.address, a.ifname
            )))?;
    }
    let routes = plan_routes(ipam, c.is_default_gateway);
    for r in &routes {
        let gw = r.gw.or_else(|| {
            ipam.ips
                .iter()
                .find(|i| i.address.addr().is_ipv4() == r.dst.addr().is_ipv4())
                .and_then(|i| i.gateway)
        });
        add_route(ctr, ctr_index, r.dst, gw).await?;
    }

    // 7. Host side: gateway, forwarding, masquerade.
    if c.is_gateway {
        let existing = addresses(host, br_index)
            .await
            .map_err(nl("failed to list bridge addresses"))?;
        for gw in plan_gateways(ipam) {
            let same_family: Vec<&IpNet> = existing
                .iter()
                .filter(|e| e.addr().is_ipv4() == gw.addr().is_ipv4())
                .filter(
                    |e| !matches!(e.addr(), IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80),
                )
                .collect();
            if same_family.iter().any(|e| **e == gw) {
                continue;
            }
            // IPv6 bridges may carry several addresses; only one of the same subnet conflicts.
            let conflicting: Vec<IpNet> = same_family
                .into_iter()
                .filter(|e| gw.addr().is_ipv4() || e.trunc() == gw.trunc())
                .copied()
                .collect();
            if !conflicting.is_empty() {
                if !c.force_address {
                    return Err(CniError::internal(format!(
                        "failed to set bridge addr: {:?} already has an IP address different from {gw}",
                        c.bridge
                    )));
                }
                for old in conflicting {
                    let msgs: Vec<AddressMessage> = host
                        .address()
                        .get()
                        .set_link_index_filter(br_index)
                        .execute()
                        .try_collect()
                        .await
                        .map_err(nl("failed to list bridge addresses"))?;
                    for m in msgs.into_iter().filter(|m| addr_of(m) == Some(old)) {
                        host.address()
                            .del(m)
                            .execute()
                            .await
                            .map_err(nl(format!("failed to remove {old} from bridge")))?;
                    }
                }
            }
            match add_address(host, br_index, gw).await {
                Ok(()) => {}
                // A concurrent ADD on the same bridge added it first.
                Err(e) if nl_errno(&e) == Some(libc::EEXIST) => {}
                Err(e) => {
                    return Err(nl(format!(
                        "failed to add IP addr {gw} to bridge {:?}",
                        c.bridge
                    ))(e));
                }
            }
        }
        if ipam.ips.iter().any(|i| i.address.addr().is_ipv4()) {
            set_sysctl("net.ipv4.ip_forward", "1")?;
        }
        if ipam.ips.iter().any(|i| i.address.addr().is_ipv6()) {
            set_sysctl("net.ipv6.conf.all.forwarding", "1")?;
        }
    }
    if c.ip_masq {
        setup_masq(c, a, &ipam.ips)?;
    }

    // The bridge MAC may change when its first port joins; read it now.
    let br_now = link_by_index(host, br_index)
        .await
        .map_err(nl("failed to read bridge"))?
        .unwrap_or(br);
    let mut result = ipam.clone();
    result.interfaces = vec![
        Interface {
            name: c.bridge.clone(),
            mac: link_mac(&br_now),
            sandbox: None,
        },
        Interface {
            name: host_name,
            mac: fmt_mac(&host_mac),
            sandbox: None,
        },
        Interface {
            name: a.ifname.clone(),
            mac: fmt_mac(&ctr_mac),
            sandbox: Some(a.netns.clone()),
        },
    ];
    for ip in &mut result.ips {
        ip.interface = Some(2);
    }
    result.routes = routes;
    if let Some(d) = c.dns.as_ref().map(dns_from_conf).filter(|d| !d.is_empty()) {
        result.dns = d;
    }
    Ok(result)
}

fn dns_from_conf(v: &Value) -> Dns {
    let list = |k: &str| -> Vec<String> {
        v.get(k)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    Dns {
        nameservers: list("nameservers"),
        domain: v
            .get("domain")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        search: list("search"),
        options: list("options"),
    }
}

fn masq_families(ips: &[IpConfig]) -> Vec<twill_netfilter::Family> {
    let mut f = Vec::new();
    if ips.iter().any(|i| i.address.addr().is_ipv4()) {
        f.push(twill_netfilter::Family::V4);
    }
    if ips.iter().any(|i| i.address.addr().is_ipv6()) {
        f.push(twill_netfilter::Family::V6);
    }
    f
}

fn setup_masq(c: &BridgeConf, a: &CmdArgs, ips: &[IpConfig]) -> Result<(), CniError> {
    let chain = ipmasq::chain_name("CNI-", &c.name, &a.container_id);
    let comment = ipmasq::comment(&c.name, &a.container_id);
    for fam in masq_families(ips) {
        let v4 = fam == twill_netfilter::Family::V4;
        let rules: Vec<String> = ips
            .iter()
            .filter(|i| i.address.addr().is_ipv4() == v4)
            .flat_map(|i| ipmasq::render_rules(&chain, &comment, i.address))
            .collect();
        let save = twill_netfilter::iptables_save(fam, Some("nat"))
            .map_err(|e| CniError::internal(format!("failed to setup IP masquerade: {e}")))?;
        if let Some(input) = ipmasq::plan_setup(&save, &chain, &rules) {
            twill_netfilter::iptables_restore(fam, &input)
                .map_err(|e| CniError::internal(format!("failed to setup IP masquerade: {e}")))?;
        }
    }
    Ok(())
}

fn teardown_masq(c: &BridgeConf, a: &CmdArgs) -> Result<(), CniError> {
    let chain = ipmasq::chain_name("CNI-", &c.name, &a.container_id);
    for fam in [twill_netfilter::Family::V4, twill_netfilter::Family::V6] {
        let Ok(save) = twill_netfilter::iptables_save(fam, Some("nat")) else {
            continue;
        };
        if let Some(input) = ipmasq::plan_teardown(&save, &chain) {
            twill_netfilter::iptables_restore(fam, &input).map_err(|e| {
                CniError::internal(format!("failed to teardown IP masquerade: {e}"))
            })?;
        }
    }
    Ok(())
}

/// Remove the masquerade chains of containers absent from `cni.dev/valid-attachments`.
fn gc_masq(c: &BridgeConf, a: &CmdArgs) -> Result<(), CniError> {
    let valid = crate::host_local::valid_attachments(&a.conf);
    let ids: Vec<&str> = valid.iter().map(|v| v.container_id.as_str()).collect();
    for fam in [twill_netfilter::Family::V4, twill_netfilter::Family::V6] {
        let Ok(save) = twill_netfilter::iptables_save(fam, Some("nat")) else {
            continue;
        };
        for id in ipmasq::stale_container_ids(&save, &c.name, &ids) {
            let chain = ipmasq::chain_name("CNI-", &c.name, &id);
            if let Some(input) = ipmasq::plan_teardown(&save, &chain) {
                twill_netfilter::iptables_restore(fam, &input).map_err(|e| {
                    CniError::internal(format!(
                        "GC: failed to remove IP masquerade chain {chain}: {e}"
                    ))
                })?;
            }
        }
    }
    Ok(())
}

fn ipam_exec(c: &BridgeConf, a: &CmdArgs, cmd: Command) -> Result<Option<CniResult>, CniError> {
    let t = ipam_type(c)?;
    delegate::exec(&t, a, cmd, &a.stdin)
}

pub fn add(a: &CmdArgs) -> Result<CniResult, CniError> {
    let c = parse_conf(a)?;
    ipam_type(&c)?;
    let ns = open_netns(&a.netns)?;
    let rt = runtime()?;
    rt.block_on(async {
        let host = connect()?;
        let ctr = ns.in_container(connect)??;
        // Steps 2-3 happen before IPAM so a refused ADD leaves the store alone.
        let br = ensure_bridge(&host, &c).await?;
        if link_by_name(&ctr, &a.ifname)
            .await
            .map_err(nl("failed to look up container interface"))?
            .is_some()
        {
            return Err(CniError::internal(format!(
                "container veth name provided ({}) already exists",
                a.ifname
            )));
        }
        let ipam = ipam_exec(&c, a, Command::Add)?.unwrap_or_default();
        // Fault injection for the "killed between allocation and interface creation"
        // test: a real abnormal exit at the worst moment, with no rollback running.
        if std::env::var_os(ABORT_AFTER_IPAM_ENV).is_some() {
            std::process::abort();
        }
        if ipam.ips.is_empty() {
            let _ = ipam_exec(&c, a, Command::Del);
            return Err(CniError::internal("IPAM plugin returned missing IP config"));
        }
        let mut created = Created { host_veth: None };
        match add_inner(a, &c, &ns, (&host, &ctr), &ipam, br, &mut created).await {
            Ok(r) => Ok(r),
            Err(e) => {
                if let Some(name) = &created.host_veth {
                    // Deleting one end removes the pair.
                    let msg = LinkUnspec::new_with_name(name).build();
                    let _ = host.link().del_with_message(msg).execute().await;
                }
                if c.ip_masq {
                    let _ = teardown_masq(&c, a);
                }
                let _ = ipam_exec(&c, a, Command::Del);
                Err(e)
            }
        }
    })
}

pub fn del(a: &CmdArgs) -> Result<(), CniError> {
    let c = parse_conf(a)?;
    ipam_exec(&c, a, Command::Del)?;
    if !a.netns.is_empty() {
        match Namespaces::open(&a.netns) {
            Ok(ns) => {
                let rt = runtime()?;
                rt.block_on(async {
                    let ctr = ns.in_container(connect)??;
                    // Delete by name in one request; ENODEV = already gone (DEL is idempotent).
                    let msg = LinkUnspec::new_with_name(&a.ifname).build();
                    match ctr.link().del_with_message(msg).execute().await {
                        Ok(()) => Ok(()),
                        Err(e) if nl_errno(&e) == Some(libc::ENODEV) => Ok(()),
                        Err(e) => Err(nl(format!("failed to delete {:?}", a.ifname))(e)),
                    }
                })?;
            }
            // The netns is gone: so is the interface.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(CniError::internal(format!(
                    "failed to open netns {:?}: {e}",
                    a.netns
                )));
            }
        }
    }
    if c.ip_masq {
        teardown_masq(&c, a)?;
    }
    Ok(())
}

pub fn check(a: &CmdArgs) -> Result<(), CniError> {
    let c = parse_conf(a)?;
    ipam_exec(&c, a, Command::Check)?;
    let prev = match a.conf.get("prevResult") {
        Some(v) if !v.is_null() => CniResult::from_json(v)
            .map_err(|e| CniError::internal(format!("failed to parse prevResult: {e}")))?,
        _ => return Err(CniError::internal("Required prevResult missing")),
    };
    let ns = open_netns(&a.netns)?;
    let rt = runtime()?;
    rt.block_on(async {
        let host = connect()?;
        let ctr = ns.in_container(connect)??;
        let br = link_by_name(&host, &c.bridge)
            .await
            .map_err(nl("failed to look up bridge"))?
            .ok_or_else(|| CniError::internal(format!("failed to find bridge {:?}", c.bridge)))?;
        if link_kind(&br) != Some(&InfoKind::Bridge) {
            return Err(CniError::internal(format!(
                "{:?} already exists but is not a bridge",
                c.bridge
            )));
        }
        let ctr_if = prev
            .interfaces
            .iter()
            .position(|i| i.name == a.ifname && i.sandbox.is_some())
            .ok_or_else(|| {
                CniError::internal(format!(
                    "prevResult has no interface {} in a sandbox",
                    a.ifname
                ))
            })?;
        let link = link_by_name(&ctr, &a.ifname)
            .await
            .map_err(nl("failed to look up container interface"))?
            .ok_or_else(|| {
                CniError::internal(format!("failed to find container interface {:?}", a.ifname))
            })?;
        let want_mac = &prev.interfaces[ctr_if].mac;
        if !want_mac.is_empty() && !link_mac(&link).eq_ignore_ascii_case(want_mac) {
            return Err(CniError::internal(format!(
                "interface {} MAC {} doesn't match the container's {}",
                a.ifname,
                link_mac(&link),
                want_mac
            )));
        }
        let have = addresses(&ctr, link.header.index)
            .await
            .map_err(nl("failed to list container addresses"))?;
        for ip in prev.ips.iter().filter(|i| i.interface == Some(ctr_if)) {
            if !have.contains(&ip.address) {
                return Err(CniError::internal(format!(
                    "Failed to match addr {} on interface {}",
                    ip.address, a.ifname
                )));
            }
        }
        // Every route of prevResult exists in the container (gateway-less ones via the
        // address's gateway, as ADD installed them).
        for v4 in [true, false] {
            let want: Vec<&Route> = prev
                .routes
                .iter()
                .filter(|r| r.dst.addr().is_ipv4() == v4)
                .collect();
            if want.is_empty() {
                continue;
            }
            let have = routes(&ctr, v4)
                .await
                .map_err(nl("failed to list container routes"))?;
            for r in want {
                let gw = r.gw.or_else(|| {
                    prev.ips
                        .iter()
                        .find(|i| i.address.addr().is_ipv4() == v4)
                        .and_then(|i| i.gateway)
                });
                if !have
                    .iter()
                    .any(|(d, g)| d.trunc() == r.dst.trunc() && (gw.is_none() || *g == gw))
                {
                    let via = gw.map(|g| format!(" via {g}")).unwrap_or_default();
                    return Err(CniError::internal(format!(
                        "Failed to match route {}{via} in container {}",
                        r.dst, a.ifname
                    )));
                }
            }
        }
        // The peer must sit on the bridge.
        if let Some(peer) = link_peer_index(&link) {
            let host_side = prev
                .interfaces
                .iter()
                .find(|i| i.sandbox.is_none() && i.name != c.bridge);
            if let Some(hs) = host_side {
                let hl = link_by_name(&host, &hs.name)
                    .await
                    .map_err(nl("failed to look up host veth"))?;
                match hl {
                    Some(hl)
                        if hl.header.index == peer
                            && link_controller(&hl) == Some(br.header.index) => {}
                    _ => {
                        return Err(CniError::internal(format!(
                            "host veth {} is not the peer of {} on bridge {}",
                            hs.name, a.ifname, c.bridge
                        )));
                    }
                }
            }
        }
        Ok(())
    })
}

impl Plugin for Bridge {
    fn add(&self, a: &CmdArgs) -> Result<Value, CniError> {
        add(a).map(|r| r.to_json(&a.version))
    }
    fn del(&self, a: &CmdArgs) -> Result<(), CniError> {
        del(a)
    }
    fn check(&self, a: &CmdArgs) -> Result<(), CniError> {
        check(a)
    }
    fn gc(&self, a: &CmdArgs) -> Result<(), CniError> {
        let c = parse_conf(a)?;
        ipam_exec(&c, a, Command::Gc)?;
        if c.ip_masq {
            gc_masq(&c, a)?;
        }
        Ok(())
    }
    fn status(&self, a: &CmdArgs) -> Result<(), CniError> {
        let c = parse_conf(a)?;
        ipam_exec(&c, a, Command::Status).map(|_| ())
    }
}
