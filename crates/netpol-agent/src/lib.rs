//! NetworkPolicy applier and runtime.
//!
//! - [`source`]: Kubernetes JSON → policy model, failing closed on invalid policies;
//! - [`apply`]: one node's rendered state into the kernel of the calling thread's netns
//!   (`ipset restore`, then one `iptables-restore --noflush`, then the hook jumps);
//! - [`daemon`]: the node enforcer behind `twill netpol` (manifests in, change-driven
//!   syncs, metrics);
//! - [`corpus`]: the truth-table schema (`shared/testdata/netpol`) and its replay;
//! - [`harness`], [`probe`], [`netns`]: a netns cluster (two nodes, bridges with
//!   br_netfilter, pods with real listeners, an external host) probed with real
//!   connections;
//! - [`replay`]: scenarios through the harness, with diff matrices on failure.

pub mod apply;
pub mod corpus;
pub mod daemon;
pub mod harness;
pub mod netns;
pub mod probe;
pub mod replay;
pub mod source;
