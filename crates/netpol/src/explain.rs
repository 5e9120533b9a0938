//! A NetworkPolicy verdict in words, straight from the cluster's objects: which policies
//! isolate a pod, the rule that admits a connection, and for one that none admits, why
//! (with the closest rule), and which ClusterNetworkPolicy rule decided where one did.
//! `twill trace` says it for a walked packet; the flow log says it for a packet the
//! kernel logged. Pure: reads a [`ClusterState`], nothing else.

use std::net::IpAddr;

use twill_model::{
    ClusterNetworkPolicy, ClusterState, CnpAction, CnpTier, NetworkPolicy, ObjectKey, Pod,
    PolicyPeer, PolicyPort, Protocol, TargetPort,
};

use crate::cluster::Cluster;
use crate::eval::{Peer, tier_decision};

pub fn pod_by_ip(state: &ClusterState, ip: IpAddr) -> Option<&Pod> {
    state
        .pods
        .values()
        .find(|p| p.pod_ips.contains(&ip) && !p.spec.host_network)
}

pub fn node_owning(state: &ClusterState, ip: IpAddr) -> Option<&str> {
    state
        .nodes
        .values()
        .find(|n| n.pod_cidrs.iter().any(|c| c.contains(&ip)) || n.internal_ips.contains(&ip))
        .map(|n| n.name.as_str())
}

pub fn describe_peer(state: &ClusterState, ip: IpAddr) -> String {
    match pod_by_ip(state, ip) {
        Some(p) => format!("pod {}", p.key),
        None => match node_owning(state, ip)
            .filter(|_| state.nodes.values().any(|n| n.internal_ips.contains(&ip)))
        {
            Some(n) => format!("node {n} ({ip})"),
            None => format!("{ip}"),
        },
    }
}

pub fn describe_rule_peers(peers: &[PolicyPeer]) -> String {
    if peers.is_empty() {
        return "every source".into();
    }
    let parts: Vec<String> = peers
        .iter()
        .map(|p| match p {
            PolicyPeer::Pods {
                namespace_selector,
                pod_selector,
            } => match (namespace_selector, pod_selector) {
                (None, Some(ps)) if ps.is_empty() => "every pod of its namespace".into(),
                (None, Some(ps)) => format!("pods with {ps}"),
                (Some(ns), None) if ns.is_empty() => "every pod".into(),
                (Some(ns), None) => format!("pods in namespaces with {ns}"),
                (Some(ns), Some(ps)) => format!("pods with {ps} in namespaces with {ns}"),
                (None, None) => "every pod of its namespace".into(),
            },
            PolicyPeer::IpBlock { cidr, except } if except.is_empty() => format!("{cidr}"),
            PolicyPeer::IpBlock { cidr, except } => {
                let ex: Vec<String> = except.iter().map(ToString::to_string).collect();
                format!("{cidr} except {}", ex.join(" "))
            }
        })
        .collect();
    parts.join(" or ")
}

pub fn port_admits(ports: &[PolicyPort], pod: &Pod, port: u16, proto: Protocol) -> bool {
    ports.is_empty()
        || ports.iter().any(|p| {
            p.protocol == proto
                && match &p.port {
                    None => true,
                    Some(TargetPort::Number(n)) => (*n..=p.end_port.unwrap_or(*n)).contains(&port),
                    Some(TargetPort::Name(name)) => pod.spec.find_port(name, proto) == Some(port),
                }
        })
}

/// Whether `peer` (an address, a pod when one has it) is one of a rule's peers, as the
/// API reference defines them (an empty list is everyone).
pub fn peer_matches(
    state: &ClusterState,
    policy: &NetworkPolicy,
    peers: &[PolicyPeer],
    peer: IpAddr,
) -> bool {
    if peers.is_empty() {
        return true;
    }
    let pod = pod_by_ip(state, peer);
    peers.iter().any(|p| match p {
        PolicyPeer::IpBlock { cidr, except } => {
            cidr.contains(&peer) && !except.iter().any(|e| e.contains(&peer))
        }
        PolicyPeer::Pods {
            namespace_selector,
            pod_selector,
        } => pod.is_some_and(|pod| {
            let ns_ok = match namespace_selector {
                None => pod.key.namespace == policy.key.namespace,
                Some(sel) => state
                    .namespaces
                    .get(&pod.key.namespace)
                    .is_some_and(|ns| sel.matches(&ns.labels)),
            };
            ns_ok
                && pod_selector
                    .as_ref()
                    .is_none_or(|sel| sel.matches(&pod.labels))
        }),
    })
}

/// The NetworkPolicies that select `pod` and isolate it in this direction.
pub fn isolating<'a>(
    state: &'a ClusterState,
    pod: &'a Pod,
    ingress: bool,
) -> impl Iterator<Item = &'a NetworkPolicy> {
    state
        .network_policies
        .values()
        .filter(move |p| {
            p.key.namespace == pod.key.namespace && p.pod_selector.matches(&pod.labels)
        })
        .filter(move |p| {
            if ingress {
                p.ingress_isolation
            } else {
                p.egress_isolation
            }
        })
}

