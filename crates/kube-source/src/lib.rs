//! The Kubernetes API as a source of Twill object events.
//!
//! kube-runtime's `watcher` lists and watches each resource a node agent reads
//! (Namespaces, Nodes, Pods — optionally only one node's, by field selector —,
//! Services, EndpointSlices, NetworkPolicies), relisting after `410 Gone`, resuming
//! from bookmarks and backing off on errors. The [`SyncGate`] merges the kinds into
//! one stream of [`twill_model::ObjectEvent`]s: nothing until every initial list is
//! complete, then the full state and one `Synced`, then live changes. It is the same
//! event stream the manifest source (`twill_manifest::files::Watcher`) produces for the
//! same objects, so agents do not care which source feeds them.
//!
//! Two ways to consume it: [`watch`] (an async `Stream`, for agents on tokio) and
//! [`spawn`] (a thread with its own runtime feeding a std channel, for the blocking
//! sync loops).
//!
//! The pod network's flannel-style "kube subnet manager" lives here too: [`subnet`]
//! (pure: Node objects → peer leases, this node's lease → an annotation patch) and its
//! I/O, [`watch_node_leases`] and [`publish_node_lease`].
//!
//! The RBAC a deployment needs is derived from the same table the watchers are built
//! from, plus the one write (the lease patch): [`api_calls`].

mod gate;
mod kinds;
mod node_leases;
pub mod subnet;
mod watch;

use std::collections::BTreeSet;
use std::time::Duration;

pub use gate::SyncGate;
pub use kinds::{ApiCall, Entry, WATCH_VERBS, WatchedKind};
pub use kube::Client;
pub use node_leases::{NODE_LEASE_PATCH, publish_node_lease, watch_node_leases};
pub use watch::{client, spawn, state_summary, watch};

use twill_model::ObjectRef;
use twill_model::k8s::FieldError;

/// What to watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceConfig {
    pub kinds: BTreeSet<WatchedKind>,
    /// Only Pods bound to this node (`fieldSelector=spec.nodeName=NAME`), for agents
    /// that only program local pods. `None`: every Pod.
    pub pods_on_node: Option<String>,
    /// Retry pacing after errors; `None` is kube-runtime's default (exponential from
    /// 800 ms to 30 s, with jitter, reset after 2 minutes of health).
    pub backoff: Option<Backoff>,
    /// The process also publishes its node's subnet lease as Node annotations (the
    /// kube subnet manager, [`publish_node_lease`]): one more API call to allow.
    pub publishes_node_lease: bool,
}

impl SourceConfig {
    /// Everything a node agent reads: Services and EndpointSlices (proxy), Nodes
    /// (overlay routes), Namespaces, Pods and NetworkPolicies (policy). Every Pod, not
    /// just this node's: a policy's peers live on any node. It may publish its node's
    /// lease (kube subnet manager).
    pub fn node_agent() -> Self {
        Self {
            kinds: WatchedKind::ALL.into_iter().collect(),
            pods_on_node: None,
            backoff: None,
            publishes_node_lease: true,
        }
    }

    /// Watch only the Pods bound to `node` (a field selector, so the API server does
    /// the filtering): much less traffic on big clusters, for agents that need no
    /// other node's pods (no NetworkPolicy enforcement).
    pub fn local_pods_only(self, node: impl Into<String>) -> Self {
        Self {
            pods_on_node: Some(node.into()),
            ..self
        }
    }

    /// What cluster DNS reads: Services and their slices for records, Namespaces to
    /// tell NXDOMAIN from an empty namespace, Pods for pod A records.
    pub fn dns() -> Self {
        Self {
            kinds: [
                WatchedKind::Namespace,
                WatchedKind::Pod,
                WatchedKind::Service,
                WatchedKind::EndpointSlice,
            ]
            .into_iter()
            .collect(),
            pods_on_node: None,
            backoff: None,
            publishes_node_lease: false,
        }
    }

    /// The field selector for Pods, when limited to one node.
    pub fn pod_field_selector(&self) -> Option<String> {
        self.pods_on_node
            .as_ref()
            .map(|n| format!("spec.nodeName={n}"))
    }
}

/// What a Twill process deployed in the cluster does, and so what it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Role {
    /// The per-node agent (DaemonSet): pod network, service proxy, NetworkPolicy.
    Node,
    /// Cluster DNS (Deployment).
    Dns,
}

impl Role {
    pub const ALL: [Role; 2] = [Role::Node, Role::Dns];

    /// The source configuration of this role.
    pub fn source_config(self) -> SourceConfig {
        match self {
            Role::Node => SourceConfig::node_agent(),
            Role::Dns => SourceConfig::dns(),
        }
    }

    /// The ClusterRole (and ServiceAccount) this role runs as in `deploy/`.
    pub fn cluster_role_name(self) -> &'static str {
        match self {
            Role::Node => "twill-agent",
            Role::Dns => "twill-dns",
        }
    }

    /// The `--role` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Dns => "dns",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// Every API call pattern a source with `config` makes, sorted: what its ServiceAccount's
/// ClusterRole must allow.
pub fn api_calls(config: &SourceConfig) -> Vec<ApiCall> {
    let mut calls: Vec<ApiCall> = config.kinds.iter().map(|k| k.api_call()).collect();
    if config.publishes_node_lease {
        calls.push(NODE_LEASE_PATCH);
    }
    calls.sort();
    calls
}

/// Errors from the Kubernetes source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error(
        "no cluster configuration found (not in a pod, no --kubeconfig, no KUBECONFIG, no ~/.kube/config): {0}"
    )]
    NoConfig(#[source] kube::config::InferConfigError),
    #[error("building the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    /// Publishing this node's lease annotations failed.
    #[error("patching Node {node}'s flannel.alpha.coreos.com annotations: {source}")]
    Patch {
        node: String,
        #[source]
        source: kube::Error,
    },
    /// A list or watch failed; the watcher retries it after a backoff.
    #[error("watching {kind}s: {source}")]
    Watch {
        kind: WatchedKind,
        #[source]
        source: kube::runtime::watcher::Error,
    },
    /// An object the API server returned fails Twill's validation; it is treated as
    /// absent.
    #[error("{object}: {}", join(errors))]
    Invalid {
        object: ObjectRef,
        errors: Vec<FieldError>,
    },
}

fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    /// Whether the stream goes on by itself after this error (watch failures are
    /// retried, invalid objects skipped); the others stop the source from starting.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Watch { .. } | Error::Invalid { .. } | Error::Patch { .. }
        )
    }

    /// A watch that restarted with a relist because its resourceVersion expired.
    pub fn is_gone(&self) -> bool {
        matches!(self, Error::Watch { source: kube::runtime::watcher::Error::WatchError(s), .. } if s.code == 410)
    }
}

/// Retry pacing without jitter: doubling from `initial` up to `max`, back to `initial`
/// after a success. (Tests use a short one; production keeps kube-runtime's default,
/// whose jitter spreads a fleet of nodes reconnecting after an API server outage.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}
