//! The slice of the cluster that NetworkPolicy depends on.

use std::collections::BTreeMap;
use std::net::IpAddr;

use twill_model::ClusterState;

use twill_model::{
    ClusterNetworkPolicy, CnpSubject, CnpTier, LabelSelector, Labels, NetworkPolicy, ObjectKey,
    Pod, Protocol,
};

/// A container port as policy sees it: named ports are resolved against these.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamedPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyPod {
    pub key: ObjectKey,
    pub labels: Labels,
    pub ip: IpAddr,
    pub node: String,
    pub ports: Vec<NamedPort>,
}

impl PolicyPod {
    /// The pod's container port with this name and protocol (`podutil.FindPort`).
    pub fn find_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name) && p.protocol == protocol)
            .map(|p| p.port)
    }

    /// From a model pod: its first IP and its node. `None` for pods that cannot carry
    /// traffic yet (no IP, no node) or have finished.
    pub fn from_model(pod: &Pod) -> Option<Self> {
        if !pod.is_active() || pod.spec.host_network {
            return None;
        }
        let ip = *pod.pod_ips.first()?;
        let node = pod.spec.node_name.clone()?;
        let ports = pod
            .spec
            .containers
            .iter()
            .flat_map(|c| &c.ports)
            .map(|p| NamedPort {
                name: p.name.clone(),
                port: p.container_port,
                protocol: p.protocol,
            })
            .collect();
        Some(Self {
            key: pod.key.clone(),
            labels: pod.labels.clone(),
            ip,
            node,
            ports,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NodeInfo {
    pub name: String,
    /// Every address the node owns (its InternalIP and e.g. its bridge gateway).
    pub addresses: Vec<IpAddr>,
    /// For ClusterNetworkPolicy's `nodes` peers.
    pub labels: Labels,
}

/// A policy that failed validation. It cannot be enforced as written, so it is enforced
/// as "select, allow nothing" (fail closed): the pods it would select are isolated in the
/// directions it names. When even its `podSelector` is unusable, `pod_selector` is `None`
/// and every pod of its namespace is isolated.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BrokenPolicy {
    pub key: ObjectKey,
    pub pod_selector: Option<LabelSelector>,
    pub ingress: bool,
    pub egress: bool,
    /// Why it was rejected (for logs and metrics).
    pub reason: String,
}

impl BrokenPolicy {
    pub fn selects(&self, pod: &PolicyPod) -> bool {
        pod.key.namespace == self.key.namespace
            && self
                .pod_selector
                .as_ref()
                .is_none_or(|s| s.matches(&pod.labels))
    }
}

/// Everything the evaluator and the renderer read. Maps are keyed so output is sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cluster {
    pub nodes: BTreeMap<String, NodeInfo>,
    /// Namespace name → labels.
    pub namespaces: BTreeMap<String, Labels>,
    pub pods: BTreeMap<ObjectKey, PolicyPod>,
    pub policies: BTreeMap<ObjectKey, NetworkPolicy>,
    pub broken: BTreeMap<ObjectKey, BrokenPolicy>,
    /// ClusterNetworkPolicies by name.
    pub cluster_policies: BTreeMap<String, ClusterNetworkPolicy>,
}

impl Cluster {
    /// The policy view of a cluster state. `rejected`: NetworkPolicies the source
    /// reported invalid, with why (they fail closed for their namespace);
    /// `extra_node_addresses`: further addresses of nodes (a bridge gateway).
    pub fn from_state(
        state: &ClusterState,
        rejected: &BTreeMap<ObjectKey, String>,
        extra_node_addresses: &[(String, IpAddr)],
    ) -> Cluster {
        let mut c = Cluster::default();
        for n in state.namespaces.values() {
            c.namespaces.insert(n.name.clone(), n.labels.clone());
        }
        for n in state.nodes.values() {
            c.nodes.insert(
                n.name.clone(),
                NodeInfo {
                    name: n.name.clone(),
                    addresses: n.internal_ips.clone(),
                    labels: n.labels.clone(),
                },
            );
        }
        for p in state.pods.values() {
            if let Some(pp) = PolicyPod::from_model(p) {
                c.pods.insert(pp.key.clone(), pp);
            }
        }
        for p in state.network_policies.values() {
            c.upsert_policy(p.clone());
        }
        c.cluster_policies = state.cluster_network_policies.clone();
        c.add_node_addresses(extra_node_addresses);
        for (key, reason) in rejected {
            c.upsert_broken(BrokenPolicy {
                key: key.clone(),
                pod_selector: None,
                ingress: true,
                egress: true,
                reason: reason.clone(),
            });
        }
        c
    }

    /// Further addresses of nodes (a bridge gateway), for the rule that lets a node
    /// always reach its own pods.
    pub fn add_node_addresses(&mut self, extra: &[(String, IpAddr)]) {
        for (node, addr) in extra {
            let n = self.nodes.entry(node.clone()).or_insert_with(|| NodeInfo {
                name: node.clone(),
                ..Default::default()
            });
            if !n.addresses.contains(addr) {
                n.addresses.push(*addr);
            }
        }
    }

    pub fn pod_by_ip(&self, ip: IpAddr) -> Option<&PolicyPod> {
        self.pods.values().find(|p| p.ip == ip)
    }

    pub fn namespace_labels(&self, ns: &str) -> Option<&Labels> {
        self.namespaces.get(ns)
    }

    /// Policies of the pod's namespace whose `podSelector` selects it.
    pub fn selecting<'a>(
        &'a self,
        pod: &'a PolicyPod,
    ) -> impl Iterator<Item = &'a NetworkPolicy> + 'a {
        self.policies.values().filter(move |p| {
            p.key.namespace == pod.key.namespace && p.pod_selector.matches(&pod.labels)
        })
    }

    /// Broken policies that would select the pod.
    pub fn broken_selecting<'a>(
        &'a self,
        pod: &'a PolicyPod,
    ) -> impl Iterator<Item = &'a BrokenPolicy> + 'a {
        self.broken.values().filter(move |b| b.selects(pod))
    }

    /// Whether a ClusterNetworkPolicy's subject holds the pod.
    pub fn cnp_selects(&self, cnp: &ClusterNetworkPolicy, pod: &PolicyPod) -> bool {
        let ns = self.namespace_labels(&pod.key.namespace);
        match &cnp.subject {
            CnpSubject::Namespaces(sel) => ns.is_some_and(|l| sel.matches(l)),
            CnpSubject::Pods {
                namespace_selector,
                pod_selector,
            } => {
                ns.is_some_and(|l| namespace_selector.matches(l))
                    && pod_selector.matches(&pod.labels)
            }
        }
    }

    /// The ClusterNetworkPolicies of `tier` that select the pod and have rules in this
    /// direction, in the order they are decided: priority, then name (the API leaves
    /// equal priorities to the implementation; the name makes it deterministic).
    pub fn tier_for<'a>(
        &'a self,
        tier: CnpTier,
        pod: &PolicyPod,
        ingress: bool,
    ) -> Vec<&'a ClusterNetworkPolicy> {
        let mut out: Vec<&ClusterNetworkPolicy> = self
            .cluster_policies
            .values()
            .filter(|c| c.tier == tier)
            .filter(|c| !if ingress { &c.ingress } else { &c.egress }.is_empty())
            .filter(|c| self.cnp_selects(c, pod))
            .collect();
        out.sort_by(|a, b| (a.priority, &a.name).cmp(&(b.priority, &b.name)));
        out
    }

    /// Whether any policy (NetworkPolicy or ClusterNetworkPolicy) has a say over the
    /// pod in this direction: such pods get a chain of their own.
    pub fn governed(&self, pod: &PolicyPod, ingress: bool) -> bool {
        let isolated = if ingress {
            self.isolated_for_ingress(pod)
        } else {
            self.isolated_for_egress(pod)
        };
        isolated
            || !self.tier_for(CnpTier::Admin, pod, ingress).is_empty()
            || !self.tier_for(CnpTier::Baseline, pod, ingress).is_empty()
    }

    pub fn isolated_for_ingress(&self, pod: &PolicyPod) -> bool {
        self.selecting(pod).any(|p| p.ingress_isolation)
            || self.broken_selecting(pod).any(|b| b.ingress)
    }

    pub fn isolated_for_egress(&self, pod: &PolicyPod) -> bool {
        self.selecting(pod).any(|p| p.egress_isolation)
            || self.broken_selecting(pod).any(|b| b.egress)
    }

    /// Remove a namespace with everything namespaced in it.
    pub fn delete_namespace(&mut self, name: &str) {
        self.namespaces.remove(name);
        self.pods.retain(|k, _| k.namespace != name);
        self.policies.retain(|k, _| k.namespace != name);
        self.broken.retain(|k, _| k.namespace != name);
    }

    /// Insert a policy, replacing any valid or broken one with the same key.
    pub fn upsert_policy(&mut self, policy: NetworkPolicy) {
        self.broken.remove(&policy.key);
        self.policies.insert(policy.key.clone(), policy);
    }

    pub fn upsert_broken(&mut self, broken: BrokenPolicy) {
        self.policies.remove(&broken.key);
        self.broken.insert(broken.key.clone(), broken);
    }

    pub fn delete_policy(&mut self, key: &ObjectKey) {
        self.policies.remove(key);
        self.broken.remove(key);
    }
}
