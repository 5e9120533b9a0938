//! networking.k8s.io/v1 NetworkPolicy, with upstream's defaulting already applied.

use ipnet::IpNet;

use crate::meta::{LabelSelector, Labels, ObjectKey, Protocol, TargetPort};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyPort {
    pub protocol: Protocol,
    /// `None`: every port of the protocol.
    pub port: Option<TargetPort>,
    /// Only with a numeric `port`.
    pub end_port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyPeer {
    /// `podSelector` and/or `namespaceSelector`. With only `pod_selector` the peer pods
    /// are in the policy's own namespace; with a `namespace_selector` they are in every
    /// matching namespace.
    Pods {
        namespace_selector: Option<LabelSelector>,
        pod_selector: Option<LabelSelector>,
    },
    IpBlock {
        cidr: IpNet,
        except: Vec<IpNet>,
    },
}

/// One ingress or egress rule. Empty `ports` means all ports; empty `peers` means all
/// peers (both as the API defines for an omitted or empty list).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PolicyRule {
    pub ports: Vec<PolicyPort>,
    pub peers: Vec<PolicyPeer>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NetworkPolicy {
    pub key: ObjectKey,
    pub labels: Labels,
    pub pod_selector: LabelSelector,
    /// `policyTypes` after upstream's inference: Ingress always, unless only Egress was
    /// listed; Egress when listed or when any egress rule exists.
    pub ingress_isolation: bool,
    pub egress_isolation: bool,
    pub ingress: Vec<PolicyRule>,
    pub egress: Vec<PolicyRule>,
}
