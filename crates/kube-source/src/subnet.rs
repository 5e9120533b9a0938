//! flannel's "kube subnet manager": subnet leases kept on Node objects.
//!
//! When the cluster allocates pod CIDRs (`kube-controller-manager
//! --allocate-node-cidrs`), a node's subnet is its `spec.podCIDR(s)` and there is no
//! lease store: each agent publishes what its peers need to reach it as annotations on
//! its own Node, and learns its peers from theirs (flannel's `pkg/subnet/kube`). The
//! annotation names and values are flannel's, so a mixed fleet (some nodes still on
//! flanneld during a migration) keeps one overlay:
//!
//! | annotation (`flannel.alpha.coreos.com/…`) | value |
//! |---|---|
//! | `backend-type` | `vxlan`, `host-gw` (flannel's udp backend writes `udp`) |
//! | `backend-data` | the lease's BackendData as JSON: `{"VNI":1,"VtepMAC":"…"}`, `null` for host-gw |
//! | `public-ip` | the node's underlay address |
//! | `kube-subnet-manager` | `true` |
//!
//! A peer lease lives as long as its Node: there is no TTL to renew.
//!
//! Pure: Node objects in, leases and patches out; the watch and the PATCH are in
//! `node_leases.rs`. Limits: IPv4 only (`podCIDRs`' IPv6 entry and flannel's
//! `backend-v6-data` / `public-ipv6` are not read or written).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};
use k8s_openapi::api::core::v1::Node;
use twill_overlay::{Lease, LeaseAttrs, SubnetKey};

/// Every annotation name starts with this.
pub const ANNOTATION_PREFIX: &str = "flannel.alpha.coreos.com/";
pub const BACKEND_TYPE: &str = "flannel.alpha.coreos.com/backend-type";
pub const BACKEND_DATA: &str = "flannel.alpha.coreos.com/backend-data";
pub const PUBLIC_IP: &str = "flannel.alpha.coreos.com/public-ip";
pub const KUBE_SUBNET_MANAGER: &str = "flannel.alpha.coreos.com/kube-subnet-manager";

/// What a Node says about its lease: its name, its IPv4 pod CIDR (if allocated) and
/// its `flannel.alpha.coreos.com/*` annotations (the rest are dropped, so a Node update
/// that touches neither compares equal).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NodeLease {
    pub node: String,
    /// The first IPv4 entry of `spec.podCIDRs`, else `spec.podCIDR`. `Err` keeps the
    /// text that did not parse.
    pub pod_cidr: Option<Result<Ipv4Net, String>>,
    pub annotations: BTreeMap<String, String>,
}

impl NodeLease {
    pub fn from_k8s(node: &Node) -> Self {
        let spec = node.spec.as_ref();
        let mut cidrs: Vec<String> = spec.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default();
        if cidrs.is_empty()
            && let Some(c) = spec.and_then(|s| s.pod_cidr.clone())
        {
            cidrs.push(c);
        }
        let pod_cidr = cidrs.iter().find_map(|c| match c.parse::<IpNet>() {
            Ok(IpNet::V4(n)) => Some(Ok(n.trunc())),
            Ok(IpNet::V6(_)) => None,
            Err(_) => Some(Err(c.clone())),
        });
        let annotations = node
            .metadata
            .annotations
            .iter()
            .flatten()
            .filter(|(k, _)| k.starts_with(ANNOTATION_PREFIX))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        NodeLease {
            node: node.metadata.name.clone().unwrap_or_default(),
            pod_cidr,
            annotations,
        }
    }
}

/// Why a Node gives no usable lease.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LeaseError {
    /// The cluster has not allocated this node a pod CIDR (yet).
    #[error(
        "Node {node}: spec.podCIDR is not set (is the controller manager run with --allocate-node-cidrs?)"
    )]
    NoPodCidr { node: String },
    #[error("Node {node}: spec.podCIDR {value:?} is not an IPv4 CIDR")]
    BadPodCidr { node: String, value: String },
    /// The node's agent has not published its lease (yet).
    #[error("Node {node}: metadata.annotations[{annotation}] is missing")]
    MissingAnnotation {
        node: String,
        annotation: &'static str,
    },
    #[error("Node {node}: metadata.annotations[{annotation}] = {value:?}: {reason}")]
    BadAnnotation {
        node: String,
        annotation: &'static str,
        value: String,
        reason: String,
    },
}

impl LeaseError {
    /// Whether this is a node that is simply not ready to be a peer (no pod CIDR yet, its
    /// agent has not started) rather than one publishing something malformed.
    pub fn is_not_yet_published(&self) -> bool {
        matches!(
            self,
            LeaseError::NoPodCidr { .. } | LeaseError::MissingAnnotation { .. }
        )
    }
}

