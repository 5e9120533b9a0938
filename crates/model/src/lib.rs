//! Twill's compact cluster model.
//!
//! The data plane needs a small slice of what the Kubernetes API stores. These types hold
//! exactly that slice, already validated and defaulted, so cores never re-check input.
//! Objects reach the model as a stream of [`ObjectEvent`]s (applied, deleted, then
//! `Synced`), in the spirit of kube-runtime's watcher: manifests today, an API watch later.
//!
//! Conversion from k8s-openapi types lives in [`k8s`] behind the `k8s` feature.

mod duration;
mod ip;
mod meta;
mod node;
mod pod;
mod policy;
mod service;
mod slice;
mod state;

#[cfg(feature = "k8s")]
pub mod k8s;

pub use duration::parse_go_duration;
pub use ip::{parse_ip_lenient, parse_net_lenient};
pub use meta::{
    IpFamily, Kind, LabelSelector, Labels, ObjectKey, ObjectRef, Protocol, SelectorOperator,
    SelectorRequirement, TargetPort,
};
pub use node::Node;
pub use pod::{
    Container, ContainerPort, DnsPolicy, Namespace, OwnerRef, Pod, PodDnsConfig, PodPhase, PodSpec,
    PodTemplate, Probe, ProbeAction, RestartPolicy, Workload, WorkloadKind,
};
pub use policy::{
    ClusterNetworkPolicy, CnpAction, CnpPeer, CnpProtocol, CnpRule, CnpSubject, CnpTier,
    NetworkPolicy, PolicyPeer, PolicyPort, PolicyRule,
};
pub use service::{
    DEFAULT_AFFINITY_TIMEOUT_SECONDS, IpFamilyPolicy, LoadBalancerIngress, Service, ServiceCidr,
    ServicePort, ServiceType, SessionAffinity, TrafficPolicy,
};
pub use slice::{
    AddressType, Endpoint, EndpointConditions, EndpointPort, EndpointSlice, SERVICE_NAME_LABEL,
};
pub use state::{ClusterState, Object, ObjectEvent};
