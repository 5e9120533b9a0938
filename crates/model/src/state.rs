//! The event stream and the store it builds.
//!
//! Like kube-runtime's reflector, the store is written synchronously by events and tells
//! whether an event changed anything, so consumers can skip no-op syncs. `Synced` marks
//! the end of the initial listing: before it, consumers must not program a half-listed
//! cluster (DNS answers SERVFAIL, the proxy waits).

use std::collections::BTreeMap;

use crate::meta::{Kind, ObjectKey, ObjectRef};
use crate::node::Node;
use crate::pod::{Namespace, Pod, Workload, WorkloadKind};
use crate::policy::{ClusterNetworkPolicy, NetworkPolicy};
use crate::service::{Service, ServiceCidr};
use crate::slice::EndpointSlice;

// Stores keep the inner types, not `Object`, so the size spread costs nothing at rest.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    Namespace(Namespace),
    Node(Node),
    Pod(Pod),
    Service(Service),
    EndpointSlice(EndpointSlice),
    Workload(Workload),
    NetworkPolicy(NetworkPolicy),
    ServiceCidr(ServiceCidr),
    ClusterNetworkPolicy(ClusterNetworkPolicy),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Namespace(_) => Kind::Namespace,
            Object::Node(_) => Kind::Node,
            Object::Pod(_) => Kind::Pod,
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::Workload(w) => match w.kind {
                WorkloadKind::Deployment => Kind::Deployment,
                WorkloadKind::ReplicaSet => Kind::ReplicaSet,
                WorkloadKind::DaemonSet => Kind::DaemonSet,
            },
            Object::NetworkPolicy(_) => Kind::NetworkPolicy,
            Object::ServiceCidr(_) => Kind::ServiceCidr,
            Object::ClusterNetworkPolicy(_) => Kind::ClusterNetworkPolicy,
        }
    }

    pub fn key(&self) -> ObjectKey {
        match self {
            Object::Namespace(n) => ObjectKey::cluster(n.name.clone()),
            Object::Node(n) => ObjectKey::cluster(n.name.clone()),
            Object::Pod(p) => p.key.clone(),
            Object::Service(s) => s.key.clone(),
            Object::EndpointSlice(s) => s.key.clone(),
            Object::Workload(w) => w.key.clone(),
            Object::NetworkPolicy(p) => p.key.clone(),
            Object::ServiceCidr(c) => ObjectKey::cluster(c.name.clone()),
            Object::ClusterNetworkPolicy(p) => ObjectKey::cluster(p.name.clone()),
        }
    }

    pub fn object_ref(&self) -> ObjectRef {
        ObjectRef {
            kind: self.kind(),
            key: self.key(),
        }
    }
}

// Events are short-lived and move straight into the store; boxing would cost an
// allocation per event for no memory saved at rest.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectEvent {
    /// Added or modified.
    Applied(Object),
    Deleted(ObjectRef),
    /// The initial listing is complete.
    Synced,
}

/// Every modelled object, keyed for deterministic iteration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterState {
    pub namespaces: BTreeMap<String, Namespace>,
    pub nodes: BTreeMap<String, Node>,
    pub pods: BTreeMap<ObjectKey, Pod>,
    pub services: BTreeMap<ObjectKey, Service>,
    pub endpoint_slices: BTreeMap<ObjectKey, EndpointSlice>,
    pub workloads: BTreeMap<(WorkloadKind, ObjectKey), Workload>,
    pub network_policies: BTreeMap<ObjectKey, NetworkPolicy>,
    /// ServiceCIDRs (`networking.k8s.io/v1`) by name; the API server's default is
    /// `kubernetes`.
    pub service_cidrs: BTreeMap<String, ServiceCidr>,
    /// ClusterNetworkPolicies (`policy.networking.k8s.io/v1alpha2`) by name.
    pub cluster_network_policies: BTreeMap<String, ClusterNetworkPolicy>,
    pub synced: bool,
}

