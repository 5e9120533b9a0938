//! The standalone control plane: what the API server's allocators and the controllers
//! would do, as one pure, deterministic function.
//!
//! [`reconcile`] takes the cluster as the user wrote it (plus whatever a previous run
//! already decided, fed back in) and settings, and returns the cluster as the API
//! server and controllers would leave it:
//!
//! - cluster IPs (`default/kubernetes` at the first address, `kube-system/kube-dns` at
//!   .10, explicit addresses honoured, the loser of a conflict reported), following
//!   upstream's split of the range into a lower band kept for explicit requests and an
//!   upper band for dynamic allocation (`pkg/registry/core/service/ipallocator`);
//! - node ports and health-check node ports in the node-port range, same banding;
//! - LoadBalancer addresses from a configured pool, as a bare-metal LB controller would;
//! - pods for Deployments, ReplicaSets and DaemonSets, with Kubernetes-style names,
//!   scheduled by nodeName, nodeSelector and spread;
//! - EndpointSlices exactly as the EndpointSlice controller builds them
//!   (`pkg/controller/endpointslice`): named target ports resolved per pod, readiness
//!   conditions, publishNotReadyAddresses, hostname/subdomain, one slice per family,
//!   at most 100 endpoints per slice.
//!
//! Determinism: every choice is a function of the input and `Settings::seed`; feeding
//! the output back in is a fixed point, so IPs, ports and names stay stable across
//! reconciles as objects come and go.

mod alloc;
mod names;
mod slices;
mod workloads;

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use twill_model::{ClusterState, ObjectRef};

pub use alloc::{IpAllocator, PortAllocator};
pub use names::{pod_name_suffix, template_hash};

/// Cluster-wide settings of the standalone control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Service CIDRs, one per family, primary first (`--service-cluster-ip-range`).
    pub service_cidrs: Vec<IpNet>,
    /// The cluster's pod CIDR, split into one subnet per node.
    pub pod_cidr: IpNet,
    /// Prefix length of each node's pod subnet (flannel's `SubnetLen`).
    pub node_subnet_len: u8,
    /// `--service-node-port-range`, inclusive.
    pub node_port_range: (u16, u16),
    /// Addresses LoadBalancer services may get (none: they stay pending).
    pub load_balancer_pool: Vec<IpNet>,
    /// Seed for generated names; the same seed gives the same names.
    pub seed: u64,
    /// Give pods without an address one from their node's subnet and mark them
    /// Running and Ready (for rendering without a runtime).
    pub simulate_pods: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            service_cidrs: vec!["10.96.0.0/12".parse().expect("literal")],
            pod_cidr: "10.244.0.0/16".parse().expect("literal"),
            node_subnet_len: 24,
            node_port_range: (30000, 32767),
            load_balancer_pool: Vec::new(),
            seed: 0,
            simulate_pods: false,
        }
    }
}

impl Settings {
    /// How many nodes the pod CIDR can give a subnet to.
    pub fn node_capacity(&self) -> u128 {
        let bits = u32::from(
            self.node_subnet_len
                .saturating_sub(self.pod_cidr.prefix_len()),
        );
        if self.node_subnet_len < self.pod_cidr.prefix_len() {
            0
        } else {
            1u128.checked_shl(bits).unwrap_or(u128::MAX)
        }
    }