/// The first rule (its policy and its index, from 0) of the policies isolating `pod`
/// that admits this connection: the one that let it through.
pub fn admitting<'a>(
    state: &'a ClusterState,
    pod: &'a Pod,
    ingress: bool,
    peer: IpAddr,
    port: u16,
    proto: Protocol,
) -> Option<(&'a NetworkPolicy, usize)> {
    isolating(state, pod, ingress).find_map(|p| {
        let rules = if ingress { &p.ingress } else { &p.egress };
        rules
            .iter()
            .position(|r| {
                peer_matches(state, p, &r.peers, peer) && port_admits(&r.ports, pod, port, proto)
            })
            .map(|i| (p, i))
    })
}

/// [`admitting`] in words: `NetworkPolicy shop/db-ingress: ingress allowed by rule #1
/// (pods with app=api on tcp 5432)`.
pub fn allowing_rule(
    state: &ClusterState,
    pod: &Pod,
    ingress: bool,
    peer: IpAddr,
    port: u16,
    proto: Protocol,
) -> Option<String> {
    admitting(state, pod, ingress, peer, port, proto).map(|(p, i)| {
        let rules = if ingress { &p.ingress } else { &p.egress };
        format!(
            "NetworkPolicy {}: {} allowed by rule #{} ({} on {} {port})",
            p.key,
            if ingress { "ingress" } else { "egress" },
            i + 1,
            describe_rule_peers(&rules[i].peers),
            proto.as_str()
        )
    })
}

/// What the policies say about one connection attempt at one pod in one direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub pod: ObjectKey,
    pub ingress: bool,
    /// The policies that decided or could have: the NetworkPolicies isolating the pod in
    /// this direction, or the ClusterNetworkPolicy whose rule decided
    /// (`ClusterNetworkPolicy/NAME`).
    pub policies: Vec<String>,
    pub allowed: bool,
    /// The policy and rule (numbered from 1, as the sentences number them) that admitted
    /// the connection (`ns/name#1`, `ClusterNetworkPolicy/NAME#1`); `None` when refused,
    /// or allowed because no policy isolates the pod.
    pub allowed_by: Option<String>,
    /// The decision in one sentence.
    pub sentence: String,
}

/// A ClusterNetworkPolicy rule's decision in words.
#[allow(clippy::too_many_arguments)]
fn cnp_sentence(
    fate: &str,
    cnp: &ClusterNetworkPolicy,
    index: usize,
    action: CnpAction,
    pod: &Pod,
    ingress: bool,
    peer_text: &str,
    what: &str,
) -> String {
    let rules = if ingress { &cnp.ingress } else { &cnp.egress };
    let rule = &rules[index];
    let named = if rule.name.is_empty() {
        String::new()
    } else {
        format!(" ({})", rule.name)
    };
    let dir = if ingress { "ingress" } else { "egress" };
    if action == CnpAction::Accept {
        // Worded as the NetworkPolicy sentence: `object: what`.
        return format!(
            "ClusterNetworkPolicy {}: {dir} allowed by rule #{}{named} (tier {}, priority {}; it matches {peer_text} {} {what})",
            cnp.name,
            index + 1,
            cnp.tier.as_str(),
            cnp.priority,
            if ingress { "on" } else { "to" },
        );
    }
    let how = match action {
        CnpAction::Accept => unreachable!("worded above"),
        _ if rule.action != CnpAction::Deny => format!(
            "{fate} (the rule's action is {} but a peer cannot be read here: it fails closed)",
            rule.action.as_str()
        ),
        _ => fate.to_string(),
    };
    format!(
        "{how}: ClusterNetworkPolicy {} (tier {}, priority {}) selects pod {}; its {} rule #{}{named} matches {peer_text} {} {what}",
        cnp.name,
        cnp.tier.as_str(),
        cnp.priority,
        pod.key,
        if ingress { "ingress" } else { "egress" },
        index + 1,
        if ingress { "on" } else { "to" },
    )
}

/// The decision for a connection between `pod` and `peer` (`ingress`: the peer is the
/// source); `fate` words a refusal (`dropped`, `rejected`). ClusterNetworkPolicies are
/// asked in their tiers: the Admin tier before the NetworkPolicies, the Baseline tier
/// where no NetworkPolicy isolates the pod.
pub fn decide(
    state: &ClusterState,
    pod: &Pod,
    ingress: bool,
    peer: IpAddr,
    port: u16,
    proto: Protocol,
    fate: &str,
) -> Decision {
    decide_in(state, None, pod, ingress, peer, port, proto, fate)
}

