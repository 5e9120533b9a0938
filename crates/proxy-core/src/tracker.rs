//! Change tracking between syncs, in the spirit of upstream's service and endpoints
//! change trackers: compare the last synced model with the new one and report which
//! services changed (their chains must be rewritten) and which UDP conntrack entries
//! went stale.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use twill_model::{ObjectKey, Protocol};

use crate::model::{ProxyModel, ServicePortInfo, ServicePortName};
use crate::topology::categorize_endpoints;

/// UDP conntrack entries that would keep sending packets to the wrong place.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum StaleConntrack {
    /// A service port got its first endpoint: entries created while it was rejecting
    /// traffic must go (by destination IP and port).
    ServiceIp { ip: IpAddr, port: u16 },
    /// An endpoint went away: entries NATed to it must go (by original destination and
    /// reply source).
    Endpoint {
        service_ip: IpAddr,
        endpoint_ip: IpAddr,
    },
}

/// What changed since the last sync.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncChanges {
    /// Services (namespace/name) whose service or endpoint data changed.
    pub services: BTreeSet<ObjectKey>,
    pub stale_udp: BTreeSet<StaleConntrack>,
}

impl SyncChanges {
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.stale_udp.is_empty()
    }
}

/// Keeps the last synced model, shared with whoever built it: a daemon that holds its
/// model between syncs does not pay for a second copy.
#[derive(Debug, Clone, Default)]
pub struct ChangeTracker {
    last: Option<Arc<ProxyModel>>,
}

fn service_ips(s: &ServicePortInfo) -> Vec<(IpAddr, u16)> {
    let mut v = vec![(s.cluster_ip, s.port)];
    v.extend(s.external_ips.iter().map(|ip| (*ip, s.port)));
    v.extend(s.load_balancer_vips.iter().map(|ip| (*ip, s.port)));
    v
}

impl ChangeTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// The model of the last sync, if any.
    pub fn last(&self) -> Option<&ProxyModel> {
        self.last.as_deref()
    }

    /// Whether `model` is the very snapshot last synced (so nothing can have changed).
    pub fn is_last(&self, model: &Arc<ProxyModel>) -> bool {
        self.last.as_ref().is_some_and(|l| Arc::ptr_eq(l, model))
    }

    /// What changed between the last synced model and `next`; does not record `next`.
    pub fn diff(&self, next: &ProxyModel) -> SyncChanges {
        let empty = ProxyModel::default();
        let prev = self.last.as_deref().unwrap_or(&empty);
        let mut out = SyncChanges::default();
        // Four sorted runs of borrowed keys; a stable sort merges runs in linear-ish
        // time, and nothing is cloned (at 10k services the cloned set cost more than
        // the comparisons).
        let mut names: Vec<&ServicePortName> = Vec::with_capacity(
            prev.services.len() + next.services.len() + prev.endpoints.len() + next.endpoints.len(),
        );
        names.extend(prev.services.keys());
        names.extend(next.services.keys());
        names.extend(prev.endpoints.keys());
        names.extend(next.endpoints.keys());
        names.sort();
        names.dedup();
        for name in names {
            let (ps, ns) = (prev.services.get(name), next.services.get(name));
            let (pe, ne) = (prev.endpoints_of(name), next.endpoints_of(name));
            if ps != ns || pe != ne {
                out.services.insert(name.service.clone());
            }
            if name.protocol != Protocol::Udp {
                continue;
            }
            let prev_used = ps
                .map(|s| categorize_endpoints(pe, s, prev.node_zone.as_deref()).all_reachable)
                .unwrap_or_default();
            let next_used = ns
                .map(|s| categorize_endpoints(ne, s, next.node_zone.as_deref()).all_reachable)
                .unwrap_or_default();
            if let Some(s) = ns
                && prev_used.is_empty()
                && !next_used.is_empty()
            {
                for (ip, port) in service_ips(s) {
                    out.stale_udp.insert(StaleConntrack::ServiceIp { ip, port });
                }
            }
            if let Some(s) = ps {
                for gone in prev_used
                    .iter()
                    .filter(|e| !next_used.iter().any(|n| n.ip == e.ip && n.port == e.port))
                {
                    for (ip, _) in service_ips(s) {
                        out.stale_udp.insert(StaleConntrack::Endpoint {
                            service_ip: ip,
                            endpoint_ip: gone.ip,
                        });
                    }
                }
            }
        }
        out
    }

    /// Record `model` as synced.
    pub fn commit(&mut self, model: impl Into<Arc<ProxyModel>>) {
        self.last = Some(model.into());
    }

    /// Forget the last sync, so the next diff reports every service (forces a full sync).
    pub fn reset(&mut self) {
        self.last = None;
    }
}
