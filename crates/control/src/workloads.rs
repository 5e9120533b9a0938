//! Pods from Deployments, ReplicaSets and DaemonSets; scheduling; simulated addresses.
//!
//! Names follow upstream: a Deployment's pods are `<deploy>-<pod-template-hash>-<5>`
//! (owned by the ReplicaSet `<deploy>-<hash>`), a ReplicaSet's and a DaemonSet's
//! `<name>-<5>`. The suffixes come from the seed, so names are stable across runs; a
//! changed template gives a new hash, so its pods are replaced as a rollout would.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use twill_model::{
    ClusterState, Kind, ObjectKey, ObjectRef, OwnerRef, Pod, PodPhase, Workload, WorkloadKind,
};

use crate::names::{pod_name_suffix, template_hash};
use crate::{Problem, Settings};

/// The pods a workload wants.
fn desired_pods(w: &Workload, nodes: &[&twill_model::Node], seed: u64) -> Vec<Pod> {
    let ns = w.key.namespace.as_str();
    let mut labels = w.template.labels.clone();
    let (owner, base, mut fixed_nodes): (OwnerRef, String, Vec<Option<String>>) = match w.kind {
        WorkloadKind::Deployment => {
            let hash = template_hash(seed, &format!("{}/{}/{:?}", ns, w.key.name, w.template));
            labels.insert("pod-template-hash".into(), hash.clone());
            let rs = format!("{}-{hash}", w.key.name);
            (
                OwnerRef {
                    kind: "ReplicaSet".into(),
                    name: rs.clone(),
                },
                rs,
                vec![None; w.replicas as usize],
            )
        }
        WorkloadKind::ReplicaSet => (
            OwnerRef {
                kind: "ReplicaSet".into(),
                name: w.key.name.clone(),
            },
            w.key.name.clone(),
            vec![None; w.replicas as usize],
        ),
        WorkloadKind::DaemonSet => (
            OwnerRef {
                kind: "DaemonSet".into(),
                name: w.key.name.clone(),
            },
            w.key.name.clone(),
            nodes
                .iter()
                .filter(|n| {
                    w.template
                        .spec
                        .node_selector
                        .iter()
                        .all(|(k, v)| n.labels.get(k) == Some(v))
                })
                .map(|n| Some(n.name.clone()))
                .collect(),
        ),
    };
    fixed_nodes
        .iter_mut()
        .enumerate()
        .map(|(i, node)| {
            // DaemonSet pods are named after their node, others after their ordinal.
            let discriminator = node.clone().unwrap_or_else(|| i.to_string());
            let name = format!(
                "{base}-{}",
                pod_name_suffix(seed, &[ns, &base, &discriminator])
            );
            let mut spec = w.template.spec.clone();
            if node.is_some() {
                spec.node_name = node.take();
            }
            Pod {
                key: ObjectKey::new(ns, name),
                labels: labels.clone(),
                annotations: w.template.annotations.clone(),
                owner: Some(owner.clone()),
                spec,
                ..Default::default()
            }
        })
        .collect()
}

pub(crate) fn reconcile_pods(
    state: &mut ClusterState,
    settings: &Settings,
    problems: &mut Vec<Problem>,
) {
    let nodes: Vec<twill_model::Node> = state.nodes.values().cloned().collect();
    let schedulable: Vec<&twill_model::Node> = nodes.iter().filter(|n| !n.unschedulable).collect();

    let mut desired: BTreeMap<ObjectKey, Pod> = BTreeMap::new();
    for w in state.workloads.values() {
        for p in desired_pods(w, &schedulable, settings.seed) {
            desired.insert(p.key.clone(), p);
        }
    }
    // Pods controlled by a ReplicaSet or DaemonSet exist only while some workload wants
    // them: scaled-down ordinals, old template hashes and deleted workloads go, as the
    // controllers and the garbage collector would remove them.
    state.pods.retain(|key, pod| {
        let controlled = pod
            .owner
            .as_ref()
            .is_some_and(|o| matches!(o.kind.as_str(), "ReplicaSet" | "DaemonSet"));
        !controlled || desired.contains_key(key)
    });
    for (key, pod) in desired {
        state.pods.entry(key).or_insert(pod);
    }

    schedule(state, &schedulable, problems);
    if settings.simulate_pods {
        simulate_addresses(state);
    }
}

/// A host port a pod takes on its node: protocol, port, host IP (`None`: every address).
type HostPort = (twill_model::Protocol, u16, Option<IpAddr>);

/// The host ports a pod needs (kube-scheduler's `NodePorts` filter reads the same): each
/// container port with a `hostPort`; for a host-network pod, every container port.
fn host_ports(p: &twill_model::Pod) -> Vec<HostPort> {
    p.spec
        .containers
        .iter()
        .flat_map(|c| &c.ports)
        .filter_map(|cp| {
            let port = if p.spec.host_network {
                Some(cp.host_port.unwrap_or(cp.container_port))
            } else {
                cp.host_port
            };
            port.map(|h| (cp.protocol, h, cp.host_ip.filter(|ip| !ip.is_unspecified())))
        })
        .collect()
}

