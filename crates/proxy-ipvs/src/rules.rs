//! The iptables rules of the ipvs mode: IPVS does the load balancing, these rules only
//! mark for masquerade and filter, matching whole ipsets so the rule count stays flat
//! however many services there are (`writeIptablesRules` in upstream's
//! `pkg/proxy/ipvs/proxier.go`: the same chains, set matches, comments and order).
//!
//! Twill adds one thing to `KUBE-PROXY-FIREWALL`: DROP rules for service ports whose
//! traffic policy leaves no endpoint (see [`crate::plan`]).

use std::fmt::Write as _;

use crate::config::Config;
use crate::ipset::SetName;
use crate::plan::Plan;

pub const KUBE_SERVICES: &str = "KUBE-SERVICES";
pub const KUBE_POSTROUTING: &str = "KUBE-POSTROUTING";
pub const KUBE_NODE_PORT: &str = "KUBE-NODE-PORT";
pub const KUBE_LOAD_BALANCER: &str = "KUBE-LOAD-BALANCER";
pub const KUBE_MARK_MASQ: &str = "KUBE-MARK-MASQ";
pub const KUBE_FORWARD: &str = "KUBE-FORWARD";
pub const KUBE_PROXY_FIREWALL: &str = "KUBE-PROXY-FIREWALL";
pub const KUBE_SOURCE_RANGES_FIREWALL: &str = "KUBE-SOURCE-RANGES-FIREWALL";
pub const KUBE_IPVS_FILTER: &str = "KUBE-IPVS-FILTER";
pub const KUBE_IPVS_OUT_FILTER: &str = "KUBE-IPVS-OUT-FILTER";

/// A base-chain jump: `(table, from, to, comment)`; inserted first in `from`.
pub const BASE_JUMPS: [(&str, &str, &str, &str); 9] = [
    ("nat", "OUTPUT", KUBE_SERVICES, "kubernetes service portals"),
    (
        "nat",
        "PREROUTING",
        KUBE_SERVICES,
        "kubernetes service portals",
    ),
    (
        "nat",
        "POSTROUTING",
        KUBE_POSTROUTING,
        "kubernetes postrouting rules",
    ),
    (
        "filter",
        "FORWARD",
        KUBE_FORWARD,
        "kubernetes forwarding rules",
    ),
    (
        "filter",
        "INPUT",
        KUBE_NODE_PORT,
        "kubernetes health check rules",
    ),
    (
        "filter",
        "INPUT",
        KUBE_PROXY_FIREWALL,
        "kube-proxy firewall rules",
    ),
    (
        "filter",
        "FORWARD",
        KUBE_PROXY_FIREWALL,
        "kube-proxy firewall rules",
    ),
    (
        "filter",
        "INPUT",
        KUBE_IPVS_FILTER,
        "kubernetes ipvs access filter",
    ),
    (
        "filter",
        "OUTPUT",
        KUBE_IPVS_OUT_FILTER,
        "kubernetes ipvs access filter",
    ),
];