/// [`decide`] with the policy view of `state` already built (`Cluster::from_state`), for
/// callers that decide many connections against one state (the flow log); `None`
/// builds it here when the state has cluster policies.
#[allow(clippy::too_many_arguments)]
pub fn decide_in(
    state: &ClusterState,
    view: Option<&Cluster>,
    pod: &Pod,
    ingress: bool,
    peer: IpAddr,
    port: u16,
    proto: Protocol,
    fate: &str,
) -> Decision {
    let isolating_keys: Vec<String> = isolating(state, pod, ingress)
        .map(|p| p.key.to_string())
        .collect();
    if !state.cluster_network_policies.is_empty() {
        // The evaluator's own tier walk, over the policy view (built only when there
        // are cluster policies at all).
        let built;
        let cluster = match view {
            Some(c) => c,
            None => {
                built = Cluster::from_state(state, &Default::default(), &[]);
                &built
            }
        };
        if let Some(pp) = cluster.pods.get(&pod.key) {
            let other = cluster.pod_by_ip(peer).map_or(Peer::Ip(peer), Peer::Pod);
            let dst = if ingress {
                Some(pp)
            } else {
                cluster.pod_by_ip(peer)
            };
            let peer_text = describe_peer(state, peer);
            let what = format!("{} {port}", proto.as_str());
            let tiers = [CnpTier::Admin, CnpTier::Baseline];
            for tier in tiers {
                if tier == CnpTier::Baseline && !isolating_keys.is_empty() {
                    break;
                }
                let Some((cnp, i, action)) =
                    tier_decision(cluster, tier, pp, ingress, other, dst, port, proto)
                else {
                    continue;
                };
                if action == CnpAction::Pass {
                    continue;
                }
                let name = format!("ClusterNetworkPolicy/{}", cnp.name);
                return Decision {
                    pod: pod.key.clone(),
                    ingress,
                    allowed: action == CnpAction::Accept,
                    policies: vec![name.clone()],
                    allowed_by: (action == CnpAction::Accept).then(|| format!("{name}#{}", i + 1)),
                    sentence: cnp_sentence(fate, cnp, i, action, pod, ingress, &peer_text, &what),
                };
            }
        }
    }
    let allowed_by = admitting(state, pod, ingress, peer, port, proto)
        .map(|(p, i)| format!("{}#{}", p.key, i + 1));
    let sentence = match &allowed_by {
        Some(_) => allowing_rule(state, pod, ingress, peer, port, proto).unwrap_or_default(),
        None if isolating_keys.is_empty() => format!(
            "allowed: no policy isolates pod {} for {}",
            pod.key,
            if ingress { "ingress" } else { "egress" }
        ),
        None => policy_verdict(fate, state, pod, ingress, peer, port, proto),
    };
    Decision {
        pod: pod.key.clone(),
        ingress,
        allowed: allowed_by.is_some() || isolating_keys.is_empty(),
        policies: isolating_keys,
        allowed_by,
        sentence,
    }
}
/// Why a NetworkPolicy isolates `pod` against this connection.
pub fn policy_verdict(
    fate: &str,
    state: &ClusterState,
    pod: &Pod,
    ingress: bool,
    peer: IpAddr,
    port: u16,
    proto: Protocol,
) -> String {
    let selecting: Vec<&NetworkPolicy> = isolating(state, pod, ingress).collect();
    let dir = if ingress { "ingress" } else { "egress" };
    let names: Vec<String> = selecting
        .iter()
        .map(|p| format!("NetworkPolicy {}", p.key))
        .collect();
    let peer_text = describe_peer(state, peer);
    let what = format!("{} {port}", proto.as_str());
    let mut s = format!(
        "{fate}: pod {} is selected by {} (policyTypes {}); no {dir} rule allows {peer_text} {} {what}",
        pod.key,
        if names.is_empty() {
            "no NetworkPolicy".to_string()
        } else {
            names.join(", ")
        },
        if ingress { "Ingress" } else { "Egress" },
        if ingress { "on" } else { "to" },
    );
    // The closest rule: the first whose ports admit the connection (its peers do not).
    let closest = selecting.iter().find_map(|p| {
        let rules = if ingress { &p.ingress } else { &p.egress };
        rules
            .iter()
            .enumerate()
            .find(|(_, r)| port_admits(&r.ports, pod, port, proto))
            .map(|(i, r)| (p, i, r))
    });
    match closest {
        Some((p, i, r)) => s.push_str(&format!(
            "; the closest rule, #{} of {}, allows {} on {what}",
            i + 1,
            p.key,
            describe_rule_peers(&r.peers)
        )),
        None if selecting.iter().all(|p| {
            if ingress {
                p.ingress.is_empty()
            } else {
                p.egress.is_empty()
            }
        }) =>
        {
            s.push_str(&format!(
                "; the policies have no {dir} rules at all (deny all)"
            ))
        }
        None => s.push_str(&format!("; no {dir} rule opens {what}")),
    }
    s
}
