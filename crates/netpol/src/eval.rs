//! The verdict for one connection, computed from the model.
//!
//! This is the specification the rendered rules must agree with, written as directly as
//! the API reference words it (`networking/v1` types.go comments and the e2e
//! `truthtable.go` semantics): no sets, no chains, one pass over the policies.

use std::net::IpAddr;

use twill_model::{
    ClusterNetworkPolicy, CnpAction, CnpPeer, CnpProtocol, CnpRule, CnpTier, NetworkPolicy,
    PolicyPeer, PolicyPort, Protocol, TargetPort,
};

use crate::cluster::{Cluster, PolicyPod};

/// One end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer<'a> {
    Pod(&'a PolicyPod),
    /// Anything that is not a pod: a node address or a cluster-external host.
    Ip(IpAddr),
}

impl Peer<'_> {
    pub fn ip(&self) -> IpAddr {
        match self {
            Peer::Pod(p) => p.ip,
            Peer::Ip(ip) => *ip,
        }
    }
}

/// Whether a new connection `src → dst:port/protocol` is admitted: the source's egress
/// (when it is a pod) and the destination's ingress (when it is a pod) must both allow it.
/// Services are out of scope here: resolve a ClusterIP to its backend first (policy sees
/// the connection after DNAT).
pub fn allows(
    cluster: &Cluster,
    src: Peer<'_>,
    dst: Peer<'_>,
    port: u16,
    protocol: Protocol,
) -> bool {
    let egress = match src {
        Peer::Pod(p) => egress_allows(cluster, p, dst, port, protocol),
        Peer::Ip(_) => true,
    };
    let ingress = match dst {
        Peer::Pod(p) => ingress_allows(cluster, p, src, port, protocol),
        Peer::Ip(_) => true,
    };
    egress && ingress
}

/// The destination pod's ingress side.
pub fn ingress_allows(
    cluster: &Cluster,
    dst: &PolicyPod,
    src: Peer<'_>,
    port: u16,
    protocol: Protocol,
) -> bool {
    // The pod's own node may always reach it (kubelet probes).
    if let Peer::Ip(ip) = src
        && cluster
            .nodes
            .get(&dst.node)
            .is_some_and(|n| n.addresses.contains(&ip))
    {
        return true;
    }
    let conn = Connection {
        pod: dst,
        ingress: true,
        other: src,
        dst: Some(dst),
        port,
        protocol,
    };
    if let Some(v) = tiers_around_network_policies(cluster, &conn) {
        return v;
    }
    cluster
        .selecting(dst)
        .filter(|p| p.ingress_isolation)
        .flat_map(|p| p.ingress.iter().map(move |r| (p, r)))
        .any(|(policy, rule)| {
            peers_match(cluster, policy, &rule.peers, src)
                && ports_match(&rule.ports, Some(dst), port, protocol)
        })
}

/// The source pod's egress side.
pub fn egress_allows(
    cluster: &Cluster,
    src: &PolicyPod,
    dst: Peer<'_>,
    port: u16,
    protocol: Protocol,
) -> bool {
    let dst_pod = match dst {
        Peer::Pod(p) => Some(p),
        Peer::Ip(_) => None,
    };
    let conn = Connection {
        pod: src,
        ingress: false,
        other: dst,
        dst: dst_pod,
        port,
        protocol,
    };
    if let Some(v) = tiers_around_network_policies(cluster, &conn) {
        return v;
    }
    cluster
        .selecting(src)
        .filter(|p| p.egress_isolation)
        .flat_map(|p| p.egress.iter().map(move |r| (p, r)))
        .any(|(policy, rule)| {
            peers_match(cluster, policy, &rule.peers, dst)
                && ports_match(&rule.ports, dst_pod, port, protocol)
        })
}

/// One connection as one pod's policies see it (`ingress`: `other` is the source).
struct Connection<'a> {
    pod: &'a PolicyPod,
    ingress: bool,
    other: Peer<'a>,
    /// The destination pod, for named ports.
    dst: Option<&'a PolicyPod>,
    port: u16,
    protocol: Protocol,
}

/// The ClusterNetworkPolicy tiers around the NetworkPolicy tier: `Some` when they decide
/// (the Admin tier's Accept or Deny; the Baseline tier for a pod no NetworkPolicy
/// isolates in this direction, allowed unless it denies), `None` when the
/// NetworkPolicies decide.
fn tiers_around_network_policies(cluster: &Cluster, c: &Connection<'_>) -> Option<bool> {
    let ask = |tier| {
        tier_decision(
            cluster, tier, c.pod, c.ingress, c.other, c.dst, c.port, c.protocol,
        )
        .map(|(_, _, a)| a)
    };
    match ask(CnpTier::Admin) {
        Some(CnpAction::Accept) => return Some(true),
        Some(CnpAction::Deny) => return Some(false),
        Some(CnpAction::Pass) | None => {}
    }
    let isolated = if c.ingress {
        cluster.isolated_for_ingress(c.pod)
    } else {
        cluster.isolated_for_egress(c.pod)
    };
    (!isolated).then(|| ask(CnpTier::Baseline) != Some(CnpAction::Deny))
}

