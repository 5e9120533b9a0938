//! Cluster DNS as data: what CoreDNS's *kubernetes* plugin answers, computed from a model
//! snapshot, and the `resolv.conf` kubelet writes for each pod.
//!
//! - [`Snapshot`] indexes a [`twill_model::ClusterState`] once per change (services by
//!   name, endpoints with their DNS names, PTR targets, NS addresses), so answering is a
//!   few hash lookups. The server swaps whole snapshots; nothing is shared mutably.
//! - [`resolve`] answers one question. It follows the Kubernetes DNS-Based Service
//!   Discovery specification 1.1.0 and the CoreDNS behaviours clients depend on
//!   (`plugin/kubernetes/{handler,kubernetes,parse}.go`, `plugin/backend_lookup.go`):
//!   NXDOMAIN versus NODATA per query type, the `dns-version` TXT, SRV weights, the
//!   apex NS/SOA, pod modes, `ignore empty_service`, SERVFAIL before the first sync.
//!   Where CoreDNS departs from the RFCs the departure is reproduced and marked `quirk`.
//!   A CNAME that leaves the cluster zone is returned as [`Resolution::Chase`]: the
//!   caller asks the upstream and appends its answer, so this crate never does I/O.
//! - [`resolvconf`] is kubelet's `pkg/kubelet/network/dns` for every `dnsPolicy`.
//!
//! The shared corpus's runner is test code: it lives in `twill-conformance` (`dns`).

mod answer;
mod config;
pub mod corefile;
mod labels;
pub mod resolvconf;
mod snapshot;

pub use answer::{Reply, Resolution, resolve};
pub use config::{Config, ConfigError, PodMode, parse_zone};
pub use snapshot::Snapshot;

/// The schema version `dns-version.<zone>` TXT reports (the specification's version).
pub const SCHEMA_VERSION: &str = "1.1.0";
/// The fixed TTL of the `dns-version` TXT record.
pub const SCHEMA_VERSION_TTL: u32 = 28800;
