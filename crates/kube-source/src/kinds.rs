//! The resources the source watches, and the API calls that follow from them.
//!
//! One table ([`for_kind!`]) maps each [`WatchedKind`] to its k8s-openapi type. The
//! watcher is built from that type and the RBAC rules are derived from the same type's
//! group and plural, so the two cannot drift apart.

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as networking;
use twill_model::k8s::{self, FieldError};
use twill_model::{Kind, Object, ObjectKey, ObjectRef};

/// A resource the source lists and watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum WatchedKind {
    Namespace,
    Node,
    Pod,
    Service,
    EndpointSlice,
    NetworkPolicy,
    /// `networking.k8s.io/v1` (1.33+); an API server without the resource answers 404,
    /// which counts as an empty list.
    ServiceCidr,
    /// `policy.networking.k8s.io/v1alpha2`, a CRD (sigs.k8s.io/network-policy-api); a
    /// cluster without it answers 404, which counts as an empty list.
    ClusterNetworkPolicy,
}

/// Runs `$body` with `$k` bound to the k8s-openapi type of `$kind`.
macro_rules! for_kind {
    ($kind:expr, $k:ident => $body:expr) => {
        match $kind {
            $crate::WatchedKind::Namespace => {
                type $k = k8s_openapi::api::core::v1::Namespace;
                $body
            }
            $crate::WatchedKind::Node => {
                type $k = k8s_openapi::api::core::v1::Node;
                $body
            }
            $crate::WatchedKind::Pod => {
                type $k = k8s_openapi::api::core::v1::Pod;
                $body
            }
            $crate::WatchedKind::Service => {
                type $k = k8s_openapi::api::core::v1::Service;
                $body
            }
            $crate::WatchedKind::EndpointSlice => {
                type $k = k8s_openapi::api::discovery::v1::EndpointSlice;
                $body
            }
            $crate::WatchedKind::NetworkPolicy => {
                type $k = k8s_openapi::api::networking::v1::NetworkPolicy;
                $body
            }
            $crate::WatchedKind::ServiceCidr => {
                type $k = k8s_openapi::api::networking::v1::ServiceCIDR;
                $body
            }
            $crate::WatchedKind::ClusterNetworkPolicy => {
                type $k = $crate::kinds::Cnp;
                $body
            }
        }
    };
}
pub(crate) use for_kind;

/// The verbs a watcher uses on every resource it watches: it lists (and relists after
/// `410 Gone`), then watches from the list's resourceVersion.
pub const WATCH_VERBS: &[&str] = &["list", "watch"];

/// One RBAC-relevant API call pattern: verbs on a resource of an API group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ApiCall {
    /// `""` for the core group.
    pub group: &'static str,
    /// The plural resource name (`endpointslices`).
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
}

fn api_call_of<K: k8s_openapi::Resource>() -> ApiCall {
    ApiCall {
        group: K::GROUP,
        resource: K::URL_PATH_SEGMENT,
        verbs: WATCH_VERBS,
    }
}

impl WatchedKind {
    /// Every kind, in a stable order.
    pub const ALL: [WatchedKind; 8] = [
        WatchedKind::Namespace,
        WatchedKind::Node,
        WatchedKind::Pod,
        WatchedKind::Service,
        WatchedKind::EndpointSlice,
        WatchedKind::NetworkPolicy,
        WatchedKind::ServiceCidr,
        WatchedKind::ClusterNetworkPolicy,
    ];

    /// The kind in the model.
    pub fn model_kind(self) -> Kind {
        match self {
            WatchedKind::Namespace => Kind::Namespace,
            WatchedKind::Node => Kind::Node,
            WatchedKind::Pod => Kind::Pod,
            WatchedKind::Service => Kind::Service,
            WatchedKind::EndpointSlice => Kind::EndpointSlice,
            WatchedKind::NetworkPolicy => Kind::NetworkPolicy,
            WatchedKind::ServiceCidr => Kind::ServiceCidr,
            WatchedKind::ClusterNetworkPolicy => Kind::ClusterNetworkPolicy,
        }
    }

    /// The API calls watching this kind makes.
    pub fn api_call(self) -> ApiCall {
        for_kind!(self, K => api_call_of::<K>())
    }

    pub(crate) fn namespaced(self) -> bool {
        !matches!(
            self,
            WatchedKind::Namespace
                | WatchedKind::Node
                | WatchedKind::ServiceCidr
                | WatchedKind::ClusterNetworkPolicy
        )
    }
}

