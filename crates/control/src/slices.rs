//! The EndpointSlice controller (`pkg/controller/endpointslice` and its reconciler in
//! `staging/src/k8s.io/endpointslice`), as data in, data out.
//!
//! Per service with a selector and per address family: pods selected in the service's
//! namespace that have an address of that family and have not finished become
//! endpoints. Endpoints are grouped by their resolved port list (a named `targetPort`
//! may resolve differently per pod, or not at all), each group cut into slices of at
//! most [`MAX_ENDPOINTS_PER_SLICE`]. A service with no endpoints still gets one empty
//! slice per family, as upstream keeps a placeholder. Slices the controller does not
//! manage (user-supplied, e.g. for selector-less services) are left untouched.

use std::collections::BTreeMap;

use twill_model::{
    AddressType, ClusterState, Endpoint, EndpointConditions, EndpointPort, EndpointSlice, IpFamily,
    Kind, ObjectKey, ObjectRef, Pod, SERVICE_NAME_LABEL, Service, ServiceType, TargetPort,
};

use crate::Settings;
use crate::names::pod_name_suffix;

/// Upstream's default `--max-endpoints-per-slice`.
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const CONTROLLER_NAME: &str = "endpointslice-controller.k8s.io";
const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

pub(crate) fn reconcile_slices(state: &mut ClusterState, settings: &Settings) {
    state
        .endpoint_slices
        .retain(|_, s| s.labels.get(MANAGED_BY_LABEL).map(String::as_str) != Some(CONTROLLER_NAME));
    let mut new_slices = Vec::new();
    for svc in state.services.values() {
        let Some(selector) = &svc.selector else {
            continue;
        };
        if svc.service_type == ServiceType::ExternalName {
            continue;
        }
        // Pods are keyed by namespace first: walk only the service's namespace.
        let pods: Vec<&Pod> = state
            .pods
            .range(ObjectKey::new(svc.key.namespace.clone(), String::new())..)
            .map(|(_, p)| p)
            .take_while(|p| p.key.namespace == svc.key.namespace)
            .filter(|p| selector.iter().all(|(k, v)| p.labels.get(k) == Some(v)))
            .collect();
        let families = if svc.ip_families.is_empty() {
            vec![IpFamily::V4]
        } else {
            svc.ip_families.clone()
        };
        for fam in families {
            new_slices.extend(slices_for(svc, &pods, fam, state, settings.seed));
        }
    }
    for s in new_slices {
        state.endpoint_slices.insert(s.key.clone(), s);
    }
}

fn endpoint_for(
    svc: &Service,
    pod: &Pod,
    fam: IpFamily,
    state: &ClusterState,
) -> Option<(Vec<EndpointPort>, Endpoint)> {
    if !pod.is_active() {
        return None;
    }
    let ip = pod
        .pod_ips
        .iter()
        .copied()
        .find(|ip| IpFamily::of(ip) == fam)?;
    let ports = svc
        .ports
        .iter()
        .filter_map(|sp| {
            let port = match &sp.target_port {
                TargetPort::Number(n) => *n,
                // Not found on this pod: the port is left out for this pod only.
                TargetPort::Name(name) => pod.spec.find_port(name, sp.protocol)?,
            };
            Some(EndpointPort {
                name: sp.name.clone(),
                protocol: sp.protocol,
                port: Some(port),
                app_protocol: sp.app_protocol.clone(),
            })
        })
        .collect();
    let serving = svc.publish_not_ready_addresses || pod.ready;
    let terminating = pod.terminating;
    let ready = svc.publish_not_ready_addresses || (serving && !terminating);
    let node = pod.spec.node_name.as_ref().and_then(|n| state.nodes.get(n));
    let hostname = match (&pod.spec.hostname, &pod.spec.subdomain) {
        (Some(h), Some(sub)) if *sub == svc.key.name => Some(h.clone()),
        _ => None,
    };
    let zone = node.and_then(|n| n.zone()).map(str::to_string);
    // trafficDistribution, as the EndpointSlice controller's heuristics hint it: each
    // endpoint for its own zone (PreferSameZone, and PreferClose, its old name), and
    // for PreferSameNode also for its own node. An endpoint without a zone (or node)
    // gets no such hint, so kube-proxy falls back to every endpoint.
    let (hints_for_zones, hints_for_nodes) = match svc.traffic_distribution.as_deref() {
        Some("PreferClose" | "PreferSameZone") => (zone.iter().cloned().collect(), vec![]),
        Some("PreferSameNode") => (
            zone.iter().cloned().collect(),
            pod.spec.node_name.iter().cloned().collect(),
        ),
        _ => (vec![], vec![]),
    };
    Some((
        ports,
        Endpoint {
            addresses: vec![ip],
            conditions: EndpointConditions {
                ready: Some(ready),
                serving: Some(serving),
                terminating: Some(terminating),
            },
            hostname,
            node_name: pod.spec.node_name.clone(),
            zone,
            hints_for_zones,
            hints_for_nodes,
            target_ref: Some(ObjectRef {
                kind: Kind::Pod,
                key: pod.key.clone(),
            }),
            ..Default::default()
        },
    ))
}

fn slices_for(
    svc: &Service,
    pods: &[&Pod],
    fam: IpFamily,
    state: &ClusterState,
    seed: u64,
) -> Vec<EndpointSlice> {
    let mut groups: BTreeMap<Vec<EndpointPort>, Vec<Endpoint>> = BTreeMap::new();
    for pod in pods {
        if let Some((ports, ep)) = endpoint_for(svc, pod, fam, state) {
            groups.entry(ports).or_default().push(ep);
        }
    }
    if groups.is_empty() {
        groups.insert(Vec::new(), Vec::new());
    }
    let mut labels: twill_model::Labels = svc
        .labels
        .iter()
        .filter(|(k, _)| *k != SERVICE_NAME_LABEL && *k != MANAGED_BY_LABEL)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert(SERVICE_NAME_LABEL.into(), svc.key.name.clone());
    labels.insert(MANAGED_BY_LABEL.into(), CONTROLLER_NAME.into());
    if svc.headless {
        labels.insert(HEADLESS_LABEL.into(), String::new());
    }
    let address_type = match fam {
        IpFamily::V4 => AddressType::IPv4,
        IpFamily::V6 => AddressType::IPv6,
    };
    let mut out = Vec::new();
    for (g, (ports, endpoints)) in groups.into_iter().enumerate() {
        let chunks: Vec<Vec<Endpoint>> = if endpoints.is_empty() {
            vec![Vec::new()]
        } else {
            endpoints
                .chunks(MAX_ENDPOINTS_PER_SLICE)
                .map(<[Endpoint]>::to_vec)
                .collect()
        };
        for (c, chunk) in chunks.into_iter().enumerate() {
            let suffix = pod_name_suffix(
                seed,
                &[
                    &svc.key.namespace,
                    &svc.key.name,
                    fam.as_str(),
                    &g.to_string(),
                    &c.to_string(),
                ],
            );
            // generateName is cut so the name stays within 63 characters.
            let base: String = svc.key.name.chars().take(57).collect();
            out.push(EndpointSlice {
                key: ObjectKey::new(svc.key.namespace.clone(), format!("{base}-{suffix}")),
                labels: labels.clone(),
                service_name: Some(svc.key.name.clone()),
                address_type,
                endpoints: chunk,
                ports: ports.clone(),
            });
        }
    }
    out
}