/// Upstream's `ipsetWithIptablesChain`: `(set, table, from chain, target, match type,
/// protocol match)`, in its order (the LOCAL node-port sets before the general ones).
const SET_JUMPS: [(SetName, &str, &str, &str, &str, &str); 12] = [
    (
        SetName::LoopBack,
        "nat",
        KUBE_POSTROUTING,
        "MASQUERADE",
        "dst,dst,src",
        "",
    ),
    (
        SetName::LoadBalancer,
        "nat",
        KUBE_SERVICES,
        KUBE_LOAD_BALANCER,
        "dst,dst",
        "",
    ),
    (
        SetName::LoadBalancerLocal,
        "nat",
        KUBE_LOAD_BALANCER,
        "RETURN",
        "dst,dst",
        "",
    ),
    (
        SetName::NodePortLocalTcp,
        "nat",
        KUBE_NODE_PORT,
        "RETURN",
        "dst",
        "tcp",
    ),
    (
        SetName::NodePortTcp,
        "nat",
        KUBE_NODE_PORT,
        KUBE_MARK_MASQ,
        "dst",
        "tcp",
    ),
    (
        SetName::NodePortLocalUdp,
        "nat",
        KUBE_NODE_PORT,
        "RETURN",
        "dst",
        "udp",
    ),
    (
        SetName::NodePortUdp,
        "nat",
        KUBE_NODE_PORT,
        KUBE_MARK_MASQ,
        "dst",
        "udp",
    ),
    (
        SetName::NodePortLocalSctp,
        "nat",
        KUBE_NODE_PORT,
        "RETURN",
        "dst,dst",
        "sctp",
    ),
    (
        SetName::NodePortSctp,
        "nat",
        KUBE_NODE_PORT,
        KUBE_MARK_MASQ,
        "dst,dst",
        "sctp",
    ),
    (
        SetName::LoadBalancerFw,
        "filter",
        KUBE_PROXY_FIREWALL,
        KUBE_SOURCE_RANGES_FIREWALL,
        "dst,dst",
        "",
    ),
    (
        SetName::LoadBalancerSourceCidr,
        "filter",
        KUBE_SOURCE_RANGES_FIREWALL,
        "RETURN",
        "dst,dst,src",
        "",
    ),
    (
        SetName::LoadBalancerSourceIp,
        "filter",
        KUBE_SOURCE_RANGES_FIREWALL,
        "RETURN",
        "dst,dst,src",
        "",
    ),
];

fn quoted(s: &str) -> String {
    format!("\"{s}\"")
}

