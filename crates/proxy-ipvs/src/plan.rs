//! Which virtual servers, real servers, bound addresses and set entries a model needs.
//!
//! As upstream's `syncProxyRules` (`pkg/proxy/ipvs/proxier.go`):
//! - one virtual server per cluster IP, external IP and load-balancer IP, and one per
//!   node port on each node-port address; all with the configured scheduler, and
//!   persistence (`IP_VS_SVC_F_PERSISTENT` + timeout, full netmask) for ClientIP affinity;
//! - real servers with weight 1, forwarding method masquerade (NAT);
//! - cluster IPs, non-local external IPs and LB IPs bound on `kube-ipvs0`;
//! - cluster-IP servers use the cluster endpoints (local ones for iTP Local); external
//!   servers use the local endpoints for eTP Local, falling back to the cluster ones when
//!   there are none so local pods still reach the service (upstream PR 97081).
//!
//! Where Twill differs: a service port whose policy leaves no endpoint for some traffic
//! (iTP Local without local endpoints; eTP Local without local endpoints, for traffic
//! from outside the cluster) gets a filter DROP in [`crate::rules`], as the iptables mode
//! has, instead of upstream's silent fallback to remote endpoints whose replies cannot
//! come back. These are listed in [`Plan::no_local_endpoints`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use twill_model::Protocol;
use twill_proxy_core::{ProxyModel, ServicePortName, categorize_endpoints};

use crate::config::{Config, NodePorts};
use crate::ipset::{Entry, SetName, Sets};

/// `IP_VS_SVC_F_PERSISTENT` (`include/uapi/linux/ip_vs.h`).
pub const F_PERSISTENT: u32 = 0x0001;
/// `IP_VS_SVC_F_HASHED`: set by the kernel on every service it lists; not ours to set.
pub const F_HASHED: u32 = 0x0002;

/// A virtual server's identity: what `IPVS_CMD_SET_SERVICE`/`DEL_SERVICE` address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VsKey {
    pub addr: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
}

impl std::fmt::Display for VsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}",
            self.protocol.lower(),
            SocketAddr::new(self.addr, self.port)
        )
    }
}

/// The settable part of a virtual server.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceSpec {
    pub scheduler: String,
    /// `IP_VS_SVC_F_*`, without `HASHED`.
    pub flags: u32,
    /// Persistence timeout in seconds (0 when not persistent).
    pub timeout: u32,
    /// 0xffffffff for IPv4, 128 for IPv6 (what ipvsadm and upstream send).
    pub netmask: u32,
}

/// A real server: always NAT-forwarded (`IP_VS_CONN_F_MASQ`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RealServer {
    pub addr: SocketAddr,
    pub weight: u32,
}

/// Why a virtual server exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    ClusterIp,
    ExternalIp,
    LoadBalancer,
    NodePort,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualServer {
    pub key: VsKey,
    pub spec: ServiceSpec,
    /// Sorted by address.
    pub real_servers: Vec<RealServer>,
    pub service: ServicePortName,
    pub kind: Kind,
}

/// Traffic a service port must not deliver: (service, its virtual server, which sources
/// are dropped).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NoLocal {
    pub service: ServicePortName,
    pub key: VsKey,
    pub kind: Kind,
    /// `true`: only sources that are neither pods nor the node (eTP Local); `false`:
    /// every source (iTP Local).
    pub external_only: bool,
}

/// Everything one sync should make true.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub virtual_servers: BTreeMap<VsKey, VirtualServer>,
    /// Addresses to bind on `kube-ipvs0`.
    pub bind_addresses: BTreeSet<IpAddr>,
    pub sets: Sets,
    pub no_local_endpoints: Vec<NoLocal>,
    /// `(key, value)` sysctls, e.g. `net/ipv4/vs/conntrack = 1`.
    pub sysctls: Vec<(String, String)>,
}

impl Plan {
    pub fn lookup(&self, addr: IpAddr, protocol: Protocol, port: u16) -> Option<&VirtualServer> {
        self.virtual_servers.get(&VsKey {
            addr,
            protocol,
            port,
        })
    }
}