impl std::fmt::Display for WatchedKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.model_kind().fmt(f)
    }
}

/// One object off the wire: its identity (always known, so deletions of objects that
/// failed validation still resolve) and its model form or why it has none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub object_ref: ObjectRef,
    pub object: Result<Object, Vec<FieldError>>,
}

/// k8s-openapi types the source converts to model objects.
pub(crate) trait ToModel:
    k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>
{
    const WATCHED: WatchedKind;
    fn to_model(&self) -> Result<Object, Vec<FieldError>>;

    fn to_entry(&self) -> Entry {
        let meta = self.metadata();
        let name = meta.name.clone().unwrap_or_default();
        let key = if Self::WATCHED.namespaced() {
            // The API server always sets it; `default` mirrors the manifest loader.
            let ns = meta
                .namespace
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "default".into());
            ObjectKey::new(ns, name)
        } else {
            ObjectKey::cluster(name)
        };
        Entry {
            object_ref: ObjectRef {
                kind: Self::WATCHED.model_kind(),
                key,
            },
            object: self.to_model(),
        }
    }
}

impl ToModel for core::Namespace {
    const WATCHED: WatchedKind = WatchedKind::Namespace;
    fn to_model(&self) -> Result<Object, Vec<FieldError>> {
        k8s::namespace_from_k8s(self).map(Object::Namespace)
    }
}
impl ToModel for core::Node {
    const WATCHED: WatchedKind = WatchedKind::Node;
    fn to_model(&self) -> Result<Object, Vec<FieldError>> {
        k8s::node_from_k8s(self).map(Object::Node)
    }
}
impl ToModel for core::Pod {
    const WATCHED: WatchedKind = WatchedKind::Pod;
    fn to_model(&self) -> Result<Object, Vec<FieldError>> {
        k8s::pod_from_k8s(self).map(Object::Pod)
    }
}
impl ToModel for core::Service {
    const WATCHED: WatchedKind = WatchedKind::Service;
    fn to_model(&self) -> Result<Object, Vec<FieldError>> {
        k8s::service_from_k8s(self).map(Object::Service)
    }
}
impl ToModel for discovery::EndpointSlice {
    const WATCHED: WatchedKind = WatchedKind::EndpointSlice;
    fn to_model(&self) -> Result<Object, Vec<FieldError>> {
        k8s::endpoint_slice_from_k8s(self).map(Object::EndpointSlice)
    }
}
impl ToModel for networking::NetworkPolicy {
    const WATCHED: WatchedKind = WatchedKind::NetworkPolicy;
    fn to_model(&self) -> Result<Object, Vec<FieldError>> {
        k8s::network_policy_from_k8s(self).map(Object::NetworkPolicy)
    }
}
impl ToModel for networking::ServiceCIDR {
    const WATCHED: WatchedKind = WatchedKind::ServiceCidr;
    fn to_model(&self) -> Result<Object, Vec<FieldError>> {
        k8s::service_cidr_from_k8s(self).map(Object::ServiceCidr)
    }
}

/// The ClusterNetworkPolicy CRD as a resource type: k8s-openapi has none, so its wire
/// shape (`twill_model::k8s::ClusterNetworkPolicyJson`) gets the resource constants here
/// (kube builds its URLs from them).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Cnp(pub k8s::ClusterNetworkPolicyJson);

impl k8s_openapi::Resource for Cnp {
    const API_VERSION: &'static str = k8s::CNP_API_VERSION;
    const GROUP: &'static str = "policy.networking.k8s.io";
    const KIND: &'static str = "ClusterNetworkPolicy";
    const VERSION: &'static str = "v1alpha2";
    const URL_PATH_SEGMENT: &'static str = "clusternetworkpolicies";
    type Scope = k8s_openapi::ClusterResourceScope;
}

impl k8s_openapi::Metadata for Cnp {
    type Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    fn metadata(&self) -> &Self::Ty {
        &self.0.metadata
    }
    fn metadata_mut(&mut self) -> &mut Self::Ty {
        &mut self.0.metadata
    }
}

impl ToModel for Cnp {
    const WATCHED: WatchedKind = WatchedKind::ClusterNetworkPolicy;
    fn to_model(&self) -> Result<Object, Vec<FieldError>> {
        k8s::cnp_from_k8s(&self.0).map(Object::ClusterNetworkPolicy)
    }
}
