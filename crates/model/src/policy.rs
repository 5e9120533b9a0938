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

/// `policy.networking.k8s.io/v1alpha2` ClusterNetworkPolicy (sigs.k8s.io/network-policy-api),
/// the cluster admin's policy: the Admin tier is decided before NetworkPolicies, the
/// Baseline tier after them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClusterNetworkPolicy {
    pub name: String,
    pub labels: Labels,
    pub tier: CnpTier,
    /// 0 to 1000; lower is decided first within the tier.
    pub priority: u32,
    pub subject: CnpSubject,
    /// Rules in order: the first that matches decides (within the policy).
    pub ingress: Vec<CnpRule>,
    pub egress: Vec<CnpRule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CnpTier {
    Admin,
    Baseline,
}

impl CnpTier {
    pub fn as_str(self) -> &'static str {
        match self {
            CnpTier::Admin => "Admin",
            CnpTier::Baseline => "Baseline",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CnpAction {
    /// Allowed; no later policy in this direction is asked.
    Accept,
    /// Refused; no later policy is asked.
    Deny,
    /// The rest of this tier is skipped; the next tier decides.
    Pass,
}

impl CnpAction {
    pub fn as_str(self) -> &'static str {
        match self {
            CnpAction::Accept => "Accept",
            CnpAction::Deny => "Deny",
            CnpAction::Pass => "Pass",
        }
    }
}

/// The pods a ClusterNetworkPolicy applies to (never host-network pods).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CnpSubject {
    /// Every pod of the namespaces with these labels.
    Namespaces(LabelSelector),
    /// Pods with these labels in namespaces with those.
    Pods {
        namespace_selector: LabelSelector,
        pod_selector: LabelSelector,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CnpPeer {
    Namespaces(LabelSelector),
    Pods {
        namespace_selector: LabelSelector,
        pod_selector: LabelSelector,
    },
    /// Egress only: the addresses of nodes with these labels.
    Nodes(LabelSelector),
    /// Egress only: CIDRs (pods inside them count too, as the API says).
    Networks(Vec<IpNet>),
    /// Egress only, Accept only: domain names. Not enforced here (it needs DNS
    /// snooping); it fails closed: an Accept rule with it matches nothing.
    DomainNames(Vec<String>),
    /// A peer with no field this version knows (a newer CRD): it fails closed, as the
    /// API asks: matches nothing in an Accept rule, everything in Deny and Pass rules.
    Unknown,
}

/// What a rule matches beyond its peers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CnpProtocol {
    /// `tcp`, `udp` or `sctp`, with a destination port or range (inclusive) or any.
    Port {
        protocol: Protocol,
        ports: Option<(u16, u16)>,
    },
    /// `destinationNamedPort`: the destination pod's container port of that name, any
    /// protocol.
    NamedPort(String),
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CnpRule {
    pub name: String,
    pub action: CnpAction,
    /// At least one (the API requires it).
    pub peers: Vec<CnpPeer>,
    /// Empty: every protocol and port.
    pub protocols: Vec<CnpProtocol>,
}