/// Two host ports collide: same protocol and port, and addresses that overlap (either
/// one unset means every address).
fn collide(a: &HostPort, b: &HostPort) -> bool {
    a.0 == b.0 && a.1 == b.1 && (a.2.is_none() || b.2.is_none() || a.2 == b.2)
}

/// Place pods that have no node: nodeSelector and free host ports filter, then the node
/// with the fewest pods of the same owner, then the fewest pods overall, then name order.
fn schedule(state: &mut ClusterState, nodes: &[&twill_model::Node], problems: &mut Vec<Problem>) {
    let mut per_node: BTreeMap<String, usize> = nodes.iter().map(|n| (n.name.clone(), 0)).collect();
    let mut per_owner: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut ports_used: BTreeMap<String, Vec<HostPort>> = BTreeMap::new();
    for p in state.pods.values() {
        if let Some(n) = &p.spec.node_name {
            if p.is_active() {
                ports_used
                    .entry(n.clone())
                    .or_default()
                    .extend(host_ports(p));
            }
            *per_node.entry(n.clone()).or_default() += 1;
            if let Some(o) = &p.owner {
                *per_owner.entry((o.name.clone(), n.clone())).or_default() += 1;
            }
        }
    }
    let known: BTreeSet<&str> = state.nodes.keys().map(String::as_str).collect();
    for pod in state.pods.values_mut() {
        if let Some(n) = &pod.spec.node_name {
            if !known.contains(n.as_str()) && !known.is_empty() {
                problems.push(Problem {
                    object: ObjectRef {
                        kind: Kind::Pod,
                        key: pod.key.clone(),
                    },
                    path: "spec.nodeName".into(),
                    message: format!("node {n:?} does not exist; the pod stays Pending"),
                });
            }
            continue;
        }
        let owner = pod
            .owner
            .as_ref()
            .map(|o| o.name.clone())
            .unwrap_or_default();
        let wanted = host_ports(pod);
        let selected: Vec<&&twill_model::Node> = nodes
            .iter()
            .filter(|n| {
                pod.spec
                    .node_selector
                    .iter()
                    .all(|(k, v)| n.labels.get(k) == Some(v))
            })
            .collect();
        let free = |n: &twill_model::Node| {
            let used = ports_used.get(&n.name).map_or(&[][..], Vec::as_slice);
            !wanted.iter().any(|w| used.iter().any(|u| collide(w, u)))
        };
        let best = selected
            .iter()
            .copied()
            .filter(|n| free(n))
            .min_by_key(|n| {
                (
                    per_owner
                        .get(&(owner.clone(), n.name.clone()))
                        .copied()
                        .unwrap_or(0),
                    per_node.get(&n.name).copied().unwrap_or(0),
                    n.name.clone(),
                )
            });
        match best {
            Some(n) => {
                pod.spec.node_name = Some(n.name.clone());
                *per_node.entry(n.name.clone()).or_default() += 1;
                *per_owner.entry((owner, n.name.clone())).or_default() += 1;
                ports_used.entry(n.name.clone()).or_default().extend(wanted);
            }
            // kube-scheduler's words for the NodePorts filter.
            None if !selected.is_empty() => problems.push(Problem {
                object: ObjectRef {
                    kind: Kind::Pod,
                    key: pod.key.clone(),
                },
                path: "spec.containers[].ports[].hostPort".into(),
                message: format!(
                    "0/{} nodes are available: {} node(s) didn't have free ports for the requested pod ports; the pod stays Pending",
                    nodes.len(),
                    selected.len()
                ),
            }),
            None if !nodes.is_empty() => problems.push(Problem {
                object: ObjectRef {
                    kind: Kind::Pod,
                    key: pod.key.clone(),
                },
                path: "spec.nodeSelector".into(),
                message: "no schedulable node matches; the pod stays Pending".into(),
            }),
            None => {}
        }
    }
}

/// Addresses as host-local would give them (the node subnet's `.2` upward; `.1` is the
/// bridge gateway), host-network pods the node's address; every placed pod Running
/// and Ready.
fn simulate_addresses(state: &mut ClusterState) {
    let mut used: BTreeSet<IpAddr> = state
        .pods
        .values()
        .flat_map(|p| p.pod_ips.iter().copied())
        .collect();
    for pod in state.pods.values_mut() {
        let Some(node) = pod.spec.node_name.as_ref().and_then(|n| state.nodes.get(n)) else {
            continue;
        };
        pod.host_ip = node.internal_ips.first().copied();
        if pod.pod_ips.is_empty() {
            if pod.spec.host_network {
                pod.pod_ips = node.internal_ips.clone();
            } else {
                for cidr in &node.pod_cidrs {
                    if let Some(ip) = cidr.hosts().skip(1).find(|ip| !used.contains(ip)) {
                        used.insert(ip);
                        pod.pod_ips.push(ip);
                    }
                }
            }
        }
        if !pod.pod_ips.is_empty() && pod.phase == PodPhase::Pending {
            pod.phase = PodPhase::Running;
            pod.ready = true;
        }
    }
}
