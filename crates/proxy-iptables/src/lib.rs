//! kube-proxy's iptables mode, rule for rule (`pkg/proxy/iptables/proxier.go`, 1.31+).
//!
//! [`render`] turns a [`ProxyModel`](twill_proxy_core::ProxyModel) into one
//! `iptables-restore` input for the proxier's family: the `filter` and `nat` tables with
//! kube-proxy's chains (`KUBE-SERVICES` → `KUBE-SVC-…` → `KUBE-SEP-…` → DNAT and so on),
//! the same comments, probabilities and match order, so operators can read it the way
//! every guide describes. A partial sync writes every top-level chain but only the
//! per-service chains of changed services, as upstream does since 1.26. Output is in
//! upstream's canonical test order (`sortIPTablesRules`): chains `KUBE-NODEPORTS`,
//! `KUBE-SERVICES`, then the rest sorted, rules grouped by chain, services in name order.
//!
//! [`restore`] parses restore text back (for comparisons in canonical order), and
//! [`trace`] walks a packet through parsed rules the way upstream's test tracer does.
//!
//! Base-chain jumps (`PREROUTING` → `KUBE-SERVICES`, ...) are not part of the restore
//! text; [`base_chain_jumps`] lists them for the applier.
//!
//! Everything above is pure. [`proxier`] is the mode's applier: one
//! `iptables-restore --noflush` per sync through `twill-netfilter`, partial when only
//! some services changed, full periodically and after failures.

mod config;
pub mod proxier;
mod render;
pub mod restore;
pub mod trace;

pub use config::{Config, DetectorArgs, LocalDetector};
pub use proxier::{Backend, Kernel, Proxier, SyncError, SyncReport, Variant};
pub use render::{
    BaseJump, ChainDigests, LARGE_CLUSTER_ENDPOINTS_THRESHOLD, Rendered, ServiceChains, SyncMode,
    base_chain_jumps, large_cluster_mode, render,
};

#[cfg(test)]
mod tests;