/// This node's subnet: its pod CIDR.
pub fn own_subnet(node: &NodeLease) -> Result<SubnetKey, LeaseError> {
    match &node.pod_cidr {
        None => Err(LeaseError::NoPodCidr {
            node: node.node.clone(),
        }),
        Some(Err(value)) => Err(LeaseError::BadPodCidr {
            node: node.node.clone(),
            value: value.clone(),
        }),
        Some(Ok(net)) => Ok(SubnetKey::v4(*net)),
    }
}

/// The annotations that publish `attrs` (what [`lease_of`] reads back).
pub fn lease_annotations(attrs: &LeaseAttrs) -> BTreeMap<String, String> {
    let data = attrs
        .backend_data
        .as_ref()
        .map(|d| d.to_string())
        .unwrap_or_else(|| "null".into());
    [
        (BACKEND_TYPE, attrs.backend_name().to_string()),
        (BACKEND_DATA, data),
        (PUBLIC_IP, attrs.public_ip.to_string()),
        (KUBE_SUBNET_MANAGER, "true".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The JSON merge patch (`application/merge-patch+json`) that publishes `attrs` on a
/// Node, or `None` when its annotations already say exactly that. A merge patch only
/// touches the keys it names, so other controllers' annotations are left alone.
pub fn plan_annotation_patch(node: &NodeLease, attrs: &LeaseAttrs) -> Option<serde_json::Value> {
    let want = lease_annotations(attrs);
    let current = want.iter().all(|(k, v)| node.annotations.get(k) == Some(v));
    (!current).then(|| serde_json::json!({"metadata": {"annotations": want}}))
}

/// The lease a Node publishes. It never expires: it is gone when the Node is.
pub fn lease_of(node: &NodeLease) -> Result<Lease, LeaseError> {
    let subnet = own_subnet(node)?;
    let get = |annotation: &'static str| {
        node.annotations
            .get(annotation)
            .ok_or_else(|| LeaseError::MissingAnnotation {
                node: node.node.clone(),
                annotation,
            })
    };
    let bad = |annotation: &'static str, value: &str, reason: String| LeaseError::BadAnnotation {
        node: node.node.clone(),
        annotation,
        value: value.to_string(),
        reason,
    };
    if get(KUBE_SUBNET_MANAGER)? != "true" {
        // Written by something other than a kube-subnet-manager agent: not a lease.
        return Err(LeaseError::MissingAnnotation {
            node: node.node.clone(),
            annotation: KUBE_SUBNET_MANAGER,
        });
    }
    let ip_text = get(PUBLIC_IP)?;
    let public_ip: Ipv4Addr = ip_text
        .parse()
        .map_err(|e| bad(PUBLIC_IP, ip_text, format!("not an IPv4 address: {e}")))?;
    let backend_type = get(BACKEND_TYPE)?.clone();
    let data_text = get(BACKEND_DATA)?;
    let backend_data: serde_json::Value = serde_json::from_str(data_text)
        .map_err(|e| bad(BACKEND_DATA, data_text, format!("not JSON: {e}")))?;
    let attrs = LeaseAttrs {
        public_ip,
        public_ipv6: None,
        // flannel's udp leases carry no BackendType (see twill_overlay::lease).
        backend_type: (backend_type != "udp" && !backend_type.is_empty()).then_some(backend_type),
        backend_data: (!backend_data.is_null()).then_some(backend_data),
        backend_v6_data: None,
    };
    if attrs.backend_name() == "vxlan" && attrs.vxlan_data().is_none() {
        return Err(bad(
            BACKEND_DATA,
            data_text,
            "vxlan needs {\"VNI\":N,\"VtepMAC\":\"xx:xx:xx:xx:xx:xx\"}".into(),
        ));
    }
    Ok(Lease {
        subnet,
        attrs,
        expires_at: u64::MAX,
    })
}

/// Every other node's lease, sorted by subnet, and the nodes that publish a malformed
/// one. Nodes that have not published yet are left out silently; they become peers on
/// the update that publishes.
pub fn peer_leases<'a>(
    nodes: impl IntoIterator<Item = &'a NodeLease>,
    own_node: &str,
) -> (Vec<Lease>, Vec<LeaseError>) {
    let mut leases = Vec::new();
    let mut problems = Vec::new();
    for n in nodes {
        if n.node == own_node {
            continue;
        }
        match lease_of(n) {
            Ok(l) => leases.push(l),
            Err(e) if e.is_not_yet_published() => {}
            Err(e) => problems.push(e),
        }
    }
    leases.sort_by_key(|l| l.subnet);
    (leases, problems)
}

#[cfg(test)]
mod tests;
