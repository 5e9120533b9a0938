//! The parts a node agent runs, a closed set: each syncs the data plane it owns from the
//! one cluster state and reports its own health to the runtime.

pub mod dns;
pub mod podnet;
pub mod policy;
pub mod proxy;

use std::collections::BTreeMap;
use std::time::Instant;

use twill_model::{ClusterState, ObjectKey};

use crate::status::Status;

/// What a part sees at a sync.
pub struct SyncContext<'a> {
    pub state: &'a ClusterState,
    /// Bumped whenever the state (or the rejected policies) changed: parts skip
    /// rebuilding what they built from the same generation.
    pub generation: u64,
    /// NetworkPolicies the sources could not read, with why (they fail closed).
    pub rejected_policies: &'a BTreeMap<ObjectKey, String>,
    pub now: Instant,
    /// The oldest change this sync carries (network programming latency).
    pub changed_at: Option<Instant>,
}

/// A sync that did not converge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PartError {
    pub message: String,
    /// The part cannot go on (bad settings, a stopped thread): the agent exits. Anything
    /// else is retried by the schedule.
    pub fatal: bool,
}

impl PartError {
    pub fn retry(message: impl Into<String>) -> Self {
        PartError {
            message: message.into(),
            fatal: false,
        }
    }
    pub fn fatal(message: impl Into<String>) -> Self {
        PartError {
            message: message.into(),
            fatal: true,
        }
    }
}

/// One part of the agent. (Few and long-lived: their sizes do not matter.)
#[allow(clippy::large_enum_variant)]
pub enum Part {
    Proxy(proxy::ProxyPart),
    Policy(policy::PolicyPart),
    PodNetwork(podnet::PodNetworkPart),
    Dns(dns::DnsPart),
}

impl Part {
    pub fn name(&self) -> &'static str {
        match self {
            Part::Proxy(_) => "proxy",
            Part::Policy(_) => "network-policy",
            Part::PodNetwork(_) => "pod-network",
            Part::Dns(_) => "dns",
        }
    }

    /// Bring this part's data plane in line with the state; `true` when something was
    /// written.
    pub fn sync(&mut self, ctx: &SyncContext, status: &Status) -> Result<bool, PartError> {
        match self {
            Part::Proxy(p) => p.sync(ctx, status),
            Part::Policy(p) => p.sync(ctx, status),
            Part::PodNetwork(p) => p.sync(),
            Part::Dns(p) => p.sync(ctx),
        }
    }

    /// One phrase for the `programmed:` line.
    pub fn summary(&self) -> String {
        match self {
            Part::Proxy(p) => p.summary(),
            Part::Policy(p) => p.summary(),
            Part::PodNetwork(p) => p.summary(),
            Part::Dns(p) => p.summary(),
        }
    }
}