/// The first rule of the tier's ClusterNetworkPolicies (in priority order) that matches
/// a connection of `pod` with `other` (`ingress`: `other` is the source), with its
/// policy, its index and the action it takes (a fail-closed rule's action is Deny).
#[allow(clippy::too_many_arguments)]
pub fn tier_decision<'a>(
    cluster: &'a Cluster,
    tier: CnpTier,
    pod: &PolicyPod,
    ingress: bool,
    other: Peer<'_>,
    dst: Option<&PolicyPod>,
    port: u16,
    protocol: Protocol,
) -> Option<(&'a ClusterNetworkPolicy, usize, CnpAction)> {
    cluster
        .tier_for(tier, pod, ingress)
        .into_iter()
        .find_map(|cnp| {
            let rules = if ingress { &cnp.ingress } else { &cnp.egress };
            rules.iter().enumerate().find_map(|(i, r)| {
                cnp_rule_action(cluster, r, other, dst, port, protocol).map(|a| (cnp, i, a))
            })
        })
}

/// A peer this implementation cannot read (or enforce): the API's fail-closed rule makes
/// an Accept rule match nothing through it, and a Deny or Pass rule deny everything.
pub fn fails_closed(p: &CnpPeer) -> bool {
    matches!(p, CnpPeer::Unknown | CnpPeer::DomainNames(_))
}

/// What one ClusterNetworkPolicy rule does to this connection, if it matches.
pub fn cnp_rule_action(
    cluster: &Cluster,
    rule: &CnpRule,
    other: Peer<'_>,
    dst: Option<&PolicyPod>,
    port: u16,
    protocol: Protocol,
) -> Option<CnpAction> {
    if rule.action != CnpAction::Accept && rule.peers.iter().any(fails_closed) {
        return Some(CnpAction::Deny);
    }
    let peer_ok = rule
        .peers
        .iter()
        .any(|p| cnp_peer_matches(cluster, p, other));
    let proto_ok = rule.protocols.is_empty()
        || rule.protocols.iter().any(|p| match p {
            CnpProtocol::Port {
                protocol: pr,
                ports,
            } => *pr == protocol && ports.is_none_or(|(a, b)| (a..=b).contains(&port)),
            CnpProtocol::NamedPort(name) => {
                dst.and_then(|d| d.find_port(name, protocol)) == Some(port)
            }
        });
    (peer_ok && proto_ok).then_some(rule.action)
}

pub fn cnp_peer_matches(cluster: &Cluster, peer: &CnpPeer, other: Peer<'_>) -> bool {
    let ns_matches = |sel: &twill_model::LabelSelector, pod: &PolicyPod| {
        cluster
            .namespace_labels(&pod.key.namespace)
            .is_some_and(|l| sel.matches(l))
    };
    match (peer, other) {
        (CnpPeer::Namespaces(sel), Peer::Pod(pod)) => ns_matches(sel, pod),
        (
            CnpPeer::Pods {
                namespace_selector,
                pod_selector,
            },
            Peer::Pod(pod),
        ) => ns_matches(namespace_selector, pod) && pod_selector.matches(&pod.labels),
        (CnpPeer::Nodes(sel), other) => cluster
            .nodes
            .values()
            .any(|n| sel.matches(&n.labels) && n.addresses.contains(&other.ip())),
        (CnpPeer::Networks(nets), other) => nets.iter().any(|n| n.contains(&other.ip())),
        _ => false,
    }
}

/// An empty peer list matches everyone, external addresses included.
fn peers_match(
    cluster: &Cluster,
    policy: &NetworkPolicy,
    peers: &[PolicyPeer],
    other: Peer<'_>,
) -> bool {
    peers.is_empty()
        || peers
            .iter()
            .any(|peer| peer_matches(cluster, policy, peer, other))
}

pub(crate) fn peer_matches(
    cluster: &Cluster,
    policy: &NetworkPolicy,
    peer: &PolicyPeer,
    other: Peer<'_>,
) -> bool {
    match peer {
        PolicyPeer::IpBlock { cidr, except } => {
            let ip = other.ip();
            cidr.contains(&ip) && !except.iter().any(|x| x.contains(&ip))
        }
        PolicyPeer::Pods {
            namespace_selector,
            pod_selector,
        } => {
            let Peer::Pod(pod) = other else { return false };
            pod_peer_matches(
                cluster,
                &policy.key.namespace,
                namespace_selector.as_ref(),
                pod_selector.as_ref(),
                pod,
            )
        }
    }
}

/// A selector peer: with no namespaceSelector the pods are the policy's own namespace's.
pub(crate) fn pod_peer_matches(
    cluster: &Cluster,
    policy_namespace: &str,
    namespace_selector: Option<&twill_model::LabelSelector>,
    pod_selector: Option<&twill_model::LabelSelector>,
    pod: &PolicyPod,
) -> bool {
    let ns_ok = match namespace_selector {
        None => pod.key.namespace == policy_namespace,
        Some(sel) => cluster
            .namespace_labels(&pod.key.namespace)
            .is_some_and(|l| sel.matches(l)),
    };
    ns_ok && pod_selector.is_none_or(|s| s.matches(&pod.labels))
}

/// An empty port list matches every port of every protocol. A named port is resolved on
/// the destination pod (`dst`), and never matches a destination that is not a pod.
fn ports_match(
    ports: &[PolicyPort],
    dst: Option<&PolicyPod>,
    port: u16,
    protocol: Protocol,
) -> bool {
    ports.is_empty() || ports.iter().any(|p| port_matches(p, dst, port, protocol))
}

fn port_matches(p: &PolicyPort, dst: Option<&PolicyPod>, port: u16, protocol: Protocol) -> bool {
    if p.protocol != protocol {
        return false;
    }
    match (&p.port, p.end_port) {
        (None, _) => true,
        (Some(TargetPort::Number(n)), None) => *n == port,
        (Some(TargetPort::Number(n)), Some(end)) => (*n..=end).contains(&port),
        (Some(TargetPort::Name(name)), _) => {
            dst.and_then(|d| d.find_port(name, protocol)) == Some(port)
        }
    }
}
