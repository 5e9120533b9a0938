//! EndpointSlices (discovery.k8s.io/v1), the only source of endpoints for every mode.

use std::net::IpAddr;

use crate::meta::{Labels, ObjectKey, ObjectRef, Protocol};

/// The label that ties a slice to its service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum AddressType {
    #[default]
    IPv4,
    IPv6,
    Fqdn,
}

impl AddressType {
    pub fn as_str(self) -> &'static str {
        match self {
            AddressType::IPv4 => "IPv4",
            AddressType::IPv6 => "IPv6",
            AddressType::Fqdn => "FQDN",
        }
    }
}

/// Conditions as written. Readers apply the API's zero values: `ready` and `serving`
/// missing mean true, `terminating` missing means false.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EndpointConditions {
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
}

impl EndpointConditions {
    pub fn is_ready(&self) -> bool {
        self.ready.unwrap_or(true)
    }
    pub fn is_serving(&self) -> bool {
        self.serving.unwrap_or(true)
    }
    pub fn is_terminating(&self) -> bool {
        self.terminating.unwrap_or(false)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Endpoint {
    /// IP addresses (FQDN slices keep none; their text is in `fqdn_addresses`).
    pub addresses: Vec<IpAddr>,
    pub fqdn_addresses: Vec<String>,
    pub conditions: EndpointConditions,
    pub hostname: Option<String>,
    pub node_name: Option<String>,
    pub zone: Option<String>,
    pub target_ref: Option<ObjectRef>,
    /// `hints.forZones[].name`.
    pub hints_for_zones: Vec<String>,
    /// `hints.forNodes[].name`.
    pub hints_for_nodes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndpointPort {
    /// `""` for an unnamed port (matches the service's unnamed port).
    pub name: String,
    pub protocol: Protocol,
    pub port: Option<u16>,
    pub app_protocol: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EndpointSlice {
    pub key: ObjectKey,
    pub labels: Labels,
    /// From the `kubernetes.io/service-name` label; `None` if unlabelled.
    pub service_name: Option<String>,
    pub address_type: AddressType,
    pub endpoints: Vec<Endpoint>,
    pub ports: Vec<EndpointPort>,
}

impl EndpointSlice {
    pub fn service_key(&self) -> Option<ObjectKey> {
        self.service_name
            .as_ref()
            .map(|n| ObjectKey::new(self.key.namespace.clone(), n.clone()))
    }
}