fn put<K: Ord, V: PartialEq>(map: &mut BTreeMap<K, V>, k: K, v: V) -> bool {
    match map.get(&k) {
        Some(old) if *old == v => false,
        _ => {
            map.insert(k, v);
            true
        }
    }
}

impl ClusterState {
    /// A state already marked synced, holding `objects` (later ones replace earlier ones
    /// with the same identity).
    pub fn from_objects(objects: impl IntoIterator<Item = Object>) -> Self {
        let mut s = Self::default();
        for o in objects {
            s.apply(ObjectEvent::Applied(o));
        }
        s.apply(ObjectEvent::Synced);
        s
    }

    /// Apply one event; returns whether the state changed.
    pub fn apply(&mut self, event: ObjectEvent) -> bool {
        match event {
            ObjectEvent::Synced => !std::mem::replace(&mut self.synced, true),
            ObjectEvent::Applied(o) => match o {
                Object::Namespace(n) => put(&mut self.namespaces, n.name.clone(), n),
                Object::Node(n) => put(&mut self.nodes, n.name.clone(), n),
                Object::Pod(p) => put(&mut self.pods, p.key.clone(), p),
                Object::Service(s) => put(&mut self.services, s.key.clone(), s),
                Object::EndpointSlice(s) => put(&mut self.endpoint_slices, s.key.clone(), s),
                Object::Workload(w) => put(&mut self.workloads, (w.kind, w.key.clone()), w),
                Object::NetworkPolicy(p) => put(&mut self.network_policies, p.key.clone(), p),
                Object::ServiceCidr(c) => put(&mut self.service_cidrs, c.name.clone(), c),
                Object::ClusterNetworkPolicy(p) => {
                    put(&mut self.cluster_network_policies, p.name.clone(), p)
                }
            },
            ObjectEvent::Deleted(r) => match r.kind {
                Kind::Namespace => self.namespaces.remove(&r.key.name).is_some(),
                Kind::Node => self.nodes.remove(&r.key.name).is_some(),
                Kind::Pod => self.pods.remove(&r.key).is_some(),
                Kind::Service => self.services.remove(&r.key).is_some(),
                Kind::EndpointSlice => self.endpoint_slices.remove(&r.key).is_some(),
                Kind::Deployment => self
                    .workloads
                    .remove(&(WorkloadKind::Deployment, r.key))
                    .is_some(),
                Kind::ReplicaSet => self
                    .workloads
                    .remove(&(WorkloadKind::ReplicaSet, r.key))
                    .is_some(),
                Kind::DaemonSet => self
                    .workloads
                    .remove(&(WorkloadKind::DaemonSet, r.key))
                    .is_some(),
                Kind::NetworkPolicy => self.network_policies.remove(&r.key).is_some(),
                Kind::ServiceCidr => self.service_cidrs.remove(&r.key.name).is_some(),
                Kind::ClusterNetworkPolicy => {
                    self.cluster_network_policies.remove(&r.key.name).is_some()
                }
            },
        }
    }

