//! The NetworkPolicy corpus (`shared/testdata/netpol`) and its netns replay.
//!
//! - [`corpus`]: the truth-table schema and its pure evaluation;
//! - [`harness`], [`probe`], [`netns`]: a netns cluster (two nodes, bridges with
//!   br_netfilter, pods with real listeners, an external host) probed with real
//!   connections;
//! - [`replay`]: scenarios through the harness, with diff matrices on failure.

pub mod corpus;
pub mod harness;
pub mod netns;
pub mod probe;
pub mod replay;