    /// Settings that cannot work, one sentence each naming the flag, the way the API
    /// server (`--service-cluster-ip-range`) and flannel (`SubnetLen`) refuse them at start.
    /// `nodes`: how many nodes must get a pod subnet.
    pub fn check(&self, nodes: usize) -> Vec<String> {
        let mut out = Vec::new();
        let pod = self.pod_cidr;
        // flannel: a node's subnet must fit in the network and leave room for the
        // bridge's address and at least one pod (SubnetLen below /31, /127 for IPv6).
        let max = if pod.addr().is_ipv4() { 30 } else { 126 };
        if self.node_subnet_len < pod.prefix_len() {
            out.push(format!(
                "--node-subnet-len {}: a node's subnet must fit inside the pod CIDR {pod} (at least /{})",
                self.node_subnet_len,
                pod.prefix_len()
            ));
        } else if self.node_subnet_len > max {
            out.push(format!(
                "--node-subnet-len {}: at most {max} for {} (a node needs its bridge address and room for pods)",
                self.node_subnet_len,
                if max == 30 { "IPv4" } else { "IPv6" }
            ));
        } else if (nodes as u128) > self.node_capacity() {
            let room = self.node_capacity();
            out.push(format!(
                "the pod CIDR {pod} has room for {room} node{} with /{} each; {nodes} need one (use a wider --pod-cidr or a longer --node-subnet-len)",
                if room == 1 { "" } else { "s" },
                self.node_subnet_len
            ));
        }
        match self.service_cidrs.as_slice() {
            [] => out.push("--service-cidr: at least one is needed".into()),
            [a, b] if a.addr().is_ipv4() == b.addr().is_ipv4() => out.push(format!(
                "--service-cidr {a} and {b} are both {}: give at most one per family (dual-stack is one IPv4 and one IPv6)",
                if a.addr().is_ipv4() { "IPv4" } else { "IPv6" }
            )),
            [_, _, ..] if self.service_cidrs.len() > 2 => out.push(format!(
                "--service-cidr given {} times: at most two (one per family)",
                self.service_cidrs.len()
            )),
            _ => {}
        }
        for s in &self.service_cidrs {
            if s.contains(&pod.network()) || pod.contains(&s.network()) {
                out.push(format!(
                    "the pod CIDR {pod} overlaps the service CIDR {s}: pod and service addresses must not collide"
                ));
            }
        }
        out
    }
}

/// A problem the control plane found with one object (the object is left out of the
/// output, or the part that failed is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub object: ObjectRef,
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}: {}", self.object, self.message)
        } else {
            write!(f, "{}: {}: {}", self.object, self.path, self.message)
        }
    }
}

/// The reconciled cluster and what went wrong on the way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    pub state: ClusterState,
    pub problems: Vec<Problem>,
}

/// Nodes named `node-1` … `node-N`, for a cluster given only a node count. Each gets
/// the next pod subnet and an address in 192.168.0.0/24 (`.11`, `.12`, …).
pub fn generated_nodes(count: usize, settings: &Settings) -> Vec<twill_model::Node> {
    (0..count)
        .map(|i| twill_model::Node {
            name: format!("node-{}", i + 1),
            labels: [(
                "kubernetes.io/hostname".to_string(),
                format!("node-{}", i + 1),
            )]
            .into(),
            internal_ips: vec![IpAddr::V4(Ipv4Addr::new(192, 168, 0, 11 + (i % 240) as u8))],
            pod_cidrs: node_subnet(settings, i).into_iter().collect(),
            unschedulable: false,
        })
        .collect()
}

/// The `index`th subnet of the pod CIDR.
pub fn node_subnet(settings: &Settings, index: usize) -> Option<IpNet> {
    settings
        .pod_cidr
        .subnets(settings.node_subnet_len)
        .ok()?
        .nth(index)
}

/// The ServiceCIDRs' ranges, `kubernetes` first, at most one per family (the first
/// found), as the allocator takes them.
pub fn service_cidrs_of(state: &ClusterState) -> Vec<IpNet> {
    let mut ordered: Vec<&twill_model::ServiceCidr> = state.service_cidrs.values().collect();
    ordered.sort_by_key(|c| c.name != "kubernetes");
    let mut out: Vec<IpNet> = Vec::new();
    for n in ordered.into_iter().flat_map(|c| c.cidrs.iter()) {
        if !out.iter().any(|o| o.addr().is_ipv4() == n.addr().is_ipv4()) {
            out.push(*n);
        }
    }
    out
}

/// Run every controller once over `input`.
pub fn reconcile(input: &ClusterState, settings: &Settings) -> Output {
    let mut state = input.clone();
    let mut problems = Vec::new();
    alloc::assign_node_subnets(&mut state, settings, &mut problems);
    // ServiceCIDR objects, when there are any, are where ClusterIPs come from (the
    // default one, `kubernetes`, first); the flags stand in when there are none.
    let from_objects = service_cidrs_of(input);
    let effective;
    let settings = if from_objects.is_empty() {
        settings
    } else {
        effective = Settings {
            service_cidrs: from_objects,
            ..settings.clone()
        };
        &effective
    };
    alloc::allocate_services(&mut state, settings, &mut problems);
    workloads::reconcile_pods(&mut state, settings, &mut problems);
    slices::reconcile_slices(&mut state, settings);
    state.synced = input.synced;
    Output { state, problems }
}

#[cfg(test)]
mod tests;
