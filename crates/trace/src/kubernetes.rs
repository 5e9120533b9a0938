//! A walked branch in Kubernetes terms: the Service a packet was addressed to, the pod its
//! endpoint is, the node the overlay carries it to, and for a packet that does not get
//! through, one sentence saying why (a Service without ready endpoints, a NetworkPolicy
//! that isolates the pod and has no rule for this peer and port).
//!
//! Read from the cluster's objects and the walk's facts (the probe, the translations, the
//! route, where the packet died), not from rule comments, so it reads every proxy mode's
//! rules the same way.

use std::net::IpAddr;

use serde::Serialize;
use twill_model::{ClusterState, ObjectKey, Protocol, Service, TrafficPolicy};
use twill_netpol::explain::{decide, node_owning, pod_by_ip};

use crate::walk::{Branch, Fate, Probe, Step};

/// What a branch means in the cluster's objects.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct InKubernetesTerms {
    /// One line per object the packet met, in order (`Service shop/web port http …`).
    pub objects: Vec<ObjectLine>,
    /// For a branch that does not get through: why, in one sentence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObjectLine {
    /// `Service shop/web`, `Pod shop/web-0`, `Node node-2`, `NetworkPolicy shop/deny`.
    pub object: String,
    pub what: String,
}

fn proto_of(p: &str) -> Option<Protocol> {
    match p {
        "tcp" => Some(Protocol::Tcp),
        "udp" => Some(Protocol::Udp),
        "sctp" => Some(Protocol::Sctp),
        _ => None,
    }
}

/// The Service (and its port's name) a packet to `ip:port` is addressed to.
fn service_for(
    state: &ClusterState,
    ip: IpAddr,
    port: u16,
    proto: Protocol,
) -> Option<(&Service, String, &'static str)> {
    let node_ip = state.nodes.values().any(|n| n.internal_ips.contains(&ip));
    state.services.values().find_map(|s| {
        let how = if s.cluster_ips.contains(&ip) {
            "cluster IP"
        } else if s.external_ips.contains(&ip) {
            "external IP"
        } else if s.load_balancer_ingress.iter().any(|i| i.ip == ip) {
            "load-balancer IP"
        } else if node_ip {
            "node port"
        } else {
            return None;
        };
        s.ports
            .iter()
            .find(|p| {
                p.protocol == proto
                    && if how == "node port" {
                        p.node_port == Some(port)
                    } else {
                        p.port == port
                    }
            })
            .map(|p| (s, p.name.clone(), how))
    })
}

/// Ready and not-ready endpoints of a Service's slices.
fn endpoint_counts(state: &ClusterState, svc: &ObjectKey) -> (usize, usize) {
    let mut ready = 0;
    let mut not_ready = 0;
    for e in state.slices_for(svc).flat_map(|s| s.endpoints.iter()) {
        if e.conditions.is_ready() {
            ready += 1;
        } else {
            not_ready += 1;
        }
    }
    (ready, not_ready)
}

fn describe_service(s: &Service, port: &str, how: &str) -> String {
    let mut out = format!(
        "port {} by its {how}",
        if port.is_empty() { "(unnamed)" } else { port }
    );
    if s.external_traffic_policy == TrafficPolicy::Local && how != "cluster IP" {
        out.push_str(", externalTrafficPolicy Local");
    }
    if s.internal_traffic_policy == TrafficPolicy::Local && how == "cluster IP" {
        out.push_str(", internalTrafficPolicy Local");
    }
    if matches!(
        s.session_affinity,
        twill_model::SessionAffinity::ClientIp { .. }
    ) {
        out.push_str(", sessionAffinity ClientIP");
    }
    if !s.load_balancer_source_ranges.is_empty() && how != "cluster IP" {
        let ranges: Vec<String> = s
            .load_balancer_source_ranges
            .iter()
            .map(ToString::to_string)
            .collect();
        out.push_str(&format!(", loadBalancerSourceRanges {}", ranges.join(" ")));
    }
    out
}