/// The `iptables-restore` input (nat and filter) for `plan`.
pub fn render(cfg: &Config, plan: &Plan) -> String {
    let sets = &plan.sets;
    let set_comment = |s: SetName| quoted(s.comment());
    let mut nat = Vec::new();
    let mut filter = Vec::new();
    let lo = if cfg.is_v6() {
        "::1/128"
    } else {
        "127.0.0.0/8"
    };
    nat.push(format!("-A {KUBE_SERVICES} -s {lo} -j RETURN"));
    for (set, table, from, to, mt, proto) in SET_JUMPS {
        if sets.is_empty(set) {
            continue;
        }
        let p = if proto.is_empty() {
            String::new()
        } else {
            format!("-p {proto} ")
        };
        let line = format!(
            "-A {from} {p}-m comment --comment {} -m set --match-set {} {mt} -j {to}",
            set_comment(set),
            sets.name(set)
        );
        if table == "filter" {
            filter.push(line);
        } else {
            nat.push(line);
        }
    }
    if !sets.is_empty(SetName::ClusterIp) {
        let head = format!(
            "-A {KUBE_SERVICES} -m comment --comment {} -m set --match-set {}",
            set_comment(SetName::ClusterIp),
            sets.name(SetName::ClusterIp)
        );
        nat.push(if cfg.masquerade_all {
            format!("{head} dst,dst -j {KUBE_MARK_MASQ}")
        } else if let Some(n) = cfg.local_detector.cidr() {
            format!("{head} dst,dst ! -s {n} -j {KUBE_MARK_MASQ}")
        } else {
            // No detector: masquerade node-originated traffic whose source is a VIP
            // (the kernel picks a kube-ipvs0 address as source towards a VIP).
            format!("{head} src,dst -j {KUBE_MARK_MASQ}")
        });
    }
    let external_accepts = |nat: &mut Vec<String>, head: &str| {
        nat.push(format!(
            "{head} -m physdev ! --physdev-is-in -m addrtype ! --src-type LOCAL -j ACCEPT"
        ));
        nat.push(format!("{head} -m addrtype --dst-type LOCAL -j ACCEPT"));
    };
    for (set, masq) in [
        (SetName::ExternalIp, true),
        (SetName::ExternalIpLocal, false),
    ] {
        if sets.is_empty(set) {
            continue;
        }
        let head = format!(
            "-A {KUBE_SERVICES} -m comment --comment {} -m set --match-set {} dst,dst",
            set_comment(set),
            sets.name(set)
        );
        if masq {
            nat.push(format!("{head} -j {KUBE_MARK_MASQ}"));
        }
        external_accepts(&mut nat, &head);
    }
    nat.push(format!(
        "-A {KUBE_SERVICES} -m addrtype --dst-type LOCAL -j {KUBE_NODE_PORT}"
    ));
    nat.push(format!("-A {KUBE_LOAD_BALANCER} -j {KUBE_MARK_MASQ}"));
    filter.push(format!("-A {KUBE_SOURCE_RANGES_FIREWALL} -j DROP"));
    for set in [SetName::ClusterIp, SetName::LoadBalancer] {
        if !sets.is_empty(set) {
            nat.push(format!(
                "-A {KUBE_SERVICES} -m set --match-set {} dst,dst -j ACCEPT",
                sets.name(set)
            ));
        }
    }
    // Twill: policies that leave no endpoint for some traffic.
    let pod_match = match cfg.local_detector.cidr() {
        Some(n) => format!("! -s {n} "),
        None => String::new(),
    };
    for nl in &plan.no_local_endpoints {
        let proto = nl.key.protocol.lower();
        // Node ports too: their virtual servers sit on each node-port address.
        let dst = format!("-d {}", ipnet::IpNet::from(nl.key.addr));
        let who = if nl.external_only {
            format!("{pod_match}-m addrtype ! --src-type LOCAL ")
        } else {
            String::new()
        };
        let port = nl.key.port;
        filter.push(format!(
            "-A {KUBE_PROXY_FIREWALL} -m comment --comment {} {who}{dst} -p {proto} -m {proto} --dport {port} -j DROP",
            quoted(&format!("{} has no local endpoints", nl.service))
        ));
    }
    let mark = cfg.mark();
    filter.push(format!(
        "-A {KUBE_FORWARD} -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {mark}/{mark} -j ACCEPT"
    ));
    filter.push(format!(
        "-A {KUBE_FORWARD} -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    ));
    filter.push(format!(
        "-A {KUBE_NODE_PORT} -m comment --comment {} -m set --match-set {} dst -j ACCEPT",
        set_comment(SetName::HealthCheckNodePort),
        sets.name(SetName::HealthCheckNodePort)
    ));
    for (set, mt) in [
        (SetName::LoadBalancer, "dst,dst"),
        (SetName::ClusterIp, "dst,dst"),
        (SetName::ExternalIp, "dst,dst"),
        (SetName::ExternalIpLocal, "dst,dst"),
        (SetName::HealthCheckNodePort, "dst"),
    ] {
        filter.push(format!(
            "-A {KUBE_IPVS_FILTER} -m set --match-set {} {mt} -j RETURN",
            sets.name(set)
        ));
    }
    filter.push(format!(
        "-A {KUBE_IPVS_FILTER} -m conntrack --ctstate NEW -m set --match-set {} dst -j REJECT",
        sets.name(SetName::IpvsIps)
    ));
    nat.push(format!(
        "-A {KUBE_POSTROUTING} -m mark ! --mark {mark}/{mark} -j RETURN"
    ));
    nat.push(format!("-A {KUBE_POSTROUTING} -j MARK --xor-mark {mark}"));
    nat.push(format!(
        "-A {KUBE_POSTROUTING} -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE"
    ));
    nat.push(format!("-A {KUBE_MARK_MASQ} -j MARK --or-mark {mark}"));

    let mut s = String::from("*filter\n");
    for c in [
        KUBE_FORWARD,
        KUBE_NODE_PORT,
        KUBE_PROXY_FIREWALL,
        KUBE_SOURCE_RANGES_FIREWALL,
        KUBE_IPVS_FILTER,
        KUBE_IPVS_OUT_FILTER,
    ] {
        let _ = writeln!(s, ":{c} - [0:0]");
    }
    for l in filter {
        let _ = writeln!(s, "{l}");
    }
    s.push_str("COMMIT\n*nat\n");
    for c in [
        KUBE_SERVICES,
        KUBE_POSTROUTING,
        KUBE_NODE_PORT,
        KUBE_LOAD_BALANCER,
        KUBE_MARK_MASQ,
    ] {
        let _ = writeln!(s, ":{c} - [0:0]");
    }
    for l in nat {
        let _ = writeln!(s, "{l}");
    }
    s.push_str("COMMIT\n");
    s
}