    /// The slices labelled for `service`, in name order.
    pub fn slices_for(&self, service: &ObjectKey) -> impl Iterator<Item = &EndpointSlice> + '_ {
        let service = service.clone();
        self.endpoint_slices.values().filter(move |s| {
            s.key.namespace == service.namespace
                && s.service_name.as_deref() == Some(service.name.as_str())
        })
    }

    /// The events that turn `self` into `target` (deletions first, then applies), in a
    /// stable order; `Synced` is appended when `target` is synced and `self` is not.
    pub fn diff_events(&self, target: &ClusterState) -> Vec<ObjectEvent> {
        let index = |s: &ClusterState| -> BTreeMap<ObjectRef, Object> {
            s.objects()
                .into_iter()
                .map(|o| (o.object_ref(), o))
                .collect()
        };
        let (old, new) = (index(self), index(target));
        let mut out: Vec<ObjectEvent> = old
            .keys()
            .filter(|r| !new.contains_key(*r))
            .cloned()
            .map(ObjectEvent::Deleted)
            .collect();
        out.extend(
            new.into_iter()
                .filter(|(r, o)| old.get(r) != Some(o))
                .map(|(_, o)| ObjectEvent::Applied(o)),
        );
        if target.synced && !self.synced {
            out.push(ObjectEvent::Synced);
        }
        out
    }

    /// Every object, in a stable order (namespaces, nodes, workloads, pods, services,
    /// slices, policies, service CIDRs).
    pub fn objects(&self) -> Vec<Object> {
        let mut out = Vec::new();
        out.extend(self.namespaces.values().cloned().map(Object::Namespace));
        out.extend(self.nodes.values().cloned().map(Object::Node));
        out.extend(self.workloads.values().cloned().map(Object::Workload));
        out.extend(self.pods.values().cloned().map(Object::Pod));
        out.extend(self.services.values().cloned().map(Object::Service));
        out.extend(
            self.endpoint_slices
                .values()
                .cloned()
                .map(Object::EndpointSlice),
        );
        out.extend(
            self.network_policies
                .values()
                .cloned()
                .map(Object::NetworkPolicy),
        );
        out.extend(
            self.service_cidrs
                .values()
                .cloned()
                .map(Object::ServiceCidr),
        );
        out.extend(
            self.cluster_network_policies
                .values()
                .cloned()
                .map(Object::ClusterNetworkPolicy),
        );
        out
    }

    /// Every CIDR of every ServiceCIDR, in name order, without repeats.
    pub fn service_cidr_nets(&self) -> Vec<ipnet::IpNet> {
        let mut out = Vec::new();
        for c in self.service_cidrs.values() {
            for n in &c.cidrs {
                if !out.contains(n) {
                    out.push(*n);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::Service;

    fn svc(name: &str, port: u16) -> Object {
        Object::Service(Service {
            key: ObjectKey::new("default", name),
            ports: vec![crate::ServicePort {
                name: String::new(),
                protocol: crate::Protocol::Tcp,
                port,
                target_port: crate::TargetPort::Number(port),
                node_port: None,
                app_protocol: None,
            }],
            ..Default::default()
        })
    }

    #[test]
    fn no_op_events_report_no_change() {
        let mut s = ClusterState::default();
        assert!(s.apply(ObjectEvent::Applied(svc("a", 80))));
        assert!(!s.apply(ObjectEvent::Applied(svc("a", 80))));
        assert!(s.apply(ObjectEvent::Applied(svc("a", 81))));
        let r = svc("a", 81).object_ref();
        assert!(s.apply(ObjectEvent::Deleted(r.clone())));
        assert!(!s.apply(ObjectEvent::Deleted(r)));
    }

    #[test]
    fn diff_events_replay_to_the_target() {
        let mut a = ClusterState::default();
        a.apply(ObjectEvent::Applied(svc("keep", 80)));
        a.apply(ObjectEvent::Applied(svc("gone", 80)));
        a.apply(ObjectEvent::Applied(svc("change", 80)));
        let mut b = ClusterState::default();
        b.apply(ObjectEvent::Applied(svc("keep", 80)));
        b.apply(ObjectEvent::Applied(svc("change", 81)));
        b.apply(ObjectEvent::Applied(svc("new", 80)));
        b.apply(ObjectEvent::Synced);
        let events = a.diff_events(&b);
        assert_eq!(events.len(), 4, "{events:?}");
        assert!(matches!(&events[0], ObjectEvent::Deleted(r) if r.key.name == "gone"));
        for e in events {
            a.apply(e);
        }
        assert_eq!(a, b);
        assert!(b.diff_events(&b).is_empty());
    }

    #[test]
    fn synced_flips_once() {
        let mut s = ClusterState::default();
        assert!(!s.synced);
        assert!(s.apply(ObjectEvent::Synced));
        assert!(!s.apply(ObjectEvent::Synced));
        assert!(s.synced);
    }
}
