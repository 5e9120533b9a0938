//! Services as the data plane sees them.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::meta::{IpFamily, Labels, ObjectKey, Protocol, TargetPort};

/// The API default for `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT_SECONDS: u32 = 10800;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
    ExternalName,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
            ServiceType::ExternalName => "ExternalName",
        }
    }
    /// NodePort and LoadBalancer services get node ports (unless an LB opts out).
    pub fn has_node_ports(self) -> bool {
        matches!(self, ServiceType::NodePort | ServiceType::LoadBalancer)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum TrafficPolicy {
    #[default]
    Cluster,
    Local,
}

impl TrafficPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            TrafficPolicy::Cluster => "Cluster",
            TrafficPolicy::Local => "Local",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum SessionAffinity {
    #[default]
    None,
    ClientIp {
        timeout_seconds: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum IpFamilyPolicy {
    #[default]
    SingleStack,
    PreferDualStack,
    RequireDualStack,
}

impl IpFamilyPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            IpFamilyPolicy::SingleStack => "SingleStack",
            IpFamilyPolicy::PreferDualStack => "PreferDualStack",
            IpFamilyPolicy::RequireDualStack => "RequireDualStack",
        }
    }
}

/// One `status.loadBalancer.ingress[]` entry with an IP.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LoadBalancerIngress {
    pub ip: IpAddr,
    /// `ipMode: Proxy` means traffic arrives already un-DNATed by the LB, so
    /// kube-proxy must not short-circuit it; `None` is the default `VIP`.
    pub ip_mode_proxy: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePort {
    /// `""` for the single unnamed port.
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub target_port: TargetPort,
    pub node_port: Option<u16>,
    pub app_protocol: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Service {
    pub key: ObjectKey,
    pub labels: Labels,
    pub annotations: Labels,
    pub service_type: ServiceType,
    /// `spec.selector`; `None` for a selector-less service (user-managed endpoints).
    pub selector: Option<Labels>,
    /// `clusterIP: None`.
    pub headless: bool,
    /// Allocated or requested cluster IPs, primary first. Empty until allocated.
    pub cluster_ips: Vec<IpAddr>,
    /// Empty until defaulted from the cluster (the control loop fills it).
    pub ip_families: Vec<IpFamily>,
    pub ip_family_policy: IpFamilyPolicy,
    pub ports: Vec<ServicePort>,
    pub external_ips: Vec<IpAddr>,
    /// Requested `spec.loadBalancerIP` (deprecated but still used by bare-metal LBs).
    pub load_balancer_ip: Option<IpAddr>,
    pub load_balancer_ingress: Vec<LoadBalancerIngress>,
    pub load_balancer_source_ranges: Vec<IpNet>,
    pub allocate_load_balancer_node_ports: bool,
    pub external_traffic_policy: TrafficPolicy,
    pub internal_traffic_policy: TrafficPolicy,
    pub health_check_node_port: Option<u16>,
    pub session_affinity: SessionAffinity,
    pub publish_not_ready_addresses: bool,
    pub external_name: Option<String>,
    /// `spec.trafficDistribution` (`PreferClose`), kept verbatim.
    pub traffic_distribution: Option<String>,
}

impl Service {
    /// Whether kube-proxy programs this service at all (ExternalName and headless are
    /// DNS-only).
    pub fn is_proxied(&self) -> bool {
        !self.headless && self.service_type != ServiceType::ExternalName
    }

    pub fn cluster_ip_of(&self, family: IpFamily) -> Option<IpAddr> {
        self.cluster_ips
            .iter()
            .copied()
            .find(|ip| IpFamily::of(ip) == family)
    }

    /// eTP Local only means something for services reachable from outside.
    pub fn external_policy_local(&self) -> bool {
        self.external_traffic_policy == TrafficPolicy::Local && self.service_type.has_node_ports()
    }
}

/// A ServiceCIDR (`networking.k8s.io/v1`, GA in 1.33): ranges the API server allocates
/// ClusterIPs from, one per family at most. The one the API server makes from
/// `--service-cluster-ip-range` is named `kubernetes`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceCidr {
    pub name: String,
    pub cidrs: Vec<ipnet::IpNet>,
}
