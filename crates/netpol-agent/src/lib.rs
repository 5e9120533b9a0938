//! NetworkPolicy applier and runtime.
//!
//! - [`source`]: Kubernetes JSON → policy model, failing closed on invalid policies;
//! - [`apply`]: one node's rendered state into the kernel of the calling thread's netns
//!   (`ipset restore`, then one `iptables-restore --noflush`, then the hook jumps);
//! - [`daemon`]: the node enforcer behind `twill netpol` (manifests in, change-driven
//!   syncs, metrics);
//! - [`flows`]: the flow log (the kernel's NFLOG copies of policy decisions, described in
//!   Kubernetes terms, kept in a ring of fixed size);
//!
//! The truth-table corpus and the netns cluster that replays it are test code: they
//! live in `twill-conformance` (`netpol`).

pub mod apply;
pub mod daemon;
pub mod flows;
pub mod source;
