//! The pure half of the userspace mode: which listeners a [`ProxyModel`] needs, which
//! endpoints each one balances over, and the iptables rules that send service traffic
//! to them.
//!
//! Upstream's old userspace proxier (`pkg/proxy/userspace/proxier.go`, removed in 1.26)
//! opened one socket per service port on a random local port and wrote "portal" rules
//! in four nat chains: `KUBE-PORTALS-CONTAINER` and `KUBE-NODEPORT-CONTAINER` (hooked
//! from PREROUTING, for traffic arriving from pods and other hosts) and
//! `KUBE-PORTALS-HOST` and `KUBE-NODEPORT-HOST` (hooked from OUTPUT, for traffic the node
//! sends itself). We keep those names. Differences, each deliberate:
//!
//! - Rules REDIRECT in both directions (upstream DNATed host traffic to the node IP);
//!   REDIRECT needs no knowledge of the node's addresses and also covers loopback.
//! - A service port whose traffic would use a different endpoint set for cluster-IP
//!   traffic than for external traffic (internalTrafficPolicy Local with node ports)
//!   gets two listeners ([`Scope`]); upstream's userspace mode predates traffic policies.
//! - Services without usable endpoints are REJECTed (or DROPped for iTP Local without
//!   local endpoints) by a filter `KUBE-SERVICES` chain as the iptables mode does, and
//!   `loadBalancerSourceRanges` are honoured: only allowed sources are redirected, the
//!   rest hit a filter DROP. Upstream's userspace mode accepted and closed instead.
//! - externalTrafficPolicy Local is not implemented: a userspace proxy terminates the
//!   connection, so the backend never sees the client address, which is the point of
//!   eTP Local. External traffic uses the cluster endpoints.
//! - SCTP is not proxied (upstream's userspace mode had TCP and UDP only).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use twill_model::Protocol;
use twill_proxy_core::{ProxyModel, ServicePortInfo, ServicePortName, categorize_endpoints};

pub const PORTALS_CONTAINER: &str = "KUBE-PORTALS-CONTAINER";
pub const PORTALS_HOST: &str = "KUBE-PORTALS-HOST";
pub const NODEPORT_CONTAINER: &str = "KUBE-NODEPORT-CONTAINER";
pub const NODEPORT_HOST: &str = "KUBE-NODEPORT-HOST";
/// The filter chain that rejects or drops traffic no listener takes.
pub const FILTER_SERVICES: &str = "KUBE-SERVICES";

/// Settings that change the plan: the shared proxier settings (this mode reads the
/// family, node and local addresses, `nodePortAddresses` and localhost node ports).
pub use twill_proxy_core::Config;

/// Node ports answer on loopback only for IPv4 and when enabled.
fn loopback_node_ports(cfg: &Config) -> bool {
    !cfg.is_v6() && cfg.localhost_node_ports
}

/// Which traffic of a service port a listener takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Cluster-IP traffic, and external traffic when it uses the same endpoints.
    Internal,
    /// External IPs, load-balancer IPs and node ports, when their endpoints differ.
    External,
}

/// Names one listener.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ListenerKey {
    pub service: ServicePortName,
    pub scope: Scope,
}

impl std::fmt::Display for ListenerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.service, self.service.protocol.lower())?;
        if self.scope == Scope::External {
            f.write_str(" (external)")?;
        }
        Ok(())
    }
}

/// Where traffic enters a listener.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Portal {
    /// `ip:port`, redirected from every source in `sources` (all when empty).
    Address {
        ip: IpAddr,
        port: u16,
        sources: Vec<IpNet>,
    },
    /// A node port on the selected local addresses.
    NodePort(u16),
}

/// One listener the proxier must own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerPlan {
    pub key: ListenerKey,
    pub protocol: Protocol,
    /// Sorted by `ip:port`.
    pub endpoints: Vec<SocketAddr>,
    /// `Some(seconds)` for ClientIP session affinity.
    pub affinity_timeout: Option<u32>,
    pub portals: Vec<Portal>,
}