fn real_servers(eps: &[&twill_proxy_core::EndpointInfo]) -> Vec<RealServer> {
    let mut v: Vec<RealServer> = eps
        .iter()
        .map(|e| RealServer {
            addr: e.socket_addr(),
            weight: 1,
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Plan the ipvs state for `model`.
pub fn plan(cfg: &Config, model: &ProxyModel) -> Plan {
    let mut out = Plan::default();
    let mut sets = Sets::new(cfg.is_v6());
    let netmask = if cfg.is_v6() { 128 } else { u32::MAX };
    let node_port_ips = cfg.node_port_ips();
    let local: BTreeSet<IpAddr> = cfg.local_addresses.iter().copied().collect();
    for (name, svc) in &model.services {
        let cat = categorize_endpoints(model.endpoints_of(name), svc, model.node_zone.as_deref());
        let spec = ServiceSpec {
            scheduler: cfg.scheduler.as_str().to_string(),
            flags: if svc.affinity_timeout.is_some() {
                F_PERSISTENT
            } else {
                0
            },
            timeout: svc.affinity_timeout.unwrap_or(0),
            netmask,
        };
        let proto = svc.protocol;
        let internal_rs = real_servers(if svc.internal_policy_local {
            &cat.local
        } else {
            &cat.cluster
        });
        let external_rs = real_servers(if svc.external_policy_local && !cat.local.is_empty() {
            &cat.local
        } else {
            &cat.cluster
        });
        let add = |out: &mut Plan, addr: IpAddr, port: u16, kind: Kind, rs: &Vec<RealServer>| {
            let key = VsKey {
                addr,
                protocol: proto,
                port,
            };
            out.virtual_servers.insert(
                key,
                VirtualServer {
                    key,
                    spec: spec.clone(),
                    real_servers: rs.clone(),
                    service: name.clone(),
                    kind,
                },
            );
            key
        };
        let p = proto.lower();
        // Cluster IP.
        let k = add(
            &mut out,
            svc.cluster_ip,
            svc.port,
            Kind::ClusterIp,
            &internal_rs,
        );
        out.bind_addresses.insert(svc.cluster_ip);
        sets.add(
            SetName::ClusterIp,
            Entry::ip_port(svc.cluster_ip, p, svc.port),
        );
        if svc.internal_policy_local && cat.local.is_empty() && cat.has_any {
            out.no_local_endpoints.push(NoLocal {
                service: name.clone(),
                key: k,
                kind: Kind::ClusterIp,
                external_only: false,
            });
        }
        // Hairpin: a local endpoint reaching itself through the service is masqueraded.
        for e in cat.all_reachable.iter().filter(|e| e.is_local) {
            sets.add(SetName::LoopBack, Entry::ip_port_ip(e.ip, p, e.port, e.ip));
        }
        let etp_drop = svc.external_policy_local && cat.local.is_empty() && cat.has_any;
        let mut external_keys = Vec::new();
        for ip in &svc.external_ips {
            let k = add(&mut out, *ip, svc.port, Kind::ExternalIp, &external_rs);
            external_keys.push((k, Kind::ExternalIp));
            if !local.contains(ip) {
                out.bind_addresses.insert(*ip);
            }
            let set = if svc.external_policy_local {
                SetName::ExternalIpLocal
            } else {
                SetName::ExternalIp
            };
            sets.add(set, Entry::ip_port(*ip, p, svc.port));
        }
        let allow_from_node = cfg.node_ips.first().is_some_and(|n| {
            svc.load_balancer_source_ranges
                .iter()
                .any(|r| r.contains(n))
        });
        for ip in &svc.load_balancer_vips {
            let k = add(&mut out, *ip, svc.port, Kind::LoadBalancer, &external_rs);
            external_keys.push((k, Kind::LoadBalancer));
            out.bind_addresses.insert(*ip);
            let e = Entry::ip_port(*ip, p, svc.port);
            sets.add(SetName::LoadBalancer, e.clone());
            if svc.external_policy_local {
                sets.add(SetName::LoadBalancerLocal, e.clone());
            }
            if !svc.load_balancer_source_ranges.is_empty() {
                sets.add(SetName::LoadBalancerFw, e);
                for r in &svc.load_balancer_source_ranges {
                    sets.add(
                        SetName::LoadBalancerSourceCidr,
                        Entry::ip_port_net(*ip, p, svc.port, *r),
                    );
                }
                if allow_from_node {
                    sets.add(
                        SetName::LoadBalancerSourceIp,
                        Entry::ip_port_ip(*ip, p, svc.port, *ip),
                    );
                }
            }
        }
        if let Some(np) = svc.node_port {
            for ip in &node_port_ips {
                let k = add(&mut out, *ip, np, Kind::NodePort, &external_rs);
                external_keys.push((k, Kind::NodePort));
            }
            match proto {
                Protocol::Sctp => {
                    for ip in &node_port_ips {
                        sets.add(SetName::NodePortSctp, Entry::ip_port(*ip, p, np));
                        if svc.external_policy_local {
                            sets.add(SetName::NodePortLocalSctp, Entry::ip_port(*ip, p, np));
                        }
                    }
                }
                Protocol::Tcp | Protocol::Udp => {
                    let (all, loc) = if proto == Protocol::Tcp {
                        (SetName::NodePortTcp, SetName::NodePortLocalTcp)
                    } else {
                        (SetName::NodePortUdp, SetName::NodePortLocalUdp)
                    };
                    sets.add(all, Entry::port(np));
                    if svc.external_policy_local {
                        sets.add(loc, Entry::port(np));
                    }
                }
            }
        }
        if etp_drop {
            for (key, kind) in external_keys {
                out.no_local_endpoints.push(NoLocal {
                    service: name.clone(),
                    key,
                    kind,
                    external_only: true,
                });
            }
        }
        if let Some(hc) = svc.health_check_node_port {
            sets.add(SetName::HealthCheckNodePort, Entry::port(hc));
        }
    }
    for ip in &out.bind_addresses {
        sets.add(SetName::IpvsIps, Entry::ip(*ip));
    }
    out.sets = sets;
    out.no_local_endpoints.sort();
    out.no_local_endpoints.dedup();
    let mut sysctls = vec![
        ("net/ipv4/vs/conntrack", "1"),
        ("net/ipv4/vs/expire_nodest_conn", "1"),
        ("net/ipv4/vs/expire_quiescent_template", "1"),
        ("net/ipv4/ip_forward", "1"),
    ];
    if cfg.is_v6() {
        sysctls.push(("net/ipv6/conf/all/forwarding", "1"));
    }
    if cfg.strict_arp {
        sysctls.push(("net/ipv4/conf/all/arp_ignore", "1"));
        sysctls.push(("net/ipv4/conf/all/arp_announce", "2"));
    }
    out.sysctls = sysctls
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    out
}

/// Whether `addr` falls in one of the excluded CIDRs (never deleted by a sync).
pub fn excluded(cfg: &Config, addr: &IpAddr) -> bool {
    cfg.exclude_cidrs.iter().any(|n: &IpNet| n.contains(addr))
}

#[cfg(test)]
mod tests;
