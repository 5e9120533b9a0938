//! The cluster as cluster DNS sees it, indexed for answering.
//!
//! Built once per change from a [`ClusterState`] (cost O(objects)), then shared read-only:
//! the server answers from an `Arc<Snapshot>` and swaps in a new one when objects change.
//! Keys are lower case because every DNS comparison is case-insensitive (spec 2.1).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use twill_model::{ClusterState, Protocol, ServiceType};

use crate::config::Config;
use crate::labels::dashed;

#[derive(Debug, Clone)]
pub(crate) enum SvcKind {
    ClusterIp(Box<[IpAddr]>),
    Headless,
    /// The `externalName` as written (not an address: those are never published).
    External(Box<str>),
}

#[derive(Debug, Clone)]
pub(crate) struct PortSpec {
    /// Lower case; `""` for the unnamed port.
    pub name: Box<str>,
    pub protocol: Protocol,
    pub port: u16,
}

/// One ready endpoint address, as CoreDNS's converted `Endpoints` subsets hold it.
#[derive(Debug, Clone)]
pub(crate) struct EndpointAddr {
    pub ip: IpAddr,
    /// The hostname, else the target pod's name (`endpoint_pod_names`); `None` means the
    /// dashed address, computed when needed rather than stored.
    pub hostname: Option<Box<str>>,
    /// Index into [`Svc::slice_ports`]: the ports of the slice the address came from.
    pub slice: u32,
}