/// The branch in Kubernetes terms; `probe` is the packet as first sent.
pub fn explain(branch: &Branch, probe: &Probe, state: &ClusterState) -> InKubernetesTerms {
    let mut out = InKubernetesTerms::default();
    let proto = proto_of(&probe.proto);
    let mut line = |object: String, what: String| {
        if !out
            .objects
            .iter()
            .any(|l| l.object == object && l.what == what)
        {
            out.objects.push(ObjectLine { object, what });
        }
    };
    if let Some(p) = pod_by_ip(state, probe.src) {
        line(format!("Pod {}", p.key), "sends the packet".into());
    }
    let service = proto.and_then(|pr| service_for(state, probe.dst, probe.dport, pr));
    if let Some((s, port, how)) = &service {
        line(format!("Service {}", s.key), describe_service(s, port, how));
    }
    if let Some(ep) = branch
        .translations()
        .filter(|t| t.kind == "DNAT" || t.kind == "REDIRECT")
        .last()
    {
        let ip = ep
            .to
            .rsplit_once(':')
            .map_or(ep.to.as_str(), |(h, _)| h)
            .trim_matches(|c| c == '[' || c == ']');
        if let Ok(ip) = ip.parse::<IpAddr>() {
            match pod_by_ip(state, ip) {
                Some(p) => line(
                    format!("Pod {}", p.key),
                    format!(
                        "the endpoint {}{}",
                        ep.to,
                        p.spec
                            .node_name
                            .as_deref()
                            .map(|n| format!(" on node {n}"))
                            .unwrap_or_default()
                    ),
                ),
                None => line(
                    "Endpoint".into(),
                    format!("{} (no pod has this address)", ep.to),
                ),
            }
        }
    }
    // A policy that let the packet through: the pod's dispatcher chain was walked and
    // the branch went on.
    let through = matches!(
        branch.fate,
        Some(Fate::Delivered { .. }) | Some(Fate::Sent { .. })
    );
    if through && let Some(pr) = proto {
        for chain in branch.steps.iter().filter_map(|s| match s {
            Step::Rule { at, .. } if at.chain.starts_with("TWILL-NPP") => Some(at.chain.as_str()),
            _ => None,
        }) {
            let ingress = chain.starts_with("TWILL-NPPI");
            let (pod_ip, peer) = if ingress {
                (branch.packet.dst, probe.src)
            } else {
                (probe.src, branch.packet.dst)
            };
            if let Some(pod) = pod_by_ip(state, pod_ip) {
                let d = decide(
                    state,
                    pod,
                    ingress,
                    peer,
                    branch.packet.dport,
                    pr,
                    "refused",
                );
                if d.allowed_by.is_some() {
                    let text = d.sentence;
                    let (object, what) = text.split_once(": ").unwrap_or((&text, ""));
                    line(object.to_string(), format!("{what} for pod {}", pod.key));
                }
            }
        }
    }
    if branch.masqueraded() {
        line(
            "Node".into(),
            "source NAT: the endpoint sees the node's address".into(),
        );
    }
    if let Some(r) = branch.route()
        && r.dev.as_deref().is_some_and(|d| d.starts_with("flannel"))
        && let Some(n) = node_owning(state, branch.packet.dst)
    {
        line(
            format!("Node {n}"),
            format!(
                "the overlay ({}) carries the packet there: its pod CIDR holds {}",
                r.dev.as_deref().unwrap_or_default(),
                branch.packet.dst
            ),
        );
    }
    // Why it stops.
    let (died_at, fate) = match &branch.fate {
        Some(Fate::Dropped { at, .. }) => (Some(at.as_ref()), "dropped"),
        Some(Fate::Rejected { at, .. }) => (Some(Some(at)), "rejected"),
        _ => (None, ""),
    };
    out.verdict = match died_at {
        Some(at)
            if policy_chain(branch).is_some()
                || at.is_some_and(|l| l.chain.starts_with("TWILL-NP")) =>
        {
            let ingress = policy_chain(branch).is_none_or(|c| c.starts_with("TWILL-NPPI"));
            let (pod_ip, peer) = if ingress {
                (branch.packet.dst, probe.src)
            } else {
                (probe.src, branch.packet.dst)
            };
            match (pod_by_ip(state, pod_ip), proto) {
                (Some(pod), Some(pr)) => {
                    Some(decide(state, pod, ingress, peer, branch.packet.dport, pr, fate).sentence)
                }
                _ => Some(format!("{fate} by NetworkPolicy")),
            }
        }
        Some(_) => service.as_ref().and_then(|(s, _, _)| {
            let (ready, not_ready) = endpoint_counts(state, &s.key);
            (ready == 0).then(|| {
                format!(
                    "{fate}: Service {} has no ready endpoints ({not_ready} not ready)",
                    s.key
                )
            })
        }),
        None => None,
    };
    out
}

/// The policy dispatcher chain the branch went through last (ingress `TWILL-NPPI-*`,
/// egress `TWILL-NPPE-*`).
fn policy_chain(branch: &Branch) -> Option<&str> {
    branch.steps.iter().rev().find_map(|s| match s {
        Step::Rule { at, .. } if at.chain.starts_with("TWILL-NPP") => Some(at.chain.as_str()),
        _ => None,
    })
}

/// Fill every branch of a trace.
pub fn annotate(trace: &mut crate::walk::Trace, state: &ClusterState) {
    let probe = trace.probe.clone();
    for b in &mut trace.branches {
        b.kubernetes = Some(explain(b, &probe, state));
    }
}

/// Fill every hop of every path (the probe is the packet as first sent).
pub fn annotate_paths(paths: &mut [crate::path::Path], probe: &Probe, state: &ClusterState) {
    for p in paths {
        for h in &mut p.hops {
            h.branch.kubernetes = Some(explain(&h.branch, probe, state));
        }
    }
}