/// Traffic nobody proxies that must not pass silently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    /// No usable endpoint anywhere: ICMP port unreachable / TCP RST.
    Reject,
    /// Endpoints exist but not for this traffic (iTP Local) or the source is outside
    /// `loadBalancerSourceRanges`.
    Drop,
}

/// A filter rule: traffic to a portal that no listener takes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Blocked {
    pub service: ServicePortName,
    pub portal: Portal,
    pub verdict: Verdict,
}

/// Everything a sync needs, without the listen ports (the kernel picks those).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Sorted by key.
    pub listeners: Vec<ListenerPlan>,
    pub blocked: Vec<Blocked>,
}

fn addrs(eps: &[&twill_proxy_core::EndpointInfo]) -> Vec<SocketAddr> {
    let mut v: Vec<SocketAddr> = eps.iter().map(|e| e.socket_addr()).collect();
    v.sort();
    v.dedup();
    v
}

fn external_portals(cfg: &Config, svc: &ServicePortInfo) -> Vec<Portal> {
    let mut out = Vec::new();
    for ip in &svc.external_ips {
        out.push(Portal::Address {
            ip: *ip,
            port: svc.port,
            sources: Vec::new(),
        });
    }
    for ip in &svc.load_balancer_vips {
        let mut sources = svc.load_balancer_source_ranges.clone();
        if !sources.is_empty() {
            // As the iptables mode: when the node's IP is allowed, so is traffic the node
            // sends to the LB address with the LB address as its source.
            if cfg
                .node_ips
                .first()
                .is_some_and(|n| sources.iter().any(|s| s.contains(n)))
            {
                sources.extend(svc.load_balancer_vips.iter().map(|v| IpNet::from(*v)));
            }
            sources.sort();
            sources.dedup();
        }
        out.push(Portal::Address {
            ip: *ip,
            port: svc.port,
            sources,
        });
    }
    if let Some(np) = svc.node_port {
        out.push(Portal::NodePort(np));
    }
    out
}

/// Compute the listeners and blocked portals for `model`. SCTP service ports are left
/// out (see the module comment).
pub fn plan(cfg: &Config, model: &ProxyModel) -> Plan {
    let mut out = Plan::default();
    for (name, svc) in &model.services {
        if svc.protocol == Protocol::Sctp {
            continue;
        }
        let cat = categorize_endpoints(model.endpoints_of(name), svc, model.node_zone.as_deref());
        let internal = if svc.internal_policy_local {
            addrs(&cat.local)
        } else {
            addrs(&cat.cluster)
        };
        let external = addrs(&cat.cluster);
        let cluster_portal = Portal::Address {
            ip: svc.cluster_ip,
            port: svc.port,
            sources: Vec::new(),
        };
        let ext_portals = external_portals(cfg, svc);
        let no_endpoints = if cat.has_any {
            Verdict::Drop
        } else {
            Verdict::Reject
        };
        let listener = |scope, endpoints: Vec<SocketAddr>, portals| ListenerPlan {
            key: ListenerKey {
                service: name.clone(),
                scope,
            },
            protocol: svc.protocol,
            endpoints,
            affinity_timeout: svc.affinity_timeout,
            portals,
        };
        let block = |portal: Portal, verdict| Blocked {
            service: name.clone(),
            portal,
            verdict,
        };
        // Source-range LB portals drop what they do not redirect.
        for p in &ext_portals {
            if let Portal::Address { sources, .. } = p
                && !sources.is_empty()
                && !external.is_empty()
            {
                out.blocked.push(block(p.clone(), Verdict::Drop));
            }
        }
        if internal == external {
            let mut portals = vec![cluster_portal];
            portals.extend(ext_portals);
            if internal.is_empty() {
                for p in portals {
                    out.blocked.push(block(strip_sources(p), no_endpoints));
                }
            } else {
                out.listeners
                    .push(listener(Scope::Internal, internal, portals));
            }
            continue;
        }
        if internal.is_empty() {
            out.blocked.push(block(cluster_portal, no_endpoints));
        } else {
            out.listeners
                .push(listener(Scope::Internal, internal, vec![cluster_portal]));
        }
        if !ext_portals.is_empty() {
            if external.is_empty() {
                for p in ext_portals {
                    out.blocked.push(block(strip_sources(p), no_endpoints));
                }
            } else {
                out.listeners
                    .push(listener(Scope::External, external, ext_portals));
            }
        }
    }
    out.listeners.sort_by(|a, b| a.key.cmp(&b.key));
    out.blocked.sort();
    out.blocked.dedup();
    out
}