impl EndpointAddr {
    /// The DNS label of this endpoint.
    pub fn label(&self) -> std::borrow::Cow<'_, str> {
        match &self.hostname {
            Some(h) => std::borrow::Cow::Borrowed(h),
            None => std::borrow::Cow::Owned(dashed(&self.ip)),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Svc {
    pub kind: SvcKind,
    pub ports: Box<[PortSpec]>,
    pub endpoints: Box<[EndpointAddr]>,
    /// Ports per slice; an empty list means the slice's endpoints have no port.
    pub slice_ports: Box<[Box<[PortSpec]>]>,
}

/// Everything [`crate::resolve`] reads. Cheap to share, never mutated after `build`.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub(crate) config: Config,
    pub(crate) synced: bool,
    pub(crate) serial: u32,
    /// Lower-case names of namespaces that exist and are exposed.
    pub(crate) exposed: HashSet<String>,
    /// Keyed by lower-case namespace, then name (lookups need no allocation). Boxed
    /// slices and strings keep a snapshot of 10k services to a few MB.
    pub(crate) services: HashMap<Box<str>, HashMap<Box<str>, Svc>>,
    /// `(namespace, status.podIP as text)` of running pods, for `pods verified`.
    pub(crate) pod_ips: HashSet<(String, String)>,
    /// Cluster IP → `name.namespace.svc` of the first service that has it.
    pub(crate) ptr_cluster: HashMap<IpAddr, Box<str>>,
    /// Endpoint address → `hostname.service.namespace.svc`, one per slice entry,
    /// separated by spaces (one allocation for the usual single target).
    pub(crate) ptr_endpoints: HashMap<IpAddr, String>,
    /// NS targets (relative to the zone) and the addresses behind them.
    pub(crate) ns_addrs: Vec<(String, IpAddr)>,
}

fn endpoint_hostname(e: &twill_model::Endpoint, pod_names: bool) -> Option<Box<str>> {
    if let Some(h) = e.hostname.as_deref().filter(|h| !h.is_empty()) {
        return Some(h.to_ascii_lowercase().into());
    }
    if pod_names
        && let Some(r) = &e.target_ref
        && !r.key.name.is_empty()
        && r.key.name.len() <= 63
    {
        return Some(r.key.name.to_ascii_lowercase().into());
    }
    None
}

fn endpoint_label(e: &twill_model::Endpoint, ip: &IpAddr, pod_names: bool) -> String {
    endpoint_hostname(e, pod_names)
        .map(String::from)
        .unwrap_or_else(|| dashed(ip))
}

impl Snapshot {
    /// Index `state` under `config`. `serial` is the SOA serial to report (CoreDNS uses the
    /// Unix time of the last change; the caller supplies it because cores have no clock).
    pub fn build(state: &ClusterState, config: &Config, serial: u32) -> Self {
        let configured = |ns: &str| {
            config
                .namespaces
                .as_ref()
                .is_none_or(|list| list.iter().any(|n| n.eq_ignore_ascii_case(ns)))
        };
        let exposed: HashSet<String> = state
            .namespaces
            .keys()
            .filter(|n| configured(n))
            .map(|n| n.to_ascii_lowercase())
            .collect();

        let mut services: HashMap<Box<str>, HashMap<Box<str>, Svc>> = HashMap::new();
        let mut ptr_cluster = HashMap::new();
        for (key, s) in &state.services {
            let kind = if s.service_type == ServiceType::ExternalName {
                match &s.external_name {
                    Some(n) => SvcKind::External(n.as_str().into()),
                    None => continue,
                }
            } else if s.headless {
                SvcKind::Headless
            } else {
                SvcKind::ClusterIp(s.cluster_ips.as_slice().into())
            };
            let port_spec = |name: &str, protocol, port| PortSpec {
                name: name.to_ascii_lowercase().into(),
                protocol,
                port,
            };
            let ports = s
                .ports
                .iter()
                .map(|p| port_spec(&p.name, p.protocol, p.port))
                .collect();
            let mut endpoints = Vec::new();
            let mut slice_ports = Vec::new();
            for slice in state.slices_for(key) {
                let idx = slice_ports.len() as u32;
                let ports: Box<[PortSpec]> = slice
                    .ports
                    .iter()
                    .filter_map(|p| Some(port_spec(&p.name, p.protocol, p.port?)))
                    .collect();
                slice_ports.push(ports);
                for e in slice.endpoints.iter().filter(|e| e.conditions.is_ready()) {
                    for ip in &e.addresses {
                        let hostname = endpoint_hostname(e, config.endpoint_pod_names);
                        endpoints.push(EndpointAddr {
                            ip: *ip,
                            hostname,
                            slice: idx,
                        });
                    }
                }
            }
            if let SvcKind::ClusterIp(ips) = &kind
                && (config.namespaces.is_none()
                    || exposed.contains(&key.namespace.to_ascii_lowercase()))
            {
                for ip in ips {
                    ptr_cluster.entry(*ip).or_insert_with(|| {
                        format!("{}.{}.svc", key.name, key.namespace)
                            .to_ascii_lowercase()
                            .into_boxed_str()
                    });
                }
            }
            let svc = Svc {
                kind,
                ports,
                endpoints: endpoints.into_boxed_slice(),
                slice_ports: slice_ports.into_boxed_slice(),
            };
            services
                .entry(key.namespace.to_ascii_lowercase().into_boxed_str())
                .or_default()
                .insert(key.name.to_ascii_lowercase().into_boxed_str(), svc);
        }

        // Endpoint PTRs come from slices alone, whether or not their service exists.
        let mut ptr_endpoints: HashMap<IpAddr, String> = HashMap::new();
        for slice in state.endpoint_slices.values() {
            let Some(svc_name) = &slice.service_name else {
                continue;
            };
            let ns = slice.key.namespace.to_ascii_lowercase();
            if config.namespaces.is_some() && !exposed.contains(&ns) {
                continue;
            }
            for e in slice.endpoints.iter().filter(|e| e.conditions.is_ready()) {
                for ip in &e.addresses {
                    let host = endpoint_label(e, ip, config.endpoint_pod_names);
                    let target = format!("{host}.{}.{ns}.svc", svc_name.to_ascii_lowercase());
                    let entry = ptr_endpoints.entry(*ip).or_default();
                    if !entry.is_empty() {
                        entry.push(' ');
                    }
                    entry.push_str(&target);
                }
            }
        }
        for v in ptr_endpoints.values_mut() {
            v.shrink_to_fit();
        }

        let mut pod_ips = HashSet::new();
        // As CoreDNS's `pods verified`: a pod being deleted, or one that has finished
        // (Succeeded or Failed), no longer vouches for its address.
        for p in state
            .pods
            .values()
            .filter(|p| p.is_active() && !p.terminating)
        {
            if let Some(ip) = p.pod_ips.first() {
                pod_ips.insert((p.key.namespace.to_ascii_lowercase(), ip.to_string()));
            }
        }

        let ns_addrs = ns_addresses(state, config);
        Snapshot {
            config: config.clone(),
            synced: state.synced,
            serial,
            exposed,
            services,
            pod_ips,
            ptr_cluster,
            ptr_endpoints,
            ns_addrs,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn is_synced(&self) -> bool {
        self.synced
    }

    pub fn service_count(&self) -> usize {
        self.services.values().map(HashMap::len).sum()
    }
}

/// CoreDNS's `nsAddrs`: the services whose ready endpoints include one of the server's own
/// addresses name the zone's NS records (cluster IPs as glue; endpoint names and addresses
/// for headless ones). With no match the server is `ns.dns.<zone>` at its own addresses.
fn ns_addresses(state: &ClusterState, config: &Config) -> Vec<(String, IpAddr)> {
    let mut out = Vec::new();
    for local in &config.server_ips {
        for slice in state.endpoint_slices.values() {
            let has = slice
                .endpoints
                .iter()
                .filter(|e| e.conditions.is_ready())
                .any(|e| e.addresses.contains(local));
            if !has {
                continue;
            }
            let Some(key) = slice.service_key() else {
                continue;
            };
            let Some(svc) = state.services.get(&key) else {
                continue;
            };
            let svc_name = format!("{}.{}.svc", key.name, key.namespace).to_ascii_lowercase();
            if svc.headless {
                for e in slice.endpoints.iter().filter(|e| e.conditions.is_ready()) {
                    for ip in &e.addresses {
                        let host = endpoint_label(e, ip, config.endpoint_pod_names);
                        out.push((format!("{host}.{svc_name}"), *ip));
                    }
                }
            } else {
                for ip in &svc.cluster_ips {
                    out.push((svc_name.clone(), *ip));
                }
            }
        }
    }
    if out.is_empty() {
        out = config
            .server_ips
            .iter()
            .map(|ip| ("ns.dns".to_string(), *ip))
            .collect();
    }
    out
}
