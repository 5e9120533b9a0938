//! The proxy model every mode shares, after kube-proxy's `pkg/proxy`.
//!
//! - [`ServicePortName`] and [`ServicePortInfo`]: one entry per service port and IP family
//!   (`serviceport.go`). A proxier handles one family; a dual-stack node runs one per family.
//! - [`EndpointInfo`]: endpoints read from EndpointSlices the way kube-proxy's slice cache
//!   reads them (`endpointslicecache.go`): first address only, API zero values for missing
//!   conditions, duplicates folded (a local copy wins), sorted by `ip:port`.
//! - [`categorize_endpoints`]: traffic-policy and topology selection (`topology.go`).
//! - [`ChangeTracker`]: previous/current pairs, so a sync knows which services changed
//!   (`servicechangetracker.go`, `endpointschangetracker.go`). That is what makes partial
//!   syncs possible.
//! - [`Config`] and [`LocalDetector`]: the settings every mode reads (`KubeProxyConfiguration`).
//! - [`chain`]: `base32(sha256(...))[:16]` chain names (`iptables/proxier.go`).
//!
//! Pure: no I/O, no clock.

pub mod chain;
mod endpoints;
mod model;
mod settings;
pub mod synthetic;
mod topology;
mod tracker;

pub use endpoints::EndpointInfo;
pub use model::{
    FeatureGates, ModelConfig, ProxyModel, ServicePortInfo, ServicePortName, SkippedService,
    build_model,
};
pub use settings::{Config, LocalDetector, Scheduler};
pub use topology::{Categorized, categorize_endpoints};
pub use tracker::{ChangeTracker, StaleConntrack, SyncChanges};

#[cfg(test)]
mod tests;