fn strip_sources(p: Portal) -> Portal {
    match p {
        Portal::Address { ip, port, .. } => Portal::Address {
            ip,
            port,
            sources: Vec::new(),
        },
        n => n,
    }
}

fn host_net(ip: IpAddr) -> String {
    IpNet::from(ip).to_string()
}

fn quote(s: &str) -> String {
    if s.contains(' ') {
        format!("\"{s}\"")
    } else {
        s.to_string()
    }
}

/// The node-port destination matches: one per selected local address, or (all local
/// addresses, which the base-chain jump already checks with `addrtype`) one with no
/// address, minus loopback when loopback node ports are off.
fn node_port_dests(cfg: &Config) -> Vec<String> {
    let cidrs = cfg.node_port_cidrs();
    if cidrs.is_empty() {
        let lo = if cfg.is_v6() {
            "::1/128"
        } else {
            "127.0.0.0/8"
        };
        return vec![if loopback_node_ports(cfg) {
            String::new()
        } else {
            format!("! -d {lo} ")
        }];
    }
    let mut ips: Vec<IpAddr> = cfg
        .local_addresses
        .iter()
        .copied()
        .filter(|ip| ip.is_ipv6() == cfg.is_v6())
        .filter(|ip| cidrs.iter().any(|n| n.contains(ip)))
        .filter(|ip| !ip.is_loopback() || loopback_node_ports(cfg))
        .collect();
    ips.sort();
    ips.dedup();
    ips.into_iter()
        .map(|ip| format!("-d {} ", host_net(ip)))
        .collect()
}

