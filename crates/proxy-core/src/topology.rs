//! Which endpoints a service port uses, after upstream's `CategorizeEndpoints`
//! (`pkg/proxy/topology.go`).
//!
//! - Cluster traffic uses ready endpoints (narrowed by zone hints when topology applies);
//!   when none is ready anywhere it falls back to endpoints that are serving and
//!   terminating.
//! - Local traffic (eTP/iTP Local) uses the local ready endpoints, or, when there are
//!   none, the local serving+terminating ones.
//! - Hints narrow cluster traffic as kube-proxy's `topologyModeFromHints` does (the
//!   EndpointSlice controller writes them only for a Service that asks, through
//!   `trafficDistribution` or the topology annotation, so the proxy reads the hints
//!   alone): when every ready endpoint has node hints and one names this node, only the
//!   endpoints hinted for this node (PreferSameNode); otherwise, when every ready endpoint
//!   has zone hints and one names this node's zone, only those (PreferSameZone);
//!   otherwise every ready endpoint. So a zone without endpoints falls back to all.

use std::collections::BTreeMap;

use crate::endpoints::EndpointInfo;
use crate::model::ServicePortInfo;

/// The endpoint sets a renderer needs for one service port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Categorized<'a> {
    /// Endpoints for "Cluster" traffic policy.
    pub cluster: Vec<&'a EndpointInfo>,
    /// Endpoints for "Local" traffic policy.
    pub local: Vec<&'a EndpointInfo>,
    /// Every endpoint this node may send to (the union), sorted by `ip:port`.
    pub all_reachable: Vec<&'a EndpointInfo>,
    /// The service has a usable endpoint on some node.
    pub has_any: bool,
}

/// Which endpoints the hints keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Topology {
    None,
    SameNode,
    SameZone,
}

fn topology_mode(endpoints: &[EndpointInfo], zone: Option<&str>) -> Topology {
    let ready = || endpoints.iter().filter(|e| e.ready);
    if ready().next().is_none() {
        return Topology::None;
    }
    if ready().all(|e| e.node_hint.is_some()) && ready().any(|e| e.node_hint == Some(true)) {
        return Topology::SameNode;
    }
    if let Some(zone) = zone.filter(|z| !z.is_empty())
        && ready().all(|e| !e.zone_hints.is_empty())
        && ready().any(|e| e.zone_hints.iter().any(|z| z == zone))
    {
        return Topology::SameZone;
    }
    Topology::None
}

fn available(e: &EndpointInfo, mode: Topology, zone: Option<&str>) -> bool {
    match mode {
        Topology::None => true,
        Topology::SameNode => e.node_hint == Some(true),
        Topology::SameZone => zone.is_some_and(|z| e.zone_hints.iter().any(|h| h == z)),
    }
}

/// Split `endpoints` (sorted) by the service's traffic policies for this node.
pub fn categorize_endpoints<'a>(
    endpoints: &'a [EndpointInfo],
    svc: &ServicePortInfo,
    node_zone: Option<&str>,
) -> Categorized<'a> {
    let mut out = Categorized::default();
    if svc.uses_cluster_endpoints() {
        let mode = topology_mode(endpoints, node_zone);
        out.cluster = endpoints
            .iter()
            .filter(|e| e.ready && available(e, mode, node_zone))
            .collect();
        if out.cluster.is_empty() {
            out.cluster = endpoints
                .iter()
                .filter(|e| e.serving && e.terminating)
                .collect();
        }
        out.has_any = !out.cluster.is_empty();
    }
    if !svc.uses_local_endpoints() {
        out.all_reachable = out.cluster.clone();
        return out;
    }
    let (mut local_ready, mut local_terminating) = (false, false);
    for e in endpoints {
        if e.ready {
            out.has_any = true;
            local_ready |= e.is_local;
        } else if e.serving && e.terminating {
            out.has_any = true;
            local_terminating |= e.is_local;
        }
    }
    if local_ready {
        out.local = endpoints.iter().filter(|e| e.is_local && e.ready).collect();
    } else if local_terminating {
        out.local = endpoints
            .iter()
            .filter(|e| e.is_local && e.serving && e.terminating)
            .collect();
    }
    if !svc.uses_cluster_endpoints() {
        out.all_reachable = out.local.clone();
        return out;
    }
    if out.local.is_empty() {
        out.all_reachable = out.cluster.clone();
        return out;
    }
    // Both lists borrow from `endpoints` (sorted by `ip:port`), so an element's address
    // is its position: keying by it keeps that order and folds the overlap.
    let mut union: BTreeMap<usize, &'a EndpointInfo> = BTreeMap::new();
    for e in out.cluster.iter().chain(&out.local) {
        union.insert(*e as *const EndpointInfo as usize, e);
    }
    out.all_reachable = union.into_values().collect();
    out
}