/// The iptables-restore input for `plan`, with `ports` giving each listener's local
/// port (listeners missing from `ports` are left out). Chains are declared (and so
/// flushed) every time, so the text is the whole state; base-chain jumps are in
/// [`base_jumps`].
pub fn render_rules(cfg: &Config, plan: &Plan, ports: &BTreeMap<ListenerKey, u16>) -> String {
    let mut nat: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for c in [
        PORTALS_CONTAINER,
        PORTALS_HOST,
        NODEPORT_CONTAINER,
        NODEPORT_HOST,
    ] {
        nat.insert(c, Vec::new());
    }
    let np_dests = node_port_dests(cfg);
    for l in &plan.listeners {
        let Some(lp) = ports.get(&l.key) else {
            continue;
        };
        let proto = l.protocol.lower();
        let comment = quote(&l.key.service.to_string());
        for p in &l.portals {
            match p {
                Portal::Address { ip, port, sources } => {
                    let srcs: Vec<String> = if sources.is_empty() {
                        vec![String::new()]
                    } else {
                        sources.iter().map(|s| format!("-s {s} ")).collect()
                    };
                    for chain in [PORTALS_CONTAINER, PORTALS_HOST] {
                        for s in &srcs {
                            nat.entry(chain).or_default().push(format!(
                                "-A {chain} -m comment --comment {comment} -p {proto} -m {proto} {s}-d {} --dport {port} -j REDIRECT --to-ports {lp}",
                                host_net(*ip)
                            ));
                        }
                    }
                }
                Portal::NodePort(np) => {
                    for chain in [NODEPORT_CONTAINER, NODEPORT_HOST] {
                        for d in &np_dests {
                            nat.entry(chain).or_default().push(format!(
                                "-A {chain} -m comment --comment {comment} -p {proto} -m {proto} {d}--dport {np} -j REDIRECT --to-ports {lp}"
                            ));
                        }
                    }
                }
            }
        }
    }
    let mut filter = Vec::new();
    for b in &plan.blocked {
        let proto = b.service.protocol.lower();
        let (why, target) = match b.verdict {
            Verdict::Reject => ("has no endpoints", "REJECT"),
            Verdict::Drop => ("has no usable endpoints for this traffic", "DROP"),
        };
        let comment = quote(&format!("{} {why}", b.service));
        match &b.portal {
            Portal::Address { ip, port, .. } => filter.push(format!(
                "-A {FILTER_SERVICES} -m comment --comment {comment} -p {proto} -m {proto} -d {} --dport {port} -j {target}",
                host_net(*ip)
            )),
            Portal::NodePort(np) => {
                for d in &np_dests {
                    filter.push(format!(
                        "-A {FILTER_SERVICES} -m comment --comment {comment} -m addrtype --dst-type LOCAL -p {proto} -m {proto} {d}--dport {np} -j {target}"
                    ));
                }
            }
        }
    }
    let mut s = String::from("*nat\n");
    for c in nat.keys() {
        let _ = writeln!(s, ":{c} - [0:0]");
    }
    for rules in nat.values() {
        for r in rules {
            s.push_str(r);
            s.push('\n');
        }
    }
    s.push_str("COMMIT\n*filter\n");
    let _ = writeln!(s, ":{FILTER_SERVICES} - [0:0]");
    for r in filter {
        s.push_str(&r);
        s.push('\n');
    }
    s.push_str("COMMIT\n");
    s
}

/// A jump from a base chain into one of ours: `(table, base chain, match args, target)`.
pub type BaseJump = (
    &'static str,
    &'static str,
    &'static [&'static str],
    &'static str,
);

/// The jumps the mode needs, in the order they should appear at the top of each chain.
pub fn base_jumps() -> Vec<BaseJump> {
    const LOCAL: &[&str] = &["-m", "addrtype", "--dst-type", "LOCAL"];
    const NEW: &[&str] = &["-m", "conntrack", "--ctstate", "NEW"];
    vec![
        ("nat", "PREROUTING", &[], PORTALS_CONTAINER),
        ("nat", "PREROUTING", LOCAL, NODEPORT_CONTAINER),
        ("nat", "OUTPUT", &[], PORTALS_HOST),
        ("nat", "OUTPUT", LOCAL, NODEPORT_HOST),
        ("filter", "INPUT", NEW, FILTER_SERVICES),
        ("filter", "FORWARD", NEW, FILTER_SERVICES),
        ("filter", "OUTPUT", NEW, FILTER_SERVICES),
    ]
}

#[cfg(test)]
mod tests;

/// What `twill proxy rules --mode userspace` prints: the listeners with their endpoints,
/// then the rules with placeholder listen ports (`--to-ports` of the N-th listener is
/// N; the real ports are picked by the kernel when the proxier binds).
pub fn preview(cfg: &Config, plan: &Plan) -> String {
    let mut s = String::new();
    let mut ports = BTreeMap::new();
    for (i, l) in plan.listeners.iter().enumerate() {
        let n = u16::try_from(i + 1).unwrap_or(u16::MAX);
        ports.insert(l.key.clone(), n);
        let eps: Vec<String> = l.endpoints.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            s,
            "# listener {n}: {} -> {}{}",
            l.key,
            eps.join(" "),
            l.affinity_timeout
                .map(|t| format!(" (ClientIP affinity {t}s)"))
                .unwrap_or_default()
        );
    }
    s.push_str(&render_rules(cfg, plan, &ports));
    s
}
